#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration tests, config examples.
# Usage: scripts/test.sh        (what CI runs, through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again." >&2
    exit 2
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "cargo $component missing: run 'rustup component add $component'." >&2
        exit 2
    fi
done

# Programs the tests run: python3 (the load harness's smoke mode) and openssl (RSA keys for the
# JWT tests; the other test keys are made in-process). Installed from apt when missing and root.
missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing from apt: ${missing[*]}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing: ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})." >&2
        exit 2
    fi
fi

# A persistent target dir keeps rebuilds fast across clones; a clean one works too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strait/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "fuzz targets compile (running them needs nightly: see fuzz/Cargo.toml)"
cargo check --manifest-path fuzz/Cargo.toml --all-targets --locked

step "shell scripts parse (build-pgo.sh is run by hand: two release builds, ~10 min)"
for script in scripts/*.sh benches/harness/run.sh benches/symbol-order/run.sh .ci/run; do
    bash -n "$script"
done

step "strait validate: every shipped config"
# The configs alone: the certificates and keys they name (/etc/strait/tls/...) are examples.
mapfile -t configs < <(find config examples -name '*.yaml' 2>/dev/null | sort)
if [ "${#configs[@]}" -gt 0 ]; then
    "$CARGO_TARGET_DIR/debug/strait" validate --no-files "${configs[@]}"
fi

echo
echo "all checks passed"
