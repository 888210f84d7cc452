//! One client connection: detect the protocol, serve it (HTTP/1.1, plain or TLS, with `server1`;
//! HTTP/2 with `server2`), and shut it down gracefully when its listener drains (HTTP/1: close
//! after the current response; HTTP/2: GOAWAY).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::gateway::{self, Connection, TlsInfo};
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
    crate::http::server2::serve_h2(io, conn, idle_timeout, stats, drain).await;
}

/// Serves a TLS connection: the handshake, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
///
/// The future is boxed: a TLS session is kilobytes, and a plain connection's task (allocated
/// at the size of its largest state) must not carry room for one. And it is polled behind
/// `dyn`: as a concrete type, its poll (TLS, the HTTP/2 server) was inlined into
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
            // Boxed apart: inline, the HTTP/2 server set this future's size, and every
            // HTTP/1.1 connection over TLS carried its room (5.7 KB rather than 2.6, heaptrack
            // with 50 connections).
            let served =
                || crate::http::server2::serve_h2(stream, conn, idle_timeout, stats, drain);
            crate::http::boxed(served).await;
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
