//! One client connection: detect the protocol, serve it with hyper, and shut it down gracefully
//! when its listener drains (HTTP/1: close after the current response; HTTP/2: GOAWAY).

use std::rc::Rc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::detect::{self, Protocol};
use crate::gateway::{self, Connection};
use crate::http::LocalExec;

/// How long a new connection may stay silent when its listener has no idle timeout.
const FIRST_BYTES_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn serve_connection(
    stream: TcpStream,
    conn: Rc<Connection>,
    idle_timeout: Option<Duration>,
    mut drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer = conn.peer;
    let protocol = match detect::sniff(&stream, idle_timeout.unwrap_or(FIRST_BYTES_LIMIT)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection closed before a request");
            return;
        }
    };
    let io = TokioIo::new(stream);
    let watched = Rc::clone(&conn);
    let service = service_fn(move |req| gateway::serve(req, Rc::clone(&conn)));
    let result = match protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .keep_alive(true)
                .header_read_timeout(idle_timeout);
            let served = builder.serve_connection(io, service).with_upgrades();
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
