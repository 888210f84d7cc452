//! OTLP export, off the worker threads: workers encode each finished span as OTLP protobuf
//! ([`proto`]) into a bounded queue of batches; one exporter thread per tracing config, with
//! its own current-thread runtime, wraps each batch in an `ExportTraceServiceRequest` and
//! sends it over OTLP/gRPC or OTLP/HTTP with protobuf bodies ([`transport`]).
//!
//! ```text
//! worker: span ends ─► SpanRecord → protobuf bytes ─► [queue of batches] (full: dropped,
//!   counted) ─► exporter thread: every batch_delay, or when a batch is full ─► send within
//!   export_timeout ─► exported, or dropped and counted (collector down, slow, refusing)
//! ```
//!
//! Why this shape: workers keep their own small records (`spans.rs`) rather than an SDK's spans,
//! which take locks and build attribute vectors on the hot path; the records are encoded in one
//! pass rather than through opentelemetry-otlp, whose conversions cost more than the whole
//! observability budget (see `proto.rs`); and they are encoded where they end, because handing
//! records to the exporter (a box moved, then freed on another thread) cost more than encoding
//! them. Workers never wait for the collector: the queue is bounded, a worker holds its lock
//! only to append a span's bytes, and a dead collector costs a failed export here and a
//! counter.

pub(crate) mod proto;
mod transport;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use strait_config::Tracing;

use super::spans::{Feed, SpanSink, TracingCounters};

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
    /// The collector URL cannot be used.
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Build {
        /// The collector URL.
        endpoint: String,
        /// What is wrong with it.
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
    let feed = Arc::new(Feed::new(config.max_batch_spans, config.max_queue_spans));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let thread = ExporterThread {
        config: config.clone(),
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
            let transport = match transport::Transport::new(&self.config) {
                Ok(transport) => transport,
                Err(message) => {
                    let _ = ready.send(Err(ExportError::Build {
                        endpoint: self.config.endpoint_url(),
                        message,
                    }));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            self.export_loop(transport).await;
        });
    }

    async fn export_loop(self, mut transport: transport::Transport) {
        let delay = self.config.batch_delay.get();
        let encoder = proto::Encoder::new(&self.config.service_name);
        let mut batches = Vec::new();
        let mut message = Vec::new();
        let mut oldest = None;
        let mut healthy = true;
        loop {
            let wait = oldest.map_or(delay, |t: Instant| delay.saturating_sub(t.elapsed()));
            tokio::select! {
                _ = self.feed.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            let closing = self.feed.closing.load(Relaxed);
            {
                let mut queue = self.feed.lock();
                // The batch being filled goes once its first span has waited `batch_delay`.
                if closing || queue.oldest.is_some_and(|t| t.elapsed() >= delay) {
                    queue.seal();
                }
                queue.take_full(&mut batches);
                oldest = queue.oldest;
            }
            for (spans, n) in batches.drain(..) {
                encoder.finish(&spans, &mut message);
                let ok = self.export(&mut transport, &mut message, n).await;
                if ok != healthy {
                    healthy = ok;
                    log_health(ok, &self.config);
                }
                self.feed.lock().give_back(spans);
            }
            if closing {
                return;
            }
        }
    }

    /// Sends `message`, an export request of `n` spans, within `export_timeout`; true when
    /// the collector took them.
    async fn export(
        &self,
        transport: &mut transport::Transport,
        message: &mut Vec<u8>,
        n: usize,
    ) -> bool {
        let n = n as u64;
        let limit = self.config.export_timeout.get();
        let body = std::mem::take(message);
        match tokio::time::timeout(limit, transport.send(body.into())).await {
            Ok(Ok(())) => {
                self.counters.exported.fetch_add(n, Relaxed);
                true
            }
            outcome => {
                self.counters.dropped_export_failed.fetch_add(n, Relaxed);
                self.counters.export_failures.fetch_add(1, Relaxed);
                match outcome {
                    Ok(Err(e)) => tracing::debug!(error = %e, spans = n, "span export failed"),
                    _ => tracing::debug!(spans = n, "span export timed out"),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tracing(yaml: &str) -> Tracing {
        let text = format!(
            "tracing: {yaml}\nlisteners: [{{ name: l, address: 127.0.0.1:1, \
             routes: [{{ backends: [{{ cluster: c }}] }}] }}]\n\
             clusters: [{{ name: c, endpoints: [{{ address: 127.0.0.1:1 }}] }}]\n"
        );
        let config = strait_config::parse(&text, "t.yaml").unwrap();
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
            .all(|r| matches!(r.done.try_recv(), Err(mpsc::TryRecvError::Disconnected))));
        drop((first, same, other));
    }
}
