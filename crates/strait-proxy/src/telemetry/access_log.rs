//! Access logs: one JSON line per request. A worker fills a [`LogEntry`] along the request's
//! path and, when the request ends, formats the line into its destination's pending buffer: a
//! few hundred bytes appended under a lock held for as long as the formatting takes. A writer
//! thread per destination swaps the buffer out and writes it in one system call. When the
//! writer cannot keep up, past [`MAX_PENDING`] bytes, lines are dropped and counted: a slow disk
//! never slows traffic.
//!
//! Formatting on the worker costs less than handing entries to the writer: the entry is freed
//! by the thread that allocated it (a cross-thread free is several times dearer in the
//! allocator), and the writer's only work is `write(2)` of large buffers.
//!
//! The writer wakes every [`FLUSH_EVERY`], or when [`WAKE_AT`] bytes are pending: waking it for
//! each line would cost a worker a system call and a context switch per request.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};
use strait_config::{AccessLog, LogField};

use super::trace_context::TraceId;

/// Bytes of formatted lines a destination holds for its writer; past this, lines are dropped.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// Pending bytes that wake the writer before its next tick.
const WAKE_AT: usize = 256 * 1024;
/// How often the writer writes when lines keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// What is known of one request, filled in along its path.
#[derive(Debug)]
pub struct LogEntry {
    pub(crate) arrived: SystemTime,
    pub(crate) started: Instant,
    pub(crate) listener: Arc<str>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) endpoint: Option<SocketAddr>,
    /// The method, authority, path and protocol, as JSON values.
    pub(crate) request: RequestText,
    pub(crate) status: u16,
    pub(crate) grpc_status: Option<u16>,
    pub(crate) bytes_received: Arc<AtomicU64>,
    pub(crate) bytes_sent: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream_duration: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) peer_identity: Option<String>,
    /// The client's address as text, formatted once per connection.
    pub(crate) client_ip: HeaderValue,
    /// The request id as a JSON value (`""` when the request had none), written when it is
    /// known rather than holding the header value.
    request_id: Vec<u8>,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) flags: String,
}

/// A listener's access log: which fields, how many requests, where to.
#[derive(Debug)]
pub struct AccessLogger {
    fields: Arc<[Field]>,
    /// The fields are [`LogField::ALL`] in its order (the default): the line is written by
    /// [`LogEntry::write_json_all`].
    all_fields: bool,
    sample_percent: f64,
    sink: Arc<Sink>,
}

impl AccessLogger {
    /// A new entry for a request that arrived at `started`, or `None` when this request is not
    /// sampled.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin(
        &self,
        started: Instant,
        listener: &Arc<str>,
        method: &Method,
        authority: Option<&HeaderValue>,
        path: Option<&PathAndQuery>,
        version: Version,
        client_ip: &HeaderValue,
        trace_id: Option<TraceId>,
    ) -> Option<Box<LogEntry>> {
        self.entry(started, listener, client_ip, trace_id, |text| {
            text.fill(method, authority, path, version);
        })
    }

    /// [`AccessLogger::begin`] with the request's text written by `request` (into a kept
    /// entry's buffer, or a new one's).
    fn entry(
        &self,
        started: Instant,
        listener: &Arc<str>,
        client_ip: &HeaderValue,
        trace_id: Option<TraceId>,
        request: impl FnOnce(&mut RequestText),
    ) -> Option<Box<LogEntry>> {
        if self.sample_percent < 100.0 && fastrand::f64() * 100.0 >= self.sample_percent {
            return None;
        }
        let arrived = SystemTime::now();
        let Some(mut entry) = SPARE_ENTRIES.with_borrow_mut(Vec::pop) else {
            let mut text = RequestText::default();
            request(&mut text);
            return Some(Box::new(LogEntry {
                arrived,
                started,
                listener: Arc::clone(listener),
                route: None,
                cluster: None,
                endpoint: None,
                request: text,
                status: 0,
                grpc_status: None,
                bytes_received: Arc::default(),
                bytes_sent: 0,
                duration: Duration::ZERO,
                upstream_duration: None,
                retries: 0,
                peer_identity: None,
                client_ip: client_ip.clone(),
                request_id: b"\"\"".to_vec(),
                trace_id,
                flags: String::new(),
            }));
        };
        // A kept entry, its fields set one by one: building a whole new entry and moving it
        // into the box cost more than the fields that change. `keep_spare` emptied the fields
        // that hold a request's memory; the listener and the client's address are usually
        // the ones it already holds (a connection's requests).
        entry.arrived = arrived;
        entry.started = started;
        if !Arc::ptr_eq(&entry.listener, listener) {
            entry.listener = Arc::clone(listener);
        }
        entry.endpoint = None;
        request(&mut entry.request);
        entry.status = 0;
        entry.grpc_status = None;
        // The byte counter too, unless the request's body still holds it.
        match Arc::get_mut(&mut entry.bytes_received) {
            Some(n) => *n.get_mut() = 0,
            None => entry.bytes_received = Arc::default(),
        }
        entry.bytes_sent = 0;
        entry.duration = Duration::ZERO;
        entry.upstream_duration = None;
        entry.retries = 0;
        // The same bytes when at the same place: the kept value is alive, so its place cannot
        // have been reused by another.
        let same_client = entry.client_ip.as_bytes().as_ptr() == client_ip.as_bytes().as_ptr()
            && entry.client_ip.len() == client_ip.len();
        if !same_client {
            entry.client_ip = client_ip.clone();
        }
        entry.request_id.clear();
        entry.request_id.extend_from_slice(b"\"\"");
        entry.trace_id = trace_id;
        entry.flags.clear();
        Some(entry)
    }

    /// Writes the line of a request whose head was refused as malformed before it could be
    /// read (answered `status`): its method, authority, path and protocol are empty and its
    /// `response_flags` say `malformed_request`, as nginx logs a 400 it answered itself.
    pub(crate) fn malformed_request(
        &self,
        listener: &Arc<str>,
        client_ip: &HeaderValue,
        status: u16,
    ) {
        let entry = self.entry(
            Instant::now(),
            listener,
            client_ip,
            None,
            RequestText::fill_unparsed,
        );
        if let Some(mut entry) = entry {
            entry.status = status;
            entry.flags.push_str("malformed_request");
            self.finish(entry);
        }
    }

    /// Writes a finished entry's line for the writer; never waits on the destination.
    pub(crate) fn finish(&self, mut entry: Box<LogEntry>) {
        entry.duration = entry.started.elapsed();
        let fields = (!self.all_fields).then_some(&*self.fields);
        self.sink.append(fields, &entry);
        keep_spare(entry);
    }
}

thread_local! {
    /// Entries of finished requests, reused by the next ones. An entry is a few hundred bytes:
    /// with many requests in flight, glibc's per-thread cache (seven blocks of a size) overflows
    /// and each entry's allocation and free took the allocator's slow paths, which cost more
    /// than formatting half the line.
    // The boxes are the point: each is an allocation kept for the next entry.
    #[allow(clippy::vec_box)]
    static SPARE_ENTRIES: std::cell::RefCell<Vec<Box<LogEntry>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most entries a thread keeps for reuse: more than the requests a worker has in flight at
/// once in the benchmarks; past it, entries are freed.
const MAX_SPARE_ENTRIES: usize = 256;

/// Keeps a finished entry for reuse, without what would hold the request's memory or our own
/// (a request id's block).
fn keep_spare(mut entry: Box<LogEntry>) {
    entry.peer_identity = None;
    entry.route = None;
    entry.cluster = None;
    SPARE_ENTRIES.with_borrow_mut(|spare| {
        if spare.len() < MAX_SPARE_ENTRIES {
            spare.push(entry);
        }
    });
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
        let chosen = if config.fields.is_empty() {
            &LogField::ALL[..]
        } else {
            &config.fields[..]
        };
        Ok(AccessLogger {
            fields: layout(chosen),
            all_fields: chosen == &LogField::ALL[..],
            sample_percent: config.sample_percent,
            sink,
        })
    }

    /// Entries dropped because a writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Writes every pending line now, from the calling thread: the last lines before exit.
    pub fn flush(&self) {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        for sink in sinks.values() {
            sink.shared.write_pending(&mut Vec::new());
        }
    }
}

/// A field of the line and what precedes its value: `{"time":`, `,"listener":`, ...
#[derive(Debug)]
struct Field {
    field: LogField,
    /// The prefix, padded: copied whole (a fixed-size copy the compiler inlines, where a copy
    /// of the exact length is a call to `memcpy`), then cut to `len`.
    prefix: [u8; PREFIX_MAX],
    len: usize,
}

/// Room for the longest prefix, `,"upstream_duration_ms":` (24 bytes).
const PREFIX_MAX: usize = 32;

/// The fields of a line, with their keys written once rather than per line.
fn layout(fields: &[LogField]) -> Arc<[Field]> {
    fields
        .iter()
        .enumerate()
        .map(|(i, &field)| {
            let text = format!("{}\"{}\":", if i == 0 { '{' } else { ',' }, field.key());
            let mut prefix = [0u8; PREFIX_MAX];
            let len = text.len().min(PREFIX_MAX);
            prefix[..len].copy_from_slice(&text.as_bytes()[..len]);
            Field { field, prefix, len }
        })
        .collect()
}

/// One destination and its writer thread.
#[derive(Debug)]
struct Sink {
    shared: Arc<SinkShared>,
    dropped: Arc<AtomicU64>,
    writer: std::thread::Thread,
}

/// What a destination's workers and its writer share.
struct SinkShared {
    /// Formatted lines not yet written.
    pending: Mutex<Vec<u8>>,
    /// The destination, used by one writer at a time (the writer thread, or a final flush).
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SinkShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkShared").finish_non_exhaustive()
    }
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
        let shared = Arc::new(SinkShared {
            pending: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            out: Mutex::new(out),
        });
        let weak = Arc::downgrade(&shared);
        let writer = std::thread::Builder::new()
            .name("strait-access-log".to_owned())
            .spawn(move || write_lines(&weak))?
            .thread()
            .clone();
        Ok(Sink {
            shared,
            dropped,
            writer,
        })
    }

    /// Formats the entry's line onto the pending buffer, or drops and counts it when the
    /// buffer is full.
    /// `fields`: the line's fields, or `None` for every field in the default order.
    fn append(&self, fields: Option<&[Field]>, entry: &LogEntry) {
        let mut pending = self.shared.lock_pending();
        let before = pending.len();
        if before >= MAX_PENDING {
            drop(pending);
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        match fields {
            Some(fields) => entry.write_json(fields, &mut pending),
            None => entry.write_json_all(&mut pending),
        }
        pending.push(b'\n');
        let wake = before < WAKE_AT && pending.len() >= WAKE_AT;
        drop(pending);
        if wake {
            self.writer.unpark();
        }
    }
}

impl SinkShared {
    fn lock_pending(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps the pending lines into `spare` (an empty buffer, whose capacity is reused) and
    /// writes them. A destination that is gone (disk full, closed pipe) still has its lines
    /// taken, so workers never see the buffer fill.
    fn write_pending(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *self.lock_pending(), spare);
        if !spare.is_empty() {
            let _ = out.write_all(spare);
            let _ = out.flush();
        }
        spare.clear();
    }
}

/// The writer thread: writes what is pending every tick, until the destination is dropped.
fn write_lines(shared: &std::sync::Weak<SinkShared>) {
    let mut spare = Vec::with_capacity(WAKE_AT * 2);
    loop {
        std::thread::park_timeout(FLUSH_EVERY);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.write_pending(&mut spare);
        // Past a burst, give back what the burst made the buffer grow to.
        spare.shrink_to(WAKE_AT * 2);
    }
}

impl LogEntry {
    /// Records the request id the request came with (or was given by a token's claims).
    pub(crate) fn set_request_id(&mut self, id: Option<&HeaderValue>) {
        let text = &mut self.request_id;
        text.clear();
        match id {
            Some(id) if plain_ascii(id.as_bytes()) => json_plain(text, id.as_bytes()),
            // Bytes that are not UTF-8 (a field may hold any above 127) as U+FFFD.
            Some(id) => json_str(text, &String::from_utf8_lossy(id.as_bytes())),
            None => text.extend_from_slice(b"\"\""),
        }
    }

    /// Records the request id the proxy made (hex digits, nothing to check).
    pub(crate) fn set_made_request_id(&mut self, id: &crate::http::headers::RequestId) {
        self.request_id.clear();
        json_plain(&mut self.request_id, id.as_bytes());
    }

    /// Writes the line (without its newline), its keys in the configured order.
    fn write_json(&self, fields: &[Field], out: &mut Vec<u8>) {
        if fields.is_empty() {
            out.push(b'{');
        }
        for Field { field, prefix, len } in fields {
            let at = out.len();
            out.extend_from_slice(prefix);
            out.truncate(at + len);
            self.write_value(*field, out);
        }
        out.push(b'}');
    }

    /// Writes the line of every field in [`LogField::ALL`]'s order (the default), its keys as
    /// literals: the per-field loop, its dispatch and the key copies of [`LogEntry::write_json`]
    /// were a quarter of the line's cost.
    fn write_json_all(&self, out: &mut Vec<u8>) {
        macro_rules! fields {
            ($($field:ident = $key:literal),*) => {
                $(
                    out.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
                    self.write_value(LogField::$field, out);
                )*
            };
        }
        out.extend_from_slice(b"{\"time\":");
        self.write_value(LogField::Time, out);
        // The names, and the request's values, each written whole with their keys.
        json_names(
            out,
            &self.listener,
            self.route.as_ref(),
            self.cluster.as_ref(),
        );
        fields!(Endpoint = "endpoint");
        out.extend_from_slice(&self.request.text);
        fields!(
            Status = "status",
            GrpcStatus = "grpc_status",
            BytesReceived = "bytes_received",
            BytesSent = "bytes_sent",
            DurationMs = "duration_ms",
            UpstreamDurationMs = "upstream_duration_ms",
            Retries = "retries",
            ClientIp = "client_ip",
            PeerIdentity = "peer_identity",
            RequestId = "request_id",
            TraceId = "trace_id",
            ResponseFlags = "response_flags"
        );
        out.push(b'}');
    }

    /// Writes one field's value.
    #[inline(always)]
    fn write_value(&self, field: LogField, out: &mut Vec<u8>) {
        match field {
            LogField::Time => {
                out.push(b'"');
                rfc3339_cached(out, self.arrived);
                out.push(b'"');
            }
            // The default line writes these from `json_names`' cache.
            LogField::Listener => json_str(out, &self.listener),
            LogField::Route => json_str(out, self.route.as_deref().unwrap_or("")),
            LogField::Cluster => json_str(out, self.cluster.as_deref().unwrap_or("")),
            LogField::Endpoint => match self.endpoint {
                Some(e) => json_addr(out, e),
                None => json_str(out, ""),
            },
            // A token: no quotes, backslashes or control characters.
            LogField::Method => out.extend_from_slice(self.request.value(0)),
            LogField::Authority => out.extend_from_slice(self.request.value(1)),
            LogField::Path => out.extend_from_slice(self.request.value(2)),
            LogField::Protocol => out.extend_from_slice(self.request.value(3)),
            LogField::Status => json_uint(out, self.status),
            LogField::GrpcStatus => match self.grpc_status {
                Some(s) => json_uint(out, s),
                None => json_null(out),
            },
            LogField::BytesReceived => json_uint(out, self.bytes_received.load(Relaxed)),
            LogField::BytesSent => json_uint(out, self.bytes_sent),
            LogField::DurationMs => json_ms(out, self.duration),
            LogField::UpstreamDurationMs => match self.upstream_duration {
                Some(d) => json_ms(out, d),
                None => json_null(out),
            },
            LogField::Retries => json_uint(out, self.retries),
            // Formatted by the proxy from an address: digits, dots, colons.
            LogField::ClientIp => json_plain(out, self.client_ip.as_bytes()),
            LogField::PeerIdentity => match &self.peer_identity {
                Some(id) => json_str(out, id),
                None => json_null(out),
            },
            LogField::RequestId => out.extend_from_slice(&self.request_id),
            LogField::TraceId => match self.trace_id {
                Some(t) => {
                    out.push(b'"');
                    out.extend_from_slice(&t.to_hex());
                    out.push(b'"');
                }
                None => json_null(out),
            },
            // Usually none.
            LogField::ResponseFlags if self.flags.is_empty() => out.extend_from_slice(b"\"\""),
            LogField::ResponseFlags => json_str(out, &self.flags),
            #[allow(unreachable_patterns)]
            _ => json_null(out),
        }
    }
}

/// A request's method, authority, path (with its query) and protocol as the line's fields,
/// keys and JSON values (`,"method":"GET","authority":...`), written when the request arrives:
/// copying them then costs less than holding the request's header values (shared with its
/// connection's buffer) until the line is written.
#[derive(Debug, Default)]
pub(crate) struct RequestText {
    text: Vec<u8>,
    /// Where each value starts and ends in `text`.
    values: [(usize, usize); 4],
}

impl RequestText {
    #[cfg(test)]
    fn of(
        method: &Method,
        authority: Option<&HeaderValue>,
        path: Option<&PathAndQuery>,
        version: Version,
    ) -> RequestText {
        let mut text = RequestText::default();
        text.fill(method, authority, path, version);
        text
    }

    fn fill(
        &mut self,
        method: &Method,
        authority: Option<&HeaderValue>,
        path: Option<&PathAndQuery>,
        version: Version,
    ) {
        let text = &mut self.text;
        text.clear();
        // The common methods and the protocols with their keys, as literals.
        let start = b",\"method\":".len();
        match method_field(method) {
            Some(field) => text.extend_from_slice(field.as_bytes()),
            None => {
                text.extend_from_slice(b",\"method\":");
                // A token: no quotes, backslashes or control characters.
                json_plain(text, method.as_str().as_bytes());
            }
        }
        self.values[0] = (start, text.len());
        text.extend_from_slice(b",\"authority\":");
        let start = text.len();
        // Most are plain ASCII: one scan, no UTF-8 check.
        match authority {
            Some(a) if plain_ascii(a.as_bytes()) => json_plain(text, a.as_bytes()),
            Some(a) => json_str(text, &String::from_utf8_lossy(a.as_bytes())),
            None => text.extend_from_slice(b"\"\""),
        }
        self.values[1] = (start, text.len());
        text.extend_from_slice(b",\"path\":");
        let start = text.len();
        match path.map_or("/", PathAndQuery::as_str) {
            p if plain_ascii(p.as_bytes()) => json_plain(text, p.as_bytes()),
            p => json_str(text, p),
        }
        self.values[2] = (start, text.len());
        let start = text.len() + b",\"protocol\":".len();
        text.extend_from_slice(protocol_field(version).as_bytes());
        self.values[3] = (start, text.len());
    }

    /// The four values of a request whose head could not be parsed: all empty.
    fn fill_unparsed(&mut self) {
        self.text.clear();
        let keys = [
            ",\"method\":",
            ",\"authority\":",
            ",\"path\":",
            ",\"protocol\":",
        ];
        for (key, value) in keys.iter().zip(&mut self.values) {
            self.text.extend_from_slice(key.as_bytes());
            let start = self.text.len();
            self.text.extend_from_slice(b"\"\"");
            *value = (start, self.text.len());
        }
    }

    /// Value `i`: 0 the method, 1 the authority, 2 the path, 3 the protocol.
    fn value(&self, i: usize) -> &[u8] {
        let (start, end) = self.values.get(i).copied().unwrap_or_default();
        self.text.get(start..end).unwrap_or_default()
    }
}

// The JSON writers: a line is written once per request on a worker, so these are written by
// hand rather than through serde (a third of the cost, measured with callgrind).

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    match first_to_escape(bytes) {
        None => json_plain(out, bytes),
        Some(at) => json_escaped(out, bytes, at),
    }
}

/// A JSON string of bytes known to need no escaping. Inlined: as a call, saving and restoring
/// registers cost as much as the copy.
#[inline(always)]
fn json_plain(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is zero (and possibly of bytes above a zero one,
/// which exact scans sort out).
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Eight bytes as one number; the scans below look at eight bytes at a time.
fn eight(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]))
}

/// Nonzero when the eight bytes hold one JSON must escape: a control character, `"` or `\`.
fn escape_flags(v: u64) -> u64 {
    let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH;
    control | zero_bytes(v ^ (ONES * u64::from(b'"'))) | zero_bytes(v ^ (ONES * u64::from(b'\\')))
}

/// Where the first byte JSON must escape is (a control character, `"` or `\`), looking at
/// eight bytes at a time: most strings have none, and the scan is most of the line's cost.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let flagged = |chunk: &[u8]| escape_flags(eight(chunk)) != 0;
    let needs = |b: &u8| needs_escape(*b);
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        if flagged(chunk) {
            return bytes.get(at..)?.iter().position(needs).map(|i| at + i);
        }
        at += 8;
    }
    match bytes.len() {
        // The last eight bytes in one look, overlapping what was looked at already.
        len if len > 8 && at < len => {
            let tail = bytes.get(len - 8..)?;
            flagged(tail).then(|| tail.iter().position(needs).map(|i| len - 8 + i))?
        }
        _ => bytes.get(at..)?.iter().position(needs).map(|i| at + i),
    }
}

/// True when every byte is printable ASCII other than `"` and `\`: text that is valid UTF-8
/// and a JSON string as it is. Eight bytes at a time, as [`first_to_escape`].
fn plain_ascii(bytes: &[u8]) -> bool {
    // Besides what JSON escapes: bytes of 0x80 and above (their high bit), and DEL.
    let flagged = |chunk: &[u8]| {
        let v = eight(chunk);
        escape_flags(v) | (v & HIGH) | zero_bytes(v ^ (ONES * 0x7f)) != 0
    };
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        if flagged(chunk) {
            return false;
        }
    }
    match bytes.len() {
        // The last eight bytes in one look, overlapping what was looked at already.
        len if len >= 8 => bytes.get(len - 8..).is_some_and(|tail| !flagged(tail)),
        _ => rest.iter().all(plain),
    }
}

/// A byte JSON strings must escape: a control character, `"` or `\`.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// A JSON string whose byte `first` is the first to escape.
fn json_escaped(out: &mut Vec<u8>, bytes: &[u8], first: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 8);
    out.push(b'"');
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[clean..i]);
        clean = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

/// A number; those under 10,000 (statuses, sizes of small bodies, retries, milliseconds) from
/// a table of digit pairs, without the call to copy itoa's text.
fn json_uint(out: &mut Vec<u8>, n: impl Into<u64>) {
    let n: u64 = n.into();
    let pair = |i: u64| DIGIT_PAIRS.get(i as usize).copied().unwrap_or(*b"00");
    match n {
        0..=9 => out.push(b'0' + n as u8),
        10..=99 => out.extend_from_slice(&pair(n)),
        100..=999 => {
            out.push(b'0' + (n / 100) as u8);
            out.extend_from_slice(&pair(n % 100));
        }
        1_000..=9_999 => {
            let [a, b] = pair(n / 100);
            let [c, d] = pair(n % 100);
            out.extend_from_slice(&[a, b, c, d]);
        }
        _ => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
    }
}

/// `00` to `99`.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

fn json_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// Milliseconds with microsecond precision: `1.5`, `0.345`, `12.0`.
fn json_ms(out: &mut Vec<u8>, d: Duration) {
    // Rounded to the microsecond; a subsecond part that rounds up to 1,000,000 carries.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1_000));
    json_uint(out, micros / 1_000);
    // `.` and the thousandths without trailing zeros (at least one digit), from a table: the
    // divisions per digit were most of the field's cost.
    let (digits, len) = FRACTIONS[(micros % 1_000) as usize];
    let at = out.len();
    out.extend_from_slice(&digits);
    out.truncate(at + usize::from(len));
}

/// `.` and the digits of 0 to 999 thousandths, trailing zeros dropped: `.0`, `.5`, `.345`.
const FRACTIONS: [([u8; 4], u8); 1_000] = {
    let mut table = [([0u8; 4], 0u8); 1_000];
    let mut n = 0;
    while n < 1_000 {
        let digits = [(n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8];
        let len = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        table[n] = (
            [b'.', b'0' + digits[0], b'0' + digits[1], b'0' + digits[2]],
            1 + len,
        );
        n += 1;
    }
    table
};

/// The listener's, route's and cluster's names as the line's fields (`,"listener":"web",
/// "route":"",...`), from a small per-thread cache of the fragments last written: a worker
/// writes the same few over and over.
fn json_names(
    out: &mut Vec<u8>,
    listener: &Arc<str>,
    route: Option<&Arc<str>>,
    cluster: Option<&Arc<str>>,
) {
    /// Fragments kept per thread.
    const RECENT_NAMES: usize = 8;
    thread_local! {
        static RECENT: std::cell::RefCell<([NamesText; RECENT_NAMES], usize)> =
            std::cell::RefCell::new(Default::default());
    }
    let same = |a: Option<&Arc<str>>, b: Option<&Arc<str>>| match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    RECENT.with_borrow_mut(|(recent, next)| {
        // Held names cannot have their addresses reused: the addresses identify them.
        let hit = recent.iter().position(|(names, _)| {
            names.as_ref().is_some_and(|(l, r, c)| {
                Arc::ptr_eq(l, listener) && same(r.as_ref(), route) && same(c.as_ref(), cluster)
            })
        });
        let at = match hit {
            Some(at) => at,
            None => {
                let at = *next % RECENT_NAMES;
                *next = next.wrapping_add(1);
                let Some((names, text)) = recent.get_mut(at) else {
                    return;
                };
                text.clear();
                text.extend_from_slice(b",\"listener\":");
                json_str(text, listener);
                for (key, name) in [(&b",\"route\":"[..], route), (b",\"cluster\":", cluster)] {
                    text.extend_from_slice(key);
                    json_str(text, name.map_or("", |n| n));
                }
                *names = Some((Arc::clone(listener), route.cloned(), cluster.cloned()));
                at
            }
        };
        if let Some((_, text)) = recent.get(at) {
            out.extend_from_slice(text);
        }
    });
}

/// Names and the fragment [`json_names`] writes of them.
type NamesText = (
    Option<(Arc<str>, Option<Arc<str>>, Option<Arc<str>>)>,
    Vec<u8>,
);

/// An endpoint as a JSON string, `10.0.0.1:80` or `[::1]:80`, from a small per-thread cache:
/// a worker logs the same few endpoints over and over, and formatting one costs more than the
/// rest of the field.
fn json_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    thread_local! {
        static RECENT: std::cell::RefCell<[(Option<SocketAddr>, Vec<u8>); 8]> =
            std::cell::RefCell::new(Default::default());
    }
    let slot = usize::from(addr.port())
        ^ match addr.ip() {
            std::net::IpAddr::V4(v4) => usize::from(v4.octets()[3]),
            std::net::IpAddr::V6(v6) => usize::from(v6.octets()[15]),
        };
    RECENT.with_borrow_mut(|recent| {
        let Some((known, text)) = recent.get_mut(slot % 8) else {
            return;
        };
        if *known != Some(addr) {
            text.clear();
            super::addr_text::write_socket_addr(text, addr);
            *known = Some(addr);
        }
        // Digits, dots, colons and brackets: nothing to escape.
        json_plain(out, text);
    });
}

/// `,"method":"GET"` and the like, for the common methods.
fn method_field(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => ",\"method\":\"GET\"",
        Method::POST => ",\"method\":\"POST\"",
        Method::PUT => ",\"method\":\"PUT\"",
        Method::DELETE => ",\"method\":\"DELETE\"",
        Method::HEAD => ",\"method\":\"HEAD\"",
        Method::OPTIONS => ",\"method\":\"OPTIONS\"",
        Method::PATCH => ",\"method\":\"PATCH\"",
        _ => return None,
    })
}

/// `,"protocol":"HTTP/1.1"` and the like.
fn protocol_field(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => ",\"protocol\":\"HTTP/0.9\"",
        Version::HTTP_10 => ",\"protocol\":\"HTTP/1.0\"",
        Version::HTTP_2 => ",\"protocol\":\"HTTP/2.0\"",
        Version::HTTP_3 => ",\"protocol\":\"HTTP/3.0\"",
        _ => ",\"protocol\":\"HTTP/1.1\"",
    }
}

/// Appends `2026-11-22T12:30:05.123Z`, the part before the milliseconds made once a second
/// per thread.
fn rfc3339_cached(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, Vec<u8>)> = const {
            std::cell::RefCell::new((u64::MAX, Vec::new()))
        };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != d.as_secs() {
            text.clear();
            rfc3339(text, UNIX_EPOCH + Duration::from_secs(d.as_secs()));
            text.truncate(text.len().saturating_sub(4)); // `000Z`
            *secs = d.as_secs();
        }
        out.extend_from_slice(text);
    });
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// Appends `2026-11-22T12:30:05.123Z`.
fn rfc3339(out: &mut Vec<u8>, t: SystemTime) {
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
    let digits = |out: &mut Vec<u8>, n: u64, width: u32| {
        for p in (0..width).rev() {
            out.push(b'0' + (n / 10u64.pow(p) % 10) as u8);
        }
    };
    digits(out, year.clamp(0, 9999) as u64, 4);
    out.push(b'-');
    digits(out, month as u64, 2);
    out.push(b'-');
    digits(out, day as u64, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem % 3600 / 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, u64::from(d.subsec_millis()), 3);
    out.push(b'Z');
}

/// The line writers against `serde_json` and `std`'s formatting, for the fuzz target
/// `access_log_line`: whatever a request holds, its line is one line of JSON whose keys are the
/// configured fields in their order and whose values say what the entry holds. Not used when
/// serving.
#[doc(hidden)]
pub mod differential {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, Instant, UNIX_EPOCH};

    use http::uri::PathAndQuery;
    use http::{HeaderValue, Method, Version};
    use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
    use serde_json::Value;
    use strait_config::LogField;

    use super::{layout, LogEntry, RequestText, TraceId};

    /// What one request's entry holds, as a fuzzer makes it: the request's parts as bytes
    /// (those the `http` crate refuses are refused by the servers too, and are skipped).
    #[derive(Debug)]
    pub struct Sample<'a> {
        pub method: &'a [u8],
        pub authority: Option<&'a [u8]>,
        pub path: Option<&'a [u8]>,
        /// 0 to 4: HTTP/0.9, 1.0, 1.1, 2, 3.
        pub version: u8,
        pub listener: &'a str,
        pub route: Option<&'a str>,
        pub cluster: Option<&'a str>,
        pub endpoint: Option<SocketAddr>,
        pub client_ip: IpAddr,
        pub status: u16,
        pub grpc_status: Option<u16>,
        pub bytes_received: u64,
        pub bytes_sent: u64,
        pub duration: Duration,
        pub upstream_duration: Option<Duration>,
        pub retries: u32,
        pub peer_identity: Option<&'a str>,
        pub request_id: Option<&'a [u8]>,
        pub trace_id: Option<[u8; 16]>,
        pub flags: &'a str,
        /// When the request arrived, after the Unix epoch (before the year 10000).
        pub arrived: Duration,
        /// The configured fields: each byte picks one of [`LogField::ALL`].
        pub fields: &'a [u8],
    }

    /// Writes `sample`'s line with the default fields and with its own, and panics where one
    /// is not a line of JSON saying what the sample holds.
    pub fn check(sample: &Sample<'_>) {
        let Ok(method) = Method::from_bytes(sample.method) else {
            return;
        };
        let authority = match sample.authority.map(HeaderValue::from_bytes) {
            Some(Err(_)) => return,
            a => a.and_then(Result::ok),
        };
        let path = match sample.path.map(PathAndQuery::try_from) {
            Some(Err(_)) => return,
            p => p.and_then(Result::ok),
        };
        let request_id = match sample.request_id.map(HeaderValue::from_bytes) {
            Some(Err(_)) => return,
            id => id.and_then(Result::ok),
        };
        let version = [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ][usize::from(sample.version % 5)];
        let Ok(client_ip) = HeaderValue::from_str(&sample.client_ip.to_string()) else {
            return;
        };
        let mut request = RequestText::default();
        request.fill(&method, authority.as_ref(), path.as_ref(), version);
        let mut entry = LogEntry {
            arrived: UNIX_EPOCH + sample.arrived,
            started: Instant::now(),
            listener: Arc::from(sample.listener),
            route: sample.route.map(Arc::from),
            cluster: sample.cluster.map(Arc::from),
            endpoint: sample.endpoint,
            request,
            status: sample.status,
            grpc_status: sample.grpc_status,
            bytes_received: Arc::new(AtomicU64::new(sample.bytes_received)),
            bytes_sent: sample.bytes_sent,
            duration: sample.duration,
            upstream_duration: sample.upstream_duration,
            retries: sample.retries,
            peer_identity: sample.peer_identity.map(str::to_owned),
            client_ip,
            request_id: Vec::new(),
            trace_id: sample.trace_id.map(TraceId),
            flags: sample.flags.to_owned(),
        };
        entry.set_request_id(request_id.as_ref());

        let all_fields: Vec<LogField> = LogField::ALL.to_vec();
        let mut line = Vec::new();
        entry.write_json_all(&mut line);
        agree(sample, &method, path.as_ref(), version, &all_fields, &line);
        let chosen: Vec<LogField> = sample
            .fields
            .iter()
            .map(|&i| LogField::ALL[usize::from(i) % LogField::ALL.len()])
            .collect();
        let mut line = Vec::new();
        entry.write_json(&layout(&chosen), &mut line);
        agree(sample, &method, path.as_ref(), version, &chosen, &line);
    }

    /// Panics unless `line` is one line of JSON, an object of `fields` in their order (a field
    /// configured twice is written twice), each with the value the sample holds.
    fn agree(
        sample: &Sample<'_>,
        method: &Method,
        path: Option<&PathAndQuery>,
        version: Version,
        fields: &[LogField],
        line: &[u8],
    ) {
        let text = String::from_utf8_lossy(line);
        assert!(
            !line.iter().any(|&b| b < 0x20),
            "a control character in the line: {text}"
        );
        let mut reader = serde_json::Deserializer::from_slice(line);
        let Ordered(pairs) = Ordered::deserialize(&mut reader)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {text}"));
        if let Err(e) = reader.end() {
            panic!("more after the object ({e}): {text}");
        }
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        let wanted: Vec<&str> = fields.iter().map(|f| f.key()).collect();
        assert_eq!(keys, wanted, "keys of {text}");
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // Rounded to the microsecond, as many as a `u64` holds.
        let ms = |d: Duration| {
            let micros = u64::try_from((d.as_nanos() + 500) / 1_000).unwrap_or(u64::MAX);
            Value::from(
                format!("{}.{:03}", micros / 1_000, micros % 1_000)
                    .parse::<f64>()
                    .unwrap_or(f64::NAN),
            )
        };
        for ((key, got), field) in pairs.iter().zip(fields) {
            let want = match field {
                LogField::Time => Value::from(utc(sample.arrived)),
                LogField::Listener => Value::from(sample.listener),
                LogField::Route => Value::from(sample.route.unwrap_or("")),
                LogField::Cluster => Value::from(sample.cluster.unwrap_or("")),
                LogField::Endpoint => Value::from(
                    sample
                        .endpoint
                        .map(|e| SocketAddr::new(e.ip(), e.port()).to_string())
                        .unwrap_or_default(),
                ),
                LogField::Method => Value::from(method.as_str()),
                LogField::Authority => Value::from(sample.authority.map(lossy).unwrap_or_default()),
                LogField::Path => Value::from(path.map_or("/", PathAndQuery::as_str)),
                LogField::Protocol => Value::from(format!("{version:?}")),
                LogField::Status => Value::from(sample.status),
                LogField::GrpcStatus => sample.grpc_status.map_or(Value::Null, Value::from),
                LogField::BytesReceived => Value::from(sample.bytes_received),
                LogField::BytesSent => Value::from(sample.bytes_sent),
                LogField::DurationMs => ms(sample.duration),
                LogField::UpstreamDurationMs => sample.upstream_duration.map_or(Value::Null, ms),
                LogField::Retries => Value::from(sample.retries),
                LogField::ClientIp => Value::from(sample.client_ip.to_string()),
                LogField::PeerIdentity => sample.peer_identity.map_or(Value::Null, Value::from),
                LogField::RequestId => {
                    Value::from(sample.request_id.map(lossy).unwrap_or_default())
                }
                LogField::TraceId => sample.trace_id.map_or(Value::Null, |t| {
                    Value::from(t.iter().map(|b| format!("{b:02x}")).collect::<String>())
                }),
                LogField::ResponseFlags => Value::from(sample.flags),
                _ => continue,
            };
            assert_eq!(*got, want, "{key} in {text}");
        }
    }

    /// `2026-11-22T12:30:05.123Z`, its date and time read from `httpdate`'s
    /// `Sun, 22 Nov 2026 12:30:05 GMT`.
    fn utc(since_epoch: Duration) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let second = UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
        let http = httpdate::fmt_http_date(second);
        let parts: Vec<&str> = http.split([' ', ',']).filter(|p| !p.is_empty()).collect();
        let [_, day, month, year, time, _] = parts[..] else {
            panic!("httpdate wrote {http}");
        };
        let month = MONTHS.iter().position(|m| *m == month).unwrap_or(99) + 1;
        format!(
            "{year}-{month:02}-{day}T{time}.{:03}Z",
            since_epoch.subsec_millis()
        )
    }

    /// A JSON object's members in the order written.
    struct Ordered(Vec<(String, Value)>);

    impl<'de> Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
            struct Members;
            impl<'de> Visitor<'de> for Members {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                    let mut pairs = Vec::new();
                    while let Some(pair) = map.next_entry()? {
                        pairs.push(pair);
                    }
                    Ok(Ordered(pairs))
                }
            }
            d.deserialize_map(Members)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_the_fields_in_order() {
        let entry = LogEntry {
            arrived: UNIX_EPOCH,
            started: Instant::now(),
            listener: Arc::from("web"),
            route: None,
            cluster: Some(Arc::from("api")),
            endpoint: Some("10.0.0.1:80".parse().unwrap()),
            // A path may carry a quote (the http crate takes it), which the line escapes.
            request: RequestText::of(
                &Method::POST,
                Some(&HeaderValue::from_static("a.example")),
                Some(&PathAndQuery::try_from("/q\"x?y=1").unwrap()),
                Version::HTTP_2,
            ),
            status: 503,
            grpc_status: None,
            bytes_received: Arc::new(AtomicU64::new(7)),
            bytes_sent: 9,
            duration: Duration::from_micros(1_500),
            upstream_duration: None,
            retries: 1,
            peer_identity: None,
            client_ip: HeaderValue::from_static("::1"),
            request_id: b"\"\"".to_vec(),
            trace_id: Some(TraceId([0xab; 16])),
            flags: "connect_failed".to_owned(),
        };
        let mut out = Vec::new();
        entry.write_json(&layout(&LogField::ALL), &mut out);
        let mut all = Vec::new();
        entry.write_json_all(&mut all);
        assert_eq!(
            String::from_utf8_lossy(&all),
            String::from_utf8_lossy(&out),
            "the default line is the line of every field in order"
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), LogField::ALL.len());
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["route"], "");
        assert_eq!(v["endpoint"], "10.0.0.1:80");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["authority"], "a.example");
        assert_eq!(v["path"], "/q\"x?y=1");
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
        // Every key's prefix fits the room it is copied with.
        for field in LogField::ALL {
            assert!(field.key().len() + 4 <= PREFIX_MAX, "{}", field.key());
        }
    }

    #[test]
    fn request_values_are_the_methods_and_protocols_as_named() {
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
            Method::from_bytes(b"PURGE").unwrap(),
        ];
        let versions = [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ];
        for method in &methods {
            for version in versions {
                let text = RequestText::of(method, None, None, version);
                let line = format!("{{{}}}", String::from_utf8_lossy(&text.text[1..]));
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["method"], method.as_str());
                assert_eq!(v["protocol"], format!("{version:?}"));
                assert_eq!(v["authority"], "");
                assert_eq!(v["path"], "/");
                let value = |i| String::from_utf8(text.value(i).to_vec()).unwrap();
                assert_eq!(value(0), format!("\"{method}\""));
                assert_eq!(value(3), format!("\"{version:?}\""));
            }
        }
    }

    #[test]
    fn the_json_writers_agree_with_serde() {
        let strings = [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "ctl\n\r\t\u{1}\u{1f}",
            "ünï€😀",
            "\u{7f}",
            "a long plain string of more than eight bytes",
            "exactly8",
            "seven\"s",
            "eight\"s_",
            "0123456789abcdef\\",
            "ü\u{1}ü\u{1}üüüüüüüü\"",
        ];
        for s in strings {
            let mut out = Vec::new();
            json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
        let ms = |d: Duration| {
            let mut out = Vec::new();
            json_ms(&mut out, d);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(ms(Duration::ZERO), "0.0");
        assert_eq!(ms(Duration::from_micros(1_500)), "1.5");
        assert_eq!(ms(Duration::from_micros(345)), "0.345");
        assert_eq!(ms(Duration::from_micros(12_040)), "12.04");
        assert_eq!(ms(Duration::from_secs(12)), "12000.0");
        assert_eq!(ms(Duration::from_nanos(1_499)), "0.001");
        assert_eq!(ms(Duration::from_nanos(1_500)), "0.002");
        let addr = |text: &str| {
            let mut out = Vec::new();
            json_addr(&mut out, text.parse().unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(addr("10.0.0.1:80"), "\"10.0.0.1:80\"");
        assert_eq!(addr("255.0.9.10:65535"), "\"255.0.9.10:65535\"");
        assert_eq!(addr("[::1]:443"), "\"[::1]:443\"");
        // Two endpoints that share a cache slot, in turn.
        for _ in 0..3 {
            assert_eq!(addr("10.0.0.1:80"), "\"10.0.0.1:80\"");
            assert_eq!(addr("10.0.0.9:88"), "\"10.0.0.9:88\"");
        }
        // What a method, written without escaping, can hold: the http crate refuses quotes,
        // backslashes and control characters in one (a path may carry a quote).
        assert!(PathAndQuery::try_from("/a\"b").is_ok());
        for bad in ["GE\"T", "GE\\T", "GE\u{1}T"] {
            assert!(Method::from_bytes(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_say_what_the_entry_holds_whatever_the_request_sent() {
        use differential::{check, Sample};
        let base = Sample {
            method: b"GET",
            authority: Some(b"a.example"),
            path: Some(b"/p?q=1"),
            version: 2,
            listener: "web",
            route: None,
            cluster: Some("api"),
            endpoint: Some("[fe80::1]:8080".parse().unwrap()),
            client_ip: "10.1.2.3".parse().unwrap(),
            status: 200,
            grpc_status: None,
            bytes_received: 0,
            bytes_sent: u64::MAX,
            duration: Duration::new(u64::MAX, 999_999_999),
            upstream_duration: Some(Duration::from_nanos(1_499_500)),
            retries: 0,
            peer_identity: Some("spiffe://td/ns/a"),
            request_id: None,
            trace_id: Some([7; 16]),
            flags: "",
            arrived: Duration::from_millis(253_402_300_799_999),
            fields: &[0, 20, 6, 6, 18, 2],
        };
        check(&base);
        // What a client may send in a field that is not ASCII: obs-text, UTF-8, a tab. Its
        // request id was written as `""` before.
        for id in [&b"r\xffid"[..], "ünï".as_bytes(), b"a\tb", b"\"q\\"] {
            check(&Sample {
                request_id: Some(id),
                authority: Some(id),
                method: b"PURGE",
                version: 4,
                route: Some("r\"1\n"),
                flags: "upstream_reset",
                ..base
            });
        }
    }

    #[test]
    fn plain_ascii_is_printable_ascii_without_quotes_or_backslashes() {
        let slow = |b: &[u8]| {
            b.iter()
                .all(|c| (0x20..0x7f).contains(c) && !b"\"\\".contains(c))
        };
        let mut cases: Vec<Vec<u8>> =
            vec![b"".to_vec(), b"/".to_vec(), b"127.0.0.1:19000".to_vec()];
        for len in 0..20 {
            for at in 0..len {
                for bad in [0u8, 0x1f, b'"', b'\\', 0x7f, 0x80, 0xc3, 0xff, b'\t'] {
                    let mut v = vec![b'a'; len];
                    v[at] = bad;
                    cases.push(v);
                }
            }
            cases.push(vec![b'~'; len]);
            cases.push(vec![b' '; len]);
        }
        for case in &cases {
            assert_eq!(plain_ascii(case), slow(case), "{case:?}");
        }
    }

    #[test]
    fn the_eight_byte_scan_finds_the_first_byte_to_escape() {
        let scalar = |b: &[u8]| b.iter().position(|&c| needs_escape(c));
        // Every special byte at every position of strings up to 24 bytes, over plain ASCII,
        // high bytes, and bytes just above the control range (where a borrow could hide one).
        for fill in [b'a', 0xc3, 0x20, 0x21, 0x7f, 0xff] {
            for len in 0..24 {
                let base = vec![fill; len];
                assert_eq!(first_to_escape(&base), scalar(&base), "{fill} x {len}");
                for at in 0..len {
                    for special in [0u8, 0x1f, b'\n', b'"', b'\\'] {
                        let mut b = base.clone();
                        b[at] = special;
                        assert_eq!(
                            first_to_escape(&b),
                            Some(at),
                            "{fill} x {len}, {special} at {at}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rfc3339_dates() {
        let text = |t| {
            let mut out = Vec::new();
            rfc3339(&mut out, t);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_350_605_123);
        assert_eq!(text(t), "2026-11-22T12:30:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(text(leap), "2000-02-29T00:00:00.000Z");
        for t in [t, leap, t + Duration::from_millis(1_001), t, UNIX_EPOCH] {
            let mut cached = Vec::new();
            rfc3339_cached(&mut cached, t);
            assert_eq!(String::from_utf8(cached).unwrap(), text(t));
        }
    }

    #[test]
    fn lines_reach_the_destination_and_a_full_buffer_drops_and_counts() {
        let dir = std::env::temp_dir().join(format!("strait-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let sinks = LogSinks::default();
        let config = AccessLog {
            path: path.to_string_lossy().into_owned(),
            fields: vec![LogField::Status],
            sample_percent: 100.0,
        };
        let logger = sinks.logger(&config).unwrap();
        let listener: Arc<str> = Arc::from("web");
        let ip = HeaderValue::from_static("127.0.0.1");
        let entry = || {
            let mut e = logger
                .begin(
                    Instant::now(),
                    &listener,
                    &Method::GET,
                    None,
                    None,
                    Version::HTTP_11,
                    &ip,
                    None,
                )
                .unwrap();
            e.status = 200;
            e
        };
        logger.finish(entry());
        // A finished entry is reused with its byte counter reset; a counter a body still
        // holds is not shared with the next request.
        let first = entry();
        first.bytes_received.store(5, Relaxed);
        let held = Arc::clone(&first.bytes_received);
        logger.finish(first);
        let second = entry();
        assert_eq!(second.bytes_received.load(Relaxed), 0);
        assert!(!Arc::ptr_eq(&second.bytes_received, &held));
        held.store(9, Relaxed);
        drop(held);
        assert_eq!(second.bytes_received.load(Relaxed), 0);
        let counter = Arc::as_ptr(&second.bytes_received);
        logger.finish(second);
        let third = entry();
        assert_eq!(Arc::as_ptr(&third.bytes_received), counter, "reused");
        logger.finish(third);
        sinks.flush();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"status\":200}\n".repeat(4)
        );
        assert_eq!(sinks.dropped(), 0);

        // Fill the pending buffer past its bound. The writer ticks every 100 ms, and on a busy
        // machine a tick can take the buffer between the fill and the entry: fill again then.
        for _ in 0..50 {
            logger.sink.shared.lock_pending().resize(MAX_PENDING, b' ');
            logger.finish(entry());
            if sinks.dropped() > 0 {
                break;
            }
        }
        assert_eq!(sinks.dropped(), 1);
        logger.sink.shared.lock_pending().clear();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
