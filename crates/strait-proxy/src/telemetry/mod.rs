//! Telemetry: what operators see of the data path: Prometheus metrics on the admin server's
//! `/metrics`, JSON access logs, and trace context propagation (W3C and B3). OTLP span export
//! comes next (issue 6).

pub mod access_log;
pub mod metrics;
mod process;
pub mod trace_context;

pub use metrics::MetricsStore;
