//! `strait demo`, the README's first command: a gateway, sample apps and live traffic, which
//! must end with every answer as expected, whether it stops on its own, on Ctrl-C or on
//! SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

/// A running demo on free ports, its stdout as lines; killed on drop.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let (port, admin) = (free_addr().port(), free_addr().port());
        let mut child = strait()
            .args(["demo", "--port", &port.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strait demo");
        let out = child.stdout.take().expect("stdout pipe");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line satisfies `want`; panics with what was seen after `limit`.
    fn wait_line(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line within {limit:?}; stdout:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the exit and the rest of stdout; panics after `limit`.
    fn finish(&mut self, limit: Duration) -> (bool, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipe closes with the process: the reader's channel ends.
        self.seen.extend(self.lines.iter());
        (status.success(), self.seen.join("\n"))
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The total line says every answer was as expected, and each route answered.
fn assert_clean(out: &str) {
    assert!(
        out.lines()
            .any(|l| l.contains(" requests in ") && l.ends_with(", 0 unexpected answers")),
        "{out}"
    );
    for route in [
        "users-v1",
        "orders",
        "redirect",
        "direct-response",
        "no-route",
    ] {
        let count = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix(route))
            .filter_map(|rest| rest.trim().parse::<u64>().ok())
            .next_back();
        assert!(count.is_some_and(|n| n > 0), "no {route} answers:\n{out}");
    }
}

#[test]
fn the_demo_serves_live_traffic_and_stops_after_its_duration() {
    let mut demo = Demo::start(&["--duration", "3"]);
    let (ok, out) = demo.finish(Duration::from_secs(30));
    assert!(ok, "the demo failed:\n{out}");
    assert!(
        out.contains("Strait demo: a gateway on http://127.0.0.1:"),
        "{out}"
    );
    assert_clean(&out);
}

#[test]
fn sigterm_stops_the_demo_as_ctrl_c_does() {
    for sig in ["TERM", "INT"] {
        let mut demo = Demo::start(&[]);
        // two seconds of traffic, then the signal
        demo.wait_line(Duration::from_secs(20), |l| l.starts_with("[   2s]"));
        demo.signal(sig);
        let (ok, out) = demo.finish(Duration::from_secs(20));
        assert!(ok, "SIG{sig}: the demo failed:\n{out}");
        assert_clean(&out);
    }
}
