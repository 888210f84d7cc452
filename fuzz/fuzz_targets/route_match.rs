//! Fuzzes route matching, the first decision the data plane makes on every request: a route
//! table built from fuzz bytes (hosts, paths, regexes, header and query conditions) and a
//! request whose host, path, query and headers are as hostile as a peer can make them.
//!
//! Checks that nothing panics, that the indexed lookup agrees with trying each route on its own
//! in declared order (the index must never change which route wins), and that the rewrite and
//! redirect helpers keep their promises on whatever matched.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use strait_config::{HeaderMatch, PathMatch, QueryMatch, Redirect, RouteMatch};
use strait_proxy::route::{
    host_bytes_without_port, host_without_port, redirect_location, rewrite_prefix, RequestView,
    RouteTable,
};

// Pools give the fuzzer realistic values to combine; raw bytes give it everything else.
const HOSTS: &[&str] = &[
    "a.example.com",
    "*.example.com",
    "*.b.example.com",
    "A.EXAMPLE.COM",
    "example.com",
    "*.com",
    "[::1]",
    "x",
];
const REQUEST_HOSTS: &[&str] = &[
    "a.example.com",
    "A.Example.Com:8080",
    "c.b.example.com",
    "example.com",
    ".example.com",
    "[::1]:443",
    "[::1",
    "::1",
    "",
    "x:",
];
const PATHS: &[&str] = &["/", "/api", "/api/", "/api/x", "//", "/a/b/c", "*", ""];
const REGEXES: &[&str] = &["/api/[0-9]+", "/(a|b)/.*", ".*", "/api/?x", "(", "/a)|(b"];
const METHODS: &[&str] = &["GET", "POST", "get", "PURGE", ""];
const HEADER_NAMES: &[&str] = &["x-a", "X-B", "host", "bad name"];
const VALUES: &[&str] = &["1", "v[0-9]", "", "a,b"];

/// Reads the fuzz input front to back; past its end every read yields zero.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        first
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A pool entry or up to 31 raw bytes, made UTF-8.
    fn text(&mut self, pool: &[&str]) -> String {
        let tag = self.byte();
        if tag & 1 == 0 {
            let i = usize::from(tag >> 1) % pool.len();
            pool.get(i).copied().unwrap_or_default().to_owned()
        } else {
            let len = usize::from(tag >> 1) % 32;
            String::from_utf8_lossy(self.bytes(len)).into_owned()
        }
    }

    fn optional_text(&mut self, pool: &[&str]) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.text(pool))
    }

    /// `exact`, `regex` and `present`, sometimes more than one (a config error).
    fn value_condition(&mut self) -> (Option<String>, Option<String>, Option<bool>) {
        let kind = self.byte();
        let exact = (kind & 1 != 0).then(|| self.text(VALUES));
        let regex = (kind & 2 != 0).then(|| self.text(REGEXES));
        let present = (kind & 4 != 0).then_some(kind & 8 != 0);
        (exact, regex, present)
    }

    fn route(&mut self) -> RouteMatch {
        let flags = self.byte();
        let mut m = RouteMatch::default();
        for _ in 0..flags & 3 {
            m.hosts.push(self.text(HOSTS));
        }
        m.path = match (flags >> 2) & 3 {
            0 => None,
            1 => Some(PathMatch::Exact(self.text(PATHS))),
            2 => Some(PathMatch::Prefix(self.text(PATHS))),
            _ => Some(PathMatch::Regex(self.text(REGEXES))),
        };
        if flags & 16 != 0 {
            m.methods.push(self.text(METHODS));
        }
        if flags & 32 != 0 {
            let name = self.text(HEADER_NAMES);
            let (exact, regex, present) = self.value_condition();
            m.headers.push(HeaderMatch {
                name,
                exact,
                regex,
                present,
            });
        }
        if flags & 64 != 0 {
            let name = self.text(&["q", "Q", ""]);
            let (exact, regex, present) = self.value_condition();
            m.query.push(QueryMatch {
                name,
                exact,
                regex,
                present,
            });
        }
        m
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let routes: Vec<RouteMatch> = (0..input.byte() % 12).map(|_| input.route()).collect();

    let table = match RouteTable::build(routes.iter().zip(0usize..)) {
        Ok(table) => table,
        Err(e) => {
            assert!(e.route < routes.len());
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Route errors are per route, so each route builds alone when the whole table did.
    let singles: Vec<RouteTable<()>> = routes
        .iter()
        .map(|m| match RouteTable::build([(m, ())]) {
            Ok(single) => single,
            Err(e) => panic!("route builds in a table but not alone: {e}"),
        })
        .collect();

    let host = input.text(REQUEST_HOSTS);
    let path = input.text(PATHS);
    let query = input.optional_text(&["q=1", "Q=2&q=v3", "q", "=&&="]);
    let method = Method::from_bytes(input.text(METHODS).as_bytes()).unwrap_or(Method::GET);
    let mut headers = HeaderMap::new();
    for _ in 0..input.byte() % 3 {
        let name = HeaderName::from_bytes(input.text(HEADER_NAMES).as_bytes());
        let len = usize::from(input.byte() % 16);
        let value = HeaderValue::from_bytes(input.bytes(len));
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    let req = RequestView {
        method: &method,
        host: host.as_bytes(),
        path: &path,
        query: query.as_deref(),
        headers: &headers,
        peer: None,
    };

    let found = table.find_with_match(&req);
    let first_alone = singles.iter().position(|t| t.find(&req).is_some());
    assert_eq!(found.map(|(&i, _)| i), first_alone);
    assert_eq!(table.find(&req), found.map(|(i, _)| i));

    if let Some((_, info)) = found {
        if let Some(len) = info.prefix_len {
            assert!(len <= path.len());
            let replacement = input.text(PATHS);
            assert!(rewrite_prefix(&path, len, &replacement).starts_with('/'));
        }
    }

    let bare = host_without_port(&host);
    assert!(host.starts_with(bare));
    assert_eq!(host_bytes_without_port(host.as_bytes()), bare.as_bytes());
    let redirect = Redirect {
        scheme: input.optional_text(&["https", "http", ""]),
        host: input.optional_text(REQUEST_HOSTS),
        port: (input.byte() & 1 == 1).then(|| u16::from_le_bytes([input.byte(), input.byte()])),
        path: input.optional_text(PATHS),
        status: 301,
    };
    let location = redirect_location(&redirect, "http", &host, &path, query.as_deref());
    assert!(!location.is_empty());
});
