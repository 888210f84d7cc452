//! Telemetry: what operators see of the data path. Today: Prometheus metrics on the admin
//! server's `/metrics`. Access logs and OTLP tracing come next (issue 6).

pub mod metrics;
mod process;

pub use metrics::MetricsStore;
