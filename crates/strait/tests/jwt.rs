//! JWT verification on a listener, with keys made here (rcgen for ES256 and Ed25519, the
//! openssl command for RS256): good tokens pass with their claims as headers; missing,
//! expired, not-yet-valid, wrong-audience, wrong-issuer, wrong-key and `alg: none` tokens get
//! 401 with `WWW-Authenticate`; gRPC gets UNAUTHENTICATED; keys come from a file or a URL; a
//! claim keys a rate limit.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use support::*;

struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn es256(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let raw = pair.public_key_raw();
    let (x, y) = (&raw[1..33], &raw[33..65]);
    Signer {
        alg: Algorithm::ES256,
        kid: kid.to_owned(),
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "kid": kid, "alg": "ES256", "use": "sig"
        }),
    }
}

fn eddsa(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    Signer {
        alg: Algorithm::EdDSA,
        kid: kid.to_owned(),
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw()), "kid": kid, "alg": "EdDSA"
        }),
    }
}

fn rs256(kid: &str, dir: &std::path::Path) -> Signer {
    let path = dir.join(format!("{kid}.pem"));
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&path)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl command (apt-get install openssl)");
    assert!(status.success(), "openssl genrsa failed");
    let modulus = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&path)
        .output()
        .expect("openssl rsa -modulus");
    let text = String::from_utf8_lossy(&modulus.stdout);
    let hex = text.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let pem = std::fs::read(&path).expect("key");
    Signer {
        alg: Algorithm::RS256,
        kid: kid.to_owned(),
        key: EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
        jwk: serde_json::json!({ "kty": "RSA", "n": b64(&n), "e": "AQAB", "kid": kid, "alg": "RS256" }),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token(signer: &Signer, claims: serde_json::Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, &claims, &signer.key).expect("sign")
}

fn claims(sub: &str, aud: &str, exp_in: i64, nbf_in: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://auth.example.com", "aud": aud, "sub": sub,
        "exp": now() + exp_in, "nbf": now() + nbf_in, "iat": now()
    })
}

fn jwks(signers: &[&Signer]) -> String {
    serde_json::json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() })
        .to_string()
}

fn listener_config(up: std::net::SocketAddr, jwks_source: &str, route_extra: &str) -> String {
    format!(
        "listeners:\n  - name: main\n    address: ${{LISTEN}}\n    jwt:\n      issuer: https://auth.example.com\n      audiences: [api]\n      jwks: {jwks_source}\n      leeway: 5s\n      claim_to_headers: {{ sub: x-user }}\n    routes:\n      - name: all\n        backends: [{{ cluster: app }}]\n{route_extra}clusters:\n  - name: app\n    endpoints: [{{ address: \"{up}\" }}]\n"
    )
}

async fn call(proxy: &Proxy, bearer: Option<&str>, grpc: bool) -> Resp {
    let mut req = request(if grpc { "POST" } else { "GET" }, "api.example.com", "/x")
        .header("x-user", "forged");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let body = if grpc {
        full(vec![0, 0, 0, 0, 0])
    } else {
        empty()
    };
    within(
        Duration::from_secs(5),
        "request",
        proxy.send(Proto::H1, req.body(body).expect("req")),
    )
    .await
    .expect("request")
}

fn temp_dir() -> std::path::PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("strait-jwt-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_failures_get_401_with_a_challenge() {
    let dir = temp_dir();
    let (ec, ed, rsa) = (es256("ec-1"), eddsa("ed-1"), rs256("rsa-1", &dir));
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&ec, &ed, &rsa])).expect("jwks");
    let up = Upstream::echo("app").await;
    let source = format!("{{ file: \"{}\" }}", jwks_path.display());
    let proxy = Proxy::start(&listener_config(up.addr, &source, "")).await;

    for signer in [&ec, &ed, &rsa] {
        let good = token(signer, claims("alice", "api", 300, -10));
        let resp = call(&proxy, Some(&good), false).await;
        assert_eq!(resp.status, 200, "{:?}: {}", signer.alg, resp.text());
        let seen = resp.echo();
        assert_eq!(
            seen.header("x-user"),
            vec!["alice".to_owned()],
            "the claim replaced the forged header"
        );
    }

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "Bearer realm=\"strait\""),
        (
            "expired",
            Some(token(&ec, claims("a", "api", -60, -120))),
            "expired",
        ),
        (
            "not yet valid",
            Some(token(&ec, claims("a", "api", 600, 300))),
            "not yet valid",
        ),
        (
            "wrong audience",
            Some(token(&ec, claims("a", "billing", 300, -10))),
            "bad audience",
        ),
        (
            "wrong issuer",
            Some(token(
                &ec,
                serde_json::json!({"iss": "https://evil.example", "aud": "api", "exp": now() + 300}),
            )),
            "bad issuer",
        ),
        (
            "wrong key",
            {
                let mut impostor = es256("ec-1");
                impostor.kid = "ec-1".into();
                Some(token(&impostor, claims("a", "api", 300, -10)))
            },
            "bad signature",
        ),
        (
            "unknown kid",
            Some(token(&es256("ec-9"), claims("a", "api", 300, -10))),
            "unknown key",
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(claims("a", "api", 300, -10).to_string().as_bytes())
            )),
            "malformed",
        ),
        ("garbage", Some("not.a.jwt".to_owned()), "malformed"),
        // A claim the config checks may not be left out (jsonwebtoken checks only those present).
        (
            "no audience",
            Some(token(
                &ec,
                serde_json::json!({"iss": "https://auth.example.com", "exp": now() + 300}),
            )),
            "bad audience",
        ),
        (
            "no issuer",
            Some(token(
                &ec,
                serde_json::json!({"aud": "api", "exp": now() + 300}),
            )),
            "bad issuer",
        ),
    ];
    for (what, bearer, challenge) in &cases {
        let resp = call(&proxy, bearer.as_deref(), false).await;
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
        let www = resp.header("www-authenticate").unwrap_or_default();
        assert!(www.starts_with("Bearer realm=\"strait\""), "{what}: {www}");
        assert!(www.contains(challenge), "{what}: {www}");
        assert_eq!(
            resp.header("x-strait-error").as_deref(),
            Some("unauthorized")
        );
    }
    // A good token beside a second `Authorization`: the other would go upstream unverified.
    let good = token(&ec, claims("alice", "api", 300, -10));
    let twice = request("GET", "api.example.com", "/x")
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", "Bearer forged.token.here")
        .body(empty())
        .expect("req");
    let resp = within(
        Duration::from_secs(5),
        "request",
        proxy.send(Proto::H1, twice),
    )
    .await
    .expect("request");
    assert_eq!(resp.status, 401, "{}", resp.text());
    let grpc = call(&proxy, None, true).await;
    assert_eq!(grpc.header("grpc-status").as_deref(), Some("16"));
    assert_eq!(up.hits(), 3, "refused requests never reach the upstream");

    let metrics = proxy.admin_get("/metrics").await.text();
    for (result, n) in [
        ("valid", 3),
        ("missing", 2),
        ("expired", 1),
        ("bad_signature", 1),
        ("malformed", 3),
        ("bad_audience", 2),
        ("bad_issuer", 2),
    ] {
        let line =
            format!("strait_jwt_requests_total{{listener=\"main\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }

    // A number claim reads as the token's number: a float is parsed exactly, not one unit in
    // the last place off (found by fuzz/fuzz_targets/jwt_check.rs).
    let mut number = claims("alice", "api", 300, -10);
    number["sub"] = serde_json::json!(1.0008888888888799e130);
    let resp = call(&proxy, Some(&token(&ed, number)), false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.echo().header("x-user"), ["1.0008888888888799e+130"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_naming_a_kid_is_tried_against_the_keys_that_name_none() {
    let dir = temp_dir();
    let mut anonymous = es256("issuer-side-kid");
    if let Some(jwk) = anonymous.jwk.as_object_mut() {
        jwk.remove("kid");
    }
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&anonymous])).expect("jwks");
    let up = Upstream::echo("app").await;
    let source = format!("{{ file: \"{}\" }}", jwks_path.display());
    let proxy = Proxy::start(&listener_config(up.addr, &source, "")).await;

    let signed = token(&anonymous, claims("alice", "api", 300, -10));
    let resp = call(&proxy, Some(&signed), false).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let impostor = token(&es256("issuer-side-kid"), claims("eve", "api", 300, -10));
    let resp = call(&proxy, Some(&impostor), false).await;
    assert_eq!(resp.status, 401, "{}", resp.text());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_url_and_claims_key_a_rate_limit() {
    let ec = es256("ec-url");
    // The JWKS is served by another proxy's direct response.
    let body = jwks(&[&ec]).replace('"', "\\\"");
    let issuer = Proxy::start(&format!(
        "listeners:\n  - name: keys\n    address: ${{LISTEN}}\n    routes:\n      - direct_response: {{ status: 200, body: \"{body}\", content_type: application/json }}\n"
    ))
    .await;
    let up = Upstream::echo("app").await;
    let source = format!(
        "{{ url: \"http://{}/.well-known/jwks.json\" }}",
        issuer.listen
    );
    let limit =
        "        rate_limit: { requests_per_second: 1, burst: 1, key: { header: x-user } }\n";
    let proxy = Proxy::start(&listener_config(up.addr, &source, limit)).await;

    let alice = token(&ec, claims("alice", "api", 300, -10));
    let bob = token(&ec, claims("bob", "api", 300, -10));
    // The first fetch runs in the background: wait for the keys.
    let mut first = call(&proxy, Some(&alice), false).await;
    for _ in 0..50 {
        if first.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        first = call(&proxy, Some(&alice), false).await;
    }
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        call(&proxy, Some(&alice), false).await.status,
        429,
        "alice's bucket is spent"
    );
    assert_eq!(
        call(&proxy, Some(&bob), false).await.status,
        200,
        "bob has his own bucket"
    );
}
