//! TLS passthrough: a listener that routes raw TLS connections by SNI without terminating
//! them.
//!
//! ```text
//! accept ─► peek the ClientHello (bounded in size and time) ─► SNI ─► first matching
//! `tls_passthrough` entry ─► balancer pick ─► TCP connect (breaker slot) ─► copy both ways
//! ```
//!
//! The ClientHello is only peeked, so the upstream receives the client's bytes untouched and
//! the TLS session is end to end. Bytes from the client are hostile: the parser is pure,
//! bounded, and never panics ([`server_name`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::resilience::Limit;
use crate::runtime::snapshot::Snapshot;

/// Longest ClientHello record looked at (a TLS record's maximum).
const MAX_HELLO: usize = 5 + (1 << 14);
/// Time allowed for the ClientHello to arrive.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A compiled `tls_passthrough` entry.
#[derive(Debug)]
pub struct PassthroughRoute {
    /// Exact names (lower case) and wildcard suffixes (`.example.com`); both empty: any.
    exact: Box<[Box<str>]>,
    suffixes: Box<[Box<str>]>,
    /// The cluster's index in the snapshot.
    pub cluster: usize,
}

impl PassthroughRoute {
    /// An entry for these server names and cluster index.
    pub fn new(names: &[String], cluster: usize) -> Self {
        let (wild, exact): (Vec<_>, Vec<_>) = names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .partition(|n| n.starts_with("*."));
        PassthroughRoute {
            exact: exact.into_iter().map(String::into_boxed_str).collect(),
            suffixes: wild
                .into_iter()
                .map(|n| n.trim_start_matches('*').to_owned().into_boxed_str())
                .collect(),
            cluster,
        }
    }

    fn matches(&self, sni: Option<&str>) -> bool {
        if self.exact.is_empty() && self.suffixes.is_empty() {
            return true;
        }
        let Some(name) = sni else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        self.exact.iter().any(|e| **e == *name)
            || self
                .suffixes
                .iter()
                .any(|s| name.len() > s.len() && name.ends_with(&**s))
    }
}

/// The SNI host name of a TLS ClientHello at the start of `bytes`: `Ok(Some)` with the name,
/// `Ok(None)` for a complete ClientHello without one, `Err(true)` when more bytes are needed,
/// `Err(false)` when it is not a ClientHello at all.
pub fn server_name(bytes: &[u8]) -> Result<Option<String>, bool> {
    let mut r = Reader(bytes);
    // Record header: handshake (22), any version, length.
    if r.u8()? != 22 {
        return Err(false);
    }
    r.take(2)?;
    let len = usize::from(r.u16()?);
    let mut record = Reader(r.take(len)?);
    // Handshake header: ClientHello (1), 24-bit length (it must fit this record).
    if record.u8().map_err(|_| false)? != 1 {
        return Err(false);
    }
    let hello_len = record.take(3).map_err(|_| false)?;
    let hello_len = (usize::from(hello_len[0]) << 16)
        | (usize::from(hello_len[1]) << 8)
        | usize::from(hello_len[2]);
    let mut hello = Reader(record.take(hello_len).map_err(|_| false)?);
    let bad = |_| false;
    hello.take(2 + 32).map_err(bad)?; // version, random
    let n = usize::from(hello.u8().map_err(bad)?);
    hello.take(n).map_err(bad)?; // session id
    let n = usize::from(hello.u16().map_err(bad)?);
    hello.take(n).map_err(bad)?; // cipher suites
    let n = usize::from(hello.u8().map_err(bad)?);
    hello.take(n).map_err(bad)?; // compression methods
    if hello.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let n = usize::from(hello.u16().map_err(bad)?);
    let mut extensions = Reader(hello.take(n).map_err(bad)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16().map_err(bad)?;
        let n = usize::from(extensions.u16().map_err(bad)?);
        let mut data = Reader(extensions.take(n).map_err(bad)?);
        if kind != 0 {
            continue;
        }
        let n = usize::from(data.u16().map_err(bad)?);
        let mut list = Reader(data.take(n).map_err(bad)?);
        while !list.0.is_empty() {
            let name_type = list.u8().map_err(bad)?;
            let n = usize::from(list.u16().map_err(bad)?);
            let name = list.take(n).map_err(bad)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).map_err(|_| false)?;
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(false);
                }
                return Ok(Some(name.to_owned()));
            }
        }
    }
    Ok(None)
}

/// A cursor over untrusted bytes; running short is `Err(true)` ("need more").
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], bool> {
        if self.0.len() < n {
            return Err(true);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, bool> {
        let b = self.take(1)?;
        b.first().copied().ok_or(true)
    }

    fn u16(&mut self) -> Result<u16, bool> {
        match *self.take(2)? {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(true),
        }
    }
}

/// Waits for the ClientHello (peeking, so the bytes stay for the upstream) and reads its SNI.
async fn peek_server_name(stream: &TcpStream) -> Option<Option<String>> {
    let mut buf = vec![0u8; MAX_HELLO];
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        match server_name(buf.get(..n)?) {
            Ok(name) => return Some(name),
            Err(false) => return None,
            // Need more: a closed connection (n == 0) or a full buffer will not get it.
            Err(true) if n == 0 || n == buf.len() => return None,
            Err(true) => {
                stream.readable().await.ok()?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Serves one passthrough connection: SNI, route, endpoint, then bytes both ways.
pub(crate) async fn serve(
    mut client: TcpStream,
    snapshot: Arc<Snapshot>,
    routes: Arc<[PassthroughRoute]>,
) {
    let peer = client.peer_addr().ok();
    let Some(sni) = peek_server_name(&client).await else {
        tracing::debug!(?peer, "passthrough: no TLS ClientHello; closed");
        return;
    };
    let Some(route) = routes.iter().find(|r| r.matches(sni.as_deref())) else {
        tracing::debug!(?peer, ?sni, "passthrough: no entry for this name; closed");
        return;
    };
    let Some(cluster) = snapshot.clusters.get(route.cluster) else {
        return;
    };
    let Some(addr) = cluster
        .balancer
        .pick(None)
        .and_then(|i| cluster.endpoints.get(i).copied())
    else {
        return;
    };
    let Some(_slot) = cluster.breaker.admit(Limit::Connections) else {
        return;
    };
    let connected = tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(addr)).await;
    let Ok(Ok(mut upstream)) = connected else {
        tracing::debug!(?peer, %addr, "passthrough: upstream connect failed; closed");
        return;
    };
    let _ = upstream.set_nodelay(true);
    drop(snapshot);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(?peer, %addr, error = %e, "passthrough connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with these extensions.
    fn hello(extensions: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![22, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    fn sni_extension(name: &str) -> Vec<u8> {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        let mut ext = vec![0, 0];
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
        ext
    }

    #[test]
    fn the_server_name_is_read_and_truncations_ask_for_more() {
        let mut exts = vec![0, 10, 0, 2, 0, 29]; // supported_groups first
        exts.extend(sni_extension("api.example.com"));
        let full = hello(&exts);
        assert_eq!(server_name(&full), Ok(Some("api.example.com".to_owned())));
        for cut in 0..full.len() {
            assert_eq!(server_name(&full[..cut]), Err(true), "cut at {cut}");
        }
        assert_eq!(server_name(&hello(&[])), Ok(None));
    }

    #[test]
    fn other_protocols_and_lies_are_refused() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Err(false));
        let mut lying = hello(&sni_extension("a.example"));
        // Claim a longer name than the extension holds.
        let at = lying.len() - "a.example".len() - 2;
        lying[at] = 0xff;
        assert_eq!(server_name(&lying), Err(false));
    }

    #[test]
    fn routes_match_exact_wildcard_or_anything() {
        let exact = PassthroughRoute::new(&["DB.example.com".to_owned()], 0);
        assert!(exact.matches(Some("db.EXAMPLE.com")));
        assert!(!exact.matches(Some("x.db.example.com")));
        assert!(!exact.matches(None));
        let wild = PassthroughRoute::new(&["*.example.com".to_owned()], 0);
        assert!(wild.matches(Some("a.example.com")));
        assert!(!wild.matches(Some("example.com")));
        let any = PassthroughRoute::new(&[], 0);
        assert!(any.matches(None) && any.matches(Some("whatever.test")));
    }
}
