//! The proxy's HTTP/2 server as an HTTP/2 client sees it: what a client that h2 and hyper let
//! through must still be refused, answers shaped as HTTP/2 clients accept them, and
//! connections that end (idle, drained) without cutting what is still on its way.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

fn config(up: std::net::SocketAddr, listener_extra: &str) -> String {
    format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n{listener_extra}    routes:\n      \
         - backends: [{{ cluster: up }}]\n\
         clusters:\n  - name: up\n    endpoints: [{{ address: \"{up}\" }}]\n"
    )
}

/// A raw HTTP/2 client (the h2 crate): requests hyper's client would not build.
async fn h2_client(proxy: &Proxy) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// An HTTP/2 client over `io` whose streams' and connection's windows are as given, ready.
async fn h2_client_with_windows<T>(
    io: T,
    stream: u32,
    connection: u32,
) -> h2::client::SendRequest<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(stream)
        .initial_connection_window_size(connection)
        .handshake::<_, Bytes>(io)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.expect("ready")
}

/// Sends `req` without a body; the answer's status and fields.
async fn h2_ask(
    send: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> (StatusCode, http::HeaderMap) {
    let mut send = send.clone().ready().await.expect("ready");
    let (answer, _) = send.send_request(req, true).expect("send");
    let answer = within(Duration::from_secs(5), "answer", answer)
        .await
        .expect("answer");
    (answer.status(), answer.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_authority_needs_one_valid_host() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let mut send = h2_client(&proxy).await;
    let without = |hosts: &[&str]| {
        let mut req = Request::builder().uri("/h").body(()).expect("request");
        for host in hosts {
            req.headers_mut()
                .append("host", host.parse().expect("value"));
        }
        req
    };
    for hosts in [
        &[][..],
        &["a b"],
        &["h2.example/admin"],
        &["a.example", "b.example"],
    ] {
        let (status, _) = h2_ask(&mut send, without(hosts)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hosts:?}");
    }
    assert_eq!(up.hits(), 0, "refused requests reached the upstream");
    let (status, _) = h2_ask(&mut send, without(&["h2.example"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(up.seen()[0].header_all("host"), ["h2.example"]);

    // `*` is the path of OPTIONS alone (RFC 9113 8.3.1).
    let asterisk = |method: &str| {
        let mut req = without(&["h2.example"]);
        *req.method_mut() = method.parse().expect("method");
        *req.uri_mut() = "*".parse().expect("uri");
        req
    };
    let (status, _) = h2_ask(&mut send, asterisk("GET")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h2_ask(&mut send, asterisk("OPTIONS")).await;
    assert_eq!(status, StatusCode::OK);

    // No userinfo in `:authority` (RFC 9113 8.3.1), nor in `host`.
    let hits = up.hits();
    for uri in ["http://user@h2.example/h", "http://u:p@h2.example:80/h"] {
        let req = Request::builder().uri(uri).body(()).expect("request");
        let (status, _) = h2_ask(&mut send, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let (status, _) = h2_ask(&mut send, without(&["user@h2.example"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(up.hits(), hits, "refused requests reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_and_a_repeated_length_reach_an_http2_client_as_it_takes_them() {
    // RFC 9110 8.6: no length with a 204; and an HTTP/2 client refuses two (RFC 9113 8.1.1).
    for (answer, status) in [
        ("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            200,
        ),
    ] {
        let up = raw_upstream([answer], Duration::ZERO, false).await;
        let proxy = Proxy::start(&config(up, "")).await;
        let mut send = h2_client(&proxy).await;
        let req = Request::builder()
            .uri(format!("http://{}/", proxy.listen))
            .body(())
            .expect("request");
        let (got, headers) = h2_ask(&mut send, req).await;
        assert_eq!(got.as_u16(), status);
        let lengths = headers.get_all("content-length").iter().count();
        assert_eq!(lengths, if status == 204 { 0 } else { 1 }, "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_still_streaming_keeps_its_connection_from_the_idle_timeout() {
    // Eight pieces 250 ms apart: the answer streams for 2 s, past the listener's 1 s idle
    // timeout. The connection must not be closed under it (a GOAWAY), and so serves the next
    // request.
    let up = raw_upstream(
        [        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n|1\r\na\r\n|1\r\nb\r\n|1\r\nc\r\n|\
         1\r\nd\r\n|1\r\ne\r\n|1\r\nf\r\n|1\r\ng\r\n|0\r\n\r\n"],
        Duration::from_millis(250),
        false,
    )
    .await;
    let proxy = Proxy::start(&config(up, "    idle_timeout: 1s\n")).await;
    let mut conn = proxy.connect(Proto::H2).await;
    let started = Instant::now();
    let first = conn
        .fetch(simple("GET", "h2.example", "/stream"))
        .await
        .expect("answer");
    assert_eq!(first.text(), "abcdefg");
    assert!(started.elapsed() > Duration::from_millis(1500));
    assert!(
        !conn.is_closed(),
        "the connection closed while its answer streamed"
    );
    let second = conn
        .send(simple("GET", "h2.example", "/again"))
        .await
        .expect("the connection serves on");
    assert_eq!(second.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_may_open_as_many_streams_as_the_listener_allows() {
    let up = Upstream::echo("up").await;
    let get = || {
        Request::get("http://h2.example/")
            .body(())
            .expect("request")
    };
    for (extra, streams) in [("", 100), ("    http2: { max_concurrent_streams: 3 }\n", 3)] {
        let proxy = Proxy::start(&config(up.addr, extra)).await;
        let mut send = h2_client(&proxy).await;
        // Answered once the server's SETTINGS came.
        assert_eq!(h2_ask(&mut send, get()).await.0, StatusCode::OK);
        assert_eq!(send.current_max_send_streams(), streams, "{extra:?}");
    }
}

/// A frame of `kind` on stream 0 carrying `payload`.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// HTTP/2 connections the listener closed as floods of frames that ask for nothing.
const FLOODS: &str = "strait_listener_http2_floods_total";
/// HTTP/2 connections the listener closed because their client reset most of its streams
/// before they were answered.
const RESET_FLOODS: &str = "strait_listener_http2_reset_floods_total";

/// The listener's counter `name`.
async fn listener_count(proxy: &Proxy, name: &str) -> Option<f64> {
    proxy.metric(name, &[("listener", "main")]).await
}

/// Opens an HTTP/2 connection to `proxy` and sends `unit` (a frame) `times` times after the
/// preface (or until the proxy closes); what came back until it closed.
async fn flood(proxy: &Proxy, unit: &[u8], times: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    let (mut rx, mut tx) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        while let Ok(n @ 1..) = rx.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, &[]));
    tx.write_all(&hello).await.expect("preface");
    let batch: Vec<u8> = (0..1000).flat_map(|_| unit.iter().copied()).collect();
    for _ in 0..times / 1000 {
        if tx.write_all(&batch).await.is_err() {
            break;
        }
    }
    within(Duration::from_secs(10), "the proxy closes", reader)
        .await
        .expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_pings_is_closed_and_counted() {
    const PINGS: usize = 30_000;
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    // Each PING's acknowledgement is 17 bytes.
    let got = flood(&proxy, &frame(0x6, &[7; 8]), PINGS).await;
    assert!(
        got.len() < 17 * PINGS,
        "every ping was answered ({} bytes)",
        got.len()
    );
    let floods = listener_count(&proxy, FLOODS).await;
    assert_eq!(floods, Some(1.0));
}

/// A flood of frames that need no answer (PRIORITY on an idle stream): what the proxy wrote
/// ends with whole frames, so the connection's last frame says why it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_told_why_with_goaway_enhance_your_calm() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let mut priority = frame(0x2, &[0, 0, 0, 0, 16]);
    priority[8] = 3;
    let got = flood(&proxy, &priority, 30_000).await;
    let mut at = 0;
    let mut last = &got[..0];
    while let Some(head) = got.get(at..at + 9) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        last = got.get(at..at + 9 + len).expect("whole frames");
        at += 9 + len;
    }
    // GOAWAY (0x7): no stream acted on, ENHANCE_YOUR_CALM (0xb).
    assert_eq!(last, frame(0x7, &[0, 0, 0, 0, 0, 0, 0, 0xb]));
    assert_eq!(listener_count(&proxy, FLOODS).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_tiny_window_updates_it_as_often_as_it_needs() {
    // A window of 1 KiB: a WINDOW_UPDATE for every 512 bytes read, 16,000 for this answer, more
    // than a connection starts with. What it is sent pays for them.
    const SIZE: usize = 8 << 20;
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    let mut send = h2_client_with_windows(tcp, 1024, 1024).await;
    let req = Request::get("http://h2.example/big")
        .header("x-echo-response-bytes", SIZE.to_string())
        .body(())
        .expect("request");
    let (answer, _) = send.send_request(req, true).expect("send");
    let got = within(Duration::from_secs(60), "the whole answer", async {
        let mut body = answer.await.expect("answer").into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body");
            got += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        got
    })
    .await;
    assert_eq!(got, SIZE);
    let floods = listener_count(&proxy, FLOODS).await;
    assert_eq!(floods, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_expects_100_continue_is_asked_for_its_body() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let send = h2_client(&proxy).await;
    let mut send = send.ready().await.expect("ready");
    let req = Request::post("http://h2.example/upload")
        .header("expect", "100-continue")
        .header("content-length", "5")
        .body(())
        .expect("request");
    let (mut answer, mut body) = send.send_request(req, false).expect("send");
    // Nothing of the body is sent until the proxy asks for it.
    let interim = std::future::poll_fn(|cx| answer.poll_informational(cx));
    let interim = within(Duration::from_secs(5), "100 Continue", interim)
        .await
        .expect("an interim answer")
        .expect("interim answer");
    assert_eq!(interim.status(), StatusCode::CONTINUE);
    body.send_data(Bytes::from_static(b"hello"), true)
        .expect("body");
    let answer = within(Duration::from_secs(5), "answer", answer)
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let mut echoed = answer.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = echoed.data().await {
        text.extend_from_slice(&chunk.expect("answer body"));
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("\"body_len\":5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_fields_a_route_sets_are_left_out_of_http2_answers() {
    // HTTP/2 refuses connection-specific fields (RFC 9113 8.2.2): sent, the stream would be
    // reset. A route's edits may set them for its HTTP/1.1 clients.
    let up = Upstream::echo("up").await;
    let config = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - backends: [{{ cluster: up }}]\n        response_headers:\n          set: \
         {{ connection: close, keep-alive: \"timeout=5\", upgrade: h2c, x-kept: \"yes\" }}\n\
         clusters:\n  - name: up\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr
    );
    let proxy = Proxy::start(&config).await;
    let mut send = h2_client(&proxy).await;
    let get = Request::get("http://h2.example/")
        .body(())
        .expect("request");
    let (status, fields) = h2_ask(&mut send, get).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fields["x-kept"], "yes");
    for name in ["connection", "keep-alive", "upgrade"] {
        assert!(!fields.contains_key(name), "{name} in {fields:?}");
    }
    assert!(fields.contains_key("date"), "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_s_hop_by_hop_fields_stay_at_the_proxy() {
    // The h2 crate refuses `connection`, `upgrade` and the like in a request; the proxy
    // authentication fields it lets through are this hop's own, and `te: trailers` goes on.
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let mut send = h2_client(&proxy).await;
    let ask = |fields: &[(&'static str, &'static str)]| {
        let mut req = Request::get("http://h2.example/")
            .body(())
            .expect("request");
        for (name, value) in fields {
            req.headers_mut()
                .append(*name, http::HeaderValue::from_static(value));
        }
        req
    };
    let hop = [
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("te", "trailers"),
        ("x-kept", "1"),
    ];
    let (status, _) = h2_ask(&mut send, ask(&hop)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h2_ask(&mut send, ask(&[("x-kept", "2")])).await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].header_all("proxy-authorization").is_empty());
    assert_eq!(seen[0].header_all("te"), ["trailers"]);
    assert_eq!(seen[0].header_all("x-kept"), ["1"]);
    assert_eq!(seen[1].header_all("x-kept"), ["2"]);
    assert!(seen[1].header_all("te").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_keep_alive_ping_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A stream waits on an upstream that answers in 30 s, so the connection is not idle; the
    // proxy pings after the idle timeout (1 s) and, the ping unanswered for as long, closes.
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "    idle_timeout: 1s\n")).await;
    let mut tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, &[]));
    // HEADERS on stream 1, END_STREAM | END_HEADERS, each field a literal without indexing.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/slow"),
        (":authority", "h2.example"),
        ("x-echo-delay-ms", "30000"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut headers = frame(0x1, &block);
    headers[4] = 0x5;
    headers[8] = 1;
    hello.extend(headers);
    tcp.write_all(&hello).await.expect("request");
    let started = Instant::now();
    let got = within(Duration::from_secs(10), "the proxy closes", async {
        let mut got = Vec::new();
        let _ = tcp.read_to_end(&mut got).await;
        got
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    let mut kinds = Vec::new();
    let mut at = 0;
    while let Some(head) = got.get(at..at + 9) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        kinds.push((head[3], head[4]));
        at += 9 + len;
    }
    // A PING (0x6) that is no acknowledgement, then a GOAWAY (0x7).
    let ping = kinds.iter().position(|&k| k == (0x6, 0)).expect("a ping");
    let goaway = kinds.iter().position(|&(kind, _)| kind == 0x7);
    assert!(goaway.is_some_and(|g| g > ping), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_connection_lingers_so_a_slow_reader_gets_the_whole_answer() {
    // 8 MiB answered at once; the client takes it in a large window but reads slowly, so the
    // proxy has written the end while the client's window updates are still coming. A drain
    // closes the connection after the stream: closing with those unread would reset it and
    // throw away the tail still in the kernel.
    const SIZE: usize = 8 << 20;
    let body: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n{}",
            "x".repeat(SIZE)
        )
        .into_boxed_str(),
    );
    let up = raw_upstream([body], Duration::ZERO, false).await;
    let proxy = Proxy::start(&config(up, "")).await;
    let tcp = SlowRead::new(TcpStream::connect(proxy.listen).await.expect("connect"));
    let mut send = h2_client_with_windows(tcp, 6 << 20, 12 << 20).await;
    let req = Request::builder()
        .uri(format!("http://{}/big", proxy.listen))
        .body(())
        .expect("request");
    let (answer, _) = send.send_request(req, true).expect("send");
    let answer = within(Duration::from_secs(5), "answer head", answer)
        .await
        .expect("answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let mut body = answer.into_body();
    let mut got = 0;
    let mut drained = false;
    let result = within(Duration::from_secs(20), "the whole answer", async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            got += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
            if !drained && got > SIZE / 8 {
                drained = true;
                proxy.admin_post("/drain").await;
            }
        }
        Ok::<_, h2::Error>(())
    })
    .await;
    assert!(drained);
    assert_eq!(got, SIZE, "{result:?}");
    result.expect("the answer ends cleanly");
}

/// A connection read slowly: at most 4 KiB a read, a millisecond apart, as a client busy with
/// what it read leaves the rest in the kernel.
struct SlowRead {
    io: TcpStream,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl SlowRead {
    fn new(io: TcpStream) -> Self {
        SlowRead {
            io,
            pause: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl AsyncRead for SlowRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.pause.as_mut().poll(cx));
        let mut small = [0u8; 4096];
        let mut part = ReadBuf::new(&mut small[..buf.remaining().min(4096)]);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        let next = tokio::time::Instant::now() + Duration::from_millis(1);
        this.pause.as_mut().reset(next);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SlowRead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request head as an HPACK block of literal fields (never indexed, no Huffman).
fn literal_head(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x10);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// A frame of `kind` with `flags` on `stream`.
fn stream_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(kind, payload);
    f[4] = flags;
    f[5..9].copy_from_slice(&stream.to_be_bytes());
    f
}

/// The proxy's frames on a raw connection, as they come: (type, stream, payload).
type RawFrames = tokio::sync::mpsc::UnboundedReceiver<(u8, u32, Vec<u8>)>;

/// A raw HTTP/2 connection to `proxy`, its preface and an empty `SETTINGS` sent: the half to
/// write frames to, and the frames the proxy sends.
async fn raw_connection(proxy: &Proxy) -> (tokio::net::tcp::OwnedWriteHalf, RawFrames) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    let (mut rx, mut tx) = tcp.into_split();
    let (frames_tx, frames) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = rx.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
            while got.len() >= 9 {
                let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
                if got.len() < 9 + len {
                    break;
                }
                let stream = u32::from_be_bytes([got[5], got[6], got[7], got[8]]) & 0x7fff_ffff;
                let _ = frames_tx.send((got[3], stream, got[9..9 + len].to_vec()));
                got.drain(..9 + len);
            }
        }
    });
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, &[]));
    tx.write_all(&hello).await.expect("preface");
    (tx, frames)
}

/// The next frame the proxy sends on a raw connection, within 5 s, while it is open.
async fn next_raw_frame(frames: &mut RawFrames) -> (u8, u32, Vec<u8>) {
    within(
        Duration::from_secs(5),
        "a frame from the proxy",
        frames.recv(),
    )
    .await
    .expect("the connection open")
}

/// A client that cancels many streams at once, before the proxy took them up, is served on: a
/// gateway in front of this proxy does so when many of its clients leave at once (a load
/// generator ending its run), each of their upstream streams cancelled (`RST_STREAM`, `CANCEL`)
/// right after its head and the first of its body. h2 allows a connection 20 such streams
/// waiting to be taken up, then closes it with `GOAWAY` `ENHANCE_YOUR_CALM`, and every other
/// request on it failed (502 at the gateway): a mesh soak's uploads through an HTTP/2 sidecar
/// met it a few times a minute. The cancelled streams reach no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancelling_its_streams_at_once_is_served_on() {
    use tokio::io::AsyncWriteExt;
    /// The streams a connection may have open (the listener's default), all cancelled.
    const CANCELLED: u32 = 100;
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let (mut tx, mut frames) = raw_connection(&proxy).await;
    let upload = literal_head(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/upload"),
        (":authority", "h2.example"),
    ]);
    // In one write: each stream's head, the first byte of its body, and its cancel (CANCEL is
    // error code 8); then a request after them.
    let mut out = Vec::new();
    for i in 0..CANCELLED {
        let id = 2 * i + 1;
        out.extend(stream_frame(0x1, 0x4, id, &upload));
        out.extend(stream_frame(0x0, 0, id, b"a"));
        out.extend(stream_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let last = 2 * CANCELLED + 1;
    let get = literal_head(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/after"),
        (":authority", "h2.example"),
    ]);
    out.extend(stream_frame(0x1, 0x5, last, &get));
    tx.write_all(&out).await.expect("write");
    loop {
        match next_raw_frame(&mut frames).await {
            (0x7, _, why) => panic!("GOAWAY after the cancels: {why:?}"),
            (0x1, id, _) if id == last => break,
            _ => {}
        }
    }
    // The cancelled streams reached no route, and the upstream saw only the GET.
    assert_eq!(
        (up.hits(), up.conns()),
        (1, 1),
        "(requests, connections) at the upstream"
    );
    // 100 streams reset early are not over half of the 500 a connection is judged over.
    assert_eq!(listener_count(&proxy, RESET_FLOODS).await, Some(0.0));
}

/// Uploads answered before they ended, many on one connection (a route's own answer here; an
/// upstream that refuses an upload at its head is the same): the rest of each is read and
/// dropped, the stream ends as the client ends it, and the connection serves on. Reset
/// instead (`NO_ERROR`), the `DATA` the client had sent before it saw each reset counted, once
/// h2 had forgotten the stream, as the client's error, and the connection was closed with
/// `GOAWAY` `ENHANCE_YOUR_CALM` after about a thousand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_answered_before_they_end_leave_the_connection_serving() {
    use tokio::io::AsyncWriteExt;
    /// Batches of uploads: each batch's heads go, its answers come, then the ends of its bodies.
    const BATCHES: u32 = 40;
    const BATCH: u32 = 40;
    let up = Upstream::echo("up").await;
    let config = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - match: {{ path: {{ exact: /early }} }}\n        \
         direct_response: {{ status: 403, body: no }}\n      \
         - backends: [{{ cluster: up }}]\n\
         clusters:\n  - name: up\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr
    );
    let proxy = Proxy::start(&config).await;
    let (mut tx, mut frames) = raw_connection(&proxy).await;
    let mut next_frame = async || next_raw_frame(&mut frames).await;
    let upload = literal_head(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/early"),
        (":authority", "h2.example"),
    ]);
    let mut resets = 0;
    for batch in 0..BATCHES {
        let ids: Vec<u32> = (0..BATCH).map(|i| 2 * (batch * BATCH + i) + 1).collect();
        // Heads (END_HEADERS), each with its body's first byte.
        let mut out = Vec::new();
        for &id in &ids {
            out.extend(stream_frame(0x1, 0x4, id, &upload));
            out.extend(stream_frame(0x0, 0, id, b"a"));
        }
        tx.write_all(&out).await.expect("write");
        let mut answered = 0;
        while answered < BATCH {
            match next_frame().await {
                (0x7, _, why) => panic!("GOAWAY in batch {batch}: {why:?}"),
                (0x1, id, _) if ids.contains(&id) => answered += 1,
                (0x3, _, _) => resets += 1,
                _ => {}
            }
        }
        // The rest of each body, after its answer.
        let ends: Vec<u8> = ids
            .iter()
            .flat_map(|&id| stream_frame(0x0, 0x1, id, b"z"))
            .collect();
        tx.write_all(&ends).await.expect("write");
    }
    // A request after them all is still answered.
    let last = 2 * BATCHES * BATCH + 1;
    let get = literal_head(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/after"),
        (":authority", "h2.example"),
    ]);
    tx.write_all(&stream_frame(0x1, 0x5, last, &get))
        .await
        .expect("write");
    loop {
        match next_frame().await {
            (0x7, _, why) => panic!("GOAWAY after the uploads: {why:?}"),
            (0x1, id, _) if id == last => break,
            (0x3, _, _) => resets += 1,
            _ => {}
        }
    }
    assert_eq!(resets, 0, "uploads answered early were reset");
}

/// Rounds of streams reset once their requests reached the upstream: each round opens as many
/// streams as a connection may (`head` writes a stream's frames), waits until the upstream has
/// them all (and, `answered`, until the proxy has sent each its answer's head, the client's
/// window shut so that no body follows), and has each reset (`reset` writes the frames that do
/// it), up to 5 rounds or until the proxy sends `GOAWAY`. The `GOAWAY`'s last stream and error
/// code, once the connection is closed, and the requests the upstream saw.
async fn reset_rounds(
    proxy: &Proxy,
    up: &Upstream,
    answered: bool,
    head: impl Fn(u32) -> Vec<u8>,
    reset: impl Fn(u32) -> Vec<u8>,
) -> (u32, u32, usize) {
    use tokio::io::AsyncWriteExt;
    /// The streams a connection may have open (the listener's default).
    const OPEN: u32 = 100;
    let (mut tx, mut frames) = raw_connection(proxy).await;
    if answered {
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4): 0.
        let shut = frame(0x4, &[0, 4, 0, 0, 0, 0]);
        tx.write_all(&shut).await.expect("settings");
    }
    let mut next_id = 1;
    let mut goaway = None;
    for round in 1..=5 {
        let ids: Vec<u32> = (0..OPEN).map(|i| next_id + 2 * i).collect();
        next_id += 2 * OPEN;
        let heads: Vec<u8> = ids.iter().flat_map(|&id| head(id)).collect();
        if tx.write_all(&heads).await.is_err() {
            break;
        }
        let reached = round * OPEN as usize;
        let upstream_saw = eventually(Duration::from_secs(5), || async { up.hits() >= reached });
        if !upstream_saw.await {
            break;
        }
        let mut heads_due = if answered { ids.len() } else { 0 };
        while heads_due > 0 {
            match next_raw_frame(&mut frames).await {
                (0x1, id, _) if ids.contains(&id) => heads_due -= 1,
                (0x7, _, payload) => {
                    goaway = Some(payload);
                    break;
                }
                _ => {}
            }
        }
        if goaway.is_some() {
            break;
        }
        let resets: Vec<u8> = ids.iter().flat_map(|&id| reset(id)).collect();
        if tx.write_all(&resets).await.is_err() {
            break;
        }
        // The proxy's frames so far: a GOAWAY once the resets passed the bound.
        while let Ok(Some((kind, _, payload))) =
            tokio::time::timeout(Duration::from_millis(200), frames.recv()).await
        {
            if kind == 0x7 {
                goaway = Some(payload);
            }
        }
        if goaway.is_some() {
            break;
        }
    }
    let goaway = goaway.unwrap_or_else(|| {
        panic!(
            "no GOAWAY after the resets; the upstream saw {} requests",
            up.hits()
        )
    });
    within(Duration::from_secs(5), "the proxy closes", async {
        while frames.recv().await.is_some() {}
    })
    .await;
    let word = |at: usize| {
        u32::from_be_bytes([goaway[at], goaway[at + 1], goaway[at + 2], goaway[at + 3]])
    };
    (word(0), word(4), up.hits())
}

/// Runs [`reset_rounds`] against a proxy in front of `up`, and checks that the connection was
/// closed for its resets in the third round: more than 250 of them, each in a round of 100, and
/// `GOAWAY` `ENHANCE_YOUR_CALM` naming a stream of that round, counted as a reset flood.
async fn closed_in_the_third_round(
    up: Upstream,
    answered: bool,
    head: impl Fn(u32) -> Vec<u8>,
    reset: impl Fn(u32) -> Vec<u8>,
) {
    let proxy = Proxy::start(&config(up.addr, "")).await;
    let (last, error, hits) = reset_rounds(&proxy, &up, answered, head, reset).await;
    assert_eq!(error, 0xb, "ENHANCE_YOUR_CALM");
    assert!((401..600).contains(&last), "last stream {last}");
    assert_eq!(hits, 300, "requests at the upstream");
    assert_eq!(listener_count(&proxy, RESET_FLOODS).await, Some(1.0));
    assert_eq!(listener_count(&proxy, FLOODS).await, Some(0.0));
}

/// `RST_STREAM` with `CANCEL` (8) on `stream`.
fn cancel(stream: u32) -> Vec<u8> {
    stream_frame(0x3, 0, stream, &8u32.to_be_bytes())
}

/// A "rapid reset" (CVE-2023-44487) paced so that h2 takes up each stream before its reset:
/// the client opens as many streams as it may, waits until their requests reach the upstream,
/// resets them all (freeing their places at once), and again. Each round had the upstream start
/// 100 requests nobody waits for, without end. More than half of a connection's streams (and
/// more than 250) reset within a second of their heads, unanswered, and the connection is
/// closed with `GOAWAY` `ENHANCE_YOUR_CALM`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_streams_once_they_reach_upstream_is_closed() {
    let get = literal_head(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/slow"),
        (":authority", "h2.example"),
    ]);
    let up = Upstream::slow("up", Duration::from_secs(30)).await;
    let head = |id| stream_frame(0x1, 0x5, id, &get);
    closed_in_the_third_round(up, false, head, cancel).await;
}

/// The same with resets the proxy sends ("MadeYouReset", CVE-2025-8671): each request declares
/// a body of 4 bytes and sends them, and once it is upstream the client sends a fifth, which
/// h2 answers by resetting the stream (`PROTOCOL_ERROR`). h2 closes a connection after 1,024
/// such resets; these count as the client's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_making_the_proxy_reset_its_streams_is_closed() {
    let post = literal_head(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/slow"),
        (":authority", "h2.example"),
        ("content-length", "4"),
    ]);
    let up = Upstream::slow("up", Duration::from_secs(30)).await;
    let head = |id| {
        let mut frames = stream_frame(0x1, 0x4, id, &post);
        frames.extend(stream_frame(0x0, 0, id, b"abcd"));
        frames
    };
    let one_byte_more = |id| stream_frame(0x0, 0, id, b"e");
    closed_in_the_third_round(up, false, head, one_byte_more).await;
}

/// The same with answers on their way: each request's answer (100,000 bytes) has its head sent
/// and its body held by the client's shut window, and the client resets it then, within a
/// second of its head. Those count as unanswered: the answer is not whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resetting_its_streams_once_answers_start_is_closed() {
    let get = literal_head(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/big"),
        (":authority", "h2.example"),
        ("x-echo-response-bytes", "100000"),
    ]);
    let up = Upstream::echo("up").await;
    let head = |id| stream_frame(0x1, 0x5, id, &get);
    closed_in_the_third_round(up, true, head, cancel).await;
}
