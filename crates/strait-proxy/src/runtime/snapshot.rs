//! The compiled config a request reads: route tables, clusters with their balancers, header
//! edits parsed once. A snapshot is immutable; an update compiles a new one off the hot path
//! and swaps it in, and in-flight requests finish on the one they started with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use strait_config::{Config, HashOn, ProxyHeaders, Redirect, Rewrite, UpstreamProtocol};

use crate::authz::Policy as AuthzPolicy;
use crate::balance::Balancer;
use crate::gateway::compress::CompressionPlan;
use crate::gateway::cors::CorsPlan;
use crate::http::headers::CompiledEdits;
use crate::http::pool::Keep;
use crate::jwt::JwtPlan;
use crate::passthrough::PassthroughRoute;
use crate::ratelimit::{KeyedLimiter, LimiterStore, Rate};
use crate::resilience::budget::RetryBudget;
use crate::resilience::health_check::CheckPlan;
use crate::resilience::outlier::{Policy, Watched};
use crate::resilience::retry::RetryPolicy;
use crate::resilience::store::{EndpointHealth, HealthStore};
use crate::resilience::{Breaker, OutlierDetector};
use crate::route::normalize::PathRules;
use crate::route::{RouteTable, WeightedSplit};
use crate::telemetry::access_log::{AccessLogger, LogSinks};
use crate::telemetry::metrics::{
    ClusterCounters, EndpointCounters, ListenerStats, MetricsStore, PeerRequests, RouteStats,
};
use crate::telemetry::otlp::Exporters;
use crate::telemetry::spans::{ListenerTracing, Tracer};
use crate::telemetry::trace_context::Sampler;
use crate::tls::{ClientTls, ServerTls};

/// Why a config that passed validation still could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct CompileError {
    location: String,
    message: String,
}

/// One version of the whole proxy config, ready to serve.
#[derive(Debug)]
pub struct Snapshot {
    /// Increments with every config applied; 1 for the first.
    pub version: u64,
    /// The config this was compiled from (for `/config_dump`).
    pub config: Arc<Config>,
    /// Listeners, looked up by local address.
    pub listeners: Vec<ListenerPlan>,
    /// Clusters; routes refer to them by index.
    pub clusters: Vec<Arc<ClusterPlan>>,
}

impl Snapshot {
    /// Compiles `config`. Clusters whose config did not change keep their live state
    /// (balancer position, in-flight counts, latency estimates) from `previous`.
    // The config plus the long-lived stores it compiles against (metrics, logs, limiters,
    // health, exporters): each is separate state with its own lifetime across reloads.
    #[allow(clippy::too_many_arguments)]
    pub fn compile(
        config: Config,
        version: u64,
        previous: Option<&Snapshot>,
        metrics: &MetricsStore,
        logs: &LogSinks,
        limiters: &LimiterStore,
        health: &HealthStore,
        exporters: &Exporters,
    ) -> Result<Snapshot, CompileError> {
        let tracer = match &config.tracing {
            Some(t) => Some(Arc::new(Tracer {
                sampler: Sampler::ratio(t.sample_percent),
                sink: exporters.sink(t).map_err(|e| CompileError {
                    location: "tracing".to_owned(),
                    message: e.to_string(),
                })?,
            })),
            None => {
                exporters.clear();
                None
            }
        };
        let mut clusters: Vec<Arc<ClusterPlan>> = Vec::with_capacity(config.clusters.len());
        for (ci, c) in config.clusters.iter().enumerate() {
            // Same config, and for TLS the same certificate files: keep the live state.
            let reused = previous
                .and_then(|p| p.clusters.iter().find(|old| *old.name == *c.name))
                .filter(|old| old.source == *c && old.tls.as_ref().is_none_or(|t| t.is_current()));
            clusters.push(match reused {
                Some(old) => Arc::clone(old),
                None => Arc::new(ClusterPlan::compile(c, metrics, health).map_err(|message| {
                    CompileError {
                        location: format!("clusters[{ci}]"),
                        message,
                    }
                })?),
            });
        }
        let cluster_index = |name: &str, location: &dyn Fn() -> String| {
            clusters
                .iter()
                .position(|c| &*c.name == name)
                .ok_or_else(|| CompileError {
                    location: location(),
                    message: format!("no cluster named {name:?}"),
                })
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (li, l) in config.listeners.iter().enumerate() {
            let mut actions = Vec::with_capacity(l.routes.len());
            for (ri, r) in l.routes.iter().enumerate() {
                let at = || format!("listeners[{li}].routes[{ri}]");
                let route_name = r.name.clone().unwrap_or_else(|| format!("route-{ri}"));
                let kind = if let Some(d) = &r.direct_response {
                    let status = StatusCode::from_u16(d.status).map_err(|_| CompileError {
                        location: at(),
                        message: format!("invalid status {}", d.status),
                    })?;
                    let content_type =
                        HeaderValue::from_str(&d.content_type).map_err(|_| CompileError {
                            location: at(),
                            message: format!("invalid content_type {:?}", d.content_type),
                        })?;
                    RouteKind::Direct {
                        status,
                        body: Bytes::from(d.body.clone()),
                        content_type,
                    }
                } else if let Some(redirect) = &r.redirect {
                    let status =
                        StatusCode::from_u16(redirect.status).map_err(|_| CompileError {
                            location: at(),
                            message: format!("invalid redirect status {}", redirect.status),
                        })?;
                    RouteKind::Redirect {
                        redirect: redirect.clone(),
                        status,
                    }
                } else {
                    let mut split = Vec::with_capacity(r.backends.len());
                    for b in &r.backends {
                        let cluster = cluster_index(&b.cluster, &at)?;
                        let stats = metrics.route(&l.name, &route_name, &b.cluster);
                        split.push((Backend { cluster, stats }, b.weight));
                    }
                    RouteKind::Forward(WeightedSplit::new(split))
                };
                let mirror = match &r.mirror {
                    Some(m) => Some(MirrorPlan {
                        cluster: cluster_index(&m.cluster, &at)?,
                        percent: m.percent,
                    }),
                    None => None,
                };
                let edits = |e| {
                    CompiledEdits::compile(e).map_err(|e| CompileError {
                        location: at(),
                        message: e.to_string(),
                    })
                };
                let action = RouteAction {
                    local_stats: metrics.route(&l.name, &route_name, ""),
                    name: Arc::from(route_name.as_str()),
                    kind,
                    rewrite: r.rewrite.clone(),
                    request_headers: edits(&r.request_headers)?,
                    response_headers: edits(&r.response_headers)?,
                    mirror,
                    timeout: r.timeout.non_zero(),
                    idle_timeout: r.idle_timeout.non_zero(),
                    max_request_body: r.max_request_body_bytes.or(l.max_request_body_bytes),
                    fault: r.fault.as_ref().map(FaultPlan::compile),
                    retry: r.retry.as_ref().map(RetryPolicy::compile),
                    authz: match &r.authorization {
                        Some(a) => Some(
                            AuthzPolicy::compile(a, |rule| {
                                metrics.authz(&l.name, &route_name, rule)
                            })
                            .map_err(|message| CompileError {
                                location: format!("{}.authorization", at()),
                                message,
                            })?,
                        ),
                        None => None,
                    },
                    cors: match &r.cors {
                        Some(c) => Some(CorsPlan::compile(c).map_err(|message| CompileError {
                            location: format!("{}.cors", at()),
                            message,
                        })?),
                        None => None,
                    },
                    compression: r.compression.as_ref().map(CompressionPlan::compile),
                    rate_limit: match &r.rate_limit {
                        Some(rl) => Some(
                            RateLimitPlan::compile(
                                rl,
                                limiters.limiter(&l.name, &route_name, rl.max_keys),
                            )
                            .map_err(|message| CompileError {
                                location: format!("{}.rate_limit", at()),
                                message,
                            })?,
                        ),
                        None => None,
                    },
                };
                actions.push((&r.matches, action));
            }
            let routes = RouteTable::build(actions).map_err(|e| CompileError {
                location: format!("listeners[{li}].routes[{}]", e.route),
                message: e.message.clone(),
            })?;
            let pass_fields = passes_fields(l, &config.clusters, tracer.is_some());
            listeners.push(ListenerPlan {
                pass_fields,
                paths: Some(PathRules {
                    normalize: l.normalize_path,
                    merge_slashes: l.merge_slashes,
                    escaped_slashes: l.escaped_slashes,
                })
                .filter(PathRules::any),
                name: Arc::from(l.name.as_str()),
                address: l.address,
                proxy_headers: l.proxy_headers.clone(),
                idle_timeout: l.idle_timeout.non_zero(),
                h2_streams: l.http2.max_concurrent_streams,
                routes,
                connections: metrics.listener(&l.name),
                peers: metrics.peers(&l.name),
                max_connections: l.max_connections,
                max_per_client: l.max_connections_per_client,
                cors: l.routes.iter().any(|r| r.cors.is_some()),
                connection_rate: l.connection_rate_limit.as_ref().map(|r| {
                    let burst = r
                        .burst
                        .unwrap_or_else(|| r.connections_per_second.ceil().max(1.0) as u32);
                    // One bucket for the listener, kept across reloads like a route's.
                    let limiter = limiters.limiter(&l.name, CONNECTIONS_BUCKET, 8);
                    (limiter, Rate::new(r.connections_per_second, burst))
                }),
                access_log: match &l.access_log {
                    Some(log) => Some(Arc::new(logs.logger(log).map_err(|e| CompileError {
                        location: format!("listeners[{li}].access_log.path"),
                        message: format!("cannot open {:?}: {e}", log.path),
                    })?)),
                    None => None,
                },
                no_route: metrics.route(&l.name, "", ""),
                tracing: tracer
                    .as_ref()
                    .map(|t| ListenerTracing::new(l.trace_context.as_ref(), Arc::clone(t))),
                passthrough: if l.tls_passthrough.is_empty() {
                    None
                } else {
                    let mut routes = Vec::with_capacity(l.tls_passthrough.len());
                    for (pi, p) in l.tls_passthrough.iter().enumerate() {
                        let at = || format!("listeners[{li}].tls_passthrough[{pi}]");
                        let cluster = cluster_index(&p.cluster, &at)?;
                        routes.push(PassthroughRoute::new(&p.server_names, cluster));
                    }
                    Some(Arc::from(routes))
                },
                jwt: match &l.jwt {
                    Some(j) => Some(JwtPlan::compile(j, metrics.jwt(&l.name)).map_err(
                        |message| CompileError {
                            location: format!("listeners[{li}].jwt"),
                            message,
                        },
                    )?),
                    None => None,
                },
                authz: match &l.authorization {
                    Some(a) => Some(
                        AuthzPolicy::compile(a, |rule| metrics.authz(&l.name, "", rule)).map_err(
                            |message| CompileError {
                                location: format!("listeners[{li}].authorization"),
                                message,
                            },
                        )?,
                    ),
                    None => None,
                },
                tls: match &l.tls {
                    Some(tls) => Some(Arc::new(ServerTls::compile(&l.name, tls).map_err(
                        |message| CompileError {
                            location: format!("listeners[{li}].tls"),
                            message,
                        },
                    )?)),
                    None => None,
                },
            });
        }
        Ok(Snapshot {
            version,
            config: Arc::new(config),
            listeners,
            clusters,
        })
    }

    /// Every file the snapshot was built from besides the config (certificates, keys, CAs,
    /// JWKS files): when one changes, the config is compiled again.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let listeners = self
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.files.iter().cloned());
        let jwks = self
            .listeners
            .iter()
            .filter_map(|l| l.jwt.as_ref()?.file.clone());
        let clusters = self
            .clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| t.files.iter().cloned());
        listeners.chain(clusters).chain(jwks).collect()
    }

    /// The listener bound to `addr`.
    pub fn listener(&self, addr: SocketAddr) -> Option<&ListenerPlan> {
        self.listeners.iter().find(|l| l.address == addr)
    }
}

/// The limiter-store key of a listener's connection bucket (no route can be named so).
const CONNECTIONS_BUCKET: &str = "\0connections";

/// A listener's compiled routes and settings.
#[derive(Debug)]
pub struct ListenerPlan {
    /// Name from the config.
    pub name: Arc<str>,
    /// Bound address.
    pub address: SocketAddr,
    /// Forwarding-header settings.
    pub proxy_headers: ProxyHeaders,
    /// What request paths are made before anything reads them; `None`: taken as they come.
    pub paths: Option<PathRules>,
    /// Keep-alive idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Most streams an HTTP/2 client connection may have open at once.
    pub h2_streams: u32,
    /// Routes in declared order.
    pub routes: RouteTable<RouteAction>,
    /// Connection counters.
    pub connections: Arc<ListenerStats>,
    /// Requests by verified peer identity.
    pub peers: Arc<PeerRequests>,
    /// Counters of requests no route matched.
    pub no_route: Arc<RouteStats>,
    /// Where sampled requests are logged.
    pub access_log: Option<Arc<AccessLogger>>,
    /// Most connections open at once.
    pub max_connections: Option<u64>,
    /// Most connections open at once from one client address.
    pub max_per_client: Option<u32>,
    /// New connections per second: the listener's bucket and its rate.
    pub connection_rate: Option<(Arc<KeyedLimiter>, Rate)>,
    /// TLS termination.
    pub tls: Option<Arc<ServerTls>>,
    /// Who may send requests, checked before routing.
    pub authz: Option<AuthzPolicy>,
    /// Whether a route has a CORS policy (so a preflight is looked at before the token and
    /// authorization).
    pub cors: bool,
    /// Bearer-token verification, before routing.
    pub jwt: Option<JwtPlan>,
    /// TLS passthrough by SNI, instead of HTTP.
    pub passthrough: Option<Arc<[PassthroughRoute]>>,
    /// Trace context and spans, when the config has `tracing`.
    pub tracing: Option<ListenerTracing>,
    /// Nothing on the listener reads or changes a request's fields on the way
    /// ([`passes_fields`]): an HTTP/1 request's fields may go upstream as they came, not built
    /// into its map (`server1`, `gateway::serve`).
    pub pass_fields: bool,
}

/// Whether nothing on listener `l` reads or changes a request's own fields between the client
/// and the upstream, so that an HTTP/1 request's fields may be passed on as they came:
/// - no bearer token, authorization policy, trace context or access log (each reads fields);
/// - no `forwarded` or `via` written (they append to the request's own);
/// - no route that matches on fields, edits them, rewrites the host, mirrors, retries (each
///   copies or reads the map) or limits by rate (a key may be a field);
/// - every cluster a route forwards to speaks HTTP/1 and hashes on no field or cookie.
///
/// What a request itself holds may still make it a map: `server1` passes on only requests in
/// origin form with no hop-by-hop field, no `x-forwarded-for` or `-proto` of their own (the
/// proxy's are appended after them), no `x-forwarded-client-cert` (a TLS listener removes it;
/// the one it writes goes after them), no transfer coding and no `expect`.
fn passes_fields(
    l: &strait_config::Listener,
    clusters: &[strait_config::Cluster],
    tracing: bool,
) -> bool {
    let proxy = &l.proxy_headers;
    let listener_reads = tracing
        || l.jwt.is_some()
        || l.authorization.is_some()
        || l.access_log.is_some()
        || !matches!(proxy.forwarded, strait_config::ForwardedMode::Untouched)
        || proxy.via.is_some();
    let cluster_passes = |name: &str| {
        clusters.iter().find(|c| c.name == name).is_some_and(|c| {
            c.protocol == UpstreamProtocol::Http1
                && matches!(c.hash_on, None | Some(HashOn::ClientIp))
        })
    };
    let route_passes = |r: &strait_config::Route| {
        r.matches.headers.is_empty()
            && r.request_headers.is_empty()
            && r.rewrite.as_ref().is_none_or(|w| w.host.is_none())
            && r.mirror.is_none()
            && r.retry.is_none()
            && r.rate_limit.is_none()
            && r.authorization.is_none()
            && r.cors.is_none()
            && r.compression.is_none()
            && r.backends.iter().all(|b| cluster_passes(&b.cluster))
    };
    !listener_reads && l.routes.iter().all(route_passes)
}

/// What a matched route does.
#[derive(Debug)]
pub struct RouteAction {
    /// Name from the config, or `route-<index>`.
    pub name: Arc<str>,
    /// Counters of answers the route makes itself (redirects, direct responses).
    pub local_stats: Arc<RouteStats>,
    /// Forward, redirect or answer directly.
    pub kind: RouteKind,
    /// Path and host rewrites.
    pub rewrite: Option<Rewrite>,
    /// Edits to the request sent upstream.
    pub request_headers: CompiledEdits,
    /// Edits to the response sent to the client.
    pub response_headers: CompiledEdits,
    /// Shadow traffic.
    pub mirror: Option<MirrorPlan>,
    /// Time allowed until the upstream's response head.
    pub timeout: Option<Duration>,
    /// Longest silence on the response body.
    pub idle_timeout: Option<Duration>,
    /// Most bytes a request body may have (the route's, else its listener's).
    pub max_request_body: Option<u64>,
    /// Injected delays and failures.
    pub fault: Option<FaultPlan>,
    /// Local rate limit.
    pub rate_limit: Option<RateLimitPlan>,
    /// When and how failed attempts are tried again.
    pub retry: Option<RetryPolicy>,
    /// Who may use the route.
    pub authz: Option<AuthzPolicy>,
    /// Which web origins' scripts may call the route.
    pub cors: Option<CorsPlan>,
    /// Which answers are gzipped for clients that take it.
    pub compression: Option<CompressionPlan>,
}

/// A route's rate limit, ready to check requests.
#[derive(Debug)]
pub struct RateLimitPlan {
    /// The buckets.
    pub limiter: Arc<KeyedLimiter>,
    /// The rate for keys without an override.
    pub rate: Rate,
    /// What a bucket is kept for.
    pub key: RateLimitSource,
    /// Rates for particular keys, by key hash.
    pub overrides: Vec<(u64, Rate)>,
}

/// Where a request's rate-limit key comes from.
#[derive(Debug)]
pub enum RateLimitSource {
    /// The client's address.
    ClientIp,
    /// One bucket for the route.
    Route,
    /// A request header (absent: not limited).
    Header(http::HeaderName),
    /// The verified peer identity (none: not limited).
    Peer,
}

/// The key hash of a client address (its octets).
pub fn ip_key(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => crate::balance::hash_key(&v4.octets()),
        std::net::IpAddr::V6(v6) => crate::balance::hash_key(&v6.octets()),
    }
}

impl RateLimitPlan {
    fn compile(rl: &strait_config::RateLimit, limiter: Arc<KeyedLimiter>) -> Result<Self, String> {
        let rate = |rps: f64, burst: Option<u32>| {
            Rate::new(rps, burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32))
        };
        let key = match &rl.key {
            strait_config::RateLimitKey::Route => RateLimitSource::Route,
            strait_config::RateLimitKey::Peer => RateLimitSource::Peer,
            strait_config::RateLimitKey::Header(name) => RateLimitSource::Header(
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name {name:?}"))?,
            ),
            _ => RateLimitSource::ClientIp,
        };
        let mut overrides = Vec::with_capacity(rl.overrides.len());
        for o in &rl.overrides {
            let hash =
                match key {
                    RateLimitSource::ClientIp => ip_key(o.value.parse().map_err(|_| {
                        format!("override value {:?} is not an IP address", o.value)
                    })?),
                    _ => crate::balance::hash_key(o.value.as_bytes()),
                };
            overrides.push((hash, rate(o.requests_per_second, o.burst)));
        }
        Ok(RateLimitPlan {
            limiter,
            rate: rate(rl.requests_per_second, rl.burst),
            key,
            overrides,
        })
    }

    /// The rate for a key.
    pub fn rate_for(&self, key: u64) -> Rate {
        self.overrides
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(self.rate, |(_, r)| *r)
    }
}

/// A route's fault injection, ready to draw samples.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Delay and the percent of requests it applies to.
    pub delay: Option<(Duration, f64)>,
    /// Failure answer and the percent of requests it applies to.
    pub abort: Option<(FaultAnswer, f64)>,
}

/// What an injected failure answers.
#[derive(Debug, Clone, Copy)]
pub enum FaultAnswer {
    /// This HTTP status.
    Http(StatusCode),
    /// This gRPC status.
    Grpc(u16),
}

impl FaultPlan {
    fn compile(f: &strait_config::Fault) -> Self {
        FaultPlan {
            delay: f.delay.as_ref().map(|d| (d.duration.get(), d.percent)),
            abort: f.abort.as_ref().and_then(|a| {
                let answer = match (a.grpc_status, a.status) {
                    (Some(g), _) => FaultAnswer::Grpc(g),
                    // Validation guarantees a status in 200..=599.
                    (None, Some(s)) => FaultAnswer::Http(StatusCode::from_u16(s).ok()?),
                    (None, None) => return None,
                };
                Some((answer, a.percent))
            }),
        }
    }
}

/// The three things a route can do with a request.
#[derive(Debug)]
pub enum RouteKind {
    /// Send it to one of these clusters, by weight.
    Forward(WeightedSplit<Backend>),
    /// Answer with a redirect.
    Redirect {
        /// Where to.
        redirect: Redirect,
        /// 301, 302, 303, 307 or 308.
        status: StatusCode,
    },
    /// Answer with a fixed response.
    Direct {
        /// Status.
        status: StatusCode,
        /// Body.
        body: Bytes,
        /// Its content type.
        content_type: HeaderValue,
    },
}

/// One weighted destination of a route.
#[derive(Debug)]
pub struct Backend {
    /// Index into `Snapshot::clusters`.
    pub cluster: usize,
    /// Counters of this route's traffic to this cluster.
    pub stats: Arc<RouteStats>,
}

/// Where and how often a route mirrors.
#[derive(Debug, Clone, Copy)]
pub struct MirrorPlan {
    /// Index into `Snapshot::clusters`.
    pub cluster: usize,
    /// 0 to 100.
    pub percent: f64,
}

/// A cluster ready to pick endpoints.
#[derive(Debug)]
pub struct ClusterPlan {
    /// Name from the config.
    pub name: Arc<str>,
    /// HTTP/1 or HTTP/2 to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How its upstream connections are kept: how many idle, for how long, for how many
    /// requests.
    pub keep: Keep,
    /// What hashing balancers hash.
    pub hash_on: Option<HashOn>,
    /// Endpoint addresses, in config order (indices match the balancer's).
    pub endpoints: Vec<SocketAddr>,
    /// Picks endpoints; holds their live stats.
    pub balancer: Balancer,
    /// Per-endpoint counters, in endpoint order.
    pub endpoint_counters: Vec<Arc<EndpointCounters>>,
    /// Cluster-wide counters.
    pub counters: Arc<ClusterCounters>,
    /// Limits on connections, pending and concurrent requests.
    pub breaker: Arc<Breaker>,
    /// How many retries the cluster takes.
    pub retry_budget: RetryBudget,
    /// TLS to the endpoints.
    pub tls: Option<Arc<ClientTls>>,
    /// Passive health: the request path reports each upstream outcome here.
    pub outlier: OutlierDetector,
    /// Active health checks, when configured (run by the control thread).
    pub checks: Option<CheckPlan>,
    /// Each endpoint's health, in endpoint order, shared with the store that keeps it across
    /// reloads.
    pub health: Box<[EndpointHealth]>,
    source: strait_config::Cluster,
}

impl ClusterPlan {
    fn compile(
        c: &strait_config::Cluster,
        metrics: &MetricsStore,
        store: &HealthStore,
    ) -> Result<Self, String> {
        let tls = match &c.tls {
            Some(t) => {
                let endpoints: Vec<_> = c
                    .endpoints
                    .iter()
                    .map(|e| (e.address.ip(), e.identity.clone()))
                    .collect();
                let mismatches = Arc::clone(&metrics.cluster(&c.name).identity_mismatches);
                Some(Arc::new(ClientTls::compile(
                    &c.name,
                    t,
                    c.protocol == UpstreamProtocol::Http2,
                    &endpoints,
                    mismatches,
                )?))
            }
            None => None,
        };
        // Hashing balancers place endpoints by address, so a change to one endpoint moves only
        // its own keys.
        let keys: Vec<String> = c.endpoints.iter().map(|e| e.address.to_string()).collect();
        let keyed: Vec<(&[u8], u32)> = keys
            .iter()
            .map(|k| k.as_bytes())
            .zip(c.endpoints.iter().map(|e| e.weight))
            .collect();
        let health: Box<[EndpointHealth]> = c
            .endpoints
            .iter()
            .map(|e| store.endpoint(&c.name, e.address))
            .collect();
        let endpoint_counters: Vec<Arc<EndpointCounters>> =
            keys.iter().map(|k| metrics.endpoint(&c.name, k)).collect();
        let watched = health
            .iter()
            .zip(&endpoint_counters)
            .map(|(h, counters)| Watched {
                stats: Arc::clone(&h.stats),
                record: Arc::clone(&h.outlier),
                counters: Arc::clone(counters),
            })
            .collect();
        let checks = match &c.health_check {
            Some(check) => Some(CheckPlan::compile(check, c.protocol)?),
            None => None,
        };
        Ok(ClusterPlan {
            name: Arc::from(c.name.as_str()),
            protocol: c.protocol,
            connect_timeout: c.connect_timeout.get(),
            keep: Keep {
                max_idle: c.max_idle_per_endpoint,
                idle_timeout: c.idle_timeout.non_zero(),
                max_requests: c.max_requests_per_connection,
                max_age: c.max_connection_duration.non_zero(),
            },
            hash_on: c.hash_on.clone(),
            endpoints: c.endpoints.iter().map(|e| e.address).collect(),
            balancer: Balancer::sharing(
                c.load_balancer,
                &keyed,
                health.iter().map(|h| Arc::clone(&h.stats)).collect(),
            )
            .fail_open(c.fail_open),
            endpoint_counters,
            counters: metrics.cluster(&c.name),
            breaker: Arc::new(Breaker::new(
                c.circuit_breaker.max_connections,
                c.circuit_breaker.max_pending_requests,
                c.circuit_breaker.max_requests,
                c.circuit_breaker.max_retries,
                metrics.cluster(&c.name),
            )),
            retry_budget: RetryBudget::new(
                c.retry_budget.percent,
                c.retry_budget.min_retries_per_second,
            ),
            outlier: OutlierDetector::new(
                c.outlier_detection.as_ref().map(Policy::from_config),
                watched,
                metrics.cluster(&c.name),
            ),
            checks,
            health,
            source: c.clone(),
            tls,
        })
    }

    /// The config this cluster was compiled from.
    pub fn source(&self) -> &strait_config::Cluster {
        &self.source
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `passes_fields` of the one listener of a config: a route to cluster `up`, with `route`,
    /// `listener` and `cluster` lines added to each.
    fn passes(listener: &str, route: &str, cluster: &str, tracing: bool) -> bool {
        let yaml = format!(
            "listeners:\n  - name: l\n    address: \"127.0.0.1:1\"\n    {listener}\n    \
             routes:\n      - backends: [{{ cluster: up }}]\n        {route}\n\
             clusters:\n  - name: up\n    endpoints: [{{ address: \"127.0.0.1:2\" }}]\n    \
             {cluster}\n"
        );
        let config = strait_config::parse(&yaml, "test.yaml").unwrap();
        passes_fields(&config.listeners[0], &config.clusters, tracing)
    }

    #[test]
    fn fields_pass_only_where_nothing_reads_or_changes_them() {
        assert!(passes("", "", "", false));
        // Hashing on the client's address reads no field; path rewrites none either.
        assert!(passes(
            "",
            "rewrite: { path: /b }",
            "load_balancer: ring_hash\n    hash_on: client_ip",
            false
        ));
        assert!(!passes("", "", "", true));
        for listener in [
            "proxy_headers: { via: strait }",
            "proxy_headers: { forwarded: append }",
            "access_log: { path: /dev/null }",
        ] {
            assert!(!passes(listener, "", "", false), "{listener}");
        }
        for route in [
            "match: { headers: [{ name: x-a, exact: \"1\" }] }",
            "request_headers: { set: { x-a: \"1\" } }",
            "rewrite: { host: other }",
            "retry: { attempts: 2 }",
        ] {
            assert!(!passes("", route, "", false), "{route}");
        }
        for cluster in [
            "protocol: http2",
            "load_balancer: ring_hash\n    hash_on: { header: x-user }",
        ] {
            assert!(!passes("", "", cluster, false), "{cluster}");
        }
    }
}
