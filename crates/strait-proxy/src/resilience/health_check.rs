//! Active health checks: what to probe and what a run of results means. Off the data path: the
//! probes run on the control thread (`runtime/health.rs` times them, `probe.rs` does the I/O)
//! and their verdict is a flag in the endpoint's [`EndpointStats`](crate::balance::EndpointStats)
//! that every balancer reads.
//!
//! The rules here are pure: [`CheckHistory::record`] turns one result into a possible change of
//! state, [`jittered`] spreads the timer.

use std::time::Duration;

use http::uri::PathAndQuery;
use http::HeaderValue;
use strait_config::{StatusRange, UpstreamProtocol};

/// What one check of an endpoint does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect, then close.
    Tcp,
    /// `GET path`, passing on an expected status.
    Http {
        /// Path and query requested.
        path: PathAndQuery,
        /// `Host`/`:authority`; `None`: the endpoint's address.
        host: Option<HeaderValue>,
        /// Statuses that pass.
        expected: Vec<StatusRange>,
        /// HTTP/2 with prior knowledge rather than HTTP/1.1.
        http2: bool,
    },
    /// `grpc.health.v1.Health/Check` for `service`, passing on `SERVING`.
    Grpc {
        /// The service asked about; empty for the whole server.
        service: String,
    },
}

/// A cluster's health checking, compiled from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPlan {
    /// What a check does.
    pub probe: Probe,
    /// Time between checks, before jitter.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Passes in a row that make an endpoint healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

impl CheckPlan {
    /// The plan for a cluster's `health_check`; `Err` names what validation should have caught.
    pub fn compile(
        c: &strait_config::HealthCheck,
        protocol: UpstreamProtocol,
    ) -> Result<Self, String> {
        let probe = match (&c.http, &c.grpc, &c.tcp) {
            (Some(http), None, None) => Probe::Http {
                path: PathAndQuery::try_from(http.path.as_str())
                    .map_err(|_| format!("invalid health check path {:?}", http.path))?,
                host: match &http.host {
                    Some(h) => Some(
                        HeaderValue::from_str(h)
                            .map_err(|_| format!("invalid health check host {h:?}"))?,
                    ),
                    None => None,
                },
                expected: http.expected_statuses.clone(),
                http2: protocol == UpstreamProtocol::Http2,
            },
            (None, Some(grpc), None) => Probe::Grpc {
                service: grpc.service.clone(),
            },
            (None, None, Some(_)) => Probe::Tcp,
            _ => return Err("a health check needs exactly one of http, grpc and tcp".to_owned()),
        };
        Ok(CheckPlan {
            probe,
            interval: c.interval.get(),
            timeout: c.timeout.get(),
            healthy_threshold: c.healthy_threshold.max(1),
            unhealthy_threshold: c.unhealthy_threshold.max(1),
        })
    }
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The endpoint passed.
    Success,
    /// It answered wrong, or refused.
    Failure,
    /// No complete answer within the timeout.
    Timeout,
}

impl CheckResult {
    /// Every result, in the order of [`CheckResult::index`].
    pub const ALL: [CheckResult; 3] = [
        CheckResult::Success,
        CheckResult::Failure,
        CheckResult::Timeout,
    ];

    /// The label value in metrics.
    pub fn name(self) -> &'static str {
        match self {
            CheckResult::Success => "success",
            CheckResult::Failure => "failure",
            CheckResult::Timeout => "timeout",
        }
    }

    /// Position in [`CheckResult::ALL`] (and in per-result counter arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the checks of one endpoint have seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckHistory {
    /// The current verdict.
    pub healthy: bool,
    /// Whether any check has run: the first result decides at once.
    pub checked: bool,
    /// Passes in a row.
    pub passes: u32,
    /// Failures in a row.
    pub failures: u32,
}

impl Default for CheckHistory {
    /// An endpoint never checked is presumed healthy, so a proxy starts serving at once.
    fn default() -> Self {
        CheckHistory {
            healthy: true,
            checked: false,
            passes: 0,
            failures: 0,
        }
    }
}

impl CheckHistory {
    /// Adds one result; returns the new verdict when it changed. The first result ever decides
    /// alone (a new endpoint that is down is not tried by requests for `unhealthy_threshold`
    /// intervals); after it, `unhealthy_threshold` failures or `healthy_threshold` passes in a
    /// row are needed to change the verdict.
    pub fn record(
        &mut self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let was = self.healthy;
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        if !self.checked {
            self.checked = true;
            self.healthy = passed;
        } else if passed && self.passes >= healthy_threshold {
            self.healthy = true;
        } else if !passed && self.failures >= unhealthy_threshold {
            self.healthy = false;
        }
        (self.healthy != was).then_some(self.healthy)
    }
}

/// `interval` plus up to 10 % more, from `random` in `[0, 1)`: checks of many endpoints and
/// proxies drift apart instead of arriving together.
pub fn jittered(interval: Duration, random: f64) -> Duration {
    // `mul_f64` panics on NaN, which `clamp` lets through.
    let random = if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    };
    interval + interval.mul_f64(random / 10.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(history: &mut CheckHistory, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&r| history.record(r, 2, 3)).collect()
    }

    #[test]
    fn the_first_result_decides_then_thresholds_apply() {
        let mut h = CheckHistory::default();
        assert_eq!(run(&mut h, &[false]), [Some(false)]);
        assert_eq!(run(&mut h, &[true]), [None]);
        assert_eq!(run(&mut h, &[true]), [Some(true)]);
        assert_eq!(run(&mut h, &[false, false]), [None, None]);
        assert_eq!(
            run(&mut h, &[true]),
            [None],
            "a pass breaks the run of failures"
        );
        assert_eq!(
            run(&mut h, &[false, false, false]),
            [None, None, Some(false)]
        );
        assert_eq!(run(&mut h, &[false, false]), [None, None]);
        assert!(!h.healthy);

        let mut fresh = CheckHistory::default();
        assert_eq!(
            run(&mut fresh, &[true, true]),
            [None, None],
            "healthy from the start"
        );
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut h = CheckHistory::default();
        for (passed, expect) in [(true, None), (false, Some(false)), (true, Some(true))] {
            assert_eq!(h.record(passed, 1, 1), expect);
        }
    }

    #[test]
    fn jitter_adds_up_to_a_tenth() {
        let i = Duration::from_secs(5);
        assert_eq!(jittered(i, 0.0), i);
        assert_eq!(jittered(i, 0.5), Duration::from_millis(5250));
        assert!(jittered(i, 0.999_999) < Duration::from_millis(5500));
        assert_eq!(jittered(i, 7.0), Duration::from_millis(5500), "clamped");
        assert_eq!(jittered(i, f64::NAN), i, "NaN clamps to a bound");
    }

    #[test]
    fn plans_compile_from_config() {
        let config = strait_config::parse(
            "listeners: [{ name: l, address: 127.0.0.1:1, routes: [{ backends: [{ cluster: c }] }] }]\n\
             clusters:\n  - name: c\n    protocol: http2\n    endpoints: [{ address: 127.0.0.1:1 }]\n    \
             health_check: { http: { path: /h?x=1, host: svc }, unhealthy_threshold: 1 }\n",
            "t.yaml",
        )
        .unwrap();
        let c = &config.clusters[0];
        let plan = CheckPlan::compile(c.health_check.as_ref().unwrap(), c.protocol).unwrap();
        assert_eq!(plan.interval, Duration::from_secs(5));
        assert_eq!(plan.unhealthy_threshold, 1);
        let Probe::Http {
            path,
            host,
            http2,
            expected,
        } = plan.probe
        else {
            panic!("an http probe");
        };
        assert_eq!(path, "/h?x=1");
        assert_eq!(host.unwrap(), "svc");
        assert!(http2);
        assert_eq!(expected.len(), 1);
    }
}
