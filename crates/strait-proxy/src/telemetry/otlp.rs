//! OTLP export, off the worker threads: one exporter thread per tracing config, with its own
//! current-thread runtime, takes finished [`SpanRecord`]s from a bounded queue, batches them,
//! and sends each batch with opentelemetry-otlp's exporter (gRPC through tonic, or HTTP with
//! protobuf bodies through hyper).
//!
//! ```text
//! worker: span ends ─► try_send (queue full: dropped, counted) ─► [queue] ─► exporter thread:
//!   every batch_delay, or when a batch is full ─► SpanRecord → SpanData ─► export with
//!   export_timeout ─► exported, or dropped and counted (collector down, slow, refusing)
//! ```
//!
//! Why this shape: opentelemetry-otlp is the project's OTLP client (both transports, the
//! collector's retry hints, `OTEL_EXPORTER_OTLP_HEADERS`), but its SDK's tracer and batch
//! processor would put locks and per-attribute allocations on the hot path. So workers keep
//! their own small records (`spans.rs`), and only this thread builds `SpanData`. Workers never
//! wait for the collector: the queue is bounded, sending is `try_send`, and a dead collector
//! costs a failed export here and a counter.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opentelemetry::trace::{
    SpanContext as OtelContext, SpanId as OtelSpanId, SpanKind as OtelKind, Status, TraceFlags,
    TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use strait_config::{OtlpProtocol, Tracing};

use super::spans::{Feed, SpanKind, SpanRecord, SpanSink, TracingCounters};

/// The exporters started so far, and the current config's, reused while its export settings
/// do not change (a reload that changes only `sample_percent` keeps the exporter).
#[derive(Debug, Default)]
pub struct Exporters {
    current: Mutex<Option<(Tracing, Arc<SpanSink>)>>,
    /// Every exporter thread still running, to flush on shutdown.
    running: Mutex<Vec<Running>>,
    counters: Arc<TracingCounters>,
}

#[derive(Debug)]
struct Running {
    feed: Arc<Feed>,
    /// Disconnected once the thread has ended; nothing is ever sent on it.
    done: Receiver<()>,
}

/// Why an exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The exporter thread could not be created.
    #[error("cannot start the span exporter thread: {0}")]
    Thread(std::io::Error),
    /// opentelemetry-otlp refused the settings.
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Build {
        /// The collector URL.
        endpoint: String,
        /// What the exporter said.
        message: String,
    },
}

impl Exporters {
    /// The counters every exporter reports to.
    pub fn counters(&self) -> Arc<TracingCounters> {
        Arc::clone(&self.counters)
    }

    /// The sink for `config`: the running exporter when its settings are the same, else a new
    /// exporter thread. The old one stops once no snapshot uses it.
    pub fn sink(&self, config: &Tracing) -> Result<Arc<SpanSink>, ExportError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let same = |old: &Tracing| {
            Tracing {
                sample_percent: config.sample_percent,
                ..old.clone()
            } == *config
        };
        if let Some((old, sink)) = current.as_ref() {
            if same(old) {
                return Ok(Arc::clone(sink));
            }
        }
        let (sink, running) = start(config, Arc::clone(&self.counters))?;
        let mut all = self.running.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|r| matches!(r.done.try_recv(), Err(mpsc::TryRecvError::Empty)));
        all.push(running);
        *current = Some((config.clone(), Arc::clone(&sink)));
        Ok(sink)
    }

    /// Forgets the current exporter (the config has no tracing any more); it stops once no
    /// snapshot uses it.
    pub fn clear(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Asks every exporter to send what it holds and waits for them, at most until `deadline`.
    pub fn flush(&self, deadline: Instant) {
        let all = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for r in all.iter() {
            r.feed.closing.store(true, Relaxed);
            r.feed.wake.notify_one();
        }
        for r in all.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = r.done.recv_timeout(left);
        }
    }
}

/// Starts an exporter thread for `config`; returns once its exporter is built.
fn start(
    config: &Tracing,
    counters: Arc<TracingCounters>,
) -> Result<(Arc<SpanSink>, Running), ExportError> {
    let (tx, rx) = mpsc::sync_channel(config.max_queue_spans);
    let feed = Arc::new(Feed {
        queued: AtomicUsize::new(0),
        batch: config.max_batch_spans,
        wake: tokio::sync::Notify::new(),
        closing: AtomicBool::new(false),
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = ExporterThread {
        config: config.clone(),
        rx,
        feed: Arc::clone(&feed),
        counters: Arc::clone(&counters),
    };
    std::thread::Builder::new()
        .name("strait-otlp".to_owned())
        .spawn(move || {
            thread.run(ready_tx);
            // Ending is the signal: `flush` and `sink` see the channel disconnected.
            drop(done_tx);
        })
        .map_err(ExportError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(ExportError::Thread(std::io::Error::other(
                "the exporter thread ended before starting",
            )))
        }
    }
    let sink = Arc::new(SpanSink {
        tx,
        feed: Arc::clone(&feed),
        counters,
    });
    let running = Running {
        feed,
        done: done_rx,
    };
    Ok((sink, running))
}

struct ExporterThread {
    config: Tracing,
    rx: Receiver<Box<SpanRecord>>,
    feed: Arc<Feed>,
    counters: Arc<TracingCounters>,
}

impl ExporterThread {
    fn run(self, ready: mpsc::Sender<Result<(), ExportError>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(ExportError::Thread(e)));
                return;
            }
        };
        runtime.block_on(async move {
            // tonic's channel needs the runtime to exist when it is built.
            let exporter = match build_exporter(&self.config) {
                Ok(exporter) => exporter,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            self.export_loop(exporter).await;
        });
    }

    async fn export_loop(self, exporter: opentelemetry_otlp::SpanExporter) {
        let scope = InstrumentationScope::builder("strait")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let delay = self.config.batch_delay.get();
        let max_batch = self.config.max_batch_spans;
        let mut pending: Vec<SpanRecord> = Vec::with_capacity(max_batch);
        let mut oldest: Option<tokio::time::Instant> = None;
        let mut healthy = true;
        loop {
            let wait = oldest.map_or(delay, |t| delay.saturating_sub(t.elapsed()));
            tokio::select! {
                _ = self.feed.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let closed = self.take(&mut pending, &mut oldest);
            let closing = closed || self.feed.closing.load(Relaxed);
            let due = oldest.is_some_and(|t| t.elapsed() >= delay);
            while pending.len() >= max_batch || (!pending.is_empty() && (due || closing)) {
                let rest = pending.split_off(pending.len().min(max_batch));
                let batch = std::mem::replace(&mut pending, rest);
                let ok = self.export(&exporter, batch, &scope).await;
                if ok != healthy {
                    healthy = ok;
                    log_health(ok, &self.config);
                }
                // Spans that queued while exporting count from now.
                self.take(&mut pending, &mut oldest);
            }
            if pending.is_empty() {
                oldest = None;
            }
            if closing {
                let _ = exporter.shutdown();
                return;
            }
        }
    }

    /// Moves queued spans into `pending`; true when no span can arrive any more.
    fn take(
        &self,
        pending: &mut Vec<SpanRecord>,
        oldest: &mut Option<tokio::time::Instant>,
    ) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(span) => {
                    self.feed.queued.fetch_sub(1, Relaxed);
                    oldest.get_or_insert_with(tokio::time::Instant::now);
                    pending.push(*span);
                }
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Sends one batch within `export_timeout`; true when the collector took it.
    async fn export(
        &self,
        exporter: &opentelemetry_otlp::SpanExporter,
        batch: Vec<SpanRecord>,
        scope: &InstrumentationScope,
    ) -> bool {
        let n = batch.len() as u64;
        let data: Vec<SpanData> = batch.into_iter().map(|r| span_data(r, scope)).collect();
        let limit = self.config.export_timeout.get();
        match tokio::time::timeout(limit, exporter.export(data)).await {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(n, Relaxed);
                true
            }
            outcome => {
                self.counters.dropped_export_failed.fetch_add(n, Relaxed);
                self.counters.export_failures.fetch_add(1, Relaxed);
                if let Ok(Err(e)) = outcome {
                    tracing::debug!(error = %e, spans = n, "span export failed");
                }
                false
            }
        }
    }
}

/// One line when export starts failing and one when it recovers: never one per batch.
fn log_health(ok: bool, config: &Tracing) {
    let endpoint = config.endpoint_url();
    if ok {
        tracing::info!(%endpoint, "span export recovered");
    } else {
        tracing::warn!(
            %endpoint,
            "span export failing; spans are dropped and counted in \
             strait_tracing_spans_dropped_total until the collector answers"
        );
    }
}

fn build_exporter(config: &Tracing) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let endpoint = config.endpoint_url();
    let timeout = config.export_timeout.get();
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .build(),
        _ => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(timeout)
            .build(),
    };
    let mut exporter = built.map_err(|e| ExportError::Build {
        endpoint,
        message: e.to_string(),
    })?;
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

/// A record as the SDK's exporter takes it, with the attributes of OpenTelemetry's HTTP
/// semantic conventions.
fn span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let state = r
        .tracestate
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = OtelContext::new(
        OtelTraceId::from_bytes(r.context.trace_id.0),
        OtelSpanId::from_bytes(r.context.span_id.0),
        TraceFlags::SAMPLED,
        false,
        state,
    );
    let (method, original) = semconv_method(&r.method);
    let mut attributes = Vec::with_capacity(16);
    attributes.push(KeyValue::new("http.request.method", method));
    if let Some(original) = original {
        attributes.push(KeyValue::new("http.request.method_original", original));
    }
    if r.status != 0 {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
    }
    attributes.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(r.version),
    ));
    let failed = match r.kind {
        SpanKind::Server => r.status >= 500 || (r.status == 0 && r.error.is_some()),
        SpanKind::Client => r.status >= 400 || r.error.is_some(),
    };
    // Only failures carry `error.type`: a 404 the proxy made (`no_route`) is the client's doing.
    let error = match (&r.error, failed) {
        (Some(e), true) => Some(e.clone()),
        (None, true) => Some(Cow::Owned(r.status.to_string())),
        (_, false) => None,
    };
    let name = match r.kind {
        SpanKind::Server => server_attributes(&r, &mut attributes, method),
        SpanKind::Client => client_attributes(&r, &mut attributes, method),
    };
    if let Some(e) = &error {
        attributes.push(KeyValue::new("error.type", e.clone()));
    }
    SpanData {
        span_context: context,
        parent_span_id: r
            .parent
            .map_or(OtelSpanId::INVALID, |p| OtelSpanId::from_bytes(p.0)),
        parent_span_is_remote: r.parent_remote,
        span_kind: match r.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
        },
        name,
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if failed {
            Status::Error {
                description: Cow::Borrowed(""),
            }
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Attributes of a server span; returns its name, `{method} {route}` (the route's name: a
/// proxy's routes are what its operators know a request by).
fn server_attributes(
    r: &SpanRecord,
    out: &mut Vec<KeyValue>,
    method: &'static str,
) -> Cow<'static, str> {
    let text = |v: &Option<http::HeaderValue>| {
        v.as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_owned())
    };
    out.push(KeyValue::new("url.path", r.path.clone()));
    out.push(KeyValue::new("url.scheme", "http"));
    if let Some(host) = text(&r.host) {
        let (name, port) = split_host(&host);
        if let Some(port) = port {
            out.push(KeyValue::new("server.port", i64::from(port)));
        }
        out.push(KeyValue::new("server.address", name.to_owned()));
    }
    if let Some(client) = r.client {
        out.push(KeyValue::new("client.address", client.ip().to_string()));
    }
    if let Some(agent) = text(&r.user_agent) {
        out.push(KeyValue::new("user_agent.original", agent));
    }
    if let Some(id) = text(&r.request_id) {
        out.push(KeyValue::new(
            "http.request.header.x-request-id",
            Value::Array(Array::String(vec![StringValue::from(id)])),
        ));
    }
    if let Some(listener) = &r.listener {
        out.push(KeyValue::new("strait.listener", shared(listener)));
    }
    if let Some(cluster) = &r.cluster {
        out.push(KeyValue::new("strait.cluster", shared(cluster)));
    }
    match &r.route {
        Some(route) => {
            out.push(KeyValue::new("http.route", shared(route)));
            out.push(KeyValue::new("strait.route", shared(route)));
            Cow::Owned(format!("{method} {route}"))
        }
        None => Cow::Borrowed(method),
    }
}

/// Attributes of a client span; returns its name, `{method}`.
fn client_attributes(
    r: &SpanRecord,
    out: &mut Vec<KeyValue>,
    method: &'static str,
) -> Cow<'static, str> {
    if let Some(endpoint) = r.endpoint {
        out.push(KeyValue::new("server.address", endpoint.ip().to_string()));
        out.push(KeyValue::new("server.port", i64::from(endpoint.port())));
        out.push(KeyValue::new(
            "url.full",
            format!("http://{endpoint}{}", r.path),
        ));
    }
    if r.resends > 0 {
        out.push(KeyValue::new(
            "http.request.resend_count",
            i64::from(r.resends),
        ));
    }
    if let Some(cluster) = &r.cluster {
        out.push(KeyValue::new("strait.cluster", shared(cluster)));
    }
    Cow::Borrowed(if method == "_OTHER" { "HTTP" } else { method })
}

/// A config name as an attribute value, shared rather than copied.
fn shared(name: &Arc<str>) -> Value {
    Value::String(StringValue::from(Arc::clone(name)))
}

/// The method as the conventions name it: one of the known methods, else `_OTHER` and the
/// original beside it.
fn semconv_method(method: &http::Method) -> (&'static str, Option<String>) {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match KNOWN.iter().find(|k| **k == method.as_str()) {
        Some(k) => (k, None),
        None => ("_OTHER", Some(method.as_str().to_owned())),
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// `example.com:8080` → (`example.com`, 8080); `[::1]:80` → (`::1`, 80).
fn split_host(host: &str) -> (&str, Option<u16>) {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
            (name, port.parse().ok())
        }
        _ => (host, None),
    };
    (name.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::telemetry::trace_context::{SpanContext, SpanId, TraceId};
    use std::time::Duration;

    fn record(kind: SpanKind) -> SpanRecord {
        SpanRecord {
            kind,
            context: SpanContext {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([2; 8]),
                sampled: true,
                debug: false,
            },
            parent: Some(SpanId([3; 8])),
            parent_remote: true,
            tracestate: Some(http::HeaderValue::from_static("a=1")),
            start: std::time::SystemTime::UNIX_EPOCH,
            end: std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(5),
            method: http::Method::GET,
            path: "/api/x".to_owned(),
            version: http::Version::HTTP_2,
            status: 200,
            error: None,
            listener: Some(Arc::from("public")),
            route: Some(Arc::from("api")),
            cluster: Some(Arc::from("backend")),
            host: Some(http::HeaderValue::from_static("api.example.com:8080")),
            client: Some("10.0.0.9:5000".parse().unwrap()),
            user_agent: Some(http::HeaderValue::from_static("curl/8")),
            request_id: Some(http::HeaderValue::from_static("abc")),
            endpoint: Some("10.1.0.1:9000".parse().unwrap()),
            resends: 0,
        }
    }

    fn attr(data: &SpanData, key: &str) -> Option<Value> {
        data.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("strait").build()
    }

    #[test]
    fn server_spans_carry_the_http_conventions() {
        let data = span_data(record(SpanKind::Server), &scope());
        assert_eq!(data.name, "GET api");
        assert_eq!(data.span_kind, OtelKind::Server);
        assert!(data.parent_span_is_remote);
        assert_eq!(data.parent_span_id, OtelSpanId::from_bytes([3; 8]));
        assert_eq!(data.span_context.trace_state().header(), "a=1");
        let s = |k| attr(&data, k).map(|v| v.as_str().into_owned());
        assert_eq!(s("http.request.method").as_deref(), Some("GET"));
        assert_eq!(s("url.path").as_deref(), Some("/api/x"));
        assert_eq!(s("server.address").as_deref(), Some("api.example.com"));
        assert_eq!(attr(&data, "server.port"), Some(Value::I64(8080)));
        assert_eq!(s("client.address").as_deref(), Some("10.0.0.9"));
        assert_eq!(s("network.protocol.version").as_deref(), Some("2"));
        assert_eq!(s("http.route").as_deref(), Some("api"));
        assert_eq!(s("strait.cluster").as_deref(), Some("backend"));
        assert_eq!(s("user_agent.original").as_deref(), Some("curl/8"));
        assert_eq!(
            attr(&data, "http.request.header.x-request-id"),
            Some(Value::Array(Array::String(vec!["abc".into()])))
        );
        assert_eq!(data.status, Status::Unset);
        assert!(attr(&data, "error.type").is_none());
    }

    #[test]
    fn failures_set_the_status_and_error_type() {
        let mut r = record(SpanKind::Server);
        r.status = 503;
        r.error = Some(Cow::Borrowed("connect_failed"));
        let data = span_data(r, &scope());
        assert!(matches!(data.status, Status::Error { .. }));
        assert_eq!(
            attr(&data, "error.type").map(|v| v.as_str().into_owned()),
            Some("connect_failed".to_owned())
        );
        // A 4xx is the client's doing: not a server span error, but a client span one.
        let mut r = record(SpanKind::Server);
        r.status = 404;
        assert_eq!(span_data(r, &scope()).status, Status::Unset);
        let mut r = record(SpanKind::Client);
        r.status = 404;
        let data = span_data(r, &scope());
        assert!(matches!(data.status, Status::Error { .. }));
        assert_eq!(
            attr(&data, "error.type").map(|v| v.as_str().into_owned()),
            Some("404".to_owned())
        );
    }

    #[test]
    fn client_spans_name_the_endpoint_and_resends() {
        let mut r = record(SpanKind::Client);
        r.resends = 2;
        r.method = http::Method::from_bytes(b"PURGE").unwrap();
        let data = span_data(r, &scope());
        assert_eq!(data.name, "HTTP");
        assert_eq!(data.span_kind, OtelKind::Client);
        let s = |k| attr(&data, k).map(|v| v.as_str().into_owned());
        assert_eq!(s("http.request.method").as_deref(), Some("_OTHER"));
        assert_eq!(s("http.request.method_original").as_deref(), Some("PURGE"));
        assert_eq!(s("server.address").as_deref(), Some("10.1.0.1"));
        assert_eq!(attr(&data, "server.port"), Some(Value::I64(9000)));
        assert_eq!(
            attr(&data, "http.request.resend_count"),
            Some(Value::I64(2))
        );
        assert_eq!(s("url.full").as_deref(), Some("http://10.1.0.1:9000/api/x"));
    }

    fn tracing(yaml: &str) -> Tracing {
        let config = strait_config::parse(&format!("tracing: {yaml}\n"), "t.yaml").unwrap();
        config.tracing.unwrap()
    }

    #[test]
    fn a_reload_that_changes_only_sampling_keeps_the_exporter() {
        let exporters = Exporters::default();
        let first = exporters
            .sink(&tracing("{ endpoint: \"http://127.0.0.1:9\" }"))
            .unwrap();
        let same = exporters
            .sink(&tracing(
                "{ endpoint: \"http://127.0.0.1:9\", sample_percent: 50 }",
            ))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        let other = exporters
            .sink(&tracing(
                "{ endpoint: \"http://127.0.0.1:9\", service_name: b }",
            ))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        // Every exporter thread ends once asked to send what it holds.
        exporters.flush(Instant::now() + Duration::from_secs(5));
        let running = exporters.running.lock().unwrap();
        assert_eq!(running.len(), 2);
        assert!(running
            .iter()
            .all(|r| matches!(r.done.try_recv(), Err(TryRecvError::Disconnected))));
        drop((first, same, other));
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(split_host("a.example"), ("a.example", None));
        assert_eq!(split_host("a.example:81"), ("a.example", Some(81)));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("[::1]"), ("::1", None));
    }
}
