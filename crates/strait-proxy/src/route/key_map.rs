//! The lookup structure under the route index: a read-only map from byte strings (hosts, path
//! segments) to index buckets, probed once or a few times per request.
//!
//! Built for that one job rather than using `HashMap<Box<[u8]>, V>` directly:
//! - host lookups ignore ASCII case without first copying the host into a lower-cased buffer:
//!   the hash lower-cases eight bytes at a time as it reads, and the key comparison ignores case;
//! - the hash is a fixed multiply-rotate over 8-byte words instead of SipHash. The keys are
//!   chosen by the config and a peer can only look them up, never insert, so it cannot build the
//!   collision chains a keyed hash defends against; the final mix spreads every input bit so the
//!   table's bucket bits stay well distributed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Whether keys compare with ASCII case ignored (hosts) or exactly (path segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyCase {
    Ignore,
    Exact,
}

/// Entries whose keys share one hash (one, short of a 64-bit collision).
type SameHash<V> = Vec<(Box<[u8]>, V)>;

#[derive(Debug)]
pub(super) struct KeyMap<V> {
    case: KeyCase,
    by_hash: HashMap<u64, SameHash<V>, BuildHasherDefault<PrehashedKey>>,
}

impl<V> KeyMap<V> {
    /// With [`KeyCase::Ignore`], keys that differ only in case collapse into the first given.
    pub(super) fn build(case: KeyCase, entries: impl IntoIterator<Item = (Box<[u8]>, V)>) -> Self {
        let mut by_hash: HashMap<u64, SameHash<V>, _> = HashMap::default();
        for (key, value) in entries {
            let same = by_hash.entry(key_hash(case, &key)).or_default();
            if !same.iter().any(|(k, _)| keys_equal(case, k, &key)) {
                same.push((key, value));
            }
        }
        by_hash.shrink_to_fit();
        KeyMap { case, by_hash }
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&V> {
        if self.by_hash.is_empty() {
            return None;
        }
        self.by_hash
            .get(&key_hash(self.case, key))?
            .iter()
            .find(|(k, _)| keys_equal(self.case, k, key))
            .map(|(_, value)| value)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            case: KeyCase::Exact,
            by_hash: HashMap::default(),
        }
    }
}

fn keys_equal(case: KeyCase, a: &[u8], b: &[u8]) -> bool {
    match case {
        KeyCase::Ignore => a.eq_ignore_ascii_case(b),
        KeyCase::Exact => a == b,
    }
}

const WORD_MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// Hash of `key`, lower-casing ASCII letters first when `case` says so.
fn key_hash(case: KeyCase, key: &[u8]) -> u64 {
    let fold = |hash: u64, word: u64| {
        let word = match case {
            KeyCase::Ignore => lower_ascii_word(word),
            KeyCase::Exact => word,
        };
        (hash.rotate_left(5) ^ word).wrapping_mul(WORD_MULTIPLIER)
    };
    // Seeded with the length, so the overlap or padding of the last word cannot make keys of
    // different lengths collide.
    let mut hash = (key.len() as u64).wrapping_mul(WORD_MULTIPLIER);
    let mut words = key.chunks_exact(8);
    for chunk in &mut words {
        hash = fold(hash, word_at(chunk));
    }
    if !words.remainder().is_empty() {
        let last = match key.len().checked_sub(8).and_then(|start| key.get(start..)) {
            // Re-reading a few bytes of the previous word is one load instead of a byte loop.
            Some(last_eight) => word_at(last_eight),
            None => key
                .iter()
                .rev()
                .fold(0, |word, &b| (word << 8) | u64::from(b)),
        };
        hash = fold(hash, last);
    }
    mix(hash)
}

/// The first eight bytes of `bytes` as a little-endian word (zero when there are fewer).
fn word_at(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|eight| <[u8; 8]>::try_from(eight).ok())
        .map_or(0, u64::from_le_bytes)
}

/// murmur3's fmix64: every input bit affects every output bit.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `A`–`Z` to `a`–`z` in each of the eight bytes at once; every other byte, including non-ASCII
/// ones, unchanged.
fn lower_ascii_word(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // Per byte, the low seven bits plus a bias sets the byte's high bit exactly when the byte is
    // at least the bias's threshold; seven bits plus a bias below 0x80 never carry into the next
    // byte.
    let low7 = word & !HIGH_BITS;
    let at_least_upper_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let past_upper_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = at_least_upper_a & !past_upper_z & !word & HIGH_BITS;
    // 0x80 >> 2 is 0x20, the bit that separates upper from lower case.
    word | (upper >> 2)
}

/// The table hashes `u64`s that [`key_hash`] already mixed; hashing them again would only cost.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` keys; kept correct rather than panicking.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(WORD_MULTIPLIER);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_ascii_word_matches_std_for_every_byte_in_every_position() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                let mut bytes = *b"xY-9.\xffZa";
                bytes[position] = byte;
                let mut want = bytes;
                want.make_ascii_lowercase();
                let got = lower_ascii_word(u64::from_le_bytes(bytes)).to_le_bytes();
                assert_eq!(got, want, "byte {byte:#x} at {position}");
            }
        }
    }

    fn map(case: KeyCase, keys: &[&str]) -> KeyMap<usize> {
        KeyMap::build(
            case,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (Box::from(k.as_bytes()), i)),
        )
    }

    #[test]
    fn caseless_lookup_of_any_length() {
        let long = "x".repeat(300) + ".example.com";
        let m = map(
            KeyCase::Ignore,
            &["a.example.com", "b", "", "exactly8", &long],
        );
        assert_eq!(m.get(b"A.Example.COM"), Some(&0));
        assert_eq!(m.get(b"B"), Some(&1));
        assert_eq!(m.get(b""), Some(&2));
        assert_eq!(m.get(b"EXACTLY8"), Some(&3));
        assert_eq!(m.get(long.to_uppercase().as_bytes()), Some(&4));
        assert_eq!(m.get(b"a.example.co"), None);
        assert_eq!(m.get(b"a.example.com\0"), None);
        assert_eq!(m.get(b"\xc3\xa9"), None);
    }

    #[test]
    fn exact_lookup_respects_case() {
        let m = map(KeyCase::Exact, &["api", "API2"]);
        assert_eq!(m.get(b"api"), Some(&0));
        assert_eq!(m.get(b"API"), None);
        assert_eq!(m.get(b"API2"), Some(&1));
        assert_eq!(m.get(b"api2"), None);
    }

    #[test]
    fn first_of_case_duplicates_wins() {
        let m = map(KeyCase::Ignore, &["a.com", "A.COM"]);
        assert_eq!(m.get(b"a.Com"), Some(&0));
    }

    #[test]
    fn hash_spreads_near_identical_keys() {
        let mut low_bits = std::collections::HashSet::new();
        for i in 0..256 {
            let key = format!("api-v{i:03}");
            low_bits.insert(key_hash(KeyCase::Exact, key.as_bytes()) & 0x3ff);
        }
        // 256 keys into 1024 slots: a well-mixed hash leaves few collisions.
        assert!(low_bits.len() > 200, "{}", low_bits.len());
    }
}
