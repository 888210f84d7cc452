//! Retry policy: whether a failed attempt is tried again, and how long to wait first.
//!
//! Pure decisions, no I/O: the request path in `gateway.rs` describes what became of an attempt
//! as a [`Failure`], asks [`RetryPolicy::retries`], and waits [`RetryPolicy::backoff`] or the
//! server's [`pushback`] before the next attempt. The cluster's [`RetryBudget`] and the breaker's
//! retry limit are asked after the policy says yes.
//!
//! [`RetryBudget`]: super::budget::RetryBudget

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};
use strait_config::RetryOn;

/// What became of an attempt that did not bring a good answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection to the endpoint could not be opened: nothing was sent.
    ConnectFailed,
    /// An HTTP/2 upstream refused the stream: it did not process the request.
    RefusedStream,
    /// The connection closed or was reset before a response head.
    Reset,
    /// The per-try timeout passed before a response head.
    PerTryTimeout,
    /// The upstream answered with this status.
    Status(StatusCode),
    /// The upstream answered with this gRPC status in the response head.
    Grpc(u16),
}

impl Failure {
    /// True when the upstream cannot have acted on the request, so any method may go again.
    fn before_processing(self) -> bool {
        matches!(self, Failure::ConnectFailed | Failure::RefusedStream)
    }
}

/// A route's compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    on: u32,
    status_codes: Box<[u16]>,
    /// Time allowed to each attempt until its response head.
    pub per_try_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Request body bytes kept for replay.
    pub max_body_bytes: usize,
    non_idempotent: bool,
    /// Send another attempt when the per-try timeout passes, without cancelling the first.
    pub hedge: bool,
}

/// The bit of a condition in [`RetryPolicy::on`].
fn bit(on: RetryOn) -> u32 {
    1 << (match on {
        RetryOn::ConnectFailure => 0,
        RetryOn::RefusedStream => 1,
        RetryOn::Reset => 2,
        RetryOn::ServerError => 3,
        RetryOn::GatewayError => 4,
        RetryOn::Cancelled => 5,
        RetryOn::DeadlineExceeded => 6,
        RetryOn::ResourceExhausted => 7,
        RetryOn::Internal => 8,
        RetryOn::Unavailable => 9,
        // A condition this build does not know is never met.
        _ => 31,
    })
}

impl RetryPolicy {
    /// The policy of a route's `retry` config.
    pub fn compile(r: &strait_config::Retry) -> Self {
        RetryPolicy {
            attempts: r.attempts.clamp(1, 10),
            on: r.retry_on.iter().fold(0, |acc, &on| acc | bit(on)),
            status_codes: r.status_codes.clone().into_boxed_slice(),
            per_try_timeout: r.per_try_timeout.non_zero(),
            backoff_base: r.backoff.base.get(),
            backoff_max: r.backoff.max.get().max(r.backoff.base.get()),
            max_body_bytes: r.max_body_bytes,
            non_idempotent: r.non_idempotent,
            hedge: r.hedge && r.per_try_timeout.non_zero().is_some(),
        }
    }

    fn has(&self, on: RetryOn) -> bool {
        self.on & bit(on) != 0
    }

    /// Whether `failure` is retried for a request with `method`. Failures before the upstream
    /// processed anything are retried for every method; others only for idempotent methods,
    /// unless the route allows all. gRPC statuses are listed one by one by the route, which is
    /// the opt-in: gRPC's own retry policy retries by status whatever the method.
    pub fn retries(&self, failure: Failure, method: &Method) -> bool {
        let matched = match failure {
            Failure::ConnectFailed => self.has(RetryOn::ConnectFailure),
            Failure::RefusedStream => self.has(RetryOn::RefusedStream),
            Failure::Reset => self.has(RetryOn::Reset),
            Failure::PerTryTimeout => {
                self.has(RetryOn::ServerError) || self.has(RetryOn::GatewayError)
            }
            Failure::Status(status) => {
                let code = status.as_u16();
                (status.is_server_error() && self.has(RetryOn::ServerError))
                    || (matches!(code, 502..=504) && self.has(RetryOn::GatewayError))
                    || self.status_codes.contains(&code)
            }
            Failure::Grpc(code) => {
                let on = match code {
                    1 => RetryOn::Cancelled,
                    4 => RetryOn::DeadlineExceeded,
                    8 => RetryOn::ResourceExhausted,
                    13 => RetryOn::Internal,
                    14 => RetryOn::Unavailable,
                    _ => return false,
                };
                return self.has(on);
            }
        };
        matched && (failure.before_processing() || self.non_idempotent || is_idempotent(method))
    }

    /// What a response head says about retrying: `None` when it is an answer to keep.
    pub fn failure_of(&self, status: StatusCode, headers: &HeaderMap) -> Option<Failure> {
        if let Some(code) = grpc_status(headers) {
            if code != 0 {
                return Some(Failure::Grpc(code));
            }
        }
        let code = status.as_u16();
        (status.is_server_error() || self.status_codes.contains(&code))
            .then_some(Failure::Status(status))
    }

    /// The wait before retry number `retry` (1 for the first retry): full jitter, a uniform
    /// draw (`random` in 0..1) between 0 and `min(max, base * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32, random: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.backoff_max);
        ceiling.mul_f64(random.clamp(0.0, 1.0))
    }
}

/// RFC 9110 idempotent methods: sending them twice has the effect of sending them once.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What the server asked of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// Nothing: use the backoff.
    None,
    /// Wait this long before retrying.
    After(Duration),
    /// Do not retry (gRPC: a negative or malformed `grpc-retry-pushback-ms`).
    Stop,
}

/// Reads `grpc-retry-pushback-ms` (gRPC A6: a non-negative integer is the wait; anything else
/// means do not retry) and `retry-after` (RFC 9110: delay-seconds or an HTTP-date; a malformed
/// one is ignored).
pub fn pushback(headers: &HeaderMap, now: SystemTime) -> Pushback {
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        return match v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(ms) => Pushback::After(Duration::from_millis(ms)),
            None => Pushback::Stop,
        };
    }
    let Some(text) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return Pushback::None;
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Pushback::After(Duration::from_secs(secs));
    }
    match httpdate::parse_http_date(text) {
        Ok(at) => Pushback::After(at.duration_since(now).unwrap_or(Duration::ZERO)),
        Err(_) => Pushback::None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        let r: strait_config::Retry = serde_yaml::from_str(yaml).unwrap();
        RetryPolicy::compile(&r)
    }

    #[test]
    fn defaults_retry_gateway_errors_and_transport_failures() {
        let p = policy("{}");
        assert_eq!(p.attempts, 2);
        for f in [
            Failure::ConnectFailed,
            Failure::RefusedStream,
            Failure::Reset,
            Failure::PerTryTimeout,
            Failure::Status(StatusCode::BAD_GATEWAY),
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
            Failure::Status(StatusCode::GATEWAY_TIMEOUT),
        ] {
            assert!(p.retries(f, &Method::GET), "{f:?}");
        }
        assert!(!p.retries(
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR),
            &Method::GET
        ));
        assert!(!p.retries(Failure::Grpc(14), &Method::POST));
    }

    #[test]
    fn non_idempotent_methods_are_retried_only_before_processing() {
        let p = policy("{ retry_on: [connect_failure, refused_stream, reset, 5xx] }");
        assert!(p.retries(Failure::ConnectFailed, &Method::POST));
        assert!(p.retries(Failure::RefusedStream, &Method::PATCH));
        assert!(!p.retries(Failure::Reset, &Method::POST));
        assert!(!p.retries(Failure::Status(StatusCode::BAD_GATEWAY), &Method::POST));
        assert!(p.retries(Failure::Reset, &Method::PUT));
        let all = policy("{ retry_on: [reset, 5xx], non_idempotent: true }");
        assert!(all.retries(Failure::Reset, &Method::POST));
        assert!(all.retries(Failure::Status(StatusCode::BAD_GATEWAY), &Method::POST));
    }

    #[test]
    fn listed_statuses_and_grpc_codes_are_retried() {
        let p = policy("{ retry_on: [unavailable, resource_exhausted], status_codes: [409] }");
        assert!(p.retries(Failure::Status(StatusCode::CONFLICT), &Method::GET));
        assert!(!p.retries(Failure::Status(StatusCode::BAD_GATEWAY), &Method::GET));
        assert!(p.retries(Failure::Grpc(14), &Method::POST));
        assert!(p.retries(Failure::Grpc(8), &Method::POST));
        assert!(!p.retries(Failure::Grpc(13), &Method::POST));
        assert!(!p.retries(Failure::Grpc(3), &Method::POST));
    }

    #[test]
    fn response_heads_are_classified() {
        let p = policy("{ status_codes: [409] }");
        let none = HeaderMap::new();
        assert_eq!(p.failure_of(StatusCode::OK, &none), None);
        assert_eq!(p.failure_of(StatusCode::NOT_FOUND, &none), None);
        assert_eq!(
            p.failure_of(StatusCode::CONFLICT, &none),
            Some(Failure::Status(StatusCode::CONFLICT))
        );
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(p.failure_of(StatusCode::OK, &grpc), Some(Failure::Grpc(14)));
        grpc.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(p.failure_of(StatusCode::OK, &grpc), None);
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let p = policy("{ backoff: { base: 10ms, max: 70ms } }");
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(10));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(20));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(40));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(70));
        assert_eq!(p.backoff(40, 1.0), Duration::from_millis(70));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(20));
    }

    #[test]
    fn pushback_headers_are_read_per_their_specs() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(pushback(&h, now), Pushback::None);
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(pushback(&h, now), Pushback::After(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        h.insert("retry-after", later.parse().unwrap());
        assert_eq!(pushback(&h, now), Pushback::After(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        h.insert("retry-after", past.parse().unwrap());
        assert_eq!(pushback(&h, now), Pushback::After(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(pushback(&h, now), Pushback::None);
        h.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(
            pushback(&h, now),
            Pushback::After(Duration::from_millis(250))
        );
        h.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(pushback(&h, now), Pushback::Stop);
    }
}
