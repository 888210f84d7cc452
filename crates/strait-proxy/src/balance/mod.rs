//! Endpoint selection: which endpoint of a cluster a request goes to.
//!
//! On the data path this runs after the route chose a cluster and before the worker takes a
//! pooled connection. A cluster's [`Balancer`] is shared by every worker thread, so `pick` takes
//! no lock: schedules and hash tables are built once per config and read-only; live state
//! (requests in flight, latency estimates, health) is atomics in [`EndpointStats`].
//!
//! Every algorithm skips endpoints that are not usable (failing health checks, or ejected by
//! outlier detection) and, when none is usable, fails open to all endpoints (sending to a
//! possibly-bad endpoint beats refusing every request) unless the cluster says to refuse.

mod hash;
mod maglev;
mod ring;
mod stats;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use strait_config::LoadBalancer;

pub use hash::hash_key;
pub(crate) use hash::mix;
pub use stats::{EndpointStats, InFlight};

/// Chooses endpoints for one cluster.
#[derive(Debug)]
pub struct Balancer {
    stats: Box<[Arc<EndpointStats>]>,
    weights: Box<[u32]>,
    strategy: Strategy,
    fail_open: bool,
}

#[derive(Debug)]
enum Strategy {
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    Random {
        cumulative: Box<[u64]>,
    },
    LeastRequest {
        cumulative: Box<[u64]>,
    },
    PeakEwma {
        cumulative: Box<[u64]>,
    },
    RingHash(ring::Ring),
    Maglev(maglev::Table),
}

/// Longest smooth round-robin schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

impl Balancer {
    /// A balancer over endpoints with these weights (config weights 1..=1000), keyed by their
    /// position. Hashing balancers place endpoints by key, so prefer [`Balancer::keyed`] when
    /// endpoints have stable identities: then removing one moves only its own keys.
    pub fn new(kind: LoadBalancer, weights: &[u32]) -> Self {
        let keys: Vec<Vec<u8>> = (0..weights.len())
            .map(|i| i.to_string().into_bytes())
            .collect();
        let keyed: Vec<(&[u8], u32)> = keys
            .iter()
            .map(Vec::as_slice)
            .zip(weights.iter().copied())
            .collect();
        Self::keyed(kind, &keyed)
    }

    /// A balancer over endpoints identified by `key` (e.g. their address) with weights.
    pub fn keyed(kind: LoadBalancer, endpoints: &[(&[u8], u32)]) -> Self {
        Self::sharing(kind, endpoints, Vec::new())
    }

    /// Like [`keyed`](Self::keyed), with each endpoint's live state given, in endpoint order, so
    /// that it outlives this balancer (a reload keeps an endpoint's health and in-flight count).
    /// Endpoints without one get a fresh state.
    pub fn sharing(
        kind: LoadBalancer,
        endpoints: &[(&[u8], u32)],
        stats: Vec<Arc<EndpointStats>>,
    ) -> Self {
        let weights: Box<[u32]> = endpoints.iter().map(|&(_, w)| w.max(1)).collect();
        let mut stats = stats;
        stats.resize_with(endpoints.len(), Arc::default);
        let stats: Box<[Arc<EndpointStats>]> = stats.into();
        let cumulative = || cumulative(&weights);
        let strategy = match kind {
            LoadBalancer::Random => Strategy::Random {
                cumulative: cumulative(),
            },
            LoadBalancer::LeastRequest => Strategy::LeastRequest {
                cumulative: cumulative(),
            },
            LoadBalancer::PeakEwma => Strategy::PeakEwma {
                cumulative: cumulative(),
            },
            LoadBalancer::RingHash => Strategy::RingHash(ring::Ring::build(endpoints)),
            LoadBalancer::Maglev => Strategy::Maglev(maglev::Table::build(endpoints)),
            _ => Strategy::RoundRobin {
                schedule: smooth_schedule(&weights),
                // Workers and restarts should not all start on endpoint 0.
                next: AtomicUsize::new(fastrand::usize(..)),
            },
        };
        Balancer {
            stats,
            weights,
            strategy,
            fail_open: true,
        }
    }

    /// What `pick` does when no endpoint is usable: `true` (the default) treats all as usable,
    /// `false` picks none.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// True when no endpoint is usable and `pick` therefore chooses among all of them.
    pub fn is_failing_open(&self) -> bool {
        self.fail_open && !self.stats.iter().any(|s| s.is_usable())
    }

    /// Index of the chosen endpoint. `hash` is the request's hashed key for `ring_hash` and
    /// `maglev` (`None`: spread at random). `None` when there are no endpoints, or none is usable
    /// and the balancer does not fail open.
    pub fn pick(&self, hash: Option<u64>) -> Option<usize> {
        self.pick_excluding(hash, usize::MAX)
    }

    /// Like [`pick`](Self::pick) but avoids `exclude` when another usable endpoint exists (a
    /// retry should go elsewhere).
    pub fn pick_excluding(&self, hash: Option<u64>, exclude: usize) -> Option<usize> {
        if self.stats.is_empty() {
            return None;
        }
        // Fail open: with no usable endpoint, treat all as usable (or refuse).
        let all = !self.stats.iter().any(|s| s.is_usable());
        if all && !self.fail_open {
            return None;
        }
        // One endpoint (a sidecar's application, a service's address) is the answer whatever
        // the strategy: excluded, it is still better than nothing (below).
        if self.stats.len() == 1 {
            return Some(0);
        }
        let eligible = |i: usize| all || self.stats.get(i).is_some_and(|s| s.is_usable());
        let usable = |i: usize| i != exclude && eligible(i);
        let chosen = match &self.strategy {
            Strategy::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let found = (0..schedule.len()).find_map(|k| {
                    let i = *schedule.get((start + k) % schedule.len())? as usize;
                    usable(i).then_some((k, i))
                });
                // The turns passed over are used up: left, the next pick would land on them
                // and pass to the same endpoint again, which would take every turn of the
                // endpoints before it in the schedule as well as its own.
                if let Some((skipped @ 1.., _)) = found {
                    next.fetch_add(skipped, Ordering::Relaxed);
                }
                found.map(|(_, i)| i)
            }
            Strategy::Random { cumulative } => self.weighted_random(cumulative, &usable),
            Strategy::LeastRequest { cumulative } => {
                self.two_choices(cumulative, &usable, |s, w| f64::from(s.in_flight()) / w)
            }
            Strategy::PeakEwma { cumulative } => {
                let now = stats::now_nanos();
                self.two_choices(cumulative, &usable, |s, w| {
                    s.latency_cost_at(now) * (f64::from(s.in_flight()) + 1.0) / w
                })
            }
            Strategy::RingHash(ring) => {
                ring.find(hash.unwrap_or_else(|| fastrand::u64(..)), &usable)
            }
            Strategy::Maglev(table) => {
                table.find(hash.unwrap_or_else(|| fastrand::u64(..)), &usable)
            }
        };
        // Every candidate was excluded: the excluded one is better than nothing.
        chosen.or_else(|| (exclude < self.stats.len() && eligible(exclude)).then_some(exclude))
    }

    fn weighted_random(&self, cumulative: &[u64], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..4 {
            let i = weighted_index(cumulative, fastrand::u64(..));
            if usable(i) {
                return Some(i);
            }
        }
        // Few usable endpoints: scan from a random start so the choice stays spread.
        let n = self.stats.len();
        let start = fastrand::usize(..n);
        (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
    }

    /// Power of two choices: two weighted-random usable endpoints, the one of lower cost.
    fn two_choices(
        &self,
        cumulative: &[u64],
        usable: &dyn Fn(usize) -> bool,
        cost: impl Fn(&EndpointStats, f64) -> f64,
    ) -> Option<usize> {
        let a = self.weighted_random(cumulative, usable)?;
        let mut b = self.weighted_random(cumulative, usable)?;
        if a == b {
            if let Some(other) = self.weighted_random(cumulative, &|i| i != a && usable(i)) {
                b = other;
            }
        }
        let cost_of = |i: usize| {
            let w = f64::from(self.weights.get(i).copied().unwrap_or(1));
            self.stats.get(i).map_or(f64::INFINITY, |s| cost(s, w))
        };
        Some(if cost_of(b) < cost_of(a) { b } else { a })
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// True when the cluster has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Live state of an endpoint.
    pub fn stats(&self, endpoint: usize) -> Option<&EndpointStats> {
        self.stats.get(endpoint).map(|s| &**s)
    }

    /// Live state of an endpoint, shareable (for [`EndpointStats::start_request`]).
    pub fn stats_arc(&self, endpoint: usize) -> Option<&Arc<EndpointStats>> {
        self.stats.get(endpoint)
    }
}

fn cumulative(weights: &[u32]) -> Box<[u64]> {
    weights
        .iter()
        .scan(0u64, |sum, &w| {
            *sum += u64::from(w);
            Some(*sum)
        })
        .collect()
}

/// The endpoint whose cumulative-weight interval holds `random % total`.
fn weighted_index(cumulative: &[u64], random: u64) -> usize {
    let total = cumulative.last().copied().unwrap_or(1).max(1);
    let point = random % total;
    cumulative
        .partition_point(|&c| c <= point)
        .min(cumulative.len().saturating_sub(1))
}

/// nginx's smooth weighted round robin, run once at build time: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c. Weight sums above [`MAX_SCHEDULE`] are scaled down
/// (every endpoint keeps at least one slot).
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scaled: Vec<i64> = if total > MAX_SCHEDULE {
        weights
            .iter()
            .map(|&w| ((u64::from(w) * MAX_SCHEDULE / total).max(1)) as i64)
            .collect()
    } else {
        weights.iter().map(|&w| i64::from(w)).collect()
    };
    let sum: i64 = scaled.iter().sum();
    let mut current = vec![0i64; scaled.len()];
    let mut schedule = Vec::with_capacity(sum as usize);
    for _ in 0..sum {
        for (c, w) in current.iter_mut().zip(&scaled) {
            *c += w;
        }
        let best = current
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.cmp(b).then(ib.cmp(ia)))
            .map_or(0, |(i, _)| i);
        if let Some(c) = current.get_mut(best) {
            *c -= sum;
        }
        schedule.push(best as u32);
    }
    schedule.into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
