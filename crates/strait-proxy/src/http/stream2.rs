//! What both ends of the proxy's HTTP/2 share, on the h2 crate's streams: a stream's received
//! half as a body ([`RecvBody`]), a body sent on a stream as the peer's window takes it
//! ([`send_body`]), and keep-alive pings on a connection ([`KeepAlive`]). The server side
//! (`server2`) reads requests and sends answers with them; the client side (`client2`) sends
//! requests and reads answers.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BodyError, IdleTimer};

/// The data and trailers a peer sends on a stream, as a body. Each chunk's bytes are given back
/// to the peer's window as the chunk is taken: the window bounds what h2 holds, not what the
/// other side has yet to read.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    /// What is left of the length the message declared.
    left: Option<u64>,
    /// The data has ended; trailers may follow.
    data_done: bool,
}

impl RecvBody {
    /// The body of a message that declared `declared` bytes (see [`declared_length`]).
    pub(crate) fn new(recv: RecvStream, declared: Option<u64>) -> Self {
        // A stream that ended with its head has no body, whatever it declared.
        let left = if recv.is_end_stream() {
            Some(0)
        } else {
            declared
        };
        RecvBody {
            recv,
            left,
            data_done: false,
        }
    }

    /// Nothing more is due, as far as this side knows without asking h2 (a lock): the message
    /// ended with its head, or its declared length has been read.
    pub(crate) fn read_whole(&self) -> bool {
        self.left == Some(0)
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // `RST_STREAM` with `NO_ERROR` ends the body early without failing it (RFC 9113
                // 8.1): the peer has its answer and needs no more.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// The length a message declares, when all its `content-length` fields agree on one (h2 has
/// checked the first against the data the peer sends).
pub(crate) fn declared_length(fields: &http::HeaderMap) -> Option<u64> {
    let mut values = fields.get_all(http::header::CONTENT_LENGTH).iter();
    let first = crate::http::client1::content_length(values.next()?.as_bytes())?;
    values
        .all(|v| crate::http::client1::content_length(v.as_bytes()) == Some(first))
        .then_some(first)
}

/// How [`send_body`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The body went whole (the last of it may still wait in h2 for the window), failed, or
    /// the connection failed: either way there is nothing left to do.
    Ended,
    /// The peer reset the stream before the body went whole.
    Reset,
    /// The peer kept its window shut for the idle limit while a chunk waited: the stream was
    /// reset (`CANCEL`).
    Stalled,
}

/// Sends `body` on `tx` as the peer's window takes it. A chunk with more to come waits for room
/// in the window (the body is read no faster than the peer takes it), and while it waits
/// `idle` runs, from the last chunk the peer took; the last chunk and the trailers are handed
/// to h2 at once, which holds them until the window takes them. A body that fails resets the
/// stream with [`reset_reason`].
pub(crate) async fn send_body<B>(
    body: &mut B,
    tx: &mut SendStream<Bytes>,
    idle: Option<Duration>,
) -> Sent
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    // A chunk with more to come, waiting for room in the peer's window.
    let mut waiting: Option<Bytes> = None;
    let mut stall = idle.map(IdleTimer::new);
    poll_fn(|cx| loop {
        match tx.poll_reset(cx) {
            Poll::Ready(Ok(_)) => return Poll::Ready(Sent::Reset),
            Poll::Ready(Err(_)) => return Poll::Ready(Sent::Ended),
            Poll::Pending => {}
        }
        if let Some(chunk) = waiting.take() {
            while tx.capacity() == 0 {
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Sent::Ended),
                    Poll::Pending => {
                        if stall.as_mut().is_some_and(|timer| timer.expired(cx)) {
                            tx.send_reset(Reason::CANCEL);
                            return Poll::Ready(Sent::Stalled);
                        }
                        waiting = Some(chunk);
                        return Poll::Pending;
                    }
                }
            }
            // The peer took what was sent before: its idle time counts from now.
            if let Some(timer) = stall.as_mut() {
                timer.active = true;
            }
            if tx.send_data(chunk, false).is_err() {
                return Poll::Ready(Sent::Ended);
            }
            continue;
        }
        let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let e: BodyError = e.into();
                tx.send_reset(reset_reason(&*e));
                return Poll::Ready(Sent::Ended);
            }
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return Poll::Ready(Sent::Ended);
            }
        };
        match frame.into_data() {
            Ok(chunk) => {
                let end = body.is_end_stream();
                if end || chunk.is_empty() {
                    if tx.send_data(chunk, end).is_err() || end {
                        return Poll::Ready(Sent::Ended);
                    }
                    continue;
                }
                tx.reserve_capacity(1);
                waiting = Some(chunk);
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = tx.send_trailers(trailers);
                    return Poll::Ready(Sent::Ended);
                }
            }
        }
    })
    .await
}

/// The reason a stream is reset with when the body sent on it failed: a reset that caused the
/// failure (the other side's stream reset) is passed on, `CANCEL` as `CANCEL`; anything else is
/// `INTERNAL_ERROR`.
pub(crate) fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    crate::gateway::find_in_chain::<h2::Error>(e)
        .and_then(h2::Error::reason)
        .unwrap_or(Reason::INTERNAL_ERROR)
}

/// Keep-alive pings on a connection: one every `every`; a ping unanswered for `timeout` says
/// the peer is gone (a dead peer's connection otherwise holds its streams until TCP gives up,
/// minutes later).
pub(crate) struct KeepAlive {
    pings: h2::PingPong,
    every: Duration,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// A ping is out, unanswered.
    out: bool,
}

impl KeepAlive {
    pub(crate) fn new(pings: h2::PingPong, every: Duration, timeout: Duration) -> Self {
        KeepAlive {
            pings,
            every,
            timeout,
            timer: Box::pin(tokio::time::sleep(every)),
            out: false,
        }
    }

    /// True when a ping went unanswered for the timeout.
    pub(crate) fn poll_dead(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.out {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.out = false;
                        let next = tokio::time::Instant::now() + self.every;
                        self.timer.as_mut().reset(next);
                    }
                    // The connection is ending anyway.
                    Poll::Ready(Err(_)) => return false,
                    Poll::Pending => {}
                }
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.out {
                return true;
            }
            if self.pings.send_ping(h2::Ping::opaque()).is_err() {
                return false;
            }
            self.out = true;
            let due = tokio::time::Instant::now() + self.timeout;
            self.timer.as_mut().reset(due);
        }
    }
}
