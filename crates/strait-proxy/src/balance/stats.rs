//! Live per-endpoint state, written by every worker with relaxed atomics: requests in flight,
//! a peak-sensitive latency estimate, and whether balancers may choose the endpoint.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How fast the latency estimate forgets: after `TAU` of silence it weighs 1/e.
const TAU_NANOS: f64 = 10e9;
/// The estimate of an endpoint never measured: small, so new endpoints get tried, but not zero,
/// so they do not take every request before their first answer.
const UNMEASURED_NANOS: f64 = 1e6;

/// Nanoseconds since the first call in this process: a clock all workers share.
pub(super) fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// [`now_nanos`] of an instant already read.
fn nanos_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_nanos() as u64
}

/// Flag: active health checks failed.
const FAILED_CHECKS: u8 = 1;
/// Flag: ejected by outlier detection.
const EJECTED: u8 = 2;

/// One endpoint's live state.
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicU32,
    /// f64 bits of the latency estimate in nanoseconds; 0 = never measured.
    ewma_nanos: AtomicU64,
    updated_at: AtomicU64,
    /// Why balancers skip it: [`FAILED_CHECKS`] and [`EJECTED`], set and cleared apart so that
    /// one cause ending does not clear the other.
    unusable: AtomicU8,
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
            unusable: AtomicU8::new(0),
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

    /// Feeds the latency estimate with a response's time to headers, the head having arrived
    /// `at` (the caller's clock read, not a second one).
    pub fn observe_latency(&self, rtt: Duration, at: Instant) {
        self.observe_at(rtt, nanos_at(at));
    }

    /// Peak-sensitive EWMA: a slower answer than the estimate replaces it at once (react to
    /// trouble now); a faster one pulls it down by how long it has been since the last update.
    pub(super) fn observe_at(&self, rtt: Duration, now: u64) {
        // Not `as_nanos() as f64`: a `u128` to `f64` is a ~45-instruction library call, paid
        // on every response.
        let rtt = rtt.as_secs_f64() * 1e9;
        let prev = f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed));
        // A load and a store, not a swap: the estimate's own update (load, then store) is not
        // one atomic step either, and a swap is a locked instruction on every response.
        let last = self.updated_at.load(Ordering::Relaxed);
        self.updated_at.store(now, Ordering::Relaxed);
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

    /// Records the verdict of active health checks.
    pub fn set_healthy(&self, healthy: bool) {
        self.set_flag(FAILED_CHECKS, !healthy);
    }

    /// False while active health checks say the endpoint fails.
    pub fn is_healthy(&self) -> bool {
        self.unusable.load(Ordering::Relaxed) & FAILED_CHECKS == 0
    }

    /// Ejects the endpoint (outlier detection) or ends its ejection.
    pub fn set_ejected(&self, ejected: bool) {
        self.set_flag(EJECTED, ejected);
    }

    /// True while outlier detection has the endpoint ejected.
    pub fn is_ejected(&self) -> bool {
        self.unusable.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// Whether balancers may choose it: healthy and not ejected.
    pub fn is_usable(&self) -> bool {
        self.unusable.load(Ordering::Relaxed) == 0
    }

    fn set_flag(&self, flag: u8, on: bool) {
        if on {
            self.unusable.fetch_or(flag, Ordering::Relaxed);
        } else {
            self.unusable.fetch_and(!flag, Ordering::Relaxed);
        }
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
