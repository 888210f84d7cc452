//! One active health check, on the wire: a TCP connect, an HTTP `GET`, or a gRPC
//! `Health/Check`, each on its own new connection, closed when the answer is in. The caller
//! bounds it with the check's timeout; what the endpoint sends back is treated as hostile
//! (bounded reads, no panics).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, TE, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::grpc_health;
use super::health_check::Probe;

/// Most bytes of a gRPC health answer read; the real one is 7.
const MAX_GRPC_ANSWER: usize = 64 * 1024;

const GRPC_STATUS: &str = "grpc-status";

/// The `user-agent` of health check requests, so upstream logs can tell them apart.
const AGENT: &str = "strait-health-check";

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The connection closed before an answer.
    #[error("connection closed before an answer")]
    Closed,
    /// An answer with a status the check does not expect.
    #[error("status {0}")]
    Status(StatusCode),
    /// A gRPC error answer.
    #[error("grpc-status {status} {message:?}")]
    Grpc {
        /// `grpc-status`.
        status: String,
        /// `grpc-message`.
        message: String,
    },
    /// A health answer other than `SERVING`.
    #[error("serving status {0} (1 is SERVING)")]
    NotServing(u64),
    /// A gRPC answer that is not a health message.
    #[error("gRPC answer: {0}")]
    Decode(#[from] grpc_health::DecodeError),
    /// The gRPC answer was larger than any health message.
    #[error("gRPC answer over {MAX_GRPC_ANSWER} bytes")]
    TooLarge,
    /// The check's host cannot be an HTTP/2 `:authority`.
    #[error("host {0:?} is not a valid authority")]
    Authority(String),
}

/// Runs one check of `probe` against `addr`: `Ok` when the endpoint passes.
pub async fn check(probe: &Probe, addr: SocketAddr) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http {
            path,
            host,
            expected,
            http2,
        } => {
            let host = host
                .clone()
                .or_else(|| HeaderValue::from_str(&addr.to_string()).ok());
            let status = if *http2 {
                let authority = authority(host.as_ref(), addr)?;
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority)
                    .path_and_query(path.clone())
                    .build()
                    .map_err(|_| ProbeError::Authority(addr.to_string()))?;
                let request = request(Method::GET, uri, Empty::<Bytes>::new());
                http2_exchange(stream, request, |r| async move { Ok(r.status()) }).await?
            } else {
                let mut request = request(Method::GET, Uri::from(path.clone()), Empty::new());
                if let Some(h) = host {
                    request.headers_mut().insert(HOST, h);
                }
                request
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                http1_exchange(stream, request).await?
            };
            if expected.iter().any(|r| r.contains(status.as_u16())) {
                Ok(())
            } else {
                Err(ProbeError::Status(status))
            }
        }
        Probe::Grpc { service } => {
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority(None, addr)?)
                .path_and_query(grpc_health::CHECK_PATH)
                .build()
                .map_err(|_| ProbeError::Authority(addr.to_string()))?;
            let mut request = request(
                Method::POST,
                uri,
                Full::new(grpc_health::request_frame(service)),
            );
            let headers = request.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(TE, HeaderValue::from_static("trailers"));
            let status = http2_exchange(stream, request, read_grpc_answer).await?;
            if status == grpc_health::SERVING {
                Ok(())
            } else {
                Err(ProbeError::NotServing(status))
            }
        }
    }
}

fn request<B>(method: Method, uri: Uri, body: B) -> Request<B> {
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static(AGENT));
    request
}

fn authority(host: Option<&HeaderValue>, addr: SocketAddr) -> Result<Authority, ProbeError> {
    match host {
        Some(h) => Authority::try_from(h.as_bytes())
            .map_err(|_| ProbeError::Authority(String::from_utf8_lossy(h.as_bytes()).into())),
        None => Authority::try_from(addr.to_string().as_str())
            .map_err(|_| ProbeError::Authority(addr.to_string())),
    }
}

/// Sends `request` over HTTP/1.1 and returns the status; the body is never read.
async fn http1_exchange(
    stream: TcpStream,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode, ProbeError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let exchange = async move { Ok(sender.send_request(request).await?.status()) };
    drive(conn, exchange).await
}

/// Sends `request` over HTTP/2 with prior knowledge and reads the answer with `read`.
async fn http2_exchange<B, T, R, F>(
    stream: TcpStream,
    request: Request<B>,
    read: R,
) -> Result<T, ProbeError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R: FnOnce(Response<Incoming>) -> F,
    F: Future<Output = Result<T, ProbeError>>,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let exchange = async move { read(sender.send_request(request).await?).await };
    drive(conn, exchange).await
}

/// Runs an exchange while driving its connection. When the connection ends first, the exchange
/// still gets what the connection delivered before it ended.
async fn drive<C, W, T>(conn: C, exchange: W) -> Result<T, ProbeError>
where
    C: Future<Output = Result<(), hyper::Error>>,
    W: Future<Output = Result<T, ProbeError>>,
{
    tokio::pin!(conn);
    tokio::pin!(exchange);
    tokio::select! {
        biased;
        out = &mut exchange => out,
        ended = &mut conn => match ended {
            Err(e) => Err(ProbeError::Http(e)),
            Ok(()) => exchange.await,
        },
    }
}

/// The serving status in a gRPC health answer, or why there is none.
async fn read_grpc_answer(response: Response<Incoming>) -> Result<u64, ProbeError> {
    if response.status() != StatusCode::OK {
        return Err(ProbeError::Status(response.status()));
    }
    let (parts, body) = response.into_parts();
    // A trailers-only answer carries its status in the head; any other, in the trailers.
    let in_head = parts.headers.contains_key(GRPC_STATUS);
    if in_head {
        grpc_ok(&parts.headers)?;
    }
    let collected = Limited::new(body, MAX_GRPC_ANSWER)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => ProbeError::Http(*e),
            Err(_) => ProbeError::TooLarge,
        })?;
    if !in_head {
        grpc_ok(collected.trailers().unwrap_or(&http::HeaderMap::new()))?;
    }
    Ok(grpc_health::response_status(&collected.to_bytes())?)
}

/// `Ok` when `headers` say `grpc-status: 0`.
fn grpc_ok(headers: &http::HeaderMap) -> Result<(), ProbeError> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    match text(GRPC_STATUS) {
        Some(status) if status == "0" => Ok(()),
        status => Err(ProbeError::Grpc {
            status: status.unwrap_or_else(|| "missing".to_owned()),
            message: text("grpc-message").unwrap_or_default(),
        }),
    }
}
