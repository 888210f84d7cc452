//! Validation of `tracing` and `trace_context`: each mistake named at its field with what is
//! allowed, and the defaults operators rely on.

use strait_config::{AcceptFormat, EmitFormat, OtlpProtocol};

fn errors(yaml: &str) -> String {
    match strait_config::parse(yaml, "t.yaml") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

const LISTENER: &str = "listeners:\n  - name: l\n    address: 127.0.0.1:8080\n";

#[test]
fn defaults() {
    let config = strait_config::parse(&format!("tracing: {{}}\n{LISTENER}"), "t.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(t) = &config.tracing else {
        panic!("no tracing")
    };
    assert_eq!(t.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.endpoint_url(), "http://127.0.0.1:4317");
    assert_eq!(t.sample_percent, 10.0);
    assert_eq!(t.service_name, "strait");
    assert_eq!((t.max_queue_spans, t.max_batch_spans), (2048, 512));
    assert_eq!(t.batch_delay.to_string(), "5s");
    assert_eq!(t.export_timeout.to_string(), "10s");
    let context = strait_config::TraceContext::default();
    assert_eq!(context.accept, [AcceptFormat::W3c, AcceptFormat::B3]);
    assert_eq!(context.emit, [EmitFormat::W3c]);
}

#[test]
fn http_endpoints_get_the_traces_path_when_they_have_none() {
    for (endpoint, url) in [
        ("", "http://127.0.0.1:4318/v1/traces"),
        (
            "endpoint: http://collector:4318",
            "http://collector:4318/v1/traces",
        ),
        (
            "endpoint: http://collector:4318/",
            "http://collector:4318/v1/traces",
        ),
        (
            "endpoint: http://collector:4318/otlp/v1/traces",
            "http://collector:4318/otlp/v1/traces",
        ),
    ] {
        let yaml = format!("tracing: {{ protocol: http_protobuf, {endpoint} }}\n{LISTENER}");
        let config = strait_config::parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let t = config.tracing.unwrap_or_else(|| panic!("no tracing"));
        assert_eq!(t.endpoint_url(), url, "{endpoint}");
    }
}

#[test]
fn bad_fields_are_named_with_what_is_allowed() {
    let yaml = format!(
        "tracing:\n  endpoint: http://collector:4317/v1/traces\n  sample_percent: 101\n  service_name: \" \"\n  max_queue_spans: 0\n  max_batch_spans: 5\n  batch_delay: 0s\n  export_timeout: 0s\n{LISTENER}"
    );
    let e = errors(&yaml);
    for want in [
        "t.yaml:2:13: tracing.endpoint: \"http://collector:4317/v1/traces\": a gRPC collector is addressed by host and port only",
        "tracing.sample_percent: 101: allowed 0 to 100",
        "tracing.service_name: the service name is empty",
        "tracing.max_queue_spans: 0: allowed 1 to 1048576",
        "tracing.max_batch_spans: 5: allowed 1 to `max_queue_spans` (0)",
        "tracing.batch_delay: 0s leaves the exporter no time",
        "tracing.export_timeout: 0s leaves the exporter no time",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn collector_urls() {
    for (url, want) in [
        (
            "https://collector:4317",
            "TLS to the collector is not supported yet",
        ),
        ("collector:4317", "needs `http://`"),
        ("http://", "is not a URL"),
        ("http://user:pw@collector:4317", "carries credentials"),
        ("http://collector:4317?x=1", "has a query string"),
        ("not a url", "is not a URL"),
    ] {
        let e = errors(&format!("tracing: {{ endpoint: \"{url}\" }}\n{LISTENER}"));
        assert!(e.contains(want), "{url}: missing {want:?} in:\n{e}");
    }
    assert_eq!(
        errors(&format!(
            "tracing: {{ endpoint: \"http://[::1]:4317\" }}\n{LISTENER}"
        )),
        ""
    );
}

#[test]
fn trace_context_needs_tracing_and_lists_each_format_once() {
    let e = errors(&format!(
        "{LISTENER}    trace_context: {{ emit: [b3_single] }}\n"
    ));
    assert!(
        e.contains("t.yaml:4:5: listeners[0].trace_context: `trace_context` chooses the headers"),
        "{e}"
    );
    let e = errors(&format!(
        "tracing: {{}}\n{LISTENER}    trace_context: {{ accept: [b3, w3c, b3], emit: [w3c, w3c] }}\n"
    ));
    assert!(
        e.contains("listeners[0].trace_context.accept[2]: `b3` is already listed at [0]"),
        "{e}"
    );
    assert!(
        e.contains("listeners[0].trace_context.emit[1]: `w3c` is already listed at [0]"),
        "{e}"
    );
    let e = errors(&format!(
        "tracing: {{}}\n{LISTENER}    trace_context: {{ emit: [zipkin] }}\n"
    ));
    assert!(
        e.contains("zipkin") && e.contains("b3_single"),
        "unknown formats list the allowed ones: {e}"
    );
    // Empty lists are a choice: trust no client's context, or send none upstream.
    assert_eq!(
        errors(&format!(
            "tracing: {{}}\n{LISTENER}    trace_context: {{ accept: [], emit: [] }}\n"
        )),
        ""
    );
}
