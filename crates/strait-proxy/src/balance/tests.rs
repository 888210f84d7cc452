use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strait_config::LoadBalancer;

use super::*;

/// Every algorithm: what holds for endpoint health holds for all of them.
const EVERY_KIND: [LoadBalancer; 6] = [
    LoadBalancer::RoundRobin,
    LoadBalancer::Random,
    LoadBalancer::LeastRequest,
    LoadBalancer::PeakEwma,
    LoadBalancer::RingHash,
    LoadBalancer::Maglev,
];

fn counts(b: &Balancer, n: usize, hash: impl Fn(usize) -> Option<u64>) -> Vec<usize> {
    let mut c = vec![0; b.len()];
    for k in 0..n {
        c[b.pick(hash(k)).unwrap()] += 1;
    }
    c
}

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
}

fn keyed(kind: LoadBalancer, keys: &[String], weights: &[u32]) -> Balancer {
    let eps: Vec<(&[u8], u32)> = keys
        .iter()
        .map(|k| k.as_bytes())
        .zip(weights.iter().copied())
        .collect();
    Balancer::keyed(kind, &eps)
}

#[test]
fn round_robin_is_exact_over_a_cycle_and_smooth() {
    let b = Balancer::new(LoadBalancer::RoundRobin, &[5, 1, 1]);
    assert_eq!(counts(&b, 7 * 100, |_| None), vec![500, 100, 100]);
    // Smooth: the heavy endpoint's 5 turns are interleaved, never all 5 in a row (nginx's own
    // a a b a c a a wraps into four in a row at most).
    let order: Vec<usize> = (0..70).map(|_| b.pick(None).unwrap()).collect();
    let longest = order
        .windows(5)
        .filter(|w| w.iter().all(|&i| i == w[0]))
        .count();
    assert_eq!(longest, 0, "{order:?}");
}

#[test]
fn round_robin_spreads_the_turns_of_skipped_endpoints_evenly() {
    // Two of four out: the two left share evenly, not 25/75 (the turns of the skipped ones all
    // went to the endpoint after them).
    let b = Balancer::new(LoadBalancer::RoundRobin, &[1, 1, 1, 1]);
    b.stats(1).unwrap().set_healthy(false);
    b.stats(2).unwrap().set_ejected(true);
    assert_eq!(counts(&b, 1000, |_| None), vec![500, 0, 0, 500]);
    // Weights hold among the endpoints left.
    let b = Balancer::new(LoadBalancer::RoundRobin, &[5, 1, 1]);
    b.stats(1).unwrap().set_healthy(false);
    assert_eq!(counts(&b, 6 * 100, |_| None), vec![500, 0, 100]);
    let b = Balancer::new(LoadBalancer::RoundRobin, &[1, 1, 1]);
    b.stats(0).unwrap().set_ejected(true);
    assert_eq!(counts(&b, 1000, |_| None), vec![0, 500, 500]);
}

#[test]
fn round_robin_scales_huge_weight_sums() {
    let weights: Vec<u32> = (0..100).map(|i| if i == 0 { 1000 } else { 1 }).collect();
    let b = Balancer::new(LoadBalancer::RoundRobin, &weights);
    let c = counts(&b, 100_000, |_| None);
    assert!(c.iter().all(|&n| n > 0));
    assert!(c[0] > c[1] * 500, "{} vs {}", c[0], c[1]);
}

#[test]
fn random_honours_weights() {
    fastrand::seed(7);
    let b = Balancer::new(LoadBalancer::Random, &[3, 1]);
    let c = counts(&b, 40_000, |_| None);
    let share = c[0] as f64 / 40_000.0;
    assert!((share - 0.75).abs() < 0.02, "{share}");
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    fastrand::seed(1);
    let b = Balancer::new(LoadBalancer::LeastRequest, &[1, 1, 1]);
    let busy: Vec<_> = (0..10)
        .map(|_| b.stats_arc(0).unwrap().start_request())
        .collect();
    let c = counts(&b, 3000, |_| None);
    // With two choices, the busy one wins only when both draws land on it (~1/9 → retried away).
    assert!(c[0] < 100, "{c:?}");
    drop(busy);
    assert_eq!(b.stats(0).unwrap().in_flight(), 0);
}

#[test]
fn peak_ewma_avoids_the_slow_endpoint_and_forgives_it_later() {
    fastrand::seed(3);
    let b = Balancer::new(LoadBalancer::PeakEwma, &[1, 1]);
    let t0 = stats::now_nanos();
    b.stats(0)
        .unwrap()
        .observe_at(Duration::from_millis(200), t0);
    b.stats(1).unwrap().observe_at(Duration::from_millis(2), t0);
    let c = counts(&b, 1000, |_| None);
    assert!(c[0] < 50, "{c:?}");
    // A faster answer pulls the estimate down only as time passes; a slower one jumps at once.
    let s = b.stats(1).unwrap();
    s.observe_at(Duration::from_millis(50), t0 + 1);
    assert_eq!(s.ewma_latency(), Duration::from_millis(50));
    // Unanswered for a minute, the slow endpoint's cost decays toward zero.
    assert!(b.stats(0).unwrap().latency_cost_at(t0 + 60_000_000_000) < 1e6);
}

#[test]
fn hashing_balancers_are_consistent_and_weighted() {
    for kind in [LoadBalancer::RingHash, LoadBalancer::Maglev] {
        let keys = addrs(4);
        let b = keyed(kind, &keys, &[1, 1, 1, 2]);
        for k in 0..200u64 {
            let h = hash_key(&k.to_le_bytes());
            assert_eq!(b.pick(Some(h)), b.pick(Some(h)), "{kind:?}");
        }
        let c = counts(&b, 50_000, |k| Some(hash_key(&(k as u64).to_le_bytes())));
        let heavy = c[3] as f64 / 50_000.0;
        assert!((heavy - 0.4).abs() < 0.04, "{kind:?} {c:?}");
    }
}

#[test]
fn removing_an_endpoint_moves_about_its_share_of_keys() {
    for kind in [LoadBalancer::RingHash, LoadBalancer::Maglev] {
        let all = addrs(10);
        let before = keyed(kind, &all, &[1; 10]);
        let after = keyed(kind, &all[1..], &[1; 9]);
        let mut moved = 0;
        let n = 20_000u64;
        for k in 0..n {
            let h = hash_key(&k.to_le_bytes());
            let was = &all[before.pick(Some(h)).unwrap()];
            let now = &all[1..][after.pick(Some(h)).unwrap()];
            if was != now {
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        // Ideal: 1/10 (the removed endpoint's keys); Maglev moves a few more.
        assert!(share < 0.16, "{kind:?} moved {share}");
    }
}

#[test]
fn unhealthy_endpoints_are_skipped_and_all_unhealthy_fails_open() {
    for kind in EVERY_KIND {
        let b = Balancer::new(kind, &[1, 1, 1]);
        b.stats(1).unwrap().set_healthy(false);
        let c = counts(&b, 3000, |k| Some(hash_key(&(k as u64).to_le_bytes())));
        assert_eq!(c[1], 0, "{kind:?} {c:?}");
        for i in 0..3 {
            b.stats(i).unwrap().set_healthy(false);
        }
        let c = counts(&b, 3000, |k| Some(hash_key(&(k as u64).to_le_bytes())));
        assert!(
            c.iter().sum::<usize>() == 3000 && c[1] > 0,
            "{kind:?} fail open {c:?}"
        );
    }
}

#[test]
fn ejected_endpoints_are_skipped_and_the_two_causes_stay_apart() {
    for kind in EVERY_KIND {
        let b = Balancer::new(kind, &[1, 1, 1]);
        let one = b.stats(1).unwrap();
        one.set_ejected(true);
        one.set_healthy(false);
        // The ejection ends, the failing health check still holds it out, and the other way round.
        one.set_ejected(false);
        assert!(!one.is_usable() && !one.is_healthy() && !one.is_ejected());
        let c = counts(&b, 3000, |k| Some(hash_key(&(k as u64).to_le_bytes())));
        assert_eq!(c[1], 0, "{kind:?} {c:?}");
        one.set_ejected(true);
        one.set_healthy(true);
        assert!(!one.is_usable() && one.is_healthy() && one.is_ejected());
        let c = counts(&b, 3000, |k| Some(hash_key(&(k as u64).to_le_bytes())));
        assert_eq!(c[1], 0, "{kind:?} {c:?}");
        one.set_ejected(false);
        assert!(one.is_usable());
    }
}

#[test]
fn without_fail_open_nothing_is_picked_when_nothing_is_usable() {
    for kind in EVERY_KIND {
        let b = Balancer::new(kind, &[1, 1]).fail_open(false);
        b.stats(0).unwrap().set_healthy(false);
        assert!(!b.is_failing_open());
        for k in 0..50u64 {
            assert_eq!(b.pick(Some(k)), Some(1), "{kind:?}");
            assert_eq!(
                b.pick_excluding(Some(k), 1),
                Some(1),
                "{kind:?}: better than none"
            );
        }
        b.stats(1).unwrap().set_ejected(true);
        assert_eq!(b.pick(Some(7)), None, "{kind:?}");
        assert_eq!(b.pick_excluding(Some(7), 1), None, "{kind:?}");
        assert!(!b.is_failing_open(), "refusing is not failing open");
        let open = Balancer::new(kind, &[1, 1]);
        open.stats(0).unwrap().set_ejected(true);
        open.stats(1).unwrap().set_healthy(false);
        assert!(open.is_failing_open());
        assert!(open.pick(Some(7)).is_some(), "{kind:?}");
    }
}

#[test]
fn a_single_endpoint_is_picked_by_every_algorithm_unless_refused() {
    for kind in EVERY_KIND {
        let b = Balancer::new(kind, &[3]).fail_open(false);
        for k in 0..20u64 {
            assert_eq!(b.pick(Some(k)), Some(0), "{kind:?}");
            assert_eq!(b.pick(None), Some(0), "{kind:?}");
            assert_eq!(
                b.pick_excluding(Some(k), 0),
                Some(0),
                "{kind:?}: better than none"
            );
        }
        b.stats(0).unwrap().set_healthy(false);
        assert_eq!(b.pick(Some(1)), None, "{kind:?}: refused without fail-open");
        let open = Balancer::new(kind, &[3]);
        open.stats(0).unwrap().set_ejected(true);
        assert_eq!(open.pick(Some(1)), Some(0), "{kind:?}: fails open");
    }
}

#[test]
fn shared_state_outlives_the_balancer() {
    let a = Arc::new(EndpointStats::new());
    a.set_ejected(true);
    let keys: [(&[u8], u32); 2] = [(b"a", 1), (b"b", 1)];
    let first = Balancer::sharing(LoadBalancer::RoundRobin, &keys, vec![Arc::clone(&a)]);
    let second = Balancer::sharing(LoadBalancer::Maglev, &keys, vec![Arc::clone(&a)]);
    drop(first);
    assert!(second.stats(0).unwrap().is_ejected());
    assert!(
        second.stats(1).unwrap().is_usable(),
        "missing states are fresh"
    );
    for k in 0..100u64 {
        assert_eq!(second.pick(Some(k)), Some(1));
    }
}

#[test]
fn pick_excluding_goes_elsewhere_when_it_can() {
    for kind in [
        LoadBalancer::RoundRobin,
        LoadBalancer::Random,
        LoadBalancer::Maglev,
        LoadBalancer::RingHash,
    ] {
        let b = Balancer::new(kind, &[1, 1]);
        for k in 0..200u64 {
            assert_eq!(b.pick_excluding(Some(k), 0), Some(1), "{kind:?}");
        }
        let single = Balancer::new(kind, &[1]);
        assert_eq!(
            single.pick_excluding(None, 0),
            Some(0),
            "{kind:?}: the only endpoint beats none"
        );
    }
}

#[test]
fn no_endpoints_no_pick() {
    let b = Balancer::new(LoadBalancer::Maglev, &[]);
    assert!(b.is_empty());
    assert_eq!(b.pick(Some(1)), None);
    assert_eq!(
        Balancer::new(LoadBalancer::RoundRobin, &[]).pick(None),
        None
    );
}

#[test]
fn hash_key_is_stable() {
    assert_eq!(hash::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(hash::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
    assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
}

#[test]
fn picks_from_many_threads_agree_on_counts() {
    let b = Arc::new(Balancer::new(LoadBalancer::RoundRobin, &[1, 1, 1, 1]));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let mut c: HashMap<usize, usize> = HashMap::new();
                for _ in 0..10_000 {
                    *c.entry(b.pick(None).unwrap()).or_default() += 1;
                }
                c
            })
        })
        .collect();
    let mut total = vec![0; 4];
    for t in threads {
        for (i, n) in t.join().unwrap() {
            total[i] += n;
        }
    }
    assert_eq!(total, vec![10_000; 4]);
}
