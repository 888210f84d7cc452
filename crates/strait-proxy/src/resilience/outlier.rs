//! Outlier detection (passive health). On the data path, after an upstream answers (or fails
//! to), the request reports the outcome with [`OutlierDetector::observe`]: a few relaxed atomic
//! additions, no lock. When an endpoint reaches a consecutive-failure threshold the request also
//! sends its index down a channel (lock-free) to the cluster's task on the control thread,
//! which alone decides ejections and returns, so the percent cap needs no coordination between
//! workers. Every interval that task also compares success rates.
//!
//! An ejected endpoint is flagged in its [`EndpointStats`], which every balancer reads; the flag
//! is separate from the health-check one, so neither clears the other.
//!
//! The decision rules (thresholds, ejection time growth, the percent cap, success-rate
//! statistics) are plain functions and methods over plain values, tested below.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::balance::EndpointStats;
use crate::telemetry::metrics::{ClusterCounters, EndpointCounters};

/// How a request to an endpoint ended, as far as outlier detection cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint answered with this HTTP status.
    Status(u16),
    /// No connection could be made: refused, unreachable, connect timeout, failed handshake.
    ConnectFailed,
    /// The connection closed or was reset before a complete response head.
    Reset,
    /// No response head within the route's timeout.
    Timeout,
}

/// What an outcome counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Success,
    /// A 5xx that is not a gateway error (500, 501, 505, ...).
    ServerError,
    /// 502, 503, 504, or a failure to connect, a reset, a timeout: counts as a 5xx too.
    GatewayError,
}

impl From<http::StatusCode> for Outcome {
    fn from(status: http::StatusCode) -> Self {
        Outcome::Status(status.as_u16())
    }
}

impl Outcome {
    fn class(self) -> Class {
        match self {
            Outcome::Status(502..=504) => Class::GatewayError,
            Outcome::Status(500..=599) => Class::ServerError,
            Outcome::Status(_) => Class::Success,
            Outcome::ConnectFailed | Outcome::Reset | Outcome::Timeout => Class::GatewayError,
        }
    }
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_5xx` answers in a row were 5xx.
    Consecutive5xx,
    /// `consecutive_gateway_errors` answers in a row were gateway errors.
    ConsecutiveGatewayErrors,
    /// Its success rate was far below the cluster's.
    SuccessRate,
}

impl Reason {
    /// Every reason, in the order of [`Reason::index`].
    pub const ALL: [Reason; 3] = [
        Reason::Consecutive5xx,
        Reason::ConsecutiveGatewayErrors,
        Reason::SuccessRate,
    ];

    /// The label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            Reason::SuccessRate => "success_rate",
        }
    }

    /// Position in [`Reason::ALL`] (and in per-reason counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A cluster's outlier detection settings, from its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// 5xx in a row that eject; 0 disables.
    pub consecutive_5xx: u32,
    /// Gateway errors in a row that eject; 0 disables.
    pub consecutive_gateway_errors: u32,
    /// How often success rates are compared.
    pub interval: Duration,
    /// Standard deviations below the mean that eject; 0 disables success-rate ejection.
    pub success_rate_stdev_factor: f64,
    /// Endpoints with enough volume needed to compare rates.
    pub success_rate_minimum_hosts: u32,
    /// Answers in an interval an endpoint needs for its rate to count.
    pub success_rate_request_volume: u32,
    /// Length of a first ejection.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent of the cluster.
    pub max_ejection_percent: u32,
}

impl Policy {
    /// The policy a config asks for.
    pub fn from_config(c: &strait_config::OutlierDetection) -> Self {
        Policy {
            consecutive_5xx: c.consecutive_5xx,
            consecutive_gateway_errors: c.consecutive_gateway_errors,
            interval: c.interval.get(),
            success_rate_stdev_factor: c.success_rate_stdev_factor,
            success_rate_minimum_hosts: c.success_rate_minimum_hosts,
            success_rate_request_volume: c.success_rate_request_volume,
            base_ejection_time: c.base_ejection_time.get(),
            max_ejection_time: c.max_ejection_time.get(),
            max_ejection_percent: c.max_ejection_percent,
        }
    }

    /// True when success rates are compared (and requests therefore counted for them).
    pub fn compares_success_rates(&self) -> bool {
        self.success_rate_stdev_factor > 0.0
    }

    /// How long the `times`-th ejection lasts: `base × times`, at most the maximum.
    pub fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(times.max(1))
            .min(self.max_ejection_time)
    }

    /// Most endpoints of a cluster of `endpoints` that may be ejected at once: the percent,
    /// rounded down, but at least one when the cluster has two or more (so the default 10 %
    /// still acts on small clusters) and the percent is above 0. A lone endpoint is ejected only
    /// with 100 %.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        let percent = self.max_ejection_percent.min(100) as usize;
        let share = endpoints.saturating_mul(percent) / 100;
        if percent > 0 && endpoints >= 2 {
            share.max(1)
        } else {
            share
        }
    }

    /// The ejection count after `since` (when the endpoint last returned) up to `now`: one
    /// less per whole `base_ejection_time` spent in.
    pub fn decayed(&self, times: u32, since: Instant, now: Instant) -> u32 {
        let base = self.base_ejection_time.as_nanos().max(1);
        let periods = now.saturating_duration_since(since).as_nanos() / base;
        times.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
    }
}

/// Indices of the endpoints whose success rate is below the mean by more than `factor`
/// standard deviations (population). `samples` is `(successes, answers)` per endpoint; only
/// endpoints with at least `volume` answers take part, and nothing is ejected unless at least
/// `minimum_hosts` do.
pub fn success_rate_outliers(
    samples: &[(u64, u64)],
    volume: u32,
    minimum_hosts: u32,
    factor: f64,
) -> Vec<usize> {
    let volume = u64::from(volume.max(1));
    let rates: Vec<(usize, f64)> = samples
        .iter()
        .enumerate()
        .filter(|(_, &(_, answers))| answers >= volume)
        .map(|(i, &(successes, answers))| (i, successes.min(answers) as f64 / answers as f64))
        .collect();
    if rates.is_empty() || rates.len() < minimum_hosts as usize || factor <= 0.0 {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|&(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|&(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - factor * variance.sqrt();
    rates
        .into_iter()
        .filter(|&(_, r)| r < threshold)
        .map(|(i, _)| i)
        .collect()
}

/// Ejection bookkeeping of one endpoint; written by the control thread only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ejection {
    /// Ejections so far, before decay (see [`Policy::decayed`]).
    pub times: u32,
    /// When the current ejection ends; `None` when not ejected.
    pub until: Option<Instant>,
    /// When the endpoint last returned, for decay.
    pub returned: Option<Instant>,
}

/// What outlier detection knows of one endpoint, kept across reloads.
#[derive(Debug, Default)]
pub struct OutlierRecord {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_errors: AtomicU32,
    answers: AtomicU64,
    successes: AtomicU64,
    /// Locked by the control thread only, never by a request.
    ejection: Mutex<Ejection>,
}

impl OutlierRecord {
    /// The ejection bookkeeping.
    pub fn ejection(&self) -> Ejection {
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_ejection(&self, e: Ejection) {
        *self.ejection.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Forgets every failure counted, so the endpoint starts afresh.
    fn reset_counts(&self) {
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway_errors.store(0, Relaxed);
        self.answers.store(0, Relaxed);
        self.successes.store(0, Relaxed);
    }
}

/// One endpoint as outlier detection sees it.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Where the ejection flag goes, read by balancers.
    pub stats: Arc<EndpointStats>,
    /// Failure counts and ejection bookkeeping.
    pub record: Arc<OutlierRecord>,
    /// Ejections are counted here.
    pub counters: Arc<EndpointCounters>,
}

/// A cluster's outlier detection: counts outcomes for the request path, and ejects and returns
/// endpoints for the control thread.
#[derive(Debug)]
pub struct OutlierDetector {
    policy: Option<Policy>,
    endpoints: Box<[Watched]>,
    /// Ejections refused by the percent cap are counted here.
    cluster: Arc<ClusterCounters>,
    /// Endpoints that reached a threshold, to the control thread.
    signal: Option<mpsc::UnboundedSender<(usize, Reason)>>,
    signals: Mutex<Option<mpsc::UnboundedReceiver<(usize, Reason)>>>,
}

/// What became of an ejection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejected {
    /// Ejected until this time.
    Until(Instant),
    /// It already was.
    Already,
    /// The percent cap refused it.
    OverCap,
}

impl OutlierDetector {
    /// Detection over `endpoints` (in the cluster's endpoint order) by `policy`; `None` detects
    /// nothing and `observe` returns at once.
    pub fn new(
        policy: Option<Policy>,
        endpoints: Vec<Watched>,
        cluster: Arc<ClusterCounters>,
    ) -> Self {
        let (signal, signals) = match policy {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        OutlierDetector {
            policy,
            endpoints: endpoints.into(),
            cluster,
            signal,
            signals: Mutex::new(signals),
        }
    }

    /// The policy, when detection is on.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// The endpoints watched, in endpoint order.
    pub fn endpoints(&self) -> &[Watched] {
        &self.endpoints
    }

    /// Reports how a request to `endpoint` (its index in the cluster) ended. Called on the
    /// request path: atomics only, and a lock-free channel send when a threshold is reached.
    #[inline]
    pub fn observe(&self, endpoint: usize, outcome: impl Into<Outcome>) {
        let (Some(policy), Some(watched)) = (&self.policy, self.endpoints.get(endpoint)) else {
            return;
        };
        let record = &*watched.record;
        let class = outcome.into().class();
        if policy.compares_success_rates() {
            record.answers.fetch_add(1, Relaxed);
            if class == Class::Success {
                record.successes.fetch_add(1, Relaxed);
            }
        }
        match class {
            Class::Success => {
                reset(&record.consecutive_5xx);
                reset(&record.consecutive_gateway_errors);
            }
            Class::ServerError => {
                reset(&record.consecutive_gateway_errors);
                if reached(&record.consecutive_5xx, policy.consecutive_5xx) {
                    self.signal(endpoint, Reason::Consecutive5xx);
                }
            }
            Class::GatewayError => {
                // Both counts move; one signal names the more telling reason.
                let gateway = reached(
                    &record.consecutive_gateway_errors,
                    policy.consecutive_gateway_errors,
                );
                let any = reached(&record.consecutive_5xx, policy.consecutive_5xx);
                if gateway {
                    self.signal(endpoint, Reason::ConsecutiveGatewayErrors);
                } else if any {
                    self.signal(endpoint, Reason::Consecutive5xx);
                }
            }
        }
    }

    /// Asks the control thread to eject `endpoint` (it may refuse; then it takes a threshold's
    /// worth of failures more to ask again).
    fn signal(&self, endpoint: usize, reason: Reason) {
        if let Some(signal) = &self.signal {
            // Fails only when no task listens (an old config's detector): nothing to do.
            let _ = signal.send((endpoint, reason));
        }
    }

    /// The receiving end of threshold signals, for the control thread; the first caller gets
    /// it.
    pub fn take_signals(&self) -> Option<mpsc::UnboundedReceiver<(usize, Reason)>> {
        self.signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        self.endpoints
            .iter()
            .filter(|w| w.stats.is_ejected())
            .count()
    }

    /// Ejects `endpoint` for `reason` unless it already is or the percent cap forbids it.
    /// Control thread only.
    pub fn eject(&self, endpoint: usize, reason: Reason, now: Instant) -> Ejected {
        let (Some(policy), Some(w)) = (&self.policy, self.endpoints.get(endpoint)) else {
            return Ejected::Already;
        };
        if w.stats.is_ejected() {
            return Ejected::Already;
        }
        if self.ejected() >= policy.max_ejected(self.endpoints.len()) {
            self.cluster.ejections_overflow.fetch_add(1, Relaxed);
            return Ejected::OverCap;
        }
        let before = w.record.ejection();
        let times = match before.returned {
            Some(since) => policy.decayed(before.times, since, now),
            None => before.times,
        }
        .saturating_add(1);
        let until = later(now, policy.ejection_time(times));
        w.record.set_ejection(Ejection {
            times,
            until: Some(until),
            returned: before.returned,
        });
        w.stats.set_ejected(true);
        if let Some(n) = w.counters.ejections.get(reason.index()) {
            n.fetch_add(1, Relaxed);
        }
        Ejected::Until(until)
    }

    /// Brings back the endpoints whose ejection time is up, with their counts reset so they
    /// must fail afresh, adding their indices to `returned`; returns when the next one is due.
    /// Control thread only.
    pub fn return_due(&self, now: Instant, returned: &mut Vec<usize>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (i, w) in self.endpoints.iter().enumerate() {
            let e = w.record.ejection();
            match e.until {
                Some(until) if until <= now => {
                    w.record.reset_counts();
                    w.record.set_ejection(Ejection {
                        until: None,
                        returned: Some(now),
                        ..e
                    });
                    w.stats.set_ejected(false);
                    returned.push(i);
                }
                Some(until) => next = Some(next.map_or(until, |n| n.min(until))),
                None => {
                    // Ejected by an earlier config's task that stopped before the return: the
                    // flag without a time is ended now.
                    if w.stats.is_ejected() {
                        w.stats.set_ejected(false);
                    }
                }
            }
        }
        next
    }

    /// Compares the success rates of the interval that just ended, ejects the outliers, and
    /// starts a new interval; returns the outliers and what became of each. Control thread
    /// only.
    pub fn compare_success_rates(&self, now: Instant) -> Vec<(usize, Ejected)> {
        let Some(policy) = &self.policy else {
            return Vec::new();
        };
        let samples: Vec<(u64, u64)> = self
            .endpoints
            .iter()
            .map(|w| {
                // Successes first: a racing answer may then count as a failure, never as a
                // success above the answers.
                let successes = w.record.successes.swap(0, Relaxed);
                (successes, w.record.answers.swap(0, Relaxed))
            })
            .collect();
        if !policy.compares_success_rates() {
            return Vec::new();
        }
        success_rate_outliers(
            &samples,
            policy.success_rate_request_volume,
            policy.success_rate_minimum_hosts,
            policy.success_rate_stdev_factor,
        )
        .into_iter()
        .map(|i| (i, self.eject(i, Reason::SuccessRate, now)))
        .collect()
    }

    /// Ends every ejection and forgets every count: for a cluster whose config no longer asks
    /// for outlier detection.
    pub fn release_all(&self) {
        for w in self.endpoints.iter() {
            if w.stats.is_ejected() || w.record.ejection() != Ejection::default() {
                w.stats.set_ejected(false);
                w.record.set_ejection(Ejection::default());
            }
            w.record.reset_counts();
        }
    }
}

/// `now + d`, without the panic of `+` on overflow. Config durations are at most a year (the
/// parser refuses more), far inside `Instant`'s range, so the fallback is never taken.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// Counts one more failure in a row; true when that reaches `threshold` (0: never), and then
/// the count starts again.
fn reached(counter: &AtomicU32, threshold: u32) -> bool {
    if threshold == 0 {
        return false;
    }
    let reached = counter.fetch_add(1, Relaxed).saturating_add(1) >= threshold;
    if reached {
        counter.store(0, Relaxed);
    }
    reached
}

/// Zeroes a counter, without a write when it already is (most answers succeed, and a write
/// would bounce the cache line between workers).
fn reset(counter: &AtomicU32) {
    if counter.load(Relaxed) != 0 {
        counter.store(0, Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_config(&strait_config::OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            interval: strait_config::Duration::from_secs(10),
            success_rate_stdev_factor: 1.0,
            success_rate_minimum_hosts: 3,
            success_rate_request_volume: 10,
            base_ejection_time: strait_config::Duration::from_secs(30),
            max_ejection_time: strait_config::Duration::from_secs(100),
            max_ejection_percent: 50,
        })
    }

    fn detector(policy: Policy, n: usize) -> OutlierDetector {
        let endpoints = (0..n)
            .map(|_| Watched {
                stats: Arc::default(),
                record: Arc::default(),
                counters: Arc::default(),
            })
            .collect();
        OutlierDetector::new(Some(policy), endpoints, Arc::default())
    }

    fn signalled(rx: &mut mpsc::UnboundedReceiver<(usize, Reason)>) -> Vec<(usize, Reason)> {
        let mut out = Vec::new();
        while let Ok(s) = rx.try_recv() {
            out.push(s);
        }
        out
    }

    #[test]
    fn outcomes_are_classified_like_envoy() {
        assert_eq!(Outcome::from(http::StatusCode::OK).class(), Class::Success);
        assert_eq!(Outcome::Status(404).class(), Class::Success);
        assert_eq!(Outcome::Status(500).class(), Class::ServerError);
        assert_eq!(Outcome::Status(501).class(), Class::ServerError);
        for s in [502, 503, 504] {
            assert_eq!(Outcome::Status(s).class(), Class::GatewayError);
        }
        for o in [Outcome::ConnectFailed, Outcome::Reset, Outcome::Timeout] {
            assert_eq!(o.class(), Class::GatewayError);
        }
    }

    #[test]
    fn thresholds_signal_once_then_count_again() {
        let d = detector(policy(), 2);
        let mut rx = d.take_signals().unwrap();
        assert!(d.take_signals().is_none(), "one task takes the signals");
        d.observe(0, Outcome::Status(500));
        d.observe(0, Outcome::Status(500));
        assert!(signalled(&mut rx).is_empty());
        d.observe(0, Outcome::Status(500));
        assert_eq!(signalled(&mut rx), [(0, Reason::Consecutive5xx)]);
        // A success between failures starts the count again.
        d.observe(0, Outcome::Status(500));
        d.observe(0, Outcome::Status(200));
        d.observe(0, Outcome::Status(500));
        d.observe(0, Outcome::Status(500));
        assert!(signalled(&mut rx).is_empty());
        d.observe(0, Outcome::Status(500));
        assert_eq!(signalled(&mut rx), [(0, Reason::Consecutive5xx)]);
        // Gateway errors count toward both; a plain 500 breaks a run of gateway errors.
        d.observe(1, Outcome::ConnectFailed);
        d.observe(1, Outcome::Status(500));
        d.observe(1, Outcome::Status(503));
        assert_eq!(signalled(&mut rx), [(1, Reason::Consecutive5xx)]);
        d.observe(1, Outcome::Reset);
        assert_eq!(signalled(&mut rx), [(1, Reason::ConsecutiveGatewayErrors)]);
        // Out of range endpoints are ignored, not a panic.
        d.observe(7, Outcome::Timeout);

        // Both thresholds reached by one answer: one signal, the gateway one.
        let mut p = policy();
        p.consecutive_5xx = 2;
        let d = detector(p, 1);
        let mut rx = d.take_signals().unwrap();
        d.observe(0, Outcome::Timeout);
        d.observe(0, Outcome::Status(504));
        assert_eq!(signalled(&mut rx), [(0, Reason::ConsecutiveGatewayErrors)]);
    }

    #[test]
    fn a_zero_threshold_is_off_and_no_policy_observes_nothing() {
        let mut p = policy();
        p.consecutive_5xx = 0;
        let d = detector(p, 1);
        let mut rx = d.take_signals().unwrap();
        for _ in 0..10 {
            d.observe(0, Outcome::Status(500));
        }
        assert!(signalled(&mut rx).is_empty());
        let off = OutlierDetector::new(None, Vec::new(), Arc::default());
        off.observe(0, Outcome::Timeout);
        assert!(off.take_signals().is_none());
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_maximum() {
        let p = policy();
        assert_eq!(p.ejection_time(0), Duration::from_secs(30));
        assert_eq!(p.ejection_time(1), Duration::from_secs(30));
        assert_eq!(p.ejection_time(3), Duration::from_secs(90));
        assert_eq!(p.ejection_time(4), Duration::from_secs(100));
        assert_eq!(p.ejection_time(u32::MAX), Duration::from_secs(100));
    }

    #[test]
    fn the_ejection_count_decays_while_the_endpoint_stays_in() {
        let p = policy();
        let t0 = Instant::now();
        assert_eq!(p.decayed(3, t0, t0 + Duration::from_secs(29)), 3);
        assert_eq!(p.decayed(3, t0, t0 + Duration::from_secs(30)), 2);
        assert_eq!(p.decayed(3, t0, t0 + Duration::from_secs(95)), 0);
        assert_eq!(
            p.decayed(3, t0 + Duration::from_secs(5), t0),
            3,
            "clock order"
        );
    }

    #[test]
    fn the_percent_cap_rounds_down_but_lets_one_go() {
        let mut p = policy();
        for (percent, endpoints, max) in [
            (10, 1, 0),
            (10, 2, 1),
            (10, 10, 1),
            (10, 25, 2),
            (50, 5, 2),
            (50, 1, 0),
            (100, 1, 1),
            (100, 4, 4),
            (0, 10, 0),
            (33, 3, 1),
            (34, 3, 1),
            (67, 3, 2),
        ] {
            p.max_ejection_percent = percent;
            assert_eq!(p.max_ejected(endpoints), max, "{percent}% of {endpoints}");
        }
    }

    #[test]
    fn ejections_respect_the_cap_grow_and_end() {
        let d = detector(policy(), 4);
        let t0 = Instant::now();
        assert_eq!(
            d.eject(0, Reason::Consecutive5xx, t0),
            Ejected::Until(t0 + Duration::from_secs(30))
        );
        assert_eq!(d.eject(0, Reason::Consecutive5xx, t0), Ejected::Already);
        assert!(matches!(
            d.eject(1, Reason::SuccessRate, t0),
            Ejected::Until(_)
        ));
        assert_eq!(
            d.eject(2, Reason::Consecutive5xx, t0),
            Ejected::OverCap,
            "50 % of 4"
        );
        assert_eq!(d.ejected(), 2);
        assert_eq!(d.cluster.ejections_overflow.load(Relaxed), 1);
        assert!(!d.endpoints[0].stats.is_usable());

        // Counts kept while ejected are forgotten on return.
        d.endpoints[0].record.consecutive_5xx.store(2, Relaxed);
        let mut back = Vec::new();
        assert_eq!(
            d.return_due(t0 + Duration::from_secs(10), &mut back),
            Some(t0 + Duration::from_secs(30))
        );
        assert!(back.is_empty());
        assert_eq!(d.return_due(t0 + Duration::from_secs(30), &mut back), None);
        assert_eq!(back, [0, 1]);
        assert_eq!(d.ejected(), 0);
        assert_eq!(d.endpoints[0].record.consecutive_5xx.load(Relaxed), 0);

        // Ejected again soon after: twice as long. Much later: the count has decayed.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(
            d.eject(0, Reason::ConsecutiveGatewayErrors, t1),
            Ejected::Until(t1 + Duration::from_secs(60))
        );
        d.return_due(t1 + Duration::from_secs(60), &mut back);
        let t2 = t1 + Duration::from_secs(60 + 90);
        assert_eq!(
            d.eject(0, Reason::Consecutive5xx, t2),
            Ejected::Until(t2 + Duration::from_secs(30))
        );
        let c = &d.endpoints[0].counters.ejections;
        assert_eq!(
            c.iter().map(|n| n.load(Relaxed)).collect::<Vec<_>>(),
            [2, 1, 0]
        );
        d.release_all();
        assert_eq!(d.ejected(), 0);
        assert_eq!(d.endpoints[0].record.ejection(), Ejection::default());
    }

    #[test]
    fn a_lone_endpoint_is_not_ejected_below_100_percent() {
        let d = detector(policy(), 1);
        assert_eq!(
            d.eject(0, Reason::Consecutive5xx, Instant::now()),
            Ejected::OverCap
        );
    }

    #[test]
    fn success_rate_math() {
        // One endpoint at 0 % among three at 100 %: mean 75, stdev 43.3.
        let samples = [(100, 100), (0, 100), (100, 100), (100, 100)];
        assert_eq!(success_rate_outliers(&samples, 10, 3, 1.0), [1]);
        assert!(
            success_rate_outliers(&samples, 10, 3, 1.9).is_empty(),
            "75 - 1.9 × 43.3 = -7.3: nothing is below"
        );
        // Among five, the failing one stands out even at the default factor: 80 - 1.9 × 40 = 4.
        let five = [(100, 100), (0, 100), (100, 100), (100, 100), (100, 100)];
        assert_eq!(success_rate_outliers(&five, 10, 5, 1.9), [1]);
        let three = [(100, 100), (0, 100), (100, 100)];
        assert!(
            success_rate_outliers(&three, 10, 3, 1.9).is_empty(),
            "66.7 - 1.9 × 47.1 < 0: too few hosts for that factor"
        );
        assert_eq!(success_rate_outliers(&three, 10, 3, 1.0), [1]);
        // Too little volume, or too few hosts with it: nothing.
        assert!(success_rate_outliers(&[(9, 9), (0, 9), (9, 9)], 10, 3, 1.0).is_empty());
        assert!(success_rate_outliers(&three, 10, 4, 1.0).is_empty());
        // Equal rates have no outlier; a disabled factor never ejects.
        assert!(success_rate_outliers(&[(50, 100); 5], 10, 3, 1.0).is_empty());
        assert!(success_rate_outliers(&three, 10, 3, 0.0).is_empty());
        // Hostile counts (more successes than answers, zero volume) are clamped, not a panic.
        assert!(success_rate_outliers(&[(500, 100), (0, 0)], 0, 1, 1.0).is_empty());
    }

    #[test]
    fn success_rates_eject_through_the_cap_and_start_a_new_interval() {
        let d = detector(policy(), 4);
        for i in 0..4 {
            for _ in 0..20 {
                let status = if i == 2 { 500 } else { 200 };
                // Failures spread so no consecutive threshold matters here.
                d.observe(i, Outcome::Status(status));
                d.observe(i, Outcome::Status(200));
            }
        }
        // Endpoint 2: 50 %, the others 100 %.
        let ejected = d.compare_success_rates(Instant::now());
        assert!(
            matches!(ejected.as_slice(), [(2, Ejected::Until(_))]),
            "{ejected:?}"
        );
        assert!(d.endpoints[2].stats.is_ejected());
        assert_eq!(d.ejected(), 1);
        assert_eq!(d.endpoints[0].record.answers.load(Relaxed), 0);
    }
}
