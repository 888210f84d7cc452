//! Validation of `retry` and `retry_budget`: each mistake named at its field with what is
//! allowed, and the defaults users rely on.

fn errors(yaml: &str) -> String {
    match strait_config::parse(yaml, "t.yaml") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:9000 }]\nlisteners:\n  - name: l\n    address: 127.0.0.1:8080\n";

#[test]
fn retry_fields_out_of_range_are_named() {
    let bad = format!(
        "{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        retry: {{ attempts: 11, status_codes: [700], backoff: {{ base: 0s, max: 0s }}, max_body_bytes: 99999999, hedge: true }}\n"
    );
    let e = errors(&bad);
    for want in [
        "retry.attempts: 11: allowed 1 to 10",
        "retry.status_codes[0]: 700: allowed 100 to 599",
        "retry.backoff.base: 0s would retry at once",
        "retry.max_body_bytes: 99999999: allowed 0 to 16777216",
        "retry.hedge: hedging sends another attempt when `per_try_timeout` passes",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let below = format!(
        "{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        retry: {{ backoff: {{ base: 100ms, max: 10ms }} }}\n"
    );
    assert!(
        errors(&below).contains("retry.backoff.max: 10ms is below `base` (100ms)"),
        "{}",
        errors(&below)
    );
}

#[test]
fn unknown_conditions_list_the_allowed_ones() {
    let bad = format!(
        "{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        retry: {{ retry_on: [gateway-error] }}\n"
    );
    let e = errors(&bad);
    assert!(
        e.contains("gateway-error") && e.contains("gateway_error"),
        "{e}"
    );
}

#[test]
fn retry_belongs_to_forwarding_routes_and_budgets_are_bounded() {
    let answers = format!(
        "{BASE}    routes:\n      - direct_response: {{ status: 200 }}\n        retry: {{}}\n"
    );
    let e = errors(&answers);
    assert!(
        e.contains("`retry` applies only to routes that forward"),
        "{e}"
    );
    let budget = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:9000 }]\n    retry_budget: { percent: -5 }\n";
    let e = errors(budget);
    assert!(
        e.contains("clusters[0].retry_budget.percent: -5: allowed 0 to 1000"),
        "{e}"
    );
}

#[test]
fn defaults_are_two_attempts_on_transport_and_gateway_errors() {
    let ok =
        format!("{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        retry: {{}}\n");
    let config = strait_config::parse(&ok, "t.yaml").expect("valid");
    let retry = config.listeners[0].routes[0].retry.clone().expect("retry");
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.max_body_bytes, 65536);
    assert!(!retry.non_idempotent && !retry.hedge);
    assert_eq!(retry.backoff.base.to_string(), "25ms");
    assert_eq!(retry.backoff.max.to_string(), "250ms");
    let c = &config.clusters[0];
    assert_eq!(c.retry_budget.percent, 20.0);
    assert_eq!(c.retry_budget.min_retries_per_second, 10);
    assert_eq!(c.circuit_breaker.max_retries, 1024);
}

#[test]
fn authorization_rules_are_checked() {
    let bad = format!(
        "{BASE}    authorization:\n      rules:\n        - {{ name: a, action: allow, peers: [checkout] }}\n    routes:\n      - backends: [{{ cluster: c }}]\n"
    );
    let e = errors(&bad);
    assert!(
        e.contains("authorization.rules[0].peers[0]") && e.contains("give a SPIFFE ID"),
        "{e}"
    );
    let cidr = format!(
        "{BASE}    authorization:\n      rules:\n        - {{ action: deny, client_ips: [10.0.0.0/33] }}\n    routes:\n      - backends: [{{ cluster: c }}]\n"
    );
    let e = errors(&cidr);
    assert!(
        e.starts_with("t.yaml:9:40: listeners[0].authorization.rules[0].client_ips[0]: `10.0.0.0/33`: the prefix length must be 0 to 32"),
        "{e}"
    );
    let dup = format!(
        "{BASE}    authorization:\n      rules:\n        - {{ name: a, action: allow }}\n        - {{ name: a, action: deny }}\n    routes:\n      - backends: [{{ cluster: c }}]\n"
    );
    let e = errors(&dup);
    assert!(
        e.contains("authorization.rules[1].name: `a` is already the name of rules[0]"),
        "{e}"
    );
}
