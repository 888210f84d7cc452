//! Telemetry: what operators see of the data path: Prometheus metrics on the admin server's
//! `/metrics`, JSON access logs, and distributed tracing (W3C/B3 propagation, spans exported
//! over OTLP).

pub mod access_log;
mod addr_text;
pub mod metrics;
pub mod otlp;
mod process;
pub mod spans;
pub mod trace_context;

pub use metrics::MetricsStore;
