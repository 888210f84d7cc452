//! `ring_hash`: ketama-style consistent hashing. Each endpoint owns points on a 64-bit ring in
//! proportion to its weight; a key goes to the first point at or after its hash. Removing an
//! endpoint moves only the keys that were on its points.

use super::hash::{hash_key, mix};

/// Points per unit of (normalized) weight, and bounds on the ring's size (as Envoy's).
const POINTS_PER_WEIGHT: u64 = 160;
const MIN_RING: u64 = 1024;
const MAX_RING: u64 = 1 << 20;

#[derive(Debug)]
pub(super) struct Ring {
    /// (point, endpoint), sorted by point.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    pub(super) fn build(endpoints: &[(&[u8], u32)]) -> Ring {
        let total: u64 = endpoints.iter().map(|&(_, w)| u64::from(w.max(1))).sum();
        let min_weight = endpoints
            .iter()
            .map(|&(_, w)| u64::from(w.max(1)))
            .min()
            .unwrap_or(1);
        let size = (total / min_weight * POINTS_PER_WEIGHT).clamp(MIN_RING, MAX_RING);
        let mut points = Vec::with_capacity(size as usize + endpoints.len());
        for (i, &(key, weight)) in endpoints.iter().enumerate() {
            let n = (size * u64::from(weight.max(1)) / total.max(1)).max(1);
            let base = hash_key(key);
            for p in 0..n {
                points.push((mix(base ^ mix(p)), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into(),
        }
    }

    pub(super) fn find(&self, hash: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < hash);
        // Walk on past unusable endpoints' points: their keys move to the next owner only.
        (0..n)
            .filter_map(|k| self.points.get((start + k) % n))
            .map(|&(_, i)| i as usize)
            .find(|&i| usable(i))
    }
}
