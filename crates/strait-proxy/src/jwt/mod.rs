//! JWT bearer-token verification at the edge.
//!
//! On the data path it runs right after a listener's request arrives, before routing: the
//! `Authorization: Bearer` token is checked (algorithm allowed, key by `kid` from the JWKS,
//! signature, `iss`, `aud`, `exp`/`nbf` with leeway) and chosen claims become request headers,
//! so routes can match on them and rate limits can key on them. Verification is pure over a
//! key set; the key set comes from a file (reloaded with the config when it changes) or from a
//! URL fetched in the background ([`fetch`]) and shared by every listener that names it.

mod fetch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use strait_config::{Jwt, JwtAlgorithm};

pub use fetch::JwksCache;

/// Signing keys, by `kid` (keys without one are tried in turn).
#[derive(Default)]
pub struct Keys {
    by_kid: HashMap<String, (DecodingKey, Family)>,
    anonymous: Vec<(DecodingKey, Family)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .finish()
    }
}

/// Which algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256 => Some(Family::Rsa),
        Algorithm::ES256 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        _ => None,
    }
}

impl Keys {
    /// Reads and parses a JWKS file; errors start with the path.
    pub fn from_file(path: &str) -> Result<Keys, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
        Keys::parse(&bytes).map_err(|e| format!("{path}: {e}"))
    }

    /// Parses a JWKS document. Keys of kinds not supported are skipped; a document with no
    /// usable key is an error.
    pub fn parse(json: &[u8]) -> Result<Keys, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Keys::default();
        for jwk in &set.keys {
            let fam = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                _ => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), (key, fam));
                }
                None => keys.anonymous.push((key, fam)),
            }
        }
        if keys.by_kid.is_empty() && keys.anonymous.is_empty() {
            return Err("no RSA, P-256 or Ed25519 signing key in the JWKS".to_owned());
        }
        Ok(keys)
    }
}

/// Why a request was refused (the label in metrics, and the RFC 6750 description).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token, and one is required.
    Missing,
    /// Not a JWT, or an algorithm not accepted (`none` included).
    Malformed,
    /// No key with the token's `kid` (or none that verifies it).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` is not the configured issuer.
    BadIssuer,
    /// No accepted `aud`.
    BadAudience,
}

impl Refusal {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::BadIssuer => "bad_issuer",
            Refusal::BadAudience => "bad_audience",
        }
    }

    /// Every refusal, in metric order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::BadIssuer,
        Refusal::BadAudience,
    ];
}

/// A listener's JWT check results: accepted, passed without a token, and refused by reason.
#[derive(Debug, Default)]
pub struct JwtCounters {
    /// Valid tokens.
    pub accepted: AtomicU64,
    /// Requests without a token let through (`required: false`).
    pub anonymous: AtomicU64,
    /// Refusals, in [`Refusal::ALL`] order.
    pub refused: [AtomicU64; 8],
}

/// Where a plan's keys are.
#[derive(Debug)]
enum KeySource {
    Fixed(Arc<Keys>),
    Fetched(Arc<JwksCache>),
}

/// A listener's compiled JWT check.
#[derive(Debug)]
pub struct JwtPlan {
    keys: KeySource,
    validation: Validation,
    algorithms: Vec<Algorithm>,
    required: bool,
    claim_headers: Vec<(String, HeaderName)>,
    forward: bool,
    /// Results, kept across reloads.
    pub counters: Arc<JwtCounters>,
    /// The JWKS file, to reload when it changes.
    pub file: Option<std::path::PathBuf>,
}

/// What the check did to the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// A valid token; its chosen claims were copied into headers.
    Valid,
    /// No token, and none required.
    Anonymous,
}

impl JwtPlan {
    /// Compiles a listener's `jwt`, reading a JWKS file now or sharing the fetcher of a URL.
    pub fn compile(config: &Jwt, counters: Arc<JwtCounters>) -> Result<JwtPlan, String> {
        let (keys, file) = match (&config.jwks.file, &config.jwks.url) {
            (Some(path), _) => {
                let keys = Keys::from_file(path).map_err(|e| format!("jwks.file {e}"))?;
                (KeySource::Fixed(Arc::new(keys)), Some(path.into()))
            }
            (None, Some(url)) => (
                KeySource::Fetched(JwksCache::shared(url, config.jwks.refresh.get())?),
                None,
            ),
            (None, None) => return Err("jwks: give `file` or `url`".to_owned()),
        };
        let algorithms: Vec<Algorithm> = config
            .algorithms
            .iter()
            .map(|a| match a {
                JwtAlgorithm::RS256 => Algorithm::RS256,
                JwtAlgorithm::ES256 => Algorithm::ES256,
                _ => Algorithm::EdDSA,
            })
            .collect();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = config.leeway.get().as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        // jsonwebtoken checks `iss` and `aud` only when a token has them: a token without them
        // must be refused too, or leaving a claim out would pass its check.
        if config.audiences.is_empty() {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "iss"]);
        } else {
            validation.set_audience(&config.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        let claim_headers = config
            .claim_to_headers
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| {
                        format!("claim_to_headers.{claim}: {header:?} is not a header name")
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(JwtPlan {
            keys,
            validation,
            algorithms,
            required: config.required,
            claim_headers,
            forward: config.forward,
            counters,
            file,
        })
    }

    /// Checks the request's token; on success copies the chosen claims into headers (after
    /// removing any the client sent) and counts the result.
    pub fn check(&self, headers: &mut HeaderMap) -> Result<Checked, Refusal> {
        for (_, name) in &self.claim_headers {
            headers.remove(name);
        }
        let result = self.verify(headers);
        match &result {
            Ok(Checked::Valid) => self.counters.accepted.fetch_add(1, Relaxed),
            Ok(Checked::Anonymous) => self.counters.anonymous.fetch_add(1, Relaxed),
            Err(r) => {
                let i = Refusal::ALL.iter().position(|x| x == r).unwrap_or(0);
                self.counters
                    .refused
                    .get(i)
                    .map_or(0, |c| c.fetch_add(1, Relaxed))
            }
        };
        if result.is_ok() && !self.forward {
            headers.remove(http::header::AUTHORIZATION);
        }
        result
    }

    fn verify(&self, headers: &mut HeaderMap) -> Result<Checked, Refusal> {
        // Two `Authorization` fields: one would be checked and both forwarded, and an upstream
        // reading the other would trust a token nobody verified.
        let mut fields = headers.get_all(http::header::AUTHORIZATION).iter();
        if fields.next().is_some() && fields.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let token = match bearer(headers) {
            Some(t) => t,
            None if self.required => return Err(Refusal::Missing),
            None => return Ok(Checked::Anonymous),
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refusal::Malformed);
        }
        let fam = family(header.alg).ok_or(Refusal::Malformed)?;
        let keys = match &self.keys {
            KeySource::Fixed(k) => Arc::clone(k),
            KeySource::Fetched(cache) => cache.keys(),
        };
        let candidates: Vec<&DecodingKey> = match &header.kid {
            // The key with that `kid`, then the keys that have none (a set may name no key;
            // Envoy tries those too).
            Some(kid) => keys
                .by_kid
                .get(kid)
                .into_iter()
                .chain(&keys.anonymous)
                .filter(|(_, f)| *f == fam)
                .map(|(k, _)| k)
                .collect(),
            None => keys
                .anonymous
                .iter()
                .chain(keys.by_kid.values())
                .filter(|(_, f)| *f == fam)
                .map(|(k, _)| k)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(Refusal::UnknownKey);
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let mut refusal = Refusal::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &validation,
            ) {
                Ok(data) => {
                    for (claim, name) in &self.claim_headers {
                        let text = match data.claims.get(claim) {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(
                                other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
                            ) => other.to_string(),
                            _ => continue,
                        };
                        if let Ok(v) = HeaderValue::from_str(&text) {
                            headers.insert(name.clone(), v);
                        }
                    }
                    return Ok(Checked::Valid);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    refusal = match e.kind() {
                        ErrorKind::ExpiredSignature => Refusal::Expired,
                        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                        ErrorKind::InvalidIssuer => Refusal::BadIssuer,
                        ErrorKind::InvalidAudience => Refusal::BadAudience,
                        ErrorKind::InvalidSignature => Refusal::BadSignature,
                        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                            "iss" => Refusal::BadIssuer,
                            "aud" => Refusal::BadAudience,
                            _ => Refusal::Malformed,
                        },
                        _ => Refusal::Malformed,
                    };
                    // Claims failed with a good signature: no other key will do better.
                    if refusal != Refusal::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(refusal)
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `WWW-Authenticate` value of a refusal (RFC 6750 §3).
pub fn challenge(refusal: Refusal) -> HeaderValue {
    match refusal {
        Refusal::Missing => HeaderValue::from_static("Bearer realm=\"strait\""),
        other => HeaderValue::from_str(&format!(
            "Bearer realm=\"strait\", error=\"invalid_token\", error_description=\"{}\"",
            other.name().replace('_', " ")
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"strait\"")),
    }
}

/// A shared, swappable key set.
pub(crate) type SharedKeys = ArcSwap<Keys>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        assert_eq!(
            bearer(&with_auth("Bearer abc.def.ghi")),
            Some("abc.def.ghi")
        );
        assert_eq!(bearer(&with_auth("bearer  abc")), Some("abc"));
        assert_eq!(bearer(&with_auth("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer(&with_auth("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn key_sets_without_usable_keys_are_refused() {
        assert!(Keys::parse(b"not json").is_err());
        assert!(Keys::parse(br#"{"keys": []}"#).is_err());
        let hmac = br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#;
        assert!(
            Keys::parse(hmac).is_err(),
            "symmetric keys are never accepted"
        );
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(challenge(Refusal::Missing), "Bearer realm=\"strait\"");
        assert_eq!(
            challenge(Refusal::Expired),
            "Bearer realm=\"strait\", error=\"invalid_token\", error_description=\"expired\""
        );
    }
}
