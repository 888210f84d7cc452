//! Validation of `fault` and `access_log`: each mistake named at its field with what is allowed.

fn errors(yaml: &str) -> String {
    match strait_config::parse(yaml, "t.yaml") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:9000 }]\nlisteners:\n  - name: l\n    address: 127.0.0.1:8080\n";

#[test]
fn an_abort_needs_exactly_one_status_in_range() {
    let both = format!(
        "{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        fault: {{ abort: {{ status: 503, grpc_status: 14 }} }}\n"
    );
    let e = errors(&both);
    assert!(
        e.contains("listeners[0].routes[0].fault.abort") && e.contains("exactly one"),
        "{e}"
    );

    let bad = format!(
        "{BASE}    routes:\n      - backends: [{{ cluster: c }}]\n        fault: {{ abort: {{ status: 99, percent: 120 }}, delay: {{ duration: 1s, percent: -1 }} }}\n"
    );
    let e = errors(&bad);
    assert!(
        e.contains("fault.abort.status: 99: allowed 200 to 599"),
        "{e}"
    );
    assert!(
        e.contains("fault.abort.percent: 120: allowed 0 to 100"),
        "{e}"
    );
    assert!(
        e.contains("fault.delay.percent: -1: allowed 0 to 100"),
        "{e}"
    );
    assert!(e.starts_with("t.yaml:9:35: "), "located at the value: {e}");
}

#[test]
fn an_access_log_names_each_field_once_and_samples_a_percentage() {
    let bad = format!(
        "{BASE}    access_log: {{ path: '', fields: [status, path, status], sample_percent: 200 }}\n    routes:\n      - backends: [{{ cluster: c }}]\n"
    );
    let e = errors(&bad);
    assert!(e.contains("listeners[0].access_log.path"), "{e}");
    assert!(
        e.contains("access_log.fields[2]: `status` is already listed at fields[0]"),
        "{e}"
    );
    assert!(
        e.contains("access_log.sample_percent: 200: allowed 0 to 100"),
        "{e}"
    );
    let unknown = format!("{BASE}    access_log: {{ fields: [statuss] }}\n");
    let e = errors(&unknown);
    assert!(e.contains("statuss") && e.contains("status"), "{e}");
}
