//! What a route does to a request on its way: header edits on both directions, path and host
//! rewrites, redirects, fixed answers and mirroring.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_are_removed_then_set_then_added() {
    let up = Upstream::echo("up").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: up }}]
        request_headers:
          remove: [x-remove-me, x-order]
          set: {{ x-set-me: proxy, x-order: set, x-new: fresh }}
          add: {{ x-add-me: proxy, x-order: added }}
{}"#,
        clusters_for(&[&up])
    );
    let proxy = Proxy::start(&config).await;
    for proto in [Proto::H1, Proto::H2] {
        let req = request("GET", "edit.example.com", "/")
            .header("x-remove-me", "client")
            .header("x-set-me", "client")
            .header("x-set-me", "client-again")
            .header("x-add-me", "client")
            .header("x-order", "client")
            .header("x-untouched", "client")
            .body(empty())
            .expect("request");
        let resp = within(REQUEST_LIMIT, "edited request", proxy.send(proto, req))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        let seen = resp.echo();
        assert!(
            !seen.has("x-remove-me"),
            "{proto:?}: removed header reached upstream"
        );
        assert_eq!(
            seen.header("x-set-me"),
            ["proxy"],
            "{proto:?}: set replaces all values"
        );
        assert_eq!(
            seen.header("x-new"),
            ["fresh"],
            "{proto:?}: set creates the header"
        );
        assert_eq!(
            seen.list("x-add-me"),
            ["client", "proxy"],
            "{proto:?}: add keeps the client's value"
        );
        assert_eq!(
            seen.list("x-order"),
            ["set", "added"],
            "{proto:?}: edits apply in the order remove, set, add"
        );
        assert_eq!(seen.header("x-untouched"), ["client"], "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_are_removed_then_set_then_added() {
    let up = Upstream::echo("up").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: up }}]
        response_headers:
          remove: [server-secret, x-order]
          set: {{ x-frame-options: DENY, x-order: set }}
          add: {{ x-added: "1", x-order: added, cache-control: no-store }}
{}"#,
        clusters_for(&[&up])
    );
    let proxy = Proxy::start(&config).await;
    for proto in [Proto::H1, Proto::H2] {
        let req = request("GET", "edit.example.com", "/")
            .header("x-echo-set-header", "server-secret=hunter2")
            .header("x-echo-set-header", "x-frame-options=SAMEORIGIN")
            .header("x-echo-set-header", "x-order=upstream")
            .header("x-echo-set-header", "cache-control=private")
            .body(empty())
            .expect("request");
        let resp = within(REQUEST_LIMIT, "edited response", proxy.send(proto, req))
            .await
            .unwrap_or_else(|e| panic!("{proto:?}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "{proto:?}");
        assert_eq!(
            resp.header("server-secret"),
            None,
            "{proto:?}: removed header reached client"
        );
        assert_eq!(
            resp.header_all("x-frame-options"),
            ["DENY"],
            "{proto:?}: set replaces"
        );
        assert_eq!(resp.header_all("x-added"), ["1"], "{proto:?}: add creates");
        let cache: Vec<String> = resp
            .header_all("cache-control")
            .iter()
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .collect();
        assert_eq!(
            cache,
            ["private", "no-store"],
            "{proto:?}: add keeps the upstream's value"
        );
        let order: Vec<String> = resp
            .header_all("x-order")
            .iter()
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .collect();
        assert_eq!(
            order,
            ["set", "added"],
            "{proto:?}: remove, then set, then add"
        );
        assert_eq!(resp.upstream(), "up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_change_path_prefix_whole_path_and_host() {
    let up = Upstream::echo("up").await;
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /api }} }}
        rewrite: {{ path_prefix: /v2 }}
        backends: [{{ cluster: up }}]
      - match: {{ path: {{ prefix: /old }} }}
        rewrite: {{ path: /new/landing }}
        backends: [{{ cluster: up }}]
      - match: {{ path: {{ prefix: /hosted }} }}
        rewrite: {{ host: internal.svc.local }}
        backends: [{{ cluster: up }}]
{}"#,
        clusters_for(&[&up])
    );
    let proxy = Proxy::start(&config).await;
    let cases = [
        (
            "/api/users?limit=5",
            "/v2/users?limit=5",
            "edge.example.com",
        ),
        ("/api", "/v2", "edge.example.com"),
        ("/api/", "/v2/", "edge.example.com"),
        (
            "/old/anything/here?q=1&r=2",
            "/new/landing?q=1&r=2",
            "edge.example.com",
        ),
        ("/old", "/new/landing", "edge.example.com"),
        ("/hosted/x?y=1", "/hosted/x?y=1", "internal.svc.local"),
    ];
    for proto in [Proto::H1, Proto::H2] {
        for (sent, expected_path, expected_host) in cases {
            let resp = within(
                REQUEST_LIMIT,
                "rewritten request",
                proxy.send(proto, simple("GET", "edge.example.com", sent)),
            )
            .await
            .unwrap_or_else(|e| panic!("{proto:?} {sent}: {e}"));
            assert_eq!(
                resp.status,
                StatusCode::OK,
                "{proto:?} {sent}: {}",
                resp.text()
            );
            let seen = resp.echo();
            // An HTTP/1.1 upstream gets the origin form (RFC 9112 section 3.2.1).
            assert_eq!(
                seen.uri, expected_path,
                "{proto:?} {sent}: request target upstream saw"
            );
            assert_eq!(
                seen.header("host"),
                [expected_host],
                "{proto:?} {sent}: Host header upstream saw"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_location_and_use_each_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = r#"
listeners:
  - name: main
    address: ${LISTEN}
    routes:
      - match: { path: { prefix: /default } }
        redirect: { scheme: https }
      - match: { path: { prefix: /s302 } }
        redirect: { host: new.example.com, status: 302 }
      - match: { path: { prefix: /s303 } }
        redirect: { path: /see-other, status: 303 }
      - match: { path: { prefix: /s307 } }
        redirect: { port: 8080, status: 307 }
      - match: { path: { prefix: /s308 } }
        redirect: { scheme: https, host: secure.example.com, port: 8443, path: /landing, status: 308 }
      - match: { path: { prefix: /https-default-port } }
        redirect: { scheme: https, port: 443 }
"#;
    let proxy = Proxy::start(config).await;
    let cases = [
        // (host, path, status, location)
        (
            "www.example.com",
            "/default/a?x=1",
            301,
            "https://www.example.com/default/a?x=1",
        ),
        (
            "www.example.com",
            "/s302/b",
            302,
            "http://new.example.com/s302/b",
        ),
        (
            "www.example.com:8000",
            "/s302/b",
            302,
            "http://new.example.com:8000/s302/b",
        ),
        (
            "www.example.com",
            "/s303?keep=me",
            303,
            "http://www.example.com/see-other?keep=me",
        ),
        (
            "www.example.com",
            "/s307/c",
            307,
            "http://www.example.com:8080/s307/c",
        ),
        (
            "www.example.com",
            "/s308/d?q=2",
            308,
            "https://secure.example.com:8443/landing?q=2",
        ),
        (
            "www.example.com",
            "/https-default-port/e",
            301,
            "https://www.example.com/https-default-port/e",
        ),
    ];
    for proto in [Proto::H1, Proto::H2] {
        for (host, path, status, location) in cases {
            let resp = within(
                REQUEST_LIMIT,
                "redirect",
                proxy.send(proto, simple("GET", host, path)),
            )
            .await
            .unwrap_or_else(|e| panic!("{proto:?} {host}{path}: {e}"));
            assert_eq!(
                resp.status.as_u16(),
                status,
                "{proto:?} {host}{path}: status"
            );
            assert_eq!(
                resp.header("location").as_deref(),
                Some(location),
                "{proto:?} {host}{path}: location"
            );
        }
    }

    // HTTP/1.0 without a host: a path alone would keep the client's scheme and loop, so the
    // address it reached names the host; a redirect that keeps scheme and port stays relative.
    let port = proxy.listen.port();
    for (request, location) in [
        (
            "GET /default/a HTTP/1.0\r\n\r\n",
            format!("https://127.0.0.1:{port}/default/a"),
        ),
        (
            "GET /s307/c HTTP/1.0\r\n\r\n",
            "http://127.0.0.1:8080/s307/c".to_owned(),
        ),
        ("GET /s303 HTTP/1.0\r\n\r\n", "/see-other".to_owned()),
    ] {
        let mut h1 = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect");
        h1.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        h1.read_to_string(&mut answer).await.expect("read");
        let expected = format!("\r\nlocation: {location}\r\n");
        assert!(
            answer.to_ascii_lowercase().contains(&expected),
            "{request}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_answers_with_status_body_and_content_type() {
    let config = r#"
listeners:
  - name: main
    address: ${LISTEN}
    routes:
      - match: { path: { exact: /maintenance } }
        direct_response: { status: 503, body: "down for maintenance" }
      - match: { path: { exact: /health } }
        direct_response: { status: 200, body: '{"ok":true}', content_type: application/json }
      - match: { path: { exact: /empty } }
        direct_response: { status: 204 }
"#;
    let proxy = Proxy::start(config).await;
    for proto in [Proto::H1, Proto::H2] {
        let send = |path: &'static str| proxy.send(proto, simple("GET", "any.example.com", path));
        let r = within(REQUEST_LIMIT, "direct", send("/maintenance"))
            .await
            .expect("maintenance");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{proto:?}");
        assert_eq!(r.text(), "down for maintenance", "{proto:?}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8"),
            "{proto:?}: default content type"
        );
        assert_eq!(
            r.header("x-strait-error"),
            None,
            "{proto:?}: a configured answer is no error"
        );

        let r = within(REQUEST_LIMIT, "direct", send("/health"))
            .await
            .expect("health");
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert_eq!(r.json()["ok"], serde_json::json!(true), "{proto:?}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json"),
            "{proto:?}"
        );

        let r = within(REQUEST_LIMIT, "direct", send("/empty"))
            .await
            .expect("empty");
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{proto:?}");
        assert!(r.body.is_empty(), "{proto:?}");
    }
}

fn mirror_config(primary: &Upstream, shadow: &Upstream, percent: Option<u32>) -> String {
    let percent = percent
        .map(|p| format!(", percent: {p}"))
        .unwrap_or_default();
    format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: {p} }}]
        mirror: {{ cluster: {s}{percent} }}
{clusters}"#,
        p = primary.name,
        s = shadow.name,
        clusters = clusters_for(&[primary, shadow])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_copy_with_shadow_host_and_ignores_its_answer() {
    let primary = Upstream::echo("primary").await;
    let shadow = Upstream::echo("shadow").await;
    let proxy = Proxy::start(&mirror_config(&primary, &shadow, None)).await;

    let body = vec![b'm'; 10_000];
    let req = request("POST", "api.example.com", "/orders?id=7")
        .header("x-trace", "abc")
        .body(full(body))
        .expect("request");
    let resp = within(
        REQUEST_LIMIT,
        "mirrored request",
        proxy.send(Proto::H1, req),
    )
    .await
    .expect("mirrored request");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        resp.upstream(),
        "primary",
        "the client gets the primary's answer"
    );

    assert!(
        eventually(Duration::from_secs(5), || async { shadow.hits() >= 1 }).await,
        "the shadow never received the mirrored request"
    );
    // The copy arrives after its body has been read; wait for the record too.
    assert!(
        eventually(Duration::from_secs(5), || async {
            !shadow.seen().is_empty()
        })
        .await,
        "the shadow never finished reading the mirrored request"
    );
    let copy = &shadow.seen()[0];
    assert_eq!(copy.method, "POST");
    assert!(
        copy.uri.ends_with("/orders?id=7"),
        "mirrored uri {}",
        copy.uri
    );
    assert_eq!(copy.host, "api.example.com-shadow", "mirrored host");
    assert_eq!(
        copy.header("x-trace").as_deref(),
        Some("abc"),
        "mirrored headers"
    );
    assert_eq!(copy.body_len, 10_000, "mirrored body");
    assert_eq!(
        primary.seen()[0].host,
        "api.example.com",
        "the primary keeps the real host"
    );
    // Over HTTP/2, whose body with a length is gathered before an upstream is picked: both
    // copies whole.
    let req = request("POST", "api.example.com", "/h2")
        .body(full(vec![b'n'; 10_000]))
        .expect("request");
    let resp = within(REQUEST_LIMIT, "over HTTP/2", proxy.send(Proto::H2, req))
        .await
        .expect("mirrored over HTTP/2");
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || async {
            shadow.seen().len() >= 2
        })
        .await,
        "the shadow never finished reading the HTTP/2 request's copy"
    );
    assert_eq!(shadow.seen()[1].body_len, 10_000, "mirrored HTTP/2 body");
    assert_eq!(primary.seen()[1].body_len, 10_000, "forwarded HTTP/2 body");
    // Counted for the shadow cluster; a body over the mirror's 1 MiB copy is skipped, counted.
    let big = request("POST", "api.example.com", "/big")
        .body(full(vec![b'b'; 1_100_000]))
        .expect("request");
    assert_eq!(
        proxy.send(Proto::H1, big).await.expect("big").status,
        StatusCode::OK
    );
    for (result, n) in [("answered", 2.0), ("skipped", 1.0)] {
        let labels = [("cluster", "shadow"), ("result", result)];
        let counted = eventually(Duration::from_secs(5), || async {
            proxy.metric("strait_mirror_requests_total", &labels).await == Some(n)
        })
        .await;
        assert!(
            counted,
            "{result}: {}",
            proxy.admin_get("/metrics").await.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_failure_or_slowness_never_reaches_the_client() {
    // A slow shadow (3 s) must not delay the client...
    let primary = Upstream::echo("primary").await;
    let slow_shadow = Upstream::slow("slowshadow", Duration::from_secs(3)).await;
    let proxy = Proxy::start(&mirror_config(&primary, &slow_shadow, None)).await;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let resp = proxy.get("api.example.com", "/").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.upstream(), "primary");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "3 requests took {:?}: the client waited for the slow mirror",
        started.elapsed()
    );
    drop(proxy);

    // ...and a shadow that refuses connections must not fail it.
    let primary = Upstream::echo("primary").await;
    let dead = free_addr();
    let config = format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - backends: [{{ cluster: primary }}]
        mirror: {{ cluster: dead }}
{}  - name: dead
    endpoints: [{{ address: "{dead}" }}]
"#,
        clusters_for(&[&primary])
    );
    let proxy = Proxy::start(&config).await;
    for _ in 0..5 {
        let resp = proxy.get("api.example.com", "/").await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "mirror to a dead cluster: {}",
            resp.text()
        );
        assert_eq!(resp.header("x-strait-error"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_percent_50_copies_about_half() {
    let primary = Upstream::echo("primary").await;
    let shadow = Upstream::echo("shadow").await;
    let proxy = Proxy::start(&mirror_config(&primary, &shadow, Some(50))).await;
    let total = 600;
    let counts = spread(&proxy, "api.example.com", "/", total, 4).await;
    assert_eq!(counts.get("primary").copied(), Some(total), "{counts:?}");
    // Let the last copies land, then wait until the count stops moving.
    let mut last = usize::MAX;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shadow.hits();
        if now == last {
            break;
        }
        last = now;
    }
    let mirrored = shadow.hits();
    // Binomial(600, 0.5): mean 300, sd 12.2; 5 sd either side.
    assert!(
        (239..=361).contains(&mirrored),
        "percent 50 mirrored {mirrored} of {total}"
    );
}

// ---------------------------------------------------------------------------------------------
// Standard proxy headers and hop-by-hop headers
// ---------------------------------------------------------------------------------------------

/// Three listeners over one echo upstream: `${LISTEN}` with defaults plus `via`, `${LISTEN2}`
/// replacing everything (an edge that trusts no client), `${L3}` leaving headers untouched.
async fn proxy_headers_setup() -> (Upstream, Proxy, std::net::SocketAddr) {
    let up = Upstream::echo("up").await;
    let third = free_addr();
    let template = fill(
        r#"
listeners:
  - name: defaults
    address: ${LISTEN}
    proxy_headers: { via: strait }
    routes:
      - backends: [{ cluster: up }]
  - name: edge
    address: ${LISTEN2}
    proxy_headers:
      x_forwarded_for: replace
      x_forwarded_proto: replace
      forwarded: append
      request_id: false
    routes:
      - backends: [{ cluster: up }]
  - name: untouched
    address: ${L3}
    proxy_headers: { x_forwarded_for: untouched, x_forwarded_proto: untouched }
    routes:
      - backends: [{ cluster: up }]
clusters:
  - name: up
    endpoints: [{ address: "${UP}" }]
"#,
        &[("L3", &third), ("UP", &up)],
    );
    let proxy = Proxy::start(&template).await;
    (up, proxy, third)
}

async fn echo_via(
    addr: std::net::SocketAddr,
    proto: Proto,
    headers: &[(&str, &str)],
) -> (Resp, Echoed) {
    let mut b = request("GET", "api.example.com", "/h");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = within(
        REQUEST_LIMIT,
        "proxy headers request",
        send(addr, proto, b.body(empty()).expect("request")),
    )
    .await
    .unwrap_or_else(|e| panic!("{proto:?} via {addr}: {e}"));
    assert_eq!(resp.status, StatusCode::OK, "{proto:?}: {}", resp.text());
    let seen = resp.echo();
    (resp, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_follow_append_replace_untouched() {
    let (_up, proxy, third) = proxy_headers_setup().await;
    for proto in [Proto::H1, Proto::H2] {
        // Defaults: append x-forwarded-for, set x-forwarded-proto only when absent, no
        // `forwarded`.
        let (_, seen) = echo_via(proxy.listen, proto, &[]).await;
        assert_eq!(
            seen.list("x-forwarded-for"),
            ["127.0.0.1"],
            "{proto:?} append, none sent"
        );
        assert_eq!(
            seen.header("x-forwarded-proto"),
            ["http"],
            "{proto:?} proto set when absent"
        );
        assert!(
            !seen.has("forwarded"),
            "{proto:?}: `forwarded` is untouched by default"
        );
        let (_, seen) = echo_via(
            proxy.listen,
            proto,
            &[
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
        assert_eq!(
            seen.list("x-forwarded-for"),
            ["10.0.0.1", "10.0.0.2", "127.0.0.1"],
            "{proto:?} append"
        );
        assert_eq!(
            seen.header("x-forwarded-proto"),
            ["https"],
            "{proto:?} kept when present"
        );

        // Edge: replace both, append `forwarded`.
        let (_, seen) = echo_via(
            proxy.listen2,
            proto,
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
        assert_eq!(
            seen.list("x-forwarded-for"),
            ["127.0.0.1"],
            "{proto:?} replace"
        );
        assert_eq!(
            seen.header("x-forwarded-proto"),
            ["http"],
            "{proto:?} replace proto"
        );
        let fwd = seen.list("forwarded");
        assert_eq!(
            fwd.len(),
            1,
            "{proto:?}: one forwarded element, got {fwd:?}"
        );
        // Replace with none sent (over HTTP/1 the client writes them after the request's own
        // fields rather than the map holding them): this hop alone, once each.
        let (_, none_sent) = echo_via(proxy.listen2, proto, &[]).await;
        assert_eq!(
            none_sent.header("x-forwarded-for"),
            ["127.0.0.1"],
            "{proto:?} replace, none sent"
        );
        assert_eq!(
            none_sent.header("x-forwarded-proto"),
            ["http"],
            "{proto:?} replace proto, none sent"
        );
        let params: Vec<String> = fwd[0]
            .split(';')
            .map(|p| p.trim().replace('"', "").to_ascii_lowercase())
            .collect();
        for want in ["for=127.0.0.1", "proto=http", "host=api.example.com"] {
            assert!(
                params.iter().any(|p| p == want),
                "{proto:?}: {want} missing in {fwd:?}"
            );
        }
        let (_, seen) = echo_via(proxy.listen2, proto, &[("forwarded", "for=10.0.0.9")]).await;
        let fwd = seen.list("forwarded");
        assert_eq!(
            fwd.len(),
            2,
            "{proto:?}: append keeps the client's element: {fwd:?}"
        );
        assert_eq!(fwd[0], "for=10.0.0.9", "{proto:?}");
        assert!(fwd[1].contains("for=127.0.0.1"), "{proto:?}: {fwd:?}");

        // Untouched.
        let (_, seen) = echo_via(
            third,
            proto,
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
        assert_eq!(
            seen.list("x-forwarded-for"),
            ["10.0.0.1"],
            "{proto:?} untouched"
        );
        assert_eq!(
            seen.header("x-forwarded-proto"),
            ["https"],
            "{proto:?} untouched"
        );
        let (_, seen) = echo_via(third, proto, &[]).await;
        assert!(
            !seen.has("x-forwarded-for"),
            "{proto:?}: untouched adds nothing"
        );
        assert!(
            !seen.has("x-forwarded-proto"),
            "{proto:?}: untouched adds nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_generated_when_absent_and_kept_when_present() {
    let (_up, proxy, _) = proxy_headers_setup().await;
    let is_id = |v: &str| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit());
    for proto in [Proto::H1, Proto::H2] {
        let (_, a) = echo_via(proxy.listen, proto, &[]).await;
        let (_, b) = echo_via(proxy.listen, proto, &[]).await;
        let (ida, idb) = (a.header("x-request-id"), b.header("x-request-id"));
        assert_eq!(
            ida.len(),
            1,
            "{proto:?}: one generated x-request-id, got {ida:?}"
        );
        assert!(
            is_id(&ida[0]),
            "{proto:?}: {:?} is not 32 hex digits",
            ida[0]
        );
        assert_eq!(idb.len(), 1, "{proto:?}");
        assert_ne!(ida, idb, "{proto:?}: two requests got the same id");

        let (_, kept) =
            echo_via(proxy.listen, proto, &[("x-request-id", "client-chosen-42")]).await;
        assert_eq!(
            kept.header("x-request-id"),
            ["client-chosen-42"],
            "{proto:?}: kept"
        );

        // `request_id: false` on the edge listener.
        let (_, none) = echo_via(proxy.listen2, proto, &[]).await;
        assert!(
            !none.has("x-request-id"),
            "{proto:?}: request_id: false still generated one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_is_added_to_requests_and_responses_when_configured() {
    let (_up, proxy, _) = proxy_headers_setup().await;
    let (resp, seen) = echo_via(proxy.listen, Proto::H1, &[]).await;
    assert_eq!(
        seen.header("via"),
        ["1.1 strait"],
        "via on the request (HTTP/1.1 client)"
    );
    assert_eq!(
        resp.header_all("via"),
        ["1.1 strait"],
        "via on the response (HTTP/1.1 upstream)"
    );

    let (_, seen) = echo_via(proxy.listen, Proto::H2, &[("via", "1.0 fred")]).await;
    let via = seen.list("via");
    assert_eq!(via.len(), 2, "via appends to the client's: {via:?}");
    assert_eq!(via[0], "1.0 fred");
    assert!(
        via[1] == "2 strait" || via[1] == "2.0 strait",
        "via for an HTTP/2 client names version 2, got {:?}",
        via[1]
    );

    let (resp, seen) = echo_via(proxy.listen2, Proto::H1, &[]).await;
    assert!(!seen.has("via"), "no via configured: none on the request");
    assert_eq!(
        resp.header("via"),
        None,
        "no via configured: none on the response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (_up, proxy, _) = proxy_headers_setup().await;
    let (_, seen) = echo_via(
        proxy.listen,
        Proto::H1,
        &[
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-foo"),
            ("x-end-to-end", "yes"),
        ],
    )
    .await;
    for name in [
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
    ] {
        assert!(
            !seen.has(name),
            "hop-by-hop `{name}` was forwarded: {:?}",
            seen.header(name)
        );
    }
    assert!(
        seen.header("connection")
            .iter()
            .all(|c| !c.contains("x-custom-hop")),
        "the client's connection header was forwarded: {:?}",
        seen.header("connection")
    );
    // `trailer` is end to end in RFC 9110 (hop-by-hop only in RFC 2616): an HTTP/1 hop sends
    // just the trailer fields it declares, so it must survive.
    assert_eq!(seen.header("trailer"), ["x-foo"]);
    assert_eq!(
        seen.header("x-end-to-end"),
        ["yes"],
        "end-to-end headers are forwarded"
    );

    let (_, seen) = echo_via(proxy.listen, Proto::H1, &[("te", "trailers")]).await;
    assert_eq!(
        seen.header("te"),
        ["trailers"],
        "`te: trailers` is forwarded"
    );

    // Hop-by-hop headers from the upstream stop at the proxy too, for both client protocols
    // (HTTP/2 forbids them outright, so leaking them would break the stream).
    for proto in [Proto::H1, Proto::H2] {
        let (resp, _) = echo_via(
            proxy.listen,
            proto,
            &[
                ("x-echo-set-header", "connection=x-resp-hop"),
                ("x-echo-set-header", "x-resp-hop=secret"),
                ("x-echo-set-header", "keep-alive=timeout=99"),
                ("x-echo-set-header", "proxy-connection=keep-alive"),
                ("x-echo-set-header", "x-resp-end=yes"),
            ],
        )
        .await;
        assert_eq!(
            resp.header("x-resp-hop"),
            None,
            "{proto:?}: header named in connection leaked"
        );
        assert_ne!(
            resp.header("keep-alive").as_deref(),
            Some("timeout=99"),
            "{proto:?}: keep-alive leaked"
        );
        assert_eq!(
            resp.header("proxy-connection"),
            None,
            "{proto:?}: proxy-connection leaked"
        );
        assert_eq!(
            resp.header("x-resp-end").as_deref(),
            Some("yes"),
            "{proto:?}: end-to-end kept"
        );
    }
}

/// A route's `cors`: the proxy answers a preflight itself, before the listener's authorization
/// (a browser sends it without credentials), and marks answers to allowed origins (the
/// upstream's and the route's own); requests
/// that are not preflights, and preflights to routes without a policy, meet the authorization
/// as before. Over HTTP/1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_allowed_origins_marked() {
    let up = Upstream::echo("up").await;
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    authorization:
      default: deny
      rules: [{{ name: token, action: allow, match: {{ headers: [{{ name: x-token }}] }} }}]
    routes:
      - match: {{ path: {{ prefix: /api }} }}
        backends: [{{ cluster: up }}]
        cors:
          allow_origins: ["https://app.example.com", "https://*.example.org"]
          allow_methods: [GET, PUT]
          expose_headers: [x-total]
          max_age: 10m
          allow_credentials: true
        authorization:
          rules: [{{ name: no-x-deny, action: deny, match: {{ headers: [{{ name: x-deny }}] }} }}]
      - backends: [{{ cluster: up }}]
clusters:
  - name: up
    endpoints: [{{ address: "{}" }}]
"#,
        up.addr
    ))
    .await;
    let request = |method: &str, path: &str, origin: &str| {
        request(method, "gw.example.com", path)
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type, x-token")
    };
    for proto in [Proto::H1, Proto::H2] {
        let hits = up.hits();
        let send = |req: http::request::Builder| async {
            proxy
                .send(proto, req.body(empty()).expect("request"))
                .await
                .expect("answer")
        };
        let allowed = send(request("OPTIONS", "/api/x", "https://a.example.org")).await;
        assert_eq!(allowed.status, StatusCode::NO_CONTENT, "{proto:?}");
        let h = |name| allowed.header(name).unwrap_or_default();
        assert_eq!(h("access-control-allow-origin"), "https://a.example.org");
        assert_eq!(h("access-control-allow-methods"), "GET, PUT");
        assert_eq!(h("access-control-allow-headers"), "content-type, x-token");
        assert_eq!(h("access-control-allow-credentials"), "true");
        assert_eq!(h("access-control-max-age"), "600");
        let refused = send(request("OPTIONS", "/api/x", "https://evil.example.net")).await;
        assert_eq!(refused.status, StatusCode::NO_CONTENT, "{proto:?}");
        assert_eq!(refused.header("access-control-allow-origin"), None);
        assert_eq!(up.hits(), hits, "{proto:?}: a preflight went upstream");

        // Not preflights: the authorization as before, then the mark.
        let denied = send(request("GET", "/api/x", "https://app.example.com")).await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN, "{proto:?}");
        let marked =
            send(request("GET", "/api/x", "https://app.example.com").header("x-token", "t")).await;
        assert_eq!(marked.status, StatusCode::OK, "{proto:?}");
        let h = |name| marked.header(name).unwrap_or_default();
        assert_eq!(h("access-control-allow-origin"), "https://app.example.com");
        assert_eq!(h("access-control-expose-headers"), "x-total");
        assert_eq!(h("vary"), "origin");
        // The route's own answers are marked too (its authorization's, here).
        let denied_by_route = send(
            request("GET", "/api/x", "https://app.example.com")
                .header("x-token", "t")
                .header("x-deny", "1"),
        )
        .await;
        assert_eq!(denied_by_route.status, StatusCode::FORBIDDEN, "{proto:?}");
        assert_eq!(
            denied_by_route
                .header("access-control-allow-origin")
                .as_deref(),
            Some("https://app.example.com")
        );
        let other =
            send(request("GET", "/api/x", "https://evil.example.net").header("x-token", "t")).await;
        assert_eq!(other.status, StatusCode::OK, "{proto:?}");
        assert_eq!(other.header("access-control-allow-origin"), None);
        // A route without a policy: its preflight is an OPTIONS like any other.
        let plain = send(request("OPTIONS", "/other", "https://app.example.com")).await;
        assert_eq!(plain.status, StatusCode::FORBIDDEN, "{proto:?}");
        assert_eq!(up.hits(), hits + 2, "{proto:?}");
    }
}

/// gunzips a whole body.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a whole gzip stream");
    out
}

/// A route's `compression`: answers of a listed type, long enough, to clients that accept gzip
/// are gzipped (the upstream's and the route's own), streamed ones frame by frame; others, and
/// clients that do not take gzip, get them as they came. Over HTTP/1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_gzips_listed_answers_for_clients_that_take_it() {
    let json: &'static str = format!("{{\"items\": [{}]}}", "\"item\", ".repeat(400)).leak();
    let answer = |kind: &str, body: &str, extra: &str| -> &'static str {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .leak()
    };
    let json_up = raw_upstream(
        [answer("application/json", json, "etag: \"v1\"\r\n")],
        Duration::ZERO,
        false,
    )
    .await;
    let png_up = raw_upstream([answer("image/png", json, "")], Duration::ZERO, false).await;
    let small_up = raw_upstream(
        [answer("application/json", "{}", "")],
        Duration::ZERO,
        false,
    )
    .await;
    let stream_up = raw_upstream(
        [
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
             |6\r\nfirst\n\r\n|7\r\nsecond\n\r\n|0\r\n\r\n",
        ],
        Duration::from_millis(300),
        false,
    )
    .await;
    let trailed_up = raw_upstream(
        [
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
             trailer: x-sum\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n",
        ],
        Duration::ZERO,
        false,
    )
    .await;
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: main
    address: ${{LISTEN}}
    routes:
      - match: {{ path: {{ prefix: /trailed }} }}
        backends: [{{ cluster: trailed }}]
        compression: {{ min_bytes: 0 }}
      - match: {{ path: {{ prefix: /json }} }}
        backends: [{{ cluster: json }}]
        compression: {{}}
      - match: {{ path: {{ prefix: /png }} }}
        backends: [{{ cluster: png }}]
        compression: {{}}
      - match: {{ path: {{ prefix: /small }} }}
        backends: [{{ cluster: small }}]
        compression: {{}}
      - match: {{ path: {{ prefix: /stream }} }}
        backends: [{{ cluster: stream }}]
        compression: {{ content_types: [text/*], min_bytes: 0, level: 9 }}
      - match: {{ path: {{ prefix: /own }} }}
        direct_response: {{ status: 200, body: "{}" }}
        compression: {{}}
clusters:
  - {{ name: json, endpoints: [{{ address: "{json_up}" }}] }}
  - {{ name: png, endpoints: [{{ address: "{png_up}" }}] }}
  - {{ name: small, endpoints: [{{ address: "{small_up}" }}] }}
  - {{ name: stream, endpoints: [{{ address: "{stream_up}" }}] }}
  - {{ name: trailed, endpoints: [{{ address: "{trailed_up}" }}] }}
"#,
        "own answer ".repeat(200)
    ))
    .await;
    let get = |path: &str, accept: Option<&str>| {
        let mut req = request("GET", "a.example", path);
        if let Some(accept) = accept {
            req = req.header("accept-encoding", accept);
        }
        req.body(empty()).expect("request")
    };
    for proto in [Proto::H1, Proto::H2] {
        let proxy = &proxy;
        let send = |req| async move { proxy.send(proto, req).await.expect("answer") };
        let gz = send(get("/json", Some("br, gzip"))).await;
        assert_eq!(gz.status, 200, "{proto:?}");
        assert_eq!(
            gz.header("content-encoding").as_deref(),
            Some("gzip"),
            "{proto:?}"
        );
        assert_eq!(gz.header("vary").as_deref(), Some("accept-encoding"));
        assert_eq!(gz.header("etag").as_deref(), Some("W/\"v1\""));
        assert_ne!(
            gz.header("content-length").as_deref(),
            Some(&*json.len().to_string())
        );
        assert!(
            gz.body.len() < json.len() / 4,
            "{proto:?}: {} bytes",
            gz.body.len()
        );
        assert_eq!(gunzip(&gz.body), json.as_bytes(), "{proto:?}");

        let plain = send(get("/json", None)).await;
        assert_eq!(plain.header("content-encoding"), None, "{proto:?}");
        assert_eq!(plain.body, json.as_bytes());
        let refused = send(get("/json", Some("gzip;q=0, identity"))).await;
        assert_eq!(refused.header("content-encoding"), None, "{proto:?}");
        for path in ["/png", "/small"] {
            let left = send(get(path, Some("gzip"))).await;
            assert_eq!(left.header("content-encoding"), None, "{proto:?} {path}");
        }
        let own = send(get("/own", Some("gzip"))).await;
        assert_eq!(own.header("content-encoding").as_deref(), Some("gzip"));
        assert_eq!(gunzip(&own.body), "own answer ".repeat(200).as_bytes());

        // A stream: each event arrives compressed as it is sent, not at the end.
        let mut conn = proxy.connect(proto).await;
        let answer = conn
            .send(get("/stream", Some("gzip")))
            .await
            .expect("answer");
        assert_eq!(answer.headers()["content-encoding"], "gzip");
        let mut body = answer.into_body();
        let mut got = Vec::new();
        let mut first_at = None;
        let started = std::time::Instant::now();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if let Ok(data) = frame.expect("frame").into_data() {
                first_at.get_or_insert_with(|| started.elapsed());
                got.extend_from_slice(&data);
            }
        }
        let first_at = first_at.expect("data");
        assert!(
            started.elapsed() - first_at >= Duration::from_millis(400),
            "{proto:?}: the first piece came at {first_at:?}, the end at {:?}",
            started.elapsed()
        );
        assert_eq!(gunzip(&got), b"first\nsecond\n", "{proto:?}");
    }
    // Trailers go after the gzip stream's end (HTTP/2 passes them on).
    let trailed = proxy
        .send(Proto::H2, get("/trailed", Some("gzip")))
        .await
        .expect("answer");
    assert_eq!(gunzip(&trailed.body), b"hello");
    let trailers = trailed.trailers.expect("trailers");
    assert_eq!(trailers["x-sum"], "5");
}
