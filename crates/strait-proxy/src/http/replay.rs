//! A request body that can be sent again: what makes requests with bodies retryable.
//!
//! On a route with `retry`, the client's body streams to the first attempt as it arrives while
//! a bounded buffer keeps a copy. A retry takes a new handle ([`ReplayBody::replay`]) that sends
//! the kept bytes first, then goes on reading from the client where the last attempt stopped, so
//! a retry never waits for the whole body and the first attempt is never delayed. Once the body
//! outgrows the buffer the copy is dropped: the request still streams, but `replay` says no.
//!
//! Only the newest handle may read: an older attempt still holding its handle (its connection
//! winding down) gets an error, so two attempts never split the client's bytes between them.

use std::cell::{RefCell, RefMut};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use tokio::sync::oneshot;

use super::body::{count_received, BodyError, BoundedCopy, ClientBody};
use crate::telemetry::metrics::RouteStats;

/// One attempt's view of a replayable request body.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Rc<RefCell<Replay>>,
    generation: u64,
    /// Kept chunks this handle has sent.
    sent_chunks: usize,
    sent_trailers: bool,
}

#[derive(Debug)]
struct Replay {
    source: ClientBody,
    /// The handle allowed to read.
    generation: u64,
    /// What replays send; gone once the body outgrew the limit.
    copy: BoundedCopy,
    ended: bool,
    failed: bool,
    trailers: Option<HeaderMap>,
    stats: Arc<RouteStats>,
    received: Option<Arc<AtomicU64>>,
    /// Whoever wants the whole body once it ended (a mirror), if it fits.
    whole: Option<oneshot::Sender<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was handed to a newer attempt")]
struct Superseded;

#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed earlier")]
struct SourceFailed;

impl ReplayBody {
    /// The first attempt's handle on `source`, keeping up to `limit` bytes for replays. Bytes
    /// read from the client are counted once, in `stats` and `received`. When `whole` is given
    /// it gets the complete body when it ends within the limit.
    pub fn new(
        source: ClientBody,
        limit: usize,
        stats: Arc<RouteStats>,
        received: Option<Arc<AtomicU64>>,
        whole: Option<oneshot::Sender<Bytes>>,
    ) -> Self {
        let shared = Replay {
            source,
            generation: 0,
            copy: BoundedCopy::new(limit),
            ended: false,
            failed: false,
            trailers: None,
            stats,
            received,
            whole,
        };
        ReplayBody {
            shared: Rc::new(RefCell::new(shared)),
            generation: 0,
            sent_chunks: 0,
            sent_trailers: false,
        }
    }

    fn lock(&self) -> RefMut<'_, Replay> {
        // Every handle lives on the worker's thread (the client's body is read off its
        // connection there), and no borrow outlives the call that took it.
        self.shared.borrow_mut()
    }

    /// A handle that sends the body again from its start, making every older handle stale;
    /// `None` when the body outgrew the buffer (or the client's body failed).
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut shared = self.lock();
        if shared.copy.overflowed() || shared.failed {
            return None;
        }
        shared.generation += 1;
        Some(ReplayBody {
            shared: Rc::clone(&self.shared),
            generation: shared.generation,
            sent_chunks: 0,
            sent_trailers: false,
        })
    }

    /// True when the body outgrew the buffer: no attempt can follow.
    pub fn overflowed(&self) -> bool {
        self.lock().copy.overflowed()
    }
}

impl Replay {
    fn finish(&mut self) {
        self.ended = true;
        if let Some(tx) = self.whole.take() {
            let _ = tx.send(self.copy.whole());
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let shared = Rc::clone(&this.shared);
        let mut s = shared.borrow_mut();
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(chunk) = s.copy.chunks().get(this.sent_chunks) {
            this.sent_chunks += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if s.failed {
            return Poll::Ready(Some(Err(Box::new(SourceFailed))));
        }
        if s.ended {
            if this.sent_trailers {
                return Poll::Ready(None);
            }
            this.sent_trailers = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.finish();
                this.sent_trailers = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.failed = true;
                s.whole = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    count_received(Some(&s.stats), s.received.as_deref(), data.len());
                    if !s.copy.keep(data) {
                        s.whole = None;
                    }
                    // This handle has now sent every kept chunk (none, after an overflow).
                    this.sent_chunks = s.copy.chunks().len();
                } else if let Some(trailers) = frame.trailers_ref() {
                    s.trailers = Some(trailers.clone());
                    this.sent_trailers = true;
                }
                if s.source.is_end_stream() {
                    s.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.lock();
        s.generation == self.generation
            && s.ended
            && self.sent_chunks >= s.copy.chunks().len()
            && (self.sent_trailers || s.trailers.is_none())
    }
}
