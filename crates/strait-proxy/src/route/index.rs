//! Candidate preselection for [`RouteTable`](super::RouteTable): which routes could possibly
//! match a request, in declared order, without looking at all of them.
//!
//! Per request the data path asks the index once, then checks each candidate's full conditions
//! (see [`matcher`](super::matcher)) until one holds. The index is a superset filter: it may
//! propose a route that then fails its conditions, but it never leaves out one that could match,
//! and it yields route indices in ascending order, so "first declared match wins" is unchanged.
//!
//! Two levels:
//! - by host: a map of exact hosts and one of wildcard suffixes. Each bucket already holds every
//!   host-specific route that applies to a host landing in it (an exact host's bucket includes
//!   the wildcards covering it; a wildcard's bucket includes the shorter wildcards covering it),
//!   so a lookup finds one bucket. Routes without hosts live in a separate bucket.
//! - by first path segment, inside each bucket large enough for it to pay off: a route whose
//!   path match pins the first segment (`exact: /api/x`, `prefix: /api`, `regex: /api/v[0-9]+`)
//!   is filed under it; the rest (`prefix: /`, no path, a regex that does not spell out its
//!   first segment) apply to every segment.
//!
//! A lookup therefore merges four sorted lists: the host bucket's routes for the request's
//! segment and for any segment, and the same two from the host-agnostic bucket.

use std::collections::HashMap;

use super::key_map::{KeyCase, KeyMap};
use super::matcher::{request_segment, HostPattern};

/// Below this many routes a bucket is scanned whole: hashing the segment would cost more than
/// the few conditions it skips.
const SEGMENT_INDEX_MIN_ROUTES: usize = 8;

/// What the index needs to know about one route.
#[derive(Debug)]
pub(super) struct RouteKeys<'r> {
    /// Empty: any host.
    pub hosts: &'r [HostPattern],
    /// See [`RouteMatcher::required_segment`](super::matcher::RouteMatcher::required_segment).
    pub segment: Option<&'r str>,
}

#[derive(Debug, Default)]
pub(super) struct RouteIndex {
    /// Lower-case host → routes naming it or a wildcard covering it.
    exact_hosts: KeyMap<Bucket>,
    /// Lower-case suffix with its leading dot (`.example.com`) → routes with that wildcard or a
    /// shorter one covering it.
    wildcard_hosts: KeyMap<Bucket>,
    /// Lengths of the `wildcard_hosts` keys, so a host's suffixes of other lengths (most of
    /// them, for most hosts) are skipped without being hashed.
    wildcard_lengths: LengthSet,
    any_host: Bucket,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Empty for small buckets: everything is then in `any_segment`.
    by_segment: KeyMap<Box<[u32]>>,
    any_segment: Box<[u32]>,
}

impl RouteIndex {
    /// `routes[i]` describes route `i`; callers guarantee `routes.len() <= u32::MAX + 1`.
    pub(super) fn build(routes: &[RouteKeys<'_>]) -> Self {
        let mut exact: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut any_host = Vec::new();
        for (route, keys) in (0u32..).zip(routes) {
            if keys.hosts.is_empty() {
                any_host.push(route);
            }
            for pattern in keys.hosts {
                match pattern {
                    HostPattern::Exact(host) => exact.entry(host).or_default().push(route),
                    HostPattern::Suffix(suffix) => wildcard.entry(suffix).or_default().push(route),
                }
            }
        }
        // Every wildcard that covers `name` other than `name` itself: its suffixes that start at
        // a dot after the first character.
        let covering = |name: &str| -> Vec<u32> {
            inner_dots(name.as_bytes())
                .filter_map(|dot| name.get(dot..))
                .filter_map(|suffix| wildcard.get(suffix))
                .flatten()
                .copied()
                .collect()
        };
        let exact_hosts = KeyMap::build(
            KeyCase::Ignore,
            exact.iter().map(|(&host, own)| {
                let mut members = own.clone();
                members.extend(covering(host));
                (Box::from(host.as_bytes()), Bucket::build(members, routes))
            }),
        );
        let wildcard_lengths = LengthSet::from_lengths(wildcard.keys().map(|k| k.len()));
        let wildcard_hosts = KeyMap::build(
            KeyCase::Ignore,
            wildcard.iter().map(|(&suffix, own)| {
                let mut members = own.clone();
                members.extend(covering(suffix));
                (Box::from(suffix.as_bytes()), Bucket::build(members, routes))
            }),
        );
        RouteIndex {
            exact_hosts,
            wildcard_hosts,
            wildcard_lengths,
            any_host: Bucket::build(any_host, routes),
        }
    }

    /// Routes that may match a request for `host` (without port) and `path`, ascending.
    pub(super) fn candidates<'i>(&'i self, host: &[u8], path: &str) -> Candidates<'i> {
        let segment = request_segment(path);
        let (host_by_segment, host_any_segment) = match self.host_bucket(host) {
            Some(bucket) => (bucket.for_segment(segment), &*bucket.any_segment),
            None => (&[][..], &[][..]),
        };
        Candidates {
            lists: [
                host_by_segment,
                host_any_segment,
                self.any_host.for_segment(segment),
                &self.any_host.any_segment,
            ],
        }
    }

    fn host_bucket(&self, host: &[u8]) -> Option<&Bucket> {
        if let Some(bucket) = self.exact_hosts.get(host) {
            return Some(bucket);
        }
        if self.wildcard_hosts.is_empty() {
            return None;
        }
        // Leftmost dot first: the longest wildcard covering the host has the fullest bucket.
        inner_dots(host)
            .filter_map(|dot| host.get(dot..))
            .filter(|suffix| self.wildcard_lengths.contains(suffix.len()))
            .find_map(|suffix| self.wildcard_hosts.get(suffix))
    }
}

/// A set of lengths: exact below 256, and one shared answer for every length from 256 up.
#[derive(Debug, Default, Clone, Copy)]
struct LengthSet {
    short: [u64; 4],
    any_long: bool,
}

impl LengthSet {
    fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut set = LengthSet::default();
        for len in lengths {
            match set.short.get_mut(len / 64) {
                Some(bits) => *bits |= 1 << (len % 64),
                None => set.any_long = true,
            }
        }
        set
    }

    fn contains(&self, len: usize) -> bool {
        match self.short.get(len / 64) {
            Some(bits) => bits & (1 << (len % 64)) != 0,
            None => self.any_long,
        }
    }
}

/// Positions of the dots in `name` after its first character: where the suffixes a wildcard
/// can cover start (a wildcard needs at least one character before its suffix).
fn inner_dots(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    name.iter()
        .enumerate()
        .skip(1)
        .filter(|&(_, &b)| b == b'.')
        .map(|(i, _)| i)
}

impl Bucket {
    fn build(mut members: Vec<u32>, routes: &[RouteKeys<'_>]) -> Self {
        members.sort_unstable();
        members.dedup();
        if members.len() < SEGMENT_INDEX_MIN_ROUTES {
            return Bucket {
                by_segment: KeyMap::default(),
                any_segment: members.into(),
            };
        }
        let mut by_segment: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut any_segment = Vec::new();
        for route in members {
            let segment = usize::try_from(route)
                .ok()
                .and_then(|i| routes.get(i))
                .and_then(|keys| keys.segment);
            match segment {
                Some(segment) => by_segment.entry(segment).or_default().push(route),
                None => any_segment.push(route),
            }
        }
        Bucket {
            by_segment: KeyMap::build(
                KeyCase::Exact,
                by_segment
                    .into_iter()
                    .map(|(segment, list)| (Box::from(segment.as_bytes()), list.into())),
            ),
            any_segment: any_segment.into(),
        }
    }

    fn for_segment(&self, segment: Option<&str>) -> &[u32] {
        match segment {
            Some(segment) => self
                .by_segment
                .get(segment.as_bytes())
                .map_or(&[], |list| list),
            None => &[],
        }
    }
}

/// Merges the index's sorted lists into one ascending sequence of route indices, on the stack.
#[derive(Debug)]
pub(super) struct Candidates<'i> {
    lists: [&'i [u32]; 4],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let mut lowest: Option<(usize, u32)> = None;
        for (which, list) in self.lists.iter().enumerate() {
            if let Some(&head) = list.first() {
                if lowest.is_none_or(|(_, best)| head < best) {
                    lowest = Some((which, head));
                }
            }
        }
        let (which, route) = lowest?;
        if let Some(list) = self.lists.get_mut(which) {
            *list = list.get(1..).unwrap_or(&[]);
        }
        usize::try_from(route).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(
        hosts: &[&str],
        segment: Option<&'static str>,
    ) -> (Vec<HostPattern>, Option<&'static str>) {
        (
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            segment,
        )
    }

    fn index(routes: &[(Vec<HostPattern>, Option<&'static str>)]) -> RouteIndex {
        let keys: Vec<RouteKeys<'_>> = routes
            .iter()
            .map(|(hosts, segment)| RouteKeys {
                hosts,
                segment: *segment,
            })
            .collect();
        RouteIndex::build(&keys)
    }

    fn candidates(index: &RouteIndex, host: &str, path: &str) -> Vec<usize> {
        index.candidates(host.as_bytes(), path).collect()
    }

    #[test]
    fn host_buckets_include_covering_wildcards_in_order() {
        let idx = index(&[
            keys(&["*.example.com"], None),                  // 0
            keys(&["a.example.com"], None),                  // 1
            keys(&[], None),                                 // 2
            keys(&["*.b.example.com"], None),                // 3
            keys(&["other.org"], None),                      // 4
            keys(&["*.com", "x.org"], None),                 // 5
            keys(&["A.example.com", "*.example.com"], None), // 6
        ]);
        assert_eq!(candidates(&idx, "a.example.com", "/"), [0, 1, 2, 5, 6]);
        assert_eq!(candidates(&idx, "A.EXAMPLE.com", "/"), [0, 1, 2, 5, 6]);
        assert_eq!(candidates(&idx, "x.b.example.com", "/"), [0, 2, 3, 5, 6]);
        assert_eq!(candidates(&idx, "b.example.com", "/"), [0, 2, 5, 6]);
        assert_eq!(candidates(&idx, "example.com", "/"), [2, 5]);
        assert_eq!(candidates(&idx, "com", "/"), [2]);
        assert_eq!(candidates(&idx, ".com", "/"), [2]);
        assert_eq!(candidates(&idx, "other.org", "/"), [2, 4]);
        assert_eq!(candidates(&idx, "", "/"), [2]);
    }

    #[test]
    fn long_hosts_get_the_same_answer() {
        let idx = index(&[
            keys(&["*.example.com"], None),
            keys(&["*.b.example.com"], None),
        ]);
        let long = format!("{}.B.example.com", "a".repeat(300));
        assert_eq!(candidates(&idx, &long, "/"), [0, 1]);
        let long_other = format!("{}.example.org", "a".repeat(300));
        assert!(candidates(&idx, &long_other, "/").is_empty());
    }

    #[test]
    fn segments_filter_large_buckets_only() {
        let mut routes = Vec::new();
        for i in 0..20 {
            routes.push(keys(&[], Some(if i % 2 == 0 { "api" } else { "web" })));
        }
        routes.push(keys(&[], None)); // 20
        let idx = index(&routes);
        let api: Vec<usize> = (0..20).step_by(2).chain([20]).collect();
        assert_eq!(candidates(&idx, "h", "/api/x"), api);
        assert_eq!(candidates(&idx, "h", "/other"), [20]);
        assert_eq!(candidates(&idx, "h", "*"), [20]);

        let small = index(&[keys(&[], Some("api")), keys(&[], Some("web"))]);
        assert_eq!(candidates(&small, "h", "/api"), [0, 1]);
    }

    #[test]
    fn length_set() {
        let set = LengthSet::from_lengths([0, 4, 63, 64, 255]);
        for len in [0, 4, 63, 64, 255] {
            assert!(set.contains(len), "{len}");
        }
        for len in [1, 62, 65, 254, 256, 1000] {
            assert!(!set.contains(len), "{len}");
        }
        let long = LengthSet::from_lengths([300]);
        assert!(long.contains(256) && long.contains(5000) && !long.contains(255));
    }
}
