//! An experiment, not a product: the leanest HTTP/1.1 keep-alive proxy on tokio that does what
//! Strait's default configuration does to a request, to see what the stack itself costs
//! above the relay's floor (docs/benchmarks.md, "The floor: a relay that knows no HTTP").
//!
//! Per request it parses the client's head (httparse, offsets into the read buffer, no header
//! map), matches its path against a table of three prefixes, adds `x-forwarded-for`,
//! `x-forwarded-proto` and a random `x-request-id`, writes the head to an upstream connection
//! taken from a pool, parses the response head, writes the response out as it came and gives
//! the connection back. The wait for a request head is bounded by an idle timeout, and the
//! upstream exchange by a request timeout, as Strait's are (so two timers a request). It counts
//! the request and its latency (a counter and a histogram of 16 buckets, as a metrics registry
//! would), so it reads the clock twice. It has no TLS, no retries and no error pages beyond a
//! bare 404: a request it cannot handle (a chunked body, a head over 16 KiB) ends the
//! connection.
//!
//! With `--bare` it keeps only the HTTP: no routing table, no timers, and an upstream
//! connection of each client connection's own instead of the pool.
//!
//! One thread (tokio's current-thread runtime, a `LocalSet`), as each target of the harness.
//!
//! Usage: `lean-proxy LISTEN_ADDR UPSTREAM_ADDR [--bare]` (runs until killed)

use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest head accepted, and the read buffers' starting size.
const MAX_HEAD: usize = 16 * 1024;
/// Strait's defaults: a listener's `idle_timeout` and a route's request `timeout`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The routing table: path prefixes, tried in order.
const ROUTES: [&[u8]; 3] = [b"/api/", b"/static/", b"/"];

/// What every connection shares.
struct Shared {
    upstream: SocketAddr,
    /// `--bare`: no routing, no timers, no pool.
    bare: bool,
    /// Idle upstream connections, taken for a request and given back after it.
    pool: RefCell<Vec<TcpStream>>,
    stats: Stats,
}

/// What a metrics registry would count, kept as cheaply as it can be.
#[derive(Default)]
struct Stats {
    requests: Cell<u64>,
    /// Latency histogram: bucket `i` counts latencies under `2^i` µs (the last, the rest).
    latency: [Cell<u64>; 16],
    /// xorshift64 state for request ids.
    rng: Cell<u64>,
}

impl Stats {
    fn observe(&self, since: Instant) {
        self.requests.set(self.requests.get() + 1);
        let us = since.elapsed().as_micros() as u64;
        let i = (64 - us.leading_zeros() as usize).min(15);
        self.latency[i].set(self.latency[i].get() + 1);
    }

    fn request_id(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }
}

/// A read buffer: `buf[start..end]` holds bytes read and not yet used.
struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    fn new() -> Self {
        Self {
            buf: vec![0; MAX_HEAD],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once more; `Ok(false)` at the end of the stream.
    async fn fill(&mut self, io: &mut TcpStream) -> io::Result<bool> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::new(ErrorKind::InvalidData, "head too large"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Reads until `n` bytes are buffered (for a body after its head).
    async fn fill_to(&mut self, io: &mut TcpStream, n: usize) -> io::Result<()> {
        if n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.resize(n, 0);
        }
        while self.data().len() < n {
            if !self.fill(io).await? {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// A head's length and its body's.
type Framing = (usize, usize);

/// A parsed head: its length, and its body's (`Content-Length`, 0 without one).
fn framing(headers: &[httparse::Header<'_>], head_len: usize) -> io::Result<Framing> {
    let mut body = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "bad content-length"))?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(ErrorKind::Unsupported, "chunked"));
        }
    }
    Ok((head_len, body))
}

fn parse_request(data: &[u8]) -> io::Result<Option<Framing>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(data);
    complete(status, req.headers)
}

fn parse_response(data: &[u8]) -> io::Result<Option<Framing>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let status = res.parse(data);
    complete(status, res.headers)
}

/// A head's framing once httparse has all of it; `None` while it is partial.
fn complete(
    status: httparse::Result<usize>,
    headers: &[httparse::Header<'_>],
) -> io::Result<Option<Framing>> {
    match status {
        Ok(httparse::Status::Complete(n)) => framing(headers, n).map(Some),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::new(ErrorKind::InvalidData, e)),
    }
}

/// The fields added to every request of a connection, up to the request id's value: the
/// client's address is the connection's, so this is written once per connection.
fn added_fields(peer: IpAddr) -> Vec<u8> {
    format!("x-forwarded-for: {peer}\r\nx-forwarded-proto: http\r\nx-request-id: ").into_bytes()
}

/// The request head as it came, with the added fields (`added`, then the id) before its end.
fn upstream_head(out: &mut Vec<u8>, head: &[u8], added: &[u8], id: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.clear();
    out.extend_from_slice(&head[..head.len() - 2]);
    out.extend_from_slice(added);
    out.extend((0..16).rev().map(|i| HEX[(id >> (4 * i)) as usize & 0xf]));
    out.extend_from_slice(b"\r\n\r\n");
}

/// The framing of the next head on `io`, parsed by `parse`; `None` once the peer has closed.
async fn read_head(
    buf: &mut InBuf,
    io: &mut TcpStream,
    parse: fn(&[u8]) -> io::Result<Option<Framing>>,
) -> io::Result<Option<Framing>> {
    loop {
        // An empty buffer has nothing to parse yet (a pipelined head would be there).
        if !buf.data().is_empty() {
            if let Some(framing) = parse(buf.data())? {
                return Ok(Some(framing));
            }
        }
        if !buf.fill(io).await? {
            return Ok(None);
        }
    }
}

/// The index of the first route whose prefix starts the request's path.
fn route(head: &[u8]) -> Option<usize> {
    let path = head.split(|&b| b == b' ').nth(1)?;
    ROUTES.iter().position(|prefix| path.starts_with(prefix))
}

/// Sends the request in `out` and passes the response on to the client as it came.
async fn exchange(
    conn: &mut TcpStream,
    out: &[u8],
    uin: &mut InBuf,
    client: &mut TcpStream,
) -> io::Result<()> {
    conn.write_all(out).await?;
    let (head, body) = read_head(uin, conn, parse_response)
        .await?
        .ok_or(ErrorKind::UnexpectedEof)?;
    uin.fill_to(conn, head + body).await?;
    client.write_all(&uin.data()[..head + body]).await?;
    uin.consume(head + body);
    Ok(())
}

async fn serve(mut client: TcpStream, peer: IpAddr, shared: Rc<Shared>) -> io::Result<()> {
    client.set_nodelay(true)?;
    let added = added_fields(peer);
    let mut own: Option<TcpStream> = None;
    let (mut cin, mut uin) = (InBuf::new(), InBuf::new());
    let mut out = Vec::with_capacity(1024);
    // Kept timers, as Strait keeps them: moving one to a later deadline only records it, so
    // tokio's timer wheel is touched once per timeout period, not once per request.
    let idle = tokio::time::sleep(IDLE_TIMEOUT);
    let limit = tokio::time::sleep(REQUEST_TIMEOUT);
    tokio::pin!(idle, limit);
    loop {
        let next = if shared.bare {
            read_head(&mut cin, &mut client, parse_request).await?
        } else {
            idle.as_mut()
                .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            tokio::select! {
                biased;
                next = read_head(&mut cin, &mut client, parse_request) => next?,
                () = &mut idle => return Err(ErrorKind::TimedOut.into()),
            }
        };
        let Some((head, body)) = next else {
            return Ok(());
        };
        let start = Instant::now();
        cin.fill_to(&mut client, head + body).await?;
        if !shared.bare && route(&cin.data()[..head]).is_none() {
            cin.consume(head + body);
            client
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        }
        upstream_head(
            &mut out,
            &cin.data()[..head],
            &added,
            shared.stats.request_id(),
        );
        out.extend_from_slice(&cin.data()[head..head + body]);
        cin.consume(head + body);
        let kept = if shared.bare {
            own.take()
        } else {
            shared.pool.borrow_mut().pop()
        };
        let mut conn = match kept {
            Some(conn) => conn,
            None => {
                let conn = TcpStream::connect(shared.upstream).await?;
                conn.set_nodelay(true)?;
                conn
            }
        };
        if shared.bare {
            exchange(&mut conn, &out, &mut uin, &mut client).await?;
            own = Some(conn);
        } else {
            limit
                .as_mut()
                .reset(tokio::time::Instant::from_std(start) + REQUEST_TIMEOUT);
            tokio::select! {
                biased;
                sent = exchange(&mut conn, &out, &mut uin, &mut client) => sent?,
                () = &mut limit => return Err(ErrorKind::TimedOut.into()),
            }
            shared.pool.borrow_mut().push(conn);
        }
        shared.stats.observe(start);
    }
}

fn main() {
    // `--bare` is taken off the command line before the two addresses are read.
    let bare = std::env::args().any(|a| a == "--bare");
    let (listen, upstream) = strait_benches::listen_and_upstream("lean-proxy", &["--bare"]);
    if let Err(e) = run(listen, upstream, bare) {
        eprintln!("lean-proxy: {e}");
        std::process::exit(1);
    }
}

fn run(listen: SocketAddr, upstream: SocketAddr, bare: bool) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        accept_loop(listener, upstream, bare).await
    })
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, bare: bool) -> io::Result<()> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
    let shared = Rc::new(Shared {
        upstream,
        bare,
        pool: RefCell::new(Vec::new()),
        stats: Stats {
            rng: Cell::new(seed | 1),
            ..Stats::default()
        },
    });
    loop {
        let (client, peer) = listener.accept().await?;
        let shared = Rc::clone(&shared);
        tokio::task::spawn_local(async move {
            // A connection that fails ends; the others go on.
            let _ = serve(client, peer.ip(), shared).await;
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_head_keeps_the_clients_and_adds_three_fields() {
        let mut out = Vec::new();
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let added = added_fields("10.0.0.1".parse().unwrap());
        upstream_head(&mut out, head, &added, 0xab);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-request-id: 00000000000000ab\r\n\r\n"
        );
    }

    #[test]
    fn heads_are_framed_by_content_length_and_chunked_is_refused() {
        let req = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parse_request(req).unwrap(), Some((38, 3)));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo").unwrap(), None);
        let res = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(res).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn paths_take_the_first_route_whose_prefix_they_start_with() {
        assert_eq!(route(b"GET /api/x HTTP/1.1\r\n\r\n"), Some(0));
        assert_eq!(route(b"GET /static/a.css HTTP/1.1\r\n\r\n"), Some(1));
        assert_eq!(route(b"GET /apis HTTP/1.1\r\n\r\n"), Some(2));
        assert_eq!(route(b"OPTIONS * HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn requests_go_through_and_keep_their_connection() {
        for bare in [false, true] {
            requests_go_through(bare);
        }
    }

    fn requests_go_through(bare: bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream = up.local_addr().unwrap();
            tokio::task::spawn_local(async move {
                let (mut s, _) = up.accept().await.unwrap();
                let mut buf = InBuf::new();
                for _ in 0..2 {
                    let (head, body) = loop {
                        if let Some(f) = parse_request(buf.data()).unwrap() {
                            break f;
                        }
                        assert!(buf.fill(&mut s).await.unwrap());
                    };
                    let text = String::from_utf8(buf.data()[..head].to_vec()).unwrap();
                    assert!(text.contains("x-forwarded-proto: http\r\n"), "{text}");
                    buf.fill_to(&mut s, head + body).await.unwrap();
                    buf.consume(head + body);
                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            });
            let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = proxy.local_addr().unwrap();
            tokio::task::spawn_local(accept_loop(proxy, upstream, bare));
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = InBuf::new();
            for req in [
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            ] {
                c.write_all(req).await.unwrap();
                let (head, body) = loop {
                    if let Some(f) = parse_response(got.data()).unwrap() {
                        break f;
                    }
                    assert!(got.fill(&mut c).await.unwrap());
                };
                got.fill_to(&mut c, head + body).await.unwrap();
                assert!(got.data()[..head + body].ends_with(b"\r\n\r\nok"));
                got.consume(head + body);
            }
        });
    }
}
