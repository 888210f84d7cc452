//! `maglev`: the lookup table of Google's Maglev paper (NSDI 2016), weighted as in Envoy. Each
//! endpoint fills table slots along its own permutation; lookups are one index. Removing an
//! endpoint changes few slots beyond its own.

use super::hash::{fnv1a, hash_key, mix};

/// A prime, so every skip visits every slot.
const TABLE_SIZE: u64 = 65_537;

#[derive(Debug)]
pub(super) struct Table {
    slots: Box<[u32]>,
}

impl Table {
    pub(super) fn build(endpoints: &[(&[u8], u32)]) -> Table {
        if endpoints.is_empty() {
            return Table {
                slots: Box::new([]),
            };
        }
        let m = TABLE_SIZE;
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|&(key, _)| {
                (
                    hash_key(key) % m,
                    mix(fnv1a(key) ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1,
                )
            })
            .collect();
        let max_weight = endpoints
            .iter()
            .map(|&(_, w)| f64::from(w.max(1)))
            .fold(1.0, f64::max);
        let mut next = vec![0u64; endpoints.len()];
        let mut credit = vec![0f64; endpoints.len()];
        let mut slots = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        while filled < m {
            for (i, &(_, weight)) in endpoints.iter().enumerate() {
                // Weighted turns: an endpoint takes a slot when its credit reaches one.
                credit[i] += f64::from(weight.max(1)) / max_weight;
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if slots[slot] == u32::MAX {
                        slots[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Table {
            slots: slots.into(),
        }
    }

    pub(super) fn find(&self, hash: u64, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let m = self.slots.len() as u64;
        if m == 0 {
            return None;
        }
        // The key's slot; if its endpoint is unusable, a few rehashes keep the key's new home
        // stable, then any usable endpoint.
        let mut h = hash;
        for _ in 0..8 {
            let i = self
                .slots
                .get((h % m) as usize)
                .copied()
                .map(|i| i as usize)?;
            if usable(i) {
                return Some(i);
            }
            h = mix(h.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        let max = self
            .slots
            .iter()
            .copied()
            .max()
            .map_or(0, |i| i as usize + 1);
        (0..max).find(|&i| usable(i))
    }
}
