//! Which upstream a request reaches: every matcher kind, first-match order, 404 when nothing
//! matches, weighted backends, and each load balancer seen from the outside.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;
use support::*;

/// Sends a request with extra headers on a fresh connection; returns the answering upstream's
/// name, or `404` when the proxy answered `no_route`.
async fn route_of(
    proxy: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut b = request(method, host, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(empty()).expect("request");
    let resp = within(REQUEST_LIMIT, "routed request", proxy.send(Proto::H1, req))
        .await
        .unwrap_or_else(|e| panic!("{method} {host}{path}: {e}"));
    if resp.status == StatusCode::NOT_FOUND && resp.header("x-strait-error").is_some() {
        assert_eq!(
            resp.header("x-strait-error").as_deref(),
            Some("no_route"),
            "{method} {host}{path}: 404 from the proxy must say no_route"
        );
        return "404".to_owned();
    }
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "{method} {host}{path}: {}",
        resp.text()
    );
    resp.upstream()
}

/// (method, host, path, request headers, expected upstream or `404`).
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_matcher_kind_selects_its_route() {
    let names = [
        "exact_host",
        "wild_host",
        "path_exact",
        "path_prefix",
        "path_regex",
        "method",
        "hdr_exact",
        "hdr_regex",
        "hdr_present",
        "hdr_absent",
        "q_exact",
        "q_regex",
        "q_present",
        "q_absent",
        "all_conds",
        "root_prefix",
    ];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::echo(n).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ hosts: [exact.example.com] }}
        backends: [{{ cluster: exact_host }}]
      - match: {{ hosts: ["*.wild.example.com"] }}
        backends: [{{ cluster: wild_host }}]
      - match: {{ hosts: [paths.example.com], path: {{ exact: /exact }} }}
        backends: [{{ cluster: path_exact }}]
      - match: {{ hosts: [paths.example.com], path: {{ prefix: /api }} }}
        backends: [{{ cluster: path_prefix }}]
      - match: {{ hosts: [paths.example.com], path: {{ regex: "/users/[0-9]+" }} }}
        backends: [{{ cluster: path_regex }}]
      - match: {{ hosts: [methods.example.com], methods: [POST, PUT] }}
        backends: [{{ cluster: method }}]
      - match: {{ hosts: [headers.example.com], headers: [{{ name: x-tenant, exact: blue }}] }}
        backends: [{{ cluster: hdr_exact }}]
      - match: {{ hosts: [headers.example.com], headers: [{{ name: x-version, regex: "v[0-9]+" }}] }}
        backends: [{{ cluster: hdr_regex }}]
      - match: {{ hosts: [headers.example.com], headers: [{{ name: X-Canary }}] }}
        backends: [{{ cluster: hdr_present }}]
      - match: {{ hosts: [headers.example.com], headers: [{{ name: x-debug, present: false }}] }}
        backends: [{{ cluster: hdr_absent }}]
      - match: {{ hosts: [query.example.com], query: [{{ name: tier, exact: gold }}] }}
        backends: [{{ cluster: q_exact }}]
      - match: {{ hosts: [query.example.com], query: [{{ name: id, regex: "[0-9]+" }}] }}
        backends: [{{ cluster: q_regex }}]
      - match: {{ hosts: [query.example.com], query: [{{ name: flag }}] }}
        backends: [{{ cluster: q_present }}]
      - match: {{ hosts: [query.example.com], query: [{{ name: off, present: false }}] }}
        backends: [{{ cluster: q_absent }}]
      - match:
          hosts: [all.example.com]
          methods: [GET]
          headers: [{{ name: x-a, exact: "1" }}]
          query: [{{ name: b, exact: "2" }}]
        backends: [{{ cluster: all_conds }}]
      - match: {{ hosts: [root.example.com], path: {{ prefix: / }} }}
        backends: [{{ cluster: root_prefix }}]
{}"#,
        clusters_for(&refs)
    );
    let proxy = Proxy::start(&config).await;

    let cases: &[Case] = &[
        // Hosts: exact, case-insensitive, port ignored.
        ("GET", "exact.example.com", "/", &[], "exact_host"),
        ("GET", "EXACT.Example.COM:8080", "/x", &[], "exact_host"),
        ("GET", "notexact.example.com", "/", &[], "404"),
        // Leading wildcard: one or more labels, never the bare suffix.
        ("GET", "a.wild.example.com", "/", &[], "wild_host"),
        ("GET", "a.b.wild.example.com", "/", &[], "wild_host"),
        ("GET", "wild.example.com", "/", &[], "404"),
        ("GET", "xwild.example.com", "/", &[], "404"),
        // Path exact ignores the query string, and nothing else.
        ("GET", "paths.example.com", "/exact", &[], "path_exact"),
        ("GET", "paths.example.com", "/exact?x=1", &[], "path_exact"),
        ("GET", "paths.example.com", "/exact/", &[], "404"),
        // Prefix on a segment boundary.
        ("GET", "paths.example.com", "/api", &[], "path_prefix"),
        ("GET", "paths.example.com", "/api/", &[], "path_prefix"),
        (
            "GET",
            "paths.example.com",
            "/api/x/y?z=1",
            &[],
            "path_prefix",
        ),
        ("GET", "paths.example.com", "/apix", &[], "404"),
        // Regex anchored at both ends.
        ("GET", "paths.example.com", "/users/42", &[], "path_regex"),
        (
            "GET",
            "paths.example.com",
            "/users/42?full=1",
            &[],
            "path_regex",
        ),
        ("GET", "paths.example.com", "/users/42/x", &[], "404"),
        ("GET", "paths.example.com", "/x/users/42", &[], "404"),
        ("GET", "paths.example.com", "/users/abc", &[], "404"),
        // Methods.
        ("POST", "methods.example.com", "/", &[], "method"),
        ("PUT", "methods.example.com", "/", &[], "method"),
        ("GET", "methods.example.com", "/", &[], "404"),
        // Headers: exact, regex (whole value), present (name case-insensitive), absent.
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-tenant", "blue")],
            "hdr_exact",
        ),
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-tenant", "bluegreen"), ("x-debug", "1")],
            "404",
        ),
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-version", "v12"), ("x-debug", "1")],
            "hdr_regex",
        ),
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-version", "v12beta"), ("x-debug", "1")],
            "404",
        ),
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-canary", "anything"), ("x-debug", "1")],
            "hdr_present",
        ),
        ("GET", "headers.example.com", "/", &[], "hdr_absent"),
        (
            "GET",
            "headers.example.com",
            "/",
            &[("x-debug", "1")],
            "404",
        ),
        // Query: exact, regex (whole value), present, absent; first occurrence counts.
        ("GET", "query.example.com", "/?tier=gold", &[], "q_exact"),
        (
            "GET",
            "query.example.com",
            "/?a=1&tier=gold",
            &[],
            "q_exact",
        ),
        (
            "GET",
            "query.example.com",
            "/?tier=golden&off=1",
            &[],
            "404",
        ),
        (
            "GET",
            "query.example.com",
            "/?tier=silver&tier=gold&off=1",
            &[],
            "404",
        ),
        ("GET", "query.example.com", "/?id=123&off=1", &[], "q_regex"),
        ("GET", "query.example.com", "/?id=12a&off=1", &[], "404"),
        (
            "GET",
            "query.example.com",
            "/?tier=silver&flag=yes&off=1",
            &[],
            "q_present",
        ),
        ("GET", "query.example.com", "/?x=1", &[], "q_absent"),
        ("GET", "query.example.com", "/", &[], "q_absent"),
        ("GET", "query.example.com", "/?off=1", &[], "404"),
        // All conditions of one route must hold together.
        (
            "GET",
            "all.example.com",
            "/p?b=2",
            &[("x-a", "1")],
            "all_conds",
        ),
        ("POST", "all.example.com", "/p?b=2", &[("x-a", "1")], "404"),
        ("GET", "all.example.com", "/p?b=2", &[], "404"),
        ("GET", "all.example.com", "/p?b=3", &[("x-a", "1")], "404"),
        // Prefix `/` matches everything.
        ("GET", "root.example.com", "/", &[], "root_prefix"),
        (
            "GET",
            "root.example.com",
            "/any/deep/path?q=1",
            &[],
            "root_prefix",
        ),
    ];
    let mut wrong = Vec::new();
    for (method, host, path, headers, expected) in cases {
        let got = route_of(&proxy, method, host, path, headers).await;
        if got != *expected {
            wrong.push(format!(
                "{method} http://{host}{path} {headers:?}: expected {expected}, got {got}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "misrouted requests:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_route_wins_in_declared_order() {
    let first = Upstream::echo("first").await;
    let second = Upstream::echo("second").await;
    let third = Upstream::echo("third").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /api }} }}
        backends: [{{ cluster: first }}]
      - match: {{ path: {{ exact: /api/special }} }}
        backends: [{{ cluster: second }}]
      - match: {{ path: {{ prefix: / }} }}
        backends: [{{ cluster: third }}]
{}"#,
        clusters_for(&[&first, &second, &third])
    );
    let proxy = Proxy::start(&config).await;
    // The more specific route is declared second, so it never wins.
    assert_eq!(
        proxy
            .get("any.example.com", "/api/special")
            .await
            .upstream(),
        "first"
    );
    assert_eq!(
        proxy.get("any.example.com", "/api").await.upstream(),
        "first"
    );
    assert_eq!(
        proxy.get("any.example.com", "/other").await.upstream(),
        "third"
    );
    assert_eq!(
        second.hits(),
        0,
        "a shadowed route must never receive traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_request_gets_404_no_route_and_reaches_no_upstream() {
    let api = Upstream::echo("api").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ hosts: [api.example.com], path: {{ prefix: /v1 }} }}
        backends: [{{ cluster: api }}]
{}"#,
        clusters_for(&[&api])
    );
    let proxy = Proxy::start(&config).await;
    for (proto, host, path) in [
        (Proto::H1, "api.example.com", "/v2/x"),
        (Proto::H1, "other.example.com", "/v1/x"),
        (Proto::H2, "api.example.com", "/nope"),
    ] {
        let resp = within(
            REQUEST_LIMIT,
            "unrouted request",
            proxy.send(proto, simple("GET", host, path)),
        )
        .await
        .unwrap_or_else(|e| panic!("{proto:?} {host}{path}: {e}"));
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{proto:?} {host}{path}");
        assert_eq!(
            resp.header("x-strait-error").as_deref(),
            Some("no_route"),
            "{proto:?} {host}{path}: x-strait-error"
        );
        assert!(
            !resp.body.is_empty() && resp.body.len() < 1024,
            "the 404 carries a short text body, got {:?}",
            resp.text()
        );
    }
    assert_eq!(api.hits(), 0);
    // The connection stays usable after a 404.
    let mut conn = proxy.connect(Proto::H1).await;
    for path in ["/nope", "/v1/ok"] {
        let resp = conn
            .fetch(simple("GET", "api.example.com", path))
            .await
            .unwrap_or_else(|e| panic!("keep-alive after 404, {path}: {e}"));
        let expected = if path == "/nope" { 404 } else { 200 };
        assert_eq!(resp.status.as_u16(), expected, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backends_split_90_10() {
    let heavy = Upstream::echo("heavy").await;
    let light = Upstream::echo("light").await;
    let never = Upstream::echo("never").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends:
          - {{ cluster: heavy, weight: 90 }}
          - {{ cluster: light, weight: 10 }}
          - {{ cluster: never, weight: 0 }}
{}"#,
        clusters_for(&[&heavy, &light, &never])
    );
    let proxy = Proxy::start(&config).await;
    let counts = spread(&proxy, "split.example.com", "/", 2_000, 8).await;
    let light_n = counts.get("light").copied().unwrap_or(0);
    let heavy_n = counts.get("heavy").copied().unwrap_or(0);
    // Binomial(2000, 0.1): mean 200, sd 13.4; 5 sd either side.
    assert!(
        (133..=267).contains(&light_n),
        "light (weight 10) got {light_n} of 2000, expected ~200: {counts:?}"
    );
    assert_eq!(
        heavy_n + light_n,
        2_000,
        "weight 0 must take no traffic: {counts:?}"
    );
    assert_eq!(never.hits(), 0, "weight 0 must take no traffic");
}

fn one_cluster(name: &str, extra: &str, endpoints: &[(&Upstream, u32)]) -> String {
    let mut out = format!("clusters:\n  - name: {name}\n{extra}    endpoints:\n");
    for (u, w) in endpoints {
        out.push_str(&format!(
            "      - {{ address: \"{}\", weight: {w} }}\n",
            u.addr
        ));
    }
    out
}

const ONE_ROUTE: &str = r#"
listeners:
  - name: main
    address: ${LISTEN}
    routes:
      - backends: [{ cluster: pool }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_three_endpoints() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let config = format!(
        "{ONE_ROUTE}{}",
        one_cluster(
            "pool",
            "    load_balancer: round_robin\n",
            &[(&a, 1), (&b, 1), (&c, 1)]
        )
    );
    let proxy = Proxy::start(&config).await;
    let counts = spread(&proxy, "rr.example.com", "/", 300, 1).await;
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (90..=110).contains(&n),
            "round robin: {name} got {n} of 300, expected 100: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_endpoint_weights() {
    let big = Upstream::echo("big").await;
    let small = Upstream::echo("small").await;
    let config = format!(
        "{ONE_ROUTE}{}",
        one_cluster("pool", "", &[(&big, 3), (&small, 1)])
    );
    let proxy = Proxy::start(&config).await;
    let counts = spread(&proxy, "wrr.example.com", "/", 400, 1).await;
    let small_n = counts.get("small").copied().unwrap_or(0);
    assert!(
        (80..=120).contains(&small_n),
        "weights 3:1 over 400 requests: small got {small_n}, expected 100: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_a_header_is_sticky_per_key() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    let config = format!(
        "{ONE_ROUTE}{}",
        one_cluster(
            "pool",
            "    load_balancer: ring_hash\n    hash_on: { header: x-user }\n",
            &[(&a, 1), (&b, 1), (&c, 1)]
        )
    );
    let proxy = Proxy::start(&config).await;
    let mut owner = BTreeMap::<String, String>::new();
    // Two connections, so stickiness cannot come from connection affinity.
    let mut conns = [
        proxy.connect(Proto::H1).await,
        proxy.connect(Proto::H2).await,
    ];
    for round in 0..4 {
        for k in 0..30 {
            let key = format!("user-{k}");
            let conn = &mut conns[(round + k) % 2];
            let req = request("GET", "hash.example.com", "/")
                .header("x-user", &key)
                .body(empty())
                .expect("request");
            let resp = conn
                .fetch(req)
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(resp.status, StatusCode::OK);
            let got = resp.upstream();
            if let Some(prev) = owner.insert(key.clone(), got.clone()) {
                assert_eq!(
                    prev, got,
                    "ring_hash: {key} moved from {prev} to {got} in round {round}"
                );
            }
        }
    }
    let used: std::collections::BTreeSet<&String> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "30 keys over 3 endpoints all landed on {used:?}: the header is not being hashed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_endpoint_with_requests_piling_up() {
    // `slow` holds every request for 3 s; `fast` answers at once. Once a request is stuck on
    // `slow`, least_request prefers `fast`; round robin or random would still send ~half there.
    let slow = Upstream::slow("slow", Duration::from_secs(3)).await;
    let fast = Upstream::echo("fast").await;
    let config = format!(
        "{ONE_ROUTE}{}",
        one_cluster(
            "pool",
            "    load_balancer: least_request\n",
            &[(&slow, 1), (&fast, 1)]
        )
    );
    let proxy = Proxy::start(&config).await;
    let conn = proxy.connect(Proto::H2).await;
    let total = 120;
    let mut tasks = Vec::new();
    for i in 0..total {
        let mut c = conn.clone_h2();
        tasks.push(tokio::spawn(async move {
            c.fetch(simple("GET", "lr.example.com", &format!("/{i}")))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut counts = BTreeMap::<String, usize>::new();
    for t in tasks {
        let resp = within(Duration::from_secs(20), "least_request burst", t)
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("least_request request failed: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        *counts.entry(resp.upstream()).or_default() += 1;
    }
    let slow_n = counts.get("slow").copied().unwrap_or(0);
    assert!(
        slow_n < 45,
        "least_request sent {slow_n} of {total} to the endpoint with requests piling up \
         (round robin would send 60): {counts:?}"
    );
}
