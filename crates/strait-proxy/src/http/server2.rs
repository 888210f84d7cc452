//! The HTTP/2 server for client connections (h2c with prior knowledge, or TLS whose ALPN chose
//! `h2`), on the h2 crate's connection directly.
//!
//! hyper's HTTP/2 server, which this replaces, is a layer over the same h2 connection: it
//! wraps the socket twice (its own I/O traits and back), spawns each stream's service future
//! and pipes the answer's body through its own state machines, strips connection headers by
//! six hashed lookups, sets `date` and `content-length`, and runs a keep-alive ponger polled on
//! every turn of the connection. Served here, a stream is one task that calls the gateway and
//! sends what it answers: h2c under callgrind (h2load, 8 connections x 16 streams), 34,168 ->
//! 32,164 instructions a proxied request.
//!
//! What the server does, as hyper's did, and what it does differently:
//! - The same HTTP/2 settings (windows of 1 MiB, 16 KiB frames, a 16 KiB header list, 400 KiB
//!   of send buffer per stream, at most 1,024 streams reset for the client's errors), but for
//!   the streams a client may cancel before they are taken up ([`pending_cancels`]).
//! - A stream whose client resets it while the gateway works on it is dropped: the gateway's
//!   future with it, and with that its upstream request.
//! - A client that resets most of its streams before they are answered (a "rapid reset", whose
//!   resets free the places among its open streams as soon as its requests have started
//!   upstream work) has its connection closed ([`Cancels`]).
//! - An answer's chunk with more to come waits for room in the client's window (the upstream
//!   is read no faster than the client takes the answer); while it waits, the route's
//!   `idle_timeout` runs, and a client that takes nothing for that long has its stream reset
//!   (`CANCEL`) and the answer logged `downstream_stalled`. The last chunk does not wait: h2
//!   holds it until the window takes it, and the upstream's side of the answer ends now.
//! - Keep-alive pings (with an idle timeout): one every idle timeout, and a connection whose
//!   client answers none within [`PONG_TIMEOUT`] (or the idle timeout, when shorter) is
//!   closed. hyper pinged only after a quiet interval; one 17-byte frame per interval is not
//!   worth a timer reset per frame read.
//! - `expect: 100-continue` is answered `100 Continue` when the gateway first reads the body
//!   (hyper's HTTP/2 server never sent one).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{header, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::gateway::{self, Connection};
use crate::http::body::ClientBody;
use crate::http::stream2::{self, KeepAlive, RecvBody, Sent};
use crate::http::{headers, Batched, Lingering, H2_RESETS_KEPT, H2_RESETS_KEPT_FOR};
use crate::telemetry::metrics::ListenerStats;

/// The flow-control window the client is given, per stream and for the connection: what it
/// may send before the proxy reads it.
const WINDOW: u32 = 1024 * 1024;
/// The largest frame the client may send.
const MAX_FRAME: u32 = 16 * 1024;
/// The largest header list the client may send (`SETTINGS_MAX_HEADER_LIST_SIZE`).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// The most an answer's stream buffers for the client beyond its window.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// The most streams reset because the client broke the protocol on them, before the
/// connection is closed (a rapid-reset defence, h2's count).
const MAX_ERROR_RESETS: usize = 1024;
/// How long a keep-alive ping may go unanswered before the connection is taken for dead (or
/// the idle timeout, when shorter).
const PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// How many streams the client cancelled before the server took them up may wait at once to be
/// taken up (and dropped), before the connection is closed with `GOAWAY` `ENHANCE_YOUR_CALM`.
///
/// h2 reads all a connection has before its streams are taken up, and allows 20 by default. A
/// gateway in front of this proxy cancels many streams at once when many of its clients leave
/// at once (a load generator ending its run), each right after its head: past 20 in one read,
/// the connection was closed, and every other request on it failed (502 at the gateway; the
/// soak's uploads through its HTTP/2 sidecar met it a few times a minute). Twice the streams a
/// client may have open allows all of them cancelled, and as many opened and cancelled again
/// before the server reads. The bound is still there for what it is for: streams that are
/// cancelled take no place among the open ones, and each waiting one holds its request head.
fn pending_cancels(streams: u32) -> usize {
    usize::try_from(streams).map_or(usize::MAX, |n| n.saturating_mul(2).max(20))
}

/// How soon after its head a stream the client resets, unanswered, counts against the
/// connection (a "premature" reset, in Envoy's word and with its figure).
const PREMATURE_WITHIN: Duration = Duration::from_secs(1);
/// The streams a connection is judged over at the least: until it has taken up this many, more
/// than half this many premature resets close it.
const JUDGED_OVER: u32 = 500;

/// The streams a client connection's client reset before they were answered, within
/// [`PREMATURE_WITHIN`] of their heads, against the streams it opened: more than half of them
/// (and more than half of [`JUDGED_OVER`]) and the connection is closed with `GOAWAY`
/// `ENHANCE_YOUR_CALM`, counted in `strait_listener_http2_reset_floods_total`.
///
/// A reset frees its stream's place among the client's open ones at once, while the request it
/// cancels has been routed and sent upstream: a client that opens streams and resets each once
/// its request is on its way ("rapid reset", CVE-2023-44487) has upstreams work without end at
/// the cost of two frames a request, whatever `max_concurrent_streams` says. h2 catches only
/// the streams reset before the server takes them up, in one read ([`pending_cancels`]); the
/// frame meter charges a reset one token and pays ten for each stream. The resets h2 makes for
/// the client's errors on a stream count as the client's: a body longer than it declared, sent
/// once the request is upstream, has h2 reset the stream to the same effect ("MadeYouReset",
/// CVE-2025-8671; h2 alone allows 1,024 a connection). Envoy closes such connections by the
/// same rule; nghttp2 rate-limits `RST_STREAM` instead.
///
/// What a client with cause cancels stays under it: a gateway in front whose clients leave
/// (all of a connection's open streams at once, then more requests), hedged requests (the
/// losers a Strait gateway cancels are within its cluster's retry budget, 20 % of requests by
/// default; a hedging client with no budget whose every request hedges more than once would
/// pass it), and deadlines over a second (gRPC's, an upstream that hangs).
#[derive(Default)]
struct Cancels {
    /// Streams taken up.
    opened: Cell<u32>,
    /// Streams the client reset before they were answered, within [`PREMATURE_WITHIN`].
    premature: Cell<u32>,
    /// The bound was passed: the connection is to close.
    over: Cell<bool>,
    /// The connection's task, woken when the bound is passed.
    waiting: Cell<Option<Waker>>,
}

impl Cancels {
    fn opened(&self) {
        self.opened.set(self.opened.get().saturating_add(1));
    }

    /// Counts a stream whose head came at `arrived` reset by the client before its answer went.
    fn reset(&self, arrived: Instant) {
        if arrived.elapsed() >= PREMATURE_WITHIN {
            return;
        }
        let premature = self.premature.get().saturating_add(1);
        self.premature.set(premature);
        let judged = self.opened.get().max(JUDGED_OVER);
        if u64::from(premature) * 2 > u64::from(judged) && !self.over.replace(true) {
            if let Some(task) = self.waiting.take() {
                task.wake();
            }
        }
    }

    /// Whether the bound was passed; the connection's task (`cx`) is woken when it is.
    fn poll_over(&self, cx: &Context<'_>) -> bool {
        if self.over.get() {
            return true;
        }
        // Most turns the task is the same one: its waker is kept, not cloned again.
        let task = match self.waiting.take() {
            Some(task) if task.will_wake(cx.waker()) => task,
            _ => cx.waker().clone(),
        };
        self.waiting.set(Some(task));
        false
    }
}

/// Serves HTTP/2 on a client connection whose preface is next in `io` (a [`Rewound`] gives
/// back the bytes the HTTP/1 server read first), until the client closes, the listener drains,
/// or nothing is in flight for `idle_timeout` (then `GOAWAY`: streams still sending their
/// answers finish; new ones go elsewhere).
///
/// [`Rewound`]: crate::http::Rewound
pub(crate) async fn serve_h2<I>(
    io: I,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let peer = conn.peer;
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .max_pending_accept_reset_streams(pending_cancels(conn.h2_streams))
        .max_concurrent_reset_streams(H2_RESETS_KEPT)
        .reset_stream_duration(H2_RESETS_KEPT_FOR)
        .max_concurrent_streams(conn.h2_streams);
    let handshake = builder.handshake::<_, Bytes>(Batched::new(io, stats.clone()));
    let drained = drain.wait_for(|d| *d);
    let idle = idle_for(&conn.activity, idle_timeout);
    tokio::pin!(drained, idle);
    // A client that never finishes its preface is closed by the same timers.
    let mut h2 = tokio::select! {
        shook = handshake => match shook {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        _ = drained.as_mut() => return,
        () = idle.as_mut() => return,
    };
    let mut keep_alive = idle_timeout
        .zip(h2.ping_pong())
        .map(|(every, pings)| KeepAlive::new(pings, every, PONG_TIMEOUT.min(every)));
    let mut closing = false;
    let cancels = Rc::new(Cancels::default());
    let mut calmed = false;
    let ended = poll_fn(|cx| {
        if !closing && (drained.as_mut().poll(cx).is_ready() || idle.as_mut().poll(cx).is_ready()) {
            closing = true;
            h2.graceful_shutdown();
        }
        if !calmed && cancels.poll_over(cx) {
            // Streams the client opened after the last one taken up are refused by the `GOAWAY`;
            // those still open end with the connection.
            calmed = true;
            tracing::debug!(
                %peer,
                opened = cancels.opened.get(),
                reset = cancels.premature.get(),
                "most streams reset before their answers: closing"
            );
            if let Some(stats) = &stats {
                stats.http2_reset_flooded();
            }
            h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
        }
        if keep_alive.as_mut().is_some_and(|k| k.poll_dead(cx)) {
            tracing::debug!(%peer, "keep-alive ping unanswered: closing");
            keep_alive = None;
            h2.abrupt_shutdown(Reason::NO_ERROR);
        }
        loop {
            match ready!(h2.poll_accept(cx)) {
                Some(Ok((req, respond))) => {
                    // Boxed, the task holds a pointer: tokio moves a task's future in and its
                    // stages over it, at the future's full size (kilobytes, with the gateway's).
                    let conn = Rc::clone(&conn);
                    cancels.opened();
                    let cancels = Rc::clone(&cancels);
                    let stream = crate::http::boxed(|| serve_stream(req, respond, conn, cancels));
                    crate::runtime::busy_poll::spawn(stream);
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// Serves one stream: the gateway answers its request, and the answer is sent. A reset by the
/// client before the answer is whole is counted in `cancels`.
async fn serve_stream(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    conn: Rc<Connection>,
    cancels: Rc<Cancels>,
) {
    // One clock read: the request's arrival, for the gateway and for a reset's count.
    let arrived = Instant::now();
    // Counted from here until the answer is sent whole or the stream reset: an answer still
    // streaming keeps the connection from its idle timeout.
    let _open = gateway::OpenStream::new(Rc::clone(&conn));
    let declared = (!req.body().is_end_stream())
        .then(|| stream2::declared_length(req.headers()))
        .flatten();
    let mut respond = if expects_continue(&req) {
        Respond::Shared(Rc::new(RefCell::new(respond)))
    } else {
        Respond::Own(respond)
    };
    let req = req.map(|recv| {
        let continued = match &respond {
            Respond::Shared(shared) => Some(Rc::clone(shared)),
            Respond::Own(_) => None,
        };
        ClientBody::H2(RequestBody2 {
            body: Some(RecvBody::new(recv, declared)),
            continued,
        })
    });
    let serving = gateway::serve(req, conn, arrived);
    tokio::pin!(serving);
    // The client may reset the stream while the gateway works: then nobody waits for it. On
    // the first turn that is asked first: a stream cancelled before it was taken up (a gateway
    // in front whose client left, see `pending_cancels`) reaches no route and no upstream. A
    // request that waits on its upstream asks once a turn either way. A reset ends the stream
    // with `Err(true)`; a failed connection (`poll_reset`'s error) with `Err(false)`: that is
    // no client's reset, and is not counted.
    let mut first = true;
    let reply = poll_fn(|cx| {
        let asked = std::mem::take(&mut first);
        if asked {
            if let Poll::Ready(reset) = respond.with(|r| r.poll_reset(cx)) {
                return Poll::Ready(Err(reset.is_ok()));
            }
        }
        match serving.as_mut().poll(cx) {
            Poll::Ready(Ok(reply)) => Poll::Ready(Ok(reply)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending if asked => Poll::Pending,
            Poll::Pending => respond
                .with(|r| r.poll_reset(cx))
                .map(|reset| Err(reset.is_ok())),
        }
    })
    .await;
    let mut reply = match reply {
        Ok(reply) => reply,
        Err(by_client) => {
            if by_client {
                cancels.reset(arrived);
            }
            return;
        }
    };
    // The head is taken out of the boxed answer field by field, and the body stays in it: a
    // response moved out whole is a copy of some 300 bytes, and one more to put it back together.
    let mut head = Response::new(());
    *head.status_mut() = reply.status();
    let fields = head.headers_mut();
    *fields = std::mem::take(reply.headers_mut());
    // One pass over the names says whether the answer has a connection-specific field, which
    // HTTP/2 refuses (RFC 9113 8.2.2; a route's own header edits could have set one), a `date`
    // and a known length: where a hashed lookup each cost more, and a pass of its own for the
    // first ~60 instructions (an upstream's answer has the last two and not the first, as a
    // rule).
    let (mut hop, mut dated, mut sized) = (0, false, false);
    for name in fields.keys() {
        hop |= headers::hop_by_hop_bit(name);
        dated |= name == header::DATE;
        sized |= name == header::CONTENT_LENGTH;
    }
    if hop != 0 {
        headers::strip_hop_by_hop(fields, false);
    }
    if !dated {
        fields.insert(header::DATE, headers::http_date());
    }
    let end = reply.body().is_end_stream();
    if !end && !sized {
        if let Some(len) = reply.body().size_hint().exact() {
            fields.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let mut tx = match respond.with(|r| r.send_response(head, end)) {
        Ok(tx) => tx,
        Err(e) => {
            // A stream reset while its answer was made, which the answer beat to this task: the
            // client's reset, or h2's for the client's error on the stream (a body longer than
            // it declared, which also ends the answer), counts as the client's.
            let reset = poll_fn(|cx| Poll::Ready(respond.with(|r| r.poll_reset(cx)))).await;
            match reset {
                Poll::Ready(Ok(_)) => cancels.reset(arrived),
                _ => respond.with(|r| r.send_reset(Reason::INTERNAL_ERROR)),
            }
            return tracing::debug!(error = %e, "HTTP/2 answer not sent");
        }
    };
    if end {
        return;
    }
    let idle = reply.body().idle_limit();
    match stream2::send_body(reply.body_mut(), &mut tx, idle).await {
        // The client kept its window shut for the route's idle timeout.
        Sent::Stalled => reply.body_mut().cut_stalled(),
        Sent::Reset => cancels.reset(arrived),
        Sent::Ended => {}
    }
}

/// A stream's response handle: shared with its request body while the client waits for
/// `100 Continue`, which the body sends when first read.
enum Respond {
    Own(SendResponse<Bytes>),
    Shared(Rc<RefCell<SendResponse<Bytes>>>),
}

impl Respond {
    fn with<R>(&mut self, f: impl FnOnce(&mut SendResponse<Bytes>) -> R) -> R {
        match self {
            Respond::Own(respond) => f(respond),
            Respond::Shared(shared) => f(&mut shared.borrow_mut()),
        }
    }
}

/// Whether the client waits for `100 Continue` before it sends the body it declared.
fn expects_continue(req: &Request<RecvStream>) -> bool {
    !req.body().is_end_stream()
        && req.headers().get(header::EXPECT).is_some_and(|v| {
            v.as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
        })
}

/// A request body as its client sends it on an HTTP/2 stream; it asks for the body with
/// `100 Continue` when first read, if the client waits for that.
///
/// Dropped before its end (an answer came before the upload ended), what is left of it is read
/// and dropped by a task of its own, up to [`DRAIN_BYTES`] while it keeps coming, so that the
/// stream ends as the client ends it. Dropping the stream instead makes h2 reset it
/// (`NO_ERROR`), and the `DATA` frames the client sent before it saw the reset then count, once
/// h2 has forgotten the stream, as the client's errors: a busy connection whose uploads were
/// answered early was closed after about a thousand (see [`H2_RESETS_KEPT`]).
#[derive(Debug)]
pub struct RequestBody2 {
    /// `None` once handed to the drain.
    body: Option<RecvBody>,
    /// The stream's response handle, while `100 Continue` is owed.
    continued: Option<Rc<RefCell<SendResponse<Bytes>>>>,
}

/// The most of a request body read and dropped after its answer (see [`RequestBody2`]); past
/// it, the stream is reset, which tells the client to stop (RFC 9113 8.1).
const DRAIN_BYTES: usize = 1 << 20;

impl Drop for RequestBody2 {
    fn drop(&mut self) {
        // A client still owed its `100 Continue` sends nothing more: the reset tells it so.
        if self.continued.is_some() || self.body.as_ref().is_none_or(RecvBody::read_whole) {
            return;
        }
        let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) else {
            return;
        };
        crate::runtime::busy_poll::spawn(drain(body));
    }
}

/// Reads and drops what is left of `body`: up to [`DRAIN_BYTES`], within [`Lingering`]'s
/// bounds.
async fn drain(mut body: RecvBody) {
    let lingering = Lingering::start();
    let mut left = DRAIN_BYTES;
    loop {
        let next = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(lingering.next_by(), next).await {
            Ok(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, Bytes::len);
                match left.checked_sub(n) {
                    Some(rest) => left = rest,
                    None => return,
                }
            }
            _ => return,
        }
    }
}

impl Body for RequestBody2 {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if let Some(respond) = this.continued.take() {
            // The body is wanted: the client may send it (RFC 9110 10.1.1).
            let mut go_on = Response::new(());
            *go_on.status_mut() = http::StatusCode::CONTINUE;
            let _ = respond.borrow_mut().send_informational(go_on);
        }
        match &mut this.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(RecvBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), RecvBody::size_hint)
    }
}

/// Completes once no request has been pending for `limit` (never when `limit` is `None`).
async fn idle_for(activity: &gateway::Activity, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        match activity.idle_since() {
            Some(since) if since.elapsed() >= limit => return,
            Some(since) => tokio::time::sleep_until(since + limit).await,
            None => tokio::time::sleep(limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `n` streams opened and reset, their heads at `arrived`.
    fn open_and_reset(cancels: &Cancels, n: u32, arrived: Instant) {
        for _ in 0..n {
            cancels.opened();
            cancels.reset(arrived);
        }
    }

    #[test]
    fn more_than_half_of_the_streams_reset_early_is_over() {
        let now = Instant::now();
        // A new connection is judged over 500 streams: 250 resets are half.
        let cancels = Cancels::default();
        open_and_reset(&cancels, 250, now);
        assert!(!cancels.over.get(), "250 of 500");
        open_and_reset(&cancels, 1, now);
        assert!(cancels.over.get(), "251 of 500");

        // Past 500, over half of those opened.
        let cancels = Cancels::default();
        for _ in 0..1000 {
            cancels.opened();
        }
        for _ in 0..500 {
            cancels.reset(now);
        }
        assert!(!cancels.over.get(), "500 of 1,000");
        cancels.reset(now);
        assert!(cancels.over.get(), "501 of 1,000");
    }

    #[test]
    fn a_reset_a_second_after_its_head_does_not_count() {
        let cancels = Cancels::default();
        let long_ago = Instant::now()
            .checked_sub(PREMATURE_WITHIN)
            .expect("a second ago");
        open_and_reset(&cancels, 1000, long_ago);
        assert_eq!(cancels.premature.get(), 0);
        assert!(!cancels.over.get());
    }

    #[test]
    fn the_connection_task_is_woken_once_when_over() {
        let woken = Arc::new(Counted(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&woken));
        let cx = Context::from_waker(&waker);
        let cancels = Cancels::default();
        assert!(!cancels.poll_over(&cx));
        // Asked again by the same task: one waker kept.
        assert!(!cancels.poll_over(&cx));
        open_and_reset(&cancels, 300, Instant::now());
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(cancels.poll_over(&cx));
    }
}
