//! The resource model: what a config file (and later the control plane) says a proxy should do.
//!
//! These types are the YAML format one to one. Every struct denies unknown fields so a typo is an
//! error, every optional field documents its default, and the JSON Schema in `config/` is
//! generated from them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::duration::Duration;

/// A whole proxy configuration: one YAML file in static mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin server (`/ready`, `/live`, `/config_dump`, `/clusters`, `/drain`).
    /// Default: `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: Admin,
    /// Worker threads, each with its own listening sockets and upstream pools, 1 to 1024.
    /// Default: one per CPU core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting. Default: `30s`.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: Duration,
    /// How long SIGTERM keeps the proxy serving and accepting as before, with `/ready`
    /// answering 503, before the drain starts: time for a load balancer or Kubernetes to stop
    /// sending it new connections (HAProxy's `grace`; what a `preStop` sleep does for Envoy
    /// and Linkerd). A second SIGTERM or SIGINT, or `POST /drain`, starts the drain at once.
    /// Default: `0s` (the drain starts at once).
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub drain_delay: Duration,
    /// How long a worker that has run out of work keeps polling its sockets before its thread
    /// sleeps, up to `100ms`: lower latency under light load on hosts where waking a sleeping
    /// CPU is slow, for CPU spent polling. Default: `0s` (a worker sleeps as soon as it has
    /// nothing to do).
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub busy_poll: Duration,
    /// The addresses the proxy accepts connections on, each with its routes.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Named groups of upstream endpoints that routes send traffic to.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Distributed tracing: a span per request and per upstream attempt, exported over OTLP,
    /// and trace context read from and written to requests. Default: none (no spans, and trace
    /// headers pass through untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// Where spans go and which requests are traced. Spans wait in a bounded queue for a
/// background exporter; when it cannot keep up or the collector is down, spans are dropped and
/// counted (`strait_tracing_spans_dropped_total`): requests never wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The OpenTelemetry collector, `http://host:port` (plain HTTP: the collector is usually a
    /// local agent). For `http_protobuf` the path is where spans are posted (`/v1/traces` when
    /// the URL has no path). Default: `http://127.0.0.1:4317` for `grpc`,
    /// `http://127.0.0.1:4318/v1/traces` for `http_protobuf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http_protobuf`. Default: `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Percent of new traces recorded, 0 to 100: requests that arrive without a sampling
    /// decision. A request whose trace context carries one follows it. Default: `10`.
    #[serde(default = "defaults::trace_sample_percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sample_percent: f64,
    /// `service.name` of the spans. Default: `strait`.
    #[serde(default = "defaults::service_name")]
    #[schemars(length(min = 1))]
    pub service_name: String,
    /// Finished spans waiting for export, 1 to 1048576; beyond it spans are dropped and
    /// counted. Default: `2048`.
    #[serde(default = "defaults::max_queue_spans")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_queue_spans: usize,
    /// Most spans in one export request, 1 to `max_queue_spans`. Default: `512`.
    #[serde(default = "defaults::max_batch_spans")]
    #[schemars(range(min = 1))]
    pub max_batch_spans: usize,
    /// Longest a finished span waits for its batch to fill before it is sent anyway, above 0.
    /// Default: `5s`.
    #[serde(default = "defaults::batch_delay")]
    pub batch_delay: Duration,
    /// Time allowed to one export request, retries by the exporter included, above 0; spans of
    /// a request that fails or times out are dropped and counted. Default: `10s`.
    #[serde(default = "defaults::export_timeout")]
    pub export_timeout: Duration,
}

impl Tracing {
    /// The URL spans are sent to: `endpoint`, or the protocol's usual local collector; for
    /// `http_protobuf`, `/v1/traces` is added to a URL without a path.
    pub fn endpoint_url(&self) -> String {
        match (self.protocol, self.endpoint.as_deref()) {
            (OtlpProtocol::Grpc, None) => "http://127.0.0.1:4317".to_owned(),
            (OtlpProtocol::HttpProtobuf, None) => "http://127.0.0.1:4318/v1/traces".to_owned(),
            (OtlpProtocol::HttpProtobuf, Some(url)) => {
                let url = url.trim_end_matches('/');
                let has_path = url
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.contains('/'));
                if has_path {
                    url.to_owned()
                } else {
                    format!("{url}/v1/traces")
                }
            }
            (_, Some(url)) => url.trim_end_matches('/').to_owned(),
        }
    }
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// OTLP/gRPC (usually port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// Which trace context headers a listener reads from requests and writes to what it sends
/// upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceContext {
    /// Formats read from requests, tried in this order; the first valid one is the parent.
    /// `[]` starts a new trace for every request (an edge that trusts no client's context).
    /// Default: `[w3c, b3]`.
    #[serde(default = "defaults::trace_accept")]
    pub accept: Vec<AcceptFormat>,
    /// Formats written to requests sent upstream, carrying the proxy's client span. `[]` sends
    /// no trace context upstream. Default: `[w3c]`.
    #[serde(default = "defaults::trace_emit")]
    pub emit: Vec<EmitFormat>,
}

impl Default for TraceContext {
    fn default() -> Self {
        TraceContext {
            accept: defaults::trace_accept(),
            emit: defaults::trace_emit(),
        }
    }
}

/// A trace context format read from requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AcceptFormat {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    W3c,
    /// Zipkin B3, the single `b3` header or the `x-b3-*` headers.
    B3,
}

/// A trace context format written to requests sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EmitFormat {
    /// W3C Trace Context: `traceparent`, and `tracestate` as received.
    W3c,
    /// Zipkin B3 in one header: `b3: {trace}-{span}-{sampled}`.
    B3Single,
    /// Zipkin B3 in `x-b3-traceid`, `x-b3-spanid` and `x-b3-sampled` (or `x-b3-flags`).
    B3Multi,
}

/// The admin server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin HTTP server. Default: `127.0.0.1:9901`.
    #[serde(default = "defaults::admin_address")]
    #[schemars(
        with = "String",
        regex(pattern = r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.%]+\]):\d{1,5}$")
    )]
    pub address: SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: defaults::admin_address(),
        }
    }
}

/// A listening address and what to do with the requests that arrive on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used in logs, metrics and `/config_dump`; not empty, no whitespace.
    /// Required.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `ip:port` to bind; unique among listeners (`0.0.0.0:P` overlaps every `IP:P`) and not
    /// the admin address. Required.
    #[schemars(
        with = "String",
        regex(pattern = r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.%]+\]):\d{1,5}$")
    )]
    pub address: SocketAddr,
    /// Standard proxy headers added to requests. Default: see [`ProxyHeaders`].
    #[serde(default)]
    pub proxy_headers: ProxyHeaders,
    /// Normalize request paths before authorization, routing and forwarding (RFC 3986 6.2.2):
    /// decode percent-escapes of unreserved characters (`%61` is `a`), upper-case the hex
    /// digits of the others, and resolve `.` and `..` segments; a malformed escape gets 400.
    /// The upstream gets the normalized path. Default: `true`.
    #[serde(default = "defaults::yes")]
    pub normalize_path: bool,
    /// Merge runs of slashes in request paths into one (`//a///b` is `/a/b`). Default: `true`.
    #[serde(default = "defaults::yes")]
    pub merge_slashes: bool,
    /// What a path's escaped slashes (`%2F`, `%5C`) get: `reject` (400), `keep` (matched and
    /// forwarded as they are), or `decode` (both become `/`). Default: `reject`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// Routes, tried in declared order; the first that matches wins. A request that matches none
    /// gets 404.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// HTTP/1 keep-alive and HTTP/2 connection idle timeout (no request in flight).
    /// Default: `60s`.
    #[serde(default = "defaults::connection_idle_timeout")]
    pub idle_timeout: Duration,
    /// Most bytes a request body sent upstream may have, for the routes of this listener that
    /// set none of their own: a longer one gets 413 (nginx's `client_max_body_size`). Default:
    /// no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// One JSON line per request. Default: none (no access log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Most client connections open at once across all workers; a connection beyond it is
    /// closed as soon as it is accepted, and counted. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u64>,
    /// Most client connections open at once from one client address (IPv4, or IPv6 whole)
    /// across all workers; a connection beyond it is closed as soon as it is accepted, and
    /// counted (nginx's `limit_conn`). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_client: Option<u32>,
    /// Trace context formats read and written; only with a top-level `tracing`.
    /// Default (with `tracing`): `{ accept: [w3c, b3], emit: [w3c] }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<TraceContext>,
    /// New client connections accepted per second across all workers (a token bucket); a
    /// connection over the rate is closed as soon as it is accepted, and counted. Default: no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<ConnectionRateLimit>,
    /// HTTP/2 served to clients (h2c, or `h2` by ALPN). Default: `{ max_concurrent_streams: 100 }`.
    #[serde(default)]
    pub http2: ListenerHttp2,
    /// Terminate TLS on this listener. Default: none (plain HTTP/1.1 and h2c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Who may send requests to this listener, checked before routing. Default: none (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Verify a JWT bearer token on every request, before routing (and before
    /// `authorization`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// TLS passthrough: route raw TLS connections by the SNI of their ClientHello to a cluster,
    /// without terminating them. Such a listener serves no HTTP: not with `routes` or `tls`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_passthrough: Vec<PassthroughRoute>,
}

/// Where TLS connections for some server names go, untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassthroughRoute {
    /// SNI names: exact, or a leading wildcard `*.example.com`; case-insensitive. The first
    /// entry that matches wins. Default: any name, and connections without SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// The cluster the connection's bytes go to. Required.
    pub cluster: String,
}

/// JWT verification: the `Authorization: Bearer` token's signature (RS256, ES256 or EdDSA, by
/// a key from a JWKS), issuer, audience, `exp` and `nbf`. A failure gets 401 with
/// `WWW-Authenticate` (gRPC `UNAUTHENTICATED`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// The `iss` tokens must carry. Required.
    pub issuer: String,
    /// `aud` values accepted (a token needs one of them). Default: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the signing keys come from: `{ file: jwks.json }` or `{ url: https://... }`.
    /// Required.
    pub jwks: JwksSource,
    /// Signature algorithms accepted: `RS256`, `ES256`, `EdDSA`. Default: all three.
    #[serde(default = "defaults::jwt_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp` and `nbf`. Default: `60s`.
    #[serde(default = "defaults::jwt_leeway")]
    pub leeway: Duration,
    /// Refuse requests without a token; with `false` they pass unauthenticated (a token that is
    /// present must still be valid). Default: `true`.
    #[serde(default = "defaults::yes")]
    pub required: bool,
    /// Claims copied into request headers for routing, rate limiting and the upstream
    /// (`{ sub: x-user }`); such headers sent by the client are removed first. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claim_to_headers: BTreeMap<String, String>,
    /// Keep the `Authorization` header on the request sent upstream. Default: `true`.
    #[serde(default = "defaults::yes")]
    pub forward: bool,
}

/// A JWKS (JSON Web Key Set) location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwksSource {
    /// A JWKS file, read at start and whenever it changes. One of `file` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An `http://` or `https://` URL, fetched in the background (bounded to 1 MiB and 10 s)
    /// and kept; the last good set serves while a fetch fails. One of `file` and `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How often the URL is fetched again. Default: `5m`.
    #[serde(default = "defaults::jwks_refresh")]
    pub refresh: Duration,
}

/// A JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

/// An authorization policy: rules checked in order, the first whose conditions all hold
/// decides; when none does, `default` decides. A denied request gets 403 (gRPC
/// `PERMISSION_DENIED`) and never reaches an upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// What happens to a request no rule matches: `allow`, or `deny` (default-deny mode).
    /// Default: `allow`.
    #[serde(default)]
    pub default: AuthzAction,
    /// The rules, in order. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// One authorization rule: its conditions (all must hold; a list holds when any item does;
/// a rule without conditions matches every request) and its action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Name in metrics and logs. Default: `rule-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `allow` or `deny`. Required.
    pub action: AuthzAction,
    /// Verified peer identities (SPIFFE IDs from client certificates): an exact ID
    /// (`spiffe://cluster.local/ns/shop/sa/checkout`), a prefix ending in `*`
    /// (`spiffe://cluster.local/ns/shop/*` for a namespace, `spiffe://cluster.local/*` for a
    /// trust domain), or `*` for any verified peer. A request without a verified identity
    /// matches none. Default: any request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Client address ranges (`10.0.0.0/8`, `2001:db8::/32`, one address). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ips: Vec<Cidr>,
    /// Request conditions: hosts, path, methods, headers, query, as a route's `match`.
    /// Default: any request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub request: Option<RouteMatch>,
}

/// What an authorization rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthzAction {
    /// Let the request through.
    #[default]
    Allow,
    /// Answer 403.
    Deny,
}

/// TLS termination on a listener: certificates chosen by SNI, ALPN `h2`/`http/1.1`, session
/// resumption by tickets and by session ID, optional client certificates. The files are read
/// at start and whenever they change (a bad file is refused and the old certificates keep
/// serving).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates with their keys. Each serves the DNS names in its certificate's subject
    /// alternative names (exact names before wildcards); the first one also serves clients
    /// that send no SNI or an unknown name. At least one.
    #[schemars(length(min = 1))]
    pub certificates: Vec<TlsCertificate>,
    /// Oldest TLS version accepted: `"1.2"` or `"1.3"`. Only modern AEAD cipher suites are
    /// offered either way. Default: `"1.2"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference: `h2`, `http/1.1`. Default: both, `h2`
    /// first.
    #[serde(default = "defaults::alpn")]
    pub alpn: Vec<Alpn>,
    /// Ask clients for certificates. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Time allowed for the TLS handshake. Default: `10s`.
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Duration,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// PEM file with the certificate, then its intermediates. Required.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC). Required.
    pub key: String,
    /// A DER-encoded OCSP response to staple. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp: Option<String>,
}

/// Client-certificate authentication on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// PEM file with the CA certificates that client certificates must chain to. Required.
    pub ca: String,
    /// Refuse clients without a certificate; with `false` they are served as anonymous (a
    /// certificate that is presented must still be valid). Default: `true`.
    #[serde(default = "defaults::yes")]
    pub required: bool,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// An ALPN protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub enum Alpn {
    /// HTTP/2.
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1.
    #[serde(rename = "http/1.1")]
    Http11,
}

/// TLS to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The name sent as SNI and checked against the endpoints' certificates. Default: the
    /// endpoint's IP address (checked against an IP address in the certificate, no SNI sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file with the CA certificates the endpoints' certificates must chain to. Default:
    /// the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM file with a client certificate chain to present (mutual TLS); needs `key`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM file with the client certificate's private key; needs `cert`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Accept any certificate from the endpoints, unverified: for tests only. The proxy warns
    /// at start. Default: `false`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Mesh mTLS: the SPIFFE IDs the endpoints may present (exact, or a prefix ending in `*`).
    /// When set, certificates must chain to `ca` (required) and carry a matching `spiffe://`
    /// URI; DNS names are not checked. An endpoint's own `identity` narrows it further. A
    /// mismatch fails the connection (503 `connect_failed`) and is counted. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe_ids: Vec<String>,
}

/// What a listener allows an HTTP/2 client connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerHttp2 {
    /// Most streams (requests) one client connection may have open at once, announced in
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; each may hold an upstream request. Default: `100`.
    #[serde(default = "defaults::max_concurrent_streams")]
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: u32,
}

impl Default for ListenerHttp2 {
    fn default() -> Self {
        ListenerHttp2 {
            max_concurrent_streams: defaults::max_concurrent_streams(),
        }
    }
}

/// A listener's rate of new connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRateLimit {
    /// Sustained new connections per second, more than 0. Required.
    pub connections_per_second: f64,
    /// Connections allowed at once above the rate. Default: `connections_per_second` rounded
    /// up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

/// An access log: one JSON object per line, per request, written by a background thread so
/// requests never wait for the disk (when it cannot keep up, lines are dropped and counted in
/// `strait_access_log_dropped_total`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `stderr`, or a file path (appended to, created when missing).
    /// Default: `stdout`.
    #[serde(default = "defaults::stdout")]
    #[schemars(length(min = 1))]
    pub path: String,
    /// Fields written, in this order. Default: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<LogField>,
    /// Percent of requests logged, 0 to 100. Default: `100`.
    #[serde(default = "defaults::percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sample_percent: f64,
}

/// A field of an access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LogField {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    Time,
    /// Listener name.
    Listener,
    /// Route name (empty when none matched).
    Route,
    /// Cluster name (empty when the route answered itself).
    Cluster,
    /// Endpoint `ip:port` the request went to (empty when none).
    Endpoint,
    /// Request method.
    Method,
    /// Request host (`:authority` or `Host`).
    Authority,
    /// Request path and query.
    Path,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// Response status.
    Status,
    /// `grpc-status` of a gRPC answer (from headers or trailers), else null.
    GrpcStatus,
    /// Request body bytes received from the client.
    BytesReceived,
    /// Response body bytes sent to the client.
    BytesSent,
    /// Milliseconds from request head to the response's last byte.
    DurationMs,
    /// Milliseconds from sending upstream to the upstream's response head (null when none).
    UpstreamDurationMs,
    /// Retries made for the request (hedged attempts included); 0 without retries.
    Retries,
    /// The client's IP address.
    ClientIp,
    /// The verified peer identity (SPIFFE ID of the client certificate), else null.
    PeerIdentity,
    /// `x-request-id`.
    RequestId,
    /// The request's trace id: with `tracing`, the one its spans carry (received or new);
    /// without, the one of a valid W3C `traceparent`, else null.
    TraceId,
    /// Why the proxy answered itself, if it did: `no_route`, `connect_failed`,
    /// `connect_timeout`, `request_timeout`, `upstream_reset`, `no_healthy_endpoint`,
    /// `bad_request`; `stream_idle_timeout` when a body was cut; `downstream_closed` when the
    /// client left before the end. Empty otherwise.
    ResponseFlags,
}

impl LogField {
    /// Every field, in the default order.
    pub const ALL: [LogField; 21] = [
        LogField::Time,
        LogField::Listener,
        LogField::Route,
        LogField::Cluster,
        LogField::Endpoint,
        LogField::Method,
        LogField::Authority,
        LogField::Path,
        LogField::Protocol,
        LogField::Status,
        LogField::GrpcStatus,
        LogField::BytesReceived,
        LogField::BytesSent,
        LogField::DurationMs,
        LogField::UpstreamDurationMs,
        LogField::Retries,
        LogField::ClientIp,
        LogField::PeerIdentity,
        LogField::RequestId,
        LogField::TraceId,
        LogField::ResponseFlags,
    ];

    /// The JSON key of the field.
    pub fn key(self) -> &'static str {
        match self {
            LogField::Time => "time",
            LogField::Listener => "listener",
            LogField::Route => "route",
            LogField::Cluster => "cluster",
            LogField::Endpoint => "endpoint",
            LogField::Method => "method",
            LogField::Authority => "authority",
            LogField::Path => "path",
            LogField::Protocol => "protocol",
            LogField::Status => "status",
            LogField::GrpcStatus => "grpc_status",
            LogField::BytesReceived => "bytes_received",
            LogField::BytesSent => "bytes_sent",
            LogField::DurationMs => "duration_ms",
            LogField::UpstreamDurationMs => "upstream_duration_ms",
            LogField::Retries => "retries",
            LogField::ClientIp => "client_ip",
            LogField::PeerIdentity => "peer_identity",
            LogField::RequestId => "request_id",
            LogField::TraceId => "trace_id",
            LogField::ResponseFlags => "response_flags",
        }
    }
}

/// How the standard proxy headers are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyHeaders {
    /// `x-forwarded-for`: `append` the client address to what the client sent, `replace` it,
    /// or leave the header `untouched`. Default: `append`.
    #[serde(default)]
    pub x_forwarded_for: ForwardedMode,
    /// `x-forwarded-proto`: `append`/`replace` set it to the listener's scheme when absent or
    /// always, `untouched` leaves it. Default: `append` (set only when absent).
    #[serde(default)]
    pub x_forwarded_proto: ForwardedMode,
    /// RFC 7239 `forwarded` (`for=...;proto=...;host=...`): default `untouched`.
    #[serde(default = "defaults::forwarded_untouched")]
    pub forwarded: ForwardedMode,
    /// Value for the `via` header (e.g. `strait`), added to requests and responses.
    /// Default: none (no `via` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Generate `x-request-id` (random, 32 hex digits) when the request has none.
    /// Default: `true`.
    #[serde(default = "defaults::yes")]
    pub request_id: bool,
    /// On TLS listeners, send the client's verified SPIFFE ID upstream as
    /// `x-forwarded-client-cert: URI=<id>`. A client's own `x-forwarded-client-cert` is removed
    /// on TLS listeners either way. Default: `true`.
    #[serde(default = "defaults::yes")]
    pub client_cert: bool,
}

impl Default for ProxyHeaders {
    fn default() -> Self {
        ProxyHeaders {
            x_forwarded_for: ForwardedMode::Append,
            x_forwarded_proto: ForwardedMode::Append,
            forwarded: ForwardedMode::Untouched,
            via: None,
            request_id: true,
            client_cert: true,
        }
    }
}

/// What a request path's escaped slashes (`%2F`, `%5C`) get. Servers disagree on them: most
/// take `%2F` as a character of a segment, some decode it first, and Windows servers take `\`
/// for `/`. Checks on paths may only be trusted when the proxy and the upstream agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Refuse the request with 400 (Apache's default).
    #[default]
    Reject,
    /// Leave them escaped: matched and forwarded as `%2F` and `%5C` (Envoy's default).
    Keep,
    /// Make both `/` before the path is normalized, matched and forwarded.
    Decode,
}

/// What a proxy does with an `x-forwarded-*` or `forwarded` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ForwardedMode {
    /// Add this hop to what the client sent.
    #[default]
    Append,
    /// Drop what the client sent and write this hop only (for an edge that trusts no client).
    Replace,
    /// Leave the header exactly as received.
    Untouched,
}

/// One route: a match and an action, plus optional filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name for logs, metrics and `/config_dump`. Default: `route-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the request must look like. Default: matches every request.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Where matching requests go: weighted clusters, at least one with a weight above 0.
    /// Exactly one of `backends`, `redirect` and `direct_response` is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer with a fixed status and body instead of forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Path and host rewrites applied before forwarding; only with `backends`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Header edits on the request sent upstream; only with `backends`. Default: none.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    /// Header edits on the response sent to the client. Default: none.
    #[serde(default, skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
    /// Copy a sample of requests to another cluster, fire and forget; only with `backends`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Time from receiving the request to receiving the upstream's response headers; on expiry
    /// the client gets 504. `0s` disables it. Default: `15s`.
    #[serde(default = "defaults::request_timeout")]
    pub timeout: Duration,
    /// Longest silence on the response body stream before the stream is reset. `0s` disables
    /// it. Default: `5m`.
    #[serde(default = "defaults::stream_idle_timeout")]
    pub idle_timeout: Duration,
    /// Most bytes a request body may have; only with `backends`. A longer declared length gets
    /// 413 before an upstream is involved; a body without one (chunked, or HTTP/2 without
    /// `content-length`) is cut off when it passes the limit, with 413 if no answer has begun.
    /// `0` allows no body. Default: the listener's `max_request_body_bytes` (no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Injected delays and failures, for chaos tests. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// A local rate limit on the route, per key. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Retries of failed attempts, bounded by the cluster's `retry_budget`; only with
    /// `backends`. Default: none (one attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Who may use this route, checked after the listener's policy. Default: none (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Cross-origin resource sharing: which web origins' scripts may call this route. The proxy
    /// answers preflights itself and marks the answers to allowed origins. Default: none (no
    /// CORS headers added; preflights go upstream like any request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Compress answers with gzip for clients that accept it. Default: none (answers pass as
    /// they come).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
}

/// A route's response compression (gzip), as nginx's `gzip` and Envoy's `compressor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Answers declared shorter than this many bytes are left as they are. Default: `1024`.
    #[serde(default = "defaults::compress_min_bytes")]
    pub min_bytes: u64,
    /// Media types compressed: `type/subtype`, or `type/*` for all of a type. Default: text and
    /// the usual text-like application types (`text/html`, `text/plain`, `text/css`,
    /// `text/javascript`, `text/xml`, `application/javascript`, `application/json`,
    /// `application/xml`, `application/xhtml+xml`, `image/svg+xml`).
    #[serde(default = "defaults::compress_types")]
    pub content_types: Vec<String>,
    /// gzip level, 1 (fastest) to 9 (smallest). Default: `1`.
    #[serde(default = "defaults::compress_level")]
    #[schemars(range(min = 1, max = 9))]
    pub level: u32,
}

/// A route's CORS policy (the Fetch standard's CORS protocol), as Envoy's `cors` filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed: exact (`https://app.example.com`, with a port when not the scheme's
    /// default), a wildcard of subdomains (`https://*.example.com`), or `*` for any. Required.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: `[GET, HEAD, POST]`.
    #[serde(default = "defaults::cors_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for; `*` for any. Default: `["*"]` (any).
    #[serde(default = "defaults::any")]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read beyond the safelisted ones. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer. Default: none (the browser's own, 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Whether requests with credentials (cookies, HTTP authentication) are allowed; the
    /// answer then names the origin, never `*`. Default: `false`.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// A route's retry policy. A failed attempt is tried again, on another endpoint when there is
/// one, after a backoff with full jitter, while attempts, the route `timeout`, the cluster's
/// `retry_budget` and `circuit_breaker.max_retries` allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Tries in all, the first one included, 1 to 10. Default: `2`.
    #[serde(default = "defaults::retry_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// What is retried. Default: `[connect_failure, refused_stream, reset, gateway_error]`.
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Further HTTP response statuses that are retried, 100 to 599 (e.g. `409`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// Time allowed to each attempt until its response head; on expiry the attempt counts as
    /// a 504 (retried under `5xx` and `gateway_error`). `0s` disables it, leaving only the route
    /// `timeout`. Default: `0s`.
    #[serde(default)]
    pub per_try_timeout: Duration,
    /// The wait before each retry. Default: `{ base: 25ms, max: 250ms }`.
    #[serde(default)]
    pub backoff: Backoff,
    /// Request body bytes kept to replay on a retry. A longer body is still forwarded, but the
    /// request is no longer retried (counted as `retries_skipped{reason="body_too_large"}`).
    /// 0 to 16777216. Default: `65536`.
    #[serde(default = "defaults::retry_body")]
    #[schemars(range(max = 16_777_216))]
    pub max_body_bytes: usize,
    /// Also retry methods that are not idempotent (POST, PATCH) after the request was sent.
    /// Failures before sending (`connect_failure`, `refused_stream`) are retried for every
    /// method regardless. Default: `false`.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Hedging: when `per_try_timeout` passes without an answer, send another attempt without
    /// cancelling the first, and take the first good answer. Only requests without a body are
    /// hedged. Needs `per_try_timeout`. Default: `false`.
    #[serde(default)]
    pub hedge: bool,
}

/// A condition under which an attempt is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryOn {
    /// The TCP connection to the endpoint could not be opened (refused, timed out).
    ConnectFailure,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it did not process it.
    RefusedStream,
    /// The upstream closed or reset the connection before a response head.
    Reset,
    /// Any 5xx response, and a per-try timeout.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 and 504 responses, and a per-try timeout.
    GatewayError,
    /// gRPC status `CANCELLED` (1) in the response head.
    Cancelled,
    /// gRPC status `DEADLINE_EXCEEDED` (4) in the response head.
    DeadlineExceeded,
    /// gRPC status `RESOURCE_EXHAUSTED` (8) in the response head.
    ResourceExhausted,
    /// gRPC status `INTERNAL` (13) in the response head.
    Internal,
    /// gRPC status `UNAVAILABLE` (14) in the response head.
    Unavailable,
}

/// Exponential backoff with full jitter: before retry `n` (from 1), a random wait between 0
/// and `min(max, base * 2^(n-1))`. A `retry-after` or `grpc-retry-pushback-ms` header on the
/// failed answer replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first retry's longest wait. Default: `25ms`.
    #[serde(default = "defaults::backoff_base")]
    pub base: Duration,
    /// The longest wait, at least `base`. Default: `250ms`.
    #[serde(default = "defaults::backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: defaults::backoff_base(),
            max: defaults::backoff_max(),
        }
    }
}

/// How many retries a cluster takes, so that retries cannot multiply an outage: over the last
/// 10 seconds, retries may be at most `percent` % of requests plus `min_retries_per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed as a percentage of requests, 0 to 1000. Default: `20`.
    #[serde(default = "defaults::budget_percent")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub percent: f64,
    /// Retries allowed per second whatever the request rate, so that a quiet cluster can still
    /// retry. Default: `10`.
    #[serde(default = "defaults::budget_min")]
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: defaults::budget_percent(),
            min_retries_per_second: defaults::budget_min(),
        }
    }
}

/// A local rate limit: a token bucket per key (GCRA), answered with 429 (gRPC
/// `RESOURCE_EXHAUSTED`), `retry-after` and the IETF `RateLimit-Policy`/`RateLimit` headers.
/// Buckets live in a fixed-size table per route, so memory stays bounded whatever the keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second per key, more than 0. Required.
    pub requests_per_second: f64,
    /// Requests allowed at once. Default: `requests_per_second` rounded up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// What each bucket is kept for: `client_ip`, `route` (one bucket for everyone) or
    /// `{ header: NAME }` (requests without the header are not limited). Default: `client_ip`.
    #[serde(default, with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "RateLimitKey")]
    pub key: RateLimitKey,
    /// Other rates for particular key values (an API key, an address). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<RateLimitOverride>,
    /// Keys tracked at once (16 bytes each, rounded up to a power of two); beyond it the key
    /// closest to a full bucket is forgotten. Default: `65536`.
    #[serde(default = "defaults::max_keys")]
    #[schemars(range(min = 8))]
    pub max_keys: usize,
}

/// What a rate limit's buckets are kept for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum RateLimitKey {
    /// The client's IP address.
    #[default]
    ClientIp,
    /// One bucket for the whole route.
    Route,
    /// The value of this request header.
    Header(String),
    /// The verified peer identity (the SPIFFE ID of a client certificate); requests without
    /// one are not limited.
    Peer,
}

/// A different rate for one key value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// The key value (header value, or client IP address as text). Required.
    pub value: String,
    /// Sustained requests per second for it, more than 0. Required.
    pub requests_per_second: f64,
    /// Requests allowed at once. Default: `requests_per_second` rounded up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

/// Fault injection on a route: a sample of requests is delayed, a sample is answered with an
/// error instead of being forwarded. The two samples are drawn independently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Hold a sample of requests before handling them. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a sample of requests with an error. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// How long. Required.
    pub duration: Duration,
    /// Percent of requests delayed, 0 to 100. Default: `100`.
    #[serde(default = "defaults::percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
}

/// An injected failure: exactly one of `status` and `grpc_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with, 200 to 599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub status: Option<u16>,
    /// gRPC status (1 to 16) to answer gRPC requests with (HTTP 200 with `grpc-status`);
    /// requests that are not gRPC get the matching HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub grpc_status: Option<u16>,
    /// Percent of requests aborted, 0 to 100. Default: `100`.
    #[serde(default = "defaults::percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
}

/// The conditions a request must meet, all of them, for the route to apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Hosts (`:authority`/`Host` without the port): exact names or a leading wildcard
    /// `*.example.com` (which matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`). Case-insensitive. Default: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^(\*\.[^*:\s]+|[^*:\s.][^*:\s]*|\[[0-9A-Fa-f:.]+\])$")))]
    pub hosts: Vec<String>,
    /// Path condition. Default: any path.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_yaml::with::singleton_map"
    )]
    #[schemars(with = "Option<PathMatch>")]
    pub path: Option<PathMatch>,
    /// Methods, upper-case tokens: `GET`, `POST`, ... or an extension such as `PURGE`.
    /// Default: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Z0-9!#$%&'*+.^_`|~-]+$")))]
    pub methods: Vec<String>,
    /// Header conditions, all of which must hold. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions, all of which must hold. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryMatch>,
    /// Verified peer identities (the SPIFFE ID of a client certificate on a TLS listener
    /// with `client_auth`), any of: an exact ID, a prefix ending in `*`, or `*` for any verified
    /// peer. A request without a verified identity matches none. Default: any request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// How the request path (without the query string) is matched. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum PathMatch {
    /// The whole path equals this. Starts with `/`.
    Exact(String),
    /// The path starts with this on a segment boundary: `/api` matches `/api`, `/api/` and
    /// `/api/x`, not `/apix`. `/` matches everything. Starts with `/`.
    Prefix(String),
    /// The whole path matches this regular expression (RE2 syntax, anchored at both ends).
    Regex(String),
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive; letters, digits and ``!#$%&'*+-.^_`|~``). Required.
    pub name: String,
    /// The value must equal this. At most one of `exact`, `regex`, `present`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The whole value must match this regular expression (RE2 syntax, anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header must be present (any value); `false`: it must be absent.
    /// When none of the three is given, the header must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A condition on one query parameter (first occurrence, percent-decoding not applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive, not empty). Required.
    pub name: String,
    /// The value must equal this. At most one of `exact`, `regex`, `present`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The whole value must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the parameter must be present; `false`: absent. Default when none is given: present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A weighted destination of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Name of a cluster declared in `clusters`. Required.
    pub cluster: String,
    /// Relative weight among the route's backends, 0 to 10000 (0 takes no traffic).
    /// Default: `1`.
    #[serde(default = "defaults::weight")]
    #[schemars(range(max = 10000))]
    pub weight: u32,
}

/// A redirect answer. Fields left out keep the request's value; at least one of `scheme`,
/// `host`, `port` and `path` must be set, or clients would be sent back where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`. Default: the request's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https?$"))]
    pub scheme: Option<String>,
    /// New host, without a port (that is `port`). Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// New port, 1 to 65535. Default: the request's port (omitted when it is the scheme's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// New path, starting with `/` (the query string is kept). Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// 301, 302, 303, 307 or 308. Default: `301`.
    #[serde(default = "defaults::redirect_status")]
    #[schemars(range(min = 301, max = 308))]
    pub status: u16,
}

/// A fixed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// HTTP status, 200 to 599. Required.
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// Response body. Default: empty.
    #[serde(default)]
    pub body: String,
    /// `content-type` of the body (a valid header value). Default: `text/plain; charset=utf-8`.
    #[serde(default = "defaults::content_type")]
    pub content_type: String,
}

/// Rewrites applied to the request before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replace the part of the path matched by the route's `prefix` with this (`/` or empty
    /// strips it). Only with a `prefix` path match, and not together with `path`.
    /// Default: no rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replace the whole path with this, starting with `/` (the query string is kept).
    /// Default: no rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replace the `Host`/`:authority` sent upstream (`name` or `name:port`).
    /// Default: the client's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Header edits, applied in the order remove, set, add. Names are valid header names, each at
/// most once per map (case-insensitively); values are visible ASCII, spaces and tabs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers to set, replacing any existing values. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to add, keeping existing values. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Header names to remove. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// True when there is nothing to edit.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Request mirroring (shadowing): a copy of the request goes to another cluster and its answer
/// is thrown away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Name of a cluster declared in `clusters`. Required.
    pub cluster: String,
    /// Percent of requests mirrored, 0 to 100. Default: `100`.
    #[serde(default = "defaults::percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: f64,
}

/// A named group of upstream endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Unique name that routes refer to. Required.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Protocol spoken to the endpoints. Default: `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Time allowed to open a TCP connection to an endpoint, above 0; on expiry or refusal the
    /// client gets 503. Default: `1s`.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// How an endpoint is chosen for each request. Default: `round_robin`.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// What `ring_hash` and `maglev` hash. Required for them, not allowed for the others.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_yaml::with::singleton_map"
    )]
    #[schemars(with = "Option<HashOn>")]
    pub hash_on: Option<HashOn>,
    /// Idle upstream connections kept per endpoint per worker, 0 (no pooling) to 10000.
    /// Default: `256`.
    #[serde(default = "defaults::max_idle_per_endpoint")]
    #[schemars(range(max = 10000))]
    pub max_idle_per_endpoint: usize,
    /// How long an upstream connection may carry no request before the proxy closes it (an
    /// HTTP/2 connection: no stream open), to within the second; `0s` keeps it until the
    /// upstream closes it. Default: `60s`, as nginx's upstream `keepalive_timeout`.
    #[serde(default = "defaults::upstream_idle_timeout")]
    pub idle_timeout: Duration,
    /// Requests an upstream connection carries before the proxy closes it (HTTP/2: streams
    /// opened on it, the connection closing once they end), as nginx's upstream
    /// `keepalive_requests` and Envoy's `max_requests_per_connection`; 0: no limit. Default:
    /// `0`.
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// How long an upstream connection is used for, from its opening: past it, it is closed
    /// once idle (HTTP/2: it takes no new stream, and closes once its streams end), as
    /// nginx's upstream `keepalive_time` and Envoy's `max_connection_duration`; `0s`: no limit.
    /// Default: `0s`.
    #[serde(default)]
    pub max_connection_duration: Duration,
    /// The endpoints, each address at most once. At least one is required.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<Endpoint>,
    /// Limits past which requests to the cluster fail fast with 503 instead of piling up.
    /// Default: 1024 of each, as Envoy.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Bounds on the retries of every route to the cluster. Default: 20 % of requests plus 10
    /// per second.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Speak TLS to the endpoints. Default: none (plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// Active health checks: each endpoint is probed on a timer, off the request path, and
    /// skipped by the balancer while its checks fail. Default: none (every endpoint is
    /// considered healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive health: endpoints whose answers fail are ejected (skipped by the balancer) for a
    /// while. Default: none (no endpoint is ejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// When no endpoint is usable (every one fails its health checks or is ejected): `true`
    /// sends to all of them anyway, `false` answers 503 `no_healthy_endpoint`.
    /// Default: `true`.
    #[serde(default = "defaults::yes")]
    pub fail_open: bool,
}

/// Active health checking of a cluster's endpoints: exactly one of `http`, `grpc` and `tcp`.
///
/// An endpoint new to the proxy is usable until its first check says otherwise, and that first
/// result counts at once; after it, `unhealthy_threshold` failed checks in a row make the
/// endpoint unusable and `healthy_threshold` passed checks in a row make it usable again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP request in the cluster's `protocol`, passing on an expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// The gRPC health protocol (`grpc.health.v1.Health/Check` over h2c), passing when the
    /// server answers `SERVING`. Needs `protocol: http2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
    /// A TCP connect, passing when it is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between two checks of an endpoint, above 0; each wait gets up to 10 % more, at
    /// random, so checks from many proxies do not arrive together. Default: `5s`.
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    /// Time allowed for a whole check (connect, request, answer), above 0; on expiry the check
    /// fails. Default: `1s`.
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy endpoint usable again, 1 or more.
    /// Default: `2`.
    #[serde(default = "defaults::healthy_threshold")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy endpoint unusable, 1 or more. Default: `3`.
    #[serde(default = "defaults::unhealthy_threshold")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: u32,
}

/// An HTTP health check: `GET path`, on a new connection each time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path (and query) requested, starting with `/`. Required.
    pub path: String,
    /// Statuses that pass: each a status (`200`) or an inclusive range (`"200-299"`), 100 to
    /// 599. Default: `["200-399"]`.
    #[serde(default = "defaults::expected_statuses")]
    #[schemars(length(min = 1))]
    pub expected_statuses: Vec<StatusRange>,
    /// `Host` (`:authority` over HTTP/2) sent, `name` or `name:port`. Default: the endpoint's
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A gRPC health check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The service name asked about. Default: empty, the server as a whole.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// A TCP health check: connect, then close. Written `tcp: {}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// An inclusive range of HTTP statuses, written `200` or `"200-299"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status in the range.
    pub start: u16,
    /// Highest status in the range (equal to `start` for one status).
    pub end: u16,
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(self, status: u16) -> bool {
        (self.start..=self.end).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl std::str::FromStr for StatusRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let status = |t: &str| -> Result<u16, String> {
            let t = t.trim();
            if t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse().map_err(|_| String::new())
            } else {
                Err(String::new())
            }
        };
        let parsed = match s.split_once('-') {
            Some((a, b)) => status(a).and_then(|a| Ok((a, status(b)?))),
            None => status(s).map(|a| (a, a)),
        };
        let (start, end) = parsed.map_err(|_| {
            format!("{s:?} is not a status: write one like 200, or a range like \"200-299\"")
        })?;
        Ok(StatusRange { start, end })
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.start == self.end {
            s.serialize_u16(self.start)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status like 200, or a range like \"200-299\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let status = u16::try_from(v).map_err(|_| {
                    E::custom(format!("{v} is not an HTTP status: allowed 100 to 599"))
                })?;
                Ok(StatusRange {
                    start: status,
                    end: status,
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v} is not an HTTP status: allowed 100 to 599"
                    ))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for StatusRange {
    fn schema_name() -> String {
        "StatusRange".to_owned()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use schemars::schema::{InstanceType, Metadata, SchemaObject, SubschemaValidation};
        let mut one = SchemaObject {
            instance_type: Some(InstanceType::Integer.into()),
            ..Default::default()
        };
        one.number().minimum = Some(100.0);
        one.number().maximum = Some(599.0);
        let mut range = SchemaObject {
            instance_type: Some(InstanceType::String.into()),
            ..Default::default()
        };
        range.string().pattern = Some(r"^[1-5][0-9]{2}(-[1-5][0-9]{2})?$".to_owned());
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some(
                    "An HTTP status (200) or an inclusive range of them (\"200-299\").".to_owned(),
                ),
                ..Default::default()
            })),
            subschemas: Some(Box::new(SubschemaValidation {
                any_of: Some(vec![one.into(), range.into()]),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// Outlier detection (passive health): each upstream answer is scored as it comes back, and an
/// endpoint that fails too often is ejected, skipped by the balancer, for a time that grows with
/// each ejection. When the time is up it returns with its failure counts reset.
///
/// An ejection is refused when it would leave more than `max_ejection_percent` of the cluster
/// ejected; one endpoint may always be ejected when the cluster has two or more, so the cap
/// acts on small clusters too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Eject after this many 5xx answers in a row (502, 503, 504 and failures to connect,
    /// resets and timeouts count as 5xx too). `0` disables it. Default: `5`.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_5xx: u32,
    /// Eject after this many gateway errors in a row: 502, 503, 504, failures to connect,
    /// resets and timeouts. `0` disables it. Default: `5`.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_gateway_errors: u32,
    /// How often success rates are compared, above 0; an endpoint's success rate is its share
    /// of non-5xx answers over the last interval. Default: `10s`.
    #[serde(default = "defaults::outlier_interval")]
    pub interval: Duration,
    /// Eject an endpoint whose success rate is below the cluster's mean by more than this many
    /// standard deviations. `0` disables success-rate ejection. Default: `1.9`.
    #[serde(default = "defaults::success_rate_stdev_factor")]
    #[schemars(range(min = 0.0))]
    pub success_rate_stdev_factor: f64,
    /// Endpoints with `success_rate_request_volume` answers in the interval needed before
    /// success rates are compared. Default: `5`.
    #[serde(default = "defaults::success_rate_minimum_hosts")]
    pub success_rate_minimum_hosts: u32,
    /// Answers in the interval an endpoint needs for its success rate to count. Default: `100`.
    #[serde(default = "defaults::success_rate_request_volume")]
    pub success_rate_request_volume: u32,
    /// How long a first ejection lasts, above 0; an endpoint ejected n times lasts n times this
    /// (up to `max_ejection_time`). The count goes down by one for each `base_ejection_time`
    /// the endpoint then stays in without being ejected. Default: `30s`.
    #[serde(default = "defaults::base_ejection_time")]
    pub base_ejection_time: Duration,
    /// Longest ejection, at least `base_ejection_time`. Default: `5m`.
    #[serde(default = "defaults::max_ejection_time")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percent of the cluster, 0 to 100 (rounded down, but
    /// at least one in a cluster of two or more). Default: `10`.
    #[serde(default = "defaults::max_ejection_percent")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: u32,
}

/// A cluster's circuit breaker: counts shared by all workers; a request over a limit gets 503
/// `overflow` at once and is counted in `strait_upstream_overflows_total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Upstream connections open at once. Default: `1024`.
    #[serde(default = "defaults::breaker_limit")]
    pub max_connections: u64,
    /// Requests waiting at once for a new connection to open. Default: `1024`.
    #[serde(default = "defaults::breaker_limit")]
    pub max_pending_requests: u64,
    /// Requests in flight at once. Default: `1024`.
    #[serde(default = "defaults::breaker_limit")]
    pub max_requests: u64,
    /// Retries in flight at once; a retry over it is not made and the last answer stands.
    /// Default: `1024`.
    #[serde(default = "defaults::breaker_limit")]
    pub max_retries: u64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: defaults::breaker_limit(),
            max_pending_requests: defaults::breaker_limit(),
            max_requests: defaults::breaker_limit(),
            max_retries: defaults::breaker_limit(),
        }
    }
}

/// Protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive; one request at a time per connection.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); requests multiplexed on one connection. Required for
    /// gRPC.
    Http2,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadBalancer {
    /// Weighted round robin (smooth: weights interleave rather than burst).
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency times requests in flight.
    PeakEwma,
    /// Consistent hashing on a ring (ketama-style) over `hash_on`.
    RingHash,
    /// Maglev consistent hashing over `hash_on`.
    Maglev,
}

/// What a hashing balancer hashes. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum HashOn {
    /// The value of this request header; requests without it are spread at random.
    Header(String),
    /// The value of this cookie; requests without it are spread at random.
    Cookie(String),
    /// The client's IP address (`hash_on: client_ip`).
    ClientIp,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` to connect to (not `0.0.0.0`, not port 0). Required.
    #[schemars(
        with = "String",
        regex(pattern = r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.%]+\]):\d{1,5}$")
    )]
    pub address: SocketAddr,
    /// Relative weight, 1 to 1000. Default: `1`.
    #[serde(default = "defaults::weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
    /// The SPIFFE ID this endpoint must present, with the cluster's `tls.spiffe_ids` set.
    /// Default: any of the cluster's `spiffe_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Default values, one function per field default (serde needs functions).
pub(crate) mod defaults {
    use super::{
        AcceptFormat, Alpn, Duration, EmitFormat, ForwardedMode, JwtAlgorithm, RetryOn, SocketAddr,
        StatusRange,
    };

    pub fn admin_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9901))
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connection_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_concurrent_streams() -> u32 {
        100
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn forwarded_untouched() -> ForwardedMode {
        ForwardedMode::Untouched
    }
    pub fn yes() -> bool {
        true
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn breaker_limit() -> u64 {
        1024
    }
    pub fn max_keys() -> usize {
        65_536
    }
    pub fn stdout() -> String {
        "stdout".to_owned()
    }
    pub fn cors_methods() -> Vec<String> {
        ["GET", "HEAD", "POST"].map(String::from).to_vec()
    }
    pub fn any() -> Vec<String> {
        vec!["*".to_owned()]
    }
    pub fn compress_min_bytes() -> u64 {
        1024
    }
    pub fn compress_types() -> Vec<String> {
        [
            "text/html",
            "text/plain",
            "text/css",
            "text/javascript",
            "text/xml",
            "application/javascript",
            "application/json",
            "application/xml",
            "application/xhtml+xml",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn compress_level() -> u32 {
        1
    }
    pub fn percent() -> f64 {
        100.0
    }
    pub fn redirect_status() -> u16 {
        301
    }
    pub fn content_type() -> String {
        "text/plain; charset=utf-8".to_owned()
    }
    pub fn max_idle_per_endpoint() -> usize {
        256
    }
    pub fn upstream_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<RetryOn> {
        vec![
            RetryOn::ConnectFailure,
            RetryOn::RefusedStream,
            RetryOn::Reset,
            RetryOn::GatewayError,
        ]
    }
    pub fn retry_body() -> usize {
        64 * 1024
    }
    pub fn backoff_base() -> Duration {
        Duration::from_millis(25)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_millis(250)
    }
    pub fn budget_percent() -> f64 {
        20.0
    }
    pub fn budget_min() -> u32 {
        10
    }
    pub fn jwt_algorithms() -> Vec<JwtAlgorithm> {
        vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ]
    }
    pub fn jwt_leeway() -> Duration {
        Duration::from_secs(60)
    }
    pub fn jwks_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub fn alpn() -> Vec<Alpn> {
        vec![Alpn::H2, Alpn::Http11]
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn expected_statuses() -> Vec<StatusRange> {
        vec![StatusRange {
            start: 200,
            end: 399,
        }]
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn outlier_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn success_rate_stdev_factor() -> f64 {
        1.9
    }
    pub fn success_rate_minimum_hosts() -> u32 {
        5
    }
    pub fn success_rate_request_volume() -> u32 {
        100
    }
    pub fn base_ejection_time() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_ejection_time() -> Duration {
        Duration::from_secs(300)
    }
    pub fn trace_sample_percent() -> f64 {
        10.0
    }
    pub fn service_name() -> String {
        "strait".to_owned()
    }
    pub fn max_queue_spans() -> usize {
        2048
    }
    pub fn max_batch_spans() -> usize {
        512
    }
    pub fn batch_delay() -> Duration {
        Duration::from_secs(5)
    }
    pub fn export_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn trace_accept() -> Vec<AcceptFormat> {
        vec![AcceptFormat::W3c, AcceptFormat::B3]
    }
    pub fn trace_emit() -> Vec<EmitFormat> {
        vec![EmitFormat::W3c]
    }
    pub fn max_ejection_percent() -> u32 {
        10
    }
}
