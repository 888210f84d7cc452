//! Live per-endpoint state, written by every worker with relaxed atomics: requests in flight,
//! a peak-sensitive latency estimate, and health.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How fast the latency estimate forgets: after `TAU` of silence it weighs 1/e.
const TAU_NANOS: f64 = 10e9;
/// The estimate of an endpoint never measured: small, so new endpoints get tried, but not zero,
/// so they do not take every request before their first answer.
const UNMEASURED_NANOS: f64 = 1e6;

/// Nanoseconds since the first call in this process: a clock all workers share.
pub(super) fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One endpoint's live state.
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicU32,
    /// f64 bits of the latency estimate in nanoseconds; 0 = never measured.
    ewma_nanos: AtomicU64,
    updated_at: AtomicU64,
    healthy: AtomicBool,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointStats {
    /// A healthy endpoint with nothing in flight and no latency measured.
    pub fn new() -> Self {
        EndpointStats {
            in_flight: AtomicU32::new(0),
            ewma_nanos: AtomicU64::new(0),
            updated_at: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    /// Requests sent and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: Arc::clone(self),
        }
    }

    /// Feeds the latency estimate with a response's time to headers.
    pub fn observe_latency(&self, rtt: Duration) {
        self.observe_at(rtt, now_nanos());
    }

    /// Peak-sensitive EWMA: a slower answer than the estimate replaces it at once (react to
    /// trouble now); a faster one pulls it down by how long it has been since the last update.
    pub(super) fn observe_at(&self, rtt: Duration, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed));
        let last = self.updated_at.swap(now, Ordering::Relaxed);
        let next = if prev == 0.0 || rtt > prev {
            rtt
        } else {
            let w = (-(now.saturating_sub(last) as f64) / TAU_NANOS).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_nanos.store(next.to_bits(), Ordering::Relaxed);
    }

    /// The current estimate, decayed for time without answers so a once-slow endpoint is
    /// eventually tried again.
    pub(super) fn latency_cost_at(&self, now: u64) -> f64 {
        let est = f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed));
        if est == 0.0 {
            return UNMEASURED_NANOS;
        }
        let idle = now.saturating_sub(self.updated_at.load(Ordering::Relaxed)) as f64;
        (est * (-idle / TAU_NANOS).exp()).max(1.0)
    }

    /// The latency estimate as last measured (for `/clusters`).
    pub fn ewma_latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed)) as u64)
    }

    /// Marks the endpoint usable or not (health checks, outlier detection).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether balancers may choose it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
