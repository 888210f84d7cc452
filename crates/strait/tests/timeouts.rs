//! Upstreams that fail: refused, unreachable, slow, resetting, closing mid-body. The client
//! always gets a prompt, labelled answer (or a visible error), never a hang.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

fn route_to(cluster_yaml: &str, route_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: target }}]
{route_extra}
clusters:
{cluster_yaml}"#
    )
}

fn cluster(addr: impl std::fmt::Display, extra: &str) -> String {
    format!("  - name: target\n{extra}    endpoints: [{{ address: \"{addr}\" }}]\n")
}

/// A proxy whose route has an `idle_timeout` of 1 s, to a cluster (`cluster_extra` added) that
/// ejects its endpoint at its first gateway error: a request that blames the endpoint shows.
async fn ejecting_at_one_failure(up: std::net::SocketAddr, cluster_extra: &str) -> Proxy {
    ejecting_at_one_failure_timed(up, cluster_extra, "        idle_timeout: 1s\n").await
}

/// [`ejecting_at_one_failure`] with the route's timeouts given (`timing`, route fields).
async fn ejecting_at_one_failure_timed(
    up: std::net::SocketAddr,
    cluster_extra: &str,
    timing: &str,
) -> Proxy {
    let outlier =
        "    outlier_detection: { consecutive_gateway_errors: 1, max_ejection_percent: 100 }\n";
    Proxy::start(&route_to(
        &cluster(up, &format!("{cluster_extra}{outlier}")),
        timing,
    ))
    .await
}

/// Sends an HTTP/1 request's head and 10 of the 1,000 bytes of body it announces; the answer.
async fn stalled_upload(proxy: &Proxy) -> String {
    use tokio::io::AsyncWriteExt;
    let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    h1.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    answer_then_close(&mut h1).await
}

/// An HTTP/2 connection to the proxy, driven in a task of its own.
async fn h2_to(proxy: &Proxy) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends an HTTP/2 request's head and 10 bytes of body, then nothing; the answer.
async fn stalled_h2_upload(proxy: &Proxy) -> http::Response<h2::RecvStream> {
    let send = h2_to(proxy).await;
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/up", proxy.listen))
        .body(())
        .expect("request");
    let (answer, mut body) = send.send_request(req, false).expect("send");
    body.send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .expect("data");
    let answer = within(Duration::from_secs(10), "HTTP/2: an answer", answer)
        .await
        .expect("answer");
    // The stream stays open (the body unfinished) until the answer came.
    drop(body);
    answer
}

/// What the proxy writes on an HTTP/1 connection until it closes it, as text.
async fn answer_then_close(h1: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    within(
        Duration::from_secs(10),
        "an answer, then the close",
        h1.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends one GET over each protocol and checks the proxy's error answer.
async fn expect_error(proxy: &Proxy, status: u16, code: &str, max: Duration) {
    for proto in [Proto::H1, Proto::H2] {
        let started = Instant::now();
        let resp = within(
            Duration::from_secs(10),
            &format!("{proto:?}: waiting for {status} {code}"),
            proxy.send(proto, simple("GET", "fail.example.com", "/x")),
        )
        .await
        .unwrap_or_else(|e| panic!("{proto:?}: expected {status} {code}, got transport error {e}"));
        let took = started.elapsed();
        assert_eq!(
            resp.status.as_u16(),
            status,
            "{proto:?}: status (x-strait-error {:?}, body {:?})",
            resp.header("x-strait-error"),
            resp.text()
        );
        assert_eq!(
            resp.header("x-strait-error").as_deref(),
            Some(code),
            "{proto:?}: x-strait-error"
        );
        assert!(
            !resp.body.is_empty() && resp.body.len() < 1024,
            "{proto:?}: expected a short text body, got {:?}",
            resp.text()
        );
        assert!(
            took < max,
            "{proto:?}: {status} {code} took {took:?}, expected under {max:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_gives_503_connect_failed() {
    let nobody = free_addr();
    let proxy = Proxy::start(&route_to(&cluster(nobody, ""), "")).await;
    expect_error(&proxy, 503, "connect_failed", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_connect_gives_503_connect_timeout_after_connect_timeout() {
    let hole = Blackhole::new().await;
    let proxy = Proxy::start(&route_to(
        &cluster(hole.addr, "    connect_timeout: 300ms\n"),
        "",
    ))
    .await;
    let started = Instant::now();
    expect_error(&proxy, 503, "connect_timeout", Duration::from_millis(2_500)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "two connect timeouts of 300 ms finished in {:?}: the timeout is not what was configured",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_beyond_route_timeout_gives_504_request_timeout() {
    let slow = Upstream::slow("slow", Duration::from_secs(3)).await;
    let proxy = Proxy::start(&route_to(
        &cluster(slow.addr, ""),
        "        timeout: 300ms\n",
    ))
    .await;
    let started = Instant::now();
    expect_error(&proxy, 504, "request_timeout", Duration::from_millis(1_500)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "two 300 ms timeouts finished in {:?}",
        started.elapsed()
    );
    assert_eq!(slow.hits(), 2, "the request did reach the slow upstream");
}

/// Sends `path` on `conn`: answered with `status` within `least..most` milliseconds.
async fn timed(conn: &mut Conn, proto: Proto, path: &str, status: u16, least: u64, most: u64) {
    let started = Instant::now();
    let resp = within(
        Duration::from_secs(10),
        path,
        conn.fetch(simple("GET", "t.example.com", path)),
    )
    .await
    .unwrap_or_else(|e| panic!("{proto:?} {path}: {e}"));
    let took = started.elapsed();
    assert_eq!(resp.status.as_u16(), status, "{proto:?} {path}");
    assert!(
        took >= Duration::from_millis(least) && took < Duration::from_millis(most),
        "{proto:?} {path}: answered in {took:?}, expected {least}..{most} ms"
    );
}

/// A proxy with routes of three timeouts: `/fast` (2 s) to an echo upstream, `/slow-long`
/// (900 ms), `/slow` and `/slow-retried` (300 ms, with a retry policy) to one that answers
/// after 5 s.
async fn fast_and_slow() -> (Upstream, Upstream, Proxy) {
    let fast = Upstream::echo("fast").await;
    let slow = Upstream::slow("slow", Duration::from_secs(5)).await;
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /fast }} }}
        backends: [{{ cluster: fast }}]
        timeout: 2s
      - match: {{ path: {{ prefix: /slow-retried }} }}
        backends: [{{ cluster: slow }}]
        timeout: 300ms
        retry: {{ backoff: {{ base: 1ms, max: 5ms }} }}
      - match: {{ path: {{ prefix: /slow-long }} }}
        backends: [{{ cluster: slow }}]
        timeout: 900ms
      - match: {{ path: {{ prefix: /slow }} }}
        backends: [{{ cluster: slow }}]
        timeout: 300ms
clusters:
  - name: fast
    endpoints: [{{ address: "{}" }}]
  - name: slow
    endpoints: [{{ address: "{}" }}]
"#,
        fast.addr, slow.addr
    ))
    .await;
    (fast, slow, proxy)
}

/// One client connection keeps one timer for its requests' upstream timeouts, moved to each
/// new deadline: fast requests leave it pending, a wait longer than the timeout lets it fire
/// idle, a route with a shorter timeout moves it earlier. Each slow request still gets its own
/// route's timeout, neither early nor late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_kept_timer_times_each_request_by_its_own_route() {
    let (_fast, _slow, proxy) = fast_and_slow().await;
    for proto in [Proto::H1, Proto::H2] {
        let mut conn = proxy.connect(proto).await;
        // Fast requests: the kept timer is pending, moved later each time.
        for _ in 0..3 {
            timed(&mut conn, proto, "/fast", 200, 0, 1_000).await;
        }
        // A shorter timeout than the timer is set to (2 s): it must fire at 300 ms.
        timed(&mut conn, proto, "/slow", 504, 280, 1_500).await;
        timed(&mut conn, proto, "/fast", 200, 0, 1_000).await;
        // Idle past the last deadline: the kept timer fires with nothing waiting on it.
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        timed(&mut conn, proto, "/fast", 200, 0, 1_000).await;
        // A longer timeout than the last request's, on the same timer.
        timed(&mut conn, proto, "/slow-long", 504, 880, 2_500).await;
        // A route with a retry policy times out the same way.
        timed(&mut conn, proto, "/slow-retried", 504, 280, 1_500).await;
    }
}

/// Concurrent HTTP/2 streams on one connection, more than it keeps timers for, twice over (the
/// second wave finds kept timers last used by finished streams): every slow stream gets its 504
/// at its route's timeout, every fast one its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_each_get_their_own_timeout() {
    let (_fast, _slow, proxy) = fast_and_slow().await;
    let conn = proxy.connect(Proto::H2).await;
    for _wave in 0..2 {
        let streams = (0..40).map(|i| {
            let mut conn = conn.clone_h2();
            let (path, status, least, most) = if i % 2 == 0 {
                ("/fast", 200, 0, 1_000)
            } else {
                ("/slow", 504, 280, 1_500)
            };
            tokio::spawn(async move {
                timed(&mut conn, Proto::H2, path, status, least, most).await;
            })
        });
        for stream in streams.collect::<Vec<_>>() {
            stream.await.expect("a stream's checks");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_zero_disables_it() {
    let slow = Upstream::slow("slow", Duration::from_millis(1_200)).await;
    let proxy = Proxy::start(&route_to(&cluster(slow.addr, ""), "        timeout: 0s\n")).await;
    let resp = proxy.get("slow.example.com", "/").await;
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "{:?}",
        resp.header("x-strait-error")
    );
    assert_eq!(resp.upstream(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_before_response_gives_502_upstream_reset() {
    let reset = Upstream::reset("reset").await;
    let proxy = Proxy::start(&route_to(&cluster(reset.addr, ""), "")).await;
    expect_error(&proxy, 502, "upstream_reset", Duration::from_secs(2)).await;
    assert!(
        reset.hits() >= 2,
        "the requests reached the resetting upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_gives_502_upstream_reset() {
    let closer = Upstream::close_without_answer("closer").await;
    let proxy = Proxy::start(&route_to(&cluster(closer.addr, ""), "")).await;
    expect_error(&proxy, 502, "upstream_reset", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_body_is_visible_to_the_client_and_never_hangs() {
    // Announces 1,000,000 bytes, sends 10,000, closes.
    let cut = Upstream::close_mid_body("cut", 1_000_000, 10_000).await;
    let healthy = Upstream::echo("healthy").await;
    let log = std::env::temp_dir().join(format!("strait-cut-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    access_log: {{ path: "{}" }}
    routes:
      - match: {{ path: {{ prefix: /cut }} }}
        backends: [{{ cluster: cut }}]
      - backends: [{{ cluster: healthy }}]
{}"#,
        log.display(),
        clusters_for(&[&cut, &healthy])
    );
    let proxy = Proxy::start(&config).await;
    for proto in [Proto::H1, Proto::H2] {
        let outcome = within(
            Duration::from_secs(5),
            "truncated response must end, not hang",
            async {
                let mut conn = Conn::open(proxy.listen, proto).await?;
                let resp = conn.send(simple("GET", "cut.example.com", "/cut")).await?;
                let status = resp.status();
                let code = resp.headers().get("x-strait-error").cloned();
                let body = drain_body(resp.into_body()).await;
                Ok::<_, BoxError>((status, code, body))
            },
        )
        .await;
        match outcome {
            // The connection or stream failed: visible.
            Err(_) => {}
            // The head had not been forwarded yet: a labelled proxy error is visible too.
            Ok((status, Some(code), _)) if status == StatusCode::BAD_GATEWAY => {
                assert_eq!(code, "upstream_reset", "{proto:?}");
            }
            // Head forwarded: the body must end in an error, never a clean short end.
            Ok((status, _, Err(_))) => assert_eq!(status, StatusCode::OK, "{proto:?}"),
            Ok((status, _, Ok(n))) => panic!(
                "{proto:?}: status {status}, body ended cleanly after {n} of 1,000,000 \
                 announced bytes: the client cannot tell the response was truncated"
            ),
        }
    }
    // The proxy keeps serving other requests.
    assert_eq!(proxy.get("ok.example.com", "/").await.upstream(), "healthy");
    // An answer cut after its head is logged as the upstream's doing, not the client's.
    let logged = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let cut: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"/cut\"") && l.contains("\"status\":200"))
            .collect();
        !cut.is_empty()
            && cut
                .iter()
                .all(|l| l.contains("\"response_flags\":\"upstream_reset\""))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// Reads `stream` with `pause` before each read of at most `each` bytes, until the proxy closes
/// or `total` bytes came; the bytes read (the head included).
async fn read_slowly(
    stream: &mut tokio::net::TcpStream,
    each: usize,
    pause: Duration,
    total: usize,
) -> usize {
    use tokio::io::AsyncReadExt;
    let mut got = 0;
    let mut buf = vec![0u8; each];
    while got < total {
        tokio::time::sleep(pause).await;
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("no bytes and no close for 10 s"),
        }
    }
    got
}

/// A client that stops reading an answer is cut off after the route's `idle_timeout`, as
/// nginx's `send_timeout` and Envoy's stream idle timeout do; one that reads slowly but
/// steadily is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::echo("app").await;
    let proxy = Proxy::start(&route_to(
        &cluster(up.addr, ""),
        "        idle_timeout: 2s\n",
    ))
    .await;
    let ask = |bytes: usize| {
        format!("GET /big HTTP/1.1\r\nHost: a\r\nx-echo-response-bytes: {bytes}\r\n\r\n")
    };

    // Stops reading: far more than the sockets hold between them, so the proxy's writes stall.
    let big = 256 << 20;
    let mut stalled = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    stalled.write_all(ask(big).as_bytes()).await.expect("write");
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = read_slowly(&mut stalled, 1 << 20, Duration::ZERO, big).await;
    assert!(got < big, "the whole answer came ({got} bytes)");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Reads steadily, the whole taking several timeouts: the stall timer starts again each
    // time the client takes bytes. (Between the proxy's socket and the client's, the kernel
    // holds megabytes: the pace must free room well within the timeout.)
    let steady = 24 << 20;
    let mut slow = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    slow.write_all(ask(steady).as_bytes()).await.expect("write");
    let started = Instant::now();
    let got = read_slowly(&mut slow, 1 << 20, Duration::from_millis(100), steady).await;
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "too fast to show anything"
    );
    assert!(
        got >= steady,
        "a steady reader was cut off after {got} bytes"
    );
}

/// HTTP/2: a client that keeps a stream's window shut takes none of the answer, and the stream,
/// waiting for room, reads no more of it upstream. The stream is reset after the route's
/// `idle_timeout` and its answer logged `downstream_stalled`, as Envoy's stream idle timeout
/// does; the connection's other streams go on, and one that takes its answer slowly is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_keeps_its_window_shut_is_cut_after_the_idle_timeout() {
    let up = Upstream::echo("app").await;
    let log = std::env::temp_dir().join(format!("strait-shut-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    access_log: {{ path: "{}" }}
    routes:
      - backends: [{{ cluster: target }}]
        idle_timeout: 1s
clusters:
{}"#,
        log.display(),
        cluster(up.addr, "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    // A stream's window of 64 KiB; the connection's is wide, so a shut stream leaves room for
    // the others.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(64 << 10)
        .initial_connection_window_size(64 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.expect("ready");
    let mut ask = |path: &str, bytes: usize| {
        let req = http::Request::builder()
            .uri(format!("http://{}{path}", proxy.listen))
            .header("x-echo-response-bytes", bytes.to_string())
            .body(())
            .expect("request");
        send.send_request(req, true).expect("send").0
    };

    // Takes what the window allows and gives none of it back.
    let shut = within(
        Duration::from_secs(5),
        "answer head",
        ask("/shut", 64 << 20),
    )
    .await
    .expect("answer");
    assert_eq!(shut.status(), StatusCode::OK);
    let started = Instant::now();
    let mut body = shut.into_body();
    let ended = within(
        Duration::from_secs(15),
        "a stream whose window stays shut is reset",
        async {
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                got += chunk?.len();
            }
            Ok::<_, h2::Error>(got)
        },
    )
    .await;
    let error = ended.expect_err("the stream must be reset, not end");
    assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error}");
    // The idle time counts from when the answer's chunk began waiting on the shut window,
    // which is as the head goes out, a moment before the client has read it.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Takes its answer a chunk at a time, the whole taking several timeouts, on the same
    // connection: the timer starts again each time the client takes a chunk.
    let steady = 3 << 20;
    let answer = within(
        Duration::from_secs(5),
        "answer head",
        ask("/steady", steady),
    )
    .await
    .expect("answer");
    let started = Instant::now();
    let mut body = answer.into_body();
    let mut got = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("a steady reader is not cut");
        got += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(got, steady);
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "too fast to show anything"
    );

    let logged = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| {
            l.contains("\"/shut\"") && l.contains("\"response_flags\":\"downstream_stalled\"")
        }) && text
            .lines()
            .any(|l| l.contains("\"/steady\"") && l.contains("\"response_flags\":\"\""))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged, "{text}");
    let _ = std::fs::remove_file(&log);
}

/// A client that sends a request's head and then too little of its body is answered 408 after
/// the route's `idle_timeout` (nginx's `client_body_timeout`, Envoy's stream idle timeout),
/// over HTTP/1 and HTTP/2: before, it held its upstream connection and circuit-breaker slot
/// for as long as it liked. The endpoint is not blamed: the next request goes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_coming_is_answered_408_after_the_idle_timeout() {
    let up = Upstream::echo("app").await;
    let proxy = ejecting_at_one_failure(up.addr, "").await;

    let started = Instant::now();
    let answer = stalled_upload(&proxy).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_body_timeout"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // An HTTP/1 body with a length is waited for before an upstream is involved.
    assert_eq!(up.hits(), 0, "the held-back request reached the upstream");

    let started = Instant::now();
    let answer = stalled_h2_upload(&proxy).await;
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(answer.headers()["x-strait-error"], "request_body_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // One failure would have ejected the endpoint had it been blamed.
    assert_eq!(proxy.get("a", "/").await.upstream(), "app");
}

/// An HTTP/1 body with a length is waited for before an upstream is involved: all of a short
/// one, the first 8 KiB of a long one. A client that holds it back reaches no upstream; one that
/// sends it slowly but steadily is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_http1_body_reaches_no_upstream_and_a_slow_one_is_served() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::echo("app").await;
    let proxy = ejecting_at_one_failure(up.addr, "").await;

    // 9,000 bytes announced, 8,000 sent: short of the 8 KiB the proxy waits for.
    let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    let head = "POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 9000\r\n\r\n";
    h1.write_all(head.as_bytes()).await.expect("write");
    h1.write_all(&[b'x'; 8000]).await.expect("write");
    let answer = answer_then_close(&mut h1).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(up.hits(), 0, "the held-back request reached the upstream");

    // 3,000 bytes in pieces of 500, 400 ms apart: each pause under the 1 s idle timeout.
    let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    let head = "POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 3000\r\nconnection: close\r\n\r\n";
    h1.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(up.hits(), 0, "sent upstream before the body was in");
        h1.write_all(&[b'y'; 500]).await.expect("write");
    }
    let answer = answer_then_close(&mut h1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.hits(), 1);
    assert_eq!(up.seen()[0].body_len, 3000);
}

/// An HTTP/2 body with a length is gathered before an upstream is involved, as HTTP/1's is
/// waited for: a client that opens a stream and holds its body back reaches no upstream; one
/// that sends it slowly but steadily is served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_http2_body_reaches_no_upstream_and_a_slow_one_is_served() {
    // To an HTTP/1 upstream, then to an HTTP/2 one.
    for cluster_extra in ["", "    protocol: http2\n"] {
        held_back_http2_body(cluster_extra).await;
    }
}

async fn held_back_http2_body(cluster_extra: &str) {
    let up = Upstream::echo("app").await;
    let proxy = ejecting_at_one_failure(up.addr, cluster_extra).await;
    let send = h2_to(&proxy).await;
    let post = |len: usize| {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/up", proxy.listen))
            .header("content-length", len)
            .body(())
            .expect("request")
    };

    // 9,000 bytes announced, 8,000 sent: short of the 8 KiB the proxy waits for.
    let mut send = send.ready().await.expect("ready");
    let (answer, mut body) = send.send_request(post(9000), false).expect("send");
    body.send_data(vec![b'x'; 8000].into(), false)
        .expect("data");
    let started = Instant::now();
    let answer = within(Duration::from_secs(10), "HTTP/2: an answer", answer)
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(answer.headers()["x-strait-error"], "request_body_timeout");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(up.hits(), 0, "the held-back request reached the upstream");
    drop(body);

    // 3,000 bytes in pieces of 500, 400 ms apart: each pause under the 1 s idle timeout.
    let mut send = send.ready().await.expect("ready");
    let (answer, mut body) = send.send_request(post(3000), false).expect("send");
    for piece in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(up.hits(), 0, "sent upstream before the body was in");
        body.send_data(vec![b'y'; 500].into(), piece == 5)
            .expect("data");
    }
    let answer = within(Duration::from_secs(10), "HTTP/2: an answer", answer)
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(up.hits(), 1);
    assert_eq!(up.seen()[0].body_len, 3000);

    // A long body: its first 8 KiB are gathered, the rest streams after them.
    let mut send = send.ready().await.expect("ready");
    let whole: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (answer, mut body) = send.send_request(post(whole.len()), false).expect("send");
    body.send_data(whole.clone().into(), true).expect("data");
    let answer = within(Duration::from_secs(10), "HTTP/2: an answer", answer)
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(up.hits(), 2);
    assert_eq!(up.seen()[1].body_len, whole.len() as u64);
}

/// Under an HTTP/2 upstream too, a request body that stalls or breaks off is the client's doing:
/// the proxy resets the upstream stream when the body fails, and that reset is not the endpoint's.
/// So with every route timeout off as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_fails_is_not_blamed_on_an_http2_upstream() {
    let up = Upstream::echo("app").await;
    let proxy = ejecting_at_one_failure(up.addr, "    protocol: http2\n").await;

    // Stalled (over HTTP/2, whose request bodies without a length are streamed as they come).
    let answer = stalled_h2_upload(&proxy).await;
    assert_eq!(answer.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(answer.headers()["x-strait-error"], "request_body_timeout");
    broken_off_not_blamed(&proxy, &up).await;

    let untimed = "        idle_timeout: 0s\n        timeout: 0s\n";
    let untimed = ejecting_at_one_failure_timed(up.addr, "    protocol: http2\n", untimed).await;
    broken_off_not_blamed(&untimed, &up).await;
}

/// A request whose answer is given up on stops sending its body to an HTTP/2 upstream: the
/// upstream stream is reset (`CANCEL`), not left waiting on the upstream's window for as long
/// as the client keeps its upload open. Here the upstream takes one byte and no more, and the
/// route's timeout (counted from the last chunk the upstream took) gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_on_stops_sending_its_body_to_an_http2_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (told, reset) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        // A stream window of one byte, never given back.
        let mut conn = h2::server::Builder::new()
            .initial_window_size(1)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("handshake");
        let (_request, mut respond) = conn.accept().await.expect("a stream").expect("stream");
        tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
        let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        let _ = told.send(reason.ok());
    });
    let proxy = Proxy::start(&route_to(
        &cluster(addr, "    protocol: http2\n"),
        "        timeout: 1s\n",
    ))
    .await;
    let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    // Two chunks apart (read together, they would go upstream as one, all of it handed to h2,
    // and the upload would wait on the client), and the upload kept open.
    let head = "POST /up HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("64\r\n{}\r\n", "x".repeat(100));
    h1.write_all(format!("{head}{chunk}").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    h1.write_all(chunk.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    within(Duration::from_secs(10), "the answer's head", async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match h1.read(&mut buf).await {
                Ok(n @ 1..) => answer.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let reason = within(Duration::from_secs(5), "the upstream stream's reset", reset)
        .await
        .expect("the upstream's report");
    assert_eq!(reason, Some(h2::Reason::CANCEL));
}

/// A chunk that is not one, after the upstream got the head and a first chunk: 400, and the
/// endpoint neither counted as reset nor ejected.
async fn broken_off_not_blamed(proxy: &Proxy, up: &Upstream) {
    use tokio::io::AsyncWriteExt;
    let before = up.hits();
    let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    h1.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    assert!(
        eventually(Duration::from_secs(5), || async { up.hits() > before }).await,
        "the request never reached the upstream"
    );
    h1.write_all(b"zz\r\n").await.expect("write");
    let answer = answer_then_close(&mut h1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Reset by an HTTP/2 client past the part gathered before the upstream was involved.
    let before = up.hits();
    let mut send = h2_to(proxy).await.ready().await.expect("ready");
    let post = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/up", proxy.listen))
        .header("content-length", "100000")
        .body(())
        .expect("request");
    let (_answer, mut body) = send.send_request(post, false).expect("send");
    body.send_data(vec![b'x'; 20_000].into(), false)
        .expect("data");
    assert!(
        eventually(Duration::from_secs(5), || async { up.hits() > before }).await,
        "the request never reached the upstream"
    );
    body.send_reset(h2::Reason::CANCEL);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let resets = proxy.metric("strait_upstream_resets_total", &[("cluster", "target")]);
    assert_eq!(resets.await, Some(0.0), "counted as the upstream's resets");
    // One failure would have ejected the endpoint had it been blamed.
    assert_eq!(proxy.get("a", "/").await.upstream(), "app");
}

/// An upstream that takes a request's head, then none of its body and never answers, is timed
/// out by the route's `timeout`, counted from the last chunk it took: the timeout counts from
/// the end of the upload, and that end never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_an_upload_is_timed_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Accepts and holds its connections, reading nothing.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = deaf.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = deaf.accept().await {
            held.push(sock);
        }
    });
    let proxy = Proxy::start(&route_to(&cluster(addr, ""), "        timeout: 1s\n")).await;
    let size = 64 << 20;
    let mut client = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    client
        .write_all(
            format!("POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: {size}\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let started = Instant::now();
    let (mut reader, mut writer) = client.into_split();
    // Writes as long as the proxy takes bytes (until the sockets between fill up).
    tokio::spawn(async move {
        let piece = vec![b'x'; 1 << 16];
        for _ in 0..(size >> 16) {
            if writer.write_all(&piece).await.is_err() {
                break;
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = within(
        Duration::from_secs(10),
        "an answer",
        reader.read(&mut answer),
    )
    .await
    .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// The route timeout counts from the end of the request body, as Envoy's does: an upload that
/// takes longer than the timeout is no slow upstream. Once the body is in, the timeout holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_counts_from_the_end_of_the_upload() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::echo("app").await;
    let slow = Upstream::slow("slow", Duration::from_secs(4)).await;
    let proxy = Proxy::start(&format!(
        "listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /slow }} }}
        backends: [{{ cluster: slow }}]
        timeout: 1s
      - match: {{ path: {{ prefix: /retried }} }}
        backends: [{{ cluster: app }}]
        timeout: 1s
        retry: {{ attempts: 2, per_try_timeout: 1s, max_body_bytes: 4194304 }}
      - backends: [{{ cluster: app }}]
        timeout: 1s
clusters:
  - name: app
    endpoints: [{{ address: \"{}\" }}]
  - name: slow
    endpoints: [{{ address: \"{}\" }}]
",
        up.addr, slow.addr
    ))
    .await;

    // 30 pieces of 64 KiB, 100 ms apart: three seconds of upload against a 1 s timeout (and,
    // on a retried route, a 1 s per-try timeout).
    let (pieces, piece) = (30, 64 << 10);
    for path in ["/upload", "/retried"] {
        let mut client = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            pieces * piece
        );
        client.write_all(head.as_bytes()).await.expect("write");
        for _ in 0..pieces {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(&vec![b'x'; piece]).await.expect("write");
        }
        let answer = answer_then_close(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:.300}");
        assert!(
            answer.contains(&format!("\"body_len\":{}", pieces * piece)),
            "{path}: {answer:.300}"
        );
    }

    // Body in at once, then an upstream slower than the timeout: 504 about 1 s later.
    let started = Instant::now();
    let resp = proxy
        .send(
            Proto::H1,
            request("POST", "a", "/slow")
                .body(full("small"))
                .expect("req"),
        )
        .await
        .expect("request");
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

/// `max_request_body_bytes`: a body that declares more gets 413 before an upstream is involved
/// (a client waiting on `100 Continue` gets no `100`); one without a length is cut off where it
/// passes the limit, with 413, and the endpoint is not blamed; a route's own limit replaces the
/// listener's. Over HTTP/1 and HTTP/2, to an HTTP/1 and an HTTP/2 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_max_request_body_bytes_gets_413() {
    for cluster_extra in ["", "    protocol: http2\n"] {
        let up = Upstream::echo("app").await;
        let outlier =
            "    outlier_detection: { consecutive_gateway_errors: 1, max_ejection_percent: 100 }\n";
        let proxy = Proxy::start(&format!(
            r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    max_request_body_bytes: 1000
    routes:
      - match: {{ path: {{ prefix: /big }} }}
        backends: [{{ cluster: target }}]
        max_request_body_bytes: 5000
      - backends: [{{ cluster: target }}]
        idle_timeout: 1s
clusters:
{}"#,
            cluster(up.addr, &format!("{cluster_extra}{outlier}"))
        ))
        .await;
        body_limit_http1(&proxy, &up).await;
        body_limit_http2(&proxy, &up).await;
        // Not blamed: the endpoint still serves.
        let resp = proxy.send(Proto::H1, simple("GET", "a", "/after")).await;
        assert_eq!(resp.expect("GET").status, StatusCode::OK, "{cluster_extra}");
    }
}

async fn body_limit_http1(proxy: &Proxy, up: &Upstream) {
    use tokio::io::AsyncWriteExt;
    let exchange = |request: Vec<u8>| async move {
        let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect");
        h1.write_all(&request).await.expect("write");
        answer_then_close(&mut h1).await
    };
    // A POST on a connection closed after it: its body as `content-length` bytes when given,
    // else as these chunks.
    let post = |path: &str, length: Option<usize>, chunks: &[usize]| {
        let mut request = format!("POST {path} HTTP/1.1\r\nHost: a\r\nconnection: close\r\n");
        match length {
            Some(n) => request.push_str(&format!("content-length: {n}\r\n\r\n")),
            None => request.push_str("transfer-encoding: chunked\r\n\r\n"),
        }
        let mut request = request.into_bytes();
        for &n in chunks {
            if length.is_none() {
                request.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            }
            request.extend(std::iter::repeat_n(b'b', n));
            if length.is_none() {
                request.extend_from_slice(b"\r\n");
            }
        }
        if length.is_none() {
            request.extend_from_slice(b"0\r\n\r\n");
        }
        request
    };
    let hits = up.hits();

    // 2,000 bytes announced behind `expect: 100-continue`: refused at once, no `100`.
    let head =
        "POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 2000\r\nexpect: 100-continue\r\n\r\n";
    let answer = exchange(head.as_bytes().to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_body_too_large"), "{answer}");
    assert!(answer.contains("2000 bytes"), "{answer}");
    assert_eq!(up.hits(), hits, "a refused body reached the upstream");

    // Chunked, 3 × 600 bytes: cut where it passes 1,000.
    let answer = exchange(post("/up", None, &[600, 600, 600])).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_body_too_large"), "{answer}");

    // At the limit, declared or chunked: served whole; and the route with its own, larger limit.
    // (Each on a path of its own: the cut request above may reach the upstream's records after
    // them, once the upstream sees its body end.)
    for (path, length, chunks, len) in [
        ("/up/declared", Some(1000), &[1000][..], 1000),
        ("/up/chunked", None, &[1000][..], 1000),
        ("/big", Some(4000), &[4000][..], 4000),
    ] {
        let answer = exchange(post(path, length, chunks)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{path} {length:?}: {answer}"
        );
        assert_eq!(body_len_of(up, path), len, "{path}");
    }
}

/// The body length the upstream read for the last request it had for `path`.
fn body_len_of(up: &Upstream, path: &str) -> u64 {
    let seen = up.seen();
    let last = seen
        .iter()
        .rev()
        .find(|s| s.uri.parse::<http::Uri>().is_ok_and(|u| u.path() == path));
    let uris = || seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>();
    last.unwrap_or_else(|| panic!("{path} did not reach the upstream: {:?}", uris()))
        .body_len
}

async fn body_limit_http2(proxy: &Proxy, up: &Upstream) {
    let send = h2_to(proxy).await;
    let post = |path: &str, len: Option<usize>| {
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", proxy.listen));
        if let Some(len) = len {
            req = req.header("content-length", len);
        }
        req.body(()).expect("request")
    };
    let answer = |answer: h2::client::ResponseFuture| async {
        within(Duration::from_secs(10), "HTTP/2: an answer", answer)
            .await
            .expect("answer")
    };
    let hits = up.hits();

    // 2,000 bytes announced: refused before any is sent.
    let mut send = send.ready().await.expect("ready");
    let (refused, _body) = send
        .send_request(post("/up", Some(2000)), false)
        .expect("send");
    let refused = answer(refused).await;
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        refused.headers()["x-strait-error"],
        "request_body_too_large"
    );
    assert_eq!(up.hits(), hits, "a refused body reached the upstream");

    // No length, 600 bytes then 600 more: cut where it passes 1,000.
    let mut send = send.ready().await.expect("ready");
    let (cut, mut body) = send.send_request(post("/up", None), false).expect("send");
    body.send_data(vec![b'c'; 600].into(), false).expect("data");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The stream may already be answered and reset when the second piece goes.
    let _ = body.send_data(vec![b'c'; 600].into(), true);
    let cut = answer(cut).await;
    assert_eq!(cut.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(cut.headers()["x-strait-error"], "request_body_too_large");

    // No length, 900 bytes: served whole.
    let mut send = send.ready().await.expect("ready");
    let (served, mut body) = send
        .send_request(post("/up/served", None), false)
        .expect("send");
    body.send_data(vec![b'd'; 900].into(), true).expect("data");
    let served = answer(served).await;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(body_len_of(up, "/up/served"), 900);
}
