#!/usr/bin/env python3
"""Observability cost, measured side by side: plain Strait and Strait with an access log and
tracing run at the same time on the same core, each under its own wrk, round after round.

The machine's neighbours move a proxy's CPU per request by up to 40 % from one minute to the
next; run.py's interleaved rounds see each target in a different minute, and the ratio moves
with them. Here both targets share every minute, so the drift falls on both alike and the
ratio of their CPU per request is steady from round to round. (Each also shares its core with
the other, so the absolute figures are not comparable with run.py's.) Both proxies start
afresh every round: a process's memory layout, random per start, moves its CPU per request by
a few per cent for its whole life, so the median is taken over many layouts.

    python3 benches/harness/side_by_side.py --strait target/release/strait [--rounds 10]
        [--seconds 3] [--observe all|access-log|tracing|none] [--observe-percent 10]
        [--observed-strait OTHER_BINARY] [--protocol h1|h1-browser|h2|h2-browser]

With `--observe none --observed-strait OTHER_BINARY` both run the same plain config: an A/B of
two builds' CPU per request under the same minute-to-minute drift; `--protocol h2` loads both
with h2load over h2c (8 connections x 16 streams) instead of wrk over HTTP/1.1, and
`--protocol h1-browser` (`h2-browser`) sends run.py's h1-browser request (a browser's fields)
with wrk (with h2load).

Needs nginx, wrk and h2load (benches/harness/run.sh installs them). Prints each round and the median
ratio; writes nothing else.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (the harness: ports, waiting, the OTLP sink)

HOST = run.HOST


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strait", required=True, help="the strait binary")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16,
                    help="wrk connections per target (h2: half as many, 16 streams each)")
    ap.add_argument("--protocol", choices=["h1", "h1-browser", "h2", "h2-browser"],
                    default="h1",
                    help="h1: wrk, HTTP/1.1 keep-alive; h2: h2load, h2c multiplexed; "
                         "h1-browser, h2-browser: the same with run.py's h1-browser request")
    ap.add_argument("--observe", choices=["all", "access-log", "tracing", "none"], default="all")
    ap.add_argument("--observe-percent", type=float, default=run.OBSERVED_SAMPLE_PERCENT)
    ap.add_argument("--observed-strait", metavar="BINARY",
                    help="run strait-observed from this binary (default --strait): compares "
                         "two builds' observability cost")
    args = ap.parse_args()
    for name in ("nginx", "wrk", "h2load"):
        if run.tool(name) is None:
            print(f"{name} is missing: benches/harness/run.sh installs it", file=sys.stderr)
            return 2
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    work = Path(tempfile.mkdtemp(prefix="strait-side-"))
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], cpu: int | None, log: str) -> subprocess.Popen:
        out = open(work / log, "wb")
        p = subprocess.Popen(pinned(cpu, argv), stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        up, sink, plain, observed, admin1, admin2 = run.free_ports(6)
        (work / "upstream.conf").write_text(
            "worker_processes 1;\ndaemon off;\n"
            f"pid {work}/nginx.pid;\nerror_log {work}/nginx.err;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; keepalive_requests 1000000;\n"
            f"  server {{ listen {HOST}:{up};\n"
            f'    location = / {{ return 200 "{run.SMALL_BODY.strip()}\\n"; }}\n'
            f"{run.BROWSER_LOCATION} }} }}\n"
        )
        nginx = start([run.tool("nginx"), "-c", str(work / "upstream.conf")], load_cpu, "nginx.log")
        run.wait_port(up, nginx)
        otlp = start([sys.executable, str(HERE / "run.py"), "_otlp", str(sink)], load_cpu, "otlp.log")
        run.wait_port(sink, otlp)
        tracing = (
            "tracing:\n  protocol: http_protobuf\n"
            f'  endpoint: "http://{HOST}:{sink}/v1/traces"\n'
            f"  sample_percent: {args.observe_percent:g}\n  batch_delay: 1s\n"
        )
        access_log = f'    access_log: {{ path: "{work / "access.log"}" }}\n'
        configs = []
        for name, port, admin, top, per_listener in [
            ("strait", plain, admin1, "", ""),
            (
                "strait-observed",
                observed,
                admin2,
                tracing if args.observe in ("all", "tracing") else "",
                access_log if args.observe in ("all", "access-log") else "",
            ),
        ]:
            conf = work / f"{name}.yaml"
            conf.write_text(
                f'admin: {{ address: "{HOST}:{admin}" }}\nworkers: 1\n{top}'
                f'listeners:\n  - name: bench\n    address: "{HOST}:{port}"\n{per_listener}'
                "    routes:\n      - backends: [{ cluster: up }]\n"
                f'clusters:\n  - name: up\n    endpoints: [{{ address: "{HOST}:{up}" }}]\n'
            )
            configs.append((name, port, conf))
        binaries = [args.strait, args.observed_strait or args.strait]

        h2 = args.protocol in ("h2", "h2-browser")
        browser = args.protocol.endswith("-browser")
        fields = run.header_args(run.BROWSER_FIELDS, lower_names=h2) if browser else []
        path = "/" + (run.BROWSER_PATH if browser else "")

        def load_argv(seconds: int, port: int) -> list[str]:
            url = f"http://{HOST}:{port}{path}"
            if h2:
                # h2c, the streams of run.py's h2 scenario
                return [run.tool("h2load"), "-t1", f"-c{args.connections // 2 or 1}",
                        "-m16", "-D", str(seconds), *fields, url]
            return ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", *fields, url]

        def load(seconds: int) -> list[str]:
            """Both targets under their own load generator at once; its reports."""
            loads = [
                subprocess.Popen(pinned(load_cpu, load_argv(seconds, port)),
                                 stdout=subprocess.PIPE, text=True)
                for _, port, _ in configs
            ]
            return [w.communicate()[0] for w in loads]

        def served(out: str) -> int | None:
            """Requests answered 2xx in a load generator's report; None on any error."""
            if h2:
                found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) "
                                  r"succeeded, 0 failed, 0 errored", out)
                codes = re.search(r"status codes: (\d+) 2xx", out)
                ok = found and codes and found.group(1) == codes.group(1)
                return int(found.group(1)) if ok else None
            found = re.search(r"(\d+) requests in", out)
            return int(found.group(1)) if found and "Non-2xx" not in out else None

        ratios = []
        for round_ in range(1, args.rounds + 1):
            # Fresh processes every round: where a process's code and data land (address
            # randomisation) moves its CPU per request by a few per cent for as long as it
            # runs, so one pair of processes would give one layout's ratio every round.
            targets = []
            for binary, (name, port, conf) in zip(binaries, configs):
                p = start([binary, "proxy", "--config", str(conf)], proxy_cpu,
                          f"{name}.log")
                run.wait_port(port, p)
                targets.append(p)
            load(1)  # warm-up: connections, pools, caches
            before = [cpu_seconds(p.pid) for p in targets]
            outputs = load(args.seconds)
            after = [cpu_seconds(p.pid) for p in targets]
            for p in targets:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
            per_request = []
            for out, b, a in zip(outputs, before, after):
                requests = served(out)
                if not requests:
                    print(f"the load generator failed or saw errors:\n{out}", file=sys.stderr)
                    return 1
                per_request.append((a - b) * 1e6 / requests)
            ratio = per_request[1] / per_request[0]
            ratios.append(ratio)
            print(f"round {round_}: strait {per_request[0]:.2f} µs, strait-observed "
                  f"{per_request[1]:.2f} µs per request: {ratio:.3f}", flush=True)
        print(f"strait-observed / strait: median {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} rounds)")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
