//! Checks that the types alone cannot express: references resolve, names are unique, values
//! are in range, regular expressions compile, header names and methods are valid tokens.
//!
//! Runs on the parsed `Config`, after serde, and reports every problem it finds rather than the
//! first. Each problem names its field by path and says what is allowed; the
//! [`SourceMap`](crate::source_map::SourceMap) turns the path into a line and column later.
//! What this accepts, the proxy's route compiler and header edits accept too.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use http::{HeaderName, HeaderValue, Method};

use crate::field_path::FieldPath;
use crate::model::*;
use crate::source_map::Position;

/// Largest backend weight on a route; the split sums weights in a `u32`.
pub(crate) const MAX_BACKEND_WEIGHT: u32 = 10_000;
/// Endpoint weights are 1 to this.
pub(crate) const MAX_ENDPOINT_WEIGHT: u32 = 1_000;
/// The longest `busy_poll`: a worker that sees no work for this long is idle, not between
/// requests.
const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// More workers than this is a typo, not a machine.
pub(crate) const MAX_WORKERS: usize = 1_024;
/// Idle connections kept per endpoint per worker; beyond this the pool only hoards sockets.
pub(crate) const MAX_IDLE_PER_ENDPOINT: usize = 10_000;
/// Longest request body kept for retries (16 MiB): more would let a few requests pin memory.
const MAX_RETRY_BODY: usize = 16 << 20;
/// Most finished spans waiting for export (each a few hundred bytes).
const MAX_QUEUE_SPANS: usize = 1 << 20;
/// The statuses a redirect may answer with.
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// One problem, located by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The field the message is about.
    pub field: FieldPath,
    /// Where in the file to point.
    pub at: At,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Where a problem points in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    /// The field's value (or, when the field is absent, the mapping it is missing from).
    Value,
    /// The field's key: for a field that should not be there at all.
    Key,
    /// The value of another field, more telling than the one the message is about.
    Field(FieldPath),
    /// A position known already.
    Position(Position),
}

/// Every semantic problem of `config`, in the order the fields are declared in the model.
pub(crate) fn check(config: &Config) -> Vec<Problem> {
    let mut checker = Checker {
        problems: Vec::new(),
        clusters: config.clusters.iter().map(|c| c.name.as_str()).collect(),
    };
    checker.config(config);
    checker.problems
}

struct Checker<'c> {
    problems: Vec<Problem>,
    clusters: HashSet<&'c str>,
}

impl Checker<'_> {
    fn say(&mut self, field: FieldPath, message: impl Into<String>) {
        self.problems.push(Problem {
            field,
            at: At::Value,
            message: message.into(),
        });
    }

    fn say_at_key(&mut self, field: FieldPath, message: impl Into<String>) {
        self.problems.push(Problem {
            field,
            at: At::Key,
            message: message.into(),
        });
    }

    /// Of mutually exclusive options (`(given, name)`), reports each one given after the first
    /// at its key, with `too_many(first)`; returns the names given, in order.
    fn at_most_one<'n>(
        &mut self,
        at: &FieldPath,
        options: &[(bool, &'n str)],
        too_many: impl Fn(&str) -> String,
    ) -> Vec<&'n str> {
        let given: Vec<&str> = options
            .iter()
            .filter_map(|&(given, name)| given.then_some(name))
            .collect();
        if let [first, rest @ ..] = given.as_slice() {
            for extra in rest {
                self.say_at_key(at.key(extra), too_many(first));
            }
        }
        given
    }

    fn config(&mut self, config: &Config) {
        let root = FieldPath::root();
        if config.listeners.is_empty() {
            // A file cut off while being written often lost its listeners: taken, it would
            // close every one (a watched file is read as soon as it changes).
            self.say(
                root.key("listeners"),
                "no listeners: give at least one (see config/minimal.yaml); a config without \
                 any would close every listener the proxy serves on",
            );
        }
        if let Some(workers) = config.workers {
            if !(1..=MAX_WORKERS).contains(&workers) {
                self.say(
                    root.key("workers"),
                    format!(
                        "{workers}: allowed 1 to {MAX_WORKERS}; leave `workers` out for one \
                         per CPU core"
                    ),
                );
            }
        }
        if config.busy_poll.get() > MAX_BUSY_POLL {
            self.say(
                root.key("busy_poll"),
                format!(
                    "{}: allowed 0s (off) to {}; a worker polls for this long after its last \
                     work, so a longer window mostly costs CPU",
                    config.busy_poll,
                    crate::Duration::from(MAX_BUSY_POLL)
                ),
            );
        }
        self.listeners(config);
        if let Some(tracing) = &config.tracing {
            self.tracing(&root.key("tracing"), tracing);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (ci, cluster) in config.clusters.iter().enumerate() {
            let at = root.key("clusters").index(ci);
            self.name(&at.key("name"), &cluster.name, "cluster");
            let first = *names.entry(&cluster.name).or_insert(ci);
            if first != ci {
                self.say(
                    at.key("name"),
                    format!(
                        "cluster name `{}` is already used by clusters[{first}]; cluster names \
                         must be unique",
                        cluster.name
                    ),
                );
            }
            self.cluster(&at, cluster);
        }
    }

    fn listeners(&mut self, config: &Config) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: Vec<(SocketAddr, usize)> = Vec::new();
        for (li, listener) in config.listeners.iter().enumerate() {
            let at = FieldPath::root().key("listeners").index(li);
            self.name(&at.key("name"), &listener.name, "listener");
            let first = *names.entry(&listener.name).or_insert(li);
            if first != li {
                self.say(
                    at.key("name"),
                    format!(
                        "listener name `{}` is already used by listeners[{first}]; listener \
                         names must be unique",
                        listener.name
                    ),
                );
            }
            let address = listener.address;
            let admin = config.admin.address;
            if overlaps(admin, address) {
                self.say(
                    at.key("address"),
                    format!(
                        "{address} {} the admin server's address (`admin.address`); give the \
                         listener or the admin server another port",
                        clash(admin, address)
                    ),
                );
            } else if let Some(&(other, first)) =
                addresses.iter().find(|(a, _)| overlaps(*a, address))
            {
                self.say(
                    at.key("address"),
                    format!(
                        "{address} {} listeners[{first}]; each listener needs its own address \
                         and port",
                        clash(other, address)
                    ),
                );
            }
            addresses.push((address, li));
            if let Some(via) = &listener.proxy_headers.via {
                if via.trim().is_empty() || HeaderValue::from_str(via).is_err() {
                    self.say(
                        at.key("proxy_headers").key("via"),
                        format!(
                            "{via:?} is not a usable `via` value: give visible ASCII text such \
                             as `strait`, or leave `via` out for no header"
                        ),
                    );
                }
            }
            if listener.max_connections == Some(0) {
                self.say(
                    at.key("max_connections"),
                    "0 would refuse every connection: give 1 or more, or leave it out for no limit",
                );
            }
            if listener.max_connections_per_client == Some(0) {
                self.say(
                    at.key("max_connections_per_client"),
                    "0 would refuse every connection: give 1 or more, or leave it out for no limit",
                );
            }
            if listener.http2.max_concurrent_streams == 0 {
                self.say(
                    at.key("http2").key("max_concurrent_streams"),
                    "0 would refuse every HTTP/2 request: give 1 or more (default 100)",
                );
            }
            if let Some(tls) = &listener.tls {
                self.listener_tls(&at.key("tls"), tls);
            }
            if let Some(policy) = &listener.authorization {
                self.authorization(&at.key("authorization"), policy);
            }
            if let Some(jwt) = &listener.jwt {
                self.jwt(&at.key("jwt"), jwt);
            }
            if !listener.tls_passthrough.is_empty() {
                let http_only = [
                    ("routes", !listener.routes.is_empty()),
                    ("tls", listener.tls.is_some()),
                    ("jwt", listener.jwt.is_some()),
                ];
                for (field, set) in http_only {
                    if set {
                        self.say_at_key(
                            at.key(field),
                            format!(
                                "a `tls_passthrough` listener forwards TLS untouched and serves \
                                 no HTTP, so `{field}` cannot apply; use another listener"
                            ),
                        );
                    }
                }
                for (pi, p) in listener.tls_passthrough.iter().enumerate() {
                    let at = at.key("tls_passthrough").index(pi);
                    self.cluster_ref(&at.key("cluster"), &p.cluster);
                    for (ni, name) in p.server_names.iter().enumerate() {
                        let body = name.strip_prefix("*.").unwrap_or(name);
                        if body.contains('*') || rustls_name_invalid(body) {
                            self.say(
                                at.key("server_names").index(ni),
                                format!(
                                    "{name:?}: give a DNS name, or `*.` and a DNS name for a \
                                     wildcard"
                                ),
                            );
                        }
                    }
                }
            }
            if let Some(limit) = &listener.connection_rate_limit {
                let rate = limit.connections_per_second;
                if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
                    self.say(
                        at.key("connection_rate_limit")
                            .key("connections_per_second"),
                        format!("{rate}: allowed more than 0, up to 1e9"),
                    );
                }
                if limit.burst == Some(0) {
                    self.say(
                        at.key("connection_rate_limit").key("burst"),
                        "0 would refuse every connection: give 1 or more",
                    );
                }
            }
            if let Some(log) = &listener.access_log {
                let at = at.key("access_log");
                if log.path.trim().is_empty() {
                    self.say(
                        at.key("path"),
                        "the access log path is empty: give `stdout`, `stderr` or a file path",
                    );
                }
                if !(0.0..=100.0).contains(&log.sample_percent) {
                    self.say(
                        at.key("sample_percent"),
                        format!(
                            "{}: allowed 0 to 100 (percent of requests logged)",
                            log.sample_percent
                        ),
                    );
                }
                for (fi, field) in log.fields.iter().enumerate() {
                    if let Some(first) = log
                        .fields
                        .iter()
                        .position(|f| f == field)
                        .filter(|&p| p < fi)
                    {
                        self.say(
                            at.key("fields").index(fi),
                            format!(
                                "`{}` is already listed at fields[{first}]; list each field once",
                                field.key()
                            ),
                        );
                    }
                }
            }
            if let Some(context) = &listener.trace_context {
                let at = at.key("trace_context");
                if config.tracing.is_none() {
                    self.say_at_key(
                        at.clone(),
                        "`trace_context` chooses the headers of the proxy's spans, and there is \
                         no top-level `tracing`: add `tracing` (an OTLP collector), or remove it",
                    );
                }
                self.listed_once(&at.key("accept"), &context.accept, accept_name);
                self.listed_once(&at.key("emit"), &context.emit, emit_name);
            }
            for (ri, route) in listener.routes.iter().enumerate() {
                self.route(&at.key("routes").index(ri), route);
            }
        }
    }

    /// Each choice of a list at most once.
    fn listed_once<T: PartialEq + Copy>(
        &mut self,
        at: &FieldPath,
        items: &[T],
        name: fn(T) -> &'static str,
    ) {
        for (i, &item) in items.iter().enumerate() {
            if let Some(first) = items.iter().position(|&x| x == item).filter(|&p| p < i) {
                self.say(
                    at.index(i),
                    format!(
                        "`{}` is already listed at [{first}]; list each once",
                        name(item)
                    ),
                );
            }
        }
    }

    fn tracing(&mut self, at: &FieldPath, tracing: &Tracing) {
        if let Some(endpoint) = &tracing.endpoint {
            if let Err(e) = check_collector_url(endpoint, tracing.protocol) {
                self.say(at.key("endpoint"), e);
            }
        }
        if !(tracing.sample_percent.is_finite() && (0.0..=100.0).contains(&tracing.sample_percent))
        {
            self.say(
                at.key("sample_percent"),
                format!(
                    "{}: allowed 0 to 100 (percent of new traces recorded; the default is 10)",
                    tracing.sample_percent
                ),
            );
        }
        if tracing.service_name.trim().is_empty() {
            self.say(
                at.key("service_name"),
                "the service name is empty: give the name traces should show, like `strait` \
                 (the default) or `edge-gateway`",
            );
        }
        if !(1..=MAX_QUEUE_SPANS).contains(&tracing.max_queue_spans) {
            self.say(
                at.key("max_queue_spans"),
                format!(
                    "{}: allowed 1 to {MAX_QUEUE_SPANS}; the default is 2048",
                    tracing.max_queue_spans
                ),
            );
        }
        if tracing.max_batch_spans == 0 || tracing.max_batch_spans > tracing.max_queue_spans {
            self.say(
                at.key("max_batch_spans"),
                format!(
                    "{}: allowed 1 to `max_queue_spans` ({}); the default is 512",
                    tracing.max_batch_spans, tracing.max_queue_spans
                ),
            );
        }
        for (field, value) in [
            ("batch_delay", tracing.batch_delay),
            ("export_timeout", tracing.export_timeout),
        ] {
            if value.get().is_zero() {
                self.say(
                    at.key(field),
                    format!(
                        "0s leaves the exporter no time: give a time above 0, like `{}`",
                        if field == "batch_delay" { "5s" } else { "10s" }
                    ),
                );
            }
        }
    }

    /// Names show up in logs, metrics and `/config_dump`, and routes refer to clusters by name.
    fn name(&mut self, at: &FieldPath, name: &str, what: &str) {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.say(
                at.clone(),
                format!(
                    "{name:?} is not a usable {what} name: give a non-empty name without spaces, \
                     like `public` or `api-v2`"
                ),
            );
        }
    }

    fn route(&mut self, at: &FieldPath, route: &Route) {
        if let Some(name) = &route.name {
            self.name(&at.key("name"), name, "route");
        }
        self.route_match(&at.key("match"), &route.matches);

        let forwards = !route.backends.is_empty();
        let actions = self.at_most_one(
            at,
            &[
                (forwards, "backends"),
                (route.redirect.is_some(), "redirect"),
                (route.direct_response.is_some(), "direct_response"),
            ],
            |first| {
                format!(
                    "a route takes exactly one of `backends`, `redirect` and `direct_response`, \
                     and this one already has `{first}`; keep one, or split it into two routes"
                )
            },
        );
        if actions.is_empty() {
            self.problems.push(Problem {
                field: at.clone(),
                at: At::Field(at.key("backends")),
                message: "a route needs an action: `backends` (forward to clusters; at least \
                          one), `redirect` or `direct_response`"
                    .to_owned(),
            });
        }
        // What only a forwarded request uses is refused on a route that answers by itself,
        // rather than ignored.
        let answers_itself = !forwards && !actions.is_empty();

        for (bi, backend) in route.backends.iter().enumerate() {
            let at = at.key("backends").index(bi);
            self.cluster_ref(&at.key("cluster"), &backend.cluster);
            if backend.weight > MAX_BACKEND_WEIGHT {
                self.say(
                    at.key("weight"),
                    format!(
                        "weight {}: allowed 0 to {MAX_BACKEND_WEIGHT} (weights are relative: \
                         90 and 10 split like 9000 and 1000)",
                        backend.weight
                    ),
                );
            }
        }
        if forwards && route.backends.iter().all(|b| b.weight == 0) {
            self.say(
                at.key("backends"),
                "every backend has weight 0, so the route could send nowhere; give at least \
                 one backend a weight above 0",
            );
        }
        if let Some(redirect) = &route.redirect {
            self.redirect(&at.key("redirect"), redirect);
        }
        if let Some(direct) = &route.direct_response {
            self.direct_response(&at.key("direct_response"), direct);
        }
        if let Some(rewrite) = &route.rewrite {
            if answers_itself {
                self.say_at_key(
                    at.key("rewrite"),
                    format!(
                        "`rewrite` applies only to routes that forward (`backends`); this route \
                         answers with `{}`",
                        actions.first().copied().unwrap_or_default()
                    ),
                );
            }
            self.rewrite(&at.key("rewrite"), rewrite, route.matches.path.as_ref());
        }
        if answers_itself && !route.request_headers.is_empty() {
            self.say_at_key(
                at.key("request_headers"),
                format!(
                    "`request_headers` edits the request sent upstream, and this route answers \
                     with `{}` without forwarding; use `response_headers`, or remove it",
                    actions.first().copied().unwrap_or_default()
                ),
            );
        }
        if answers_itself && route.max_request_body_bytes.is_some() {
            self.say_at_key(
                at.key("max_request_body_bytes"),
                format!(
                    "`max_request_body_bytes` bounds the body sent upstream, and this route \
                     answers with `{}` without forwarding; remove it",
                    actions.first().copied().unwrap_or_default()
                ),
            );
        }
        self.header_edits(&at.key("request_headers"), &route.request_headers);
        self.header_edits(&at.key("response_headers"), &route.response_headers);
        if let Some(limit) = &route.rate_limit {
            let at = at.key("rate_limit");
            let rate_ok = |r: f64| r.is_finite() && r > 0.0 && r <= 1e9;
            if !rate_ok(limit.requests_per_second) {
                self.say(
                    at.key("requests_per_second"),
                    format!(
                        "{}: allowed more than 0, up to 1e9",
                        limit.requests_per_second
                    ),
                );
            }
            if limit.max_keys < 8 || limit.max_keys > 1 << 26 {
                self.say(
                    at.key("max_keys"),
                    format!("{}: allowed 8 to 67108864", limit.max_keys),
                );
            }
            if let RateLimitKey::Header(name) = &limit.key {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.say(
                        at.key("key").key("header"),
                        format!("{name:?} is not a valid header name"),
                    );
                }
            }
            if limit.key == RateLimitKey::Route && !limit.overrides.is_empty() {
                self.say_at_key(
                    at.key("overrides"),
                    "with `key: route` there is one bucket and no key values to override; use \
                     `client_ip` or `header`",
                );
            }
            for (oi, o) in limit.overrides.iter().enumerate() {
                if !rate_ok(o.requests_per_second) {
                    self.say(
                        at.key("overrides").index(oi).key("requests_per_second"),
                        format!("{}: allowed more than 0, up to 1e9", o.requests_per_second),
                    );
                }
            }
        }
        if let Some(policy) = &route.authorization {
            self.authorization(&at.key("authorization"), policy);
        }
        if let Some(cors) = &route.cors {
            self.cors(&at.key("cors"), cors);
        }
        if let Some(compression) = &route.compression {
            let at = at.key("compression");
            if !(1..=9).contains(&compression.level) {
                self.say(
                    at.key("level"),
                    format!("{}: allowed 1 (fastest) to 9 (smallest)", compression.level),
                );
            }
            for (i, media) in compression.content_types.iter().enumerate() {
                let token = |t: &str| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                let ok = match media.split_once('/') {
                    Some((kind, "*")) => token(kind),
                    Some((kind, sub)) => token(kind) && token(sub),
                    None => false,
                };
                if !ok {
                    self.say(
                        at.key("content_types").index(i),
                        format!(
                            "{media:?} is not a media type: give `type/subtype`, like \
                             `application/json`, or `type/*`, like `text/*`"
                        ),
                    );
                }
            }
        }
        if let Some(retry) = &route.retry {
            if answers_itself {
                self.say_at_key(
                    at.key("retry"),
                    format!(
                        "`retry` applies only to routes that forward (`backends`); this route \
                         answers with `{}`",
                        actions.first().copied().unwrap_or_default()
                    ),
                );
            }
            self.retry(&at.key("retry"), retry);
        }
        if let Some(fault) = &route.fault {
            let at = at.key("fault");
            if let Some(delay) = &fault.delay {
                if !(0.0..=100.0).contains(&delay.percent) {
                    self.say(
                        at.key("delay").key("percent"),
                        format!(
                            "{}: allowed 0 to 100 (percent of requests delayed)",
                            delay.percent
                        ),
                    );
                }
            }
            if let Some(abort) = &fault.abort {
                let at = at.key("abort");
                match (abort.status, abort.grpc_status) {
                    (Some(_), Some(_)) | (None, None) => self.say_at_key(
                        at.clone(),
                        "give exactly one of `status` (HTTP, 200 to 599) and `grpc_status` (1 to 16)",
                    ),
                    (Some(status), None) if !(200..=599).contains(&status) => {
                        self.say(at.key("status"), format!("{status}: allowed 200 to 599"))
                    }
                    (None, Some(grpc)) if !(1..=16).contains(&grpc) => self.say(
                        at.key("grpc_status"),
                        format!("{grpc}: allowed 1 to 16 (0 is OK, which is not a failure)"),
                    ),
                    _ => {}
                }
                if !(0.0..=100.0).contains(&abort.percent) {
                    self.say(
                        at.key("percent"),
                        format!(
                            "{}: allowed 0 to 100 (percent of requests aborted)",
                            abort.percent
                        ),
                    );
                }
            }
        }
        if let Some(mirror) = &route.mirror {
            let at = at.key("mirror");
            if answers_itself {
                self.say_at_key(
                    at.clone(),
                    "`mirror` copies forwarded requests; it applies only to routes with \
                     `backends`",
                );
            }
            self.cluster_ref(&at.key("cluster"), &mirror.cluster);
            if !(0.0..=100.0).contains(&mirror.percent) {
                self.say(
                    at.key("percent"),
                    format!("{}: allowed 0 to 100 (percent of requests)", mirror.percent),
                );
            }
        }
    }

    fn cluster_ref(&mut self, at: &FieldPath, name: &str) {
        if !self.clusters.contains(name) {
            let mut known: Vec<&str> = self.clusters.iter().copied().collect();
            known.sort_unstable();
            let hint = match crate::suggest::closest(name, known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`? "),
                None => String::new(),
            };
            let declared = if known.is_empty() {
                "no clusters are declared".to_owned()
            } else {
                format!("declared: {}", crate::suggest::list(&known))
            };
            self.say(
                at.clone(),
                format!(
                    "no cluster named `{name}`; {hint}declare it under `clusters` ({declared})"
                ),
            );
        }
    }

    fn route_match(&mut self, at: &FieldPath, m: &RouteMatch) {
        self.peer_patterns(&at.key("peers"), &m.peers);
        for (hi, host) in m.hosts.iter().enumerate() {
            if let Err(e) = check_host_pattern(host) {
                self.say(at.key("hosts").index(hi), e);
            }
        }
        match &m.path {
            None => {}
            Some(PathMatch::Exact(path)) => self.absolute(&at.key("path").key("exact"), path),
            Some(PathMatch::Prefix(path)) => self.absolute(&at.key("path").key("prefix"), path),
            Some(PathMatch::Regex(re)) => {
                if let Err(e) = regex::Regex::new(re) {
                    self.say(at.key("path").key("regex"), regex_problem(&e));
                }
            }
        }
        for (mi, method) in m.methods.iter().enumerate() {
            let at = at.key("methods").index(mi);
            if method.bytes().any(|b| b.is_ascii_lowercase()) {
                self.say(
                    at,
                    format!(
                        "`{method}`: methods are case-sensitive and written in upper case; \
                         write `{}`",
                        method.to_ascii_uppercase()
                    ),
                );
            } else if Method::from_bytes(method.as_bytes()).is_err() {
                self.say(
                    at,
                    format!(
                        "{method:?} is not an HTTP method: give an upper-case token like `GET`, \
                         `POST` or `PURGE`"
                    ),
                );
            }
        }
        for (hi, h) in m.headers.iter().enumerate() {
            let at = at.key("headers").index(hi);
            if let Err(e) = check_header_name(&h.name) {
                self.say(at.key("name"), e);
            }
            if let Some(exact) = &h.exact {
                if HeaderValue::from_str(exact).is_err() {
                    self.say(
                        at.key("exact"),
                        format!(
                            "{exact:?} can never match: header values are visible ASCII, \
                             spaces and tabs"
                        ),
                    );
                }
            }
            self.value_condition(&at, h.exact.is_some(), h.regex.as_deref(), h.present);
        }
        for (qi, q) in m.query.iter().enumerate() {
            let at = at.key("query").index(qi);
            if q.name.is_empty() {
                self.say(
                    at.key("name"),
                    "the query parameter name is empty; give the name as it appears before `=`",
                );
            }
            self.value_condition(&at, q.exact.is_some(), q.regex.as_deref(), q.present);
        }
    }

    /// At most one of `exact`, `regex`, `present`; the regex compiles (on bytes, as the route
    /// compiler does: header values need not be UTF-8).
    fn value_condition(
        &mut self,
        at: &FieldPath,
        exact: bool,
        regex: Option<&str>,
        present: Option<bool>,
    ) {
        self.at_most_one(
            at,
            &[
                (exact, "exact"),
                (regex.is_some(), "regex"),
                (present.is_some(), "present"),
            ],
            |first| {
                format!("give at most one of `exact`, `regex` and `present`; `{first}` is already given")
            },
        );
        if let Some(re) = regex {
            if let Err(e) = regex::bytes::Regex::new(re) {
                self.say(at.key("regex"), regex_problem(&e));
            }
        }
    }

    fn absolute(&mut self, at: &FieldPath, path: &str) {
        if !path.starts_with('/') {
            self.say(
                at.clone(),
                format!(
                    "{path:?} must start with `/`, like `/{}`",
                    path.trim_start_matches('/')
                ),
            );
        }
    }

    fn redirect(&mut self, at: &FieldPath, redirect: &Redirect) {
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                self.say(
                    at.key("scheme"),
                    format!("{scheme:?}: allowed `http` or `https`"),
                );
            }
        }
        if let Some(host) = &redirect.host {
            let bad = host.is_empty()
                || !host.is_ascii()
                || host.bytes().any(|b| {
                    b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@".contains(&b)
                });
            if bad {
                self.say(
                    at.key("host"),
                    format!("{host:?} is not a host name: give a name like `www.example.com`"),
                );
            } else if host_without_port(host) != host {
                self.say(
                    at.key("host"),
                    format!(
                        "{host:?} has a port; write the host alone (`{}`) and the port in \
                         `redirect.port`",
                        host_without_port(host)
                    ),
                );
            }
        }
        if redirect.port == Some(0) {
            self.say(at.key("port"), "port 0: allowed 1 to 65535");
        }
        if let Some(path) = &redirect.path {
            self.absolute(&at.key("path"), path);
        }
        if !REDIRECT_STATUSES.contains(&redirect.status) {
            self.say(
                at.key("status"),
                format!(
                    "{}: allowed 301, 302, 303, 307 or 308 (default 301)",
                    redirect.status
                ),
            );
        }
        let changes_nothing = redirect.scheme.is_none()
            && redirect.host.is_none()
            && redirect.port.is_none()
            && redirect.path.is_none();
        if changes_nothing {
            self.say(
                at.clone(),
                "this redirect sends clients back to the URL they asked for, a loop: set at \
                 least one of `scheme`, `host`, `port` and `path`",
            );
        }
    }

    fn direct_response(&mut self, at: &FieldPath, direct: &DirectResponse) {
        if !(200..=599).contains(&direct.status) {
            self.say(
                at.key("status"),
                format!("{}: allowed 200 to 599", direct.status),
            );
        }
        if direct.content_type.is_empty() || HeaderValue::from_str(&direct.content_type).is_err() {
            self.say(
                at.key("content_type"),
                format!(
                    "{:?} is not a valid header value: give a media type like `text/plain; \
                     charset=utf-8` or `application/json`",
                    direct.content_type
                ),
            );
        }
    }

    fn rewrite(&mut self, at: &FieldPath, rewrite: &Rewrite, path_match: Option<&PathMatch>) {
        if let Some(prefix) = &rewrite.path_prefix {
            if rewrite.path.is_some() {
                self.say_at_key(
                    at.key("path_prefix"),
                    "give either `path_prefix` (replace the matched prefix) or `path` (replace \
                     the whole path), not both",
                );
            } else if !matches!(path_match, Some(PathMatch::Prefix(_))) {
                let what = match path_match {
                    None => "no path match",
                    Some(PathMatch::Exact(_)) => "an `exact` path match",
                    Some(_) => "a `regex` path match",
                };
                self.say_at_key(
                    at.key("path_prefix"),
                    format!(
                        "`path_prefix` replaces what `match.path.prefix` matched, and this route \
                         has {what}; match with `prefix`, or use `rewrite.path`"
                    ),
                );
            }
            if !prefix.is_empty() {
                self.absolute(&at.key("path_prefix"), prefix);
            }
        }
        if let Some(path) = &rewrite.path {
            self.absolute(&at.key("path"), path);
        }
        if let Some(host) = &rewrite.host {
            self.authority(&at.key("host"), host);
        }
    }

    /// A `Host` to send: `name` or `name:port`.
    fn authority(&mut self, at: &FieldPath, host: &str) {
        if host.parse::<http::uri::Authority>().is_err() || host.contains('@') {
            self.say(
                at.clone(),
                format!(
                    "{host:?} is not a host: give a name, optionally with a port, like \
                     `api.internal` or `api.internal:8080`"
                ),
            );
        }
    }

    fn cors(&mut self, at: &FieldPath, cors: &Cors) {
        if cors.allow_origins.is_empty() {
            self.say_at_key(
                at.key("allow_origins"),
                "no origin is allowed, so the policy would refuse every one; list the origins \
                 (`https://app.example.com`, `https://*.example.com`) or `*`",
            );
        }
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            if let Err(e) = check_origin(origin) {
                self.say(at.key("allow_origins").index(i), e);
            }
        }
        for (i, method) in cors.allow_methods.iter().enumerate() {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                self.say(
                    at.key("allow_methods").index(i),
                    format!("{method:?} is not a method name, like `GET` or `PUT`"),
                );
            }
        }
        let lists = [
            ("allow_headers", &cors.allow_headers),
            ("expose_headers", &cors.expose_headers),
        ];
        for (field, names) in lists {
            for (i, name) in names.iter().enumerate() {
                if name == "*" {
                    if field == "expose_headers" && cors.allow_credentials {
                        self.say(
                            at.key(field).index(i),
                            "with `allow_credentials: true` browsers read `*` as a header \
                             named `*`; list the headers",
                        );
                    }
                } else if let Err(e) = check_header_name(name) {
                    self.say(at.key(field).index(i), e);
                }
            }
        }
    }

    fn header_edits(&mut self, at: &FieldPath, edits: &HeaderEdits) {
        for (which, map) in [("set", &edits.set), ("add", &edits.add)] {
            let mut seen: HashMap<String, &str> = HashMap::new();
            for (name, value) in map {
                let at = at.key(which).key(name);
                if let Err(e) = check_header_name(name) {
                    self.say_at_key(at, e);
                    continue;
                }
                if let Some(first) = seen.insert(name.to_ascii_lowercase(), name) {
                    self.say_at_key(
                        at.clone(),
                        format!(
                            "`{name}` and `{first}` are the same header (names are \
                             case-insensitive); keep one"
                        ),
                    );
                }
                if HeaderValue::from_str(value).is_err() {
                    self.say(
                        at,
                        format!(
                            "{value:?} is not a valid header value: visible ASCII, spaces and \
                             tabs only"
                        ),
                    );
                }
            }
        }
        for (i, name) in edits.remove.iter().enumerate() {
            if let Err(e) = check_header_name(name) {
                self.say(at.key("remove").index(i), e);
            }
        }
    }

    fn listener_tls(&mut self, at: &FieldPath, tls: &ListenerTls) {
        if tls.certificates.is_empty() {
            self.say(
                at.key("certificates"),
                "TLS needs at least one certificate: `[{ cert: cert.pem, key: key.pem }]`",
            );
        }
        for (i, c) in tls.certificates.iter().enumerate() {
            let at = at.key("certificates").index(i);
            self.path(&at.key("cert"), &c.cert);
            self.path(&at.key("key"), &c.key);
            if let Some(ocsp) = &c.ocsp {
                self.path(&at.key("ocsp"), ocsp);
            }
        }
        if tls.alpn.is_empty() {
            self.say(
                at.key("alpn"),
                "no protocol to offer: give `[h2, http/1.1]` (the default), or one of them",
            );
        }
        if let Some(auth) = &tls.client_auth {
            self.path(&at.key("client_auth").key("ca"), &auth.ca);
        }
        if tls.handshake_timeout.get().is_zero() {
            self.say(
                at.key("handshake_timeout"),
                "0s would fail every handshake: give a time above 0, like `10s` (the default)",
            );
        }
    }

    fn cluster_tls(&mut self, at: &FieldPath, tls: &ClusterTls) {
        for (key, value) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(path) = value {
                self.path(&at.key(key), path);
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => self.say_at_key(
                at.key("cert"),
                "a client certificate needs its private key: add `key`",
            ),
            (None, Some(_)) => self.say_at_key(
                at.key("key"),
                "a private key needs its certificate: add `cert`",
            ),
            _ => {}
        }
        if !tls.spiffe_ids.is_empty() {
            if tls.ca.is_none() {
                self.say_at_key(
                    at.key("spiffe_ids"),
                    "SPIFFE identities are checked against the mesh's CA, and `ca` is not set; \
                     add `ca: mesh-ca.pem`",
                );
            }
            if tls.server_name.is_some() {
                self.say_at_key(
                    at.key("server_name"),
                    "with `spiffe_ids` the endpoints are checked by SPIFFE ID, not by name; \
                     remove `server_name`",
                );
            }
            if tls.insecure_skip_verify {
                self.say_at_key(
                    at.key("insecure_skip_verify"),
                    "`insecure_skip_verify` would skip the identity check `spiffe_ids` asks for; \
                     remove one of them",
                );
            }
            for (i, id) in tls.spiffe_ids.iter().enumerate() {
                if !spiffe_pattern_valid(id) {
                    self.say(
                        at.key("spiffe_ids").index(i),
                        format!(
                            "{id:?}: give a SPIFFE ID (`spiffe://td/ns/shop/sa/api`) or a prefix \
                             ending in `*` (`spiffe://td/ns/shop/*`)"
                        ),
                    );
                }
            }
        }
        if let Some(name) = &tls.server_name {
            if rustls_name_invalid(name) {
                self.say(
                    at.key("server_name"),
                    format!("{name:?} is not a DNS name or IP address"),
                );
            }
        }
    }

    fn authorization(&mut self, at: &FieldPath, policy: &Authorization) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, rule) in policy.rules.iter().enumerate() {
            let at = at.key("rules").index(i);
            if let Some(name) = &rule.name {
                if name.trim().is_empty() {
                    self.say(at.key("name"), "the rule name is empty");
                } else if let Some(first) = names.insert(name, i) {
                    self.say(
                        at.key("name"),
                        format!("`{name}` is already the name of rules[{first}]"),
                    );
                }
            }
            if let Some(m) = &rule.request {
                self.route_match(&at.key("match"), m);
            }
            self.peer_patterns(&at.key("peers"), &rule.peers);
        }
    }

    fn jwt(&mut self, at: &FieldPath, jwt: &Jwt) {
        if jwt.issuer.trim().is_empty() {
            self.say(
                at.key("issuer"),
                "the issuer is empty: give the `iss` tokens carry",
            );
        }
        if jwt.algorithms.is_empty() {
            self.say(
                at.key("algorithms"),
                "no algorithm accepted: give some of `RS256`, `ES256`, `EdDSA` (the default is all)",
            );
        }
        let jwks = at.key("jwks");
        match (&jwt.jwks.file, &jwt.jwks.url) {
            (Some(file), None) => self.path(&jwks.key("file"), file),
            (None, Some(url)) => {
                let ok = (url.starts_with("https://") || url.starts_with("http://"))
                    && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
                if !ok {
                    self.say(
                        jwks.key("url"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
            }
            _ => self.say_at_key(
                jwks,
                "give exactly one of `file` (a JWKS file) and `url` (where to fetch it)",
            ),
        }
        if jwt.jwks.refresh.get() < std::time::Duration::from_secs(1) {
            self.say(
                at.key("jwks").key("refresh"),
                "below 1s: the issuer would be asked for keys on every request or so; give \
                 `5m` (the default) or at least `1s`",
            );
        }
        for (claim, header) in &jwt.claim_to_headers {
            if let Err(e) = check_header_name(header) {
                self.say(at.key("claim_to_headers").key(claim), e);
            }
        }
    }

    fn peer_patterns(&mut self, at: &FieldPath, peers: &[String]) {
        for (pi, peer) in peers.iter().enumerate() {
            if peer != "*" && !spiffe_pattern_valid(peer) {
                self.say(
                    at.index(pi),
                    format!(
                        "{peer:?}: give a SPIFFE ID (`spiffe://td/ns/shop/sa/api`), a prefix \
                         ending in `*` (`spiffe://td/ns/shop/*`), or `*` for any verified peer"
                    ),
                );
            }
        }
    }

    fn path(&mut self, at: &FieldPath, path: &str) {
        if path.trim().is_empty() {
            self.say(at.clone(), "the file path is empty");
        }
    }

    fn retry(&mut self, at: &FieldPath, retry: &Retry) {
        if !(1..=10).contains(&retry.attempts) {
            self.say(
                at.key("attempts"),
                format!(
                    "{}: allowed 1 to 10 tries in all, the first one included (default 2)",
                    retry.attempts
                ),
            );
        }
        for (i, &code) in retry.status_codes.iter().enumerate() {
            if !(100..=599).contains(&code) {
                self.say(
                    at.key("status_codes").index(i),
                    format!("{code}: allowed 100 to 599"),
                );
            }
        }
        let backoff = &retry.backoff;
        if backoff.base.get().is_zero() {
            self.say(
                at.key("backoff").key("base"),
                "0s would retry at once, in step with every other client; give a time above 0, \
                 like `25ms` (the default)",
            );
        }
        if backoff.max < backoff.base {
            self.say(
                at.key("backoff").key("max"),
                format!(
                    "{} is below `base` ({}): allowed `base` or more",
                    backoff.max, backoff.base
                ),
            );
        }
        if retry.max_body_bytes > MAX_RETRY_BODY {
            self.say(
                at.key("max_body_bytes"),
                format!(
                    "{}: allowed 0 to {MAX_RETRY_BODY} (16 MiB); the default is 65536",
                    retry.max_body_bytes
                ),
            );
        }
        if retry.hedge && retry.per_try_timeout.get().is_zero() {
            self.say_at_key(
                at.key("hedge"),
                "hedging sends another attempt when `per_try_timeout` passes, and it is not \
                 set; give `per_try_timeout` (like `100ms`) or remove `hedge`",
            );
        }
    }

    fn cluster(&mut self, at: &FieldPath, cluster: &Cluster) {
        if cluster.connect_timeout.get().is_zero() {
            self.say(
                at.key("connect_timeout"),
                "0s would fail every connection: give a time above 0, like `1s` (the default)",
            );
        }
        let hashing = matches!(
            cluster.load_balancer,
            LoadBalancer::RingHash | LoadBalancer::Maglev
        );
        let balancer = match cluster.load_balancer {
            LoadBalancer::RoundRobin => "round_robin",
            LoadBalancer::Random => "random",
            LoadBalancer::LeastRequest => "least_request",
            LoadBalancer::PeakEwma => "peak_ewma",
            LoadBalancer::RingHash => "ring_hash",
            LoadBalancer::Maglev => "maglev",
        };
        match (&cluster.hash_on, hashing) {
            (None, true) => self.problems.push(Problem {
                field: at.key("hash_on"),
                at: At::Field(at.key("load_balancer")),
                message: format!(
                    "`{balancer}` needs `hash_on`: `{{ header: NAME }}`, `{{ cookie: NAME }}` \
                     or `client_ip`"
                ),
            }),
            (Some(_), false) => self.say_at_key(
                at.key("hash_on"),
                format!(
                    "`hash_on` is only for `ring_hash` and `maglev`, and this cluster uses \
                     `{balancer}`; remove it or change `load_balancer`"
                ),
            ),
            (Some(HashOn::Header(name)), true) => {
                if let Err(e) = check_header_name(name) {
                    self.say(at.key("hash_on").key("header"), e);
                }
            }
            (Some(HashOn::Cookie(name)), true) => {
                let token = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                if !token {
                    self.say(
                        at.key("hash_on").key("cookie"),
                        format!(
                            "{name:?} is not a cookie name: letters, digits and \
                             !#$%&'*+-.^_`|~ only, like `session`"
                        ),
                    );
                }
            }
            (Some(HashOn::ClientIp), true) | (None, false) => {}
        }
        if cluster.max_idle_per_endpoint > MAX_IDLE_PER_ENDPOINT {
            self.say(
                at.key("max_idle_per_endpoint"),
                format!(
                    "{}: allowed 0 (no pooling) to {MAX_IDLE_PER_ENDPOINT}; the default is 256",
                    cluster.max_idle_per_endpoint
                ),
            );
        }
        if let Some(tls) = &cluster.tls {
            self.cluster_tls(&at.key("tls"), tls);
        }
        let budget = &cluster.retry_budget.percent;
        if !(budget.is_finite() && (0.0..=1000.0).contains(budget)) {
            self.say(
                at.key("retry_budget").key("percent"),
                format!("{budget}: allowed 0 to 1000 (percent of requests; the default is 20)"),
            );
        }
        if cluster.endpoints.is_empty() {
            self.say(
                at.key("endpoints"),
                "a cluster needs at least one endpoint, like `[{ address: 127.0.0.1:9001 }]`",
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (ei, endpoint) in cluster.endpoints.iter().enumerate() {
            let at = at.key("endpoints").index(ei);
            if let Some(id) = &endpoint.identity {
                let checked = cluster
                    .tls
                    .as_ref()
                    .is_some_and(|t| !t.spiffe_ids.is_empty());
                if !checked {
                    self.say_at_key(
                        at.key("identity"),
                        "an endpoint identity is checked only by mesh mTLS: set the cluster's \
                         `tls.spiffe_ids` (and `tls.ca`)",
                    );
                } else if id.contains('*') || !spiffe_pattern_valid(id) {
                    self.say(
                        at.key("identity"),
                        format!("{id:?}: give a SPIFFE ID, like `spiffe://td/ns/shop/sa/api`"),
                    );
                }
            }
            let address = endpoint.address;
            if address.port() == 0 || address.ip().is_unspecified() {
                self.say(
                    at.key("address"),
                    format!(
                        "{address} cannot be connected to: give the endpoint's own IP and a \
                         port from 1 to 65535"
                    ),
                );
            } else if let Some(&first) = seen.get(&address) {
                self.say(
                    at.key("address"),
                    format!(
                        "{address} is already endpoints[{first}] of this cluster; list it once \
                         and raise its `weight` instead"
                    ),
                );
            } else {
                seen.insert(address, ei);
            }
            if !(1..=MAX_ENDPOINT_WEIGHT).contains(&endpoint.weight) {
                self.say(
                    at.key("weight"),
                    format!(
                        "weight {}: allowed 1 to {MAX_ENDPOINT_WEIGHT}",
                        endpoint.weight
                    ),
                );
            }
        }
        if let Some(check) = &cluster.health_check {
            self.health_check(&at.key("health_check"), check, cluster.protocol);
        }
        if let Some(outlier) = &cluster.outlier_detection {
            self.outlier_detection(&at.key("outlier_detection"), outlier);
        }
    }

    fn health_check(&mut self, at: &FieldPath, check: &HealthCheck, protocol: UpstreamProtocol) {
        let kinds = self.at_most_one(
            at,
            &[
                (check.http.is_some(), "http"),
                (check.grpc.is_some(), "grpc"),
                (check.tcp.is_some(), "tcp"),
            ],
            |first| {
                format!(
                    "a health check is exactly one of `http`, `grpc` and `tcp`, and this one \
                     already has `{first}`; keep one"
                )
            },
        );
        if kinds.is_empty() {
            self.say(
                at.clone(),
                "say how to check: `http: { path: /healthz }`, `grpc: {}` or `tcp: {}`",
            );
        }
        if let Some(http) = &check.http {
            let at = at.key("http");
            if !http.path.starts_with('/') || http.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                self.say(
                    at.key("path"),
                    format!(
                        "{:?} is not a request path: give one starting with `/`, like `/healthz`",
                        http.path
                    ),
                );
            }
            if http.expected_statuses.is_empty() {
                self.say(
                    at.key("expected_statuses"),
                    "no status would pass: give at least one, like `[200]` or `[\"200-299\"]`, or \
                     leave it out for 200 to 399",
                );
            }
            for (i, range) in http.expected_statuses.iter().enumerate() {
                if !(100..=599).contains(&range.start) || !(100..=599).contains(&range.end) {
                    self.say(
                        at.key("expected_statuses").index(i),
                        format!("{range}: HTTP statuses are 100 to 599"),
                    );
                } else if range.start > range.end {
                    self.say(
                        at.key("expected_statuses").index(i),
                        format!(
                            "{range}: a range goes from low to high, like `\"{}-{}\"`",
                            range.end, range.start
                        ),
                    );
                }
            }
            if let Some(host) = &http.host {
                self.authority(&at.key("host"), host);
            }
        }
        if let Some(grpc) = &check.grpc {
            if protocol != UpstreamProtocol::Http2 {
                self.say_at_key(
                    at.key("grpc"),
                    "gRPC health checks speak HTTP/2, and this cluster speaks `http1`; set the \
                     cluster's `protocol: http2`, or check with `http` or `tcp`",
                );
            }
            if grpc
                .service
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
            {
                self.say(
                    at.key("grpc").key("service"),
                    format!(
                        "{:?} is not a gRPC service name: give one like `grpc.health.v1.Health` \
                         or leave it out for the whole server",
                        grpc.service
                    ),
                );
            }
        }
        for (field, value, default) in [
            ("interval", check.interval, "5s"),
            ("timeout", check.timeout, "1s"),
        ] {
            if value.get().is_zero() {
                self.say(
                    at.key(field),
                    format!("0s: give a time above 0, like `{default}` (the default)"),
                );
            }
        }
        for (field, value) in [
            ("healthy_threshold", check.healthy_threshold),
            ("unhealthy_threshold", check.unhealthy_threshold),
        ] {
            if value == 0 {
                self.say(
                    at.key(field),
                    "0: give 1 or more (checks in a row that change the endpoint's state)",
                );
            }
        }
    }

    fn outlier_detection(&mut self, at: &FieldPath, outlier: &OutlierDetection) {
        for (field, value) in [
            ("interval", outlier.interval),
            ("base_ejection_time", outlier.base_ejection_time),
        ] {
            if value.get().is_zero() {
                self.say(at.key(field), "0s: give a time above 0");
            }
        }
        if outlier.max_ejection_time < outlier.base_ejection_time {
            self.say(
                at.key("max_ejection_time"),
                format!(
                    "{} is shorter than `base_ejection_time` ({}): the longest ejection must be \
                     at least the first",
                    outlier.max_ejection_time, outlier.base_ejection_time
                ),
            );
        }
        if outlier.max_ejection_percent > 100 {
            self.say(
                at.key("max_ejection_percent"),
                format!(
                    "{}: allowed 0 to 100 (percent of the cluster's endpoints)",
                    outlier.max_ejection_percent
                ),
            );
        }
        let factor = outlier.success_rate_stdev_factor;
        if !factor.is_finite() || factor < 0.0 {
            self.say(
                at.key("success_rate_stdev_factor"),
                format!(
                    "{factor}: give a number of standard deviations, 0 or more (0 disables \
                     success-rate ejection; 1.9 is the default)"
                ),
            );
        }
        let ejects =
            outlier.consecutive_5xx > 0 || outlier.consecutive_gateway_errors > 0 || factor > 0.0;
        if !ejects || outlier.max_ejection_percent == 0 {
            self.say(
                at.clone(),
                "this outlier detection can never eject an endpoint: give a \
                 `max_ejection_percent` above 0 and at least one of `consecutive_5xx`, \
                 `consecutive_gateway_errors` and `success_rate_stdev_factor` above 0, or remove \
                 `outlier_detection`",
            );
        }
    }
}

fn accept_name(format: AcceptFormat) -> &'static str {
    match format {
        AcceptFormat::W3c => "w3c",
        AcceptFormat::B3 => "b3",
    }
}

fn emit_name(format: EmitFormat) -> &'static str {
    match format {
        EmitFormat::W3c => "w3c",
        EmitFormat::B3Single => "b3_single",
        EmitFormat::B3Multi => "b3_multi",
    }
}

/// A collector URL the exporter can use: plain `http://host[:port]`, and for gRPC no path.
fn check_collector_url(url: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let example = match protocol {
        OtlpProtocol::Grpc => "http://otel-collector:4317",
        OtlpProtocol::HttpProtobuf => "http://otel-collector:4318/v1/traces",
    };
    let parsed = url
        .parse::<http::Uri>()
        .map_err(|_| format!("{url:?} is not a URL: give one like `{example}`"))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: TLS to the collector is not supported yet; send to a local collector \
                 or agent over plain HTTP, like `{example}`"
            ))
        }
        _ => {
            return Err(format!(
                "{url:?} needs `http://`: give one like `{example}`"
            ))
        }
    }
    let authority = parsed
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| format!("{url:?} has no host: give one like `{example}`"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?} carries credentials; give the host only (headers such as authorization \
             come from OTEL_EXPORTER_OTLP_HEADERS)"
        ));
    }
    if parsed.query().is_some() {
        return Err(format!("{url:?} has a query string; remove it"));
    }
    if protocol == OtlpProtocol::Grpc && !matches!(parsed.path(), "" | "/") {
        return Err(format!(
            "{url:?}: a gRPC collector is addressed by host and port only; remove the path, \
             or use `protocol: http_protobuf`"
        ));
    }
    Ok(())
}

/// How `address` collides with `other`, which [`overlaps`] it.
fn clash(other: SocketAddr, address: SocketAddr) -> String {
    if other == address {
        "is already used by".to_owned()
    } else {
        format!("overlaps {other} (an unspecified address takes the port on every interface) of")
    }
}

/// Two listener addresses that cannot both be bound: equal, or the same port and family where
/// one of them is the unspecified address.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_header_name(name: &str) -> Result<(), String> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(_) => Ok(()),
        Err(_) if name.starts_with(':') => Err(format!(
            "`{name}` is an HTTP/2 pseudo-header, not a header name; match the host with \
             `hosts`, the path with `path`, the method with `methods`"
        )),
        Err(_) => Err(format!(
            "{name:?} is not a valid header name: letters, digits and !#$%&'*+-.^_`|~ only, \
             like `x-request-id`"
        )),
    }
}

/// What a CORS origin may be: `*`, or `scheme://host[:port]` with the host possibly `*.` and a
/// domain, as browsers send it in `origin` (no path, no trailing slash).
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let form = "give it as a browser sends it: `https://app.example.com`, with `:port` when not \
                the scheme's default, or `https://*.example.com` for its subdomains, or `*`";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{origin:?} has no scheme; {form}"));
    };
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    if !scheme_ok || !host_ok {
        return Err(format!("{origin:?} is not an origin; {form}"));
    }
    Ok(())
}

/// The rules the route table applies to `match.hosts`, so a config that validates also loads.
fn check_host_pattern(pattern: &str) -> Result<(), String> {
    const WILDCARD: &str = "a wildcard is allowed only as a whole leading label, as in \
                            `*.example.com`";
    if pattern.is_empty() {
        return Err("empty host; leave `hosts` out to match any host".to_owned());
    }
    if !pattern.is_ascii() {
        return Err(format!(
            "`{pattern}` is not ASCII; write the punycode (`xn--`) form"
        ));
    }
    if pattern
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "`{pattern}` contains whitespace or a control character"
        ));
    }
    let host = host_without_port(pattern);
    if host != pattern {
        return Err(format!(
            "`{pattern}` has a port; hosts are matched without the port, write `{host}`"
        ));
    }
    match pattern.strip_prefix('*') {
        Some(suffix) if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') => {
            Err(format!("`{pattern}`: {WILDCARD}"))
        }
        Some(_) => Ok(()),
        None if pattern.contains('*') => Err(format!("`{pattern}`: {WILDCARD}")),
        None if pattern.starts_with('.') => Err(format!(
            "`{pattern}` starts with an empty label; for a wildcard write `*{pattern}`"
        )),
        None => Ok(()),
    }
}

/// `host:port` → `host`; an IPv6 literal keeps its brackets; anything else is returned whole.
fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => authority.get(..=end).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// One line out of the regex crate's multi-line error (pattern, caret, reason).
fn regex_problem(e: &regex::Error) -> String {
    let reason = match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(text.as_str())
            .trim()
            .to_owned(),
        regex::Error::CompiledTooBig(limit) => {
            format!("it compiles to more than the {limit}-byte limit; simplify it")
        }
        other => other.to_string(),
    };
    format!("invalid regular expression: {reason} (RE2 syntax, see https://docs.rs/regex)")
}

/// A SPIFFE ID, or a prefix of one ending in `*`.
fn spiffe_pattern_valid(id: &str) -> bool {
    let body = id.strip_suffix('*').unwrap_or(id);
    body.len() > "spiffe://".len() && body.starts_with("spiffe://") && !body.contains('*')
}

/// True when `name` can be neither a DNS name nor an IP address (what SNI and certificate
/// checks accept).
fn rustls_name_invalid(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    name.is_empty()
        || name.len() > 253
        || name.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_follow_the_route_table() {
        for ok in [
            "example.com",
            "*.example.com",
            "[::1]",
            "10.0.0.1",
            "API.Example.com",
        ] {
            assert_eq!(check_host_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*example.com",
            "**.a.com",
            ".example.com",
            "example.com:8080",
            "[::1]:80",
            "exa mple.com",
            "bücher.de",
        ] {
            assert!(check_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regex_errors_fit_on_one_line() {
        // Built at run time: clippy checks literal patterns, and this one is bad on purpose.
        let pattern = ["(", "a"].concat();
        let e = regex::Regex::new(&pattern).expect_err("unclosed group");
        let message = regex_problem(&e);
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("unclosed group"), "{message}");
    }

    #[test]
    fn overlapping_listener_addresses() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test address");
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
    }
}
