//! Access logs: one valid JSON line per request with the documented fields, selectable fields,
//! sampling, and response flags that say why the proxy answered itself.

mod support;

use std::time::Duration;

use support::*;

const ALL_FIELDS: [&str; 21] = [
    "time",
    "listener",
    "route",
    "cluster",
    "endpoint",
    "method",
    "authority",
    "path",
    "protocol",
    "status",
    "grpc_status",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_duration_ms",
    "retries",
    "client_ip",
    "peer_identity",
    "request_id",
    "trace_id",
    "response_flags",
];

/// A log file path of the test at `line`, with no file there yet.
fn fresh_log(line: u32) -> std::path::PathBuf {
    let log = std::env::temp_dir().join(format!("strait-access-{}-{line}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    log
}

/// The log's lines once there are at least `n` (the writer flushes every 100 ms).
async fn lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    raw_lines(path, n)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The log's lines as written.
async fn raw_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text.lines().map(str::to_owned).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "fewer than {n} lines in {}: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_a_json_line_with_the_documented_fields() {
    let up = Upstream::echo("logged").await;
    let log = fresh_log(line!());
    let nobody = free_addr();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: ${{LISTEN}}
    access_log: {{ path: "{}" }}
    routes:
      - name: api
        match: {{ path: {{ prefix: /api }} }}
        backends: [{{ cluster: echo }}]
      - name: down
        match: {{ path: {{ prefix: /down }} }}
        backends: [{{ cluster: nowhere }}]
clusters:
  - name: echo
    endpoints: [{{ address: "{}" }}]
  - name: nowhere
    endpoints: [{{ address: "{nobody}" }}]
"#,
        log.display(),
        up.addr
    ))
    .await;
    let req = request("POST", "api.example", "/api/items?page=2")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "req-123")
        .body(full(vec![b'a'; 321]))
        .expect("request");
    let resp = within(Duration::from_secs(5), "api", proxy.send(Proto::H1, req))
        .await
        .expect("api");
    assert_eq!(resp.status, 200);
    assert_eq!(proxy.get("api.example", "/down").await.status, 503);
    assert_eq!(proxy.get("api.example", "/missing").await.status, 404);
    // An id made here is the one the upstream sees and the one logged.
    let made = request("GET", "api.example", "/api/made")
        .body(empty())
        .expect("request");
    let made = within(Duration::from_secs(5), "made", proxy.send(Proto::H1, made))
        .await
        .expect("made");
    let seen = made.echo().header("x-request-id");
    assert_eq!(seen.len(), 1, "one x-request-id: {seen:?}");

    let entries = lines(&log, 4).await;
    for e in &entries {
        let keys: Vec<&str> = e
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), ALL_FIELDS.len(), "{e}");
        for f in ALL_FIELDS {
            assert!(keys.contains(&f), "missing {f} in {e}");
        }
    }
    let api = &entries[0];
    assert_eq!(api["listener"], "web");
    assert_eq!(api["route"], "api");
    assert_eq!(api["cluster"], "echo");
    assert_eq!(api["endpoint"], up.addr.to_string());
    assert_eq!(api["method"], "POST");
    assert_eq!(api["authority"], "api.example");
    assert_eq!(api["path"], "/api/items?page=2");
    assert_eq!(api["status"], 200);
    assert_eq!(api["bytes_received"], 321);
    assert_eq!(api["bytes_sent"].as_u64(), Some(resp.body.len() as u64));
    assert_eq!(api["request_id"], "req-123");
    assert_eq!(api["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(api["client_ip"], "127.0.0.1");
    assert_eq!(api["response_flags"], "");
    assert!(api["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
    assert!(api["upstream_duration_ms"]
        .as_f64()
        .is_some_and(|d| d <= api["duration_ms"].as_f64().unwrap_or(0.0)));
    assert!(
        api["time"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
        "{}",
        api["time"]
    );

    assert_eq!(entries[1]["status"], 503);
    assert_eq!(entries[1]["response_flags"], "connect_failed");
    assert_eq!(entries[2]["status"], 404);
    assert_eq!(entries[2]["route"], "");
    assert_eq!(entries[2]["response_flags"], "no_route");
    assert!(
        entries[2]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "generated ids are logged"
    );
    assert_eq!(entries[3]["request_id"], seen[0].as_str());
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_selectable_and_sampling_is_honoured() {
    let up = Upstream::echo("sampled").await;
    let dir = std::env::temp_dir();
    let picked = dir.join(format!("strait-access-picked-{}.log", std::process::id()));
    let none = dir.join(format!("strait-access-none-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&picked);
    let _ = std::fs::remove_file(&none);
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: picked
    address: ${{LISTEN}}
    access_log: {{ path: "{}", fields: [status, path, method] }}
    routes:
      - match: {{ path: {{ prefix: / }} }}
        backends: [{{ cluster: echo }}]
  - name: unlogged
    address: ${{LISTEN2}}
    access_log: {{ path: "{}", sample_percent: 0 }}
    routes:
      - match: {{ path: {{ prefix: / }} }}
        backends: [{{ cluster: echo }}]
clusters:
  - name: echo
    endpoints: [{{ address: "{}" }}]
"#,
        picked.display(),
        none.display(),
        up.addr
    ))
    .await;
    for i in 0..20 {
        assert_eq!(proxy.get("a.example", &format!("/p/{i}")).await.status, 200);
        let resp = get(proxy.listen2, "a.example", "/q").await;
        assert_eq!(resp.status, 200);
    }
    let raw = raw_lines(&picked, 20).await;
    assert_eq!(raw.len(), 20);
    for (i, line) in raw.iter().enumerate() {
        // Exactly the chosen fields, in the chosen order.
        assert_eq!(
            line,
            &format!("{{\"status\":200,\"path\":\"/p/{i}\",\"method\":\"GET\"}}")
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unlogged = std::fs::read_to_string(&none).unwrap_or_default();
    assert_eq!(unlogged, "", "sample_percent 0 logs nothing");
    let _ = std::fs::remove_file(&picked);
    let _ = std::fs::remove_file(&none);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_head_gets_a_line_too() {
    let up = Upstream::echo("logged").await;
    let log = fresh_log(line!());
    let proxy = Proxy::start(&format!(
        "listeners:\n  - name: web\n    address: ${{LISTEN}}\n    \
         access_log: {{ path: \"{}\" }}\n    routes:\n      - backends: [{{ cluster: echo }}]\n\
         clusters:\n  - name: echo\n    endpoints: [{{ address: \"{}\" }}]\n",
        log.display(),
        up.addr
    ))
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    let lines = lines(&log, 1).await;
    let line = &lines[0];
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["response_flags"], "malformed_request", "{line}");
    assert_eq!(line["listener"], "web", "{line}");
    for field in ["method", "authority", "path", "protocol", "route"] {
        assert_eq!(line[field], "", "{field} in {line}");
    }
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    for field in ALL_FIELDS {
        assert!(line.get(field).is_some(), "{field} missing from {line}");
    }
    let _ = std::fs::remove_file(&log);
}

/// Answers made before any route was looked for get their line too: a path refused (400), a
/// CONNECT (501), and a CORS preflight the proxy answered (with its route's name). They were
/// counted, but left no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_made_before_routing_are_logged() {
    let up = Upstream::echo("early").await;
    let log = fresh_log(line!());
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    access_log: {{ path: "{}" }}
    routes:
      - name: api
        backends: [{{ cluster: echo }}]
        cors: {{ allow_origins: ["https://app.example.com"] }}
clusters:
  - name: echo
    endpoints: [{{ address: "{}" }}]
"#,
        log.display(),
        up.addr
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let bad_path = proxy
            .send(proto, simple("GET", "a.example", "/a%2Fb"))
            .await
            .expect("answer");
        assert_eq!(bad_path.status, 400);
        let preflight = request("OPTIONS", "a.example", "/x")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "PUT")
            .header("x-request-id", format!("pre-{proto:?}"))
            .body(empty())
            .expect("request");
        let answer = proxy.send(proto, preflight).await.expect("answer");
        assert_eq!(answer.status, 204);
    }
    let connect = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect");
        h1.write_all(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
            .await
            .expect("write");
        let mut answer = vec![0; 12];
        h1.read_exact(&mut answer).await.expect("read");
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert_eq!(connect, "HTTP/1.1 501");

    let lines = lines(&log, 5).await;
    assert_eq!(lines.len(), 5, "{lines:?}");
    for (i, proto) in ["HTTP/1.1", "HTTP/2.0"].iter().enumerate() {
        let bad = &lines[2 * i];
        assert_eq!(bad["status"], 400, "{bad}");
        assert_eq!(bad["response_flags"], "bad_request", "{bad}");
        assert_eq!(bad["path"], "/a%2Fb", "{bad}");
        assert_eq!(bad["protocol"], *proto, "{bad}");
        assert_eq!(bad["route"], "", "{bad}");
        assert!(
            bad["authority"]
                .as_str()
                .unwrap_or_default()
                .starts_with("a.example"),
            "{bad}"
        );
        let pre = &lines[2 * i + 1];
        assert_eq!(pre["status"], 204, "{pre}");
        assert_eq!(pre["method"], "OPTIONS", "{pre}");
        assert_eq!(pre["route"], "api", "{pre}");
        assert_eq!(
            pre["request_id"],
            format!("pre-{}", ["H1", "H2"][i]),
            "{pre}"
        );
    }
    assert_eq!(lines[4]["status"], 501, "{}", lines[4]);
    assert_eq!(lines[4]["method"], "CONNECT", "{}", lines[4]);
    assert_eq!(
        lines[4]["response_flags"], "not_implemented",
        "{}",
        lines[4]
    );
    assert_eq!(up.hits(), 0);
    let _ = std::fs::remove_file(&log);
}
