//! Local rate limiting: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp) per key, in a fixed-size lock-free table.
//!
//! On the data path this runs after the route matched and before anything is forwarded. The
//! table never grows: a flood of distinct keys (spoofed headers, many clients) cannot exhaust
//! memory. A key's slot is found by a short linear probe; a slot whose bucket is full again
//! (its timestamp has passed) is as good as empty and is reused, and when every probed slot
//! holds a live key the one closest to full is evicted, which can only make the limit more
//! lenient for that key, never stricter for an innocent one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Slots probed for a key before evicting.
const PROBE: usize = 8;

/// A rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now the bucket's timestamp may run: `(burst - 1) * interval`.
    tolerance: u64,
    per_second: f64,
    burst: u32,
}

impl Rate {
    /// `per_second` > 0, `burst` ≥ 1.
    pub fn new(per_second: f64, burst: u32) -> Rate {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1e-9
        };
        let interval = (1e9 / per_second).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        let burst = burst.max(1);
        Rate {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst) - 1),
            per_second,
            burst,
        }
    }

    /// Sustained requests per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more would be allowed right now.
    Allow {
        /// Requests still allowed at once after this one.
        remaining: u32,
    },
    /// Over the limit; the next request is allowed after this many nanoseconds.
    Deny {
        /// Wait before retrying, in nanoseconds.
        retry_after_nanos: u64,
    },
}

/// Buckets for many keys in a fixed amount of memory.
#[derive(Debug)]
pub struct KeyedLimiter {
    /// Key hashes (0 = empty).
    keys: Box<[AtomicU64]>,
    /// Each slot's theoretical arrival time, nanoseconds on the limiter's clock.
    tats: Box<[AtomicU64]>,
    mask: usize,
    /// Mixed into a key to find its home slot, random per table: keys are hashes of what
    /// clients send (addresses, header values), and with a fixed placement a client could pick
    /// values whose probes meet, and so evict its own empty bucket by another's.
    seed: u64,
}

impl KeyedLimiter {
    /// A table with room for at least `max_keys` keys (rounded up to a power of two).
    pub fn new(max_keys: usize) -> KeyedLimiter {
        let size = max_keys.clamp(PROBE, 1 << 26).next_power_of_two();
        KeyedLimiter {
            keys: (0..size).map(|_| AtomicU64::new(0)).collect(),
            tats: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size - 1,
            seed: fastrand::u64(..),
        }
    }

    /// Number of slots (fixed for the limiter's life).
    pub fn capacity(&self) -> usize {
        self.keys.len()
    }

    /// Takes one request from `key`'s bucket at time `now` (nanoseconds, monotonic).
    pub fn check(&self, key: u64, rate: Rate, now: u64) -> Decision {
        // 0 marks an empty slot; move the one key that hashes to it.
        let key = key.max(1);
        let slot = self.slot_for(key, now);
        let tat = &self.tats[slot];
        let mut current = tat.load(Relaxed);
        loop {
            let start = current.max(now);
            if start - now > rate.tolerance {
                // The bucket is empty: the earliest allowed time is tat - tolerance.
                return Decision::Deny {
                    retry_after_nanos: start - now - rate.tolerance,
                };
            }
            let next = start + rate.interval;
            match tat.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => {
                    let used = (next - now).div_ceil(rate.interval);
                    let remaining = u64::from(rate.burst).saturating_sub(used);
                    return Decision::Allow {
                        remaining: remaining as u32,
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The slot holding `key`, claiming a free or expired one (or evicting) when absent.
    fn slot_for(&self, key: u64, now: u64) -> usize {
        let home = (crate::balance::mix(key ^ self.seed) as usize) & self.mask;
        // The key's own slot first, wherever it is in the probe: taking a free slot before
        // it would start the key again with a full bucket.
        for i in 0..PROBE {
            let slot = (home + i) & self.mask;
            match self.keys[slot].load(Relaxed) {
                held if held == key => return slot,
                // Keys are only ever replaced, never removed: none is beyond an empty slot.
                0 => break,
                _ => {}
            }
        }
        let mut victim = home;
        let mut victim_tat = u64::MAX;
        for i in 0..PROBE {
            let slot = (home + i) & self.mask;
            let held = self.keys[slot].load(Relaxed);
            if held == key {
                return slot;
            }
            let tat = self.tats[slot].load(Relaxed);
            if held == 0 || tat <= now {
                // Free, or a full bucket (indistinguishable from a fresh key): take it.
                if self.claim(slot, held, key, tat, now) {
                    return slot;
                }
                continue;
            }
            if tat < victim_tat {
                victim = slot;
                victim_tat = tat;
            }
        }
        // Every probed slot holds a live key: evict the one closest to full.
        let held = self.keys[victim].load(Relaxed);
        // Losing a race for the slot to another key means sharing its bucket for this one
        // request: at worst stricter once, never unbounded.
        let _ = self.claim(victim, held, key, victim_tat, now);
        victim
    }

    /// Takes `slot` for `key` if it still holds `held`; `tat`: the slot's bucket as it was
    /// seen when it was chosen.
    fn claim(&self, slot: usize, held: u64, key: u64, tat: u64, now: u64) -> bool {
        if self.keys[slot]
            .compare_exchange(held, key, Relaxed, Relaxed)
            .is_ok()
        {
            // A bucket whose time has passed is full, as a new key's is: it is left as it is.
            // An evicted key's live bucket is made full, unless requests of the new key (which
            // other threads see in the slot from the moment it was taken) already drew on it.
            // A plain store here refilled a bucket those requests had drawn on: under
            // contention, a new key got its burst more than once.
            if tat > now {
                let _ = self.tats[slot].compare_exchange(tat, now, Relaxed, Relaxed);
            }
            true
        } else {
            self.keys[slot].load(Relaxed) == key
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn allowed(l: &KeyedLimiter, key: u64, rate: Rate, now: u64) -> bool {
        matches!(l.check(key, rate, now), Decision::Allow { .. })
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = KeyedLimiter::new(64);
        let rate = Rate::new(10.0, 5);
        let t0 = 100 * SEC;
        let burst = (0..20).filter(|_| allowed(&l, 7, rate, t0)).count();
        assert_eq!(burst, 5);
        // Over the next 10 s, one every 100 ms: 100 more, whatever the request pressure.
        let mut ok = 0;
        for ms in 1..=10_000u64 {
            if allowed(&l, 7, rate, t0 + ms * 1_000_000) {
                ok += 1;
            }
        }
        assert_eq!(ok, 100);
    }

    #[test]
    fn denial_says_when_to_retry_and_allow_says_what_remains() {
        let l = KeyedLimiter::new(64);
        let rate = Rate::new(2.0, 2);
        let t0 = 10 * SEC;
        assert_eq!(l.check(1, rate, t0), Decision::Allow { remaining: 1 });
        assert_eq!(l.check(1, rate, t0), Decision::Allow { remaining: 0 });
        assert_eq!(
            l.check(1, rate, t0),
            Decision::Deny {
                retry_after_nanos: SEC / 2
            }
        );
        assert!(allowed(&l, 1, rate, t0 + SEC / 2));
    }

    #[test]
    fn keys_are_independent() {
        let l = KeyedLimiter::new(1024);
        let rate = Rate::new(1.0, 1);
        let t0 = SEC;
        for key in 1..=500u64 {
            assert!(allowed(
                &l,
                key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                rate,
                t0
            ));
        }
        assert!(!allowed(
            &l,
            3u64.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            rate,
            t0
        ));
    }

    #[test]
    fn a_limited_key_behind_an_expired_one_stays_limited() {
        let l = KeyedLimiter::new(64);
        let home = |k: u64| (crate::balance::mix(k ^ l.seed) as usize) & l.mask;
        let (first, limited) = (1u64, (2..).find(|&k| home(k) == home(1)).unwrap());
        let rate = Rate::new(1.0, 10);
        // `first` takes the home slot once (its bucket is full again a second later);
        // `limited`, in the next slot, spends its burst.
        assert!(allowed(&l, first, rate, 0));
        assert_eq!(
            (0..12).filter(|_| allowed(&l, limited, rate, 0)).count(),
            10
        );
        // 1.3 s on, the home slot is as good as free, and `limited` earned one request, not a
        // new burst.
        let later = 13 * SEC / 10;
        assert_eq!(
            (0..12)
                .filter(|_| allowed(&l, limited, rate, later))
                .count(),
            1
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_neither_grows_memory_nor_frees_a_limited_key() {
        let l = KeyedLimiter::new(4096);
        let capacity = l.capacity();
        let rate = Rate::new(1.0, 1);
        let t0 = SEC;
        let victim = 0xdead_beef_u64;
        assert!(allowed(&l, victim, rate, t0));
        assert!(!allowed(&l, victim, rate, t0));
        for key in 1..=1_000_000u64 {
            let _ = l.check(
                key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                Rate::new(1000.0, 10),
                t0,
            );
        }
        assert_eq!(l.capacity(), capacity, "the table never grows");
        // The flood's buckets (high rate) are nearly full again, so they are evicted before a
        // limited key's; the limited key is most likely still limited. Either way it is never
        // limited harder than its own rate.
        let t1 = t0 + 2 * SEC;
        assert!(allowed(&l, victim, rate, t1));
    }

    #[test]
    fn rates_are_sane_at_the_edges() {
        let r = Rate::new(0.0, 0);
        assert_eq!(r.burst(), 1);
        let l = KeyedLimiter::new(8);
        assert!(allowed(&l, 1, r, SEC));
        assert!(!allowed(&l, 1, r, 2 * SEC));
        let fast = Rate::new(1e12, 1);
        assert!(allowed(&l, 2, fast, SEC));
    }

    #[test]
    fn concurrent_checks_never_allow_more_than_the_burst() {
        // Each round a new key, first seen by four threads at once: its slot is claimed while
        // the others already take from its bucket.
        let l = std::sync::Arc::new(KeyedLimiter::new(64));
        let rate = Rate::new(1.0, 100);
        for key in 1..=50u64 {
            let start = std::sync::Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (l, start) = (std::sync::Arc::clone(&l), std::sync::Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        (0..300).filter(|_| allowed(&l, key, rate, 5 * SEC)).count()
                    })
                })
                .collect();
            let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(total, 100, "key {key}");
        }
    }
}

/// Nanoseconds on a clock shared by every worker (the limiter's time base).
pub fn now_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at one second so a fresh bucket's zero timestamp is always in the past.
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1_000_000_000
}

/// Limiters by (listener, route), so buckets survive config reloads that keep the route.
#[derive(Debug, Default)]
pub struct LimiterStore {
    limiters:
        std::sync::Mutex<std::collections::HashMap<(String, String), std::sync::Arc<KeyedLimiter>>>,
}

impl LimiterStore {
    /// The route's limiter; a new one when the route is new or its `max_keys` changed.
    pub fn limiter(
        &self,
        listener: &str,
        route: &str,
        max_keys: usize,
    ) -> std::sync::Arc<KeyedLimiter> {
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let key = (listener.to_owned(), route.to_owned());
        let wanted = max_keys.clamp(PROBE, 1 << 26).next_power_of_two();
        match map.get(&key) {
            Some(l) if l.capacity() == wanted => std::sync::Arc::clone(l),
            _ => {
                let l = std::sync::Arc::new(KeyedLimiter::new(max_keys));
                map.insert(key, std::sync::Arc::clone(&l));
                l
            }
        }
    }
}
