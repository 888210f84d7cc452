//! HTTP on both sides of the proxy: hyper 1 server connections for clients, per-worker pools of
//! hyper client connections for upstreams, and the bodies and headers that cross between them.

pub mod body;
pub mod client1;
pub mod headers;
pub(crate) mod idle;
pub mod pool;
pub mod replay;
pub(crate) mod server;

use std::future::Future;

/// Runs hyper's background tasks (HTTP/2 streams, connection drivers) on the worker's own
/// thread: nothing a worker does needs to be `Send`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
