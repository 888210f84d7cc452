//! The HTTP/1.1 server for client connections, plain TCP or TLS (`ClientIo`): the first step of
//! every HTTP/1 request the proxy receives. It reads a request head off the connection, hands
//! the request to the gateway with a body that is read off the same connection by whoever
//! polls it, and writes the answer back, in the connection's own task.
//!
//! It replaces hyper's server connection because hyper's parse, encode and flush were a third
//! of the proxy's user-space instructions per request (callgrind, h1 keep-alive: ~8,000 of
//! 25,800; over TLS, 28,458 against 23,180): hyper moves each request through a dispatcher, a
//! body channel and a write buffer that is flattened and flushed on every turn. Here a small
//! response's head and body are encoded into one buffer and written with one `send(2)` (one
//! TLS record), request heads are parsed in place (by `head1`), and nothing is allocated per
//! request but the request's own head and the gateway's future.
//!
//! What the connection does, in order: wait for a complete head (within the listener's idle
//! timeout, measured from the end of the previous response); answer a malformed one with
//! 400, 414, 431 or 501 and close; serve the request; write the response framed by content-length,
//! chunked encoding or (HTTP/1.0) the connection's end; then either keep the connection for the
//! next request (pipelined bytes are kept) or close it: the client or the answer asked for it,
//! the request body was not read to its end (after an early answer, the rest is read and
//! dropped first, as long as it keeps coming), or the listener drains. An idle plain
//! connection on a worker that holds many gives back its buffers, so it costs its socket and
//! a small task.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::detect::{self, Protocol};
use crate::gateway::{self, Connection};
use crate::http::alarm::Alarm;
use crate::http::body::{BodyError, ClientBody, ResponseBody};
use crate::http::client1::{content_length, put_field, put_hex, RawHead, RAW_FIELDS};
use crate::http::head1::{self, HeadError, Slots};
use crate::http::headers::{
    self, received, Known, HOP_CONNECTION, HOP_TE, HOP_TRANSFER_ENCODING, HOP_UPGRADE,
    X_STRAIT_ERROR,
};
use crate::http::inbuf::{copied, Chunk, ChunkError, InBuf, MAX_HEAD, READ_BUF};
use crate::http::{boxed, server, ClientIo, Lingering, Rewound};
use crate::telemetry::metrics::ListenerStats;

/// Open connections on a worker above which idle HTTP/1 connections give back their buffers.
pub const RELEASE_ABOVE: usize = 256;
/// The most header fields a request may carry (Envoy's default); more get 431.
const MAX_HEADERS: usize = 100;
/// Fields a forwarded request may gain in the proxy.
const ADDED_FIELDS: usize = 8;

/// How long a new connection may stay silent when its listener has no idle timeout.
const FIRST_BYTES_LIMIT: Duration = Duration::from_secs(60);
/// Response bytes queued for the socket before the response body is no longer polled.
const WRITE_HIGH: usize = 64 * 1024;
/// Response body chunks up to this size are copied behind the head, so that a small response
/// goes out in one write; larger ones are queued as they are and written vectored.
const COPY_MAX: usize = 4 * 1024;
/// How long the last write of a closing connection may take: an answer of the proxy's own,
/// TLS's `close_notify`.
const LAST_WRITE: Duration = Duration::from_millis(500);
/// The interim answer to `expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An upgraded client connection: the socket, with the bytes read past the request's head.
pub type UpgradedClient = Rewound<ClientIo>;

/// The client's side of an upgrade: its connection once the 101 answer is written. Only
/// `server1` upgrades: hyper serves client connections HTTP/2 alone.
pub(crate) struct ClientUpgrade(oneshot::Receiver<UpgradedClient>);

impl ClientUpgrade {
    /// The client's side of `req`'s upgrade: `None` unless `req` is an HTTP/1.1 upgrade request
    /// whose side was not taken yet.
    pub(crate) fn of(req: &mut Request<ClientBody>) -> Option<Self> {
        match req.body_mut() {
            ClientBody::Http1(body) => body.take_upgrade().map(ClientUpgrade),
            ClientBody::H2(_) | ClientBody::Gathered(_) | ClientBody::Watched(..) => None,
        }
    }

    /// Copies bytes both ways between the client and `upstream` until both ended.
    pub(crate) async fn tunnel<T>(self, upstream: &mut T) -> io::Result<()>
    where
        T: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        let mut client = self
            .0
            .await
            .map_err(|_| io::Error::other("the client connection ended before the 101"))?;
        tokio::io::copy_bidirectional(&mut client, upstream).await?;
        Ok(())
    }
}

/// Writes the access log line of a request head refused as malformed, on a listener that logs.
pub(crate) fn log_malformed(conn: &Connection, status: StatusCode) {
    let snapshot = conn.worker.current();
    if let Some(listener) = snapshot.listener(conn.local) {
        if let Some(logger) = &listener.access_log {
            logger.malformed_request(&listener.name, &conn.peer_ip, status.as_u16());
        }
    }
}

/// Serves HTTP/1.1 on a client connection (plain, or TLS whose ALPN chose HTTP/1.1) until it
/// closes.
pub(crate) async fn serve_http1(
    stream: ClientIo,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let inbound = Rc::new(RefCell::new(Inbound::new(stream)));
    let mut out = Outbox::default();
    let mut wait = Wait::new(drain);
    let mut first = true;
    loop {
        // The first head is awaited for at most `FIRST_BYTES_LIMIT` when there is no idle
        // timeout: a connection that never says anything is not kept forever.
        let limit = if first {
            Some(idle_timeout.unwrap_or(FIRST_BYTES_LIMIT))
        } else {
            idle_timeout
        };
        let deadline = limit.map(|t| Instant::now() + t);
        match poll_fn(|cx| wait.poll_head(&inbound, cx, deadline, first)).await {
            NextHead::Head => {}
            NextHead::Closed => return,
            NextHead::TimedOut => {
                tracing::debug!(%peer, "request head timed out");
                if let Some(s) = &stats {
                    s.head_timed_out();
                }
                return;
            }
            NextHead::Http2 => {
                let io = inbound.borrow_mut().hand_over();
                if let Some(io) = io {
                    let drain = wait.seen.clone();
                    // Boxed: HTTP/2's state must not make every HTTP/1 connection's task bigger.
                    boxed(|| server::serve_h2c(io, conn, idle_timeout, stats, drain)).await;
                }
                return;
            }
            NextHead::Reject(status) => {
                tracing::debug!(%peer, %status, "malformed request head");
                if let Some(s) = &stats {
                    s.malformed_request(status);
                }
                log_malformed(&conn, status);
                boxed(|| reject(&inbound, status)).await;
                return;
            }
        }
        first = false;
        // Boxed: an idle connection's task, allocated at the size of its largest state, must
        // not carry room for a request's.
        let head = wait.head.get_or_insert_with(Box::default);
        let served = boxed(|| exchange(&inbound, head, &conn, &mut out, &wait.seen)).await;
        match served {
            Ok(After::KeepAlive) => {}
            Ok(After::Upgraded) => return,
            Ok(After::Close) => {
                boxed(|| close(&inbound)).await;
                return;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
                return;
            }
        }
        let mut inb = inbound.borrow_mut();
        // A TLS connection keeps its buffer: its session holds buffers of its own, and may hold
        // the next request's bytes, decrypted, while its socket has none.
        let plain = inb.io.as_ref().is_some_and(|io| !io.is_tls());
        if plain && inb.rd.is_empty() && conn.worker.open_connections() > RELEASE_ABOVE {
            inb.rd.release();
            out.release();
            wait.head = None;
            if let Some(s) = &stats {
                s.released();
            }
        }
    }
}

/// The socket and what was read from it, shared by the connection's task and the request body
/// it hands the gateway (which may be polled from another task of the worker: an HTTP/2
/// upstream connection's).
#[derive(Debug)]
struct Inbound {
    /// `None` once the connection switched protocols and the socket went to the tunnel.
    io: Option<ClientIo>,
    rd: InBuf,
    /// Where the current request's body is.
    body: BodyState,
    /// What is left to write of a `100 Continue` due before the body is first read.
    interim: &'static [u8],
    nagle: Nagle,
}

impl Inbound {
    fn new(io: ClientIo) -> Self {
        // A TLS connection had `TCP_NODELAY` set for its handshake.
        let nagle = if io.is_tls() {
            Nagle::Off
        } else {
            Nagle::Unwritten
        };
        Inbound {
            io: Some(io),
            rd: InBuf::default(),
            body: BodyState::Done,
            interim: &[],
            nagle,
        }
    }

    /// Takes the socket for another protocol (a tunnel after a 101, HTTP/2 with prior
    /// knowledge), the bytes read and not served given back first; its writes go as they come.
    fn hand_over(&mut self) -> Option<Rewound<ClientIo>> {
        let early = Bytes::copy_from_slice(self.rd.buffered());
        self.rd = InBuf::default();
        let io = self.io.take()?;
        let _ = io.tcp().set_nodelay(true);
        Some(Rewound::new(io, early))
    }
}

/// Where the connection is with Nagle's algorithm, which holds a write back while an earlier
/// one is unacknowledged: the first write goes at once either way, so `TCP_NODELAY` is set
/// only before a second (a connection that closes after one answer never makes the call;
/// nginx sets it the same way, when a connection is kept alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nagle {
    Unwritten,
    Written,
    Off,
}

impl Nagle {
    /// Called before every write on `io`.
    fn before_write(&mut self, io: &ClientIo) {
        match self {
            Nagle::Unwritten => *self = Nagle::Written,
            Nagle::Written => {
                let _ = io.tcp().set_nodelay(true);
                *self = Nagle::Off;
            }
            Nagle::Off => {}
        }
    }
}

/// Where a request body is.
#[derive(Debug, Default)]
enum BodyState {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, at this point.
    Chunked(Chunk),
    /// The body ended (or there was none).
    #[default]
    Done,
    /// The body was cut short or malformed: the connection cannot carry another request.
    Failed,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum RequestBodyError {
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection before the request body was complete")]
    Closed,
    #[error("invalid request body: {0}")]
    Invalid(&'static str),
    #[error("request body already failed")]
    Failed,
}

impl From<ChunkError> for RequestBodyError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Io(e) => RequestBodyError::Io(e),
            ChunkError::Closed => RequestBodyError::Closed,
            ChunkError::Invalid(what) => RequestBodyError::Invalid(what),
        }
    }
}

/// A request body read straight off the client connection by whoever polls it.
#[derive(Debug)]
pub struct RequestBody1 {
    inbound: Rc<RefCell<Inbound>>,
    /// The socket, once the answer to an upgrade request switched protocols.
    upgrade: Option<oneshot::Receiver<UpgradedClient>>,
    /// The head's (first) `content-type` says gRPC.
    grpc: bool,
    /// Which of the fields the proxy writes itself the head has (`headers::proxy_field`).
    proxy_fields: u8,
    /// The head's `host` value (a second reference to the one in its map).
    host: Option<HeaderValue>,
    /// The head's fields, when kept as they came: the request's map then holds none of them.
    fields: Option<Box<RawHead>>,
}

// What the head's parse saw, carried with the body so the gateway need not look the headers
// up again (a hashed lookup each; an extension on the request would cost an allocation).
impl RequestBody1 {
    /// The head's fields, when they were kept as they came (the request's map holds none of
    /// them): taken to be written upstream as they are, or put into the map.
    pub(crate) fn take_fields(&mut self) -> Option<Box<RawHead>> {
        self.fields.take()
    }

    /// Where the client's socket comes once a 101 answer to this (upgrade) request is written.
    pub(crate) fn take_upgrade(&mut self) -> Option<oneshot::Receiver<UpgradedClient>> {
        self.upgrade.take()
    }

    /// The request is an HTTP/1.1 upgrade (`connection: upgrade` and an `upgrade` header), and
    /// its socket has not been taken yet.
    pub(crate) fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// How many of a body with a length must be in before an upstream is involved: all of
    /// it, or as much as the connection's read buffer holds ([`READ_BUF`]) when it is longer.
    /// `None` once that many are in, for a chunked body, and for one behind `100 Continue`
    /// (whose client waits for the proxy's word before sending it).
    ///
    /// A client that sends a head and then holds its body back would otherwise hold an
    /// upstream connection and a circuit-breaker slot for the route's `idle_timeout` (1,024
    /// such connections and a cluster answers 503 to everyone). Waited for first, its body
    /// costs only the client's own connection; a client must send this much to make the proxy
    /// open a request upstream (HAProxy's `http-buffer-request`; nginx buffers whole bodies).
    pub(crate) fn held_back(&self) -> Option<usize> {
        let inb = self.inbound.borrow();
        let BodyState::Length(left) = inb.body else {
            return None;
        };
        let due = left.min(READ_BUF as u64) as usize;
        (inb.interim.is_empty() && inb.rd.buffered().len() < due).then_some(due)
    }

    /// Reads the body's first `due` bytes into the connection's buffer ([`Self::held_back`]):
    /// `true` once they are in, `false` when the client closed or failed first. Also returns
    /// how many are in, so a caller can time the client's pauses.
    pub(crate) fn poll_held_back(&self, due: usize, cx: &mut Context<'_>) -> (Poll<bool>, usize) {
        let mut guard = self.inbound.borrow_mut();
        let inb = &mut *guard;
        loop {
            let have = inb.rd.buffered().len();
            if have >= due {
                return (Poll::Ready(true), have);
            }
            let Some(io) = inb.io.as_mut() else {
                return (Poll::Ready(false), have);
            };
            match inb.rd.poll_fill(io, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return (Poll::Ready(false), have),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return (Poll::Pending, have),
            }
        }
    }

    /// The request's `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`,
    /// ...).
    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Which of the fields the proxy writes itself the request came with
    /// (`headers::proxy_field`).
    pub(crate) fn proxy_fields(&self) -> u8 {
        self.proxy_fields
    }

    /// The head's `host` value as parsed (taken: asked for once), so the gateway does not
    /// look it up in the map (a hashed lookup, ~110 instructions).
    pub(crate) fn take_host(&mut self) -> Option<HeaderValue> {
        self.host.take()
    }
}

impl Body for RequestBody1 {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match ready!(self.inbound.borrow_mut().poll_body(cx)) {
            Ok(frame) => Poll::Ready(frame.map(Ok)),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inbound.borrow().body, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.inbound.borrow().body {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Inbound {
    /// The next frame of the current request's body; `None` at its end. A failure (or the
    /// connection gone) leaves the body failed.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, RequestBodyError>> {
        let Inbound {
            io,
            rd,
            body,
            interim,
            nagle,
        } = self;
        if matches!(body, BodyState::Done) {
            return Poll::Ready(Ok(None));
        }
        let Some(io) = io.as_mut() else {
            // The connection closed under the body.
            *body = BodyState::Failed;
            return Poll::Ready(Err(RequestBodyError::Closed));
        };
        let read = ready!(poll_request_body(io, rd, body, interim, nagle, cx));
        if read.is_err() {
            *body = BodyState::Failed;
        }
        Poll::Ready(read)
    }
}

/// The next frame of the request body: the interim `100 Continue` goes out first.
fn poll_request_body(
    io: &mut ClientIo,
    rd: &mut InBuf,
    body: &mut BodyState,
    interim: &mut &'static [u8],
    nagle: &mut Nagle,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, RequestBodyError>> {
    while !interim.is_empty() {
        nagle.before_write(io);
        match ready!(Pin::new(&mut *io).poll_write(cx, interim))? {
            0 => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
            n => *interim = interim.get(n..).unwrap_or_default(),
        }
    }
    // Over TLS, what of the interim answer the socket did not take yet is in the session.
    ready!(Pin::new(&mut *io).poll_flush(cx))?;
    match body {
        BodyState::Done => Poll::Ready(Ok(None)),
        BodyState::Failed => Poll::Ready(Err(RequestBodyError::Failed)),
        BodyState::Length(left) => {
            let data = ready!(rd.poll_body(io, cx, *left))?;
            if data.is_empty() {
                return Poll::Ready(Err(RequestBodyError::Closed));
            }
            *left -= data.len() as u64;
            if *left == 0 {
                *body = BodyState::Done;
            }
            Poll::Ready(Ok(Some(Frame::data(data))))
        }
        BodyState::Chunked(chunk) => {
            let frame = ready!(rd.poll_chunked(io, cx, chunk))?;
            if let Chunk::Ended = chunk {
                *body = BodyState::Done;
            }
            Poll::Ready(Ok(frame))
        }
    }
}

/// Reads a request head as the server does: the length of a complete and valid head, `None`
/// while it is incomplete, or the status a malformed one is answered with (400, 431 or 501).
/// The fuzz target `http1_request` drives it with hostile bytes.
pub fn check_request_head(bytes: &[u8]) -> Result<Option<usize>, StatusCode> {
    parse_request(bytes, &mut Head::default())
}

/// A parsed request head. A connection keeps one ([`Wait`]'s), parsed into in place and taken
/// apart by [`exchange`]: made and returned by value, it was copied five times on its way
/// (~270 bytes, ~250 instructions a request).
#[derive(Debug, Default)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: BodyState,
    /// The client keeps the connection for another request.
    keep_alive: bool,
    /// `expect: 100-continue` on a request with a body.
    expect_continue: bool,
    /// An HTTP/1.1 upgrade request (`connection: upgrade` and `upgrade`).
    upgrade: bool,
    /// `te: trailers`: a chunked answer may end with trailer fields.
    trailers: bool,
    /// The first `content-type` starts with `application/grpc`.
    grpc: bool,
    /// Which of the fields the proxy writes itself are there (`headers::proxy_field`).
    proxy_fields: u8,
    /// The `host` field's value.
    host: Option<HeaderValue>,
    /// The fields, when kept as they came: `headers` then holds none of them.
    fields: Option<Box<RawHead>>,
}

/// Parses a request head at the start of `bytes` into `head`: its length, `None` until it is
/// complete, or the status a malformed one is answered with. `head` is written only when the
/// head is complete and good.
fn parse_request(bytes: &[u8], head: &mut Head) -> Result<Option<usize>, StatusCode> {
    let bad = StatusCode::BAD_REQUEST;
    let mut slots = Slots::new();
    let line = match slots.parse(bytes, MAX_HEADERS, head1::parse_request) {
        Ok(Some(line)) => line,
        Ok(None) => return Ok(None),
        Err(HeadError::TooManyFields) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(HeadError::Malformed) => return Err(bad),
    };
    let method = bytes.get(line.method.clone()).ok_or(bad)?;
    let method = Method::from_bytes(method).map_err(|_| bad)?;
    // `*` is the target of OPTIONS alone (RFC 9112 3.2.4).
    if bytes.get(line.target.start) == Some(&b'*') && method != Method::OPTIONS {
        return Err(bad);
    }
    let version = if line.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Values (and the target) are slices of one copy of the head: one allocation, not one per
    // value.
    let block = copied(bytes.get(..line.len).ok_or(bad)?);
    // `/` is http's own static path: the slice (a reference count up and down) and the parse
    // would be thrown away for it.
    let uri = if bytes.get(line.target.clone()) == Some(b"/") {
        Uri::from_static("/")
    } else {
        let uri = Uri::from_maybe_shared(block.slice(line.target.clone())).map_err(|_| bad)?;
        // An absolute target's authority is held to a `host`'s bytes: no userinfo
        // (`http://user@host/`).
        if uri
            .authority()
            .is_some_and(|a| !headers::is_host(a.as_str().as_bytes()))
        {
            return Err(bad);
        }
        uri
    };
    // The fields may be passed on as they came (see `RawHead`), not built into a map: a
    // request in origin form with few fields. What they turn out to be may still make them a
    // map (below), and so may the listener (`gateway::serve`).
    let mut raw = (line.fields <= RAW_FIELDS && bytes.get(line.target.start) == Some(&b'/'))
        .then(|| RawHead::new(block.clone()));
    // Room for the fields the proxy adds on the way (forwarding, request id, trace context),
    // so that adding them does not grow the map.
    let mut headers = match raw {
        Some(_) => HeaderMap::new(),
        None => headers::take_map(line.fields + ADDED_FIELDS),
    };
    let mut length: Option<u64> = None;
    let mut encodings = 0;
    let mut chunked = false;
    let (mut close, mut keep_alive, mut connection_upgrade) = (false, false, false);
    let (mut upgrade, mut h2c, mut trailers, mut expect_continue) = (false, false, false, false);
    let mut grpc = None;
    let mut hosts = 0u32;
    let mut proxy_fields = 0u8;
    let mut host = None;
    for field in slots.fields(line.fields) {
        // In range: the parser's offsets lie within the head.
        let raw_name = bytes.get(field.name()).unwrap_or_default();
        let raw_value = bytes.get(field.value()).unwrap_or_default();
        let headers::Received {
            name,
            hop,
            common,
            known,
        } = received(raw_name).map_err(|_| bad)?;
        // Built for the map, or the host's. The parse checked the bytes as `HeaderValue` does
        // (see `head1`): a kept field's are not checked again.
        let value = if raw.is_none() || known == Known::Host {
            Some(HeaderValue::from_maybe_shared(block.slice(field.value())).map_err(|_| bad)?)
        } else {
            None
        };
        let mut declared = None;
        if known == Known::ContentLength {
            let n = content_length(raw_value).ok_or(bad)?;
            if length.is_some_and(|l| l != n) {
                return Err(bad);
            }
            // The same length twice goes on once: an HTTP/2 upstream refuses two, and nginx
            // refuses a duplicate line.
            let repeated = length.is_some();
            length = Some(n);
            declared = Some(n);
            if repeated {
                continue;
            }
        } else if hop == HOP_TRANSFER_ENCODING {
            encodings += 1;
            chunked = raw_value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if hop == HOP_CONNECTION {
            for token in raw_value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if hop == HOP_UPGRADE {
            upgrade = true;
            h2c |= headers::has_token(raw_value, b"h2c");
        } else if hop == HOP_TE {
            trailers |= headers::has_token(raw_value, b"trailers");
        } else if known == Known::Expect {
            expect_continue = raw_value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if known == Known::ContentType && grpc.is_none() {
            grpc = Some(headers::is_grpc_content_type(raw_value));
        } else if known == Known::Host {
            if !headers::is_host(raw_value) {
                return Err(bad);
            }
            hosts += 1;
            host = value.clone();
        } else if !common {
            proxy_fields |= headers::proxy_field(&name);
        }
        if hop != 0 {
            proxy_fields |= headers::FIELD_HOP_BY_HOP;
        }
        if let Some(kept) = raw.as_mut() {
            // (Room for every field: there are at most as many as it holds.)
            kept.keep(*field, declared);
        } else if let Some(value) = value {
            headers.append(name, value);
        }
    }
    // Passed on as they came only when nothing on the way reads or changes them: no
    // hop-by-hop field (removed), no `x-forwarded-for` or `-proto` (appended to), no
    // `x-forwarded-client-cert` (removed on TLS), no transfer coding (framed again), no `expect`
    // (answered here).
    let rewritten =
        headers::FIELD_HOP_BY_HOP | headers::FIELD_X_FORWARDED | headers::FIELD_CLIENT_CERT;
    let passes = proxy_fields & rewritten == 0 && encodings == 0 && !expect_continue;
    if !passes {
        if let Some(kept) = raw.take() {
            headers = kept.to_map(line.fields + ADDED_FIELDS);
        }
    }
    let body = if encodings > 0 {
        // Both framings in one request is how requests are smuggled past a proxy; HTTP/1.0
        // has no chunked encoding; any coding but a single `chunked` cannot be forwarded.
        if length.is_some() || version == Version::HTTP_10 {
            return Err(bad);
        }
        if encodings > 1 || !chunked {
            return Err(StatusCode::NOT_IMPLEMENTED);
        }
        BodyState::Chunked(Chunk::START)
    } else {
        match length {
            None | Some(0) => BodyState::Done,
            Some(n) => BodyState::Length(n),
        }
    };
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one `host` (HTTP/1.0 at most one). With
    // two, the proxy could route by one while the upstream reads the other.
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(bad);
    }
    let http11 = version == Version::HTTP_11;
    // Field by field: what is written over was taken by `exchange` (its empty map is forgotten,
    // not dropped; see `headers::put_map`).
    head.method = method;
    head.uri = uri;
    head.version = version;
    headers::put_map(&mut head.headers, headers);
    head.expect_continue = expect_continue && http11 && !matches!(body, BodyState::Done);
    head.body = body;
    head.keep_alive = !close && (http11 || keep_alive);
    // Not an upgrade to `h2c`: an upstream that took it would serve the rest of the connection
    // as HTTP/2, out of the proxy's sight (its routes, policies and limits): "h2c smuggling".
    // RFC 9113 dropped the upgrade; as Envoy does, the request goes on without it (its
    // `upgrade` is hop-by-hop, and so left out).
    head.upgrade = http11 && connection_upgrade && upgrade && !h2c;
    head.trailers = trailers;
    head.grpc = grpc.unwrap_or(false);
    head.proxy_fields = proxy_fields;
    head.host = host;
    head.fields = raw;
    Ok(Some(line.len))
}

/// What waiting for the next request head ended with.
enum NextHead {
    /// A whole head, parsed into [`Wait`]'s.
    Head,
    /// The client closed, went quiet past the idle timeout, or the listener drains.
    Closed,
    /// The idle timeout passed with part of a head read, or nothing on a new connection.
    TimedOut,
    /// A malformed head, answered with this status.
    Reject(StatusCode),
    /// The connection opened with HTTP/2's preface: h2c with prior knowledge.
    Http2,
}

/// What a connection waits on between requests: the listener's drain signal and a timer.
struct Wait {
    /// The drain signal's future, polled once and after that only when the signal changed (a
    /// version check), so a busy connection does not poll it on every request.
    drained: Pin<Box<dyn Future<Output = ()>>>,
    watching: bool,
    /// A second receiver of the drain signal, only asked whether it changed.
    seen: watch::Receiver<bool>,
    /// The idle timer, made at the first wait with a deadline and kept (see [`Alarm`]).
    timer: Option<Alarm>,
    /// Where each request head is parsed: made at the first and kept, unless the connection
    /// gives back its buffers while idle (as its read buffer, at most a few hundred bytes).
    head: Option<Box<Head>>,
}

impl Wait {
    fn new(mut drain: watch::Receiver<bool>) -> Self {
        let seen = drain.clone();
        Wait {
            drained: Box::pin(async move {
                let _ = drain.wait_for(|d| *d).await;
            }),
            watching: false,
            seen,
            timer: None,
            head: None,
        }
    }

    /// Reads until a whole request head is in, or the wait ends. `first`: the connection's
    /// first bytes, which may be HTTP/2's preface instead.
    fn poll_head(
        &mut self,
        inbound: &RefCell<Inbound>,
        cx: &mut Context<'_>,
        deadline: Option<Instant>,
        first: bool,
    ) -> Poll<NextHead> {
        let mut guard = inbound.borrow_mut();
        let inb = &mut *guard;
        loop {
            let sniffed = if first {
                detect::classify(inb.rd.buffered())
            } else {
                Some(Protocol::Http1)
            };
            match sniffed {
                Some(Protocol::Http2) => return Poll::Ready(NextHead::Http2),
                // Nothing yet, or a strict prefix of HTTP/2's preface: read on.
                None => {}
                Some(Protocol::Http1) if inb.rd.is_empty() => {}
                Some(Protocol::Http1) => match parse_request(
                    inb.rd.buffered(),
                    self.head.get_or_insert_with(Box::default),
                ) {
                    Ok(Some(len)) => {
                        inb.rd.consume(len);
                        return Poll::Ready(NextHead::Head);
                    }
                    Ok(None) if inb.rd.buffered().len() >= MAX_HEAD => {
                        // RFC 9112 3: a target longer than the server parses gets 414.
                        let status = if head1::first_line_ended(inb.rd.buffered()) {
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                        } else {
                            StatusCode::URI_TOO_LONG
                        };
                        return Poll::Ready(NextHead::Reject(status));
                    }
                    Ok(None) => {}
                    Err(status) => return Poll::Ready(NextHead::Reject(status)),
                },
            }
            let Some(io) = inb.io.as_mut() else {
                return Poll::Ready(NextHead::Closed);
            };
            // A connection that gave back its buffer waits for the client's bytes on the bare
            // socket: a buffer is taken only when there is something to read into it.
            if inb.rd.is_released() {
                match io.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(NextHead::Closed),
                    Poll::Pending => break,
                }
            }
            match inb.rd.poll_fill(io, cx) {
                // The end of the stream, before or inside a head: nothing to answer.
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(NextHead::Closed),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        if self.drain_pending(cx).is_ready() {
            return Poll::Ready(NextHead::Closed);
        }
        match deadline {
            // Part of a head, or nothing at all on a new connection: the client's doing, and
            // counted. A kept-alive connection with nothing more to ask just closes.
            Some(at) if self.poll_timer(at, cx).is_ready() => {
                Poll::Ready(if first || !inb.rd.is_empty() {
                    NextHead::TimedOut
                } else {
                    NextHead::Closed
                })
            }
            _ => Poll::Pending,
        }
    }

    /// Ready once the listener drains.
    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.watching && !self.seen.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        self.watching = true;
        self.drained.as_mut().poll(cx)
    }

    /// Ready once `at` passed.
    fn poll_timer(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self.timer.get_or_insert_with(|| Alarm::new(at));
        timer.arm(at);
        timer.poll_until(at, cx)
    }
}

/// True once the listener drains (or its signal is gone).
fn draining(seen: &watch::Receiver<bool>) -> bool {
    seen.has_changed().unwrap_or(true) && *seen.borrow()
}

/// What a connection does after a response.
enum After {
    KeepAlive,
    Close,
    Upgraded,
}

/// Serves one request and writes its response.
///
/// The request is made and handed to the gateway when this is called; the future keeps only
/// what writing the response needs (an `async fn` would hold the head, and the request made of
/// it, through every wait).
fn exchange<'a>(
    inbound: &'a Rc<RefCell<Inbound>>,
    head: &mut Head,
    conn: &Rc<Connection>,
    out: &'a mut Outbox,
    drain: &'a watch::Receiver<bool>,
) -> impl std::future::Future<Output = io::Result<After>> + 'a {
    // Taken field by field: what is left is an empty head for the next parse.
    let method = std::mem::take(&mut head.method);
    let uri = std::mem::take(&mut head.uri);
    let headers = std::mem::take(&mut head.headers);
    let body = std::mem::take(&mut head.body);
    let host = head.host.take();
    let fields = head.fields.take();
    let Head {
        version,
        keep_alive,
        expect_continue,
        upgrade,
        trailers,
        grpc,
        proxy_fields,
        ..
    } = *head;
    {
        let mut inb = inbound.borrow_mut();
        inb.body = body;
        inb.interim = if expect_continue { CONTINUE } else { &[] };
    }
    let (switched, upgrade_rx) = if upgrade {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let head_request = method == Method::HEAD;
    let mut request = Request::new(ClientBody::Http1(RequestBody1 {
        inbound: Rc::clone(inbound),
        upgrade: upgrade_rx,
        grpc,
        proxy_fields,
        host,
        fields,
    }));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    headers::put_map(request.headers_mut(), headers);
    // Boxed: the gateway's future is kilobytes, and an idle connection's task, allocated at
    // the size of its largest state, must not carry room for it.
    let arrived = std::time::Instant::now();
    let mut serving = boxed(|| gateway::serve(request, Rc::clone(conn), arrived));
    async move {
        let answered = poll_fn(|cx| match serving.as_mut().poll(cx) {
            Poll::Ready(answer) => Poll::Ready(Some(answer)),
            Poll::Pending if client_gone(inbound, cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        // Kept in its box: the body is polled there, not moved out (144 bytes).
        let mut response = match answered.await {
            Some(Ok(response)) => response,
            Some(Err(never)) => match never {},
            // Dropping the request's future ends its upstream exchange (the upstream
            // connection is closed, not pooled), as nginx and Envoy do on a client's close.
            None => return Ok(After::Close),
        };
        let interim = std::mem::take(&mut inbound.borrow_mut().interim);
        // A client still waiting for its `100 Continue` will not send the body it announced
        // (RFC 9110 10.1.1), and a 408 says the proxy stopped waiting for it (15.5.9): either
        // way the connection cannot carry another request, and the answer says so rather than
        // leave the rest of the body awaited.
        let body_withheld = (interim.len() == CONTINUE.len()
            || response.status() == StatusCode::REQUEST_TIMEOUT)
            && !matches!(inbound.borrow().body, BodyState::Done);
        let plan = Plan {
            head_request,
            http11: version == Version::HTTP_11,
            keep_alive: keep_alive && !body_withheld && !draining(drain),
            trailers,
        };
        if interim.len() < CONTINUE.len() {
            // Part of a `100 Continue` was written: the rest goes before the final head.
            out.scratch.put_slice(interim);
        }
        let (mut framing, mut close) = encode_head(&mut out.scratch, &response, plan);
        headers::give_map(std::mem::take(response.headers_mut()));
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(switched) = switched {
                // Boxed: the rare upgrade must not make every exchange's future larger.
                let body = (*response).into_body();
                return boxed(|| switch_protocols(inbound, out, body, switched)).await;
            }
            close = true;
        }
        out.closing = close;
        let body = response.body_mut();
        poll_fn(|cx| out.poll_send(inbound, body, &mut framing, cx)).await?;
        // The connection carries another request only once this one's body was read whole:
        // after an answer that did not wait for it (a refusal, a direct response, an upstream
        // that answered before the upload ended), the rest is read and dropped first.
        let read_whole = matches!(inbound.borrow().body, BodyState::Done)
            || !close && boxed(|| discard_rest(inbound)).await;
        Ok(if close || !read_whole {
            After::Close
        } else {
            After::KeepAlive
        })
    }
}

/// Whether the client closed (or reset) its connection while its request is served: while
/// its answer's head is awaited, and while its body waits on the upstream. Without this a
/// client that gave up held its request to the upstream, an upstream connection and a
/// circuit-breaker slot until the answer (or its next bytes) or the route's timeout, and sat
/// in CLOSE-WAIT.
///
/// Only once the request's body is read whole (before, the body's reads see the close): the
/// socket is read on, and bytes of a request pipelined behind this one are kept for it. A
/// client that pipelines more than a few KiB is not watched further.
fn client_gone(inbound: &RefCell<Inbound>, cx: &mut Context<'_>) -> bool {
    /// Pipelined bytes kept unparsed before the watch stops.
    const WATCH_LIMIT: usize = 4 << 10;
    let Ok(mut guard) = inbound.try_borrow_mut() else {
        return false;
    };
    let inb = &mut *guard;
    if !matches!(inb.body, BodyState::Done) {
        return false;
    }
    let Some(io) = inb.io.as_mut() else {
        return false;
    };
    // Readiness first: most of the time there is nothing, and asking costs less than a read
    // that finds nothing (callgrind: ~130 instructions a request less). Over TLS it is the
    // socket's: a close comes as bytes (`close_notify`) or the socket's end either way.
    if io.tcp().poll_read_ready(cx).is_pending() {
        return false;
    }
    while inb.rd.buffered().len() < WATCH_LIMIT {
        match inb.rd.poll_fill(io, cx) {
            Poll::Pending => return false,
            Poll::Ready(Ok(0) | Err(_)) => return true,
            Poll::Ready(Ok(_)) => {}
        }
    }
    false
}

/// Writes the 101 head, then hands the socket (and the bytes read past the request) to the
/// tunnel.
async fn switch_protocols(
    inbound: &Rc<RefCell<Inbound>>,
    out: &mut Outbox,
    mut body: ResponseBody,
    switched: oneshot::Sender<UpgradedClient>,
) -> io::Result<After> {
    let mut framing = Framing::Empty;
    poll_fn(|cx| out.poll_send(inbound, &mut body, &mut framing, cx)).await?;
    if let Some(io) = inbound.borrow_mut().hand_over() {
        let _ = switched.send(io);
    }
    Ok(After::Upgraded)
}

/// How the request shapes its response's head.
#[derive(Debug, Clone, Copy)]
struct Plan {
    head_request: bool,
    http11: bool,
    /// Both the client and the proxy keep the connection after this response.
    keep_alive: bool,
    /// The client takes trailer fields.
    trailers: bool,
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// No body bytes (HEAD, 1xx, 204, 304): whatever the body yields is dropped.
    Empty,
    /// `content-length`: this many bytes are still due.
    Length(u64),
    /// `transfer-encoding: chunked`; the flag says trailers may be sent.
    Chunked(bool),
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
    /// The body was written whole.
    Ended,
}

/// Encodes the response head into `s`: the framing the body is written with, and whether the
/// connection closes after the response.
fn encode_head(
    s: &mut BytesMut,
    response: &http::Response<ResponseBody>,
    plan: Plan,
) -> (Framing, bool) {
    let status = response.status();
    let body = response.body();
    s.reserve(256);
    put_status_line(s, status);
    // No length on an answer that cannot have a body (RFC 9110 8.6); a 304 keeps the one it
    // describes.
    let lengthless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let bodiless = lengthless || status == StatusCode::NOT_MODIFIED;
    let mut declared = None;
    let mut date = false;
    let mut close = !plan.keep_alive;
    let (mut connection, mut said_close) = (false, false);
    // An upstream head's fields kept as they came: end-to-end only, one `content-length`.
    if let Some(raw) = body.raw_head() {
        if let Some((_, n)) = raw.content_length().filter(|_| !lengthless) {
            declared = Some(Some(n));
        }
        raw.write_fields(s, lengthless);
        date = raw.has_date();
    }
    for (name, value) in response.headers() {
        if name == header::CONTENT_LENGTH {
            // One length.
            if declared.is_some() || lengthless {
                continue;
            }
            declared = Some(content_length(value.as_bytes()));
        } else if name == header::TRANSFER_ENCODING {
            // This hop's own: decided below from what the body is.
            continue;
        } else if name == header::CONNECTION {
            connection = true;
            said_close |= headers::has_token(value.as_bytes(), b"close");
            close |= said_close;
        } else if name == header::DATE {
            date = true;
        }
        put_field(s, name.as_str().as_bytes(), value.as_bytes());
    }
    if !date {
        put_date(s);
    }
    let framing = if plan.head_request || bodiless {
        Framing::Empty
    } else if let Some(declared) = declared {
        // An unreadable length was passed on as it came: the body then ends the connection.
        match declared {
            Some(n) => Framing::Length(n),
            None => {
                close = true;
                Framing::UntilClose
            }
        }
    } else if let Some(n) = body.size_hint().exact() {
        put_field(
            s,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
        Framing::Length(n)
    } else if plan.http11 {
        put_field(s, b"transfer-encoding", b"chunked");
        Framing::Chunked(plan.trailers)
    } else {
        close = true;
        Framing::UntilClose
    };
    if close && !said_close && status != StatusCode::SWITCHING_PROTOCOLS {
        put_field(s, b"connection", b"close");
    } else if !close && !plan.http11 && !connection {
        put_field(s, b"connection", b"keep-alive");
    }
    s.put_slice(b"\r\n");
    (framing, close)
}

/// Writes the status line (always `HTTP/1.1`, the highest version this server speaks).
fn put_status_line(s: &mut BytesMut, status: StatusCode) {
    if status == StatusCode::OK {
        s.put_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    s.put_slice(b"HTTP/1.1 ");
    s.put_slice(status.as_str().as_bytes());
    s.put_u8(b' ');
    s.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    s.put_slice(b"\r\n");
}

/// Writes `date: <now>`.
fn put_date(s: &mut BytesMut) {
    headers::with_date(|date| put_field(s, b"date", date.as_bytes()));
}

/// Response bytes on their way to the socket: a tail of small pieces copied together
/// (`scratch`, of which `sent` bytes went out), after large chunks queued as they came.
#[derive(Debug, Default)]
struct Outbox {
    queue: std::collections::VecDeque<Bytes>,
    queued: usize,
    scratch: BytesMut,
    sent: usize,
    /// The connection closes after this response: over TLS, its `close_notify` goes out in
    /// the response's last write.
    closing: bool,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.sent == self.scratch.len()
    }

    fn len(&self) -> usize {
        self.queued + self.scratch.len() - self.sent
    }

    /// Gives back the memory of an empty outbox.
    fn release(&mut self) {
        if self.is_empty() {
            *self = Outbox::default();
        }
    }

    /// Adds body bytes: small ones are copied behind what is there, large ones queued.
    fn push(&mut self, data: Bytes) {
        if data.len() <= COPY_MAX {
            self.scratch.put_slice(&data);
            return;
        }
        if self.sent < self.scratch.len() {
            let mut tail = self.scratch.split();
            let _ = tail.split_to(self.sent);
            self.queued += tail.len();
            self.queue.push_back(tail.freeze());
        } else {
            self.scratch.clear();
        }
        self.sent = 0;
        self.queued += data.len();
        self.queue.push_back(data);
    }

    /// Encodes a body frame for `framing`.
    fn encode(&mut self, frame: Frame<Bytes>, framing: &mut Framing) -> io::Result<()> {
        let frame = match frame.into_data() {
            Ok(data) => return self.encode_data(data, framing),
            Err(frame) => frame,
        };
        if let (Ok(trailers), Framing::Chunked(true)) = (frame.into_trailers(), *framing) {
            let s = &mut self.scratch;
            s.put_slice(b"0\r\n");
            for (name, value) in &trailers {
                put_field(s, name.as_str().as_bytes(), value.as_bytes());
            }
            s.put_slice(b"\r\n");
            *framing = Framing::Ended;
        }
        Ok(())
    }

    fn encode_data(&mut self, data: Bytes, framing: &mut Framing) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match framing {
            Framing::Empty | Framing::Ended => {}
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(io::Error::other(
                        "response body longer than its content-length",
                    ));
                }
                *left -= data.len() as u64;
                self.push(data);
            }
            Framing::Chunked(_) => {
                put_hex(&mut self.scratch, data.len());
                self.scratch.put_slice(b"\r\n");
                self.push(data);
                self.scratch.put_slice(b"\r\n");
            }
            Framing::UntilClose => self.push(data),
        }
        Ok(())
    }

    /// Ends the body.
    fn finish(&mut self, framing: &mut Framing) -> io::Result<()> {
        match *framing {
            Framing::Length(n) if n > 0 => {
                return Err(io::Error::other(
                    "response body shorter than its content-length",
                ))
            }
            Framing::Chunked(_) => self.scratch.put_slice(b"0\r\n\r\n"),
            _ => {}
        }
        *framing = Framing::Ended;
        Ok(())
    }

    /// Moves the response forward as far as it can without waiting: body frames into the
    /// outbox, the outbox into the socket. Ready once the whole response is written.
    fn poll_send(
        &mut self,
        inbound: &RefCell<Inbound>,
        body: &mut ResponseBody,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wrote = false;
        loop {
            while !matches!(framing, Framing::Ended) && self.len() < WRITE_HIGH {
                let step = match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.finish(framing),
                    Poll::Ready(Some(Ok(frame))) => self.encode(frame, framing),
                    Poll::Ready(Some(Err(e))) => {
                        Err(io::Error::other(format!("response body: {e}")))
                    }
                };
                if let Err(failed) = step {
                    return self.fail(inbound, cx, failed);
                }
            }
            if self.is_empty() {
                // A TLS connection may hold written bytes the socket did not take yet: they
                // must not wait for the next body frame, or for the next request (a plain
                // socket's flush does nothing).
                if let Some(io) = inbound.borrow_mut().io.as_mut() {
                    ready!(Pin::new(io).poll_flush(cx))?;
                }
                return if matches!(framing, Framing::Ended) {
                    Poll::Ready(Ok(()))
                } else if client_gone(inbound, cx) {
                    // The upstream is quiet (a long poll, a stream of events) and the client
                    // left: its answer ends now, and the upstream's with it, not when the
                    // upstream next sends or the route's idle timeout.
                    Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionAborted)))
                } else {
                    Poll::Pending
                };
            }
            let mut guard = inbound.borrow_mut();
            let inb = &mut *guard;
            let Some(io) = inb.io.as_mut() else {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected)));
            };
            if self.closing && matches!(framing, Framing::Ended) && self.queue.is_empty() {
                if let ClientIo::Tls(tls) = io {
                    // The last of the response and `close_notify` in one write, not one each
                    // (as nginx makes): a connection per request over TLS saves a send, and
                    // its client a segment. The flush above writes both.
                    let session = tls.get_mut().1;
                    let tail = self.scratch.get(self.sent..).unwrap_or_default();
                    let n = std::io::Write::write(&mut session.writer(), tail)?;
                    self.advance(n);
                    if self.is_empty() {
                        session.send_close_notify();
                    }
                    if n > 0 {
                        continue;
                    }
                }
            }
            inb.nagle.before_write(io);
            if self.poll_write(io, cx)?.is_pending() {
                drop(guard);
                // The client takes nothing now: how long it may go on so is the body's to say.
                return match body.poll_stalled(wrote, cx) {
                    Poll::Ready(stalled) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, stalled)))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            wrote = true;
        }
    }

    /// Ends a response whose body failed (the upstream closed early, or sent a bad chunk).
    /// The head and the body read so far still go out, as far as the socket takes them now,
    /// as nginx sends them: the client sees the answer cut short (no last chunk, or fewer
    /// bytes than its length), not a connection closed before any answer, which it could
    /// take for an idle keep-alive connection's close and send its request again.
    #[cold]
    fn fail(
        &mut self,
        inbound: &RefCell<Inbound>,
        cx: &mut Context<'_>,
        failed: io::Error,
    ) -> Poll<io::Result<()>> {
        let mut guard = inbound.borrow_mut();
        let inb = &mut *guard;
        if let Some(io) = inb.io.as_mut() {
            inb.nagle.before_write(io);
            while !self.is_empty() {
                if !matches!(self.poll_write(io, cx), Poll::Ready(Ok(()))) {
                    break;
                }
            }
            // Over TLS: the records made of it, out of the session.
            let _ = Pin::new(io).poll_flush(cx);
        }
        Poll::Ready(Err(failed))
    }

    /// One write of what is queued. (Inlined into `poll_send`, as it was while that was
    /// its one caller: called there, it cost 16 instructions a response.)
    #[inline(always)]
    fn poll_write(&mut self, io: &mut ClientIo, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tail = self.scratch.get(self.sent..).unwrap_or_default();
        let n = if self.queue.is_empty() {
            ready!(Pin::new(&mut *io).poll_write(cx, tail))?
        } else {
            let mut slices = [IoSlice::new(&[]); 8];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            if count < slices.len() && !tail.is_empty() {
                if let Some(slot) = slices.get_mut(count) {
                    *slot = IoSlice::new(tail);
                    count += 1;
                }
            }
            let slices = slices.get(..count).unwrap_or_default();
            ready!(crate::http::poll_write_slices(
                Pin::new(&mut *io),
                cx,
                slices
            ))?
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.advance(n);
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if n < front.len() {
                let _ = front.split_to(n);
                self.queued -= n;
                return;
            }
            n -= front.len();
            self.queued -= front.len();
            self.queue.pop_front();
        }
        self.sent = (self.sent + n).min(self.scratch.len());
        if self.sent == self.scratch.len() {
            self.scratch.clear();
            self.sent = 0;
        }
    }
}

/// Reads and drops what is left of a request body that its answer did not wait for, so that
/// the connection can carry the next request, as nginx does (`discard_request_body`). However
/// large the rest: closing instead, with the client still sending, would answer its bytes
/// with a reset, which can destroy the answer before the client reads it (a proxy in front
/// then sees its upload fail, and answers 502). Bounded in time, because the client may be
/// slow or may not send the body at all (an `expect: 100-continue` request answered without
/// the 100): it is read within [`Lingering`]'s bounds. Past them, or on an error, `false`, and
/// the connection is closed.
async fn discard_rest(inbound: &RefCell<Inbound>) -> bool {
    let lingering = Lingering::start();
    loop {
        let next = poll_fn(|cx| inbound.borrow_mut().poll_body(cx));
        match tokio::time::timeout_at(lingering.next_by(), next).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return matches!(inbound.borrow().body, BodyState::Done),
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

/// Answers a malformed request head and closes the connection.
async fn reject(inbound: &RefCell<Inbound>, status: StatusCode) {
    let Some(io) = inbound.borrow_mut().io.take() else {
        return;
    };
    answer_and_close(io, status, None).await;
}

/// Writes an answer of the proxy's own on `io` and closes it (see [`linger`]): `status`, and
/// with `error` (a cause and its detail) the `x-strait-error` field and a body that says so, as
/// the gateway's own answers do.
pub(crate) async fn answer_and_close(
    mut io: ClientIo,
    status: StatusCode,
    error: Option<(&str, &str)>,
) {
    let mut s = BytesMut::with_capacity(256);
    put_status_line(&mut s, status);
    put_date(&mut s);
    let body = error.map(|(cause, detail)| {
        s.put_slice(b"content-type: text/plain; charset=utf-8\r\n");
        put_field(&mut s, X_STRAIT_ERROR.as_str().as_bytes(), cause.as_bytes());
        format!("{cause}: {detail}\n")
    });
    let length = body.as_ref().map_or(0, String::len);
    put_field(
        &mut s,
        b"content-length",
        itoa::Buffer::new().format(length).as_bytes(),
    );
    s.put_slice(b"connection: close\r\n\r\n");
    s.put_slice(body.unwrap_or_default().as_bytes());
    let written = async {
        io.write_all(&s).await?;
        io.flush().await
    };
    if tokio::time::timeout(LAST_WRITE, written).await.is_ok() {
        linger(io).await;
    }
}

/// Closes the connection after its last response.
async fn close(inbound: &RefCell<Inbound>) {
    let (io, unread) = {
        let mut inb = inbound.borrow_mut();
        let unread = !inb.rd.is_empty() || !matches!(inb.body, BodyState::Done);
        (inb.io.take(), unread)
    };
    // With nothing of the client's left unread, closing sends a plain FIN (a client that asked
    // to close, a connection per request): no need to wait for the client's. TLS ends with
    // `close_notify` first, which tells a response read to the connection's end from a cut one.
    match (io, unread) {
        (Some(io), true) => linger(io).await,
        (Some(mut io), false) if io.is_tls() => {
            let _ = tokio::time::timeout(LAST_WRITE, io.shutdown()).await;
        }
        _ => {}
    }
}

/// Ends the connection: no more bytes from the proxy, and the client's unread ones are read
/// and dropped while they keep coming (within [`Lingering`]'s bounds), so that closing with
/// them unread does not reset the connection before the client has read its answer (nginx's
/// lingering close).
async fn linger(mut io: ClientIo) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 * 1024];
    let lingering = Lingering::start();
    loop {
        match tokio::time::timeout_at(lingering.next_by(), io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The head as a listener that reads fields sees it: fields kept as they came are put into
    /// the map, as `gateway::serve` does.
    fn parse(raw: &str) -> Result<Option<(Head, usize)>, StatusCode> {
        let mut head = Head::default();
        let parsed = parse_request(raw.as_bytes(), &mut head)?;
        if let Some(fields) = head.fields.take() {
            fields.fill(&mut head.headers);
        }
        Ok(parsed.map(|len| (head, len)))
    }

    #[test]
    fn fields_are_kept_as_they_came_only_when_nothing_on_the_way_changes_them() {
        let kept = |raw: &str| {
            let mut head = Head::default();
            parse_request(raw.as_bytes(), &mut head).unwrap().unwrap();
            match head.fields {
                Some(fields) => {
                    assert!(head.headers.is_empty(), "{raw:?}");
                    let mut s = BytesMut::new();
                    fields.write_fields(&mut s, true);
                    Some(String::from_utf8(s.to_vec()).unwrap())
                }
                None => {
                    assert!(!head.headers.is_empty(), "{raw:?}");
                    None
                }
            }
        };
        // As they came, names' case and all; the length is left to the client's framing.
        assert_eq!(
            kept("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-A:  1 \r\n\r\nab")
                .as_deref(),
            Some("Host: x\r\nX-A: 1\r\n")
        );
        assert_eq!(
            kept("GET / HTTP/1.1\r\nhost: x\r\nx-request-id: abc\r\n\r\n").as_deref(),
            Some("host: x\r\nx-request-id: abc\r\n")
        );
        // Built into a map: what the proxy removes (hop-by-hop, a TLS listener's
        // `x-forwarded-client-cert`), appends to (`x-forwarded-for` and `-proto`), frames again
        // (a transfer coding) or answers (`expect`); a target not in origin form; more fields
        // than are kept.
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nx-forwarded-proto: https\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nx-forwarded-client-cert: URI=a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(kept(raw), None, "{raw:?}");
        }
        let many: String = (0..RAW_FIELDS).map(|i| format!("x-{i}: {i}\r\n")).collect();
        assert_eq!(
            kept(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            None
        );
        // A bad value is refused as the map's `HeaderValue` would refuse it.
        let mut head = Head::default();
        assert_eq!(
            parse_request(
                b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
                &mut head
            ),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    fn status(raw: &str) -> StatusCode {
        match parse(raw) {
            Err(status) => status,
            Ok(head) => panic!("{raw:?} parsed: {head:?}"),
        }
    }

    #[test]
    fn a_plain_get_parses_with_its_fields_and_keeps_the_connection() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x.example\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET";
        let (head, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 3);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri, "/a?b=1");
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["host"], "x.example");
        // Kept aside too, for the gateway.
        assert_eq!(head.host.as_ref(), head.headers.get("host"));
        assert_eq!(head.headers.get_all("x-two").iter().count(), 2);
        assert!(head.keep_alive && !head.upgrade && !head.expect_continue);
        assert!(matches!(head.body, BodyState::Done));
    }

    #[test]
    fn a_root_target_reads_as_the_parsed_one_would() {
        let (head, _) = parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().unwrap();
        let parsed = Uri::from_maybe_shared(Bytes::from_static(b"/")).unwrap();
        assert_eq!(head.uri, parsed);
        assert_eq!(head.uri.path(), "/");
        assert_eq!(head.uri.query(), None);
        assert_eq!(head.uri.path_and_query().map(|p| p.as_str()), Some("/"));
        assert!(head.uri.authority().is_none());
        // Not a prefix match: `/x` and `/?q` are parsed as they came.
        for target in ["/x", "/?q", "//"] {
            let (head, _) = parse(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(head.uri, target);
        }
    }

    #[test]
    fn the_parse_tells_which_of_the_proxy_s_own_fields_came() {
        let came = |fields: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
            parse(&raw).unwrap().unwrap().0.proxy_fields
        };
        let (fwd, id) = (headers::FIELD_X_FORWARDED, headers::FIELD_REQUEST_ID);
        assert_eq!(came(""), 0);
        assert_eq!(
            came("X-Forwarded-Host: y\r\nForwarded: for=1.2.3.4\r\nX-Request: 7\r\n"),
            0
        );
        assert_eq!(came("X-Forwarded-For: 1.2.3.4\r\n"), fwd);
        assert_eq!(came("x-forwarded-proto: https\r\n"), fwd);
        assert_eq!(came("X-FORWARDED-PROTO: https\r\nAccept: */*\r\n"), fwd);
        assert_eq!(came("X-Request-Id: 7\r\n"), id);
        assert_eq!(
            came("x-request-id: 7\r\nx-forwarded-for: 1.2.3.4\r\n"),
            fwd | id
        );
        assert_eq!(
            came("X-Forwarded-Client-Cert: URI=spiffe://a/b\r\n"),
            headers::FIELD_CLIENT_CERT
        );
        // Any hop-by-hop field, so the gateway knows to look through the map for them.
        let hop = headers::FIELD_HOP_BY_HOP;
        for field in [
            "Connection: close",
            "connection: x-secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Upgrade: websocket",
            "Proxy-Authorization: Basic eA==",
        ] {
            assert_eq!(came(&format!("{field}\r\n")), hop, "{field}");
        }
        assert_eq!(
            came("Transfer-Encoding: chunked\r\nX-Request-Id: 7\r\n"),
            hop | id
        );
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parse("GE").unwrap().is_none());
    }

    #[test]
    fn framing_comes_from_content_length_or_chunked() {
        let (head, _) = parse("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(head.body, BodyState::Length(12)));
        let (head, _) = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(head.body, BodyState::Chunked(_)));
        let (head, _) =
            parse("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(matches!(head.body, BodyState::Length(3)));
    }

    #[test]
    fn an_http_1_1_request_has_one_host() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(status("GET http://a/ HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"), bad);
        // HTTP/1.0 has no `host` of its own.
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        let (head, _) = parse("GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.headers["host"], "a");
    }

    #[test]
    fn malformed_heads_get_the_status_nginx_and_envoy_answer() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(status("HELLO\r\n\r\n"), bad);
        assert_eq!(status("GE T / HTTP/1.1\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), bad);
        assert_eq!(status("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), bad);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: abc\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: -1\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n"),
            bad
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"),
            bad
        );
        let not_implemented = StatusCode::NOT_IMPLEMENTED;
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip\r\n\r\n"),
            not_implemented
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            not_implemented
        );
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            not_implemented
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn heads_with_more_fields_than_the_stack_slots_parse_whole() {
        for count in [head1::FEW_FIELDS, head1::FEW_FIELDS + 1, MAX_HEADERS] {
            let fields: String = (0..count).map(|i| format!("x-{i}: v{i}\r\n")).collect();
            // HTTP/1.0: no `host` needed, so the fields are exactly these.
            let (head, _) = parse(&format!("GET / HTTP/1.0\r\n{fields}\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(head.headers.len(), count);
            assert_eq!(head.headers["x-0"], "v0");
            let last = format!("x-{}", count - 1);
            assert_eq!(
                head.headers[last.as_str()],
                format!("v{}", count - 1).as_str()
            );
        }
    }

    #[test]
    fn connection_tokens_decide_keep_alive_and_upgrades() {
        let head = |raw: &str| parse(raw).unwrap().unwrap().0;
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let ws =
            head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(ws.upgrade && ws.keep_alive);
        assert!(
            !head("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade
        );
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\nTE: deflate, trailers\r\n\r\n").trailers);
        // 100-continue only matters when a body is to come.
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(
            head("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\ncontent-length: 5\r\n\r\n")
                .expect_continue
        );
    }

    #[test]
    fn grpc_is_told_by_the_first_content_type() {
        let head = |raw: &str| parse(raw).unwrap().unwrap().0;
        assert!(
            head("POST /s/M HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\n\r\n").grpc
        );
        assert!(
            head("POST /s/M HTTP/1.1\r\nHost: x\r\ncontent-type: application/grpc+proto\r\n\r\n")
                .grpc
        );
        assert!(!head("POST / HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\r\n").grpc);
        assert!(!head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").grpc);
        // As `HeaderMap::get` reads it: the first value.
        let two =
            "POST / HTTP/1.1\r\nHost: x\r\ncontent-type: text/plain\r\ncontent-type: application/grpc\r\n\r\n";
        assert!(!head(two).grpc);
    }

    #[test]
    fn absolute_and_authority_targets_parse() {
        let (head, _) = parse("GET http://x.example/p HTTP/1.1\r\nHost: x.example\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.uri.host(), Some("x.example"));
        assert_eq!(head.uri.path(), "/p");
        let (head, _) = parse("CONNECT x.example:443 HTTP/1.1\r\nHost: x.example:443\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            head.uri.authority().map(|a| a.as_str()),
            Some("x.example:443")
        );
        assert_eq!(status("GET /a b HTTP/1.1\r\n\r\n"), StatusCode::BAD_REQUEST);
        // Userinfo hides the host from whoever reads the authority otherwise (RFC 9110 4.2.4).
        for target in [
            "http://u@x.example/p",
            "http://u:p@x.example:80/",
            "u@x.example:443",
        ] {
            let method = if target.starts_with("http") {
                "GET"
            } else {
                "CONNECT"
            };
            assert_eq!(
                status(&format!(
                    "{method} {target} HTTP/1.1\r\nHost: x.example\r\n\r\n"
                )),
                StatusCode::BAD_REQUEST,
                "{target}"
            );
        }
    }

    fn plan() -> Plan {
        Plan {
            head_request: false,
            http11: true,
            keep_alive: true,
            trailers: false,
        }
    }

    fn encoded(response: http::Response<ResponseBody>, plan: Plan) -> (String, Framing, bool) {
        let mut s = BytesMut::new();
        let (framing, close) = encode_head(&mut s, &response, plan);
        let text = String::from_utf8(s.to_vec()).unwrap();
        // The date changes: checked for, then left out.
        assert!(text.contains("\r\ndate: "), "{text}");
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n");
        (text, framing, close)
    }

    #[test]
    fn heads_are_framed_by_length_chunks_or_the_close() {
        let sized = || {
            let mut r = http::Response::new(ResponseBody::full(Bytes::from_static(b"hello")));
            r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
            r
        };
        let (text, framing, close) = encoded(sized(), plan());
        assert_eq!(text, "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 5\n");
        assert!(matches!(framing, Framing::Length(5)) && !close);

        let (text, framing, close) = encoded(
            sized(),
            Plan {
                head_request: true,
                ..plan()
            },
        );
        assert_eq!(text, "HTTP/1.1 200 OK\nx-a: 1\n");
        assert!(matches!(framing, Framing::Empty) && !close);

        let (text, _, close) = encoded(
            sized(),
            Plan {
                http11: false,
                ..plan()
            },
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 5\nconnection: keep-alive\n"
        );
        assert!(!close);

        let (text, _, close) = encoded(
            sized(),
            Plan {
                keep_alive: false,
                ..plan()
            },
        );
        assert!(text.ends_with("connection: close\n"), "{text}");
        assert!(close);

        let mut no_content = http::Response::new(ResponseBody::empty());
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        no_content
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (text, framing, _) = encoded(no_content, plan());
        assert_eq!(text, "HTTP/1.1 204 No Content\n");
        assert!(matches!(framing, Framing::Empty));
    }

    #[test]
    fn the_outbox_keeps_order_across_copied_and_queued_chunks() {
        let mut out = Outbox::default();
        let mut framing = Framing::Chunked(false);
        out.scratch.put_slice(b"HEAD\r\n");
        let big = Bytes::from(vec![b'x'; COPY_MAX + 1]);
        out.encode(Frame::data(Bytes::from_static(b"ab")), &mut framing)
            .unwrap();
        out.encode(Frame::data(big.clone()), &mut framing).unwrap();
        out.encode(Frame::data(Bytes::from_static(b"cd")), &mut framing)
            .unwrap();
        out.finish(&mut framing).unwrap();
        let mut wire = Vec::new();
        for chunk in &out.queue {
            wire.extend_from_slice(chunk);
        }
        wire.extend_from_slice(&out.scratch[out.sent..]);
        let expected = [
            b"HEAD\r\n2\r\nab\r\n".as_slice(),
            format!("{:x}\r\n", big.len()).as_bytes(),
            &big,
            b"\r\n2\r\ncd\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(wire, expected);
        assert_eq!(out.len(), expected.len());
        out.advance(expected.len() - 3);
        assert_eq!(out.len(), 3);
        out.advance(3);
        assert!(out.is_empty());
    }

    #[test]
    fn a_body_longer_or_shorter_than_its_length_is_an_error() {
        let mut out = Outbox::default();
        let mut framing = Framing::Length(3);
        assert!(out
            .encode(Frame::data(Bytes::from_static(b"abcd")), &mut framing)
            .is_err());
        let mut framing = Framing::Length(3);
        out.encode(Frame::data(Bytes::from_static(b"ab")), &mut framing)
            .unwrap();
        assert!(out.finish(&mut framing).is_err());
    }

    /// A TLS pair over loopback: the server's end with a send buffer this small (no
    /// autotuning), and the client's.
    async fn tls_pair(
        send_buffer: usize,
    ) -> (
        ClientIo,
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, connected) =
            tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
        let tcp = accepted.unwrap().0;
        socket2::SockRef::from(&tcp)
            .set_send_buffer_size(send_buffer)
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(tcp),
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, connected.unwrap()),
        );
        (ClientIo::Tls(Box::new(server.unwrap())), client.unwrap())
    }

    /// A TLS write that finds the socket full leaves encrypted bytes in the session: sending a
    /// response flushes them, or its end would wait there for the next request's answer.
    #[tokio::test]
    async fn a_response_over_tls_is_sent_whole_though_its_last_write_found_the_socket_full() {
        const LEN: usize = 1 << 20;
        let (io, mut client) = tls_pair(4096).await;
        let inbound = RefCell::new(Inbound::new(io));
        let send = async {
            let mut out = Outbox::default();
            let mut body = ResponseBody::full(Bytes::from(vec![7u8; LEN]));
            let mut framing = Framing::Length(LEN as u64);
            poll_fn(|cx| out.poll_send(&inbound, &mut body, &mut framing, cx))
                .await
                .unwrap();
        };
        // Read more slowly than the proxy writes, and keep reading once it is done.
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = 0;
            while got < LEN {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection ended after {got} bytes");
                got += n;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            got
        };
        let read = tokio::time::timeout(Duration::from_secs(5), read);
        let ((), got) = tokio::join!(send, read);
        assert_eq!(got.expect("the whole response arrives"), LEN);
    }

    /// The last response of a TLS connection carries its `close_notify` in the same write: the
    /// client reads the answer and then the end of the stream, while the socket is still open.
    #[tokio::test]
    async fn the_last_response_over_tls_ends_with_close_notify_in_the_same_write() {
        let (io, mut client) = tls_pair(64 * 1024).await;
        let inbound = RefCell::new(Inbound::new(io));
        let mut out = Outbox::default();
        out.scratch
            .put_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        out.closing = true;
        let mut body = ResponseBody::empty();
        let mut framing = Framing::Ended;
        poll_fn(|cx| out.poll_send(&inbound, &mut body, &mut framing, cx))
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got))
            .await
            .expect("close_notify ends the stream")
            .unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        drop(inbound);
    }
}
