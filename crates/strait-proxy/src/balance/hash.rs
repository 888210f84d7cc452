//! The stable hash behind `ring_hash` and `maglev`: the same key must land on the same
//! endpoint in every worker, every process and every version, so no seeded std hasher.

/// FNV-1a 64 over `bytes`, then a SplitMix64 finalizer so that similar keys (sequential user
/// ids, neighbouring IPs) spread evenly over the hash space.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix(fnv1a(bytes))
}

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: a bijection with full avalanche.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
