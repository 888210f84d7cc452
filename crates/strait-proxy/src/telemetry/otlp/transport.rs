//! Sending encoded export requests to the collector, on the exporter thread: OTLP/HTTP (a
//! protobuf body POSTed over HTTP/1.1) or OTLP/gRPC (the trace service's unary `Export` over
//! HTTP/2). One connection, kept while it works and made again after a failure.
//!
//! Both are a single request shape, so they are hyper's client connections and a few lines
//! each rather than a general gRPC or HTTP client.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, TE, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_config::{OtlpProtocol, Tracing};

/// The gRPC method of the OTLP trace service.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const USER_AGENT_VALUE: &str = concat!("strait/", env!("CARGO_PKG_VERSION"));

/// Why an export request failed; the exporter logs it at debug level and counts it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("cannot connect to the collector: {0}")]
    Connect(std::io::Error),
    #[error("collector connection: {0}")]
    Http(#[from] hyper::Error),
    #[error("the collector answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("the collector answered grpc-status {code}: {message}")]
    Grpc { code: String, message: String },
}

/// The open connection, when there is one.
enum Connection {
    None,
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A collector and the headers every export request carries.
pub(crate) struct Transport {
    protocol: OtlpProtocol,
    /// `host:port` to connect to.
    authority: http::uri::Authority,
    uri: Uri,
    headers: HeaderMap,
    connection: Connection,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The transport for `config`'s collector. The URL was checked when the config was
    /// (plain `http://`, a host); an error here names what is still wrong with it.
    pub(crate) fn new(config: &Tracing) -> Result<Transport, String> {
        let endpoint = config.endpoint_url();
        let parsed: Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
        let authority = parsed
            .authority()
            .cloned()
            .ok_or_else(|| "the URL has no host".to_owned())?;
        let path = match config.protocol {
            OtlpProtocol::HttpProtobuf => parsed.path(),
            _ => GRPC_PATH,
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| format!("{e}"))?;
        let mut headers = HeaderMap::new();
        // The generic variable first, then the traces one, whose entries win.
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Ok(value) = std::env::var(var) {
                for (name, value) in parse_headers(&value) {
                    headers.insert(name, value);
                }
            }
        }
        Ok(Transport {
            protocol: config.protocol,
            authority,
            uri,
            headers,
            connection: Connection::None,
        })
    }

    /// Sends one encoded `ExportTraceServiceRequest`; a failure closes the connection, so the
    /// next request starts on a new one.
    pub(crate) async fn send(&mut self, message: Bytes) -> Result<(), SendError> {
        let sent = match self.protocol {
            OtlpProtocol::HttpProtobuf => self.send_http(message).await,
            _ => self.send_grpc(message).await,
        };
        if sent.is_err() {
            self.connection = Connection::None;
        }
        sent
    }

    async fn send_http(&mut self, message: Bytes) -> Result<(), SendError> {
        let mut sender = match std::mem::replace(&mut self.connection, Connection::None) {
            Connection::Http1(s) if !s.is_closed() => s,
            _ => {
                let io = self.connect().await?;
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.ready().await?;
        let req = self.request(
            "application/x-protobuf",
            Full::new(message),
            HeaderValue::from_str(self.authority.as_str()).ok(),
        );
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        // Read the answer to its end so the connection can carry the next request.
        resp.into_body().collect().await?;
        self.connection = Connection::Http1(sender);
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status(status))
        }
    }

    async fn send_grpc(&mut self, message: Bytes) -> Result<(), SendError> {
        let mut sender = match std::mem::replace(&mut self.connection, Connection::None) {
            Connection::Http2(s) if !s.is_closed() => s,
            _ => {
                let io = self.connect().await?;
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.ready().await?;
        // A gRPC message: not compressed, its length, the protobuf.
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.put_u8(0);
        framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
        framed.put_slice(&message);
        let mut req = self.request("application/grpc", Full::new(framed.freeze()), None);
        req.headers_mut()
            .insert(TE, HeaderValue::from_static("trailers"));
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let (head, body) = resp.into_parts();
        let collected = body.collect().await?;
        self.connection = Connection::Http2(sender);
        if !status.is_success() {
            return Err(SendError::Status(status));
        }
        // `grpc-status` is in the trailers, or in the head of a trailers-only answer.
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            trailers
                .get(name)
                .or_else(|| head.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match field("grpc-status") {
            Some(code) if code == "0" => Ok(()),
            code => Err(SendError::Grpc {
                code: code.unwrap_or_else(|| "(none)".to_owned()),
                message: field("grpc-message").unwrap_or_default(),
            }),
        }
    }

    fn request(
        &self,
        content_type: &'static str,
        body: Full<Bytes>,
        host: Option<HeaderValue>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        if let Some(host) = host {
            headers.insert(HOST, host);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        req
    }

    async fn connect(&self) -> Result<TokioIo<tokio::net::TcpStream>, SendError> {
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| SendError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values percent-encoded
/// (the OpenTelemetry specification's format). Entries that are not valid headers are skipped
/// with a warning naming them.
fn parse_headers(text: &str) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(name, value)| {
            let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(&percent_decode(value.trim())).ok()?;
            Some((name, value))
        });
        match parsed {
            Some(header) => out.push(header),
            None => {
                let name = entry.split_once('=').map_or(entry, |(n, _)| n);
                tracing::warn!(
                    entry = %name,
                    "OTEL_EXPORTER_OTLP_HEADERS: skipping an entry that is not `name=value` \
                     with a valid header name and value"
                );
            }
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|d| (*d as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_variables_follow_the_specification_format() {
        let got = parse_headers(" api-key=secret%20value ,x-tenant=a=b,,bad header=1,novalue");
        let got: Vec<_> = got
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, [("api-key", "secret value"), ("x-tenant", "a=b")]);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%2Cb%zz%4"), b"a,b%zz%4");
    }
}
