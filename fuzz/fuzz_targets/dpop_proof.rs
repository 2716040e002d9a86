//! DPoP proofs at the token endpoint (`grant::dpop`): `check`, `thumbprint` and `same_url`.
//!
//! Input: one flag byte, then either a proof (bit 0 clear) or a JSON payload the harness signs
//! as a proof with its own ES256 key in the header (bit 0 set). Bit 1: nonces are required.
//! Bits 2–7: where to change one byte of the signed proof.
//!
//! Properties, arbitrary proofs:
//! - checking never panics;
//! - an accepted proof is a JWS whose header has `typ` dpop+jwt and a `jwk` whose thumbprint
//!   is the answer's `jkt`, and whose claims have `htm` POST, an `htu` naming the endpoint, an
//!   `iat` in the window, a non-empty `jti` (the answer's), and with nonces a nonce the
//!   harness's `Nonces` accept.
//!
//! Signed proofs (the harness holds the key):
//! - a JSON-object payload is refused only for its claims (method, URL, time, jti, nonce),
//!   never for its form, type, algorithm, key or signature, and when accepted its `jkt` is the
//!   harness key's thumbprint;
//! - any one-byte change of the signed proof makes it refused.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::internal::grant::dpop::{
    DpopError, Expect, MAX_AGE_SECS, MAX_SKEW_SECS, Nonces, check, same_url, thumbprint,
};
use serde_json::{Map, Value, json};

const HTU: &str = "https://idp.example.com/token";
const NOW: i64 = 1_800_000_000;

struct Harness {
    key: EcdsaKeyPair,
    jwk: Value,
    jkt: String,
    nonces: Nonces,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("key");
        let p = key.public_key().as_ref();
        let jwk = json!({"kty":"EC","crv":"P-256","x":B64.encode(&p[1..33]),"y":B64.encode(&p[33..])});
        let jkt = thumbprint(jwk.as_object().expect("object")).expect("thumbprint");
        Harness {
            key,
            jwk,
            jkt,
            nonces: Nonces::derived_from(&[9; 32]),
        }
    })
}

fn decode(part: &str) -> Option<Map<String, Value>> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let expect = Expect {
        method: "POST",
        htu: HTU,
        now: NOW,
        nonces: (flags & 2 != 0).then_some(&h.nonces),
    };
    if flags & 1 == 0 {
        let proof = String::from_utf8_lossy(rest);
        if let Ok(p) = check(&proof, &expect) {
            let parts: Vec<&str> = proof.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header = decode(parts[0]).expect("header");
            let claims = decode(parts[1]).expect("claims");
            assert!(header["typ"].as_str().expect("typ").eq_ignore_ascii_case("dpop+jwt"));
            let jwk = header["jwk"].as_object().expect("jwk");
            assert_eq!(thumbprint(jwk).as_deref(), Some(p.jkt.as_str()));
            accepted_claims(&claims, &p.jti, &expect);
        }
        return;
    }
    // A payload the harness signs.
    let header = json!({"typ":"dpop+jwt","alg":"ES256","jwk":h.jwk});
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(rest));
    let sig = h
        .key
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign");
    let proof = format!("{input}.{}", B64.encode(sig.as_ref()));
    let result = check(&proof, &expect);
    match serde_json::from_slice::<Value>(rest) {
        Ok(Value::Object(claims)) => match &result {
            Ok(p) => {
                assert_eq!(p.jkt, h.jkt);
                accepted_claims(&claims, &p.jti, &expect);
            }
            Err(e) => assert!(
                matches!(
                    e,
                    DpopError::Method
                        | DpopError::Url
                        | DpopError::Time
                        | DpopError::Jti
                        | DpopError::Nonce
                ) || proof.len() > refresh_proxy::internal::grant::dpop::MAX_PROOF_BYTES,
                "a signed proof refused for {e:?}"
            ),
        },
        _ => assert!(result.is_err(), "a payload that is not an object"),
    }
    // One changed byte: refused.
    let at = usize::from(flags >> 2) % proof.len();
    let mut changed = proof.into_bytes();
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    if let Ok(changed) = String::from_utf8(changed) {
        assert!(check(&changed, &expect).is_err(), "a changed proof accepted");
    }
});

fn accepted_claims(claims: &Map<String, Value>, jti: &str, expect: &Expect<'_>) {
    assert_eq!(claims["htm"], "POST");
    assert!(same_url(claims["htu"].as_str().expect("htu"), HTU));
    assert!(same_url(HTU, claims["htu"].as_str().expect("htu")), "symmetric");
    let iat = claims["iat"].as_i64().expect("iat");
    assert!(iat >= NOW - MAX_AGE_SECS && iat <= NOW + MAX_SKEW_SECS);
    assert_eq!(claims["jti"].as_str(), Some(jti));
    assert!(!jti.is_empty());
    if let Some(nonces) = expect.nonces {
        assert!(nonces.accepts(claims["nonce"].as_str().expect("nonce"), NOW));
    }
}
