//! Idle HTTP/1 client connections without hyper's buffers.
//!
//! hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write buffer for as long as a
//! connection lives. A gateway holding tens of thousands of keep-alive clients, most of them
//! idle, would spend most of its memory there (nginx frees its buffers between requests). So
//! when a worker holds more than [`RELEASE_ABOVE`] connections, a plain HTTP/1 connection that
//! goes idle is taken apart: hyper's connection is dropped with its buffers, the task waits for
//! the client's next bytes on the bare socket, and a new hyper connection serves them.
//!
//! "Idle" must mean hyper holds nothing: no request waiting for its response head
//! ([`gateway::Activity`]), no response body being sent ([`Tracked`] counts them), nothing
//! written and not yet flushed, no bytes read since its last response was flushed (a request
//! arriving in pieces keeps its connection, and hyper's header timer), and hyper waiting to
//! read ([`Watched`] sees those three). Bytes hyper had read and not parsed (the start of a
//! pipelined request) are handed to the next connection first.
//! Below the threshold, connections keep their buffers: taking one apart costs two buffer
//! allocations and a new hyper connection, which only pays when memory is what runs out. Above
//! it, a connection is taken apart as soon as it is idle the first time, and again whenever its
//! client was away for a second or more; a client that keeps coming back sooner keeps its
//! buffers until it has been quiet for a second (`server::QUIET`), so a loaded connection does
//! not pay for a new hyper connection per request.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::gateway::Connection;

/// Open connections on a worker above which idle HTTP/1 connections give back their buffers.
pub const RELEASE_ABOVE: usize = 256;

/// What the connection's task sees of hyper's use of the socket. (Atomics only because an
/// upgraded socket must be `Send`; one thread ever touches them, and relaxed loads and stores
/// are plain moves.)
#[derive(Debug, Default)]
pub struct IoState {
    /// Something was written (or a write was attempted) and not flushed since.
    unflushed: AtomicBool,
    /// hyper's last read found nothing to read: it is waiting for the client.
    waiting: AtomicBool,
    /// hyper was given bytes since it last flushed a response: part of a request may sit in
    /// its buffer, and its header timer is running.
    input: AtomicBool,
}

/// The socket under hyper, watched ([`IoState`]), with bytes to read before the socket's own:
/// those a previous hyper connection had read and not parsed.
#[derive(Debug)]
pub struct Watched {
    pub stream: TcpStream,
    pub unread: Bytes,
    pub state: Arc<IoState>,
}

impl Watched {
    pub fn new(stream: TcpStream) -> Watched {
        Watched {
            stream,
            unread: Bytes::new(),
            state: Arc::default(),
        }
    }
}

impl IoState {
    /// True when hyper's connection can be taken apart without losing anything, and should
    /// be: see the module.
    pub fn releasable(&self, conn: &Connection) -> bool {
        self.waiting.load(Relaxed)
            && !self.input.load(Relaxed)
            && !self.unflushed.load(Relaxed)
            && conn.activity.idle_since().is_some()
            && conn.activity.streaming() == 0
            && conn.worker.open_connections() > RELEASE_ABOVE
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            this.state.waiting.store(false, Relaxed);
            this.state.input.store(true, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.state.waiting.store(polled.is_pending(), Relaxed);
        if buf.filled().len() > filled {
            this.state.input.store(true, Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.unflushed.store(true, Relaxed);
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.state.unflushed.store(true, Relaxed);
        crate::http::poll_write_slices(Pin::new(&mut this.stream), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        // hyper flushes on every turn; only a flush after a write ends a response.
        if let Poll::Ready(Ok(())) = flushed {
            if this.state.unflushed.swap(false, Relaxed) {
                this.state.input.store(false, Relaxed);
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A response body counted on its connection until hyper has taken its last frame (or dropped
/// it): a connection is not idle while a body is on its way.
#[derive(Debug)]
pub struct Tracked<B> {
    body: B,
    conn: Rc<Connection>,
}

impl<B> Tracked<B> {
    pub fn new(body: B, conn: Rc<Connection>) -> Tracked<B> {
        conn.activity.body_started();
        Tracked { body, conn }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.conn.activity.body_ended();
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
