//! One client connection: detect the protocol, serve it with hyper, and shut it down gracefully
//! when its listener drains (HTTP/1: close after the current response; HTTP/2: GOAWAY).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::detect::{self, Protocol};
use crate::gateway::{self, Connection, TlsInfo};
use crate::http::idle::{Tracked, Watched};
use crate::http::LocalExec;
use crate::telemetry::metrics::{ListenerStats, TlsFailure};
use crate::tls::ServerTls;

/// How long a new connection may stay silent when its listener has no idle timeout.
const FIRST_BYTES_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn serve_connection(
    stream: TcpStream,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    tls: Option<Arc<ServerTls>>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer = conn.peer;
    let Some(tls) = tls else {
        let limit = idle_timeout.unwrap_or(FIRST_BYTES_LIMIT);
        let protocol = match detect::sniff(&stream, limit).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection closed before a request");
                return;
            }
        };
        return match protocol {
            Protocol::Http1 => serve_http1(stream, conn, idle_timeout, stats, drain).await,
            // Boxed: HTTP/2's state must not make every HTTP/1 connection's task bigger.
            Protocol::Http2 => {
                Box::pin(serve_http(
                    TokioIo::new(stream),
                    protocol,
                    conn,
                    idle_timeout,
                    drain,
                ))
                .await
            }
        };
    };
    // Boxed: a TLS session is kilobytes, and a plain connection's task (allocated at the size
    // of its largest state) must not carry room for one.
    Box::pin(serve_tls(stream, tls, conn, idle_timeout, stats, drain)).await;
}

async fn serve_tls(
    stream: TcpStream,
    tls: Arc<ServerTls>,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    drain: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if let Some(s) = &stats {
                s.tls_failed(TlsFailure::Handshake);
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
    // ALPN decides: `h2` is HTTP/2, anything else (or nothing) HTTP/1.1.
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let info = TlsInfo {
        peer_identity: session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(crate::tls::spiffe_id),
    };
    let _ = conn.tls.set(info);
    serve_http(TokioIo::new(stream), protocol, conn, idle_timeout, drain).await;
}

/// HTTP/1 over plain TCP. Between requests, when the worker holds many connections, hyper's
/// connection is taken apart so the idle client costs its socket and not hyper's buffers
/// (`http::idle`), and a new one serves the client's next bytes. A client that came back
/// within [`QUIET`] is busy: its connection keeps hyper's until it has been quiet that long,
/// so a loaded connection does not pay for a new hyper connection per request.
async fn serve_http1(
    stream: TcpStream,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    mut drain: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let mut io = Watched::new(stream);
    let state = Arc::clone(&io.state);
    let mut header_timeout = idle_timeout;
    // Whether the client's last wait was shorter than QUIET, and the timer that lets a busy
    // connection give back its buffers once quiet (made the first time it is needed).
    let mut busy = false;
    let mut quiet: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // A second receiver of the drain signal, only asked whether it changed.
    let drain_seen = drain.clone();
    let served_conn = Rc::clone(&conn);
    let mut service = service_fn(move |req| {
        let conn = Rc::clone(&served_conn);
        async move {
            let response = gateway::serve(req, Rc::clone(&conn)).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, conn)))
        }
    });
    loop {
        // Boxed: freed while the connection waits, so an idle client's task is small.
        let mut served = Box::new(
            http1_server(header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        // `Some`: the connection ended; `None`: it is idle and can give back its buffers.
        let ended = {
            let drained = drain.wait_for(|d| *d);
            tokio::pin!(drained);
            let mut draining = false;
            let mut watching = false;
            std::future::poll_fn(|cx| {
                // The drain signal's future is polled once, which leaves the task's waker with
                // it, and after that only when the signal changed (a version check): polling it
                // on every wake of the connection cost ~250 instructions a request.
                let check = !watching || drain_seen.has_changed().unwrap_or(true);
                if !draining && check {
                    watching = true;
                    if drained.as_mut().poll(cx).is_ready() {
                        draining = true;
                        Pin::new(&mut *served).graceful_shutdown();
                    }
                }
                if let Poll::Ready(result) = Pin::new(&mut *served).poll(cx) {
                    return Poll::Ready(Some(result));
                }
                if draining || !state.releasable(&conn) {
                    return Poll::Pending;
                }
                let Some(since) = conn.activity.idle_since().filter(|_| busy) else {
                    return Poll::Ready(None);
                };
                let at = since + QUIET;
                if at <= tokio::time::Instant::now() {
                    return Poll::Ready(None);
                }
                // Woken at the latest deadline seen when the timer last fired (a timer is
                // not moved per request), then set to the current one.
                let timer = quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.as_mut().poll(cx).is_ready() {
                    timer.as_mut().reset(at);
                    let _ = timer.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await
        };
        if let Some(result) = ended {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            return;
        }
        let Some(parts) = (*served).into_parts() else {
            return; // upgraded: the upgrade's task owns the socket now
        };
        io = parts.io.into_inner();
        service = parts.service;
        // An empty read buffer still holds hyper's allocation: keep it only when it has bytes.
        let unread = parts.read_buf;
        if let Some(s) = &stats {
            s.released();
        }
        let idle_since = conn
            .activity
            .idle_since()
            .unwrap_or_else(tokio::time::Instant::now);
        if !unread.is_empty() {
            // The start of the next request: the next connection reads it first, within what
            // is left of the time the client had to send it.
            io.unread = Bytes::copy_from_slice(&unread);
            header_timeout = match idle_timeout.map(|t| t.saturating_sub(idle_since.elapsed())) {
                Some(left) if left.is_zero() => return,
                left => left,
            };
            continue;
        }
        drop(unread);
        // Nothing buffered: wait on the bare socket for the client's next bytes.
        let deadline = idle_timeout.map(|t| idle_since + t);
        tokio::select! {
            ready = io.stream.readable() => {
                if ready.is_err() {
                    return;
                }
            }
            () = sleep_until(deadline) => {
                tracing::debug!(%peer, "idle keep-alive connection timed out");
                return;
            }
            _ = drain.wait_for(|d| *d) => return,
        }
        busy = idle_since.elapsed() < QUIET;
        header_timeout = idle_timeout;
    }
}

/// How soon a client must come back for its connection to count as busy, and how long a busy
/// connection must then be quiet to give back its buffers.
const QUIET: Duration = Duration::from_secs(1);

/// hyper's HTTP/1 server as every client connection uses it: keep-alive, and the client's
/// time to send a request head bounded by `header_timeout`.
fn http1_server(header_timeout: Option<Duration>) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(header_timeout);
    builder
}

/// Completes at `deadline`, or never.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Serves HTTP on a connection whose protocol is known, over plain TCP or TLS.
async fn serve_http<I>(
    io: TokioIo<I>,
    protocol: Protocol,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let watched = Rc::clone(&conn);
    let result = match protocol {
        Protocol::Http1 => {
            let service = service_fn(move |req| gateway::serve(req, Rc::clone(&conn)));
            let served = http1_server(idle_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(served);
            tokio::select! {
                r = served.as_mut() => r,
                _ = drain.wait_for(|d| *d) => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            }
        }
        Protocol::Http2 => {
            // Each stream's future is boxed: hyper spawns a task per stream, and the task
            // moved the whole request future (kilobytes) into place, then its output out,
            // where a box moves a pointer (h2c under callgrind: 44,462 -> 42,194
            // instructions a request).
            let service = service_fn(move |req| Box::pin(gateway::serve(req, Rc::clone(&conn))));
            let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
            builder.timer(TokioTimer::new());
            if let Some(idle) = idle_timeout {
                // Pings find dead peers; the idle timer below closes live but unused ones.
                builder
                    .keep_alive_interval(idle)
                    .keep_alive_timeout(Duration::from_secs(20));
            }
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            tokio::select! {
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
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
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
