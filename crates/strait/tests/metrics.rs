//! `/metrics`: valid exposition a real parser reads, consistent histograms, bounded label sets,
//! and counters that move with the traffic a user sends.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use support::*;

async fn scrape(proxy: &Proxy) -> (String, Scrape) {
    let resp = proxy.admin_get("/metrics").await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        resp.header("content-type")
    );
    let text = resp.text();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("exposition parses");
    (text, parsed)
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn sum(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(scrape, metric, labels).into_iter().map(value).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_bytes_connections_and_upstream_failures() {
    let up = Upstream::echo("m").await;
    let nobody = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: ${{LISTEN}}
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        backends: [{{ cluster: echo }}]
      - name: dead
        match: {{ path: {{ prefix: /dead }} }}
        backends: [{{ cluster: nowhere }}]
      - name: teapot
        match: {{ path: {{ exact: /teapot }} }}
        direct_response: {{ status: 418, body: "short and stout" }}
clusters:
  - name: echo
    endpoints: [{{ address: "{}" }}]
  - name: nowhere
    endpoints: [{{ address: "{nobody}" }}]
"#,
        up.addr
    ))
    .await;

    for _ in 0..5 {
        let req = request("POST", "m.example", "/api/x")
            .body(full(vec![b'x'; 1000]))
            .expect("request");
        let resp = within(Duration::from_secs(5), "api", proxy.send(Proto::H1, req))
            .await
            .expect("api request");
        assert_eq!(resp.status, 200);
    }
    assert_eq!(proxy.get("m.example", "/dead").await.status, 503);
    assert_eq!(proxy.get("m.example", "/teapot").await.status, 418);
    assert_eq!(proxy.get("m.example", "/nowhere").await.status, 404);

    let (text, m) = scrape(&proxy).await;
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    let api = [("listener", "web"), ("route", "api"), ("cluster", "echo")];
    assert_eq!(
        sum(
            &m,
            "strait_http_requests_total",
            &[api[0], api[1], api[2], ("code", "200"), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        sum(
            &m,
            "strait_http_requests_total",
            &[("route", "dead"), ("cluster", "nowhere"), ("code", "503")]
        ),
        1.0
    );
    // 418 is not in the common set: counted as `other` in its class, never as a new label value.
    assert_eq!(
        sum(
            &m,
            "strait_http_requests_total",
            &[("route", "teapot"), ("code", "other"), ("class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &m,
            "strait_http_requests_total",
            &[("route", ""), ("code", "404")]
        ),
        1.0
    );
    assert_eq!(
        sum(&m, "strait_http_request_body_bytes_total", &api),
        5000.0
    );
    assert!(sum(&m, "strait_http_response_body_bytes_total", &api) > 0.0);
    assert_eq!(
        sum(&m, "strait_upstream_requests_total", &[("cluster", "echo")]),
        5.0
    );
    assert_eq!(
        sum(
            &m,
            "strait_upstream_connect_failures_total",
            &[("cluster", "nowhere"), ("reason", "refused")]
        ),
        1.0
    );
    assert!(
        sum(
            &m,
            "strait_tcp_connections_opened_total",
            &[("listener", "web")]
        ) >= 8.0
    );
    assert_eq!(sum(&m, "strait_config_version", &[]), 1.0);
    assert!(sum(&m, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(
        sum(
            &m,
            "strait_upstream_endpoint_healthy",
            &[("cluster", "echo")]
        ),
        1.0
    );

    // Histograms: cumulative buckets ending in +Inf equal to _count.
    let hist = find(&m, "strait_http_request_duration_seconds", &api);
    assert_eq!(hist.len(), 1, "one duration series for the api route's 2xx");
    let Value::Histogram(buckets) = &hist[0].value else {
        panic!("not a histogram: {:?}", hist[0].value)
    };
    assert!(buckets
        .windows(2)
        .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count));
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite());
    assert_eq!(
        last.count,
        sum(&m, "strait_http_request_duration_seconds_count", &api)
    );
    assert_eq!(last.count, 5.0);

    // Label sets are exactly the documented ones: nothing from the request becomes a label.
    let mut names = BTreeSet::new();
    for s in find(&m, "strait_http_requests_total", &[]) {
        names.extend(s.labels.keys().map(|k| k.to_string()));
        assert!(
            !s.labels
                .values()
                .any(|v| v.contains("/api") || v.contains("m.example")),
            "{s:?}"
        );
    }
    let expected: BTreeSet<String> = [
        "class",
        "cluster",
        "code",
        "direction",
        "grpc_status",
        "listener",
        "route",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_reload_and_reload_failures_are_counted() {
    let up = Upstream::echo("r").await;
    let template = format!(
        r#"
listeners:
  - name: web
    address: ${{LISTEN}}
    routes:
      - name: api
        match: {{ path: {{ prefix: / }} }}
        backends: [{{ cluster: echo }}]
clusters:
  - name: echo
    endpoints: [{{ address: "{}" }}]
"#,
        up.addr
    );
    let proxy = Proxy::start(&template).await;
    for _ in 0..3 {
        assert_eq!(proxy.get("r.example", "/").await.status, 200);
    }
    proxy.write_config(&format!("{template}\n# touched\n"));
    assert!(
        proxy
            .wait_version_above(1, Duration::from_secs(10))
            .await
            .is_some(),
        "reload applied"
    );
    proxy.write_config("listeners: [ { nme: broken } ]\n");
    let mut m = scrape(&proxy).await.1;
    for _ in 0..100 {
        if sum(&m, "strait_config_reload_failures_total", &[]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = scrape(&proxy).await.1;
    }
    assert_eq!(
        sum(&m, "strait_config_reload_failures_total", &[]),
        1.0,
        "the broken file was counted"
    );
    assert_eq!(sum(&m, "strait_config_version", &[]), 2.0);
    assert_eq!(
        sum(
            &m,
            "strait_http_requests_total",
            &[("route", "api"), ("code", "200")]
        ),
        3.0,
        "counters kept"
    );
    assert_eq!(
        proxy.get("r.example", "/").await.status,
        200,
        "the last good config still serves"
    );
}

/// Waits until `strait_config_reload_failures_total` reaches `n`.
async fn reload_failures_reach(proxy: &Proxy, n: f64) -> Scrape {
    let mut m = scrape(proxy).await.1;
    for _ in 0..100 {
        if sum(&m, "strait_config_reload_failures_total", &[]) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = scrape(proxy).await.1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_listen_read_its_file_or_apply_is_refused_and_counted() {
    let up = Upstream::echo("refused").await;
    let config = |second: &str| {
        format!(
            "listeners:\n  - name: web\n    address: ${{LISTEN}}\n    routes:\n      \
             - backends: [{{ cluster: echo }}]\n{second}\
             clusters:\n  - name: echo\n    endpoints: [{{ address: \"{}\" }}]\n",
            up.addr
        )
    };
    let proxy = Proxy::start(&config("")).await;
    // Another process's port: the added listener cannot be bound, so the reload is refused
    // (it was applied, the listener left unbound, and nothing counted).
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("address");
    proxy.write_config(&config(&format!(
        "  - name: second\n    address: \"{taken}\"\n    routes:\n      \
         - backends: [{{ cluster: echo }}]\n"
    )));
    let m = reload_failures_reach(&proxy, 1.0).await;
    assert_eq!(sum(&m, "strait_config_reload_failures_total", &[]), 1.0);
    assert_eq!(sum(&m, "strait_config_version", &[]), 1.0);
    let dump = proxy.admin_get("/config_dump").await.text();
    assert!(dump.contains("cannot listen on"), "{dump}");

    // A SIGHUP with the file gone is refused and counted too (it was only logged as a reload).
    std::fs::remove_file(&proxy.config_path).expect("remove the config");
    proxy.signal("HUP");
    let m = reload_failures_reach(&proxy, 2.0).await;
    assert_eq!(sum(&m, "strait_config_reload_failures_total", &[]), 2.0);
    let dump = proxy.admin_get("/config_dump").await.text();
    assert!(dump.contains("cannot read"), "{dump}");

    // `workers` is read at start only: a reload changing it is refused, not half applied.
    proxy.write_config(&format!("workers: 3\n{}", config("")));
    let m = reload_failures_reach(&proxy, 3.0).await;
    assert_eq!(sum(&m, "strait_config_reload_failures_total", &[]), 3.0);
    let dump = proxy.admin_get("/config_dump").await.text();
    assert!(dump.contains("read at start only"), "{dump}");
    assert_eq!(
        proxy.get("r.example", "/").await.status,
        200,
        "the first config serves on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_served_is_documented() {
    let up = Upstream::echo("documented").await;
    let proxy = Proxy::start(&one_route(up.addr, "", "", "")).await;
    assert_eq!(proxy.get("d.example", "/").await.status, 200);
    let (text, _) = scrape(&proxy).await;
    let docs = std::fs::read_to_string(repo::repo_root().join("docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut missing = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let served = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        if !docs.contains(&format!("`{served}`")) && !docs.contains(&format!("`{served}{{")) {
            missing.push(served);
        }
    }
    assert!(
        missing.is_empty(),
        "metrics served but not in docs/metrics.md: {missing:?}"
    );
}

/// The Grafana dashboard queries only metrics that exist: every name in its expressions is
/// documented (and the test above ties the docs to what `/metrics` serves).
#[test]
fn the_dashboard_uses_only_documented_metrics() {
    let root = repo::repo_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/strait-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs/metrics.md");
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v.as_str() {
                        Some(s) if k == "expr" || k == "query" => out.push(s.to_owned()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() > 20, "the dashboard has its queries");
    let mut unknown = BTreeSet::new();
    for expr in &all {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("strait_") || word.starts_with("process_")) {
                continue;
            }
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
            if !docs.contains(&format!("`{name}")) {
                unknown.insert(word.to_owned());
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "dashboard metrics not in docs/metrics.md: {unknown:?}"
    );
}
