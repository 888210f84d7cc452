//! Per-worker upstream connection pools. Each worker thread owns one `Pool`: no locks, no
//! atomics, no sharing. HTTP/1 connections carry one request at a time and go back to the idle
//! list only when their response body completed; an HTTP/2 connection is shared by the
//! worker's requests to that endpoint, and another is opened when the upstream's concurrent
//! streams are all in use on those open. HTTP/1 connections are driven by the request that holds
//! them ([`crate::http::client1`]); HTTP/2 connections by a task of their own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::http::body::RequestBody;
use crate::http::client1::{self, Conn1, Encoded};
use crate::http::headers::Appended;
use crate::http::stream2::KeepAlive;
use crate::http::{H2_RESETS_KEPT, H2_RESETS_KEPT_FOR};
use crate::resilience::{Admission, Breaker, Limit};
use crate::telemetry::metrics::{Closed, EndpointCounters};
use crate::tls::ClientTls;
use rustls::pki_types::ServerName;
use std::sync::Arc;

/// Why no connection to an endpoint could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect did not finish within the cluster's `connect_timeout`.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The cluster's connect timeout.
        timeout: Duration,
    },
    /// The TCP connect failed (refused, unreachable).
    #[error("connect to {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The cluster's circuit breaker refused: too many connections or pending requests.
    #[error("{addr}: cluster at its max {} (circuit breaker)", limit.name())]
    Overflow {
        /// The endpoint.
        addr: SocketAddr,
        /// Which limit.
        limit: Limit,
    },
    /// The TLS handshake with the endpoint failed (its certificate was refused, or it does not
    /// speak TLS).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// What rustls said.
        source: io::Error,
    },
    /// The HTTP handshake on a new connection failed.
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// What h2 said.
        source: h2::Error,
    },
}

impl ConnectError {
    /// True when the cause was the connect timeout (503 `connect_timeout` rather than
    /// `connect_failed`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }

    /// True when the proxy itself ran out of something (file descriptors, memory, buffers,
    /// local ports) before it could reach the endpoint: not the endpoint's fault.
    pub fn is_local(&self) -> bool {
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        const ENOMEM: i32 = 12;
        const ENOBUFS: i32 = 105;
        const EADDRNOTAVAIL: i32 = 99;
        matches!(self, ConnectError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(EMFILE | ENFILE | ENOMEM | ENOBUFS | EADDRNOTAVAIL)))
    }
}

/// What a pooled connection may be reused for: its endpoint, and the TLS it was opened with.
/// Two clusters may name one address with different TLS (none, another CA, another client
/// certificate), and a reload may change a cluster's: a connection serves only requests that
/// would have opened it the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The endpoint.
    pub addr: SocketAddr,
    /// The address of the cluster's rustls client config, 0 for plain TCP. An open TLS
    /// connection holds its config, so no other config can be allocated at that address while
    /// the connection lives in the pool.
    tls: usize,
}

impl PoolKey {
    /// The key of connections to `addr` opened with `tls`.
    pub fn new(addr: SocketAddr, tls: Option<&ClientTls>) -> PoolKey {
        PoolKey {
            addr,
            tls: tls.map_or(0, |t| Arc::as_ptr(&t.config) as usize),
        }
    }
}

/// How a cluster keeps its upstream connections between requests.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Idle HTTP/1 connections kept per endpoint per worker.
    pub max_idle: usize,
    /// How long a connection may carry no request before it is closed; `None`: until the
    /// upstream closes it.
    pub idle_timeout: Option<Duration>,
    /// Requests a connection carries (HTTP/2: streams opened on it) before it is closed; 0: no
    /// limit.
    pub max_requests: u32,
    /// How long a connection is used for from its opening; `None`: no limit.
    pub max_age: Option<Duration>,
}

impl Keep {
    /// Whether a connection that carried `served` requests may carry no more.
    pub(crate) fn served_enough(&self, served: u32) -> bool {
        self.max_requests != 0 && served >= self.max_requests
    }

    /// Whether a connection opened at `opened` is too old at `now` to carry more.
    fn too_old(&self, opened: Instant, now: Instant) -> bool {
        self.max_age
            .is_some_and(|age| now.saturating_duration_since(opened) >= age)
    }
}

/// What a request needs to reach one endpoint of a cluster: the address, how to connect and
/// within what limits, how its connections are kept, and where they are counted.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// The endpoint.
    pub addr: SocketAddr,
    /// The cluster's `connect_timeout`.
    pub connect_timeout: Duration,
    /// How the cluster keeps its connections.
    pub keep: Keep,
    /// The cluster's circuit breaker, which admits new connections.
    pub breaker: &'a Arc<Breaker>,
    /// The cluster's TLS, if any.
    pub tls: Option<&'a ClientTls>,
    /// The endpoint's counters.
    pub counters: Option<&'a Arc<EndpointCounters>>,
}

/// One worker's connections to every endpoint it talks to.
#[derive(Debug, Default)]
pub struct Pool {
    // Boxed: a connection moves from the list to a request and back, a pointer each time.
    #[allow(clippy::vec_box)]
    http1_idle: RefCell<KeyMap<Vec<Box<Conn1>>>>,
    /// Each endpoint's HTTP/2 connections.
    http2: RefCell<KeyMap<Endpoint2>>,
    /// Where HTTP/1 request heads are encoded, before a connection is picked. Each head is
    /// split off; the room comes back once no written head holds it.
    heads: RefCell<BytesMut>,
}

/// How long before an upstream's announced idle timeout (`Keep-Alive: timeout=`) its idle
/// connection is retired: a second, at most half the timeout. The upstream's clock started as it
/// sent the answer's end, before the proxy had it; and a request sent on a connection as the
/// upstream closes it fails (a body-less idempotent one goes again; the others get 502).
fn retire_margin(timeout: Duration) -> Duration {
    Duration::from_secs(1).min(timeout / 2)
}

/// Counts a connection opened to an endpoint.
fn count_opened(counters: Option<&Arc<EndpointCounters>>) {
    if let Some(c) = counters {
        c.opened();
    }
}

/// Why an idle HTTP/1 connection must close at a sweep at `now`, if it must: its upstream's
/// announced idle timeout is near, it is too old, its upstream closed it, or it carried no request
/// for its cluster's `idle_timeout`.
fn closing_http1(conn: &mut Conn1, now: Instant) -> Option<Closed> {
    let keep = conn.keep();
    if conn.retire_at.is_some_and(|at| now >= at) {
        Some(Closed::UpstreamIdleTimeout)
    } else if keep.too_old(conn.opened, now) {
        Some(Closed::MaxDuration)
    } else if !conn.is_usable() {
        Some(Closed::ClosedIdle)
    } else {
        idled_out(&mut conn.idle_since, now, keep.idle_timeout).then_some(Closed::IdleTimeout)
    }
}

/// Since when a connection carried no request, as a sweep first saw it idle: the clock is
/// read once a second, not at each request, so the connection is closed between its
/// `idle_timeout` and a second later. `None`: not idle at the last sweep.
fn idled_out(since: &mut Option<Instant>, now: Instant, timeout: Option<Duration>) -> bool {
    let Some(timeout) = timeout else {
        return false;
    };
    match since {
        None => {
            *since = Some(now);
            false
        }
        Some(since) => now.saturating_duration_since(*since) >= timeout,
    }
}

/// A map keyed by endpoint address and TLS. The addresses come from the config, not from
/// peers, so a fast unkeyed hash is safe; SipHash cost more than the lookup it guards, twice
/// per request.
type KeyMap<V> = HashMap<PoolKey, V, BuildHasherDefault<AddrHasher>>;

/// FxHash's step (rustc's own hasher) over the words a `SocketAddr` writes: its variant, the
/// address's length and octets, the port. FNV-1a over the same ~22 bytes, one at a time, cost
/// ~55 instructions a lookup.
#[derive(Debug, Default)]
struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            for (to, from) in w.iter_mut().zip(rest) {
                *to = *from;
            }
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Pool {
    /// `parts` and `body` encoded for an HTTP/1 connection, with `appended` after the fields
    /// (see [`client1::encode`]).
    pub fn encode_http1(
        &self,
        parts: &http::request::Parts,
        body: Option<Box<RequestBody>>,
        appended: Appended<'_>,
    ) -> Encoded {
        client1::encode(&mut self.heads.borrow_mut(), parts, body, appended)
    }

    /// An idle HTTP/1 connection to the endpoint that the upstream has not closed, or a new
    /// one (counted in the endpoint's `connections_opened`); always a new one when `fresh` (a
    /// retry after a stale pooled one failed).
    pub async fn http1(&self, dial: Dial<'_>, fresh: bool) -> Result<Box<Conn1>, ConnectError> {
        let key = PoolKey::new(dial.addr, dial.tls);
        if !fresh {
            if let Some(conn) = self.pop_idle_http1(key) {
                return Ok(conn);
            }
        }
        // Boxed: connecting is the rare case, and its future (a TLS handshake's among them)
        // would otherwise make every request's future kilobytes larger, copied at each move.
        let connecting = connect(dial.addr, dial.connect_timeout, dial.breaker, dial.tls);
        let (io, slot) = Box::pin(connecting).await?;
        count_opened(dial.counters);
        Ok(Conn1::new(io, key, dial.keep, slot, dial.counters.cloned()))
    }

    fn pop_idle_http1(&self, key: PoolKey) -> Option<Box<Conn1>> {
        let mut idle = self.http1_idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        // The most recently used first: its socket and buffers are the warmest.
        while let Some(mut conn) = list.pop() {
            // The clock is read only for connections whose upstream announced its timeout.
            let closing = if conn.retire_at.is_some_and(|at| Instant::now() >= at) {
                Closed::UpstreamIdleTimeout
            } else if !conn.is_usable() {
                Closed::ClosedIdle
            } else {
                return Some(conn);
            };
            conn.count_closed(closing);
        }
        None
    }

    /// Closes the idle connections that their upstream closed (or that received bytes nobody
    /// asked for), and those that carried no request for their cluster's `idle_timeout`.
    /// Without the first, a closed connection stayed in CLOSE-WAIT, holding its file descriptor
    /// and its cluster's `max_connections` slot, until a request to that endpoint on this
    /// worker next took a connection (for over 8 minutes in a probe, where the slots they held
    /// made other workers' requests overflow). Without the second, the connections a burst
    /// opened stayed open as long as their upstream let them, and those to an endpoint taken
    /// out of the config for ever. Run every second by the worker.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut idle = self.http1_idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain_mut(|conn| {
                let closing = closing_http1(conn, now);
                if let Some(why) = closing {
                    conn.count_closed(why);
                }
                closing.is_none()
            });
        }
        idle.retain(|_, list| !list.is_empty());
        // An HTTP/2 connection dropped here has no lease (none of its streams is the
        // worker's): dropping its handle closes it, with a `GOAWAY`.
        let mut http2 = self.http2.borrow_mut();
        for endpoint in http2.values_mut() {
            endpoint.conns.retain(|conn| {
                if conn.gone.get() {
                    return false;
                }
                if conn.keep.too_old(conn.opened, now) {
                    // Its streams go on to their end; then it closes, as a retired one.
                    conn.gone.set(true);
                    conn.count_closed(Closed::MaxDuration);
                    return false;
                }
                let idle = conn.idled_out(now);
                if idle {
                    conn.count_closed(Closed::IdleTimeout);
                }
                !idle
            });
        }
        http2.retain(|_, endpoint| !endpoint.conns.is_empty() || endpoint.opening.is_some());
    }

    /// Gives back a connection whose exchange ended cleanly.
    pub fn put_http1(&self, mut conn: Box<Conn1>) {
        let mut idle = self.http1_idle.borrow_mut();
        let list = idle.entry(conn.key()).or_default();
        if list.len() < conn.keep().max_idle {
            conn.idle_since = None;
            conn.retire_at = conn
                .upstream_idle_timeout
                .and_then(|t| Instant::now().checked_add(t - retire_margin(t)));
            list.push(conn);
        }
    }

    /// A stream on one of the worker's HTTP/2 connections to the endpoint: the first opened
    /// that has room for one more of the upstream's concurrent streams
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`) and was not retired ([`Lease2::retire`]), or a new
    /// one when none has (counted in the endpoint's `connections_opened`). One connection at a
    /// time is opened to an endpoint: requests that find none with room while one is being
    /// opened wait for it (a burst opens one, not one each; and the next one if that filled
    /// up), and open their own only if it could not be opened. A connection stays open until
    /// it carried no stream for `idle_timeout` (or its upstream closes it, or sends `GOAWAY`),
    /// not only until its last stream ends: a load at the limit would open and close one by
    /// turns.
    pub async fn http2(&self, dial: Dial<'_>) -> Result<Lease2, ConnectError> {
        let Dial {
            addr,
            connect_timeout,
            keep,
            breaker,
            tls,
            counters,
        } = dial;
        let key = PoolKey::new(addr, tls);
        // The connection this request waited for could not be opened: it opens its own,
        // alongside the others that waited, rather than each trying in turn.
        let mut failed = false;
        let mut opening = loop {
            let wait = {
                let mut pool = self.http2.borrow_mut();
                let endpoint = pool.entry(key).or_default();
                // Closed and retired connections leave the pool; their leases keep them to
                // their end.
                endpoint.conns.retain(|c| !c.gone.get());
                if let Some(conn) = endpoint.conns.iter().find(|c| c.has_room()) {
                    return Ok(Lease2::new(conn));
                }
                // An upstream that allows no stream for now (a limit of 0) is not given a new
                // connection a request: the request waits in that one's queue, as h2 keeps it
                // until the upstream allows streams again (or the route's timeout).
                if let Some(conn) = endpoint.conns.iter().find(|c| c.allows_none()) {
                    return Ok(Lease2::new(conn));
                }
                match &endpoint.opening {
                    _ if failed => break None,
                    // Waits again when the connection it waited for filled up at once.
                    Some(opened) => Rc::clone(opened),
                    None => {
                        let opened = Rc::new(Opened::default());
                        endpoint.opening = Some(Rc::clone(&opened));
                        break Some(Opening {
                            pool: &self.http2,
                            key,
                            opened,
                            failed: false,
                        });
                    }
                }
            };
            // Registered at once, before anything else runs: the opener's wake-up cannot be
            // missed.
            wait.wake.notified().await;
            failed = wait.failed.get();
        };
        // Boxed, as for HTTP/1: only a new connection pays for its future's room.
        let (slot, send, mut conn) = Box::pin(async move {
            let (io, slot) = connect(addr, connect_timeout, breaker, tls).await?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_frame_size(H2_MAX_FRAME)
                .max_header_list_size(H2_MAX_HEADER_LIST)
                .max_send_buffer_size(H2_MAX_SEND_BUFFER)
                .enable_push(false)
                .initial_max_send_streams(H2_ASSUMED_STREAMS)
                .max_concurrent_reset_streams(H2_RESETS_KEPT)
                .reset_stream_duration(H2_RESETS_KEPT_FOR)
                // h2 closes a connection once it has reset 1,024 streams for the peer's
                // errors in its life, and counts among them each `DATA` frame that comes
                // for a stream it reset and forgot: an upstream's answers to clients that
                // left. A defence for servers against clients (rapid resets); an upstream
                // is not that client, and the count closed a busy gRPC connection with its
                // other streams.
                .max_local_error_reset_streams(None)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            Ok::<_, ConnectError>((slot, send, conn))
        })
        .await
        .inspect_err(|_| {
            if let Some(opening) = opening.as_mut() {
                opening.failed = true;
            }
        })?;
        count_opened(counters);
        let upstream = Rc::new(Upstream2 {
            send,
            gone: Cell::new(false),
            streams: Cell::new(0),
            idle_since: Cell::new(None),
            keep,
            opened: Instant::now(),
            served: Cell::new(0),
            counters: counters.cloned(),
        });
        // The task does not hold the connection's handle: it would keep the connection open
        // once the pool and every lease let go of it.
        let pooled = Rc::downgrade(&upstream);
        crate::runtime::busy_poll::spawn(async move {
            let mut keep_alive = conn
                .ping_pong()
                .map(|pings| KeepAlive::new(pings, H2_PING_EVERY, H2_PONG_TIMEOUT));
            let ended = std::future::poll_fn(|cx| {
                if keep_alive.as_mut().is_some_and(|k| k.poll_dead(cx)) {
                    return std::task::Poll::Ready(Ok(false));
                }
                std::future::Future::poll(std::pin::Pin::new(&mut conn), cx).map_ok(|()| true)
            })
            .await;
            match ended {
                Ok(true) => {}
                Ok(false) => tracing::debug!(%addr, "upstream HTTP/2 ping unanswered: closing"),
                Err(e) => tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended"),
            }
            if let Some(upstream) = pooled.upgrade() {
                upstream.gone.set(true);
            }
            drop(slot);
        });
        let lease = Lease2::new(&upstream);
        self.http2
            .borrow_mut()
            .entry(key)
            .or_default()
            .conns
            .push(upstream);
        drop(opening);
        Ok(lease)
    }
}

/// An endpoint's HTTP/2 connections, in the order they were opened, and the one being opened.
#[derive(Debug, Default)]
struct Endpoint2 {
    conns: Vec<Rc<Upstream2>>,
    /// The connection being opened, which requests that find no room wait for.
    opening: Option<Rc<Opened>>,
}

/// How the requests waiting for a connection being opened learn it was (or that it failed).
#[derive(Debug, Default)]
struct Opened {
    wake: tokio::sync::Notify,
    failed: Cell<bool>,
}

/// The right to open an endpoint's next HTTP/2 connection; given up when dropped (the
/// connection is in the pool, or its opening failed), waking the requests that wait for it.
struct Opening<'a> {
    pool: &'a RefCell<KeyMap<Endpoint2>>,
    key: PoolKey,
    opened: Rc<Opened>,
    /// The connection could not be opened. Not set when the request opening it went away
    /// first: then one of the waiting requests opens it instead, not each its own.
    failed: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(endpoint) = self.pool.borrow_mut().get_mut(&self.key) {
            endpoint.opening = None;
        }
        self.opened.failed.set(self.failed);
        self.opened.wake.notify_waiters();
    }
}

/// A worker's HTTP/2 connection to an endpoint: the handle requests open streams with, whether
/// it may take more, and how many of the worker's requests are on it.
#[derive(Debug)]
struct Upstream2 {
    send: h2::client::SendRequest<Bytes>,
    /// No new stream goes on it: it is going away (the upstream sent `GOAWAY`, see
    /// [`Lease2::retire`]) or its task ended.
    gone: Cell<bool>,
    /// Leases held: requests whose stream is open or about to be, until their answer's end.
    streams: Cell<usize>,
    /// Since when no lease was taken nor held, as a sweep saw it; `None` when one was since.
    idle_since: Cell<Option<Instant>>,
    /// The cluster's limits on its connections.
    keep: Keep,
    /// When it was opened.
    opened: Instant,
    /// Streams opened on it (leases taken).
    served: Cell<u32>,
    /// Its endpoint's counters, where its closing is counted.
    counters: Option<Arc<EndpointCounters>>,
}

impl Upstream2 {
    /// Whether one more stream fits in the upstream's concurrent streams. h2 takes the limit
    /// from the upstream's `SETTINGS`, and holds a stream past it until another closes.
    fn has_room(&self) -> bool {
        self.streams.get() < self.send.current_max_send_streams()
    }

    /// Whether the upstream allows no stream on it for now (`SETTINGS_MAX_CONCURRENT_STREAMS`
    /// 0, which a server may send while it cannot take more).
    fn allows_none(&self) -> bool {
        self.send.current_max_send_streams() == 0
    }

    fn count_closed(&self, why: Closed) {
        if let Some(c) = &self.counters {
            c.closed(why);
        }
    }

    /// Whether the connection carried no stream for its `idle_timeout`, at a sweep at `now`.
    fn idled_out(&self, now: Instant) -> bool {
        if self.streams.get() > 0 {
            self.idle_since.set(None);
            return false;
        }
        let mut since = self.idle_since.get();
        let out = idled_out(&mut since, now, self.keep.idle_timeout);
        self.idle_since.set(since);
        out
    }
}

/// One request's stream on a pooled HTTP/2 connection, counted against the upstream's
/// concurrent streams while it is held (by the answer's body, until the answer ends).
#[derive(Debug)]
pub struct Lease2 {
    conn: Rc<Upstream2>,
    /// The connection carried a stream before this one.
    reused: bool,
}

impl Lease2 {
    fn new(conn: &Rc<Upstream2>) -> Self {
        conn.streams.set(conn.streams.get() + 1);
        conn.idle_since.set(None);
        let served = conn.served.get().saturating_add(1);
        conn.served.set(served);
        if conn.keep.served_enough(served) {
            // This stream is its last: it leaves the pool, and closes once its streams end.
            conn.gone.set(true);
            conn.count_closed(Closed::MaxRequests);
        }
        Lease2 {
            conn: Rc::clone(conn),
            reused: served > 1,
        }
    }

    /// Whether the connection carried a stream before this one: one that then ends under this
    /// stream ended for its own reasons (a restart, an idle close), not this request's.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The handle to open the stream with.
    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.conn.send.clone()
    }

    /// Takes the connection out of the pool: it is going away. Its open streams go on to their
    /// end.
    pub fn retire(&self) {
        self.conn.gone.set(true);
    }
}

impl Drop for Lease2 {
    fn drop(&mut self) {
        self.conn.streams.set(self.conn.streams.get() - 1);
    }
}

/// HTTP/2 upstream connections' settings, hyper's client's: the windows the proxy gives an
/// upstream for its answers (per stream, and for the connection), the largest frame and
/// header list it takes, and the most a stream buffers beyond the upstream's window.
const H2_STREAM_WINDOW: u32 = 2 << 20;
const H2_CONNECTION_WINDOW: u32 = 5 << 20;
const H2_MAX_FRAME: u32 = 16 << 10;
const H2_MAX_HEADER_LIST: u32 = 16 << 10;
const H2_MAX_SEND_BUFFER: usize = 1 << 20;
/// The upstream's concurrent streams assumed until its `SETTINGS` say (RFC 9113 6.5.2 advises
/// no fewer than 100; Go's client and nghttp2 assume 100): a burst to a new connection spreads
/// over others past it rather than being refused past the upstream's limit (nginx allows 128).
const H2_ASSUMED_STREAMS: usize = 100;
/// A keep-alive ping every 30 s; an upstream that answers none within 20 s is taken for dead,
/// and the next request opens a new connection.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens a TCP connection within the cluster's limits: the request counts as pending while it
/// connects, and the returned slot counts the connection until dropped.
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    breaker: &Arc<Breaker>,
    tls: Option<&ClientTls>,
) -> Result<(UpstreamIo, Admission), ConnectError> {
    let overflow = |limit| ConnectError::Overflow { addr, limit };
    let _pending = breaker
        .admit(Limit::Pending)
        .ok_or_else(|| overflow(Limit::Pending))?;
    let slot = breaker
        .admit(Limit::Connections)
        .ok_or_else(|| overflow(Limit::Connections))?;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
    };
    // Small request/response exchanges must not wait for Nagle.
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    let Some(tls) = tls else {
        return Ok((UpstreamIo::Plain(stream), slot));
    };
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    // The handshake shares the connect timeout: both are "opening a connection".
    let stream = match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Tls { addr, source }),
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
    };
    Ok((UpstreamIo::Tls(Box::new(stream)), slot))
}

pub use crate::http::conn_io::UpstreamIo;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn an_announced_idle_timeout_retires_a_connection_a_little_before_it() {
        let secs = |s: f64| Duration::from_secs_f64(s);
        assert_eq!(secs(5.0) - retire_margin(secs(5.0)), secs(4.0));
        assert_eq!(secs(1.0) - retire_margin(secs(1.0)), secs(0.5));
        assert_eq!(retire_margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_connection_idles_out_from_the_sweep_that_first_saw_it_idle() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let timeout = Some(Duration::from_secs(2));
        let mut since = None;
        assert!(!idled_out(&mut since, at(0), timeout), "first seen idle");
        assert_eq!(since, Some(at(0)));
        assert!(!idled_out(&mut since, at(1), timeout));
        assert!(idled_out(&mut since, at(2), timeout));
        // `idle_timeout: 0s`: kept as long as the upstream keeps it.
        let mut since = None;
        for secs in [0, 60, 3600] {
            assert!(!idled_out(&mut since, at(secs), None));
        }
    }

    #[test]
    fn running_out_of_descriptors_is_the_proxy_s_own_failure() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let io = |code| ConnectError::Io {
            addr,
            source: io::Error::from_raw_os_error(code),
        };
        assert!(io(24).is_local(), "EMFILE");
        assert!(io(23).is_local(), "ENFILE");
        assert!(!io(111).is_local(), "ECONNREFUSED is the endpoint's");
        assert!(!io(113).is_local(), "EHOSTUNREACH is the network's");
    }

    /// Endpoints that differ only in a port or the last octet (or are the same address in
    /// IPv4 and IPv6 form) do not share a hash: the pool's lookups stay one probe.
    #[test]
    fn endpoint_addresses_hash_apart() {
        let build = BuildHasherDefault::<AddrHasher>::default();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for last in 0..=255u8 {
            for port in [80, 443, 8080, 18081] {
                addrs.push(SocketAddr::from(([10, 0, 0, last], port)));
            }
        }
        addrs.push("[::ffff:10.0.0.1]:80".parse().unwrap());
        addrs.push("[fd00::1]:80".parse().unwrap());
        addrs.push("[fd00::2]:80".parse().unwrap());
        let hashes: HashSet<u64> = addrs.iter().map(|a| build.hash_one(a)).collect();
        assert_eq!(hashes.len(), addrs.len());
    }
}
