#!/usr/bin/env bash
# Side-by-side HTTP/1.1 keep-alive forwarding cost: direct, Strait, nginx, HAProxy.
# One worker each, the proxy pinned to CPU 0, load generator and upstream on CPU 1, the
# targets interleaved (A B C D A B C D ...), CPU time per request read from the proxy's
# /proc/<pid>/task/*/schedstat (nanoseconds on CPU) and divided by the requests wrk completed.
#
# Usage: benches/compare/http1.sh [seconds-per-run] [rounds] [connections]
# Needs: nginx, haproxy, wrk (installed from apt when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}; ROUNDS=${2:-3}; CONNS=${3:-32}
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need haproxy || ! need wrk; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk >/dev/null
    else
        echo "install nginx, haproxy and wrk (apt-get install nginx haproxy wrk)" >&2; exit 2
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx); HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/strait/target}"
if [ -z "${STRAIT:-}" ]; then
    cargo build --release -q -p strait
    STRAIT="$CARGO_TARGET_DIR/release/strait"
fi

UP=18181; P_STRAIT=18190; P_NGINX=18191; P_HAPROXY=18192; ADMIN=18199

# The upstream: an nginx answering a small fixed body, on CPU 1.
cat > "$WORK/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/up.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP backlog=4096; location / { return 200 "hello from upstream\n"; } } }
CONF
taskset -c 1 "$NGINX" -c "$WORK/upstream.conf" -p "$WORK" &

cat > "$WORK/strait.yaml" <<CONF
admin: { address: 127.0.0.1:$ADMIN }
workers: 1
listeners:
  - name: bench
    address: 127.0.0.1:$P_STRAIT
    routes:
      - match: { path: { prefix: / } }
        backends: [{ cluster: up }]
clusters:
  - name: up
    endpoints: [{ address: 127.0.0.1:$UP }]
CONF
taskset -c 0 ${STRAIT_ARGS:-"$STRAIT" proxy --config} "$WORK/strait.yaml" &
STRAIT_PID=$!

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/ngx.pid; error_log /dev/null crit;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$P_NGINX backlog=4096;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c 0 "$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &

cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server up 127.0.0.1:$UP
CONF
taskset -c 0 "$HAPROXY" -f "$WORK/haproxy.cfg" -db &
HAPROXY_PID=$!
sleep 1

# The process whose CPU we count, per target (nginx: its single worker).
nginx_worker() { pgrep -P "$(cat "$WORK/ngx.pid")" | head -1; }
cpu_ns() { # total on-CPU nanoseconds of all threads of a pid
    local sum=0; for t in /proc/"$1"/task/*/schedstat; do read -r ns _ < "$t"; sum=$((sum + ns)); done; echo "$sum"; }

declare -A PORT=([direct]=$UP [strait]=$P_STRAIT [nginx]=$P_NGINX [haproxy]=$P_HAPROXY)
pid_of() { case $1 in strait) echo "$STRAIT_PID";; nginx) nginx_worker;; haproxy) echo "$HAPROXY_PID";; direct) pgrep -P "$(cat "$WORK/up.pid")" | head -1;; esac; }

for t in direct strait nginx haproxy; do  # warm-up
    taskset -c 1 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done
RESULTS="$OUT/http1-$(date +%Y%m%d-%H%M%S).tsv"
echo -e "target\tround\trequests_per_s\tcpu_us_per_req\tp50_ms\tp99_ms" > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for t in direct strait nginx haproxy; do
        pid=$(pid_of $t); before=$(cpu_ns "$pid")
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:${PORT[$t]}/")
        after=$(cpu_ns "$pid")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
        errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
        [ -n "$errors" ] && echo "$t: $errors" >&2
        us=$(awk -v d=$((after - before)) -v n="$reqs" 'BEGIN { printf "%.2f", d / 1000 / n }')
        echo -e "$t\t$round\t$rps\t$us\t$p50\t$p99" | tee -a "$RESULTS"
    done
done
echo
echo "medians (CPU µs per request of the proxy process; requests/s):"
for t in direct strait nginx haproxy; do
    awk -F'\t' -v t=$t '$1==t {print $4" "$3}' "$RESULTS" | sort -n | awk -v t=$t '{a[NR]=$1; b[NR]=$2} END {m=int((NR+1)/2); printf "  %-8s %8s µs/req  %10s req/s\n", t, a[m], b[m]}'
done
echo "raw: $RESULTS"
