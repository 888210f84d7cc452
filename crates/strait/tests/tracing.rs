//! Distributed tracing end to end: a real OTLP receiver (a tonic gRPC server implementing the
//! OTLP trace service, and a hyper server decoding OTLP/HTTP protobuf) takes the spans the
//! proxy exports; the echo upstream shows the trace headers the proxy sent.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

// ---------------------------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------------------------

/// A span as the collector received it, with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    scope: String,
    span: Span,
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<Got>>,
    /// `content-type` of each OTLP/HTTP request.
    content_types: Mutex<Vec<String>>,
    paths: Mutex<Vec<String>>,
    /// Answer exports with an error (gRPC `UNAVAILABLE`, HTTP 503) and keep nothing.
    refuse: std::sync::atomic::AtomicBool,
}

impl Received {
    fn refusing(&self) -> bool {
        self.refuse.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Received {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().expect("spans lock");
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        scope: scope.clone(),
                        span,
                    });
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct GrpcReceiver(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.refusing() {
            return Err(tonic::Status::unavailable("collector refusing (test)"));
        }
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP receiver on loopback, running on the test's runtime.
struct Collector {
    addr: SocketAddr,
    received: Arc<Received>,
}

impl Collector {
    /// OTLP/gRPC: tonic's server with the generated trace service.
    async fn grpc() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("collector address");
        let received = Arc::new(Received::default());
        let service = TraceServiceServer::new(GrpcReceiver(Arc::clone(&received)));
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(service, incoming)
                .await;
        });
        Collector { addr, received }
    }

    /// OTLP/HTTP with protobuf bodies: a hyper server decoding `ExportTraceServiceRequest`.
    async fn http() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("collector address");
        let received = Arc::new(Received::default());
        let shared = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let received = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let received = Arc::clone(&received);
                        async move {
                            Ok::<_, std::convert::Infallible>(http_export(req, &received).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, received }
    }

    /// The spans received once there are at least `n`; fails the test after 10 s.
    async fn spans(&self, n: usize) -> Vec<Got> {
        let ok = eventually(Duration::from_secs(10), || async {
            self.received.spans.lock().expect("spans lock").len() >= n
        })
        .await;
        let spans = self.received.spans.lock().expect("spans lock").clone();
        assert!(ok, "expected {n} spans, got {}: {spans:#?}", spans.len());
        spans
    }

    /// Every span received so far.
    fn now(&self) -> Vec<Got> {
        self.received.spans.lock().expect("spans lock").clone()
    }
}

async fn http_export(req: Request<Incoming>, received: &Received) -> Response<Full<bytes::Bytes>> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received
        .content_types
        .lock()
        .expect("lock")
        .push(content_type);
    received
        .paths
        .lock()
        .expect("lock")
        .push(req.uri().path().to_owned());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(400),
    };
    if received.refusing() {
        return status(503);
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            received.take(request);
            let mut resp = Response::new(Full::new(bytes::Bytes::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            )));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            resp
        }
        Err(_) => status(400),
    }
}

fn status(code: u16) -> Response<Full<bytes::Bytes>> {
    let mut resp = Response::new(Full::new(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    resp
}

// ---------------------------------------------------------------------------------------------
// Reading spans
// ---------------------------------------------------------------------------------------------

fn text(v: &Any) -> Option<String> {
    match v {
        Any::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn s(span: &Span, key: &str) -> String {
    attr(span, key)
        .and_then(text)
        .unwrap_or_else(|| panic!("no string attribute {key} on {span:#?}"))
}

/// A string-array attribute (`http.request.header.*`).
fn strings(span: &Span, key: &str) -> Vec<String> {
    match attr(span, key) {
        Some(Any::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| v.value.as_ref().and_then(text).unwrap_or_default())
            .collect(),
        other => panic!("{key}: not a string array: {other:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(n)) => *n,
        _ => panic!("no int attribute {key} on {span:#?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(span: &Span) -> SpanKind {
    SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
}

fn is_error(span: &Span) -> bool {
    span.status.as_ref().is_some_and(|s| s.code == 2)
}

fn by_kind(spans: &[Got], wanted: SpanKind) -> Vec<&Span> {
    spans
        .iter()
        .map(|g| &g.span)
        .filter(|s| kind(s) == wanted)
        .collect()
}

/// The fields of a `traceparent` the upstream saw.
fn traceparent(echoed: &Echoed) -> (String, String, String, String) {
    let values = echoed.header("traceparent");
    assert_eq!(values.len(), 1, "one traceparent upstream: {values:?}");
    let parts: Vec<String> = values[0].split('-').map(str::to_owned).collect();
    assert_eq!(parts.len(), 4, "{values:?}");
    (
        parts[0].clone(),
        parts[1].clone(),
        parts[2].clone(),
        parts[3].clone(),
    )
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// A proxy with one catch-all route to `upstream`, tracing to `collector` (`tracing` extra
/// lines indented by two).
fn traced(collector: SocketAddr, tracing: &str, upstream: SocketAddr, listener: &str) -> String {
    let extra: String = tracing.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "tracing:\n  endpoint: http://{collector}\n  batch_delay: 50ms\n{extra}{}",
        one_route(upstream, listener, "", "")
    )
}

async fn get_with(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut builder = request("GET", "api.example.com", path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(empty()).expect("request");
    within(
        REQUEST_LIMIT,
        "request through the proxy",
        proxy.send(Proto::H1, req),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_spans_reach_the_collector_with_their_attributes() {
    let up = Upstream::echo("traced").await;
    let collector = Collector::grpc().await;
    let proxy = Proxy::start(&traced(
        collector.addr,
        "sample_percent: 0\nservice_name: edge",
        up.addr,
        "",
    ))
    .await;
    let resp = get_with(
        &proxy,
        "/api/items?token=secret",
        &[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=abc"),
            ("user-agent", "tracing-test/1"),
            ("x-request-id", "req-42"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echoed = resp.echo();

    let spans = collector.spans(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans
        .iter()
        .all(|g| g.service == "edge" && g.scope == "strait"));
    let server = by_kind(&spans, SpanKind::Server)[0];
    let client = by_kind(&spans, SpanKind::Client)[0];

    // One trace: the caller's; the server span's parent is the caller's span, the client
    // span's parent the server span, and the upstream's parent the client span.
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&client.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), SPAN);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(server.trace_state, "vendor=abc");
    let (version, trace, parent, flags) = traceparent(&echoed);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_eq!(parent, hex(&client.span_id));
    assert_eq!(echoed.header("tracestate"), ["vendor=abc"]);

    assert_eq!(server.name, "GET all");
    assert_eq!(s(server, "http.request.method"), "GET");
    assert_eq!(s(server, "url.path"), "/api/items");
    assert!(
        server
            .attributes
            .iter()
            .all(|kv| !format!("{kv:?}").contains("secret")),
        "query strings are never recorded"
    );
    assert_eq!(s(server, "url.scheme"), "http");
    assert_eq!(s(server, "server.address"), "api.example.com");
    assert_eq!(s(server, "http.route"), "all");
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(s(server, "network.protocol.version"), "1.1");
    assert_eq!(s(server, "client.address"), "127.0.0.1");
    assert_eq!(s(server, "user_agent.original"), "tracing-test/1");
    assert_eq!(s(server, "strait.listener"), "main");
    assert_eq!(s(server, "strait.route"), "all");
    assert_eq!(s(server, "strait.cluster"), "echo");
    assert_eq!(
        strings(server, "http.request.header.x-request-id"),
        ["req-42"]
    );
    assert!(!is_error(server));
    assert!(attr(server, "error.type").is_none());

    assert_eq!(client.name, "GET");
    assert_eq!(s(client, "server.address"), "127.0.0.1");
    assert_eq!(int(client, "server.port"), i64::from(up.addr.port()));
    assert_eq!(
        s(client, "url.full"),
        format!("http://{}/api/items", up.addr)
    );
    assert_eq!(int(client, "http.response.status_code"), 200);
    assert!(attr(client, "http.request.resend_count").is_none());
    // The client span lies within the server span.
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(server.end_time_unix_nano > server.start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_separate_client_spans() {
    let up = Upstream::fail_first("flaky", 1, 503, &[]).await;
    let collector = Collector::grpc().await;
    let proxy = Proxy::start(&format!(
        "tracing:\n  endpoint: http://{}\n  batch_delay: 50ms\n  sample_percent: 100\n{}",
        collector.addr,
        one_route(
            up.addr,
            "",
            "retry: { attempts: 2, backoff: { base: 1ms, max: 2ms } }",
            ""
        )
    ))
    .await;
    let resp = proxy.get("api.example.com", "/r").await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let spans = collector.spans(3).await;
    let server = by_kind(&spans, SpanKind::Server)[0];
    let mut clients = by_kind(&spans, SpanKind::Client);
    assert_eq!(clients.len(), 2, "{spans:#?}");
    clients.sort_by_key(|c| c.start_time_unix_nano);
    let (first, retry) = (clients[0], clients[1]);
    for c in [first, retry] {
        assert_eq!(c.parent_span_id, server.span_id);
        assert_eq!(c.trace_id, server.trace_id);
    }
    assert_ne!(first.span_id, retry.span_id);
    assert_eq!(int(first, "http.response.status_code"), 503);
    assert!(is_error(first));
    assert_eq!(s(first, "error.type"), "503");
    assert!(attr(first, "http.request.resend_count").is_none());
    assert_eq!(int(retry, "http.response.status_code"), 200);
    assert_eq!(int(retry, "http.request.resend_count"), 1);
    assert!(!is_error(retry));
    assert_eq!(int(server, "http.response.status_code"), 200);

    // Each attempt carried its own span as the parent.
    let seen: Vec<String> = up
        .seen()
        .iter()
        .filter_map(|r| r.header("traceparent"))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (sent, span) in seen.iter().zip([first, retry]) {
        assert!(
            sent.contains(&hex(&span.span_id)),
            "{sent} carries {}",
            hex(&span.span_id)
        );
    }
}

/// The HTTP/1 client writes `traceparent` into the request head itself; an HTTP/2 cluster's
/// requests carry it as a header: both upstreams see one, continuing the caller's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_upstreams_both_get_one_traceparent() {
    let up = Upstream::echo("both").await;
    let collector = Collector::grpc().await;
    for cluster in ["", "protocol: http2"] {
        let config = format!(
            "tracing:\n  endpoint: http://{}\n  batch_delay: 50ms\n  sample_percent: 0\n{}",
            collector.addr,
            one_route(up.addr, "", "", cluster)
        );
        let proxy = Proxy::start(&config).await;
        let resp = get_with(
            &proxy,
            "/",
            &[
                ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
                ("tracestate", "a=1"),
            ],
        )
        .await;
        assert_eq!(resp.status, 200, "{cluster:?}");
        let echoed = resp.echo();
        let (version, trace, parent, flags) = traceparent(&echoed);
        assert_eq!(version, "00", "{cluster:?}");
        assert_eq!(trace, TRACE, "{cluster:?}");
        assert_ne!(parent, SPAN, "{cluster:?}: the proxy's own span id");
        assert_eq!(flags, "01", "{cluster:?}");
        assert_eq!(echoed.header("tracestate"), vec!["a=1"], "{cluster:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_percent_sends_nothing_but_still_propagates() {
    let up = Upstream::echo("quiet").await;
    let collector = Collector::grpc().await;
    let proxy = Proxy::start(&traced(collector.addr, "sample_percent: 0", up.addr, "")).await;
    let mut traces = Vec::new();
    for _ in 0..5 {
        let resp = get_with(&proxy, "/", &[]).await;
        assert_eq!(resp.status, 200);
        let (version, trace, parent, flags) = traceparent(&resp.echo());
        assert_eq!((version.as_str(), flags.as_str()), ("00", "00"));
        assert_ne!(trace, "0".repeat(32));
        assert_ne!(parent, "0".repeat(16));
        traces.push(trace);
    }
    traces.dedup();
    assert_eq!(traces.len(), 5, "each request starts its own trace");
    // A caller's unsampled context goes on unsampled, with its trace id.
    let resp = get_with(
        &proxy,
        "/",
        &[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))],
    )
    .await;
    let (_, trace, parent, flags) = traceparent(&resp.echo());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, SPAN, "the proxy's own span id goes upstream");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.now().is_empty(), "{:#?}", collector.now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_sampled_flag_wins_over_the_ratio() {
    let up = Upstream::echo("parent").await;
    let collector = Collector::grpc().await;
    let never = Proxy::start(&traced(collector.addr, "sample_percent: 0", up.addr, "")).await;
    let resp = get_with(
        &never,
        "/",
        &[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))],
    )
    .await;
    assert_eq!(traceparent(&resp.echo()).3, "01");
    let spans = collector.spans(2).await;
    assert!(spans.iter().all(|g| hex(&g.span.trace_id) == TRACE));

    let always_collector = Collector::grpc().await;
    let always = Proxy::start(&traced(
        always_collector.addr,
        "sample_percent: 100",
        up.addr,
        "",
    ))
    .await;
    let other = "11111111111111111111111111111111";
    let resp = get_with(
        &always,
        "/",
        &[("traceparent", &format!("00-{other}-{SPAN}-00"))],
    )
    .await;
    assert_eq!(traceparent(&resp.echo()).3, "00");
    // B3 debug is a decision too.
    let resp = get_with(&never, "/", &[("b3", &format!("{other}-{SPAN}-d"))]).await;
    assert_eq!(traceparent(&resp.echo()).3, "01");
    collector.spans(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        always_collector.now().is_empty(),
        "an unsampled caller is not recorded: {:#?}",
        always_collector.now()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_proxies_shares_one_trace() {
    let up = Upstream::echo("end").await;
    let collector = Collector::grpc().await;
    let b = Proxy::start(&traced(
        collector.addr,
        "sample_percent: 100\nservice_name: proxy-b",
        up.addr,
        "",
    ))
    .await;
    let a = Proxy::start(&traced(
        collector.addr,
        "sample_percent: 100\nservice_name: proxy-a",
        b.listen,
        "",
    ))
    .await;
    let resp = get_with(&a, "/chain", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echoed = resp.echo();

    let spans = collector.spans(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let find = |service: &str, wanted: SpanKind| {
        spans
            .iter()
            .find(|g| g.service == service && kind(&g.span) == wanted)
            .map(|g| &g.span)
            .unwrap_or_else(|| panic!("no {wanted:?} span from {service}: {spans:#?}"))
    };
    let (a_server, a_client) = (
        find("proxy-a", SpanKind::Server),
        find("proxy-a", SpanKind::Client),
    );
    let (b_server, b_client) = (
        find("proxy-b", SpanKind::Server),
        find("proxy-b", SpanKind::Client),
    );
    // A generated the trace; every hop continues it.
    assert!(
        a_server.parent_span_id.is_empty(),
        "A's server span is the root"
    );
    for span in [a_client, b_server, b_client] {
        assert_eq!(span.trace_id, a_server.trace_id);
    }
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(b_server.parent_span_id, a_client.span_id);
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    let (_, trace, parent, flags) = traceparent(&echoed);
    assert_eq!(trace, hex(&a_server.trace_id));
    assert_eq!(parent, hex(&b_client.span_id));
    assert_eq!(flags, "01");
    assert_eq!(echoed.header("traceparent").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_rules_as_the_upstream_sees_them() {
    let up = Upstream::echo("w3c").await;
    let collector = Collector::grpc().await;
    let proxy = Proxy::start(&traced(collector.addr, "sample_percent: 0", up.addr, "")).await;

    // Version ff, upper-case hex, zero ids: invalid; a new trace, and tracestate goes too.
    for bad in [
        format!("ff-{TRACE}-{SPAN}-01"),
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        format!("00-{TRACE}-{SPAN}-01-extra"),
    ] {
        let resp = get_with(&proxy, "/", &[("traceparent", &bad), ("tracestate", "a=1")]).await;
        let echoed = resp.echo();
        let (version, trace, _, flags) = traceparent(&echoed);
        assert_eq!(version, "00", "{bad}");
        assert_ne!(trace.to_lowercase(), TRACE, "{bad}: a new trace starts");
        assert_eq!(flags, "00", "{bad}: sampled as a new trace (0 %)");
        assert!(
            echoed.header("tracestate").is_empty(),
            "{bad}: tracestate dropped"
        );
    }
    // A future version is read by its first four fields and sent on as version 00.
    let future = format!("cc-{TRACE}-{SPAN}-01-with-more-fields");
    let resp = get_with(
        &proxy,
        "/",
        &[("traceparent", &future), ("tracestate", "a=1")],
    )
    .await;
    let echoed = resp.echo();
    let (version, trace, parent, flags) = traceparent(&echoed);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE, "01")
    );
    assert_ne!(parent, SPAN);
    assert_eq!(echoed.header("tracestate"), ["a=1"]);
    // tracestate passes unchanged, several lines as one list; 33 members are dropped.
    let tp = format!("00-{TRACE}-{SPAN}-00");
    let resp = get_with(
        &proxy,
        "/",
        &[
            ("traceparent", &tp),
            ("tracestate", "b=2,a=1"),
            ("tracestate", "c=3"),
        ],
    )
    .await;
    assert_eq!(resp.echo().header("tracestate"), ["b=2,a=1,c=3"]);
    let long: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let resp = get_with(
        &proxy,
        "/",
        &[("traceparent", &tp), ("tracestate", &long.join(","))],
    )
    .await;
    let echoed = resp.echo();
    assert!(echoed.header("tracestate").is_empty());
    assert_eq!(traceparent(&echoed).1, TRACE, "the parent itself is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_and_multi_as_the_upstream_sees_them() {
    let up = Upstream::echo("b3").await;
    let collector = Collector::grpc().await;
    let all = "trace_context: { accept: [w3c, b3], emit: [w3c, b3_single, b3_multi] }";
    let proxy = Proxy::start(&traced(collector.addr, "sample_percent: 0", up.addr, all)).await;

    // Single header in, every format out, one context.
    let resp = get_with(
        &proxy,
        "/",
        &[("b3", &format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"))],
    )
    .await;
    let e = resp.echo();
    let (_, trace, parent, flags) = traceparent(&e);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, SPAN);
    assert_eq!(e.header("b3"), [format!("{TRACE}-{parent}-1")]);
    assert_eq!(e.header("x-b3-traceid"), [TRACE]);
    assert_eq!(e.header("x-b3-spanid"), [parent.as_str()]);
    assert_eq!(e.header("x-b3-sampled"), ["1"]);
    assert!(!e.has("x-b3-parentspanid") && !e.has("x-b3-flags"));

    // Multi headers in, a 64-bit trace id and the debug flag: padded, and debug kept.
    let resp = get_with(
        &proxy,
        "/",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-flags", "1"),
        ],
    )
    .await;
    let e = resp.echo();
    let padded = "0000000000000000a3ce929d0e0e4736";
    let (_, trace, parent, flags) = traceparent(&e);
    assert_eq!((trace.as_str(), flags.as_str()), (padded, "01"));
    assert_eq!(e.header("b3"), [format!("{padded}-{parent}-d")]);
    assert_eq!(e.header("x-b3-flags"), ["1"]);
    assert!(!e.has("x-b3-sampled") && !e.has("x-b3-parentspanid"));

    // `b3: 0` alone: a new trace, not sampled.
    let resp = get_with(&proxy, "/", &[("b3", "0")]).await;
    let e = resp.echo();
    assert_eq!(traceparent(&e).3, "00");
    assert!(e.header("b3")[0].ends_with("-0"), "{:?}", e.header("b3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_a_listener_neither_reads_nor_writes_pass_untouched() {
    let up = Upstream::echo("b3-only").await;
    let collector = Collector::grpc().await;
    let only_b3 = "trace_context: { accept: [b3], emit: [b3_single] }";
    let proxy = Proxy::start(&traced(
        collector.addr,
        "sample_percent: 0",
        up.addr,
        only_b3,
    ))
    .await;
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let other = "11111111111111111111111111111111";
    let resp = get_with(
        &proxy,
        "/",
        &[
            ("traceparent", &tp),
            ("b3", &format!("{other}-{SPAN}-0")),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let e = resp.echo();
    assert_eq!(e.header("traceparent"), [tp], "W3C is not this listener's");
    let b3 = &e.header("b3")[0];
    assert!(b3.starts_with(other) && b3.ends_with("-0"), "{b3}");
    assert!(
        !e.has("x-b3-sampled"),
        "the B3 family is replaced as a whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_spans_share_the_trace_and_request_ids() {
    let up = Upstream::echo("logged").await;
    let collector = Collector::grpc().await;
    let log = std::env::temp_dir().join(format!("strait-trace-log-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let proxy = Proxy::start(&traced(
        collector.addr,
        "sample_percent: 100",
        up.addr,
        &format!("access_log: {{ path: \"{}\" }}", log.display()),
    ))
    .await;
    // No context: the proxy starts the trace, and the log names that one.
    let resp = get_with(&proxy, "/logged", &[]).await;
    let echoed = resp.echo();
    let spans = collector.spans(2).await;
    let server = by_kind(&spans, SpanKind::Server)[0];
    let line = {
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = std::fs::remove_file(&log);
        serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("log line is JSON ({e}): {text}"))
    };
    assert_eq!(line["trace_id"], hex(&server.trace_id));
    assert_eq!(traceparent(&echoed).1, hex(&server.trace_id));
    let request_id = echoed.header("x-request-id");
    assert_eq!(line["request_id"], request_id[0]);
    assert_eq!(
        strings(server, "http.request.header.x-request-id"),
        request_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_reaches_a_collector() {
    let up = Upstream::echo("http-otlp").await;
    let collector = Collector::http().await;
    let proxy = Proxy::start(&traced(
        collector.addr,
        "protocol: http_protobuf\nsample_percent: 100",
        up.addr,
        "",
    ))
    .await;
    let resp = get_with(&proxy, "/over-http", &[]).await;
    assert_eq!(resp.status, 200);
    let spans = collector.spans(2).await;
    let server = by_kind(&spans, SpanKind::Server)[0];
    let client = by_kind(&spans, SpanKind::Client)[0];
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(s(server, "url.path"), "/over-http");
    assert_eq!(spans[0].service, "strait");
    let paths = collector.received.paths.lock().expect("lock").clone();
    assert!(paths.iter().all(|p| p == "/v1/traces"), "{paths:?}");
    let types = collector
        .received
        .content_types
        .lock()
        .expect("lock")
        .clone();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_only_a_counter() {
    let up = Upstream::echo("alive").await;
    // A collector address whose connects hang: the worst a dead collector can do.
    let hole = Blackhole::new().await;
    let proxy = Proxy::start(&traced(
        hole.addr,
        "sample_percent: 100\nmax_queue_spans: 8\nmax_batch_spans: 4\nexport_timeout: 300ms",
        up.addr,
        "",
    ))
    .await;
    let mut conn = proxy.connect(Proto::H1).await;
    for i in 0..40 {
        let resp = conn
            .fetch(simple("GET", "api.example.com", "/"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 200, "request {i}");
    }
    let dropped = |reason: &'static str| spans_dropped(&proxy, reason);
    assert!(
        eventually(Duration::from_secs(10), || async {
            dropped("export_failed").await > 0.0
        })
        .await,
        "spans of failed exports are counted:\n{}",
        proxy.admin_get("/metrics").await.text()
    );
    assert!(
        dropped("queue_full").await > 0.0,
        "80 spans behind a hung export overflow a queue of 8"
    );
    let text = proxy.admin_get("/metrics").await.text();
    assert!(
        text.contains("strait_tracing_export_failures_total "),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("strait_tracing_spans_exported_total 0")),
        "nothing exported"
    );
}

/// `strait_tracing_spans_dropped_total{reason}` as the admin server reports it.
async fn spans_dropped(proxy: &Proxy, reason: &str) -> f64 {
    let text = proxy.admin_get("/metrics").await.text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("exposition parses");
    scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "strait_tracing_spans_dropped_total"
                && s.labels.get("reason") == Some(reason)
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A collector that answers with an error (gRPC `UNAVAILABLE`, HTTP 503): the batch's spans
/// are dropped and counted, and the next batch goes through once it accepts again.
async fn refused_exports_are_counted_and_export_resumes(collector: Collector, protocol: &str) {
    let up = Upstream::echo("refused").await;
    let proxy = Proxy::start(&traced(
        collector.addr,
        &format!("protocol: {protocol}\nsample_percent: 100"),
        up.addr,
        "",
    ))
    .await;
    collector
        .received
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get_with(&proxy, "/refused", &[]).await.status, 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            spans_dropped(&proxy, "export_failed").await >= 2.0
        })
        .await,
        "{protocol}: the refused batch's two spans are counted"
    );
    assert!(collector.now().is_empty());
    collector
        .received
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get_with(&proxy, "/accepted", &[]).await.status, 200);
    let spans = collector.spans(2).await;
    let servers = by_kind(&spans, SpanKind::Server);
    assert_eq!(
        servers.len(),
        1,
        "{protocol}: refused spans are not sent again"
    );
    assert_eq!(s(servers[0], "url.path"), "/accepted");
    assert_eq!(spans_dropped(&proxy, "export_failed").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_grpc_collector_costs_the_batch_and_export_resumes() {
    refused_exports_are_counted_and_export_resumes(Collector::grpc().await, "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_http_collector_costs_the_batch_and_export_resumes() {
    refused_exports_are_counted_and_export_resumes(Collector::http().await, "http_protobuf").await;
}
