//! The proxy's HTTP/1 server as a client sees it on the wire: raw bytes in, raw responses out.
//! Malformed heads and framing are refused with the right status and the connection closed
//! (a request whose length is in doubt must not reach an upstream: request smuggling), and
//! well-formed traffic (pipelining, `Expect: 100-continue`, HTTP/1.0 keep-alive, `HEAD`,
//! chunked bodies with trailers, absolute-form targets, large bodies) is served correctly.
//!
//! Every read is bounded by [`READ_LIMIT`]: a server that hangs fails the test.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any single wait for bytes from the proxy.
const READ_LIMIT: Duration = Duration::from_secs(2);

/// A response as it came off the wire.
#[derive(Debug)]
struct Reply {
    /// The status line's version, e.g. `HTTP/1.1`.
    version: String,
    status: u16,
    /// Header lines in order, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The head exactly as received, for failure messages.
    head: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (across all its lines) holds `token`, ignoring case.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The echo upstream's JSON account of the request.
    fn echo(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not the echo upstream's JSON ({e}):\n{}{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A raw TCP client connection to the proxy, with the bytes read but not yet consumed.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
    /// Set once the proxy closed (FIN or RST).
    eof: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    async fn connect(proxy: &Proxy) -> Client {
        let stream = within(READ_LIMIT, "connect", TcpStream::connect(proxy.listen))
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            pending: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within(
            READ_LIMIT,
            "write to the proxy",
            self.stream.write_all(bytes),
        )
        .await
        .expect("write to the proxy");
    }

    /// Like [`Client::send`], but a proxy that refuses the request may close before taking
    /// all of it: the response, not the write, tells what happened.
    async fn send_refusable(&mut self, bytes: &[u8]) {
        let _ = within(
            READ_LIMIT,
            "write to the proxy",
            self.stream.write_all(bytes),
        )
        .await;
    }

    /// One read into `pending`; the byte count, 0 once the proxy closed (FIN or RST).
    async fn fill(&mut self, what: &str) -> usize {
        if self.eof {
            return 0;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let read = tokio::time::timeout(READ_LIMIT, self.stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                self.pending.extend_from_slice(&buf[..n]);
                n
            }
            // A reset after the response counts as a close: a server that closes with unread
            // request bytes in its buffer sends RST rather than FIN.
            Ok(_) => {
                self.eof = true;
                0
            }
            Err(_) => panic!(
                "no bytes and no close within {READ_LIMIT:?} while waiting for {what}; \
                 unconsumed so far: {:?}",
                String::from_utf8_lossy(&self.pending)
            ),
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.pending, b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..end + 2).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            assert!(
                self.fill("a body line").await > 0,
                "closed mid-body; unconsumed: {:?}",
                String::from_utf8_lossy(&self.pending)
            );
        }
    }

    async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            assert!(
                self.fill("body bytes").await > 0,
                "closed after {} of {n} body bytes",
                self.pending.len()
            );
        }
        self.pending.drain(..n).collect()
    }

    /// The next response, or `None` when the proxy closes before sending a byte of one.
    /// `to_head` says the request was `HEAD` (no body follows whatever the headers say).
    async fn try_response(&mut self, to_head: bool) -> Option<Reply> {
        let end = loop {
            if let Some(end) = find(&self.pending, b"\r\n\r\n") {
                break end;
            }
            if self.fill("a response head").await == 0 {
                assert!(
                    self.pending.is_empty(),
                    "closed mid-head: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return None;
            }
        };
        let head_bytes: Vec<u8> = self.pending.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head_bytes).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        assert!(
            version.starts_with("HTTP/1."),
            "not an HTTP/1 status line: {head:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line without a colon: {l:?} in {head:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut reply = Reply {
            version,
            status,
            headers,
            body: Vec::new(),
            head,
        };
        if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return Some(reply);
        }
        if reply.has_token("transfer-encoding", "chunked") {
            loop {
                let size_line = self.line().await;
                let size = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line().await.is_empty() {}
                    break;
                }
                let chunk = self.exactly(size).await;
                reply.body.extend_from_slice(&chunk);
                let crlf = self.exactly(2).await;
                assert_eq!(crlf, b"\r\n", "chunk not followed by CRLF");
            }
        } else if let Some(len) = reply.header("content-length") {
            let len: usize = len
                .parse()
                .unwrap_or_else(|_| panic!("bad content-length in {:?}", reply.head));
            reply.body = self.exactly(len).await;
        } else {
            // Delimited by the close (HTTP/1.0 style).
            while self.fill("a close-delimited body").await > 0 {}
            reply.body = std::mem::take(&mut self.pending);
        }
        Some(reply)
    }

    async fn response(&mut self) -> Reply {
        self.try_response(false)
            .await
            .expect("closed before a response")
    }

    async fn request(&mut self, bytes: &[u8]) -> Reply {
        self.send(bytes).await;
        self.response().await
    }

    /// Asserts the proxy closes the connection within [`READ_LIMIT`] and sends nothing more.
    async fn assert_closed(&mut self, after: &str) {
        while self.fill("the close").await > 0 {}
        assert!(
            self.pending.is_empty(),
            "bytes after {after}: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
    }

    /// Reads whatever comes until the proxy closes; panics if it is still open after
    /// [`READ_LIMIT`].
    async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill("the close").await > 0 {}
        std::mem::take(&mut self.pending)
    }

    /// Asserts nothing arrives for `quiet` (and the connection is not closed).
    async fn assert_silent(&mut self, quiet: Duration, after: &str) {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(quiet, self.stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => panic!("connection closed after {after}"),
            Ok(Ok(n)) => panic!(
                "stray bytes after {after}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
}

async fn proxy_to(up: &Upstream) -> Proxy {
    Proxy::start(&one_route(up.addr, "", "", "")).await
}

/// Sends `request` on a new connection and asserts it is refused with `status` and the
/// connection closed, without the upstream ever seeing a request.
async fn assert_refused(proxy: &Proxy, up: &Upstream, request: &[u8], status: u16) {
    let shown = String::from_utf8_lossy(&request[..request.len().min(200)]).into_owned();
    let hits = up.hits();
    let mut client = Client::connect(proxy).await;
    client.send_refusable(request).await;
    let reply = client
        .try_response(false)
        .await
        .unwrap_or_else(|| panic!("closed without a response to {shown:?}"));
    assert_eq!(
        reply.status,
        status,
        "response to {shown:?}:\n{}{}",
        reply.head,
        String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)])
    );
    client
        .assert_closed(&format!("the {status} to {shown:?}"))
        .await;
    assert_eq!(up.hits(), hits, "the upstream received {shown:?}");
}

/// A GET the echo upstream answers, to show the proxy still serves.
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h1.example\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_request_line_gets_400_and_close() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    for request in [
        &b"HELLO\r\n\r\n"[..],
        b"GE T / HTTP/1.1\r\nHost: h1.example\r\n\r\n",
        // `*` is OPTIONS' target alone (RFC 9112 3.2.4).
        b"GET * HTTP/1.1\r\nHost: h1.example\r\n\r\n",
    ] {
        assert_refused(&proxy, &up, request, 400).await;
    }
    let mut client = Client::connect(&proxy).await;
    let reply = client
        .request(b"OPTIONS * HTTP/1.1\r\nHost: h1.example\r\n\r\n")
        .await;
    // Routed (here no route takes `*`), not refused as malformed.
    assert_eq!(reply.status, 404, "{}", reply.head);
    assert_eq!(reply.header("x-strait-error"), Some("no_route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_64_kib_gets_431_and_close() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: h1.example\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_refused(&proxy, &up, request.as_bytes(), 431).await;
}

/// A request line that does not end within the head's 64 KiB names a target too long: 414
/// (RFC 9112 3, as nginx answers), not 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_64_kib_gets_414_and_close() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: h1.example\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    assert_refused(&proxy, &up, request.as_bytes(), 414).await;
}

/// A `\r` ends a line only before `\n` (RFC 9112 2.2): a client that ends its lines with `\r`
/// alone is refused at once, not left waiting for a line end that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_ended_by_a_bare_cr_get_400_at_once() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    assert_refused(&proxy, &up, b"GET / HTTP/1.1\rHost: h1.example\r\r", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_header_fields_get_431_and_close() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    // Host and 100 more: 101 fields.
    let mut request = String::from("GET / HTTP/1.1\r\nHost: h1.example\r\n");
    for i in 0..100 {
        request.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    assert_refused(&proxy, &up, request.as_bytes(), 431).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_content_length_gets_400_and_close() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    for request in [
        &b"POST / HTTP/1.1\r\nHost: h1.example\r\nContent-Length: abc\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h1.example\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ] {
        // RFC 9112 §6.3: a server MUST answer 400 and then close, the framing being unknown.
        assert_refused(&proxy, &up, request, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_content_length_gets_400_and_never_reaches_the_upstream() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    // The classic smuggling pair, in both orders: a front end and a back end that disagree
    // on which header frames the body see different requests.
    for request in [
        &b"POST / HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 4\r\n\
           Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h1.example\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h1.example\r\n\r\n",
    ] {
        assert_refused(&proxy, &up, request, 400).await;
    }
    assert!(up.seen().is_empty(), "upstream saw {:?}", up.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_gets_501_and_http_1_0_with_one_gets_400() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    assert_refused(
        &proxy,
        &up,
        b"POST / HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        501,
    )
    .await;
    assert_refused(
        &proxy,
        &up,
        b"POST / HTTP/1.0\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_in_a_header_value_and_space_before_the_colon_get_400() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: h1.example\r\nx-bad: a\x00b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h1.example\r\nx-bad: a\x7fb\r\n\r\n",
        // RFC 9112 §5.1: whitespace between a field name and the colon MUST be rejected.
        b"GET / HTTP/1.1\r\nHost : h1.example\r\n\r\n",
    ] {
        assert_refused(&proxy, &up, request, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_request_without_host_with_two_or_a_bad_one_gets_400() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    for request in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h1.example\r\nHost: other.example\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: h1.example\r\nhost: h1.example\r\n\r\n",
        // RFC 9112 3.2: a `host` that is not an authority is refused too.
        b"GET / HTTP/1.1\r\nHost: h1 example\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h1.example/admin\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: <h1.example>\r\n\r\n",
        // Userinfo, in `host` or an absolute target (RFC 9110 4.2.4).
        b"GET / HTTP/1.1\r\nHost: user@h1.example\r\n\r\n",
        b"GET http://user@h1.example/ HTTP/1.1\r\nHost: h1.example\r\n\r\n",
    ] {
        assert_refused(&proxy, &up, request, 400).await;
    }
    // HTTP/1.0 needs none. It goes upstream as HTTP/1.1, which does: the address the client
    // reached (an upstream nginx answered 400 to the request sent without one).
    let mut client = Client::connect(&proxy).await;
    let reply = client.request(b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.echo()["headers"]["host"],
        serde_json::json!([proxy.listen.to_string()]),
        "{}",
        reply.echo()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_are_counted_by_the_status_they_got() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    let too_many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(65 * 1024));
    for (request, status) in [
        (&b"HELLO\r\n\r\n"[..], 400),
        (b"GET / HTTP/1.1\r\nHost : h1.example\r\n\r\n", 400),
        (too_many.as_bytes(), 431),
        (long_target.as_bytes(), 414),
        (
            b"POST / HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
    ] {
        assert_refused(&proxy, &up, request, status).await;
    }
    // A good request is not counted.
    let mut client = Client::connect(&proxy).await;
    assert_eq!(client.request(&get("/fine")).await.status, 200);
    let metrics = proxy.admin_get("/metrics").await.text();
    for (status, count) in [("400", 2), ("414", 1), ("431", 1), ("501", 1)] {
        let line = format!(
            "strait_listener_malformed_requests_total{{listener=\"main\",status=\"{status}\"}} {count}"
        );
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
}

/// An answer that does not wait for the request's body (here a direct response): the rest of
/// the body is read and dropped and the connection serves on, as nginx does, however large it
/// is while it keeps coming; a client that waits for `100 Continue` is told the connection
/// closes; one that stops sending its body has its connection closed once it has been quiet
/// for 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_by_an_early_answer_is_dropped_and_the_connection_kept() {
    let up = Upstream::echo("up").await;
    let config = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - match: {{ path: {{ exact: /early }} }}\n        \
         direct_response: {{ status: 403, body: no }}\n      \
         - match: {{ path: {{ prefix: / }} }}\n        backends: [{{ cluster: echo }}]\n\
         clusters:\n  - name: echo\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr
    );
    let proxy = Proxy::start(&config).await;
    let sized = b"POST /early HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 10\r\n\r\n0123456789";
    let chunked = b"POST /early HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\n\r\n";
    for request in [&sized[..], &chunked[..]] {
        let mut client = Client::connect(&proxy).await;
        let reply = client.request(request).await;
        assert_eq!(reply.status, 403);
        let after = client.request(&get("/after")).await;
        assert_eq!(
            after.status, 200,
            "the connection serves on after the early answer"
        );
        assert_eq!(after.echo()["uri"], "/after");
    }
    // A megabyte still to come, sent after the answer: dropped, and the connection kept.
    // (Closed on it, the client's bytes would be answered with a reset, which can destroy the
    // answer before the client reads it.)
    let head = b"POST /early HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 1000000\r\n\r\n";
    let mut client = Client::connect(&proxy).await;
    client.send(head).await;
    assert_eq!(client.response().await.status, 403);
    client.send(&vec![b'x'; 1_000_000]).await;
    let after = client.request(&get("/after")).await;
    assert_eq!(
        after.status, 200,
        "the connection serves on after a large rest"
    );
    assert_eq!(after.echo()["uri"], "/after");

    // A client waiting for `100 Continue` sends no body: its answer says the connection
    // closes, and it does at once.
    let mut client = Client::connect(&proxy).await;
    client
        .send(
            b"POST /early HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 1000000\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 403);
    assert!(reply.has_token("connection", "close"), "{}", reply.head);
    client.assert_closed("the answer to a withheld body").await;

    // A client that stops sending its body: closed once quiet for 5 s (nginx's
    // `lingering_timeout`), not held for it.
    let mut quiet = TcpStream::connect(proxy.listen).await.expect("connect");
    quiet.write_all(head).await.expect("write");
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), quiet.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open 10 s after the answer");
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 403"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before the client went quiet for 5 s: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_head_is_passed_on_as_it_came_without_its_hop_by_hop_fields() {
    // The second answer brings its own date; the others get the proxy's.
    static ANSWERS: &[&str] = &[
        "HTTP/1.1 200 OK\r\nServer: Raw/1\r\nX-Mixed-Case: Kept As Sent\r\n\
         Keep-Alive: timeout=5\r\nContent-Length: 2\r\nContent-Length: 2\r\n\
         Connection: keep-alive\r\nX-Last:\tlast \r\n\r\nok",
        "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nX-Mixed-Case: 204\r\nContent-Length: 0\r\n\r\n",
    ];
    let up = raw_upstream(ANSWERS.iter().copied(), Duration::ZERO, false).await;
    let config = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - match: {{ path: {{ prefix: /edited }} }}\n        backends: [{{ cluster: raw }}]\n        \
         response_headers: {{ remove: [x-mixed-case], add: {{ x-added: \"1\" }} }}\n      \
         - backends: [{{ cluster: raw }}]\n\
         clusters:\n  - name: raw\n    endpoints: [{{ address: \"{up}\" }}]\n"
    );
    let proxy = Proxy::start(&config).await;
    let mut client = Client::connect(&proxy).await;

    let first = client.request(&get("/")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"ok");
    // Names as the upstream spelt them, values as sent (without the whitespace around them).
    for line in [
        "\r\nServer: Raw/1\r\n",
        "\r\nX-Mixed-Case: Kept As Sent\r\n",
        "\r\nX-Last: last\r\n",
    ] {
        assert!(first.head.contains(line), "{line:?} in {}", first.head);
    }
    let count = |reply: &Reply, name: &str| reply.headers.iter().filter(|(n, _)| n == name).count();
    assert_eq!(count(&first, "content-length"), 1, "{}", first.head);
    assert_eq!(count(&first, "date"), 1, "{}", first.head);
    assert_eq!(count(&first, "keep-alive"), 0, "{}", first.head);
    assert_eq!(count(&first, "connection"), 0, "{}", first.head);

    let second = client.request(&get("/")).await;
    assert_eq!(second.status, 200);
    assert_eq!(count(&second, "date"), 1, "{}", second.head);
    assert_eq!(second.header("date"), Some("Thu, 01 Jan 2026 00:00:00 GMT"));

    let third = client.request(&get("/")).await;
    assert_eq!(third.status, 204);
    assert_eq!(count(&third, "content-length"), 0, "{}", third.head);
    assert_eq!(third.header("x-mixed-case"), Some("204"));

    // A route that edits the answer's headers finds the upstream's among them.
    let mut client = Client::connect(&proxy).await;
    let edited = client.request(&get("/edited")).await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.header("x-mixed-case"), None, "{}", edited.head);
    assert_eq!(edited.header("server"), Some("Raw/1"));
    assert_eq!(edited.header("x-added"), Some("1"));
    assert_eq!(edited.body, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    for count in [2, 10] {
        let mut client = Client::connect(&proxy).await;
        let batch: Vec<u8> = (0..count)
            .flat_map(|i| get(&format!("/pipe/{count}/{i}")))
            .collect();
        // One write: the requests arrive together.
        client.send(&batch).await;
        for i in 0..count {
            let reply = client.response().await;
            assert_eq!(reply.status, 200, "pipelined response {i} of {count}");
            assert_eq!(
                reply.echo()["uri"],
                format!("/pipe/{count}/{i}"),
                "pipelined response {i} of {count} out of order"
            );
        }
        client
            .assert_silent(Duration::from_millis(100), "the pipelined responses")
            .await;
        let after = client.request(&get("/after")).await;
        assert_eq!(
            after.status, 200,
            "the connection serves on after the batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_before_the_body_then_the_answer() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: h1.example\r\nContent-Length: 11\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await;
    let interim = client.response().await;
    assert_eq!(
        interim.status, 100,
        "the client waits for 100 Continue before sending the body: {}",
        interim.head
    );
    client.send(b"hello world").await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.echo()["body_len"], 11);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 11, "the upstream got the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_closes_unless_keep_alive_is_asked_for() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;

    let mut client = Client::connect(&proxy).await;
    let reply = client
        .request(b"GET /ten HTTP/1.0\r\nHost: h1.example\r\n\r\n")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.echo()["uri"], "/ten");
    client.assert_closed("an HTTP/1.0 response").await;

    let mut client = Client::connect(&proxy).await;
    for path in ["/ka/1", "/ka/2"] {
        let reply = client
            .request(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: h1.example\r\nConnection: keep-alive\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert!(
            reply.header("content-length").is_some(),
            "an HTTP/1.0 keep-alive response needs a content-length: {}",
            reply.head
        );
        assert!(
            reply.has_token("connection", "keep-alive"),
            "the response confirms keep-alive: {}",
            reply.head
        );
        assert_eq!(reply.echo()["uri"], path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_with_close_and_the_connection_closed() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    let reply = client
        .request(b"GET /bye HTTP/1.1\r\nHost: h1.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(
        reply.has_token("connection", "close"),
        "the response says connection: close: {}",
        reply.head
    );
    assert_eq!(reply.echo()["uri"], "/bye");
    client.assert_closed("a connection: close response").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_no_body_and_the_connection_serves_on() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: h1.example\r\n\r\n")
        .await;
    let reply = client
        .try_response(true)
        .await
        .expect("closed before the HEAD response");
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(
        client.pending.is_empty(),
        "bytes after the HEAD response head: {:?}",
        String::from_utf8_lossy(&client.pending)
    );
    client
        .assert_silent(Duration::from_millis(150), "the HEAD response head")
        .await;
    let after = client.request(&get("/after-head")).await;
    assert_eq!(after.status, 200, "{}", after.head);
    assert_eq!(after.echo()["uri"], "/after-head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_upstream_whole() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;

    // Several chunks, an upper-case hex size and a chunk extension (which must be ignored),
    // sent in pieces.
    let pieces: [&[u8]; 4] = [
        b"POST /chunks HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n",
        b"3;note=x\r\nabc\r\n",
        b"0\r\n\r\n",
    ];
    for piece in pieces {
        client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.echo()["body_len"], 5 + 26 + 3);

    // With trailers; the next request on the connection shows they were consumed.
    client
        .send(
            b"POST /trailers HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\
              Trailer: x-checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: c0ffee\r\n\r\n",
        )
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.echo()["body_len"], 11);
    let after = client.request(&get("/after-trailers")).await;
    assert_eq!(after.status, 200, "{}", after.head);
    assert_eq!(after.echo()["uri"], "/after-trailers");

    let seen = up.seen();
    let lens: Vec<(String, u64)> = seen.iter().map(|s| (s.uri.clone(), s.body_len)).collect();
    assert_eq!(
        lens,
        [
            ("/chunks".to_owned(), 34),
            ("/trailers".to_owned(), 11),
            ("/after-trailers".to_owned(), 0)
        ],
        "what the upstream received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_chunk_size_ends_the_connection_and_the_proxy_serves_on() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    // An upstream connection in the pool: a body that fails at its first chunk size must not
    // make the request go again on another connection with no body (it got 504 after the
    // route's timeout, the upstream waiting for the body).
    let mut first = Client::connect(&proxy).await;
    assert_eq!(first.request(&get("/pooled")).await.status, 200);
    for request in [
        &b"POST /bad HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"POST /bad HTTP/1.1\r\nHost: h1.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\n",
    ] {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        // A 400, and the connection ends: the rest of the stream can no longer be framed.
        let got = client.read_to_close().await;
        assert!(
            got.starts_with(b"HTTP/1.1 400 "),
            "not a 400 before the close: {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut fresh = Client::connect(&proxy).await;
        let reply = fresh.request(&get("/fresh")).await;
        assert_eq!(reply.status, 200, "a new connection after a bad chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_routed_like_origin_form() {
    let abs = Upstream::echo("abs").await;
    let other = Upstream::echo("other").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ hosts: [abs.example] }}
        backends: [{{ cluster: abs }}]
      - match: {{ path: {{ prefix: / }} }}
        backends: [{{ cluster: other }}]
clusters:
  - name: abs
    endpoints: [{{ address: "{abs}" }}]
  - name: other
    endpoints: [{{ address: "{other}" }}]
"#,
        abs = abs.addr,
        other = other.addr
    );
    let proxy = Proxy::start(&config).await;
    let mut client = Client::connect(&proxy).await;
    let cases: [(&[u8], &str, &str); 3] = [
        (
            b"GET /p?q=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n",
            "abs",
            "/p?q=1",
        ),
        (
            b"GET http://abs.example/p?q=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n",
            "abs",
            "/p?q=1",
        ),
        // RFC 9112 §3.2.2: the target's authority wins over the Host header.
        (
            b"GET http://abs.example/q HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "abs",
            "/q",
        ),
    ];
    for (request, upstream, uri) in cases {
        let shown = String::from_utf8_lossy(request).into_owned();
        let reply = client.request(request).await;
        assert_eq!(reply.status, 200, "{shown:?}: {}", reply.head);
        let echoed = reply.echo();
        assert_eq!(echoed["upstream"], upstream, "{shown:?} routed to");
        assert_eq!(echoed["uri"], uri, "{shown:?}: target sent upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_for_300_ms_serves_the_next_request() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    let first = client.request(&get("/first")).await;
    assert_eq!(first.status, 200, "{}", first.head);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client.request(&get("/second")).await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.echo()["uri"], "/second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_over_1_mib_arrives_whole() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    let len = 1024 * 1024 + 512 * 1024 + 7;
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!("POST /big HTTP/1.1\r\nHost: h1.example\r\nContent-Length: {len}\r\n\r\n");
    client.send(head.as_bytes()).await;
    client.send(&body).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.echo()["body_len"], len as u64);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, len as u64, "the upstream got every byte");
    assert_eq!(reply.version, "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_preface_in_pieces_is_answered_as_http2() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    // The HTTP/1 server reads the first bytes; a strict prefix of the preface waits for more.
    let mut client = Client::connect(&proxy).await;
    client.send(b"PRI * HT").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(b"TP/2.0\r\n\r\nSM\r\n\r\n").await;
    // An empty SETTINGS frame: the server's own SETTINGS comes back first.
    client.send(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    let frame = client.exactly(9).await;
    assert_eq!(frame[3], 4, "the first frame is SETTINGS: {frame:?}");
    assert_eq!(frame[4] & 1, 0, "not an ACK: {frame:?}");

    // Bytes that start like the preface and then differ are HTTP/1.
    let mut client = Client::connect(&proxy).await;
    let reply = client
        .request(b"PRI / HTTP/1.1\r\nHost: h1.example\r\n\r\n")
        .await;
    assert_eq!(reply.version, "HTTP/1.1", "{}", reply.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_own_fields_reach_the_upstream_as_they_came_with_the_proxys_after_them() {
    // A listener where nothing reads the fields: they go upstream as they came (not through
    // a map), the proxy's own written after them.
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    let reply = client
        .request(
            b"POST /own HTTP/1.1\r\nHost: h1.example\r\nX-Mixed: A b\r\nx-dup: 1\r\n\
              X-Dup: 2\r\nContent-Length: 5\r\nx-request-id: mine\r\n\r\nhello",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(got.body_len, 5, "the upstream got the body");
    assert_eq!(got.header_all("x-mixed"), ["A b"]);
    assert_eq!(got.header_all("x-dup"), ["1", "2"]);
    assert_eq!(got.header_all("content-length"), ["5"]);
    assert_eq!(got.header_all("host"), ["h1.example"]);
    // The client's id is kept; the forwarding fields are the proxy's.
    assert_eq!(got.header_all("x-request-id"), ["mine"]);
    assert_eq!(got.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(got.header_all("x-forwarded-proto"), ["http"]);
    // The connection serves on.
    let reply = client.request(&get("/after")).await;
    assert_eq!(reply.echo()["uri"], "/after");
}

/// What the proxy sends for a request (its last on the connection) to an upstream answering
/// `answer`.
async fn whole_answer(answer: &'static str) -> String {
    let up = raw_upstream([answer], Duration::ZERO, true).await;
    let config = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      \
         - backends: [{{ cluster: raw }}]\n\
         clusters:\n  - name: raw\n    endpoints: [{{ address: \"{up}\" }}]\n"
    );
    let proxy = Proxy::start(&config).await;
    let mut stream = within(READ_LIMIT, "connect", TcpStream::connect(proxy.listen))
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h1.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    within(
        READ_LIMIT,
        "the proxy's close",
        stream.read_to_end(&mut got),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_with_two_framings_gets_502() {
    // RFC 9112 6.3: `transfer-encoding` and `content-length` together may be a response split
    // in two. The client gets a 502 (as from nginx), not the head with the length beside a
    // chunked body.
    let text =
        whole_answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(
        text.contains("both transfer-encoding and content-length"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_cut_short_reaches_the_client_as_far_as_it_came() {
    // The head and the body read before the upstream's close go out, then the connection
    // closes: the client sees the answer cut short (no last chunk), as nginx shows it, not a
    // connection closed before any answer.
    let text = whole_answer(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5\r\nhello\r\n3\r\nab",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\nX-Up: 1\r\n"), "{text}");
    assert!(text.contains("\r\n\r\n5\r\nhello\r\n"), "{text}");
    assert!(!text.contains("0\r\n\r\n"), "no last chunk: {text:?}");

    // A chunk size that does not fit: the head still goes out, and nothing after it.
    let text = whole_answer(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text:?}");

    // Fewer bytes than the length said: those bytes, then the close.
    let text = whole_answer("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await;
    assert!(text.contains("\r\nContent-Length: 10\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gets_501_and_an_upgrade_to_h2c_goes_on_as_a_plain_request() {
    let up = Upstream::echo("up").await;
    let proxy = proxy_to(&up).await;
    let mut client = Client::connect(&proxy).await;
    // Tunnels are not served; the connection serves on.
    let reply = client
        .request(b"CONNECT h1.example:443 HTTP/1.1\r\nHost: h1.example:443\r\n\r\n")
        .await;
    assert_eq!(reply.status, 501, "{}", reply.head);
    assert_eq!(reply.header("x-strait-error"), Some("not_implemented"));
    assert_eq!(up.hits(), 0, "a CONNECT reached the upstream");

    // An upstream that took an upgrade to h2c would serve the rest of the connection as
    // HTTP/2 behind the proxy ("h2c smuggling"): the request goes without it, and its answer
    // is an ordinary one.
    let reply = client
        .request(
            b"GET /h2c HTTP/1.1\r\nHost: h1.example\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    let seen = up.seen();
    let got = seen.last().expect("the upstream got the request");
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(
            got.header_all(name).is_empty(),
            "{name} reached the upstream"
        );
    }
    let reply = client.request(&get("/after")).await;
    assert_eq!(reply.echo()["uri"], "/after");
}
