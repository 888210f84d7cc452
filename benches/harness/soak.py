#!/usr/bin/env python3
"""Soak: mixed traffic, churn and abuse through one Strait for minutes, then checks that
nothing was lost and nothing leaked.

Traffic, all at once, each loop in its own thread until the time is up:
- wrk over HTTP/1.1 keep-alive (8 to 200 connections): small answers, 1 MiB answers, gzip,
  a route retrying an upstream's 500s, a rate-limited route, an HTTP/2 upstream;
- h2load over h2c (8 connections x 16 streams) to the same, 1 MiB answers from both kinds of
  upstream included;
- TLS 1.3: HTTP/2, HTTP/1.1 keep-alive, and a new connection per request;
- churn: 50 connections making one request each, HTTP/1.1 and h2c, over and over;
- uploads: 256 KiB request bodies over HTTP/1.1 and h2c, to HTTP/1.1, h2c and mesh upstreams,
  which the upstreams answer before reading them; they go to a second nginx that is not
  reloaded (a POST cannot go again, and one sent on a pooled connection as a reload closes it
  fails at any proxy), which the sidecar below forwards to as well;
- mesh: a second Strait as the second nginx's sidecar (TLS listener requiring a client
  certificate, authorization by SPIFFE ID), reached over mutual TLS with HTTP/1.1 and HTTP/2,
  and by a client whose identity it refuses (403);
- upgrades: a connection upgraded (101) to a byte echo, checked byte for byte, left at once
  or closed mid-echo now and then;
- abuse, from two threads: heads cut short, garbage, a client leaving mid-body, bodies
  shorter than announced, an HTTP/2 preface cut, conflicting lengths, a TLS hello cut, a
  client idle after one request, a route to an upstream that refuses;
- a config reload every 20 s (both proxies), and a reload of the first nginx (closing every
  upstream connection) every 40 s; nginx also ends each connection after 1,000 requests.

Every 10 s it samples both proxies' RSS, open files and gauges. When the time is up it stops the
load, waits past the idle timeouts (5 s for clients, 2 s for upstream connections), and checks:
- neither proxy ever exited;
- no client connection, request or upstream connection is left open, and the open files are
  back to where they started;
- the RSS at rest is within 32 MiB of the start (a worker gives back what a burst used);
- no request that should have succeeded failed: no 5xx, reset or error on a route whose
  upstream answers 200 (the `/fail`, `/limited` and `/dead` routes' 500s, 429s and 503s are
  expected, and counted apart).

Writes OUT/soak-<stamp>.json and .md, with what each proxy answered other than 2xx by its own
counters, and each proxy's metrics at rest to OUT/soak-<stamp>-metrics-NAME.txt; exits 1 when
a check fails.

    python3 benches/harness/soak.py --strait target/release/strait --minutes 10
    python3 benches/harness/soak.py --smoke --strait PATH   # a few seconds, python3 only

Needs nginx, wrk, h2load and openssl (`apt-get install nginx wrk nghttp2-client openssl`;
`benches/harness/run.sh` installs them). The smoke mode needs python3 only: a built-in upstream
and client stand in, with no TLS, HTTP/2 or mesh (the upgrade echo is python's own), to keep
the plumbing from rotting (it runs in the test suite). Standard library only; everything
targets 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HOST, free_ports, raise_nofile, serve_fixed, tool, wait_port  # noqa: E402

# The paths whose failures are expected, counted apart: `/fail` answers 500 (and is retried),
# `/limited` is rate-limited (429), `/dead` goes to a port nobody listens on (503), `/stranger`
# reaches the mesh sidecar with an identity it refuses (403). Every other path's answers should
# be 2xx (101 for an upgrade).
EXPECTED_FAILURES = ("/fail", "/limited/", "/dead", "/stranger/")
# SPIFFE IDs: the sidecar's, the gateway's (allowed by the sidecar), a stranger's (refused).
MESH_IDS = {"cart": "spiffe://soak.local/ns/shop/sa/cart",
            "gateway": "spiffe://soak.local/ns/edge/sa/gateway",
            "stranger": "spiffe://soak.local/ns/other/sa/stranger"}
UPLOAD_BYTES = 256 * 1024
# How far above its start the proxy's RSS may be at rest.
RSS_SLACK_KIB = 32 * 1024
SAMPLE_EVERY = 10.0


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.smoke = args.smoke
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # (load, path) -> {"requests", "2xx", "4xx", "5xx", "errors"}
        self.counts: dict[tuple[str, str], dict[str, int]] = {}
        self.events: dict[str, int] = {}
        (self.listen, self.tls, self.admin, self.up1, self.up2, self.echo, self.mesh,
         self.mesh_admin, self.steady1, self.steady2) = free_ports(10)
        self.config = work / "strait.yaml"
        self.mesh_config = work / "sidecar.yaml"
        # idle timeouts, seconds: client connections', upstream connections'
        self.idle = (2, 1) if self.smoke else (5, 2)

    # -- bookkeeping

    def count(self, load: str, path: str, **n: int) -> None:
        with self.lock:
            c = self.counts.setdefault((load, path), {})
            for k, v in n.items():
                c[k] = c.get(k, 0) + v

    def event(self, name: str) -> None:
        with self.lock:
            self.events[name] = self.events.get(name, 0) + 1

    def run_tool(self, argv: list[str], timeout: float = 60) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            self.event("tool_timeouts")
            return ""

    # -- configs

    def write_strait_config(self, rate: int = 100) -> None:
        h2 = "" if self.smoke else """
      - name: h2up
        match: { path: { prefix: /h2 } }
        backends: [{ cluster: h2up }]
        rewrite: { path_prefix: / }""" + "".join(f"""
      - name: {name}
        match: {{ path: {{ prefix: /{name}/ }} }}
        backends: [{{ cluster: {name} }}]
        rewrite: {{ path_prefix: / }}""" for name in ("mesh", "mesh2", "stranger", "steady",
                                                      "steady2"))
        routes = f"""{h2}
      - name: echo
        match: {{ path: {{ prefix: /echo }} }}
        backends: [{{ cluster: echo }}]
      - name: dead
        match: {{ path: {{ prefix: /dead }} }}
        backends: [{{ cluster: dead }}]
      - name: limited
        match: {{ path: {{ prefix: /limited }} }}
        backends: [{{ cluster: up }}]
        rate_limit: {{ requests_per_second: {rate} }}
        rewrite: {{ path_prefix: / }}
      - name: fail
        match: {{ path: {{ prefix: /fail }} }}
        backends: [{{ cluster: up }}]
        retry: {{ attempts: 3, retry_on: [5xx] }}
      - name: text
        match: {{ path: {{ prefix: /text.txt }} }}
        backends: [{{ cluster: up }}]
        compression: {{ min_bytes: 100 }}
      - name: default
        backends: [{{ cluster: up }}]"""
        tls = "" if self.smoke else f"""
  - name: tls
    address: "{HOST}:{self.tls}"
    idle_timeout: {self.idle[0]}s
    tls:
      certificates: [{{ cert: "{self.work}/cert.pem", key: "{self.work}/key.pem" }}]
    routes:{routes}"""
        h2c = "" if self.smoke else f"""
  - name: h2up
    protocol: http2
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{self.up2}" }}]""" + "".join(f"""
  - name: {name}
    protocol: {protocol}
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{port}" }}]""" for name, protocol, port in (
            ("steady", "http1", self.steady1), ("steady2", "http2", self.steady2))) + "".join(f"""
  - name: {name}
    protocol: {protocol}
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{self.mesh}" }}]
    tls:
      ca: "{self.work}/ca.pem"
      cert: "{self.work}/{who}.pem"
      key: "{self.work}/{who}.key"
      spiffe_ids: ["{MESH_IDS['cart']}"]""" for name, protocol, who in (
            ("mesh", "http1", "gateway"), ("mesh2", "http2", "gateway"),
            ("stranger", "http1", "stranger")))
        self.config.write_text(f"""admin: {{ address: "{HOST}:{self.admin}" }}
workers: 2
listeners:
  - name: plain
    address: "{HOST}:{self.listen}"
    idle_timeout: {self.idle[0]}s
    access_log: {{ path: "{self.work}/access.log", sample_percent: 1 }}
    routes:{routes}{tls}
clusters:
  - name: up
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{self.up1}" }}]{h2c}
  - name: dead
    connect_timeout: 200ms
    endpoints: [{{ address: "{HOST}:1" }}]
  - name: echo
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{self.echo}" }}]
""")
        if not self.smoke:
            self.write_mesh_config()

    def write_mesh_config(self) -> None:
        """The second nginx's sidecar: mutual TLS in, the gateway's identity allowed."""
        self.mesh_config.write_text(f"""admin: {{ address: "{HOST}:{self.mesh_admin}" }}
workers: 1
listeners:
  - name: inbound
    address: "{HOST}:{self.mesh}"
    idle_timeout: {self.idle[0]}s
    tls:
      certificates: [{{ cert: "{self.work}/cart.pem", key: "{self.work}/cart.key" }}]
      client_auth: {{ ca: "{self.work}/ca.pem" }}
    authorization:
      default: deny
      rules: [{{ name: edge, action: allow, peers: ["spiffe://soak.local/ns/edge/*"] }}]
    routes:
      - backends: [{{ cluster: app }}]
clusters:
  - name: app
    idle_timeout: {self.idle[1]}s
    endpoints: [{{ address: "{HOST}:{self.steady1}" }}]
""")

    def nginx_config(self, name: str, h1: int, h2: int) -> Path:
        """An nginx upstream, `name`, serving HTTP/1.1 on `h1` and h2c on `h2`."""
        www = self.work / "www"
        www.mkdir(exist_ok=True)
        (www / "big").write_bytes(os.urandom(1 << 20))
        (www / "text.txt").write_text("x" * 5000 + "\n")
        conf = self.work / f"{name}.conf"
        conf.write_text(f"""worker_processes 1;
daemon off;
pid {self.work}/{name}.pid;
error_log {self.work}/{name}-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000;
  keepalive_timeout 3s;
  sendfile on;
  server {{ listen {HOST}:{h1};
    location /big {{ root {www}; }}
    location /text.txt {{ root {www}; default_type text/plain; }}
    location /fail {{ return 500 "no\\n"; }}
    location / {{ return 200 "hello from upstream\\n"; }} }}
  server {{ listen {HOST}:{h2} http2;
    location /big {{ root {www}; }}
    location / {{ return 200 "hello from the h2 upstream\\n"; }} }}
}}
""")
        return conf

    # -- load

    def wrk(self, load: str, path: str, conns: int) -> None:
        out = self.run_tool([self.args.wrk, "-t1", f"-c{conns}", "-d5s", "-H",
                             "Accept-Encoding: gzip", f"http://{HOST}:{self.listen}{path}"])
        m = re.search(r"(\d+) requests in", out)
        n = int(m.group(1)) if m else 0
        m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        bad = int(m.group(1)) if m else 0
        # wrk's socket errors at the end of a run are its own connections cut short
        self.count(load, path, requests=n, not2xx=bad)

    def wrk_loop(self) -> None:
        paths = ["/", "/api/v", "/h2/", "/text.txt", "/fail", "/limited/", "/big"]
        while not self.stop.is_set():
            self.wrk("wrk h1", random.choice(paths), random.choice([8, 64, 200]))

    def h2load(self, load: str, url: str, path: str, extra: list[str]) -> None:
        out = self.run_tool([self.args.h2load, "-t1", *extra, url])
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        e = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
        if not m or not e:
            self.event("h2load_without_summary")
            return
        s2, s3, s4, s5 = map(int, m.groups())
        self.count(load, path, requests=s2 + s3 + s4 + s5, not2xx=s3 + s4 + s5,
                   errors=int(e.group(3)) + int(e.group(4)))

    def h2_loop(self) -> None:
        while not self.stop.is_set():
            p = random.choice(["/", "/h2/", "/h2/big", "/big", "/api/v", "/fail"])
            self.h2load("h2c", f"http://{HOST}:{self.listen}{p}", p, ["-c8", "-m16", "-D3"])

    def tls_loop(self) -> None:
        base = f"https://{HOST}:{self.tls}"
        while not self.stop.is_set():
            kind = random.choice(["h2", "h1", "new connections"])
            if kind == "h2":
                self.h2load("TLS h2", base + "/h2/", "/h2/", ["-c8", "-m16", "-D3"])
            elif kind == "h1":
                self.h2load("TLS h1", base + "/", "/", ["--h1", "-c16", "-D3"])
            else:
                self.h2load("TLS new connections", base + "/api/x", "/api/x",
                            ["--h1", "-c100", "-n100"])

    def upload_loop(self) -> None:
        # To the nginx that is not reloaded (directly or through the sidecar): a POST cannot go
        # again, and one sent on a pooled connection as a reload closes it fails, at any proxy.
        while not self.stop.is_set():
            p = random.choice(["/steady/", "/steady2/", "/mesh/", "/mesh2/"])
            url = f"http://{HOST}:{self.listen}{p}"
            # nginx's h2c goes away often when its answers leave bodies unread: the streams
            # its `GOAWAY` refuses go again, bodies and all.
            body = str(self.work / "upload.bin")
            if random.random() < 0.5:
                self.h2load("upload h1", url, p, ["--h1", "-c8", "-D3", "-d", body])
            else:
                self.h2load("upload h2c", url, p, ["-c4", "-m8", "-D3", "-d", body])

    def mesh_loop(self) -> None:
        base = f"http://{HOST}:{self.listen}"
        while not self.stop.is_set():
            p = random.choice(["/mesh/", "/mesh2/"])
            kind = random.choice(["wrk", "h2c", "churn", "stranger"])
            if kind == "wrk":
                self.wrk("mesh wrk h1", p, random.choice([16, 64]))
            elif kind == "h2c":
                self.h2load("mesh h2c", base + p, p, ["-c8", "-m16", "-D3"])
            elif kind == "churn":
                self.h2load("mesh churn h1", base + p, p, ["--h1", "-c50", "-n50"])
            else:
                self.h2load("mesh stranger", base + "/stranger/", "/stranger/",
                            ["--h1", "-c4", "-n200"])

    def echo_loop(self) -> None:
        """Upgrades to the byte echo: each connection sends and checks a few chunks, and now
        and then leaves right after the 101 or closes with a chunk still on its way back."""
        while not self.stop.is_set():
            mode = random.choice(["echo", "echo", "leave", "cut"])
            try:
                with socket.create_connection((HOST, self.listen), timeout=5) as s:
                    s.sendall(b"GET /echo HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\n"
                              b"Upgrade: websocket\r\n\r\n")
                    f = s.makefile("rb")
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = f.readline()
                        if not line:
                            raise ValueError("closed before a response")
                        head += line
                    if head[9:12] != b"101":
                        self.count("upgrade echo", "/echo", requests=1, not2xx=1)
                        continue
                    chunks = 0 if mode == "leave" else random.randint(1, 40)
                    for i in range(chunks):
                        data = os.urandom(random.choice([10, 1000, 60000]))
                        s.sendall(data)
                        if mode == "cut" and i == chunks - 1:
                            break
                        if f.read(len(data)) != data:
                            raise ValueError("the echo differs from what was sent")
                    self.count("upgrade echo", "/echo", requests=1)
                    self.event(f"upgrades: {mode}")
            except (OSError, ValueError) as e:
                self.count("upgrade echo", "/echo", requests=1, errors=1)
                self.event(f"upgrade failed: {str(e)[:60]}")

    def churn_loop(self) -> None:
        while not self.stop.is_set():
            self.h2load("churn h1", f"http://{HOST}:{self.listen}/", "/", ["--h1", "-c50", "-n50"])
            self.h2load("churn h2c", f"http://{HOST}:{self.listen}/h2/", "/h2/",
                        ["-c50", "-n50"])

    def smoke_client_loop(self) -> None:
        """The smoke mode's load: keep-alive HTTP/1.1 requests to each path, and a new
        connection now and then."""
        paths = ["/", "/api/v", "/text.txt", "/fail", "/limited/"]
        while not self.stop.is_set():
            p = random.choice(paths)
            try:
                with socket.create_connection((HOST, self.listen), timeout=5) as s:
                    f = s.makefile("rb")
                    for _ in range(random.choice([1, 20])):
                        s.sendall(f"GET {p} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
                        status = read_status(f)
                        self.count("python h1", p, requests=1,
                                   not2xx=0 if 200 <= status < 300 else 1)
            except (OSError, ValueError):
                self.count("python h1", p, errors=1)

    def raw(self, data: bytes, read: int = 0, tls: bool = False, hold: float = 0.0,
            port: int | None = None) -> None:
        """Sends `data` on a new connection (to the TLS listener through TLS with `tls`, to
        `port` as it is), reads up to `read` bytes, waits `hold` seconds and closes."""
        try:
            s = socket.create_connection(
                (HOST, port or (self.tls if tls else self.listen)), timeout=3)
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(s)
            with s:
                s.sendall(data)
                got = 0
                while got < read:
                    b = s.recv(65536)
                    if not b:
                        break
                    got += len(b)
                if hold:
                    time.sleep(hold)
        except OSError:
            # the proxy closing on a bad request is what is asked for
            self.event("abuse: closed by the proxy")

    def abuse_loop(self) -> None:
        get = b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n"
        cases = [
            ("head cut short", lambda: self.raw(b"GET / HTTP/1.1\r\nHost: soak\r\n")),
            ("garbage", lambda: self.raw(b"\x00\xffgarbage\r\n\r\n", read=1)),
            ("left mid-body", lambda: self.raw(get % b"/big", read=20000)),
            ("body shorter than its length",
             lambda: self.raw(b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n"
                              + b"a" * 5000)),
            ("chunked body cut",
             lambda: self.raw(b"POST / HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked"
                              b"\r\n\r\n5\r\nhello\r\n")),
            ("conflicting lengths",
             lambda: self.raw(b"GET / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\n"
                              b"Content-Length: 2\r\n\r\n", read=1)),
            ("idle after one request", lambda: self.raw(get % b"/", read=10, hold=1.0)),
            ("to a refusing upstream", lambda: self.raw(get % b"/dead", read=1)),
        ]
        if not self.smoke:
            cases += [
                ("HTTP/2 left mid-body", lambda: self.raw(get % b"/h2/big", read=20000)),
                ("HTTP/2 preface cut", lambda: self.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0")),
                ("TLS left mid-body", lambda: self.raw(get % b"/big", read=1000, tls=True)),
                ("TLS hello cut", lambda: self.raw(b"\x16\x03\x01\x00\x05hello", port=self.tls)),
            ]
        while not self.stop.is_set():
            name, case = random.choice(cases)
            case()
            self.event(f"abuse: {name}")

    def echo_upstream(self) -> None:
        """The upgrades' upstream: 101 to a request, then every byte it gets sent back."""
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((HOST, self.echo))
        srv.listen(512)
        srv.settimeout(0.5)
        with srv:
            while not self.stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                threading.Thread(target=echo_connection, args=(conn,), daemon=True).start()

    def reload_loop(self, nginx_conf: Path | None) -> None:
        n = 0
        every = 1.0 if self.smoke else 20.0
        while not self.stop.wait(every):
            n += 1
            self.write_strait_config(rate=100 + n % 7)
            self.event("config reloads")
            if nginx_conf is not None and n % 2 == 0:
                subprocess.run([self.args.nginx, "-c", str(nginx_conf), "-s", "reload"],
                               capture_output=True)
                self.event("nginx reloads")

    # -- sampling

    def sample(self, pid: int, admin: int) -> dict:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    rss = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        text = metrics_text(admin)

        return {"rss_kib": rss, "open_files": fds,
                "client_connections": metric_total(text, "strait_tcp_connections_active"),
                "upstream_connections": metric_total(text, "strait_upstream_connections_active"),
                "requests_in_flight": metric_total(text, "strait_upstream_endpoint_in_flight"),
                "requests": metric_total(text, "strait_http_requests_total")}


def metrics_text(admin: int) -> str:
    """A proxy's metrics, or "" when its admin port does not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric_total(text: str, name: str) -> float:
    """The sum of a metric's series, a counter's or a gauge's, in a proxy's metrics text."""
    return sum(float(m.group(1)) for m in re.finditer(
        rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def not_2xx_answers(text: str) -> dict[str, float]:
    """`strait_http_requests_total` other than 2xx, by "route, cluster, code"."""
    rows: dict[str, float] = {}
    for m in re.finditer(r"^strait_http_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        value = float(m.group(2))
        if value and not labels.get("code", "").startswith("2"):
            key = f"{labels.get('route', '')}, {labels.get('cluster', '')}, {labels.get('code')}"
            rows[key] = rows.get(key, 0) + value
    return rows


def echo_connection(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(60)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                b = conn.recv(4096)
                if not b:
                    return
                head += b
            head, rest = head.split(b"\r\n\r\n", 1)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n" + rest)
            while b := conn.recv(65536):
                conn.sendall(b)
        except OSError:
            pass


def mesh_certs(work: Path) -> None:
    """A CA, and a certificate from it for each of MESH_IDS (its SPIFFE ID as URI SAN)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", str(work / "ca.key"),
                    "-out", str(work / "ca.pem"), "-days", "2", "-subj", "/CN=soak mesh CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"],
                   check=True, capture_output=True)
    for name, spiffe in MESH_IDS.items():
        ext = work / f"{name}.ext"
        ext.write_text(f"subjectAltName=URI:{spiffe}\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth,clientAuth\n")
        subprocess.run(["openssl", "req", *ec, "-keyout", str(work / f"{name}.key"),
                        "-out", str(work / f"{name}.csr"), "-subj", f"/CN={name}"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(work / f"{name}.csr"),
                        "-CA", str(work / "ca.pem"), "-CAkey", str(work / "ca.key"),
                        "-CAcreateserial", "-out", str(work / f"{name}.pem"), "-days", "2",
                        "-extfile", str(ext)], check=True, capture_output=True)


def read_status(f) -> int:
    """Reads one HTTP/1.1 response with a content-length from a socket file; its status."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            raise ValueError("closed before a response")
        head += line
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if m:
        f.read(int(m.group(1)))
    return int(head[9:12])


def smoke_upstream(port: int) -> None:
    """The smoke mode's upstream: 200 to every request (`/fail` included)."""
    body = b"hello from upstream\n"
    serve_fixed(port, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strait", required=True, help="the strait binary")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="bench-results", help="where the report goes")
    ap.add_argument("--smoke", action="store_true", help="a few seconds, python3 only")
    ap.add_argument("--smoke-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke_upstream:
        smoke_upstream(args.smoke_upstream)
        return 0
    if not 0 < args.minutes <= 24 * 60:
        ap.error("--minutes must be in (0, 1440]")
    raise_nofile()
    if not args.smoke:
        missing = [t for t in ("nginx", "wrk", "h2load", "openssl") if tool(t) is None]
        if missing:
            print(f"soak: missing {', '.join(missing)}: apt-get install nginx wrk "
                  "nghttp2-client openssl (benches/harness/run.sh installs them)",
                  file=sys.stderr)
            return 2
        args.nginx, args.wrk, args.h2load = tool("nginx"), tool("wrk"), tool("h2load")
    seconds = 4.0 if args.smoke else args.minutes * 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="strait-soak-"))
    # nginx's workers run as another user: they must be able to read the files it serves
    work.chmod(0o755)
    soak = Soak(args, work)
    procs: list[subprocess.Popen] = []
    try:
        return run(soak, seconds, out, procs)
    finally:
        # Asked to stop first: nginx's master, killed outright, would leave its workers behind
        # (those of each reload too), serving on.
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run(soak: Soak, seconds: float, out: Path, procs: list[subprocess.Popen]) -> int:
    args, work = soak.args, soak.work
    nginx_conf = None
    if args.smoke:
        procs.append(subprocess.Popen([sys.executable, __file__, "--strait", args.strait,
                                       "--smoke-upstream", str(soak.up1)]))
    else:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(work / "key.pem"),
                        "-out", str(work / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        mesh_certs(work)
        (work / "upload.bin").write_bytes(os.urandom(UPLOAD_BYTES))
        # the upstream reloaded every 40 s, and the one the uploads and the sidecar go to
        nginx_conf = soak.nginx_config("nginx", soak.up1, soak.up2)
        steady_conf = soak.nginx_config("nginx-steady", soak.steady1, soak.steady2)
        for conf, ports in ((steady_conf, (soak.steady1, soak.steady2)),
                            (nginx_conf, (soak.up2,))):
            procs.append(subprocess.Popen([args.nginx, "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            for port in ports:
                wait_port(port, procs[-1])
    wait_port(soak.up1, procs[-1])
    # The upstream answers 200 where it should, before any of it is blamed on the proxy.
    for path in ("/", "/big", "/text.txt") if not args.smoke else ("/",):
        try:
            with urllib.request.urlopen(f"http://{HOST}:{soak.up1}{path}", timeout=5) as r:
                r.read()
        except OSError as e:
            print(f"soak: the upstream does not answer {path} (not the proxy's doing): {e}",
                  file=sys.stderr)
            return 2
    echo = threading.Thread(target=soak.echo_upstream, daemon=True)
    echo.start()
    wait_port(soak.echo, None)
    soak.write_strait_config()
    # the proxies: the gateway every load goes through, and (but in smoke mode) the sidecar
    # of its mesh routes' upstream
    proxies: dict[str, tuple[subprocess.Popen, int]] = {}
    for name, config, listen, admin in (("gateway", soak.config, soak.listen, soak.admin),
                                        ("sidecar", soak.mesh_config, soak.mesh,
                                         soak.mesh_admin)):
        if name == "sidecar" and args.smoke:
            continue
        log = open(work / f"strait-{name}.log", "w")
        proxy = subprocess.Popen([args.strait, "proxy", "--config", str(config)],
                                 stdout=log, stderr=log)
        procs.append(proxy)
        wait_port(listen, proxy)
        wait_port(admin, proxy)
        proxies[name] = (proxy, admin)
    time.sleep(0.5)
    start = {name: soak.sample(p.pid, admin) for name, (p, admin) in proxies.items()}
    samples = {name: [{"seconds": 0.0, **start[name]}] for name in proxies}
    print(f"soak: {seconds:.0f} s of traffic through {args.strait}; work files in {work}",
          flush=True)
    loads = [soak.abuse_loop, soak.abuse_loop, soak.echo_loop,
             lambda: soak.reload_loop(nginx_conf)]
    loads += [soak.smoke_client_loop, soak.smoke_client_loop] if args.smoke else [
        soak.wrk_loop, soak.h2_loop, soak.tls_loop, soak.churn_loop, soak.upload_loop,
        soak.mesh_loop]
    threads = [threading.Thread(target=f, daemon=True) for f in loads]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    every = 1.0 if args.smoke else SAMPLE_EVERY
    exited: dict[str, int] = {}
    while (elapsed := time.monotonic() - t0) < seconds and not exited:
        time.sleep(min(every, seconds - elapsed))
        exited = {n: p.returncode for n, (p, _) in proxies.items() if p.poll() is not None}
        if exited:
            break
        for name, (p, admin) in proxies.items():
            samples[name].append({"seconds": round(time.monotonic() - t0, 1),
                                  **soak.sample(p.pid, admin)})
            s = samples[name][-1]
            print(f"  {s['seconds']:6.0f} s  {name:8} RSS {s['rss_kib'] / 1024:6.1f} MiB  "
                  f"open files {s['open_files']:5}  requests {s['requests']:12,.0f}",
                  flush=True)
    soak.stop.set()
    for t in threads:
        t.join(timeout=90)
    # past the listeners' idle timeout and the clusters'
    time.sleep(sum(soak.idle) + 1)
    rest: dict[str, dict | None] = {}
    # What each proxy answered other than 2xx, by its own count (the access log is sampled): a
    # failed check then says what the failures were.
    answered: dict[str, dict[str, float]] = {}
    metrics: dict[str, str] = {}
    for name, (p, admin) in proxies.items():
        rest[name] = soak.sample(p.pid, admin) if p.poll() is None else None
        if rest[name] is None and name not in exited:
            exited[name] = p.returncode
        metrics[name] = metrics_text(admin) if rest[name] is not None else ""
        answered[name] = not_2xx_answers(metrics[name])

    checks: list[tuple[str, bool, str]] = []
    for name in proxies:
        checks.append((f"{name}: ran throughout", name not in exited,
                       "ran" if name not in exited else f"exited with status {exited[name]}"))
        r, s0 = rest[name], start[name]
        if r is None:
            continue
        for key in ("client_connections", "requests_in_flight", "upstream_connections"):
            checks.append((f"{name}: no {key.replace('_', ' ')} left at rest", r[key] == 0,
                           f"{r[key]:.0f}"))
        # No load here floods or resets its streams: an HTTP/2 connection closed as a flood
        # would be the proxy taking its clients for attackers (the gateway's to the sidecar
        # cancels many streams whenever an h2load run ends).
        closed = {metric: metric_total(metrics[name], metric) for metric in (
            "strait_listener_http2_floods_total", "strait_listener_http2_reset_floods_total")}
        checks.append((f"{name}: no HTTP/2 client closed as a flood", not any(closed.values()),
                       ", ".join(f"{m} {v:.0f}" for m, v in closed.items())))
        checks.append((f"{name}: open files back to the start",
                       r["open_files"] <= s0["open_files"],
                       f"{s0['open_files']} at start, {r['open_files']} at rest"))
        checks.append((f"{name}: RSS at rest within 32 MiB of the start",
                       r["rss_kib"] <= s0["rss_kib"] + RSS_SLACK_KIB,
                       f"{s0['rss_kib'] / 1024:.1f} MiB at start, "
                       f"{max(s['rss_kib'] for s in samples[name]) / 1024:.1f} MiB at most, "
                       f"{r['rss_kib'] / 1024:.1f} MiB at rest"))
    unexpected = {f"{load} {path}": c for (load, path), c in soak.counts.items()
                  if path not in EXPECTED_FAILURES and (c.get("not2xx", 0) or c.get("errors", 0))}
    checks.append(("no failure where the upstream answers 200", not unexpected,
                   "none" if not unexpected else json.dumps(unexpected)))
    total = sum(c.get("requests", 0) for c in soak.counts.values())
    checks.append(("traffic flowed", total > 0, f"{total:,} requests counted by the clients"))

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-smoke" if args.smoke else "")
    for name, text in metrics.items():
        (out / f"soak-{stamp}-metrics-{name}.txt").write_text(text)
    report = {"strait": args.strait, "seconds": seconds, "smoke": args.smoke,
              "start": start, "rest": rest, "samples": samples, "not_2xx_answers": answered,
              "loads": [{"load": load, "path": path, **c}
                        for (load, path), c in sorted(soak.counts.items())],
              "events": dict(sorted(soak.events.items())),
              "checks": [{"check": c, "passed": ok, "detail": d} for c, ok, d in checks]}
    (out / f"soak-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"# Soak, {seconds:.0f} s{' (SMOKE RUN: plumbing check)' if args.smoke else ''}", "",
          f"`{args.strait}`", "", "| check | | |", "|---|---|---|"]
    md += [f"| {c} | {'pass' if ok else '**FAIL**'} | {d} |" for c, ok, d in checks]
    md += ["", "| load | path | requests | not 2xx | errors |", "|---|---|---:|---:|---:|"]
    md += [f"| {load} | `{path}` | {c.get('requests', 0):,} | {c.get('not2xx', 0):,} | "
           f"{c.get('errors', 0):,} |" for (load, path), c in sorted(soak.counts.items())]
    for name, rows in answered.items():
        md += ["", f"{name}'s answers other than 2xx (its metrics, in "
               f"`soak-{stamp}-metrics-{name}.txt`):", "", "| route, cluster, code | answers |",
               "|---|---:|"]
        md += [f"| {k} | {v:,.0f} |" for k, v in sorted(rows.items())] or ["| none | |"]
    md += ["", "| event | times |", "|---|---:|"]
    md += [f"| {k} | {v:,} |" for k, v in sorted(soak.events.items())]
    for name in proxies:
        rows = samples[name] + ([{**rest[name], "seconds": "at rest"}] if rest[name] else [])
        md += ["", f"{name}:", "", "| s | RSS MiB | open files | client conns | upstream conns "
               "| in flight | requests |", "|---:|---:|---:|---:|---:|---:|---:|"]
        md += [f"| {s['seconds']} | {s['rss_kib'] / 1024:.1f} | {s['open_files']} | "
               f"{s['client_connections']:.0f} | {s['upstream_connections']:.0f} | "
               f"{s['requests_in_flight']:.0f} | {s['requests']:,.0f} |" for s in rows]
    (out / f"soak-{stamp}.md").write_text("\n".join(md) + "\n")
    for c, ok, d in checks:
        print(f"  {'pass' if ok else 'FAIL'}  {c}: {d}")
    print(f"wrote {out / f'soak-{stamp}.json'} {out / f'soak-{stamp}.md'}")
    for p, _ in proxies.values():
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=40)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
