//! Pure string helpers for what the engine does once a route has matched: the host as routing
//! sees it, the upstream path after a prefix rewrite, and the `Location` of a redirect.
//!
//! Every input here comes from the client's request line or `Host` header, so nothing indexes or
//! panics: a malformed authority falls back to being treated as a bare host.

use std::fmt::Write as _;

use strait_config::Redirect;

/// The host part of an authority (`host[:port]`), the part route hosts are matched against:
/// `api.example.com:8080` → `api.example.com`, `[::1]:443` → `[::1]`.
///
/// Always a prefix of `authority`, so `&authority[host.len()..]` is the `:port` part (or empty).
/// Anything after the colon that is not a port (`a:b`, an unbracketed IPv6 address) is left as
/// part of the host rather than guessed at.
pub fn host_without_port(authority: &str) -> &str {
    let host = host_bytes_without_port(authority.as_bytes());
    // At a `:` or the end: a character boundary.
    authority.get(..host.len()).unwrap_or(authority)
}

/// [`host_without_port`] of an authority as bytes, as routing reads a request's `Host`: made
/// text, it would be checked for UTF-8 first (~130 instructions for `127.0.0.1:8080`), and
/// nothing here needs it to be.
pub fn host_bytes_without_port(bytes: &[u8]) -> &[u8] {
    if bytes.first() == Some(&b'[') {
        // An IPv6 literal's own colons sit inside the brackets.
        return bytes
            .iter()
            .position(|&b| b == b']')
            .and_then(|end| bytes.get(..=end))
            .unwrap_or(bytes);
    }
    // Read back over the digits: most hosts end in a letter and are done after one byte.
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let Some(colon) = bytes.len().checked_sub(digits + 1) else {
        return bytes;
    };
    match (bytes.get(colon), bytes.get(..colon)) {
        (Some(b':'), Some(host)) if !host.contains(&b':') => host,
        _ => bytes,
    }
}

/// The host routes and policies match a request's authority against: without its port, and
/// without the one trailing dot of a fully qualified name (`api.example.com.` is
/// `api.example.com` to DNS, to nginx and to the upstream, so it must be to routes too).
pub fn routing_host(authority: &[u8]) -> &[u8] {
    let host = host_bytes_without_port(authority);
    match host {
        [rest @ .., b'.'] if !rest.is_empty() => rest,
        _ => host,
    }
}

/// Replaces the first `prefix_len` bytes of `path` (the part a route's `prefix` matched) with
/// `replacement`, keeping exactly one `/` at the seam: with prefix `/api`, `/api/x` becomes
/// `/v1/x` for `/v1`, `/v1/` or `v1`, and `/x` for an empty replacement or `/`.
///
/// A matched prefix that ended in `/` (`/api/` matching `/api/x`) counts its slash as the
/// separator, which is kept even when the replacement has none. The result always starts with
/// `/`. A `prefix_len` that does not fall inside `path` on a character boundary leaves the path
/// as it is.
pub fn rewrite_prefix(path: &str, prefix_len: usize, replacement: &str) -> String {
    let (Some(matched), Some(mut rest)) = (path.get(..prefix_len), path.get(prefix_len..)) else {
        return absolute(path.to_owned());
    };
    let mut out = String::with_capacity(replacement.len() + rest.len() + 2);
    if !replacement.starts_with('/') {
        out.push('/');
    }
    out.push_str(replacement);
    if out.ends_with('/') {
        rest = rest.strip_prefix('/').unwrap_or(rest);
    } else if matched.ends_with('/') || (!rest.is_empty() && !rest.starts_with('/')) {
        out.push('/');
    }
    out.push_str(rest);
    out
}

fn absolute(mut path: String) -> String {
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path
}

/// The `Location` for a redirect route. Fields of `redirect` left `None` keep the request's
/// value: `scheme` is the request's scheme, `authority` its `Host`/`:authority` as received,
/// `path` and `query` its path and raw query string (without `?`).
///
/// - Port: `redirect.port`, else a port written in `redirect.host`, else the request's port
///   unless it was the default of the request's scheme (so `http://a:80` redirected to `https`
///   goes to `https://a`, while `http://a:8080` goes to `https://a:8080`). It is omitted when it
///   is the default of the new scheme (80 for http, 443 for https).
/// - The query string is kept, appended with `&` when the new path has its own.
/// - Without a host (a request with no authority) the result is a relative reference
///   (`/path?query`), which clients resolve against the URL they asked for. (A redirect to
///   another scheme or port is not given one: the gateway passes the listener's address then.)
pub fn redirect_location(
    redirect: &Redirect,
    scheme: &str,
    authority: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let (request_host, request_port) = split_authority(authority);
    let new_scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let (host, configured_port) = match redirect.host.as_deref() {
        Some(host) => split_authority(host),
        None => (request_host, None),
    };
    let port = redirect
        .port
        .or(configured_port)
        .or(request_port.filter(|&p| Some(p) != default_port(scheme)))
        .filter(|&p| Some(p) != default_port(new_scheme));
    let path = redirect.path.as_deref().unwrap_or(path);

    let mut location = String::with_capacity(
        new_scheme.len() + host.len() + path.len() + query.map_or(0, str::len) + 16,
    );
    if !host.is_empty() {
        if !new_scheme.is_empty() {
            location.push_str(new_scheme);
            location.push(':');
        }
        location.push_str("//");
        // A bare IPv6 address needs its brackets back before a port or path follows it.
        if host.contains(':') && !host.starts_with('[') {
            let _ = write!(location, "[{host}]");
        } else {
            location.push_str(host);
        }
        if let Some(port) = port {
            let _ = write!(location, ":{port}");
        }
    }
    if !path.starts_with('/') {
        location.push('/');
    }
    // Without a host (an HTTP/1.0 request with none, or an empty one) the location is the path
    // alone, and a path opening with `//` would read as another host's (`//evil.example/x`):
    // an open redirect. One slash is kept.
    let slashes = path.len() - path.trim_start_matches('/').len();
    let path = match slashes {
        2.. if host.is_empty() => path.get(slashes - 1..).unwrap_or(path),
        _ => path,
    };
    location.push_str(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        location.push(if path.contains('?') { '&' } else { '?' });
        location.push_str(query);
    }
    location
}

/// `host[:port]` → host and the port when it is a valid one.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let host = host_without_port(authority);
    let port = authority
        .get(host.len()..)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|port| port.parse().ok());
    (host, port)
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_without_a_host_never_names_another_host() {
        let to_https = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&to_https, "http", "", "//evil.example/x", None),
            "/evil.example/x"
        );
        assert_eq!(
            redirect_location(&to_https, "http", "a.example", "//x", None),
            "https://a.example//x"
        );
    }

    #[test]
    fn routing_host_drops_the_port_and_a_trailing_dot() {
        assert_eq!(routing_host(b"api.example.com.:8443"), b"api.example.com");
        assert_eq!(routing_host(b"api.example.com."), b"api.example.com");
        assert_eq!(routing_host(b"api.example.com"), b"api.example.com");
        assert_eq!(routing_host(b"."), b".");
        assert_eq!(routing_host(b"a.."), b"a.");
        assert_eq!(routing_host(b""), b"");
    }

    #[test]
    fn host_without_port_cases() {
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("Example.COM:8080"), "Example.COM");
        assert_eq!(host_without_port("example.com:"), "example.com");
        assert_eq!(host_without_port("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(host_without_port("[::1"), "[::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("a:b"), "a:b");
        assert_eq!(host_without_port(""), "");
        assert_eq!(host_without_port(":80"), "");
    }

    #[test]
    fn host_without_port_is_a_prefix() {
        for a in ["a.com:1", "[::1]:2", "[::1]x", "x:y:z", "ü.de:8", ":"] {
            assert!(a.starts_with(host_without_port(a)), "{a}");
        }
    }

    #[test]
    fn rewrite_prefix_keeps_one_slash_at_the_seam() {
        let cases = [
            ("/api/x", 4, "/v1", "/v1/x"),
            ("/api/x", 4, "/v1/", "/v1/x"),
            ("/api/x", 4, "v1", "/v1/x"),
            ("/api/x", 4, "", "/x"),
            ("/api/x", 4, "/", "/x"),
            ("/api", 4, "/v1", "/v1"),
            ("/api", 4, "/v1/", "/v1/"),
            ("/api", 4, "", "/"),
            ("/api", 4, "/", "/"),
            ("/api/", 4, "/v1", "/v1/"),
            // Prefix `/api/` (ending in a slash) matching `/api/x`.
            ("/api/x", 5, "/v1", "/v1/x"),
            ("/api/x", 5, "/v1/", "/v1/x"),
            ("/api/x", 5, "", "/x"),
            ("/api/", 5, "/v1", "/v1/"),
            // Prefix `/` matching everything.
            ("/x/y", 1, "/app", "/app/x/y"),
            ("/x/y", 1, "/app/", "/app/x/y"),
            ("/", 1, "/app", "/app/"),
        ];
        for (path, len, replacement, want) in cases {
            assert_eq!(
                rewrite_prefix(path, len, replacement),
                want,
                "{path} [{len}] -> {replacement}"
            );
        }
    }

    #[test]
    fn rewrite_prefix_out_of_range_leaves_the_path() {
        assert_eq!(rewrite_prefix("/api", 9, "/v1"), "/api");
        assert_eq!(rewrite_prefix("/é", 2, "/v1"), "/é");
        assert_eq!(rewrite_prefix("", 3, "/v1"), "/");
    }

    fn redirect() -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            status: 301,
        }
    }

    #[test]
    fn redirect_keeps_what_is_not_configured() {
        let r = redirect();
        assert_eq!(
            redirect_location(&r, "http", "a.com:8080", "/x", Some("q=1")),
            "http://a.com:8080/x?q=1"
        );
        assert_eq!(
            redirect_location(&r, "http", "a.com", "/x", None),
            "http://a.com/x"
        );
        assert_eq!(
            redirect_location(&r, "http", "a.com", "/x", Some("")),
            "http://a.com/x"
        );
    }

    #[test]
    fn redirect_to_https_drops_default_ports() {
        let https = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&https, "http", "a.com", "/x", Some("q=1")),
            "https://a.com/x?q=1"
        );
        assert_eq!(
            redirect_location(&https, "http", "a.com:80", "/x", None),
            "https://a.com/x"
        );
        assert_eq!(
            redirect_location(&https, "http", "a.com:443", "/", None),
            "https://a.com/"
        );
        assert_eq!(
            redirect_location(&https, "http", "a.com:8080", "/", None),
            "https://a.com:8080/"
        );
        let explicit = Redirect {
            port: Some(443),
            ..https.clone()
        };
        assert_eq!(
            redirect_location(&explicit, "http", "a.com:8080", "/", None),
            "https://a.com/"
        );
        let custom = Redirect {
            port: Some(8443),
            ..https
        };
        assert_eq!(
            redirect_location(&custom, "http", "a.com", "/", None),
            "https://a.com:8443/"
        );
    }

    #[test]
    fn redirect_host_and_path() {
        let r = Redirect {
            host: Some("b.org".into()),
            path: Some("/new".into()),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&r, "https", "a.com:8443", "/old", Some("x=1&y")),
            "https://b.org:8443/new?x=1&y"
        );
        let with_port = Redirect {
            host: Some("b.org:9000".into()),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&with_port, "http", "a.com", "/p", None),
            "http://b.org:9000/p"
        );
        let with_query = Redirect {
            path: Some("/new?from=old".into()),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&with_query, "http", "a.com", "/p", Some("q=1")),
            "http://a.com/new?from=old&q=1"
        );
    }

    #[test]
    fn redirect_ipv6_hosts() {
        let r = redirect();
        assert_eq!(
            redirect_location(&r, "http", "[::1]:8080", "/x", None),
            "http://[::1]:8080/x"
        );
        assert_eq!(
            redirect_location(&r, "https", "[2001:db8::1]:443", "/x", None),
            "https://[2001:db8::1]/x"
        );
        let to_v6 = Redirect {
            host: Some("2001:db8::2".into()),
            port: Some(8080),
            ..redirect()
        };
        assert_eq!(
            redirect_location(&to_v6, "http", "a.com", "/", None),
            "http://[2001:db8::2]:8080/"
        );
    }

    #[test]
    fn redirect_without_host_is_relative() {
        let r = redirect();
        assert_eq!(redirect_location(&r, "http", "", "/x", Some("a")), "/x?a");
        assert_eq!(redirect_location(&r, "http", "", "", None), "/");
    }
}
