#!/usr/bin/env bash
# Builds a profile-guided (PGO) release `strait`: an instrumented build serves the benchmark
# harness's traffic (HTTP/1.1, h2c, TLS 1.3 with both, new connections and TLS handshakes,
# gRPC, 1 MiB bodies; plain and with access log and tracing on), the counts it leaves are
# merged, and the release build is made again with them. The result is the binary to ship and to benchmark; see docs/benchmarks.md
# ("Profile-guided build") for what it saves.
#
#   scripts/build-pgo.sh          # prints the binary's path on its last line
#
# Needs llvm-profdata of the same LLVM major version as rustc (`rustc -vV`), nginx, haproxy,
# wrk and h2load for the training traffic; as root on Debian it installs what is missing.
# Build outputs go under ${CARGO_TARGET_DIR:-target}/pgo/ so the ordinary release build is
# left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

llvm=$(rustc -vV | awk '/^LLVM version/{split($3, v, "."); print v[1]}')
profdata=""
for p in "llvm-profdata-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-profdata"; do
    if command -v "$p" >/dev/null 2>&1; then profdata=$(command -v "$p"); break; fi
done
apt_tools=()
[ -n "$profdata" ] || apt_tools+=("llvm-$llvm")
for tool in nginx haproxy wrk h2load curl; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || case $tool in
        h2load) apt_tools+=(nghttp2-client) ;;
        *) apt_tools+=("$tool") ;;
    esac
done
if [ ${#apt_tools[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${apt_tools[*]}" >&2
        apt-get install -y "${apt_tools[@]}" >/dev/null
    else
        echo "missing: ${apt_tools[*]} (apt-get install ${apt_tools[*]})" >&2
        exit 2
    fi
fi
[ -n "$profdata" ] || profdata="/usr/lib/llvm-$llvm/bin/llvm-profdata"

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
python3 benches/harness/run.py --strait "$base/generate/$host/release/strait" \
    --targets strait,strait-observed \
    --scenarios h1,h1-newconn,h2,tls-h1,tls-h2,tls-handshake,grpc,body-1m \
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
echo "$base/use/$host/release/strait"
