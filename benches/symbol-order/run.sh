#!/usr/bin/env bash
# Writes the link order of a `strait` binary: the functions `strait proxy` runs from start-up
# through HTTP/1.1, HTTP/2 and TLS traffic, which the release link places together at the
# start of .text (see crates/strait/build.rs, and in docs/benchmarks.md "The link order, made
# for the binary it links").
#
#   benches/symbol-order/run.sh                    # release build -> crates/strait/symbol-order.txt
#   benches/symbol-order/run.sh BINARY LIST        # the functions BINARY runs -> LIST
#
# Symbol names carry their crate's build hash, which changes with the compiler flags: the
# profile-guided build (scripts/build-pgo.sh) therefore makes its own list from its own binary
# and links again with it, rather than using the committed one, which is for plain release
# builds. Needs valgrind, nginx, h2load and openssl (apt: valgrind nginx nghttp2-client
# openssl). A stale list breaks nothing: names that no longer exist are ignored and new
# functions land after the listed ones, but the code it was for is spread out again (the
# release build's RSS grew by 3 MB before the list was made again; run.py's reports show how
# much of the list a binary still matches).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
for tool in valgrind nginx h2load curl openssl; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
        echo "missing: $tool (apt-get install valgrind nginx nghttp2-client curl openssl)" >&2
        exit 2
    }
done
if [ $# -eq 2 ]; then
    bin=$1
    dest=$2
elif [ $# -ne 0 ]; then
    echo "usage: $0 [BINARY LIST]" >&2
    exit 2
else
    target="${CARGO_TARGET_DIR:-$root/target}"
    cargo build --release -p strait
    bin="$target/release/strait"
    dest="$root/crates/strait/symbol-order.txt"
fi

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r listen admin up tls <<<"$ports"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >"$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err error;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work;
  fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$up; location / { return 200 "hello\n"; } } }
CONF
cat >"$work/strait.yaml" <<CONF
workers: 1
admin: { address: "127.0.0.1:$admin" }
listeners:
  - name: main
    address: "127.0.0.1:$listen"
    routes:
      - backends: [{ cluster: up }]
  - name: main-tls
    address: "127.0.0.1:$tls"
    tls:
      certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }]
    routes:
      - backends: [{ cluster: up }]
clusters:
  - name: up
    endpoints: [{ address: "127.0.0.1:$up" }]
CONF
nginx -c "$work/nginx.conf" &
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/callgrind.out" \
    "$bin" proxy --config "$work/strait.yaml" >"$work/strait.log" 2>&1 &
proxy=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$listen/" && break; sleep 0.3; done
h2load --h1 -n 2000 -c 8 "http://127.0.0.1:$listen/" >/dev/null
h2load -n 2000 -c 4 -m 8 "http://127.0.0.1:$listen/" >/dev/null
h2load --h1 -n 500 -c 8 "https://127.0.0.1:$tls/" >/dev/null
h2load -n 1000 -c 4 -m 8 "https://127.0.0.1:$tls/" >/dev/null
curl -s -o /dev/null "http://127.0.0.1:$admin/metrics"
kill -TERM "$proxy"
wait "$proxy" || true

python3 - "$work/callgrind.out" "$bin" "$dest" <<'PY'
import re, subprocess, sys
out, binary, dest = sys.argv[1:]
ran = set()
for line in open(out, errors="replace"):
    m = re.match(r"^c?fn=\(\d+\) (.+)$", line.rstrip("\n"))
    if m:
        ran.add(m.group(1))
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True).stdout
text = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tTwW"}
names = sorted(ran & text)
with open(dest, "w") as f:
    f.write("\n".join(names) + "\n")
print(f"{len(names)} functions written to {dest}")
PY
