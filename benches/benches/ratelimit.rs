//! Rate-limit decisions per request: `KeyedLimiter::check` for one hot key, for keys spread
//! over a full table, and under a flood of new keys (the eviction path).
//!
//! `cargo bench -p strait-benches --bench ratelimit`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use strait_proxy::ratelimit::{KeyedLimiter, Rate};

fn checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    let rate = Rate::new(1e6, 1000);
    let hot = KeyedLimiter::new(65_536);
    let mut now = 1_000_000_000u64;
    group.bench_function("one_key", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(hot.check(42, rate, now))
        })
    });
    let spread = KeyedLimiter::new(65_536);
    let mut key = 0u64;
    group.bench_function("50k_keys", |b| {
        b.iter(|| {
            key = (key + 1) % 50_000;
            black_box(spread.check(
                key.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                rate,
                1_000_000_000,
            ))
        })
    });
    let flood = KeyedLimiter::new(4_096);
    let slow = Rate::new(1.0, 1);
    let mut fresh = 0u64;
    group.bench_function("flood_of_new_keys", |b| {
        b.iter(|| {
            fresh += 1;
            black_box(flood.check(
                fresh.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                slow,
                1_000_000_000,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
