//! HTTP on both sides of the proxy: a hand-written HTTP/1.1 server for client connections,
//! plain or TLS (`server1`), an HTTP/2 server on the h2 crate's connections (`server2`),
//! per-worker pools of upstream connections (`client1` for HTTP/1.1, `client2` on h2 for
//! HTTP/2, both ends' HTTP/2 streams in `stream2`), and the bodies and headers that cross
//! between them.

pub(crate) mod alarm;
pub mod body;
pub mod client1;
pub mod client2;
mod conn_io;
pub(crate) mod flood;
pub(crate) mod gzip;
pub(crate) mod head1;
pub mod headers;
pub mod inbuf;
pub mod pool;
pub mod replay;
pub(crate) mod server;
pub mod server1;
pub mod server2;
pub mod stream2;

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::telemetry::metrics::ListenerStats;

pub use conn_io::{ClientIo, MaybeTls};
/// The HTTP/1 head parser against `httparse`, for the fuzz target `http1_heads`.
#[doc(hidden)]
pub use head1::differential::check as check_heads_against_httparse;

/// The future `make` returns, boxed: its heap room is allocated first and `make` writes the
/// future straight into it. `Box::pin(make())` built it on the stack and copied it over, at the
/// future's full size (kilobytes for the gateway's) even though a future not yet started holds
/// only its arguments.
pub(crate) fn boxed<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// A connection that switched protocols: its byte stream, starting with the bytes read past
/// the head that switched it.
#[derive(Debug)]
pub struct Rewound<T> {
    io: T,
    early: Bytes,
}

impl<T> Rewound<T> {
    pub(crate) fn new(io: T, early: Bytes) -> Self {
        Rewound { io, early }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewound<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewound<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection whose writes wait one turn of the worker's run queue: the first write of each
/// batch wakes its task and returns `Pending`, so the tasks already queued (other streams whose
/// upstream answered in the same `epoll_wait`) add their frames before the bytes go out in one
/// write. For HTTP/2 client connections, where hyper's connection task writes whatever streams
/// finished by the time it is polled: under load this halves the writes (and the client's
/// answering writes), about 8 answers a write becoming about 15.
/// (HTTP/1 connections are not wrapped: they write one answer at a time.)
///
/// Its shutdown lingers. h2 shuts the connection down once its GOAWAY and last stream are
/// written, but the kernel may still hold the end of the last answer, and the client's
/// `WINDOW_UPDATE`s for it keep coming as it reads. Closed with those coming, the socket
/// answers them with a reset that throws the unsent end away: a client reading a 10 MB answer
/// slowly lost its last 0.1-4 MB when an idle timeout or a drain closed the connection. So the
/// write side is shut first (the end, then FIN), and what the client still sends is read and
/// dropped until it closes: at most [`LINGER_BYTES`], within [`LINGER_QUIET`] of its last bytes
/// and [`LINGER_MOST`] in all. (`server1` lingers likewise after an HTTP/1 answer that left
/// bytes unread.)
///
/// Its reads go through a [`flood::FrameMeter`]: a client that sends too many frames asking
/// for nothing is sent a `GOAWAY` when one can go out whole, and gets a read error, which ends
/// the connection.
#[derive(Debug)]
pub(crate) struct Batched<T> {
    io: T,
    /// This batch's write already waited its turn (or found the socket full).
    waited: bool,
    linger: Linger,
    meter: flood::FrameMeter,
    /// What was written ends with a whole frame: every write so far was taken whole (hyper
    /// offers whole frames), and there was one. A frame of the proxy's own may follow.
    at_frame_end: bool,
}

/// Streams an HTTP/2 connection (client or upstream) remembers after resetting them, and
/// for how long, so that the frames the peer sent before it saw the reset are dropped
/// quietly. h2 keeps 10: past them, each `DATA` frame for a forgotten stream is answered with
/// `RST_STREAM` and counted as the peer's error, and 1,024 such over a client connection's
/// life end it with `GOAWAY` `ENHANCE_YOUR_CALM` ("too_many_internal_resets"), failing its
/// other streams (upstream connections keep no such count: see `Pool`). A stream is reset each time an answer comes before its upload ended (h2 sends
/// `RST_STREAM` `NO_ERROR` so that the client stops, RFC 9113 8.1), or a client leaves
/// before its answer: with uploads answered early on a busy connection, ten slots were
/// gone in milliseconds, and the client's connection was closed after about a thousand. A
/// remembered stream costs its slot in h2's store (a few hundred bytes) until it is pushed
/// out by newer ones or expires.
pub(crate) const H2_RESETS_KEPT: usize = 256;
pub(crate) const H2_RESETS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a closing connection (HTTP/2, or HTTP/1 with request bytes unread) waits for the
/// client's next bytes, and for all of them, before it closes (nginx's `lingering_timeout`
/// and `lingering_time`); a request body its answer did not wait for is read within the same.
const LINGER_QUIET: std::time::Duration = std::time::Duration::from_secs(5);
const LINGER_MOST: std::time::Duration = std::time::Duration::from_secs(30);

/// The time what a client still sends is read (and dropped) within: each piece within
/// [`LINGER_QUIET`] of the last, all within [`LINGER_MOST`] of the start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lingering {
    end: tokio::time::Instant,
}

impl Lingering {
    /// Starts now.
    pub(crate) fn start() -> Self {
        Lingering {
            end: tokio::time::Instant::now() + LINGER_MOST,
        }
    }

    /// When the next piece must have come by.
    pub(crate) fn next_by(&self) -> tokio::time::Instant {
        self.end.min(tokio::time::Instant::now() + LINGER_QUIET)
    }
}
/// The most a closing HTTP/2 connection reads and drops.
const LINGER_BYTES: usize = 1 << 20;

#[derive(Debug)]
enum Linger {
    Open,
    /// Shut for writing; reading until the client closes. Boxed: a closing connection's.
    Reading(Box<Reading>),
    Done,
}

#[derive(Debug)]
struct Reading {
    timer: Pin<Box<tokio::time::Sleep>>,
    lingering: Lingering,
    left: usize,
}

impl<T> Batched<T> {
    /// `io`, an HTTP/2 client connection about to send its preface, its writes batched and its
    /// frames metered (floods counted in `stats`).
    pub(crate) fn new(io: T, stats: Option<std::sync::Arc<ListenerStats>>) -> Self {
        Batched {
            io,
            waited: false,
            linger: Linger::Open,
            meter: flood::FrameMeter::new(stats),
            at_frame_end: false,
        }
    }

    /// `Pending` once per batch, after waking the task; then what `write` says. A write that
    /// went out starts the next batch.
    fn poll_batched<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let written = write(Pin::new(&mut self.io), cx);
        if written.is_ready() {
            self.waited = false;
        }
        written
    }

    /// Passes on what a write of `offered` bytes did, crediting its bytes to the client's frame
    /// budget.
    fn credit(
        &mut self,
        written: Poll<io::Result<usize>>,
        offered: usize,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.meter.wrote(n);
            self.at_frame_end = n == offered;
        }
        written
    }

    /// Tells a flooding client why it is closed, when a frame of the proxy's own can go out
    /// now: a `GOAWAY` with `ENHANCE_YOUR_CALM` ([`flood::goaway`]), written and flushed once
    /// without waiting (a socket that cannot take 17 bytes at once is not waited on). The
    /// connection fails either way.
    fn goaway(&mut self, cx: &mut Context<'_>)
    where
        T: AsyncWrite + Unpin,
    {
        if !self.at_frame_end {
            return;
        }
        let frame = flood::goaway(&self.meter);
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.io).poll_write(cx, &frame) {
            self.at_frame_end = n == frame.len();
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Batched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        match this.meter.read(&buf.filled()[before..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(flood) => {
                this.goaway(cx);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, flood)))
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Batched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_batched(cx, |io, cx| io.poll_write(cx, buf));
        this.credit(written, buf.len())
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_batched(cx, |io, cx| io.poll_write_vectored(cx, bufs));
        let offered = bufs.iter().map(|b| b.len()).sum();
        this.credit(written, offered)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Linger::Open = this.linger {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            let lingering = Lingering::start();
            this.linger = Linger::Reading(Box::new(Reading {
                timer: Box::pin(tokio::time::sleep_until(lingering.next_by())),
                lingering,
                left: LINGER_BYTES,
            }));
        }
        let Linger::Reading(reading) = &mut this.linger else {
            return Poll::Ready(Ok(()));
        };
        let mut sink = [0u8; 2048];
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    reading.left = reading.left.saturating_sub(buf.filled().len());
                    if reading.left == 0 {
                        break;
                    }
                    reading.timer.as_mut().reset(reading.lingering.next_by());
                }
                // The client closed, or the connection failed: nothing left to wait for.
                Poll::Ready(_) => break,
                Poll::Pending => {
                    ready!(reading.timer.as_mut().poll(cx));
                    break;
                }
            }
        }
        this.linger = Linger::Done;
        Poll::Ready(Ok(()))
    }
}

/// Writes of several slices totalling at most this many bytes are copied into one buffer.
const FLATTEN_MAX: usize = 4096;

thread_local! {
    /// The buffer small vectored writes are flattened into, one per worker thread.
    static FLAT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes `bufs` as a socket takes them cheapest: one slice (a request head alone) with a
/// plain write, a few small ones (hyper's response head and a short body) copied into one
/// buffer and written together, since `send(2)` of one buffer costs the kernel less than
/// `writev(2)`; large writes stay vectored, where the copy would cost more.
pub(crate) fn poll_write_slices<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    match bufs {
        [one] => io.poll_write(cx, one),
        [_, _, ..] if bufs.iter().map(|b| b.len()).sum::<usize>() <= FLATTEN_MAX => FLAT
            .with_borrow_mut(|flat| {
                flat.clear();
                for b in bufs {
                    flat.extend_from_slice(b);
                }
                io.poll_write(cx, flat)
            }),
        _ => io.poll_write_vectored(cx, bufs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is given and how: `w` for a plain write, `v` for a vectored one.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        calls: String,
    }

    /// (Read by a lingering shutdown: the peer closed.)
    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls.push('w');
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls.push('v');
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_batched_write_waits_one_turn_per_batch() {
        let wakes = std::sync::Arc::new(Wakes::default());
        let waker = std::task::Waker::from(std::sync::Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut io = Batched::new(Recorder::default(), None);
        // The first write of a batch: woken to come back, nothing written.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"ab").is_pending());
        assert_eq!((woken(), io.io.calls.as_str()), (1, ""));
        // Its next turn writes, and ends the batch.
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"ab"),
            Poll::Ready(Ok(2))
        ));
        // The next batch waits again, vectored or not.
        let bufs = [IoSlice::new(b"cd"), IoSlice::new(b"e")];
        assert!(Pin::new(&mut io)
            .poll_write_vectored(&mut cx, &bufs)
            .is_pending());
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(3))
        ));
        assert_eq!(
            (woken(), io.io.bytes.as_slice(), io.io.calls.as_str()),
            (2, &b"abcde"[..], "wv")
        );
    }

    fn write(parts: &[&[u8]]) -> (Vec<u8>, String, usize) {
        let bufs: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut io = Recorder::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(n)) = poll_write_slices(Pin::new(&mut io), &mut cx, &bufs) else {
            panic!("the recorder is always ready");
        };
        (io.bytes, io.calls, n)
    }

    #[test]
    fn one_slice_and_small_slices_are_written_plainly_large_ones_vectored() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".as_slice();
        let (bytes, calls, n) = write(&[head]);
        assert_eq!(
            (bytes.as_slice(), calls.as_str(), n),
            (head, "w", head.len())
        );

        let (bytes, calls, n) = write(&[head, b"hello"]);
        assert_eq!(bytes, [head, b"hello"].concat());
        assert_eq!((calls.as_str(), n), ("w", head.len() + 5));

        let big = vec![7u8; FLATTEN_MAX];
        let (bytes, calls, n) = write(&[head, &big]);
        assert_eq!(bytes, [head, &big].concat());
        assert_eq!((calls.as_str(), n), ("v", head.len() + big.len()));

        let (bytes, calls, n) = write(&[]);
        assert_eq!((bytes.len(), calls.as_str(), n), (0, "v", 0));
    }
}
