//! DPoP proofs at the token endpoint (RFC 9449 §4): what makes a family's refresh tokens
//! usable only with the client's key (docs/design.md §4.16). Pure: the clock, the endpoint's
//! URL and the nonces are given.
//!
//! A proof is a JWS the client signs with its key and sends in the `DPoP` header; its header
//! carries the public key (`jwk`), `typ: dpop+jwt` and an asymmetric `alg`; its claims bind it
//! to one request (`htm`, `htu`), a moment (`iat`) and, once, to the store (`jti`, remembered in
//! the redemption's step: docs/design.md §4.15). The key's RFC 7638 thumbprint (`jkt`) is what
//! a family is bound to.

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

use super::verify::{Rejected, verify_self_signed};

/// The largest proof read (a proof with an RSA-4096 key is about 1.5 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// How old a proof's `iat` may be, in seconds.
pub const MAX_AGE_SECS: i64 = 300;
/// How far in the future a proof's `iat` may be (clock skew), in seconds.
pub const MAX_SKEW_SECS: i64 = 60;
/// How long one server nonce is handed out, in seconds; it is accepted for two such periods.
pub const NONCE_PERIOD_SECS: i64 = 300;

/// Why a proof was refused (`invalid_dpop_proof`, or `use_dpop_nonce` for the nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("more than one DPoP header")]
    Repeated,
    #[error("the DPoP proof is not a well-formed JWS with a public jwk")]
    Malformed,
    #[error("the DPoP proof's typ is not dpop+jwt")]
    Type,
    #[error("the DPoP proof's algorithm is not an accepted asymmetric one")]
    Algorithm,
    #[error("the DPoP proof's jwk does not fit its algorithm, or is a private key")]
    Key,
    #[error("the DPoP proof's signature does not verify")]
    Signature,
    #[error("the DPoP proof's htm is not the request's method")]
    Method,
    #[error("the DPoP proof's htu is not the token endpoint's URL")]
    Url,
    #[error("the DPoP proof's iat is missing, too old or in the future")]
    Time,
    #[error("the DPoP proof has no jti")]
    Jti,
    #[error("the DPoP proof carries no valid server nonce")]
    Nonce,
    /// Its `jti` was seen before (the store says so, docs/design.md §4.15).
    #[error("the DPoP proof was used before")]
    Replayed,
}

/// What a request's proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The request's method (`POST` at the token endpoint).
    pub method: &'a str,
    /// The token endpoint's URL as clients call it.
    pub htu: &'a str,
    /// Now, in seconds since the epoch.
    pub now: i64,
    /// When server nonces are required (`dpop_nonce = true`): the nonces.
    pub nonces: Option<&'a Nonces>,
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// The proof's `jti`.
    pub jti: String,
    pub iat: i64,
}

impl Proof {
    /// Until when its `jti` must be remembered (ms): past that, its `iat` is refused anyway.
    pub fn remember_until_ms(&self) -> i64 {
        self.iat
            .saturating_add(MAX_AGE_SECS)
            .saturating_add(1)
            .saturating_mul(1000)
    }
}

/// Checks a request's DPoP header (RFC 9449 §4.3).
pub fn check(proof: &str, expect: &Expect<'_>) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Malformed);
    }
    let (header, claims) = verify_self_signed(proof).map_err(|r| match r {
        Rejected::Algorithm => DpopError::Algorithm,
        Rejected::KeyMismatch | Rejected::UnknownKey => DpopError::Key,
        Rejected::Signature => DpopError::Signature,
        _ => DpopError::Malformed,
    })?;
    // §4.3 check 4: typ is dpop+jwt (media types compare case-insensitively).
    if !header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(DpopError::Type);
    }
    let jkt = header
        .get("jwk")
        .and_then(Value::as_object)
        .and_then(thumbprint)
        .ok_or(DpopError::Key)?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    // §4.3 check 8: htm matches the request's method.
    if text("htm") != Some(expect.method) {
        return Err(DpopError::Method);
    }
    // §4.3 check 9: htu matches the request's URL, without query and fragment.
    if !text("htu").is_some_and(|u| same_url(u, expect.htu)) {
        return Err(DpopError::Url);
    }
    // §4.3 check 11: iat within an acceptable window.
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(DpopError::Time)?;
    if iat > expect.now.saturating_add(MAX_SKEW_SECS)
        || iat < expect.now.saturating_sub(MAX_AGE_SECS)
    {
        return Err(DpopError::Time);
    }
    // §4.2: jti is required; §11.1: it is remembered (by the caller, in the store).
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(DpopError::Jti)?;
    // §4.3 check 10 and §8: the nonce the server provided, when it requires one.
    if let Some(nonces) = expect.nonces
        && !text("nonce").is_some_and(|n| nonces.accepts(n, expect.now))
    {
        return Err(DpopError::Nonce);
    }
    Ok(Proof {
        jkt,
        jti: jti.to_owned(),
        iat,
    })
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url: the required members in
/// lexicographic order, as given (RFC 7638 §3.2, §3.3).
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let kty = jwk.get("kty")?.as_str()?;
    let members: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = Map::new();
    for m in members {
        canonical.insert(
            (*m).to_owned(),
            Value::String(jwk.get(*m)?.as_str()?.to_owned()),
        );
    }
    // serde_json keeps insertion order here (preserve_order), which is the sorted order above;
    // no whitespace, as §3.3 requires.
    let json = serde_json::to_vec(&canonical).ok()?;
    Some(B64.encode(digest::digest(&digest::SHA256, &json)))
}

/// Whether two `htu` values name the same URL (RFC 9449 §4.3 check 9: without query and
/// fragment; RFC 3986 §6.2.2 and §6.2.3 normalisation: scheme and host case, default port,
/// empty path).
pub fn same_url(presented: &str, expected: &str) -> bool {
    match (normalised(presented), normalised(expected)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn normalised(u: &str) -> Option<String> {
    let mut url = url::Url::parse(u).ok()?;
    if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    // `url` lowercases scheme and host, drops the default port and turns an empty path into
    // "/"; it also resolves dot segments and normalises percent-encoding case.
    Some(url.into())
}

/// Server nonces (RFC 9449 §8) that every replica makes and accepts alike, without state: the
/// period's number and a MAC of it under a key derived from the refresh-token secrets.
#[derive(Clone)]
pub struct Nonces {
    key: hmac::Key,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonces(..)")
    }
}

impl Nonces {
    /// Nonces keyed from `secret` (the minting refresh-token secret).
    pub fn derived_from(secret: &[u8]) -> Nonces {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let key = hmac::sign(&derive, b"refresh-proxy dpop nonce key v1");
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()),
        }
    }

    fn of_period(&self, period: i64) -> String {
        let tag = hmac::sign(&self.key, &period.to_be_bytes());
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&period.to_be_bytes());
        raw[8..].copy_from_slice(&tag.as_ref()[..16]);
        B64.encode(raw)
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: i64) -> String {
        self.of_period(now.div_euclid(NONCE_PERIOD_SECS))
    }

    /// Whether `nonce` is this period's or the previous one's.
    pub fn accepts(&self, nonce: &str, now: i64) -> bool {
        let period = now.div_euclid(NONCE_PERIOD_SECS);
        [period, period - 1].into_iter().any(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                self.of_period(p).as_bytes(),
                nonce.as_bytes(),
            )
            .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    const HTU: &str = "https://idp.example.com/token";
    const NOW: i64 = 1_800_000_000;

    struct Key(EcdsaKeyPair);

    impl Key {
        fn new() -> Key {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
            Key(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                    .expect("key"),
            )
        }
        fn jwk(&self) -> Value {
            let p = self.0.public_key().as_ref();
            json!({"kty":"EC","crv":"P-256","x":B64.encode(&p[1..33]),"y":B64.encode(&p[33..])})
        }
        fn sign(&self, header: Value, claims: Value) -> String {
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self
                .0
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("sign");
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }
        fn proof(&self, claims: Value) -> String {
            self.sign(
                json!({"typ":"dpop+jwt","alg":"ES256","jwk":self.jwk()}),
                claims,
            )
        }
    }

    fn claims() -> Value {
        json!({"htm":"POST","htu":HTU,"iat":NOW,"jti":"j-1"})
    }

    fn expect() -> Expect<'static> {
        Expect {
            method: "POST",
            htu: HTU,
            now: NOW,
            nonces: None,
        }
    }

    fn with(mut c: Value, k: &str, v: Value) -> Value {
        c[k] = v;
        c
    }

    #[test]
    fn a_good_proof_gives_its_key_thumbprint() {
        let key = Key::new();
        let p = check(&key.proof(claims()), &expect()).expect("valid");
        let jwk = key.jwk();
        assert_eq!(
            Some(p.jkt.clone()),
            thumbprint(jwk.as_object().expect("object"))
        );
        assert_eq!((p.jti.as_str(), p.iat), ("j-1", NOW));
        assert_eq!(p.remember_until_ms(), (NOW + MAX_AGE_SECS + 1) * 1000);
    }

    #[test]
    fn rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk = json!({"kty":"RSA","e":"AQAB","alg":"RS256","kid":"2011-04-29","n":
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(
            thumbprint(jwk.as_object().expect("object")).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn every_check_refuses() {
        let key = Key::new();
        let e = expect();
        let refused = |proof: String| check(&proof, &e).expect_err("refused");
        assert_eq!(
            refused(key.proof(with(claims(), "htm", json!("GET")))),
            DpopError::Method
        );
        assert_eq!(
            refused(key.proof(with(
                claims(),
                "htu",
                json!("https://idp.example.com/other")
            ))),
            DpopError::Url
        );
        assert_eq!(
            refused(key.proof(with(claims(), "iat", json!(NOW - MAX_AGE_SECS - 1)))),
            DpopError::Time
        );
        assert_eq!(
            refused(key.proof(with(claims(), "iat", json!(NOW + MAX_SKEW_SECS + 1)))),
            DpopError::Time
        );
        assert_eq!(
            refused(key.proof(with(claims(), "iat", json!("now")))),
            DpopError::Time
        );
        let mut no_jti = claims();
        no_jti.as_object_mut().expect("object").remove("jti");
        assert_eq!(refused(key.proof(no_jti)), DpopError::Jti);
        // typ
        assert_eq!(
            refused(key.sign(json!({"typ":"JWT","alg":"ES256","jwk":key.jwk()}), claims())),
            DpopError::Type
        );
        assert_eq!(
            refused(key.sign(json!({"alg":"ES256","jwk":key.jwk()}), claims())),
            DpopError::Type
        );
        // Symmetric and none algorithms, whatever else.
        for alg in ["HS256", "none"] {
            assert_eq!(
                refused(key.sign(
                    json!({"typ":"dpop+jwt","alg":alg,"jwk":key.jwk()}),
                    claims()
                )),
                DpopError::Algorithm
            );
        }
        // A private key in the header, a key of another type, no key.
        let mut private = key.jwk();
        private["d"] = json!("AAAA");
        assert_eq!(
            refused(key.sign(
                json!({"typ":"dpop+jwt","alg":"ES256","jwk":private}),
                claims()
            )),
            DpopError::Key
        );
        assert_eq!(
            refused(key.sign(
                json!({"typ":"dpop+jwt","alg":"RS256","jwk":key.jwk()}),
                claims()
            )),
            DpopError::Key
        );
        assert_eq!(
            refused(key.sign(json!({"typ":"dpop+jwt","alg":"ES256"}), claims())),
            DpopError::Malformed
        );
        // Signed by another key than the one in the header.
        let other = Key::new();
        assert_eq!(
            refused(other.sign(
                json!({"typ":"dpop+jwt","alg":"ES256","jwk":key.jwk()}),
                claims()
            )),
            DpopError::Signature
        );
        // A tampered payload.
        let good = key.proof(claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered = B64.encode(with(claims(), "jti", json!("j-2")).to_string());
        parts[1] = &tampered;
        assert_eq!(refused(parts.join(".")), DpopError::Signature);
        assert_eq!(refused("not a jws".into()), DpopError::Malformed);
        assert_eq!(
            refused("a".repeat(MAX_PROOF_BYTES + 1)),
            DpopError::Malformed
        );
    }

    #[test]
    fn htu_is_compared_without_query_and_fragment_and_normalised() {
        for same in [
            "https://idp.example.com/token",
            "HTTPS://IDP.example.COM/token",
            "https://idp.example.com:443/token",
            "https://idp.example.com/token?x=1",
            "https://idp.example.com/token#f",
        ] {
            assert!(same_url(same, HTU), "{same}");
        }
        for other in [
            "http://idp.example.com/token",
            "https://idp.example.com/Token",
            "https://idp.example.com:8443/token",
            "https://evil.example.com/token",
            "https://idp.example.com/token/",
            "token",
            "",
        ] {
            assert!(!same_url(other, HTU), "{other}");
        }
        assert!(same_url("http://127.0.0.1:80", "http://127.0.0.1/"));
    }

    #[test]
    fn nonces_are_accepted_for_two_periods_and_only_from_this_key() {
        let key = Key::new();
        let nonces = Nonces::derived_from(&[7; 32]);
        let other = Nonces::derived_from(&[8; 32]);
        let e = Expect {
            nonces: Some(&nonces),
            ..expect()
        };
        let n = nonces.current(NOW);
        assert_eq!(
            n,
            Nonces::derived_from(&[7; 32]).current(NOW),
            "replicas agree"
        );
        assert!(check(&key.proof(with(claims(), "nonce", json!(n))), &e).is_ok());
        assert_eq!(
            check(&key.proof(claims()), &e).expect_err("no nonce"),
            DpopError::Nonce
        );
        assert_eq!(
            check(
                &key.proof(with(claims(), "nonce", json!(other.current(NOW)))),
                &e
            )
            .expect_err("another key's"),
            DpopError::Nonce
        );
        assert!(nonces.accepts(&n, NOW + NONCE_PERIOD_SECS));
        assert!(!nonces.accepts(&n, NOW + 2 * NONCE_PERIOD_SECS));
    }
}
