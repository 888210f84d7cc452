//! Resilience: keeping a failing or overloaded upstream from taking the proxy (and its other
//! upstreams) down with it: circuit breaking per cluster (here), retry policy ([`retry`]) and
//! retry budgets ([`budget`]), outlier detection ([`outlier`]) and active health checks
//! ([`health_check`], [`probe`]), with endpoint health kept across reloads ([`store`]).
//!
//! On the data path the breaker is asked before a request is sent (concurrent requests), before
//! a connection is opened (connections) and while a request waits for one (pending). Over a
//! limit the request fails fast with 503 `overflow` instead of queueing behind a struggling
//! upstream. Counts are atomics shared by all workers; each admission is a guard that gives its
//! slot back when dropped.

pub mod grpc_health;
pub mod health_check;
pub mod outlier;
pub mod probe;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::telemetry::metrics::ClusterCounters;
pub use outlier::{Outcome, OutlierDetector};

pub mod budget;
pub mod retry;

/// Which limit a breaker guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Upstream connections open.
    Connections,
    /// Requests waiting for a new connection.
    Pending,
    /// Requests in flight.
    Requests,
    /// Retries in flight.
    Retries,
}

impl Limit {
    /// The label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
            Limit::Retries => "retries",
        }
    }
}

/// A cluster's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    max: [u64; 4],
    active: [AtomicU64; 4],
    counters: Arc<ClusterCounters>,
}

impl Breaker {
    /// A breaker with these limits; overflows are counted in `counters`.
    pub fn new(
        max_connections: u64,
        max_pending: u64,
        max_requests: u64,
        max_retries: u64,
        counters: Arc<ClusterCounters>,
    ) -> Self {
        Breaker {
            max: [max_connections, max_pending, max_requests, max_retries],
            active: Default::default(),
            counters,
        }
    }

    /// Takes a slot of `limit`, or `None` (counted as an overflow) when all are taken.
    pub fn admit(self: &Arc<Self>, limit: Limit) -> Option<Admission> {
        let i = limit as usize;
        let taken = self.active[i].fetch_add(1, Relaxed);
        if taken >= self.max[i] {
            self.active[i].fetch_sub(1, Relaxed);
            self.counters.overflows[i].fetch_add(1, Relaxed);
            return None;
        }
        if limit == Limit::Connections {
            self.counters.connections_active.fetch_add(1, Relaxed);
        }
        Some(Admission {
            breaker: Arc::clone(self),
            limit,
        })
    }

    /// Slots of `limit` taken now.
    pub fn active(&self, limit: Limit) -> u64 {
        self.active[limit as usize].load(Relaxed)
    }
}

/// A slot of a breaker's limit, given back on drop.
#[derive(Debug)]
pub struct Admission {
    breaker: Arc<Breaker>,
    limit: Limit,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.breaker.active[self.limit as usize].fetch_sub(1, Relaxed);
        if self.limit == Limit::Connections {
            self.breaker
                .counters
                .connections_active
                .fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_counted_and_given_back() {
        let counters = Arc::new(ClusterCounters::default());
        let b = Arc::new(Breaker::new(1, 0, 2, 0, Arc::clone(&counters)));
        let one = b.admit(Limit::Requests).unwrap();
        let two = b.admit(Limit::Requests).unwrap();
        assert!(b.admit(Limit::Requests).is_none());
        assert!(
            b.admit(Limit::Pending).is_none(),
            "a limit of 0 admits nothing"
        );
        assert_eq!(b.active(Limit::Requests), 2);
        drop(one);
        assert!(b.admit(Limit::Requests).is_some());
        drop(two);
        assert_eq!(b.active(Limit::Requests), 0);
        assert_eq!(
            counters.overflows[Limit::Requests as usize].load(Relaxed),
            1
        );
        assert_eq!(counters.overflows[Limit::Pending as usize].load(Relaxed), 1);
        let c = b.admit(Limit::Connections).unwrap();
        assert!(b.admit(Limit::Connections).is_none());
        assert_eq!(counters.connections_active.load(Relaxed), 1);
        drop(c);
        assert_eq!(counters.connections_active.load(Relaxed), 0);
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let b = Arc::new(Breaker::new(0, 0, 10, 0, Arc::default()));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(a) = b.admit(Limit::Requests) {
                            peak.fetch_max(b.active(Limit::Requests), Relaxed);
                            drop(a);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Relaxed) <= 10);
        assert_eq!(b.active(Limit::Requests), 0);
    }
}
