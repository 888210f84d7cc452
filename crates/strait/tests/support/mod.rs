//! Harness shared by the integration tests: a real `strait proxy` process on loopback, real
//! upstream servers on hyper (well-behaved ones and misbehaving ones), and a small HTTP/1.1 and
//! h2c (prior knowledge) client.
//!
//! Every test builds its own proxy and upstreams on its own ports and temp files, so tests run
//! in parallel. Every wait is bounded: a hung proxy fails the test, it never hangs the suite.

// Each test file uses its own subset of the harness.
#![allow(dead_code)]

pub mod repo;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every client request and upstream response in the harness uses.
pub type Body = BoxBody<Bytes, BoxError>;

/// Bound for a single ordinary request or admin call.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 25 ms until it returns true; false when `limit` elapses first.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Ports, temp files, templates
// ---------------------------------------------------------------------------------------------

/// A loopback address nobody listens on right now.
///
/// Ports come from below the kernel's ephemeral range (32768+), so the client sockets of
/// parallel tests never take a port between the moment it is picked and the moment the proxy
/// binds it; the counter keeps tests of one binary from picking the same port.
pub fn free_addr() -> SocketAddr {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let spread = (std::process::id() % 500) as u16 * 20;
        AtomicU16::new(20_000 + spread)
    });
    for _ in 0..2_000 {
        let mut port = next.fetch_add(1, Ordering::Relaxed);
        if !(20_000..32_000).contains(&port) {
            port = 20_000 + port % 12_000;
            next.store(port + 1, Ordering::Relaxed);
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            if let Ok(addr) = l.local_addr() {
                return addr;
            }
        }
    }
    panic!("no free loopback port in 20000..32000");
}

fn unique_name(prefix: &str, ext: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}.{ext}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replaces `${NAME}` placeholders in a YAML template.
pub fn fill(template: &str, vars: &[(&str, &dyn fmt::Display)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), &value.to_string());
    }
    out
}

/// A config file in the temp dir, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(contents: &str) -> TempFile {
        let path = unique_name("strait-itest", "yaml");
        std::fs::write(&path, contents).expect("write temp config");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `strait` binary under test.
pub fn strait() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strait"))
}

// ---------------------------------------------------------------------------------------------
// The proxy process
// ---------------------------------------------------------------------------------------------

/// A running `strait proxy`, killed on drop.
///
/// Config templates use `${LISTEN}` for the listener address (and `${LISTEN2}` for a second
/// one); `admin` and `workers: 2` are added unless the template sets them.
pub struct Proxy {
    child: Option<Child>,
    pub pid: u32,
    pub listen: SocketAddr,
    pub listen2: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proxy {
    /// Writes the config, starts the proxy and waits until `/ready` answers 200.
    pub async fn start(template: &str) -> Proxy {
        let listen = free_addr();
        let listen2 = free_addr();
        let admin = free_addr();
        let config_path = unique_name("strait-itest", "yaml");
        let log_path = unique_name("strait-itest", "log");
        let mut proxy = Proxy {
            child: None,
            pid: 0,
            listen,
            listen2,
            admin,
            config_path,
            log_path,
            exit: None,
        };
        proxy.write_config(template);
        let log = std::fs::File::create(&proxy.log_path).expect("create proxy log");
        let log2 = log.try_clone().expect("clone proxy log handle");
        let child = strait()
            .arg("proxy")
            .arg("--config")
            .arg(&proxy.config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .expect("spawn strait proxy");
        proxy.pid = child.id();
        proxy.child = Some(child);
        proxy.wait_ready(Duration::from_secs(20)).await;
        proxy
    }

    /// The template with ports filled in, as written to the config file.
    pub fn render(&self, template: &str) -> String {
        let body = fill(
            template,
            &[
                ("LISTEN", &self.listen),
                ("LISTEN2", &self.listen2),
                ("ADMIN", &self.admin),
            ],
        );
        let mut out = String::new();
        if !body.lines().any(|l| l.starts_with("admin:")) {
            out.push_str(&format!("admin:\n  address: {}\n", self.admin));
        }
        if !body.lines().any(|l| l.starts_with("workers:")) {
            out.push_str("workers: 2\n");
        }
        out.push_str(&body);
        out
    }

    /// Replaces the config file atomically (write a sibling, rename over), as editors and
    /// config-map updates do, so the proxy never reads half a file.
    pub fn write_config(&self, template: &str) {
        self.write_raw_config(&self.render(template));
    }

    /// Like [`Proxy::write_config`] but with the exact text (no admin/workers added).
    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("yaml.new");
        std::fs::write(&tmp, text).expect("write new config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config into place");
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "strait proxy exited with {status} before becoming ready; log:\n{}",
                    self.logs()
                );
            }
            if let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(2),
                send(self.admin, Proto::H1, simple("GET", "admin", "/ready")),
            )
            .await
            {
                if resp.status == StatusCode::OK {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "strait proxy not ready after {limit:?} (GET http://{}/ready); log:\n{}",
                    self.admin,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                }
            }
        }
        self.exit
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size of the proxy process (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_number("VmHWM:")
    }

    /// Resident set size of the proxy process now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_number("VmRSS:")
    }

    /// Threads of the proxy process now.
    pub fn threads(&self) -> u64 {
        self.status_number("Threads:")
    }

    fn status_number(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("the field in /proc/<pid>/status")
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = simple("GET", &self.admin.to_string(), path);
        within(
            REQUEST_LIMIT,
            &format!("admin GET {path}"),
            send(self.admin, Proto::H1, req),
        )
        .await
        .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    pub async fn admin_post(&self, path: &str) -> Resp {
        let req = simple("POST", &self.admin.to_string(), path);
        within(
            REQUEST_LIMIT,
            &format!("admin POST {path}"),
            send(self.admin, Proto::H1, req),
        )
        .await
        .unwrap_or_else(|e| panic!("admin POST {path}: {e}"))
    }

    /// `/config_dump`'s `version`.
    pub async fn config_version(&self) -> u64 {
        let dump = self.admin_get("/config_dump").await;
        assert_eq!(dump.status, StatusCode::OK, "/config_dump status");
        dump.json()["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("/config_dump has no u64 `version`: {}", dump.text()))
    }

    /// Waits until `/config_dump`'s version exceeds `above`; returns it, or `None` on timeout.
    pub async fn wait_version_above(&self, above: u64, limit: Duration) -> Option<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.config_version().await;
            if v > above {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/clusters` entry of endpoint `addr` in `cluster`.
    pub async fn endpoint_state(&self, cluster: &str, addr: SocketAddr) -> serde_json::Value {
        let all = self.admin_get("/clusters").await.json();
        let found = all.as_array().and_then(|clusters| {
            clusters.iter().find(|c| c["name"] == cluster)?["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["address"] == addr.to_string())
                .cloned()
        });
        found.unwrap_or_else(|| {
            panic!("no endpoint {addr} of cluster {cluster} in /clusters: {all}")
        })
    }

    /// Waits until `check` holds for the `/clusters` entry of `addr` in `cluster`; panics with
    /// the entry after `limit`.
    pub async fn wait_endpoint(
        &self,
        cluster: &str,
        addr: SocketAddr,
        what: &str,
        limit: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.endpoint_state(cluster, addr).await;
            if check(&state) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("endpoint {addr} of {cluster}: not {what} after {limit:?}: {state}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The value of the `/metrics` sample `name` whose labels include `labels`, if served.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.admin_get("/metrics").await.text();
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| {
                    labels_text
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                })
                .then(|| value.trim().parse().ok())
                .flatten()
        })
    }

    /// `strait_upstream_connections_closed_total` for `reason`, of the first endpoint served.
    pub async fn connections_closed(&self, reason: &str) -> f64 {
        let name = "strait_upstream_connections_closed_total";
        self.metric(name, &[("reason", reason)]).await.expect(name)
    }

    /// GET on a fresh HTTP/1.1 connection to the listener; panics on transport errors.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        get(self.listen, host, path).await
    }

    /// Sends `req` on a fresh connection to the listener.
    pub async fn send(&self, proto: Proto, req: Request<Body>) -> Result<Resp, BoxError> {
        send(self.listen, proto, req).await
    }

    /// Opens a client connection to the listener.
    pub async fn connect(&self, proto: Proto) -> Conn {
        within(
            REQUEST_LIMIT,
            "connect to the proxy",
            Conn::open(self.listen, proto),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to the proxy at {}: {e}", self.listen))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: String = {
                let skip = logs.chars().count().saturating_sub(6_000);
                logs.chars().skip(skip).collect()
            };
            eprintln!(
                "---- strait proxy log (pid {}, config {}) ----\n{tail}\n---- end of log ----",
                self.pid,
                self.config_path.display()
            );
        }
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Which protocol a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request builder in origin form with a `Host` header; [`Conn`] turns it into an
/// `:authority` for HTTP/2.
pub fn request(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
}

/// A request without a body.
pub fn simple(method: &str, host: &str, path: &str) -> Request<Body> {
    request(method, host, path)
        .body(empty())
        .unwrap_or_else(|e| panic!("invalid request {method} {host} {path}: {e}"))
}

/// A client connection (HTTP/1.1 or h2c) to one address.
pub struct Conn {
    sender: Sender,
    pub proto: Proto,
    closed: watch::Receiver<bool>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Conn {
    pub async fn open(addr: SocketAddr, proto: Proto) -> Result<Conn, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let io = TokioIo::new(tcp);
        let (done_tx, done_rx) = watch::channel(false);
        let sender = match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                    let _ = done_tx.send(true);
                });
                Sender::H1(send)
            }
            Proto::H2 => {
                let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                    let _ = done_tx.send(true);
                });
                Sender::H2(send)
            }
        };
        Ok(Conn {
            sender,
            proto,
            closed: done_rx,
        })
    }

    /// Sends a request and returns the response head with its streaming body.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        match &mut self.sender {
            Sender::H1(send) => {
                send.ready().await?;
                Ok(send.send_request(req).await?)
            }
            Sender::H2(send) => {
                let req = to_h2(req)?;
                send.ready().await?;
                Ok(send.send_request(req).await?)
            }
        }
    }

    /// Sends a request and reads the whole response, within [`REQUEST_LIMIT`].
    pub async fn fetch(&mut self, req: Request<Body>) -> Result<Resp, BoxError> {
        match tokio::time::timeout(REQUEST_LIMIT, async {
            let resp = self.send(req).await?;
            Resp::read(resp).await
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("no complete response within {REQUEST_LIMIT:?}").into()),
        }
    }

    /// Another handle on the same HTTP/2 connection (requests multiplex on it).
    pub fn clone_h2(&self) -> Conn {
        match &self.sender {
            Sender::H2(send) => Conn {
                sender: Sender::H2(send.clone()),
                proto: Proto::H2,
                closed: self.closed.clone(),
            },
            Sender::H1(_) => panic!("clone_h2 on an HTTP/1.1 connection"),
        }
    }

    /// True once the connection has ended (closed by either side or failed).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the connection ends; false if it is still open after `limit`.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.closed.wait_for(|done| *done))
            .await
            .is_ok()
    }
}

fn to_h2(req: Request<Body>) -> Result<Request<Body>, BoxError> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.authority().is_none() {
        let host = parts
            .headers
            .remove(HOST)
            .ok_or("an HTTP/2 request needs a Host header to build :authority")?;
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = format!("http://{}{path}", host.to_str()?).parse()?;
    }
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn send(addr: SocketAddr, proto: Proto, req: Request<Body>) -> Result<Resp, BoxError> {
    let mut conn = Conn::open(addr, proto).await?;
    conn.fetch(req).await
}

/// GET on a fresh HTTP/1.1 connection; panics on transport errors and after [`REQUEST_LIMIT`].
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    let req = simple("GET", host, path);
    within(
        REQUEST_LIMIT,
        &format!("GET http://{host}{path} via {addr}"),
        send(addr, Proto::H1, req),
    )
    .await
    .unwrap_or_else(|e| panic!("GET http://{host}{path} via {addr}: {e}"))
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub async fn read(resp: Response<Incoming>) -> Result<Resp, BoxError> {
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        values(&self.headers, name)
    }

    /// The `x-upstream` header: which upstream server answered.
    pub fn upstream(&self) -> String {
        self.header("x-upstream").unwrap_or_else(|| {
            panic!(
                "no x-upstream header (status {}, x-strait-error {:?}, body {:?})",
                self.status,
                self.header("x-strait-error"),
                self.text()
            )
        })
    }

    /// What the echo upstream saw, from its JSON answer.
    pub fn echo(&self) -> Echoed {
        Echoed::parse(&self.json())
    }
}

/// What an echo upstream received, as it reported it in its JSON answer.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub upstream: String,
    pub method: String,
    pub uri: String,
    pub host: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Echoed {
    fn parse(v: &serde_json::Value) -> Echoed {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        if let Some(map) = v["headers"].as_object() {
            for (name, values) in map {
                for value in values.as_array().into_iter().flatten() {
                    headers.push((name.clone(), value.as_str().unwrap_or_default().to_owned()));
                }
            }
        }
        Echoed {
            upstream: s("upstream"),
            method: s("method"),
            uri: s("uri"),
            host: s("host"),
            version: s("version"),
            headers,
            body_len: v["body_len"].as_u64().unwrap_or_default(),
        }
    }

    /// Every value the upstream received for `name` (lower case), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// All values of a comma-separated list header, split and trimmed, across header lines.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.header(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

/// Reads a body to its end without keeping it; returns the byte count.
pub async fn drain_body(mut body: Incoming) -> Result<u64, BoxError> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A body fed frame by frame through a channel (streaming requests, gRPC, trailers).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

pub fn channel_body(capacity: usize) -> (FrameSender, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// `total` bytes of a repeated pattern, produced on demand (nothing is held in memory but one
/// chunk), with an exact size so HTTP/1 sends a `content-length`.
pub struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

pub fn repeat_body(total: u64) -> Body {
    let chunk = Bytes::from(
        (0..64 * 1024)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    RepeatBody {
        remaining: total,
        chunk,
    }
    .boxed()
}

impl hyper::body::Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------------------------

/// A request an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub host: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        values(&self.headers, name)
    }
}

/// Every value of `name` in `headers`, in order, as text.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[derive(Debug, Clone)]
enum Kind {
    /// Answers with JSON describing the request, after `delay`.
    Echo { delay: Duration },
    /// Reads the request head, then resets the connection (RST) without answering.
    Reset,
    /// Reads the request head, then closes the connection (FIN) without answering.
    Close,
    /// Announces `announced` bytes of body, sends `sent`, then closes.
    CloseMidBody { announced: usize, sent: usize },
    /// Answers with a body and trailers.
    Trailers,
    /// Accepts a WebSocket upgrade and echoes frames.
    WebSocket,
    /// A gRPC service over h2: `Echo/*` echoes each message as it arrives, `Echo/Missing`
    /// fails with status 5, and `grpc.health.v1.Health/Check` answers `SERVING` or
    /// `NOT_SERVING` (see [`Upstream::set_serving`]).
    Grpc,
    /// Answers the first `n` requests with `status` and `headers` (after reading the body),
    /// then echoes.
    FailFirst {
        n: usize,
        status: u16,
        headers: Vec<(String, String)>,
    },
}

struct UpState {
    name: String,
    kind: Kind,
    hits: AtomicUsize,
    conns: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// When not 0, every HTTP answer gets this status (see [`Upstream::set_status`]).
    forced_status: AtomicU16,
    /// What the gRPC health service answers (see [`Upstream::set_serving`]).
    serving: AtomicBool,
    /// The accept loop and every connection served, so [`Upstream::stop`] can end them.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A real upstream server on 127.0.0.1, running on the test's runtime.
///
/// The echo server understands a few request headers so one server covers many cases:
/// `x-echo-delay-ms: N` (delay the response head), `x-echo-status: N`,
/// `x-echo-set-header: name=value` (repeatable; add a response header) and
/// `x-echo-response-bytes: N` (answer with N generated bytes instead of JSON).
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpState>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({} at {})", self.name, self.addr)
    }
}

impl Upstream {
    async fn spawn(name: &str, kind: Kind) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpState {
            name: name.to_owned(),
            kind,
            hits: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            forced_status: AtomicU16::new(0),
            serving: AtomicBool::new(true),
            tasks: Mutex::new(Vec::new()),
        });
        accept(listener, &state);
        Upstream {
            name: name.to_owned(),
            addr,
            state,
        }
    }

    /// Dies: stops accepting and closes every open connection, as a crashed server would.
    /// Connects to its address are refused until [`Upstream::restart`].
    pub async fn stop(&self) {
        let tasks: Vec<_> = self
            .state
            .tasks
            .lock()
            .expect("tasks lock")
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Comes back on the same address after [`Upstream::stop`].
    pub async fn restart(&self) {
        let listener = within(REQUEST_LIMIT, "rebind the upstream", async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        accept(listener, &self.state);
    }

    /// From now on every HTTP answer gets `status` (`None`: back to normal).
    pub fn set_status(&self, status: Option<u16>) {
        self.state
            .forced_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// What the gRPC health service answers from now on: `SERVING` or `NOT_SERVING`.
    pub fn set_serving(&self, serving: bool) {
        self.state.serving.store(serving, Ordering::SeqCst);
    }

    /// Echo server (HTTP/1.1 and h2c on the same port).
    pub async fn echo(name: &str) -> Upstream {
        Upstream::spawn(
            name,
            Kind::Echo {
                delay: Duration::ZERO,
            },
        )
        .await
    }

    /// Echo server that delays every response head by `delay`.
    pub async fn slow(name: &str, delay: Duration) -> Upstream {
        Upstream::spawn(name, Kind::Echo { delay }).await
    }

    /// Resets (RST) every connection after reading the request head.
    pub async fn reset(name: &str) -> Upstream {
        Upstream::spawn(name, Kind::Reset).await
    }

    /// Closes (FIN) every connection after reading the request head, without answering.
    pub async fn close_without_answer(name: &str) -> Upstream {
        Upstream::spawn(name, Kind::Close).await
    }

    /// Announces `announced` bytes of body, sends `sent`, then closes the connection.
    pub async fn close_mid_body(name: &str, announced: usize, sent: usize) -> Upstream {
        Upstream::spawn(name, Kind::CloseMidBody { announced, sent }).await
    }

    /// Answers `trailers follow` with trailers `x-checksum: c0ffee` and `x-upstream-trailer`.
    pub async fn trailers(name: &str) -> Upstream {
        Upstream::spawn(name, Kind::Trailers).await
    }

    /// WebSocket echo server.
    pub async fn websocket(name: &str) -> Upstream {
        Upstream::spawn(name, Kind::WebSocket).await
    }

    /// gRPC-shaped echo service over h2c.
    pub async fn grpc(name: &str) -> Upstream {
        Upstream::spawn(name, Kind::Grpc).await
    }

    /// Fails the first `n` requests with `status` and these response headers, then echoes.
    /// `usize::MAX` fails every request: a full outage.
    pub async fn fail_first(
        name: &str,
        n: usize,
        status: u16,
        headers: &[(&str, &str)],
    ) -> Upstream {
        let headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Upstream::spawn(name, Kind::FailFirst { n, status, headers }).await
    }

    /// Requests received (counted when the head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn conns(&self) -> usize {
        self.state.conns.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order of completion.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }
}

/// An upstream that answers with bytes exactly as given, for answers the echo upstream will
/// not make: each request head read on a connection gets the next of `answers` (in turn),
/// written piece by piece (pieces split at `|`, `pause` apart) to stream it. With `close`,
/// the connection closes after its first answer.
pub async fn raw_upstream(
    answers: impl IntoIterator<Item = &'static str>,
    pause: Duration,
    close: bool,
) -> SocketAddr {
    let answers: Arc<[&'static str]> = answers.into_iter().collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answers = Arc::clone(&answers);
            tokio::spawn(async move {
                let mut got = Vec::new();
                for answer in answers.iter().cycle() {
                    if !read_request_head(&mut stream, &mut got).await {
                        return;
                    }
                    for piece in answer.split('|') {
                        if stream.write_all(piece.as_bytes()).await.is_err() {
                            return;
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads bytes into `got` until it holds a request head, and takes the head out: `false` if
/// the connection ended first.
async fn read_request_head(stream: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.drain(..end + 4);
            return true;
        }
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
}

/// Serves connections from `listener` until [`Upstream::stop`].
fn accept(listener: TcpListener, state: &Arc<UpState>) {
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            st.conns.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let conn = tokio::spawn(serve_connection(stream, st.clone()));
            let mut tasks = st.tasks.lock().expect("tasks lock");
            tasks.retain(|t| !t.is_finished());
            tasks.push(conn);
        }
    });
    state.tasks.lock().expect("tasks lock").push(task);
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at the first bytes to tell an h2c prior-knowledge client from an HTTP/1 one.
async fn starts_with_h2_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || !H2_PREFACE.starts_with(&buf[..n]) {
            return false;
        }
        if n >= H2_PREFACE.len() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn serve_connection(mut stream: TcpStream, st: Arc<UpState>) {
    match st.kind.clone() {
        Kind::Reset | Kind::Close => {
            read_head(&mut stream).await;
            st.hits.fetch_add(1, Ordering::SeqCst);
            if matches!(st.kind, Kind::Reset) {
                let _ = stream.set_zero_linger();
            }
            drop(stream);
        }
        Kind::CloseMidBody { announced, sent } => {
            if !read_head(&mut stream).await {
                return;
            }
            st.hits.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                 x-upstream: {}\r\ncontent-length: {announced}\r\n\r\n",
                st.name
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; sent]).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.shutdown().await;
        }
        _ => {
            let h2 = starts_with_h2_preface(&stream).await;
            let st2 = st.clone();
            let svc = hyper::service::service_fn(move |req| {
                let st = st2.clone();
                async move { Ok::<_, Infallible>(respond(st, req).await) }
            });
            let io = TokioIo::new(stream);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .with_upgrades()
                    .await;
            }
        }
    }
}

/// Reads until the end of a request head (or 64 KiB, or EOF). False on EOF before any byte.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return !buf.is_empty(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > 64 * 1024 {
            return true;
        }
    }
}

fn text_response(status: u16, text: &str) -> Response<Body> {
    let mut resp = Response::new(full(text.to_owned()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp
}

async fn respond(st: Arc<UpState>, req: Request<Incoming>) -> Response<Body> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let mut resp = match st.kind.clone() {
        Kind::Echo { delay } => echo(&st, req, delay).await,
        Kind::FailFirst { n, status, headers } => {
            if st.hits.load(Ordering::SeqCst) <= n {
                let (parts, mut body) = req.into_parts();
                let (body_len, trailers) = read_request_body(&mut body).await;
                record(&st, &parts, body_len, trailers);
                let mut resp = text_response(status, "failing on purpose");
                for (k, v) in &headers {
                    if let (Ok(k), Ok(v)) = (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        resp.headers_mut().append(k, v);
                    }
                }
                resp
            } else {
                echo(&st, req, Duration::ZERO).await
            }
        }
        Kind::Trailers => with_trailers(&st, req).await,
        Kind::WebSocket => websocket_accept(&st, req),
        Kind::Grpc => grpc(&st, req).await,
        Kind::Reset | Kind::Close | Kind::CloseMidBody { .. } => text_response(500, "unreachable"),
    };
    let forced = st.forced_status.load(Ordering::SeqCst);
    if forced != 0 {
        *resp.status_mut() = StatusCode::from_u16(forced).unwrap_or(StatusCode::OK);
    }
    if let Ok(v) = HeaderValue::from_str(&st.name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    resp
}

/// Reads a request body to its end, counting bytes and keeping trailers.
async fn read_request_body(body: &mut Incoming) -> (u64, Option<HeaderMap>) {
    let mut len = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        match frame.into_data() {
            Ok(data) => len += data.len() as u64,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    (len, trailers)
}

fn host_of(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn record(st: &UpState, parts: &http::request::Parts, body_len: u64, trailers: Option<HeaderMap>) {
    st.seen.lock().expect("seen lock").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        host: host_of(parts),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len,
        trailers,
    });
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn echo(st: &UpState, req: Request<Incoming>, delay: Duration) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let (body_len, trailers) = read_request_body(&mut body).await;
    record(st, &parts, body_len, trailers);

    let delay = header_num(&parts.headers, "x-echo-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or(delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut resp = if let Some(n) = header_num(&parts.headers, "x-echo-response-bytes") {
        let mut r = Response::new(repeat_body(n));
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    } else {
        let mut headers = BTreeMap::<String, Vec<String>>::new();
        for (name, value) in &parts.headers {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let json = serde_json::json!({
            "upstream": st.name,
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "host": host_of(&parts),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": body_len,
        });
        let mut r = Response::new(full(json.to_string()));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        r
    };
    if let Some(code) = header_num(&parts.headers, "x-echo-status") {
        *resp.status_mut() = u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
    }
    for value in parts.headers.get_all("x-echo-set-header") {
        let Ok(text) = value.to_str() else { continue };
        let Some((name, value)) = text.split_once('=') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

async fn with_trailers(st: &UpState, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let (body_len, trailers) = read_request_body(&mut body).await;
    record(st, &parts, body_len, trailers);
    let (tx, body) = channel_body(4);
    let name = st.name.clone();
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"trailers follow"))))
            .await;
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("c0ffee"));
        if let Ok(v) = HeaderValue::from_str(&name) {
            t.insert("x-upstream-trailer", v);
        }
        let _ = tx.send(Ok(Frame::trailers(t))).await;
    });
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    // HTTP/1.1 sends only trailers announced in `trailer` (and only if the client sent
    // `te: trailers`).
    resp.headers_mut().insert(
        "trailer",
        HeaderValue::from_static("x-checksum, x-upstream-trailer"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// WebSocket (RFC 6455), just enough to echo frames
// ---------------------------------------------------------------------------------------------

/// The sample key from RFC 6455 section 1.3 and its accept value.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket upgrade request for `/chat` on `host`, keyed with `WS_KEY`.
pub fn ws_upgrade_head(host: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    )
}

fn websocket_accept(st: &UpState, mut req: Request<Incoming>) -> Response<Body> {
    record(st, &head_of(&req), 0, None);
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key_ok = req
        .headers()
        .get("sec-websocket-key")
        .is_some_and(|v| v == WS_KEY);
    if !upgrade || !key_ok {
        return text_response(
            400,
            "expected a websocket upgrade with the RFC 6455 sample key",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let greeting = format!("hello from {}", st.name);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let _ = ws_echo(&mut io, greeting.as_bytes()).await;
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("sec-websocket-accept", HeaderValue::from_static(WS_ACCEPT));
    resp
}

/// A copy of a request's head (the body stays with the request, which the upgrade needs).
fn head_of(req: &Request<Incoming>) -> http::request::Parts {
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version());
    if let Some(h) = b.headers_mut() {
        *h = req.headers().clone();
    }
    // Infallible: method, URI and version come from an already valid request.
    b.body(()).expect("rebuild request head").into_parts().0
}

async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    greeting: &[u8],
) -> std::io::Result<()> {
    io.write_all(&ws_frame(0x1, greeting, None)).await?;
    loop {
        let (opcode, payload) = ws_read_frame(io).await?;
        if opcode == 0x8 {
            io.write_all(&ws_frame(0x8, &payload, None)).await?;
            return io.shutdown().await;
        }
        io.write_all(&ws_frame(opcode, &payload, None)).await?;
    }
}

/// Encodes one final frame; clients must pass a mask, servers must not.
pub fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame, unmasking it if masked; returns (opcode, payload).
pub async fn ws_read_frame<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            io.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            io.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > 16 * 1024 * 1024 {
        return Err(std::io::Error::other(
            "websocket frame too large for the test",
        ));
    }
    let mut key = [0u8; 4];
    if masked {
        io.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((opcode, payload))
}

// ---------------------------------------------------------------------------------------------
// gRPC framing and service
// ---------------------------------------------------------------------------------------------

/// A length-prefixed gRPC message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// Takes one whole gRPC message off the front of `buf`, if there is one.
pub fn grpc_take(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

async fn grpc(st: &UpState, req: Request<Incoming>) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let (tx, resp_body) = channel_body(16);
    let mut resp = Response::new(resp_body);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));

    if parts.uri.path() == "/grpc.health.v1.Health/Check" {
        let (len, trailers) = read_request_body(&mut body).await;
        record(st, &parts, len, trailers);
        // HealthCheckResponse { status: SERVING (1) | NOT_SERVING (2) }
        let status = if st.serving.load(Ordering::SeqCst) {
            1
        } else {
            2
        };
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(grpc_frame(&[0x08, status])))).await;
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        return resp;
    }

    if parts.uri.path().ends_with("/Missing") {
        let (len, trailers) = read_request_body(&mut body).await;
        record(st, &parts, len, trailers);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("5"));
        t.insert("grpc-message", HeaderValue::from_static("thing not found"));
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        return resp;
    }

    record(st, &parts, 0, None);
    // Answer each message as soon as it is complete, while the request stream stays open:
    // that is what makes bidirectional streaming observable through the proxy.
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut count = 0u32;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                while let Some(msg) = grpc_take(&mut buf) {
                    count += 1;
                    if tx.send(Ok(Frame::data(grpc_frame(&msg)))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
            t.insert("x-echo-count", v);
        }
        let _ = tx.send(Ok(Frame::trailers(t))).await;
    });
    resp
}

// ---------------------------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------------------------

/// A `clusters:` section with one single-endpoint HTTP/1 cluster per upstream, named after it.
pub fn clusters_for(upstreams: &[&Upstream]) -> String {
    let mut out = String::from("clusters:\n");
    for u in upstreams {
        out.push_str(&format!(
            "  - name: {}\n    endpoints: [{{ address: \"{}\" }}]\n",
            u.name, u.addr
        ));
    }
    out
}

/// Sends `total` GETs over `connections` parallel keep-alive HTTP/1.1 connections and counts
/// answers per `x-upstream`; any failure or non-200 fails the test.
pub async fn spread(
    proxy: &Proxy,
    host: &str,
    path: &str,
    total: usize,
    connections: usize,
) -> BTreeMap<String, usize> {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let n = total / connections + usize::from(c < total % connections);
        let mut conn = proxy.connect(Proto::H1).await;
        let (host, path) = (host.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut counts = BTreeMap::<String, usize>::new();
            for i in 0..n {
                let req = simple("GET", &host, &path);
                let resp = conn
                    .fetch(req)
                    .await
                    .unwrap_or_else(|e| panic!("request {i} on connection {c}: {e}"));
                assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
                *counts.entry(resp.upstream()).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts = BTreeMap::new();
    for t in tasks {
        let part = within(Duration::from_secs(60), "spread requests", t)
            .await
            .expect("request task panicked");
        for (k, v) in part {
            *counts.entry(k).or_default() += v;
        }
    }
    counts
}

/// A loopback address whose accept queue is full: the kernel drops new SYNs, so a connect to
/// it neither succeeds nor fails until the connecting side gives up. Keep it alive while used.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl Blackhole {
    pub async fn new() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("literal address"))
            .expect("bind blackhole");
        let listener = socket.listen(0).expect("listen with a backlog of 0");
        let addr = listener.local_addr().expect("blackhole address");
        let mut fillers = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fillers.push(s),
                _ => break,
            }
        }
        // Confirm that a connect now hangs.
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(
            probe.is_err(),
            "could not fill the accept queue of {addr} (connect result {probe:?})"
        );
        Blackhole {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// A config with listener `main` on `${LISTEN}` sending every request to cluster `pool` over
/// `endpoints`; `cluster_extra` is YAML added to the cluster, written without indentation.
pub fn pool(endpoints: &[SocketAddr], cluster_extra: &str) -> String {
    let mut out = String::from(
        "listeners:\n  - name: main\n    address: ${LISTEN}\n    routes:\n      - backends: \
         [{ cluster: pool }]\nclusters:\n  - name: pool\n    endpoints:\n",
    );
    for e in endpoints {
        out.push_str(&format!("      - {{ address: \"{e}\" }}\n"));
    }
    for line in cluster_extra.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

/// A config with listener `main` on `${LISTEN}` and one catch-all route `all` to cluster
/// `echo` (endpoint `upstream`). Each `*_extra` is YAML added to that mapping, written without
/// indentation.
pub fn one_route(
    upstream: SocketAddr,
    listener_extra: &str,
    route_extra: &str,
    cluster_extra: &str,
) -> String {
    let indent = |text: &str, n: usize| -> String {
        text.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n{}    routes:\n      - name: all\n        \
         match: {{ path: {{ prefix: / }} }}\n        backends: [{{ cluster: echo }}]\n{}clusters:\n  - name: \
         echo\n    endpoints: [{{ address: \"{upstream}\" }}]\n{}",
        indent(listener_extra, 4),
        indent(route_extra, 8),
        indent(cluster_extra, 4)
    )
}
