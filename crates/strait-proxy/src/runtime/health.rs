//! Health work on the control thread, never on a worker: one task per health-checked endpoint
//! (probe, count, judge, flag) and one per cluster with outlier detection (eject on the signals
//! requests send, bring back when the time is up, compare success rates each interval).
//!
//! [`supervise`] reconciles the tasks with every new snapshot: tasks whose cluster and settings
//! did not change keep running (a reload does not restart checks), new ones start, stale ones
//! stop; endpoints no config uses any more are forgotten by the [`HealthStore`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::AbortHandle;

use super::snapshot::{ClusterPlan, Snapshot};
use super::Shared;
use crate::resilience::health_check::{jittered, CheckHistory, CheckPlan, CheckResult};
use crate::resilience::outlier::{later, Ejected};
use crate::resilience::probe;
use crate::resilience::store::{EndpointHealth, HealthStore};
use crate::telemetry::metrics::EndpointCounters;

/// Runs health checks and outlier detection for the snapshot in use, following reloads, until
/// the proxy stops.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let mut updated = shared.updated.subscribe();
    let mut tasks = Tasks::default();
    loop {
        tasks.reconcile(&shared.snapshot.load(), &shared.health);
        if updated.changed().await.is_err() {
            return;
        }
    }
}

/// The running tasks, by what they serve.
#[derive(Debug, Default)]
struct Tasks {
    /// Health checks by (cluster, endpoint), with the plan they run.
    checks: HashMap<(Arc<str>, SocketAddr), (CheckPlan, AbortHandle)>,
    /// Outlier detection by cluster, with the compiled cluster it watches.
    outliers: HashMap<Arc<str>, (Arc<ClusterPlan>, AbortHandle)>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for (_, task) in self.checks.values() {
            task.abort();
        }
        for (_, task) in self.outliers.values() {
            task.abort();
        }
    }
}

impl Tasks {
    fn reconcile(&mut self, snapshot: &Snapshot, store: &HealthStore) {
        let mut checked: HashSet<(Arc<str>, SocketAddr)> = HashSet::new();
        let mut watched: HashSet<Arc<str>> = HashSet::new();
        for cluster in &snapshot.clusters {
            match &cluster.checks {
                Some(plan) => {
                    for (i, &addr) in cluster.endpoints.iter().enumerate() {
                        let key = (Arc::clone(&cluster.name), addr);
                        checked.insert(key.clone());
                        if self.checks.get(&key).is_some_and(|(p, _)| p == plan) {
                            continue;
                        }
                        let Some(health) = cluster.health.get(i) else {
                            continue;
                        };
                        let task = tokio::spawn(check_endpoint(
                            Arc::clone(&cluster.name),
                            addr,
                            plan.clone(),
                            health.clone(),
                            cluster.endpoint_counters.get(i).cloned(),
                        ));
                        if let Some((_, old)) =
                            self.checks.insert(key, (plan.clone(), task.abort_handle()))
                        {
                            old.abort();
                        }
                    }
                }
                // Without checks every endpoint passes them: a check removed from the config
                // must not leave its verdict behind.
                None => {
                    for h in cluster.health.iter() {
                        h.stats.set_healthy(true);
                        with_history(h, |history| *history = CheckHistory::default());
                    }
                }
            }
            if cluster.outlier.policy().is_some() {
                watched.insert(Arc::clone(&cluster.name));
                let same = self
                    .outliers
                    .get(&cluster.name)
                    .is_some_and(|(plan, _)| Arc::ptr_eq(plan, cluster));
                if !same {
                    let task = tokio::spawn(watch_outliers(Arc::clone(cluster)));
                    if let Some((_, old)) = self.outliers.insert(
                        Arc::clone(&cluster.name),
                        (Arc::clone(cluster), task.abort_handle()),
                    ) {
                        old.abort();
                    }
                }
            } else {
                cluster.outlier.release_all();
            }
        }
        self.checks.retain(|key, (_, task)| {
            let keep = checked.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        self.outliers.retain(|name, (_, task)| {
            let keep = watched.contains(name);
            if !keep {
                task.abort();
            }
            keep
        });
        let current: HashSet<(&str, SocketAddr)> = snapshot
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(move |&a| (&*c.name, a)))
            .collect();
        store.retain(|cluster, addr| current.contains(&(cluster, addr)));
    }
}

/// Checks one endpoint every interval (plus jitter) and flags it healthy or not.
async fn check_endpoint(
    cluster: Arc<str>,
    addr: SocketAddr,
    plan: CheckPlan,
    health: EndpointHealth,
    counters: Option<Arc<EndpointCounters>>,
) {
    // Kept across reloads; the flag follows what the history says.
    let healthy = with_history(&health, |h| h.healthy);
    health.stats.set_healthy(healthy);
    // The first check soon, but not all of a cluster's at the same instant.
    tokio::time::sleep(plan.interval.mul_f64(fastrand::f64() / 10.0)).await;
    loop {
        let (result, why) =
            match tokio::time::timeout(plan.timeout, probe::check(&plan.probe, addr)).await {
                Ok(Ok(())) => (CheckResult::Success, None),
                Ok(Err(e)) => (CheckResult::Failure, Some(e.to_string())),
                Err(_) => (
                    CheckResult::Timeout,
                    Some(format!("no answer within {:?}", plan.timeout)),
                ),
            };
        if let Some(n) = counters
            .as_ref()
            .and_then(|c| c.health_checks.get(result.index()))
        {
            n.fetch_add(1, Relaxed);
        }
        let change = with_history(&health, |h| {
            h.record(
                result == CheckResult::Success,
                plan.healthy_threshold,
                plan.unhealthy_threshold,
            )
        });
        match (change, why) {
            (Some(true), _) => {
                health.stats.set_healthy(true);
                tracing::info!(%cluster, endpoint = %addr, "endpoint passes its health checks again");
            }
            (Some(false), why) => {
                health.stats.set_healthy(false);
                tracing::warn!(
                    %cluster,
                    endpoint = %addr,
                    reason = why.as_deref().unwrap_or_default(),
                    "endpoint fails its health checks; balancers skip it"
                );
            }
            (None, Some(why)) => {
                tracing::debug!(%cluster, endpoint = %addr, reason = %why, "health check failed");
            }
            (None, None) => {}
        }
        tokio::time::sleep(jittered(plan.interval, fastrand::f64())).await;
    }
}

/// Runs `f` on an endpoint's check history (locked by the control thread only).
fn with_history<T>(health: &EndpointHealth, f: impl FnOnce(&mut CheckHistory) -> T) -> T {
    f(&mut health.checks.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Ejects a cluster's endpoints when requests signal a threshold, brings them back when their
/// time is up, and compares success rates each interval.
async fn watch_outliers(cluster: Arc<ClusterPlan>) {
    let detector = &cluster.outlier;
    let (Some(policy), Some(mut signals)) = (detector.policy(), detector.take_signals()) else {
        return;
    };
    let interval = policy.interval;
    let mut next_comparison = later(Instant::now(), interval);
    let mut returned = Vec::new();
    loop {
        returned.clear();
        let next_return = detector.return_due(Instant::now(), &mut returned);
        for &i in &returned {
            if let Some(addr) = cluster.endpoints.get(i) {
                tracing::info!(cluster = %cluster.name, endpoint = %addr, "ejection over; endpoint back in");
            }
        }
        let wake = next_return.map_or(next_comparison, |r| r.min(next_comparison));
        tokio::select! {
            signal = signals.recv() => {
                // The sender lives in the detector this task holds: `None` cannot come.
                let Some((i, reason)) = signal else { return };
                let outcome = detector.eject(i, reason, Instant::now());
                log_ejection(&cluster, i, reason.name(), outcome);
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now >= next_comparison {
                    next_comparison = later(now, interval);
                    for (i, outcome) in detector.compare_success_rates(now) {
                        log_ejection(&cluster, i, "success_rate", outcome);
                    }
                }
            }
        }
    }
}

fn log_ejection(cluster: &ClusterPlan, endpoint: usize, reason: &str, outcome: Ejected) {
    let Some(addr) = cluster.endpoints.get(endpoint) else {
        return;
    };
    match outcome {
        Ejected::Until(until) => tracing::warn!(
            cluster = %cluster.name,
            endpoint = %addr,
            reason,
            for_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
            "endpoint ejected"
        ),
        Ejected::OverCap => tracing::debug!(
            cluster = %cluster.name,
            endpoint = %addr,
            reason,
            "ejection refused: max_ejection_percent reached"
        ),
        Ejected::Already => {}
    }
}
