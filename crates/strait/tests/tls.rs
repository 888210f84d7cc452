//! TLS against a test CA made here with rcgen (no key is committed): certificates chosen by SNI,
//! ALPN, resumption, client certificates required or optional with the SPIFFE identity passed
//! on, wrong-CA and expired client certificates refused, rotation while requests flow, a bad
//! pair refused while the old one keeps serving, and TLS to upstreams (verified, wrong CA,
//! `insecure_skip_verify`).

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A leaf for these DNS names (and URIs, e.g. a SPIFFE ID), valid from `days_from` to
    /// `days_to` days from now.
    fn leaf(&self, dns: &[&str], uris: &[&str], days: (i64, i64)) -> (String, String) {
        self.leaf_with(KeyPair::generate().expect("leaf key"), dns, uris, days)
    }

    /// [`Ca::leaf`] with a key of its own (an RSA one: ring makes none).
    fn leaf_with(
        &self,
        key: KeyPair,
        dns: &[&str],
        uris: &[&str],
        days: (i64, i64),
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(rcgen::Ia5String::try_from(*uri).expect("uri")));
        }
        let now = time_now();
        params.not_before = now + days_secs(days.0);
        params.not_after = now + days_secs(days.1);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn days_secs(days: i64) -> time::Duration {
    time::Duration::days(days)
}

/// Files in a fresh directory.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("strait-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    /// Writes `text` to `name` atomically (write a sibling, rename over).
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    client: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem) {
        roots.add(cert).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(rustls_pemfile_certs(cert), pem_key(key))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn pem_key(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .expect("PEM key")
        .expect("a key")
}

async fn handshake(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// One GET over a TLS stream, by the protocol ALPN chose, with a forged
/// `x-forwarded-client-cert`; the status and the body's JSON.
async fn get_over(stream: TlsStream<TcpStream>, host: &str) -> Result<(u16, String), BoxError> {
    get_over_forging(stream, host, true).await
}

/// [`get_over`], the forged `x-forwarded-client-cert` sent when `forge`.
async fn get_over_forging(
    stream: TlsStream<TcpStream>,
    host: &str,
    forge: bool,
) -> Result<(u16, String), BoxError> {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut req = http::Request::builder()
        .uri(format!("https://{host}/tls"))
        .header("host", host);
    if forge {
        req = req.header("x-forwarded-client-cert", "URI=spiffe://forged/ns/x/sa/y");
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = "/tls".parse()?;
        send.send_request(req).await?
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A handshake as `api.example.com`, then [`get_over_forging`].
async fn get_from_api(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    forge: bool,
) -> (u16, String) {
    let stream = handshake(addr, config, "api.example.com")
        .await
        .expect("handshake");
    get_over_forging(stream, "api.example.com", forge)
        .await
        .expect("request")
}

fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let certs = stream.get_ref().1.peer_certificates().expect("server cert");
    let der = certs.first().expect("leaf");
    // The SAN DNS names appear in the DER as plain ASCII: enough to tell certificates apart.
    [
        "api.example.com",
        "*.example.com",
        "default.test",
        "rotated.test",
    ]
    .iter()
    .filter(|n| der.windows(n.len()).any(|w| w == n.as_bytes()))
    .map(|n| n.to_string())
    .collect()
}

fn tls_listener(dir: &Dir, ca: &Ca, extra: &str) -> (String, String) {
    let (dc, dk) = ca.leaf(&["default.test", "127.0.0.1"], &[], (-1, 30));
    let (ec, ek) = ca.leaf(&["api.example.com"], &[], (-1, 30));
    let (wc, wk) = ca.leaf(&["*.example.com"], &[], (-1, 30));
    let paths = [
        (dir.write("default.pem", &dc), dir.write("default.key", &dk)),
        (dir.write("exact.pem", &ec), dir.write("exact.key", &ek)),
        (dir.write("wild.pem", &wc), dir.write("wild.key", &wk)),
    ];
    let certs: Vec<String> = paths
        .iter()
        .map(|(c, k)| format!("{{ cert: \"{c}\", key: \"{k}\" }}"))
        .collect();
    (
        format!(
            "    proxy_headers: {{ x_forwarded_proto: replace }}\n    tls:\n      certificates: [{}]\n{extra}",
            certs.join(", ")
        ),
        paths[0].0.clone(),
    )
}

fn config(upstream: std::net::SocketAddr, listener_tls: &str, cluster_extra: &str) -> String {
    format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n{listener_tls}    routes:\n      - name: all\n        \
         backends: [{{ cluster: up }}]\nclusters:\n  - name: up\n    endpoints: [{{ address: \"{upstream}\" }}]\n{cluster_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_and_alpn_picks_the_protocol() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let h1 = client_config(&ca.pem(), &[b"http/1.1"], None);
    for (sni, want) in [
        ("api.example.com", "api.example.com"),
        ("www.example.com", "*.example.com"),
        // An IP address sends no SNI: the first certificate answers.
        ("127.0.0.1", "default.test"),
    ] {
        let stream = handshake(proxy.listen, Arc::clone(&h1), sni)
            .await
            .expect("handshake");
        assert_eq!(served_names(&stream), vec![want.to_owned()], "SNI {sni}");
        if sni == "www.example.com" {
            let (status, body) = get_over(stream, sni).await.expect("request");
            assert_eq!(status, 200, "{body}");
            let seen: serde_json::Value = serde_json::from_str(&body).expect("echo json");
            assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
            assert!(
                seen["headers"].get("x-forwarded-client-cert").is_none(),
                "a client's own x-forwarded-client-cert is dropped: {body}"
            );
        }
    }
    let h2 = client_config(&ca.pem(), &[b"h2", b"http/1.1"], None);
    let stream = handshake(proxy.listen, h2, "api.example.com")
        .await
        .expect("h2 handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body) = get_over(stream, "api.example.com")
        .await
        .expect("h2 request");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"version\":\"HTTP/1.1\""),
        "forwarded over HTTP/1.1: {body}"
    );

    // Plain HTTP on a TLS port is not served: it gets a 400 saying so.
    let plain = within(
        Duration::from_secs(5),
        "plain",
        proxy.send(Proto::H1, simple("GET", "a", "/")),
    )
    .await
    .expect("an answer");
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert!(plain.text().contains("use https://"), "{}", plain.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pemfile_certs(&ca.pem()).remove(0))
            .expect("root");
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        let first = handshake(proxy.listen, Arc::clone(&cfg), "api.example.com")
            .await
            .expect("first");
        // TLS 1.3 tickets arrive after the handshake: read the response so they are processed.
        get_over(first, "api.example.com")
            .await
            .expect("first request");
        let second = handshake(proxy.listen, cfg, "api.example.com")
            .await
            .expect("second");
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
    }
    // A TLS 1.3 client is done before the proxy has read its Finished message and counted
    // the handshake: wait for the count rather than read it once.
    let resumed = "strait_tls_handshakes_total{listener=\"main\",kind=\"resumed\"} 2";
    let counted = eventually(Duration::from_secs(5), || async {
        proxy.admin_get("/metrics").await.text().contains(resumed)
    })
    .await;
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(counted, "{metrics}");
    // The leaves were made valid for 30 days from now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expiries: Vec<i64> = metrics
        .lines()
        .filter(|l| l.starts_with("strait_tls_certificate_expiry_seconds{listener=\"main\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(expiries.len(), 3, "{metrics}");
    for e in expiries {
        assert!(
            (e - now - 30 * 86_400).abs() < 3600,
            "expiry {e}, now {now}"
        );
    }
}

/// A TLS listener in front of an echo upstream, and a client config offering only HTTP/1.1.
async fn http1_over_tls() -> (Dir, Upstream, Proxy, Arc<rustls::ClientConfig>) {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let cfg = client_config(&ca.pem(), &[b"http/1.1"], None);
    (dir, up, proxy, cfg)
}

/// The responses in `bytes`, one after another: each head, and its body's length (framed by
/// `content-length` or chunked).
fn responses(mut bytes: &[u8]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a whole head")
            + 4;
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        bytes = &bytes[end..];
        let mut len = 0;
        if let Some(at) = head.find("content-length: ") {
            let digits = head[at + 16..].split("\r\n").next().expect("a length");
            len = digits.parse().expect("a number");
            bytes = &bytes[len..];
        } else if head.contains("transfer-encoding: chunked") {
            loop {
                let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("size");
                let size = std::str::from_utf8(&bytes[..line_end]).expect("ascii");
                let size = usize::from_str_radix(size, 16).expect("hex size");
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    bytes = &bytes[2..];
                    break;
                }
                len += size;
                bytes = &bytes[size + 2..];
            }
        }
        out.push((head, len));
    }
    out
}

/// Reads one response head off `s`, byte by byte.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(REQUEST_LIMIT, "response head", s.read_exact(&mut byte))
            .await
            .expect("read head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// HTTP/1.1 over TLS is served by the proxy's own HTTP/1 server: a response larger than the
/// socket buffers hold is written whole to a slow reader (that its last bytes are not held
/// back in the TLS session is `server1`'s unit test); pipelined requests are answered in order
/// on one connection; and a connection closed after its last answer ends with `close_notify`,
/// so the client can tell it from a cut one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_writes_large_answers_whole_pipelines_and_closes_with_close_notify() {
    let (_dir, up, proxy, cfg) = http1_over_tls().await;
    // A small receive buffer, read slowly: the proxy's writes find the socket full.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    let tcp = socket.connect(proxy.listen).await.expect("connect");
    let name = ServerName::try_from("api.example.com").expect("server name");
    let mut stream = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let big = 8 * 1024 * 1024 + 11;
    let request = format!(
        "GET /big HTTP/1.1\r\nHost: api.example.com\r\nx-echo-response-bytes: {big}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {big}\r\n")),
        "{head}"
    );
    let slow_read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = big;
        while left > 0 {
            let n = stream.read(&mut buf[..left.min(64 * 1024)]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n;
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        Ok::<_, std::io::Error>(())
    };
    within(REQUEST_LIMIT, "the large body", slow_read)
        .await
        .expect("the large answer arrives whole, with no further request");

    let requests =
        "POST /small HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\n\r\nhello\
                    GET /last HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n";
    stream.write_all(requests.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    within(REQUEST_LIMIT, "answers", stream.read_to_end(&mut answer))
        .await
        .expect("the connection ends with close_notify, not cut");
    let answers = responses(&answer);
    assert_eq!(answers.len(), 2, "{:?}", answers);
    for (head, _) in &answers {
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    assert!(
        answers[1].0.contains("connection: close"),
        "{}",
        answers[1].0
    );
    let seen = up.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/big", "/small", "/last"]);
    assert_eq!(seen[1].body_len, 5);
}

/// Over TLS as over plain TCP: `expect: 100-continue` gets its interim answer before the body
/// is sent, and a WebSocket upgrade switches the TLS connection to a tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_answers_100_continue_and_upgrades_to_a_websocket() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let ws = Upstream::websocket("ws").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let template = format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n{listener}    routes:\n      \
         - name: ws\n        match: {{ path: {{ prefix: /chat }} }}\n        backends: [{{ cluster: ws }}]\n      \
         - name: all\n        backends: [{{ cluster: up }}]\nclusters:\n  - name: up\n    \
         endpoints: [{{ address: \"{}\" }}]\n  - name: ws\n    endpoints: [{{ address: \"{}\" }}]\n",
        up.addr, ws.addr
    );
    let proxy = Proxy::start(&template).await;
    let cfg = client_config(&ca.pem(), &[b"http/1.1"], None);

    let mut s = handshake(proxy.listen, Arc::clone(&cfg), "api.example.com")
        .await
        .expect("handshake");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 5\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let mut interim = [0u8; 25];
    within(REQUEST_LIMIT, "100 continue", s.read_exact(&mut interim))
        .await
        .expect("read 100");
    assert_eq!(&interim[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.expect("write body");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(up.seen()[0].body_len, 5);

    let mut s = handshake(proxy.listen, cfg, "api.example.com")
        .await
        .expect("handshake");
    let upgrade = ws_upgrade_head("api.example.com");
    s.write_all(upgrade.as_bytes())
        .await
        .expect("write upgrade");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (op, greeting) = within(REQUEST_LIMIT, "greeting", ws_read_frame(&mut s))
        .await
        .expect("read greeting");
    assert_eq!((op, greeting.as_slice()), (1, &b"hello from ws"[..]));
    s.write_all(&ws_frame(1, b"over tls", Some([1, 2, 3, 4])))
        .await
        .expect("send frame");
    let (op, echoed) = within(REQUEST_LIMIT, "echo", ws_read_frame(&mut s))
        .await
        .expect("read echo");
    assert_eq!((op, echoed.as_slice()), (1, &b"over tls"[..]));
}

/// A TLS client that negotiated no protocol and opens with HTTP/2's preface is served HTTP/2
/// (as Envoy's codec `auto` does); with ALPN `http/1.1` or none, HTTP/1.1 is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_alpn_serves_http2_with_prior_knowledge() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let stream = handshake(
        proxy.listen,
        client_config(&ca.pem(), &[], None),
        "api.example.com",
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://api.example.com/prior")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = within(REQUEST_LIMIT, "h2 answer", send.send_request(req))
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen()[0].uri, "/prior");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_over_tls_are_counted() {
    let (_dir, _up, proxy, cfg) = http1_over_tls().await;
    let mut stream = handshake(proxy.listen, cfg, "api.example.com")
        .await
        .expect("handshake");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost : api.example.com\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    let line = "strait_listener_malformed_requests_total{listener=\"main\",status=\"400\"} 1";
    let counted = eventually(Duration::from_secs(5), || async {
        proxy.admin_get("/metrics").await.text().contains(line)
    })
    .await;
    assert!(counted, "{}", proxy.admin_get("/metrics").await.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_request_over_tls_without_host_or_with_two_gets_400() {
    let (_dir, up, proxy, cfg) = http1_over_tls().await;
    for (head, status) in [
        (&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..], "400"),
        (
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n", "200"),
    ] {
        let mut stream = handshake(proxy.listen, Arc::clone(&cfg), "api.example.com")
            .await
            .expect("handshake");
        stream.write_all(head).await.expect("write");
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {answer:?}"
        );
    }
    assert_eq!(
        up.hits(),
        1,
        "only the request with one host reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_optional_and_the_spiffe_identity_passed_on() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let other = Ca::new("someone else's CA");
    let up = Upstream::echo("app").await;
    let ca_path = dir.write("clients.pem", &ca.pem());
    let spiffe = "spiffe://cluster.local/ns/shop/sa/checkout";
    let (good_c, good_k) = ca.leaf(&["checkout"], &[spiffe], (-1, 30));
    let (bad_c, bad_k) = other.leaf(&["checkout"], &[spiffe], (-1, 30));
    let (old_c, old_k) = ca.leaf(&["checkout"], &[spiffe], (-30, -1));
    let (future_c, future_k) = ca.leaf(&["checkout"], &[spiffe], (2, 30));

    let required = format!("      client_auth: {{ ca: \"{ca_path}\" }}\n");
    let (listener, _) = tls_listener(&dir, &ca, &required);
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let anonymous = client_config(&ca.pem(), &[b"http/1.1"], None);
    let refused = match handshake(proxy.listen, anonymous, "api.example.com").await {
        // TLS 1.3: the client learns of the refusal on its first read.
        Ok(stream) => get_over(stream, "api.example.com").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    // Over HTTP/1.1 and HTTP/2, with a forged identity and without one (an HTTP/1.1 request's
    // fields then go upstream as they came, the identity written after them): the verified
    // identity, once.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for forge in [true, false] {
            let with = client_config(&ca.pem(), &[alpn], Some((&good_c, &good_k)));
            let (status, body) = get_from_api(proxy.listen, with, forge).await;
            assert_eq!(status, 200);
            let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(
                seen["headers"]["x-forwarded-client-cert"],
                serde_json::json!([format!("URI={spiffe}")]),
                "the verified identity alone (forged: {forge}): {body}"
            );
        }
    }
    for (what, cert, key) in [
        ("another CA's", &bad_c, &bad_k),
        ("an expired", &old_c, &old_k),
        ("a not yet valid", &future_c, &future_k),
    ] {
        let cfg = client_config(&ca.pem(), &[b"http/1.1"], Some((cert, key)));
        let refused = match handshake(proxy.listen, cfg, "api.example.com").await {
            Ok(stream) => get_over(stream, "api.example.com").await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{what} client certificate was accepted");
    }
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "strait_tls_handshake_failures_total{listener=\"main\",reason=\"handshake\"} "
        ) && !l.ends_with(" 0")),
        "failures are counted: {metrics}"
    );

    let optional = format!("      client_auth: {{ ca: \"{ca_path}\", required: false }}\n");
    let (listener, _) = tls_listener(&dir, &ca, &optional);
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let anonymous = client_config(&ca.pem(), &[b"http/1.1"], None);
    for forge in [true, false] {
        let (status, body) = get_from_api(proxy.listen, Arc::clone(&anonymous), forge).await;
        assert_eq!(status, 200);
        assert!(!body.contains("x-forwarded-client-cert"), "{body}");
    }

    // `client_cert: false`: the identity is not sent, and a forged header is still removed.
    let listener = listener.replace(
        "{ x_forwarded_proto: replace }",
        "{ x_forwarded_proto: replace, client_cert: false }",
    );
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let with = client_config(&ca.pem(), &[b"http/1.1"], Some((&good_c, &good_k)));
    let stream = handshake(proxy.listen, with, "api.example.com")
        .await
        .expect("handshake");
    let (status, body) = get_over(stream, "api.example.com").await.expect("request");
    assert_eq!(status, 200);
    assert!(!body.contains("x-forwarded-client-cert"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_failures_and_a_bad_pair_is_refused() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, default_cert) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let version = proxy.config_version().await;
    let cfg = client_config(&ca.pem(), &[b"http/1.1"], None);

    let addr = proxy.listen;
    let flowing = {
        let cfg = Arc::clone(&cfg);
        tokio::spawn(async move {
            let mut failures = 0;
            for _ in 0..60 {
                let ok = match handshake(addr, Arc::clone(&cfg), "127.0.0.1").await {
                    Ok(stream) => matches!(get_over(stream, "127.0.0.1").await, Ok((200, _))),
                    Err(_) => false,
                };
                failures += usize::from(!ok);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rc, rk) = ca.leaf(&["rotated.test", "127.0.0.1"], &[], (-1, 30));
    dir.write("default.key", &rk);
    dir.write("default.pem", &rc);
    let rotated = proxy
        .wait_version_above(version, Duration::from_secs(10))
        .await;
    assert!(rotated.is_some(), "the new certificate was not loaded");
    // A fresh client: a resumed session would report the certificate of its first handshake.
    let fresh = client_config(&ca.pem(), &[b"http/1.1"], None);
    let stream = handshake(proxy.listen, fresh, "127.0.0.1")
        .await
        .expect("handshake");
    assert_eq!(served_names(&stream), vec!["rotated.test".to_owned()]);
    assert_eq!(
        flowing.await.expect("requests"),
        0,
        "requests failed during the rotation"
    );

    // A key that is not the certificate's: refused, the rotated pair keeps serving.
    let version = proxy.config_version().await;
    let (_, other_key) = ca.leaf(&["x.test"], &[], (-1, 30));
    dir.write("default.key", &other_key);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        proxy.config_version().await,
        version,
        "a mismatched pair was applied"
    );
    let dump = proxy.admin_get("/config_dump").await.text();
    assert!(
        dump.contains("do not belong together") && dump.contains(&default_cert),
        "the error names the files: {dump}"
    );
    drop(cfg);
    let fresh = client_config(&ca.pem(), &[b"http/1.1"], None);
    let stream = handshake(proxy.listen, fresh, "127.0.0.1")
        .await
        .expect("still served");
    assert_eq!(served_names(&stream), vec!["rotated.test".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_by_default() {
    let dir = Dir::new();
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    let app = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    // The TLS upstream is a second proxy terminating TLS in front of the echo server.
    let backend = Proxy::start(&config(app.addr, &listener, "")).await;
    let ca_path = dir.write("upstream-ca.pem", &ca.pem());
    let other_path = dir.write("other-ca.pem", &other.pem());

    let verified = format!("    tls: {{ ca: \"{ca_path}\", server_name: api.example.com }}\n");
    let front = Proxy::start(&config(backend.listen, "", &verified)).await;
    let resp = front.get("api.example.com", "/").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.upstream(), "app");

    let wrong = format!("    tls: {{ ca: \"{other_path}\", server_name: api.example.com }}\n");
    let front = Proxy::start(&config(backend.listen, "", &wrong)).await;
    let resp = front.get("api.example.com", "/").await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.header("x-strait-error").as_deref(),
        Some("connect_failed")
    );
    assert!(resp.text().contains("TLS with"), "{}", resp.text());

    let skip = "    tls: { insecure_skip_verify: true, server_name: whatever.test }\n";
    let front = Proxy::start(&config(backend.listen, "", skip)).await;
    assert_eq!(front.get("api.example.com", "/").await.status, 200);
    assert!(
        front.logs().contains("insecure_skip_verify"),
        "a warning at start"
    );
}

/// An RSA key made by openssl (ring makes none), as rcgen takes it.
fn rsa_key() -> KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("the openssl command (apt-get install openssl)");
    assert!(out.status.success(), "openssl genpkey failed");
    KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("RSA key")
}

/// Two certificates for one name, ECDSA first and RSA second: a client that verifies only RSA
/// signatures gets the RSA one (nginx's two `ssl_certificate` lines), the others the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_and_an_rsa_certificate_for_one_name_each_serve_their_clients() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (ec, ek) = ca.leaf(&["dual.test"], &[], (-1, 30));
    let (rc, rk) = ca.leaf_with(rsa_key(), &["dual.test"], &[], (-1, 30));
    let listener = format!(
        "    tls:\n      certificates: [{{ cert: \"{}\", key: \"{}\" }}, {{ cert: \"{}\", key: \"{}\" }}]\n",
        dir.write("ec.pem", &ec),
        dir.write("ec.key", &ek),
        dir.write("rsa.pem", &rc),
        dir.write("rsa.key", &rk),
    );
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    // A client whose verifier takes only RSA signatures offers only RSA schemes.
    // (The chain, signed by the ECDSA CA, is still verified: only the offered schemes change.)
    let mut provider = rustls::crypto::ring::default_provider();
    let rsa: Vec<_> = (provider.signature_verification_algorithms.mapping.iter())
        .filter(|(scheme, _)| {
            matches!(
                scheme,
                rustls::SignatureScheme::RSA_PSS_SHA256 | rustls::SignatureScheme::RSA_PKCS1_SHA256
            )
        })
        .copied()
        .collect();
    provider.signature_verification_algorithms.mapping = Box::leak(rsa.into_boxed_slice());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pemfile_certs(&ca.pem()).remove(0))
        .expect("root");
    let mut rsa_only = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    rsa_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    for (cfg, expected) in [
        (Arc::new(rsa_only), &rc),
        (client_config(&ca.pem(), &[b"http/1.1"], None), &ec),
    ] {
        let stream = handshake(proxy.listen, cfg, "dual.test")
            .await
            .expect("handshake");
        let served = stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a certificate")[0]
            .clone();
        assert_eq!(served, rustls_pemfile_certs(expected).remove(0));
        assert_eq!(get_over(stream, "dual.test").await.expect("get").0, 200);
    }
}

/// A client that connects and closes (a load balancer's TCP check) is counted apart from
/// broken handshakes, which operators alert on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_and_close_is_no_handshake_failure() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(proxy.listen).await.expect("connect");
        // A byte, so the listener's deferred accept takes the connection at once.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16]).await;
        drop(tcp);
    }
    let failures = |reason: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "strait_tls_handshake_failures_total",
                    &[("listener", "main"), ("reason", reason)],
                )
                .await
        }
    };
    let counted = eventually(Duration::from_secs(5), || async {
        failures("closed").await == Some(3.0)
    })
    .await;
    assert!(counted, "{}", proxy.admin_get("/metrics").await.text());
    assert_eq!(failures("handshake").await, Some(0.0));
}

/// Plain HTTP sent to a TLS listener gets a 400 saying so, as from nginx, not a TLS alert the
/// client cannot read; a TLS client on the same listener is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_tls_listener_gets_400_saying_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let mut tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    within(Duration::from_secs(5), "the answer and the close", async {
        tcp.read_to_end(&mut answer).await
    })
    .await
    .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("x-strait-error: bad_request"), "{answer}");
    assert!(
        answer.ends_with("plain HTTP sent to a TLS port; use https://\n"),
        "{answer}"
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(
        proxy
            .metric(
                "strait_tls_handshake_failures_total",
                &[("listener", "main"), ("reason", "plain_http")],
            )
            .await,
        Some(1.0)
    );
    // Not TLS and not HTTP: the handshake's failure, as before.
    let mut tcp = TcpStream::connect(proxy.listen).await.expect("connect");
    tcp.write_all(b"\x00\x01garbage").await.expect("write");
    let mut rest = Vec::new();
    let _ = within(
        Duration::from_secs(5),
        "the close",
        tcp.read_to_end(&mut rest),
    )
    .await;
    assert!(!rest.starts_with(b"HTTP"), "{rest:?}");
}

/// A session is not checked again when it resumes: once `client_auth` is tightened by a
/// reload, sessions made under the old rule must not resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tightened_client_auth_ends_resumption_of_older_sessions() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let up = Upstream::echo("app").await;
    let ca_path = dir.write("clients.pem", &ca.pem());
    let optional = format!("      client_auth: {{ ca: \"{ca_path}\", required: false }}\n");
    let required = format!("      client_auth: {{ ca: \"{ca_path}\" }}\n");
    let (listener, _) = tls_listener(&dir, &ca, &optional);
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    // One client config, one session store: what the first connection leaves, the next offers.
    let anonymous = client_config(&ca.pem(), &[b"http/1.1"], None);
    for _ in 0..2 {
        let stream = handshake(proxy.listen, Arc::clone(&anonymous), "api.example.com")
            .await
            .expect("handshake");
        assert_eq!(
            get_over(stream, "api.example.com").await.expect("get").0,
            200
        );
    }
    let version = proxy.config_version().await;
    let (listener, _) = tls_listener(&dir, &ca, &required);
    proxy.write_config(&config(up.addr, &listener, ""));
    assert!(proxy
        .wait_version_above(version, Duration::from_secs(10))
        .await
        .is_some());
    let served = match handshake(proxy.listen, Arc::clone(&anonymous), "api.example.com").await {
        Ok(stream) => {
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let answered = get_over(stream, "api.example.com").await.is_ok();
            resumed || answered
        }
        Err(_) => false,
    };
    assert!(
        !served,
        "a session made without a certificate resumed once one was required"
    );
}

/// Two clusters naming one address with different TLS never share a pooled connection: a
/// connection opened for one would carry the other's requests in the clear, unverified, or
/// under the other's client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_other_tls_to_one_address_share_no_connection() {
    let dir = Dir::new();
    let ca = Ca::new("upstream CA");
    let other = Ca::new("other CA");
    let app = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let backend = Proxy::start(&config(app.addr, &listener, "")).await;
    let other_path = dir.write("other-ca.pem", &other.pem());
    let route = |prefix: &str| {
        format!("      - {{ match: {{ path: {{ prefix: /{prefix} }} }}, backends: [{{ cluster: {prefix} }}] }}\n")
    };
    let cluster = |name: &str, addr: std::net::SocketAddr, tls: &str| {
        format!("  - name: {name}\n    endpoints: [{{ address: \"{addr}\" }}]\n{tls}")
    };
    let front = Proxy::start(&format!(
        "workers: 1\nlisteners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n{}{}{}{}clusters:\n{}{}{}{}",
        route("plain"),
        route("tls"),
        route("skip"),
        route("strict"),
        cluster("plain", app.addr, ""),
        cluster("tls", app.addr, "    tls: { insecure_skip_verify: true }\n"),
        cluster("skip", backend.listen, "    tls: { insecure_skip_verify: true, server_name: x.test }\n"),
        cluster(
            "strict",
            backend.listen,
            &format!("    tls: {{ ca: \"{other_path}\", server_name: api.example.com }}\n")
        ),
    ))
    .await;
    for (first, then) in [("plain", "tls"), ("skip", "strict")] {
        // One connection at a time: the second request finds the first's idle in the pool.
        let resp = front.get("a.example", &format!("/{first}")).await;
        assert_eq!(resp.status, 200, "{first}: {}", resp.text());
        let resp = front.get("a.example", &format!("/{then}")).await;
        assert_eq!(resp.status, 503, "{then} after {first}: {}", resp.text());
        assert_eq!(
            resp.header("x-strait-error").as_deref(),
            Some("connect_failed")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_by_peer_identity() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let up = Upstream::echo("app").await;
    let ca_path = dir.write("clients.pem", &ca.pem());
    let policy = format!(
        "      client_auth: {{ ca: \"{ca_path}\", required: false }}\n    authorization:\n      default: deny\n      rules:\n        - {{ name: shop, action: allow, peers: ['spiffe://cluster.local/ns/shop/*'] }}\n"
    );
    let (listener, _) = tls_listener(&dir, &ca, &policy);
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let status = |cert: Option<(String, String)>| {
        let cfg = match &cert {
            Some((c, k)) => client_config(&ca.pem(), &[b"http/1.1"], Some((c, k))),
            None => client_config(&ca.pem(), &[b"http/1.1"], None),
        };
        async move {
            let stream = handshake(proxy.listen, cfg, "api.example.com")
                .await
                .expect("handshake");
            get_over(stream, "api.example.com")
                .await
                .expect("request")
                .0
        }
    };
    let shop = ca.leaf(
        &["a"],
        &["spiffe://cluster.local/ns/shop/sa/checkout"],
        (-1, 30),
    );
    let other = ca.leaf(
        &["b"],
        &["spiffe://cluster.local/ns/ops/sa/deploy"],
        (-1, 30),
    );
    assert_eq!(status(Some(shop)).await, 200);
    assert_eq!(status(Some(other)).await, 403);
    assert_eq!(status(None).await, 403, "no verified identity, no match");
}

/// Mesh mTLS between two proxies: each presents a SPIFFE identity, each checks the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_mtls_checks_spiffe_identities_both_ways() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let app = Upstream::echo("app").await;
    let ca_path = dir.write("mesh-ca.pem", &ca.pem());
    let server_id = "spiffe://cluster.local/ns/shop/sa/cart";
    let client_id = "spiffe://cluster.local/ns/web/sa/frontend";
    let (sc, sk) = ca.leaf(&[], &[server_id], (-1, 30));
    let (cc, ck) = ca.leaf(&[], &[client_id], (-1, 30));
    let (server_cert, server_key) = (dir.write("cart.pem", &sc), dir.write("cart.key", &sk));
    let (client_cert, client_key) = (dir.write("web.pem", &cc), dir.write("web.key", &ck));
    let inbound = format!(
        "    tls:\n      certificates: [{{ cert: \"{server_cert}\", key: \"{server_key}\" }}]\n      client_auth: {{ ca: \"{ca_path}\" }}\n    authorization:\n      default: deny\n      rules: [{{ name: web, action: allow, peers: ['spiffe://cluster.local/ns/web/*'] }}]\n"
    );
    let cart = Proxy::start(&config(app.addr, &inbound, "")).await;
    let outbound = |ids: &str, identity: &str| {
        format!(
            "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    routes:\n      - backends: [{{ cluster: cart }}]\nclusters:\n  - name: cart\n    endpoints: [{{ address: \"{}\"{identity} }}]\n    tls:\n      ca: \"{ca_path}\"\n      cert: \"{client_cert}\"\n      key: \"{client_key}\"\n      spiffe_ids: [{ids}]\n",
            cart.listen
        )
    };
    let web = Proxy::start(&outbound("'spiffe://cluster.local/ns/shop/*'", "")).await;
    let resp = web.get("cart.example", "/items").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.upstream(), "app");
    let seen: serde_json::Value = serde_json::from_str(&resp.text()).expect("echo json");
    assert_eq!(
        seen["headers"]["x-forwarded-client-cert"][0],
        format!("URI={client_id}"),
        "the cart side saw the web side's identity"
    );

    // The endpoint must be exactly this identity: the cart's certificate is refused.
    let wrong = ", identity: 'spiffe://cluster.local/ns/shop/sa/payments'";
    let web = Proxy::start(&outbound("'spiffe://cluster.local/ns/shop/*'", wrong)).await;
    let resp = web.get("cart.example", "/items").await;
    assert_eq!(resp.status, 503);
    assert!(
        resp.text().contains("not the one expected"),
        "{}",
        resp.text()
    );
    let metrics = web.admin_get("/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("strait_upstream_identity_mismatches_total{cluster=\"cart\"} ")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// The verified identity keys rate limits and is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_identity_keys_rate_limits_and_is_logged() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let up = Upstream::echo("app").await;
    let ca_path = dir.write("clients.pem", &ca.pem());
    let log_path = dir.0.join("access.log");
    let extra = format!(
        "      client_auth: {{ ca: \"{ca_path}\" }}\n    access_log: {{ path: \"{}\", fields: [status, peer_identity] }}\n",
        log_path.display()
    );
    let (listener, _) = tls_listener(&dir, &ca, &extra);
    let template = config(up.addr, &listener, "").replace(
        "        backends: [{ cluster: up }]\n",
        "        backends: [{ cluster: up }]\n        rate_limit: { requests_per_second: 1, burst: 1, key: peer }\n",
    );
    let proxy = Proxy::start(&template).await;
    let status = |id: &str| {
        let (c, k) = ca.leaf(&["w"], &[id], (-1, 30));
        let cfg = client_config(&ca.pem(), &[b"http/1.1"], Some((&c, &k)));
        async move {
            let stream = handshake(proxy.listen, cfg, "api.example.com")
                .await
                .expect("handshake");
            get_over(stream, "api.example.com")
                .await
                .expect("request")
                .0
        }
    };
    let a = "spiffe://cluster.local/ns/a/sa/x";
    let b = "spiffe://cluster.local/ns/b/sa/y";
    assert_eq!(status(a).await, 200);
    assert_eq!(status(a).await, 429, "a's bucket is spent");
    assert_eq!(status(b).await, 200, "b has its own bucket");
    let mut logged = String::new();
    for _ in 0..40 {
        logged = std::fs::read_to_string(&log_path).unwrap_or_default();
        if logged.lines().count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        logged.contains(&format!("\"peer_identity\":\"{b}\"")),
        "the identity is logged: {logged}"
    );
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "strait_peer_requests_total{{listener=\"main\",peer=\"{a}\"}} 2"
        )),
        "requests are counted by peer: {metrics}"
    );
}

/// TLS passthrough: connections are routed by SNI, untouched, to TLS backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_raw_tls_by_sni() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let app = Upstream::echo("app").await;
    let (listener, _) = tls_listener(&dir, &ca, "");
    let backend = Proxy::start(&config(app.addr, &listener, "")).await;
    let front = Proxy::start(&format!(
        "listeners:\n  - name: edge\n    address: ${{LISTEN}}\n    tls_passthrough:\n      - {{ server_names: [api.example.com, \"*.example.com\"], cluster: backend }}\nclusters:\n  - name: backend\n    endpoints: [{{ address: \"{}\" }}]\n",
        backend.listen
    ))
    .await;
    let cfg = client_config(&ca.pem(), &[b"h2", b"http/1.1"], None);
    // The session is end to end: the client sees the backend's certificate for its SNI.
    for (sni, served) in [
        ("api.example.com", "api.example.com"),
        ("www.example.com", "*.example.com"),
    ] {
        let stream = handshake(front.listen, Arc::clone(&cfg), sni)
            .await
            .expect("handshake through");
        assert_eq!(served_names(&stream), vec![served.to_owned()]);
        let (status, body) = get_over(stream, sni).await.expect("request through");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"upstream\":\"app\""), "{body}");
    }
    // A name no entry takes: closed without a byte.
    let refused = handshake(front.listen, Arc::clone(&cfg), "other.test").await;
    assert!(refused.is_err(), "an unrouted name was passed through");
    // Not TLS at all: closed.
    let plain = within(
        Duration::from_secs(5),
        "plain",
        front.send(Proto::H1, simple("GET", "a", "/")),
    )
    .await;
    assert!(plain.is_err());
}

/// Routes can match on the verified peer identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_on_peer_identity() {
    let dir = Dir::new();
    let ca = Ca::new("mesh CA");
    let shop_app = Upstream::echo("shop-app").await;
    let other_app = Upstream::echo("other-app").await;
    let ca_path = dir.write("clients.pem", &ca.pem());
    let (listener, _) = tls_listener(
        &dir,
        &ca,
        &format!("      client_auth: {{ ca: \"{ca_path}\", required: false }}\n"),
    );
    let proxy = Proxy::start(&format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n{listener}    routes:\n      - match: {{ peers: ['spiffe://cluster.local/ns/shop/*'] }}\n        backends: [{{ cluster: shop }}]\n      - backends: [{{ cluster: other }}]\nclusters:\n  - name: shop\n    endpoints: [{{ address: \"{}\" }}]\n  - name: other\n    endpoints: [{{ address: \"{}\" }}]\n",
        shop_app.addr, other_app.addr
    ))
    .await;
    let upstream_for = |cert: Option<(String, String)>| {
        let cfg = match &cert {
            Some((c, k)) => client_config(&ca.pem(), &[b"http/1.1"], Some((c, k))),
            None => client_config(&ca.pem(), &[b"http/1.1"], None),
        };
        async move {
            let stream = handshake(proxy.listen, cfg, "api.example.com")
                .await
                .expect("handshake");
            let (status, body) = get_over(stream, "api.example.com").await.expect("request");
            assert_eq!(status, 200, "{body}");
            let seen: serde_json::Value = serde_json::from_str(&body).expect("json");
            seen["upstream"].as_str().unwrap_or_default().to_owned()
        }
    };
    let shop = ca.leaf(
        &["a"],
        &["spiffe://cluster.local/ns/shop/sa/cart"],
        (-1, 30),
    );
    let ops = ca.leaf(&["b"], &["spiffe://cluster.local/ns/ops/sa/x"], (-1, 30));
    assert_eq!(upstream_for(Some(shop)).await, "shop-app");
    assert_eq!(upstream_for(Some(ops)).await, "other-app");
    assert_eq!(upstream_for(None).await, "other-app");
}

/// A verifier that records the stapled OCSP response, then verifies as usual.
#[derive(Debug)]
struct RecordOcsp {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for RecordOcsp {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = ocsp.to_vec();
        // The staple here is test bytes, not a signed response: check the chain without it.
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A configured OCSP response is stapled to the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_responses_are_stapled() {
    let dir = Dir::new();
    let ca = Ca::new("test CA");
    let up = Upstream::echo("app").await;
    let (cert_pem, key) = ca.leaf(&["api.example.com"], &[], (-1, 30));
    let (cert, key) = (dir.write("c.pem", &cert_pem), dir.write("c.key", &key));
    let staple = ocsp_response(&dir, &ca, &cert_pem, "c");
    let ocsp = dir.0.join("c.ocsp");
    std::fs::write(&ocsp, &staple).expect("ocsp file");
    let listener = format!(
        "    tls:\n      certificates: [{{ cert: \"{cert}\", key: \"{key}\", ocsp: \"{}\" }}]\n",
        ocsp.display()
    );
    let proxy = Proxy::start(&config(up.addr, &listener, "")).await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pemfile_certs(&ca.pem()).remove(0))
        .expect("root");
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .expect("verifier");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let verifier = RecordOcsp {
        inner,
        seen: Arc::clone(&seen),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let stream = handshake(proxy.listen, Arc::new(cfg), "api.example.com")
        .await
        .expect("handshake");
    drop(stream);
    assert_eq!(*seen.lock().expect("lock"), staple);

    // What is no OCSP response for this certificate is refused, the file named: clients that
    // ask for stapling would refuse every handshake with it.
    let (other_pem, _) = ca.leaf(&["other.example.com"], &[], (-1, 30));
    let others = ocsp_response(&dir, &ca, &other_pem, "other");
    for (what, bytes) in [
        ("garbage", b"test OCSP response bytes".to_vec()),
        ("another certificate's", others),
    ] {
        std::fs::write(&ocsp, &bytes).expect("ocsp file");
        let file =
            TempFile::new(&config(up.addr, &listener, "").replace("${LISTEN}", "127.0.0.1:1"));
        let out = strait()
            .arg("validate")
            .arg(&file.path)
            .output()
            .expect("strait validate");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} was accepted");
        assert!(said.contains(&ocsp.display().to_string()), "{what}: {said}");
    }
}

/// A real OCSP response for `cert_pem` from `ca`, made by `openssl ocsp` acting as client and
/// responder at once (`good`, valid for a day).
fn ocsp_response(dir: &Dir, ca: &Ca, cert_pem: &str, name: &str) -> Vec<u8> {
    let ca_cert = dir.write(&format!("{name}-ca.pem"), &ca.pem());
    let ca_key = dir.write(&format!("{name}-ca.key"), &ca.key.serialize_pem());
    let leaf = dir.write(&format!("{name}-leaf.pem"), cert_pem);
    let serial = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", &leaf])
        .output()
        .expect("the openssl command (apt-get install openssl)");
    let serial = String::from_utf8_lossy(&serial.stdout);
    let serial = serial.trim().trim_start_matches("serial=");
    let index = dir.write(
        &format!("{name}-index.txt"),
        &format!("V\t301231000000Z\t\t{serial}\tunknown\t/CN={name}\n"),
    );
    let out = dir.0.join(format!("{name}.der"));
    let status = std::process::Command::new("openssl")
        .args([
            "ocsp", "-index", &index, "-rsigner", &ca_cert, "-rkey", &ca_key,
        ])
        .args([
            "-CA", &ca_cert, "-issuer", &ca_cert, "-cert", &leaf, "-ndays", "1",
        ])
        .arg("-respout")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl ocsp");
    assert!(status.success(), "openssl ocsp failed");
    std::fs::read(&out).expect("the OCSP response")
}
