//! One client connection: detect the protocol, serve it (HTTP/1.1, plain or TLS, with `server1`;
//! HTTP/2 with hyper), and shut it down gracefully when its listener drains (HTTP/1: close
//! after the current response; HTTP/2: GOAWAY).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::gateway::{self, Connection, TlsInfo};
use crate::http::body::{ClientBody, ResponseBody};
use crate::http::ClientIo;
use crate::telemetry::metrics::{ListenerStats, TlsFailure};
use crate::tls::ServerTls;

pub(crate) async fn serve_connection(
    stream: TcpStream,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    tls: Option<Arc<ServerTls>>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        // The HTTP/1 server reads the first bytes itself and hands a connection that opens
        // with HTTP/2's preface to `serve_h2c`: no bytes peeked first (two system calls per
        // connection, one of them finding nothing yet), and `TCP_NODELAY` set only when a
        // second write comes.
        return crate::http::server1::serve_http1(
            ClientIo::Plain(stream),
            conn,
            idle_timeout,
            stats,
            drain,
        )
        .await;
    };
    let _ = stream.set_nodelay(true);
    serve_tls(stream, tls, conn, idle_timeout, stats, drain).await;
}

/// HTTP/2 with prior knowledge on a connection whose first bytes (`io` gives them back first)
/// the HTTP/1 server read. `TCP_NODELAY` is set already.
pub(crate) async fn serve_h2c(
    io: crate::http::Rewound<ClientIo>,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) {
    serve_h2(io, conn, idle_timeout, stats, drain).await;
}

/// Serves a TLS connection: the handshake, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
///
/// The future is boxed: a TLS session is kilobytes, and a plain connection's task (allocated
/// at the size of its largest state) must not carry room for one. And it is polled behind
/// `dyn`: as a concrete type, its poll (TLS, hyper's HTTP/2 server) was inlined into
/// `serve_connection`'s, which grew a 16 KiB stack frame (four pages touched on every poll of
/// every plain connection) and was no longer inlined itself (h1 under callgrind: +50
/// instructions a request).
fn serve_tls(
    stream: TcpStream,
    tls: Arc<ServerTls>,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = ()>>> {
    crate::http::boxed(|| async move {
        let peer = conn.peer;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
        let handshake = async move {
            if sent_plain_http(&stream).await {
                return Err(Refused::PlainHttp(stream));
            }
            acceptor.accept(stream).await.map_err(Refused::Tls)
        };
        let stream = match tokio::time::timeout(tls.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(Refused::PlainHttp(stream))) => {
                if let Some(s) = &stats {
                    s.tls_failed(TlsFailure::PlainHttp);
                }
                tracing::debug!(%peer, "plain HTTP on a TLS listener");
                // nginx's answer, where the client would otherwise get a TLS alert it cannot
                // read (and `curl http://` an empty reply).
                let detail = "plain HTTP sent to a TLS port; use https://";
                let cause = gateway::Cause::BadRequest;
                crate::http::server1::answer_and_close(
                    ClientIo::Plain(stream),
                    cause.status(),
                    Some((cause.name(), detail)),
                )
                .await;
                return;
            }
            Ok(Err(Refused::Tls(e))) => {
                if let Some(s) = &stats {
                    // A close is not a broken handshake: load balancers' TCP checks connect
                    // and close, and must not set off the alert on handshake failures.
                    let closed = e.kind() == std::io::ErrorKind::UnexpectedEof;
                    s.tls_failed(if closed {
                        TlsFailure::Closed
                    } else {
                        TlsFailure::Handshake
                    });
                }
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                if let Some(s) = &stats {
                    s.tls_failed(TlsFailure::Timeout);
                }
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let (_, session) = stream.get_ref();
        if let Some(s) = &stats {
            s.tls_handshake(session.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        }
        // ALPN decides: `h2` is HTTP/2; anything else (or nothing) goes to the HTTP/1 server,
        // which still serves a client that opens with HTTP/2's preface as HTTP/2.
        let http2 = session.alpn_protocol() == Some(b"h2");
        let info = TlsInfo {
            peer_identity: session
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(crate::tls::spiffe_id),
        };
        let _ = conn.tls.set(info);
        if http2 {
            // Boxed apart: inline, hyper's HTTP/2 server set this future's size, and every
            // HTTP/1.1 connection over TLS carried its room (5.7 KB rather than 2.6, heaptrack
            // with 50 connections).
            crate::http::boxed(|| serve_h2(stream, conn, idle_timeout, stats, drain)).await;
        } else {
            let io = ClientIo::Tls(Box::new(stream));
            crate::http::server1::serve_http1(io, conn, idle_timeout, stats, drain).await;
        }
    })
}

/// Why a TLS listener's connection got no TLS session.
enum Refused {
    Tls(std::io::Error),
    /// The client spoke plain HTTP.
    PlainHttp(TcpStream),
}

/// Whether a client of a TLS listener opened with plain HTTP: its first byte is a method's
/// capital letter, where a TLS handshake record starts with 22. Its first bytes are in
/// (`TCP_DEFER_ACCEPT`), so this is one `recv(MSG_PEEK)`.
async fn sent_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Serves HTTP/2 on a client connection (h2c with prior knowledge, or TLS whose ALPN chose
/// `h2`) with hyper's server.
async fn serve_h2<I>(
    io: I,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(crate::http::Batched::new(io, stats));
    let peer = conn.peer;
    let max_streams = conn.h2_streams;
    let watched = Rc::clone(&conn);
    // Each stream's future is boxed: hyper spawns a task per stream, and the task moved the
    // whole request future (kilobytes) into place, then its output out, where a box moves a
    // pointer (h2c under callgrind: 44,462 -> 42,194 instructions a request).
    let service = service_fn(move |req: Request<Incoming>| {
        let conn = Rc::clone(&conn);
        super::boxed(|| async move {
            let open = gateway::OpenStream::new(Rc::clone(&conn));
            let reply = gateway::serve(req.map(ClientBody::Hyper), conn).await;
            // (hyper takes the answer unboxed.)
            reply.map(|reply| {
                reply.map(|body| StreamBody {
                    body,
                    _open: open,
                    window: None,
                })
            })
        })
    });
    let mut builder = hyper::server::conn::http2::Builder::new(StreamExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams);
    if let Some(idle) = idle_timeout {
        // Pings find dead peers; the idle timer below closes live but unused ones.
        builder
            .keep_alive_interval(idle)
            .keep_alive_timeout(Duration::from_secs(20));
    }
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = drain.wait_for(|d| *d) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
        () = idle_for(&watched.activity, idle_timeout) => {
            // GOAWAY: streams still sending their bodies finish; new ones go elsewhere.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// An HTTP/2 response's body, holding its stream's count in the connection's activity.
struct StreamBody {
    body: ResponseBody,
    _open: gateway::OpenStream,
    /// Made when the body first hands hyper a chunk with more to come.
    window: Option<Rc<Window>>,
}

impl hyper::body::Body for StreamBody {
    type Data = bytes::Bytes;
    type Error = <ResponseBody as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        // hyper polls the body again only once the client's window took the last chunk.
        if let Some(window) = &this.window {
            window.shut.set(false);
            window.progressed.set(true);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            // A last chunk holds nothing upstream (the answer has ended): only a chunk with
            // more to come is watched, so a small answer costs nothing here.
            if frame.is_data() && !this.body.is_end_stream() {
                if let Some(limit) = this.body.idle_limit() {
                    let window = this.window.get_or_insert_with(|| {
                        let window = Rc::new(Window::new(limit));
                        HANDOFF.set(Some(Rc::clone(&window)));
                        window
                    });
                    window.shut.set(true);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if self.window.as_ref().is_some_and(|w| w.stalled.get()) {
            self.body.cut_stalled();
        }
    }
}

/// A client that keeps an HTTP/2 stream's window shut takes none of its answer, and hyper,
/// waiting for room, polls neither the body nor anything the body could time: without this
/// the stream held its upstream connection and circuit-breaker slot for as long as the client
/// liked (twenty such streams and a cluster answered 503). The stream's task is wrapped: while
/// a chunk waits for the window, the route's `idle_timeout` runs (from the last chunk the
/// client took), and once it has run out the task ends, which resets the stream (h2 sends
/// `RST_STREAM` when its last handle drops) and logs the answer `downstream_stalled`, as
/// HTTP/1's stalled writes are (`ResponseBody::poll_stalled`). Envoy's stream idle timeout
/// does the same.
#[derive(Debug)]
struct Window {
    /// A chunk waits for room in the client's window.
    shut: Cell<bool>,
    /// The client took a chunk since the task last looked.
    progressed: Cell<bool>,
    /// The task gave up on the client: the body's drop cuts the answer.
    stalled: Cell<bool>,
    /// The task's timer (the route's idle timeout), armed while a chunk waits.
    timer: RefCell<crate::http::body::IdleTimer>,
}

impl Window {
    fn new(limit: Duration) -> Self {
        Window {
            shut: Cell::new(false),
            progressed: Cell::new(false),
            stalled: Cell::new(false),
            timer: RefCell::new(crate::http::body::IdleTimer::new(limit)),
        }
    }
}

thread_local! {
    /// Where a stream's body leaves its [`Window`] for the stream's task: the body is polled
    /// only inside its own task's poll, which takes it right after. (A slot per worker thread
    /// rather than a pointer in each task: every stream's task is moved into place when
    /// spawned, and 48 bytes more of it (a pointer and the timer) cost ~100 instructions a
    /// request in copies, under callgrind.)
    static HANDOFF: Cell<Option<Rc<Window>>> = const { Cell::new(None) };
}

/// Spawns hyper's stream tasks on the worker, each [`Watched`].
#[derive(Clone, Copy)]
struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + 'static,
{
    fn execute(&self, fut: F) {
        crate::runtime::busy_poll::spawn(Watched {
            task: fut,
            window: None,
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task, ended once its client has kept the window shut for the idle limit.
    struct Watched<F> {
        #[pin]
        task: F,
        window: Option<Rc<Window>>,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let done = this.task.poll(cx);
        // Taken whatever the poll's outcome: a body that handed over its window and ended in
        // the same poll must not leave it for another stream's task.
        if let Some(window) = HANDOFF.take() {
            *this.window = Some(window);
        }
        if done.is_ready() {
            return done;
        }
        let Some(window) = this.window.as_ref() else {
            return Poll::Pending;
        };
        if !window.shut.get() {
            return Poll::Pending;
        }
        let mut timer = window.timer.borrow_mut();
        timer.active |= window.progressed.take();
        if timer.expired(cx) {
            window.stalled.set(true);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Completes once no request has been pending for `limit` (never when `limit` is `None`).
/// hyper's HTTP/2 server has no idle timeout of its own.
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
