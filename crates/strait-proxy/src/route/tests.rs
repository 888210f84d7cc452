//! Table-level tests: first-match order, host handling, and the index agreeing with a naive
//! linear scan on many random tables and requests.

use super::*;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use strait_config::{HeaderMatch, PathMatch, QueryMatch, RouteMatch};

fn hosts(hosts: &[&str]) -> RouteMatch {
    RouteMatch {
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..RouteMatch::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch::Prefix(p.into())),
        ..RouteMatch::default()
    }
}

fn table(matches: &[RouteMatch]) -> RouteTable<usize> {
    RouteTable::build(matches.iter().zip(0..)).unwrap()
}

/// The same routes, always through the index however few they are.
fn indexed_table(matches: &[RouteMatch]) -> RouteTable<usize> {
    RouteTable::build_with_scan_limit(matches.iter().zip(0..), 0).unwrap()
}

/// Runs a table-level test against both lookup strategies.
fn both_tables(matches: &[RouteMatch]) -> [RouteTable<usize>; 2] {
    [table(matches), indexed_table(matches)]
}

fn find(table: &RouteTable<usize>, host: &str, path: &str) -> Option<usize> {
    let headers = HeaderMap::new();
    let req = RequestView {
        method: &Method::GET,
        host: host.as_bytes(),
        path,
        query: None,
        headers: &headers,
        peer: None,
    };
    table.find(&req).copied()
}

#[test]
fn first_declared_match_wins() {
    for t in both_tables(&[
        prefix("/api/v1"),
        prefix("/api"),
        prefix("/"),
        prefix("/api/v1/users"),
    ]) {
        assert_eq!(find(&t, "h", "/api/v1/users"), Some(0));
        assert_eq!(find(&t, "h", "/api/v2"), Some(1));
        assert_eq!(find(&t, "h", "/other"), Some(2));
        assert_eq!(t.len(), 4);
    }
}

#[test]
fn catch_all_before_specific_hosts_still_wins() {
    for t in both_tables(&[
        RouteMatch::default(),
        hosts(&["a.example.com"]),
        hosts(&["*.example.com"]),
    ]) {
        assert_eq!(find(&t, "a.example.com", "/"), Some(0));
    }
    for t in both_tables(&[
        hosts(&["*.example.com"]),
        hosts(&["a.example.com"]),
        RouteMatch::default(),
    ]) {
        assert_eq!(find(&t, "a.example.com", "/"), Some(0));
        assert_eq!(find(&t, "example.com", "/"), Some(2));
    }
}

#[test]
fn hosts_ignore_case_and_port() {
    for t in both_tables(&[hosts(&["Api.Example.com"]), hosts(&["[::1]"])]) {
        assert_eq!(find(&t, "api.example.com", "/"), Some(0));
        assert_eq!(find(&t, "API.EXAMPLE.COM:8443", "/"), Some(0));
        assert_eq!(find(&t, "api.example.com.evil", "/"), None);
        assert_eq!(find(&t, "[::1]:8080", "/"), Some(1));
        assert_eq!(find(&t, "[::1]", "/"), Some(1));
        assert_eq!(find(&t, "", "/"), None);
    }
}

#[test]
fn wildcard_hosts() {
    for t in both_tables(&[hosts(&["*.example.com"]), hosts(&["example.com"])]) {
        assert_eq!(find(&t, "a.example.com", "/"), Some(0));
        assert_eq!(find(&t, "a.b.example.com:80", "/"), Some(0));
        assert_eq!(find(&t, "A.EXAMPLE.COM", "/"), Some(0));
        assert_eq!(find(&t, "example.com", "/"), Some(1));
        assert_eq!(find(&t, ".example.com", "/"), None);
        assert_eq!(find(&t, "badexample.com", "/"), None);
    }
}

#[test]
fn host_and_path_must_both_hold() {
    for t in both_tables(&[
        RouteMatch {
            hosts: vec!["a.com".into()],
            path: Some(PathMatch::Prefix("/api".into())),
            ..RouteMatch::default()
        },
        hosts(&["a.com"]),
        prefix("/api"),
    ]) {
        assert_eq!(find(&t, "a.com", "/api/x"), Some(0));
        assert_eq!(find(&t, "a.com", "/web"), Some(1));
        assert_eq!(find(&t, "b.com", "/api"), Some(2));
        assert_eq!(find(&t, "b.com", "/web"), None);
    }
}

#[test]
fn find_with_match_reports_the_prefix_length() {
    for t in both_tables(&[
        RouteMatch {
            path: Some(PathMatch::Exact("/exact".into())),
            ..RouteMatch::default()
        },
        prefix("/api/"),
        prefix("/"),
    ]) {
        let headers = HeaderMap::new();
        let view = |path| RequestView {
            method: &Method::GET,
            host: b"h",
            path,
            query: None,
            headers: &headers,
            peer: None,
        };
        let info = |path| {
            t.find_with_match(&view(path))
                .map(|(&i, m)| (i, m.prefix_len))
        };
        assert_eq!(info("/exact"), Some((0, None)));
        assert_eq!(info("/api/x"), Some((1, Some(5))));
        assert_eq!(info("/api"), Some((2, Some(1))));
    }
}

#[test]
fn empty_table_matches_nothing() {
    for t in both_tables(&[]) {
        assert!(t.is_empty());
        assert_eq!(find(&t, "h", "/"), None);
    }
}

#[test]
fn build_errors_name_the_route_and_field() {
    let bad = [
        RouteMatch::default(),
        prefix("/ok"),
        RouteMatch {
            path: Some(PathMatch::Regex("/(unclosed".into())),
            ..RouteMatch::default()
        },
    ];
    let err = RouteTable::build(bad.iter().zip(0..)).unwrap_err();
    assert_eq!(err.route, 2);
    assert!(
        err.message.starts_with("match.path.regex:"),
        "{}",
        err.message
    );
    assert!(err.to_string().starts_with("route 2: match.path.regex:"));

    let err = RouteTable::build([(&hosts(&["ok.com", "a.com:80"]), ())]).unwrap_err();
    assert_eq!(err.route, 0);
    assert!(
        err.message.starts_with("match.hosts[1]:"),
        "{}",
        err.message
    );
}

#[test]
fn large_table_with_shared_host_and_segment() {
    // Enough routes on one host and with one first segment that both index levels are used.
    let mut matches: Vec<RouteMatch> = (0..50)
        .map(|i| RouteMatch {
            hosts: vec!["a.com".into()],
            path: Some(PathMatch::Exact(format!("/api/{i}"))),
            ..RouteMatch::default()
        })
        .collect();
    matches.push(RouteMatch {
        hosts: vec!["*.com".into()],
        path: Some(PathMatch::Regex("/api/[0-9]+".into())),
        ..RouteMatch::default()
    });
    matches.extend((0..50).map(|i| prefix(&format!("/s{i}"))));
    let t = table(&matches);
    assert_eq!(find(&t, "a.com", "/api/49"), Some(49));
    assert_eq!(find(&t, "A.com:1", "/api/7"), Some(7));
    assert_eq!(find(&t, "a.com", "/api/50"), Some(50));
    assert_eq!(find(&t, "b.com", "/api/3"), Some(50));
    assert_eq!(find(&t, "b.com", "/s13/x"), Some(64));
    assert_eq!(find(&t, "b.org", "/api/3"), None);
}

/// The specification the index must not change: try every route in order.
struct LinearScan {
    routes: Vec<(Vec<HostPattern>, RouteMatcher)>,
}

impl LinearScan {
    fn new(matches: &[RouteMatch]) -> Self {
        let routes = matches
            .iter()
            .map(|m| {
                let hosts = m.hosts.iter().map(|h| HostPattern::parse(h).unwrap());
                (hosts.collect(), RouteMatcher::compile(m).unwrap())
            })
            .collect();
        LinearScan { routes }
    }

    fn find(&self, req: &RequestView<'_>) -> Option<(usize, MatchInfo)> {
        let host = routing_host(req.host);
        self.routes
            .iter()
            .enumerate()
            .find_map(|(i, (hosts, matcher))| {
                let host_ok = hosts.is_empty() || hosts.iter().any(|h| h.matches(host));
                if !host_ok {
                    return None;
                }
                matcher.matches(req).map(|info| (i, info))
            })
    }
}

fn pick<'p>(rng: &mut fastrand::Rng, pool: &[&'p str]) -> &'p str {
    pool[rng.usize(..pool.len())]
}

const HOST_PATTERNS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "A.Example.COM",
    "*.example.com",
    "*.b.example.com",
    "example.com",
    "*.com",
    "x.org",
    "*.x.org",
    "[::1]",
];

const PATH_POOL: &[&str] = &["/", "/api", "/api/", "/api/x", "/web", "//", "/a", "/API"];

fn random_match(rng: &mut fastrand::Rng) -> RouteMatch {
    let mut m = RouteMatch::default();
    if rng.u8(..3) > 0 {
        for _ in 0..rng.usize(1..=2) {
            m.hosts.push(pick(rng, HOST_PATTERNS).to_owned());
        }
    }
    m.path = match rng.u8(..8) {
        0 => None,
        1 | 2 => Some(PathMatch::Exact(pick(rng, PATH_POOL).into())),
        3..=6 => Some(PathMatch::Prefix(pick(rng, PATH_POOL).into())),
        _ => Some(PathMatch::Regex(
            pick(
                rng,
                &[
                    "/api/[a-z]+",
                    "/(web|api)",
                    ".*",
                    "/a.*",
                    "/api/?x",
                    "/web/[0-9]",
                    "/a/b|/api/x",
                    "//x",
                ],
            )
            .into(),
        )),
    };
    if rng.u8(..5) == 0 {
        m.methods.push(pick(rng, &["GET", "POST"]).to_owned());
    }
    if rng.u8(..5) == 0 {
        m.headers.push(HeaderMatch {
            name: "x-a".into(),
            exact: rng.bool().then(|| "1".to_owned()),
            regex: None,
            present: None,
        });
    }
    if rng.u8(..6) == 0 {
        let absent = rng.bool();
        m.query.push(QueryMatch {
            name: "q".into(),
            exact: None,
            regex: (!absent).then(|| "[0-9]".to_owned()),
            present: absent.then_some(false),
        });
    }
    m
}

#[test]
fn index_agrees_with_linear_scan_on_random_tables() {
    let mut rng = fastrand::Rng::with_seed(0x0571_2a17);
    let long_host = format!("{}.b.example.com", "l".repeat(300));
    let request_hosts = [
        "a.example.com",
        "A.EXAMPLE.COM:8080",
        "b.example.com",
        "c.b.example.com",
        "example.com",
        "com",
        ".example.com",
        "x.org:1",
        "y.x.org",
        "[::1]:80",
        "[::1]",
        "",
        "other.net",
        &long_host,
    ];
    let request_paths = [
        "/", "/api", "/api/", "/api/x", "/api/x/y", "/apix", "/web", "/web/1", "//", "//x", "/a",
        "/a/b", "*", "", "/API", "/apiapi", "/api/api",
    ];
    let mut checked = 0;
    let mut hits = 0;
    for round in 0..400 {
        // Mostly small tables, some large enough for the segment level of the index.
        let size = if round % 10 == 0 {
            rng.usize(100..300)
        } else {
            rng.usize(0..40)
        };
        let matches: Vec<RouteMatch> = (0..size).map(|_| random_match(&mut rng)).collect();
        let t = indexed_table(&matches);
        let small_or_indexed = table(&matches);
        let linear = LinearScan::new(&matches);
        for _ in 0..200 {
            let mut headers = HeaderMap::new();
            if rng.bool() {
                let value = pick(&mut rng, &["1", "2"]);
                headers.insert(
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static(value),
                );
            }
            let method = if rng.bool() {
                Method::GET
            } else {
                Method::POST
            };
            let req = RequestView {
                method: &method,
                host: pick(&mut rng, &request_hosts).as_bytes(),
                path: pick(&mut rng, &request_paths),
                query: [None, Some("q=1"), Some("q=x"), Some("")][rng.usize(..4)],
                headers: &headers,
                peer: None,
            };
            let want = linear.find(&req);
            let got = t.find_with_match(&req).map(|(&i, info)| (i, info));
            assert_eq!(got, want, "table {matches:#?}\nrequest {req:?}");
            let default = small_or_indexed.find_with_match(&req);
            assert_eq!(default.map(|(&i, info)| (i, info)), want);
            checked += 1;
            hits += usize::from(want.is_some());
        }
    }
    // The pools must exercise both outcomes, or the comparison proves little.
    assert!(
        hits > checked / 5 && hits < checked * 4 / 5,
        "{hits}/{checked}"
    );
}
