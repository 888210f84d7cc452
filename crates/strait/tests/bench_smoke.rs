//! Keeps the load harness (`benches/harness/run.py`) from rotting: its smoke mode runs the whole
//! plumbing (config generation, starting and stopping processes, pinning, /proc sampling, JSON,
//! Markdown and SVG output) for a few seconds with only python3 and this crate's binary: a
//! built-in Python client and upstream stand in for wrk and nginx. It measures nothing; the
//! benchmark itself is never part of the test suite's verdict.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "support/repo.rs"]
mod repo;

fn repo_root() -> PathBuf {
    repo::repo_root()
        .canonicalize()
        .expect("the repository root")
}

/// A new directory name under the system's temporary directory, for a script's reports.
fn out_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// Runs `benches/harness/<script>` in its smoke mode with the test build of `strait`, `args`
/// and `--out out`, and returns what it printed. Bounded: a smoke run takes seconds; it is
/// killed after 90 s.
fn smoke_run(script: &str, args: &[&str], out: &PathBuf) -> std::process::Output {
    let path = repo_root().join("benches/harness").join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .arg("--smoke")
        .args(args)
        .arg("--strait")
        .arg(env!("CARGO_BIN_EXE_strait"))
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", path.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("waiting for the script").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{script} --smoke did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("the script's output")
}

#[test]
fn bench_harness_smoke_mode_measures_and_writes_every_output() {
    let out = out_dir("strait-bench-smoke");
    // A routing table, so the configs `--routes` writes stay ones the proxy accepts; and busy
    // polling, so the proxy serves with it on and the option stays plumbed through. The run
    // takes ~6 s.
    let output = smoke_run(
        "run.py",
        &["--routes", "3", "--strait-busy-poll", "100us"],
        &out,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "run.py --smoke failed ({}):\n{stderr}\n{stdout}",
        output.status
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("no output directory {}: {e}", out.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let with_suffix = |suffix: &str| {
        files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {files:?}"))
            .clone()
    };
    let json = std::fs::read_to_string(with_suffix("-smoke.json")).expect("the JSON results");
    let md = std::fs::read_to_string(with_suffix("-smoke.md")).expect("the Markdown results");
    let svg = std::fs::read_to_string(with_suffix("-smoke-latency.svg")).expect("the SVG plot");

    let result: serde_json::Value = serde_json::from_str(&json).expect("valid JSON results");
    for target in ["direct", "strait"] {
        let t = &result["scenarios"]["h1"]["targets"][target];
        assert_eq!(t["status"], "ok", "{target}: {t}");
        let median = &t["median"];
        for key in ["rps", "cpu_us_per_req", "peak_rss_bytes"] {
            assert!(
                median[key].as_f64().is_some_and(|v| v > 0.0),
                "{target}: median {key} missing or zero in {median}"
            );
        }
        assert!(
            median["latency_us"]["p99"]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{target}: no latency percentiles in {median}"
        );
        assert_eq!(median["errors"], 0, "{target}: errors in {median}");
    }
    assert!(
        result["scenarios"]["h1"]["targets"]["strait"]["vs_direct"]["cpu_us_per_req"]
            .as_f64()
            .is_some(),
        "no ratio to direct"
    );
    assert!(
        md.contains("| strait |"),
        "no strait row in the Markdown:\n{md}"
    );
    assert_eq!(
        result["meta"]["routes"], 3,
        "the routing table's size is not recorded"
    );
    assert!(
        md.contains("Routing table: 3 path-prefix routes") && md.contains("ask for `/svc2/`"),
        "the Markdown does not say which routing table was measured:\n{md}"
    );
    assert_eq!(
        result["meta"]["strait_busy_poll"], "100us",
        "Strait's busy_poll is not recorded"
    );
    assert!(
        md.contains("and `busy_poll: 100us`"),
        "the Markdown does not say Strait polled:\n{md}"
    );
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "the SVG has no plotted line"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The soak (`benches/harness/soak.py`) in its smoke mode: a few seconds of keep-alive
/// requests, upgrades, abuse and reloads through two workers, with a built-in upstream, then
/// its checks (nothing left open, open files back, RSS at rest, no failed request) and its
/// reports, with the gateway's answers other than 2xx and its metrics.
#[test]
fn soak_smoke_mode_checks_that_nothing_was_left_open() {
    let out = out_dir("strait-soak-smoke");
    // ~10 s: 4 s of traffic, 4 s at rest.
    let output = smoke_run("soak.py", &[], &out);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "soak.py --smoke failed ({}):\n{}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("no output directory {}: {e}", out.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let json = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-smoke.json"))
        .unwrap_or_else(|| panic!("no report in {files:?}"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("the report"))
            .expect("valid JSON");
    let checks = report["checks"].as_array().expect("checks");
    assert!(checks.len() >= 8, "checks missing: {checks:?}");
    assert!(
        checks.iter().all(|c| c["passed"] == true),
        "a check failed: {checks:?}"
    );
    assert!(
        report["rest"]["gateway"]["requests"]
            .as_f64()
            .is_some_and(|n| n > 100.0),
        "too little traffic: {}",
        report["rest"]
    );
    // connections upgraded to the echo went through (and, by the checks, none failed)
    let loads = report["loads"].as_array().expect("loads");
    assert!(
        loads
            .iter()
            .any(|l| l["load"] == "upgrade echo" && l["requests"].as_u64() > Some(0)),
        "no upgrade was made: {loads:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with("-smoke.md")),
        "no Markdown report in {files:?}"
    );
    // What the gateway answered other than 2xx, by its own counters: the rate-limited route's
    // 429s are there (expected, so no check failed), and its metrics are kept beside.
    let refused = &report["not_2xx_answers"]["gateway"]["limited, , 429"];
    assert!(
        refused.as_f64().is_some_and(|n| n > 0.0),
        "the gateway's 429s are not in the report: {}",
        report["not_2xx_answers"]
    );
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with("-smoke-metrics-gateway.txt")),
        "no metrics kept in {files:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The side-by-side script (`benches/harness/side_by_side.py`) needs nginx and wrk to measure;
/// here it only loads (it borrows run.py's helpers, which must still be there) and lists its
/// options.
#[test]
fn side_by_side_script_loads_and_lists_its_options() {
    let script = repo_root().join("benches/harness/side_by_side.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "side_by_side.py --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for option in [
        "--strait",
        "--rounds",
        "--observe",
        "--observe-percent",
        "--observed-strait",
    ] {
        assert!(stdout.contains(option), "{option} missing from:\n{stdout}");
    }
}

/// The paired per-round ratios and their confidence interval (the statistic that says whether a
/// difference against nginx or HAProxy is beyond the machine's noise), on made-up rounds whose
/// answer is known: the ranks come from the binomial distribution, the ratios pair by round.
#[test]
fn paired_round_ratios_have_a_distribution_free_interval() {
    let check = r#"
import sys
sys.path.insert(0, sys.argv[1])
import run
assert run.median_interval(5) == (1, 5, 0.9375), run.median_interval(5)
assert run.median_interval(11) == (2, 10, 0.98828125), run.median_interval(11)
lo, hi, cov = run.median_interval(30)
assert (lo, hi) == (10, 21) and 0.95 <= cov < 0.96, (lo, hi, cov)
def runs(cpus):
    return [{"round": i + 1, "cpu_us_per_req": c} for i, c in enumerate(cpus)]
# nginx's rounds drift from 10 to 20 us; Strait's are 0.8x nginx's in the same round, except
# round 3 (1.5x); HAProxy's rounds are missing round 2, so only four pair with it.
nginx = [10.0, 12.0, 14.0, 16.0, 20.0]
res = {"targets": {
    "strait": {"status": "ok", "runs": runs([n * (1.5 if i == 2 else 0.8) for i, n in enumerate(nginx)])},
    "nginx": {"status": "ok", "runs": runs(nginx)},
    "haproxy": {"status": "ok", "runs": [r for r in runs([8.0, 8.0, 8.0, 8.0, 8.0]) if r["round"] != 2]},
    "direct": {"status": "error", "runs": []},
}}
run.add_paired(res)
p = res["targets"]["strait"]["paired_cpu"]["nginx"]
assert abs(p["median"] - 0.8) < 1e-9 and abs(p["low"] - 0.8) < 1e-9, p
assert abs(p["high"] - 1.5) < 1e-9 and p["rounds"] == 5 and p["coverage"] == 0.9375, p
h = res["targets"]["strait"]["paired_cpu"]["haproxy"]
assert h["rounds"] == 4 and abs(h["high"] - 14.0 * 1.5 / 8.0) < 1e-9, h
assert "paired_cpu" not in res["targets"]["direct"]
assert "nginx" not in res["targets"]["nginx"].get("paired_cpu", {})
assert "paired_p99" not in res["targets"]["strait"]  # closed loop: its latency is queueing
# A fixed-rate scenario pairs p99 too: Strait's p99 is nginx's in rounds 1 and 2, 1.2x in 3,
# 0.9x in 4 and 5; round 5 of nginx has no latency, so four rounds pair.
def lat(p99s):
    return [{"round": i + 1, "cpu_us_per_req": 10.0, "latency_us": {"p99": v} if v else {}}
            for i, v in enumerate(p99s)]
fixed = {"kind": "fixed", "targets": {
    "strait": {"status": "ok", "runs": lat([800.0, 900.0, 1200.0, 900.0, 900.0])},
    "nginx": {"status": "ok", "runs": lat([800.0, 900.0, 1000.0, 1000.0, None])},
}}
run.add_paired(fixed)
q = fixed["targets"]["strait"]["paired_p99"]["nginx"]
assert q["rounds"] == 4 and abs(q["median"] - 1.0) < 1e-9, q
assert abs(q["low"] - 0.9) < 1e-9 and abs(q["high"] - 1.2) < 1e-9, q
assert fixed["targets"]["strait"]["paired_cpu"]["nginx"]["rounds"] == 5
md = run.markdown({"meta": {"date": "d", "machine": {"cpu": "c", "cpus": 2, "os": "o",
                   "kernel": "k"}, "versions": {}, "strait": {"commit": "x", "dirty": False},
                   "rounds": 5, "seconds": 3, "proxy_cpu": 0, "load_cpu": 1, "smoke": False,
                   "targets": ["strait", "nginx"]},
                   "scenarios": {}})
assert "p99 latency paired" not in md
print("ok")
"#;
    harness_check(check);
}

/// A fixed-rate scenario's report names the capacity its rate was taken from (measured again
/// just before it, and as the h1 scenario found it), marks each target that fell short of the
/// offered rate, and says so above the table when every target did: that row compares saturated
/// proxies, not the offered load.
#[test]
fn a_fixed_rate_report_says_when_every_target_was_saturated() {
    let check = r#"
import sys
sys.path.insert(0, sys.argv[1])
import run
def lat(rps, p99s):
    return [{"round": i + 1, "rps": rps, "requests": int(rps * 3), "errors": 0,
             "cpu_us_per_req": 10.0, "latency_us": {k: v * f for k, f in zip(run.LAT, (0.5, 0.8, 1.0, 1.2, 1.5, 0.6))}}
            for i, v in enumerate(p99s)]
def scenario(served):
    res = {"title": "t", "method": "m", "kind": "fixed", "offered_rps": 45000.0,
           "capacity_rps": 60000.0, "capacity_h1_rps": 68000.0, "targets": {
               t: {"status": "ok", "runs": lat(rps, [900.0, 950.0, 1000.0])}
               for t, rps in served.items()}}
    for tr in res["targets"].values():
        tr["median"] = run.median_of(tr["runs"])
    run.add_ratios(res)
    return res
meta = {"date": "d", "machine": {"cpu": "c", "cpus": 2, "os": "o", "kernel": "k"},
        "versions": {}, "strait": {"commit": "x", "dirty": False}, "rounds": 3, "seconds": 3,
        "proxy_cpu": 0, "load_cpu": 1, "smoke": False, "targets": ["strait", "nginx"]}
# Every target short of the offered rate: said above the table, and in each row.
md = run.markdown({"meta": meta, "scenarios": {"latency-75": scenario(
    {"strait": 41000.0, "nginx": 40000.0})}})
assert "nginx capacity 60,000 requests/s, measured again just before this scenario; 68,000 in the h1 scenario" in md, md
assert "Every target was saturated" in md, md
assert md.count("(saturated)") == 2, md
# One target keeps up: no such heading, and only the other row is marked.
md = run.markdown({"meta": meta, "scenarios": {"latency-75": scenario(
    {"strait": 44900.0, "nginx": 40000.0})}})
assert "Every target was saturated" not in md and md.count("(saturated)") == 1, md
print("ok")
"#;
    harness_check(check);
}

/// Runs a Python check against run.py's functions (the harness directory is its first
/// argument); the check prints "ok" when every assertion held.
fn harness_check(check: &str) {
    let output = Command::new("python3")
        .arg("-c")
        .arg(check)
        .arg(repo_root().join("benches/harness"))
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
