//! Access logs: one JSON line per request. A worker only fills a [`LogEntry`] and hands it to
//! a bounded channel; a writer thread per destination formats and writes through a buffer. When
//! the writer cannot keep up the entry is dropped and counted: a slow disk never slows traffic.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
use serde_json::Value;
use strait_config::{AccessLog, LogField};

use super::trace_context::TraceId;

/// Entries waiting for a writer, per destination.
const QUEUE: usize = 16 * 1024;
/// How often the writer flushes when lines keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What is known of one request, filled in along its path.
#[derive(Debug)]
pub struct LogEntry {
    fields: Arc<[LogField]>,
    pub(crate) arrived: SystemTime,
    pub(crate) started: Instant,
    pub(crate) listener: Arc<str>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) method: Method,
    pub(crate) authority: Option<HeaderValue>,
    pub(crate) path: String,
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) bytes_received: Arc<AtomicU64>,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream_duration: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) client_ip: IpAddr,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) flags: String,
}

/// A listener's access log: which fields, how many requests, where to.
#[derive(Debug)]
pub struct AccessLogger {
    fields: Arc<[LogField]>,
    sample_percent: f64,
    sink: Arc<Sink>,
}

impl AccessLogger {
    /// A new entry for a request, or `None` when this request is not sampled.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        &self,
        listener: &Arc<str>,
        method: &Method,
        authority: Option<&HeaderValue>,
        path: &str,
        version: Version,
        client_ip: IpAddr,
        trace_id: Option<TraceId>,
    ) -> Option<Box<LogEntry>> {
        if self.sample_percent < 100.0 && fastrand::f64() * 100.0 >= self.sample_percent {
            return None;
        }
        Some(Box::new(LogEntry {
            fields: Arc::clone(&self.fields),
            arrived: SystemTime::now(),
            started: Instant::now(),
            listener: Arc::clone(listener),
            route: None,
            cluster: None,
            endpoint: None,
            method: method.clone(),
            authority: authority.cloned(),
            path: path.to_owned(),
            version,
            status: 0,
            grpc_status: None,
            bytes_received: Arc::default(),
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_duration: None,
            retries: 0,
            client_ip,
            request_id: None,
            trace_id,
            flags: String::new(),
        }))
    }

    /// Hands a finished entry to the writer; never blocks.
    pub(crate) fn finish(&self, mut entry: Box<LogEntry>) {
        entry.duration = entry.started.elapsed();
        self.sink.send(entry);
    }
}

/// Writers by destination, shared by every snapshot so a reload keeps files open.
#[derive(Debug, Default)]
pub struct LogSinks {
    sinks: Mutex<HashMap<String, Arc<Sink>>>,
    dropped: Arc<AtomicU64>,
}

impl LogSinks {
    /// The logger a listener's config asks for; opens the destination (and starts its writer)
    /// the first time it is named.
    pub fn logger(&self, config: &AccessLog) -> std::io::Result<AccessLogger> {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let sink = match sinks.get(&config.path) {
            Some(sink) => Arc::clone(sink),
            None => {
                let sink = Arc::new(Sink::open(&config.path, Arc::clone(&self.dropped))?);
                sinks.insert(config.path.clone(), Arc::clone(&sink));
                sink
            }
        };
        let fields: Arc<[LogField]> = if config.fields.is_empty() {
            LogField::ALL.into()
        } else {
            config.fields.clone().into()
        };
        Ok(AccessLogger {
            fields,
            sample_percent: config.sample_percent,
            sink,
        })
    }

    /// Entries dropped because a writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// One destination and its writer thread.
#[derive(Debug)]
struct Sink {
    tx: SyncSender<Box<LogEntry>>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    fn open(path: &str, dropped: Arc<AtomicU64>) -> std::io::Result<Sink> {
        let out: Box<dyn Write + Send> = match path {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            file => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)?,
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<Box<LogEntry>>(QUEUE);
        std::thread::Builder::new()
            .name("strait-access-log".to_owned())
            .spawn(move || write_lines(rx, out))?;
        Ok(Sink { tx, dropped })
    }

    fn send(&self, entry: Box<LogEntry>) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn write_lines(rx: mpsc::Receiver<Box<LogEntry>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut last_flush = Instant::now();
    loop {
        match rx.recv_timeout(FLUSH_EVERY) {
            Ok(entry) => {
                let mut line = entry.to_json();
                line.push('\n');
                if out.write_all(line.as_bytes()).is_err() {
                    // The destination is gone (disk full, closed pipe); keep draining the
                    // queue so workers never see it fill.
                    continue;
                }
                if last_flush.elapsed() >= FLUSH_EVERY {
                    let _ = out.flush();
                    last_flush = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                last_flush = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

impl LogEntry {
    /// The line, its keys in the configured order.
    fn to_json(&self) -> String {
        let mut line = String::with_capacity(512);
        line.push('{');
        let text = |v: Option<&str>| Value::String(v.unwrap_or("").to_owned());
        let ms = |d: Duration| Value::from((d.as_secs_f64() * 1e6).round() / 1e3);
        for &field in self.fields.iter() {
            let value = match field {
                LogField::Time => Value::String(rfc3339(self.arrived)),
                LogField::Listener => Value::String(self.listener.to_string()),
                LogField::Route => text(self.route.as_deref()),
                LogField::Cluster => text(self.cluster.as_deref()),
                LogField::Endpoint => {
                    Value::String(self.endpoint.map(|e| e.to_string()).unwrap_or_default())
                }
                LogField::Method => Value::String(self.method.to_string()),
                LogField::Authority => text(self.authority.as_ref().and_then(|a| a.to_str().ok())),
                LogField::Path => Value::String(self.path.clone()),
                LogField::Protocol => Value::String(format!("{:?}", self.version)),
                LogField::Status => Value::from(self.status),
                LogField::GrpcStatus => self.grpc_status.map_or(Value::Null, Value::from),
                LogField::BytesReceived => Value::from(self.bytes_received.load(Relaxed)),
                LogField::BytesSent => Value::from(self.bytes_sent),
                LogField::DurationMs => ms(self.duration),
                LogField::UpstreamDurationMs => self.upstream_duration.map_or(Value::Null, ms),
                LogField::Retries => Value::from(self.retries),
                LogField::ClientIp => Value::String(self.client_ip.to_string()),
                LogField::RequestId => text(self.request_id.as_ref().and_then(|v| v.to_str().ok())),
                LogField::TraceId => self
                    .trace_id
                    .map_or(Value::Null, |t| Value::String(t.to_string())),
                LogField::ResponseFlags => Value::String(self.flags.clone()),
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            if line.len() > 1 {
                line.push(',');
            }
            line.push('"');
            line.push_str(field.key());
            line.push_str("\":");
            line.push_str(&value.to_string());
        }
        line.push('}');
        line
    }
}

/// `2026-11-22T12:30:05.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_350_605_123);
        assert_eq!(rfc3339(t), "2026-11-22T12:30:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
