//! The HTTP request path of a listener, top to bottom. Reading this file tells the whole story
//! of a request:
//!
//! ```text
//! load snapshot ─► find listener ─► request id ─► trace context (server span when sampled)
//!   ─► route match ─┬─ direct response ─► reply
//!                                                ├─ redirect ─────────► reply
//!                                                └─ forward:
//!   strip hop-by-hop and trace headers ─► forwarding headers ─► rewrite ─► header edits
//!   ─► weighted split ─► balancer pick ─► mirror (sampled) ─► client span, its trace headers
//!   ─► pooled connection ─► send with route timeout
//!   ─► response: upgrade tunnel | header edits ─► streamed body (idle timer, pool return)
//!   (a route with `retry` sends through `tries.rs`: replayable body, attempts, backoff,
//!    budget, hedging; each attempt its own client span; the same send and response handling)
//! answer ─► counted ─► spans and access log end with the response body
//! ```
//!
//! Errors the proxy generates carry `x-strait-error: <cause>` and a one-line body; gRPC
//! requests get the matching `grpc-status` instead of a bare HTTP error.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use strait_config::{ForwardedMode, HashOn, UpstreamProtocol};

use crate::balance::hash_key;
use crate::http::alarm::Alarm;
use crate::http::body::{
    complete_headers, BodyError, ClientBody, FromUpstream, Gathered, RequestBody,
    RequestBodyBrokeOff, RequestBodyStalled, RequestBodyTooLarge, ResponseBody, TeeBody, Upload,
    UploadFailure, UpstreamBody,
};
use crate::http::headers::{self, Appended, Hop, X_STRAIT_ERROR};
use crate::http::pool::{ConnectError, Dial, Pool};
use crate::http::replay::ReplayBody;
use crate::http::server1::ClientUpgrade;
use crate::http::{client1, client2};
use crate::ratelimit::{self, Decision, Rate};
use crate::resilience::retry::Failure;
use crate::resilience::{Limit, Outcome};
use crate::route::normalize::{self, PathRefusal, PathRules};
use crate::route::{self, MatchInfo, RequestView, WeightedSplit};
use crate::runtime::snapshot::{
    ip_key, Backend, ClusterPlan, FaultAnswer, ListenerPlan, RateLimitPlan, RateLimitSource,
    RouteAction, RouteKind, Snapshot,
};
use crate::runtime::Worker;
use crate::telemetry::access_log::{AccessLogger, LogEntry};
use crate::telemetry::metrics::{EndpointCounters, RouteStats};
use crate::telemetry::spans::{OpenSpan, RequestTrace, UpstreamAttempt};
use crate::telemetry::trace_context;
use crate::telemetry::trace_context::TraceparentValue;
use std::sync::atomic::Ordering::Relaxed;

pub(crate) mod compress;
pub(crate) mod cors;
mod tries;
use tries::Tries;

/// Largest request body copied for a mirror; bigger bodies are forwarded but not mirrored.
const MIRROR_BODY_LIMIT: usize = 1 << 20;

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub(crate) struct Connection {
    pub worker: Rc<Worker>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The peer's IP address as header text (`x-forwarded-for`), formatted once.
    pub peer_ip: HeaderValue,
    /// Requests whose response head is not yet sent, and when the last one started: the HTTP/2
    /// idle timer closes a connection only when nothing is in flight.
    pub activity: Activity,
    /// What the TLS handshake established, on a TLS listener (set once, after it).
    pub tls: std::cell::OnceCell<TlsInfo>,
    /// The route timeout's timers, kept for the connection's next requests.
    pub timer: KeptTimer,
    /// Most streams it may have open at once, if it speaks HTTP/2.
    pub h2_streams: u32,
}

impl Connection {
    /// `https` on a TLS listener, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.get().is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// What a TLS handshake established about the client.
#[derive(Debug, Default)]
pub(crate) struct TlsInfo {
    /// The SPIFFE ID in the client's verified certificate, if it presented one.
    pub peer_identity: Option<String>,
}

/// Request activity on one connection: what an HTTP/2 connection's idle timeout asks (the
/// HTTP/1 server keeps its own deadline and never does).
#[derive(Debug)]
pub(crate) struct Activity {
    /// Streams open: see [`OpenStream`].
    pending: std::cell::Cell<usize>,
    last: std::cell::Cell<tokio::time::Instant>,
    /// Someone asks [`Activity::idle_since`]: only then is the clock read as each stream ends.
    watched: std::cell::Cell<bool>,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            pending: std::cell::Cell::new(0),
            last: std::cell::Cell::new(tokio::time::Instant::now()),
            watched: std::cell::Cell::new(false),
        }
    }

    /// When the connection went idle, or `None` while a stream is open.
    pub fn idle_since(&self) -> Option<tokio::time::Instant> {
        self.watched.set(true);
        (self.pending.get() == 0).then(|| self.last.get())
    }
}

/// Counts an HTTP/2 stream as in flight from its request until its response body is dropped
/// (sent whole, or the stream reset): a response still streaming (a download, server-sent
/// events, a gRPC stream) keeps the connection from its idle timeout. (A count up to the
/// response head alone, held by every request, let that timeout close such connections.)
pub(crate) struct OpenStream(Rc<Connection>);

impl OpenStream {
    pub(crate) fn new(conn: Rc<Connection>) -> Self {
        let activity = &conn.activity;
        activity.pending.set(activity.pending.get() + 1);
        OpenStream(conn)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let activity = &self.0.activity;
        activity
            .pending
            .set(activity.pending.get().saturating_sub(1));
        if activity.watched.get() {
            activity.last.set(tokio::time::Instant::now());
        }
    }
}

/// A connection's upstream-timeout timers, kept from one request to the next.
///
/// A timer made per request cost an insertion into tokio's timer wheel and a removal from it
/// (each under the driver's lock, ~400 instructions a request). A kept timer ([`Alarm`]) is not
/// moved to a later deadline: when its earlier one comes up it is moved then, so on a busy
/// connection the wheel is touched once per timeout period, not once per request.
/// An HTTP/1 connection needs one; an HTTP/2 connection one per concurrent stream, up to
/// [`KeptTimer::MOST`] (streams beyond that make their own). A kept timer holds the waker of
/// the request that last used it until the next one does: at most that many finished tasks'
/// memory per connection, freed with it.
#[derive(Default)]
pub(crate) struct KeptTimer(std::cell::RefCell<Vec<Alarm>>);

impl KeptTimer {
    /// The most timers a connection keeps.
    const MOST: usize = 16;

    /// A timer set to `at`: a kept one, or a new one if the connection's other requests have
    /// them all.
    fn take(&self, at: tokio::time::Instant) -> Alarm {
        match self.0.borrow_mut().pop() {
            Some(mut timer) => {
                timer.arm(at);
                timer
            }
            None => Alarm::new(at),
        }
    }

    /// Keeps `timer` for a next request (unless the connection keeps enough).
    fn give(&self, timer: Alarm) {
        let mut kept = self.0.borrow_mut();
        if kept.len() < Self::MOST {
            kept.push(timer);
        }
    }

    /// `fut`'s output, or `None` if `at` comes first. With `upload` (the request's body, and
    /// the timeout `at` was set by), the timeout counts from the body's end instead: when `at`
    /// comes while the body still arrives, or ended less than the timeout ago, the deadline
    /// moves.
    #[inline]
    fn before<'a, F: std::future::Future>(
        &'a self,
        mut at: tokio::time::Instant,
        upload: Option<(&'a Upload, std::time::Duration)>,
        mut fut: Pin<&'a mut F>,
    ) -> impl std::future::Future<Output = Option<F::Output>> + 'a {
        let mut timer = Some(self.take(at));
        std::future::poll_fn(move |cx| {
            // `None` only once this completed (the timer went back).
            let Some(t) = timer.as_mut() else {
                return Poll::Pending;
            };
            let out = match fut.as_mut().poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => loop {
                    ready!(t.poll_until(at, cx));
                    match upload.map(|(upload, limit)| upload.deadline(limit)) {
                        Some(later) if later > at => {
                            at = later;
                            t.arm(at);
                        }
                        _ => break None,
                    }
                },
            };
            if let Some(t) = timer.take() {
                self.give(t);
            }
            Poll::Ready(out)
        })
    }
}

impl std::fmt::Debug for KeptTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptTimer")
    }
}

/// Serves one request from a client connection, whose head came at `arrived` (the server's
/// clock read, used for the request's duration and timeouts).
///
/// A plain function returning an `async` block, like [`send`], so the request is held once.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(crate) fn serve(
    mut req: Request<ClientBody>,
    conn: Rc<Connection>,
    arrived: Instant,
) -> impl std::future::Future<Output = Result<Reply, Infallible>> {
    async move {
        let mut clock = RequestClock::new(arrived);
        let snapshot = conn.worker.current();
        let grpc = is_grpc(&req);
        let Some(listener) = snapshot.listener(conn.local) else {
            // The listener was removed by a reload while this connection stayed open.
            return Ok(local_reply(grpc, Cause::NoRoute, "listener removed"));
        };
        if !listener.pass_fields {
            // Something on this listener reads the request's fields: into the map with them.
            fields_into_map(&mut req);
        }
        if req.method() == Method::CONNECT {
            // Tunnels are not served. Forwarded, a CONNECT would lose its target (an authority,
            // where routes and upstream URIs have a path).
            let response = local_reply(grpc, Cause::NotImplemented, "CONNECT is not served");
            return Ok(answered_unrouted(
                listener, &req, &conn, None, response, &clock,
            ));
        }
        if let ClientBody::H2(_) = req.body() {
            // An HTTP/2 request's cookie crumbs, one field again (RFC 9113 8.2.3).
            headers::fold_repeats(req.headers_mut());
            // Without `:authority` the `host` field names the host: one, an authority's bytes,
            // as of an HTTP/1.1 request (RFC 9112 3.2), which an HTTP/1.1 upstream needs.
            let detail = match req.uri().authority() {
                None if !one_host(req.headers()) => Some("no :authority, and not one valid host"),
                // Held to a `host`'s bytes: no userinfo (RFC 9113 8.3.1), which hides the host
                // from whoever reads it otherwise.
                Some(a) if !headers::is_host(a.as_str().as_bytes()) => {
                    Some(":authority is not a host and port")
                }
                _ => None,
            };
            if let Some(detail) = detail {
                let response = local_reply(grpc, Cause::BadRequest, detail);
                return Ok(answered_unrouted(
                    listener, &req, &conn, None, response, &clock,
                ));
            }
            // `*` is the path of OPTIONS alone (RFC 9113 8.3.1), as in HTTP/1.1.
            if req.uri().path() == "*" && req.method() != Method::OPTIONS {
                let response = local_reply(grpc, Cause::BadRequest, "`*` is OPTIONS' path");
                return Ok(answered_unrouted(
                    listener, &req, &conn, None, response, &clock,
                ));
            }
        }
        // One path for authorization, routing, rewrites and the upstream alike.
        if let Some(rules) = listener.paths {
            if let Err(refusal) = normal_path(&mut req, rules) {
                let response = local_reply(grpc, Cause::BadRequest, refusal.detail());
                return Ok(answered_unrouted(
                    listener, &req, &conn, None, response, &clock,
                ));
            }
        }
        // Made on arrival, so every answer's log line has one, not just the forwarded ones; it
        // is written into the request when that is forwarded (`forward_to`), as the
        // `x-forwarded-*` fields are: routes, policies and rate limits see the request as it came.
        let came_with = proxy_fields(&req);
        let made_id = (listener.proxy_headers.request_id
            && came_with & headers::FIELD_REQUEST_ID == 0)
            .then(headers::RequestId::random);
        // A CORS preflight is the route's to answer before the token and authorization: a
        // browser sends it without credentials.
        if listener.cors && cors::is_preflight(&req) {
            if let Some(response) = preflight(&req, &conn, listener, &clock, made_id.as_ref()) {
                return Ok(response);
            }
        }
        // The token first: its claims may become headers that routes and rate limits look at.
        if let Some(jwt) = &listener.jwt {
            if let Err(refusal) = jwt.check(req.headers_mut()) {
                let mut response = local_reply(
                    grpc,
                    Cause::Unauthorized,
                    format!("bearer token {}", refusal.name().replace('_', " ")),
                );
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, crate::jwt::challenge(refusal));
                let made_id = made_id.as_ref();
                return Ok(answered_unrouted(
                    listener, &req, &conn, made_id, response, &clock,
                ));
            }
        }
        // A token's claims may be written as headers: then the map is asked, not the parse.
        let host = request_host(&mut req, listener.jwt.is_none());
        let mut trace = listener.tracing.as_ref().map(|t| {
            t.begin(
                &req,
                &listener.name,
                conn.peer,
                host.as_ref(),
                made_id.as_ref(),
            )
        });
        let (found, denied) = {
            let view = request_view(&req, host.as_ref(), &conn);
            if let Some(id) = view.peer {
                listener.peers.count(id);
            }
            // The listener's policy first, then the matched route's; the rule that denied is named.
            let denied_by = |policy: &crate::authz::Policy| {
                let verdict = policy.decide(conn.peer.ip(), &view);
                (!verdict.allowed).then(|| verdict.rule.to_owned())
            };
            let by_listener = listener.authz.as_ref().and_then(denied_by);
            let found = match by_listener {
                Some(_) => None,
                None => listener.routes.find_with_match(&view),
            };
            let by_route = found
                .as_ref()
                .and_then(|(action, _)| action.authz.as_ref())
                .and_then(denied_by);
            (found, by_listener.or(by_route))
        };
        // Asked here whether the listener logs at all: most do not, and pay no call.
        let mut log = PendingLog(
            match &listener.access_log {
                Some(_) => begin_log(
                    listener,
                    &req,
                    &conn,
                    &clock,
                    host.as_ref(),
                    trace.as_ref(),
                    made_id.as_ref(),
                ),
                None => None,
            },
            listener.access_log.as_deref(),
        );
        if let Some(rule) = denied {
            let stats = match &found {
                Some((action, _)) => {
                    if let Some(entry) = log.as_mut() {
                        entry.route = Some(Arc::clone(&action.name));
                    }
                    &action.local_stats
                }
                None => &listener.no_route,
            };
            let mut response =
                local_reply(grpc, Cause::Forbidden, format!("denied by rule {rule}"));
            if let Some((action, _)) = &found {
                cors_marked(Asked::of(action, &req).as_deref(), action, &mut response);
            }
            answered(listener, stats, log.take(), trace, &mut response, &clock);
            return Ok(response);
        }
        let Some((action, matched)) = found else {
            let mut response = local_reply(grpc, Cause::NoRoute, "no route matches the request");
            answered(
                listener,
                &listener.no_route,
                log.take(),
                trace,
                &mut response,
                &clock,
            );
            return Ok(response);
        };
        if let Some(entry) = log.as_mut() {
            entry.route = Some(Arc::clone(&action.name));
        }
        if let Some(t) = trace.as_mut() {
            t.note_route(&action.name);
        }
        tracing::trace!(listener = %listener.name, route = %action.name, "route matched");
        let asked = Asked::of(action, &req);
        if let Some(fault) = &action.fault {
            if let Some((delay, percent)) = fault.delay {
                if sampled(percent) {
                    action.local_stats.fault_delayed();
                    tokio::time::sleep(delay).await;
                    clock.fresh = false;
                }
            }
            if let Some((answer, percent)) = fault.abort {
                if sampled(percent) {
                    action.local_stats.fault_aborted();
                    let mut response = fault_reply(grpc, answer);
                    cors_marked(asked.as_deref(), action, &mut response);
                    answered(
                        listener,
                        &action.local_stats,
                        log.take(),
                        trace,
                        &mut response,
                        &clock,
                    );
                    return Ok(response);
                }
            }
        }
        if let Some(limit) = &action.rate_limit {
            if let Some(retry) = over_limit(limit, &req, &conn) {
                action.local_stats.rate_limited();
                let mut response = rate_limited_reply(grpc, retry);
                cors_marked(asked.as_deref(), action, &mut response);
                answered(
                    listener,
                    &action.local_stats,
                    log.take(),
                    trace,
                    &mut response,
                    &clock,
                );
                return Ok(response);
            }
        }
        let mut stats = &action.local_stats;
        let mut response = match &action.kind {
            RouteKind::Direct {
                status,
                body,
                content_type,
            } => {
                let mut resp = Response::new(ResponseBody::full(body.clone()));
                *resp.status_mut() = *status;
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
                Box::new(resp)
            }
            RouteKind::Redirect { redirect, status } => {
                let mut host = host.as_ref().and_then(headers::value_text).unwrap_or("");
                // A request without a host (HTTP/1.0) sent to another scheme or port: a relative
                // `Location` would keep its own, and loop. The address it reached names the
                // host instead, as nginx does.
                let local;
                if host.is_empty() && (redirect.scheme.is_some() || redirect.port.is_some()) {
                    local = conn.local.to_string();
                    host = &local;
                }
                let location = route::redirect_location(
                    redirect,
                    conn.scheme(),
                    host,
                    req.uri().path(),
                    req.uri().query(),
                );
                match HeaderValue::try_from(location) {
                    Ok(v) => {
                        let mut resp = Response::new(ResponseBody::empty());
                        *resp.status_mut() = *status;
                        resp.headers_mut().insert(header::LOCATION, v);
                        Box::new(resp)
                    }
                    Err(_) => local_reply(
                        grpc,
                        Cause::BadRequest,
                        "redirect target is not a valid URL",
                    ),
                }
            }
            RouteKind::Forward(split) => match pick_backend(split, &snapshot) {
                None => local_reply(
                    grpc,
                    Cause::NoHealthyEndpoint,
                    "every backend of the route has weight 0",
                ),
                Some((backend, cluster)) => {
                    stats = &backend.stats;
                    if let Some(entry) = log.as_mut() {
                        entry.cluster = Some(Arc::clone(&cluster.name));
                    }
                    if let Some(t) = trace.as_mut() {
                        t.note_cluster(&cluster.name);
                    }
                    if let Some(refused) = declared_too_long(&req, action.max_request_body) {
                        let mut response = local_reply(grpc, Cause::RequestBodyTooLarge, refused);
                        cors_marked(asked.as_deref(), action, &mut response);
                        answered(listener, stats, log.take(), trace, &mut response, &clock);
                        return Ok(response);
                    }
                    if let ClientBody::H2(body) = req.body() {
                        let gather =
                            |_: &usize| !grpc && !req.headers().contains_key(header::EXPECT);
                        if let Some(due) = Gathered::due(body).filter(gather) {
                            req = gathered(req, due);
                        }
                    }
                    if let Some(waiting) = body_held_back(&mut req, action.idle_timeout) {
                        if let Err((cause, detail)) = waiting.await {
                            let mut response = local_reply(grpc, cause, detail);
                            cors_marked(asked.as_deref(), action, &mut response);
                            answered(listener, stats, log.take(), trace, &mut response, &clock);
                            return Ok(response);
                        }
                    }
                    forward_to(
                        req,
                        &conn,
                        &snapshot,
                        listener,
                        action,
                        matched,
                        host,
                        made_id.as_ref(),
                        came_with,
                        grpc,
                        cluster,
                        stats,
                        &mut log,
                        trace.as_ref(),
                        &mut clock,
                    )
                    .await
                }
            },
        };
        // Compression and CORS first: the route's header edits may then change what they wrote.
        if let Some(asked) = &asked {
            asked.finish(action, &mut response);
        }
        if !action.response_headers.is_empty() {
            complete_headers(&mut response);
            action.response_headers.apply(response.headers_mut());
        }
        if let Some(via) = &listener.proxy_headers.via {
            complete_headers(&mut response);
            headers::append_via(response.headers_mut(), "1.1", via);
        }
        answered(listener, stats, log.take(), trace, &mut response, &clock);
        Ok(response)
    }
}

/// What a route's CORS policy and compression ask of the request, read before it is
/// forwarded. Boxed, and only for routes with either: the gateway's future holds a pointer
/// across its waits, not the values.
struct Asked {
    /// `origin`, for CORS.
    origin: Option<HeaderValue>,
    /// A `HEAD` (nothing to compress), and its `accept-encoding`.
    head: bool,
    accepted: Option<HeaderValue>,
}

impl Asked {
    #[inline]
    fn of(action: &RouteAction, req: &Request<ClientBody>) -> Option<Box<Asked>> {
        if action.cors.is_none() && action.compression.is_none() {
            return None;
        }
        Some(Self::read(req))
    }

    #[inline(never)]
    fn read(req: &Request<ClientBody>) -> Box<Asked> {
        let headers = req.headers();
        Box::new(Asked {
            origin: headers.get(header::ORIGIN).cloned(),
            head: req.method() == Method::HEAD,
            accepted: headers.get(header::ACCEPT_ENCODING).cloned(),
        })
    }

    /// Marks an answer of a route with a CORS policy for the request's `origin` (see
    /// [`cors::CorsPlan::mark`]): the upstream's, and the proxy's own once the route is known.
    #[inline(never)]
    fn mark(&self, action: &RouteAction, response: &mut Reply) {
        if let Some(cors) = &action.cors {
            complete_headers(response);
            cors.mark(self.origin.as_ref(), response.headers_mut());
        }
    }

    /// Compresses the route's answer when it has `compression` (see
    /// [`compress::CompressionPlan::apply`]), then marks it.
    #[inline(never)]
    fn finish(&self, action: &RouteAction, response: &mut Reply) {
        if let Some(compression) = &action.compression {
            compression.apply(self.head, self.accepted.as_ref(), response);
        }
        self.mark(action, response);
    }
}

/// Marks one of the proxy's own answers for a route's CORS policy, when the route has one
/// (`asked` is read for routes with CORS or compression).
#[inline]
fn cors_marked(asked: Option<&Asked>, action: &RouteAction, response: &mut Reply) {
    if let Some(asked) = asked {
        asked.mark(action, response);
    }
}

/// The answer to a CORS preflight when the route it matches has a policy: counted with the
/// route's requests, and logged. Apart: rare, and cold.
#[inline(never)]
fn preflight(
    req: &Request<ClientBody>,
    conn: &Connection,
    listener: &ListenerPlan,
    clock: &RequestClock,
    made_id: Option<&headers::RequestId>,
) -> Option<Reply> {
    // As `serve` reads it: the authority, else the one `host` (the fields are in the map on a
    // listener with a CORS policy).
    let host = request_host_value(req);
    let view = request_view(req, host.as_ref(), conn);
    let (action, _) = listener.routes.find_with_match(&view)?;
    let cors = action.cors.as_ref()?;
    let mut response = Box::new(cors.preflight(req));
    let mut log = begin_log(listener, req, conn, clock, host.as_ref(), None, made_id);
    if let Some(entry) = log.as_mut() {
        entry.route = Some(Arc::clone(&action.name));
    }
    answered(
        listener,
        &action.local_stats,
        log,
        None,
        &mut response,
        clock,
    );
    Some(response)
}

/// Why a request whose body declares more bytes than `most` is refused, before any of it is
/// read (a client waiting on `100 Continue` gets none).
fn declared_too_long(req: &Request<ClientBody>, most: Option<u64>) -> Option<String> {
    let most = most?;
    let declared = http_body::Body::size_hint(req.body()).lower();
    (declared > most).then(|| {
        format!("the request body of {declared} bytes is longer than the route allows ({most})")
    })
}

/// An HTTP/2 request whose body's first `due` bytes are to be read before an upstream is
/// involved (see [`Gathered`]). Apart: rare, and a request moved by value.
#[inline(never)]
fn gathered(req: Request<ClientBody>, due: usize) -> Request<ClientBody> {
    req.map(|body| match body {
        ClientBody::H2(body) => ClientBody::Gathered(Box::new(Gathered::new(body, due))),
        other => other,
    })
}

/// The wait for a request body its client holds back (see `body_sent`), if it does: an
/// HTTP/1 body in the connection's buffer, an HTTP/2 one [`Gathered`]. Apart and boxed: the
/// gateway's future holds a pointer for the rare wait, not its timer.
#[inline(never)]
#[allow(clippy::type_complexity)]
fn body_held_back(
    req: &mut Request<ClientBody>,
    idle: Option<Duration>,
) -> Option<Pin<Box<dyn std::future::Future<Output = Result<(), (Cause, &'static str)>> + '_>>> {
    match req.body_mut() {
        ClientBody::Http1(body) => {
            let due = body.held_back()?;
            Some(Box::pin(body_sent(
                move |cx| body.poll_held_back(due, cx),
                idle,
            )))
        }
        ClientBody::Gathered(body) => Some(Box::pin(body_sent(|cx| body.poll_gather(cx), idle))),
        ClientBody::H2(_) | ClientBody::Watched(..) => None,
    }
}

/// Waits for the first bytes of a request body its client holds back (see
/// `RequestBody1::held_back` and [`Gathered`]), before an upstream is involved: `poll` reads
/// them, saying when they are in and how many are. The client may pause for `idle` at most.
/// The cause and detail of the answer when they do not come.
async fn body_sent(
    mut poll: impl FnMut(&mut Context<'_>) -> (Poll<bool>, usize),
    idle: Option<Duration>,
) -> Result<(), (Cause, &'static str)> {
    let mut timer = idle.map(crate::http::body::IdleTimer::new);
    let mut seen = 0;
    std::future::poll_fn(|cx| {
        let (sent, have) = poll(cx);
        match sent {
            Poll::Ready(true) => return Poll::Ready(Ok(())),
            Poll::Ready(false) => {
                let detail = "the client closed before its request body came";
                return Poll::Ready(Err((Cause::BadRequest, detail)));
            }
            Poll::Pending => {}
        }
        if let Some(timer) = &mut timer {
            timer.active |= have > seen;
            seen = have;
            if timer.expired(cx) {
                let detail = "the request body paused for longer than the route's idle_timeout";
                return Poll::Ready(Err((Cause::RequestBodyTimeout, detail)));
            }
        }
        Poll::Pending
    })
    .await
}

/// A request's log entry until its answer takes it. Dropped with the request before that (an
/// HTTP/1 client that closed, an HTTP/2 stream reset), it is written then, with status 499
/// and `downstream_closed`, as nginx logs a client that closed its request: such requests
/// left no line at all.
struct PendingLog<'a>(Option<Box<LogEntry>>, Option<&'a AccessLogger>);

impl std::ops::Deref for PendingLog<'_> {
    type Target = Option<Box<LogEntry>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PendingLog<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for PendingLog<'_> {
    fn drop(&mut self) {
        if let (Some(mut entry), Some(logger)) = (self.0.take(), self.1) {
            entry.status = 499;
            entry.flags = "downstream_closed".to_owned();
            logger.finish(entry);
        }
    }
}

/// The last step for every answer: counted in `stats`, its server span and its log line
/// completed (both end with the body).
/// The response is changed in place: moving it in and out again cost a copy each way.
fn answered(
    listener: &ListenerPlan,
    stats: &Arc<RouteStats>,
    log: Option<Box<LogEntry>>,
    trace: Option<RequestTrace>,
    response: &mut Response<ResponseBody>,
    clock: &RequestClock,
) {
    let grpc_in_head = count_answer(stats, response, clock.elapsed());
    if let Some(span) = trace.and_then(RequestTrace::into_server_span) {
        end_with_response(span, response);
    }
    finish_log(listener, log, grpc_in_head, response);
}

/// The request's access log entry, when its listener logs it and it is sampled: its text,
/// its trace id (the trace's, else one received) and its request id (`made_id`, else the
/// client's).
fn begin_log(
    listener: &ListenerPlan,
    req: &Request<ClientBody>,
    conn: &Connection,
    clock: &RequestClock,
    host: Option<&HeaderValue>,
    trace: Option<&RequestTrace>,
    made_id: Option<&headers::RequestId>,
) -> Option<Box<LogEntry>> {
    let logger = listener.access_log.as_ref()?;
    let mut entry = logger.begin(
        clock.arrived,
        &listener.name,
        req.method(),
        host,
        req.uri().path_and_query(),
        req.version(),
        &conn.peer_ip,
        match trace {
            Some(t) => Some(t.trace_id()),
            None => trace_context::received_trace_id(req.headers()),
        },
    )?;
    // The id made on arrival, else the client's: no second lookup for the one just made.
    match made_id {
        Some(id) => entry.set_made_request_id(id),
        None => entry.set_request_id(req.headers().get(&headers::X_REQUEST_ID)),
    }
    entry.peer_identity = conn.tls.get().and_then(|t| t.peer_identity.clone());
    Some(entry)
}

/// [`answered`] for an answer made before any route was looked for: counted with the
/// listener's unrouted requests, and logged (its host as the request named it).
#[inline(never)]
fn answered_unrouted(
    listener: &ListenerPlan,
    req: &Request<ClientBody>,
    conn: &Connection,
    made_id: Option<&headers::RequestId>,
    mut response: Reply,
    clock: &RequestClock,
) -> Reply {
    let host = request_host_value(req);
    let log = begin_log(listener, req, conn, clock, host.as_ref(), None, made_id);
    answered(
        listener,
        &listener.no_route,
        log,
        None,
        &mut response,
        clock,
    );
    response
}

/// How routes and policies see `req`: `host` as `serve` read it (empty when absent or not
/// ASCII), and the verified peer of its connection. Always inlined: built apart, the view was
/// written out and read back on every request (+30 instructions).
#[inline(always)]
fn request_view<'r>(
    req: &'r Request<ClientBody>,
    host: Option<&'r HeaderValue>,
    conn: &'r Connection,
) -> RequestView<'r> {
    RequestView {
        method: req.method(),
        host: host
            .map(HeaderValue::as_bytes)
            .filter(|h| h.is_ascii())
            .unwrap_or_default(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        peer: conn.tls.get().and_then(|t| t.peer_identity.as_deref()),
    }
}

/// The request's host as the log writes it, read without taking it (see `request_host`).
fn request_host_value(req: &Request<ClientBody>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Records a span's answer; the span ends with the response body.
fn end_with_response(mut span: OpenSpan, response: &mut Response<ResponseBody>) {
    complete_headers(response);
    span.set_status(response.status().as_u16());
    if let Some(cause) = response.headers().get(&X_STRAIT_ERROR) {
        span.set_error(String::from_utf8_lossy(cause.as_bytes()).into_owned());
    }
    if let ResponseBody::Upstream(body) = response.body_mut() {
        body.end_span_with_body(span);
    }
}

/// Completes a request's access log entry with its answer: now for an answer the proxy made,
/// or when the body ends for one that streams from upstream. `grpc_in_head`: the answer's
/// `grpc-status` as [`count_answer`] found it in the head.
fn finish_log(
    listener: &ListenerPlan,
    entry: Option<Box<LogEntry>>,
    grpc_in_head: Option<u16>,
    response: &mut Response<ResponseBody>,
) {
    let (Some(logger), Some(mut entry)) = (&listener.access_log, entry) else {
        return;
    };
    entry.status = response.status().as_u16();
    entry.grpc_status = grpc_in_head;
    let headers = response.headers();
    if let ResponseBody::Full(_) = response.body() {
        // The proxy's own answers name their cause; an upstream's answer is not ours to flag
        // (and looking for the header on every answer cost a hashed lookup).
        if let Some(cause) = headers.get(&X_STRAIT_ERROR).and_then(|v| v.to_str().ok()) {
            entry.flags = cause.to_owned();
        }
    }
    match response.body_mut() {
        ResponseBody::Upstream(body) => body.log_on_completion(Arc::clone(logger), entry),
        ResponseBody::Full(bytes) => {
            entry.bytes_sent = bytes.as_ref().map_or(0, |b| b.len() as u64);
            logger.finish(entry);
        }
    }
}

/// The backend a forwarding route sends this request to, and its cluster; `None` when every
/// weight is 0. Apart from the forwarding, so the request is moved once, into
/// [`forward_to`]'s future, rather than through a wrapping one as well.
fn pick_backend<'s>(
    split: &'s WeightedSplit<Backend>,
    snapshot: &'s Snapshot,
) -> Option<(&'s Backend, &'s ClusterPlan)> {
    split
        .pick(fastrand::u32(..))
        .and_then(|b| Some((b, &**snapshot.clusters.get(b.cluster)?)))
}

/// Sends a request to `cluster` and streams the answer back.
/// A plain function returning an `async` block, like [`send`], so the arguments are held once.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn forward_to<'a>(
    mut req: Request<ClientBody>,
    conn: &'a Connection,
    snapshot: &'a Arc<Snapshot>,
    listener: &'a ListenerPlan,
    action: &'a RouteAction,
    matched: MatchInfo,
    host: Option<HeaderValue>,
    made_id: Option<&'a headers::RequestId>,
    came_with: u8,
    grpc: bool,
    cluster: &'a ClusterPlan,
    route_stats: &'a Arc<RouteStats>,
    log: &'a mut Option<Box<LogEntry>>,
    trace: Option<&'a RequestTrace>,
    clock: &'a mut RequestClock,
) -> impl std::future::Future<Output = Reply> + 'a {
    async move {
        // The answer's head may be passed on as it came (see `client1::RawHead`) when nothing
        // reads or changes its headers on the way and `server1` writes it: no upgrade, no
        // response header edits, no `via`, no trace (its span looks for an error header).
        let keep_raw = matches!(req.body(), ClientBody::Http1(body) if !body.is_upgrade())
            && trace.is_none()
            && action.response_headers.is_empty()
            && listener.proxy_headers.via.is_none();
        // `x-forwarded-for` and `-proto` may be written by the HTTP/1 client after the request's
        // own fields rather than inserted into its map (see `Appended`) when the client sent
        // neither and nothing reads or copies the map after they are made. What would: header
        // edits, a mirror, a retry policy (each attempt copies the map), a token (its claims may
        // be written as headers of any name).
        let forwarding_appended = cluster.protocol == UpstreamProtocol::Http1
            && action.request_headers.is_empty()
            && action.mirror.is_none()
            && action.retry.is_none()
            && listener.jwt.is_none()
            && came_with & headers::FIELD_X_FORWARDED == 0;
        // Made in a block: what the request was made of is dead, and takes no room in the future,
        // by the time the future waits (a named result would keep its room, too). What the
        // block makes is assigned where it is kept: returned as a tuple, it was copied out of
        // the block and again into these (~190 instructions a request).
        let (request, client_upgrade, upgrade, endpoint, addr, stats);
        let (admission, in_flight, counters, mut span, upload);
        {
            let hash = request_hash(cluster, &req, conn.peer.ip());

            // An HTTP/1.1 upgrade (seen as the head was parsed) keeps its `upgrade` headers and
            // becomes a byte tunnel on 101.
            client_upgrade = (cluster.protocol == UpstreamProtocol::Http1)
                .then(|| ClientUpgrade::of(&mut req))
                .flatten();
            upgrade = client_upgrade.is_some();

            // `server1` lets through only requests with one `host`: an origin-form request's is
            // the one it came with, and stays in place unless something below changes it.
            let mut host_in_place = matches!(req.body(), ClientBody::Http1(_))
                && req.uri().authority().is_none()
                && action.request_headers.is_empty();
            let version = version_label(req.version());
            let (mut parts, mut body) = req.into_parts();
            // The request's fields, when `server1` kept them as they came (the listener's
            // `pass_fields`): written upstream so by the HTTP/1 client. Into the map whenever
            // anything below would read or copy it (the listener's plan rules that out; this
            // holds every path to it).
            let mut own_fields = body.take_fields();
            if !forwarding_appended || trace.is_some() {
                if let Some(fields) = own_fields.take() {
                    fields_into(&fields, &mut parts.headers);
                }
            }
            // A body still to come, under a timeout: that counts from its end, and the client
            // may keep it waiting for the idle timeout only (see `Upload`). Under an HTTP/2
            // upstream, watched whatever the timeouts: how it failed is known only from here.
            let ended = http_body::Body::is_end_stream(&body);
            let per_try = action.retry.as_ref().and_then(|p| p.per_try_timeout);
            let timed = action.timeout.is_some() || per_try.is_some();
            let h2 = cluster.protocol == UpstreamProtocol::Http2;
            // A body longer than the route allows was refused by its declared length; one that
            // declared none is counted as it comes.
            let limit = action.max_request_body.filter(|&most| {
                http_body::Body::size_hint(&body)
                    .upper()
                    .is_none_or(|upper| upper > most)
            });
            upload = if !ended && (timed || action.idle_timeout.is_some() || h2 || limit.is_some())
            {
                let upload = Rc::new(Upload::new(action.idle_timeout, limit));
                body = ClientBody::Watched(Box::new(body), Rc::clone(&upload));
                Some(upload)
            } else {
                None
            };
            // Only headers named in `connection` can take the request's id with them (a new one is
            // then made below): otherwise the id logged on arrival is the one the upstream sees.
            // Not when no hop-by-hop field came (`server1` tells) and none was written since (a
            // token's claims may be): nothing to remove, and a pass over the map saved.
            let hop_fields = came_with & headers::FIELD_HOP_BY_HOP != 0 || listener.jwt.is_some();
            let id_may_change =
                (hop_fields || upgrade) && headers::strip_hop_by_hop(&mut parts.headers, upgrade);
            // (A header named in `connection` may have been `host`.)
            host_in_place &= !id_may_change;
            // Each attempt writes its own context; mirrors carry none (shadow traffic is not the trace).
            if let Some(t) = trace {
                t.strip(&mut parts.headers);
            }
            // The id made on arrival goes after the request's own fields with the `x-forwarded-*`
            // ones when those do, else into the map (unless a token's claims put one there).
            if let (Some(id), false) = (made_id, forwarding_appended) {
                if let http::header::Entry::Vacant(slot) =
                    parts.headers.entry(&headers::X_REQUEST_ID)
                {
                    slot.insert(id.to_value());
                }
            }
            // Read only for `forwarded`.
            let host_text = match listener.proxy_headers.forwarded {
                ForwardedMode::Untouched => "",
                _ => host.as_ref().and_then(headers::value_text).unwrap_or(""),
            };
            let hop = Hop {
                client_ip: conn.peer.ip(),
                client_ip_text: &conn.peer_ip,
                scheme: conn.scheme(),
                host: host_text,
                version,
            };
            // The id made on arrival is settled above; the client's is still there unless
            // `connection` named it or a token's claims replaced it.
            let id_in_place = made_id.is_some() || !id_may_change && listener.jwt.is_none();
            headers::add_forwarding_headers(
                &mut parts.headers,
                &listener.proxy_headers,
                &hop,
                id_in_place,
                forwarding_appended,
            );
            // On TLS, the client's verified identity and only that: a client cannot forge it.
            // (A request that came with one has its fields in the map: `server1` keeps them
            // apart only without it. The map is looked through whatever came: a route's header
            // edits or a token's claims may have written one since.)
            if let Some(tls) = conn.tls.get() {
                parts.headers.remove(&headers::X_FORWARDED_CLIENT_CERT);
                let wanted = listener.proxy_headers.client_cert;
                if let Some(id) = tls.peer_identity.as_ref().filter(|_| wanted) {
                    if let Ok(v) = HeaderValue::from_str(&format!("URI={id}")) {
                        parts.headers.insert(&headers::X_FORWARDED_CLIENT_CERT, v);
                    }
                }
            }
            let received = log.as_mut().map(|entry| {
                if id_may_change && made_id.is_none() {
                    // An id made just now is the one the upstream sees: log that one.
                    entry.set_request_id(parts.headers.get(&headers::X_REQUEST_ID));
                }
                Arc::clone(&entry.bytes_received)
            });

            let mut upstream_host = host.clone();
            let mut new_path: Option<String> = None;
            if let Some(rewrite) = &action.rewrite {
                if let Some(full) = &rewrite.path {
                    new_path = Some(full.clone());
                } else if let (Some(prefix), Some(len)) = (&rewrite.path_prefix, matched.prefix_len)
                {
                    new_path = Some(route::rewrite_prefix(parts.uri.path(), len, prefix));
                }
                if let Some(h) = &rewrite.host {
                    upstream_host = HeaderValue::from_str(h).ok();
                    host_in_place = false;
                }
            }
            // Only an HTTP/1.0 request comes without a host. It goes upstream as HTTP/1.1,
            // which must name one (RFC 9112 3.2; nginx refuses a request without, 400): the
            // address the client reached, which is what it would have named.
            if upstream_host.is_none() {
                upstream_host = HeaderValue::from_str(&conn.local.to_string()).ok();
                host_in_place = false;
            }
            action.request_headers.apply(&mut parts.headers);
            match upstream_uri(
                &parts.uri,
                new_path.as_deref(),
                upstream_host.as_ref(),
                cluster.protocol,
            ) {
                Ok(Some(uri)) => parts.uri = uri,
                Ok(None) => {}
                Err(message) => return local_reply(grpc, Cause::BadRequest, message),
            }
            match cluster.protocol {
                UpstreamProtocol::Http2 => {
                    parts.version = Version::HTTP_2;
                    parts.headers.remove(header::HOST);
                }
                _ => {
                    parts.version = Version::HTTP_11;
                    if let (Some(h), false) = (&upstream_host, host_in_place) {
                        parts.headers.insert(header::HOST, h.clone());
                    }
                }
            }

            if let (Some(policy), false) = (&action.retry, upgrade) {
                let mirror = action.mirror.filter(|m| sampled(m.percent)).and_then(|m| {
                    let mirror_cluster = snapshot.clusters.get(m.cluster)?;
                    let copy = MirrorCopy {
                        method: parts.method.clone(),
                        uri: parts.uri.clone(),
                        headers: parts.headers.clone(),
                        host: upstream_host.clone(),
                    };
                    Some((Arc::clone(mirror_cluster), copy))
                });
                let body = if ended {
                    if let Some((mirror_cluster, copy)) = mirror {
                        spawn_mirror(&conn.worker, mirror_cluster, copy, None, action.timeout);
                    }
                    None
                } else {
                    let whole = mirror.map(|(mirror_cluster, copy)| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        spawn_mirror(&conn.worker, mirror_cluster, copy, Some(rx), action.timeout);
                        tx
                    });
                    Some(ReplayBody::new(
                        body,
                        policy.max_body_bytes,
                        Arc::clone(route_stats),
                        received,
                        whole,
                    ))
                };
                let tries = Tries {
                    conn,
                    cluster,
                    action,
                    policy,
                    grpc,
                    hash,
                    head: parts,
                    body,
                    upload,
                    trace,
                };
                // Boxed: a retried request's state must not make every request's future larger.
                return Box::pin(tries.run(log, route_stats)).await;
            }

            let Some(picked) = cluster.balancer.pick(hash) else {
                return local_reply(grpc, Cause::NoHealthyEndpoint, "no usable endpoint");
            };
            endpoint = picked;
            let (Some(&picked_addr), Some(picked_stats)) = (
                cluster.endpoints.get(endpoint),
                cluster.balancer.stats_arc(endpoint),
            ) else {
                return local_reply(grpc, Cause::NoHealthyEndpoint, "cluster has no endpoints");
            };
            (addr, stats) = (picked_addr, picked_stats);
            if let Some(entry) = log.as_mut() {
                entry.endpoint = Some(addr);
            }

            let body = match action.mirror {
                Some(m) if fastrand::f64() * 100.0 < m.percent => {
                    match snapshot.clusters.get(m.cluster) {
                        Some(mirror_cluster) => {
                            let copy = MirrorCopy {
                                method: parts.method.clone(),
                                uri: parts.uri.clone(),
                                headers: parts.headers.clone(),
                                host: upstream_host.clone(),
                            };
                            if ended {
                                spawn_mirror(
                                    &conn.worker,
                                    Arc::clone(mirror_cluster),
                                    copy,
                                    None,
                                    action.timeout,
                                );
                                None
                            } else {
                                let (tee, copied) = TeeBody::new(
                                    body,
                                    MIRROR_BODY_LIMIT,
                                    Some(Arc::clone(route_stats)),
                                    received,
                                );
                                spawn_mirror(
                                    &conn.worker,
                                    Arc::clone(mirror_cluster),
                                    copy,
                                    Some(copied),
                                    action.timeout,
                                );
                                Some(Box::new(RequestBody::Teed(tee)))
                            }
                        }
                        None => {
                            RequestBody::Counted(body, Arc::clone(route_stats), received).boxed()
                        }
                    }
                }
                // A body that has ended (a GET's) has nothing left to send or count: it goes no
                // further (see `RequestBody::boxed`).
                _ if ended => None,
                _ => Some(Box::new(RequestBody::Counted(
                    body,
                    Arc::clone(route_stats),
                    received,
                ))),
            };
            (admission, in_flight, counters) = match start_exchange(cluster, endpoint, stats, grpc)
            {
                Ok(started) => started,
                Err(reply) => return reply,
            };
            // Written into the HTTP/1 head, or the HTTP/2 headers, as the request is made below.
            let mut traceparent = None;
            span = trace.and_then(|t| {
                let attempt = UpstreamAttempt {
                    method: &parts.method,
                    path: parts.uri.path(),
                    endpoint: addr,
                    version: parts.version,
                    cluster: &cluster.name,
                    resends: 0,
                };
                t.start_client(&mut parts.headers, &attempt, &mut traceparent)
            });
            let appended = Appended {
                request_id: made_id
                    .filter(|_| forwarding_appended)
                    .map(headers::RequestId::as_bytes),
                traceparent: traceparent.as_ref().map(TraceparentValue::as_bytes),
                received: own_fields.as_deref(),
                ..if forwarding_appended {
                    Appended::forwarding(&listener.proxy_headers, &conn.peer_ip, conn.scheme())
                } else {
                    Appended::default()
                }
            };
            request = Outgoing::new(&conn.worker.pool, cluster.protocol, parts, body, appended);
        }
        let started = clock.forwarding_start();
        let pool = &conn.worker.pool;
        // Pinned in place: the timeout then holds a pointer, not a copy of this large future.
        let sent = std::pin::pin!(send(
            pool, cluster, addr, request, upgrade, keep_raw, counters
        ));
        let outcome = match action.timeout {
            // The deadline from the clock read just above, not from a second one.
            Some(limit) => match conn
                .timer
                .before(
                    (started + limit).into(),
                    upload.as_deref().map(|u| (u, limit)),
                    sent,
                )
                .await
            {
                Some(outcome) => outcome,
                None => {
                    timed_out(cluster, endpoint, span.as_mut());
                    return local_reply(
                        grpc,
                        Cause::RequestTimeout,
                        format!("no response from {addr} within {limit:?}"),
                    );
                }
            },
            None => sent.await,
        };
        let response = match outcome {
            Ok(ok) => ok,
            Err(e) => {
                let e = e.blame(upload.as_deref());
                return send_failed(e, cluster, endpoint, counters, addr, grpc, span.as_mut()).1;
            }
        };
        let (waited, head_at) = head_received(
            cluster,
            endpoint,
            stats,
            started,
            response.status(),
            span.as_mut(),
        );
        clock.head_came(waited, head_at);
        if let Some(entry) = log.as_mut() {
            entry.upstream_duration = Some(waited);
        }

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let (parts, body) = (*response).into_parts();
                if let FromUpstream::Http1(body) = body {
                    if let Some(upstream) = body.into_upgraded() {
                        crate::runtime::busy_poll::spawn(tunnel(
                            client_upgrade,
                            upstream,
                            in_flight,
                        ));
                    }
                }
                return Box::new(Response::from_parts(parts, ResponseBody::empty()));
            }
        }
        let answer = Answer {
            response,
            in_flight,
            admission,
            span,
        };
        answer.into_client(pool, action, route_stats)
    }
}

/// Counts an attempt that got no response head in time: the cluster's counter, the endpoint's
/// outlier record, the attempt's span.
fn timed_out(cluster: &ClusterPlan, endpoint: usize, span: Option<&mut OpenSpan>) {
    cluster.counters.request_timeouts.fetch_add(1, Relaxed);
    cluster.outlier.observe(endpoint, Outcome::Timeout);
    if let Some(span) = span {
        span.set_error(Cause::RequestTimeout.name());
    }
}

/// Takes what an exchange with `endpoint` holds until its response ends: a slot of the
/// cluster's concurrent-request limit (over it: fail fast rather than pile on, `Err` is the
/// reply), a place among the endpoint's requests in flight, and its counters.
fn start_exchange<'c>(
    cluster: &'c ClusterPlan,
    endpoint: usize,
    stats: &Arc<crate::balance::EndpointStats>,
    grpc: bool,
) -> Result<
    (
        crate::resilience::Admission,
        crate::balance::InFlight,
        Option<&'c Arc<EndpointCounters>>,
    ),
    Reply,
> {
    let Some(admission) = cluster.breaker.admit(Limit::Requests) else {
        return Err(local_reply(
            grpc,
            Cause::Overflow,
            format!("cluster {} at its max requests", cluster.name),
        ));
    };
    let in_flight = stats.start_request();
    let counters = cluster.endpoint_counters.get(endpoint);
    if let Some(c) = counters {
        c.requests.fetch_add(1, Relaxed);
    }
    Ok((admission, in_flight, counters))
}

/// A response head from upstream and what the exchange holds until its body ends.
struct Answer {
    response: Sent,
    in_flight: crate::balance::InFlight,
    admission: crate::resilience::Admission,
    /// The attempt's client span, ended with the body.
    span: Option<OpenSpan>,
}

impl Answer {
    /// The answer as the client gets it: hop-by-hop headers gone, the body streamed and
    /// counted, the connection pooled again and the breaker slot given back when it ends.
    fn into_client(
        self,
        pool: &Rc<Pool>,
        action: &RouteAction,
        route_stats: &Arc<RouteStats>,
    ) -> Reply {
        let mut response = self.response;
        // An HTTP/1 head was read without them (`client1`); HTTP/2 forbids them, but a
        // translating upstream may still send some.
        if !matches!(response.body(), FromUpstream::Http1(b) if b.end_to_end_head()) {
            headers::strip_hop_by_hop(response.headers_mut(), false);
        }
        let (parts, body) = (*response).into_parts();
        let pool = Some(Rc::clone(pool));
        let mut body = UpstreamBody::new(body, Some(self.in_flight), pool, action.idle_timeout);
        body.count_bytes(Arc::clone(route_stats));
        body.hold_until_end(self.admission);
        if let Some(span) = self.span {
            body.end_span_with_body(span);
        }
        Box::new(Response::from_parts(parts, ResponseBody::Upstream(body)))
    }
}

/// Records an attempt's response head: the endpoint's latency, the status for outlier detection
/// and for the attempt's span. Returns the latency (the time since `started`) and the clock read
/// it was taken from.
fn head_received(
    cluster: &ClusterPlan,
    endpoint: usize,
    stats: &crate::balance::EndpointStats,
    started: Instant,
    status: StatusCode,
    span: Option<&mut OpenSpan>,
) -> (Duration, Instant) {
    // One clock read for the wait, the estimate's update time and the request's duration.
    let now = Instant::now();
    let waited = now.saturating_duration_since(started);
    stats.observe_latency(waited, now);
    cluster.outlier.observe(endpoint, status);
    if let Some(span) = span {
        span.set_status(status.as_u16());
    }
    (waited, now)
}

/// A request's clock reads, each made once and used twice: a clock read is ~20 ns here (5 a
/// request were 0.9 % of the proxy's CPU time).
struct RequestClock {
    /// When the request's head was taken in.
    arrived: Instant,
    /// Nothing waited since `arrived` (no injected delay): forwarding starts its clock there.
    fresh: bool,
    /// The time from `arrived` to an upstream answer's head: the request's duration.
    answered: Option<Duration>,
}

impl RequestClock {
    fn new(arrived: Instant) -> Self {
        RequestClock {
            arrived,
            fresh: true,
            answered: None,
        }
    }

    /// Where the first attempt's timeout and latency count from: the arrival, unless the
    /// request waited since (routing and header work in between take microseconds).
    fn forwarding_start(&self) -> Instant {
        if self.fresh {
            self.arrived
        } else {
            Instant::now()
        }
    }

    /// Notes that an upstream answer's head came at `at`, `waited` after
    /// [`forwarding_start`](Self::forwarding_start). For a request that did not wait
    /// (`fresh`), forwarding started at the arrival, so the request's duration is `waited`, not
    /// a second subtraction.
    fn head_came(&mut self, waited: Duration, at: Instant) {
        self.answered = Some(if self.fresh {
            waited
        } else {
            at.saturating_duration_since(self.arrived)
        });
    }

    /// The time from the request's head to its answer's: to the upstream head's arrival, or to
    /// now for an answer made here.
    fn elapsed(&self) -> Duration {
        self.answered
            .unwrap_or_else(|| Instant::now().saturating_duration_since(self.arrived))
    }
}

/// Counts a failed send (and marks the attempt's span) and says what it was: the failure
/// (`None` for failures no retry may follow: the breaker refused a connection) and the reply
/// the client gets if it is final.
fn send_failed(
    e: SendError,
    cluster: &ClusterPlan,
    endpoint: usize,
    counters: Option<&Arc<EndpointCounters>>,
    addr: SocketAddr,
    grpc: bool,
    span: Option<&mut OpenSpan>,
) -> (Option<Failure>, Reply) {
    let (failure, cause, detail) = match e {
        SendError::Connect(e @ ConnectError::Overflow { .. }) => {
            (None, Cause::Overflow, e.to_string())
        }
        // The proxy out of descriptors or memory: the endpoint is not to blame (not ejected,
        // not counted against it), and another attempt would fare no better.
        SendError::Connect(e) if e.is_local() => {
            tracing::warn!(%addr, error = %e, "cannot open an upstream connection");
            (None, Cause::ConnectFailed, e.to_string())
        }
        SendError::Connect(e) if e.is_timeout() => {
            cluster.outlier.observe(endpoint, Outcome::ConnectFailed);
            if let Some(c) = counters {
                c.connect_timeouts.fetch_add(1, Relaxed);
            }
            let failure = Some(Failure::ConnectFailed);
            (failure, Cause::ConnectTimeout, e.to_string())
        }
        SendError::Connect(e) => {
            cluster.outlier.observe(endpoint, Outcome::ConnectFailed);
            if let Some(c) = counters {
                c.connect_refused.fetch_add(1, Relaxed);
            }
            let failure = Some(Failure::ConnectFailed);
            (failure, Cause::ConnectFailed, e.to_string())
        }
        // The client's doing: the endpoint is not blamed, and no retry would fare better.
        SendError::Client(e) => (None, client_body_cause(&*e), e.to_string()),
        SendError::Upstream(e) => {
            tracing::debug!(
                cluster = %cluster.name, %addr, error = %e,
                "upstream failed before its answer"
            );
            cluster.counters.resets.fetch_add(1, Relaxed);
            cluster.outlier.observe(endpoint, Outcome::Reset);
            let failure = if refused_stream(&*e) {
                Failure::RefusedStream
            } else {
                Failure::Reset
            };
            (Some(failure), Cause::UpstreamReset, format!("{addr}: {e}"))
        }
    };
    if let Some(span) = span {
        span.set_error(cause.name());
    }
    (failure, local_reply(grpc, cause, detail))
}

/// The first error of type `T` in `e`'s chain (`e` itself, or one it wraps).
pub(crate) fn find_in_chain<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The answer to a request whose client's body failed: it stalled, it was too long, or it
/// broke off.
fn client_body_cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    if find_in_chain::<RequestBodyStalled>(e).is_some() {
        Cause::RequestBodyTimeout
    } else if find_in_chain::<RequestBodyTooLarge>(e).is_some() {
        Cause::RequestBodyTooLarge
    } else {
        Cause::BadRequest
    }
}

/// True when an HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it did not process the
/// request, so sending it again is safe whatever the method.
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    find_in_chain::<h2::Error>(e).is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Takes a token for the request's key; `Some` (the rate and the wait) when it is over the
/// limit. Requests without the key (a missing header) are not limited.
fn over_limit<B>(
    limit: &RateLimitPlan,
    req: &Request<B>,
    conn: &Connection,
) -> Option<(Rate, u64)> {
    let key = match &limit.key {
        RateLimitSource::ClientIp => ip_key(conn.peer.ip()),
        RateLimitSource::Route => 1,
        RateLimitSource::Header(name) => hash_key(req.headers().get(name)?.as_bytes()),
        RateLimitSource::Peer => hash_key(conn.tls.get()?.peer_identity.as_deref()?.as_bytes()),
    };
    let rate = limit.rate_for(key);
    match limit.limiter.check(key, rate, ratelimit::now_nanos()) {
        Decision::Allow { .. } => None,
        Decision::Deny { retry_after_nanos } => Some((rate, retry_after_nanos)),
    }
}

/// 429 (gRPC `RESOURCE_EXHAUSTED`) with `retry-after` and the IETF `RateLimit-Policy` and
/// `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers): quota `q` per window `w`
/// seconds, nothing `r`emaining, `t` seconds until the next request is allowed.
fn rate_limited_reply(grpc: bool, (rate, retry_nanos): (Rate, u64)) -> Reply {
    let retry_secs = retry_nanos.div_ceil(1_000_000_000).max(1);
    let window = (f64::from(rate.burst()) / rate.per_second())
        .ceil()
        .max(1.0) as u64;
    let text = format!(
        "rate_limited: over {} requests per second; retry in {retry_secs}s",
        rate.per_second()
    );
    let mut resp = proxy_reply(grpc, StatusCode::TOO_MANY_REQUESTS, 8, "rate_limited", text);
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs));
    if let Ok(v) = HeaderValue::from_str(&format!("\"default\";q={};w={window}", rate.burst())) {
        h.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"default\";r=0;t={retry_secs}")) {
        h.insert("ratelimit", v);
    }
    resp
}

/// Draws a sample: true for `percent` % of calls.
fn sampled(percent: f64) -> bool {
    percent >= 100.0 || fastrand::f64() * 100.0 < percent
}

/// The answer of an injected failure. gRPC clients get HTTP 200 with `grpc-status`; others the
/// HTTP status (a gRPC status configured for them is mapped to its usual HTTP equivalent).
fn fault_reply(grpc: bool, answer: FaultAnswer) -> Reply {
    let (status, grpc_status) = match answer {
        FaultAnswer::Http(status) => (status, http_to_grpc(status)),
        FaultAnswer::Grpc(code) => (grpc_to_http(code), code),
    };
    proxy_reply(
        grpc,
        status,
        grpc_status,
        "fault_abort",
        "fault_abort: fault injected".to_owned(),
    )
}

/// gRPC's mapping of HTTP statuses to gRPC codes.
fn http_to_grpc(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The HTTP status usually given for a gRPC code.
fn grpc_to_http(code: u16) -> StatusCode {
    match code {
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        16 => StatusCode::UNAUTHORIZED,
        7 => StatusCode::FORBIDDEN,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        4 => StatusCode::GATEWAY_TIMEOUT,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A gRPC answer: its content type says so (a gRPC status is looked for only there).
fn is_grpc_answer(map: &http::HeaderMap) -> bool {
    map.get(header::CONTENT_TYPE)
        .is_some_and(|v| headers::is_grpc_content_type(v.as_bytes()))
}

/// `grpc-status` of a head or trailers.
fn grpc_status_in(map: &http::HeaderMap) -> Option<u16> {
    map.get(&headers::GRPC_STATUS)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Counts an answer: its time to head now; its status now, or for a gRPC answer whose
/// grpc-status comes in trailers, when the body brings them. Returns the `grpc-status` of a
/// gRPC answer's head (a trailers-only answer), for the access log.
fn count_answer(
    stats: &Arc<RouteStats>,
    response: &mut Response<ResponseBody>,
    elapsed: Duration,
) -> Option<u16> {
    let status = response.status().as_u16();
    stats.observe(status, elapsed);
    let grpc = is_grpc_answer(response.headers());
    let grpc_in_head = grpc.then(|| grpc_status_in(response.headers())).flatten();
    let grpc_answer = grpc_in_head.is_none() && grpc;
    match response.body_mut() {
        ResponseBody::Upstream(body) if grpc_answer => {
            body.count_grpc_status_from_trailers(Arc::clone(stats))
        }
        _ => stats.count(status, grpc_in_head),
    }
    grpc_in_head
}

/// Why sending upstream failed.
enum SendError {
    Connect(ConnectError),
    Upstream(BodyError),
    /// The client's request body failed on the way (it stalled or broke off): not the
    /// upstream's doing.
    Client(BodyError),
}

impl SendError {
    /// The client's failure when its body failed (see `Upload::failure`), whatever the
    /// upstream's side made of it.
    fn blame(self, upload: Option<&Upload>) -> SendError {
        let SendError::Upstream(e) = self else {
            return self;
        };
        match upload.and_then(Upload::failure) {
            Some(UploadFailure::Stalled(limit)) => {
                SendError::Client(Box::new(RequestBodyStalled(limit)))
            }
            Some(UploadFailure::BrokeOff) => SendError::Client(Box::new(RequestBodyBrokeOff)),
            Some(UploadFailure::TooLarge(limit)) => {
                SendError::Client(Box::new(RequestBodyTooLarge(limit)))
            }
            None => SendError::Upstream(e),
        }
    }

    /// An HTTP/1 exchange's failure, told apart by whose it was.
    fn from_http1(error: client1::Http1Error) -> Self {
        match error {
            client1::Http1Error::RequestBody(e) => SendError::Client(e),
            other => SendError::Upstream(Box::new(other)),
        }
    }
}

/// An upstream's response head, boxed: `forward_to` moved it (160 bytes) through the send
/// future's output, the route timeout's, the match on both and `Answer`, nine copies a request
/// (~250 instructions) where the box costs an allocation (~50).
type Sent = Box<Response<FromUpstream>>;

/// The answer for the client, boxed: 256 bytes, which `forward_to`, `serve` and `server1` each
/// moved through their futures' outputs and locals, six copies a request (~180 instructions)
/// where the box costs an allocation. The proxy's own answers ([`local_reply`]) are made in
/// their box.
pub(crate) type Reply = Box<Response<ResponseBody>>;

/// A request as [`send`] takes it: encoded for an HTTP/1 connection, or whole for HTTP/2's
/// (boxed: the HTTP/1 request would otherwise be moved at the size of HTTP/2's).
pub(crate) enum Outgoing {
    Http1(client1::Encoded),
    Http2(Box<Request<RequestBody>>),
}

impl Outgoing {
    /// The request made for an upstream speaking `protocol`, with `appended`'s fields after
    /// its own. An HTTP/1 head is encoded here, before the future that sends it exists: that
    /// future then holds the head's bytes rather than the request's parts, which were moved
    /// four times on the way (~150 instructions a request), and the map goes back to the spare
    /// ones at once.
    fn new(
        pool: &Pool,
        protocol: UpstreamProtocol,
        parts: http::request::Parts,
        body: Option<Box<RequestBody>>,
        appended: Appended<'_>,
    ) -> Self {
        match protocol {
            UpstreamProtocol::Http2 => {
                let body = body.map_or_else(RequestBody::empty, |b| *b);
                let mut request = Box::new(Request::from_parts(parts, body));
                appended.insert_into(request.headers_mut());
                Outgoing::Http2(request)
            }
            _ => {
                let encoded = pool.encode_http1(&parts, body, appended);
                headers::give_map(parts.headers);
                Outgoing::Http1(encoded)
            }
        }
    }
}

/// Puts an HTTP/1 request's fields that `server1` kept as they came into its map, for a
/// listener where something reads or changes them (see `ListenerPlan::pass_fields`).
fn fields_into_map(req: &mut Request<ClientBody>) {
    if let Some(fields) = req.body_mut().take_fields() {
        fields_into(&fields, req.headers_mut());
    }
}

/// Puts `fields` into `map`, ahead of what it holds. An empty map (the request's own fields
/// were all kept apart) is replaced by one taken with room for them and for the fields the
/// proxy adds.
fn fields_into(fields: &client1::RawHead, map: &mut http::HeaderMap) {
    if map.is_empty() {
        headers::put_map(map, fields.to_map(client1::RAW_FIELDS + 4));
    } else {
        fields.fill(map);
    }
}

/// [`send`] to an HTTP/2 upstream. The pooled connection was going away (its upstream sent
/// GOAWAY, as servers do to age connections out) or gone, and opened no stream; or the upstream
/// refused the stream unprocessed (`client2::refused_unprocessed`): the request goes again,
/// whatever its method, on whichever connection has room (one going away was retired from the
/// pool; one that refused a stream was not). An upstream that tells all its connections to go
/// away at once (nginx's reload, to its old worker's) may refuse it on the next one too: it
/// goes again each time, up to [`REFUSED_RESENDS`] times. A function of its own, so that its
/// loop does not shape the state of [`send`]'s HTTP/1 side.
#[allow(clippy::manual_async_fn)]
fn send_http2<'a>(
    pool: &'a Pool,
    dial: impl Fn() -> Dial<'a> + 'a,
    mut request: Box<Request<RequestBody>>,
) -> impl std::future::Future<Output = Result<Sent, SendError>> + 'a {
    async move {
        let mut resends = 0;
        loop {
            let lease = pool.http2(dial()).await.map_err(SendError::Connect)?;
            // A failure the client's body caused shows here as the stream's reset (the body's
            // sender resets it): `SendError::blame` tells it apart.
            let failed = match client2::send(lease, request).await {
                Ok(response) => return Ok(Box::new(response.map(FromUpstream::Http2))),
                Err(failed) => failed,
            };
            match failed.unsent {
                Some(unsent) if resends < REFUSED_RESENDS => {
                    resends += 1;
                    request = unsent;
                }
                _ => return Err(SendError::Upstream(Box::new(failed.error))),
            }
        }
    }
}

/// The most times a request an HTTP/2 upstream refused unprocessed goes again (see
/// [`send_http2`]), or a GET whose reused connection ended under it (see `client2::send`).
/// Each refusal by `GOAWAY`, and each end, retires a connection, so this also bounds how many
/// connections one request tries when an upstream refuses on every connection.
const REFUSED_RESENDS: u32 = 3;

/// Sends on a pooled connection. A request that a reused HTTP/1 connection did not take (the
/// upstream closed it while idle) goes again on a new connection: it was never sent, so this is
/// safe for any method. So does one an HTTP/2 upstream refused unprocessed, up to
/// [`REFUSED_RESENDS`] times ([`send_http2`]).
///
/// A plain function returning an `async` block: an `async fn` would hold its arguments twice
/// (as passed, and as its locals), and this future is moved by value on every request.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
fn send<'a>(
    pool: &'a Pool,
    cluster: &'a ClusterPlan,
    addr: SocketAddr,
    request: Outgoing,
    upgrade: bool,
    keep_raw: bool,
    counters: Option<&'a Arc<EndpointCounters>>,
) -> impl std::future::Future<Output = Result<Sent, SendError>> + 'a {
    async move {
        // Made at each checkout, not held: the future holds what it is made of already.
        let dial = || Dial {
            addr,
            connect_timeout: cluster.connect_timeout,
            keep: cluster.keep,
            breaker: &cluster.breaker,
            tls: cluster.tls.as_deref(),
            counters,
        };
        match request {
            Outgoing::Http2(request) => send_http2(pool, dial, request).await,
            Outgoing::Http1(request) => {
                // `fresh`: a new connection even when an idle one is there.
                let checkout = |fresh: bool| pool.http1(dial(), fresh);
                let conn = checkout(false).await.map_err(SendError::Connect)?;
                // Only the encoded request is kept from a failure: the future holds no more.
                let unsent = match client1::send(conn, request, upgrade, keep_raw).await {
                    Ok(response) => return Ok(Box::new(response.map(FromUpstream::Http1))),
                    Err(client1::SendFailed {
                        unsent: Some(unsent),
                        ..
                    }) => unsent,
                    Err(failed) => return Err(SendError::from_http1(failed.error)),
                };
                let conn = checkout(true).await.map_err(SendError::Connect)?;
                client1::send(conn, unsent, upgrade, keep_raw)
                    .await
                    .map(|response| Box::new(response.map(FromUpstream::Http1)))
                    .map_err(|failed| SendError::from_http1(failed.error))
            }
        }
    }
}

/// Copies bytes both ways once client and upstream have both switched protocols.
async fn tunnel(
    client: ClientUpgrade,
    mut upstream: client1::Upgraded1,
    _in_flight: crate::balance::InFlight,
) {
    if let Err(e) = client.tunnel(&mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// The request and headers a mirror copy is made of.
struct MirrorCopy {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
    host: Option<HeaderValue>,
}

/// Sends a copy of a request to the mirror cluster once its body has streamed; the answer is
/// read and dropped. Nothing here can affect the client's request.
fn spawn_mirror(
    worker: &Rc<Worker>,
    cluster: Arc<ClusterPlan>,
    copy: MirrorCopy,
    body: Option<tokio::sync::oneshot::Receiver<Bytes>>,
    timeout: Option<std::time::Duration>,
) {
    let worker = Rc::clone(worker);
    crate::runtime::busy_poll::spawn(async move {
        let body = match body {
            Some(rx) => match rx.await {
                Ok(b) => b,
                Err(_) => {
                    cluster.counters.mirrors[2].fetch_add(1, Relaxed);
                    tracing::debug!(cluster = %cluster.name, "mirror skipped: body too large or failed");
                    return;
                }
            },
            None => Bytes::new(),
        };
        let Some(&addr) = (cluster.balancer.pick(None)).and_then(|e| cluster.endpoints.get(e))
        else {
            cluster.counters.mirrors[1].fetch_add(1, Relaxed);
            return;
        };
        let shadow_host = copy
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(shadow_host);
        let mut headers = copy.headers;
        let mut uri = copy.uri;
        if let Some(h) = shadow_host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok())
        {
            if let Ok(Some(new)) = upstream_uri(&uri, None, Some(&h), cluster.protocol) {
                uri = new;
            }
            if cluster.protocol == UpstreamProtocol::Http2 {
                headers.remove(header::HOST);
            } else {
                headers.insert(header::HOST, h);
            }
        }
        let mut request = Request::new(RequestBody::Full((!body.is_empty()).then_some(body)));
        *request.method_mut() = copy.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        *request.version_mut() = match cluster.protocol {
            UpstreamProtocol::Http2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let (parts, body) = request.into_parts();
        let request = Outgoing::new(
            &worker.pool,
            cluster.protocol,
            parts,
            body.boxed(),
            Appended::default(),
        );
        let limit = timeout.unwrap_or(std::time::Duration::from_secs(15));
        let exchange = async {
            let response = send(&worker.pool, &cluster, addr, request, false, false, None)
                .await
                .ok()?;
            let pool = Some(Rc::clone(&worker.pool));
            let body = UpstreamBody::new((*response).into_body(), None, pool, None);
            http_body_util::BodyExt::collect(body).await.ok()
        };
        let answered = tokio::time::timeout(limit, exchange).await.ok().flatten();
        cluster.counters.mirrors[usize::from(answered.is_none())].fetch_add(1, Relaxed);
        if answered.is_none() {
            tracing::debug!(cluster = %cluster.name, %addr, "mirror request failed");
        }
    });
}

/// `api.example.com:8080` → `api.example.com-shadow:8080` (the shadow marker goes on the name).
fn shadow_host(host: &str) -> String {
    let name = route::host_without_port(host);
    let port = &host[name.len()..];
    format!("{name}-shadow{port}")
}

/// Whether `headers` hold one `host`, with an authority's bytes.
fn one_host(headers: &http::HeaderMap) -> bool {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => headers::is_host(host.as_bytes()),
        _ => false,
    }
}

/// The request's host: `:authority` for HTTP/2 (and absolute-form HTTP/1), else `Host`: as
/// `server1` parsed it while the headers are still as they came (`as_parsed`).
fn request_host(req: &mut Request<ClientBody>, as_parsed: bool) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        // Carved from the worker's shared block: every HTTP/2 request has an authority, and a
        // value of its own was an allocation each.
        return headers::made_value(authority.as_str().as_bytes());
    }
    if let (true, ClientBody::Http1(body)) = (as_parsed, req.body_mut()) {
        return body.take_host();
    }
    req.headers().get(header::HOST).cloned()
}

/// Puts the request's path in the normal form `rules` ask for (see [`normalize`]), keeping its
/// query, scheme and authority. Most paths are normal already: one pass over them, no URI
/// built.
#[inline]
fn normal_path(req: &mut Request<ClientBody>, rules: PathRules) -> Result<(), PathRefusal> {
    let Some(path) = normalize::normalize(req.uri().path(), rules)? else {
        return Ok(());
    };
    let mut parts = req.uri().clone().into_parts();
    let joined = match parts.path_and_query.as_ref().and_then(PathAndQuery::query) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    parts.path_and_query =
        Some(PathAndQuery::try_from(joined).map_err(|_| PathRefusal::Unbuildable)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| PathRefusal::Unbuildable)?;
    Ok(())
}

/// The URI sent upstream: origin-form for HTTP/1 (the host travels in `Host`), absolute for
/// HTTP/2 (`:scheme` and `:authority` are required there). `None` when it is `uri` itself.
fn upstream_uri(
    uri: &Uri,
    new_path: Option<&str>,
    host: Option<&HeaderValue>,
    protocol: UpstreamProtocol,
) -> Result<Option<Uri>, &'static str> {
    // The usual case, an HTTP/1 request in origin form (`/path?q`) to an HTTP/1 cluster with no
    // rewrite, goes as it came: no URI built anew, nor a clone (~90 instructions with the
    // original's drop).
    let origin_form =
        uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some();
    if new_path.is_none() && protocol != UpstreamProtocol::Http2 && origin_form {
        return Ok(None);
    }
    let path_and_query = match new_path {
        Some(path) => {
            let joined = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            PathAndQuery::try_from(joined).map_err(|_| "rewritten path is not a valid URI path")?
        }
        None => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut builder = Uri::builder();
    if protocol == UpstreamProtocol::Http2 {
        let authority = host
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .ok_or("request has no valid host")?;
        builder = builder.scheme(Scheme::HTTP).authority(authority);
    }
    builder
        .path_and_query(path_and_query)
        .build()
        .map(Some)
        .map_err(|_| "invalid request URI")
}

/// The value a hashing balancer hashes, when the cluster has one and the request carries it.
fn request_hash<B>(cluster: &ClusterPlan, req: &Request<B>, client_ip: IpAddr) -> Option<u64> {
    match cluster.hash_on.as_ref()? {
        HashOn::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashOn::Cookie(name) => cookie(req.headers(), name).map(|v| hash_key(v.as_bytes())),
        HashOn::ClientIp => Some(match client_ip {
            IpAddr::V4(v4) => hash_key(&v4.octets()),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        }),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The value of cookie `name` from the `cookie` headers.
fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// Which of the fields the proxy writes itself (`x-request-id`, `x-forwarded-for`,
/// `x-forwarded-proto`) the request came with, and whether a hop-by-hop one came: noted by
/// `server1` as it parsed the head, or found in one pass over the names of a request the h2
/// crate parsed.
fn proxy_fields(req: &Request<ClientBody>) -> u8 {
    match req.body() {
        ClientBody::Http1(body) => body.proxy_fields(),
        ClientBody::H2(_) | ClientBody::Gathered(_) | ClientBody::Watched(..) => {
            headers::proxy_fields_in(req.headers())
        }
    }
}

fn is_grpc(req: &Request<ClientBody>) -> bool {
    match req.body() {
        // Seen as the head was parsed.
        ClientBody::Http1(body) => body.is_grpc(),
        ClientBody::H2(_) | ClientBody::Gathered(_) | ClientBody::Watched(..) => req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| headers::is_grpc_content_type(v.as_bytes())),
    }
}

fn version_label(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "2",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

/// Causes of replies the proxy makes itself; the name is the `x-strait-error` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    NoRoute,
    BadRequest,
    Unauthorized,
    Forbidden,
    NoHealthyEndpoint,
    Overflow,
    ConnectFailed,
    ConnectTimeout,
    RequestTimeout,
    RequestBodyTimeout,
    RequestBodyTooLarge,
    UpstreamReset,
    NotImplemented,
}

impl Cause {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cause::NoRoute => "no_route",
            Cause::Forbidden => "forbidden",
            Cause::Unauthorized => "unauthorized",
            Cause::BadRequest => "bad_request",
            Cause::NoHealthyEndpoint => "no_healthy_endpoint",
            Cause::Overflow => "overflow",
            Cause::ConnectFailed => "connect_failed",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::RequestTimeout => "request_timeout",
            Cause::RequestBodyTimeout => "request_body_timeout",
            Cause::RequestBodyTooLarge => "request_body_too_large",
            Cause::UpstreamReset => "upstream_reset",
            Cause::NotImplemented => "not_implemented",
        }
    }

    pub(crate) fn status(self) -> StatusCode {
        match self {
            Cause::NoRoute => StatusCode::NOT_FOUND,
            Cause::Forbidden => StatusCode::FORBIDDEN,
            Cause::Unauthorized => StatusCode::UNAUTHORIZED,
            Cause::BadRequest => StatusCode::BAD_REQUEST,
            Cause::NoHealthyEndpoint
            | Cause::ConnectFailed
            | Cause::ConnectTimeout
            | Cause::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            Cause::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Cause::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Cause::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Cause::UpstreamReset => StatusCode::BAD_GATEWAY,
            Cause::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The gRPC status a gRPC client gets instead (gRPC's HTTP-to-status mapping).
    fn grpc_status(self) -> u16 {
        match self {
            Cause::NoRoute | Cause::NotImplemented => 12, // UNIMPLEMENTED
            Cause::Forbidden => 7,                        // PERMISSION_DENIED
            Cause::Unauthorized => 16,                    // UNAUTHENTICATED
            Cause::BadRequest => 13,                      // INTERNAL
            Cause::RequestTimeout | Cause::RequestBodyTimeout => 4, // DEADLINE_EXCEEDED
            Cause::RequestBodyTooLarge => 8,              // RESOURCE_EXHAUSTED
            _ => 14,                                      // UNAVAILABLE
        }
    }
}

/// A reply made by the proxy: status, `x-strait-error`, and a one-line body saying what
/// happened. gRPC clients get HTTP 200 with `grpc-status`/`grpc-message`, which is what their
/// libraries read.
pub(crate) fn local_reply(grpc: bool, cause: Cause, detail: impl std::fmt::Display) -> Reply {
    let text = format!("{}: {detail}", cause.name());
    proxy_reply(
        grpc,
        cause.status(),
        cause.grpc_status(),
        cause.name(),
        text,
    )
}

/// An answer the proxy makes itself, shaped for the client: gRPC clients get HTTP 200 with
/// `grpc-status` and `grpc-message`, others `status` with `text` as the body. Both carry
/// `x-strait-error: <cause>`.
fn proxy_reply(
    grpc: bool,
    status: StatusCode,
    grpc_status: u16,
    cause: &'static str,
    text: String,
) -> Reply {
    let mut resp = if grpc {
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(grpc_status));
        let printable = text.replace(|c: char| !c.is_ascii_graphic() && c != ' ', "");
        if let Ok(v) = HeaderValue::from_str(&printable) {
            h.insert("grpc-message", v);
        }
        resp
    } else {
        let mut resp = Response::new(ResponseBody::full(text + "\n"));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    resp.headers_mut()
        .insert(X_STRAIT_ERROR.clone(), HeaderValue::from_static(cause));
    Box::new(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shadow_marker_goes_before_the_port() {
        assert_eq!(shadow_host("api.example.com"), "api.example.com-shadow");
        assert_eq!(
            shadow_host("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
    }

    #[test]
    fn upstream_uris_fit_the_protocol() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        let host = HeaderValue::from_static("svc.local:80");
        let made = |uri: &Uri, path, host, protocol| {
            upstream_uri(uri, path, host, protocol).map(|new| new.unwrap_or_else(|| uri.clone()))
        };
        let h1 = made(&uri, Some("/v1/b"), Some(&host), UpstreamProtocol::Http1).unwrap();
        assert_eq!(h1, "/v1/b?x=1");
        let h2 = made(&uri, None, Some(&host), UpstreamProtocol::Http2).unwrap();
        assert_eq!(h2, "http://svc.local:80/a/b?x=1");
        assert!(upstream_uri(&uri, None, None, UpstreamProtocol::Http2).is_err());
        // Unchanged for HTTP/1 (the request's own goes); an absolute-form request (a forward
        // proxy's) loses its scheme and authority.
        assert_eq!(
            upstream_uri(&uri, None, Some(&host), UpstreamProtocol::Http1),
            Ok(None)
        );
        let absolute: Uri = "http://other.example/a?y".parse().unwrap();
        let h1 = made(&absolute, None, Some(&host), UpstreamProtocol::Http1).unwrap();
        assert_eq!(h1, "/a?y");
        assert!(h1.scheme().is_none() && h1.authority().is_none());
        let star: Uri = "*".parse().unwrap();
        let h1 = made(&star, None, Some(&host), UpstreamProtocol::Http1).unwrap();
        assert_eq!(h1, "*");
    }

    #[test]
    fn cookies_are_found_among_several() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "session"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn grpc_clients_get_grpc_status() {
        let r = local_reply(true, Cause::RequestTimeout, "slow");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "4");
        let r = local_reply(false, Cause::ConnectFailed, "refused");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["x-strait-error"], "connect_failed");
    }
}
#[cfg(all(test, target_pointer_width = "64"))]
mod sizes {
    /// What `send` is given is moved into its future and on into the exchange's, once per
    /// request: a head's bytes and a pointer to any body, not the request's parts.
    #[test]
    fn a_request_goes_to_send_small() {
        assert!(std::mem::size_of::<super::Outgoing>() <= 80);
        assert!(std::mem::size_of::<crate::http::client1::Encoded>() <= 80);
    }
}
