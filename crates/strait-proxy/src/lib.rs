//! Strait's data plane: listeners, protocol detection, HTTP forwarding with routing, balancing,
//! filters and timeouts, the admin server, and the runtime that ties them to worker threads.
//!
//! The pure decision logic ([`route`], [`balance`]) is public so benchmarks and fuzz targets can
//! reach it; the I/O layers are private and wired in one place per direction ([`gateway`] for
//! HTTP listeners).

mod admin;
pub mod authz;
pub mod balance;
pub mod check;
pub mod detect;
mod gateway;
pub mod http;
pub mod jwt;
pub mod listener;
mod passthrough;
pub mod ratelimit;
pub mod resilience;
pub mod route;
mod runtime;
mod sockopt;
pub mod telemetry;
pub mod tls;

pub use runtime::{run, ProxyOptions, StartError};

/// The TLS passthrough listener's ClientHello reader, for its fuzz target.
pub use passthrough::server_name;
