#!/usr/bin/env bash
# Builds a profile-guided (PGO) release `strait`: an instrumented build serves the benchmark
# harness's traffic (HTTP/1.1 and h2c with small and with browser-shaped requests, TLS 1.3 with
# both, new connections, resumed and full TLS handshakes, gRPC, 1 MiB bodies; plain and with
# access log and tracing on), the counts it leaves are merged, and the release build is made
# again with them. The result is the binary to ship and to benchmark; see docs/benchmarks.md
# ("Profile-guided build") for what it saves.
#
#   scripts/build-pgo.sh          # prints the binary's path on its last line
#
# Needs llvm-profdata of the same LLVM major version as rustc (`rustc -vV`), valgrind and curl
# (the link order, below); as root on Debian it installs them. The training runs through
# benches/harness/run.sh, which installs the harness's own tools (nginx, haproxy, wrk, h2load,
# openssl) the same way. Build outputs go
# under ${CARGO_TARGET_DIR:-target}/pgo/ so the ordinary release build is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

llvm=$(rustc -vV | awk '/^LLVM version/{split($3, v, "."); print v[1]}')
profdata="/usr/lib/llvm-$llvm/bin/llvm-profdata"
# llvm-profdata merges the counts; valgrind and curl serve the link order's run
# (benches/symbol-order/run.sh), beside the harness's own tools.
missing=()
[ -x "$profdata" ] || missing+=("llvm-$llvm")
for tool in valgrind curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 2
    fi
    echo "installing from apt: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
fi

base="${CARGO_TARGET_DIR:-$root/target}/pgo"
data="$base/data"
rm -rf "$data"
mkdir -p "$data"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros: only the binary's own
# code is instrumented and optimized.
host=$(rustc -vV | awk '/^host/{print $2}')

echo "== instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$data" CARGO_TARGET_DIR="$base/generate" \
    cargo build --release --locked --bin strait --target "$host"

echo "== training traffic" >&2
# Every proxy process stops on SIGTERM and writes its counts as it exits.
scenarios=h1,h1-browser,h1-newconn,h2,h2-browser,tls-h1,tls-h2
scenarios+=,tls-handshake,tls-handshake-full,grpc,body-1m
benches/harness/run.sh --strait "$base/generate/$host/release/strait" \
    --targets strait,strait-observed --scenarios "$scenarios" \
    --rounds 1 --seconds 3 --out "$base/training" >&2
ls "$data"/*.profraw >/dev/null
"$profdata" merge -o "$base/merged.profdata" "$data"
# The profile's name carries its hash: cargo tracks RUSTFLAGS, not the file's content, so a new
# profile must change the flags for every crate to be built again with it.
sum=$(sha256sum "$base/merged.profdata" | cut -c1-16)
profile="$base/strait-$sum.profdata"
mv "$base/merged.profdata" "$profile"
find "$base" -maxdepth 1 -name 'strait-*.profdata' ! -path "$profile" -delete

echo "== optimized build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" CARGO_TARGET_DIR="$base/use" \
    cargo build --release --locked --bin strait --target "$host"

# The link order (crates/strait/build.rs) names functions with their crates' build hashes,
# which differ under these flags: the committed list matches none of this build's own
# functions. A list made from this binary, and a second link with it, keep the code it runs
# together (idle RSS 7.2-7.4 -> 6.6-6.7 MB; 50 busy TLS connections 9.6-9.7 -> 8.5-8.9 MB).
echo "== link order" >&2
benches/symbol-order/run.sh "$base/use/$host/release/strait" "$base/symbol-order.txt" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$profile" CARGO_TARGET_DIR="$base/use" \
    STRAIT_SYMBOL_ORDER_FILE="$base/symbol-order.txt" \
    cargo build --release --locked --bin strait --target "$host"
echo "$base/use/$host/release/strait"
