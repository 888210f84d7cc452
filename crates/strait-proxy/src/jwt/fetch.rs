//! JWKS fetched from a URL, off the request path: one background thread per URL, shared by
//! every listener (and every config generation) that names it, so a reload does not drop the
//! keys. The last good key set keeps serving while fetches fail; until the first fetch
//! succeeds there are no keys and tokens are refused (`unknown_key`), which fails closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use super::{Keys, SharedKeys};

/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1 << 20;
/// Time allowed for one fetch, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before fetching again after a failure (or the refresh interval, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// The keys of one JWKS URL, refreshed in the background while anyone holds this.
#[derive(Debug)]
pub struct JwksCache {
    url: String,
    keys: SharedKeys,
}

impl JwksCache {
    /// The cache of `url`: the live one when a listener already uses it, else a new one with
    /// its fetcher thread started.
    pub fn shared(url: &str, refresh: Duration) -> Result<Arc<JwksCache>, String> {
        static LIVE: OnceLock<Mutex<HashMap<String, Weak<JwksCache>>>> = OnceLock::new();
        let mut live = LIVE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(cache) = live.get(url).and_then(Weak::upgrade) {
            return Ok(cache);
        }
        let uri: http::Uri = url.parse().map_err(|e| format!("jwks.url {url:?}: {e}"))?;
        let cache = Arc::new(JwksCache {
            url: url.to_owned(),
            keys: ArcSwap::from_pointee(Keys::default()),
        });
        let weak = Arc::downgrade(&cache);
        std::thread::Builder::new()
            .name("strait-jwks".to_owned())
            .spawn(move || refresh_loop(weak, uri, refresh))
            .map_err(|e| format!("jwks.url {url:?}: cannot start its fetcher: {e}"))?;
        live.insert(url.to_owned(), Arc::downgrade(&cache));
        Ok(cache)
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }
}

fn refresh_loop(cache: Weak<JwksCache>, uri: http::Uri, refresh: Duration) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        tracing::error!(%uri, "JWKS fetcher: no runtime");
        return;
    };
    runtime.block_on(async move {
        loop {
            let result = tokio::time::timeout(FETCH_TIMEOUT, fetch(&uri))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
                .and_then(|body| Keys::parse(&body));
            // Everyone who used these keys is gone: stop.
            let Some(live) = cache.upgrade() else {
                return;
            };
            let wait = match result {
                Ok(keys) => {
                    live.keys.store(Arc::new(keys));
                    tracing::debug!(url = %live.url, "JWKS refreshed");
                    refresh
                }
                Err(e) => {
                    tracing::warn!(url = %live.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                    refresh.min(RETRY_AFTER_FAILURE)
                }
            };
            drop(live);
            tokio::time::sleep(wait).await;
            if cache.strong_count() == 0 {
                return;
            }
        }
    });
}

/// GETs `uri` over HTTP/1.1 (TLS with the system's roots for `https`), bounded in size.
async fn fetch(uri: &http::Uri) -> Result<Vec<u8>, String> {
    let host = uri.host().ok_or("no host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if https {
        let config = crate::tls::https_client_config()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

async fn send<I>(
    io: TokioIo<I>,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
