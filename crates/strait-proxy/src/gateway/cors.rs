//! A route's CORS policy: the Fetch standard's CORS protocol, as Envoy's `cors` filter and
//! Kong's and Traefik's CORS middlewares do it. The proxy answers a preflight (`OPTIONS` with
//! `origin` and `access-control-request-method`) itself, and marks the answers to allowed
//! origins with `access-control-allow-origin` and the rest. Requests without `origin` are
//! untouched; a route without a policy costs one `Option` read a request.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use strait_config::Cors;

use crate::http::body::ResponseBody;

/// A route's compiled CORS policy.
#[derive(Debug)]
pub struct CorsPlan {
    /// `None`: any origin (`*`).
    origins: Option<Vec<OriginPattern>>,
    methods: HeaderValue,
    /// `None`: whatever the preflight asks for.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

#[derive(Debug)]
enum OriginPattern {
    /// The whole origin, lower-case.
    Exact(String),
    /// `scheme://` and `.domain[:port]`, lower-case: an origin of that scheme whose host is a
    /// subdomain of the domain.
    Subdomains { scheme: String, suffix: String },
}

impl CorsPlan {
    /// Compiles a policy `validate` accepted.
    pub fn compile(cors: &Cors) -> Result<Self, String> {
        let joined = |list: &[String]| {
            HeaderValue::from_str(&list.join(", ")).map_err(|_| format!("{list:?}: not a list"))
        };
        let any = |list: &[String]| list.iter().any(|s| s == "*");
        let origins = (!any(&cors.allow_origins)).then(|| {
            cors.allow_origins
                .iter()
                .map(|o| {
                    let o = o.to_ascii_lowercase();
                    match o.split_once("://*.") {
                        Some((scheme, domain)) => OriginPattern::Subdomains {
                            scheme: format!("{scheme}://"),
                            suffix: format!(".{domain}"),
                        },
                        None => OriginPattern::Exact(o),
                    }
                })
                .collect()
        });
        Ok(CorsPlan {
            origins,
            methods: joined(&cors.allow_methods)?,
            headers: match any(&cors.allow_headers) {
                true => None,
                false => Some(joined(&cors.allow_headers)?),
            },
            expose: match cors.expose_headers.is_empty() {
                true => None,
                false => Some(joined(&cors.expose_headers)?),
            },
            max_age: cors.max_age.map(|d| HeaderValue::from(d.get().as_secs())),
            credentials: cors.allow_credentials,
        })
    }

    /// Whether scripts of `origin` may call the route.
    fn allows(&self, origin: &HeaderValue) -> bool {
        let Some(patterns) = &self.origins else {
            return true;
        };
        let origin = origin.as_bytes();
        patterns.iter().any(|p| match p {
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            OriginPattern::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && !origin[scheme.len()..origin.len() - suffix.len()].contains(&b'/')
            }
        })
    }

    /// What `access-control-allow-origin` says to an allowed `origin`: `*` when any origin may
    /// call without credentials, else the origin itself (and the answer varies with it).
    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if self.origins.is_none() && !self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// The proxy's answer to a preflight: 204, with the policy when the origin is allowed and
    /// without it (which the browser takes as a refusal) when not.
    pub fn preflight<B>(&self, req: &Request<B>) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return response;
        };
        if !self.allows(origin) {
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
            return response;
        }
        self.allow_origin(origin, headers);
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(allowed) = self.headers.as_ref().or(asked) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        if self.headers.is_none() {
            let varies = HeaderValue::from_static("access-control-request-headers");
            headers.append(header::VARY, varies);
        }
        if let Some(age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        response
    }

    /// Marks the answer to a request from `origin` (its `origin` header), if the origin is
    /// allowed: the route's policy replaces what the upstream said (its exposed headers only
    /// when the policy names some, as Envoy's does).
    pub fn mark(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        self.allow_origin(origin, headers);
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` asking, for an origin, whether another
/// method may be sent.
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> CorsPlan {
        let cors: Cors = serde_yaml::from_str(yaml).expect("yaml");
        CorsPlan::compile(&cors).expect("compile")
    }

    fn preflight_from(origin: &str, asked_headers: Option<&str>) -> Request<()> {
        let mut req = Request::builder()
            .method(Method::OPTIONS)
            .uri("/api")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT");
        if let Some(h) = asked_headers {
            req = req.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        req.body(()).expect("request")
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_their_scheme() {
        let p =
            plan("allow_origins: [\"https://app.example.com\", \"https://*.example.org:8443\"]");
        let allows = |o: &'static str| p.allows(&HeaderValue::from_static(o));
        assert!(allows("https://app.example.com"));
        assert!(allows("HTTPS://App.Example.com"));
        assert!(allows("https://a.example.org:8443"));
        assert!(allows("https://a.b.example.org:8443"));
        assert!(!allows("http://app.example.com"));
        assert!(!allows("https://app.example.com.evil.net"));
        assert!(!allows("https://example.org:8443"));
        assert!(!allows("https://a.example.org"));
        assert!(!allows("http://a.example.org:8443"));
        assert!(!allows("https://evil.net/x.example.org:8443"));
        assert!(!allows("null"));
    }

    #[test]
    fn a_preflight_gets_the_policy_for_an_allowed_origin_and_nothing_for_another() {
        let p = plan(
            "allow_origins: [\"https://app.example.com\"]\nallow_methods: [GET, PUT]\n\
             max_age: 10m\nallow_credentials: true",
        );
        let answer = p.preflight(&preflight_from("https://app.example.com", Some("x-a, x-b")));
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let h = answer.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["origin", "access-control-request-headers"]);

        let refused = p.preflight(&preflight_from("https://evil.net", None));
        assert_eq!(refused.status(), StatusCode::NO_CONTENT);
        assert!(!refused
            .headers()
            .contains_key("access-control-allow-origin"));
        assert!(!refused
            .headers()
            .contains_key("access-control-allow-methods"));
    }

    #[test]
    fn any_origin_without_credentials_is_a_star_and_listed_headers_are_said_as_listed() {
        let p = plan("allow_origins: [\"*\"]\nallow_headers: [content-type]");
        let answer = p.preflight(&preflight_from("https://x.net", Some("x-other")));
        let h = answer.headers();
        assert_eq!(h["access-control-allow-origin"], "*");
        assert_eq!(h["access-control-allow-headers"], "content-type");
        assert_eq!(h["access-control-allow-methods"], "GET, HEAD, POST");
        assert!(!h.contains_key("vary"));
        assert!(!h.contains_key("access-control-max-age"));
    }

    #[test]
    fn answers_to_allowed_origins_are_marked_and_others_left_alone() {
        let p = plan("allow_origins: [\"https://app.example.com\"]\nexpose_headers: [x-total]");
        let mut headers = HeaderMap::new();
        headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        let origin = HeaderValue::from_static("https://app.example.com");
        p.mark(Some(&origin), &mut headers);
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(headers["access-control-expose-headers"], "x-total");
        assert_eq!(headers["vary"], "origin");
        assert!(!headers.contains_key("access-control-allow-credentials"));

        let mut untouched = HeaderMap::new();
        p.mark(
            Some(&HeaderValue::from_static("https://evil.net")),
            &mut untouched,
        );
        p.mark(None, &mut untouched);
        assert!(untouched.is_empty());
    }

    #[test]
    fn only_options_with_origin_and_a_requested_method_is_a_preflight() {
        assert!(is_preflight(&preflight_from("https://a.b", None)));
        let plain_options = Request::builder()
            .method(Method::OPTIONS)
            .header(header::ORIGIN, "https://a.b")
            .body(())
            .expect("request");
        assert!(!is_preflight(&plain_options));
        let get = Request::builder()
            .header(header::ORIGIN, "https://a.b")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT")
            .body(())
            .expect("request");
        assert!(!is_preflight(&get));
    }
}
