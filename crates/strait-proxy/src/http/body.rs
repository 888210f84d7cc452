//! The bodies that cross the proxy: request bodies on their way upstream, response bodies on
//! their way back. Both stream frame by frame; nothing here buffers a whole body except the
//! bounded copy kept for a mirror, and an HTTP/2 request body's first 8 KiB are read before an
//! upstream is involved ([`Gathered`]).

use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::balance::InFlight;
use crate::http::client1::Body1;
use crate::http::gzip::Gzip;
use crate::http::pool::Pool;
use crate::resilience::Admission;
use crate::telemetry::access_log::{AccessLogger, LogEntry};
use crate::telemetry::metrics::RouteStats;
use crate::telemetry::spans::OpenSpan;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Boxed error crossing the body boundary (what hyper expects).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as it comes from the client.
#[derive(Debug)]
pub enum ClientBody {
    /// Read off an HTTP/2 stream, plain or TLS (`server2`).
    H2(crate::http::server2::RequestBody2),
    /// Read off an HTTP/1.1 connection, plain or TLS, by whoever polls it (`server1`).
    Http1(crate::http::server1::RequestBody1),
    /// An HTTP/2 body whose first bytes were read before an upstream was involved
    /// ([`Gathered`]).
    Gathered(Box<Gathered>),
    /// One of the above, forwarded while it still arrives: `Upload` learns when it ends and
    /// whose turn it is, and times the client's pauses.
    Watched(Box<ClientBody>, Rc<Upload>),
}

/// When a request's body finished arriving from the client. The route timeout counts from then,
/// as Envoy's does, not from the request head: a 20 MB upload at 1 MB/s got 504 at 15 s, was
/// counted as the upstream's timeout and ejected a healthy endpoint.
///
/// While the body still arrives, the route's `idle_timeout` runs whenever the body waits on the
/// client (from the last chunk it sent), as nginx's `client_body_timeout` and Envoy's stream
/// idle timeout do: a client that sent a head and then nothing, or a byte now and then, held
/// its upstream connection and circuit-breaker slot for ever (1,200 such HTTP/2 streams and a
/// cluster answered 503 to everyone).
#[derive(Debug)]
pub struct Upload {
    ended: std::cell::Cell<Option<Instant>>,
    idle: std::cell::RefCell<Option<IdleTimer>>,
    /// When the upstream side last took a chunk of the body.
    took: std::cell::Cell<Option<Instant>>,
    /// The body waits on the client (its pace is the idle timer's to judge), not on the
    /// upstream taking what came.
    client_turn: std::cell::Cell<bool>,
    /// How the client's body failed, if it did.
    failed: std::cell::Cell<Option<UploadFailure>>,
    /// The most bytes the body may have, when its length was not declared (a declared one
    /// over the limit is refused before this), and how many came so far.
    limit: Option<u64>,
    seen: std::cell::Cell<u64>,
}

/// How a client's request body failed on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadFailure {
    /// None of it came for the idle timeout.
    Stalled(Duration),
    /// The client closed or reset, or sent a malformed body.
    BrokeOff,
    /// It passed the route's `max_request_body_bytes` (this many).
    TooLarge(u64),
}

impl Upload {
    /// An upload whose client may keep it waiting for at most `idle`, and whose body may have
    /// `limit` bytes at most (none: without limit).
    pub(crate) fn new(idle: Option<Duration>, limit: Option<u64>) -> Self {
        Upload {
            ended: std::cell::Cell::new(None),
            idle: std::cell::RefCell::new(idle.map(IdleTimer::new)),
            took: std::cell::Cell::new(None),
            client_turn: std::cell::Cell::new(false),
            failed: std::cell::Cell::new(None),
            limit,
            seen: std::cell::Cell::new(0),
        }
    }

    /// Counts a frame of the body against the limit: the error to pass on instead of it when
    /// the body is now longer than allowed.
    fn over_limit(&self, frame: &Frame<Bytes>) -> Option<BodyError> {
        let limit = self.limit?;
        let seen = self.seen.get() + frame.data_ref().map_or(0, Bytes::len) as u64;
        self.seen.set(seen);
        (seen > limit).then(|| {
            self.end();
            self.failed.set(Some(UploadFailure::TooLarge(limit)));
            Box::new(RequestBodyTooLarge(limit)) as BodyError
        })
    }

    /// How the client's body failed, if it did. An upstream request that failed after that
    /// failed because of it: an HTTP/2 request's body sender resets the stream, and the answer
    /// reports the reset.
    pub(crate) fn failure(&self) -> Option<UploadFailure> {
        self.failed.get()
    }

    fn end(&self) {
        if self.ended.get().is_none() {
            self.ended.set(Some(Instant::now()));
        }
    }

    /// When a route timeout of `limit` that came due now is due instead: `limit` after the
    /// body ended; while it still arrives, `limit` from now when it waits on the client (asked
    /// again then), or `limit` from when the upstream last took a chunk: an upstream that
    /// stops reading an upload (and never answers) is timed out, not waited on for ever.
    pub(crate) fn deadline(&self, limit: Duration) -> Instant {
        match (self.ended.get(), self.took.get()) {
            (Some(end), _) => end + limit,
            (None, Some(took)) if !self.client_turn.get() => took + limit,
            (None, _) => Instant::now() + limit,
        }
    }
}

/// An HTTP/2 request body with a length whose first bytes (all of it, or [`GATHER`] bytes when
/// it is longer) are read before an upstream is involved, then handed on first: as HTTP/1's
/// are waited for in the connection's buffer
/// ([`RequestBody1::held_back`](crate::http::server1::RequestBody1::held_back)). A client that
/// opens streams and holds their bodies back then holds no upstream request, and no
/// circuit-breaker slot, while it waits.
#[derive(Debug)]
pub struct Gathered {
    early: std::collections::VecDeque<Frame<Bytes>>,
    /// Bytes of data read into `early`.
    have: usize,
    /// How many are to be read before an upstream is involved.
    due: usize,
    rest: crate::http::server2::RequestBody2,
}

/// How much of a long HTTP/2 body is read before an upstream is involved: the same as an
/// HTTP/1 connection's read buffer. The client's stream window (1 MiB) already lets it send
/// more than this, which h2 holds, so the wait adds no memory a client could not take anyway.
const GATHER: usize = crate::http::inbuf::READ_BUF;

impl Gathered {
    /// How many bytes of `body` are to be read before an upstream is involved, when it has a
    /// length and has not ended. (Not for a client waiting on `100 Continue`, which is sent
    /// when the body is first read upstream, as for HTTP/1.)
    pub(crate) fn due(body: &crate::http::server2::RequestBody2) -> Option<usize> {
        let len = body.size_hint().exact()?;
        let due = len.min(GATHER as u64) as usize;
        (due > 0 && !body.is_end_stream()).then_some(due)
    }

    /// `body`, whose first `due` bytes ([`Self::due`]) are to be read.
    pub(crate) fn new(body: crate::http::server2::RequestBody2, due: usize) -> Self {
        Gathered {
            early: std::collections::VecDeque::new(),
            have: 0,
            due,
            rest: body,
        }
    }

    /// Reads the body until its due bytes are in or it ends: `true` then, `false` when the
    /// client reset the stream or sent a malformed body first. Also returns how many are in,
    /// so a caller can time the client's pauses.
    pub(crate) fn poll_gather(&mut self, cx: &mut Context<'_>) -> (Poll<bool>, usize) {
        loop {
            if self.have >= self.due || self.rest.is_end_stream() {
                return (Poll::Ready(true), self.have);
            }
            match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.have += frame.data_ref().map_or(0, Bytes::len);
                    self.early.push_back(frame);
                }
                Poll::Ready(Some(Err(_))) => return (Poll::Ready(false), self.have),
                Poll::Ready(None) => return (Poll::Ready(true), self.have),
                Poll::Pending => return (Poll::Pending, self.have),
            }
        }
    }
}

impl ClientBody {
    /// The head's fields, when `server1` kept them as they came (see
    /// [`RequestBody1::take_fields`](crate::http::server1::RequestBody1::take_fields)).
    pub(crate) fn take_fields(&mut self) -> Option<Box<crate::http::client1::RawHead>> {
        match self {
            ClientBody::Http1(body) => body.take_fields(),
            ClientBody::H2(_) | ClientBody::Gathered(_) | ClientBody::Watched(..) => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Gathered(b) => match b.early.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => Pin::new(&mut b.rest).poll_frame(cx).map_err(Into::into),
            },
            ClientBody::Watched(b, upload) => {
                let Poll::Ready(frame) = Pin::new(&mut **b).poll_frame(cx) else {
                    upload.client_turn.set(true);
                    if let Some(timer) = upload.idle.borrow_mut().as_mut() {
                        if timer.expired(cx) {
                            upload.end();
                            upload.failed.set(Some(UploadFailure::Stalled(timer.limit)));
                            let stalled = RequestBodyStalled(timer.limit);
                            return Poll::Ready(Some(Err(Box::new(stalled))));
                        }
                    }
                    return Poll::Pending;
                };
                if let Some(timer) = upload.idle.borrow_mut().as_mut() {
                    timer.active = true;
                }
                upload.client_turn.set(false);
                upload.took.set(Some(Instant::now()));
                match &frame {
                    Some(Err(_)) => upload.failed.set(Some(UploadFailure::BrokeOff)),
                    Some(Ok(data)) => {
                        if let Some(e) = upload.over_limit(data) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    None => {}
                }
                // The end, a failure, or a last frame.
                if !matches!(frame, Some(Ok(_))) || b.is_end_stream() {
                    upload.end();
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H2(b) => b.is_end_stream(),
            ClientBody::Http1(b) => b.is_end_stream(),
            ClientBody::Gathered(b) => b.early.is_empty() && b.rest.is_end_stream(),
            ClientBody::Watched(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H2(b) => b.size_hint(),
            ClientBody::Http1(b) => b.size_hint(),
            ClientBody::Gathered(b) => {
                // What is left of the body: the frames read early, and what h2 still counts.
                let early: usize = b
                    .early
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(Bytes::len)
                    .sum();
                hint_ahead(b.rest.size_hint(), early as u64)
            }
            ClientBody::Watched(b, _) => b.size_hint(),
        }
    }
}

/// The size of a body that sends `ahead` bytes before a body hinted `rest`.
fn hint_ahead(rest: SizeHint, ahead: u64) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + ahead);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + ahead);
    }
    hint
}

/// A request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// The client's body, streamed, its bytes counted in the route's metrics.
    Counted(ClientBody, Arc<RouteStats>, Option<Arc<AtomicU64>>),
    /// The client's body, streamed, with a bounded copy kept for a mirror.
    Teed(TeeBody),
    /// A body already in memory (mirrors, generated requests); `None` once sent.
    Full(Option<Bytes>),
    /// The client's body, streamed, with a bounded copy kept for retries.
    Replay(super::replay::ReplayBody),
    /// A body sent again on a new HTTP/2 stream after the upstream refused the first one
    /// unprocessed while it streamed: what went on that stream, then the rest as it comes.
    Resumed(Box<Resumed>),
}

/// What [`RequestBody::Resumed`] sends: the chunks sent before, then the rest of the body.
#[derive(Debug)]
pub struct Resumed {
    sent: std::vec::IntoIter<Bytes>,
    rest: RequestBody,
}

impl Resumed {
    pub(crate) fn new(sent: Vec<Bytes>, rest: RequestBody) -> Self {
        Resumed {
            sent: sent.into_iter(),
            rest,
        }
    }
}

impl RequestBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        RequestBody::Full(None)
    }

    /// The body as it is handed to the upstream client: `None` when it has ended (a GET's),
    /// boxed when there is more of it. A request travels from the gateway into the client's
    /// future by value, and a pointer moves where this enum's 150 bytes were copied.
    pub fn boxed(self) -> Option<Box<Self>> {
        (!self.is_end_stream()).then(|| Box::new(self))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Counted(b, stats, received) => {
                let frame = ready!(Pin::new(b).poll_frame(cx));
                if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                    let n = data.map_or(0, Bytes::len);
                    count_received(Some(stats), received.as_deref(), n);
                }
                Poll::Ready(frame)
            }
            RequestBody::Teed(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Resumed(b) => match b.sent.next() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(&mut b.rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Counted(b, _, _) => b.is_end_stream(),
            RequestBody::Teed(b) => b.inner.is_end_stream(),
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Replay(b) => b.is_end_stream(),
            RequestBody::Resumed(b) => b.sent.len() == 0 && b.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Counted(b, _, _) => b.size_hint(),
            RequestBody::Teed(b) => b.inner.size_hint(),
            RequestBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Replay(_) => SizeHint::default(),
            RequestBody::Resumed(b) => {
                let sent: usize = b.sent.as_slice().iter().map(Bytes::len).sum();
                hint_ahead(b.rest.size_hint(), sent as u64)
            }
        }
    }
}

/// Counts request body bytes received from the client: in the route's metrics, and in the
/// request's access log entry when it has one.
pub(crate) fn count_received(stats: Option<&RouteStats>, received: Option<&AtomicU64>, n: usize) {
    if let Some(stats) = stats {
        stats.add_request_bytes(n);
    }
    if let Some(r) = received {
        r.fetch_add(n as u64, Relaxed);
    }
}

/// A bounded copy of a body as it streams (for a mirror, or for replays): chunks are kept until
/// more than `limit` bytes arrived, then the copy is dropped for good.
#[derive(Debug)]
pub(crate) struct BoundedCopy {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
}

impl BoundedCopy {
    /// An empty copy that keeps at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        BoundedCopy {
            chunks: Vec::new(),
            len: 0,
            limit,
            overflowed: false,
        }
    }

    /// Keeps `data`; false once the body outgrew the limit (its copy is gone).
    pub(crate) fn keep(&mut self, data: &Bytes) -> bool {
        if self.overflowed {
            return false;
        }
        if self.len + data.len() > self.limit {
            self.overflowed = true;
            self.chunks = Vec::new();
            return false;
        }
        self.len += data.len();
        self.chunks.push(data.clone());
        true
    }

    /// True when the body outgrew the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The kept chunks, in order.
    pub(crate) fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The kept chunks, in order, taken.
    pub(crate) fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }

    /// The kept bytes as one buffer.
    pub(crate) fn whole(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }
}

/// Streams the client's body upstream and keeps a copy of up to `limit` bytes; when the body
/// ends, the copy goes to whoever waits on the receiver (the mirror). A body over the limit, or
/// one that fails, sends nothing: a mirror never sees a truncated request.
#[derive(Debug)]
pub struct TeeBody {
    inner: ClientBody,
    copy: BoundedCopy,
    done: Option<oneshot::Sender<Bytes>>,
    stats: Option<Arc<RouteStats>>,
    received: Option<Arc<AtomicU64>>,
}

impl TeeBody {
    /// Wraps `inner`; the receiver gets the whole body once it has streamed. Bytes are counted
    /// in `stats` when given.
    pub fn new(
        inner: ClientBody,
        limit: usize,
        stats: Option<Arc<RouteStats>>,
        received: Option<Arc<AtomicU64>>,
    ) -> (Self, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        let tee = TeeBody {
            inner,
            copy: BoundedCopy::new(limit),
            done: Some(tx),
            stats,
            received,
        };
        (tee, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(self.copy.whole());
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let (stats, received) = (this.stats.as_deref(), this.received.as_deref());
                    count_received(stats, received, data.len());
                    if this.done.is_some() && !this.copy.keep(data) {
                        this.done = None;
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Some(Err(_)) => this.done = None,
            None => this.finish(),
        }
        Poll::Ready(frame)
    }
}

/// A response body as it comes from upstream.
#[derive(Debug)]
pub enum FromUpstream {
    /// Read off a pooled HTTP/1 connection by the request's task.
    Http1(Body1),
    /// A stream of an HTTP/2 connection.
    Http2(crate::http::client2::ResponseBody2),
}

impl FromUpstream {
    /// The HTTP/1 connection, when the body ended cleanly and the connection can be reused.
    fn take_idle(&mut self) -> Option<Box<crate::http::client1::Conn1>> {
        match self {
            FromUpstream::Http1(b) => b.take_idle(),
            FromUpstream::Http2(_) => None,
        }
    }
}

impl Body for FromUpstream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            FromUpstream::Http1(b) => Pin::new(b).poll_frame(cx),
            FromUpstream::Http2(b) => Pin::new(&mut b.body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FromUpstream::Http1(b) => b.is_end_stream(),
            FromUpstream::Http2(b) => b.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FromUpstream::Http1(b) => b.size_hint(),
            FromUpstream::Http2(b) => b.body.size_hint(),
        }
    }
}

/// A response body sent to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// An upstream's body, streamed.
    Upstream(UpstreamBody),
    /// A body made by the proxy (errors, redirects, direct responses); `None` once sent.
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A body with no bytes.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// A body from static or owned bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl ResponseBody {
    /// Called while the client takes none of the answer (its socket is full): the route's
    /// `idle_timeout` runs from the last frame or the last bytes the client took
    /// (`progressed`), and once it has run out the answer ends with an error, which closes
    /// the connection. Without it a client that stops reading held its socket, an upstream
    /// connection and a circuit-breaker slot for as long as it liked. A body made by the proxy
    /// has no timer: it is small, and holds nothing upstream.
    pub(crate) fn poll_stalled(
        &mut self,
        progressed: bool,
        cx: &mut Context<'_>,
    ) -> Poll<BodyError> {
        let ResponseBody::Upstream(body) = self else {
            return Poll::Pending;
        };
        let Some(timer) = &mut body.idle else {
            return Poll::Pending;
        };
        timer.active |= progressed;
        if !timer.expired(cx) {
            return Poll::Pending;
        }
        let limit = timer.limit;
        body.cut("downstream_stalled");
        Poll::Ready(Box::new(DownstreamStalled(limit)))
    }

    /// The route's `idle_timeout`, for an upstream's answer that has one: how long its client
    /// may take none of it.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        match self {
            ResponseBody::Upstream(body) => body.idle.as_ref().map(|timer| timer.limit),
            ResponseBody::Full(_) => None,
        }
    }

    /// Ends the answer because its client took none of it for the idle limit (HTTP/2, where
    /// the stream's sender, not the body, finds it out).
    pub(crate) fn cut_stalled(&mut self) {
        if let ResponseBody::Upstream(body) = self {
            body.cut("downstream_stalled");
        }
    }

    /// The upstream head's fields, when they were kept as they came rather than put into the
    /// response's map (see [`RawHead`](crate::http::client1::RawHead)).
    pub(crate) fn raw_head(&self) -> Option<&crate::http::client1::RawHead> {
        match self {
            ResponseBody::Upstream(UpstreamBody {
                inner: FromUpstream::Http1(body),
                ..
            }) => body.raw_head(),
            _ => None,
        }
    }
}

/// Puts the upstream head's fields kept as they came, if they were, into the response's map:
/// for code that reads or changes the response's headers (and may not have been foreseen when
/// they were kept).
pub(crate) fn complete_headers(response: &mut http::Response<ResponseBody>) {
    let raw = match response.body_mut() {
        ResponseBody::Upstream(UpstreamBody {
            inner: FromUpstream::Http1(body),
            ..
        }) => body.take_raw_head(),
        _ => None,
    };
    if let Some(raw) = raw {
        raw.fill(response.headers_mut());
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) if b.compressed() => SizeHint::default(),
            ResponseBody::Upstream(b) => b.inner.size_hint(),
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// An upstream response body on its way to the client. It holds what must live exactly as long
/// as the response: the endpoint's in-flight count, the HTTP/1 connection (returned to the pool
/// only when the body completed, so it is clean for the next request), and the route's stream
/// idle timer.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: FromUpstream,
    in_flight: Option<InFlight>,
    /// Where an HTTP/1 connection goes back when the body ended cleanly.
    pool: Option<Rc<Pool>>,
    idle: Option<IdleTimer>,
    /// Where response bytes are counted.
    bytes: Option<Arc<RouteStats>>,
    /// The request's access log entry, written when the body ends.
    log: Option<(Arc<AccessLogger>, Box<LogEntry>)>,
    /// The request's circuit-breaker slot, given back when the body ends.
    admission: Option<Admission>,
    /// What only some bodies hold, boxed: a response is moved several times on its way to the
    /// client, and with these inline every response was 40 bytes larger, past the size
    /// (256 bytes) up to which `memcpy` takes its short path.
    rare: Option<Box<Rare>>,
}

/// What an [`UpstreamBody`] holds for gRPC answers, traced requests and compressed answers
/// only.
#[derive(Debug, Default)]
struct Rare {
    /// A gRPC answer waiting for its grpc-status in the trailers to be counted.
    grpc_pending: Option<Arc<RouteStats>>,
    /// Spans that end with the body: the attempt's client span, then the request's server span.
    spans: [Option<OpenSpan>; 2],
    /// The gzip stream the body is written into, for a route with `compression`.
    gzip: Option<Gzip>,
    /// Trailers held back while the gzip stream's end goes out before them.
    held: Option<Frame<Bytes>>,
}

/// The stream idle timer of a response body, armed only when the body has to wait: most
/// bodies arrive with their head or stream without a pause, and a timer per response (an
/// allocation, a reset per frame, a wheel entry) cost more than the wait it guards.
#[derive(Debug)]
pub(crate) struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was last armed.
    pub(crate) active: bool,
}

impl IdleTimer {
    /// A timer for `limit`, not armed yet.
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            active: false,
        }
    }

    /// Called when the body waits: arms the timer for `limit` from now if frames came since it
    /// was last armed (or it never was), and says whether it has run out.
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.active {
                    sleep.as_mut().reset(Instant::now() + self.limit);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.limit,
            ))),
        };
        self.active = false;
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body idle for longer than {0:?}")]
pub struct StreamIdleTimeout(Duration);

/// Why a request failed: its client sent none of its body for the route's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent none of the request body for {0:?}")]
pub struct RequestBodyStalled(pub(crate) Duration);

/// Why a request failed: its client's body was longer than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("the request body is longer than the route's max_request_body_bytes ({0})")]
pub struct RequestBodyTooLarge(pub(crate) u64);

/// Why a request failed: its client's body broke off (a close, a reset, a malformed chunk).
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke off")]
pub struct RequestBodyBrokeOff;

/// Why an answer was cut: its client took none of it for the route's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client took none of the response for longer than {0:?}")]
pub struct DownstreamStalled(Duration);

impl UpstreamBody {
    /// Wraps an upstream body. `pool`: where an HTTP/1 connection goes back once the body
    /// ended.
    pub fn new(
        inner: FromUpstream,
        in_flight: Option<InFlight>,
        pool: Option<Rc<Pool>>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        let idle = idle_timeout.map(IdleTimer::new);
        let mut body = UpstreamBody {
            inner,
            in_flight,
            pool,
            idle,
            bytes: None,
            log: None,
            admission: None,
            rare: None,
        };
        if body.inner.is_end_stream() {
            body.complete();
        }
        body
    }

    /// Keeps the request's circuit-breaker slot until the body ends.
    pub fn hold_until_end(&mut self, admission: Admission) {
        if !self.is_complete() {
            self.admission = Some(admission);
        }
    }

    fn is_complete(&self) -> bool {
        self.inner.is_end_stream() && self.in_flight.is_none()
    }

    /// Counts the body's bytes in `stats`.
    pub fn count_bytes(&mut self, stats: Arc<RouteStats>) {
        self.bytes = Some(stats);
    }

    /// Counts the answer in `stats` by the grpc-status of its trailers (or, without one, by
    /// its HTTP status 200) once they arrive or the body ends.
    pub fn count_grpc_status_from_trailers(&mut self, stats: Arc<RouteStats>) {
        self.rare.get_or_insert_default().grpc_pending = Some(stats);
    }

    /// Sends the body gzipped from now on (see `gateway::compress`).
    pub(crate) fn compress(&mut self, gzip: Gzip) {
        self.rare.get_or_insert_default().gzip = Some(gzip);
    }

    /// Whether the body is sent gzipped (its length is then not the upstream's).
    fn compressed(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.gzip.is_some())
    }

    /// Writes `entry` to `logger` when the body ends (or is dropped before).
    pub fn log_on_completion(&mut self, logger: Arc<AccessLogger>, entry: Box<LogEntry>) {
        if self.ended() {
            logger.finish(entry);
        } else {
            self.log = Some((logger, entry));
        }
    }

    /// True once the body has ended and what it held is released.
    fn ended(&self) -> bool {
        self.inner.is_end_stream() && self.pool.is_none() && self.in_flight.is_none()
    }

    /// Ends `span` when the body ends (or is dropped before): at once if it has ended.
    pub fn end_span_with_body(&mut self, span: OpenSpan) {
        if self.ended() {
            return;
        }
        let spans = &mut self.rare.get_or_insert_default().spans;
        if let Some(slot) = spans.iter_mut().find(|s| s.is_none()) {
            *slot = Some(span);
        }
    }

    fn end_spans(&mut self, error: Option<&'static str>) {
        let Some(rare) = self.rare.as_mut() else {
            return;
        };
        for span in &mut rare.spans {
            if let (Some(open), Some(error)) = (span.as_mut(), error) {
                open.set_error(error);
            }
            drop(span.take());
        }
    }

    /// Ends an answer before its end, for `why` (the log's flag, the spans' error): the
    /// connection is dropped rather than pooled (which resets the stream upstream), the
    /// endpoint's in-flight count given back, the log line and spans written.
    fn cut(&mut self, why: &'static str) {
        self.pool = None;
        self.in_flight = None;
        self.finish_log(Some(why));
        self.end_spans(Some(why));
    }

    fn finish_log(&mut self, flag: Option<&str>) {
        if let Some((logger, mut entry)) = self.log.take() {
            if let (Some(flag), true) = (flag, entry.flags.is_empty()) {
                entry.flags = flag.to_owned();
            }
            logger.finish(entry);
        }
    }

    /// Inlined: it runs twice for every answer (at the end and on drop), nearly always to find
    /// no `rare` part; out of line, its prologue alone cost ~40 instructions a request.
    #[inline]
    fn count_grpc(&mut self, status: Option<u16>) {
        if let Some(stats) = self.rare.as_mut().and_then(|r| r.grpc_pending.take()) {
            count_grpc_answer(&stats, status);
        }
    }

    fn complete(&mut self) {
        self.count_grpc(None);
        self.finish_log(None);
        self.end_spans(None);
        self.in_flight = None;
        self.admission = None;
        if let Some(pool) = self.pool.take() {
            if let Some(conn) = self.inner.take_idle() {
                pool.put_http1(conn);
            }
        }
    }
}

/// Counts a gRPC answer: out of line, as it runs only for gRPC routes.
#[inline(never)]
fn count_grpc_answer(stats: &RouteStats, status: Option<u16>) {
    stats.count(200, status);
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        // A compressed answer: trailers held behind the gzip stream's end, then the end.
        if let Some(rare) = this.rare.as_deref_mut() {
            if let Some(held) = rare.held.take() {
                return Poll::Ready(Some(Ok(held)));
            }
            if rare.gzip.as_ref().is_some_and(Gzip::finished) {
                this.complete();
                return Poll::Ready(None);
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let mut frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(timer) = &mut this.idle {
                    if timer.expired(cx) {
                        let limit = timer.limit;
                        this.cut("stream_idle_timeout");
                        return Poll::Ready(Some(Err(Box::new(StreamIdleTimeout(limit)))));
                    }
                }
                return Poll::Pending;
            }
        };
        if let Some(Rare {
            gzip: Some(gzip),
            held,
            ..
        }) = this.rare.as_deref_mut()
        {
            frame = gzipped(gzip, held, frame, this.inner.is_end_stream());
        }
        match &frame {
            Some(Ok(f)) => {
                if let Some(timer) = &mut this.idle {
                    timer.active = true;
                }
                if let Some(data) = f.data_ref() {
                    if let Some(stats) = &this.bytes {
                        stats.add_response_bytes(data.len());
                    }
                    if let Some((_, entry)) = &mut this.log {
                        entry.bytes_sent += data.len() as u64;
                    }
                }
                if let Some(trailers) = f.trailers_ref() {
                    let status = trailers
                        .get(&crate::http::headers::GRPC_STATUS)
                        .and_then(|v| v.to_str().ok()?.parse().ok());
                    if let Some((_, entry)) = &mut this.log {
                        entry.grpc_status = entry.grpc_status.or(status);
                    }
                    this.count_grpc(status);
                }
                if this.inner.is_end_stream() {
                    this.complete();
                }
            }
            // The upstream cut its answer short (closed, reset, a bad chunk): its fault, not
            // the client's, which the drop would log.
            Some(Err(_)) => this.cut("upstream_reset"),
            None => this.complete(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
            && self
                .rare
                .as_ref()
                .is_none_or(|r| r.held.is_none() && r.gzip.as_ref().is_none_or(Gzip::finished))
    }
}

/// A frame of an answer as its gzip stream makes it: data compressed and flushed (with the
/// stream's end after the last of it), trailers held back behind that end, the body's end
/// turned into the stream's.
#[inline(never)]
fn gzipped(
    gzip: &mut Gzip,
    held: &mut Option<Frame<Bytes>>,
    frame: Option<Result<Frame<Bytes>, BodyError>>,
    last: bool,
) -> Option<Result<Frame<Bytes>, BodyError>> {
    let data = |bytes: Vec<u8>| Some(Ok(Frame::data(Bytes::from(bytes))));
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(chunk) => {
                let mut out = gzip.push(&chunk);
                if last {
                    out.extend_from_slice(&gzip.finish());
                }
                data(out)
            }
            Err(trailers) => {
                *held = Some(trailers);
                data(gzip.finish())
            }
        },
        None if !gzip.finished() => data(gzip.finish()),
        other => other,
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A gRPC answer cut short is still an answer: count it by its HTTP status.
        self.count_grpc(None);
        // Dropped before its end: the client went away (or the stream failed).
        self.finish_log(Some("downstream_closed"));
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    async fn expired(timer: &mut IdleTimer) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(timer.expired(cx))).await
    }

    #[tokio::test]
    async fn the_idle_timer_counts_from_the_first_wait_after_the_last_frame() {
        let mut timer = IdleTimer::new(Duration::from_secs(1));
        assert!(!expired(&mut timer).await, "armed at the first wait");
        tokio::time::sleep(Duration::from_millis(600)).await;
        // A frame came: the next wait re-arms for the full limit.
        timer.active = true;
        assert!(!expired(&mut timer).await);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !expired(&mut timer).await,
            "1.2 s after the first wait, 0.6 s after the frame: not idle for 1 s yet"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(expired(&mut timer).await, "1.2 s without a frame");
    }
}
