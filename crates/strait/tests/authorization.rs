//! Authorization policies on listeners and routes: rules by client address and by request,
//! default-deny, the first matching rule decides, 403 (gRPC PERMISSION_DENIED) with the rule
//! named, and every decision counted by rule. Peer identities are tested in tls.rs, where the
//! client certificates are.

mod support;

use std::time::Duration;

use support::*;

async fn fetch(proxy: &Proxy, req: http::Request<Body>) -> Resp {
    within(
        Duration::from_secs(5),
        "request",
        proxy.send(Proto::H1, req),
    )
    .await
    .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_route_policies_allow_and_deny_by_rule() {
    let up = Upstream::echo("app").await;
    let config = format!(
        "listeners:
  - name: main
    address: ${{LISTEN}}
    authorization:
      default: deny
      rules:
        - {{ name: no-debug, action: deny, match: {{ headers: [{{ name: x-debug }}] }} }}
        - {{ name: loopback, action: allow, client_ips: [127.0.0.0/8, '::1'] }}
    routes:
      - name: admin
        match: {{ path: {{ prefix: /admin }} }}
        backends: [{{ cluster: app }}]
        authorization:
          rules:
            - {{ name: admins-read, action: allow, match: {{ methods: [GET], headers: [{{ name: x-role, exact: admin }}] }} }}
            - {{ name: everyone-else, action: deny }}
      - name: api
        backends: [{{ cluster: app }}]
clusters:
  - name: app
    endpoints: [{{ address: \"{}\" }}]
",
        up.addr
    );
    let proxy = Proxy::start(&config).await;

    assert_eq!(
        proxy.get("a.example", "/api").await.status,
        200,
        "loopback is allowed"
    );
    let debug = fetch(
        &proxy,
        request("GET", "a.example", "/api")
            .header("x-debug", "1")
            .body(empty())
            .expect("req"),
    )
    .await;
    assert_eq!(debug.status, 403);
    assert_eq!(debug.header("x-strait-error").as_deref(), Some("forbidden"));
    assert!(
        debug.text().contains("denied by rule no-debug"),
        "{}",
        debug.text()
    );

    let admin = fetch(
        &proxy,
        request("GET", "a.example", "/admin/users")
            .header("x-role", "admin")
            .body(empty())
            .expect("req"),
    )
    .await;
    assert_eq!(admin.status, 200);
    let write = fetch(
        &proxy,
        request("POST", "a.example", "/admin/users")
            .header("x-role", "admin")
            .body(full("{}"))
            .expect("req"),
    )
    .await;
    assert_eq!(write.status, 403);
    assert!(write.text().contains("everyone-else"), "{}", write.text());
    let grpc = fetch(
        &proxy,
        request("POST", "a.example", "/admin/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(full(vec![0, 0, 0, 0, 0]))
            .expect("req"),
    )
    .await;
    assert_eq!(
        grpc.status, 200,
        "gRPC clients get their status in grpc-status"
    );
    assert_eq!(grpc.header("grpc-status").as_deref(), Some("7"));
    assert_eq!(up.hits(), 2, "denied requests never reach the upstream");

    let metrics = proxy.admin_get("/metrics").await.text();
    for (labels, at_least) in [
        (
            "listener=\"main\",route=\"\",rule=\"loopback\",decision=\"allow\"",
            4,
        ),
        (
            "listener=\"main\",route=\"\",rule=\"no-debug\",decision=\"deny\"",
            1,
        ),
        (
            "listener=\"main\",route=\"admin\",rule=\"admins-read\",decision=\"allow\"",
            1,
        ),
        (
            "listener=\"main\",route=\"admin\",rule=\"everyone-else\",decision=\"deny\"",
            2,
        ),
    ] {
        let line = format!("strait_authz_decisions_total{{{labels}}} ");
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"));
        assert!(value >= at_least, "{line}{value}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_refuses_what_no_rule_allows() {
    let up = Upstream::echo("app").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "authorization: { default: deny, rules: [{ action: allow, client_ips: [192.0.2.0/24] }] }",
        "",
        "",
    ))
    .await;
    let resp = proxy.get("a.example", "/").await;
    assert_eq!(resp.status, 403);
    assert!(
        resp.text().contains("denied by rule default"),
        "{}",
        resp.text()
    );
    assert_eq!(up.hits(), 0);
}
