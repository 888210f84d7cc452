//! Requests to HTTP/2 upstreams, on the h2 crate's client connections directly (the pool opens
//! them and runs each on a task of its own).
//!
//! hyper's HTTP/2 client, which this replaces, handed every request from the caller's task to
//! the connection's task over a channel and the answer back over a oneshot, spawned a task per
//! request to await the answer (and another to send a body that did not go at once), and parsed
//! and stripped headers the gateway had already made right. Here the caller opens the stream on
//! the shared connection itself and awaits its answer; a body that does not go whole at once is
//! sent by a task of its own, as it must go on while the answer streams (gRPC).

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BodyError, BoundedCopy, RequestBody, Resumed};
use crate::http::pool::Lease2;
use crate::http::stream2::{self, RecvBody};

/// Sends `req` on the connection `lease` holds a stream on, and waits for the answer's head. The
/// request's URI is absolute (`:scheme` and `:authority` come from it) and its head holds no
/// connection-specific field (the gateway left them out).
///
/// A request comes back in the failure, to go again on another stream, when it was never
/// sent (the connection was going away or gone), and when the upstream refused its stream
/// unprocessed ([`refused_unprocessed`]) and what it sent is at hand again: its head (copied
/// before it went) and its body's chunks sent so far, up to [`KEPT_BODY_LIMIT`] bytes, followed
/// by the rest of the body when it was still arriving. So does an idempotent request without a
/// body whose reused connection ended (closed or reset, with no `GOAWAY` to say which streams
/// it processed) before its answer: the HTTP/1 client's rule for a connection the upstream
/// closed as the request came, and nginx's `proxy_next_upstream error` for such requests.
///
/// The lease is held by the answer's body, until the answer ends; a connection that gave a
/// request back because it is going away is retired from the pool.
pub(crate) async fn send(
    lease: Lease2,
    req: Box<Request<RequestBody>>,
) -> Result<Response<ResponseBody2>, Failed> {
    // Fails when the connection is going away (the upstream sent `GOAWAY`) or gone: then no
    // stream was opened and the request is given back, to go on another connection.
    let mut sender = match lease.sender().ready().await {
        Ok(sender) => sender,
        Err(error) => {
            lease.retire();
            return Err(Failed {
                error,
                unsent: Some(req),
            });
        }
    };
    let failed = |error| Failed {
        error,
        unsent: None,
    };
    let (mut head, body) = req.into_parts();
    let end = body.is_end_stream();
    if !end {
        if let Some(len) = body.size_hint().exact() {
            head.headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
    }
    let copy = head.clone();
    let (answer, mut tx) = sender
        .send_request(Request::from_parts(head, ()), end)
        .map_err(failed)?;
    let mut sending = None;
    // The body to send again, when it went whole at once.
    let mut again = end.then(RequestBody::empty);
    // The chunks sent, while the answer's head has not come.
    let mut kept_copy = None;
    if !end {
        let mut kept = Kept::new(body);
        kept_copy = Some(Rc::clone(&kept.copy));
        let mut pipe = Box::pin(async move {
            stream2::send_body(&mut kept, &mut tx, None).await;
            kept.into_again()
        });
        // A body that is all here (a gRPC unary call's message) goes now, without a task.
        match poll_fn(|cx| Poll::Ready(pipe.as_mut().poll(cx))).await {
            Poll::Ready(whole) => again = whole,
            // The rest goes from a task of its own, which gives the body back if the stream
            // was refused while it sent.
            Poll::Pending => sending = Some(Sending(Some(crate::runtime::busy_poll::spawn(pipe)))),
        }
    }
    let answer = match answer.await {
        Ok(answer) => answer,
        Err(error) => {
            // The connection ended under it (no `GOAWAY` said what it processed): idempotent
            // and without a body (RFC 9110 9.2.2), on a connection that carried a stream
            // before, it may go again, as for HTTP/1.
            let lost = error.is_io() && end && copy.method.is_idempotent() && lease.reused();
            let body = match (again, sending) {
                _ if !refused_unprocessed(&error) && !lost => None,
                (Some(whole), _) => Some(whole),
                (None, Some(sending)) => sending.body_back().await,
                (None, None) => None,
            };
            let unsent = body.map(|body| Box::new(Request::from_parts(copy, body)));
            // A connection going away, or ended, takes no new stream. One that refused a
            // stream (`REFUSED_STREAM`: over the streams it allows, as it may be before the
            // proxy has its `SETTINGS`) stays: the request goes on whichever has room, maybe it.
            if unsent.is_some() && (error.is_go_away() || lost) {
                lease.retire();
            }
            return Err(Failed { error, unsent });
        }
    };
    // Answered: the stream was processed, and its body will not go again. The copy is let go
    // now, not held while a stream (gRPC's) lasts, and so is a body its task gave back.
    if let Some(kept) = kept_copy {
        kept.take();
    }
    if sending.as_ref().is_some_and(Sending::is_finished) {
        sending = None;
    }
    let (head, recv) = answer.into_parts();
    let declared = stream2::declared_length(&head.headers);
    let body = ResponseBody2 {
        body: RecvBody::new(recv, declared),
        _sending: sending,
        _lease: lease,
    };
    Ok(Response::from_parts(head, body))
}

/// Whether the upstream refused a stream before its answer without processing it, so that it
/// may go again, whatever its method:
/// - its `GOAWAY` (a graceful one, `NO_ERROR`) named a last stream below it (RFC 9113, 6.8).
///   Servers age connections out so (nginx after `keepalive_requests`); the streams a proxy
///   opened while the `GOAWAY` was on its way are refused. h2 fails only those streams with the
///   peer's `GOAWAY` as their error: the streams it processed go on, and any still open when
///   the connection ends fail as a broken pipe. A `GOAWAY` with an error code may end the
///   connection's other streams with it too, so only `NO_ERROR` says "unprocessed" for certain;
/// - it reset the stream with `REFUSED_STREAM` (8.7), as servers do past their concurrent
///   streams.
fn refused_unprocessed(error: &h2::Error) -> bool {
    if !error.is_remote() {
        return false;
    }
    match error.reason() {
        Some(h2::Reason::NO_ERROR) => error.is_go_away(),
        Some(h2::Reason::REFUSED_STREAM) => error.is_reset(),
        _ => false,
    }
}

/// The most of a request body kept to send again (see [`send`]). A stream the upstream refuses
/// unprocessed was sent at most its window: 64 KiB at nginx, whose `GOAWAY`s are the common
/// refusal, and at h2's servers. But the proxy had read more by then: the chunk h2 took over the
/// window and the next, waiting for room. From an HTTP/2 client those are 16 KiB frames, so such
/// a body goes again whatever its length (to a window up to 224 KiB); from an HTTP/1 client, a
/// read of up to 256 KiB each, so one goes again when it fits here (always up to 256 KiB). With
/// 64 KiB kept, a body over it refused so got 502. The copy costs no bytes (chunks are reference
/// counted), only its hold on them until the answer's head comes: at most this much a request in
/// flight.
const KEPT_BODY_LIMIT: usize = 256 * 1024;

/// A request body as it is sent, its chunks kept while they come to no more than
/// [`KEPT_BODY_LIMIT`] bytes and no trailers come, and until [`send`] takes the copy away (the
/// answer came).
#[derive(Debug)]
struct Kept {
    body: RequestBody,
    /// Shared with [`send`]; `None` once taken away.
    copy: Rc<RefCell<Option<BoundedCopy>>>,
    /// Trailers came, or the body failed: not sent again.
    spoilt: bool,
    /// The body said it ended.
    ended: bool,
}

impl Kept {
    fn new(body: RequestBody) -> Self {
        Kept {
            body,
            copy: Rc::new(RefCell::new(Some(BoundedCopy::new(KEPT_BODY_LIMIT)))),
            spoilt: false,
            ended: false,
        }
    }

    /// The body to send again, once its sending stopped (it ended, or the stream was reset),
    /// when its copy is whole and still wanted: what was read of it, then (when it had not
    /// ended) the rest as it comes.
    fn into_again(self) -> Option<RequestBody> {
        let copy = self.copy.take()?;
        if self.spoilt || copy.overflowed() {
            return None;
        }
        if self.ended || self.body.is_end_stream() {
            return Some(RequestBody::Full(Some(copy.whole())));
        }
        let resumed = Resumed::new(copy.into_chunks(), self.body);
        Some(RequestBody::Resumed(Box::new(resumed)))
    }
}

impl Body for Kept {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            Some(Ok(Some(data))) => {
                if let Some(copy) = this.copy.borrow_mut().as_mut() {
                    copy.keep(data);
                }
            }
            Some(_) => this.spoilt = true,
            None => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why an HTTP/2 request got no answer.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: h2::Error,
    /// The request, when it may go again on a new connection: it was never sent (no stream
    /// was opened for it), or the upstream refused it unprocessed (see [`send`]).
    pub(crate) unsent: Option<Box<Request<RequestBody>>>,
}

/// The task sending a request's body, ended (and the stream reset, `CANCEL`) when the answer is
/// dropped before the body went whole: a request timed out, or whose client left, stops
/// sending at once rather than when its client's body ends. The task ends with the body to
/// send again (see [`Kept::into_again`]).
#[derive(Debug)]
struct Sending(Option<tokio::task::JoinHandle<Option<RequestBody>>>);

impl Sending {
    fn is_finished(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// The body to send again, once the task stopped: the stream's reset ends it.
    async fn body_back(mut self) -> Option<RequestBody> {
        self.0.take()?.await.ok().flatten()
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// An HTTP/2 upstream's answer body; while it is read, the request's body may still be sent.
#[derive(Debug)]
pub struct ResponseBody2 {
    pub(crate) body: RecvBody,
    _sending: Option<Sending>,
    /// The stream's place on its connection, given back when the answer is dropped.
    _lease: Lease2,
}
