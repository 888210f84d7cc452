//! Protocol detection on a new client connection, from its first bytes: the HTTP/2 connection
//! preface means h2c with prior knowledge; anything else is served as HTTP/1. The HTTP/1
//! server reads the bytes and asks [`classify`]; a connection that turns out to be HTTP/2
//! goes to hyper with the bytes read so far given back first.
//!
//! Later: TLS ClientHello (SNI, ALPN) and opaque TCP for server-speaks-first protocols.

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
