//! Protocol detection on a new client connection, from its first bytes: the HTTP/2 connection
//! preface means h2c with prior knowledge; anything else is served as HTTP/1. The bytes are
//! peeked, not read, so the HTTP server sees the connection from its first byte.
//!
//! Later: TLS ClientHello (SNI, ALPN) and opaque TCP for server-speaks-first protocols.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or 1.1.
    Http1,
    /// HTTP/2 with prior knowledge (cleartext).
    Http2,
}

/// What the first bytes say, or `None` while they are a strict prefix of the HTTP/2 preface.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Waits for enough bytes to tell the protocol, up to `limit`. A client that connects and says
/// nothing (or closes) is reported as an error so the connection is dropped.
pub async fn sniff(stream: &TcpStream, limit: Duration) -> io::Result<Protocol> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the idle timeout",
                )
            })??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(p) = classify(&buf[..n]) {
            return Ok(p);
        }
        // Part of the preface arrived; peek would return the same bytes at once, so give the
        // rest a moment to arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_methods_and_the_preface() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST"), Some(Protocol::Http1));
        assert_eq!(classify(b"PUT"), Some(Protocol::Http1));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    }
}
