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

#[test]
fn bench_harness_smoke_mode_measures_and_writes_every_output() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let out =
        std::env::temp_dir().join(format!("strait-bench-smoke-{}-{nanos}", std::process::id()));
    let script = repo_root().join("benches/harness/run.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("--smoke")
        // a routing table, so the configs `--routes` writes stay ones the proxy accepts
        .arg("--routes")
        .arg("3")
        // and busy polling, so the proxy serves with it on and the option stays plumbed through
        .arg("--strait-busy-poll")
        .arg("100us")
        .arg("--strait")
        .arg(env!("CARGO_BIN_EXE_strait"))
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));

    // Bounded: the smoke run takes ~6 s; give up (and kill it) after 90 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("waiting for the harness").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the harness's smoke run did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("the harness's output");
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
print("ok")
"#;
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
