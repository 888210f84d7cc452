//! One client connection: detect the protocol, serve it (plain HTTP/1.1 with `server1`, HTTP/2
//! and TLS with hyper), and shut it down gracefully when its listener drains (HTTP/1: close
//! after the current response; HTTP/2: GOAWAY).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::detect::Protocol;
use crate::gateway::{self, Connection, TlsInfo};
use crate::http::body::ClientBody;
use crate::http::LocalExec;
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
        return crate::http::server1::serve_http1(stream, conn, idle_timeout, stats, drain).await;
    };
    let _ = stream.set_nodelay(true);
    // Boxed: a TLS session is kilobytes, and a plain connection's task (allocated at the size
    // of its largest state) must not carry room for one.
    Box::pin(serve_tls(stream, tls, conn, idle_timeout, stats, drain)).await;
}

/// HTTP/2 with prior knowledge on a plain connection, whose first bytes (`io` gives them back
/// first) the HTTP/1 server read. `TCP_NODELAY` is set already.
pub(crate) async fn serve_h2c(
    io: crate::http::Rewound<TcpStream>,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    drain: watch::Receiver<bool>,
) {
    serve_http(
        TokioIo::new(crate::http::Batched::new(io, true)),
        Protocol::Http2,
        conn,
        idle_timeout,
        None,
        drain,
    )
    .await;
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
    serve_http(
        TokioIo::new(crate::http::Batched::new(
            stream,
            protocol == Protocol::Http2,
        )),
        protocol,
        conn,
        idle_timeout,
        stats,
        drain,
    )
    .await;
}

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

/// Serves HTTP on a connection whose protocol is known, over plain TCP or TLS. `stats` counts
/// the HTTP/1 request heads hyper refuses as malformed.
async fn serve_http<I>(
    io: TokioIo<I>,
    protocol: Protocol,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    stats: Option<Arc<ListenerStats>>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let watched = Rc::clone(&conn);
    let result = match protocol {
        Protocol::Http1 => {
            let service = service_fn(move |req: Request<Incoming>| {
                gateway::serve(req.map(ClientBody::Hyper), Rc::clone(&conn))
            });
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
            let service = service_fn(move |req: Request<Incoming>| {
                super::boxed(|| gateway::serve(req.map(ClientBody::Hyper), Rc::clone(&conn)))
            });
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
        // hyper answered a malformed head itself: 431 for one too large (414 for a target too
        // long, counted with them), 400 for the rest.
        if protocol == Protocol::Http1 && e.is_parse() && !e.is_parse_version_h2() {
            let status = if e.is_parse_too_large() {
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            } else {
                http::StatusCode::BAD_REQUEST
            };
            if let Some(s) = &stats {
                s.malformed_request(status);
            }
            super::server1::log_malformed(&watched, status);
        }
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
