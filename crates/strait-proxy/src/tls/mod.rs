//! TLS with rustls (ring provider): server configs for listeners, client configs for clusters.
//!
//! On the data path, a TLS listener's accept is followed by the handshake (bounded by
//! `handshake_timeout`) before protocol selection: ALPN `h2` means HTTP/2, anything else
//! HTTP/1.1. Upstream connections of a TLS cluster do the client handshake right after the TCP
//! connect, inside the pool.
//!
//! Everything here is built when a config snapshot is compiled, from files: a missing,
//! unparsable or mismatched certificate or key fails the compile with the file named, so a bad
//! file on reload leaves the previous certificates serving. Session-resumption state (the
//! ticket key and the session-ID cache) is kept per listener name across reloads, so a
//! certificate rotation does not force every client into a full handshake.

mod der;
mod ocsp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use strait_config::{Alpn, ClusterTls, ListenerTls, TlsVersion};

/// Sessions remembered per listener for resumption by session ID.
const SESSION_CACHE: usize = 20_000;

/// A listener's compiled TLS: the rustls config and the handshake limit.
#[derive(Debug)]
pub struct ServerTls {
    /// What the acceptor uses.
    pub config: Arc<ServerConfig>,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// The files it was built from, to notice when they change.
    pub files: Vec<PathBuf>,
    /// Each certificate file and its leaf's expiry (Unix seconds), for metrics.
    pub expiries: Vec<(String, i64)>,
}

/// A cluster's compiled TLS.
#[derive(Debug)]
pub struct ClientTls {
    /// What the connector uses.
    pub config: Arc<ClientConfig>,
    /// The SNI and verified name, when fixed by the config.
    pub server_name: Option<ServerName<'static>>,
    /// The files it was built from.
    pub files: Vec<PathBuf>,
    /// Their contents when it was built: the cluster is rebuilt only when they changed.
    pub built_from: Vec<Option<Vec<u8>>>,
}

impl ClientTls {
    /// True when the files still hold what this was built from.
    pub fn is_current(&self) -> bool {
        fingerprint(&self.files) == self.built_from
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}"))
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{path}: no certificate in it (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    // Found by rustls-pemfile as no key at all: say what it is.
    if pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return Err(format!(
            "{path}: the key is encrypted; give it unencrypted (`openssl pkcs8 -topk8 -nocrypt`)"
        ));
    }
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{path}: not a PEM key file: {e}"))?
        .ok_or_else(|| {
            format!("{path}: no private key in it (expected PKCS#8, PKCS#1 RSA or SEC1 EC PEM)")
        })
}

fn roots(path: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
    }
    Ok(store)
}

/// A certificate chain and key, checked to belong together.
fn certified_key(
    cert_path: &str,
    key_path: &str,
    ocsp: Option<&str>,
) -> Result<CertifiedKey, String> {
    let chain = certs(cert_path)?;
    let key = key(key_path)?;
    let signer = provider::sign::any_supported_type(&key)
        .map_err(|e| format!("{key_path}: unsupported private key: {e}"))?;
    let mut certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        format!("{cert_path} and {key_path} do not belong together (the key is not the certificate's): {e}")
    })?;
    if let Some(path) = ocsp {
        let response = read(path)?;
        let leaf = certified.cert.first().map_or(&[][..], |c| c.as_ref());
        ocsp::check(&response, leaf).map_err(|e| format!("{path}: {e}"))?;
        certified.ocsp = Some(response);
    }
    Ok(certified)
}

/// Chooses a certificate by SNI: an exact name first, then a wildcard one label up, then the
/// first certificate. Among certificates for the same name (an ECDSA and an RSA one, as nginx
/// is given with two `ssl_certificate` lines), the first whose key can sign with a scheme the
/// client offers: an RSA-only client gets the RSA one, not a handshake failure.
#[derive(Debug)]
struct ByServerName {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
}

impl ByServerName {
    fn new(keys: Vec<Arc<CertifiedKey>>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(leaf) = key.cert.first() else {
                continue;
            };
            let Ok(parsed) = webpki::EndEntityCert::try_from(leaf) else {
                continue;
            };
            for name in parsed.valid_dns_names() {
                let name = name.to_ascii_lowercase();
                let by = match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_default(),
                    None => exact.entry(name).or_default(),
                };
                if !by.contains(&i) {
                    by.push(i);
                }
            }
        }
        ByServerName {
            keys,
            exact,
            wildcard,
        }
    }

    /// The certificate for `sni`, signing with one of `schemes` where the name has several.
    fn find(&self, sni: Option<&str>, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let candidates = sni.map(str::to_ascii_lowercase).and_then(|name| {
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        let index = match candidates.map(Vec::as_slice) {
            Some([one]) => *one,
            Some(several @ [first, ..]) => several
                .iter()
                .copied()
                .find(|&i| {
                    self.keys
                        .get(i)
                        .is_some_and(|k| k.key.choose_scheme(schemes).is_some())
                })
                .unwrap_or(*first),
            _ => 0,
        };
        self.keys.get(index).cloned()
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(hello.server_name(), hello.signature_schemes())
    }
}

/// Resumption state kept per listener across reloads.
type Resumption = (Arc<dyn StoresServerSessions>, Arc<dyn ProducesTickets>);

/// What a session's client was checked against: `required`, and the CA file's bytes. `None`
/// without `client_auth`.
type ClientAuthKey = Option<(bool, Vec<u8>)>;

/// A listener's session cache and ticket key, kept across reloads so that clients keep
/// resuming, but only while its `client_auth` stays as it was. A resumed session is not
/// checked again: kept across a change, a session made without a certificate would still
/// resume once one is required, and one whose certificate the new CA refuses would too.
fn resumption(listener: &str, client_auth: ClientAuthKey) -> Result<Resumption, String> {
    static KEPT: OnceLock<Mutex<HashMap<String, (ClientAuthKey, Resumption)>>> = OnceLock::new();
    let mut kept = KEPT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((auth, r)) = kept.get(listener) {
        if *auth == client_auth {
            return Ok(r.clone());
        }
    }
    let ticketer = provider::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    let made: Resumption = (
        rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
        ticketer,
    );
    kept.insert(listener.to_owned(), (client_auth, made.clone()));
    Ok(made)
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12_AND_13: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls13 => &TLS13_ONLY,
        _ => &TLS12_AND_13,
    }
}

/// The provider with modern cipher suites only: AEAD with forward secrecy (the ring provider's
/// defaults are exactly those: AES-GCM and ChaCha20-Poly1305, ECDHE).
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(provider::default_provider())
}

impl ServerTls {
    /// Builds a listener's TLS from its config, reading every file.
    pub fn compile(listener: &str, tls: &ListenerTls) -> Result<ServerTls, String> {
        let mut files = Vec::new();
        let mut expiries = Vec::new();
        let mut keys = Vec::with_capacity(tls.certificates.len());
        for c in &tls.certificates {
            let key = certified_key(&c.cert, &c.key, c.ocsp.as_deref())?;
            if let Some(t) = key.cert.first().and_then(not_after) {
                expiries.push((c.cert.clone(), t));
            }
            keys.push(Arc::new(key));
            files.push(PathBuf::from(&c.cert));
            files.push(PathBuf::from(&c.key));
            files.extend(c.ocsp.as_ref().map(PathBuf::from));
        }
        if keys.is_empty() {
            return Err("no certificate".to_owned());
        }
        let builder = ServerConfig::builder_with_provider(crypto())
            .with_protocol_versions(versions(tls.min_version))
            .map_err(|e| e.to_string())?;
        let mut client_auth_key = None;
        let builder = match &tls.client_auth {
            Some(auth) => {
                client_auth_key = Some((auth.required, read(&auth.ca)?));
                files.push(PathBuf::from(&auth.ca));
                let roots = Arc::new(roots(&auth.ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crypto());
                let verifier = if auth.required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| format!("{}: {e}", auth.ca))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(ByServerName::new(keys)));
        config.alpn_protocols = tls
            .alpn
            .iter()
            .map(|a| match a {
                Alpn::H2 => b"h2".to_vec(),
                _ => b"http/1.1".to_vec(),
            })
            .collect();
        let (cache, ticketer) = resumption(listener, client_auth_key)?;
        config.session_storage = cache;
        config.ticketer = ticketer;
        config.send_tls13_tickets = 2;
        Ok(ServerTls {
            config: Arc::new(config),
            handshake_timeout: tls.handshake_timeout.get(),
            files,
            expiries,
        })
    }
}

impl ClientTls {
    /// Builds a cluster's TLS from its config, reading every file. `endpoints` are the
    /// cluster's endpoints with the identity each must present (mesh mTLS); `mismatches`
    /// counts refused identities.
    pub fn compile(
        cluster: &str,
        tls: &ClusterTls,
        http2: bool,
        endpoints: &[(IpAddr, Option<String>)],
        mismatches: Arc<AtomicU64>,
    ) -> Result<ClientTls, String> {
        let mut files = Vec::new();
        let builder = ClientConfig::builder_with_provider(crypto())
            .with_protocol_versions(versions(TlsVersion::Tls12))
            .map_err(|e| e.to_string())?;
        let builder = if !tls.spiffe_ids.is_empty() {
            let ca = tls
                .ca
                .as_deref()
                .ok_or("spiffe_ids needs `ca`, the mesh's CA")?;
            files.push(PathBuf::from(ca));
            let verifier = SpiffeVerifier {
                anchors: roots(ca)?.roots,
                accepted: tls.spiffe_ids.clone(),
                by_endpoint: endpoints
                    .iter()
                    .filter_map(|(ip, id)| Some((*ip, id.clone()?)))
                    .collect(),
                provider: crypto(),
                mismatches,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        } else if tls.insecure_skip_verify {
            tracing::warn!(
                cluster,
                "insecure_skip_verify: the endpoints' certificates are NOT verified; anyone on \
                 the path can read and change this traffic"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification { provider: crypto() }))
        } else {
            let roots = match &tls.ca {
                Some(ca) => {
                    files.push(PathBuf::from(ca));
                    roots(ca)?
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key_path)) => {
                files.push(PathBuf::from(cert));
                files.push(PathBuf::from(key_path));
                let chain = certs(cert)?;
                builder
                    .with_client_auth_cert(chain, key(key_path)?)
                    .map_err(|e| format!("{cert} and {key_path}: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = match &tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| format!("server_name {name:?}: {e}"))?,
            ),
            None => None,
        };
        let built_from = fingerprint(&files);
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            files,
            built_from,
        })
    }
}

/// A client config for HTTPS fetches the proxy makes itself (JWKS): the system's roots.
pub(crate) fn https_client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(crypto())
                .with_protocol_versions(versions(TlsVersion::Tls12))
                .map_err(|e| e.to_string())?
                .with_root_certificates(system_roots()?)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no trusted CA certificates found on this system; give `ca` (a PEM file)".to_owned(),
        );
    }
    Ok(store)
}

/// The verified identity of a TLS peer: its SPIFFE ID (a `spiffe://` URI SAN) when its
/// certificate carries one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let id = parsed
        .valid_uri_names()
        .find(|uri| uri.starts_with("spiffe://"))
        .map(str::to_owned);
    id
}

/// A fingerprint of files' contents, to tell when they changed (missing files count too).
pub fn fingerprint(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// The handshake-signature checks every verifier here makes the same way: with the provider's
/// algorithms (only the certificate checks differ).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// True when `id` matches a pattern: exact, or a prefix ending in `*`.
fn spiffe_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => id == pattern,
    }
}

/// Mesh mTLS: the endpoint's certificate must chain to the mesh CA (for server use) and carry
/// a SPIFFE ID the config expects for that endpoint; DNS names play no part.
#[derive(Debug)]
struct SpiffeVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    accepted: Vec<String>,
    by_endpoint: HashMap<IpAddr, String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    mismatches: Arc<AtomicU64>,
}

impl rustls::client::danger::ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            Error::InvalidCertificate(match e {
                webpki::Error::CertExpired { .. } => CertificateError::Expired,
                webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
                webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
                other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
            })
        })?;
        let wanted = match server_name {
            ServerName::IpAddress(ip) => self.by_endpoint.get(&IpAddr::from(*ip)),
            _ => None,
        };
        let ok = cert
            .valid_uri_names()
            .filter(|uri| uri.starts_with("spiffe://"))
            .any(|id| match wanted {
                Some(exact) => id == exact,
                None => self.accepted.iter().any(|p| spiffe_matches(p, id)),
            });
        if !ok {
            self.mismatches.fetch_add(1, Relaxed);
            let presented: Vec<&str> = cert.valid_uri_names().collect();
            return Err(Error::General(format!(
                "peer identity {presented:?} is not the one expected ({})",
                match wanted {
                    Some(exact) => exact.clone(),
                    None => self.accepted.join(", "),
                }
            )));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// `insecure_skip_verify`: accepts any certificate, still checking handshake signatures.
#[derive(Debug)]
struct NoVerification {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// The `notAfter` of a DER certificate, as Unix seconds: read by hand from the DER (the
/// certificate was already parsed and accepted when its config was compiled; this only reads
/// one field, and gives up on anything unexpected).
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use der::tlv;
    let (_, cert, _) = tlv(cert.as_ref())?; // Certificate
    let (_, mut tbs, _) = tlv(cert)?; // TBSCertificate
                                      // Skip the optional [0] version, the serial, the signature algorithm and the issuer.
    let (tag, _, rest) = tlv(tbs)?;
    tbs = if tag == 0xa0 { tlv(rest)?.2 } else { rest };
    let (_, _, rest) = tlv(tbs)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?; // notAfter
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSS, years 1950 to 2049.
        0x17 => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        0x18 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_utc_and_generalized_times() {
        // Both encodings of 2031-01-02 03:04:05 UTC.
        let want = 1_925_089_445;
        for (tag, text) in [(0x17u8, "310102030405Z"), (0x18, "20310102030405Z")] {
            let time = |t: u8, s: &str| {
                let mut v = vec![t, s.len() as u8];
                v.extend(s.as_bytes());
                v
            };
            let seq = |inner: Vec<u8>| {
                let mut v = vec![0x30, inner.len() as u8];
                v.extend(inner);
                v
            };
            let validity = seq([time(0x17, "200101000000Z"), time(tag, text)].concat());
            let tbs = seq([
                vec![0xa0, 3, 2, 1, 2], // version
                vec![2, 1, 7],          // serial
                seq(vec![6, 1, 1]),     // algorithm
                seq(vec![]),            // issuer
                validity,
            ]
            .concat());
            let cert = seq([tbs, seq(vec![]), vec![3, 1, 0]].concat());
            assert_eq!(
                not_after(&CertificateDer::from(cert)),
                Some(want),
                "tag {tag:#x}"
            );
        }
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 5, 1])), None);
    }
}
