//! The proxy's life: admin endpoints, hot reload (file change and SIGHUP) under load, rejected
//! reloads, `/drain`, and graceful shutdown on SIGTERM.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

fn find<'a>(items: &'a serde_json::Value, key: &str, value: &str) -> &'a serde_json::Value {
    items
        .as_array()
        .unwrap_or_else(|| panic!("expected a JSON array, got {items}"))
        .iter()
        .find(|c| c[key] == value)
        .unwrap_or_else(|| panic!("no element with {key} = {value:?} in {items}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_readiness_config_and_clusters() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let slow = Upstream::slow("slow", Duration::from_millis(1_500)).await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /slow }} }}
        backends: [{{ cluster: slowpool }}]
      - backends: [{{ cluster: pool }}]
clusters:
  - name: pool
    endpoints:
      - {{ address: "{a}", weight: 3 }}
      - {{ address: "{b}" }}
  - name: hashed
    load_balancer: ring_hash
    hash_on: {{ header: x-user }}
    endpoints: [{{ address: "{a}" }}]
  - name: slowpool
    endpoints: [{{ address: "{slow}" }}]
"#,
        a = a.addr,
        b = b.addr,
        slow = slow.addr
    );
    let proxy = Proxy::start(&config).await;

    let ready = proxy.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.text().trim(), "ready");
    assert_eq!(proxy.admin_get("/live").await.status, StatusCode::OK);
    // HEAD where GET is (a load balancer's check); a wrong method is told what is allowed.
    let admin = |method: &str, path: &str| {
        send(
            proxy.admin,
            Proto::H1,
            simple(method, &proxy.admin.to_string(), path),
        )
    };
    let head = admin("HEAD", "/ready").await.expect("HEAD /ready");
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let wrong = admin("DELETE", "/metrics").await.expect("DELETE /metrics");
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow").as_deref(), Some("GET, HEAD"));
    let wrong = admin("GET", "/drain").await.expect("GET /drain");
    assert_eq!(wrong.header("allow").as_deref(), Some("POST"));

    let dump = proxy.admin_get("/config_dump").await;
    assert_eq!(dump.status, StatusCode::OK);
    assert!(
        dump.header("content-type")
            .is_some_and(|c| c.contains("json")),
        "/config_dump content-type {:?}",
        dump.header("content-type")
    );
    let dump = dump.json();
    assert!(
        dump["version"].is_u64(),
        "version must be an unsigned integer: {dump}"
    );
    let cfg = &dump["config"];
    assert_eq!(cfg["admin"]["address"], proxy.admin.to_string(), "{cfg}");
    assert_eq!(cfg["drain_timeout"], "30s", "defaults are filled in: {cfg}");
    let listener = find(&cfg["listeners"], "name", "main");
    assert_eq!(listener["address"], proxy.listen.to_string());
    assert_eq!(
        listener["routes"].as_array().map(Vec::len),
        Some(2),
        "{listener}"
    );
    for name in ["pool", "hashed", "slowpool"] {
        find(&cfg["clusters"], "name", name);
    }

    let clusters = proxy.admin_get("/clusters").await;
    assert_eq!(clusters.status, StatusCode::OK);
    let clusters = clusters.json();
    let pool = find(&clusters, "name", "pool");
    assert_eq!(pool["load_balancer"], "round_robin", "{pool}");
    let ep_a = find(&pool["endpoints"], "address", &a.addr.to_string());
    assert_eq!(ep_a["weight"], 3, "{ep_a}");
    assert_eq!(ep_a["healthy"], true, "{ep_a}");
    assert_eq!(ep_a["in_flight"], 0, "{ep_a}");
    let ep_b = find(&pool["endpoints"], "address", &b.addr.to_string());
    assert_eq!(ep_b["weight"], 1, "default weight: {ep_b}");
    let hashed = find(&clusters, "name", "hashed");
    assert_eq!(hashed["load_balancer"], "ring_hash", "{hashed}");

    // in_flight counts requests waiting on an endpoint.
    let mut pending = Vec::new();
    for _ in 0..3 {
        let listen = proxy.listen;
        pending.push(tokio::spawn(async move {
            send(listen, Proto::H1, simple("GET", "adm.example.com", "/slow")).await
        }));
    }
    let slow_addr = slow.addr.to_string();
    let in_flight = || async {
        let c = proxy.admin_get("/clusters").await.json();
        find(
            &find(&c, "name", "slowpool")["endpoints"],
            "address",
            &slow_addr,
        )["in_flight"]
            .as_u64()
            .unwrap_or(u64::MAX)
    };
    assert!(
        eventually(Duration::from_secs(1), || async { in_flight().await == 3 }).await,
        "/clusters in_flight for the slow endpoint is {}, expected 3",
        in_flight().await
    );
    for p in pending {
        let r = within(Duration::from_secs(5), "slow requests", p)
            .await
            .expect("task")
            .expect("slow request");
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(1), || async { in_flight().await == 0 }).await,
        "in_flight did not return to 0"
    );
}

/// A load loop: `tasks` clients, each on its own kept-alive connection, sending GETs until
/// stopped. Every answer must be a 200 from `expect_upstream`.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: &Proxy, tasks: usize, expect_upstream: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..tasks)
            .map(|t| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let listen = proxy.listen;
                let proto = if t % 4 == 3 { Proto::H2 } else { Proto::H1 };
                tokio::spawn(async move {
                    let fail = |m: String| failures.lock().expect("lock").push(m);
                    let mut conn = match Conn::open(listen, proto).await {
                        Ok(c) => c,
                        Err(e) => return fail(format!("task {t}: connect: {e}")),
                    };
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let req = simple("GET", "load.example.com", &format!("/load/{t}/{i}"));
                        match conn.fetch(req).await {
                            Ok(r) if r.status == StatusCode::OK
                                && r.header("x-upstream").as_deref() == Some(expect_upstream) =>
                            {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => fail(format!(
                                "task {t} request {i} ({proto:?}): status {} x-strait-error {:?} upstream {:?}",
                                r.status,
                                r.header("x-strait-error"),
                                r.header("x-upstream")
                            )),
                            Err(e) => {
                                fail(format!("task {t} request {i} ({proto:?}): {e}"));
                                match Conn::open(listen, proto).await {
                                    Ok(c) => conn = c,
                                    Err(e) => return fail(format!("task {t}: reconnect: {e}")),
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks: handles,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            within(Duration::from_secs(15), "load loop to stop", t)
                .await
                .expect("load task panicked");
        }
        let failures = self.failures.lock().expect("lock").clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn reload_config(
    workers: usize,
    a: &Upstream,
    b: &Upstream,
    slow: &Upstream,
    with_new_route: bool,
) -> String {
    let new_route = if with_new_route {
        "      - match: { path: { prefix: /new } }\n        backends: [{ cluster: b }]\n"
    } else {
        ""
    };
    fill(
        &format!(
            r#"
workers: {workers}
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /slow }} }}
        backends: [{{ cluster: slow }}]
{new_route}      - backends: [{{ cluster: a }}]
clusters:
  - name: a
    endpoints: [{{ address: "${{A}}" }}]
  - name: b
    endpoints: [{{ address: "${{B}}" }}]
  - name: slow
    endpoints: [{{ address: "${{SLOW}}" }}]
"#
        ),
        &[("A", a), ("B", b), ("SLOW", slow)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_nothing_and_applies_new_routes() {
    hot_reload_under_load(2).await;
}

/// One worker runs on the control thread; a reload compiles on tokio's blocking pool while the
/// same thread keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_is_one_thread_and_reloads_under_load() {
    hot_reload_under_load(1).await;
}

async fn hot_reload_under_load(workers: usize) {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let slow = Upstream::slow("slow", Duration::from_millis(2_000)).await;
    let proxy = Proxy::start(&reload_config(workers, &a, &b, &slow, false)).await;
    let v0 = proxy.config_version().await;
    let threads = proxy.threads();
    if workers == 1 {
        assert_eq!(threads, 1, "a proxy of one worker is one thread");
    } else {
        assert_eq!(
            threads,
            workers as u64 + 1,
            "a thread per worker and the control thread"
        );
    }

    assert_eq!(
        proxy.get("r.example.com", "/new/x").await.upstream(),
        "a",
        "before reload"
    );
    // Connections opened before the reload, used before and after it.
    let mut pre_h1 = proxy.connect(Proto::H1).await;
    let mut pre_h2 = proxy.connect(Proto::H2).await;
    for c in [&mut pre_h1, &mut pre_h2] {
        let r = c
            .fetch(simple("GET", "r.example.com", "/warm"))
            .await
            .expect("warm up");
        assert_eq!(r.upstream(), "a");
    }
    let listen = proxy.listen;
    let in_flight = tokio::spawn(async move {
        send(
            listen,
            Proto::H1,
            simple("GET", "r.example.com", "/slow/inflight"),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(2), || async { slow.hits() == 1 }).await,
        "the slow request never reached its upstream"
    );

    let load = Load::start(&proxy, 8, "a");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reload_at = Instant::now();
    proxy.write_config(&reload_config(workers, &a, &b, &slow, true));
    let v1 = proxy
        .wait_version_above(v0, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("config_dump version stayed {v0} 5 s after the file changed"));
    assert_eq!(v1, v0 + 1, "one reload, one version step");
    let noticed = reload_at.elapsed();

    assert_eq!(
        proxy.get("r.example.com", "/new/x").await.upstream(),
        "b",
        "new route, new connection"
    );
    for (name, c) in [("HTTP/1.1", &mut pre_h1), ("HTTP/2", &mut pre_h2)] {
        let r = c
            .fetch(simple("GET", "r.example.com", "/new/y"))
            .await
            .unwrap_or_else(|e| panic!("{name} connection from before the reload: {e}"));
        assert_eq!(
            r.header("x-upstream").as_deref(),
            Some("b"),
            "{name} connection opened before the reload still uses the old routes"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reload; first ones:\n{}",
        failures.len(),
        ok + failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ok >= 200, "only {ok} requests ran during the reload test");

    let r = within(
        Duration::from_secs(5),
        "in-flight request across the reload",
        in_flight,
    )
    .await
    .expect("task")
    .unwrap_or_else(|e| panic!("the request in flight during the reload failed: {e}"));
    assert_eq!(
        r.status,
        StatusCode::OK,
        "in-flight request: {:?}",
        r.header("x-strait-error")
    );
    let dump = proxy.admin_get("/config_dump").await.json();
    assert_eq!(
        dump["config"]["listeners"][0]["routes"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "config_dump shows the new config"
    );
    assert!(
        noticed < Duration::from_secs(3),
        "reload took {noticed:?} to apply"
    );
    if workers == 1 {
        // The reload compiled, and `/metrics` encodes, on the blocking pool, whose thread
        // exits after a second idle.
        let scrape = proxy.admin_get("/metrics").await;
        assert_eq!(scrape.status, StatusCode::OK);
        assert!(
            scrape.text().contains("strait_"),
            "/metrics answered without metrics"
        );
        assert!(
            eventually(Duration::from_secs(5), || async { proxy.threads() == 1 }).await,
            "the proxy still has {} threads 5 s after a reload and a scrape",
            proxy.threads()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_is_rejected_and_the_old_config_keeps_serving() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let slow = Upstream::slow("slow", Duration::from_millis(10)).await;
    let mut proxy = Proxy::start(&reload_config(1, &a, &b, &slow, false)).await;
    let v0 = proxy.config_version().await;
    let load = Load::start(&proxy, 4, "a");

    let good = proxy.render(&reload_config(1, &a, &b, &slow, true));
    let typo = good.replacen("    address: 127.0.0.1", "    adress: 127.0.0.1", 1);
    assert_ne!(typo, good, "the typo was not introduced");
    let dangling = good.replace(
        "backends: [{ cluster: b }]",
        "backends: [{ cluster: nope }]",
    );
    assert_ne!(dangling, good, "the dangling reference was not introduced");

    for (what, text, needle) in [
        ("unknown field", &typo, "adress"),
        ("undeclared cluster", &dangling, "nope"),
    ] {
        proxy.write_raw_config(text);
        // Both ways of asking for a reload.
        proxy.signal("HUP");
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(proxy.try_exit().is_none(), "{what}: the proxy exited");
        assert_eq!(
            proxy.config_version().await,
            v0,
            "{what}: an invalid config was applied"
        );
        assert_eq!(
            proxy.get("r.example.com", "/new/x").await.upstream(),
            "a",
            "{what}: old routes"
        );
        let logs = proxy.logs();
        assert!(
            logs.contains(needle),
            "{what}: no error naming `{needle}` in the proxy log:\n{logs}"
        );
    }
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "requests failed while invalid configs were rejected: {failures:?}"
    );
    assert!(ok > 0);

    // Fixing the file is picked up again.
    proxy.write_raw_config(&good);
    proxy
        .wait_version_above(v0, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("a valid config after rejected ones was not applied"));
    assert_eq!(proxy.get("r.example.com", "/new/x").await.upstream(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let aa = Upstream::echo("aa").await;
    let bb = Upstream::echo("bb").await;
    let template = |target: &str| {
        fill(
            &format!(
                r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: {target} }}]
clusters:
  - name: aa
    endpoints: [{{ address: "${{AA}}" }}]
  - name: bb
    endpoints: [{{ address: "${{BB}}" }}]
"#
            ),
            &[("AA", &aa), ("BB", &bb)],
        )
    };
    let mut proxy = Proxy::start(&template("aa")).await;
    let v0 = proxy.config_version().await;

    // SIGHUP with nothing changed must not kill the proxy (the default action of SIGHUP).
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(proxy.try_exit().is_none(), "SIGHUP killed the proxy");
    assert_eq!(proxy.get("h.example.com", "/").await.upstream(), "aa");

    // Same size, same modification time: only the signal says the file changed.
    let before = std::fs::metadata(&proxy.config_path).expect("config metadata");
    let text = proxy.render(&template("bb"));
    assert_eq!(text.len() as u64, before.len(), "same-size rewrite");
    proxy.write_raw_config(&text);
    std::fs::File::options()
        .write(true)
        .open(&proxy.config_path)
        .and_then(|f| f.set_modified(before.modified()?))
        .expect("restore the modification time");
    let v_before_signal = proxy.config_version().await;
    proxy.signal("HUP");
    let v1 = proxy
        .wait_version_above(v_before_signal.max(v0), Duration::from_secs(3))
        .await;
    if v_before_signal == v0 {
        assert!(
            v1.is_some(),
            "SIGHUP did not reload the config (version stayed {v0})"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            proxy.get("h.example.com", "/").await.upstream() == "bb"
        })
        .await,
        "after SIGHUP the new route is not served"
    );
    assert!(proxy.try_exit().is_none(), "the proxy exited after SIGHUP");
}

fn graceful_config(workers: usize, slow: &Upstream, drain_timeout: &str) -> String {
    format!(
        r#"
workers: {workers}
drain_timeout: {drain_timeout}
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: slow }}]
clusters:
  - name: slow
    endpoints: [{{ address: "{}" }}]
"#,
        slow.addr
    )
}

/// True when a fresh request to `addr` is not served within `limit` (refused, reset, closed
/// or left unanswered).
async fn not_served(addr: std::net::SocketAddr, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(
        limit,
        send(addr, Proto::H1, simple("GET", "new.example.com", "/new")),
    )
    .await
    {
        Err(_) => Ok(()),
        Ok(Err(_)) => Ok(()),
        Ok(Ok(r)) => Err(format!(
            "a new connection was served: {} {:?}",
            r.status,
            r.text()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    sigterm_lets_in_flight_requests_finish(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_one_thread_lets_in_flight_requests_finish_then_exits_0() {
    sigterm_lets_in_flight_requests_finish(1).await;
}

async fn sigterm_lets_in_flight_requests_finish(workers: usize) {
    let slow = Upstream::slow("slow", Duration::from_millis(1_500)).await;
    let mut proxy = Proxy::start(&graceful_config(workers, &slow, "10s")).await;

    let mut pending = Vec::new();
    for i in 0..4 {
        let listen = proxy.listen;
        pending.push(tokio::spawn(async move {
            send(
                listen,
                Proto::H1,
                simple("GET", "g.example.com", &format!("/h1/{i}")),
            )
            .await
        }));
    }
    let h2 = proxy.connect(Proto::H2).await;
    for i in 0..4 {
        let mut c = h2.clone_h2();
        pending.push(tokio::spawn(async move {
            c.fetch(simple("GET", "g.example.com", &format!("/h2/{i}")))
                .await
        }));
    }
    assert!(
        eventually(Duration::from_secs(3), || async { slow.hits() == 8 }).await,
        "only {} of 8 requests reached the upstream before SIGTERM",
        slow.hits()
    );
    let term_at = Instant::now();
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Err(e) = not_served(proxy.listen, Duration::from_millis(800)).await {
        panic!("after SIGTERM: {e}");
    }
    for (i, p) in pending.into_iter().enumerate() {
        let r = within(Duration::from_secs(5), "in-flight request after SIGTERM", p)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("in-flight request {i} failed after SIGTERM: {e}"));
        assert_eq!(
            r.status,
            StatusCode::OK,
            "in-flight request {i}: x-strait-error {:?}",
            r.header("x-strait-error")
        );
        assert_eq!(r.upstream(), "slow");
    }
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the proxy was still running 5 s after its last request"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        term_at.elapsed() >= Duration::from_millis(900),
        "exited before in-flight requests ended"
    );
    let refused = tokio::net::TcpStream::connect(proxy.listen).await;
    assert!(
        refused.is_err(),
        "the listener still accepts connections after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_no_longer_than_drain_timeout() {
    let stuck = Upstream::slow("stuck", Duration::from_secs(30)).await;
    let mut proxy = Proxy::start(&graceful_config(2, &stuck, "1s")).await;
    let listen = proxy.listen;
    let pending = tokio::spawn(async move {
        send(listen, Proto::H1, simple("GET", "g.example.com", "/stuck")).await
    });
    assert!(
        eventually(Duration::from_secs(3), || async { stuck.hits() == 1 }).await,
        "the request never reached the upstream"
    );
    let term_at = Instant::now();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM with drain_timeout 1s"));
    let took = term_at.elapsed();
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3_000),
        "exited {took:?} after SIGTERM with a stuck request and drain_timeout 1s"
    );
    // The stuck request ends one way or another, promptly.
    let _ = within(
        Duration::from_secs(3),
        "the stuck request to end after exit",
        pending,
    )
    .await;
}

/// With a `drain_delay`, SIGTERM first makes `/ready` answer 503 while the proxy goes on
/// accepting and serving (a load balancer's time to stop sending it connections), then drains
/// and exits. A second SIGTERM cuts the delay short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_drain_delay_serves_on_not_ready_then_drains() {
    let up = Upstream::slow("up", Duration::from_millis(10)).await;
    let delayed = graceful_config(2, &up, "10s\ndrain_delay: 2s");
    let mut proxy = Proxy::start(&delayed).await;
    let term_at = Instant::now();
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = proxy.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "/ready");
    assert_eq!(ready.text(), "stopping\n");
    // A new connection is still accepted and served.
    let r = send(proxy.listen, Proto::H1, simple("GET", "g.example.com", "/"))
        .await
        .expect("a new connection during drain_delay");
    assert_eq!(r.status, StatusCode::OK);
    let status = proxy
        .wait_exit(Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("still running 6 s after SIGTERM with drain_delay 2s"));
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let took = term_at.elapsed();
    assert!(
        took >= Duration::from_millis(1_900),
        "exited {took:?} after SIGTERM"
    );

    let delayed = graceful_config(2, &up, "10s\ndrain_delay: 60s");
    let mut proxy = Proxy::start(&delayed).await;
    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.admin_get("/ready").await.text(), "stopping\n");
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("a second SIGTERM did not cut drain_delay short"));
    assert_eq!(status.code(), Some(0), "exit status: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_endpoint_stops_accepting_and_closes_idle_connections() {
    let slow = Upstream::slow("slow", Duration::from_millis(1_500)).await;
    let proxy = Proxy::start(&graceful_config(2, &slow, "30s")).await;

    let mut idle = proxy.connect(Proto::H1).await;
    let r = idle
        .fetch(simple("GET", "d.example.com", "/warm?x=1"))
        .await
        .expect("warm-up request");
    assert_eq!(r.status, StatusCode::OK);
    let listen = proxy.listen;
    let in_flight = tokio::spawn(async move {
        send(
            listen,
            Proto::H1,
            simple("GET", "d.example.com", "/inflight"),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(3), || async { slow.hits() == 2 }).await,
        "the in-flight request never reached the upstream"
    );

    let drain = proxy.admin_post("/drain").await;
    assert_eq!(
        drain.status,
        StatusCode::OK,
        "POST /drain: {}",
        drain.text()
    );
    let ready = proxy.admin_get("/ready").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready while draining"
    );
    assert!(
        ready.text().contains("draining"),
        "/ready body while draining: {:?}",
        ready.text()
    );
    assert_eq!(
        proxy.admin_get("/live").await.status,
        StatusCode::OK,
        "/live while draining"
    );

    assert!(
        idle.wait_closed(Duration::from_secs(3)).await,
        "an idle keep-alive connection stayed open after /drain"
    );
    if let Err(e) = not_served(proxy.listen, Duration::from_millis(800)).await {
        panic!("after /drain: {e}");
    }
    let r = within(
        Duration::from_secs(5),
        "in-flight request during drain",
        in_flight,
    )
    .await
    .expect("task")
    .unwrap_or_else(|e| panic!("the in-flight request failed during drain: {e}"));
    assert_eq!(
        r.status,
        StatusCode::OK,
        "in-flight during drain: {:?}",
        r.header("x-strait-error")
    );
}
