//! The HTTP/1.1 client for pooled upstream connections, driven from the request's own task.
//!
//! hyper's client runs each connection as a task of its own: a request crosses a channel to
//! it, the response head comes back over a oneshot and every body chunk over another channel,
//! so one small exchange woke three tasks and paid for two channels, an 8 KiB buffer
//! allocation and hyper's idle-connection bookkeeping. Here the task that owns the request
//! writes it and reads the answer itself: the request future polls the socket until the head
//! is in, the response body polls it until the last byte, and then the connection goes back
//! to the worker's idle list, untouched until the next request checks it out.
//!
//! The request body keeps streaming while the response is read (an upstream may answer before
//! the upload ends, or echo it as it comes); a connection goes back to the pool only when both
//! directions ended cleanly.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::http::body::{BodyError, RequestBody};
use crate::http::head1::{self, HeadError, Slots};
use crate::http::headers::{
    self, received, received_name, Appended, Known, HOP_CONNECTION, HOP_KEEP_ALIVE, HOP_TE,
    HOP_TRANSFER_ENCODING,
};
use crate::http::inbuf::{copied, Chunk, ChunkError, InBuf, MAX_HEAD};
use crate::http::pool::{Keep, PoolKey, UpstreamIo};
use crate::http::Rewound;
use crate::resilience::Admission;
use crate::telemetry::metrics::{Closed, EndpointCounters};

/// The most headers (or trailers) a response may carry.
const MAX_HEADERS: usize = 128;
/// Request bytes queued for the socket before the request body is no longer polled.
const WRITE_HIGH: usize = 64 * 1024;
/// The room a buffer that request heads are encoded into ([`encode`]) takes at a time.
const HEADS_CHUNK: usize = 16 * 1024;

/// What went wrong in an HTTP/1 exchange.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// The socket failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    /// The response is not valid HTTP/1.
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
    /// The response head is larger than the limit.
    #[error("upstream response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The request body failed while it was being sent.
    #[error("request body: {0}")]
    RequestBody(BodyError),
}

/// An idle or checked-out HTTP/1 connection to an endpoint.
#[derive(Debug)]
pub struct Conn1 {
    io: UpstreamIo,
    /// Bytes read and not consumed.
    rd: InBuf,
    /// Where a chunked request body's framing is encoded (heads are encoded before a
    /// connection is picked: see [`encode`]).
    scratch: BytesMut,
    /// Request bytes not yet written.
    out: Outbox,
    /// The endpoint, and the TLS it was opened with: where it goes back in the pool.
    key: PoolKey,
    keep: Keep,
    /// When it was opened (for the cluster's `max_connection_duration`).
    pub(crate) opened: Instant,
    /// Requests answered on it (for the cluster's `max_requests_per_connection`).
    served: u32,
    /// Its endpoint's counters, where its closing is counted.
    counters: Option<Arc<EndpointCounters>>,
    /// Since when it waits in the pool, as a sweep first saw it there
    /// ([`crate::http::pool::Pool::sweep`]).
    pub(crate) idle_since: Option<Instant>,
    /// How long the upstream keeps it idle, as its last answer that said so said
    /// (`Keep-Alive: timeout=N`).
    pub(crate) upstream_idle_timeout: Option<Duration>,
    /// When, idle in the pool, it is retired: a little before the upstream's own idle timeout,
    /// so that no request goes on it as the upstream closes it.
    pub(crate) retire_at: Option<Instant>,
    /// Whether this connection served an earlier request (a failure to send on it may just mean
    /// the upstream closed it while idle, and the request can go on a new one).
    pub reused: bool,
    /// The cluster's connection slot, held while the connection is open.
    _slot: Admission,
}

impl Conn1 {
    /// A fresh connection over `io`.
    pub(crate) fn new(
        io: UpstreamIo,
        key: PoolKey,
        keep: Keep,
        slot: Admission,
        counters: Option<Arc<EndpointCounters>>,
    ) -> Box<Self> {
        Box::new(Conn1 {
            io,
            rd: InBuf::default(),
            scratch: BytesMut::new(),
            out: Outbox::default(),
            key,
            keep,
            opened: Instant::now(),
            served: 0,
            counters,
            idle_since: None,
            upstream_idle_timeout: None,
            retire_at: None,
            reused: false,
            _slot: slot,
        })
    }

    /// The endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.key.addr
    }

    /// Where the connection goes back in the pool.
    pub(crate) fn key(&self) -> PoolKey {
        self.key
    }

    /// Counts the connection's closing, for `why`.
    pub(crate) fn count_closed(&self, why: Closed) {
        if let Some(c) = &self.counters {
            c.closed(why);
        }
    }

    /// How this connection's cluster keeps its idle connections.
    pub(crate) fn keep(&self) -> Keep {
        self.keep
    }

    /// True when an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything since the last response. Costs no system call unless the socket
    /// became readable.
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.rd.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        match &mut self.io {
            UpstreamIo::Plain(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readiness may be stale: only a read that would block says the peer is quiet.
                Poll::Ready(Ok(())) => {
                    matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // TLS: records such as session tickets may arrive while idle; rustls takes them.
            UpstreamIo::Tls(s) => {
                let mut rb = ReadBuf::new(&mut probe);
                Pin::new(s).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }

    /// Up to `max` bytes of a body whose framing says at least one more is due.
    fn poll_body(&mut self, cx: &mut Context<'_>, max: u64) -> Poll<Result<Bytes, Http1Error>> {
        match ready!(self.rd.poll_body(&mut self.io, cx, max)) {
            Ok(data) if data.is_empty() => Poll::Ready(Err(Http1Error::Closed)),
            Ok(data) => Poll::Ready(Ok(data)),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `content-length`: this many bytes are still to come.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Request bytes waiting for the socket: the head, then the body as it streams, written with
/// vectored writes. It lives in the connection so that its room is reused request after
/// request.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The request's head once it was written whole: kept rather than dropped then (it is
    /// dropped once the answer's head came), so a request the upstream took on a connection it
    /// had just closed can go again on another (see [`Encoded::resendable`]). No second
    /// reference is taken: a clone cost ~30 instructions a request more than this.
    sent: Option<Bytes>,
    /// The front of the queue is the request's head.
    head_front: bool,
}

impl Outbox {
    /// Queues a request's head as the only thing queued. A connection comes back only after
    /// its request was written whole, so nothing is; the queue is cleared all the same,
    /// keeping its room.
    fn start(&mut self, head: Bytes) {
        self.queue.clear();
        self.queued = 0;
        self.sent = None;
        self.head_front = !head.is_empty();
        self.push(head);
    }

    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.queued += chunk.len();
            self.queue.push_back(chunk);
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n < front.len() {
                let _ = front.split_to(n);
                // Part of the head went: it is no longer whole.
                self.head_front = false;
                return;
            }
            n -= front.len();
            let written = self.queue.pop_front();
            if std::mem::take(&mut self.head_front) {
                self.sent = written;
            }
        }
    }
}

/// The request going out: its body and how it is framed.
#[derive(Debug)]
struct Writer {
    /// `None` once the body ended, or from the start for one that had (a GET's); boxed (see
    /// [`RequestBody::boxed`]).
    body: Option<Box<RequestBody>>,
    framing: Framing,
    /// Whether any byte of the request reached the socket.
    wrote: bool,
}

impl Writer {
    /// True once the whole request is on the wire.
    fn done(&self, conn: &Conn1) -> bool {
        self.body.is_none() && conn.out.queue.is_empty()
    }

    /// Moves the request forward as far as it can without waiting: body frames into the
    /// queue, the queue into the socket. `Ready(Ok)` once the whole request is written.
    fn poll(&mut self, conn: &mut Conn1, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        loop {
            let mut body_pending = false;
            while conn.out.queued < WRITE_HIGH {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body.as_mut()).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        return Poll::Ready(Err(Http1Error::RequestBody(e)));
                    }
                    Poll::Ready(Some(Ok(frame))) => self.encode_frame(conn, frame)?,
                    Poll::Ready(None) => self.finish(conn)?,
                }
            }
            if conn.out.queue.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    debug_assert!(body_pending);
                    Poll::Pending
                };
            }
            let mut slices = [IoSlice::new(&[]); 8];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(&conn.out.queue) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            let written =
                crate::http::poll_write_slices(Pin::new(&mut conn.io), cx, &slices[..count]);
            let n = match written {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()))
                }
                Poll::Ready(Ok(n)) => n,
            };
            self.wrote = true;
            conn.out.advance(n);
        }
    }

    fn encode_frame(&mut self, conn: &mut Conn1, frame: Frame<Bytes>) -> Result<(), Http1Error> {
        let frame = match frame.into_data() {
            Ok(data) => return self.encode_data(conn, data),
            Err(frame) => frame,
        };
        let Ok(trailers) = frame.into_trailers() else {
            return Ok(());
        };
        // Trailers end the body; only chunked encoding can carry them.
        if let Framing::Chunked = self.framing {
            let s = &mut conn.scratch;
            s.put_slice(b"0\r\n");
            for (name, value) in &trailers {
                put_field(s, name.as_str().as_bytes(), value.as_bytes());
            }
            s.put_slice(b"\r\n");
            conn.out.push(s.split().freeze());
            self.body = None;
            return Ok(());
        }
        self.finish(conn)
    }

    fn encode_data(&mut self, conn: &mut Conn1, data: Bytes) -> Result<(), Http1Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(Http1Error::RequestBody(
                        "request body longer than its content-length".into(),
                    ));
                }
                *left -= data.len() as u64;
                conn.out.push(data);
            }
            Framing::Chunked => {
                let s = &mut conn.scratch;
                // Room for many chunks' sizes (a connection's own buffer: a small chunk).
                room(s, 32, 512);
                put_hex(s, data.len());
                s.put_slice(b"\r\n");
                conn.out.push(s.split().freeze());
                conn.out.push(data);
                conn.out.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn finish(&mut self, conn: &mut Conn1) -> Result<(), Http1Error> {
        self.body = None;
        match self.framing {
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(Http1Error::RequestBody(
                "request body shorter than its content-length".into(),
            )),
            Framing::Chunked => {
                conn.out.push(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
        }
    }
}

/// Room for `need` more bytes in `s`, a buffer whose pieces are split off and sent (request
/// heads, a chunked body's size lines), made `chunk` bytes at a time: the buffer is taken back
/// (or a new one made, while a piece still holds it) once per chunk rather than once per piece
/// (~60 instructions). Growing it by what each write needed made, while a piece sent earlier
/// still held it, a new buffer of just that size at every write past the chunk's end, each a
/// copy of the piece so far: ~450 instructions a write, ~1,100 a request of ten fields from
/// HTTP/2; and a new buffer for every chunk of a chunked body.
#[inline]
fn room(s: &mut BytesMut, need: usize, chunk: usize) {
    if s.capacity() - s.len() < need {
        s.reserve(need.max(chunk));
    }
}

/// Writes `name: value` and its line end.
pub(crate) fn put_field(s: &mut BytesMut, name: &[u8], value: &[u8]) {
    s.put_slice(name);
    s.put_slice(b": ");
    s.put_slice(value);
    s.put_slice(b"\r\n");
}

pub(crate) fn put_hex(s: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    s.put_slice(&digits[i..]);
}

/// Why a request could not be sent: the error, and the request itself when none of it reached
/// a reused connection (the upstream had closed it while idle; it can go on a new one).
#[derive(Debug)]
pub struct SendFailed {
    /// What went wrong.
    pub error: Http1Error,
    /// The untouched request, when it may be sent again ([`send`] on another connection).
    pub unsent: Option<Encoded>,
}

/// A request encoded for the wire ([`encode`]): its head's bytes and its body, untouched. It is
/// what [`send`] writes, and what a reused connection that took none of it gives back, to go
/// again as it is on another one.
#[derive(Debug)]
pub struct Encoded {
    head: Bytes,
    writer: Writer,
    head_only: bool,
    /// Idempotent (RFC 9110 9.2.2) and without a body: sent whole on a reused connection that
    /// then failed before any byte of an answer (the upstream closed it as it came), it may go
    /// again on a new one, as nginx and hyper's client resend it. Without this, a request
    /// that met an upstream's keep-alive close got 502.
    resendable: bool,
}

/// Sends an encoded request on `conn` and reads the response head. The returned body streams
/// the rest of the response (and of the request body), and hands the connection back for
/// reuse when both ended cleanly. `upgrade`: the request asks to switch protocols; a 101 answer
/// then leaves the connection in the body, to be taken with [`Body1::into_upgraded`].
/// `keep_raw`: the response's fields may be kept as they came (see [`RawHead`]); its
/// `HeaderMap` then holds none of them.
pub fn send(
    mut conn: Box<Conn1>,
    request: Encoded,
    upgrade: bool,
    keep_raw: bool,
) -> impl std::future::Future<Output = Result<Response<Body1>, SendFailed>> {
    let Encoded {
        head,
        writer,
        head_only,
        resendable,
    } = request;
    conn.out.start(head);
    exchange(conn, writer, upgrade, keep_raw, head_only, resendable)
}

/// Writes the request queued on `conn` (its head, then `writer`'s body) and reads the answer's
/// head. The future holds no more of the request than its body: the head is bytes in the
/// connection's queue, taken back from there if the request must go again (or from
/// `Outbox::sent` once written, for one that may go again then: [`Encoded::resendable`]).
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments and its locals apart
fn exchange(
    mut conn: Box<Conn1>,
    mut writer: Writer,
    upgrade: bool,
    keep_raw: bool,
    head_only: bool,
    resendable: bool,
) -> impl std::future::Future<Output = Result<Response<Body1>, SendFailed>> {
    async move {
        let polled = std::future::poll_fn(|cx| {
            if !writer.done(&conn) {
                if let Poll::Ready(Err(e)) = writer.poll(&mut conn, cx) {
                    return Poll::Ready(Err(e));
                }
            }
            poll_head(&mut conn, keep_raw, cx)
        })
        .await;
        let head = match polled {
            Ok(head) => {
                // Answered: the head need not go again (dropped now, so its buffer may be
                // reused).
                conn.out.sent = None;
                if head.upstream_idle_secs != NOT_ANNOUNCED {
                    let secs = u64::from(head.upstream_idle_secs);
                    conn.upstream_idle_timeout = Some(Duration::from_secs(secs));
                }
                head
            }
            Err(error) => {
                // Only the head queued and none of it written: the body was not touched, and the
                // request can go again as it came. Or one that may go again was written whole
                // and met the connection's close before any answer. Not when the client's body
                // failed: its first read did, before any byte was written, and the writer has
                // let go of it. Sent again, the head went with no body after it, and the
                // upstream waited for one until the route's timeout (a 504 for the client's
                // malformed chunked body, on a reused connection).
                let untouched = conn.reused
                    && !writer.wrote
                    && conn.out.queue.len() == 1
                    && !matches!(error, Http1Error::RequestBody(_));
                let head = if untouched {
                    conn.out.queue.pop_front()
                } else if conn.reused && resendable && conn.rd.is_empty() && closed(&error) {
                    conn.out.sent.take()
                } else {
                    None
                };
                let unsent = head.map(|head| Encoded {
                    head,
                    writer,
                    head_only,
                    resendable,
                });
                return Err(SendFailed { error, unsent });
            }
        };
        let writer = (!writer.done(&conn)).then(|| Box::new(writer));
        let state = if head.status == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Err(SendFailed {
                    error: Http1Error::Invalid("101 to a request that asked for no upgrade"),
                    unsent: None,
                });
            }
            State::Upgraded
        } else if head_only
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            State::Done
        } else {
            match head.framing {
                BodyFraming::Length(0) => State::Done,
                BodyFraming::Length(n) => State::Length(n),
                BodyFraming::Chunked => State::Chunk(Chunk::START),
                BodyFraming::UntilClose => State::UntilClose,
            }
        };
        // A body read until close ends with the connection; one with no body at all (HEAD, 204,
        // 304) leaves it reusable whatever its framing headers said.
        let body = Body1 {
            conn: Some(conn),
            writer,
            state,
            keep_alive: head.keep_alive,
            end_to_end_head: head.end_to_end,
            raw: head.raw,
        };
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        headers::put_map(response.headers_mut(), head.headers);
        Ok(response)
    }
}

/// Encodes a request's head into `s`, from where it is split off, and keeps its body to stream.
/// `appended`: fields written into the head after the request's headers (which then have none
/// of them), rather than made header values and inserted first.
///
/// The head is encoded before a connection is picked and before the future that sends it
/// exists: that future then holds the head's bytes, not the request's parts (~220 bytes, moved
/// with every future around it).
pub fn encode(
    s: &mut BytesMut,
    parts: &http::request::Parts,
    body: Option<Box<RequestBody>>,
    appended: Appended<'_>,
) -> Encoded {
    let target = if parts.method == Method::CONNECT {
        parts.uri.authority().map_or("", |a| a.as_str())
    } else {
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    };
    // Room for the request line, the fields kept as they came and what the proxy adds.
    let kept = appended.received.map_or(0, RawHead::written_at_most);
    room(s, target.len() + kept + 512, HEADS_CHUNK);
    s.put_slice(parts.method.as_str().as_bytes());
    s.put_u8(b' ');
    s.put_slice(target.as_bytes());
    s.put_slice(b" HTTP/1.1\r\n");
    // (The gateway sends origin-form targets with `host` set: the lookup is skipped then.)
    if let Some(authority) = parts.uri.authority() {
        if !parts.headers.contains_key(header::HOST) {
            put_field(s, b"host", authority.as_str().as_bytes());
        }
    }
    // The length the request declared (its first `content-length`), found on the way rather
    // than looked up.
    let mut declared = None;
    let mut length_seen = false;
    if let Some(received) = appended.received {
        // The request's own fields as they came; its length is written below, with framing.
        received.write_fields(s, true);
        if let Some((_, n)) = received.content_length() {
            declared = Some(n);
            length_seen = true;
        }
    }
    let mut te = false;
    for (name, value) in &parts.headers {
        // Framing is this hop's own: written below from what the body is.
        if name == header::CONTENT_LENGTH {
            if !length_seen {
                length_seen = true;
                declared = content_length(value.as_bytes());
            }
        } else if name != header::TRANSFER_ENCODING {
            te |= name == header::TE;
            let name = name.as_str().as_bytes();
            // (Leaving the room for what the proxy adds.)
            room(s, name.len() + value.len() + 4 + 512, HEADS_CHUNK);
            put_field(s, name, value.as_bytes());
        }
    }
    if te {
        // `te` is this hop's own too: its sender names it in `connection` (RFC 9110, 10.1.4),
        // so that an intermediary that does not know it drops it rather than passing it on.
        // (A second `connection` line beside an upgrade's adds to it.)
        put_field(s, b"connection", b"te");
    }
    appended.write_lines(s);
    let empty = body.as_ref().is_none_or(|b| b.is_end_stream());
    let exact = body.as_ref().map_or(Some(0), |b| b.size_hint().exact());
    let framing = match (declared, exact) {
        (Some(n), _) | (None, Some(n)) if !empty || declared.is_some() => {
            if n > 0 || declared.is_some() || !matches!(parts.method, Method::GET | Method::HEAD) {
                put_field(
                    s,
                    b"content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
            }
            Framing::Length(n)
        }
        _ if empty => Framing::Length(0),
        _ => {
            put_field(s, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    s.put_slice(b"\r\n");
    Encoded {
        head: s.split().freeze(),
        writer: Writer {
            body: body.filter(|_| !empty),
            framing,
            wrote: false,
        },
        head_only: parts.method == Method::HEAD,
        resendable: empty && parts.method.is_idempotent(),
    }
}

/// Whether `error` says the upstream closed or reset the connection.
fn closed(error: &Http1Error) -> bool {
    match error {
        Http1Error::Closed => true,
        Http1Error::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A `content-length` value: digits only (RFC 9110: `1*DIGIT`), around them optional spaces;
/// `None` for anything else or a number past `u64`.
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
    /// How long the upstream keeps the connection idle, in seconds, when it said
    /// (`Keep-Alive: timeout=`); [`NOT_ANNOUNCED`] when it did not. Two bytes, in the room the
    /// other small fields leave: a larger head (an `Option<Duration>`, 16 bytes) cost ~125
    /// instructions a request in moves.
    upstream_idle_secs: u16,
    /// `headers` holds no hop-by-hop header: [`parse_head`] left them out.
    end_to_end: bool,
    /// The fields kept as they came, when they were not built into `headers`.
    raw: Option<Box<RawHead>>,
}

/// A response head's fields kept as they came rather than built into a `HeaderMap`: for an
/// answer that goes to an HTTP/1 client with no header of it read or changed on the way, whose
/// head `server1` then writes by copying these fields. Building the map cost ~250 instructions
/// a field (the name hashed, the value's bytes shared and checked, the entry inserted, then
/// iterated, dropped and the map recycled) to write the same bytes out again.
///
/// Only end-to-end fields are here: the hop-by-hop ones were left out as for the map. Names
/// keep the case the upstream gave them, as nginx passes them on.
#[derive(Debug)]
pub struct RawHead {
    /// The head's bytes; the fields' offsets point into it.
    block: Bytes,
    fields: [head1::Field; RAW_FIELDS],
    count: u8,
    /// The kept `content-length` field (the first; later ones, equal to it, were dropped).
    length: Option<(u8, u64)>,
    /// A `date` field is among them.
    date: bool,
}

/// The most fields a [`RawHead`] keeps; a head with more is built into a map.
pub(crate) const RAW_FIELDS: usize = 16;

impl RawHead {
    pub(crate) fn new(block: Bytes) -> Box<Self> {
        Box::new(RawHead {
            block,
            fields: [head1::Field::default(); RAW_FIELDS],
            count: 0,
            length: None,
            date: false,
        })
    }

    /// Keeps `field` (of the block); `length`: the value it declares when it is a
    /// `content-length`. A later `content-length` (equal to the first: the caller checked) is
    /// dropped, one being written. False when no room is left: the head must be built into a
    /// map.
    pub(crate) fn keep(&mut self, field: head1::Field, length: Option<u64>) -> bool {
        if length.is_some() && self.length.is_some() {
            return true;
        }
        let at = self.count;
        let Some(slot) = self.fields.get_mut(usize::from(at)) else {
            return false;
        };
        *slot = field;
        self.count += 1;
        if let Some(n) = length {
            self.length = Some((at, n));
        }
        true
    }

    /// The fields in a map taken with room for `room` fields.
    pub(crate) fn to_map(&self, room: usize) -> HeaderMap {
        let mut map = headers::take_map(room);
        self.append_to(&mut map);
        map
    }

    /// The kept fields' offsets into the block.
    fn kept(&self) -> &[head1::Field] {
        self.fields
            .get(..usize::from(self.count))
            .unwrap_or_default()
    }

    /// Each field's name (as received) and value.
    #[cfg(test)]
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.kept().iter().map(|f| {
            (
                self.block.get(f.name()).unwrap_or_default(),
                self.block.get(f.value()).unwrap_or_default(),
            )
        })
    }

    /// Writes the fields into `s` as `name: value` lines ending in CRLF. Lines that came so, one
    /// after the other with CRLF between them, are copied as one: nginx's answers then take one
    /// copy for all but their `connection`, where writing each field's name, separator, value
    /// and line end cost ~4 copies a field. `skip_length`: the kept `content-length` is left out.
    pub fn write_fields(&self, s: &mut BytesMut, skip_length: bool) {
        let skip = self
            .length
            .filter(|_| skip_length)
            .map(|(at, _)| usize::from(at));
        let fields = self.kept();
        let block = &self.block[..];
        let put_lines = |s: &mut BytesMut, (at, end): (usize, usize)| {
            s.put_slice(block.get(at..end).unwrap_or_default());
            s.put_slice(b"\r\n");
        };
        // The lines not yet written: from the first's name to the last's value.
        let mut lines: Option<(usize, usize)> = None;
        for (i, f) in fields.iter().enumerate() {
            let (at, end) = (f.name().start, f.value().end);
            let skipped = skip == Some(i);
            // (The name ends at the colon, as the parser found it.)
            let spaced =
                f.value().start == f.name().end + 2 && block.get(f.name().end + 1) == Some(&b' ');
            let follows =
                lines.is_some_and(|(_, last)| block.get(last..at) == Some(b"\r\n".as_slice()));
            if spaced && !skipped && follows {
                lines = lines.map(|(first, _)| (first, end));
                continue;
            }
            if let Some(done) = lines.take() {
                put_lines(s, done);
            }
            if skipped {
                continue;
            }
            if spaced {
                lines = Some((at, end));
            } else {
                // Another separator (none, a tab, more spaces): written as `name: value`.
                let name = block.get(f.name()).unwrap_or_default();
                put_field(s, name, block.get(f.value()).unwrap_or_default());
            }
        }
        if let Some(done) = lines {
            put_lines(s, done);
        }
    }

    /// The declared length and the index of its field among [`RawHead::fields`].
    pub fn content_length(&self) -> Option<(usize, u64)> {
        self.length.map(|(at, n)| (usize::from(at), n))
    }

    /// Whether a `date` field is among the fields.
    pub fn has_date(&self) -> bool {
        self.date
    }

    /// The most bytes [`RawHead::write_fields`] writes: the head they came in.
    pub fn written_at_most(&self) -> usize {
        self.block.len()
    }

    /// Appends the fields to `map`, in order.
    fn append_to(&self, map: &mut HeaderMap) {
        for f in self.kept() {
            // Both were checked as the head was parsed (the value by `head1`), as the map would
            // have: neither fails.
            let name = received_name(self.block.get(f.name()).unwrap_or_default());
            let value = HeaderValue::from_maybe_shared(self.block.slice(f.value()));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }

    /// Puts the fields into `map` ahead of those it holds (added to the response since).
    pub fn fill(&self, map: &mut HeaderMap) {
        if map.is_empty() {
            self.append_to(map);
            return;
        }
        let added = std::mem::replace(map, headers::take_map(usize::from(self.count) + map.len()));
        self.append_to(map);
        let mut last = None;
        for (name, value) in added {
            // `None`: another value of the name before it.
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                map.append(name.clone(), value);
            }
        }
    }
}

/// Reads until a final (non-1xx, or 101) response head is in, and parses it.
fn poll_head(
    conn: &mut Conn1,
    keep_raw: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, Http1Error>> {
    loop {
        if !conn.rd.is_empty() {
            if let Some((head, len)) = parse_head(conn.rd.buffered(), keep_raw)? {
                conn.rd.consume(len);
                let interim = head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS;
                if !interim {
                    return Poll::Ready(Ok(head));
                }
                continue;
            }
            if conn.rd.buffered().len() >= MAX_HEAD {
                return Poll::Ready(Err(Http1Error::HeadTooLarge));
            }
        }
        let had = conn.rd.buffered().len();
        match ready!(conn.rd.poll_fill(&mut conn.io, cx)) {
            Ok(0) if had == 0 => return Poll::Ready(Err(Http1Error::Closed)),
            Ok(0) => return Poll::Ready(Err(Http1Error::Invalid("response head cut short"))),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// Parses a response head at the start of `bytes`: `None` until it is complete. `keep_raw`:
/// the fields may be kept as they came (see [`RawHead`]) rather than built into a map.
fn parse_head(bytes: &[u8], keep_raw: bool) -> Result<Option<(Head, usize)>, Http1Error> {
    let mut slots = Slots::new();
    let line = match slots.parse(bytes, MAX_HEADERS, head1::parse_response) {
        Ok(Some(line)) => line,
        Ok(None) => return Ok(None),
        Err(HeadError::TooManyFields) => {
            return Err(Http1Error::Invalid("more than 128 response headers"))
        }
        Err(HeadError::Malformed) => return Err(Http1Error::Invalid("malformed response head")),
    };
    let status =
        StatusCode::from_u16(line.code).map_err(|_| Http1Error::Invalid("bad status code"))?;
    let version = match line.minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Header values are slices of one copy of the head: one allocation, not one per value.
    let block = copied(bytes.get(..line.len).unwrap_or_default());
    // Not for a 101: its hop-by-hop headers stay, for the tunnel's answer.
    let mut raw = (keep_raw && status != StatusCode::SWITCHING_PROTOCOLS && line.fields > 0)
        .then(|| RawHead::new(block.clone()));
    let mut headers = match raw {
        Some(_) => HeaderMap::new(),
        None => headers::take_map(line.fields),
    };
    let mut length: Option<u64> = None;
    // `chunked` codings named in `transfer-encoding`, and whether any other was.
    let mut chunked = 0u32;
    let mut other_coding = false;
    let mut encoded = false;
    let mut close = version == Version::HTTP_10;
    let mut upstream_idle_secs = NOT_ANNOUNCED;
    // Hop-by-hop headers are this hop's own: left out here, as they are read, rather than
    // inserted and then found and removed (which cost a pass over the map and a hashed removal
    // per response). A 101 keeps them for the tunnel's answer; a `connection` that names other
    // headers is kept for `strip_hop_by_hop`, which removes those too.
    let strip = status != StatusCode::SWITCHING_PROTOCOLS;
    let mut end_to_end = strip;
    for field in slots.fields(line.fields) {
        // In range: the parser's offsets lie within the head.
        let raw_value = bytes.get(field.value()).unwrap_or_default();
        let headers::Received {
            name, hop, known, ..
        } = received(bytes.get(field.name()).unwrap_or_default())
            .map_err(|_| Http1Error::Invalid("bad header name"))?;
        // The parse checked the value as `HeaderValue` does (see `head1`): a kept field's is
        // not checked again, and one built for the map (or when the fields spill there) does
        // not fail.
        let value = || HeaderValue::from_maybe_shared(block.slice(field.value()));
        // Whether this `connection` names other headers (beyond `keep-alive` and `close`).
        let mut names_others = false;
        if known == Known::ContentLength {
            let n = content_length(raw_value).ok_or(Http1Error::Invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::Invalid("conflicting content-length"));
            }
            // One length goes on, and none with a 204 (RFC 9110 8.6): an HTTP/2 client
            // refuses the stream for either.
            let passed_on = length.is_none() && status != StatusCode::NO_CONTENT;
            length = Some(n);
            if !passed_on {
                continue;
            }
        } else if hop != 0 {
            // Most fields are no hop's own: settled by the one test above.
            match hop {
                HOP_TRANSFER_ENCODING => {
                    encoded = true;
                    for coding in raw_value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if coding.eq_ignore_ascii_case(b"chunked") {
                            chunked += 1;
                        } else if !coding.is_empty() {
                            other_coding = true;
                        }
                    }
                }
                // The usual value, settled without splitting it.
                HOP_CONNECTION if raw_value == b"keep-alive" => close = false,
                HOP_CONNECTION => {
                    for token in raw_value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            close = false;
                        } else {
                            names_others = true;
                        }
                    }
                }
                HOP_KEEP_ALIVE => {
                    upstream_idle_secs = keep_alive_timeout(raw_value).unwrap_or(NOT_ANNOUNCED);
                }
                _ => {}
            }
        }
        if strip && hop != 0 {
            match hop {
                HOP_CONNECTION if names_others => end_to_end = false,
                // `te: trailers` is the one value `strip_hop_by_hop` lets through.
                HOP_TE if raw_value.eq_ignore_ascii_case(b"trailers") => {}
                _ => continue,
            }
        }
        if let Some(kept) = raw.as_mut() {
            // A gRPC answer's head is read on the way (its status), so it is built into a map.
            let grpc = known == Known::ContentType && headers::is_grpc_content_type(raw_value);
            let declared = length.filter(|_| known == Known::ContentLength);
            if !grpc && kept.keep(*field, declared) {
                kept.date |= known == Known::Date;
                continue;
            }
            spill(&mut raw, &mut headers, line.fields);
        }
        if let Ok(value) = value() {
            headers.append(name, value);
        }
    }
    if !end_to_end {
        // `strip_hop_by_hop` removes what `connection` names: from a map.
        spill(&mut raw, &mut headers, line.fields);
    }
    let framing = match (encoded, length) {
        // Both framings: a response split or smuggled (RFC 9112 6.3). Passed on, its
        // `content-length` would go out beside a chunked body; nginx answers 502 too.
        (true, Some(_)) => {
            return Err(Http1Error::Invalid(
                "both transfer-encoding and content-length",
            ))
        }
        (true, None) if chunked == 1 && !other_coding => BodyFraming::Chunked,
        // Another coding (`gzip`, `gzip, chunked`), or `chunked` twice: the proxy decodes only
        // `chunked`, and `transfer-encoding` is this hop's own, so the body would reach the
        // client still coded with nothing to say so. nginx answers 502 too ("unknown
        // Transfer-Encoding"); so does the HTTP/1 server to such a request (501).
        (true, None) => {
            return Err(Http1Error::Invalid(
                "a transfer coding other than one chunked",
            ))
        }
        (false, Some(n)) => BodyFraming::Length(n),
        (false, None) => BodyFraming::UntilClose,
    };
    let keep_alive = !close;
    let head = Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
        upstream_idle_secs,
        end_to_end,
        raw,
    };
    Ok(Some((head, line.len)))
}

/// [`Head::upstream_idle_secs`] when the upstream announced no idle timeout.
const NOT_ANNOUNCED: u16 = u16::MAX;

/// The idle timeout a `Keep-Alive` value announces, in seconds (`timeout=5, max=100`: 5), as
/// Node.js, Apache and Tomcat send it; `None` when it names none, or not as a number of
/// seconds. Over 18 hours is taken as 18 hours: no limit that matters here. Out of line: inlined
/// into `parse_head`'s loop over the fields, it cost ~45 instructions a response that has no
/// `Keep-Alive` field.
#[inline(never)]
fn keep_alive_timeout(value: &[u8]) -> Option<u16> {
    value.split(|&b| b == b',').find_map(|param| {
        let (name, secs) = param.split_at(param.iter().position(|&b| b == b'=')?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let secs = secs.get(1..)?.trim_ascii();
        let secs = std::str::from_utf8(secs).ok()?.parse::<u32>().ok()?;
        Some(
            u16::try_from(secs)
                .unwrap_or(NOT_ANNOUNCED - 1)
                .min(NOT_ANNOUNCED - 1),
        )
    })
}

/// Puts the fields kept so far into a map taken for a head of `fields` fields: for a head
/// found, as it is parsed, to be one that must be a map after all.
fn spill(raw: &mut Option<Box<RawHead>>, headers: &mut HeaderMap, fields: usize) {
    if let Some(kept) = raw.take() {
        *headers = kept.to_map(fields);
    }
}

/// Reads `bytes` as an upstream's response head both ways the client can (its fields built into
/// a map, and kept as they came for an HTTP/1 client), and panics where they disagree: one
/// refusing what the other takes, another status, framing, keep-alive or announced idle
/// timeout, or other fields. A head kept as it came must also read back the same from the
/// lines [`RawHead::write_fields`] writes for the client, with and without its length. True
/// when the head was read whole. The fuzz target `http1_response` drives it with hostile bytes;
/// a unit test with mutated heads. An upstream is not always trusted: one that makes the two
/// disagree could make the proxy pass on a head other than the one it checked.
#[doc(hidden)]
pub fn check_response_heads(bytes: &[u8]) -> bool {
    let (built, kept) = match (parse_head(bytes, false), parse_head(bytes, true)) {
        (Err(_), Err(_)) | (Ok(None), Ok(None)) => return false,
        (Ok(Some((built, n))), Ok(Some((kept, m)))) => {
            assert_eq!(n, m, "head lengths differ: {bytes:?}");
            (built, kept)
        }
        (built, kept) => panic!(
            "{bytes:?}: built into a map {:?}, kept as it came {:?}",
            built.map(|h| h.map(|h| h.1)),
            kept.map(|h| h.map(|h| h.1))
        ),
    };
    assert!(
        built.raw.is_none(),
        "a head built into a map is kept as well"
    );
    let read = |h: &Head| {
        (
            h.status,
            h.version,
            h.framing,
            h.keep_alive,
            h.upstream_idle_secs,
            h.end_to_end,
        )
    };
    assert_eq!(read(&built), read(&kept), "{bytes:?}");
    // The map keeps a second, equal `content-length`; a kept head, one.
    let fields = |map: &HeaderMap| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = map
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        all.dedup();
        all
    };
    let expected = fields(&built.headers);
    let Some(raw) = kept.raw else {
        assert_eq!(fields(&kept.headers), expected, "{bytes:?}");
        return true;
    };
    assert!(
        kept.headers.is_empty(),
        "a kept head's fields are in a map too"
    );
    let mut filled = HeaderMap::new();
    raw.fill(&mut filled);
    assert_eq!(fields(&filled), expected, "{bytes:?}");
    for skip_length in [false, true] {
        let mut lines = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        raw.write_fields(&mut lines, skip_length);
        lines.put_slice(b"\r\n");
        let (again, len) = match parse_head(&lines, false) {
            Ok(Some(again)) => again,
            other => panic!(
                "{bytes:?}: the written fields {lines:?} read back as {:?}",
                other.map(|h| h.map(|h| h.1))
            ),
        };
        assert_eq!(
            len,
            lines.len(),
            "{bytes:?}: {lines:?} holds more than the head"
        );
        let mut want = expected.clone();
        if skip_length {
            want.retain(|(name, _)| name != "content-length");
        }
        assert_eq!(
            fields(&again.headers),
            want,
            "{bytes:?}: written as {lines:?}"
        );
    }
    true
}

/// Where a response body is.
#[derive(Debug)]
enum State {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunk(Chunk),
    /// Everything until the upstream closes.
    UntilClose,
    /// The body ended.
    Done,
    /// The exchange switched protocols; the connection waits to be taken.
    Upgraded,
    /// The exchange failed; the connection is gone.
    Failed,
}

/// A response body read straight off the upstream connection by whoever polls it.
#[derive(Debug)]
pub struct Body1 {
    conn: Option<Box<Conn1>>,
    /// The rest of the request, still being written.
    writer: Option<Box<Writer>>,
    state: State,
    keep_alive: bool,
    /// The response's head holds no hop-by-hop header (see [`parse_head`]).
    end_to_end_head: bool,
    /// The head's fields, when kept as they came: the response's map holds none of them.
    raw: Option<Box<RawHead>>,
}

impl Body1 {
    /// True when the response's head was read without its hop-by-hop headers: there is
    /// nothing for `strip_hop_by_hop` to do.
    pub fn end_to_end_head(&self) -> bool {
        self.end_to_end_head
    }

    /// The head's fields, when they were kept as they came.
    pub fn raw_head(&self) -> Option<&RawHead> {
        self.raw.as_deref()
    }

    /// The head's fields kept as they came, taken to be put into the response's map.
    pub fn take_raw_head(&mut self) -> Option<Box<RawHead>> {
        self.raw.take()
    }

    /// The connection, when the body ended cleanly and the connection can take another
    /// request.
    pub fn take_idle(&mut self) -> Option<Box<Conn1>> {
        if !matches!(self.state, State::Done) || self.writer.is_some() || !self.keep_alive {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.rd.is_empty() {
            // Bytes after the response: the upstream is out of step; the connection closes.
            return None;
        }
        conn.served = conn.served.saturating_add(1);
        if conn.keep.served_enough(conn.served) {
            conn.count_closed(Closed::MaxRequests);
            return None;
        }
        conn.reused = true;
        // An idle connection keeps its small buffer, not the room a large body was read into.
        conn.rd.drop_big();
        Some(conn)
    }

    /// The upgraded connection after a 101 answer, with the bytes already read past the head.
    pub fn into_upgraded(mut self) -> Option<Upgraded1> {
        if !matches!(self.state, State::Upgraded) {
            return None;
        }
        let conn = self.conn.take()?;
        let early = Bytes::copy_from_slice(conn.rd.buffered());
        Some(Rewound::new(conn.io, early))
    }

    fn fail(&mut self, e: impl Into<Http1Error>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = State::Failed;
        self.conn = None;
        self.writer = None;
        Poll::Ready(Some(Err(Box::new(e.into()))))
    }

    /// Moves the rest of the request forward; a failure there stops the request (the answer
    /// may still be fine: the upstream may have stopped reading because it answered).
    fn poll_writer(&mut self, cx: &mut Context<'_>) {
        let (Some(writer), Some(conn)) = (self.writer.as_mut(), self.conn.as_mut()) else {
            return;
        };
        match writer.poll(conn, cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => self.writer = None,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "request body stopped after the response began");
                // The request is cut short: the connection must not carry another.
                self.keep_alive = false;
                self.writer = None;
            }
        }
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (Some(conn), State::Chunk(chunk)) = (self.conn.as_mut(), &mut self.state) else {
            return Poll::Ready(None);
        };
        let frame = match ready!(conn.rd.poll_chunked(&mut conn.io, cx, chunk)) {
            Ok(frame) => frame,
            Err(ChunkError::Io(e)) => return self.fail(e),
            Err(ChunkError::Closed) => return self.fail(Http1Error::Closed),
            Err(ChunkError::Invalid(what)) => return self.fail(Http1Error::Invalid(what)),
        };
        if let Chunk::Ended = chunk {
            self.state = State::Done;
        }
        Poll::Ready(frame.map(Ok))
    }
}

impl Body for Body1 {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        this.poll_writer(cx);
        match &mut this.state {
            State::Done | State::Upgraded | State::Failed => Poll::Ready(None),
            State::Chunk(_) => this.poll_chunked(cx),
            State::Length(left) => {
                let left_now = *left;
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                let data = match ready!(conn.poll_body(cx, left_now)) {
                    Ok(data) => data,
                    Err(e) => return this.fail(e),
                };
                let left = left_now - data.len() as u64;
                this.state = if left == 0 {
                    State::Done
                } else {
                    State::Length(left)
                };
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            State::UntilClose => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                let data = if !conn.rd.is_empty() {
                    conn.rd.take(usize::MAX)
                } else {
                    match ready!(conn.rd.poll_read_big(&mut conn.io, cx, usize::MAX)) {
                        Ok(data) => data,
                        Err(e) => return this.fail(e),
                    }
                };
                if data.is_empty() {
                    this.state = State::Done;
                    this.conn = None;
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// An upstream connection that switched protocols: its byte stream, starting with what was
/// read past the 101 head.
pub type Upgraded1 = Rewound<UpstreamIo>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::resilience::{Breaker, Limit};
    use http::Request;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// An upstream that reads one request head, answers with `reply` written in pieces of
    /// `piece` bytes, and hands back what it read. It keeps the connection open unless
    /// `close`.
    async fn upstream(
        reply: &'static [u8],
        piece: usize,
        close: bool,
    ) -> (SocketAddr, tokio::task::JoinHandle<(Vec<u8>, TcpStream)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before its request head ended");
                got.extend_from_slice(&buf[..n]);
            }
            for part in reply.chunks(piece) {
                sock.write_all(part).await.unwrap();
                if piece < reply.len() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            if close {
                sock.shutdown().await.unwrap();
            }
            (got, sock)
        });
        (addr, task)
    }

    async fn conn(addr: SocketAddr) -> Box<Conn1> {
        let breaker = Arc::new(Breaker::new(10, 10, 10, 10, Arc::default()));
        let slot = breaker.admit(Limit::Connections).unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let keep = Keep {
            max_idle: 8,
            idle_timeout: None,
            max_requests: 0,
            max_age: None,
        };
        Conn1::new(
            UpstreamIo::Plain(stream),
            PoolKey::new(addr, None),
            keep,
            slot,
            None,
        )
    }

    /// `request` encoded as the gateway encodes it, with `appended` after its fields.
    fn encoded(request: Request<RequestBody>, appended: Appended<'_>) -> Encoded {
        let (parts, body) = request.into_parts();
        encode(&mut BytesMut::new(), &parts, body.boxed(), appended)
    }

    /// Sends `request` on a new connection to `addr`: no upgrade, nothing appended, the
    /// answer's head built into its map.
    async fn send_plain(
        addr: SocketAddr,
        request: Request<RequestBody>,
    ) -> Result<Response<Body1>, SendFailed> {
        let request = encoded(request, Appended::default());
        send(conn(addr).await, request, false, false).await
    }

    fn get(path: &str) -> Request<RequestBody> {
        Request::builder()
            .uri(path)
            .header("host", "svc")
            .body(RequestBody::empty())
            .unwrap()
    }

    async fn exchange(
        reply: &'static [u8],
        piece: usize,
        request: Request<RequestBody>,
    ) -> (Response<Body1>, Vec<u8>) {
        let (addr, server) = upstream(reply, piece, false).await;
        let response = send_plain(addr, request).await.unwrap();
        let (got, sock) = server.await.unwrap();
        // Keep the upstream's end open for as long as the test reads the answer.
        std::mem::forget(sock);
        (response, got)
    }

    #[test]
    fn heads_encoded_into_one_buffer_stay_whole_while_it_is_reused() {
        let mut s = BytesMut::new();
        let mut kept = Vec::new();
        for i in 0..500 {
            let path = format!("/{i}/{}", "x".repeat(i % 97));
            let mut request = get(&path);
            // Fields that end a chunk halfway through a head, some larger than a chunk.
            let big = "y".repeat((i * 131) % (HEADS_CHUNK + 4000));
            let fields: Vec<String> = (0..i % 4)
                .map(|n| format!("x-{n}: {}\r\n", &big[..big.len() >> n]))
                .collect();
            for n in 0..i % 4 {
                let value = HeaderValue::from_str(&big[..big.len() >> n]).unwrap();
                let name = http::HeaderName::try_from(format!("x-{n}")).unwrap();
                request.headers_mut().insert(name, value);
            }
            let want = format!(
                "GET {path} HTTP/1.1\r\nhost: svc\r\n{}\r\n",
                fields.concat()
            );
            let (parts, body) = request.into_parts();
            let head = encode(&mut s, &parts, body.boxed(), Appended::default()).head;
            // Some heads are held (a slow upstream's), most are written and dropped at once.
            if i % 7 == 0 {
                kept.push((want, head));
            } else {
                assert_eq!(head, want.as_bytes());
            }
        }
        for (want, head) in kept {
            assert_eq!(head, want.as_bytes());
        }
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+5",
            b"-1",
            b"1 2",
            b"0x10",
            b"5a",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_head_with_two_framings_two_lengths_or_a_coding_not_decoded_is_refused() {
        let refused = |text: &str| {
            for keep_raw in [false, true] {
                match parse_head(text.as_bytes(), keep_raw) {
                    Err(Http1Error::Invalid(_)) => {}
                    Err(other) => panic!("{text:?} (raw {keep_raw}): {other}"),
                    Ok(_) => panic!("{text:?} (raw {keep_raw}): accepted"),
                }
            }
        };
        for te in ["chunked", "gzip", "gzip, chunked"] {
            refused(&format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: {te}\r\n\r\n"
            ));
            refused(&format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\ncontent-length: 5\r\n\r\n"
            ));
        }
        refused("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n");
        // A coding the proxy does not decode would reach the client still applied, its
        // `transfer-encoding` (this hop's) gone.
        for te in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked\r\ntransfer-encoding: chunked",
            "gzip\r\ntransfer-encoding: chunked",
        ] {
            refused(&format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n"
            ));
        }
        for te in ["chunked", "Chunked", " chunked ", ", chunked"] {
            let head = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n");
            for keep_raw in [false, true] {
                let parsed = parse_head(head.as_bytes(), keep_raw);
                assert!(
                    matches!(
                        parsed,
                        Ok(Some((
                            Head {
                                framing: BodyFraming::Chunked,
                                ..
                            },
                            _
                        )))
                    ),
                    "{te:?}"
                );
            }
        }
        // The same length twice is one length.
        let twice = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            false,
        );
        assert!(matches!(
            twice,
            Ok(Some((
                Head {
                    framing: BodyFraming::Length(5),
                    ..
                },
                _
            )))
        ));
    }

    #[test]
    fn te_goes_upstream_named_in_connection() {
        let request = Request::builder()
            .uri("/")
            .header("host", "svc")
            .header("te", "trailers")
            .body(RequestBody::empty())
            .unwrap();
        let head = encoded(request, Appended::default()).head;
        assert_eq!(
            &head[..],
            b"GET / HTTP/1.1\r\nhost: svc\r\nte: trailers\r\nconnection: te\r\n\r\n"
        );
        let head = encoded(get("/"), Appended::default()).head;
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n");
    }

    #[test]
    fn an_announced_keep_alive_timeout_is_read() {
        let timeout = |text: &str| keep_alive_timeout(text.as_bytes());
        assert_eq!(timeout("timeout=5"), Some(5));
        assert_eq!(timeout("timeout=5, max=100"), Some(5));
        assert_eq!(timeout("max=100, Timeout = 20"), Some(20));
        assert_eq!(timeout("timeout=0"), Some(0));
        assert_eq!(timeout("timeout=99999999999"), None);
        assert_eq!(timeout("timeout=4294967295"), Some(65_534));
        assert_eq!(timeout("timeout=65535"), Some(65_534), "not taken for none");
        for none in [
            "",
            "max=5",
            "timeout",
            "timeout=",
            "timeout=-1",
            "timeout=5s",
            "5",
        ] {
            assert_eq!(timeout(none), None, "{none:?}");
        }
        let head = |text: &str| parse_head(text.as_bytes(), true).unwrap().unwrap().0;
        let announced =
            head("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(announced.upstream_idle_secs, 5);
        let silent = head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(silent.upstream_idle_secs, NOT_ANNOUNCED);
    }

    #[test]
    fn hop_by_hop_headers_are_left_out_of_the_parsed_head() {
        let head = |text: &str| parse_head(text.as_bytes(), false).unwrap().unwrap().0;
        let names =
            |h: &Head| -> Vec<String> { h.headers.keys().map(|n| n.as_str().to_owned()).collect() };

        let plain = head(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
             proxy-connection: keep-alive\r\nupgrade: h2c\r\nte: trailers\r\n\
             transfer-encoding: chunked\r\nproxy-authenticate: Basic\r\nx-a: b\r\n\r\n",
        );
        assert!(plain.end_to_end);
        assert_eq!(
            names(&plain),
            ["te", "x-a"],
            "only `te: trailers` and x-a stay"
        );
        assert!(
            matches!(plain.framing, BodyFraming::Chunked),
            "framing still read"
        );
        assert!(plain.keep_alive);
        let te_other = head("HTTP/1.1 200 OK\r\nte: gzip\r\ncontent-length: 0\r\n\r\n");
        assert!(te_other.end_to_end);
        assert_eq!(names(&te_other), ["content-length"]);

        // A `connection` naming another header is kept, so the named one goes too.
        let named = head(
            "HTTP/1.1 200 OK\r\nx-hop: 1\r\nconnection: close, x-hop\r\nkeep-alive: 1\r\n\r\n",
        );
        assert!(!named.end_to_end);
        assert!(!named.keep_alive);
        assert_eq!(names(&named), ["x-hop", "connection"]);
        let mut map = named.headers;
        crate::http::headers::strip_hop_by_hop(&mut map, false);
        assert!(map.is_empty());

        // A switch of protocols keeps its `connection` and `upgrade` for the tunnel's answer.
        let switched = head(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        );
        assert!(!switched.end_to_end);
        assert_eq!(names(&switched), ["connection", "upgrade"]);
    }

    /// The fields of a head as a map: built while parsing, or kept as they came and put into
    /// a map afterwards (holding `added`, fields the proxy added since).
    fn parsed_map(text: &str, keep_raw: bool, added: &[(&str, &str)]) -> (Head, Vec<String>) {
        let (mut head, _) = parse_head(text.as_bytes(), keep_raw).unwrap().unwrap();
        let mut map = std::mem::take(&mut head.headers);
        for (n, v) in added {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        if let Some(raw) = head.raw.take() {
            raw.fill(&mut map);
        }
        let mut fields = Vec::new();
        for name in map.keys() {
            for value in map.get_all(name) {
                fields.push(format!("{name}: {}", value.to_str().unwrap()));
            }
        }
        (head, fields)
    }

    #[test]
    fn a_head_kept_as_it_came_holds_what_the_map_would() {
        let heads = [
            // Kept: names in their case, hop-by-hop ones out, one content-length.
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 16:19:36 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\
             Keep-Alive: timeout=5\r\nx-a: 1\r\nX-A: 2\r\nte: trailers\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.0 404 Not Found\r\nx-tab:\tv\tw \r\n\r\n",
            // Built into a map: a gRPC answer, a `connection` naming a field, a 101, many fields.
            "HTTP/1.1 200 OK\r\nx-b: 1\r\ncontent-type: application/grpc-web\r\nx-c: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-hop: 1\r\nconnection: x-hop\r\nx-d: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: ws\r\n\r\n",
        ];
        let many: String = (0..RAW_FIELDS + 3)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        let kept = |text: &str| {
            parse_head(text.as_bytes(), true)
                .unwrap()
                .unwrap()
                .0
                .raw
                .is_some()
        };
        for (i, text) in heads.iter().copied().chain([many.as_str()]).enumerate() {
            let added = [("x-added", "yes"), ("x-a", "3")];
            let (built, expected) = parsed_map(text, false, &added);
            let (raw, got) = parsed_map(text, true, &added);
            // (Both drop the second, equal `content-length`.)
            assert_eq!(got, expected, "{text:?}");
            assert_eq!(
                (raw.end_to_end, raw.keep_alive),
                (built.end_to_end, built.keep_alive)
            );
            assert_eq!(kept(text), i < 3, "{text:?}");
        }

        let (head, _) = parse_head(heads[0].as_bytes(), true).unwrap().unwrap();
        let raw = head.raw.unwrap();
        assert!(head.headers.is_empty());
        let fields: Vec<String> = raw
            .fields()
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        assert_eq!(
            fields,
            [
                "Server: nginx",
                "Date: Fri, 04 Dec 2026 16:19:36 GMT",
                "Content-Type: text/plain",
                "Content-Length: 20",
                "x-a: 1",
                "X-A: 2",
                "te: trailers"
            ]
        );
        assert_eq!(raw.content_length(), Some((3, 20)));
        assert!(raw.has_date());
        // Refused as the map refuses them.
        for bad in ["x: a\x7fb", "x: a\x01", "x y: 1"] {
            let text = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
            assert!(parse_head(text.as_bytes(), true).is_err(), "{bad:?}");
            assert!(parse_head(text.as_bytes(), false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kept_fields_are_written_as_lines_ending_in_crlf() {
        let written = |text: &str, skip_length: bool| {
            let (head, _) = parse_head(text.as_bytes(), true).unwrap().unwrap();
            let mut s = BytesMut::new();
            head.raw.unwrap().write_fields(&mut s, skip_length);
            String::from_utf8(s.to_vec()).unwrap()
        };
        let nginx = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 16:19:36 GMT\r\n\
                     Content-Length: 20\r\nConnection: keep-alive\r\nx-a: 1\r\n\r\n";
        assert_eq!(
            written(nginx, false),
            "Server: nginx\r\nDate: Fri, 04 Dec 2026 16:19:36 GMT\r\nContent-Length: 20\r\n\
             x-a: 1\r\n"
        );
        assert_eq!(
            written(nginx, true),
            "Server: nginx\r\nDate: Fri, 04 Dec 2026 16:19:36 GMT\r\nx-a: 1\r\n"
        );
        // Bare line feeds, other separators and trailing whitespace end a run; such a line is
        // written as `name: value` and CRLF.
        let odd = "HTTP/1.1 200 OK\nx-a:1\nx-b:\t 2 \t\r\nx-c: \r\nx-d: 4\ny: 5\r\n\r\n";
        assert_eq!(
            written(odd, false),
            "x-a: 1\r\nx-b: 2\r\nx-c: \r\nx-d: 4\r\ny: 5\r\n"
        );
        // A second, equal length is dropped whether or not the first is written.
        let two = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx: 1\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(written(two, false), "content-length: 3\r\nx: 1\r\n");
        assert_eq!(written(two, true), "x: 1\r\n");
    }

    #[test]
    fn mutated_heads_kept_as_they_came_are_refused_or_read_and_written_as_the_map_reads_them() {
        const BASES: &[&str] = &[
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 04 Dec 2026 16:19:36 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\nte: trailers\r\n\
             keep-alive: 5\r\nX-B:\tb \r\n\r\n",
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 2\r\n\
             connection: close\r\nx-y: z\r\n\r\n",
        ];
        const BYTES: &[u8] = b"\r\n\t :,=\x00\x01\x7f\x80\xffaZ9-grpc/";
        let mut rng = fastrand::Rng::with_seed(5);
        let mut compared = 0;
        for _ in 0..30_000 {
            let mut head = BASES[rng.usize(..BASES.len())].as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..head.len());
                match rng.u8(..3) {
                    0 => head[at] = BYTES[rng.usize(..BYTES.len())],
                    1 => head.insert(at, BYTES[rng.usize(..BYTES.len())]),
                    _ => {
                        head.remove(at);
                    }
                }
            }
            compared += usize::from(check_response_heads(&head));
        }
        assert!(compared > 5_000, "only {compared} heads parsed whole");
    }

    #[tokio::test]
    async fn content_length_answer_streams_and_the_connection_is_reusable() {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\nconnection: keep-alive\r\n\r\nhello";
        let (response, got) = exchange(reply, usize::MAX, get("/p?q=1")).await;
        assert_eq!(got, b"GET /p?q=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-a"], "b");
        assert_eq!(response.body().size_hint().exact(), Some(5));
        let mut body = response.into_body();
        let data = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(data, "hello");
        let mut idle = body.take_idle().expect("reusable");
        assert!(idle.reused);
        assert!(idle.is_usable(), "a quiet idle connection is usable");
    }

    #[tokio::test]
    async fn large_body_arrives_whole_in_order_and_the_connection_is_reusable() {
        let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let mut reply =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        reply.extend_from_slice(&body);
        let reply: &'static [u8] = reply.leak();
        let (response, _) = exchange(reply, 100_000, get("/big")).await;
        let mut answer = response.into_body();
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = answer.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert_eq!(got.len(), body.len());
        assert!(got == body, "bytes out of order or changed");
        assert!(frames > 1, "read in more than one piece");
        let idle = answer.take_idle().expect("reusable");
        assert_eq!(
            idle.rd.big_capacity(),
            0,
            "an idle connection keeps no large buffer"
        );
    }

    #[tokio::test]
    async fn chunked_answer_in_small_pieces_with_extensions_and_trailers() {
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;name=value\r\nhello\r\n6 \r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        let (response, _) = exchange(reply, 3, get("/")).await;
        assert_eq!(response.body().size_hint().exact(), None);
        let mut body = response.into_body();
        let collected = (&mut body).collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-t"], "1");
        assert_eq!(collected.to_bytes(), "hello world");
        assert!(body.take_idle().is_some());
    }

    #[tokio::test]
    async fn body_until_close_is_read_whole_and_never_reused() {
        let (addr, server) = upstream(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
            4,
            true,
        )
        .await;
        let response = send_plain(addr, get("/")).await.unwrap();
        let mut body = response.into_body();
        let data = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(data, "until the end");
        assert!(body.take_idle().is_none());
        drop(server);
    }

    #[tokio::test]
    async fn head_204_and_interim_answers_carry_no_body() {
        let head = Request::builder()
            .method(Method::HEAD)
            .uri("/")
            .body(RequestBody::empty())
            .unwrap();
        let (response, _) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            usize::MAX,
            head,
        )
        .await;
        assert!(response.body().is_end_stream());
        assert!(response.into_body().take_idle().is_some());

        let reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (response, _) = exchange(reply, usize::MAX, get("/")).await;
        assert_eq!(response.status(), 204);
        assert!(response.body().is_end_stream());
        // No framing headers, but no body either: the connection is not "read until close".
        assert!(response.into_body().take_idle().is_some());
    }

    #[tokio::test]
    async fn a_large_chunk_is_read_whole_and_the_chunked_body_ends_cleanly() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let mut reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        reply.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        reply.extend_from_slice(&data);
        reply.extend_from_slice(b"\r\n3\r\nend\r\n0\r\n\r\n");
        let reply: &'static [u8] = reply.leak();
        let (response, _) = exchange(reply, 30_000, get("/")).await;
        let mut body = response.into_body();
        let got = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), data.len() + 3);
        assert!(got[..data.len()] == data[..] && &got[data.len()..] == b"end");
        assert!(body.take_idle().is_some());
    }

    fn post(length: &str, body: &'static [u8]) -> Request<RequestBody> {
        Request::builder()
            .method(Method::POST)
            .uri("/up")
            .header("content-length", length)
            .header("transfer-encoding", "chunked")
            .body(RequestBody::Full(Some(Bytes::from_static(body))))
            .unwrap()
    }

    #[tokio::test]
    async fn request_body_goes_with_its_length_and_only_one_framing() {
        let (addr, server) = upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            usize::MAX,
            false,
        )
        .await;
        let response = send_plain(addr, post("3", b"abc")).await.unwrap();
        assert!(response.body().is_end_stream());
        assert!(response.into_body().take_idle().is_some());
        let (mut got, mut sock) = server.await.unwrap();
        while !got.ends_with(b"abc") {
            let mut buf = [0u8; 64];
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        assert!(text.starts_with("POST /up HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[tokio::test]
    async fn request_body_shorter_than_declared_fails() {
        let (addr, _server) = upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            usize::MAX,
            false,
        )
        .await;
        let failed = send_plain(addr, post("999", b"abc")).await.unwrap_err();
        assert!(
            matches!(failed.error, Http1Error::RequestBody(_)),
            "{:?}",
            failed.error
        );
    }

    #[tokio::test]
    async fn a_request_a_reused_connection_refused_goes_again_as_it_was_encoded() {
        // A kept connection the upstream reset while it idled.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = listener.local_addr().unwrap();
        let mut stale = conn(dead).await;
        let (sock, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(sock);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stale.reused = true;
        let appended = Appended {
            request_id: Some(b"id-1"),
            ..Appended::default()
        };
        let failed = send(stale, encoded(get("/again?x=1"), appended), false, false)
            .await
            .unwrap_err();
        let unsent = failed.unsent.expect("nothing was written: it may go again");
        // On a new connection: the same head, appended fields included, then the answer.
        let (addr, server) = upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            usize::MAX,
            false,
        )
        .await;
        let response = send(conn(addr).await, unsent, false, false).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let (got, _sock) = server.await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(
            got.starts_with("GET /again?x=1 HTTP/1.1\r\nhost: svc\r\n"),
            "{got}"
        );
        assert!(got.contains("x-request-id: id-1\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n"), "{got}");
    }

    /// An upstream that reads a request and closes its connection without a word, as one does
    /// whose keep-alive timeout ran out as the request came.
    async fn closing_upstream() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = sock.read(&mut got).await.unwrap();
            got.truncate(n);
            got
        });
        (addr, server)
    }

    #[tokio::test]
    async fn an_idempotent_request_a_reused_connection_closed_on_goes_again() {
        let (addr, server) = closing_upstream().await;
        let mut kept = conn(addr).await;
        kept.reused = true;
        let failed = send(
            kept,
            encoded(get("/again"), Appended::default()),
            false,
            false,
        )
        .await
        .unwrap_err();
        let written = server.await.unwrap();
        assert!(written.starts_with(b"GET /again HTTP/1.1\r\n"));
        let unsent = failed
            .unsent
            .expect("a GET written whole, then the close before any answer: it may go again");
        assert_eq!(unsent.head, written, "the same head goes again");

        // Not on a new connection (the upstream refused it, nothing to blame on a close).
        let (addr, server) = closing_upstream().await;
        let failed = send_plain(addr, get("/")).await.unwrap_err();
        assert!(failed.unsent.is_none());
        server.await.unwrap();
        // Nor a request with a body, nor one that is not idempotent.
        for request in [post("3", b"abc"), post("0", b"")] {
            let (addr, server) = closing_upstream().await;
            let mut kept = conn(addr).await;
            kept.reused = true;
            let failed = send(kept, encoded(request, Appended::default()), false, false)
                .await
                .unwrap_err();
            assert!(failed.unsent.is_none(), "{:?}", failed.error);
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            let (addr, _server) = upstream(reply, usize::MAX, false).await;
            let failed = send_plain(addr, get("/")).await.unwrap_err();
            assert!(
                matches!(failed.error, Http1Error::Invalid(_)),
                "{:?}",
                failed.error
            );
            assert!(failed.unsent.is_none());
        }
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        let (response, _) = exchange(reply, usize::MAX, get("/")).await;
        let mut body = response.into_body();
        assert!((&mut body).collect().await.is_err());
        assert!(body.take_idle().is_none());
    }

    #[test]
    fn heads_with_more_fields_than_the_stack_slots_parse_whole() {
        for count in [head1::FEW_FIELDS + 1, MAX_HEADERS - 1] {
            let fields: String = (0..count).map(|i| format!("x-{i}: v{i}\r\n")).collect();
            let head = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 0\r\n\r\n");
            let (head, len) = parse_head(head.as_bytes(), false).unwrap().unwrap();
            assert_eq!(len, fields.len() + 38);
            assert_eq!(head.headers.len(), count + 1);
            let last = format!("x-{}", count - 1);
            assert_eq!(
                head.headers[last.as_str()],
                format!("v{}", count - 1).as_str()
            );
        }
        let fields: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let head = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
        assert!(parse_head(head.as_bytes(), false).is_err());
    }

    #[tokio::test]
    async fn oversized_head_is_refused() {
        let mut reply = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        reply.resize(reply.len() + MAX_HEAD, b'a');
        reply.extend_from_slice(b"\r\n\r\n");
        let reply: &'static [u8] = reply.leak();
        let (addr, _server) = upstream(reply, usize::MAX, false).await;
        let failed = send_plain(addr, get("/")).await.unwrap_err();
        assert!(
            matches!(failed.error, Http1Error::HeadTooLarge),
            "{:?}",
            failed.error
        );
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_not_usable() {
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (addr, server) = upstream(reply, usize::MAX, false).await;
        let response = send_plain(addr, get("/")).await.unwrap();
        let mut body = response.into_body();
        (&mut body).collect().await.unwrap();
        let mut idle = body.take_idle().unwrap();
        let (_, sock) = server.await.unwrap();
        assert!(idle.is_usable());
        drop(sock);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!idle.is_usable(), "the upstream closed it");
    }

    #[tokio::test]
    async fn switching_protocols_hands_over_the_bytes_read_past_the_head() {
        let reply = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nearly";
        let (addr, server) = upstream(reply, usize::MAX, false).await;
        let request = encoded(get("/ws"), Appended::default());
        let response = send(conn(addr).await, request, true, false).await.unwrap();
        assert_eq!(response.status(), 101);
        let mut up = response.into_body().into_upgraded().expect("upgraded");
        let (_, mut sock) = server.await.unwrap();
        sock.write_all(b" late").await.unwrap();
        let mut got = vec![0u8; 10];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        up.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        sock.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
