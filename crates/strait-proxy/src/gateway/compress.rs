//! A route's response compression: gzip for clients that accept it, as nginx's `gzip` and
//! Envoy's `compressor` filter do. A body the upstream streams is compressed frame by frame,
//! each frame flushed (so a stream of events still arrives as it is sent); a body the proxy
//! made is compressed whole. A route without it costs one `Option` read a request.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use strait_config::Compression;

use crate::http::body::ResponseBody;
use crate::http::gzip::Gzip;
use crate::http::headers;

use super::Reply;

/// A route's compiled compression policy.
#[derive(Debug)]
pub struct CompressionPlan {
    min_bytes: u64,
    /// Media types compressed: `(type, subtype)`, lower-case; `None` for `type/*`.
    types: Vec<(String, Option<String>)>,
    level: u32,
}

impl CompressionPlan {
    /// Compiles a policy `validate` accepted.
    pub fn compile(c: &Compression) -> Self {
        let types = c
            .content_types
            .iter()
            .map(|t| {
                let t = t.to_ascii_lowercase();
                match t.split_once('/') {
                    Some((kind, "*")) => (kind.to_owned(), None),
                    Some((kind, sub)) => (kind.to_owned(), Some(sub.to_owned())),
                    None => (t, None),
                }
            })
            .collect();
        CompressionPlan {
            min_bytes: c.min_bytes,
            types,
            level: c.level,
        }
    }

    /// Whether an answer of this `content-type` is compressed.
    fn compresses(&self, content_type: &[u8]) -> bool {
        let media = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let Some(slash) = media.iter().position(|&b| b == b'/') else {
            return false;
        };
        // gRPC compresses its messages itself, and its clients read no other encoding.
        if headers::is_grpc_content_type(media) {
            return false;
        }
        let (kind, sub) = (&media[..slash], &media[slash + 1..]);
        self.types.iter().any(|(k, s)| {
            kind.eq_ignore_ascii_case(k.as_bytes())
                && s.as_ref()
                    .is_none_or(|s| sub.eq_ignore_ascii_case(s.as_bytes()))
        })
    }

    /// Compresses `response`, the answer to a request (`head`: a HEAD) whose `accept-encoding` was
    /// `accepted`, when the client takes gzip and the answer is one to compress: a status with
    /// a body (not 204, 206 or 304), not encoded already, not `no-transform`, of a listed
    /// type, and not declared shorter than `min_bytes`.
    pub fn apply(&self, head: bool, accepted: Option<&HeaderValue>, response: &mut Reply) {
        if head || !accepted.is_some_and(accepts_gzip) {
            return;
        }
        let status = response.status();
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
        {
            return;
        }
        crate::http::body::complete_headers(response);
        let headers = response.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| crate::http::client1::content_length(v.as_bytes()));
        let length = match response.body() {
            ResponseBody::Full(bytes) => Some(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::Upstream(_) => declared,
        };
        let no_transform = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| headers::has_token(v.as_bytes(), b"no-transform"));
        let listed = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| self.compresses(t.as_bytes()));
        if headers.contains_key(header::CONTENT_ENCODING)
            || no_transform
            || !listed
            || length.is_some_and(|n| n < self.min_bytes)
        {
            return;
        }
        match response.body_mut() {
            ResponseBody::Full(bytes) => {
                let mut gzip = Gzip::new(self.level);
                let mut out = gzip.push(bytes.as_deref().unwrap_or_default());
                out.extend_from_slice(&gzip.finish());
                *bytes = Some(Bytes::from(out));
            }
            ResponseBody::Upstream(body) => body.compress(Gzip::new(self.level)),
        }
        mark_encoded(response.headers_mut());
    }
}

/// The headers of an answer now gzipped: its length is no longer known, it varies with the
/// request's `accept-encoding`, and a strong validator no longer holds for its bytes.
fn mark_encoded(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(tag) = headers.get(header::ETAG) {
        if !tag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
}

/// Whether an `accept-encoding` value takes gzip: `gzip`, `x-gzip` or `*` with a weight above 0.
fn accepts_gzip(value: &HeaderValue) -> bool {
    let mut star = None;
    let mut gzip = None;
    for item in value.as_bytes().split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        let weight = parts
            .filter_map(|p| {
                let p = p.trim_ascii();
                let v = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q="))?;
                std::str::from_utf8(v).ok()?.trim().parse::<f32>().ok()
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            gzip = Some(weight);
        } else if coding == b"*" {
            star = Some(weight);
        }
    }
    gzip.or(star).is_some_and(|w| w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let takes = |v: &'static str| accepts_gzip(&HeaderValue::from_static(v));
        assert!(takes("gzip"));
        assert!(takes("deflate, GZIP;q=0.5, br"));
        assert!(takes("x-gzip"));
        assert!(takes("*"));
        assert!(takes("br;q=1.0, *;q=0.1"));
        assert!(!takes("gzip;q=0"));
        assert!(!takes("gzip;q=0, *"));
        assert!(!takes("br, deflate"));
        assert!(!takes("identity"));
        assert!(!takes("*;q=0"));
    }

    #[test]
    fn listed_types_match_with_parameters_and_wildcards() {
        let c: Compression =
            serde_yaml::from_str("content_types: [text/*, application/json]").expect("yaml");
        let p = CompressionPlan::compile(&c);
        assert!(p.compresses(b"text/html; charset=utf-8"));
        assert!(p.compresses(b"TEXT/CSS"));
        assert!(p.compresses(b"application/json"));
        assert!(!p.compresses(b"application/jsonx"));
        assert!(!p.compresses(b"image/png"));
        assert!(!p.compresses(b"json"));
        let any: Compression =
            serde_yaml::from_str("content_types: [application/*]").expect("yaml");
        let any = CompressionPlan::compile(&any);
        assert!(any.compresses(b"application/octet-stream"));
        assert!(!any.compresses(b"application/grpc"));
        assert!(!any.compresses(b"application/grpc+proto"));
    }

    #[test]
    fn encoded_answers_lose_their_length_and_strong_tag() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        mark_encoded(&mut h);
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::VARY], "accept-encoding");
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert!(headers::has_token(
            b"private, No-Transform",
            b"no-transform"
        ));
        assert!(!headers::has_token(b"no-transformer", b"no-transform"));
    }
}
