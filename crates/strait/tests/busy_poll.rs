//! `busy_poll`: a worker that has run out of work keeps polling for the window before it
//! sleeps, and only then. Measured as the proxy's CPU time: a worker that polls spends its
//! window on the CPU, one that sleeps spends nothing.

mod support;

use std::time::Duration;

use support::*;

/// CPU time of every thread of `pid` so far (`/proc/PID/task/*/schedstat`, nanoseconds).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the proxy's threads");
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// The CPU time `pid` spends in the `wall` after `start` is called.
async fn cpu_during<F: std::future::Future>(pid: u32, wall: Duration, start: F) -> Duration {
    let before = cpu_time(pid);
    start.await;
    tokio::time::sleep(wall).await;
    cpu_time(pid).saturating_sub(before)
}

const CONFIG: &str = r#"
workers: WORKERS
busy_poll: POLL
listeners:
  - name: main
    address: ${LISTEN}
    routes:
      - backends: [{ cluster: up }]
clusters:
  - name: up
    endpoints: [{ address: "${UP}" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_polls_for_the_window_after_work_and_sleeps_otherwise() {
    polls_for_the_window_after_work(1).await;
}

/// With worker threads of their own, each has its spinner; the control thread has none and
/// never polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_poll_and_the_control_thread_does_not() {
    polls_for_the_window_after_work(2).await;
}

async fn polls_for_the_window_after_work(workers: usize) {
    let up = Upstream::echo("up").await;
    let config = |poll: &str| {
        let text = CONFIG
            .replace("WORKERS", &workers.to_string())
            .replace("POLL", poll);
        fill(&text, &[("UP", &up)])
    };
    let mut proxy = Proxy::start(&config("50ms")).await;
    assert_eq!(proxy.get("h.example.com", "/").await.upstream(), "up");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Nothing to do: the worker sleeps, polling window or not (its own timers are not work).
    let idle = cpu_during(proxy.pid, Duration::from_millis(500), async {}).await;
    assert!(idle < Duration::from_millis(10), "idle, it used {idle:?}");

    // One request: the worker polls for 50 ms after it, on the CPU all along (less when the
    // machine is busy and takes the core away), then sleeps again.
    let after_work = cpu_during(proxy.pid, Duration::from_millis(300), async {
        assert_eq!(proxy.get("h.example.com", "/").await.upstream(), "up");
    })
    .await;
    assert!(
        after_work >= Duration::from_millis(10),
        "a request with a 50 ms window used only {after_work:?}"
    );
    let idle = cpu_during(proxy.pid, Duration::from_millis(300), async {}).await;
    assert!(
        idle < Duration::from_millis(10),
        "idle again, it used {idle:?}"
    );

    // Turned off by a reload: the worker sleeps as soon as the request is done.
    let v0 = proxy.config_version().await;
    proxy.write_config(&config("0s"));
    proxy
        .wait_version_above(v0, Duration::from_secs(5))
        .await
        .expect("the reload applied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_work = cpu_during(proxy.pid, Duration::from_millis(300), async {
        assert_eq!(proxy.get("h.example.com", "/").await.upstream(), "up");
    })
    .await;
    assert!(
        after_work < Duration::from_millis(10),
        "with busy_poll 0s a request used {after_work:?}"
    );
    assert!(proxy.try_exit().is_none(), "the proxy exited");
}
