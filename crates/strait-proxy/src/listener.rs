//! Listening sockets: one `SO_REUSEPORT` socket per listener per worker, so the kernel spreads
//! new connections across workers and no worker waits on another's accept.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::{Activity, Connection};
use crate::http::server::serve_connection;
use crate::ratelimit::Decision;
use crate::runtime::busy_poll;
use crate::runtime::Worker;

/// How long the kernel holds a connection whose client has not spoken yet before handing it
/// to `accept` anyway, so Strait's own timeouts then apply to it.
const DEFER_ACCEPT: Duration = Duration::from_secs(1);

/// Binds `addr` with `SO_REUSEPORT` (each worker binds its own socket), accepting connections
/// once their first bytes are in (`TCP_DEFER_ACCEPT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = bound(addr)?;
    socket.set_nonblocking(true)?;
    socket.listen(4096)?;
    if let Err(error) = crate::sockopt::set_defer_accept(&socket, DEFER_ACCEPT) {
        // A saving, not a need (some sandboxes refuse the option): serve without it.
        tracing::warn!(%addr, %error, "TCP_DEFER_ACCEPT refused; accepting connections at once");
    }
    TcpListener::from_std(socket.into())
}

/// Whether `addr` can be bound as [`bind`] binds it (without listening).
pub fn can_bind(addr: SocketAddr) -> io::Result<()> {
    bound(addr).map(drop)
}

/// A socket bound to `addr`, shared with the workers' other sockets on it (`SO_REUSEPORT`).
fn bound(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Accepts until `stop` turns true; connections accepted before keep going, and drain when
/// `stop` turns true (they watch the same signal).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    address: SocketAddr,
    worker: Rc<Worker>,
    stop: watch::Receiver<bool>,
) {
    let mut stop_accepting = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_accepting.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let snapshot = worker.current();
                let plan = snapshot.listener(address);
                if let Some(plan) = plan {
                    if plan
                        .max_connections
                        .is_some_and(|max| plan.connections.active() >= max)
                    {
                        // Full: close at once (a FIN, no bytes) rather than queue the client.
                        plan.connections.overflowed();
                        drop(stream);
                        continue;
                    }
                    if let Some((bucket, rate)) = &plan.connection_rate {
                        let now = crate::ratelimit::now_nanos();
                        if let Decision::Deny { .. } = bucket.check(1, *rate, now) {
                            // Over the rate: the same clean close, counted apart.
                            plan.connections.rate_limited();
                            drop(stream);
                            continue;
                        }
                    }
                }
                // A client with its share open already: the same clean close, counted apart.
                let opened = plan.and_then(|l| {
                    let max = l.max_per_client?;
                    Some(l.connections.client_opened(peer.ip(), max))
                });
                let client = match opened {
                    Some(None) => {
                        drop(stream);
                        continue;
                    }
                    opened => opened.flatten(),
                };
                if let Some(routes) = plan.and_then(|l| l.passthrough.clone()) {
                    let denied = plan
                        .and_then(|l| l.authz.as_ref())
                        .is_some_and(|p| !p.decide_connection(peer.ip()).allowed);
                    if denied {
                        // Refused by the listener's policy: closed at once, counted by rule.
                        drop(stream);
                        continue;
                    }
                    let guard = worker.connection_opened();
                    let counted = plan.map(|l| l.connections.opened());
                    let snapshot = Arc::clone(&snapshot);
                    busy_poll::spawn(async move {
                        crate::passthrough::serve(stream, snapshot, routes).await;
                        drop(counted);
                        drop(client);
                        drop(guard);
                    });
                    continue;
                }
                let conn = Rc::new(Connection {
                    worker: Rc::clone(&worker),
                    local: address,
                    peer,
                    // An address's text is always a valid header value.
                    peer_ip: http::HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or_else(|_| http::HeaderValue::from_static("")),
                    activity: Activity::new(),
                    tls: std::cell::OnceCell::new(),
                    timer: Default::default(),
                    h2_streams: plan.map_or_else(
                        || strait_config::ListenerHttp2::default().max_concurrent_streams,
                        |l| l.h2_streams,
                    ),
                });
                let guard = worker.connection_opened();
                let counted = plan.map(|l| l.connections.opened());
                // Read per connection so a reload that changes the timeout applies to new ones.
                let idle_timeout = plan.and_then(|l| l.idle_timeout);
                let tls = plan.and_then(|l| l.tls.clone());
                let stats = plan.map(|l| Arc::clone(&l.connections));
                drop(snapshot);
                let drain = stop.clone();
                busy_poll::spawn(async move {
                    serve_connection(stream, conn, idle_timeout, tls, stats, drain).await;
                    drop(counted);
                    drop(client);
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning. Counted
                // always, logged at the first and then once in 100 (the back-off alone made
                // ~40 lines a second, and `/metrics` may be out of reach while it lasts).
                let before = worker
                    .current()
                    .listener(address)
                    .map(|l| l.connections.accept_failed());
                if before.is_none_or(|n| n % 100 == 0) {
                    tracing::warn!(%address, error = %e, failed_before = before, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(%address, "listener closed");
}
