//! Circuit breaking per cluster: over max_requests or max_connections a request fails fast with
//! 503 `overflow` (never queued behind a slow upstream), the others complete, the slots come
//! back, and overflows are counted by limit.

mod support;

use std::time::{Duration, Instant};

use support::*;

async fn burst(proxy: &Proxy, n: usize) -> Vec<(u16, Option<String>, Duration)> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let addr = proxy.listen;
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let resp = within(Duration::from_secs(5), "request", async {
                Conn::open(addr, Proto::H1)
                    .await?
                    .fetch(simple("GET", "b.example", "/"))
                    .await
            })
            .await
            .expect("request");
            (
                resp.status.as_u16(),
                resp.header("x-strait-error"),
                started.elapsed(),
            )
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.expect("call"));
    }
    out
}

fn check(results: &[(u16, Option<String>, Duration)], served: usize) {
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, served, "{results:?}");
    for (status, cause, took) in results.iter().filter(|r| r.0 != 200) {
        assert_eq!(*status, 503);
        assert_eq!(cause.as_deref(), Some("overflow"));
        assert!(
            *took < Duration::from_millis(250),
            "an overflow must fail fast, took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_requests_fail_fast_and_slots_come_back() {
    let up = Upstream::slow("slow", Duration::from_millis(400)).await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "",
        "",
        "circuit_breaker: { max_requests: 2 }",
    ))
    .await;
    check(&burst(&proxy, 5).await, 2);
    check(&burst(&proxy, 2).await, 2);
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("strait_upstream_overflows_total{cluster=\"echo\",limit=\"requests\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("overflows"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_cluster_at_max_connections_refuses_new_ones() {
    let up = Upstream::slow("slow-conns", Duration::from_millis(400)).await;
    // One worker: pools are per worker, so with more the free connection could sit idle in
    // another worker's pool (it still counts toward the limit).
    let config = one_route(up.addr, "", "", "circuit_breaker: { max_connections: 1 }");
    let proxy = Proxy::start(&format!("workers: 1\n{config}")).await;
    check(&burst(&proxy, 3).await, 1);
    assert_eq!(
        up.conns(),
        1,
        "the upstream never saw more than one connection"
    );
    // The one connection is reused once free.
    check(&burst(&proxy, 1).await, 1);
}

/// A proxy in front of `slow` with room for one request at a time, logging to `log`.
async fn one_slot(slow: &Upstream, log: &std::path::Path) -> Proxy {
    let _ = std::fs::remove_file(log);
    Proxy::start(&format!(
        "listeners:
  - name: main
    address: ${{LISTEN}}
    access_log: {{ path: \"{}\" }}
    routes:
      - backends: [{{ cluster: slow }}]
        timeout: 60s
clusters:
  - name: slow
    circuit_breaker: {{ max_requests: 1 }}
    endpoints: [{{ address: \"{}\" }}]
",
        log.display(),
        slow.addr
    ))
    .await
}

/// The slot is free: a request over `proto` gets its answer, not an overflow. And the request
/// given up on has its log line, as nginx's 499.
async fn slot_given_back(proxy: &Proxy, proto: Proto, log: &std::path::Path) {
    let resp = within(Duration::from_secs(10), "request", async {
        Conn::open(proxy.listen, proto)
            .await?
            .fetch(simple("GET", "b.example", "/"))
            .await
    })
    .await
    .expect("request");
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}",
        resp.header("x-strait-error")
    );
    let logged = eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("\"status\":499")
                    && l.contains("\"response_flags\":\"downstream_closed\"")
            })
    })
    .await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    assert!(logged, "{text}");
}

/// A client that gives up before its answer gives its slot back at once: its request to the
/// upstream is ended (as nginx and Envoy end it), not held until the answer or the route
/// timeout while new requests overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_frees_its_slot() {
    use tokio::io::AsyncWriteExt;
    let slow = Upstream::slow("slow", Duration::from_secs(3)).await;
    let log = std::env::temp_dir().join(format!("strait-gives-up-{}.log", std::process::id()));
    let proxy = one_slot(&slow, &log).await;
    let mut quitter = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    quitter
        .write_all(b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(quitter);
    tokio::time::sleep(Duration::from_millis(300)).await;
    slot_given_back(&proxy, Proto::H1, &log).await;
}

/// A client that leaves while its answer streams, the upstream quiet between two chunks (a
/// long poll, a stream of events), gives its slot back at once too: its answer, and the
/// upstream's, end then, not when the upstream next sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_answer_streams_frees_its_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The head and a first chunk, then 20 s of quiet before the last chunk.
    let up = raw_upstream(
        ["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n|0\r\n\r\n"],
        Duration::from_secs(20),
        false,
    )
    .await;
    let log = std::env::temp_dir().join(format!("strait-leaves-{}.log", std::process::id()));
    let proxy = Proxy::start(&format!(
        "listeners:
  - name: main
    address: ${{LISTEN}}
    access_log: {{ path: \"{}\" }}
    routes:
      - backends: [{{ cluster: up }}]
clusters:
  - name: up
    circuit_breaker: {{ max_requests: 1 }}
    endpoints: [{{ address: \"{up}\" }}]
",
        log.display()
    ))
    .await;
    let mut quitter = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    quitter
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    within(Duration::from_secs(5), "the first chunk", async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("first") {
            let n = quitter.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the first chunk");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    drop(quitter);
    let logged = eventually(Duration::from_secs(3), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("\"response_flags\":\"downstream_closed\"")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(logged, "no downstream_closed line: {text}");
    // The slot is free: the next request gets its answer's head, not an overflow (503).
    let mut next = Conn::open(proxy.listen, Proto::H1).await.expect("connect");
    let head = within(
        Duration::from_secs(5),
        "next",
        next.send(simple("GET", "a", "/")),
    )
    .await
    .expect("next");
    assert_eq!(
        head.status(),
        200,
        "{:?}",
        head.headers().get("x-strait-error")
    );
}

/// The same on HTTP/2, where the client resets its stream (`RST_STREAM`) and keeps the
/// connection: hyper drops the request's future, which ends the upstream request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_stream_frees_its_slot() {
    let slow = Upstream::slow("slow", Duration::from_secs(3)).await;
    let log = std::env::temp_dir().join(format!("strait-resets-{}.log", std::process::id()));
    let proxy = one_slot(&slow, &log).await;
    let tcp = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::builder()
        .uri(format!("http://{}/", proxy.listen))
        .body(())
        .expect("request");
    let (answer, _) = send.send_request(req, true).expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Dropping the answer's future resets the stream (CANCEL); the connection stays open.
    drop(answer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!connection.is_finished(), "the connection was closed");
    slot_given_back(&proxy, Proto::H2, &log).await;
}

/// Sockets to `port` in CLOSE-WAIT (their peer closed; this side did not yet), from
/// `/proc/net/tcp`.
fn close_wait_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&"08")
        })
        .count()
}

/// Idle pooled connections that their upstream closed are closed within a second or two, not
/// kept (in CLOSE-WAIT, each holding a descriptor and a `max_connections` slot) until the next
/// request to that endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_upstream_closed_are_let_go() {
    // Answers each connection's first request, keeping it alive, then closes it.
    let up = raw_upstream(
        ["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
        Duration::ZERO,
        true,
    )
    .await;
    let proxy = Proxy::start(&format!(
        "listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: up }}]
clusters:
  - name: up
    endpoints: [{{ address: \"{up}\" }}]
"
    ))
    .await;
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let addr = proxy.listen;
            tokio::spawn(async move { get(addr, "a", "/").await.status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("call"), 200);
    }
    let let_go = eventually(Duration::from_secs(4), || async {
        close_wait_to(up.port()) == 0
    })
    .await;
    assert!(let_go, "{} sockets in CLOSE-WAIT", close_wait_to(up.port()));
    let counted = proxy
        .metric(
            "strait_upstream_connections_closed_total",
            &[("reason", "closed_by_upstream")],
        )
        .await;
    assert!(counted.is_some_and(|n| n >= 1.0), "{counted:?}");
}
