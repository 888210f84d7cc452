//! Active health checks: an endpoint that dies (or stops serving) is found by its checks and
//! skipped by the balancer while traffic keeps succeeding on the others, and it comes back when
//! it recovers; HTTP, gRPC and TCP checks; what a cluster does when every endpoint fails; and
//! health kept across a reload.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(10);

async fn wait_healthy(proxy: &Proxy, addr: SocketAddr, healthy: bool) {
    let what = if healthy { "healthy" } else { "unhealthy" };
    proxy
        .wait_endpoint("pool", addr, what, LIMIT, |e| e["healthy"] == healthy)
        .await;
}

/// Waits until `u` is out of rotation, then checks that every request succeeds without it.
async fn served_without(proxy: &Proxy, u: &Upstream) {
    wait_healthy(proxy, u.addr, false).await;
    let counts = spread(proxy, "h.example", "/", 40, 2).await;
    assert_eq!(counts.get(&u.name), None, "{counts:?}");
}

/// Waits until `u` is back in rotation, then checks that it takes requests again.
async fn served_with(proxy: &Proxy, u: &Upstream) {
    wait_healthy(proxy, u.addr, true).await;
    let counts = spread(proxy, "h.example", "/", 40, 2).await;
    assert!(counts.get(&u.name).copied().unwrap_or(0) > 0, "{counts:?}");
}

async fn failing_open(proxy: &Proxy) -> Option<f64> {
    let labels = [("cluster", "pool")];
    proxy
        .metric("strait_upstream_cluster_failing_open", &labels)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_take_a_dead_endpoint_out_and_bring_it_back() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let proxy = Proxy::start(&pool(
        &[a.addr, b.addr, c.addr],
        "health_check:\n  http: { path: /healthz, host: health.internal }\n  interval: 100ms\n  \
         timeout: 500ms\n  unhealthy_threshold: 2\n  healthy_threshold: 2",
    ))
    .await;
    for u in [&a, &b, &c] {
        proxy
            .wait_endpoint("pool", u.addr, "checked", LIMIT, |e| {
                e["health_check"]["checked"] == true && e["health_check"]["passing"] == true
            })
            .await;
    }
    let check = a
        .seen()
        .into_iter()
        .find(|s| s.uri == "/healthz")
        .expect("a health check reached the upstream");
    assert_eq!(check.method, "GET");
    assert_eq!(check.host, "health.internal");
    assert_eq!(
        check.header("user-agent").as_deref(),
        Some("strait-health-check")
    );

    b.stop().await;
    served_without(&proxy, &b).await;
    assert_eq!(
        proxy
            .metric(
                "strait_upstream_endpoint_health_check_passing",
                &[("endpoint", &b.addr.to_string())]
            )
            .await,
        Some(0.0)
    );
    let failures = proxy
        .metric(
            "strait_upstream_health_checks_total",
            &[("endpoint", &b.addr.to_string()), ("result", "failure")],
        )
        .await
        .unwrap_or_default();
    assert!(failures >= 2.0, "{failures} failed checks counted");

    b.restart().await;
    served_with(&proxy, &b).await;
    assert!(
        proxy
            .metric(
                "strait_upstream_health_checks_total",
                &[("endpoint", &b.addr.to_string()), ("result", "success")],
            )
            .await
            .unwrap_or_default()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_follow_the_serving_status() {
    let g1 = Upstream::grpc("g1").await;
    let g2 = Upstream::grpc("g2").await;
    let proxy = Proxy::start(&pool(
        &[g1.addr, g2.addr],
        "protocol: http2\nhealth_check:\n  grpc: { service: echo.Echo }\n  interval: 100ms\n  \
         healthy_threshold: 1\n  unhealthy_threshold: 1",
    ))
    .await;
    proxy
        .wait_endpoint("pool", g1.addr, "checked", LIMIT, |e| {
            e["health_check"]["checked"] == true
        })
        .await;
    let check = g1
        .seen()
        .into_iter()
        .find(|s| s.uri.ends_with("/grpc.health.v1.Health/Check"))
        .expect("a gRPC health check reached the server");
    assert_eq!(check.method, "POST");
    assert_eq!(check.version, http::Version::HTTP_2);
    assert_eq!(
        check.header("content-type").as_deref(),
        Some("application/grpc")
    );
    // A 5-byte frame header and `HealthCheckRequest { service: "echo.Echo" }` (2 + 9 bytes).
    assert_eq!(check.body_len, 16);

    g1.set_serving(false);
    served_without(&proxy, &g1).await;
    g1.set_serving(true);
    served_with(&proxy, &g1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_see_an_endpoint_stop_and_start_listening() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let proxy = Proxy::start(&pool(
        &[a.addr, b.addr],
        "health_check:\n  tcp: {}\n  interval: 100ms\n  unhealthy_threshold: 2\n  healthy_threshold: 1",
    ))
    .await;
    b.stop().await;
    served_without(&proxy, &b).await;
    b.restart().await;
    served_with(&proxy, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_check_of_a_new_endpoint_counts_at_once() {
    let a = Upstream::echo("a").await;
    let nobody = free_addr();
    // With these thresholds and interval, only the first-result rule can mark it within the
    // test's limit.
    let proxy = Proxy::start(&pool(
        &[a.addr, nobody],
        "health_check:\n  tcp: {}\n  interval: 30s\n  unhealthy_threshold: 5",
    ))
    .await;
    proxy
        .wait_endpoint("pool", nobody, "unhealthy", Duration::from_secs(5), |e| {
            e["healthy"] == false
        })
        .await;
    let counts = spread(&proxy, "n.example", "/", 20, 2).await;
    assert_eq!(counts.get("a"), Some(&20), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_failing_fail_open_decides_and_a_reload_keeps_health() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    // The echo server answers 200, which this check does not accept: both fail their checks
    // while still answering requests.
    let check = "health_check:\n  http: { path: /healthz, expected_statuses: [204] }\n  \
                 interval: 100ms\n  unhealthy_threshold: 1";
    let open = pool(&[a.addr, b.addr], check);
    let proxy = Proxy::start(&open).await;
    wait_healthy(&proxy, a.addr, false).await;
    wait_healthy(&proxy, b.addr, false).await;

    // Failing open (the default): requests go to both anyway, and a metric says so.
    let counts = spread(&proxy, "f.example", "/", 20, 2).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(failing_open(&proxy).await, Some(1.0));
    let clusters = proxy.admin_get("/clusters").await.json();
    assert_eq!(clusters[0]["failing_open"], true, "{clusters}");

    // Not failing open: 503 at once. The reload recompiles the cluster; if health were not
    // kept, the endpoints would be healthy again until their next checks.
    let version = proxy.config_version().await;
    proxy.write_config(&pool(
        &[a.addr, b.addr],
        &format!("{check}\nfail_open: false"),
    ));
    proxy
        .wait_version_above(version, LIMIT)
        .await
        .expect("the new config is applied");
    let forwarded = || {
        a.seen()
            .iter()
            .chain(&b.seen())
            .filter(|s| s.uri == "/")
            .count()
    };
    let before = forwarded();
    let checks = (a.hits(), b.hits());
    let resp = proxy.get("f.example", "/").await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(
        resp.header("x-strait-error").as_deref(),
        Some("no_healthy_endpoint")
    );
    assert_eq!(forwarded(), before, "nothing was forwarded");
    assert_eq!(failing_open(&proxy).await, Some(0.0));
    // The checks carry on through the reload.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.hits() > checks.0 && b.hits() > checks.1,
        "checks keep running"
    );
    assert_eq!(proxy.get("f.example", "/").await.status, 503);

    // Once an endpoint passes, it serves again.
    proxy.write_config(&pool(
        &[a.addr, b.addr],
        "health_check:\n  http: { path: /healthz }\n  interval: 100ms\n  healthy_threshold: 1\nfail_open: false",
    ));
    wait_healthy(&proxy, a.addr, true).await;
    assert_eq!(proxy.get("f.example", "/").await.status, 200);
}
