#!/usr/bin/env python3
"""Side-by-side load harness: direct (no proxy), Strait, nginx and HAProxy; and, when named, two
references for h1: a bare relay that knows no HTTP (the floor under any proxy) and the leanest
tokio HTTP/1.1 proxy (what the stack costs above it).

One worker each, every proxy pinned to the same core (CPU 0), the load generator and the upstream
on the other core (CPU 1). Targets run interleaved (A B C D A B C D ...) and medians are reported.
The proxy's CPU time comes from /proc/<pid>/task/*/schedstat (nanoseconds on CPU of every thread)
and is divided by the requests the load generator completed.

Results are written to OUT/bench-<stamp>.json (every run), .md (the tables) and -latency.svg (a
plot of latency percentiles per target). See docs/benchmarks.md.

    benches/harness/run.sh                      # install what is missing, build, run everything
    python3 benches/harness/run.py --strait target/release/strait --scenarios h1,h2 --seconds 5
    python3 benches/harness/run.py --smoke --strait PATH     # a few seconds, python3 only
    python3 benches/harness/run.py --compare OLD.json NEW.json

Standard library only. Every load loop is bounded in time and count and targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"

TARGETS = ["direct", "strait", "strait-observed", "nginx", "haproxy", "relay", "lean"]
# strait-observed (Strait with an access log and tracing on) runs only when asked for: it
# answers one question, the cost of observability, rather than comparing proxies. So do two
# references for kept-alive HTTP/1.1: relay (harness/relay.rs), a bare epoll relay that moves
# bytes without HTTP, the floor under any proxy's CPU per request; and lean
# (harness/lean_proxy.rs), the leanest tokio HTTP/1.1 proxy doing what Strait's default
# configuration does to a request.
DEFAULT_TARGETS = ["direct", "strait", "nginx", "haproxy"]
# What strait-observed samples: the issue's budget is stated at 10 %.
OBSERVED_SAMPLE_PERCENT = 10

# name -> (title, what it measures, kind)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "h1": (
        "HTTP/1.1 keep-alive, small responses",
        "wrk, 1 thread, 32 keep-alive connections, GET / answered with a 20-byte body; "
        "closed loop (as fast as the target answers)",
        "closed",
    ),
    "h1-newconn": (
        "HTTP/1.1, a new TCP connection per request",
        "wrk, 32 connections sending `Connection: close`: each request opens a new client "
        "connection (upstream connections stay pooled)",
        "closed",
    ),
    "h1-serial": (
        "HTTP/1.1, one connection, one request at a time",
        "wrk, 1 keep-alive connection, GET /: each request waits for the answer to the one "
        "before, so the rate is one over the round trip through the proxy, the proxy's wake-ups "
        "from sleep included (a proxy sleeps between every two requests here)",
        "closed",
    ),
    "h1-browser": (
        "HTTP/1.1 keep-alive, requests as a browser sends them",
        "wrk, 32 keep-alive connections, GET of a 60-byte path with a query string and the ten "
        "fields a browser's fetch() sends (user agent, accept lists, a 133-byte cookie, "
        "referer, sec-fetch-*): a 639-byte request head; the answer is a small JSON body with "
        "three more fields than h1's. The per-byte work (validating the target, parsing and "
        "forwarding fields) counts here, where h1's two-field request hides it",
        "closed",
    ),
    "h2": (
        "HTTP/2 (h2c) multiplexed",
        "h2load, 8 h2c connections x 16 concurrent streams, GET /; proxies forward over "
        "HTTP/1.1 keep-alive (direct: the upstream answers h2c itself)",
        "closed",
    ),
    "h2-browser": (
        "HTTP/2 (h2c) multiplexed, requests as a browser sends them",
        "h2load, 8 h2c connections x 16 streams, h1-browser's request (its path and ten "
        "fields, names in lower case as HTTP/2 has them); HPACK makes the repeated fields "
        "cheap on the wire, not to decode and forward over HTTP/1.1",
        "closed",
    ),
    "tls-h1": (
        "TLS 1.3, HTTP/1.1 keep-alive",
        "wrk over TLS 1.3 (ECDSA P-256 certificate, X25519), 32 keep-alive connections",
        "closed",
    ),
    "tls-h2": (
        "TLS 1.3, HTTP/2 multiplexed",
        "h2load over TLS 1.3 with ALPN h2, 8 connections x 16 streams",
        "closed",
    ),
    "tls-handshake": (
        "TLS 1.3 handshakes (a new connection per request)",
        "tls-handshake-load (this harness's rustls client, benches/harness/"
        "tls_handshake_load.rs), 32 connections, each a loop of: connect, a TLS 1.3 handshake "
        "that resumes the session of the connection before it (X25519), GET / with "
        "`Connection: close`, the whole response, close; requests/s = handshakes/s. It spends "
        "about half of wrk's CPU per handshake, so the proxy's core, not the load generator's, "
        "runs out first",
        "closed",
    ),
    "tls-handshake-full": (
        "TLS 1.3 full handshakes (no resumption)",
        "tls-handshake-load --no-resume: as tls-handshake, but every connection makes a full "
        "handshake (the proxy signs with its ECDSA P-256 key, the client checks the signature)",
        "closed",
    ),
    "tls-handshake-wrk": (
        "TLS 1.3 handshakes, wrk as the client",
        "the same exchange from wrk with `Connection: close` (each of its connections resumes "
        "its previous session too). wrk's OpenSSL client spends ~200 µs of the load "
        "generator's core a handshake, more than the proxies do, so this rate is mostly wrk's",
        "closed",
    ),
    "body-1m": (
        "1 MiB response bodies (throughput)",
        "wrk, 8 keep-alive connections, GET /1m answered with a 1 MiB file",
        "closed",
    ),
    "grpc": (
        "gRPC unary (h2c)",
        "h2load, 8 h2c connections x 16 streams, POST /grpc with `content-type: "
        "application/grpc` and a 12-byte length-prefixed message; the upstream (nginx over h2c) "
        "answers a length-prefixed message with `grpc-status: 0` in trailers; proxies forward "
        "over h2c (nginx: grpc_pass, HAProxy: proto h2, Strait: protocol http2)",
        "closed",
    ),
    "latency-25": (
        "Fixed rate at 25% of nginx's HTTP/1.1 capacity (open loop)",
        "h2load --h1 --rps, 32 connections, 1 request in flight each, at 25% of nginx's median "
        "requests/s in h1, measured again just before this scenario (nginx alone, 3 runs); "
        "percentiles over every request's latency",
        "fixed",
    ),
    "latency-75": (
        "Fixed rate at 75% of nginx's HTTP/1.1 capacity (open loop)",
        "as latency-25, at 75% of nginx's capacity",
        "fixed",
    ),
    "memory": (
        "Memory: idle, with 50 active connections, and with 10,000 idle keep-alive connections",
        "RSS of the serving process after start-up and one request (idle); its peak RSS under "
        "wrk with 50 keep-alive connections, plain HTTP/1.1 then TLS 1.3 (2 s each, a fresh "
        "process); then, in another fresh process, RSS with 10,000 HTTP/1.1 keep-alive "
        "connections open, each having completed one request; bytes per connection = (RSS "
        "with them - RSS before) / connections",
        "memory",
    ),
}
DEFAULT_SCENARIOS = list(SCENARIOS)
HANDSHAKE_SCENARIOS = {"tls-handshake", "tls-handshake-full", "tls-handshake-wrk"}
TLS_SCENARIOS = {"tls-h1", "tls-h2"} | HANDSHAKE_SCENARIOS
# Scenarios Strait cannot run yet, with the reason shown in the tables.
STRAIT_UNSUPPORTED: dict[str, str] = {}

H1_CONNS = 32
H2_CONNS, H2_STREAMS = 8, 16
BODY_CONNS = 8
FIXED_CONNS = 32
IDLE_CONNS = 10_000
ACTIVE_CONNS = 50
SMALL_BODY = "hello from upstream\n"
# h1-browser: what a browser's fetch() of an API sends, after the path prefix of request_path()
BROWSER_PATH = "api/v2/products/48213/reviews?page=3&sort=recent&lang=en-US"
BROWSER_FIELDS = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Accept: application/json, text/plain, */*",
    "Accept-Language: en-US,en;q=0.9,de;q=0.8",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: https://shop.example.com/products/48213?tab=reviews",
    "Cookie: session=6f1c2a9e0b7d4c8f9a3e5b1d7c0f2e4a; _ga=GA1.1.1234567890.1733400000; "
    "theme=dark; consent=analytics%3Dtrue%26ads%3Dfalse; cart=3",
    "Sec-Fetch-Dest: empty",
    "Sec-Fetch-Mode: cors",
    "Sec-Fetch-Site: same-origin",
    "Priority: u=1, i",
]
# The upstream's answer to it (nginx), behind any --routes prefix: JSON with an API's fields.
BROWSER_LOCATION = (
    "    location ~ ^(/svc[0-9]+)?/api/v2/ { default_type application/json;\n"
    "      add_header Cache-Control 'private, no-cache'; add_header Vary 'Accept-Encoding';\n"
    "      add_header X-Content-Type-Options nosniff;\n"
    "      return 200 '{\"page\":3,\"reviews\":[]}\n'; }\n"
)
GRPC_MESSAGE = b"\x00\x00\x00\x00\x07\x0a\x05hello"  # uncompressed, 7-byte protobuf


def header_args(fields: list[str], lower_names: bool = False) -> list[str]:
    """`-H` arguments (wrk's, h2load's) for these fields; `lower_names` for HTTP/2, whose names
    are lower case."""
    def spelt(field: str) -> str:
        name, colon, value = field.partition(":")
        return (name.lower() if lower_names else name) + colon + value
    return [arg for field in fields for arg in ("-H", spelt(field))]

WRK_LUA = r"""
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,' ..
    '"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,' ..
    '"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc sampling


def thread_stats(pids: list[int], name: str):
    """The text of /proc/PID/task/TID/<name> of every thread of these processes."""
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                    yield f.read()
            except (FileNotFoundError, ProcessLookupError):
                pass


def cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of every thread of these processes (schedstat's first field)."""
    total = 0
    for text in thread_stats(pids, "schedstat"):
        try:
            total += int(text.split()[0])
        except (IndexError, ValueError):
            pass
    return total


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """User and system clock ticks of every thread of these processes (stat's utime and stime):
    coarse (10 ms), but over a run enough to split the schedstat time between the two."""
    user = system = 0
    for text in thread_stats(pids, "stat"):
        try:
            # the fields after the command name (which may hold spaces); state is the first
            fields = text.rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (IndexError, ValueError):
            pass
    return user, system


def core_ticks(cpu: int | None) -> tuple[int, int] | None:
    """Busy and idle ticks (USER_HZ) of one CPU, from /proc/stat: busy is user, nice, system,
    irq and softirq time (not steal: the hypervisor's), idle is idle and iowait."""
    if cpu is None:
        return None
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4]
    return None


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (0 when it is gone)."""
    out = {"rss": 0, "hwm": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return out


def open_sockets(pid: int) -> int:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return -1
    n = 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def percentiles(values_us: list[int]) -> dict[str, float]:
    if not values_us:
        return {}
    v = sorted(values_us)
    n = len(v)

    def rank(p: float) -> float:  # nearest rank
        return float(v[min(n - 1, max(0, int(-(-p * n // 100)) - 1))])

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p999": rank(99.9),
        "max": float(v[-1]),
        "mean": sum(v) / n,
    }


# ---------------------------------------------------------------------------------------------
# processes


def pin(cpu: int | None):
    if cpu is None:
        return None

    def fn():
        os.sched_setaffinity(0, {cpu})

    return fn


class Procs:
    """Every process the harness started, stopped by pid (never by name)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, cpu, log_path: Path, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        logf = open(log_path, "ab")
        p = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=pin(cpu),
            start_new_session=True,
        )
        logf.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig=signal.SIGTERM, wait=5.0) -> None:
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(reversed(self.procs)):
            self.stop(p, wait=3.0)


def wait_port(port: int, proc: subprocess.Popen | None, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def http_get(port: int, path="/", timeout=2.0) -> int:
    """One HTTP/1.1 request; returns the status code."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in data and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else 0


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


# ---------------------------------------------------------------------------------------------
# the upstream and the targets


class Env:
    def __init__(self, args, work: Path) -> None:
        self.args = args
        self.work = work
        self.smoke = args.smoke
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) >= 2 and not args.no_pin:
            self.proxy_cpu = allowed[0] if args.proxy_cpu is None else args.proxy_cpu
            self.load_cpu = allowed[1] if args.load_cpu is None else args.load_cpu
        else:
            self.proxy_cpu = self.load_cpu = None
            if not args.no_pin:
                log("warning: fewer than 2 CPUs: nothing is pinned")
        self.procs = Procs()
        self.nginx = tool("nginx")
        self.haproxy = tool("haproxy")
        self.wrk = tool("wrk")
        self.h2load = tool("h2load")
        self.strait = args.strait
        self.tls_client = args.tls_client
        self.bench_bins = args.bench_bins
        # nginx workers started by root run as `nobody`: they must be able to read the files
        work.chmod(0o755)
        (work / "www").mkdir(mode=0o755)
        (work / "tmp").mkdir()
        (work / "tmp").chmod(0o1777)
        (work / "www" / "1m").write_bytes(os.urandom(1 << 20))
        (work / "www" / "grpc.bin").write_bytes(GRPC_MESSAGE)
        (work / "grpc-request.bin").write_bytes(GRPC_MESSAGE)
        (work / "report.lua").write_text(WRK_LUA)
        self.cert = self.key = self.pem = None


def make_cert(env: Env) -> None:
    if env.pem is not None:
        return
    key, cert, pem = env.work / "key.pem", env.work / "cert.pem", env.work / "haproxy.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    env.cert, env.key, env.pem = cert, key, pem


def nginx_common(env: Env, name: str, conns: int) -> str:
    w = env.work
    return (
        f"worker_processes 1; daemon off; pid {w}/{name}.pid; error_log {w}/{name}.err error;\n"
        f"worker_rlimit_nofile {min(conns * 2 + 100, nofile_hard())};\n"
        f"events {{ worker_connections {conns}; }}\n"
        "http {\n"
        "  access_log off; keepalive_requests 1000000; sendfile on; tcp_nodelay on;\n"
        f"  client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp; fastcgi_temp_path {w}/tmp;\n"
        f"  uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp;\n"
    )


def routed(env: Env) -> list[str]:
    """`--routes N`: the N path prefixes each proxy routes to an upstream of its own, before its
    catch-all route (empty without the option)."""
    return [f"/svc{i}" for i in range(env.args.routes)]


def request_path(env: Env) -> str:
    """The path the small-response scenarios ask for: the last of `--routes`' prefixes (the one
    a proxy that tries its routes in order reaches last), or `/` without them."""
    table = routed(env)
    return f"{table[-1]}/" if table else "/"


class Upstream:
    """The fast upstream on the load generator's core: nginx in a full run, a tiny Python
    asyncio server in smoke mode."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.h1, self.h2, self.tls = free_ports(3)
        self.proc: subprocess.Popen | None = None

    def start(self, conns: int, tls: bool) -> None:
        env = self.env
        if env.smoke:
            argv = [sys.executable, str(Path(__file__).resolve()), "_upstream", str(self.h1)]
            self.proc = env.procs.start(argv, env.load_cpu, env.work / "upstream.log")
            wait_port(self.h1, self.proc)
            return
        w = env.work
        tls_listen = ""
        if tls:
            make_cert(env)
            tls_listen = (
                f"    listen {HOST}:{self.tls} ssl http2 backlog=4096;\n"
                f"    ssl_certificate {env.cert}; ssl_certificate_key {env.key};\n"
                "    ssl_protocols TLSv1.3;\n"
            )
        conf = nginx_common(env, "upstream", conns) + (
            "  server {\n"
            f"    listen {HOST}:{self.h1} backlog=4096;\n"
            f"    listen {HOST}:{self.h2} http2 backlog=4096;\n"
            f"{tls_listen}"
            "    http2_max_concurrent_streams 256;\n"
            f'    location = / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}\n'
            # --routes: the proxies forward /svcN/ as it came
            + (f'    location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}\n'
               if routed(env) else "")
            + BROWSER_LOCATION
            + "    location = /nginx_status { stub_status; }\n"
            f"    location = /1m {{ root {w}/www; }}\n"
            # gRPC-shaped: a POST to a static file is a 405, which error_page turns into a GET
            # of the file with status 200; add_trailer sends grpc-status in HTTP/2 trailers.
            # `mirror` makes nginx read the whole request body before answering, as a gRPC
            # server does (otherwise it answers early and resets the stream).
            f"    location = /grpc {{ alias {w}/www/grpc.bin; default_type application/grpc;\n"
            "      mirror /sink; mirror_request_body on;\n"
            "      error_page 405 =200 /grpc.bin; add_trailer grpc-status 0; }\n"
            "    location = /sink { internal; return 204; }\n"
            f"    location = /grpc.bin {{ internal; root {w}/www; default_type application/grpc;\n"
            "      add_trailer grpc-status 0; }\n"
            "  }\n}\n"
        )
        (w / "upstream.conf").write_text(conf)
        argv = [env.nginx, "-c", str(w / "upstream.conf"), "-e", str(w / "upstream.err")]
        self.proc = env.procs.start(argv, env.load_cpu, w / "upstream.log")
        wait_port(self.h1, self.proc)

    def accepts(self) -> int | None:
        """Connections the upstream has accepted so far (nginx stub_status)."""
        if self.env.smoke:
            return None
        try:
            with socket.create_connection((HOST, self.h1), timeout=2) as s:
                s.sendall(f"GET /nginx_status HTTP/1.1\r\nHost: {HOST}\r\n"
                          "Connection: close\r\n\r\n".encode())
                data = b""
                for _ in range(100):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            m = re.search(rb"server accepts handled requests\s+(\d+)", data)
            return int(m.group(1)) if m else None
        except OSError:
            return None

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        if self.env.smoke:
            return [self.proc.pid]
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.env.procs.stop(self.proc, signal.SIGTERM)
            self.proc = None


class Target:
    name = "?"

    def __init__(self, env: Env, up: Upstream) -> None:
        self.env, self.up = env, up
        self.proc: subprocess.Popen | None = None
        # ports by role: h1, h2 (h2c prior knowledge), tls (ALPN h2 and http/1.1), grpc (h2c)
        self.ports: dict[str, int] = {}

    @classmethod
    def unsupported(cls, scenario: str) -> str | None:
        """Why this target cannot run a scenario, or None."""
        return None

    def start(self, conns: int, tls: bool) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The serving processes: CPU and memory are read from these."""
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.env.procs.stop(self.proc, signal.SIGTERM)
            self.proc = None


class Direct(Target):
    name = "direct"

    def start(self, conns: int, tls: bool) -> None:
        self.ports = {"h1": self.up.h1, "h2": self.up.h2, "tls": self.up.tls, "grpc": self.up.h2}

    def pids(self) -> list[int]:
        return self.up.pids()

    def stop(self) -> None:
        pass


class Strait(Target):
    name = "strait"

    @classmethod
    def unsupported(cls, scenario: str) -> str | None:
        return STRAIT_UNSUPPORTED.get(scenario)

    def observability(self) -> tuple[str, str]:
        """Config added at the top level and to each listener: nothing for plain Strait."""
        return "", ""

    def start(self, conns: int, tls: bool) -> None:
        env, w = self.env, self.env.work
        main, grpc, admin, tlsp = free_ports(4)
        top, per_listener = self.observability()
        # --routes: a route per prefix to a cluster of its own, then the catch-all
        routes = "".join(
            f"      - match: {{ path: {{ prefix: {prefix} }} }}\n"
            f"        backends: [{{ cluster: {prefix[1:]} }}]\n"
            for prefix in routed(env)
        ) + "      - backends: [{ cluster: up }]\n"
        poll = f"busy_poll: {env.args.strait_busy_poll}\n" if env.args.strait_busy_poll else ""
        # The default configuration (request ids, x-forwarded-*, metrics all on), one worker.
        conf = (
            f"admin: {{ address: \"{HOST}:{admin}\" }}\n"
            "workers: 1\n"
            f"{poll}"
            f"{top}"
            "listeners:\n"
            "  - name: bench\n"
            f"    address: \"{HOST}:{main}\"\n"
            f"{per_listener}"
            "    routes:\n"
            f"{routes}"
        )
        if tls:
            make_cert(env)
            # TLS 1.3 only, as the other targets; ALPN h2 and http/1.1 (the default).
            conf += (
                "  - name: bench-tls\n"
                f"    address: \"{HOST}:{tlsp}\"\n"
                "    tls:\n"
                f"      certificates: [{{ cert: \"{env.cert}\", key: \"{env.key}\" }}]\n"
                "      min_version: \"1.3\"\n"
                "    routes:\n"
                f"{routes}"
            )
        if not env.smoke:
            conf += (
                "  - name: grpc\n"
                f"    address: \"{HOST}:{grpc}\"\n"
                f"{per_listener}"
                "    routes:\n"
                "      - backends: [{ cluster: up-grpc }]\n"
            )
        conf += (
            "clusters:\n"
            "  - name: up\n"
            f"    endpoints: [{{ address: \"{HOST}:{self.up.h1}\" }}]\n"
        ) + "".join(
            f"  - name: {prefix[1:]}\n"
            f"    endpoints: [{{ address: \"{HOST}:{self.up.h1}\" }}]\n"
            for prefix in routed(env)
        )
        if not env.smoke:
            conf += (
                "  - name: up-grpc\n"
                "    protocol: http2\n"
                f"    endpoints: [{{ address: \"{HOST}:{self.up.h2}\" }}]\n"
            )
        (w / f"{self.name}.yaml").write_text(conf)
        argv = [env.strait, "proxy", "--config", str(w / f"{self.name}.yaml")]
        self.proc = env.procs.start(argv, env.proxy_cpu, w / f"{self.name}.log")
        wait_port(main, self.proc)
        deadline = time.monotonic() + 10
        while http_get(admin, "/ready") != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("strait's /ready did not answer 200")
            time.sleep(0.05)
        self.ports = {"h1": main, "h2": main, "grpc": grpc, "tls": tlsp}


class StraitObserved(Strait):
    """Strait with everything an operator turns on to watch it: metrics (always on), a JSON
    access log of every request to a file, and tracing at OBSERVED_SAMPLE_PERCENT % exported
    over OTLP/HTTP to a local sink on the load generator's core (it answers 200 and discards,
    as a collector would accept)."""

    name = "strait-observed"

    def __init__(self, env: Env, up: Upstream) -> None:
        super().__init__(env, up)
        self.sink: subprocess.Popen | None = None
        self.sink_port = 0

    def observability(self) -> tuple[str, str]:
        observe = self.env.args.observe
        top = listener = ""
        if observe in ("all", "tracing"):
            top = (
                "tracing:\n"
                "  protocol: http_protobuf\n"
                f"  endpoint: \"http://{HOST}:{self.sink_port}/v1/traces\"\n"
                f"  sample_percent: {self.env.args.observe_percent:g}\n"
                "  batch_delay: 1s\n"
            )
        if observe in ("all", "access-log"):
            listener = f"    access_log: {{ path: \"{self.env.work / 'access.log'}\" }}\n"
        return top, listener

    def start(self, conns: int, tls: bool) -> None:
        (self.sink_port,) = free_ports(1)
        argv = [sys.executable, str(Path(__file__).resolve()), "_otlp", str(self.sink_port)]
        self.sink = self.env.procs.start(argv, self.env.load_cpu, self.env.work / "otlp.log")
        wait_port(self.sink_port, self.sink)
        super().start(conns, tls)

    def stop(self) -> None:
        super().stop()
        if self.sink is not None:
            self.env.procs.stop(self.sink, signal.SIGTERM)
            self.sink = None
        # the log grows by a line per request: keep the disk free between runs
        (self.env.work / "access.log").unlink(missing_ok=True)


class Nginx(Target):
    name = "nginx"

    def start(self, conns: int, tls: bool) -> None:
        env, w = self.env, self.env.work
        h1, h2, tlsp, grpc = free_ports(4)
        # --routes: a location per prefix to an upstream block of its own, then the catch-all
        # (nginx finds a prefix location in a tree, whatever their number)
        locations = "".join(
            f"    location {prefix}/ {{ proxy_pass http://{prefix[1:]}; }}\n"
            for prefix in routed(env)
        ) + "    location / { proxy_pass http://up; }"
        upstreams = "".join(
            f"  upstream {prefix[1:]} {{ server {HOST}:{self.up.h1}; keepalive 256; "
            "keepalive_requests 1000000; }\n"
            for prefix in routed(env)
        )
        tls_server = ""
        if tls:
            make_cert(env)
            tls_server = (
                f"  server {{ listen {HOST}:{tlsp} ssl http2 backlog=4096;\n"
                f"    ssl_certificate {env.cert}; ssl_certificate_key {env.key};\n"
                "    ssl_protocols TLSv1.3;\n"
                f"{locations} }}\n"
            )
        conf = nginx_common(env, "nginx", conns) + (
            # enough idle upstream connections for 128 concurrent requests (grpc_pass uses one
            # upstream connection per request in flight), never retired by request count
            f"  upstream up {{ server {HOST}:{self.up.h1}; keepalive 256; "
            "keepalive_requests 1000000; }\n"
            f"  upstream upgrpc {{ server {HOST}:{self.up.h2}; keepalive 256; "
            "keepalive_requests 1000000; }\n"
            f"{upstreams}"
            # keep-alive upstream connections; stream big bodies instead of spooling to disk
            "  proxy_http_version 1.1; proxy_set_header Connection \"\";\n"
            "  proxy_max_temp_file_size 0;\n"
            f"  server {{ listen {HOST}:{h1} backlog=4096;\n{locations} }}\n"
            f"  server {{ listen {HOST}:{h2} http2 backlog=4096;\n{locations} }}\n"
            f"  server {{ listen {HOST}:{grpc} http2 backlog=4096;\n"
            "    location / { grpc_pass grpc://upgrpc; } }\n"
            f"{tls_server}"
            "}\n"
        )
        (w / "nginx.conf").write_text(conf)
        argv = [env.nginx, "-c", str(w / "nginx.conf"), "-e", str(w / "nginx.err")]
        self.proc = env.procs.start(argv, env.proxy_cpu, w / "nginx.log")
        wait_port(h1, self.proc)
        self.ports = {"h1": h1, "h2": h2, "tls": tlsp, "grpc": grpc}

    def pids(self) -> list[int]:
        # the worker (the master only supervises)
        return children(self.proc.pid) if self.proc else []


class Haproxy(Target):
    name = "haproxy"

    def start(self, conns: int, tls: bool) -> None:
        env, w = self.env, self.env.work
        h1, h2, tlsp, grpc = free_ports(4)
        maxconn = max(4000, conns)
        # --routes: a backend per prefix, chosen through a map (HAProxy's way for many routes:
        # a prefix tree, not one ACL after another); what the map does not name goes to `be`
        route = ""
        backends = ""
        if routed(env):
            (w / "routes.map").write_text(
                "".join(f"{prefix}/ be_{prefix[1:]}\n" for prefix in routed(env)))
            route = f"  use_backend %[path,map_beg({w / 'routes.map'},be)]\n"
            backends = "".join(
                f"backend be_{prefix[1:]}\n  server up {HOST}:{self.up.h1}\n"
                for prefix in routed(env)
            )
        tls_front = ""
        if tls:
            make_cert(env)
            tls_front = (
                "frontend fe_tls\n"
                f"  bind {HOST}:{tlsp} ssl crt {env.pem} alpn h2,http/1.1 ssl-min-ver TLSv1.3\n"
                f"{route}"
                "  default_backend be\n"
            )
        conf = (
            "global\n"
            "  nbthread 1\n"
            f"  maxconn {maxconn}\n"
            # above ~9,900 connections HAProxy wants more descriptors than the hard limit here
            # allows: let it run with what it gets rather than refuse to start
            + ("  no strict-limits\n" if maxconn > 4000 else "")
            + "defaults\n"
            "  mode http\n"
            "  timeout connect 5s\n"
            "  timeout client 60s\n"
            "  timeout server 60s\n"
            "  http-reuse always\n"
            "frontend fe_h1\n"
            f"  bind {HOST}:{h1}\n"
            f"{route}"
            "  default_backend be\n"
            "frontend fe_h2\n"
            f"  bind {HOST}:{h2} proto h2\n"
            f"{route}"
            "  default_backend be\n"
            "frontend fe_grpc\n"
            f"  bind {HOST}:{grpc} proto h2\n"
            "  default_backend be_grpc\n"
            f"{tls_front}"
            "backend be\n"
            f"  server up {HOST}:{self.up.h1}\n"
            "backend be_grpc\n"
            f"  server up {HOST}:{self.up.h2} proto h2\n"
            f"{backends}"
        )
        (w / "haproxy.cfg").write_text(conf)
        argv = [env.haproxy, "-f", str(w / "haproxy.cfg"), "-db"]
        self.proc = env.procs.start(argv, env.proxy_cpu, w / "haproxy.log")
        wait_port(h1, self.proc)
        self.ports = {"h1": h1, "h2": h2, "tls": tlsp, "grpc": grpc}


# The scenarios the h1 references (relay, lean) run: small kept-alive HTTP/1.1 requests, closed
# loop or at a fixed rate.
H1_KEEPALIVE = ("h1", "h1-serial", "h1-browser", "latency-25", "latency-75")


class Relay(Target):
    """The floor: harness/relay.rs, one thread on epoll relaying bytes between each client
    connection and an upstream connection of its own, with the same system calls and TCP
    segments per kept-alive request as the proxies and nothing else."""

    name = "relay"
    binary = "relay"
    # why it runs only the H1_KEEPALIVE scenarios
    only_h1 = ("the relay is a floor for kept-alive HTTP/1.1 only: it knows no HTTP and opens "
               "an upstream connection per client connection")

    @classmethod
    def unsupported(cls, scenario: str) -> str | None:
        return None if scenario in H1_KEEPALIVE else cls.only_h1

    def start(self, conns: int, tls: bool) -> None:
        (h1,) = free_ports(1)
        argv = [self.env.bench_bins[self.binary], f"{HOST}:{h1}", f"{HOST}:{self.up.h1}"]
        self.proc = self.env.procs.start(argv, self.env.proxy_cpu,
                                         self.env.work / f"{self.name}.log")
        wait_port(h1, self.proc)
        self.ports = {"h1": h1}


class Lean(Relay):
    """harness/lean_proxy.rs: HTTP/1.1 on tokio with heads kept as bytes (httparse), a routing
    table, a pool, two kept timers, the three fields Strait adds, a request counter and a
    latency histogram; no TLS. What the stack costs above the floor."""

    name = "lean"
    binary = "lean-proxy"
    only_h1 = "lean is a reference for kept-alive HTTP/1.1 only, with Content-Length bodies"


TARGET_CLASSES = {"direct": Direct, "strait": Strait, "strait-observed": StraitObserved,
                  "nginx": Nginx, "haproxy": Haproxy, "relay": Relay, "lean": Lean}


# ---------------------------------------------------------------------------------------------
# load generators: each returns {"requests", "seconds", "errors", "latency_us": {...}, ...}


def run_loadgen(env: Env, argv: list[str], timeout: float) -> str:
    p = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, preexec_fn=pin(env.load_cpu)
    )
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(argv[0]).name} exited {p.returncode}: {' | '.join(tail)}")
    return p.stdout


def wrk(env: Env, url: str, conns: int, seconds: float, headers=()) -> dict:
    argv = [env.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", str(env.work / "report.lua"), *header_args(list(headers))]
    out = run_loadgen(env, argv + [url], seconds + 30)
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no summary: " + out[-300:])
    s = json.loads(m.group(1))
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return {
        "requests": s["requests"],
        "seconds": s["duration_us"] / 1e6,
        "bytes": s["bytes"],
        "errors": errors,
        "error_detail": {k: s[k] for k in ("connect", "read", "write", "status", "timeout")},
        "latency_us": {k: float(s[k]) for k in ("p50", "p90", "p99", "p999", "max", "mean")},
    }


def h2load(env: Env, url: str, conns: int, streams: int, seconds: float, extra=()) -> dict:
    logf = env.work / "h2load.log"
    if logf.exists():
        logf.unlink()
    argv = [env.h2load, "-t1", f"-c{conns}", f"-m{streams}", "-D", str(max(1, round(seconds))),
            "-T", "5", "-N", "5", "--log-file", str(logf), *extra, url]
    out = run_loadgen(env, argv, seconds + 30)
    m = re.search(r"finished in ([\d.]+)(m?s)", out)
    secs = float(m.group(1)) / (1000 if m and m.group(2) == "ms" else 1) if m else seconds
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not m:
        raise RuntimeError("h2load printed no summary: " + out[-300:])
    done, ok = int(m.group(3)), int(m.group(4))
    sc = re.search(r"status codes: (\d+) 2xx", out)
    ok2xx = int(sc.group(1)) if sc else ok
    m2 = re.search(r"traffic: .*?\((\d+)\) total", out)
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].startswith("2"):
                lat.append(int(parts[2]))
    return {
        "requests": min(ok, ok2xx),
        "seconds": secs,
        "bytes": int(m2.group(1)) if m2 else 0,
        "errors": (done - min(ok, ok2xx)) + int(m.group(6)) + int(m.group(7)),
        "latency_us": percentiles(lat),
    }


def tls_handshake_load(env: Env, port: int, conns: int, seconds: float, extra=()) -> dict:
    """TLS handshakes from the harness's own rustls client (see the tls-handshake scenario)."""
    argv = [env.tls_client, f"{HOST}:{port}", str(conns), str(seconds), *extra]
    out = run_loadgen(env, argv, seconds + 30)
    return json.loads(out.strip().splitlines()[-1])


def cargo_target_dir() -> Path:
    """Where run.sh and scripts/build-pgo.sh build: $CARGO_TARGET_DIR, else run.sh's default."""
    return Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/strait/target")


def build_bench_bin(name: str) -> str:
    """Builds one of strait-benches' binaries (tls-handshake-load, relay, lean-proxy) in
    release where run.sh builds strait, and returns its path."""
    target = cargo_target_dir()
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    # Flags meant for strait (a profile-guided build's) are not the load generator's.
    env.pop("RUSTFLAGS", None)
    log(f"building {name} (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "--locked", "-p", "strait-benches",
                    "--bin", name], cwd=REPO, env=env, check=True)
    return str(target / "release" / name)


def py_client(env: Env, port: int, conns: int, seconds: float, path="/") -> dict:
    """The built-in HTTP/1.1 keep-alive load generator (smoke mode; python3 only)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "_client", str(port), str(conns),
            str(seconds), path]
    out = run_loadgen(env, argv, seconds + 30)
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# scenarios


def drive(env: Env, scenario: str, target: Target, seconds: float, rate: float | None) -> dict:
    """One measured run of one scenario against one target."""
    p = target.ports
    path = request_path(env)
    if scenario in ("h1-browser", "h2-browser"):
        path += BROWSER_PATH  # (request_path ends with "/")
    if env.smoke:
        return py_client(env, p["h1"], 8, seconds, path)
    if scenario == "h1":
        return wrk(env, f"http://{HOST}:{p['h1']}{path}", H1_CONNS, seconds)
    if scenario == "h1-newconn":
        return wrk(env, f"http://{HOST}:{p['h1']}{path}", H1_CONNS, seconds, ["Connection: close"])
    if scenario == "h1-serial":
        return wrk(env, f"http://{HOST}:{p['h1']}{path}", 1, seconds)
    if scenario == "h1-browser":
        return wrk(env, f"http://{HOST}:{p['h1']}{path}", H1_CONNS, seconds, BROWSER_FIELDS)
    if scenario == "h2":
        return h2load(env, f"http://{HOST}:{p['h2']}{path}", H2_CONNS, H2_STREAMS, seconds)
    if scenario == "h2-browser":
        return h2load(env, f"http://{HOST}:{p['h2']}{path}", H2_CONNS, H2_STREAMS, seconds,
                      header_args(BROWSER_FIELDS, lower_names=True))
    if scenario == "tls-h1":
        return wrk(env, f"https://{HOST}:{p['tls']}{path}", H1_CONNS, seconds)
    if scenario == "tls-h2":
        return h2load(env, f"https://{HOST}:{p['tls']}{path}", H2_CONNS, H2_STREAMS, seconds)
    if scenario == "tls-handshake":
        return tls_handshake_load(env, p["tls"], H1_CONNS, seconds, [path])
    if scenario == "tls-handshake-full":
        return tls_handshake_load(env, p["tls"], H1_CONNS, seconds, [path, "--no-resume"])
    if scenario == "tls-handshake-wrk":
        return wrk(env, f"https://{HOST}:{p['tls']}{path}", H1_CONNS, seconds, ["Connection: close"])
    if scenario == "body-1m":
        return wrk(env, f"http://{HOST}:{p['h1']}/1m", BODY_CONNS, seconds)
    if scenario == "grpc":
        return h2load(
            env, f"http://{HOST}:{p['grpc']}/grpc", H2_CONNS, H2_STREAMS, seconds,
            ["-d", str(env.work / "grpc-request.bin"), "-H", "content-type: application/grpc",
             "-H", "te: trailers"],
        )
    if scenario in ("latency-25", "latency-75"):
        assert rate is not None
        r = h2load(env, f"http://{HOST}:{p['h1']}{path}", FIXED_CONNS, 1, seconds,
                   ["--h1", "--rps", f"{rate / FIXED_CONNS:.3f}"])
        r["offered_rps"] = rate
        return r
    raise ValueError(scenario)


def measure(env: Env, scenario: str, target: Target, seconds: float, rate=None) -> dict:
    pids = target.pids()
    a0 = target.up.accepts()
    p0, l0 = core_ticks(env.proxy_cpu), core_ticks(env.load_cpu)
    (u0, s0), c0, t0 = cpu_ticks(pids), cpu_ns(pids), time.monotonic()
    r = drive(env, scenario, target, seconds, rate)
    c1, wall, (u1, s1) = cpu_ns(pids), time.monotonic() - t0, cpu_ticks(pids)
    p1, l1 = core_ticks(env.proxy_cpu), core_ticks(env.load_cpu)
    a1 = target.up.accepts()
    # connections the upstream accepted during the run (-1: the stub_status probe itself);
    # for `direct` these are the load generator's own connections
    r["upstream_conns"] = a1 - a0 - 1 if a0 is not None and a1 is not None else None
    n = r["requests"]
    r["rps"] = n / r["seconds"] if r["seconds"] > 0 else 0.0
    r["loadavg_1m"] = os.getloadavg()[0]  # other work on the machine shows up here
    r["cpu_us_per_req"] = (c1 - c0) / 1000 / n if n else None
    r["cpu_cores"] = (c1 - c0) / 1e9 / wall if wall > 0 else None
    # the part of it spent in user space (the rest is the kernel's: sockets, epoll)
    ticks = (u1 - u0) + (s1 - s0)
    if r["cpu_us_per_req"] is not None and ticks > 0:
        r["cpu_user_us_per_req"] = r["cpu_us_per_req"] * (u1 - u0) / ticks
    # The cores as a whole. The load generator's core (the load generator and the upstream) is
    # what a closed loop saturates when the proxy is not the limit: its busy time per request
    # tells what the target costs the other side (a proxy that leaves its own core idle makes
    # every send to it wake a halted CPU, an interrupt that the sender pays). The proxy core's
    # idle share tells whether the proxy was the limit.
    hz = os.sysconf("SC_CLK_TCK")
    if l0 and l1 and n:
        r["load_core_us_per_req"] = (l1[0] - l0[0]) * 1e6 / hz / n
    if p0 and p1:
        busy, idle = p1[0] - p0[0], p1[1] - p0[1]
        if busy + idle > 0:
            r["proxy_core_idle"] = idle / (busy + idle)
    if scenario == "body-1m":
        r["mib_per_s"] = r["bytes"] / r["seconds"] / (1 << 20) if r["seconds"] else 0.0
    mem = [proc_status(pid) for pid in pids]
    r["rss_bytes"] = sum(m["rss"] for m in mem)
    r["peak_rss_bytes"] = sum(m["hwm"] for m in mem)
    return r


def memory_run(env: Env, target: Target, conns: int) -> dict:
    pids = target.pids()
    port = target.ports["h1"]
    for _ in range(20):  # a few requests first, so lazily built state exists before "before"
        http_get(port)
    time.sleep(0.5)
    before = sum(proc_status(p)["rss"] for p in pids)
    argv = [sys.executable, str(Path(__file__).resolve()), "_idle", str(port), str(conns), "90"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=pin(env.load_cpu))
    try:
        ready, _, _ = select.select([p.stdout], [], [], 90)
        if not ready:
            raise RuntimeError("the idle-connection client did not report within 90 s")
        report = json.loads(p.stdout.readline() or "{}")
        time.sleep(1.0)
        held = sum(proc_status(pid)["rss"] for pid in pids)
        sockets = sum(open_sockets(pid) for pid in pids)
    finally:
        try:
            p.stdin.write("close\n")
            p.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    opened = report.get("opened", 0)
    time.sleep(1.0)
    return {
        "connections_opened": opened,
        "connections_failed": report.get("failed", 0),
        "open_seconds": report.get("seconds"),
        "server_sockets": sockets,
        "rss_before_bytes": before,
        "rss_with_conns_bytes": held,
        "bytes_per_conn": (held - before) / opened if opened else None,
        "rss_after_close_bytes": sum(proc_status(pid)["rss"] for pid in pids),
        "peak_rss_bytes": sum(proc_status(pid)["hwm"] for pid in pids),
        "errors": conns - opened,
    }


METRICS = ["upstream_conns", "rps", "cpu_us_per_req", "cpu_user_us_per_req", "cpu_cores",
           "load_core_us_per_req", "proxy_core_idle", "mib_per_s", "offered_rps", "errors",
           "rss_bytes", "peak_rss_bytes", "idle_rss_bytes", "rss_before_bytes",
           "rss_with_conns_bytes", "bytes_per_conn", "connections_opened", "server_sockets",
           "rss_after_close_bytes", "active_peak_rss_bytes", "active_tls_peak_rss_bytes"]
# Peaks: the rounds' largest, not their median.
PEAKS = {"peak_rss_bytes", "active_peak_rss_bytes", "active_tls_peak_rss_bytes"}
LAT = ["p50", "p90", "p99", "p999", "max", "mean"]


def median_of(runs: list[dict]) -> dict:
    med: dict = {}
    for k in METRICS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            med[k] = max(vals) if k in PEAKS else statistics.median(vals)
    med["errors"] = sum(r.get("errors", 0) or 0 for r in runs)  # all rounds' errors
    lats = [r["latency_us"] for r in runs if r.get("latency_us")]
    if lats:
        med["latency_us"] = {k: statistics.median(l[k] for l in lats) for k in LAT}
    cpu = [r["cpu_us_per_req"] for r in runs if r.get("cpu_us_per_req") is not None]
    if len(cpu) > 1:
        med["cpu_us_per_req_min"], med["cpu_us_per_req_max"] = min(cpu), max(cpu)
    return med


def run_scenario(env: Env, scenario: str, targets: list[str], capacity: float | None,
                 rounds: int | None = None) -> dict:
    """Runs `scenario` against `targets`, `rounds` interleaved rounds (default: --rounds)."""
    args = env.args
    title, what, kind = SCENARIOS[scenario]
    res: dict = {"title": title, "method": what, "kind": kind, "targets": {}}
    if kind == "fixed":
        if not capacity:
            res["skipped"] = "needs nginx's capacity: run it with the h1 scenario and nginx"
            return res
        frac = 0.25 if scenario == "latency-25" else 0.75
        res["offered_rps"] = rate = capacity * frac
        res["capacity_rps"] = capacity
    else:
        rate = None
    if scenario in TLS_SCENARIOS and env.h2load is None and env.wrk is None:
        res["skipped"] = "needs wrk and h2load"
        return res
    if kind == "memory":
        return memory_scenario(env, res, targets)
    conns = 4096
    tls = scenario in TLS_SCENARIOS
    up = Upstream(env)
    objs: dict[str, Target] = {}
    active: list[str] = []
    try:
        up.start(conns, tls)
        for t in targets:
            obj = TARGET_CLASSES[t](env, up)
            objs[t] = obj
            why = obj.unsupported(scenario)
            if why:
                res["targets"][t] = {"status": "skipped", "reason": why}
                continue
            try:
                obj.start(conns, tls)
            except Exception as e:  # noqa: BLE001 - reported in the table
                res["targets"][t] = {"status": "error", "reason": f"start: {e}"}
                continue
            active.append(t)
            res["targets"][t] = {"status": "ok", "runs": []}
        time.sleep(0.3)
        for t in active:  # idle memory, before any load
            pids = objs[t].pids()
            if "h1" in objs[t].ports:
                http_get(objs[t].ports["h1"])
            time.sleep(0.2)
            res["targets"][t]["idle_rss_bytes"] = sum(proc_status(p)["rss"] for p in pids)
        warm = 0.5 if env.smoke else 1.0
        for t in list(active):
            try:
                w = drive(env, scenario, objs[t], warm, rate)
                if w["requests"] == 0 or w["errors"] > w["requests"] // 100:
                    raise RuntimeError(
                        f"warm-up: {w['requests']} requests, {w['errors']} errors")
            except Exception as e:  # noqa: BLE001 - reported in the table
                res["targets"][t] = {"status": "error", "reason": str(e)[:300]}
                active.remove(t)
        for rnd in range(rounds or args.rounds):
            for t in list(active):
                try:
                    r = measure(env, scenario, objs[t], args.seconds, rate)
                except Exception as e:  # noqa: BLE001 - reported in the table
                    res["targets"][t] = {"status": "error", "reason": str(e)[:300]}
                    active.remove(t)
                    continue
                r["round"] = rnd + 1
                res["targets"][t]["runs"].append(r)
                cpu = r["cpu_us_per_req"]
                log(f"  {scenario} round {rnd + 1} {t:8} {r['rps']:10.0f} req/s  "
                    f"{cpu if cpu is None else round(cpu, 2)} µs/req  "
                    f"p99 {r['latency_us'].get('p99', 0):.0f} µs  errors {r['errors']}")
    finally:
        for t in objs.values():
            t.stop()
        up.stop()
    for t in active:
        tr = res["targets"][t]
        tr["median"] = median_of(tr["runs"])
        tr["median"]["idle_rss_bytes"] = tr["idle_rss_bytes"]
    add_ratios(res)
    return res


CAPACITY_ROUNDS = 3


def measure_capacity(env: Env) -> float | None:
    """nginx's HTTP/1.1 requests/s measured again, as in the h1 scenario (fewer rounds), just
    before a fixed-rate scenario: the rate it offers is a share of what nginx serves now."""
    rounds = min(env.args.rounds, CAPACITY_ROUNDS)
    log(f"  nginx's capacity, measured again ({rounds} runs of h1)")
    res = run_scenario(env, "h1", ["nginx"], None, rounds)
    ng = res["targets"].get("nginx", {})
    if ng.get("status") != "ok":
        log(f"  nginx's capacity not measured again ({ng.get('status')}: "
            f"{ng.get('reason', '')}): the h1 scenario's is used")
        return None
    log(f"  nginx's capacity now: {ng['median']['rps']:.0f} requests/s")
    return ng["median"]["rps"]


def active_memory(env: Env, t: str) -> dict:
    """Peak RSS of a freshly started target under ACTIVE_CONNS busy keep-alive connections,
    plain HTTP/1.1 first, then TLS 1.3 (the peak after the second includes the first's)."""
    up = Upstream(env)
    obj = TARGET_CLASSES[t](env, up)
    try:
        # Sized as for the load scenarios: nginx's memory grows with its worker_connections.
        up.start(4096, True)
        obj.start(4096, True)
        http_get(obj.ports["h1"])
        out = {}
        for key, scheme, port in (("active_peak_rss_bytes", "http", obj.ports["h1"]),
                                  ("active_tls_peak_rss_bytes", "https", obj.ports["tls"])):
            r = wrk(env, f"{scheme}://{HOST}:{port}/", ACTIVE_CONNS, 2)
            if r["requests"] == 0 or r["errors"] > r["requests"] // 100:
                raise RuntimeError(f"{ACTIVE_CONNS} active connections over {scheme}: "
                                   f"{r['requests']} requests, {r['errors']} errors")
            out[key] = sum(proc_status(p)["hwm"] for p in obj.pids())
        return out
    finally:
        obj.stop()
        up.stop()


def memory_scenario(env: Env, res: dict, targets: list[str]) -> dict:
    """Every run on freshly started processes (upstream included): allocators keep what a
    previous run freed, which would hide the cost of the next run's connections."""
    n = 200 if env.smoke else IDLE_CONNS
    # headroom: nginx starts closing idle keep-alive connections when fewer than 1/16 of its
    # worker_connections are free
    conns = n + 1500
    res["connections"] = n
    ok = []
    for t in targets:
        why = TARGET_CLASSES[t].unsupported("memory")
        if why:
            res["targets"][t] = {"status": "skipped", "reason": why}
        else:
            res["targets"][t] = {"status": "ok", "runs": []}
            ok.append(t)
    for rnd in range(env.args.rounds):
        for t in list(ok):
            log(f"  memory round {rnd + 1} {t}")
            up = Upstream(env)
            obj = TARGET_CLASSES[t](env, up)
            try:
                up.start(conns, False)
                obj.start(conns, False)
                time.sleep(0.3)
                http_get(obj.ports["h1"])
                time.sleep(0.2)
                idle = sum(proc_status(p)["rss"] for p in obj.pids())
                r = memory_run(env, obj, n)
                r["idle_rss_bytes"] = idle
                # Stopped now (the `finally` below does nothing more): the next process starts
                # fresh and alone.
                obj.stop()
                up.stop()
                if env.wrk and not env.smoke:
                    r.update(active_memory(env, t))
                r["round"] = rnd + 1
                res["targets"][t]["runs"].append(r)
                log(f"  memory round {rnd + 1} {t:8} idle {mib(idle)}, "
                    f"{r['connections_opened']} connections: {fnum(r['bytes_per_conn'])} bytes each")
            except Exception as e:  # noqa: BLE001 - reported in the table
                res["targets"][t] = {"status": "error", "reason": str(e)[:300]}
                ok.remove(t)
            finally:
                obj.stop()
                up.stop()
    for t in ok:
        res["targets"][t]["median"] = median_of(res["targets"][t]["runs"])
    add_ratios(res)
    return res


def add_ratios(res: dict) -> None:
    """Each target's medians divided by nginx's and by direct's."""

    def flat(m: dict) -> dict:
        f = {k: v for k, v in m.items() if isinstance(v, (int, float))}
        for k, v in m.get("latency_us", {}).items():
            f[k] = v
        return f

    for base in ("nginx", "direct"):
        b = res["targets"].get(base, {})
        if b.get("status") != "ok":
            continue
        bf = flat(b["median"])
        for t in res["targets"].values():
            if t.get("status") != "ok":
                continue
            tf = flat(t["median"])
            t[f"vs_{base}"] = {k: tf[k] / bf[k] for k in tf if k in bf and bf[k]}
    add_paired(res)


def median_interval(n: int, level: float = 0.95) -> tuple[int, int, float]:
    """The ranks (1-based, of n sorted values) bounding a distribution-free confidence
    interval for the median, and the interval's exact coverage: the median lies below the
    k-th smallest value with probability P(Binomial(n, 1/2) < k), so k is the largest rank
    with that tail at most (1 - level) / 2 on each side. With fewer than 6 values no interval
    reaches 95 %: the whole range is given, with the coverage it has."""
    from math import comb

    def below(k: int) -> float:  # P(Binomial(n, 1/2) < k)
        return sum(comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k + 1 <= n // 2 and below(k + 1) <= (1 - level) / 2:
        k += 1
    return k, n + 1 - k, 1 - 2 * below(k)


# What paired ratios are taken against: the two proxies of the goals, and the floor.
PAIRED_BASES = ("nginx", "haproxy", "relay")


def add_paired(res: dict) -> None:
    """Round-by-round ratios of each target against nginx, HAProxy and the relay: of CPU per
    request, and in the fixed-rate scenarios of p99 latency as well. Each round runs every
    target back to back, so a round's ratio cancels what drifts more slowly than a round
    (other tenants of a shared host, the load generator's core); the median of those ratios,
    with a confidence interval from the order statistics, says whether a difference is beyond
    this machine's noise."""
    measures = [("paired_cpu", lambda r: r.get("cpu_us_per_req"))]
    if res.get("kind") == "fixed":
        measures.append(("paired_p99", lambda r: r.get("latency_us", {}).get("p99")))
    for key, value in measures:
        for base in PAIRED_BASES:
            b = res["targets"].get(base, {})
            if b.get("status") != "ok":
                continue
            by_round = {r["round"]: value(r) for r in b["runs"] if "round" in r}
            for name, t in res["targets"].items():
                if name == base or t.get("status") != "ok":
                    continue
                ratios = sorted(
                    value(r) / by_round[r["round"]]
                    for r in t["runs"]
                    if value(r) and by_round.get(r.get("round"))
                )
                if len(ratios) < 2:
                    continue
                lo, hi, coverage = median_interval(len(ratios))
                t.setdefault(key, {})[base] = {
                    "median": statistics.median(ratios),
                    "low": ratios[lo - 1],
                    "high": ratios[hi - 1],
                    "coverage": coverage,
                    "rounds": len(ratios),
                }


# ---------------------------------------------------------------------------------------------
# output: JSON, Markdown, SVG


def mib(b) -> str:
    return "" if b is None else f"{b / (1 << 20):.1f} MiB"


def us(v) -> str:
    if v is None:
        return ""
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def x(r: dict, base: str, k: str) -> str:
    v = r.get(f"vs_{base}", {}).get(k)
    return "" if v is None else f"{v:.2f}×"


def pct(v) -> str:
    return "" if v is None else f"{v * 100:.0f} %"


def fnum(v, nd=0) -> str:
    if v is None:
        return ""
    return f"{v:,.{nd}f}"


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Strait load comparison, {meta['date']}",
        "",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), "
        f"{meta['machine']['os']}, kernel {meta['machine']['kernel']}"
        f"{', idle: ' + meta['machine']['idle'] if meta['machine'].get('idle') else ''}.  ",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".  ",
        f"Strait {meta['strait']['commit']}{' (uncommitted changes)' if meta['strait']['dirty'] else ''}"
        f"{' (the checkout is at ' + meta['strait']['checkout'] + ')' if meta['strait'].get('checkout') else ''}"
        f", default config with `workers: 1`"
        f"{' and `busy_poll: ' + meta['strait_busy_poll'] + '`' if meta.get('strait_busy_poll') else ''}"
        f"{'; link order: ' + meta['strait']['link_order'] if meta['strait'].get('link_order') else ''}"
        ".  ",
        f"{meta['rounds']} interleaved rounds of {meta['seconds']} s per target; medians. "
        f"Proxies pinned to CPU {meta['proxy_cpu']}, load generator and upstream to CPU "
        f"{meta['load_cpu']}.{' SMOKE RUN: plumbing check, not a measurement.' if meta['smoke'] else ''}",
        *([f"Routing table: {meta['routes']} path-prefix routes (`/svc0` ... "
           f"`/svc{meta['routes'] - 1}`), each to an upstream block of its own, then the "
           f"catch-all; the small-response scenarios ask for `/svc{meta['routes'] - 1}/`."]
          if meta.get("routes") else []),
        "",
        "CPU µs/req: on-CPU time of the target's serving process (all threads, from "
        "/proc/PID/task/*/schedstat) per completed request. For `direct` it is the upstream's "
        "own cost of answering. ×nginx and ×direct divide by nginx's and direct's medians. "
        "user: the part of it in user space (the rest is the kernel's), split by the "
        "threads' utime and stime. load core: the busy time of the load generator's and "
        "upstream's CPU per request (/proc/stat: user, system, irq, softirq), what the target "
        "costs the other side; proxy idle: the share of the run the proxy's CPU was idle.",
        "",
    ]
    # summary
    closed = [s for s, r in result["scenarios"].items() if r["kind"] == "closed"]
    if closed:
        tnames = result["meta"]["targets"]
        lines += ["## Summary: CPU µs per request (requests/s)", "",
                  "| scenario | " + " | ".join(tnames) + " |",
                  "|---|" + "---:|" * len(tnames)]
        for s in closed:
            row = [s]
            for t in tnames:
                r = result["scenarios"][s]["targets"].get(t, {})
                if r.get("status") == "ok":
                    m = r["median"]
                    row.append(f"{fnum(m.get('cpu_us_per_req'), 2)} ({fnum(m.get('rps'))})")
                elif r:
                    row.append(r.get("status", ""))
                else:
                    row.append("")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    for s, res in result["scenarios"].items():
        lines += [f"## {s}: {res['title']}", "", res["method"] + ".", ""]
        if res.get("skipped"):
            lines += [f"Skipped: {res['skipped']}.", ""]
            continue
        kind = res["kind"]
        if kind == "fixed":
            then = res.get("capacity_h1_rps")
            lines += [f"Offered: {fnum(res['offered_rps'])} requests/s (nginx capacity "
                      f"{fnum(res['capacity_rps'])} requests/s"
                      + (f", measured again just before this scenario; {fnum(then)} in the h1 "
                         f"scenario" if then else "") + ").", ""]
            served = [r["median"].get("rps", 0) for r in res["targets"].values()
                      if r.get("status") == "ok"]
            if served and max(served) < 0.97 * res["offered_rps"]:
                lines += ["**Every target was saturated** (served less than 97 % of the offered "
                          "rate): this compares saturated proxies, not the offered load.", ""]
        if kind == "memory":
            head = ["target", "idle RSS", "×nginx", f"peak, {ACTIVE_CONNS} active",
                    f"peak, {ACTIVE_CONNS} active TLS", "RSS before",
                    f"RSS with {res.get('connections', 0):,} conns", "bytes/conn", "×nginx",
                    "×direct", "peak RSS", "opened", "server sockets", "errors"]
        elif kind == "fixed":
            head = ["target", "achieved req/s", "p50", "p90", "p99", "p99.9", "max",
                    "p99 ×nginx", "p99 ×direct", "CPU µs/req", "×nginx", "peak RSS", "errors"]
        else:
            rate = "MiB/s" if s == "body-1m" else ("handshakes/s" if s in HANDSHAKE_SCENARIOS else "req/s")
            head = ["target", rate, "×nginx", "×direct", "CPU µs/req", "(min–max)", "user",
                    "×nginx", "×direct", "load core", "proxy idle", "p50", "p99", "p99.9",
                    "peak RSS", "upstream conns", "errors"]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for t, r in res["targets"].items():
            if r.get("status") != "ok":
                lines.append(f"| {t} | {r.get('status')}: {r.get('reason', '')} |" + " |" * (len(head) - 2))
                continue
            m = r["median"]
            lat = m.get("latency_us", {})
            if kind == "memory":
                row = [t, mib(m.get("idle_rss_bytes")), x(r, "nginx", "idle_rss_bytes"),
                       mib(m.get("active_peak_rss_bytes")), mib(m.get("active_tls_peak_rss_bytes")),
                       mib(m.get("rss_before_bytes")), mib(m.get("rss_with_conns_bytes")),
                       fnum(m.get("bytes_per_conn")), x(r, "nginx", "bytes_per_conn"),
                       x(r, "direct", "bytes_per_conn"), mib(m.get("peak_rss_bytes")),
                       fnum(m.get("connections_opened")), fnum(m.get("server_sockets")),
                       fnum(m.get("errors"))]
            elif kind == "fixed":
                achieved = fnum(m.get("rps"))
                if m.get("rps", 0) < 0.97 * res["offered_rps"]:
                    achieved += " (saturated)"
                row = [t, achieved, us(lat.get("p50")), us(lat.get("p90")),
                       us(lat.get("p99")), us(lat.get("p999")), us(lat.get("max")),
                       x(r, "nginx", "p99"), x(r, "direct", "p99"),
                       fnum(m.get("cpu_us_per_req"), 2), x(r, "nginx", "cpu_us_per_req"),
                       mib(m.get("peak_rss_bytes")), fnum(m.get("errors"))]
            else:
                key = "mib_per_s" if s == "body-1m" else "rps"
                spread = ""
                if "cpu_us_per_req_min" in m:
                    spread = f"{m['cpu_us_per_req_min']:.2f}–{m['cpu_us_per_req_max']:.2f}"
                row = [t, fnum(m.get(key), 1 if key == "mib_per_s" else 0), x(r, "nginx", key),
                       x(r, "direct", key), fnum(m.get("cpu_us_per_req"), 2), spread,
                       fnum(m.get("cpu_user_us_per_req"), 2), x(r, "nginx", "cpu_us_per_req"), x(r, "direct", "cpu_us_per_req"),
                       fnum(m.get("load_core_us_per_req"), 1), pct(m.get("proxy_core_idle")),
                       us(lat.get("p50")), us(lat.get("p99")), us(lat.get("p999")),
                       mib(m.get("peak_rss_bytes")), fnum(m.get("upstream_conns")),
                       fnum(m.get("errors"))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        for key, what in (("paired_p99", "p99 latency"), ("paired_cpu", "CPU µs/req")):
            paired = [(t, b, r[key][b]) for t, r in res["targets"].items()
                      for b in PAIRED_BASES if b in r.get(key, {})]
            if not paired:
                continue
            lines += [f"{what} paired round by round: the median of each round's ratio, "
                      "with a distribution-free confidence interval for it.", "",
                      "| target | against | median ratio | interval | coverage | rounds |",
                      "|---|---|---:|---:|---:|---:|"]
            for t, b, p in paired:
                lines.append(f"| {t} | {b} | {p['median']:.2f}× | {p['low']:.2f}–{p['high']:.2f}× "
                             f"| {p['coverage'] * 100:.0f} % | {p['rounds']} |")
            lines.append("")
    return "\n".join(lines)


COLORS = {"direct": "#7f7f7f", "strait": "#d62728", "strait-observed": "#ff7f0e",
          "nginx": "#2ca02c", "haproxy": "#1f77b4", "relay": "#9467bd", "lean": "#8c564b"}


def svg_plot(result: dict) -> str:
    """Latency by percentile, one panel per scenario with latencies, log scale."""
    import math

    panels = []
    for s, res in result["scenarios"].items():
        series = {}
        for t, r in res.get("targets", {}).items():
            lat = r.get("median", {}).get("latency_us") if r.get("status") == "ok" else None
            if lat:
                series[t] = [lat[k] for k in ("p50", "p90", "p99", "p999", "max")]
        if series:
            title = res["title"] if res["kind"] == "fixed" else f"{res['title']} (closed loop)"
            panels.append((res["kind"] != "fixed", s, title, series))
    # the open-loop (fixed-rate) panels first: closed-loop latency mostly shows queueing
    panels = [p[1:] for p in sorted(panels, key=lambda p: p[0])]
    cols = 2
    pw, ph = 460, 300
    ml, mr, mt, mb = 62, 16, 46, 40
    rows = max(1, math.ceil(len(panels) / cols))
    top = 50
    width, height = cols * pw, rows * ph + top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">Latency by percentile '
        f'(median of rounds; log scale) — {result["meta"]["date"]}</text>',
    ]
    # legend
    for i, (t, c) in enumerate(COLORS.items()):
        out.append(f'<rect x="{12 + i * 95}" y="35" width="14" height="4" fill="{c}"/>'
                   f'<text x="{12 + i * 95 + 18}" y="41">{t}</text>')
    labels = ["p50", "p90", "p99", "p99.9", "max"]
    if not panels:
        out.append('<text x="10" y="60">no latency data in this run</text>')
    for i, (s, title, series) in enumerate(panels):
        ox, oy = (i % cols) * pw, top + (i // cols) * ph
        allv = [v for vs in series.values() for v in vs if v > 0]
        lo = 10 ** math.floor(math.log10(max(1.0, min(allv))))
        hi = 10 ** math.ceil(math.log10(max(allv) * 1.01))
        if hi <= lo:
            hi = lo * 10
        x0, x1, y0, y1 = ox + ml, ox + pw - mr, oy + ph - mb, oy + mt

        def ypos(v: float) -> float:
            v = max(v, lo)
            return y0 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (y0 - y1)

        def xpos(j: int) -> float:
            return x0 + (j + 0.5) * (x1 - x0) / len(labels)

        out.append(f'<text x="{ox + ml}" y="{oy + 20}" font-weight="bold">{s}</text>'
                   f'<text x="{ox + ml}" y="{oy + 34}" fill="#555">{esc(title[:70])}</text>')
        out.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" '
                   'fill="none" stroke="#999"/>')
        d = lo
        while d <= hi * 1.0001:
            y = ypos(d)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{tick(d)}</text>')
            d *= 10
        for j, lab in enumerate(labels):
            out.append(f'<text x="{xpos(j):.1f}" y="{y0 + 16}" text-anchor="middle">{lab}</text>')
        for t, vs in series.items():
            c = COLORS.get(t, "#000")
            pts = " ".join(f"{xpos(j):.1f},{ypos(v):.1f}" for j, v in enumerate(vs))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
            for j, v in enumerate(vs):
                out.append(f'<circle cx="{xpos(j):.1f}" cy="{ypos(v):.1f}" r="3" fill="{c}">'
                           f'<title>{t} {labels[j]} {us(v)}</title></circle>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tick(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:g} s"
    return f"{v / 1000:g} ms" if v >= 1000 else f"{v:g} µs"


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def compare(old_path: str, new_path: str) -> str:
    old, new = json.loads(Path(old_path).read_text()), json.loads(Path(new_path).read_text())
    lines = [f"Compare {old_path} ({old['meta']['date']}) → {new_path} ({new['meta']['date']})", "",
             "| scenario | target | metric | old | new | change |", "|---|---|---|---:|---:|---:|"]
    routes = (old["meta"].get("routes", 0), new["meta"].get("routes", 0))
    if routes[0] != routes[1]:
        lines[1:1] = [f"Routing tables differ: {routes[0]} routes → {routes[1]}.", ""]
    polls = (old["meta"].get("strait_busy_poll"), new["meta"].get("strait_busy_poll"))
    if polls[0] != polls[1]:
        lines[1:1] = [f"Strait's busy_poll differs: {polls[0] or 'off'} → {polls[1] or 'off'}.", ""]
    for s, res in new["scenarios"].items():
        ores = old["scenarios"].get(s, {})
        for t, r in res.get("targets", {}).items():
            o = ores.get("targets", {}).get(t, {})
            if r.get("status") != "ok" or o.get("status") != "ok":
                continue
            for k in ("rps", "cpu_us_per_req", "bytes_per_conn", "p99"):
                a = o["median"].get(k, o["median"].get("latency_us", {}).get(k))
                b = r["median"].get(k, r["median"].get("latency_us", {}).get(k))
                if a and b is not None:
                    lines.append(f"| {s} | {t} | {k} | {a:,.2f} | {b:,.2f} | {(b / a - 1) * 100:+.1f}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# metadata


def first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (p.stdout + p.stderr).strip()
        return text.splitlines()[0] if text else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def idle_setting() -> str:
    """The kernel's idle driver and, for `haltpoll`, how long an idle vCPU polls before it
    halts: at 0 a sleeping proxy wakes through the host, which sets the fixed-rate scenarios'
    tail (docs/benchmarks.md, the Intel machine's results)."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""
    driver = read("/sys/devices/system/cpu/cpuidle/current_driver") or "none"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return f"{driver}, guest_halt_poll_ns {poll}" if poll else driver


def link_order(binary: str) -> str:
    """Whether the binary was linked in a link order (crates/strait/build.rs), and with a list
    that matches it: a list goes stale when symbol names change, and the binary's resident
    size grows with it. The committed list is for plain release builds,
    `pgo/symbol-order.txt` for build-pgo.sh's. Reports the best-matching list: how many of its
    functions the binary has, and how many of those lie together at the start of the code."""
    try:
        p = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    code = sorted((int(f[0], 16), f[2]) for f in (line.split() for line in p.stdout.splitlines())
                  if len(f) == 3 and f[1] in "tTwW")
    defined = {name for _, name in code}
    best, best_found = "", -1
    # build-pgo.sh's list also sits beside its binary (pgo/use/HOST/release/strait), which
    # finds it when CARGO_TARGET_DIR is not set here as it was for the build.
    beside = Path(binary).resolve().parents[3:4]
    lists = [REPO / "crates/strait/symbol-order.txt", cargo_target_dir() / "pgo/symbol-order.txt"]
    lists += [p / "symbol-order.txt" for p in beside if p.name == "pgo"]
    for path in dict.fromkeys(lists):
        try:
            names = set(path.read_text().split())
        except OSError:
            continue
        found = len(names & defined)
        if found > best_found and names:
            first = {name for _, name in code[:found]}
            placed = len(first & names) / found if found else 0.0
            best_found = found
            best = (f"{found:,} of the {len(names):,} functions of {path.parent.name}/{path.name} "
                    f"are in it, {placed:.0%} of them placed first")
    return best


def metadata(env: Env, args, targets: list[str]) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    osname = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    if not env.smoke:
        for name, argv in (("nginx", [env.nginx, "-v"]), ("haproxy", [env.haproxy, "-v"]),
                           ("wrk", [env.wrk, "-v"]), ("h2load", [env.h2load, "--version"]),
                           ("openssl", ["openssl", "version"])):
            if argv[0]:
                versions[name] = re.sub(r"^(nginx version: |HAProxy version |h2load )", "",
                                        first_line(argv)).split(" - ")[0].split(" Copyright")[0]
    checkout = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                 "crates"], capture_output=True, text=True).stdout.strip())
    version = first_line([env.strait, "--version"]) if env.strait else ""
    # `strait 0.1.0 (918ff336a)`: the commit the binary was built from, which need not be the
    # checkout's (a binary kept from an earlier build, a profile-guided one made elsewhere).
    built = re.search(r"\(([0-9a-f]{7,40})\)", version)
    commit = built.group(1) if built else checkout
    # Uncommitted changes in the checkout say something of the binary only if built from it.
    same = not built or checkout.startswith(commit[:7]) or commit.startswith(checkout[:7])
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "smoke": env.smoke,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "routes": args.routes,
        "strait_busy_poll": args.strait_busy_poll,
        "targets": targets,
        "proxy_cpu": env.proxy_cpu,
        "load_cpu": env.load_cpu,
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
                    "os": osname, "loadavg_at_start": os.getloadavg(), "idle": idle_setting()},
        "versions": versions,
        # a run without a Strait target (--targets nginx,relay) has no binary to ask
        "strait": {"binary": env.strait,
                   "version": version,
                   "commit": commit, "dirty": dirty and same,
                   "checkout": None if same else checkout,
                   # the smoke run's debug binary has no link order to check
                   "link_order": link_order(env.strait) if env.strait and not env.smoke else ""},
    }


# ---------------------------------------------------------------------------------------------
# helpers run as subprocesses (pinned to the load core): smoke upstream, smoke client, idle conns


def nofile_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def read_response(reader: asyncio.StreamReader) -> int:
    """Reads one HTTP/1.1 response; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if m:
        await reader.readexactly(int(m.group(1)))
    elif re.search(rb"\r\ntransfer-encoding:\s*chunked", head, re.I):
        for _ in range(100_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


def serve_fixed(port: int, resp: bytes) -> None:
    """An HTTP/1.1 keep-alive server that reads each request (head and content-length body)
    and answers `resp`, until the client closes or sends `connection: close`."""

    async def handle(reader, writer):
        try:
            for _ in range(10_000_000):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
                m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
                if m:
                    await reader.readexactly(int(m.group(1)))
                writer.write(resp)
                await writer.drain()
                if re.search(rb"\r\nconnection:\s*close", head, re.I):
                    break
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, port, backlog=4096)
        async with server:
            await asyncio.sleep(3600)  # bounded: the harness stops it long before

    raise_nofile()
    asyncio.run(main())


def sub_upstream(port: int) -> None:
    body = SMALL_BODY.encode()
    serve_fixed(port, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)


def sub_otlp(port: int) -> None:
    """An OTLP/HTTP sink: reads each export and answers 200 with an empty protobuf response."""
    serve_fixed(port, b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n"
                b"content-length: 0\r\n\r\n")


def sub_client(port: int, conns: int, seconds: float, path: str) -> None:
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    lat: list[int] = []
    errors = 0
    nbytes = 0
    max_requests = 2_000_000

    async def one(deadline: float):
        nonlocal errors
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        except (OSError, asyncio.TimeoutError):
            errors += 1
            return
        try:
            while time.monotonic() < deadline and len(lat) < max_requests:
                t0 = time.perf_counter_ns()
                writer.write(req)
                status = await asyncio.wait_for(read_response(reader), 5)
                lat.append((time.perf_counter_ns() - t0) // 1000)
                if status // 100 != 2:
                    errors += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    async def main():
        t0 = time.monotonic()
        await asyncio.gather(*(one(t0 + seconds) for _ in range(conns)))
        return time.monotonic() - t0

    secs = asyncio.run(main())
    print(json.dumps({"requests": len(lat), "seconds": secs, "bytes": nbytes, "errors": errors,
                      "latency_us": percentiles(lat)}))


def sub_idle(port: int, conns: int, timeout: float) -> None:
    """Opens `conns` keep-alive connections, one request on each, reports, then holds them
    until told to close (a line on stdin) or `timeout` seconds pass."""
    raise_nofile()
    held = []
    failed = 0

    async def one(sem):
        nonlocal failed
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
                writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                status = await asyncio.wait_for(read_response(reader), 10)
                if status // 100 != 2:
                    failed += 1
                held.append((reader, writer))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                failed += 1

    async def main():
        sem = asyncio.Semaphore(128)
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one(sem) for _ in range(conns))), timeout)
        return time.monotonic() - t0

    try:
        secs = asyncio.run(main())
    except asyncio.TimeoutError:
        secs = timeout
    print(json.dumps({"opened": len(held), "failed": failed, "seconds": secs}), flush=True)
    select.select([sys.stdin], [], [], timeout)
    # exiting closes every connection


# ---------------------------------------------------------------------------------------------
# main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd, rest = sys.argv[1], sys.argv[2:]
        if cmd == "_upstream":
            sub_upstream(int(rest[0]))
        elif cmd == "_client":
            sub_client(int(rest[0]), int(rest[1]), float(rest[2]), rest[3])
        elif cmd == "_otlp":
            sub_otlp(int(rest[0]))
        elif cmd == "_idle":
            sub_idle(int(rest[0]), int(rest[1]), float(rest[2]))
        return 0

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                    help="comma-separated, from: " + ", ".join(SCENARIOS))
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma-separated subset of " + ", ".join(TARGETS))
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per measured run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario")
    ap.add_argument("--out", default=str(REPO / "bench-results"), help="output directory")
    ap.add_argument("--strait", help="the strait binary (run.sh builds it)")
    ap.add_argument("--tls-client",
                    help="the tls-handshake scenario's client (default: built with cargo)")
    ap.add_argument("--relay", help="the relay target's binary (default: built with cargo)")
    ap.add_argument("--lean",
                    help="the lean target's binary, lean-proxy (default: built with cargo)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds, python3 and strait only: h1 against direct and strait, "
                    "built-in client and upstream; checks the plumbing, measures nothing")
    ap.add_argument("--capacity", type=float,
                    help="nginx's HTTP/1.1 requests/s for the latency scenarios, when the h1 "
                    "scenario is not part of this run")
    ap.add_argument("--proxy-cpu", type=int, help="the targets' CPU (default: the first allowed)")
    ap.add_argument("--load-cpu", type=int,
                    help="the load generator's and upstream's CPU (default: the second allowed)")
    ap.add_argument("--no-pin", action="store_true", help="pin nothing")
    ap.add_argument("--routes", type=int, default=0, metavar="N",
                    help="give each proxy a routing table of N path prefixes (/svc0 ...), each "
                    "to an upstream block of its own, before its catch-all; the small-response "
                    "scenarios then ask for the last of them (default: the catch-all alone)")
    ap.add_argument("--strait-busy-poll", metavar="DURATION", default=None,
                    help="run the Strait targets with `busy_poll: DURATION` (e.g. 1ms): a worker "
                    "polls that long after its last work before it sleeps; see "
                    "docs/operations.md (default: off, as Strait ships)")
    ap.add_argument("--observe", choices=["all", "access-log", "tracing"], default="all",
                    help="what the strait-observed target turns on besides metrics")
    ap.add_argument("--observe-percent", type=float, default=OBSERVED_SAMPLE_PERCENT,
                    help="strait-observed's tracing sample_percent")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--report", metavar="RESULT.json",
                    help="write the Markdown and SVG of an earlier result file again and exit")
    ap.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"),
                    help="print the change between two result files and exit")
    args = ap.parse_args()

    if args.compare:
        print(compare(*args.compare))
        return 0
    if args.report:
        src = Path(args.report)
        result = json.loads(src.read_text())
        stem = src.with_suffix("")
        Path(f"{stem}.md").write_text(markdown(result) + "\n")
        Path(f"{stem}-latency.svg").write_text(svg_plot(result))
        log(f"wrote {stem}.md {stem}-latency.svg")
        return 0
    if args.smoke:
        args.scenarios, args.targets = "h1", "direct,strait"
        args.rounds, args.seconds = 1, min(args.seconds, 1.5)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    targets = [t for t in TARGETS if t in {x.strip() for x in args.targets.split(",")}]
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad or not targets:
        ap.error(f"unknown scenarios {bad}" if bad else "no known targets")
    if not args.strait and any(t.startswith("strait") for t in targets):
        default = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "strait"
        if not default.exists():
            ap.error("--strait PATH is required (benches/harness/run.sh builds it)")
        args.strait = str(default)
    if args.strait:
        args.strait = str(Path(args.strait).resolve())
    needs_client = {"tls-handshake", "tls-handshake-full"} & set(scenarios)
    if needs_client and not args.smoke and not args.tls_client:
        args.tls_client = build_bench_bin("tls-handshake-load")
    # the h1 references' binaries, by binary name
    args.bench_bins = {}
    for t, path in (("relay", args.relay), ("lean", args.lean)):
        if t in targets:
            binary = TARGET_CLASSES[t].binary
            args.bench_bins[binary] = path or build_bench_bin(binary)
    if args.rounds < 1 or args.seconds <= 0 or args.seconds > 600:
        ap.error("--rounds must be ≥ 1 and --seconds in (0, 600]")
    if not 0 <= args.routes <= 100_000:
        ap.error("--routes must be in [0, 100000]")
    if args.strait_busy_poll is not None and not re.fullmatch(
            r"[0-9]+(\.[0-9]+)?(us|ms)", args.strait_busy_poll):
        ap.error("--strait-busy-poll takes a duration in us or ms, such as 200us or 1ms")

    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="strait-bench-"))
    env = Env(args, work)
    if not args.smoke:
        missing = [n for n, p in (("nginx", env.nginx), ("haproxy", env.haproxy), ("wrk", env.wrk),
                                  ("h2load", env.h2load)) if p is None]
        if shutil.which("openssl") is None:
            missing.append("openssl")
        if missing:
            log(f"missing: {', '.join(missing)}: run benches/harness/run.sh (installs them from "
                "apt as root), or apt-get install nginx haproxy wrk nghttp2-client openssl")
            return 2
    if env.load_cpu is not None:
        os.sched_setaffinity(0, {env.load_cpu})  # keep the harness itself off the proxy's core

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    result = {"meta": metadata(env, args, targets), "scenarios": {}}
    capacity = args.capacity
    if any(SCENARIOS[s][2] == "fixed" for s in scenarios) and not capacity and "h1" not in scenarios:
        scenarios = ["h1"] + scenarios  # the latency scenarios need nginx's capacity
    if "h1" in scenarios and any(SCENARIOS[s][2] == "fixed" for s in scenarios):
        scenarios = ["h1"] + [s for s in scenarios if s != "h1"]
    t_start = time.monotonic()
    try:
        for s in scenarios:
            log(f"== {s}: {SCENARIOS[s][0]}")
            run_targets = targets
            if SCENARIOS[s][2] == "fixed" and "nginx" not in targets and not capacity:
                log("  (no capacity: the latency scenarios need nginx in the h1 scenario or "
                    "--capacity)")
            again = SCENARIOS[s][2] == "fixed" and capacity and not args.capacity
            # The host's speed drifts over a long run: measured only in h1, at its start, 75 %
            # of nginx's capacity can be more than any target serves by now (or far less).
            now = (measure_capacity(env) or capacity) if again else capacity
            res = run_scenario(env, s, run_targets, now)
            if again:
                res["capacity_h1_rps"] = capacity
            result["scenarios"][s] = res
            if s == "h1" and not capacity:
                ng = res["targets"].get("nginx", {})
                if ng.get("status") == "ok":
                    capacity = ng["median"]["rps"]
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        env.procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    result["meta"]["elapsed_seconds"] = round(time.monotonic() - t_start, 1)
    result["meta"]["machine"]["loadavg_at_end"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    paths = {
        "json": out / f"bench-{stamp}.json",
        "md": out / f"bench-{stamp}.md",
        "svg": out / f"bench-{stamp}-latency.svg",
    }
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    paths["md"].write_text(md + "\n")
    paths["svg"].write_text(svg_plot(result))
    print(md)
    log("wrote " + " ".join(str(p) for p in paths.values()))

    # smoke mode checks its own plumbing: every target measured, files written
    if args.smoke:
        problems = []
        for t in targets:
            r = result["scenarios"].get("h1", {}).get("targets", {}).get(t, {})
            m = r.get("median", {})
            if r.get("status") != "ok" or not m.get("rps") or not m.get("cpu_us_per_req") \
                    or not m.get("peak_rss_bytes") or not m.get("latency_us"):
                problems.append(f"{t}: {r.get('status')} {r.get('reason', '')} {m}")
        for p in paths.values():
            if not p.exists() or p.stat().st_size == 0:
                problems.append(f"{p} missing or empty")
        if problems:
            log("smoke check failed:\n  " + "\n  ".join(problems))
            return 1
        log("smoke check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
