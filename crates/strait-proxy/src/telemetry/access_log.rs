//! Access logs: one JSON line per request. A worker only fills a [`LogEntry`] and hands it to
//! a bounded channel; a writer thread per destination formats and writes through a buffer. When
//! the writer cannot keep up the entry is dropped and counted: a slow disk never slows traffic.
//!
//! The writer wakes every [`FLUSH_EVERY`], or when a quarter of its queue is full, and writes
//! everything queued: waking it for each line would cost a worker a system call and a context
//! switch per request.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
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
    pub(crate) peer_identity: Option<String>,
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
            peer_identity: None,
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
    /// Entries sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    writer: std::thread::Thread,
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
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&queued);
        let writer = std::thread::Builder::new()
            .name("strait-access-log".to_owned())
            .spawn(move || write_lines(rx, out, &taken))?
            .thread()
            .clone();
        Ok(Sink {
            tx,
            dropped,
            queued,
            writer,
        })
    }

    fn send(&self, entry: Box<LogEntry>) {
        match self.tx.try_send(entry) {
            Ok(()) => {
                if self.queued.fetch_add(1, Relaxed) + 1 == WAKE_AT {
                    self.writer.unpark();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Queued entries that wake the writer before its next tick.
const WAKE_AT: usize = QUEUE / 4;

fn write_lines(
    rx: mpsc::Receiver<Box<LogEntry>>,
    out: Box<dyn Write + Send>,
    queued: &AtomicUsize,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        loop {
            match rx.try_recv() {
                Ok(entry) => {
                    queued.fetch_sub(1, Relaxed);
                    line.clear();
                    entry.write_json(&mut line);
                    line.push(b'\n');
                    // A destination that is gone (disk full, closed pipe) still has its queue
                    // drained, so workers never see it fill.
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

impl LogEntry {
    /// Writes the line (without its newline), its keys in the configured order.
    fn write_json(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, v: Option<&str>| json(out, v.unwrap_or(""));
        let ms = |out: &mut Vec<u8>, d: Duration| json(out, (d.as_secs_f64() * 1e6).round() / 1e3);
        out.push(b'{');
        for (i, &field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(field.key().as_bytes());
            out.extend_from_slice(b"\":");
            match field {
                LogField::Time => json(out, rfc3339(self.arrived)),
                LogField::Listener => json(out, &*self.listener),
                LogField::Route => text(out, self.route.as_deref()),
                LogField::Cluster => text(out, self.cluster.as_deref()),
                LogField::Endpoint => match self.endpoint {
                    Some(e) => json(out, e),
                    None => json(out, ""),
                },
                LogField::Method => json(out, self.method.as_str()),
                LogField::Authority => {
                    text(out, self.authority.as_ref().and_then(|a| a.to_str().ok()))
                }
                LogField::Path => json(out, &self.path),
                LogField::Protocol => json(out, protocol(self.version)),
                LogField::Status => json(out, self.status),
                LogField::GrpcStatus => json(out, self.grpc_status),
                LogField::BytesReceived => json(out, self.bytes_received.load(Relaxed)),
                LogField::BytesSent => json(out, self.bytes_sent),
                LogField::DurationMs => ms(out, self.duration),
                LogField::UpstreamDurationMs => match self.upstream_duration {
                    Some(d) => ms(out, d),
                    None => json(out, ()),
                },
                LogField::Retries => json(out, self.retries),
                LogField::ClientIp => json(out, self.client_ip),
                LogField::PeerIdentity => json(out, self.peer_identity.as_deref()),
                LogField::RequestId => {
                    text(out, self.request_id.as_ref().and_then(|v| v.to_str().ok()))
                }
                LogField::TraceId => match self.trace_id {
                    Some(t) => json(out, std::str::from_utf8(&t.to_hex()).unwrap_or_default()),
                    None => json(out, ()),
                },
                LogField::ResponseFlags => json(out, &self.flags),
                #[allow(unreachable_patterns)]
                _ => json(out, ()),
            }
        }
        out.push(b'}');
    }
}

/// Appends one JSON value: strings escaped, numbers as serde_json writes them, `()` as null.
fn json(out: &mut Vec<u8>, value: impl serde::Serialize) {
    // Writing to a Vec cannot fail, and these types always serialize.
    let _ = serde_json::to_writer(out, &value);
}

/// `HTTP/1.1` and friends, as `http::Version`'s `Debug` spells them.
fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
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
    fn lines_are_json_with_the_fields_in_order() {
        let entry = LogEntry {
            fields: LogField::ALL.into(),
            arrived: UNIX_EPOCH,
            started: Instant::now(),
            listener: Arc::from("web"),
            route: None,
            cluster: Some(Arc::from("api")),
            endpoint: Some("10.0.0.1:80".parse().unwrap()),
            method: Method::POST,
            authority: Some(HeaderValue::from_static("a.example")),
            path: "/q?\"x\"=\\".to_owned(),
            version: Version::HTTP_2,
            status: 503,
            grpc_status: None,
            bytes_received: Arc::new(AtomicU64::new(7)),
            bytes_sent: 9,
            duration: Duration::from_micros(1_500),
            upstream_duration: None,
            retries: 1,
            peer_identity: None,
            client_ip: "::1".parse().unwrap(),
            request_id: None,
            trace_id: Some(TraceId([0xab; 16])),
            flags: "connect_failed".to_owned(),
        };
        let mut out = Vec::new();
        entry.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), LogField::ALL.len());
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["route"], "");
        assert_eq!(v["endpoint"], "10.0.0.1:80");
        assert_eq!(v["path"], "/q?\"x\"=\\");
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["status"], 503);
        assert_eq!(v["grpc_status"], serde_json::Value::Null);
        assert_eq!(v["bytes_received"], 7);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_duration_ms"], serde_json::Value::Null);
        assert_eq!(v["client_ip"], "::1");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("{\"time\":"), "{text}");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_350_605_123);
        assert_eq!(rfc3339(t), "2026-11-22T12:30:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
