//! Endpoint health that outlives a config: the live state balancers read, outlier counts and
//! ejections, health-check history, kept by (cluster name, endpoint address) the way the
//! metrics store keeps counters. A reload that keeps an endpoint keeps all of it; without this,
//! every reload would make every failing endpoint healthy again.
//!
//! Locked when a snapshot is compiled and when the control thread prunes it; never by a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::health_check::CheckHistory;
use super::outlier::OutlierRecord;
use crate::balance::EndpointStats;

/// Everything kept about one endpoint's health.
#[derive(Debug, Clone, Default)]
pub struct EndpointHealth {
    /// In flight, latency, and the flags balancers read.
    pub stats: Arc<EndpointStats>,
    /// Outlier detection's counts and ejections.
    pub outlier: Arc<OutlierRecord>,
    /// Active health checks' results so far; locked by the control thread only.
    pub checks: Arc<Mutex<CheckHistory>>,
}

/// Endpoint health by (cluster, address).
#[derive(Debug, Default)]
pub struct HealthStore {
    endpoints: Mutex<HashMap<(String, SocketAddr), EndpointHealth>>,
}

impl HealthStore {
    /// The health of `address` in `cluster`: what was kept, or a fresh (healthy) one.
    pub fn endpoint(&self, cluster: &str, address: SocketAddr) -> EndpointHealth {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((cluster.to_owned(), address))
            .or_default()
            .clone()
    }

    /// Forgets the endpoints `keep` says no: those no config in use has any more. An endpoint
    /// that comes back later starts afresh.
    pub fn retain(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|(cluster, address), _| keep(cluster, *address));
    }

    /// Endpoints kept.
    pub fn len(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_endpoint_gets_the_same_state_until_pruned() {
        let store = HealthStore::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        store.endpoint("c", a).stats.set_ejected(true);
        assert!(store.endpoint("c", a).stats.is_ejected());
        assert!(
            !store.endpoint("other", a).stats.is_ejected(),
            "per cluster"
        );
        store.retain(|cluster, _| cluster == "c");
        assert_eq!(store.len(), 1);
        store.retain(|_, _| false);
        assert!(store.is_empty());
        assert!(
            store.endpoint("c", a).stats.is_usable(),
            "afresh after pruning"
        );
    }
}
