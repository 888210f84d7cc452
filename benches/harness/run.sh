#!/usr/bin/env bash
# Side-by-side load comparison: direct, Strait, nginx, HAProxy (see docs/benchmarks.md).
#
#   benches/harness/run.sh                                   # everything, 5 s x 3 rounds
#   benches/harness/run.sh --scenarios h1,h2 --seconds 10    # any run.py option
#   benches/harness/run.sh --smoke                           # a few seconds, checks the plumbing
#   benches/harness/run.sh --pgo                             # measure the profile-guided build
#
# Installs nginx, haproxy, wrk, h2load (nghttp2-client) and openssl from apt when missing (as
# root), builds strait in release mode unless --strait PATH is given (with --pgo: the
# profile-guided build of scripts/build-pgo.sh, about 10 minutes), then runs run.py.
# Results: bench-results/bench-<stamp>.{json,md} and bench-<stamp>-latency.svg.
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0; strait=""; pgo=0
args=()
for arg in "$@"; do
    # --pgo is this script's own: run.py never sees it
    if [ "$arg" = --pgo ]; then pgo=1; else args+=("$arg"); fi
done
set -- ${args[@]+"${args[@]}"}
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --smoke) smoke=1 ;;
        --strait) strait="${args[$((i + 1))]:-}" ;;
        --strait=*) strait="${args[$i]#--strait=}" ;;
        --compare) exec python3 benches/harness/run.py "$@" ;;
    esac
done

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if [ "$smoke" = 0 ]; then
    missing=()
    have nginx || missing+=(nginx)
    have haproxy || missing+=(haproxy)
    have wrk || missing+=(wrk)
    have h2load || missing+=(nghttp2-client)
    have openssl || missing+=(openssl)
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "missing: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}" >&2
            exit 2
        fi
        echo "installing from apt: ${missing[*]}" >&2
        apt-get update -qq
        # RUNLEVEL=1: the packages' scripts do not start system nginx/haproxy services
        RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
fi

if [ -z "$strait" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strait/target}"
    if [ "$pgo" = 1 ]; then
        echo "building strait (release, profile-guided)" >&2
        bin=$(scripts/build-pgo.sh | tail -n 1)
        exec python3 benches/harness/run.py --strait "$bin" "$@"
    fi
    echo "building strait (release)" >&2
    cargo build --release -q -p strait
    exec python3 benches/harness/run.py --strait "$CARGO_TARGET_DIR/release/strait" "$@"
fi
exec python3 benches/harness/run.py "$@"
