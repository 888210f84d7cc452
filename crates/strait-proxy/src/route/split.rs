//! Weighted traffic split across a route's backends (a 90/10 canary, a blue/green switch).
//!
//! Runs right after [`RouteTable::find`](super::RouteTable::find) on the data path: the matched
//! route's split picks the cluster, then that cluster's balancer picks the endpoint. The caller
//! supplies the randomness, which keeps this pure and testable with fixed draws.

/// Backends with their relative weights. A weight of 0 keeps the backend in the config view
/// ([`iter`](Self::iter)) but sends it no traffic.
#[derive(Debug, Clone)]
pub struct WeightedSplit<T> {
    items: Box<[T]>,
    /// Running sum of the weights up to and including each item; u64 because the weights of
    /// several backends may add up past `u32::MAX`.
    cumulative: Box<[u64]>,
}

impl<T> WeightedSplit<T> {
    /// Keeps `items` in the given order (the order [`iter`](Self::iter) yields).
    pub fn new(items: Vec<(T, u32)>) -> Self {
        let mut total = 0u64;
        let (items, cumulative) = items
            .into_iter()
            .map(|(item, weight)| {
                total = total.saturating_add(u64::from(weight));
                (item, total)
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        WeightedSplit {
            items: items.into(),
            cumulative: cumulative.into(),
        }
    }

    /// The item whose share of the total weight `random` falls in. Pass a uniformly random
    /// `u32` (`fastrand::u32(..)`) and each item is picked with probability weight / total.
    /// `None` when every weight is 0 (or there are no items).
    pub fn pick(&self, random: u32) -> Option<&T> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        // Scale the draw into [0, total) by multiply-shift: unbiased to within total / 2^32, and
        // no division on the hot path.
        let point = u64::try_from((u128::from(random) * u128::from(total)) >> 32).ok()?;
        // The first item whose running sum exceeds the point; zero-weight items share their
        // predecessor's sum, so they are never it.
        let index = self.cumulative.partition_point(|&sum| sum <= point);
        self.items.get(index)
    }

    /// Sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Number of items, including those of weight 0.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no items at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items in the order given to [`new`](Self::new), including those of weight 0.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(split: &WeightedSplit<&'static str>, draws: u32) -> Vec<(&'static str, u32)> {
        let mut counts: Vec<(&'static str, u32)> = split.iter().map(|&n| (n, 0)).collect();
        // Evenly spaced draws over the whole u32 range (rounded up, so a draw on a share's
        // boundary lands in the next share): exact shares, no sampling noise.
        for i in 0..u64::from(draws) {
            let draw = (i << 32).div_ceil(u64::from(draws));
            let picked = split.pick(u32::try_from(draw).unwrap_or(u32::MAX)).copied();
            for (name, count) in &mut counts {
                if Some(*name) == picked {
                    *count += 1;
                }
            }
        }
        counts
    }

    #[test]
    fn canary_ninety_ten() {
        let split = WeightedSplit::new(vec![("stable", 90), ("canary", 10)]);
        assert_eq!(
            shares(&split, 10_000),
            [("stable", 9_000), ("canary", 1_000)]
        );
        assert_eq!(split.pick(0), Some(&"stable"));
        assert_eq!(split.pick(u32::MAX), Some(&"canary"));
    }

    #[test]
    fn zero_weight_takes_no_traffic_but_stays_listed() {
        let split = WeightedSplit::new(vec![
            ("off", 0),
            ("a", 1),
            ("off2", 0),
            ("b", 3),
            ("off3", 0),
        ]);
        assert_eq!(
            shares(&split, 4_000),
            [
                ("off", 0),
                ("a", 1_000),
                ("off2", 0),
                ("b", 3_000),
                ("off3", 0)
            ]
        );
        assert_eq!(split.len(), 5);
        assert_eq!(split.iter().count(), 5);
    }

    #[test]
    fn no_traffic_when_all_weights_are_zero_or_no_items() {
        let zero = WeightedSplit::new(vec![("a", 0), ("b", 0)]);
        assert_eq!(zero.pick(0), None);
        assert_eq!(zero.pick(u32::MAX), None);
        let empty = WeightedSplit::<u8>::new(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.pick(7), None);
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let split = WeightedSplit::new(vec![("a", u32::MAX), ("b", u32::MAX), ("c", u32::MAX)]);
        assert_eq!(split.total_weight(), 3 * u64::from(u32::MAX));
        assert_eq!(split.pick(0), Some(&"a"));
        assert_eq!(split.pick(u32::MAX / 2), Some(&"b"));
        assert_eq!(split.pick(u32::MAX), Some(&"c"));
    }

    #[test]
    fn random_draws_follow_the_weights() {
        let split = WeightedSplit::new(vec![(0usize, 1), (1, 2), (2, 7)]);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            if let Some(&i) = split.pick(rng.u32(..)) {
                counts[i] += 1;
            }
        }
        for (count, expected) in counts.iter().zip([10_000.0, 20_000.0, 70_000.0]) {
            let error = (f64::from(*count) - expected).abs() / expected;
            assert!(error < 0.03, "{counts:?}");
        }
    }
}
