//! One route's conditions, compiled once per config version and checked per request.
//!
//! Sits behind the [`index`](super::index): the index proposes candidate routes by host and first
//! path segment, and this module decides whether a candidate's path, method, header and query
//! conditions all hold. Hosts are parsed here but matched by the index, which is why
//! [`RouteMatcher`] holds no host condition.

use http::{HeaderMap, HeaderName, Method};
use strait_config::{HeaderMatch, PathMatch, QueryMatch, RouteMatch};

use super::{MatchInfo, RequestView};

/// One entry of `match.hosts`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    /// The whole host, e.g. `api.example.com`.
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`: the host must end with it and have at least one
    /// character before it.
    Suffix(Box<str>),
}

impl HostPattern {
    /// Rejects what could never match a host as [`host_without_port`](super::host_without_port)
    /// returns it, so a typo fails the config load instead of silently routing nothing.
    pub(super) fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty host; leave `hosts` out to match any host".to_owned());
        }
        if !pattern.is_ascii() {
            return Err(format!(
                "`{pattern}` is not ASCII; write the punycode (`xn--`) form"
            ));
        }
        if pattern
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "`{pattern}` contains whitespace or a control character"
            ));
        }
        if super::host_without_port(pattern) != pattern {
            return Err(format!(
                "`{pattern}` has a port; hosts are matched without the port, write `{}`",
                super::host_without_port(pattern)
            ));
        }
        let lower = pattern.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(suffix) => {
                if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                    return Err(format!(
                        "`{pattern}`: a wildcard is only allowed as a whole leading label, \
                         as in `*.example.com`"
                    ));
                }
                Ok(HostPattern::Suffix(suffix.into()))
            }
            None if lower.contains('*') => Err(format!(
                "`{pattern}`: a wildcard is only allowed as a whole leading label, as in \
                 `*.example.com`"
            )),
            None if lower.starts_with('.') => Err(format!(
                "`{pattern}` starts with an empty label; for a wildcard write `*{pattern}`"
            )),
            None => Ok(HostPattern::Exact(lower.into())),
        }
    }

    /// Whether `host` (without port, any case) matches. The index answers the same question for
    /// many patterns at once; this is for small tables and for checking the index.
    pub(super) fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(exact) => host.eq_ignore_ascii_case(exact.as_bytes()),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix.as_bytes()))
            }
        }
    }
}

/// Everything a route requires of a request besides its host.
#[derive(Debug)]
pub(super) struct RouteMatcher {
    path: PathMatcher,
    /// Empty: any method.
    methods: Box<[Method]>,
    headers: Box<[HeaderCondition]>,
    query: Box<[QueryCondition]>,
    /// Peer identity patterns; empty: any request.
    peers: Box<[Box<str>]>,
}

impl RouteMatcher {
    /// Errors name the offending field (`match.headers[1].regex: ...`).
    pub(super) fn compile(m: &RouteMatch) -> Result<Self, String> {
        let path = PathMatcher::compile(m.path.as_ref())?;
        let methods = m
            .methods
            .iter()
            .enumerate()
            .map(|(i, method)| parse_method(method).map_err(|e| format!("match.methods[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderCondition::compile(h).map_err(|e| format!("match.headers[{i}]{e}")))
            .collect::<Result<_, _>>()?;
        let query = m
            .query
            .iter()
            .enumerate()
            .map(|(i, q)| QueryCondition::compile(q).map_err(|e| format!("match.query[{i}]{e}")))
            .collect::<Result<_, _>>()?;
        Ok(RouteMatcher {
            path,
            methods,
            headers,
            query,
            peers: m.peers.iter().map(|p| p.as_str().into()).collect(),
        })
    }

    /// `Some` when every condition holds, with what the engine needs to rewrite the path.
    pub(super) fn matches(&self, req: &RequestView<'_>) -> Option<MatchInfo> {
        let info = self.path.matches(req.path)?;
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return None;
        }
        if !self.headers.iter().all(|h| h.holds(req.headers)) {
            return None;
        }
        if !self.query.iter().all(|q| q.holds(req.query)) {
            return None;
        }
        if !self.peers.is_empty() {
            let id = req.peer?;
            if !self.peers.iter().any(|p| peer_matches(p, id)) {
                return None;
            }
        }
        Some(info)
    }

    /// The first path segment every path this route accepts has, when there is one; the index
    /// files the route under it. `None`: the route may match paths with any first segment.
    pub(super) fn required_segment(&self) -> Option<&str> {
        match &self.path {
            PathMatcher::Any => None,
            PathMatcher::Regex {
                literal_segment, ..
            } => literal_segment.as_deref(),
            PathMatcher::Exact(exact) => request_segment(exact),
            PathMatcher::Prefix(prefix) => {
                let rest = prefix.strip_prefix('/')?;
                match rest.split_once(['/', ';']) {
                    Some((segment, _)) => Some(segment),
                    // `/` alone matches every path.
                    None if rest.is_empty() => None,
                    // `/api` matches only on a segment boundary: `/api`, `/api/...`, `/api;...`.
                    None => Some(rest),
                }
            }
        }
    }
}

/// The first segment of a request path without its parameters (`/api/x` and `/api;v=1` →
/// `api`, `/` → ``), or `None` for a path that does not start with `/` (`*`, or the empty path
/// of a CONNECT).
pub(super) fn request_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    // A byte loop: `split_once('/')` goes through `memchr`, whose set-up costs more than a
    // segment's few bytes (113 instructions a request for `/svc499/`, callgrind).
    Some(match rest.bytes().position(|b| b == b'/' || b == b';') {
        // Before an ASCII `/` or `;`: a character boundary.
        Some(end) => rest.get(..end).unwrap_or(rest),
        None => rest,
    })
}

fn parse_method(method: &str) -> Result<Method, String> {
    // HTTP methods are case-sensitive: a lower-case `get` would never match a real GET.
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "`{method}`: methods are case-sensitive, write `{}`",
            method.to_ascii_uppercase()
        ));
    }
    Method::from_bytes(method.as_bytes()).map_err(|_| format!("`{method}` is not an HTTP method"))
}

#[derive(Debug)]
enum PathMatcher {
    Any,
    Exact(Box<str>),
    /// Matches on a segment boundary unless the prefix itself ends with `/`.
    Prefix(Box<str>),
    /// Anchored at both ends.
    Regex {
        regex: regex::Regex,
        /// See [`regex_literal_segment`].
        literal_segment: Option<Box<str>>,
    },
}

impl PathMatcher {
    fn compile(path: Option<&PathMatch>) -> Result<Self, String> {
        let must_be_absolute = |field: &str, p: &str| {
            if p.starts_with('/') {
                Ok(())
            } else {
                Err(format!("match.path.{field}: `{p}` must start with `/`"))
            }
        };
        match path {
            None => Ok(PathMatcher::Any),
            Some(PathMatch::Exact(p)) => {
                must_be_absolute("exact", p)?;
                Ok(PathMatcher::Exact(p.as_str().into()))
            }
            Some(PathMatch::Prefix(p)) => {
                must_be_absolute("prefix", p)?;
                Ok(PathMatcher::Prefix(p.as_str().into()))
            }
            Some(PathMatch::Regex(re)) => {
                let regex = anchored(re, regex::Regex::new)
                    .map_err(|e| format!("match.path.regex: {e}"))?;
                Ok(PathMatcher::Regex {
                    regex,
                    literal_segment: regex_literal_segment(re).map(Box::from),
                })
            }
            Some(other) => Err(format!("match.path: unsupported path match {other:?}")),
        }
    }

    fn matches(&self, path: &str) -> Option<MatchInfo> {
        let matched = match self {
            PathMatcher::Any => true,
            PathMatcher::Exact(exact) => path == &**exact,
            PathMatcher::Prefix(prefix) => {
                return prefix_matches(path, prefix).then_some(MatchInfo {
                    prefix_len: Some(prefix.len()),
                });
            }
            PathMatcher::Regex { regex, .. } => regex.is_match(path),
        };
        matched.then_some(MatchInfo { prefix_len: None })
    }
}

/// The first segment every path a regex accepts has, when the regex spells it out literally:
/// `/api/v[0-9]+/users` → `api`, so regex routes can be indexed like prefix routes (tables often
/// have many of them). Deliberately conservative, `None` unless the pattern starts with `/`, a
/// run of characters that are never regex syntax, and a `/` that no quantifier makes optional,
/// and has no `|` anywhere (a top-level alternative could start differently).
fn regex_literal_segment(pattern: &str) -> Option<&str> {
    if pattern.contains('|') {
        return None;
    }
    let rest = pattern.strip_prefix('/')?;
    let (segment, after) = rest.split_once('/')?;
    let literal = segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let slash_required = !after.starts_with(['?', '*', '+', '{']);
    (literal && slash_required).then_some(segment)
}

/// `/api` matches `/api`, `/api/`, `/api/x` and `/api;v=1` but not `/apix`; `/api/` and `/`
/// match anything that starts with them. A `;` ends a segment's name too: servlet containers
/// take `/admin;x=1` for `/admin` (RFC 3986 3.3 gives `;` to a segment's parameters), so a rule
/// on `/admin` must hold for it.
fn prefix_matches(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with(';')
        }
    }
}

/// Compiles `^(?:pattern)$`. The pattern is compiled alone first: one such as `a)|(b` is valid
/// once wrapped but would escape the anchoring group and match anywhere.
fn anchored<R>(
    pattern: &str,
    compile: impl Fn(&str) -> Result<R, regex::Error>,
) -> Result<R, regex::Error> {
    compile(pattern)?;
    compile(&format!("^(?:{pattern})$"))
}

/// What a header value or query parameter must be.
#[derive(Debug)]
enum ValueCondition {
    Present,
    Absent,
    Exact(Box<[u8]>),
    /// Bytes regex: header values may hold obs-text that is not UTF-8.
    Regex(regex::bytes::Regex),
}

impl ValueCondition {
    /// Error text starts with the field suffix (`.regex: ...`) so callers can prefix the index.
    fn compile(
        exact: Option<&str>,
        regex: Option<&str>,
        present: Option<bool>,
    ) -> Result<Self, String> {
        match (exact, regex, present) {
            (None, None, None | Some(true)) => Ok(ValueCondition::Present),
            (None, None, Some(false)) => Ok(ValueCondition::Absent),
            (Some(exact), None, None) => Ok(ValueCondition::Exact(exact.as_bytes().into())),
            (None, Some(re), None) => anchored(re, regex::bytes::Regex::new)
                .map(ValueCondition::Regex)
                .map_err(|e| format!(".regex: {e}")),
            _ => Err(": set at most one of `exact`, `regex` and `present`".to_owned()),
        }
    }

    /// Holds when any of the values satisfies it (for `Absent`: when there is none).
    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            ValueCondition::Present => values.next().is_some(),
            ValueCondition::Absent => values.next().is_none(),
            ValueCondition::Exact(exact) => values.any(|v| v == &**exact),
            ValueCondition::Regex(re) => values.any(|v| re.is_match(v)),
        }
    }
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    value: ValueCondition,
}

impl HeaderCondition {
    fn compile(h: &HeaderMatch) -> Result<Self, String> {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!(".name: `{}` is not a valid header name", h.name))?;
        let value = ValueCondition::compile(h.exact.as_deref(), h.regex.as_deref(), h.present)?;
        Ok(HeaderCondition { name, value })
    }

    fn holds(&self, headers: &HeaderMap) -> bool {
        let values = headers.get_all(&self.name).iter().map(|v| v.as_bytes());
        self.value.holds(values)
    }
}

#[derive(Debug)]
struct QueryCondition {
    name: Box<str>,
    value: ValueCondition,
}

impl QueryCondition {
    fn compile(q: &QueryMatch) -> Result<Self, String> {
        if q.name.is_empty() {
            return Err(".name: must not be empty".to_owned());
        }
        let value = ValueCondition::compile(q.exact.as_deref(), q.regex.as_deref(), q.present)?;
        Ok(QueryCondition {
            name: q.name.as_str().into(),
            value,
        })
    }

    fn holds(&self, query: Option<&str>) -> bool {
        let first = query.and_then(|q| first_param(q, &self.name));
        self.value.holds(first.map(str::as_bytes).into_iter())
    }
}

/// A peer identity pattern: `*` (any verified peer), a prefix ending in `*`, or an exact ID.
pub(crate) fn peer_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => id == pattern,
    }
}

/// The value of the first `name=value` pair named `name`, raw (no percent-decoding); a bare
/// `name` has the empty value.
fn first_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn matcher(m: RouteMatch) -> RouteMatcher {
        RouteMatcher::compile(&m).unwrap()
    }

    fn path_only(p: PathMatch) -> RouteMatcher {
        matcher(RouteMatch {
            path: Some(p),
            ..RouteMatch::default()
        })
    }

    struct Req {
        method: Method,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
    }

    impl Req {
        fn get(path: &'static str) -> Self {
            Req {
                method: Method::GET,
                path,
                query: None,
                headers: HeaderMap::new(),
            }
        }
        fn query(mut self, q: &'static str) -> Self {
            self.query = Some(q);
            self
        }
        fn header(mut self, name: &'static str, value: &'static [u8]) -> Self {
            self.headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(value).unwrap(),
            );
            self
        }
        fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                host: b"example.com",
                path: self.path,
                query: self.query,
                headers: &self.headers,
                peer: None,
            }
        }
    }

    fn hits(m: &RouteMatcher, req: &Req) -> bool {
        m.matches(&req.view()).is_some()
    }

    #[test]
    fn empty_match_accepts_everything() {
        let m = matcher(RouteMatch::default());
        assert!(hits(&m, &Req::get("/")));
        assert!(hits(&m, &Req::get("*")));
        assert_eq!(
            m.matches(&Req::get("/x").view()),
            Some(MatchInfo { prefix_len: None })
        );
    }

    #[test]
    fn exact_path_is_whole_and_case_sensitive() {
        let m = path_only(PathMatch::Exact("/health".into()));
        assert!(hits(&m, &Req::get("/health")));
        assert!(!hits(&m, &Req::get("/health/")));
        assert!(!hits(&m, &Req::get("/healthz")));
        assert!(!hits(&m, &Req::get("/Health")));
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let m = path_only(PathMatch::Prefix("/api".into()));
        for p in ["/api", "/api/", "/api/x", "/api/x/y", "/api;v=1", "/api;/x"] {
            assert!(hits(&m, &Req::get(p)), "{p}");
        }
        for p in ["/apix", "/ap", "/", "/API", "/v1/api"] {
            assert!(!hits(&m, &Req::get(p)), "{p}");
        }
        assert_eq!(
            m.matches(&Req::get("/api/x").view()),
            Some(MatchInfo {
                prefix_len: Some(4)
            })
        );
    }

    #[test]
    fn prefix_ending_in_slash_matches_anything_after_it() {
        let m = path_only(PathMatch::Prefix("/api/".into()));
        assert!(hits(&m, &Req::get("/api/")));
        assert!(hits(&m, &Req::get("/api/x")));
        assert!(!hits(&m, &Req::get("/api")));
        let root = path_only(PathMatch::Prefix("/".into()));
        for p in ["/", "/x", "//", "/a/b"] {
            assert!(hits(&root, &Req::get(p)), "{p}");
        }
        assert!(!hits(&root, &Req::get("*")));
        assert_eq!(
            root.matches(&Req::get("/a").view()),
            Some(MatchInfo {
                prefix_len: Some(1)
            })
        );
    }

    #[test]
    fn regex_path_is_anchored_at_both_ends() {
        let m = path_only(PathMatch::Regex("/users/[0-9]+".into()));
        assert!(hits(&m, &Req::get("/users/42")));
        assert!(!hits(&m, &Req::get("/users/42/x")));
        assert!(!hits(&m, &Req::get("/v1/users/42")));
        let alt = path_only(PathMatch::Regex("/a|/b".into()));
        assert!(hits(&alt, &Req::get("/a")));
        assert!(hits(&alt, &Req::get("/b")));
        assert!(!hits(&alt, &Req::get("/ab")));
        assert!(!hits(&alt, &Req::get("/b/c")));
    }

    #[test]
    fn regex_cannot_escape_its_anchors() {
        let err = RouteMatcher::compile(&RouteMatch {
            path: Some(PathMatch::Regex("/a)|(.*".into())),
            ..RouteMatch::default()
        })
        .unwrap_err();
        assert!(err.starts_with("match.path.regex:"), "{err}");
    }

    #[test]
    fn methods_list_any_of() {
        let m = matcher(RouteMatch {
            methods: vec!["GET".into(), "HEAD".into(), "PURGE".into()],
            ..RouteMatch::default()
        });
        assert!(hits(&m, &Req::get("/")));
        let mut post = Req::get("/");
        post.method = Method::POST;
        assert!(!hits(&m, &post));
        post.method = Method::from_bytes(b"PURGE").unwrap();
        assert!(hits(&m, &post));
    }

    #[test]
    fn lower_case_method_is_a_config_error() {
        let err = RouteMatcher::compile(&RouteMatch {
            methods: vec!["GET".into(), "post".into()],
            ..RouteMatch::default()
        })
        .unwrap_err();
        assert!(
            err.contains("match.methods[1]") && err.contains("`POST`"),
            "{err}"
        );
    }

    fn header(name: &str) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            exact: None,
            regex: None,
            present: None,
        }
    }

    fn with_header(h: HeaderMatch) -> RouteMatcher {
        matcher(RouteMatch {
            headers: vec![h],
            ..RouteMatch::default()
        })
    }

    #[test]
    fn header_exact_any_value_and_name_case_insensitive() {
        let m = with_header(HeaderMatch {
            exact: Some("canary".into()),
            ..header("X-Track")
        });
        assert!(hits(&m, &Req::get("/").header("x-track", b"canary")));
        assert!(hits(
            &m,
            &Req::get("/")
                .header("x-track", b"stable")
                .header("x-track", b"canary")
        ));
        assert!(!hits(&m, &Req::get("/").header("x-track", b"Canary")));
        assert!(!hits(&m, &Req::get("/").header("x-track", b"canary2")));
        assert!(!hits(&m, &Req::get("/")));
    }

    #[test]
    fn header_regex_whole_value_even_non_utf8() {
        let m = with_header(HeaderMatch {
            regex: Some("v[0-9]+".into()),
            ..header("x-version")
        });
        assert!(hits(&m, &Req::get("/").header("x-version", b"v12")));
        assert!(!hits(&m, &Req::get("/").header("x-version", b"v12-beta")));
        assert!(!hits(&m, &Req::get("/").header("x-version", b"\xffv1")));
        assert!(hits(
            &m,
            &Req::get("/")
                .header("x-version", b"\xff")
                .header("x-version", b"v3")
        ));
    }

    #[test]
    fn header_presence() {
        let required = with_header(header("authorization"));
        let explicit = with_header(HeaderMatch {
            present: Some(true),
            ..header("authorization")
        });
        let absent = with_header(HeaderMatch {
            present: Some(false),
            ..header("authorization")
        });
        let with = Req::get("/").header("authorization", b"");
        let without = Req::get("/").header("other", b"x");
        assert!(hits(&required, &with) && hits(&explicit, &with) && !hits(&absent, &with));
        assert!(
            !hits(&required, &without) && !hits(&explicit, &without) && hits(&absent, &without)
        );
    }

    #[test]
    fn header_conditions_all_must_hold() {
        let m = matcher(RouteMatch {
            headers: vec![
                HeaderMatch {
                    exact: Some("1".into()),
                    ..header("x-a")
                },
                HeaderMatch {
                    present: Some(false),
                    ..header("x-b")
                },
            ],
            ..RouteMatch::default()
        });
        assert!(hits(&m, &Req::get("/").header("x-a", b"1")));
        assert!(!hits(
            &m,
            &Req::get("/").header("x-a", b"1").header("x-b", b"1")
        ));
        assert!(!hits(&m, &Req::get("/").header("x-a", b"2")));
    }

    #[test]
    fn header_config_errors_name_the_field() {
        let two = RouteMatcher::compile(&RouteMatch {
            headers: vec![
                header("x-ok"),
                HeaderMatch {
                    exact: Some("a".into()),
                    present: Some(true),
                    ..header("x-a")
                },
            ],
            ..RouteMatch::default()
        })
        .unwrap_err();
        assert!(
            two.starts_with("match.headers[1]: set at most one"),
            "{two}"
        );
        let bad_name = RouteMatcher::compile(&RouteMatch {
            headers: vec![header("bad name")],
            ..RouteMatch::default()
        })
        .unwrap_err();
        assert!(bad_name.starts_with("match.headers[0].name:"), "{bad_name}");
        let bad_re = RouteMatcher::compile(&RouteMatch {
            headers: vec![HeaderMatch {
                regex: Some("(".into()),
                ..header("x")
            }],
            ..RouteMatch::default()
        })
        .unwrap_err();
        assert!(bad_re.starts_with("match.headers[0].regex:"), "{bad_re}");
    }

    fn query(name: &str) -> QueryMatch {
        QueryMatch {
            name: name.into(),
            exact: None,
            regex: None,
            present: None,
        }
    }

    fn with_query(q: QueryMatch) -> RouteMatcher {
        matcher(RouteMatch {
            query: vec![q],
            ..RouteMatch::default()
        })
    }

    #[test]
    fn query_exact_uses_first_occurrence_raw() {
        let m = with_query(QueryMatch {
            exact: Some("on".into()),
            ..query("debug")
        });
        assert!(hits(&m, &Req::get("/").query("debug=on")));
        assert!(hits(&m, &Req::get("/").query("a=1&debug=on&b")));
        assert!(!hits(&m, &Req::get("/").query("debug=off&debug=on")));
        assert!(!hits(&m, &Req::get("/").query("Debug=on")));
        assert!(!hits(&m, &Req::get("/").query("debug=o%6E")));
        assert!(!hits(&m, &Req::get("/").query("xdebug=on")));
        assert!(!hits(&m, &Req::get("/")));
    }

    #[test]
    fn query_regex_and_presence() {
        let re = with_query(QueryMatch {
            regex: Some("[0-9]+".into()),
            ..query("page")
        });
        assert!(hits(&re, &Req::get("/").query("page=12")));
        assert!(!hits(&re, &Req::get("/").query("page=12a")));
        assert!(!hits(&re, &Req::get("/").query("page")));
        let present = with_query(query("flag"));
        assert!(hits(&present, &Req::get("/").query("flag")));
        assert!(hits(&present, &Req::get("/").query("x=1&flag=")));
        assert!(!hits(&present, &Req::get("/").query("flags=1")));
        assert!(!hits(&present, &Req::get("/")));
        let absent = with_query(QueryMatch {
            present: Some(false),
            ..query("flag")
        });
        assert!(hits(&absent, &Req::get("/")));
        assert!(hits(&absent, &Req::get("/").query("")));
        assert!(!hits(&absent, &Req::get("/").query("flag=1")));
    }

    #[test]
    fn all_kinds_must_hold_together() {
        let m = matcher(RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            methods: vec!["POST".into()],
            headers: vec![header("x-a")],
            query: vec![query("q")],
            ..RouteMatch::default()
        });
        let mut req = Req::get("/api/x").query("q=1").header("x-a", b"1");
        assert!(!hits(&m, &req));
        req.method = Method::POST;
        assert!(hits(&m, &req));
        req.query = None;
        assert!(!hits(&m, &req));
    }

    #[test]
    fn relative_paths_are_config_errors() {
        for p in [
            PathMatch::Exact("api".into()),
            PathMatch::Prefix(String::new()),
        ] {
            let err = RouteMatcher::compile(&RouteMatch {
                path: Some(p),
                ..RouteMatch::default()
            })
            .unwrap_err();
            assert!(err.contains("must start with `/`"), "{err}");
        }
    }

    #[test]
    fn host_patterns_parse_and_reject_what_cannot_match() {
        assert_eq!(
            HostPattern::parse("API.Example.com").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Suffix(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*example.com",
            "*.*.com",
            "example.com:8080",
            ".example.com",
            "bücher.de",
            "a b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_needs_a_label_before_the_suffix() {
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches(b"a.example.com"));
        assert!(w.matches(b"a.b.example.com"));
        assert!(w.matches(b"A.EXAMPLE.COM"));
        assert!(!w.matches(b"example.com"));
        assert!(!w.matches(b".example.com"));
        assert!(!w.matches(b"aexample.com"));
    }

    #[test]
    fn required_segment_is_a_superset_filter() {
        let seg = |p: PathMatch| path_only(p).required_segment().map(str::to_owned);
        assert_eq!(
            seg(PathMatch::Exact("/api/x".into())).as_deref(),
            Some("api")
        );
        assert_eq!(seg(PathMatch::Exact("/".into())).as_deref(), Some(""));
        assert_eq!(
            seg(PathMatch::Prefix("/api".into())).as_deref(),
            Some("api")
        );
        assert_eq!(
            seg(PathMatch::Prefix("/api/".into())).as_deref(),
            Some("api")
        );
        assert_eq!(
            seg(PathMatch::Prefix("/api/v1".into())).as_deref(),
            Some("api")
        );
        assert_eq!(seg(PathMatch::Prefix("//".into())).as_deref(), Some(""));
        assert_eq!(seg(PathMatch::Prefix("/".into())), None);
        assert_eq!(seg(PathMatch::Regex("/api".into())), None);
        assert_eq!(
            seg(PathMatch::Regex("/api/v[0-9]+".into())).as_deref(),
            Some("api")
        );
        assert_eq!(seg(PathMatch::Regex("//.*".into())).as_deref(), Some(""));
        for unpinned in [
            "/api/?x", // the slash is optional: `/apix` matches
            "/api/*",  // likewise
            "/api/+",  // a quantifier on the slash
            "/api/{0,1}",
            "/ap.?/x", // `.` and `?` are syntax
            "/a\\d/x",
            "/api/x|/web/y",
            "/(api)/x",
            "(?-u)/api/x",
            "/api",
            ".*",
        ] {
            assert_eq!(seg(PathMatch::Regex(unpinned.into())), None, "{unpinned}");
        }
        assert_eq!(request_segment("/api/x"), Some("api"));
        assert_eq!(request_segment("/api"), Some("api"));
        assert_eq!(request_segment("/api;v=1/x"), Some("api"));
        assert_eq!(request_segment("/"), Some(""));
        assert_eq!(request_segment("//x"), Some(""));
        assert_eq!(request_segment("*"), None);
        assert_eq!(request_segment(""), None);
    }
}
