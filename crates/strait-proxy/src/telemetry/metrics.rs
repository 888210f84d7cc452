//! Prometheus metrics. Requests never take a lock or hash a label set: each (listener, route,
//! cluster) gets its atomic counters when a snapshot is compiled, and requests bump those.
//! The [`MetricsStore`] keeps every handle by name, so counters survive reloads, and is read by
//! a prometheus-client [`Collector`] on each scrape (on the control thread).

use crate::authz::Decisions;
use crate::jwt::{JwtCounters, Refusal};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::spans::TracingCounters;
use crate::resilience::health_check::CheckResult;
use crate::resilience::outlier::Reason;

/// Upper bounds of the request duration histogram, in seconds: sub-millisecond to tens of
/// seconds.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status codes counted under their own label; any other is counted as `other` in its class,
/// so a client or upstream inventing codes cannot grow the label set.
const CODES: [u16; 24] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 409,
    413, 429, 500, 502, 503,
];
/// 504 and the five `other` slots (1xx..5xx) follow `CODES`.
const SLOT_504: usize = CODES.len();
const SLOT_OTHER: usize = CODES.len() + 1;
const SLOTS: usize = SLOT_OTHER + 5;
/// gRPC status codes 0..=16.
const GRPC_CODES: usize = 17;

fn code_slot(code: u16) -> usize {
    if code == 504 {
        return SLOT_504;
    }
    match CODES.iter().position(|&c| c == code) {
        Some(i) => i,
        None => SLOT_OTHER + usize::from(code / 100).clamp(1, 5) - 1,
    }
}

fn class_index(code: u16) -> usize {
    usize::from(code / 100).clamp(1, 5) - 1
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

thread_local! {
    /// This thread's shard of the per-request counters: a worker's index plus one, or 0 (the
    /// shard every other thread shares).
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread worker `index` of its proxy: the per-request counters it bumps are
/// its own shard, which only it writes. Each worker thread of one [`MetricsStore`] must have
/// its own index.
pub fn enter_worker(index: usize) {
    SHARD.set(index.saturating_add(1));
}

/// Makes the calling thread one that shares shard 0 again: for a thread that was a worker
/// and goes on to do other things (the control thread of a proxy of one worker, after it).
pub fn leave_worker() {
    SHARD.set(0);
}

/// Adds `n` to a counter: with a plain load and store when this thread is its only writer,
/// else with an atomic add. An atomic add is a locked instruction (~20 ns on the bench
/// machine), and a request bumps five of these counters.
fn add(counter: &AtomicU64, n: u64, sole: bool) {
    if sole {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        counter.fetch_add(n, Relaxed);
    }
}

/// The counters every request bumps, one shard of them.
#[derive(Debug, Default)]
struct RouteShard {
    codes: [AtomicU64; SLOTS],
    /// gRPC answers by grpc-status (their HTTP status is 200).
    grpc: [AtomicU64; GRPC_CODES],
    durations: [Histogram; 5],
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

/// The counters of one (direction, listener, route, cluster).
///
/// The ones every request bumps are sharded: shard 0 is shared by any thread and bumped with
/// atomic adds; shard `i + 1` belongs to worker `i` ([`enter_worker`]), which bumps it with
/// plain stores. Two workers answering on one route then never write the same cache line, and
/// no request pays a locked instruction for them. A scrape sums the shards.
///
/// A shard (about 1 KiB: codes, gRPC codes, five histograms) is allocated when its thread first
/// counts on it. Most of a large routing table's routes, and the shared shard of a proxy whose
/// requests all run on workers, are never counted on, and then cost a pointer each: 500 routes
/// with one worker held 2.1 MB of shards before any request (two stats a route: its cluster's
/// and its own answers'), and that grew with each worker.
#[derive(Debug)]
pub struct RouteStats {
    shards: Box<[OnceLock<Box<RouteShard>>]>,
    fault_delays: AtomicU64,
    fault_aborts: AtomicU64,
    rate_limited: AtomicU64,
}

impl Default for RouteStats {
    /// Counters with only the shared shard (for tests and stores made without workers).
    fn default() -> Self {
        RouteStats::with_workers(0)
    }
}

impl RouteStats {
    /// Counters with a shard for each of `workers` workers besides the shared one.
    fn with_workers(workers: usize) -> Self {
        RouteStats {
            shards: (0..=workers).map(|_| OnceLock::new()).collect(),
            fault_delays: AtomicU64::default(),
            fault_aborts: AtomicU64::default(),
            rate_limited: AtomicU64::default(),
        }
    }

    /// This thread's shard, and whether the thread is its only writer.
    fn shard(&self) -> Option<(&RouteShard, bool)> {
        let own = SHARD.get();
        let (slot, sole) = match self.shards.get(own) {
            Some(slot) if own > 0 => (slot, true),
            _ => (self.shards.first()?, false),
        };
        Some((slot.get_or_init(Box::default), sole))
    }

    /// The per-request counters summed over the shards, as one shard a scrape reads.
    fn totals(&self) -> RouteShard {
        let t = RouteShard::default();
        let sum = |into: &AtomicU64, from: &AtomicU64| add(into, from.load(Relaxed), true);
        for shard in self.shards.iter().filter_map(OnceLock::get) {
            for (into, from) in t.codes.iter().zip(&shard.codes) {
                sum(into, from);
            }
            for (into, from) in t.grpc.iter().zip(&shard.grpc) {
                sum(into, from);
            }
            for (into, from) in t.durations.iter().zip(&shard.durations) {
                for (b, n) in into.buckets.iter().zip(&from.buckets) {
                    sum(b, n);
                }
                sum(&into.count, &from.count);
                sum(&into.sum_nanos, &from.sum_nanos);
            }
            sum(&t.request_bytes, &shard.request_bytes);
            sum(&t.response_bytes, &shard.response_bytes);
        }
        t
    }

    /// Counts an injected delay.
    pub fn fault_delayed(&self) {
        self.fault_delays.fetch_add(1, Relaxed);
    }

    /// Counts a request refused by the route's rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// Counts an injected failure.
    pub fn fault_aborted(&self) {
        self.fault_aborts.fetch_add(1, Relaxed);
    }

    /// Counts an answer by status, or by grpc-status for a gRPC answer.
    pub fn count(&self, status: u16, grpc_status: Option<u16>) {
        let Some((shard, sole)) = self.shard() else {
            return;
        };
        let counter = match grpc_status.map(usize::from).filter(|&g| g < GRPC_CODES) {
            Some(g) => shard.grpc.get(g),
            None => shard.codes.get(code_slot(status)),
        };
        if let Some(counter) = counter {
            add(counter, 1, sole);
        }
    }

    /// Records the time from request head to response head.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        if let Some((shard, sole)) = self.shard() {
            if let Some(h) = shard.durations.get(class_index(status)) {
                h.observe(elapsed, sole);
            }
        }
    }

    /// Counts request body bytes sent upstream.
    pub fn add_request_bytes(&self, n: usize) {
        if let Some((shard, sole)) = self.shard() {
            add(&shard.request_bytes, n as u64, sole);
        }
    }

    /// Counts response body bytes sent to the client.
    pub fn add_response_bytes(&self, n: usize) {
        if let Some((shard, sole)) = self.shard() {
            add(&shard.response_bytes, n as u64, sole);
        }
    }
}

/// A fixed-bucket histogram of atomics.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records `d`; `sole`: this thread is the histogram's only writer (see [`add`]).
    fn observe(&self, d: Duration, sole: bool) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|&b| secs <= b) {
            if let Some(bucket) = self.buckets.get(i) {
                add(bucket, 1, sole);
            }
        }
        add(&self.count, 1, sole);
        add(&self.sum_nanos, d.as_nanos() as u64, sole);
    }

    /// Per-bucket counts (the encoder makes them cumulative), the last one for observations
    /// above every bound.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut out: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, n)| (le, n.load(Relaxed)))
            .collect();
        let in_buckets: u64 = out.iter().map(|&(_, n)| n).sum();
        // Read separately from the buckets, the count can lag them by a racing observation.
        let count = self.count.load(Relaxed).max(in_buckets);
        out.push((f64::INFINITY, count - in_buckets));
        (self.sum_nanos.load(Relaxed) as f64 / 1e9, count, out)
    }
}

/// Most distinct peer identities counted apart per listener; the rest count as `other`, so a
/// mesh of any size cannot grow the label set without bound.
pub const MAX_PEERS: usize = 1024;

/// Requests by verified peer identity on one listener.
#[derive(Debug, Default)]
pub struct PeerRequests {
    by_peer: std::sync::RwLock<std::collections::HashMap<Box<str>, AtomicU64>>,
    other: AtomicU64,
}

impl PeerRequests {
    /// Counts a request from `peer`. A read lock and an atomic add; the write lock only the
    /// first time an identity is seen (at most [`MAX_PEERS`] times).
    pub fn count(&self, peer: &str) {
        if let Some(n) = self
            .by_peer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
        {
            n.fetch_add(1, Relaxed);
            return;
        }
        let mut map = self.by_peer.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PEERS && !map.contains_key(peer) {
            self.other.fetch_add(1, Relaxed);
            return;
        }
        map.entry(peer.into()).or_default().fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let map = self.by_peer.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.load(Relaxed)))
            .collect();
        let other = self.other.load(Relaxed);
        if other > 0 {
            out.push(("other".to_owned(), other));
        }
        out
    }
}

/// Client connections of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    opened: AtomicU64,
    closed: AtomicU64,
    overflowed: AtomicU64,
    rate_limited: AtomicU64,
    /// Connections closed at accept because their client had `max_connections_per_client`.
    client_overflowed: AtomicU64,
    /// Connections open now by client address, when the listener limits them (kept across
    /// reloads with the rest).
    per_client: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    released: AtomicU64,
    accept_errors: AtomicU64,
    head_timeouts: AtomicU64,
    http2_floods: AtomicU64,
    http2_reset_floods: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    tls_failures: [AtomicU64; 4],
    /// Malformed request heads, by the status they were answered with (see [`MALFORMED`]).
    malformed: [AtomicU64; 4],
}

/// The statuses a malformed HTTP/1 request head is answered with, in the order
/// `ListenerStats::malformed` counts them.
const MALFORMED: [&str; 4] = ["400", "414", "431", "501"];

/// Why a TLS handshake with a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client broke the protocol, offered nothing acceptable, or its certificate was
    /// refused.
    Handshake = 0,
    /// The handshake did not finish within `handshake_timeout`.
    Timeout = 1,
    /// The client closed the connection during the handshake (a TCP health check that
    /// connects and closes, or a client that gave up): not a failure of the protocol.
    Closed = 2,
    /// The client sent a plain HTTP request (answered 400, as nginx does).
    PlainHttp = 3,
}

impl ListenerStats {
    /// Connections open now, across all workers.
    pub fn active(&self) -> u64 {
        self.opened
            .load(Relaxed)
            .saturating_sub(self.closed.load(Relaxed))
    }

    /// Counts an idle HTTP/1 connection that gave back its buffers (`http::server1`).
    pub fn released(&self) {
        self.released.fetch_add(1, Relaxed);
    }

    /// Counts a failed accept (out of file descriptors or memory).
    pub fn accept_failed(&self) -> u64 {
        self.accept_errors.fetch_add(1, Relaxed)
    }

    /// Counts an HTTP/1 connection closed because its client's request head did not come whole
    /// within the idle timeout (a silent or slow client: nginx logs a 408).
    pub fn head_timed_out(&self) {
        self.head_timeouts.fetch_add(1, Relaxed);
    }

    /// Counts an HTTP/2 connection closed because its client ran out of frames that open no
    /// request and carry no data (`http::flood`).
    pub fn http2_flooded(&self) {
        self.http2_floods.fetch_add(1, Relaxed);
    }

    /// HTTP/2 connections closed as floods so far.
    pub fn http2_floods(&self) -> u64 {
        self.http2_floods.load(Relaxed)
    }

    /// Counts an HTTP/2 connection closed because its client reset most of its streams before
    /// they were answered (`http::server2`'s `Cancels`).
    pub fn http2_reset_flooded(&self) {
        self.http2_reset_floods.fetch_add(1, Relaxed);
    }

    /// Counts a connection refused because the listener was full.
    pub fn overflowed(&self) {
        self.overflowed.fetch_add(1, Relaxed);
    }

    /// Counts a completed TLS handshake, full or resumed.
    pub fn tls_handshake(&self, resumed: bool) {
        let n = if resumed {
            &self.tls_resumed
        } else {
            &self.tls_full
        };
        n.fetch_add(1, Relaxed);
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failed(&self, why: TlsFailure) {
        self.tls_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a malformed HTTP/1 request head, answered with `status` (400, 414, 431 or 501; any
    /// other 4xx or 5xx counts as 400) before it reached a route.
    pub fn malformed_request(&self, status: http::StatusCode) {
        let at = match status.as_u16() {
            414 => 1,
            431 => 2,
            501 => 3,
            _ => 0,
        };
        self.malformed[at].fetch_add(1, Relaxed);
    }

    /// Counts a connection closed at accept because the listener's connection rate was spent.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// Counts a connection opened; the guard counts it closed.
    pub fn opened(self: &Arc<Self>) -> ConnectionCount {
        self.opened.fetch_add(1, Relaxed);
        ConnectionCount(Arc::clone(self))
    }

    /// Takes one of `client`'s `max` connections, across all workers: the guard gives it back.
    /// `None`, counted, when the client has them all open already (nginx's `limit_conn`).
    pub fn client_opened(self: &Arc<Self>, client: IpAddr, max: u32) -> Option<ClientCount> {
        let mut open = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(client).or_insert(0);
        if *n >= max {
            drop(open);
            self.client_overflowed.fetch_add(1, Relaxed);
            return None;
        }
        *n += 1;
        Some(ClientCount(Arc::clone(self), client))
    }

    /// Clients with a connection open now (where the listener limits them per client).
    pub fn clients(&self) -> usize {
        self.per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Counts a client connection closed when dropped.
#[derive(Debug)]
pub struct ConnectionCount(Arc<ListenerStats>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Relaxed);
    }
}

/// Gives one of its client's connections back when dropped ([`ListenerStats::client_opened`]).
#[derive(Debug)]
pub struct ClientCount(Arc<ListenerStats>, IpAddr);

impl Drop for ClientCount {
    fn drop(&mut self) {
        let mut open = self.0.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut n) = open.entry(self.1) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

/// Counters of one upstream endpoint.
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Requests sent.
    pub requests: AtomicU64,
    /// New connections opened.
    pub connections_opened: AtomicU64,
    /// Connects refused or unreachable.
    pub connect_refused: AtomicU64,
    /// Connects that timed out.
    pub connect_timeouts: AtomicU64,
    /// Pooled connections closed, by why ([`Closed`]).
    pub connections_closed: [AtomicU64; Closed::ALL.len()],
    /// Active health checks by result: success, failure, timeout.
    pub health_checks: [AtomicU64; 3],
    /// Ejections by reason: consecutive 5xx, consecutive gateway errors, success rate.
    pub ejections: [AtomicU64; 3],
}

/// Why the pool closed an upstream connection (or found it closed), for
/// `strait_upstream_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// It carried no request for the cluster's `idle_timeout`.
    IdleTimeout,
    /// Retired a little before the idle timeout its upstream announced (`Keep-Alive`).
    UpstreamIdleTimeout,
    /// It carried the cluster's `max_requests_per_connection`.
    MaxRequests,
    /// It was older than the cluster's `max_connection_duration`.
    MaxDuration,
    /// Its upstream closed it (or sent bytes nobody asked for) while it waited in the pool.
    ClosedIdle,
}

impl Closed {
    /// Every reason, in the order of [`EndpointCounters::connections_closed`].
    pub const ALL: [Closed; 5] = [
        Closed::IdleTimeout,
        Closed::UpstreamIdleTimeout,
        Closed::MaxRequests,
        Closed::MaxDuration,
        Closed::ClosedIdle,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::IdleTimeout => "idle_timeout",
            Closed::UpstreamIdleTimeout => "upstream_idle_timeout",
            Closed::MaxRequests => "max_requests",
            Closed::MaxDuration => "max_duration",
            Closed::ClosedIdle => "closed_by_upstream",
        }
    }
}

impl EndpointCounters {
    /// Counts a connection opened.
    pub fn opened(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
    }

    /// Counts a connection closed for `why`.
    pub fn closed(&self, why: Closed) {
        self.connections_closed[why as usize].fetch_add(1, Relaxed);
    }
}

/// Counters of one cluster.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Requests that got no response head within the route timeout.
    pub request_timeouts: AtomicU64,
    /// Upstreams that closed or reset before a complete response head.
    pub resets: AtomicU64,
    /// Requests failed fast by the circuit breaker, by limit (connections, pending, requests),
    /// and retries not made (retries).
    pub overflows: [AtomicU64; 4],
    /// Upstream connections open now, each holding a slot of the cluster's `max_connections`
    /// (across reloads: the counters outlive a cluster's breaker, whose count starts again).
    pub connections_active: AtomicU64,
    /// Retries sent (hedges included).
    pub retries: AtomicU64,
    /// Requests answered well after at least one retry.
    pub retry_successes: AtomicU64,
    /// Hedged attempts sent.
    pub hedges: AtomicU64,
    /// Retries not made because the request body outgrew the replay buffer.
    pub retries_skipped_body: AtomicU64,
    /// Retries not made because the cluster's retry budget was spent.
    pub retries_skipped_budget: AtomicU64,
    /// Ejections outlier detection wanted and `max_ejection_percent` refused.
    pub ejections_overflow: AtomicU64,
    /// Upstream TLS handshakes refused because the peer's SPIFFE ID was not the expected one.
    pub identity_mismatches: Arc<AtomicU64>,
    /// Mirrored copies sent to this cluster, by outcome: answered, failed (no answer, an
    /// error or the timeout), skipped (the body outgrew the mirror's limit or failed).
    pub mirrors: [AtomicU64; 3],
}

/// Key of one route's counters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RouteKey {
    direction: &'static str,
    listener: String,
    route: String,
    cluster: String,
}

/// One current endpoint's gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGauges {
    /// Cluster name.
    pub cluster: String,
    /// Endpoint address.
    pub endpoint: String,
    /// Balancers may choose it: passing health checks and not ejected.
    pub usable: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// Whether it passes its health checks; `None` when the cluster has none.
    pub passing_checks: Option<bool>,
    /// Whether it is ejected; `None` when the cluster has no outlier detection.
    pub ejected: Option<bool>,
}

/// One current cluster's gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterGauges {
    /// Cluster name.
    pub cluster: String,
    /// No endpoint is usable and requests go to all of them.
    pub failing_open: bool,
}

/// Live gauges that the store reads from elsewhere at scrape time.
pub trait GaugeSource: Send + Sync + std::fmt::Debug + 'static {
    /// Every current endpoint.
    fn endpoints(&self) -> Vec<EndpointGauges>;
    /// Every current cluster.
    fn clusters(&self) -> Vec<ClusterGauges>;
    /// `(version, last reload unix seconds, reload failures)`.
    fn config(&self) -> (u64, u64, u64);
    /// Access log lines dropped because a writer could not keep up.
    fn access_log_dropped(&self) -> u64;
    /// `(listener, certificate file, notAfter unix seconds)` of every served certificate.
    fn certificates(&self) -> Vec<(String, String, i64)>;
}

/// Every counter handle, by name. Locked when a snapshot is compiled and when scraped; never by
/// a request.
#[derive(Debug, Default)]
pub struct MetricsStore {
    /// The proxy's worker threads: each gets a shard of every route's counters.
    workers: usize,
    routes: Mutex<BTreeMap<RouteKey, Arc<RouteStats>>>,
    listeners: Mutex<BTreeMap<String, Arc<ListenerStats>>>,
    endpoints: Mutex<BTreeMap<(String, String), Arc<EndpointCounters>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterCounters>>>,
    authz: Mutex<BTreeMap<(String, String, String), Arc<Decisions>>>,
    jwt: Mutex<BTreeMap<String, Arc<JwtCounters>>>,
    peers: Mutex<BTreeMap<String, Arc<PeerRequests>>>,
    gauges: Mutex<Option<Arc<dyn GaugeSource>>>,
    tracing: Mutex<Option<Arc<TracingCounters>>>,
}

fn get_or_insert<K: Ord, V: Default>(map: &Mutex<BTreeMap<K, Arc<V>>>, key: K) -> Arc<V> {
    // A poisoned lock only means a scrape panicked mid-way; the map itself is intact.
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(map.entry(key).or_default())
}

impl MetricsStore {
    /// A store for a proxy with `workers` worker threads, each of which calls
    /// [`enter_worker`] with its index.
    pub fn with_workers(workers: usize) -> Self {
        MetricsStore {
            workers,
            ..MetricsStore::default()
        }
    }

    /// The counters of a route's traffic to a cluster (`""` for none).
    pub fn route(&self, listener: &str, route: &str, cluster: &str) -> Arc<RouteStats> {
        let key = RouteKey {
            direction: "gateway",
            listener: listener.to_owned(),
            route: route.to_owned(),
            cluster: cluster.to_owned(),
        };
        let mut map = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let workers = self.workers;
        Arc::clone(
            map.entry(key)
                .or_insert_with(|| Arc::new(RouteStats::with_workers(workers))),
        )
    }

    /// The connection counters of a listener.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        get_or_insert(&self.listeners, name.to_owned())
    }

    /// The counters of an endpoint of a cluster.
    pub fn endpoint(&self, cluster: &str, endpoint: &str) -> Arc<EndpointCounters> {
        get_or_insert(&self.endpoints, (cluster.to_owned(), endpoint.to_owned()))
    }

    /// The counters of a cluster.
    pub fn cluster(&self, name: &str) -> Arc<ClusterCounters> {
        get_or_insert(&self.clusters, name.to_owned())
    }

    /// The requests by peer identity of a listener.
    pub fn peers(&self, listener: &str) -> Arc<PeerRequests> {
        get_or_insert(&self.peers, listener.to_owned())
    }

    /// The JWT check results of a listener.
    pub fn jwt(&self, listener: &str) -> Arc<JwtCounters> {
        get_or_insert(&self.jwt, listener.to_owned())
    }

    /// The decision counters of an authorization rule (`route` empty for a listener's policy).
    pub fn authz(&self, listener: &str, route: &str, rule: &str) -> Arc<Decisions> {
        let key = (listener.to_owned(), route.to_owned(), rule.to_owned());
        get_or_insert(&self.authz, key)
    }

    /// The span exporters' counters.
    pub fn set_tracing_counters(&self, counters: Arc<TracingCounters>) {
        *self.tracing.lock().unwrap_or_else(|e| e.into_inner()) = Some(counters);
    }

    /// Where the gauges read at scrape time come from.
    pub fn set_gauge_source(&self, source: Arc<dyn GaugeSource>) {
        *self.gauges.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    /// The registry that `/metrics` encodes.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StoreCollector(Arc::clone(self))));
        registry.register_collector(Box::new(super::process::ProcessCollector));
        registry
    }
}

#[derive(Debug)]
struct StoreCollector(Arc<MetricsStore>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let store = &self.0;
        let version = env!("CARGO_PKG_VERSION");
        {
            let mut m = encoder.encode_descriptor(
                "strait_build_info",
                "Build information.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(m.encode_family(&[("version", version)])?)?;
        }
        let routes: Vec<(RouteKey, Arc<RouteStats>)> = {
            let map = store.routes.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect()
        };
        let totals: Vec<RouteShard> = routes.iter().map(|(_, s)| s.totals()).collect();
        {
            let mut m = encoder.encode_descriptor(
                "strait_http_requests",
                "HTTP requests answered, by status code (and grpc-status for gRPC).",
                None,
                MetricType::Counter,
            )?;
            for ((k, _), s) in routes.iter().zip(&totals) {
                let base = [
                    ("direction", k.direction),
                    ("listener", k.listener.as_str()),
                    ("route", k.route.as_str()),
                    ("cluster", k.cluster.as_str()),
                ];
                for (slot, n) in s.codes.iter().enumerate() {
                    let n = n.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let (code, class) = match slot {
                        s if s < CODES.len() => {
                            (CODES[s].to_string(), CLASSES[class_index(CODES[s])])
                        }
                        SLOT_504 => ("504".to_owned(), "5xx"),
                        s => ("other".to_owned(), CLASSES[s - SLOT_OTHER]),
                    };
                    let labels = [
                        base[0],
                        base[1],
                        base[2],
                        base[3],
                        ("class", class),
                        ("code", &code),
                        ("grpc_status", ""),
                    ];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
                for (g, n) in s.grpc.iter().enumerate() {
                    let n = n.load(Relaxed);
                    if n == 0 {
                        continue;
                    }
                    let g = g.to_string();
                    let labels = [
                        base[0],
                        base[1],
                        base[2],
                        base[3],
                        ("class", "2xx"),
                        ("code", "200"),
                        ("grpc_status", &g),
                    ];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_http_request_duration_seconds",
                "Time from a request's head received to its response head sent.",
                None,
                MetricType::Histogram,
            )?;
            for ((k, _), s) in routes.iter().zip(&totals) {
                for (class, h) in CLASSES.iter().zip(&s.durations) {
                    let (sum, count, buckets) = h.snapshot();
                    if count == 0 {
                        continue;
                    }
                    let labels = [
                        ("direction", k.direction),
                        ("listener", k.listener.as_str()),
                        ("route", k.route.as_str()),
                        ("cluster", k.cluster.as_str()),
                        ("class", class),
                    ];
                    m.encode_family(&labels)?
                        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                            sum, count, &buckets, None,
                        )?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "strait_http_request_body_bytes",
                "Request body bytes forwarded upstream.",
                (|s: &RouteShard| s.request_bytes.load(Relaxed)) as fn(&RouteShard) -> u64,
            ),
            (
                "strait_http_response_body_bytes",
                "Response body bytes sent to clients.",
                |s: &RouteShard| s.response_bytes.load(Relaxed),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((k, _), s) in routes.iter().zip(&totals) {
                let labels = [
                    ("direction", k.direction),
                    ("listener", k.listener.as_str()),
                    ("route", k.route.as_str()),
                    ("cluster", k.cluster.as_str()),
                ];
                ConstCounter::new(pick(s)).encode(m.encode_family(&labels)?)?;
            }
        }

        for (name, help, pick) in [
            (
                "strait_fault_delays",
                "Requests held by fault injection.",
                (|s: &RouteStats| s.fault_delays.load(Relaxed)) as fn(&RouteStats) -> u64,
            ),
            (
                "strait_fault_aborts",
                "Requests answered with an injected failure.",
                |s: &RouteStats| s.fault_aborts.load(Relaxed),
            ),
            (
                "strait_rate_limited",
                "Requests refused by a route's rate limit.",
                |s: &RouteStats| s.rate_limited.load(Relaxed),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            // Faults are counted on a route's own counters (cluster ""), only where configured.
            for (k, s) in routes
                .iter()
                .filter(|(k, s)| k.cluster.is_empty() && pick(s) > 0)
            {
                let labels = [
                    ("listener", k.listener.as_str()),
                    ("route", k.route.as_str()),
                ];
                ConstCounter::new(pick(s)).encode(m.encode_family(&labels)?)?;
            }
        }

        let listeners: Vec<(String, Arc<ListenerStats>)> = {
            let map = store.listeners.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect()
        };
        for (name, help, kind) in [
            (
                "strait_tcp_connections_opened",
                "Client connections accepted.",
                0,
            ),
            (
                "strait_tcp_connections_closed",
                "Client connections closed.",
                1,
            ),
            (
                "strait_tcp_connections_active",
                "Client connections open now.",
                2,
            ),
            (
                "strait_listener_connections_overflow",
                "Client connections closed at once because the listener had max_connections open.",
                3,
            ),
            (
                "strait_listener_connections_rate_limited",
                "Client connections closed at once because the listener's connection_rate_limit was spent.",
                4,
            ),
            (
                "strait_listener_connections_per_client_overflow",
                "Client connections closed at once because their client address had max_connections_per_client open.",
                9,
            ),
            (
                "strait_listener_connections_released",
                "Times an idle HTTP/1 client connection gave back its buffers while the worker held many connections.",
                5,
            ),
            (
                "strait_listener_accept_errors",
                "Accepts that failed (out of file descriptors or memory); the listener backs off 50 ms.",
                6,
            ),
            (
                "strait_listener_request_head_timeouts",
                "HTTP/1 connections closed because a request head did not come whole within the idle timeout.",
                7,
            ),
            (
                "strait_listener_http2_floods",
                "HTTP/2 connections closed because the client sent too many frames that open no request and carry no data (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty DATA).",
                8,
            ),
            (
                "strait_listener_http2_reset_floods",
                "HTTP/2 connections closed because the client reset most of its streams within a second of their heads, before they were answered (rapid reset).",
                10,
            ),
        ] {
            let metric_type = if kind == 2 {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let mut m = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (l, s) in &listeners {
                let (opened, closed) = (s.opened.load(Relaxed), s.closed.load(Relaxed));
                let labels = [("listener", l.as_str())];
                let fam = m.encode_family(&labels)?;
                match kind {
                    0 => ConstCounter::new(opened).encode(fam)?,
                    1 => ConstCounter::new(closed).encode(fam)?,
                    2 => ConstGauge::new(opened.saturating_sub(closed) as i64).encode(fam)?,
                    3 => ConstCounter::new(s.overflowed.load(Relaxed)).encode(fam)?,
                    4 => ConstCounter::new(s.rate_limited.load(Relaxed)).encode(fam)?,
                    5 => ConstCounter::new(s.released.load(Relaxed)).encode(fam)?,
                    6 => ConstCounter::new(s.accept_errors.load(Relaxed)).encode(fam)?,
                    7 => ConstCounter::new(s.head_timeouts.load(Relaxed)).encode(fam)?,
                    8 => ConstCounter::new(s.http2_floods.load(Relaxed)).encode(fam)?,
                    10 => ConstCounter::new(s.http2_reset_floods.load(Relaxed)).encode(fam)?,
                    _ => ConstCounter::new(s.client_overflowed.load(Relaxed)).encode(fam)?,
                }
            }
        }

        {
            let mut m = encoder.encode_descriptor(
                "strait_tls_handshakes",
                "TLS handshakes completed with clients, by kind (full, resumed).",
                None,
                MetricType::Counter,
            )?;
            for (l, s) in &listeners {
                for (kind, n) in [("full", &s.tls_full), ("resumed", &s.tls_resumed)] {
                    let labels = [("listener", l.as_str()), ("kind", kind)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_listener_malformed_requests",
                "HTTP/1 request heads refused as malformed before routing, by the status answered (400, 414, 431, 501).",
                None,
                MetricType::Counter,
            )?;
            for (l, s) in &listeners {
                for (status, n) in MALFORMED.iter().zip(&s.malformed) {
                    let labels = [("listener", l.as_str()), ("status", *status)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_tls_handshake_failures",
                "TLS handshakes with clients that failed, by reason (handshake, timeout, closed, plain_http).",
                None,
                MetricType::Counter,
            )?;
            for (l, s) in &listeners {
                for (reason, n) in ["handshake", "timeout", "closed", "plain_http"]
                    .iter()
                    .zip(&s.tls_failures)
                {
                    let labels = [("listener", l.as_str()), ("reason", *reason)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        {
            let decisions: Vec<((String, String, String), Arc<Decisions>)> = {
                let map = store.authz.lock().unwrap_or_else(|e| e.into_inner());
                map.iter()
                    .map(|(k, v)| (k.clone(), Arc::clone(v)))
                    .collect()
            };
            let mut m = encoder.encode_descriptor(
                "strait_authz_decisions",
                "Authorization decisions, by policy rule and decision (allow, deny).",
                None,
                MetricType::Counter,
            )?;
            for ((l, r, rule), d) in &decisions {
                for (decision, n) in [("allow", &d.allowed), ("deny", &d.denied)] {
                    let labels = [
                        ("listener", l.as_str()),
                        ("route", r.as_str()),
                        ("rule", rule.as_str()),
                        ("decision", decision),
                    ];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        {
            let peers: Vec<(String, Arc<PeerRequests>)> = {
                let map = store.peers.lock().unwrap_or_else(|e| e.into_inner());
                map.iter()
                    .map(|(k, v)| (k.clone(), Arc::clone(v)))
                    .collect()
            };
            let mut m = encoder.encode_descriptor(
                "strait_peer_requests",
                "Requests by verified peer identity (SPIFFE ID of the client certificate).",
                None,
                MetricType::Counter,
            )?;
            for (l, p) in &peers {
                for (peer, n) in p.snapshot() {
                    let labels = [("listener", l.as_str()), ("peer", peer.as_str())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let jwt: Vec<(String, Arc<JwtCounters>)> = {
                let map = store.jwt.lock().unwrap_or_else(|e| e.into_inner());
                map.iter()
                    .map(|(k, v)| (k.clone(), Arc::clone(v)))
                    .collect()
            };
            let mut m = encoder.encode_descriptor(
                "strait_jwt_requests",
                "Requests checked for a JWT, by result (valid, anonymous, or why refused).",
                None,
                MetricType::Counter,
            )?;
            for (l, c) in &jwt {
                let results = [("valid", &c.accepted), ("anonymous", &c.anonymous)]
                    .into_iter()
                    .chain(Refusal::ALL.iter().map(|r| r.name()).zip(c.refused.iter()));
                for (result, n) in results {
                    let labels = [("listener", l.as_str()), ("result", result)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let endpoints: Vec<((String, String), Arc<EndpointCounters>)> = {
            let map = store.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect()
        };
        for (name, help, pick) in [
            (
                "strait_upstream_requests",
                "Requests sent to an endpoint.",
                (|e: &EndpointCounters| e.requests.load(Relaxed)) as fn(&EndpointCounters) -> u64,
            ),
            (
                "strait_upstream_connections_opened",
                "Upstream connections opened.",
                |e: &EndpointCounters| e.connections_opened.load(Relaxed),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((c, e), s) in &endpoints {
                ConstCounter::new(pick(s)).encode(
                    m.encode_family(&[("cluster", c.as_str()), ("endpoint", e.as_str())])?,
                )?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_connections_closed",
                "Upstream connections the pool closed, or found closed while idle, by reason \
                 (idle_timeout, upstream_idle_timeout, max_requests, max_duration, \
                 closed_by_upstream).",
                None,
                MetricType::Counter,
            )?;
            for ((c, e), s) in &endpoints {
                for why in Closed::ALL {
                    let labels = [
                        ("cluster", c.as_str()),
                        ("endpoint", e.as_str()),
                        ("reason", why.label()),
                    ];
                    let n = s.connections_closed[why as usize].load(Relaxed);
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_connect_failures",
                "Upstream connects that failed, by reason (refused, timeout).",
                None,
                MetricType::Counter,
            )?;
            for ((c, e), s) in &endpoints {
                for (reason, n) in [
                    ("refused", &s.connect_refused),
                    ("timeout", &s.connect_timeouts),
                ] {
                    let labels = [
                        ("cluster", c.as_str()),
                        ("endpoint", e.as_str()),
                        ("reason", reason),
                    ];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let clusters: Vec<(String, Arc<ClusterCounters>)> = {
            let map = store.clusters.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect()
        };
        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_connections_active",
                "Upstream connections open now, pooled and in use.",
                None,
                MetricType::Gauge,
            )?;
            for (c, s) in &clusters {
                let open = i64::try_from(s.connections_active.load(Relaxed)).unwrap_or(i64::MAX);
                ConstGauge::new(open).encode(m.encode_family(&[("cluster", c.as_str())])?)?;
            }
        }
        for (name, help, pick) in [
            (
                "strait_upstream_request_timeouts",
                "Requests with no response head within the route timeout.",
                (|c: &ClusterCounters| c.request_timeouts.load(Relaxed))
                    as fn(&ClusterCounters) -> u64,
            ),
            (
                "strait_upstream_resets",
                "Upstreams that closed or reset before a response head.",
                |c: &ClusterCounters| c.resets.load(Relaxed),
            ),
            (
                "strait_upstream_retries",
                "Retries sent, hedged attempts included.",
                |c: &ClusterCounters| c.retries.load(Relaxed),
            ),
            (
                "strait_upstream_retry_successes",
                "Requests answered well after at least one retry.",
                |c: &ClusterCounters| c.retry_successes.load(Relaxed),
            ),
            (
                "strait_upstream_identity_mismatches",
                "Upstream TLS connections refused: the peer's SPIFFE ID was not the expected one.",
                |c: &ClusterCounters| c.identity_mismatches.load(Relaxed),
            ),
            (
                "strait_upstream_hedges",
                "Hedged attempts sent while an earlier attempt was still waiting.",
                |c: &ClusterCounters| c.hedges.load(Relaxed),
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (c, s) in &clusters {
                ConstCounter::new(pick(s)).encode(m.encode_family(&[("cluster", c.as_str())])?)?;
            }
        }

        {
            let mut m = encoder.encode_descriptor(
                "strait_mirror_requests",
                "Mirrored copies of requests sent to this (shadow) cluster, by result: answered, failed, skipped (the body outgrew the mirror's limit).",
                None,
                MetricType::Counter,
            )?;
            for (c, s) in &clusters {
                for (result, n) in ["answered", "failed", "skipped"].iter().zip(&s.mirrors) {
                    let labels = [("cluster", c.as_str()), ("result", *result)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_retries_skipped",
                "Retries the policy asked for and that were not made, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (c, s) in &clusters {
                for (reason, n) in [
                    ("body_too_large", &s.retries_skipped_body),
                    ("budget_exhausted", &s.retries_skipped_budget),
                    ("overflow", &s.overflows[3]),
                ] {
                    let labels = [("cluster", c.as_str()), ("reason", reason)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_overflows",
                "Requests failed fast by a cluster's circuit breaker, by limit.",
                None,
                MetricType::Counter,
            )?;
            for (c, s) in &clusters {
                for (limit, n) in ["connections", "pending", "requests", "retries"]
                    .iter()
                    .zip(&s.overflows)
                {
                    let labels = [("cluster", c.as_str()), ("limit", *limit)];
                    ConstCounter::new(n.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "strait_upstream_ejections_overflow",
                "Ejections outlier detection wanted and max_ejection_percent refused.",
                None,
                MetricType::Counter,
            )?;
            for (c, s) in clusters
                .iter()
                .filter(|(_, s)| s.ejections_overflow.load(Relaxed) > 0)
            {
                ConstCounter::new(s.ejections_overflow.load(Relaxed))
                    .encode(m.encode_family(&[("cluster", c.as_str())])?)?;
            }
        }

        // Counted only where health checks or outlier detection run, so only series that have
        // counted something are served.
        let results = CheckResult::ALL.map(CheckResult::name);
        let reasons = Reason::ALL.map(Reason::name);
        for (name, help, label, values, pick) in [
            (
                "strait_upstream_health_checks",
                "Active health checks of an endpoint, by result (success, failure, timeout).",
                "result",
                &results,
                (|e: &EndpointCounters| &e.health_checks)
                    as fn(&EndpointCounters) -> &[AtomicU64; 3],
            ),
            (
                "strait_upstream_ejections",
                "Endpoints ejected by outlier detection, by reason.",
                "reason",
                &reasons,
                |e: &EndpointCounters| &e.ejections,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((c, e), s) in &endpoints {
                for (value, n) in values.iter().zip(pick(s)) {
                    let n = n.load(Relaxed);
                    if n > 0 {
                        let labels = [
                            ("cluster", c.as_str()),
                            ("endpoint", e.as_str()),
                            (label, *value),
                        ];
                        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }

        let source = store
            .gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(source) = source {
            let eps = source.endpoints();
            for (name, help, pick) in [
                (
                    "strait_upstream_endpoint_healthy",
                    "1 when balancers may choose the endpoint: it passes its health checks and is not ejected.",
                    (|g: &EndpointGauges| Some(i64::from(g.usable)))
                        as fn(&EndpointGauges) -> Option<i64>,
                ),
                (
                    "strait_upstream_endpoint_in_flight",
                    "Requests sent to the endpoint and not finished.",
                    |g: &EndpointGauges| Some(i64::from(g.in_flight)),
                ),
                (
                    "strait_upstream_endpoint_health_check_passing",
                    "1 when the endpoint passes its active health checks (clusters with health_check).",
                    |g: &EndpointGauges| g.passing_checks.map(i64::from),
                ),
                (
                    "strait_upstream_endpoint_ejected",
                    "1 while outlier detection has the endpoint ejected (clusters with outlier_detection).",
                    |g: &EndpointGauges| g.ejected.map(i64::from),
                ),
            ] {
                let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for g in &eps {
                    if let Some(v) = pick(g) {
                        let labels = [("cluster", g.cluster.as_str()), ("endpoint", g.endpoint.as_str())];
                        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
            {
                let mut m = encoder.encode_descriptor(
                    "strait_upstream_cluster_failing_open",
                    "1 when no endpoint of the cluster is usable and requests go to all of them (fail_open).",
                    None,
                    MetricType::Gauge,
                )?;
                for c in source.clusters() {
                    ConstGauge::new(i64::from(c.failing_open))
                        .encode(m.encode_family(&[("cluster", c.cluster.as_str())])?)?;
                }
            }
            let (version, reloaded, failures) = source.config();
            let m = encoder.encode_descriptor(
                "strait_config_version",
                "Version of the config in use.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(version as i64).encode(m)?;
            let m = encoder.encode_descriptor(
                "strait_config_last_reload_timestamp_seconds",
                "When the config in use was applied (Unix time).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(reloaded as i64).encode(m)?;
            let m = encoder.encode_descriptor(
                "strait_config_reload_failures",
                "Configs rejected since start.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(failures).encode(m)?;
            let m = encoder.encode_descriptor(
                "strait_access_log_dropped",
                "Access log lines dropped because the writer could not keep up.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(source.access_log_dropped()).encode(m)?;
            let mut m = encoder.encode_descriptor(
                "strait_tls_certificate_expiry_seconds",
                "When each served certificate expires (its notAfter), as Unix seconds.",
                None,
                MetricType::Gauge,
            )?;
            for (listener, file, expiry) in source.certificates() {
                let labels = [
                    ("listener", listener.as_str()),
                    ("certificate", file.as_str()),
                ];
                ConstGauge::new(expiry).encode(m.encode_family(&labels)?)?;
            }
        }
        let tracing = store
            .tracing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(t) = tracing {
            let m = encoder.encode_descriptor(
                "strait_tracing_spans_exported",
                "Spans the OTLP collector accepted.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(t.exported.load(Relaxed)).encode(m)?;
            let mut m = encoder.encode_descriptor(
                "strait_tracing_spans_dropped",
                "Spans never exported, by reason: queue_full (the exporter could not keep up), \
                 export_failed (the collector was unreachable, slow or refused them).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("queue_full", &t.dropped_queue_full),
                ("export_failed", &t.dropped_export_failed),
            ] {
                ConstCounter::new(n.load(Relaxed))
                    .encode(m.encode_family(&[("reason", reason)])?)?;
            }
            let m = encoder.encode_descriptor(
                "strait_tracing_export_failures",
                "OTLP export requests that failed or timed out.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(t.export_failures.load(Relaxed)).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn peer_labels_are_bounded() {
        let p = PeerRequests::default();
        for i in 0..MAX_PEERS + 10 {
            p.count(&format!("spiffe://td/ns/n/sa/{i}"));
        }
        p.count("spiffe://td/ns/n/sa/0");
        let seen = p.snapshot();
        assert_eq!(seen.len(), MAX_PEERS + 1);
        assert!(seen.contains(&("other".to_owned(), 10)));
        assert!(seen.contains(&("spiffe://td/ns/n/sa/0".to_owned(), 2)));
    }

    use super::*;

    #[test]
    fn codes_outside_the_common_set_are_other_in_their_class() {
        assert_eq!(code_slot(200), 2);
        assert_eq!(code_slot(504), SLOT_504);
        assert_eq!(code_slot(418), SLOT_OTHER + 3);
        assert_eq!(code_slot(599), SLOT_OTHER + 4);
        assert_eq!(code_slot(42), SLOT_OTHER);
        assert_eq!(code_slot(999), SLOT_OTHER + 4);
    }

    #[test]
    fn histogram_buckets_add_up_to_the_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300), false);
        h.observe(Duration::from_millis(3), false);
        h.observe(Duration::from_secs(60), false);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-6);
        assert_eq!(buckets.first(), Some(&(0.0005, 1)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 3);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn counters_survive_being_asked_for_again() {
        let store = MetricsStore::default();
        store.route("l", "r", "c").count(200, None);
        let again = store.route("l", "r", "c");
        assert_eq!(again.totals().codes[code_slot(200)].load(Relaxed), 1);
    }

    #[test]
    fn workers_count_in_their_own_shards_and_a_scrape_sums_them() {
        let store = Arc::new(MetricsStore::with_workers(2));
        let stats = store.route("l", "r", "c");
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    enter_worker(id);
                    for _ in 0..1000 {
                        stats.count(200, None);
                        stats.observe(200, Duration::from_millis(2));
                        stats.add_response_bytes(10);
                    }
                })
            })
            .collect();
        // This thread is no worker: it shares shard 0.
        stats.count(404, None);
        stats.add_request_bytes(7);
        for t in threads {
            t.join().unwrap();
        }
        // Each worker wrote only its own shard.
        for shard in stats.shards.get(1..).unwrap() {
            assert_eq!(
                shard.get().unwrap().codes[code_slot(200)].load(Relaxed),
                1000
            );
        }
        let t = stats.totals();
        assert_eq!(t.codes[code_slot(200)].load(Relaxed), 2000);
        assert_eq!(t.codes[code_slot(404)].load(Relaxed), 1);
        assert_eq!(t.request_bytes.load(Relaxed), 7);
        assert_eq!(t.response_bytes.load(Relaxed), 20_000);
        let (sum, count, buckets) = t.durations[class_index(200)].snapshot();
        assert_eq!(count, 2000);
        assert!((sum - 4.0).abs() < 1e-9);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 2000);
        let text = {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &store.registry()).unwrap();
            out
        };
        assert!(
            text.contains("code=\"200\",grpc_status=\"\"} 2000"),
            "{text}"
        );
    }

    #[test]
    fn a_worker_index_past_the_shards_counts_in_the_shared_one() {
        let stats = Arc::new(RouteStats::with_workers(1));
        let s = Arc::clone(&stats);
        std::thread::spawn(move || {
            enter_worker(5);
            s.count(200, None);
        })
        .join()
        .unwrap();
        assert_eq!(
            stats.shards[0].get().unwrap().codes[code_slot(200)].load(Relaxed),
            1
        );
        assert!(
            stats.shards[1].get().is_none(),
            "worker 0's shard was never counted on"
        );
    }

    #[test]
    fn a_thread_that_leaves_its_worker_counts_in_the_shared_shard() {
        let stats = Arc::new(RouteStats::with_workers(1));
        let s = Arc::clone(&stats);
        std::thread::spawn(move || {
            enter_worker(0);
            s.count(200, None);
            leave_worker();
            s.count(200, None);
        })
        .join()
        .unwrap();
        assert_eq!(
            stats.shards[1].get().unwrap().codes[code_slot(200)].load(Relaxed),
            1
        );
        assert_eq!(
            stats.shards[0].get().unwrap().codes[code_slot(200)].load(Relaxed),
            1
        );
    }

    #[test]
    fn shards_are_made_when_first_counted_on_and_a_scrape_of_none_reads_zeros() {
        let store = MetricsStore::with_workers(2);
        let stats = store.route("l", "r", "c");
        assert!(stats.shards.iter().all(|s| s.get().is_none()));
        // A scrape before any request: every series at zero, no shard made.
        let t = stats.totals();
        assert!(t.codes.iter().all(|c| c.load(Relaxed) == 0));
        assert_eq!(t.durations[class_index(200)].snapshot().1, 0);
        assert!(stats.shards.iter().all(|s| s.get().is_none()));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                enter_worker(1);
                stats.count(503, None);
            });
        });
        let made: Vec<bool> = stats.shards.iter().map(|s| s.get().is_some()).collect();
        assert_eq!(made, [false, false, true], "only worker 1's shard");
        assert_eq!(stats.totals().codes[code_slot(503)].load(Relaxed), 1);
    }

    #[test]
    fn a_client_gets_its_share_of_connections_and_its_closes_give_them_back() {
        use std::net::{IpAddr, Ipv4Addr};
        let stats = std::sync::Arc::new(super::ListenerStats::default());
        let (a, b) = (
            IpAddr::from(Ipv4Addr::LOCALHOST),
            IpAddr::from([10, 0, 0, 1]),
        );
        let first = stats.client_opened(a, 2).expect("first");
        let second = stats.client_opened(a, 2).expect("second");
        assert!(stats.client_opened(a, 2).is_none(), "a third");
        assert_eq!(stats.client_overflowed.load(Relaxed), 1);
        // Another client has its own share.
        let other = stats.client_opened(b, 2).expect("another client");
        drop(first);
        let again = stats.client_opened(a, 2).expect("one given back");
        assert_eq!(stats.clients(), 2);
        drop((second, again, other));
        assert_eq!(stats.clients(), 0, "clients with none open are forgotten");
    }
}
