//! What outlier detection costs a request: `OutlierDetector::observe`, called once per upstream
//! answer, with detection off (the default), with consecutive thresholds only, and with success
//! rates counted too; for mostly-successful traffic and for a failing endpoint whose thresholds
//! keep being reached (a signal to the control thread each time, received here in the loop, as
//! nobody ejects).
//!
//! `cargo bench -p strait-benches --bench outlier`

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use strait_proxy::resilience::outlier::{Outcome, Policy, Watched};
use strait_proxy::resilience::OutlierDetector;

fn detector(policy: Option<Policy>) -> OutlierDetector {
    let endpoints = (0..10)
        .map(|_| Watched {
            stats: Arc::default(),
            record: Arc::default(),
            counters: Arc::default(),
        })
        .collect();
    OutlierDetector::new(policy, endpoints, Arc::default())
}

fn policy(success_rate: bool) -> Policy {
    let mut config = strait_config::parse(
        "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1 }]\n    outlier_detection: {}\n",
        "bench.yaml",
    )
    .ok()
    .and_then(|c| c.clusters.into_iter().next()?.outlier_detection)
    .expect("a valid outlier_detection");
    if !success_rate {
        config.success_rate_stdev_factor = 0.0;
    }
    Policy::from_config(&config)
}

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    for (name, policy) in [
        ("off", None),
        ("consecutive", Some(policy(false))),
        ("consecutive+success_rate", Some(policy(true))),
    ] {
        let d = detector(policy);
        let mut signals = d.take_signals();
        let mut i = 0usize;
        group.bench_function(format!("{name}/mostly_200"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let status = if i.is_multiple_of(100) { 503 } else { 200 };
                d.observe(black_box(i % 10), Outcome::Status(status));
            })
        });
        group.bench_function(format!("{name}/failing"), |b| {
            b.iter(|| {
                d.observe(black_box(3), Outcome::ConnectFailed);
                if let Some(rx) = signals.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
