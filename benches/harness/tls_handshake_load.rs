//! The load generator of the harness's `tls-handshake` scenario: TLS 1.3 handshakes, one
//! request per connection, as many as the target answers.
//!
//! wrk does the same exchange (`-H 'Connection: close'`), but its client (OpenSSL 3) spends
//! about 200 µs of the load generator's core on each resumed handshake, more than any of the
//! proxies spends on its side of it. With wrk, the scenario's handshakes/s measured wrk. This
//! client spends much less, so the proxy's core is the one that runs out.
//!
//! Each of CONNS connections, in a loop until SECONDS have passed:
//! connect; a TLS 1.3 handshake that resumes the session from a ticket of an earlier connection
//! (X25519, no ALPN, as wrk does); `GET PATH` with `Connection: close`; read the whole response
//! (its head, then a `Content-Length` body, or until the end of the stream without one); send
//! close_notify; close. Like wrk, it does not check the server's certificate chain, only the
//! handshake's signature (TLS 1.3 CertificateVerify), which a full handshake still costs.
//!
//! Usage: `tls-handshake-load ADDR CONNS SECONDS [PATH] [--no-resume]`
//!
//! Prints one JSON line: `requests` (exchanges completed within SECONDS with a 2xx or 3xx
//! answer), `seconds`, `bytes` (response bytes), `errors` (failed exchanges and other
//! statuses), `resumed` (handshakes that resumed a session) and `latency_us` (percentiles of
//! the whole exchange, connect to the response's last byte).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one exchange may take before it counts as an error (wrk's `--timeout 5s`).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let resume = !args.iter().any(|a| a == "--no-resume");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--no-resume").collect();
    let usage = "usage: tls-handshake-load ADDR CONNS SECONDS [PATH] [--no-resume]";
    let (Some(addr), Some(conns), Some(seconds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parsed = (
        addr.parse::<SocketAddr>(),
        conns.parse::<usize>(),
        seconds.parse::<f64>(),
    );
    let (Ok(addr), Ok(conns), Ok(seconds)) = parsed else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let path = args.get(3).map_or("/", |p| p.as_str());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    let stats = local.block_on(
        &runtime,
        run(
            addr,
            conns,
            Duration::from_secs_f64(seconds),
            request,
            resume,
        ),
    );
    println!("{}", stats.json(seconds));
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    bytes: u64,
    errors: u64,
    resumed: u64,
}

impl Stats {
    fn json(mut self, seconds: f64) -> String {
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        let at = |q: f64| -> u64 {
            if n == 0 {
                0
            } else {
                self.latencies_us[((n as f64 * q) as usize).min(n - 1)]
            }
        };
        let mean = if n == 0 {
            0.0
        } else {
            self.latencies_us.iter().sum::<u64>() as f64 / n as f64
        };
        format!(
            "{{\"requests\": {n}, \"seconds\": {seconds}, \"bytes\": {}, \"errors\": {}, \
             \"resumed\": {}, \"latency_us\": {{\"p50\": {}, \"p90\": {}, \"p99\": {}, \
             \"p999\": {}, \"max\": {}, \"mean\": {mean:.1}}}}}",
            self.bytes,
            self.errors,
            self.resumed,
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999),
            self.latencies_us.last().copied().unwrap_or(0),
        )
    }
}

async fn run(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    request: String,
    resume: bool,
) -> Stats {
    let provider = Arc::new(ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
        .with_no_client_auth();
    let request: Rc<[u8]> = request.into_bytes().into();
    let stats = Rc::new(RefCell::new(Stats::default()));
    let deadline = Instant::now() + duration;
    for _ in 0..conns {
        // Each connection resumes from the tickets its own previous connection received, as
        // each of wrk's connections does (OpenSSL's `SSL_clear` keeps the session). One store
        // shared by all would hold too few tickets for them (rustls keeps 8 a server), and the
        // rest would fall back to full handshakes.
        let mut config = config.clone();
        config.resumption = if resume {
            Resumption::in_memory_sessions(1)
        } else {
            Resumption::disabled()
        };
        let connector = TlsConnector::from(Arc::new(config));
        let (request, stats) = (Rc::clone(&request), Rc::clone(&stats));
        tokio::task::spawn_local(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                let started = Instant::now();
                let result = tokio::time::timeout(
                    EXCHANGE_TIMEOUT,
                    exchange(&connector, addr, &request, &mut buf),
                )
                .await;
                let done = Instant::now();
                if done > deadline {
                    return;
                }
                let mut s = stats.borrow_mut();
                match result {
                    Ok(Ok(answer)) if answer.ok => {
                        s.latencies_us.push((done - started).as_micros() as u64);
                        s.bytes += answer.bytes as u64;
                        s.resumed += u64::from(answer.resumed);
                    }
                    _ => s.errors += 1,
                }
            }
        });
    }
    tokio::time::sleep_until(deadline.into()).await;
    // The exchanges still in flight are not counted, and are dropped with the runtime.
    let counted = std::mem::take(&mut *stats.borrow_mut());
    counted
}

struct Answer {
    ok: bool,
    bytes: usize,
    resumed: bool,
}

async fn exchange(
    connector: &TlsConnector,
    addr: SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<Answer> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(request).await?;
    buf.clear();
    let (ok, bytes) = read_response(&mut tls, buf).await?;
    // What wrk does when it is done with a connection: close_notify, then close.
    tls.get_mut().1.send_close_notify();
    tls.flush().await?;
    Ok(Answer { ok, bytes, resumed })
}

/// Reads one response: the head, then its `Content-Length` body, or to the end of the
/// stream. Returns whether the status was 2xx or 3xx, and the bytes read.
async fn read_response<R: AsyncReadExt + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<(bool, usize)> {
    let mut chunk = [0u8; 4096];
    let mut want: Option<usize> = None;
    let mut ok = false;
    loop {
        if want.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]);
                ok = matches!(
                    head.split(' ').nth(1).and_then(|s| s.bytes().next()),
                    Some(b'2' | b'3')
                );
                let length = head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                });
                want = Some(length.map_or(usize::MAX, |l| end + 4 + l));
            }
        }
        if want.is_some_and(|w| buf.len() >= w) {
            return Ok((ok, buf.len()));
        }
        match io.read(&mut chunk).await {
            Ok(0) if want == Some(usize::MAX) => return Ok((ok, buf.len())),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A server that closes without close_notify after a body read to the end.
            Err(e) if want == Some(usize::MAX) && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok((ok, buf.len()))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts any certificate chain (wrk does not check it either), but checks the handshake's
/// signature with the certificate's key, so a full handshake costs what it costs.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn response(bytes: &[u8]) -> std::io::Result<(bool, usize)> {
        let mut io = bytes;
        read_response(&mut io, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn a_response_ends_with_its_content_length_or_the_stream() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(response(full).await.unwrap(), (true, full.len()));
        // bytes after the body are not waited for
        let mut longer = full.to_vec();
        longer.extend_from_slice(b"trailing");
        assert_eq!(response(&longer).await.unwrap(), (true, longer.len()));
        let no_length = b"HTTP/1.1 302 Found\r\nconnection: close\r\n\r\nuntil the end";
        assert_eq!(response(no_length).await.unwrap(), (true, no_length.len()));
        let error = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(response(error).await.unwrap(), (false, error.len()));
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello";
        let err = response(cut).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// A TLS 1.3 server that sends session tickets and answers each connection's request with
    /// a 5-byte body.
    async fn server() -> SocketAddr {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        config.ticketer = ring::Ticketer::new().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::task::spawn_local(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::task::spawn_local(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    assert!(head.starts_with(b"GET / HTTP/1.1\r\n"));
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                    let _ = tls.write_all(answer).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    async fn load(resume: bool) -> Stats {
        let addr = server().await;
        let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_string();
        run(addr, 2, Duration::from_millis(400), request, resume).await
    }

    #[tokio::test]
    async fn each_connection_resumes_the_session_of_the_one_before() {
        let stats = tokio::task::LocalSet::new().run_until(load(true)).await;
        let n = stats.latencies_us.len() as u64;
        assert!(n > 4, "{n} exchanges");
        assert_eq!(stats.errors, 0);
        // the first handshake of each of the two connections is a full one
        assert_eq!(stats.resumed, n - 2);
        assert_eq!(stats.bytes, n * 43);
    }

    #[tokio::test]
    async fn without_resumption_every_handshake_is_full() {
        let stats = tokio::task::LocalSet::new().run_until(load(false)).await;
        assert!(stats.latencies_us.len() > 2);
        assert_eq!((stats.errors, stats.resumed), (0, 0));
    }
}
