//! Retry budget: how many retries a cluster takes, so that retries cannot multiply an outage.
//!
//! Every request to the cluster deposits; every retry withdraws. Over a sliding window of
//! [`WINDOW_SECS`] seconds, retries may be at most `ratio` times the requests plus
//! `min_per_second` per second of the window (Linkerd's and Finagle's model). When every
//! endpoint fails, the retry rate is thus bounded by the request rate, instead of tripling it.
//!
//! Lock-free: one slot of atomic counters per second of the window, shared by all workers. A
//! slot is reused by the second that maps to it after the window moved past it. Concurrent
//! withdrawals may overshoot the bound by at most the number of workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Seconds of history a budget weighs.
pub const WINDOW_SECS: u64 = 10;

/// A cluster's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    slots: [Slot; WINDOW_SECS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    /// The second (since an arbitrary start) this slot counts, plus one; 0 = never used.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// A budget of `percent` % of requests plus `min_per_second` retries per second.
    pub fn new(percent: f64, min_per_second: u32) -> Self {
        RetryBudget {
            ratio: (percent / 100.0).max(0.0),
            min_per_second: u64::from(min_per_second),
            slots: Default::default(),
        }
    }

    /// The slot of second `now`, emptied first when it still holds an older second.
    fn slot(&self, now: u64) -> &Slot {
        let mark = now + 1;
        // Indexing is in bounds: the modulus is the array's length.
        let slot = &self.slots[(now % WINDOW_SECS) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != mark
            && slot
                .second
                .compare_exchange(seen, mark, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
        }
        slot
    }

    /// Counts a request sent to the cluster at second `now`.
    pub fn deposit(&self, now: u64) {
        self.slot(now).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry at second `now`, or `false` when the budget is spent.
    pub fn try_withdraw(&self, now: u64) -> bool {
        let oldest = (now + 1).saturating_sub(WINDOW_SECS - 1);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let second = slot.second.load(Relaxed);
            if second >= oldest && second <= now + 1 {
                requests += slot.requests.load(Relaxed);
                retries += slot.retries.load(Relaxed);
            }
        }
        let allowed = self.min_per_second * WINDOW_SECS + (self.ratio * requests as f64) as u64;
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_the_ratio_plus_the_minimum() {
        let b = RetryBudget::new(20.0, 1);
        for _ in 0..100 {
            b.deposit(5);
        }
        let taken = (0..1000).filter(|_| b.try_withdraw(5)).count();
        // 20 % of 100 requests, plus 1 per second over the 10-second window.
        assert_eq!(taken, 20 + 10);
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::new(0.0, 1);
        assert_eq!((0..100).filter(|_| b.try_withdraw(0)).count(), 10);
        assert!(!b.try_withdraw(WINDOW_SECS - 1));
        // Second 0 leaves the window at second 10: its retries no longer count.
        assert_eq!((0..100).filter(|_| b.try_withdraw(WINDOW_SECS)).count(), 10);
    }

    #[test]
    fn old_requests_stop_funding_retries() {
        let b = RetryBudget::new(100.0, 0);
        for _ in 0..50 {
            b.deposit(3);
        }
        assert!(b.try_withdraw(4));
        assert!(!b.try_withdraw(3 + WINDOW_SECS));
    }

    #[test]
    fn a_zero_budget_never_retries() {
        let b = RetryBudget::new(0.0, 0);
        b.deposit(1);
        assert!(!b.try_withdraw(1));
    }
}
