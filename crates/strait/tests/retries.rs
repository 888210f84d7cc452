//! Retries against real misbehaving upstreams: they succeed where a retry should, go to another
//! endpoint, never exceed the cluster's budget in a full outage, skip (and count) bodies over
//! the replay buffer, leave non-idempotent requests alone after sending, honour `retry-after`
//! and `grpc-retry-pushback-ms`, and hedge slow attempts.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The value of the sample `name{labels}` in the proxy's metrics (0 when absent).
async fn metric(proxy: &Proxy, name: &str, labels: &str) -> f64 {
    let text = proxy.admin_get("/metrics").await.text();
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn two_endpoints(a: std::net::SocketAddr, b: std::net::SocketAddr, retry: &str) -> String {
    format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      - name: all\n        \
         backends: [{{ cluster: pair }}]\n        retry: {retry}\nclusters:\n  - name: pair\n    \
         endpoints: [{{ address: \"{a}\" }}, {{ address: \"{b}\" }}]\n"
    )
}

async fn fetch(proxy: &Proxy, req: http::Request<Body>) -> Resp {
    fetch_over(proxy, Proto::H1, req).await
}

async fn fetch_over(proxy: &Proxy, proto: Proto, req: http::Request<Body>) -> Resp {
    within(Duration::from_secs(10), "request", proxy.send(proto, req))
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_until_one_succeeds() {
    let up = Upstream::fail_first("flaky", 2, 503, &[]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { attempts: 3, backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let resp = proxy.get("a.example", "/x").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.hits(), 3);
    assert_eq!(
        metric(&proxy, "strait_upstream_retries_total", "cluster=\"echo\"").await,
        2.0
    );
    assert_eq!(
        metric(
            &proxy,
            "strait_upstream_retry_successes_total",
            "cluster=\"echo\""
        )
        .await,
        1.0
    );

    // Attempts run out: the upstream's own last answer reaches the client.
    let always = Upstream::fail_first("down", usize::MAX, 502, &[("x-why", "down")]).await;
    let proxy = Proxy::start(&one_route(
        always.addr,
        "",
        "retry: { attempts: 3, backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let resp = proxy.get("a.example", "/x").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("x-why").as_deref(), Some("down"));
    assert_eq!(resp.text(), "failing on purpose");
    assert_eq!(always.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_on_the_other_for_every_method() {
    let live = Upstream::echo("live").await;
    let dead = free_addr();
    let proxy = Proxy::start(&two_endpoints(
        dead,
        live.addr,
        "{ retry_on: [connect_failure] }",
    ))
    .await;
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let resp = fetch(
            &proxy,
            request(method, "a.example", "/")
                .body(full("hi"))
                .expect("request"),
        )
        .await;
        assert_eq!(resp.status, 200, "{method}: {}", resp.text());
        assert_eq!(resp.upstream(), "live");
    }
    assert_eq!(live.hits(), 10);
    let dead_label = format!("cluster=\"pair\",endpoint=\"{dead}\",reason=\"refused\"");
    assert!(
        metric(
            &proxy,
            "strait_upstream_connect_failures_total",
            &dead_label
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_not_retried_after_sending_unless_allowed() {
    let up = Upstream::fail_first("flaky", 1, 503, &[]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { attempts: 3, backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let resp = fetch(
        &proxy,
        request("POST", "a.example", "/orders")
            .body(full("{}"))
            .expect("request"),
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        up.hits(),
        1,
        "a POST that reached the upstream is not sent twice"
    );

    let up = Upstream::fail_first("flaky", 1, 503, &[]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { attempts: 3, non_idempotent: true, backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let resp = fetch(
        &proxy,
        request("POST", "a.example", "/orders")
            .body(full("{}"))
            .expect("request"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_and_the_last_failure_is_reported() {
    let up = Upstream::reset("resetting").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { attempts: 3, retry_on: [reset], backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let resp = proxy.get("a.example", "/").await;
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.header("x-strait-error").as_deref(),
        Some("upstream_reset")
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outage_never_exceeds_the_retry_budget() {
    let up = Upstream::fail_first("down", usize::MAX, 503, &[]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { attempts: 5, backoff: { base: 1ms, max: 2ms } }",
        "retry_budget: { percent: 20, min_retries_per_second: 1 }",
    ))
    .await;
    let requests = 150;
    for _ in 0..requests {
        assert_eq!(proxy.get("a.example", "/").await.status, 503);
    }
    let retries = metric(&proxy, "strait_upstream_retries_total", "cluster=\"echo\"").await;
    // 20 % of the requests plus 1 per second over the 10-second window.
    let allowed = 0.2 * f64::from(requests) + 10.0;
    assert!(retries > 0.0, "no retries at all");
    assert!(retries <= allowed, "{retries} retries, budget {allowed}");
    assert_eq!(up.hits() as f64, f64::from(requests) + retries);
    let exhausted = metric(
        &proxy,
        "strait_upstream_retries_skipped_total",
        "cluster=\"echo\",reason=\"budget_exhausted\"",
    )
    .await;
    assert!(exhausted > 0.0, "budget refusals are counted");
}

/// Over HTTP/1 and HTTP/2 alike: an HTTP/2 body with a length is gathered first (its first
/// 8 KiB), then replayed from the copy like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_replayed_and_oversized_ones_skipped_and_counted() {
    for proto in [Proto::H1, Proto::H2] {
        bodies_are_replayed_over(proto).await;
    }
}

async fn bodies_are_replayed_over(proto: Proto) {
    let retried = "retry: { max_body_bytes: 1024, backoff: { base: 1ms, max: 5ms } }";
    let up = Upstream::fail_first("flaky", 1, 503, &[]).await;
    let proxy = Proxy::start(&one_route(up.addr, "", retried, "")).await;
    let small = vec![b'x'; 700];
    let req = request("PUT", "a.example", "/doc").body(full(small));
    let resp = fetch_over(&proxy, proto, req.expect("request")).await;
    assert_eq!(resp.status, 200, "{proto:?}: {}", resp.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.body_len == 700),
        "{proto:?}: both attempts carry the whole body"
    );

    let up = Upstream::fail_first("flaky", 1, 503, &[]).await;
    let proxy = Proxy::start(&one_route(up.addr, "", retried, "")).await;
    // Longer than what is gathered of an HTTP/2 body, too.
    let big = vec![b'y'; 20_000];
    let req = request("PUT", "a.example", "/doc").body(full(big));
    let resp = fetch_over(&proxy, proto, req.expect("request")).await;
    assert_eq!(
        resp.status, 503,
        "{proto:?}: too big to replay: the failure stands"
    );
    assert_eq!(
        up.seen()[0].body_len,
        20_000,
        "{proto:?}: the body still streamed whole"
    );
    assert_eq!(up.hits(), 1);
    let skipped = metric(
        &proxy,
        "strait_upstream_retries_skipped_total",
        "cluster=\"echo\",reason=\"body_too_large\"",
    )
    .await;
    assert_eq!(skipped, 1.0, "{proto:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_and_grpc_pushback_are_honoured() {
    let up = Upstream::fail_first("busy", 1, 503, &[("retry-after", "1")]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "retry: { backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let started = Instant::now();
    let resp = proxy.get("a.example", "/").await;
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        took >= Duration::from_millis(950),
        "retried after {took:?}, not 1 s"
    );

    // A wait past the route timeout is not taken: the 503 stands, at once.
    let up = Upstream::fail_first("busy", 1, 503, &[("retry-after", "30")]).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "timeout: 2s\nretry: { backoff: { base: 1ms, max: 5ms } }",
        "",
    ))
    .await;
    let started = Instant::now();
    assert_eq!(proxy.get("a.example", "/").await.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(up.hits(), 1);

    // gRPC: UNAVAILABLE in the head is retried when listed; a negative pushback forbids it.
    let grpc_fail = [("content-type", "application/grpc"), ("grpc-status", "14")];
    let up = Upstream::fail_first("grpc", 1, 200, &grpc_fail).await;
    let route = "retry: { retry_on: [unavailable], backoff: { base: 1ms, max: 5ms } }";
    let proxy = Proxy::start(&one_route(up.addr, "", route, "")).await;
    let call = || {
        request("POST", "a.example", "/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(full(vec![0, 0, 0, 0, 0]))
            .expect("request")
    };
    let resp = fetch(&proxy, call()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), None, "the retry's answer");
    assert_eq!(up.hits(), 2);

    let mut stop = grpc_fail.to_vec();
    stop.push(("grpc-retry-pushback-ms", "-1"));
    let up = Upstream::fail_first("grpc", 1, 200, &stop).await;
    let proxy = Proxy::start(&one_route(up.addr, "", route, "")).await;
    let resp = fetch(&proxy, call()).await;
    assert_eq!(resp.header("grpc-status").as_deref(), Some("14"));
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_move_on_and_hedges_take_the_first_answer() {
    let slow = Upstream::slow("slow", Duration::from_millis(800)).await;
    let fast = Upstream::echo("fast").await;
    let proxy = Proxy::start(&two_endpoints(
        slow.addr,
        fast.addr,
        "{ attempts: 2, per_try_timeout: 100ms, backoff: { base: 1ms, max: 5ms } }",
    ))
    .await;
    for _ in 0..6 {
        let started = Instant::now();
        let resp = proxy.get("a.example", "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.upstream(), "fast");
        assert!(started.elapsed() < Duration::from_millis(600));
    }

    let proxy = Proxy::start(&two_endpoints(
        slow.addr,
        fast.addr,
        "{ attempts: 2, per_try_timeout: 50ms, hedge: true }",
    ))
    .await;
    for _ in 0..6 {
        let started = Instant::now();
        let resp = proxy.get("a.example", "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.upstream(), "fast");
        assert!(started.elapsed() < Duration::from_millis(600));
    }
    let hedges = metric(&proxy, "strait_upstream_hedges_total", "cluster=\"pair\"").await;
    assert!(hedges >= 3.0, "{hedges} hedges");
}
