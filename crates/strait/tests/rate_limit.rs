//! Local rate limits: the configured rate holds within a few percent over seconds, keys and
//! overrides are separate buckets, refusals carry 429, retry-after and the IETF RateLimit
//! headers (gRPC: RESOURCE_EXHAUSTED), and they are counted.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_rate_holds_within_a_few_percent() {
    let up = Upstream::echo("limited").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "rate_limit: { requests_per_second: 200, burst: 20, key: route }",
        "",
    ))
    .await;
    let started = Instant::now();
    let run = Duration::from_secs(3);
    let mut loops = Vec::new();
    for _ in 0..4 {
        let addr = proxy.listen;
        loops.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, Proto::H1).await.expect("connect");
            let (mut ok, mut limited) = (0u64, 0u64);
            while started.elapsed() < run {
                let resp = within(
                    Duration::from_secs(5),
                    "request",
                    conn.fetch(simple("GET", "r.example", "/")),
                )
                .await
                .expect("request");
                match resp.status.as_u16() {
                    200 => ok += 1,
                    429 => {
                        assert_eq!(
                            resp.header("x-strait-error").as_deref(),
                            Some("rate_limited")
                        );
                        assert!(resp
                            .header("retry-after")
                            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));
                        assert_eq!(
                            resp.header("ratelimit-policy").as_deref(),
                            Some("\"default\";q=20;w=1")
                        );
                        assert!(resp
                            .header("ratelimit")
                            .is_some_and(|v| v.starts_with("\"default\";r=0;t=")));
                        limited += 1;
                    }
                    other => panic!("unexpected {other}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for l in loops {
        let (o, d) = l.await.expect("loop");
        ok += o;
        limited += d;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected = 20.0 + 200.0 * elapsed;
    let error = (ok as f64 - expected).abs() / expected;
    assert!(limited > 0, "the clients sent faster than the limit");
    assert!(
        error < 0.05,
        "allowed {ok}, expected {expected:.0} over {elapsed:.2}s (off by {:.1}%)",
        error * 100.0
    );
    assert_eq!(
        up.hits() as u64,
        ok,
        "refused requests never reach the upstream"
    );
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(metrics.contains(&format!(
        "strait_rate_limited_total{{listener=\"main\",route=\"all\"}} {limited}"
    )));
}

/// How many of `n` requests with `x-api-key: key` are allowed.
async fn allowed(conn: &mut Conn, key: Option<&str>, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let mut req = request("GET", "k.example", "/");
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let req = req.body(empty()).expect("request");
        let resp = within(Duration::from_secs(5), "request", conn.fetch(req))
            .await
            .expect("request");
        if resp.status == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_and_overrides_are_separate_buckets() {
    let up = Upstream::echo("keyed").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "rate_limit:\n  requests_per_second: 1\n  burst: 2\n  key: { header: x-api-key }\n  overrides: [{ value: gold, requests_per_second: 100, burst: 50 }]",
        "",
    ))
    .await;
    let mut conn = Conn::open(proxy.listen, Proto::H1).await.expect("connect");
    assert_eq!(
        allowed(&mut conn, Some("basic"), 10).await,
        2,
        "burst 2 for an ordinary key"
    );
    assert_eq!(
        allowed(&mut conn, Some("other"), 10).await,
        2,
        "each key has its own bucket"
    );
    assert_eq!(
        allowed(&mut conn, Some("gold"), 10).await,
        10,
        "the override's burst of 50"
    );
    assert_eq!(
        allowed(&mut conn, None, 10).await,
        10,
        "requests without the key are not limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_resource_exhausted() {
    let up = Upstream::echo("grpc-limited").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "rate_limit: { requests_per_second: 1, burst: 1, key: route }",
        "protocol: http2",
    ))
    .await;
    let call = || {
        request("POST", "g.example", "/pkg.Service/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(full(&b"\0\0\0\0\0"[..]))
            .expect("request")
    };
    let first = within(
        Duration::from_secs(5),
        "first",
        proxy.send(Proto::H2, call()),
    )
    .await
    .expect("first");
    assert_eq!(first.status, 200);
    let second = within(
        Duration::from_secs(5),
        "second",
        proxy.send(Proto::H2, call()),
    )
    .await
    .expect("second");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("grpc-status").as_deref(), Some("8"));
    assert!(second.header("retry-after").is_some());
}
