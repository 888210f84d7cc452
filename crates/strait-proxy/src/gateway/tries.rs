//! Retries and hedging: one request sent as several attempts, on routes with `retry`.
//!
//! ```text
//! attempt ─► answer good? ─► client
//!        └─► failure: policy retries it? attempts left? body still replayable? the server's
//!            pushback and the backoff end before the route timeout? budget and the breaker's
//!            retry slot allow it? ─► wait ─► attempt (another endpoint when there is one)
//! hedging: per-try timeout passes ─► another attempt alongside; first good answer wins
//! ```
//!
//! Every "no" returns the last failure as the client's answer (the upstream's own response when
//! there was one), and each reason a retry was not made is counted.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use http::Request;

use super::{
    head_received, local_reply, send, send_failed, start_exchange, timed_out, Answer, Cause,
    Connection, Outgoing, Reply,
};
use crate::http::body::{RequestBody, Upload};
use crate::http::headers::Appended;
use crate::http::replay::ReplayBody;
use crate::ratelimit;
use crate::resilience::retry::{pushback, Failure, Pushback, RetryPolicy};
use crate::resilience::{Admission, Limit};
use crate::runtime::snapshot::{ClusterPlan, RouteAction};
use crate::telemetry::access_log::LogEntry;
use crate::telemetry::metrics::RouteStats;
use crate::telemetry::spans::{RequestTrace, UpstreamAttempt};
use crate::telemetry::trace_context::TraceparentValue;

/// Longest `retry-after`/`grpc-retry-pushback-ms` honoured on a route without a timeout; a
/// server asking for more is not retried.
const MAX_PUSHBACK: Duration = Duration::from_secs(60);

/// One request on its way to a cluster, ready to be sent as many times as its policy allows.
pub(super) struct Tries<'a> {
    pub conn: &'a Connection,
    pub cluster: &'a ClusterPlan,
    pub action: &'a RouteAction,
    pub policy: &'a RetryPolicy,
    pub grpc: bool,
    pub hash: Option<u64>,
    /// The request head as every attempt sends it.
    pub head: http::request::Parts,
    /// The body with its replay buffer; `None` for requests without a body.
    pub body: Option<ReplayBody>,
    /// When the client's body ended: the route and per-try timeouts count from then.
    pub upload: Option<Rc<Upload>>,
    /// The request's trace: each attempt is a client span of its own.
    pub trace: Option<&'a RequestTrace>,
}

/// What became of one attempt.
enum Attempted {
    /// A response head: a good answer, or a failure by its status.
    Answered(Answer, usize),
    /// No response head: the failure (`None` when no retry may follow) and the client's reply
    /// if it is the last word, and the endpoint tried.
    /// (The reply boxed: it is twice the size of the answered variant's.)
    Failed(Option<Failure>, Reply, usize),
}

type Attempt<'a> = Pin<Box<dyn Future<Output = Attempted> + 'a>>;

// Lives only between a poll and its match: the size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Done(Attempted),
    HedgeDue,
}

fn now_secs() -> u64 {
    ratelimit::now_nanos() / 1_000_000_000
}

impl<'a> Tries<'a> {
    /// Sends the request until an answer is good or no retry may follow, within the route
    /// timeout.
    pub async fn run(
        self,
        log: &mut Option<Box<LogEntry>>,
        route_stats: &Arc<RouteStats>,
    ) -> Reply {
        self.cluster.retry_budget.deposit(now_secs());
        let deadline = self.action.timeout.map(|t| Instant::now() + t);
        let work = std::pin::pin!(self.attempts(deadline, log, route_stats));
        // The connection's kept timer, as for a request sent once.
        match self.action.timeout.zip(deadline) {
            Some((limit, at)) => match (self.conn.timer)
                .before(at.into(), self.upload.as_deref().map(|u| (u, limit)), work)
                .await
            {
                Some(response) => response,
                None => {
                    self.cluster.counters.request_timeouts.fetch_add(1, Relaxed);
                    local_reply(
                        self.grpc,
                        Cause::RequestTimeout,
                        format!("no response within {limit:?}"),
                    )
                }
            },
            None => work.await,
        }
    }

    async fn attempts(
        &self,
        deadline: Option<Instant>,
        log: &mut Option<Box<LogEntry>>,
        route_stats: &Arc<RouteStats>,
    ) -> Reply {
        let counters = &self.cluster.counters;
        let pool = &self.conn.worker.pool;
        let mut inflight: Vec<Attempt<'_>> = Vec::with_capacity(2);
        let mut last_sent = match self.launch(usize::MAX, None, 0) {
            Ok((first, endpoint)) => {
                inflight.push(first);
                endpoint
            }
            Err(reply) => return reply,
        };
        let mut tries = 1;
        let mut hedge_timer = self.hedge_timer(tries);
        // The answer the client gets if no later attempt does better.
        let mut fallback: Option<Reply> = None;
        loop {
            let (failure, server_says, last, endpoint) =
                match race(&mut inflight, hedge_timer.as_mut()).await {
                    Event::HedgeDue => {
                        hedge_timer = None;
                        if self.policy.hedge && tries < self.policy.attempts {
                            if let Some(slot) = self.retry_slot() {
                                if let Ok((hedge, endpoint)) =
                                    self.launch(last_sent, Some(slot), tries)
                                {
                                    inflight.push(hedge);
                                    last_sent = endpoint;
                                    tries += 1;
                                    counters.retries.fetch_add(1, Relaxed);
                                    counters.hedges.fetch_add(1, Relaxed);
                                    hedge_timer = self.hedge_timer(tries);
                                }
                            }
                        }
                        continue;
                    }
                    Event::Done(Attempted::Answered(answer, endpoint)) => {
                        let head = &answer.response;
                        match self.policy.failure_of(head.status(), head.headers()) {
                            None => {
                                if tries > 1 {
                                    counters.retry_successes.fetch_add(1, Relaxed);
                                }
                                self.note(log, endpoint, tries);
                                return answer.into_client(pool, self.action, route_stats);
                            }
                            Some(failure) => {
                                let says = pushback(head.headers(), SystemTime::now());
                                let reply = answer.into_client(pool, self.action, route_stats);
                                (Some(failure), says, reply, endpoint)
                            }
                        }
                    }
                    Event::Done(Attempted::Failed(failure, reply, endpoint)) => {
                        (failure, Pushback::None, reply, endpoint)
                    }
                };
            self.note(log, endpoint, tries);
            if !inflight.is_empty() {
                // A hedged attempt is still out: it may yet answer well.
                fallback = Some(last);
                continue;
            }
            drop(fallback.take());
            let Some(failure) = failure else {
                return last;
            };
            if tries >= self.policy.attempts || !self.policy.retries(failure, &self.head.method) {
                return last;
            }
            let wait = match server_says {
                Pushback::Stop => return last,
                Pushback::After(wait) => wait,
                Pushback::None => self.policy.backoff(tries, fastrand::f64()),
            };
            let in_time = match deadline {
                Some(deadline) => Instant::now() + wait < deadline,
                None => wait <= MAX_PUSHBACK,
            };
            if !in_time {
                return last;
            }
            if self.body.as_ref().is_some_and(ReplayBody::overflowed) {
                counters.retries_skipped_body.fetch_add(1, Relaxed);
                return last;
            }
            let Some(slot) = self.retry_slot() else {
                return last;
            };
            // The failed answer goes (and its connection with it) before the wait.
            drop(last);
            tokio::time::sleep(wait).await;
            match self.launch(endpoint, Some(slot), tries) {
                Ok((retry, endpoint)) => {
                    inflight.push(retry);
                    last_sent = endpoint;
                }
                Err(reply) => return reply,
            }
            tries += 1;
            counters.retries.fetch_add(1, Relaxed);
            hedge_timer = self.hedge_timer(tries);
        }
    }

    /// A retry's permission: the cluster's budget, then a slot of the breaker's retry limit
    /// (whose refusals the breaker counts).
    fn retry_slot(&self) -> Option<Admission> {
        if !self.cluster.retry_budget.try_withdraw(now_secs()) {
            self.cluster
                .counters
                .retries_skipped_budget
                .fetch_add(1, Relaxed);
            return None;
        }
        self.cluster.breaker.admit(Limit::Retries)
    }

    /// The timer after which another attempt is hedged, when hedging applies: requests without
    /// a body, attempts left.
    fn hedge_timer(&self, tries: u32) -> Option<Pin<Box<tokio::time::Sleep>>> {
        let after = self.policy.per_try_timeout?;
        (self.policy.hedge && self.body.is_none() && tries < self.policy.attempts)
            .then(|| Box::pin(tokio::time::sleep(after)))
    }

    fn note(&self, log: &mut Option<Box<LogEntry>>, endpoint: usize, tries: u32) {
        if let Some(entry) = log.as_mut() {
            entry.endpoint = self.cluster.endpoints.get(endpoint).copied();
            entry.retries = tries - 1;
        }
    }

    /// Starts an attempt on an endpoint other than `exclude` when there is one, its client span
    /// counting `resends` attempts before it. `Err` is the client's answer when no attempt can
    /// start.
    fn launch(
        &self,
        exclude: usize,
        retry_slot: Option<Admission>,
        resends: u32,
    ) -> Result<(Attempt<'a>, usize), Reply> {
        let cluster = self.cluster;
        let grpc = self.grpc;
        let body = match &self.body {
            None => RequestBody::empty(),
            Some(replay) => match replay.replay() {
                Some(body) => RequestBody::Replay(body),
                None => {
                    return Err(local_reply(
                        grpc,
                        Cause::BadRequest,
                        "the request body failed before it could be sent",
                    ))
                }
            },
        };
        let no_endpoint = || local_reply(grpc, Cause::NoHealthyEndpoint, "no usable endpoint");
        let endpoint = cluster
            .balancer
            .pick_excluding(self.hash, exclude)
            .ok_or_else(no_endpoint)?;
        let (Some(&addr), Some(stats)) = (
            cluster.endpoints.get(endpoint),
            cluster.balancer.stats_arc(endpoint),
        ) else {
            return Err(no_endpoint());
        };
        let (admission, in_flight, counters) = start_exchange(cluster, endpoint, stats, grpc)?;
        let mut request = Request::new(body);
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = self.head.uri.clone();
        *request.version_mut() = self.head.version;
        *request.headers_mut() = self.head.headers.clone();
        // `send` writes it: into the HTTP/1 head, or the HTTP/2 headers.
        let mut traceparent = None;
        let mut span = self.trace.and_then(|t| {
            let attempt = UpstreamAttempt {
                method: &self.head.method,
                path: self.head.uri.path(),
                endpoint: addr,
                version: self.head.version,
                cluster: &cluster.name,
                resends,
            };
            t.start_client(request.headers_mut(), &attempt, &mut traceparent)
        });
        let per_try = self.policy.per_try_timeout.filter(|_| !self.policy.hedge);
        let pool = &self.conn.worker.pool;
        let (parts, body) = request.into_parts();
        let appended = Appended {
            traceparent: traceparent.as_ref().map(TraceparentValue::as_bytes),
            ..Appended::default()
        };
        let request = Outgoing::new(pool, cluster.protocol, parts, body.boxed(), appended);
        // The per-try timeout, like the route's, counts from the end of the client's body: an
        // attempt sent while it still arrives is not slow for that.
        let timer = &self.conn.timer;
        let upload = self.upload.clone();
        let attempt = Box::pin(async move {
            let _retry_slot = retry_slot;
            let started = Instant::now();
            // `false, false`: no upgrade; the policy reads the answer's headers, so they are
            // built into its map.
            let sent = std::pin::pin!(send(pool, cluster, addr, request, false, false, counters));
            let outcome = match per_try {
                Some(limit) => match timer
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
                        let reply = local_reply(
                            grpc,
                            Cause::RequestTimeout,
                            format!("no response from {addr} within the per-try {limit:?}"),
                        );
                        return Attempted::Failed(Some(Failure::PerTryTimeout), reply, endpoint);
                    }
                },
                None => sent.await,
            };
            match outcome {
                Ok(response) => {
                    let status = response.status();
                    let _ = head_received(cluster, endpoint, stats, started, status, span.as_mut());
                    let answer = Answer {
                        response,
                        in_flight,
                        admission,
                        span,
                    };
                    Attempted::Answered(answer, endpoint)
                }
                Err(e) => {
                    let e = e.blame(upload.as_deref());
                    let (failure, reply) =
                        send_failed(e, cluster, endpoint, counters, addr, grpc, span.as_mut());
                    Attempted::Failed(failure, reply, endpoint)
                }
            }
        });
        Ok((attempt, endpoint))
    }
}

/// Waits for the first attempt to finish, or for the hedge timer.
async fn race(
    inflight: &mut Vec<Attempt<'_>>,
    mut timer: Option<&mut Pin<Box<tokio::time::Sleep>>>,
) -> Event {
    std::future::poll_fn(|cx| {
        let done = inflight.iter_mut().enumerate().find_map(|(i, attempt)| {
            match attempt.as_mut().poll(cx) {
                Poll::Ready(out) => Some((i, out)),
                Poll::Pending => None,
            }
        });
        if let Some((i, out)) = done {
            drop(inflight.swap_remove(i));
            return Poll::Ready(Event::Done(out));
        }
        if let Some(t) = timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::HedgeDue);
            }
        }
        Poll::Pending
    })
    .await
}
