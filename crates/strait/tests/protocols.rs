//! Protocols on both sides of the proxy: HTTP/1.1 keep-alive, h2c, protocol translation,
//! gRPC streaming with trailers, WebSocket upgrades and large streamed bodies.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn single_route(cluster: &Upstream, protocol: &str) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: {name} }}]
clusters:
  - name: {name}
    protocol: {protocol}
    endpoints: [{{ address: "{addr}" }}]
"#,
        name = cluster.name,
        addr = cluster.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_carries_many_requests_on_one_connection() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&single_route(&up, "http1")).await;
    let mut conn = proxy.connect(Proto::H1).await;
    for i in 0..200 {
        let req = if i % 3 == 0 {
            request("POST", "ka.example.com", &format!("/req/{i}"))
                .body(full(vec![b'b'; i * 10]))
                .expect("request")
        } else {
            simple("GET", "ka.example.com", &format!("/req/{i}"))
        };
        let resp = conn
            .fetch(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
        assert_eq!(resp.version, Version::HTTP_11);
        let seen = resp.echo();
        assert!(
            seen.uri.ends_with(&format!("/req/{i}")),
            "request {i} got the answer for {}",
            seen.uri
        );
        if i % 3 == 0 {
            assert_eq!(seen.body_len, (i * 10) as u64, "request {i} body");
        }
    }
    assert!(
        !conn.is_closed(),
        "the proxy closed a keep-alive connection"
    );
    assert_eq!(up.hits(), 200);
    // Sequential requests from one client connection should reuse pooled upstream connections.
    assert!(
        up.conns() <= 2,
        "200 sequential requests opened {} upstream connections: no upstream keep-alive",
        up.conns()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_http1_upstream_multiplexes_streams() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&single_route(&up, "http1")).await;
    let conn = proxy.connect(Proto::H2).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = conn.clone_h2();
        tasks.push(tokio::spawn(async move {
            let req = request("POST", "h2.example.com", &format!("/stream/{i}"))
                .body(full(vec![b'x'; 1000 + i]))
                .expect("request");
            (i, c.fetch(req).await)
        }));
    }
    for t in tasks {
        let (i, resp) = within(Duration::from_secs(20), "h2c streams", t)
            .await
            .expect("task");
        let resp = resp.unwrap_or_else(|e| panic!("h2c stream {i}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "stream {i}: {}", resp.text());
        assert_eq!(
            resp.version,
            Version::HTTP_2,
            "stream {i}: client side stays HTTP/2"
        );
        let seen = resp.echo();
        assert_eq!(
            seen.version, "HTTP/1.1",
            "stream {i}: the cluster speaks http1"
        );
        assert_eq!(
            seen.header("host"),
            ["h2.example.com"],
            "stream {i}: :authority becomes the Host header"
        );
        assert_eq!(
            seen.uri,
            format!("/stream/{i}"),
            "stream {i}: origin-form request target for an HTTP/1.1 upstream"
        );
        assert!(
            seen.uri.ends_with(&format!("/stream/{i}")),
            "stream {i}: {}",
            seen.uri
        );
        assert_eq!(seen.body_len, 1000 + i as u64, "stream {i}: body");
    }
}

/// RFC 9113 8.2.3: an HTTP/2 client may send its cookie as crumbs, one field each (browsers
/// do, so that HPACK indexes each). They leave HTTP/2 as one `cookie` field joined with "; ",
/// which is what an HTTP/1.1 upstream reads (many read only the first of several fields); an
/// HTTP/2 upstream is given the same. An HTTP/1.1 client's fields go as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_cookie_sent_as_crumbs_reaches_the_upstream_as_one_field() {
    let crumbs = |proto_host: &str| {
        request("GET", proto_host, "/c")
            .header("cookie", "session=6f1c")
            .header("x-other", "x")
            .header("cookie", "theme=dark")
            .header("cookie", "cart=3")
            .body(empty())
            .expect("request")
    };
    for protocol in ["http1", "http2"] {
        let up = Upstream::echo("up").await;
        let proxy = Proxy::start(&single_route(&up, protocol)).await;
        let mut conn = proxy.connect(Proto::H2).await;
        let resp = conn.fetch(crumbs("h2.example")).await.expect("answer");
        assert_eq!(resp.status, StatusCode::OK, "{protocol}: {}", resp.text());
        let seen = resp.echo();
        assert_eq!(
            seen.header("cookie"),
            ["session=6f1c; theme=dark; cart=3"],
            "{protocol}"
        );
        assert_eq!(seen.header("x-other"), ["x"], "{protocol}");
        let resp = send(proxy.listen, Proto::H1, crumbs("h1.example"))
            .await
            .expect("answer");
        assert_eq!(
            resp.echo().header("cookie"),
            ["session=6f1c", "theme=dark", "cart=3"],
            "{protocol}: HTTP/1.1 fields as they came"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connect_gets_501() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&single_route(&up, "http1")).await;
    let mut conn = proxy.connect(Proto::H2).await;
    let connect = http::Request::builder()
        .method("CONNECT")
        .uri("h2.example:443")
        .body(empty())
        .expect("request");
    let resp = conn.fetch(connect).await.expect("answer");
    assert_eq!(resp.status, StatusCode::NOT_IMPLEMENTED, "{}", resp.text());
    assert_eq!(up.hits(), 0, "a CONNECT reached the upstream");
    // The connection serves on.
    let resp = conn
        .fetch(
            request("GET", "h2.example", "/after")
                .body(empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_http2_upstream() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&single_route(&up, "http2")).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let listen = proxy.listen;
        tasks.push(tokio::spawn(async move {
            let req = request("POST", "h1.example.com", &format!("/up/{i}?q={i}"))
                .header("x-client", "h1")
                .body(full(vec![b'y'; 100_000]))
                .expect("request");
            (i, send(listen, Proto::H1, req).await)
        }));
    }
    for t in tasks {
        let (i, resp) = within(Duration::from_secs(20), "h1 to h2", t)
            .await
            .expect("task");
        let resp = resp.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
        assert_eq!(
            resp.version,
            Version::HTTP_11,
            "request {i}: client side stays HTTP/1.1"
        );
        let seen = resp.echo();
        assert_eq!(
            seen.version, "HTTP/2.0",
            "request {i}: the cluster speaks http2"
        );
        assert_eq!(
            seen.host, "h1.example.com",
            "request {i}: Host becomes :authority"
        );
        assert!(
            seen.uri.ends_with(&format!("/up/{i}?q={i}")),
            "request {i}: {}",
            seen.uri
        );
        assert_eq!(seen.header("x-client"), ["h1"], "request {i}");
        assert_eq!(seen.body_len, 100_000, "request {i}: body");
    }
}

/// An HTTP/2 upstream that sends GOAWAY (as servers do to age connections out) while a stream
/// is open goes on serving that stream; the requests after it go on a new connection rather
/// than failing on the one going away (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_an_http2_upstreams_goaway_go_on_a_new_connection() {
    let proxy =
        proxy_to_http2_upstream(|tcp, number| holding_upstream(tcp, number, None, true)).await;
    let held = held_answer(&proxy, Proto::H1).await;
    // The GOAWAY reaches the proxy (its one worker, whose pool holds the connection).
    tokio::time::sleep(Duration::from_millis(300)).await;
    answered_on(&proxy, "connection 2\n", 3).await;
    drop(held);
}

/// Sends `GET /hold` on a new connection over `proto`: the connection, and the answer the
/// upstream holds open.
async fn held_answer(proxy: &Proxy, proto: Proto) -> (Conn, http::Response<Incoming>) {
    let mut holding = proxy.connect(proto).await;
    let held = holding
        .send(simple("GET", "a", "/hold"))
        .await
        .expect("the held answer's head");
    assert_eq!(held.status(), StatusCode::OK);
    (holding, held)
}

/// `times` requests, each answered `text` (the upstream connection's number).
async fn answered_on(proxy: &Proxy, text: &str, times: usize) {
    for _ in 0..times {
        let next = within(REQUEST_LIMIT, "a request", proxy.get("a", "/next")).await;
        assert_eq!(next.status, StatusCode::OK, "{}", next.text());
        assert_eq!(next.text(), text);
    }
}

/// An HTTP/2 upstream whose `SETTINGS_MAX_CONCURRENT_STREAMS` are all in use on a connection
/// (a long answer, a gRPC stream) gets the next request on another connection, rather than
/// the request waiting in the first one's queue for a stream to end; the first connection
/// serves again once it has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_an_http2_upstreams_stream_limit_go_on_another_connection() {
    let proxy =
        proxy_to_http2_upstream(|tcp, number| holding_upstream(tcp, number, Some(1), false)).await;
    // Over HTTP/2, whose client's reset ends the held answer when dropped.
    let held = held_answer(&proxy, Proto::H2).await;
    answered_on(&proxy, "connection 2\n", 2).await;
    drop(held);
    let room = eventually(Duration::from_secs(5), || async {
        proxy.get("a", "/again").await.text() == "connection 1\n"
    })
    .await;
    assert!(
        room,
        "the first connection serves again once its stream ended"
    );
}

/// An HTTP/2 connection that carried no stream for the cluster's `idle_timeout` is closed (a
/// burst's extra connections, and the first once quiet), and the next request opens a new one;
/// one in use all the while stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_upstream_connections_close_after_the_cluster_idle_timeout() {
    let (proxy, closed) = proxy_to_closing_http2_upstream(Some(1), "idle_timeout: 2s").await;
    // Connection 1 holds an answer; connection 2 takes the next request.
    let held = held_answer(&proxy, Proto::H2).await;
    answered_on(&proxy, "connection 2\n", 1).await;
    drop(held);
    // Connection 1, in use every half second for longer than the idle timeout, stays; the
    // other is closed meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..8 {
        answered_on(&proxy, "connection 1\n", 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 1, "connection 2 idled out");
    let quiet = std::time::Instant::now();
    let both = eventually(Duration::from_secs(5), || async {
        closed.load(Ordering::SeqCst) == 2
    })
    .await;
    let took = quiet.elapsed();
    assert!(both, "connection 1 stayed open once quiet");
    assert!(
        took >= Duration::from_millis(1400),
        "connection 1 closed {took:?} after its last request, before the idle timeout"
    );
    answered_on(&proxy, "connection 3\n", 1).await;
    assert_eq!(proxy.connections_closed("idle_timeout").await, 2.0);
}

/// A cluster's `max_requests_per_connection` retires an HTTP/2 connection once that many
/// streams were opened on it: it closes once they end, and the next request opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_connection_carries_at_most_max_requests_per_connection() {
    let (proxy, closed) =
        proxy_to_closing_http2_upstream(None, "max_requests_per_connection: 2").await;
    for number in [1, 1, 2, 2, 3] {
        answered_on(&proxy, &format!("connection {number}\n"), 1).await;
    }
    let both = eventually(Duration::from_secs(3), || async {
        closed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(both, "the used-up connections stayed open");
    assert_eq!(proxy.connections_closed("max_requests").await, 2.0);
    let opened = proxy.metric("strait_upstream_connections_opened_total", &[]);
    assert_eq!(opened.await, Some(3.0));
}

/// A cluster's `max_connection_duration` retires an HTTP/2 connection that old, though requests
/// keep it busy: its open stream goes on to its end, and the next request opens another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_connection_is_used_at_most_max_connection_duration() {
    let (proxy, _) = proxy_to_http2_upstream_with(
        |tcp, number| holding_upstream(tcp, number, None, false),
        "max_connection_duration: 2s",
    )
    .await;
    // A stream held open across the retirement.
    let (_conn, mut held) = held_answer(&proxy, Proto::H2).await;
    let opened = std::time::Instant::now();
    let mut moved = None;
    for _ in 0..20 {
        let answer = within(REQUEST_LIMIT, "a request", proxy.get("a", "/next")).await;
        if answer.text() == "connection 2\n" {
            moved = Some(opened.elapsed());
            break;
        }
        assert_eq!(answer.text(), "connection 1\n");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let moved = moved.expect("connection 1 still used after 5 s");
    assert!(
        moved >= Duration::from_millis(1900),
        "connection 2 opened {moved:?} after connection 1, before its duration ran out"
    );
    // The held stream was not cut: its data came, and it is still open.
    let first = held.body_mut().frame().await;
    let first = first.expect("the held answer's data").expect("no error");
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"held\n"[..]));
    let more = tokio::time::timeout(Duration::from_millis(300), held.body_mut().frame()).await;
    assert!(more.is_err(), "the held stream ended: {more:?}");
    assert_eq!(proxy.connections_closed("max_duration").await, 1.0);
}

/// An HTTP/2 upstream that allows no stream for now (`SETTINGS_MAX_CONCURRENT_STREAMS` 0, as a
/// server may say while it cannot take more) is not answered with a new connection a request:
/// the requests wait on the connection there is, for the route's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_allowing_no_streams_gets_no_new_connection_a_request() {
    let (proxy, opened) = proxy_to_counted_http2_upstream(|tcp, number| {
        holding_upstream(tcp, number, Some(0), false)
    })
    .await;
    // The first request opens the connection and learns its limit.
    let first = proxy.get("a", "/first").await;
    assert_eq!(
        first.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        first.text()
    );
    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..5 {
        let addr = proxy.listen;
        waiting.spawn(async move { get(addr, "a", &format!("/{i}")).await.status });
    }
    while let Some(status) = waiting.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1, "connections opened");
}

/// A burst of long answers to a new HTTP/2 upstream, more than it allows streams (nginx allows
/// 128), before its `SETTINGS` say how many: a new connection is taken to allow 100 until
/// then, so the burst spreads over two connections, and every answer's head comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_a_new_http2_upstreams_limit_spreads_over_connections() {
    // The upstream's `SETTINGS` come 300 ms late, as over a long round trip.
    let (proxy, opened) = proxy_to_counted_http2_upstream(|tcp, number| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        holding_upstream(tcp, number, Some(128), false).await;
    })
    .await;
    let held = held_at_once(&proxy, 200).await;
    assert_eq!(opened.load(Ordering::SeqCst), 2, "connections opened");
    drop(held);
}

/// `n` requests for `/hold` at once, over as many HTTP/2 client connections as the listener's
/// 100 streams each need: the connections and the answers, each checked 200, held open.
async fn held_at_once(proxy: &Proxy, n: usize) -> (Vec<Conn>, Vec<http::Response<Incoming>>) {
    let mut clients = Vec::new();
    for _ in 0..n.div_ceil(100) {
        clients.push(proxy.connect(Proto::H2).await);
    }
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut conn = clients[i % clients.len()].clone_h2();
        burst.spawn(async move { conn.send(simple("GET", "a", "/hold")).await });
    }
    let mut held = Vec::new();
    while let Some(answer) = burst.join_next().await {
        let answer = answer.expect("task").expect("answer");
        assert_eq!(answer.status(), StatusCode::OK, "{:?}", answer.headers());
        held.push(answer);
    }
    assert_eq!(held.len(), n);
    (clients, held)
}

/// A burst of long answers to an HTTP/2 upstream that allows 100 streams a connection (as
/// HAProxy and Apache do) fills connections one after another: 250 answers, 3 connections. The
/// requests that waited for a connection that filled up wait for the next, rather than each
/// opening its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_fills_new_http2_connections_one_after_another() {
    let (proxy, opened) = proxy_to_counted_http2_upstream(|tcp, number| {
        holding_upstream(tcp, number, Some(100), false)
    })
    .await;
    let held = held_at_once(&proxy, 250).await;
    assert_eq!(opened.load(Ordering::SeqCst), 3, "connections opened");
    drop(held);
}

/// A burst of requests to an HTTP/2 upstream the worker has no connection to yet opens one
/// connection, not one a request: the others wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_a_new_http2_upstream_opens_one_connection() {
    let proxy =
        proxy_to_http2_upstream(|tcp, number| holding_upstream(tcp, number, None, false)).await;
    let conn = proxy.connect(Proto::H2).await;
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut conn = conn.clone_h2();
        burst.spawn(async move { conn.fetch(simple("GET", "a", &format!("/{i}"))).await });
    }
    while let Some(answer) = burst.join_next().await {
        let answer = answer.expect("task").expect("answer");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "connection 1\n");
    }
}

/// A stream an HTTP/2 upstream refused unprocessed goes again, its body with it, whatever its
/// method: one above the last stream a `GOAWAY` (`NO_ERROR`) names, as nginx sends after
/// `keepalive_requests` (RFC 9113, 6.8), on a new connection; one reset with `REFUSED_STREAM`
/// (8.7), on a connection with room (here the same one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_an_http2_upstream_refused_goes_again() {
    for refusal in [Refusal::GoAway, Refusal::Reset] {
        let proxy = proxy_to_http2_upstream(move |tcp, number| {
            refusing_upstream(tcp, number, refusal, Refused::SecondOfTwo)
        })
        .await;
        // One request opens the connection; then two at once on it, a GET and a POST: the
        // upstream answers the first of them and refuses the second.
        let first = proxy.get("a", "/first").await;
        assert_eq!(first.text(), "connection 1, 0 bytes\n");
        let post = request("POST", "a", "/post")
            .body(full("hello"))
            .expect("request");
        // The POST goes second (its stream is the refused one), its body with it.
        let (get, post) = tokio::join!(proxy.get("a", "/get"), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.send(Proto::H1, post).await
        });
        let post = post.expect("POST");
        assert_eq!(get.status, StatusCode::OK, "{refusal:?}: {}", get.text());
        assert_eq!(get.text(), "connection 1, 0 bytes\n", "{refusal:?}");
        assert_eq!(post.status, StatusCode::OK, "{refusal:?}: {}", post.text());
        let again = format!("connection {}, 5 bytes\n", refusal.goes_again_on());
        assert_eq!(post.text(), again, "{refusal:?}");
    }
}

/// A request refused unprocessed by connection after connection (as when a server tells all its
/// connections to go away at once: nginx's reload, to its old worker's) goes again each time,
/// on a new connection, up to three times: refused by two connections, it is answered by the
/// third; refused by every connection, it gets 502 after four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_connection_after_connection_goes_again_each_time() {
    let (proxy, opened) = proxy_to_counted_http2_upstream(|tcp, number| {
        refusing_upstream(tcp, number, Refusal::GoAway, Refused::FirstOnConnections(2))
    })
    .await;
    let got = proxy.get("a", "/get").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "connection 3, 0 bytes\n");
    assert_eq!(opened.load(Ordering::SeqCst), 3);

    let (proxy, opened) = proxy_to_counted_http2_upstream(|tcp, number| {
        refusing_upstream(
            tcp,
            number,
            Refusal::GoAway,
            Refused::FirstOnConnections(usize::MAX),
        )
    })
    .await;
    let got = proxy.get("a", "/get").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
    assert_eq!(opened.load(Ordering::SeqCst), 4, "one try and three more");
}

/// An idempotent request without a body whose HTTP/2 connection, reused, ends before its
/// answer (closed with no `GOAWAY`, as by a restart) goes again on a new connection, as for
/// HTTP/1; a POST is not sent twice (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_http2_connection_ended_goes_again_a_post_does_not() {
    for method in ["GET", "POST"] {
        let proxy = proxy_to_http2_upstream(|tcp, number| {
            refusing_upstream(tcp, number, Refusal::GoAway, Refused::ClosedAtSecond)
        })
        .await;
        let first = proxy.get("a", "/first").await;
        assert_eq!(first.text(), "connection 1, 0 bytes\n");
        let body = if method == "GET" {
            empty()
        } else {
            full("hello")
        };
        let req = request(method, "a", "/second").body(body).expect("request");
        let got = proxy.send(Proto::H1, req).await.expect(method);
        if method == "GET" {
            assert_eq!(got.status, StatusCode::OK, "{}", got.text());
            assert_eq!(got.text(), "connection 2, 0 bytes\n");
        } else {
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
        }
    }
}

/// A stream the upstream refuses unprocessed while its request's body is still arriving goes
/// again: the body's chunks sent on the refused stream first, then the rest as the client
/// sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refused_while_its_body_arrives_goes_again() {
    for refusal in [Refusal::GoAway, Refusal::Reset] {
        let proxy = proxy_to_http2_upstream(move |tcp, number| {
            refusing_upstream(tcp, number, refusal, Refused::Streaming)
        })
        .await;
        let first = proxy.get("a", "/first").await;
        assert_eq!(first.text(), "connection 1, 0 bytes\n");
        let (tx, body) = channel_body(2);
        let post = request("POST", "a", "/post").body(body).expect("request");
        let sending = tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
                .await
                .expect("first chunk");
            // The upstream refuses the stream on the first chunk; the rest comes after.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"world"))))
                .await
                .expect("second chunk");
        });
        let post = within(REQUEST_LIMIT, "POST", proxy.send(Proto::H1, post))
            .await
            .expect("POST");
        sending.await.expect("sending task");
        assert_eq!(post.status, StatusCode::OK, "{refusal:?}: {}", post.text());
        let again = format!("connection {}, 11 bytes\n", refusal.goes_again_on());
        assert_eq!(post.text(), again, "{refusal:?}");
    }
}

/// A stream refused unprocessed once its body filled the upstream's window goes again, whole: the
/// proxy may have read well past the window by then (a chunk sent over it, one waiting for room),
/// and the copy it keeps to send again holds it all. nginx's window is 64 KiB
/// (`http2_body_preread_size`); before, a body over 64 KiB refused so got 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refused_with_its_window_full_goes_again_whole() {
    const CHUNK: usize = 16 * 1024;
    const CHUNKS: usize = 13;
    let proxy = proxy_to_http2_upstream(move |tcp, number| {
        refusing_upstream(tcp, number, Refusal::GoAway, Refused::WindowFull)
    })
    .await;
    let first = proxy.get("a", "/first").await;
    assert_eq!(first.text(), "connection 1, 0 bytes\n");
    let (tx, body) = channel_body(CHUNKS);
    let post = request("POST", "a", "/post").body(body).expect("request");
    let sending = tokio::spawn(async move {
        for i in 0..CHUNKS {
            let chunk = Bytes::from(vec![b'a' + i as u8; CHUNK]);
            tx.send(Ok(Frame::data(chunk))).await.expect("chunk");
        }
    });
    let post = within(REQUEST_LIMIT, "POST", proxy.send(Proto::H1, post))
        .await
        .expect("POST");
    sending.await.expect("sending task");
    assert_eq!(post.status, StatusCode::OK, "{}", post.text());
    let again = format!("connection 2, {} bytes\n", CHUNK * CHUNKS);
    assert_eq!(post.text(), again);
}

/// A proxy with one worker in front of an HTTP/2 upstream whose connections `serve` serves,
/// each with its number (from 1); a request waits 2 s for its answer's head.
async fn proxy_to_http2_upstream<F, Fut>(serve: F) -> Proxy
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    proxy_to_counted_http2_upstream(serve).await.0
}

/// [`proxy_to_http2_upstream`], with the count of connections the upstream accepted.
async fn proxy_to_counted_http2_upstream<F, Fut>(serve: F) -> (Proxy, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    proxy_to_http2_upstream_with(serve, "").await
}

/// [`proxy_to_counted_http2_upstream`], with `cluster_extra` (one line) in the cluster.
async fn proxy_to_http2_upstream_with<F, Fut>(
    serve: F,
    cluster_extra: &str,
) -> (Proxy, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let opened = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&opened);
    tokio::spawn(async move {
        for number in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.store(number, Ordering::SeqCst);
            tokio::spawn(serve(tcp, number));
        }
    });
    let proxy = Proxy::start(&format!(
        "workers: 1\nlisteners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - backends: [{{ cluster: up }}]\n        timeout: 2s\n\
         clusters:\n  - name: up\n    protocol: http2\n    endpoints: [{{ address: \"{addr}\" }}]\n    \
         {cluster_extra}\n"
    ))
    .await;
    (proxy, opened)
}

/// [`proxy_to_http2_upstream_with`] `cluster_extra`, to a [`holding_upstream`] allowing
/// `max_streams`; the count is of the connections the proxy closed.
async fn proxy_to_closing_http2_upstream(
    max_streams: Option<u32>,
    cluster_extra: &str,
) -> (Proxy, Arc<AtomicUsize>) {
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    let (proxy, _) = proxy_to_http2_upstream_with(
        move |tcp, number| {
            let counted = Arc::clone(&counted);
            async move {
                holding_upstream(tcp, number, max_streams, false).await;
                counted.fetch_add(1, Ordering::SeqCst);
            }
        },
        cluster_extra,
    )
    .await;
    (proxy, closed)
}

/// Answers `connection N`; a request for `/hold` gets an answer that stays open. With
/// `max_streams`, the connection allows that many streams at once
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`); with `go_away`, it is told to go away (`GOAWAY`,
/// gracefully) once an answer is held.
async fn holding_upstream(tcp: TcpStream, number: usize, max_streams: Option<u32>, go_away: bool) {
    let mut builder = h2::server::Builder::new();
    if let Some(max) = max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut conn) = builder.handshake(tcp).await else {
        return;
    };
    let mut held = Vec::new();
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
            continue;
        };
        if request.uri().path() == "/hold" {
            let _ = body.send_data(Bytes::from_static(b"held\n"), false);
            held.push(body);
            if go_away {
                conn.graceful_shutdown();
            }
        } else {
            let text = format!("connection {number}\n");
            let _ = body.send_data(Bytes::from(text), true);
        }
    }
}

/// How [`refusing_upstream`] refuses a stream.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `GOAWAY` (`NO_ERROR`) naming an earlier stream as the last, then the connection's end.
    GoAway,
    /// `RST_STREAM` with `REFUSED_STREAM`; the connection goes on.
    Reset,
}

impl Refusal {
    /// The connection a refused stream goes again on: a new one after `GOAWAY`; the same one,
    /// which has room, after `REFUSED_STREAM`.
    fn goes_again_on(self) -> usize {
        match self {
            Refusal::GoAway => 2,
            Refusal::Reset => 1,
        }
    }
}

/// Which stream [`refusing_upstream`] refuses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refused {
    /// Once two requests came whole after the first, the second of them.
    SecondOfTwo,
    /// After the first, the next stream, at its first chunk of body (the body not ended).
    Streaming,
    /// On each of the first `n` connections, its first request, by a `GOAWAY` naming no stream
    /// as processed (`refusal` is not read), as every connection of a server going away.
    FirstOnConnections(usize),
    /// On the first connection, the second request, by closing the connection with no
    /// `GOAWAY` (`refusal` is not read), as a server that restarts or crashes.
    ClosedAtSecond,
    /// After the first, the next stream, once its body filled h2's default window (65,535
    /// bytes, never updated on the first connection), by a `GOAWAY` naming the first as the last
    /// processed (`refusal` is not read). Later connections give the window back as the body
    /// comes.
    WindowFull,
}

/// A hand-made HTTP/2 server (h2's own cannot name a last stream below one it received). It
/// answers each stream `connection N, B bytes` (B: its body's length); on the first connection,
/// after the first stream, it refuses one (`refused`, by `refusal`) and answers the others
/// (after a `GOAWAY`, none: it closes).
async fn refusing_upstream(mut tcp: TcpStream, number: usize, refusal: Refusal, refused: Refused) {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const RST_STREAM: u8 = 3;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const WINDOW_UPDATE: u8 = 8;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("length").to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    fn answer(number: usize, stream: u32, bytes: usize) -> Vec<u8> {
        // `:status: 200` is entry 8 of HPACK's static table.
        let mut out = frame(HEADERS, END_HEADERS, stream, &[0x88]);
        let text = format!("connection {number}, {bytes} bytes\n");
        out.extend(frame(DATA, END_STREAM, stream, text.as_bytes()));
        out
    }
    /// A graceful `GOAWAY` naming `last` as the last stream processed, then `then`; the
    /// connection ends 200 ms later, once the proxy has read them.
    async fn go_away(tcp: &mut TcpStream, last: u32, then: &[u8]) {
        let mut out = frame(GOAWAY, 0, 0, &[last.to_be_bytes(), [0; 4]].concat());
        out.extend_from_slice(then);
        let _ = tcp.write_all(&out).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut preface = [0u8; 24];
    if tcp.read_exact(&mut preface).await.is_err() {
        return;
    }
    let _ = tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await;
    // Streams whose request ended: (id, body bytes).
    let mut complete: Vec<(u32, usize)> = Vec::new();
    let mut bodies: Vec<(u32, usize)> = Vec::new();
    // A stream was refused: the connection serves the others from then on.
    let mut refused_one = false;
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if tcp.read_exact(&mut payload).await.is_err() {
            return;
        }
        let out = match kind {
            SETTINGS if flags & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
            PING if flags & 1 == 0 => frame(PING, 1, 0, &payload),
            HEADERS | DATA => {
                let n = if kind == DATA { len } else { 0 };
                let received = match bodies.iter_mut().find(|(id, _)| *id == stream) {
                    Some((_, bytes)) => {
                        *bytes += n;
                        *bytes
                    }
                    None => {
                        bodies.push((stream, n));
                        n
                    }
                };
                if refused == Refused::WindowFull && n > 0 {
                    if number == 1 && stream > 1 && received >= 65_535 {
                        return go_away(&mut tcp, 1, &[]).await;
                    }
                    if number > 1 {
                        let taken = u32::try_from(n).expect("frame length").to_be_bytes();
                        let mut out = frame(WINDOW_UPDATE, 0, 0, &taken);
                        out.extend(frame(WINDOW_UPDATE, 0, stream, &taken));
                        if tcp.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                }
                if refused == Refused::ClosedAtSecond
                    && number == 1
                    && stream > 1
                    && flags & END_STREAM != 0
                {
                    return;
                }
                if let Refused::FirstOnConnections(n) = refused {
                    if number <= n && flags & END_STREAM != 0 {
                        return go_away(&mut tcp, 0, &[]).await;
                    }
                }
                let streaming = kind == DATA && flags & END_STREAM == 0;
                let refuse = !refused_one && number == 1 && stream > 1;
                if refused == Refused::Streaming && refuse && streaming {
                    match refusal {
                        Refusal::GoAway => {
                            // The first stream is the last processed.
                            return go_away(&mut tcp, 1, &[]).await;
                        }
                        Refusal::Reset => {
                            let reset = frame(RST_STREAM, 0, stream, &7u32.to_be_bytes());
                            let _ = tcp.write_all(&reset).await;
                            refused_one = true;
                            continue;
                        }
                    }
                }
                if flags & END_STREAM == 0 {
                    continue;
                }
                let bytes = bodies
                    .iter()
                    .find(|(id, _)| *id == stream)
                    .map_or(0, |b| b.1);
                if !refuse || refused == Refused::Streaming {
                    answer(number, stream, bytes)
                } else {
                    complete.push((stream, bytes));
                    if complete.len() < 2 {
                        continue;
                    }
                    let ((first, bytes), (second, _)) = (complete[0], complete[1]);
                    match refusal {
                        Refusal::GoAway => {
                            // The first is the last processed: the second is refused.
                            return go_away(&mut tcp, first, &answer(number, first, bytes)).await;
                        }
                        Refusal::Reset => {
                            // REFUSED_STREAM is error code 7.
                            let mut out = frame(RST_STREAM, 0, second, &7u32.to_be_bytes());
                            out.extend(answer(number, first, bytes));
                            refused_one = true;
                            out
                        }
                    }
                }
            }
            _ => continue,
        };
        if tcp.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// GETs with `te: trailers` and checks the upstream's trailers arrive intact.
async fn expect_trailers(proxy: &Proxy, proto: Proto, upstream: &str) {
    let req = request("GET", "t.example.com", "/t")
        .header("te", "trailers")
        .body(empty())
        .expect("request");
    let resp = within(REQUEST_LIMIT, "trailers", proxy.send(proto, req))
        .await
        .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
    assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
    assert_eq!(resp.text(), "trailers follow", "{proto:?}");
    let trailers = resp.trailers.unwrap_or_else(|| {
        panic!("{proto:?} client, {upstream}: the upstream's trailers were dropped")
    });
    assert_eq!(
        trailers.get("x-checksum").and_then(|v| v.to_str().ok()),
        Some("c0ffee"),
        "{proto:?}"
    );
    assert_eq!(
        trailers
            .get("x-upstream-trailer")
            .and_then(|v| v.to_str().ok()),
        Some(upstream),
        "{proto:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_http2_end_to_end() {
    let up = Upstream::trailers("t2").await;
    let proxy = Proxy::start(&single_route(&up, "http2")).await;
    expect_trailers(&proxy, Proto::H2, "t2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_http1_when_the_client_accepts_them() {
    // The client says `te: trailers`; the upstream announces them with `trailer:`.
    let up = Upstream::trailers("t1").await;
    let proxy = Proxy::start(&single_route(&up, "http1")).await;
    expect_trailers(&proxy, Proto::H1, "t1").await;
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

async fn grpc_proxy() -> (Upstream, Proxy) {
    let up = Upstream::grpc("grpc").await;
    let proxy = Proxy::start(&single_route(&up, "http2")).await;
    (up, proxy)
}

/// Reads frames until one whole gRPC message is buffered, or trailers / end arrive.
async fn next_message(body: &mut Incoming, buf: &mut BytesMut) -> Result<Bytes, Option<HeaderMap>> {
    loop {
        if let Some(msg) = grpc_take(buf) {
            return Ok(msg);
        }
        match body.frame().await {
            None => return Err(None),
            Some(Err(e)) => panic!("gRPC response stream failed: {e}"),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => return Err(frame.into_trailers().ok()),
            },
        }
    }
}

fn grpc_status(trailers: &HeaderMap) -> (Option<String>, Option<String>) {
    let get = |n: &str| {
        trailers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (get("grpc-status"), get("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_call_keeps_trailers() {
    let (up, proxy) = grpc_proxy().await;
    let mut conn = proxy.connect(Proto::H2).await;
    let (tx, body) = channel_body(2);
    tx.send(Ok(Frame::data(grpc_frame(b"ping"))))
        .await
        .expect("queue message");
    drop(tx);
    let req = request("POST", "grpc.example.com", "/strait.test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let resp = conn
        .fetch(req)
        .await
        .unwrap_or_else(|e| panic!("unary call: {e}"));
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/grpc")
    );
    let mut buf = BytesMut::from(&resp.body[..]);
    assert_eq!(
        grpc_take(&mut buf).as_deref(),
        Some(&b"ping"[..]),
        "unary reply"
    );
    let trailers = resp.trailers.expect("grpc-status trailers were dropped");
    assert_eq!(
        grpc_status(&trailers).0.as_deref(),
        Some("0"),
        "grpc-status"
    );
    let seen = &up.seen()[0];
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "gRPC must reach the upstream over HTTP/2"
    );
    assert_eq!(
        seen.header("te").as_deref(),
        Some("trailers"),
        "te: trailers is forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bidi_streaming_flows_message_by_message() {
    let (_up, proxy) = grpc_proxy().await;
    let mut conn = proxy.connect(Proto::H2).await;
    let (tx, parts, mut body) = {
        // The first message goes with the request; the rest follow one reply at a time.
        let (tx, body) = channel_body(8);
        tx.send(Ok(Frame::data(grpc_frame(b"msg-0"))))
            .await
            .expect("queue");
        let req = request("POST", "grpc.example.com", "/strait.test.Echo/Bidi")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .expect("request");
        let resp = within(REQUEST_LIMIT, "bidi response head", conn.send(req))
            .await
            .unwrap_or_else(|e| panic!("bidi call: {e}"));
        let (parts, body) = resp.into_parts();
        (tx, parts, body)
    };
    assert_eq!(parts.status, StatusCode::OK);
    let mut buf = BytesMut::new();
    for i in 0..5 {
        if i > 0 {
            let msg = format!("msg-{i}");
            tx.send(Ok(Frame::data(grpc_frame(msg.as_bytes()))))
                .await
                .expect("send message");
        }
        // Each reply must arrive while the request stream is still open.
        let reply = within(
            Duration::from_secs(3),
            &format!("reply to msg-{i} while the request stream is open (is the proxy buffering?)"),
            next_message(&mut body, &mut buf),
        )
        .await
        .unwrap_or_else(|t| panic!("stream ended before reply {i}: trailers {t:?}"));
        assert_eq!(reply, format!("msg-{i}").as_bytes(), "reply {i}");
    }
    drop(tx);
    let end = within(
        Duration::from_secs(5),
        "trailers after half-close",
        next_message(&mut body, &mut buf),
    )
    .await;
    let trailers = match end {
        Err(Some(t)) => t,
        Err(None) => panic!("the stream ended without trailers (grpc-status lost)"),
        Ok(extra) => panic!("unexpected extra message {extra:?}"),
    };
    assert_eq!(
        grpc_status(&trailers).0.as_deref(),
        Some("0"),
        "grpc-status"
    );
    assert_eq!(
        trailers.get("x-echo-count").and_then(|v| v.to_str().ok()),
        Some("5"),
        "the upstream saw every message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_status_and_message_reach_the_client() {
    let (_up, proxy) = grpc_proxy().await;
    let mut conn = proxy.connect(Proto::H2).await;
    let req = request("POST", "grpc.example.com", "/strait.test.Echo/Missing")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(grpc_frame(b"where")))
        .expect("request");
    let resp = conn
        .fetch(req)
        .await
        .unwrap_or_else(|e| panic!("failing call: {e}"));
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "gRPC errors travel in trailers, not the status"
    );
    assert!(
        resp.body.is_empty(),
        "no messages expected, got {} bytes",
        resp.body.len()
    );
    let trailers = resp.trailers.expect("no trailers: grpc-status 5 was lost");
    let (status, message) = grpc_status(&trailers);
    assert_eq!(status.as_deref(), Some("5"), "grpc-status");
    assert_eq!(message.as_deref(), Some("thing not found"), "grpc-message");
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

async fn read_http_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read response head");
        assert!(
            n > 0,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
        assert!(head.len() < 16 * 1024, "response head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_then_frames_flow_both_ways() {
    let ws = Upstream::websocket("ws").await;
    let proxy = Proxy::start(&single_route(&ws, "http1")).await;
    let mut s = within(REQUEST_LIMIT, "connect", TcpStream::connect(proxy.listen))
        .await
        .expect("connect to the proxy");
    let handshake = ws_upgrade_head("ws.example.com");
    s.write_all(handshake.as_bytes())
        .await
        .expect("send handshake");
    let head = within(REQUEST_LIMIT, "101 response head", read_http_head(&mut s)).await;
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.starts_with("http/1.1 101"),
        "expected 101 Switching Protocols, got:\n{head}"
    );
    assert!(
        lower.contains("upgrade: websocket"),
        "no `upgrade: websocket` in:\n{head}"
    );
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            WS_ACCEPT.to_ascii_lowercase()
        )),
        "accept key not passed through:\n{head}"
    );

    let seen = &ws.seen()[0];
    assert_eq!(
        seen.header("upgrade").as_deref(),
        Some("websocket"),
        "upgrade forwarded"
    );
    assert!(
        seen.header("connection")
            .is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
        "connection: upgrade forwarded, got {:?}",
        seen.header("connection")
    );

    // The server speaks first: bytes flow upstream -> client without a client write.
    let (op, greeting) = within(REQUEST_LIMIT, "server greeting", ws_read_frame(&mut s))
        .await
        .expect("read greeting");
    assert_eq!((op, greeting.as_slice()), (1, &b"hello from ws"[..]));

    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let messages: [(u8, Vec<u8>); 3] = [(1, b"hi".to_vec()), (1, vec![b'z'; 300]), (2, big)];
    for (i, (opcode, payload)) in messages.iter().enumerate() {
        s.write_all(&ws_frame(*opcode, payload, Some([1, 2, 3, 4])))
            .await
            .expect("send frame");
        let (op, echoed) = within(REQUEST_LIMIT, "echoed frame", ws_read_frame(&mut s))
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(op, *opcode, "message {i} opcode");
        assert!(
            echoed == *payload,
            "message {i}: payload changed ({} bytes back)",
            echoed.len()
        );
    }
    s.write_all(&ws_frame(8, &[0x03, 0xe8], Some([9, 9, 9, 9])))
        .await
        .expect("send close");
    let (op, _) = within(REQUEST_LIMIT, "close frame", ws_read_frame(&mut s))
        .await
        .expect("read close");
    assert_eq!(op, 8, "close frame echoed");
    // After the upstream closes, the proxy closes the client side too.
    let mut rest = Vec::new();
    let n = within(
        Duration::from_secs(5),
        "EOF after close",
        s.read_to_end(&mut rest),
    )
    .await
    .unwrap_or(0);
    assert_eq!(n, 0, "bytes after the close frame");
}

// ---------------------------------------------------------------------------------------------
// Large bodies
// ---------------------------------------------------------------------------------------------

const BIG: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&single_route(&up, "http1")).await;
    let before = proxy.peak_rss_kib();
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = proxy.connect(proto).await;

        let req = request("POST", "big.example.com", "/upload")
            .body(repeat_body(BIG))
            .expect("request");
        let resp = within(Duration::from_secs(60), "64 MiB upload", async {
            let r = conn.send(req).await?;
            Resp::read(r).await
        })
        .await
        .unwrap_or_else(|e| panic!("{proto:?} 64 MiB upload: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "{proto:?} upload");
        assert_eq!(
            resp.echo().body_len,
            BIG,
            "{proto:?}: upstream received the whole upload"
        );

        let req = request("GET", "big.example.com", "/download")
            .header("x-echo-response-bytes", BIG.to_string())
            .body(empty())
            .expect("request");
        let got = within(Duration::from_secs(60), "64 MiB download", async {
            let r = conn.send(req).await?;
            assert_eq!(r.status(), StatusCode::OK, "{proto:?} download");
            drain_body(r.into_body()).await
        })
        .await
        .unwrap_or_else(|e| panic!("{proto:?} 64 MiB download: {e}"));
        assert_eq!(got, BIG, "{proto:?}: client received the whole download");
    }
    let peak = proxy.peak_rss_kib();
    assert!(
        peak < 40 * 1024,
        "proxy peak RSS {} KiB after 4 x 64 MiB transfers (was {before} KiB at start): \
         bodies are being buffered",
        peak
    );
}

/// An HTTP/2 upstream that streams every answer but `/next` in 1 KiB pieces, 200 µs apart, for
/// a second, as a server-streaming gRPC call does; `/next` gets its connection's number.
async fn trickling_upstream(tcp: TcpStream, number: usize) {
    static PIECE: [u8; 1024] = [b'x'; 1024];
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
            continue;
        };
        if request.uri().path() == "/next" {
            let _ = body.send_data(Bytes::from(format!("connection {number}\n")), true);
            continue;
        }
        tokio::spawn(async move {
            for _ in 0..5000 {
                if body.send_data(Bytes::from_static(&PIECE), false).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let _ = body.send_data(Bytes::new(), true);
        });
    }
}

/// Clients that leave in the middle of streamed answers, many, all on one HTTP/2 upstream
/// connection: the proxy resets each upstream stream (`CANCEL`), and the `DATA` the upstream
/// had already sent comes after the reset. h2 counts each such frame, once it has forgotten
/// the stream, as the peer's error, and closes a connection at 1,024 of them in its life
/// (`GOAWAY` `ENHANCE_YOUR_CALM`), failing its other streams: a defence for servers against
/// clients that make them reset streams, which upstream connections do not count. The
/// connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_leaving_mid_answer_do_not_close_the_http2_upstream_connection() {
    /// Clients, each on a connection of its own (a client's h2 counts the proxy's late `DATA`
    /// for the streams it reset the same way, and would close its own connection first), and
    /// the answers each leaves.
    const CLIENTS: usize = 16;
    const EACH: usize = 100;
    let (proxy, opened) = proxy_to_counted_http2_upstream(trickling_upstream).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(proxy.connect(Proto::H2).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                for _ in 0..EACH {
                    let answer = conn
                        .send(simple("GET", "a", "/stream"))
                        .await
                        .expect("an answer's head");
                    assert_eq!(answer.status(), StatusCode::OK);
                    // Its first piece, then the client leaves (its stream is reset).
                    let mut body = answer.into_body();
                    let _ = body.frame().await;
                }
            })
        })
        .collect();
    for task in tasks {
        within(Duration::from_secs(60), "the answers left", task)
            .await
            .expect("task");
    }
    answered_on(&proxy, "connection 1\n", 1).await;
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the upstream connection was closed and another opened"
    );
}
