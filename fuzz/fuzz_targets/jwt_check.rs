//! Fuzzes a listener's JWT check: the `Authorization` header every client controls, and the
//! claims of tokens signed by the key the listener trusts (an identity provider's users can
//! often choose some of their claims: a name, an e-mail address).
//!
//! Checks that nothing panics; that a token the fuzzer wrote itself (it has no key) is never
//! taken as valid; that after the check, a request carries a claim header only when its token
//! was valid, and then with the token's claim, never the value the client sent; and that the
//! `Authorization` header is removed exactly when a valid token is not to be forwarded.
//!
//! The first byte picks the listener's settings and whether the rest is signed as claims
//! (a JSON object; `iss` and a future `exp` are added when missing) or sent as the token.
//! Run with `cargo +nightly fuzz run jwt_check` in `fuzz/`.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use strait_proxy::jwt::{Checked, JwtCounters, JwtPlan};

/// An Ed25519 key made for this target (PKCS #8), and its public half as a JWK.
const KEY_DER: [u8; 48] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    0x8d, 0x77, 0xee, 0xc8, 0x07, 0x40, 0x4e, 0xad, 0x72, 0xd0, 0x61, 0x6e, 0x7e, 0xb3, 0xa4, 0xc7,
    0x88, 0xd1, 0x18, 0x57, 0x48, 0x50, 0x67, 0xff, 0x9d, 0x45, 0x3e, 0x75, 0x0b, 0xb9, 0xf1, 0x9a,
];
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA",
    "x":"TfjaNqUkHO3lG9O_DoRMK2ktKiub-U-YaeJ4O3FNfnM"}]}"#;
const ISSUER: &str = "https://issuer.example";
/// Claims copied into headers: a string, a number and a boolean are written; others are not.
const CLAIM_HEADERS: [(&str, &str); 3] = [("sub", "x-sub"), ("n", "x-n"), ("admin", "x-admin")];

/// The plan for settings `i`: bit 0 `required`, bit 1 `forward`, bit 2 an audience.
fn plan(i: usize) -> &'static JwtPlan {
    static PLANS: OnceLock<Vec<JwtPlan>> = OnceLock::new();
    let plans = PLANS.get_or_init(|| {
        let jwks =
            std::env::temp_dir().join(format!("strait-fuzz-jwks-{}.json", std::process::id()));
        std::fs::write(&jwks, JWKS).expect("write the JWKS");
        (0..8)
            .map(|i| {
                let config = serde_json::json!({
                    "issuer": ISSUER,
                    "audiences": if i & 4 != 0 { vec!["api"] } else { vec![] },
                    "jwks": { "file": jwks },
                    "required": i & 1 != 0,
                    "forward": i & 2 != 0,
                    "claim_to_headers": CLAIM_HEADERS
                        .iter()
                        .map(|&(claim, name)| (claim.to_owned(), Value::from(name)))
                        .collect::<Map<_, _>>(),
                });
                let config = serde_json::from_value(config).expect("a jwt config");
                JwtPlan::compile(&config, Arc::new(JwtCounters::default())).expect("the plan")
            })
            .collect()
    });
    &plans[i]
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let settings = usize::from(flags & 7);
    let (required, forward) = (settings & 1 != 0, settings & 2 != 0);
    // Signed claims, when the rest is a JSON object and the flag asks for it.
    let claims = match serde_json::from_slice::<Value>(rest) {
        Ok(Value::Object(claims)) if flags & 8 != 0 => Some(claims),
        _ => None,
    };
    let token = match &claims {
        Some(claims) => {
            let mut claims = claims.clone();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            claims.entry("iss").or_insert(ISSUER.into());
            claims.entry("exp").or_insert((now + 3600).into());
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = (flags & 16 != 0).then(|| "k1".to_owned());
            let key = EncodingKey::from_ed_der(&KEY_DER);
            jsonwebtoken::encode(&header, &claims, &key).expect("signing")
        }
        None => String::from_utf8_lossy(rest).into_owned(),
    };
    let mut headers = HeaderMap::new();
    let authorization = match flags >> 5 {
        0 => None,
        1 => Some(token.clone()),
        _ => Some(format!("Bearer {token}")),
    };
    let authorization = authorization.and_then(|a| HeaderValue::from_str(&a).ok());
    if let Some(a) = &authorization {
        headers.insert(http::header::AUTHORIZATION, a.clone());
    }
    // The client's own copies of the claim headers, which must never survive the check.
    for (_, name) in CLAIM_HEADERS {
        headers.insert(name, HeaderValue::from_static("spoofed"));
    }
    let result = plan(settings).check(&mut headers);

    if claims.is_none() {
        assert!(
            !matches!(result, Ok(Checked::Valid)),
            "a token without the key passed: {token:?}"
        );
    }
    match (&result, &claims) {
        (Ok(Checked::Valid), Some(claims)) => {
            for (claim, name) in CLAIM_HEADERS {
                let text = match claims.get(claim) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
                    _ => None,
                };
                let expected = text.and_then(|t| HeaderValue::from_str(&t).ok());
                assert_eq!(
                    headers.get(name),
                    expected.as_ref(),
                    "{name} for {claims:?}"
                );
            }
        }
        _ => {
            for (_, name) in CLAIM_HEADERS {
                assert!(headers.get(name).is_none(), "{name} survived {result:?}");
            }
        }
    }
    let kept = headers.get(http::header::AUTHORIZATION);
    match result {
        Ok(Checked::Valid) if !forward => assert!(kept.is_none(), "forwarded"),
        Ok(Checked::Anonymous) => assert!(!required, "anonymous on a required listener"),
        _ => assert_eq!(kept, authorization.as_ref()),
    }
});
