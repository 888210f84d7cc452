//! Authorization: whether a request may go on, decided by a listener's policy before routing
//! and a route's policy after matching.
//!
//! Pure: a compiled [`Policy`] looks at the verified peer identity (the SPIFFE ID of a client
//! certificate), the client address and the request head, and says allow or deny and which
//! rule decided. Rules are checked in order and the first whose conditions all hold decides;
//! otherwise the policy's default does. The request path answers a denial with 403 (gRPC
//! `PERMISSION_DENIED`) and counts every decision by rule.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use strait_config::{Authorization, AuthzAction, Cidr};

use crate::route::{peer_matches, RequestMatcher, RequestView};

/// A compiled authorization policy.
#[derive(Debug)]
pub struct Policy {
    rules: Box<[Rule]>,
    names: Box<[Box<str>]>,
    default_allows: bool,
    default_counts: Arc<Decisions>,
}

#[derive(Debug)]
struct Rule {
    allows: bool,
    /// Identity patterns (see [`peer_matches`]); empty: any request.
    peers: Box<[Box<str>]>,
    client_ips: Box<[Cidr]>,
    request: Option<RequestMatcher>,
    counts: Arc<Decisions>,
}

/// How often a rule (or the default) allowed and denied.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Requests allowed.
    pub allowed: AtomicU64,
    /// Requests denied.
    pub denied: AtomicU64,
}

/// The outcome of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The deciding rule's name (`default` when no rule matched).
    pub rule: &'p str,
}

impl Policy {
    /// Compiles a policy; `counts(rule name)` gives each rule's counters (so they survive
    /// reloads). Errors name the rule's field.
    pub fn compile(
        config: &Authorization,
        mut counts: impl FnMut(&str) -> Arc<Decisions>,
    ) -> Result<Policy, String> {
        let mut names = Vec::with_capacity(config.rules.len());
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{i}"));
            let request = match &r.request {
                Some(m) => Some(RequestMatcher::compile(m).map_err(|e| format!("rules[{i}].{e}"))?),
                None => None,
            };
            rules.push(Rule {
                allows: r.action == AuthzAction::Allow,
                peers: r.peers.iter().map(|p| p.as_str().into()).collect(),
                client_ips: r.client_ips.clone().into_boxed_slice(),
                request,
                counts: counts(&name),
            });
            names.push(name.into_boxed_str());
        }
        Ok(Policy {
            rules: rules.into_boxed_slice(),
            names: names.into_boxed_slice(),
            default_allows: config.default == AuthzAction::Allow,
            default_counts: counts("default"),
        })
    }

    /// Decides for a TCP connection (TLS passthrough): only what a connection shows can hold,
    /// so rules with `peers` or `match` conditions never match one. Counted like requests.
    pub fn decide_connection(&self, client_ip: IpAddr) -> Verdict<'_> {
        let matched = self.rules.iter().zip(self.names.iter()).find(|(rule, _)| {
            rule.peers.is_empty()
                && rule.request.is_none()
                && (rule.client_ips.is_empty()
                    || rule.client_ips.iter().any(|c| c.contains(client_ip)))
        });
        self.count(matched.map(|(r, n)| (r, &**n)))
    }

    fn count<'p>(&'p self, matched: Option<(&'p Rule, &'p str)>) -> Verdict<'p> {
        let (allowed, counts, rule) = match matched {
            Some((r, name)) => (r.allows, &r.counts, name),
            None => (self.default_allows, &self.default_counts, "default"),
        };
        let n = if allowed {
            &counts.allowed
        } else {
            &counts.denied
        };
        n.fetch_add(1, Relaxed);
        Verdict { allowed, rule }
    }

    /// Decides, and counts the decision. The peer identity is the request's (`req.peer`).
    pub fn decide(&self, client_ip: IpAddr, req: &RequestView<'_>) -> Verdict<'_> {
        let peer = req.peer;
        let matched = self.rules.iter().zip(self.names.iter()).find(|(rule, _)| {
            (rule.peers.is_empty()
                || peer.is_some_and(|id| rule.peers.iter().any(|p| peer_matches(p, id))))
                && (rule.client_ips.is_empty()
                    || rule.client_ips.iter().any(|c| c.contains(client_ip)))
                && rule.request.as_ref().is_none_or(|m| m.matches(req))
        });
        self.count(matched.map(|(r, n)| (r, &**n)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let config: Authorization = serde_yaml::from_str(yaml).unwrap();
        Policy::compile(&config, |_| Arc::default()).unwrap()
    }

    fn decide(
        p: &Policy,
        peer: Option<&str>,
        ip: &str,
        method: &str,
        path: &str,
    ) -> (bool, String) {
        let headers = http::HeaderMap::new();
        let method: http::Method = method.parse().unwrap();
        let view = RequestView {
            method: &method,
            host: b"api.example.com",
            path,
            query: None,
            headers: &headers,
            peer,
        };
        let v = p.decide(ip.parse().unwrap(), &view);
        (v.allowed, v.rule.to_owned())
    }

    #[test]
    fn peers_match_exactly_by_namespace_by_trust_domain_or_at_all() {
        let p = policy(
            "default: deny
rules:
  - { name: checkout, action: allow, peers: [spiffe://td/ns/shop/sa/checkout] }
  - { name: ops-ns, action: allow, peers: ['spiffe://td/ns/ops/*'] }
  - { name: other-td, action: deny, peers: ['spiffe://partner/*'] }
  - { name: anyone-verified, action: allow, peers: ['*'], match: { methods: [GET] } }
",
        );
        let ip = "10.1.2.3";
        let shop = Some("spiffe://td/ns/shop/sa/checkout");
        assert_eq!(decide(&p, shop, ip, "POST", "/"), (true, "checkout".into()));
        let ops = Some("spiffe://td/ns/ops/sa/x");
        assert_eq!(decide(&p, ops, ip, "POST", "/"), (true, "ops-ns".into()));
        let partner = Some("spiffe://partner/ns/a/sa/b");
        assert_eq!(
            decide(&p, partner, ip, "GET", "/"),
            (false, "other-td".into())
        );
        let cart = Some("spiffe://td/ns/shop/sa/cart");
        assert_eq!(
            decide(&p, cart, ip, "GET", "/"),
            (true, "anyone-verified".into())
        );
        assert_eq!(decide(&p, cart, ip, "POST", "/"), (false, "default".into()));
        assert_eq!(decide(&p, None, ip, "GET", "/"), (false, "default".into()));
    }

    #[test]
    fn client_ips_and_requests_combine_and_the_first_match_decides() {
        let p = policy(
            "rules:
  - { name: admin-inside, action: allow, client_ips: [10.0.0.0/8], match: { path: { prefix: /admin } } }
  - { name: admin, action: deny, match: { path: { prefix: /admin } } }
  - { name: banned, action: deny, client_ips: [203.0.113.7, '2001:db8::/32'] }
",
        );
        let inside = decide(&p, None, "10.9.9.9", "GET", "/admin/x");
        assert_eq!(inside, (true, "admin-inside".into()));
        let outside = decide(&p, None, "192.0.2.1", "GET", "/admin/x");
        assert_eq!(outside, (false, "admin".into()));
        assert_eq!(
            decide(&p, None, "203.0.113.7", "GET", "/"),
            (false, "banned".into())
        );
        assert_eq!(
            decide(&p, None, "2001:db8::1", "GET", "/"),
            (false, "banned".into())
        );
        assert_eq!(
            decide(&p, None, "192.0.2.1", "GET", "/"),
            (true, "default".into())
        );
        let counted = p.rules.first().unwrap().counts.allowed.load(Relaxed);
        assert_eq!(counted, 1);
    }

    #[test]
    fn connections_are_judged_by_address_only() {
        let p = policy(
            "default: deny
rules:
  - { name: needs-request, action: allow, match: { methods: [GET] } }
  - { name: needs-peer, action: allow, peers: ['*'] }
  - { name: office, action: allow, client_ips: [10.0.0.0/8] }
",
        );
        let inside = p.decide_connection("10.1.1.1".parse().unwrap());
        assert_eq!((inside.allowed, inside.rule), (true, "office"));
        let outside = p.decide_connection("192.0.2.1".parse().unwrap());
        assert_eq!((outside.allowed, outside.rule), (false, "default"));
    }
}
