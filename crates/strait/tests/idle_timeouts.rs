//! Idle timeouts: a response body that stops flowing is cut after the route's `idle_timeout`
//! (the client sees an error, never a hang), and an idle keep-alive client connection is closed
//! after the listener's `idle_timeout`; an upstream connection is closed after its cluster's
//! `idle_timeout` idle, `max_requests_per_connection` requests or `max_connection_duration`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers with a head and a few body bytes, then goes silent with the
/// connection open.
async fn stalling_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind stalling upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst bytes")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_is_cut_after_the_route_idle_timeout() {
    let upstream = stalling_upstream().await;
    let proxy = Proxy::start(&one_route(upstream, "", "idle_timeout: 300ms", "")).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = within(
            Duration::from_secs(5),
            "connect",
            Conn::open(proxy.listen, proto),
        )
        .await
        .expect("connect to proxy");
        let resp = within(
            Duration::from_secs(5),
            "response head",
            conn.send(simple("GET", "a.example", "/")),
        )
        .await
        .expect("response head arrives before the stall");
        assert_eq!(resp.status(), 200, "{proto:?}");
        let started = Instant::now();
        let body = within(Duration::from_secs(5), "body", drain_body(resp.into_body())).await;
        assert!(
            body.is_err(),
            "{proto:?}: a body cut short must be an error, got {body:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "{proto:?}: cut after {took:?}, expected about 300ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_listener_idle_timeout() {
    let upstream = Upstream::echo("idle").await;
    let proxy = Proxy::start(&one_route(upstream.addr, "idle_timeout: 400ms", "", "")).await;
    let mut conn = within(
        Duration::from_secs(5),
        "connect",
        Conn::open(proxy.listen, Proto::H1),
    )
    .await
    .expect("connect to proxy");
    let resp = within(
        Duration::from_secs(5),
        "request",
        conn.fetch(simple("GET", "a.example", "/")),
    )
    .await
    .expect("first request");
    assert_eq!(resp.status, 200);
    let started = Instant::now();
    assert!(
        conn.wait_closed(Duration::from_secs(5)).await,
        "the idle connection stayed open"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "closed after {took:?}, before the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_gets_goaway_after_the_listener_idle_timeout() {
    let upstream = Upstream::echo("idle-h2").await;
    let proxy = Proxy::start(&one_route(upstream.addr, "idle_timeout: 400ms", "", "")).await;
    let mut conn = within(
        Duration::from_secs(5),
        "connect",
        Conn::open(proxy.listen, Proto::H2),
    )
    .await
    .expect("connect to proxy");
    // Requests keep it open past the timeout while they keep coming.
    for _ in 0..4 {
        let resp = within(
            Duration::from_secs(5),
            "request",
            conn.fetch(simple("GET", "a.example", "/")),
        )
        .await
        .expect("request on a busy connection");
        assert_eq!(resp.status, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let started = Instant::now();
    assert!(
        conn.wait_closed(Duration::from_secs(5)).await,
        "the idle HTTP/2 connection stayed open"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "closed after {took:?}, before the idle timeout"
    );
}

/// A client that sends part of a request head and stalls (slowloris) is cut off after the
/// listener's `idle_timeout`, on its first request and on a later one of the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_stalls_is_cut_after_the_listener_idle_timeout() {
    let upstream = Upstream::echo("slow-head").await;
    let proxy = Proxy::start(&one_route(upstream.addr, "idle_timeout: 400ms", "", "")).await;
    for requests_before in [0, 1] {
        let mut stream = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect to proxy");
        for _ in 0..requests_before {
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n")
                .await
                .expect("write a whole request");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("slow-head") {
                let n = within(Duration::from_secs(5), "answer", stream.read(&mut buf))
                    .await
                    .expect("read the answer");
                assert!(n > 0, "closed before answering");
                seen.extend_from_slice(&buf[..n]);
            }
        }
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: a.exa")
            .await
            .expect("write part of a head");
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        // The proxy may answer 408 before closing; what matters is that it closes.
        let closed = within(Duration::from_secs(5), "close", async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed, "a stalled head kept its connection open");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "after {requests_before} requests: closed after {took:?}, expected about 400ms"
        );
    }
    // Both cut heads are counted (a kept-alive connection that just went idle is not).
    let counted = eventually(Duration::from_secs(3), || async {
        proxy
            .metric(
                "strait_listener_request_head_timeouts_total",
                &[("listener", "main")],
            )
            .await
            == Some(2.0)
    })
    .await;
    assert!(counted, "{}", proxy.admin_get("/metrics").await.text());
}

/// Reads until the connection closes; returns what came and how long it took.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    within(Duration::from_secs(8), "close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (
        String::from_utf8_lossy(&seen).into_owned(),
        started.elapsed(),
    )
}

/// Listeners accept a connection only once its first bytes are in (`TCP_DEFER_ACCEPT`, 1 s),
/// or once the second is up. A client that speaks after the second is still served (the idle
/// timeout counts from the hand-over), and one that never speaks is still closed by the
/// listener's idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_slow_to_speak_are_served_and_silent_ones_are_still_timed_out() {
    let upstream = Upstream::echo("late").await;
    let proxy = Proxy::start(&one_route(upstream.addr, "idle_timeout: 1s", "", "")).await;
    let connect = || async {
        within(
            Duration::from_secs(5),
            "connect",
            tokio::net::TcpStream::connect(proxy.listen),
        )
        .await
        .expect("connect to proxy")
    };
    let (mut slow, mut silent) = (connect().await, connect().await);
    let slow_client = async {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        slow.write_all(b"GET / HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n")
            .await
            .expect("write the late request");
        read_to_close(&mut slow).await
    };
    let ((answer, _), (nothing, silent_for)) =
        tokio::join!(slow_client, read_to_close(&mut silent));
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("late"),
        "a request sent 1.3 s after connecting got {answer:?}"
    );
    assert!(
        !nothing.contains("200"),
        "a connection that never spoke got {nothing:?}"
    );
    // Handed over after the deferral (about a second), then closed after the idle timeout
    // (another second): without the deferral it would close after one.
    assert!(
        silent_for >= Duration::from_millis(1500) && silent_for < Duration::from_secs(6),
        "a connection that never spoke was closed after {silent_for:?}"
    );
}

/// An HTTP/1.1 upstream that answers each request `connection N` (its connection's number,
/// from 1), with `fields` (each ending in CRLF) in the head, and keeps the connection; the count
/// is of the connections the proxy closed.
async fn numbering_upstream(fields: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    tokio::spawn(async move {
        for number in 1.. {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    got.extend_from_slice(&buf[..n]);
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let text = format!("connection {number}\n");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

/// A pooled HTTP/1 connection that waited the cluster's `idle_timeout` for a request is
/// closed, and the next request opens a new one; one in use all the while stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_cluster_idle_timeout() {
    let (up, closed) = numbering_upstream("").await;
    let config = format!("workers: 1\n{}", one_route(up, "", "", "idle_timeout: 2s"));
    let proxy = Proxy::start(&config).await;
    // In use every half second, for longer than the idle timeout.
    for _ in 0..8 {
        assert_eq!(proxy.get("a", "/").await.text(), "connection 1\n");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 0, "closed while in use");
    let active = || proxy.metric("strait_upstream_connections_active", &[("cluster", "echo")]);
    assert_eq!(active().await, Some(1.0), "the pooled connection is open");
    let quiet = Instant::now();
    let let_go = eventually(Duration::from_secs(5), || async {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let took = quiet.elapsed();
    assert!(let_go, "the idle connection stayed open");
    assert!(
        took >= Duration::from_millis(1400),
        "closed {took:?} after its last request, before the idle timeout"
    );
    assert_eq!(active().await, Some(0.0), "no connection open");
    assert_eq!(proxy.get("a", "/").await.text(), "connection 2\n");
    assert_eq!(proxy.connections_closed("idle_timeout").await, 1.0);
}

/// An upstream that announces its idle timeout (`Keep-Alive: timeout=2`, as Node.js says 5) has
/// its idle connections retired a second before it: a request then goes on a new connection
/// rather than on one the upstream may be closing as it arrives. The cluster's own
/// `idle_timeout` (60 s by default) is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_announced_idle_timeout_retires_its_connections_before_it() {
    let (up, _) = numbering_upstream("keep-alive: timeout=2\r\n").await;
    let proxy = Proxy::start(&format!("workers: 1\n{}", one_route(up, "", "", ""))).await;
    let answer = proxy.get("a", "/").await;
    assert_eq!(answer.text(), "connection 1\n");
    assert!(
        answer.header("keep-alive").is_none(),
        "the upstream's keep-alive is its hop's own"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.get("a", "/").await.text(), "connection 1\n");
    // Past 1 s idle: retired, though the upstream would keep it until 2 s.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(proxy.get("a", "/").await.text(), "connection 2\n");
    assert_eq!(proxy.connections_closed("upstream_idle_timeout").await, 1.0);
}

/// A cluster's `max_requests_per_connection` closes an upstream connection after that many
/// requests, as nginx's `keepalive_requests`: the next goes on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_carries_at_most_max_requests_per_connection() {
    let (up, closed) = numbering_upstream("").await;
    let config = format!(
        "workers: 1\n{}",
        one_route(up, "", "", "max_requests_per_connection: 3")
    );
    let proxy = Proxy::start(&config).await;
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(proxy.get("a", "/").await.text());
    }
    let numbers: Vec<&str> = answers.iter().map(|a| a.trim_end()).collect();
    assert_eq!(
        numbers,
        [
            "connection 1",
            "connection 1",
            "connection 1",
            "connection 2",
            "connection 2",
            "connection 2",
            "connection 3"
        ]
    );
    let both = eventually(Duration::from_secs(3), || async {
        closed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(both, "the two used up were not closed");
    assert_eq!(proxy.connections_closed("max_requests").await, 2.0);
    let opened = proxy.metric("strait_upstream_connections_opened_total", &[]);
    assert_eq!(opened.await, Some(3.0));
}

/// A cluster's `max_connection_duration` retires an upstream connection that old, as nginx's
/// `keepalive_time`, though requests keep it busy: the next goes on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_is_used_at_most_max_connection_duration() {
    let (up, _) = numbering_upstream("").await;
    let config = format!(
        "workers: 1\n{}",
        one_route(up, "", "", "max_connection_duration: 2s")
    );
    let proxy = Proxy::start(&config).await;
    let opened = Instant::now();
    let mut moved = None;
    for _ in 0..20 {
        let answer = proxy.get("a", "/").await.text();
        if answer == "connection 2\n" {
            moved = Some(opened.elapsed());
            break;
        }
        assert_eq!(answer, "connection 1\n");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let moved = moved.expect("connection 1 still used after 5 s");
    assert!(
        moved >= Duration::from_millis(1900),
        "connection 2 opened {moved:?} after connection 1, before its duration ran out"
    );
    assert_eq!(proxy.connections_closed("max_duration").await, 1.0);
}
