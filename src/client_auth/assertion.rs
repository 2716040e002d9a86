//! Client assertions: `private_key_jwt` and `client_secret_jwt` (RFC 7523 §2.2 and §3, OIDC
//! Core §9; docs/design.md §4.18). Pure: the client's key set (for a `jwks_uri` client, the one
//! the caller fetched) and the clock are given.
//!
//! An assertion is a JWS in compact form (never a JWE) with the `alg` the client registered,
//! signed with the client's key (its secret for HS*); `iss` = `sub` = the client id; `aud` holds
//! the issuer or the token endpoint's URL; `exp` is required, in the future and at most
//! [`MAX_LIFETIME_SECS`] ahead (plus the leeway); `iat` and `nbf`, when present, are not in the
//! future; `jti` is required (the caller makes sure it is used once).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use crate::config::Secret;
use crate::grant::verify::{self, CLOCK_LEEWAY_SECS, KeySet, Rejected, Verifier};

/// `client_assertion_type` for a JWT (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far ahead an assertion's `exp` may be (beyond the clock leeway): an assertion is made
/// for one request, and its `jti` is remembered until `exp`.
pub const MAX_LIFETIME_SECS: i64 = 600;

/// How a client that authenticates with assertions is checked.
#[derive(Clone)]
pub struct AssertionAuth {
    /// The `alg` names accepted: the registered one, or the IdP's default set.
    pub algs: &'static [&'static str],
    pub keys: AssertionKeys,
}

/// Where the key that checks a client's assertions comes from.
#[derive(Clone)]
pub enum AssertionKeys {
    /// `client_secret_jwt`: the client's secret is the HMAC key.
    Secret(Secret),
    /// `private_key_jwt` with `jwks` or `jwks_file`, parsed once.
    Jwks(Arc<KeySet>),
    /// `private_key_jwt` with `jwks_uri`: fetched and cached by the caller, fetched again for
    /// an unknown `kid` at most once per `refetch_interval`.
    Uri {
        uri: String,
        refetch_interval: std::time::Duration,
    },
}

/// `jwks_refetch_interval`'s default.
pub const DEFAULT_JWKS_REFETCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for AssertionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            AssertionKeys::Secret(_) => "secret".to_owned(),
            AssertionKeys::Jwks(set) => format!("jwks({} keys)", set.len()),
            AssertionKeys::Uri { uri, .. } => format!("jwks_uri({uri})"),
        };
        f.debug_struct("AssertionAuth")
            .field("algs", &self.algs)
            .field("keys", &keys)
            .finish()
    }
}

/// The audiences an assertion may name, as the client sees the authorization server.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    pub issuer: &'a str,
    /// The token endpoint's URL, when known.
    pub token_endpoint: Option<&'a str>,
}

/// What a verified assertion says that the caller still needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub jti: String,
    /// Seconds since the epoch.
    pub exp: i64,
}

/// Why an assertion was refused; for logs, never the assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The JWS failed (format, algorithm, key, signature); `UnknownKey` may mean that a
    /// `jwks_uri` set is out of date.
    Jws(Rejected),
    /// A `jwks_uri` client whose keys could not be had.
    NoKeys,
    Issuer,
    Subject,
    Audience,
    /// `exp` missing, not a number, or past.
    Expired,
    /// `exp` further ahead than [`MAX_LIFETIME_SECS`].
    TooLong,
    /// `iat` or `nbf` in the future.
    NotYetValid,
    NoJti,
}

impl Refused {
    pub fn describe(self) -> &'static str {
        match self {
            Refused::Jws(Rejected::Algorithm) => "the assertion's alg is not the client's",
            Refused::Jws(Rejected::UnknownKey) => "the assertion's key is not the client's",
            Refused::Jws(Rejected::KeyMismatch) => "the assertion's key does not fit its alg",
            Refused::Jws(Rejected::Signature) => "the assertion's signature does not verify",
            Refused::Jws(_) => "the assertion is not a well-formed JWS",
            Refused::NoKeys => "the client's jwks_uri could not be fetched",
            Refused::Issuer => "the assertion's iss is not the client id",
            Refused::Subject => "the assertion's sub is not the client id",
            Refused::Audience => "the assertion's aud is neither the issuer nor the token endpoint",
            Refused::Expired => "the assertion has no exp or has expired",
            Refused::TooLong => "the assertion's exp is too far ahead",
            Refused::NotYetValid => "the assertion's iat or nbf is in the future",
            Refused::NoJti => "the assertion has no jti",
        }
    }
}

/// How long an assertion the proxy makes for the upstream lives (`client_secret_jwt`).
pub const OWN_LIFETIME_SECS: i64 = 60;

/// An assertion for the upstream as `client_id` (`client_secret_jwt`, RFC 7523 §2.2): HMAC with
/// the client's secret, `aud` the upstream's issuer, a random `jti`, `exp` a minute ahead.
pub fn sign_hmac(
    client_id: &str,
    secret: &Secret,
    alg: &str,
    audience: &str,
    now: i64,
) -> Option<String> {
    use aws_lc_rs::{hmac, rand};
    let algorithm = match alg {
        "HS256" => hmac::HMAC_SHA256,
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => return None,
    };
    let mut jti = [0u8; 16];
    rand::fill(&mut jti).ok()?;
    let header = serde_json::json!({"alg": alg, "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": B64.encode(jti),
        "iat": now,
        "exp": now + OWN_LIFETIME_SECS,
    });
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(&header).ok()?),
        B64.encode(serde_json::to_vec(&claims).ok()?)
    );
    let tag = hmac::sign(
        &hmac::Key::new(algorithm, secret.expose().as_bytes()),
        input.as_bytes(),
    );
    Some(format!("{input}.{}", B64.encode(tag.as_ref())))
}

/// The `sub` of an assertion, read without verifying it: which client it claims to be, to
/// look the client up. `None` when it is not a JWS with a string `sub`.
pub fn unverified_subject(assertion: &str) -> Option<String> {
    let mut parts = assertion.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let claims: Map<String, Value> = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Checks `assertion` as `client_id`'s, with `auth`'s key (or `fetched`, for a `jwks_uri`
/// client), at `now` (seconds since the epoch).
pub fn verify(
    client_id: &str,
    auth: &AssertionAuth,
    fetched: Option<&KeySet>,
    assertion: &str,
    audience: &Audience<'_>,
    now: i64,
) -> Result<Verified, Refused> {
    let verifier = match &auth.keys {
        AssertionKeys::Secret(secret) => Verifier::Hmac(secret.expose().as_bytes()),
        AssertionKeys::Jwks(set) => Verifier::Set(set),
        AssertionKeys::Uri { .. } => Verifier::Set(fetched.ok_or(Refused::NoKeys)?),
    };
    let claims = verify::verify_jws(assertion, verifier, auth.algs).map_err(Refused::Jws)?;
    check_claims(client_id, &claims, audience, now)
}

fn check_claims(
    client_id: &str,
    claims: &Map<String, Value>,
    audience: &Audience<'_>,
    now: i64,
) -> Result<Verified, Refused> {
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    // RFC 7523 §3 items 1 and 2; OIDC Core §9: iss and sub are the client_id.
    if text("iss") != Some(client_id) {
        return Err(Refused::Issuer);
    }
    if text("sub") != Some(client_id) {
        return Err(Refused::Subject);
    }
    // RFC 7523 §3 item 3: aud identifies the authorization server (its issuer, or the token
    // endpoint URL, as OIDC Core §9 says).
    let fits = |a: &str| a == audience.issuer || Some(a) == audience.token_endpoint;
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => fits(a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(fits),
        _ => false,
    };
    if !aud_ok {
        return Err(Refused::Audience);
    }
    // RFC 7523 §3 item 4: exp is required; rejected once past (with the leeway).
    let exp = match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if exp.is_finite() => exp.floor() as i64,
        _ => return Err(Refused::Expired),
    };
    if exp <= now - CLOCK_LEEWAY_SECS {
        return Err(Refused::Expired);
    }
    if exp > now + MAX_LIFETIME_SECS + CLOCK_LEEWAY_SECS {
        return Err(Refused::TooLong);
    }
    // RFC 7523 §3 items 5 and 6: nbf and iat, when present, not in the future.
    for k in ["nbf", "iat"] {
        match claims.get(k) {
            None => {}
            Some(v) => match v.as_f64() {
                Some(t) if t <= (now + CLOCK_LEEWAY_SECS) as f64 => {}
                _ => return Err(Refused::NotYetValid),
            },
        }
    }
    // RFC 7523 §3 item 7, OIDC Core §9: jti is required here, to refuse a replay.
    match text("jti") {
        Some(jti) if !jti.is_empty() => Ok(Verified {
            jti: jti.to_owned(),
            exp,
        }),
        _ => Err(Refused::NoJti),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://idp.example";
    const TOKEN: &str = "https://idp.example/token";

    fn b64(v: &Value) -> String {
        B64.encode(serde_json::to_vec(v).expect("json"))
    }

    fn hs256(secret: &str, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            input.as_bytes(),
        );
        format!("{input}.{}", B64.encode(tag.as_ref()))
    }

    fn claims() -> Value {
        json!({"iss": "c", "sub": "c", "aud": TOKEN, "exp": NOW + 60, "iat": NOW, "jti": "j1"})
    }

    fn secret_auth() -> AssertionAuth {
        AssertionAuth {
            algs: &["HS256"],
            keys: AssertionKeys::Secret(Secret::new("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t")),
        }
    }

    fn check(auth: &AssertionAuth, jwt: &str) -> Result<Verified, Refused> {
        let aud = Audience {
            issuer: ISS,
            token_endpoint: Some(TOKEN),
        };
        verify("c", auth, None, jwt, &aud, NOW)
    }

    fn with(f: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut c = claims();
        f(c.as_object_mut().expect("object"));
        hs256(
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
            &json!({"alg": "HS256"}),
            &c,
        )
    }

    #[test]
    fn a_good_hs256_assertion_verifies() {
        let jwt = with(|_| {});
        assert_eq!(
            check(&secret_auth(), &jwt),
            Ok(Verified {
                jti: "j1".into(),
                exp: NOW + 60
            })
        );
        // The issuer as aud, in an array.
        let jwt = with(|c| {
            c.insert("aud".into(), json!(["x", ISS]));
        });
        assert!(check(&secret_auth(), &jwt).is_ok());
        assert_eq!(unverified_subject(&jwt).as_deref(), Some("c"));
    }

    #[test]
    fn claims_are_checked() {
        type Edit = Box<dyn FnOnce(&mut Map<String, Value>)>;
        let cases: Vec<(Edit, Refused)> = vec![
            (
                Box::new(|c| drop(c.insert("iss".into(), json!("d")))),
                Refused::Issuer,
            ),
            (
                Box::new(|c| drop(c.insert("sub".into(), json!("d")))),
                Refused::Subject,
            ),
            (Box::new(|c| drop(c.remove("iss"))), Refused::Issuer),
            (
                Box::new(|c| drop(c.insert("aud".into(), json!("https://other/token")))),
                Refused::Audience,
            ),
            (Box::new(|c| drop(c.remove("aud"))), Refused::Audience),
            (Box::new(|c| drop(c.remove("exp"))), Refused::Expired),
            (
                Box::new(|c| drop(c.insert("exp".into(), json!("soon")))),
                Refused::Expired,
            ),
            (
                Box::new(|c| drop(c.insert("exp".into(), json!(NOW - 61)))),
                Refused::Expired,
            ),
            (
                Box::new(|c| drop(c.insert("exp".into(), json!(NOW + 661 + 1)))),
                Refused::TooLong,
            ),
            (
                Box::new(|c| drop(c.insert("iat".into(), json!(NOW + 120)))),
                Refused::NotYetValid,
            ),
            (
                Box::new(|c| drop(c.insert("nbf".into(), json!(NOW + 120)))),
                Refused::NotYetValid,
            ),
            (Box::new(|c| drop(c.remove("jti"))), Refused::NoJti),
            (
                Box::new(|c| drop(c.insert("jti".into(), json!("")))),
                Refused::NoJti,
            ),
        ];
        for (i, (edit, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(&secret_auth(), &with(edit)), Err(want), "case {i}");
        }
        // Within the bounds: exp at the far edge, iat within the leeway.
        let jwt = with(|c| {
            c.insert("exp".into(), json!(NOW + 660));
            c.insert("iat".into(), json!(NOW + 30));
        });
        assert!(check(&secret_auth(), &jwt).is_ok());
    }

    #[test]
    fn algorithm_key_and_signature_are_checked() {
        let c = claims();
        // Another secret.
        let jwt = hs256("wrong", &json!({"alg": "HS256"}), &c);
        assert_eq!(
            check(&secret_auth(), &jwt),
            Err(Refused::Jws(Rejected::Signature))
        );
        // Not the registered alg, and none.
        let jwt = hs256(
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
            &json!({"alg": "HS384"}),
            &c,
        );
        assert_eq!(
            check(&secret_auth(), &jwt),
            Err(Refused::Jws(Rejected::Algorithm))
        );
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&c));
        assert_eq!(
            check(&secret_auth(), &none),
            Err(Refused::Jws(Rejected::Algorithm))
        );
        // A JWE-shaped value.
        assert_eq!(
            check(&secret_auth(), "a.b.c.d.e"),
            Err(Refused::Jws(Rejected::Malformed))
        );
        // HS256 made with a client's *public* key text never passes for a key-set client.
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("key");
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])});
        let set = KeySet::parse(&serde_json::to_vec(&json!({"keys": [jwk]})).expect("json"))
            .expect("set");
        let key_auth = AssertionAuth {
            algs: &["ES256"],
            keys: AssertionKeys::Jwks(Arc::new(set)),
        };
        let confused = hs256(&jwk.to_string(), &json!({"alg": "HS256", "kid": "k1"}), &c);
        assert_eq!(
            check(&key_auth, &confused),
            Err(Refused::Jws(Rejected::Algorithm))
        );
        // A good ES256 assertion verifies; an unknown kid is reported as such.
        let es = |kid: &str| {
            let input = format!("{}.{}", b64(&json!({"alg": "ES256", "kid": kid})), b64(&c));
            let sig = pair.sign(&rng, input.as_bytes()).expect("sign");
            format!("{input}.{}", B64.encode(sig.as_ref()))
        };
        assert!(check(&key_auth, &es("k1")).is_ok());
        assert_eq!(
            check(&key_auth, &es("k2")),
            Err(Refused::Jws(Rejected::UnknownKey))
        );
        // A jwks_uri client without fetched keys.
        let uri_auth = AssertionAuth {
            algs: &["ES256"],
            keys: AssertionKeys::Uri {
                uri: "https://client/jwks".into(),
                refetch_interval: DEFAULT_JWKS_REFETCH_INTERVAL,
            },
        };
        assert_eq!(check(&uri_auth, &es("k1")), Err(Refused::NoKeys));
    }

    #[test]
    fn garbage_has_no_subject() {
        for bad in [
            "",
            "a.b.c",
            "....",
            "x.eyJzdWIiOjF9.y",
            "x.eyJzdWIiOiIifQ.y",
        ] {
            assert_eq!(unverified_subject(bad), None, "{bad}");
        }
    }
}
