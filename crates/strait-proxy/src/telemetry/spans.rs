//! Spans on the hot path: a request's place in its trace, the server span it records and the
//! client span of each upstream attempt, handed finished to the exporter through a bounded
//! queue.
//!
//! A span here is Strait's own small record ([`SpanRecord`]) of what the request path already
//! knows (method, route, status, endpoint), not an OpenTelemetry SDK span: the SDK's spans
//! take a lock per attribute and build key-value vectors as they go, which a proxy does not need
//! on a worker thread. The exporter thread wraps encoded spans in export requests and sends
//! them (see `otlp.rs`).
//!
//! Cost: every request of a traced listener parses its trace headers and writes the emitted
//! ones; only sampled requests fill a record (one per span, reused from a per-thread pool) and
//! take the clock. A span is encoded as OTLP protobuf by the worker that ends it, and only its
//! bytes go to the exporter thread.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Request, Version};
use strait_config::{AcceptFormat, TraceContext};

use super::otlp::proto;
use super::trace_context::{
    self, Formats, Sampler, SpanContext, SpanId, Started, TraceId, TraceparentValue,
};

/// Counters of the span pipeline, shared by every exporter a config ever started.
#[derive(Debug, Default)]
pub struct TracingCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full (the exporter could not keep up).
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export request failed or timed out.
    pub dropped_export_failed: AtomicU64,
    /// Export requests that failed or timed out.
    pub export_failures: AtomicU64,
}

/// The spans waiting for the exporter, already encoded: what the sink and the exporter thread
/// share.
#[derive(Debug)]
pub(crate) struct Feed {
    /// Spans that fill a batch (one export request).
    pub batch: usize,
    /// Most spans waiting; past it spans are dropped and counted.
    pub limit: usize,
    /// Wakes the exporter early: a full batch, or closing.
    pub wake: tokio::sync::Notify,
    /// No span will be sent any more: export what is queued and stop.
    pub closing: AtomicBool,
    queue: Mutex<Queue>,
}

/// Encoded spans: batches ready to send, and the one being filled.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// The batch being filled: `ScopeSpans.spans` fields.
    open: Vec<u8>,
    open_spans: usize,
    /// When the first span of the open batch arrived.
    pub oldest: Option<Instant>,
    /// Full batches, and their span counts.
    full: Vec<(Vec<u8>, usize)>,
    /// Spans in `open` and `full`.
    spans: usize,
    /// Emptied batch buffers, reused.
    spare: Vec<Vec<u8>>,
}

/// Emptied batch buffers kept for reuse, and the most each keeps of its capacity.
const SPARE_BATCHES: usize = 4;
const SPARE_BATCH_BYTES: usize = 1 << 20;

impl Feed {
    pub(crate) fn new(batch: usize, limit: usize) -> Feed {
        Feed {
            batch,
            limit,
            wake: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the span encoded in `scratch`; false when the queue is full and it was dropped.
    fn push(&self, scratch: &proto::Scratch) -> bool {
        let mut queue = self.lock();
        if queue.spans >= self.limit {
            return false;
        }
        if queue.open_spans == 0 {
            queue.oldest = Some(Instant::now());
        }
        proto::append_span(&mut queue.open, scratch);
        queue.open_spans += 1;
        queue.spans += 1;
        let full = queue.open_spans >= self.batch;
        if full {
            queue.seal();
        }
        drop(queue);
        if full {
            self.wake.notify_one();
        }
        true
    }
}

impl Queue {
    /// Ends the open batch, ready to send.
    pub(crate) fn seal(&mut self) {
        if self.open_spans == 0 {
            return;
        }
        let next = self.spare.pop().unwrap_or_default();
        let batch = std::mem::replace(&mut self.open, next);
        self.full.push((batch, self.open_spans));
        self.open_spans = 0;
        self.oldest = None;
    }

    /// Takes the full batches (oldest first) into `out`.
    pub(crate) fn take_full(&mut self, out: &mut Vec<(Vec<u8>, usize)>) {
        self.spans -= self.full.iter().map(|(_, n)| n).sum::<usize>();
        out.append(&mut self.full);
    }

    /// Gives back a sent batch's buffer.
    pub(crate) fn give_back(&mut self, mut batch: Vec<u8>) {
        if self.spare.len() < SPARE_BATCHES {
            batch.clear();
            batch.shrink_to(SPARE_BATCH_BYTES);
            self.spare.push(batch);
        }
    }
}

/// Where finished spans go: encoded on the worker that ends them, into the exporter's queue.
/// Sending never blocks on the collector.
#[derive(Debug)]
pub struct SpanSink {
    pub(crate) feed: Arc<Feed>,
    pub(crate) counters: Arc<TracingCounters>,
}

thread_local! {
    /// A worker's buffers for encoding spans.
    static SCRATCH: RefCell<proto::Scratch> = RefCell::new(proto::Scratch::default());
}

impl SpanSink {
    /// Encodes a finished span here, on the worker, and queues its bytes: handing the record
    /// itself to the exporter thread cost more (a box freed on another thread, and moves)
    /// than the encoding.
    fn send(&self, span: &SpanRecord) {
        let queued = SCRATCH.with_borrow_mut(|scratch| {
            proto::encode_span(span, scratch);
            self.feed.push(scratch)
        });
        if !queued {
            self.counters.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        // The last snapshot using this exporter is gone: it sends what it has and stops.
        self.feed.closing.store(true, Relaxed);
        self.feed.wake.notify_one();
    }
}

/// A config's tracing, shared by its listeners: the sampler and the exporter's queue.
#[derive(Debug)]
pub struct Tracer {
    pub(crate) sampler: Sampler,
    pub(crate) sink: Arc<SpanSink>,
}

/// A listener's trace context settings, compiled.
#[derive(Debug)]
pub struct ListenerTracing {
    accept: Vec<AcceptFormat>,
    emit: Formats,
    owned: Formats,
    tracer: Arc<Tracer>,
}

impl ListenerTracing {
    /// The listener's formats (the defaults when `trace_context` is not given).
    pub fn new(context: Option<&TraceContext>, tracer: Arc<Tracer>) -> ListenerTracing {
        let default = TraceContext::default();
        let context = context.unwrap_or(&default);
        ListenerTracing {
            accept: context.accept.clone(),
            emit: Formats::emitted(&context.emit),
            owned: Formats::owned(&context.accept, &context.emit),
            tracer,
        }
    }

    /// Places a request in its trace and, when it is sampled, opens its server span.
    pub(crate) fn begin<B>(
        &self,
        req: &Request<B>,
        listener: &Arc<str>,
        client: SocketAddr,
        host: Option<&HeaderValue>,
        made_id: Option<&crate::http::headers::RequestId>,
    ) -> RequestTrace {
        let present = Formats::present(req.headers());
        let extracted = trace_context::extract_present(req.headers(), &self.accept, present);
        let started = trace_context::start(extracted, &self.tracer.sampler);
        let server = started.context.sampled.then(|| {
            let headers = req.headers();
            let mut record = SpanRecord::new(SpanKind::Server, started.context, req.method());
            record.parent = started.parent;
            record.parent_remote = started.parent.is_some();
            record.tracestate = started.tracestate.clone();
            record.path.push_str(req.uri().path());
            record.version = req.version();
            record.listener = Some(Arc::clone(listener));
            record.host = host.cloned();
            record.client = Some(client);
            record.user_agent = headers.get(http::header::USER_AGENT).cloned();
            // The id made on arrival is written into the request when it is forwarded.
            record.request_id = match made_id {
                Some(id) => Some(id.to_value()),
                None => headers.get(&crate::http::headers::X_REQUEST_ID).cloned(),
            };
            OpenSpan::new(record, Arc::clone(&self.tracer.sink))
        });
        RequestTrace {
            started,
            emit: self.emit,
            owned: self.owned,
            present,
            server,
        }
    }
}

/// A request's trace: its server span's context, the span itself when sampled, and the
/// listener's formats for what it sends upstream.
#[derive(Debug)]
pub struct RequestTrace {
    started: Started,
    emit: Formats,
    owned: Formats,
    /// The trace headers' formats the request arrived with.
    present: Formats,
    server: Option<OpenSpan>,
}

impl RequestTrace {
    /// The trace the request belongs to (received, or new).
    pub fn trace_id(&self) -> TraceId {
        self.started.context.trace_id
    }

    /// Records the route that matched.
    pub fn note_route(&mut self, route: &Arc<str>) {
        if let Some(record) = self.server.as_mut().and_then(OpenSpan::record) {
            record.route = Some(Arc::clone(route));
        }
    }

    /// Records the cluster chosen.
    pub fn note_cluster(&mut self, cluster: &Arc<str>) {
        if let Some(record) = self.server.as_mut().and_then(OpenSpan::record) {
            record.cluster = Some(Arc::clone(cluster));
        }
    }

    /// Removes the trace headers the listener reads or writes from a request going upstream.
    pub fn strip(&self, headers: &mut HeaderMap) {
        trace_context::strip(headers, self.owned, self.present);
    }

    /// Starts the client span of one upstream attempt: writes its context into the attempt's
    /// headers, but for `traceparent`, which goes to `traceparent` for the sender to write
    /// (into the HTTP/1 head, or the HTTP/2 headers), and returns the span when the request is
    /// sampled.
    pub(crate) fn start_client(
        &self,
        headers: &mut HeaderMap,
        attempt: &UpstreamAttempt<'_>,
        traceparent: &mut Option<TraceparentValue>,
    ) -> Option<OpenSpan> {
        let context = SpanContext {
            span_id: SpanId::random(),
            ..self.started.context
        };
        *traceparent = trace_context::inject_but_traceparent(
            headers,
            self.emit,
            &context,
            self.started.tracestate.as_ref(),
        );
        let server = self.server.as_ref()?;
        let mut record = SpanRecord::new(SpanKind::Client, context, attempt.method);
        record.parent = Some(self.started.context.span_id);
        record.tracestate = self.started.tracestate.clone();
        record.path.push_str(attempt.path);
        record.version = attempt.version;
        record.cluster = Some(Arc::clone(attempt.cluster));
        record.endpoint = Some(attempt.endpoint);
        record.resends = attempt.resends;
        Some(OpenSpan::new(record, Arc::clone(&server.sink)))
    }

    /// The server span, for the answer to close.
    pub fn into_server_span(self) -> Option<OpenSpan> {
        self.server
    }
}

/// What a client span records of one upstream attempt.
#[derive(Debug)]
pub(crate) struct UpstreamAttempt<'a> {
    pub method: &'a Method,
    /// The path sent (after rewrites), without the query.
    pub path: &'a str,
    pub endpoint: SocketAddr,
    /// The protocol spoken to the endpoint.
    pub version: Version,
    pub cluster: &'a Arc<str>,
    /// Attempts before this one (retries and hedges).
    pub resends: u32,
}

/// Server (a request received) or client (an attempt sent upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request the proxy received.
    Server,
    /// One attempt the proxy sent upstream.
    Client,
}

/// What a span records; the exporter turns it into OpenTelemetry's HTTP attributes.
#[derive(Debug)]
pub struct SpanRecord {
    pub(crate) kind: SpanKind,
    pub(crate) context: SpanContext,
    pub(crate) parent: Option<SpanId>,
    pub(crate) parent_remote: bool,
    pub(crate) tracestate: Option<HeaderValue>,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) method: Method,
    /// The path without the query (queries carry tokens; they are never recorded).
    pub(crate) path: String,
    pub(crate) version: Version,
    /// Response status; 0 when there was none.
    pub(crate) status: u16,
    /// Why it failed, when it did (`connect_failed`, ...).
    pub(crate) error: Option<Cow<'static, str>>,
    pub(crate) listener: Option<Arc<str>>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    // Server spans.
    pub(crate) host: Option<HeaderValue>,
    pub(crate) client: Option<SocketAddr>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    // Client spans.
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) resends: u32,
}

impl SpanRecord {
    /// A record for a new span: one kept by this thread when there is one, else a new box.
    fn new(kind: SpanKind, context: SpanContext, method: &Method) -> Box<SpanRecord> {
        let fresh = |path| SpanRecord {
            kind,
            context,
            parent: None,
            parent_remote: false,
            tracestate: None,
            start: SystemTime::now(),
            end: SystemTime::UNIX_EPOCH,
            method: method.clone(),
            path,
            version: Version::HTTP_11,
            status: 0,
            error: None,
            listener: None,
            route: None,
            cluster: None,
            host: None,
            client: None,
            user_agent: None,
            request_id: None,
            endpoint: None,
            resends: 0,
        };
        match SPARE_RECORDS.with_borrow_mut(Vec::pop) {
            Some(mut spare) => {
                let mut path = std::mem::take(&mut spare.path);
                path.clear();
                *spare = fresh(path);
                spare
            }
            None => Box::new(fresh(String::new())),
        }
    }
}

thread_local! {
    /// Records of ended spans, reused by the next ones (their path's buffer too).
    // The boxes are the point: each is an allocation kept for the next record.
    #[allow(clippy::vec_box)]
    static SPARE_RECORDS: RefCell<Vec<Box<SpanRecord>>> = const { RefCell::new(Vec::new()) };
}

/// Most records a thread keeps for reuse.
const MAX_SPARE_RECORDS: usize = 64;

/// Keeps an ended span's record for reuse, without what holds other memory (header values
/// share a connection's read buffer).
fn keep_spare(mut record: Box<SpanRecord>) {
    record.tracestate = None;
    record.host = None;
    record.user_agent = None;
    record.request_id = None;
    record.error = None;
    record.listener = None;
    record.route = None;
    record.cluster = None;
    SPARE_RECORDS.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE_RECORDS {
            spare.push(record);
        }
    });
}

/// A span being recorded; it ends, and goes to the exporter, when dropped.
#[derive(Debug)]
pub struct OpenSpan {
    /// `None` only once sent.
    record: Option<Box<SpanRecord>>,
    sink: Arc<SpanSink>,
}

impl OpenSpan {
    fn new(record: Box<SpanRecord>, sink: Arc<SpanSink>) -> OpenSpan {
        OpenSpan {
            record: Some(record),
            sink,
        }
    }

    fn record(&mut self) -> Option<&mut SpanRecord> {
        self.record.as_deref_mut()
    }

    /// Records the response status.
    pub fn set_status(&mut self, status: u16) {
        if let Some(record) = self.record() {
            record.status = status;
        }
    }

    /// Records why the span failed, unless a reason is recorded already.
    pub fn set_error(&mut self, error: impl Into<Cow<'static, str>>) {
        if let Some(record) = self.record() {
            if record.error.is_none() {
                record.error = Some(error.into());
            }
        }
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.end = SystemTime::now();
            self.sink.send(&record);
            keep_spare(record);
        }
    }
}
