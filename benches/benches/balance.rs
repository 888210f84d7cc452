//! Endpoint selection per request: `Balancer::pick` for every algorithm over 10 and 100
//! endpoints, with live in-flight counts and latency estimates so the two-choice balancers
//! compare real costs, and one endpoint unhealthy so the skip path is exercised. Also the cost
//! of building the hashing tables, paid on every config change of a cluster.
//!
//! `cargo bench -p strait-benches --bench balance`

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use strait_config::LoadBalancer;
use strait_proxy::balance::{hash_key, Balancer};

const KINDS: [(&str, LoadBalancer); 6] = [
    ("round_robin", LoadBalancer::RoundRobin),
    ("random", LoadBalancer::Random),
    ("least_request", LoadBalancer::LeastRequest),
    ("peak_ewma", LoadBalancer::PeakEwma),
    ("ring_hash", LoadBalancer::RingHash),
    ("maglev", LoadBalancer::Maglev),
];

fn cluster(kind: LoadBalancer, n: usize) -> (Balancer, Vec<String>) {
    let keys: Vec<String> = (0..n)
        .map(|i| format!("10.1.{}.{}:8080", i / 250, i % 250))
        .collect();
    let eps: Vec<(&[u8], u32)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_bytes(), 1 + (i % 3) as u32))
        .collect();
    let b = Balancer::keyed(kind, &eps);
    for i in 0..n {
        if let Some(s) = b.stats(i) {
            s.observe_latency(
                Duration::from_micros(200 + 50 * (i as u64 % 7)),
                Instant::now(),
            );
        }
    }
    if let Some(s) = b.stats(n / 2) {
        s.set_healthy(false);
    }
    (b, keys)
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10, 100] {
        for (name, kind) in KINDS {
            let (b, _) = cluster(kind, n);
            // Some requests in flight so least_request and peak_ewma have costs to compare.
            let _busy: Vec<_> = (0..n / 3)
                .filter_map(|i| b.stats_arc(i * 3).map(|s| s.start_request()))
                .collect();
            let mut key = 0u64;
            group.bench_function(format!("{name}/{n}"), |bench| {
                bench.iter(|| {
                    key = key.wrapping_add(1);
                    black_box(b.pick(Some(hash_key(&key.to_le_bytes()))))
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    for (name, kind) in [
        ("ring_hash", LoadBalancer::RingHash),
        ("maglev", LoadBalancer::Maglev),
    ] {
        group.bench_function(format!("{name}/100"), |bench| {
            bench.iter(|| black_box(cluster(kind, 100)))
        });
    }
    group.finish();
}

criterion_group!(benches, picks, build);
criterion_main!(benches);
