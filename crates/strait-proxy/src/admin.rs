//! The admin server, on its own address and the control thread (never on a worker thread; a
//! proxy of one worker runs its worker on the control thread, so `/metrics`, the one large
//! answer, is encoded on tokio's blocking pool):
//! `/ready`, `/live`, `/config_dump`, `/clusters`, `/drain`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use prometheus_client::registry::Registry;

use crate::runtime::Shared;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let registry = Arc::new(shared.metrics.registry());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service =
                service_fn(move |req| answer(req, Arc::clone(&shared), Arc::clone(&registry)));
            // A client that never finishes its head is let go (without a timer hyper waits forever).
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// How long an admin client has to send a complete request head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // HEAD is GET without the body (hyper leaves it out): what load balancers' checks send.
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    let reply = match (method, req.uri().path()) {
        (&Method::GET, "/metrics") => {
            // On tokio's blocking pool: with many routes the text takes milliseconds (2.2 MB
            // and ~7 ms for 500 routes and clusters), and a proxy of one worker serves
            // requests on this thread.
            let encoded = tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &registry).map(|()| text)
            })
            .await;
            match encoded {
                Ok(Ok(text)) => {
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Ok(Err(_)) | Err(_) => text_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            }
        }
        (&Method::GET, "/ready") => {
            if shared.is_draining() {
                text_reply(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                text_reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
            } else {
                text_reply(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/live") => text_reply(StatusCode::OK, "live\n"),
        (&Method::GET, "/config_dump") => {
            let snapshot = shared.snapshot.load();
            let error = shared.last_reload_error.load_full();
            json_reply(&json!({
                "version": snapshot.version,
                "last_reload_unix": shared.last_reload_unix.load(Ordering::Relaxed),
                "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
                "last_reload_error": error.as_deref(),
                "config": &*snapshot.config,
            }))
        }
        (&Method::GET, "/clusters") => {
            let snapshot = shared.snapshot.load();
            let clusters: Vec<_> = snapshot
                .clusters
                .iter()
                .map(|c| {
                    let endpoints: Vec<_> = c
                        .source()
                        .endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let stats = c.balancer.stats(i);
                            json!({
                                "address": e.address.to_string(),
                                "weight": e.weight,
                                "healthy": stats.is_none_or(|s| s.is_usable()),
                                "health_check": c.checks.as_ref().and(c.health.get(i)).map(|h| {
                                    let history = *h.checks.lock().unwrap_or_else(|e| e.into_inner());
                                    json!({
                                        "passing": h.stats.is_healthy(),
                                        "checked": history.checked,
                                        "passes_in_a_row": history.passes,
                                        "failures_in_a_row": history.failures,
                                    })
                                }),
                                "outlier": c.outlier.policy().and(c.health.get(i)).map(|h| {
                                    let ejection = h.outlier.ejection();
                                    json!({
                                        "ejected": h.stats.is_ejected(),
                                        "ejection_remaining_ms": ejection.until.map(|t| {
                                            t.saturating_duration_since(Instant::now()).as_millis() as u64
                                        }),
                                        "times_ejected": ejection.times,
                                    })
                                }),
                                "in_flight": stats.map_or(0, |s| s.in_flight()),
                                "ewma_latency_ms": stats.map_or(0.0, |s| s.ewma_latency().as_secs_f64() * 1e3),
                            })
                        })
                        .collect();
                    json!({
                        "name": &*c.name,
                        "protocol": c.source().protocol,
                        "load_balancer": c.source().load_balancer,
                        "fail_open": c.source().fail_open,
                        "failing_open": c.balancer.is_failing_open(),
                        "endpoints": endpoints,
                    })
                })
                .collect();
            json_reply(&json!(clusters))
        }
        (&Method::POST, "/drain") => {
            shared.drain();
            text_reply(StatusCode::OK, "draining\n")
        }
        (_, path @ ("/ready" | "/live" | "/config_dump" | "/clusters" | "/drain" | "/metrics")) => {
            let mut reply = text_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            // RFC 9110 15.5.6: a 405 says what is allowed.
            let allow = if path == "/drain" {
                "POST"
            } else {
                "GET, HEAD"
            };
            reply
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            reply
        }
        _ => text_reply(
            StatusCode::NOT_FOUND,
            "not found; try GET /ready /live /metrics /config_dump /clusters, POST /drain\n",
        ),
    };
    Ok(reply)
}

fn text_reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn json_reply(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
