//! Addresses as text for access log lines and span attributes, written per request: IPv4 by
//! hand (four numbers and dots, several times cheaper than `Display`'s padding-aware
//! formatter), IPv6 through `Display`, which is rare enough.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// `10.0.0.1` or `::1`.
pub(crate) fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `10.0.0.1:80` or `[::1]:80`.
pub(crate) fn write_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(_) => write_ip(out, addr.ip()),
        SocketAddr::V6(_) => {
            out.push(b'[');
            write_ip(out, addr.ip());
            out.push(b']');
        }
    }
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for text in [
            "10.0.0.1:80",
            "255.0.9.10:65535",
            "0.0.0.0:0",
            "[::1]:443",
            "[fe80::1:2]:8080",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut out = Vec::new();
            write_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
            let mut ip = Vec::new();
            write_ip(&mut ip, addr.ip());
            assert_eq!(String::from_utf8(ip).unwrap(), addr.ip().to_string());
        }
    }
}
