//! Telemetry: what operators see of the data path: Prometheus metrics on the admin server's
//! `/metrics` and JSON access logs. OTLP tracing comes next (issue 6).

pub mod access_log;
pub mod metrics;
mod process;

pub use metrics::MetricsStore;
