//! Route lookup per request: `RouteTable::find` on a mesh-sized table of 1,000 routes (many
//! hosts, prefixes, regexes, header matches, wildcards, host-agnostic routes), which goes
//! through the host and path-segment index, and on a small 10-route table, which is scanned in
//! order; for a hit on the first route, hits late in declared order, and a miss. Also the cost
//! of compiling the large table, paid on every config reload.
//!
//! `cargo bench -p strait-benches --bench route`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use strait_config::{HeaderMatch, PathMatch, RouteMatch};
use strait_proxy::route::{RequestView, RouteTable};

const SERVICES: usize = 150;
const TENANTS: usize = 50;

fn route(hosts: &[String], path: Option<PathMatch>) -> RouteMatch {
    RouteMatch {
        hosts: hosts.to_vec(),
        path,
        ..RouteMatch::default()
    }
}

/// 150 services × 5 routes, 50 wildcard tenants × 2 routes, 150 host-agnostic routes.
fn large_table() -> Vec<RouteMatch> {
    let mut routes = Vec::with_capacity(1_000);
    for s in 0..SERVICES {
        let host = vec![format!("svc-{s:03}.mesh.internal")];
        routes.push(route(&host, Some(PathMatch::Exact("/healthz".into()))));
        routes.push(RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                exact: Some("true".into()),
                regex: None,
                present: None,
            }],
            ..route(&host, Some(PathMatch::Prefix("/api/v2".into())))
        });
        routes.push(RouteMatch {
            methods: vec!["GET".into(), "POST".into()],
            ..route(&host, Some(PathMatch::Prefix("/api/v2".into())))
        });
        routes.push(route(
            &host,
            Some(PathMatch::Regex("/users/[0-9]+/orders".into())),
        ));
        routes.push(route(&host, Some(PathMatch::Prefix("/".into()))));
    }
    for t in 0..TENANTS {
        let host = vec![format!("*.tenant-{t:02}.example.net")];
        routes.push(route(&host, Some(PathMatch::Prefix("/static/".into()))));
        routes.push(route(&host, None));
    }
    for i in 0..100 {
        routes.push(route(&[], Some(PathMatch::Prefix(format!("/shared-{i}")))));
    }
    for i in 0..30 {
        routes.push(route(
            &[],
            Some(PathMatch::Regex(format!("/legacy-{i}/[a-z]+/[0-9]+"))),
        ));
    }
    for i in 0..20 {
        routes.push(route(
            &[],
            Some(PathMatch::Exact(format!("/.well-known/thing-{i}"))),
        ));
    }
    assert_eq!(routes.len(), 1_000);
    routes
}

/// Three hosts and a catch-all: a typical small gateway.
fn small_table() -> Vec<RouteMatch> {
    let host = |h: &str| vec![h.to_owned()];
    vec![
        route(
            &host("api.example.com"),
            Some(PathMatch::Exact("/healthz".into())),
        ),
        route(
            &host("api.example.com"),
            Some(PathMatch::Prefix("/v1".into())),
        ),
        route(
            &host("api.example.com"),
            Some(PathMatch::Prefix("/v2".into())),
        ),
        route(
            &host("api.example.com"),
            Some(PathMatch::Regex("/users/[0-9]+".into())),
        ),
        route(
            &host("www.example.com"),
            Some(PathMatch::Prefix("/static".into())),
        ),
        route(&host("www.example.com"), None),
        route(&host("*.cdn.example.com"), None),
        route(&[], Some(PathMatch::Prefix("/.well-known".into()))),
        route(&[], Some(PathMatch::Exact("/robots.txt".into()))),
        route(&[], Some(PathMatch::Prefix("/admin".into()))),
    ]
}

fn build(routes: &[RouteMatch]) -> RouteTable<usize> {
    match RouteTable::build(routes.iter().zip(0..)) {
        Ok(table) => table,
        Err(e) => panic!("bench table does not compile: {e}"),
    }
}

fn bench_find(
    c: &mut Criterion,
    name: &str,
    table: &RouteTable<usize>,
    host: &str,
    path: &str,
    expect: Option<usize>,
) {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let req = RequestView {
        method: &Method::GET,
        host: host.as_bytes(),
        path,
        query: Some("page=2"),
        headers: &headers,
        peer: None,
    };
    assert_eq!(table.find(&req).copied(), expect, "{name}");
    c.bench_function(name, |b| b.iter(|| table.find(black_box(&req))));
}

fn routes(c: &mut Criterion) {
    let large = large_table();
    let table = build(&large);
    bench_find(
        c,
        "route/1000/hit_first",
        &table,
        "svc-000.mesh.internal",
        "/healthz",
        Some(0),
    );
    bench_find(
        c,
        "route/1000/hit_late_host_regex",
        &table,
        "SVC-149.mesh.internal:8080",
        "/users/42/orders",
        Some(748),
    );
    bench_find(
        c,
        "route/1000/hit_late_wildcard",
        &table,
        "shop.tenant-49.example.net",
        "/cart",
        Some(849),
    );
    bench_find(
        c,
        "route/1000/hit_last_any_host",
        &table,
        "unknown.example.org",
        "/.well-known/thing-19",
        Some(999),
    );
    bench_find(
        c,
        "route/1000/hit_any_host_regex",
        &table,
        "unknown.example.org",
        "/legacy-29/orders/7",
        Some(979),
    );
    bench_find(
        c,
        "route/1000/miss",
        &table,
        "unknown.example.org",
        "/nothing/here",
        None,
    );

    let small = small_table();
    let small_table = build(&small);
    bench_find(
        c,
        "route/10/hit_first",
        &small_table,
        "api.example.com",
        "/healthz",
        Some(0),
    );
    bench_find(
        c,
        "route/10/hit_last",
        &small_table,
        "other.example.org",
        "/admin/x",
        Some(9),
    );
    bench_find(
        c,
        "route/10/miss",
        &small_table,
        "other.example.org",
        "/x",
        None,
    );

    c.bench_function("route/1000/build", |b| b.iter(|| build(black_box(&large))));
}

criterion_group!(benches, routes);
criterion_main!(benches);
