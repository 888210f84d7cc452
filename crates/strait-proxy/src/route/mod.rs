//! Route matching: which of a listener's routes a request takes.
//!
//! On the data path this is the first decision after a request's head is parsed: the engine
//! builds a [`RequestView`] over the head, asks its listener's [`RouteTable`] for the first
//! route that matches, then uses [`WeightedSplit`] to choose the route's backend cluster and the
//! [`rewrite`](rewrite_prefix) and [`redirect`](redirect_location) helpers for the route's
//! filters. Everything here is pure: no I/O, no locks, no allocation per request.
//!
//! A table is compiled once per config version ([`RouteTable::build`] validates what the config
//! model cannot: regexes, header names, host patterns) and then shared read-only by every
//! worker.

mod index;
mod key_map;
mod matcher;
pub mod normalize;
mod rewrite;
mod split;

pub use rewrite::{
    host_bytes_without_port, host_without_port, redirect_location, rewrite_prefix, routing_host,
};
pub use split::WeightedSplit;

pub(crate) use matcher::peer_matches;

use std::fmt;

use index::{RouteIndex, RouteKeys};
use matcher::{HostPattern, RouteMatcher};

/// The parts of a request that routes match on, borrowed from the request head.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// `:authority` or `Host` as received: may carry a `:port` and upper case. Routing strips the
    /// port and ignores case. Empty when the request has neither, or one that is not ASCII.
    pub host: &'a [u8],
    /// The path, without the query string.
    pub path: &'a str,
    /// The raw query string without the `?`; `None` when the request has no `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The verified peer identity (SPIFFE ID of the client certificate), when there is one.
    pub peer: Option<&'a str>,
}

/// A whole `match` block, hosts included, for deciding outside a route table (authorization
/// rules use it to match requests).
#[derive(Debug)]
pub struct RequestMatcher {
    hosts: Box<[HostPattern]>,
    rest: RouteMatcher,
}

impl RequestMatcher {
    /// Errors name the offending field (`match.headers[1].regex: ...`).
    pub fn compile(m: &strait_config::RouteMatch) -> Result<Self, String> {
        let hosts = m
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostPattern::parse(h).map_err(|e| format!("match.hosts[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(RequestMatcher {
            hosts,
            rest: RouteMatcher::compile(m)?,
        })
    }

    /// True when every condition holds.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.hosts.is_empty() || {
            let host = routing_host(req.host);
            self.hosts.iter().any(|h| h.matches(host))
        }) && self.rest.matches(req).is_some()
    }
}

/// What the engine needs to know about how the matched route matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchInfo {
    /// For a route with a `prefix` path match: the length in bytes of the part of the request
    /// path it matched (`/api` on `/api/x` gives 4), to feed [`rewrite_prefix`]. `None` for
    /// other path matches.
    pub prefix_len: Option<usize>,
}

/// A route of the config that cannot be compiled. `route` is the route's position in the
/// sequence given to [`RouteTable::build`]; `message` names the field and says what to change.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: {message}")]
pub struct RouteError {
    /// Index of the route in declared order.
    pub route: usize,
    /// What is wrong, starting with the field path (`match.path.regex: ...`).
    pub message: String,
}

/// A listener's routes, compiled: the first route in declared order whose conditions all hold
/// wins. `A` is what the caller wants back for a route (the engine's compiled action).
///
/// Lookups in a table of more than a few routes go through an index by host and first path
/// segment (see the `index` module), so a table of a thousand routes costs about as much per
/// request as one of ten, while the answer stays exactly that of trying every route in order.
pub struct RouteTable<A> {
    routes: Box<[CompiledRoute<A>]>,
    /// `None`: the table is small enough that trying each route is cheaper.
    index: Option<RouteIndex>,
}

/// Up to this many routes, checking each route's hosts directly beats hashing the host and path
/// segment for the index (measured with `benches/benches/route.rs`).
const LINEAR_SCAN_MAX_ROUTES: usize = 16;

#[derive(Debug)]
struct CompiledRoute<A> {
    /// Checked by the index or, in small tables, by [`RouteTable::find_with_match`] directly.
    hosts: Box<[HostPattern]>,
    matcher: RouteMatcher,
    action: A,
}

impl<A> RouteTable<A> {
    /// Compiles routes in declared order. Fails on the first route that cannot match anything
    /// as written: an invalid regex, header name or method, a relative path, a host with a port
    /// or a misplaced wildcard, or more than one of `exact`/`regex`/`present` on a header or
    /// query condition.
    pub fn build<'m>(
        routes: impl IntoIterator<Item = (&'m strait_config::RouteMatch, A)>,
    ) -> Result<Self, RouteError> {
        Self::build_with_scan_limit(routes, LINEAR_SCAN_MAX_ROUTES)
    }

    /// [`build`](Self::build), indexing only tables of more than `linear_scan_max` routes.
    fn build_with_scan_limit<'m>(
        routes: impl IntoIterator<Item = (&'m strait_config::RouteMatch, A)>,
        linear_scan_max: usize,
    ) -> Result<Self, RouteError> {
        let mut compiled = Vec::new();
        for (route, (m, action)) in routes.into_iter().enumerate() {
            let error = |message| RouteError { route, message };
            if u32::try_from(route).is_err() {
                return Err(error("too many routes in one listener".to_owned()));
            }
            let hosts = m
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| HostPattern::parse(h).map_err(|e| format!("match.hosts[{i}]: {e}")))
                .collect::<Result<_, _>>()
                .map_err(error)?;
            let matcher = RouteMatcher::compile(m).map_err(error)?;
            compiled.push(CompiledRoute {
                hosts,
                matcher,
                action,
            });
        }
        if compiled.len() <= linear_scan_max {
            return Ok(RouteTable {
                routes: compiled.into(),
                index: None,
            });
        }
        let keys: Vec<RouteKeys<'_>> = compiled
            .iter()
            .map(|route| RouteKeys {
                hosts: &route.hosts,
                segment: route.matcher.required_segment(),
            })
            .collect();
        let index = Some(RouteIndex::build(&keys));
        Ok(RouteTable {
            routes: compiled.into(),
            index,
        })
    }

    /// The first route in declared order whose match holds for `req`.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&A> {
        self.find_with_match(req).map(|(action, _)| action)
    }

    /// Like [`find`](Self::find), also saying how the path matched (for prefix rewrites).
    #[inline]
    pub fn find_with_match<'t>(&'t self, req: &RequestView<'_>) -> Option<(&'t A, MatchInfo)> {
        let matched =
            |route: &'t CompiledRoute<A>| Some((&route.action, route.matcher.matches(req)?));
        match &self.index {
            Some(index) => index
                .candidates(routing_host(req.host), req.path)
                .filter_map(|i| self.routes.get(i))
                .find_map(matched),
            None => {
                // The host without its port only once a route asks for it: most tables
                // match no host.
                let mut host = None;
                self.routes
                    .iter()
                    .filter(|route| {
                        route.hosts.is_empty() || {
                            let host = *host.get_or_insert_with(|| routing_host(req.host));
                            route.hosts.iter().any(|p| p.matches(host))
                        }
                    })
                    .find_map(matched)
            }
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no routes (every request gets no match).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Shows the routes' compiled conditions and actions, not the index built from them.
impl<A: fmt::Debug> fmt::Debug for RouteTable<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
