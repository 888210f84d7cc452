//! The process: worker threads that forward traffic, and one control thread for everything
//! else (admin server, signals, config reloads, health checks and outlier ejections).
//!
//! Each worker is a thread with a current-thread tokio runtime, its own `SO_REUSEPORT` sockets
//! and its own upstream pool, so nothing is locked on the hot path. A proxy of one worker runs
//! it on the control thread instead, and is one thread (see [`run_on_one_thread`]). Workers
//! read the current [`Snapshot`] through an `ArcSwap` and are told of new ones through a watch
//! channel, on which they bind listeners that appeared and close ones that went away.

pub(crate) mod busy_poll;
mod health;
pub mod snapshot;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::LocalSet;

use crate::http::pool::Pool;
use crate::listener;
use crate::ratelimit::LimiterStore;
use crate::resilience::store::HealthStore;
use crate::telemetry::access_log::LogSinks;
use crate::telemetry::metrics::{ClusterGauges, EndpointGauges, GaugeSource};
use crate::telemetry::otlp::Exporters;
use crate::telemetry::MetricsStore;
pub use snapshot::Snapshot;

/// How long a thread of the control runtime's blocking pool (reload compiles, `/metrics`
/// encodes) waits for more work before it exits. Short, so that a proxy of one worker is one
/// thread again soon after a scrape (see [`run_on_one_thread`]); tokio's default is 10 s, which
/// with a 15 s scrape interval would keep a second thread two thirds of the time.
const BLOCKING_THREAD_IDLE: Duration = Duration::from_secs(1);

/// Longest a stopping proxy waits for its last spans to be exported.
const SPAN_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// How the proxy is started (the bootstrap lane: flags, not config).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The static config file, re-read on SIGHUP and when it changes.
    pub config_path: PathBuf,
    /// Worker threads; overrides the file's `workers`. Default: the file's, else one per core.
    pub workers: Option<usize>,
    /// How often the config file is checked for changes. Default: 1 s.
    pub watch_interval: Duration,
    /// Where the binary's allocator gives back to the system the memory the calling thread's
    /// heap holds free. An allocator that keeps freed pages for reuse would hold them while the
    /// proxy idles. Called:
    /// - on the thread that compiled a config, after each compile (at start and on every
    ///   reload, applied or rejected): a config's YAML tree and its model take several times
    ///   the compiled snapshot (a table of 500 routes: ~3 MB freed against 3.2 MB kept);
    /// - on a worker's thread when its traffic falls (see [`Trim`]): a burst of 128 streams of
    ///   1 MiB answers left ~200 MB held by an idle proxy, against 8.4 MB at start.
    ///
    /// Default: none.
    pub release_memory: Option<fn()>,
}

impl ProxyOptions {
    /// Options for a config file, with defaults for the rest.
    pub fn new(config_path: impl Into<PathBuf>) -> Self {
        ProxyOptions {
            config_path: config_path.into(),
            workers: None,
            watch_interval: Duration::from_secs(1),
            release_memory: None,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] strait_config::ConfigErrors),
    /// The config is valid but could not be compiled.
    #[error("{0}")]
    Compile(#[from] snapshot::CompileError),
    /// A listener or the admin address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A thread or runtime could not be created.
    #[error("cannot start: {0}")]
    Runtime(std::io::Error),
}

/// State shared by the workers and the control thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config every new request reads.
    pub snapshot: ArcSwap<Snapshot>,
    /// `snapshot`'s version, stored after it: the number `updated` announces, readable without
    /// its lock. A worker compares it with the version of the snapshot it holds (see
    /// [`Worker::current`]).
    pub version: AtomicU64,
    /// Tells workers a new snapshot is in place (its version).
    pub updated: watch::Sender<u64>,
    /// Turns true when the proxy drains: stop accepting, finish what is in flight.
    pub draining: watch::Sender<bool>,
    /// SIGTERM came: `/ready` answers 503 while the proxy serves on for `drain_delay`.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Open client connections across all workers.
    pub connections: AtomicUsize,
    /// Reloads rejected since start.
    pub reload_failures: AtomicU64,
    /// Unix time of the last applied config, seconds.
    pub last_reload_unix: AtomicU64,
    /// Why the last rejected reload was rejected, until a later one succeeds.
    pub last_reload_error: ArcSwapOption<String>,
    pub config_path: PathBuf,
    /// Every counter, by name; snapshots resolve their handles here.
    pub metrics: Arc<MetricsStore>,
    /// Access log writers by destination.
    pub logs: Arc<LogSinks>,
    /// Rate-limit buckets by route, kept across reloads.
    pub limiters: Arc<LimiterStore>,
    /// Endpoint health and ejections by (cluster, address), kept across reloads.
    pub health: Arc<HealthStore>,
    /// Span exporters, kept across reloads that do not change them.
    pub exporters: Arc<Exporters>,
    /// See [`ProxyOptions::release_memory`].
    pub release_memory: Option<fn()>,
}

impl Shared {
    /// Validates and compiles the config file and swaps it in. Invalid configs change nothing.
    pub fn reload(&self) -> Result<u64, String> {
        match std::fs::read_to_string(&self.config_path) {
            Ok(text) => self.apply_text(&text),
            // Counted and shown like any refused config (a SIGHUP with the file moved away).
            Err(e) => Err(self.reject(format!("{}: cannot read: {e}", self.config_path.display()))),
        }
    }

    fn apply_text(&self, text: &str) -> Result<u64, String> {
        let result = strait_config::parse(text, &self.config_path.display().to_string())
            .map_err(|e| e.to_string())
            .and_then(|config| {
                let old = self.snapshot.load();
                Snapshot::compile(
                    config,
                    old.version + 1,
                    Some(&old),
                    &self.metrics,
                    &self.logs,
                    &self.limiters,
                    &self.health,
                    &self.exporters,
                )
                .map_err(|e| e.to_string())
            })
            .and_then(|snapshot| {
                let path = self.config_path.display().to_string();
                let old = self.snapshot.load();
                started_with(&snapshot, &old, &path)?;
                new_listeners_bind(&snapshot, &old, &path).map(|()| snapshot)
            });
        let applied = match result {
            Ok(snapshot) => {
                let version = snapshot.version;
                self.snapshot.store(Arc::new(snapshot));
                self.version.store(version, Ordering::Release);
                self.last_reload_error.store(None);
                self.last_reload_unix.store(unix_now(), Ordering::Relaxed);
                self.updated.send_replace(version);
                tracing::info!(version, "config applied");
                Ok(version)
            }
            Err(e) => Err(self.reject(e)),
        };
        self.give_back_memory();
        applied
    }

    /// Gives the memory this thread's heap holds free back to the system (after a compile's
    /// parse, or when a worker's traffic fell): see [`ProxyOptions::release_memory`].
    fn give_back_memory(&self) {
        if let Some(release) = self.release_memory {
            release();
        }
    }

    /// Records a rejected config: counted, logged, shown on `/config_dump`.
    fn reject(&self, reason: String) -> String {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        self.last_reload_error.store(Some(Arc::new(reason.clone())));
        tracing::error!("config rejected, still serving the previous one:\n{reason}");
        reason
    }

    /// How long a worker out of work polls before it sleeps (zero: it sleeps at once): the
    /// current config's `busy_poll`.
    pub fn busy_poll(&self) -> Duration {
        self.snapshot.load().config.busy_poll.get()
    }

    /// Starts draining (idempotent).
    pub fn drain(&self) {
        if !self.draining.send_replace(true) {
            tracing::info!("draining: no new connections, finishing in-flight requests");
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Reads the gauges `/metrics` shows from the live snapshot. Weak: the store is part of
/// `Shared` and must not keep it alive.
#[derive(Debug)]
struct SharedGauges(std::sync::Weak<Shared>);

impl GaugeSource for SharedGauges {
    fn endpoints(&self) -> Vec<EndpointGauges> {
        let Some(shared) = self.0.upgrade() else {
            return Vec::new();
        };
        let snapshot = shared.snapshot.load();
        let mut out = Vec::new();
        for c in &snapshot.clusters {
            let checked = c.checks.is_some();
            let detects = c.outlier.policy().is_some();
            for (i, addr) in c.endpoints.iter().enumerate() {
                let stats = c.balancer.stats(i);
                out.push(EndpointGauges {
                    cluster: c.name.to_string(),
                    endpoint: addr.to_string(),
                    usable: stats.is_none_or(|s| s.is_usable()),
                    in_flight: stats.map_or(0, |s| s.in_flight()),
                    passing_checks: checked.then(|| stats.is_none_or(|s| s.is_healthy())),
                    ejected: detects.then(|| stats.is_some_and(|s| s.is_ejected())),
                });
            }
        }
        out
    }

    fn clusters(&self) -> Vec<ClusterGauges> {
        let Some(shared) = self.0.upgrade() else {
            return Vec::new();
        };
        let snapshot = shared.snapshot.load();
        snapshot
            .clusters
            .iter()
            .map(|c| ClusterGauges {
                cluster: c.name.to_string(),
                failing_open: c.balancer.is_failing_open(),
            })
            .collect()
    }

    fn access_log_dropped(&self) -> u64 {
        self.0.upgrade().map_or(0, |s| s.logs.dropped())
    }

    fn certificates(&self) -> Vec<(String, String, i64)> {
        let Some(shared) = self.0.upgrade() else {
            return Vec::new();
        };
        let snapshot = shared.snapshot.load();
        let mut out = Vec::new();
        for l in &snapshot.listeners {
            for (file, expiry) in l.tls.iter().flat_map(|t| t.expiries.iter()) {
                out.push((l.name.to_string(), file.clone(), *expiry));
            }
        }
        out
    }

    fn config(&self) -> (u64, u64, u64) {
        let Some(shared) = self.0.upgrade() else {
            return (0, 0, 0);
        };
        (
            shared.snapshot.load().version,
            shared.last_reload_unix.load(Ordering::Relaxed),
            shared.reload_failures.load(Ordering::Relaxed),
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One worker thread's state, shared by its connections through `Rc`.
#[derive(Debug)]
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    pub pool: Rc<Pool>,
    open: Cell<usize>,
    /// The snapshot this worker's requests last took (see [`Worker::current`]), taken again
    /// when a reload is announced too. An `Rc` of the shared `Arc`: a request's handle is
    /// counted without atomics.
    #[allow(clippy::redundant_allocation)]
    held: RefCell<Rc<Arc<Snapshot>>>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        let held = RefCell::new(Rc::new(shared.snapshot.load_full()));
        Worker {
            shared,
            pool: Rc::new(Pool::default()),
            open: Cell::new(0),
            held,
        }
    }

    /// The current snapshot, as a request (or a connection, or a reconcile) takes it and keeps
    /// it to the end: the worker's own handle, taken again only when the version changed.
    /// Loading from the shared `ArcSwap` for every request (a debt slot claimed and paid back,
    /// a reference count up and down, all atomic) cost ~60 instructions.
    #[allow(clippy::redundant_allocation)] // see `held`
    pub fn current(&self) -> Rc<Arc<Snapshot>> {
        let mut held = self.held.borrow_mut();
        if held.version != self.shared.version.load(Ordering::Acquire) {
            *held = Rc::new(self.shared.snapshot.load_full());
        }
        Rc::clone(&held)
    }

    /// Client connections open on this worker.
    pub fn open_connections(&self) -> usize {
        self.open.get()
    }

    /// Counts a connection until the guard drops.
    pub fn connection_opened(self: &Rc<Self>) -> ConnectionGuard {
        self.open.set(self.open.get() + 1);
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            worker: Rc::clone(self),
        }
    }
}

/// Decrements the connection counts when a connection ends.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    worker: Rc<Worker>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.worker
            .open
            .set(self.worker.open.get().saturating_sub(1));
        self.worker
            .shared
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the proxy until SIGTERM/SIGINT and the drain that follows. Blocks the calling thread,
/// which becomes the control thread.
pub fn run(options: ProxyOptions) -> Result<(), StartError> {
    let config = strait_config::load(&options.config_path)?;
    let workers = options
        .workers
        .or(config.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let admin_addr = config.admin.address;
    let metrics = Arc::new(MetricsStore::with_workers(workers));
    let logs = Arc::new(LogSinks::default());
    let limiters = Arc::new(LimiterStore::default());
    let health = Arc::new(HealthStore::default());
    let exporters = Arc::new(Exporters::default());
    metrics.set_tracing_counters(exporters.counters());
    let snapshot = Snapshot::compile(
        config, 1, None, &metrics, &logs, &limiters, &health, &exporters,
    )?;
    let (updated, _) = watch::channel(1);
    let (draining, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        version: AtomicU64::new(snapshot.version),
        snapshot: ArcSwap::from_pointee(snapshot),
        updated,
        draining,
        stopping: std::sync::atomic::AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        reload_failures: AtomicU64::new(0),
        last_reload_unix: AtomicU64::new(unix_now()),
        last_reload_error: ArcSwapOption::empty(),
        config_path: options.config_path.clone(),
        metrics,
        logs,
        limiters,
        health,
        exporters,
        release_memory: options.release_memory,
    });
    shared.give_back_memory();
    shared
        .metrics
        .set_gauge_source(Arc::new(SharedGauges(Arc::downgrade(&shared))));

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(busy_poll::hook(&shared))
        .thread_keep_alive(BLOCKING_THREAD_IDLE)
        .build()
        .map_err(StartError::Runtime)?;
    // The admin address is bound before the workers start so a clash fails the start cleanly.
    let admin = control
        .block_on(async { tokio::net::TcpListener::bind(admin_addr).await })
        .map_err(|source| StartError::Bind {
            addr: admin_addr,
            source,
        })?;

    if workers == 1 {
        return run_on_one_thread(&control, shared, admin, options.watch_interval);
    }
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    for id in 0..workers {
        let shared = Arc::clone(&shared);
        let bound_tx = bound_tx.clone();
        std::thread::Builder::new()
            .name(format!("strait-worker-{id}"))
            .spawn(move || {
                crate::telemetry::metrics::enter_worker(id);
                worker_main(shared, bound_tx)
            })
            .map_err(StartError::Runtime)?;
    }
    drop(bound_tx);
    for _ in 0..workers {
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StartError::Runtime(std::io::Error::other(
                    "a worker thread died at start",
                )))
            }
        }
    }
    log_started(&shared, workers, admin_addr);
    control.block_on(control_main(shared, admin, options.watch_interval));
    Ok(())
}

/// One worker: it runs on the control thread, and the process has one thread.
///
/// A system call on a socket looks its descriptor up in the process's file table. When only one
/// thread shares that table, the kernel borrows the file; otherwise it takes and drops a
/// reference, two atomic operations per call. A proxy makes four such calls per request:
/// perf put `fdget` and `fput` at 1.8 % of a two-thread proxy's samples, 1.0 % of this one's.
/// The control thread's work is light and asynchronous (reading the config file and the
/// certificates once a second is the longest step); compiling a reloaded config (see
/// [`reload_off_thread`]) and encoding `/metrics` run on tokio's blocking pool.
fn run_on_one_thread(
    control: &tokio::runtime::Runtime,
    shared: Arc<Shared>,
    admin: tokio::net::TcpListener,
    watch_interval: Duration,
) -> Result<(), StartError> {
    let admin_addr = admin.local_addr().map_err(StartError::Runtime)?;
    crate::telemetry::metrics::enter_worker(0);
    let ran = LocalSet::new().block_on(control, async move {
        let started = start_worker(&shared)?;
        tokio::task::spawn_local(run_worker(started));
        log_started(&shared, 1, admin_addr);
        control_main(shared, admin, watch_interval).await;
        Ok(())
    });
    // The thread may go on (a test or `strait demo` may start another proxy on it).
    crate::telemetry::metrics::leave_worker();
    ran
}

fn log_started(shared: &Shared, workers: usize, admin_addr: SocketAddr) {
    let listeners: Vec<String> = shared
        .snapshot
        .load()
        .listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.address))
        .collect();
    tracing::info!(workers, admin = %admin_addr, listeners = ?listeners, "strait proxy started");
}

/// The control thread: admin server, signals, file watching, and the final drain.
async fn control_main(
    shared: Arc<Shared>,
    admin: tokio::net::TcpListener,
    watch_interval: Duration,
) {
    tokio::spawn(crate::admin::serve(admin, Arc::clone(&shared)));
    tokio::spawn(watch_config_file(Arc::clone(&shared), watch_interval));
    tokio::spawn(health::supervise(Arc::clone(&shared)));
    let mut signals = Signals::install();
    signals.stop(&shared).await;
    let delay = shared.snapshot.load().config.drain_delay.get();
    if !delay.is_zero() && !shared.is_draining() {
        // Not ready, still serving: a load balancer that polls `/ready` (or a Kubernetes
        // endpoints update) has this long to stop sending new connections.
        shared.stopping.store(true, Ordering::Relaxed);
        tracing::info!(
            ?delay,
            "stopping: /ready answers 503; draining after drain_delay"
        );
        let mut drained = shared.draining.subscribe();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.stop(&shared) => tracing::info!("second stop signal: draining now"),
            _ = drained.wait_for(|d| *d) => {}
        }
    }
    shared.drain();
    let drain_timeout = shared.snapshot.load().config.drain_timeout.get();
    let deadline = tokio::time::Instant::now() + drain_timeout;
    while shared.connections.load(Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                open = shared.connections.load(Ordering::Relaxed),
                "drain timeout reached; closing remaining connections"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Spans of the last requests: sent if the collector answers soon, else given up.
    shared
        .exporters
        .flush(std::time::Instant::now() + SPAN_FLUSH_LIMIT);
    // The access log lines of the last requests, which the writers' next tick would not see.
    shared.logs.flush();
    tracing::info!("stopped");
}

/// The signals the control thread answers: SIGTERM and SIGINT stop the proxy, SIGHUP reloads
/// its config.
struct Signals {
    /// `None` when the handlers could not be installed: the proxy stops on SIGKILL alone.
    handlers: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => {
                tracing::error!("cannot install signal handlers; stop the proxy with SIGKILL");
                None
            }
        };
        Signals { handlers }
    }

    /// Returns on the next SIGTERM or SIGINT; a SIGHUP before it reloads the config.
    async fn stop(&mut self, shared: &Arc<Shared>) {
        let Some([term, int, hup]) = &mut self.handlers else {
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    reload_off_thread(shared, None).await;
                }
            }
        }
    }
}

/// Applies a config (`text`, else the file's) on tokio's blocking pool, so that with one worker
/// on the control thread a compile does not hold up requests. The pool's thread ends after
/// [`BLOCKING_THREAD_IDLE`], and the process is back to one thread.
async fn reload_off_thread(shared: &Arc<Shared>, text: Option<String>) {
    let shared = Arc::clone(shared);
    let applied = tokio::task::spawn_blocking(move || match text {
        Some(text) => shared.apply_text(&text),
        None => shared.reload(),
    })
    .await;
    if let Err(e) = applied {
        tracing::error!("config reload did not finish: {e}");
    }
}

/// Re-reads the config file when its content changes. Content is compared rather than mtime so
/// that Kubernetes ConfigMap symlink swaps and editors that rename are both seen.
async fn watch_config_file(shared: Arc<Shared>, interval: Duration) {
    let mut last = std::fs::read(&shared.config_path).ok();
    // The certificates and keys the serving config was built from: a rotation on disk (a
    // cert-manager renewal, a Kubernetes secret update) recompiles the same config.
    let mut tls_files = shared.snapshot.load().watched_files();
    let mut tls_seen = crate::tls::fingerprint(&tls_files);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(now) = std::fs::read(&shared.config_path) else {
            continue;
        };
        if last.as_deref() == Some(now.as_slice()) {
            let tls_now = crate::tls::fingerprint(&tls_files);
            if tls_now != tls_seen {
                tracing::info!("TLS certificate or key files changed");
                // A half-written pair fails to compile and is retried on the next change.
                tls_seen = tls_now;
                if let Ok(text) = String::from_utf8(now) {
                    reload_off_thread(&shared, Some(text)).await;
                }
                tls_files = shared.snapshot.load().watched_files();
            }
            continue;
        }
        last = Some(now.clone());
        match String::from_utf8(now) {
            Ok(text) => {
                tracing::info!(path = %shared.config_path.display(), "config file changed");
                reload_off_thread(&shared, Some(text)).await;
                tls_files = shared.snapshot.load().watched_files();
                tls_seen = crate::tls::fingerprint(&tls_files);
            }
            Err(_) => {
                shared.reject(format!("{}: not UTF-8 text", shared.config_path.display()));
            }
        }
    }
}

/// A listener this worker accepts on, and the switch that closes it.
struct Bound {
    stop: watch::Sender<bool>,
}

fn worker_main(shared: Arc<Shared>, bound: std::sync::mpsc::Sender<Result<(), StartError>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(busy_poll::hook(&shared))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = bound.send(Err(StartError::Runtime(e)));
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        match start_worker(&shared) {
            Ok(started) => {
                let _ = bound.send(Ok(()));
                run_worker(started).await;
            }
            Err(e) => {
                let _ = bound.send(Err(e));
            }
        }
    });
}

/// A worker that has bound its first listeners.
struct Started {
    worker: Rc<Worker>,
    listeners: HashMap<SocketAddr, Bound>,
    /// Subscribed before the first listeners were bound, so no reload after them is missed.
    updated: watch::Receiver<u64>,
    draining: watch::Receiver<bool>,
}

/// Binds a worker's first listeners. Called inside the worker's `LocalSet`.
fn start_worker(shared: &Arc<Shared>) -> Result<Started, StartError> {
    let updated = shared.updated.subscribe();
    let draining = shared.draining.subscribe();
    let worker = Rc::new(Worker::new(Arc::clone(shared)));
    let mut listeners = HashMap::new();
    reconcile_listeners(&worker, &mut listeners)?;
    Ok(Started {
        worker,
        listeners,
        updated,
        draining,
    })
}

/// A worker's life after its start: follows reloads until the drain, then waits for its
/// connections to finish.
async fn run_worker(started: Started) {
    let Started {
        worker,
        mut listeners,
        mut updated,
        mut draining,
    } = started;
    tokio::task::spawn_local(busy_poll::spinner());
    let mut trim = Trim::default();
    // A timer always due within a second (each tick also sweeps the pool of connections the
    // upstreams closed, and gives memory back when the worker's traffic fell). tokio wakes its
    // sleeping driver (a write to an eventfd) whenever a new timer is due before the one it
    // sleeps for; with none armed, the first request timeout after every moment with nothing
    // in flight paid that system call (one per 10 requests under load). Request timeouts are
    // longer.
    let mut anchor = tokio::time::interval(Duration::from_secs(1));
    anchor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = anchor.tick() => {
                worker.pool.sweep();
                if trim.fell(busy_poll::polls()) {
                    worker.shared.give_back_memory();
                }
            }
            changed = updated.changed() => {
                if changed.is_err() { break; }
                if let Err(e) = reconcile_listeners(&worker, &mut listeners) {
                    tracing::error!("{e}");
                }
            }
            _ = draining.wait_for(|d| *d) => break,
        }
    }
    for (_, b) in listeners.drain() {
        b.stop.send_replace(true);
    }
    // Connections finish on their own; the control thread decides when the process exits.
    while worker.open.get() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When a worker gives the memory its thread holds free back to the system: once a second it
/// compares the work done since the last second (its tasks' polls) with the most done in a
/// second since it last gave memory back, and gives it back when the work fell to a quarter
/// of that or less.
///
/// mimalloc purges freed pages only in passing, on later allocations of the same thread, and
/// only from spans freed together with others: after a burst, a worker that went quiet kept
/// what the burst freed for as long as it stayed quiet, and one that went on at a trickle
/// still held a third of it after 20,000 more requests. Giving memory back costs the next
/// requests the page faults of taking it again, so it is done when there is reason to think
/// the memory is not about to be used again: steady traffic, light or heavy, never causes
/// it, and a worker that has given back all it could is not asked again until it works.
#[derive(Debug, Default)]
struct Trim {
    /// The work count at the last tick.
    seen: u64,
    /// The most work done in a second since memory was last given back.
    peak: u64,
}

impl Trim {
    /// Takes the worker's work count at a tick; true when the memory should go back now.
    fn fell(&mut self, polls: u64) -> bool {
        let done = polls.wrapping_sub(self.seen);
        self.seen = polls;
        self.peak = self.peak.max(done);
        if self.peak == 0 || done.saturating_mul(4) > self.peak {
            return false;
        }
        self.peak = done;
        true
    }
}

/// Refuses a reload that changes what is read at start only: the admin server's address and
/// the number of workers. Applied, the rest would serve while `/config_dump` showed values
/// the process does not run with.
fn started_with(new: &Snapshot, old: &Snapshot, path: &str) -> Result<(), String> {
    let (was, now) = (&old.config, &new.config);
    if was.admin.address != now.admin.address {
        return Err(format!(
            "{path}: admin.address: {} -> {}: read at start only; restart the proxy to move \
             it, or keep {}",
            was.admin.address, now.admin.address, was.admin.address
        ));
    }
    if was.workers != now.workers {
        let shown = |w: Option<usize>| w.map_or("one per core".to_owned(), |n| n.to_string());
        return Err(format!(
            "{path}: workers: {} -> {}: read at start only; restart the proxy to change it",
            shown(was.workers),
            shown(now.workers)
        ));
    }
    Ok(())
}

/// Whether the listeners `new` adds to `old` can be bound: a reload naming an address another
/// process holds is refused, as at start, rather than applied with the listener unbound (each
/// worker then only logged it). A bind without `listen`, dropped at once, so nothing reaches
/// it; a port taken between this and the workers' binds is still only logged.
fn new_listeners_bind(new: &Snapshot, old: &Snapshot, path: &str) -> Result<(), String> {
    for (i, l) in new.listeners.iter().enumerate() {
        if old.listeners.iter().any(|o| o.address == l.address) {
            continue;
        }
        if let Err(e) = listener::can_bind(l.address) {
            return Err(format!(
                "{path}: listeners[{i}] ({}): cannot listen on {}: {e}",
                l.name, l.address
            ));
        }
    }
    Ok(())
}

/// Binds listeners that the snapshot has and this worker does not, and closes the ones it no
/// longer has. Unchanged listeners keep their sockets and connections.
fn reconcile_listeners(
    worker: &Rc<Worker>,
    listeners: &mut HashMap<SocketAddr, Bound>,
) -> Result<(), StartError> {
    // Taken first: on a reload this is where a worker lets go of the old snapshot, not at its
    // next request (an idle worker would keep it, and what only it uses, such as a replaced
    // span exporter, alive).
    let snapshot = worker.current();
    if worker.shared.is_draining() {
        return Ok(());
    }
    let wanted: Vec<SocketAddr> = snapshot.listeners.iter().map(|l| l.address).collect();
    listeners.retain(|addr, b| {
        let keep = wanted.contains(addr);
        if !keep {
            tracing::info!(%addr, "listener removed; draining its connections");
            b.stop.send_replace(true);
        }
        keep
    });
    let mut first_error = None;
    for addr in wanted {
        if listeners.contains_key(&addr) {
            continue;
        }
        match listener::bind(addr) {
            Ok(socket) => {
                let (stop, stop_rx) = watch::channel(false);
                busy_poll::spawn(listener::accept_loop(
                    socket,
                    addr,
                    Rc::clone(worker),
                    stop_rx,
                ));
                listeners.insert(addr, Bound { stop });
            }
            Err(source) => {
                first_error.get_or_insert(StartError::Bind { addr, source });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::Trim;

    /// Feeds `Trim` the work done in each second; returns the seconds at which it gave back.
    fn gave_back(seconds: &[u64]) -> Vec<usize> {
        let mut trim = Trim::default();
        let mut polls = 0u64;
        let mut at = Vec::new();
        for (second, done) in seconds.iter().enumerate() {
            polls += done;
            if trim.fell(polls) {
                at.push(second);
            }
        }
        at
    }

    #[test]
    fn memory_goes_back_once_when_work_falls_to_a_quarter() {
        // A burst, then nothing: once, the second after it ended, and not again while idle.
        assert_eq!(gave_back(&[0, 900, 1000, 0, 0, 0]), [3]);
        // A burst, then a trickle: the trickle is the new level.
        assert_eq!(gave_back(&[1000, 250, 240, 260, 250]), [1]);
        // Falling slowly: when it reaches a quarter of the peak.
        assert_eq!(gave_back(&[1000, 800, 600, 400, 250, 200, 0]), [4, 6]);
    }

    #[test]
    fn steady_or_growing_work_never_gives_memory_back() {
        assert_eq!(gave_back(&[0, 0, 0]), Vec::<usize>::new());
        assert_eq!(
            gave_back(&[500, 400, 600, 300, 500, 260]),
            Vec::<usize>::new()
        );
        assert_eq!(gave_back(&[3, 1, 3, 2, 3]), Vec::<usize>::new());
        assert_eq!(gave_back(&[10, 100, 1000, 10_000]), Vec::<usize>::new());
    }
}
