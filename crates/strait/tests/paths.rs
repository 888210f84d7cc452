//! Request paths made normal before authorization, routing and the upstream see them
//! (`normalize_path`, `merge_slashes`, `escaped_slashes`): every spelling of `/admin` meets the
//! rule on `/admin`, and the upstream gets the path that was checked.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request written as given (no client library to tidy the path first), read to the close.
/// The status and the body.
async fn raw_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        answer
    };
    let answer = within(Duration::from_secs(5), "request", exchange).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `uri` the echo upstream reported in its JSON body.
fn echoed_uri(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| {
        panic!("not the echo upstream's answer: {body:?}");
    });
    json["uri"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_denied_path_is_denied_and_the_upstream_gets_the_checked_path() {
    let up = Upstream::echo("app").await;
    let config = fill(
        "listeners:
  - name: main
    address: ${LISTEN}
    authorization:
      rules:
        - { name: no-admin, action: deny, match: { path: { prefix: /admin } } }
    routes:
      - match: { hosts: [internal.example] }
        direct_response: { status: 200, body: internal }
      - match: { path: { prefix: /v1/ } }
        rewrite: { path_prefix: /internal/ }
        backends: [{ cluster: app }]
      - backends: [{ cluster: app }]
clusters:
  - name: app
    endpoints: [{ address: \"${UP}\" }]
",
        &[("UP", &up.addr)],
    );
    let proxy = Proxy::start(&config).await;

    for path in [
        "/admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/./../admin",
        "//admin",
        "/./admin",
        "/x/../admin/users",
        "/%61dmin",
        "/adm%69n",
        "/../admin",
        "/admin;jsessionid=1",
    ] {
        let (status, body) = raw_get(proxy.listen, "a.example", path).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    assert_eq!(up.hits(), 0, "no spelling of /admin reached the upstream");

    // Escaped slashes are refused (the default), and bare backslashes (a Windows upstream takes
    // `/public\..\admin` for `/admin`), as are malformed escapes.
    for path in [
        "/admin%2fx",
        "/public/..%2Fadmin",
        "/a%5cb",
        "/public\\..\\admin",
        "/a\\b",
        "/a%zz",
        "/a%4",
    ] {
        let (status, body) = raw_get(proxy.listen, "a.example", path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }

    // What passes goes upstream as it was checked; the query as it came.
    for (path, sent) in [
        ("/public/./x/../y", "/public/y"),
        ("//public///y/", "/public/y/"),
        ("/p%61th%3f?q=%2e%2e/../x", "/path%3F?q=%2e%2e/../x"),
        ("/v1/../public", "/public"),
        ("/v1/a/%2e%2e/b", "/internal/b"),
    ] {
        let (status, body) = raw_get(proxy.listen, "a.example", path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(echoed_uri(&body), sent, "{path}");
    }

    // The same over HTTP/2, whose requests take the same path through the proxy.
    let denied = proxy
        .send(
            Proto::H2,
            simple("GET", "a.example", "/public/%2e%2e/admin"),
        )
        .await
        .expect("h2 request");
    assert_eq!(denied.status, 403);

    // A host with its trailing dot is the same host to routes.
    for host in [
        "internal.example",
        "internal.example.",
        "INTERNAL.example.:80",
    ] {
        let (status, body) = raw_get(proxy.listen, host, "/").await;
        assert_eq!((status, body.as_str()), (200, "internal"), "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_normalization_can_be_chosen_per_listener() {
    let up = Upstream::echo("app").await;
    let as_sent = free_addr();
    let config = fill(
        "listeners:
  - name: keep
    address: ${LISTEN}
    escaped_slashes: keep
    routes:
      - backends: [{ cluster: app }]
  - name: decode
    address: ${LISTEN2}
    escaped_slashes: decode
    routes:
      - backends: [{ cluster: app }]
  - name: as-sent
    address: ${AS_SENT}
    normalize_path: false
    merge_slashes: false
    escaped_slashes: keep
    routes:
      - backends: [{ cluster: app }]
clusters:
  - name: app
    endpoints: [{ address: \"${UP}\" }]
",
        &[("UP", &up.addr), ("AS_SENT", &as_sent)],
    );
    let proxy = Proxy::start(&config).await;

    let path = "/a/%2fb//c/../d%7e";
    for (at, listener, sent) in [
        (proxy.listen, "keep", "/a/%2Fb/d~"),
        (proxy.listen2, "decode", "/a/b/d~"),
        (as_sent, "as-sent", path),
    ] {
        let (status, body) = raw_get(at, "a.example", path).await;
        assert_eq!(status, 200, "{listener}: {body}");
        assert_eq!(echoed_uri(&body), sent, "{listener}");
    }
}
