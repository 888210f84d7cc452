//! Fault injection: abort and delay percentages hold statistically, aborted requests never
//! reach the upstream, gRPC clients get grpc-status, and both are counted in the metrics.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn config(up: &Upstream, fault: &str) -> String {
    one_route(up.addr, "", &format!("fault: {fault}"), "protocol: http2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_hold_their_percentage_and_never_reach_the_upstream() {
    let up = Upstream::echo("chaos").await;
    let proxy = Proxy::start(&config(&up, "{ abort: { status: 503, percent: 50 } }")).await;
    let mut conn = Conn::open(proxy.listen, Proto::H1).await.expect("connect");
    let n = 1000;
    let mut aborted = 0;
    for _ in 0..n {
        let resp = within(
            Duration::from_secs(5),
            "request",
            conn.fetch(simple("GET", "c.example", "/")),
        )
        .await
        .expect("request");
        match resp.status.as_u16() {
            503 => {
                assert_eq!(
                    resp.header("x-strait-error").as_deref(),
                    Some("fault_abort")
                );
                aborted += 1;
            }
            200 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // Binomial(1000, 0.5): sd ≈ 16; ±80 is five of them.
    assert!((420..=580).contains(&aborted), "aborted {aborted} of {n}");
    assert_eq!(
        up.hits(),
        n - aborted,
        "aborted requests must not reach the upstream"
    );
    let metrics = proxy.admin_get("/metrics").await.text();
    let line = format!("strait_fault_aborts_total{{listener=\"main\",route=\"all\"}} {aborted}");
    assert!(metrics.contains(&line), "missing `{line}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_hold_their_percentage() {
    let up = Upstream::echo("slowed").await;
    let proxy = Proxy::start(&config(&up, "{ delay: { duration: 40ms, percent: 25 } }")).await;
    let mut conn = Conn::open(proxy.listen, Proto::H2).await.expect("connect");
    let n = 200;
    let mut delayed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let resp = within(
            Duration::from_secs(5),
            "request",
            conn.fetch(simple("GET", "c.example", "/")),
        )
        .await
        .expect("request");
        assert_eq!(resp.status, 200);
        if started.elapsed() >= Duration::from_millis(38) {
            delayed += 1;
        }
    }
    // Binomial(200, 0.25): mean 50, sd ≈ 6.1; ±25 is four of them (and leaves room for a
    // rare slow undelayed request on a loaded machine).
    assert!((25..=75).contains(&delayed), "delayed {delayed} of {n}");
    assert_eq!(up.hits(), n, "delayed requests still reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_the_injected_grpc_status() {
    let up = Upstream::echo("grpc-chaos").await;
    let proxy = Proxy::start(&config(&up, "{ abort: { grpc_status: 14 } }")).await;
    let req = request("POST", "c.example", "/pkg.Service/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(&b"\0\0\0\0\0"[..]))
        .expect("request");
    let resp = within(Duration::from_secs(5), "grpc", proxy.send(Proto::H2, req))
        .await
        .expect("grpc call");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status").as_deref(), Some("14"));
    // A plain HTTP client of the same route gets the matching HTTP status.
    assert_eq!(proxy.get("c.example", "/").await.status, 503);
    assert_eq!(up.hits(), 0);
}
