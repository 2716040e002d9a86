//! Verification of the upstream's JWTs at capture (`grant::verify`): a JWK Set document
//! (`KeySet::parse`) and a token (`verify`), and the JWKS merge the proxy does on the
//! upstream's JWKS answer (`mint::jwt::merge_jwks`).
//!
//! Input: one flag byte, then a JWK Set document, a NUL, and a token (bit 0 clear) or a JWT
//! payload that the harness signs (bit 0 set). Bit 1: an ID token is expected (for client
//! `www`); bit 2: sign with EdDSA instead of ES256; bits 3–7: where to change one byte of the
//! signed token.
//!
//! Properties, arbitrary tokens and key sets:
//! - parsing and verifying never panic;
//! - an accepted token has three parts, an accepted algorithm (not `none`, not HS*, no
//!   `crit`), `iss` equal to the upstream issuer, an `exp` not past (and present for an ID
//!   token), an `nbf` not ahead, and for an ID token an `aud` containing the client and an
//!   `azp`, if any, equal to it;
//! - `merge_jwks` keeps every upstream key, in order, adds each of the proxy's keys whose `kid`
//!   is not there yet, and its result parses as a key set.
//!
//! Signed tokens (the harness holds the key; the set is its public key, then the input's keys):
//! - a JSON-object payload is refused only for its claims (issuer, times, audience), never for
//!   its form, algorithm, key or signature, and the accepted claims are the payload;
//! - a payload that is not a JSON object is `Malformed`;
//! - any one-byte change of the signed token makes it refused.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::config::SigningAlg;
use refresh_proxy::internal::grant::verify::{
    CLOCK_LEEWAY_SECS, Expect, KeySet, Rejected, verify,
};
use refresh_proxy::internal::mint::jwt::{Signer, merge_jwks};
use serde_json::{Map, Value, json};

const ISSUER: &str = "https://idp.example.com";
const CLIENT: &str = "www";
const NOW: i64 = 1_800_000_000;

struct Keys {
    es256: Signer,
    eddsa: Signer,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        es256: Signer::generate(SigningAlg::ES256),
        eddsa: Signer::generate(SigningAlg::EdDSA),
    })
}

fn check_accepted(token: &str, claims: &Map<String, Value>, expect: &Expect<'_>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Map<String, Value> =
        serde_json::from_slice(&B64.decode(parts[0]).expect("header b64")).expect("header");
    let alg = header.get("alg").and_then(Value::as_str).expect("alg");
    assert!(
        [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"
        ]
        .contains(&alg),
        "accepted alg {alg:?}"
    );
    assert!(!header.contains_key("crit"));
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(expect.issuer)
    );
    let number = |k: &str| claims.get(k).map(|v| v.as_f64().expect("a number"));
    if let Some(exp) = number("exp") {
        assert!(exp > (expect.now - CLOCK_LEEWAY_SECS) as f64, "expired");
    }
    if let Some(nbf) = number("nbf") {
        assert!(
            nbf <= (expect.now + CLOCK_LEEWAY_SECS) as f64,
            "not yet valid"
        );
    }
    if let Some(client) = expect.client_id {
        assert!(claims.contains_key("exp"), "an ID token without exp");
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == client,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client)),
            _ => false,
        };
        assert!(aud_ok, "aud");
        assert!(
            claims.get("azp").is_none_or(|a| a.as_str() == Some(client)),
            "azp"
        );
    }
}

fn check_merge(doc: &[u8], ours: &[Value]) {
    let Some(merged) = merge_jwks(doc, ours) else {
        return;
    };
    let upstream: Value = serde_json::from_slice(doc).expect("merged, so JSON");
    let merged_v: Value = serde_json::from_slice(&merged).expect("merged JSON");
    let up_keys = upstream["keys"].as_array().expect("keys");
    let new_keys = merged_v["keys"].as_array().expect("keys");
    assert_eq!(
        &new_keys[..up_keys.len()],
        &up_keys[..],
        "upstream keys kept in order"
    );
    for jwk in ours {
        let kid = jwk["kid"].as_str().expect("our kid");
        assert!(
            new_keys.iter().any(|k| k["kid"].as_str() == Some(kid)),
            "{kid} added"
        );
    }
    KeySet::parse(&merged).expect("a merged JWKS is a key set");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (doc, second) = match rest.iter().position(|&c| c == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let k = keys();
    let expect = Expect {
        issuer: ISSUER,
        client_id: (flags & 2 != 0).then_some(CLIENT),
        now: NOW,
    };
    let ours = [k.es256.public_jwk(), k.eddsa.public_jwk()];
    check_merge(doc, &ours);

    if flags & 1 == 0 {
        let Ok(token) = std::str::from_utf8(second) else {
            return;
        };
        if let Ok(set) = KeySet::parse(doc) {
            if let Ok(claims) = verify(token, &set, &expect) {
                check_accepted(token, &claims, &expect);
            }
        }
        return;
    }

    // Signed by the harness: its public key first, then whatever keys the input lists.
    let signer = if flags & 4 != 0 { &k.eddsa } else { &k.es256 };
    let mut keys = vec![signer.public_jwk()];
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(doc)
        && let Some(Value::Array(more)) = o.get("keys")
    {
        keys.extend(more.iter().cloned());
    }
    let set = KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).expect("a key set");
    let typ = if expect.client_id.is_some() {
        "JWT"
    } else {
        "at+jwt"
    };
    let token = signer.sign_json(typ, second);
    let result = verify(&token, &set, &expect);
    match serde_json::from_slice::<Value>(second) {
        Ok(Value::Object(payload)) => match &result {
            Ok(claims) => {
                assert_eq!(claims, &payload, "the accepted claims are the payload");
                check_accepted(&token, claims, &expect);
            }
            Err(
                Rejected::Issuer
                | Rejected::Expired
                | Rejected::NotYetValid
                | Rejected::MissingClaim
                | Rejected::Audience,
            ) => {}
            Err(other) => panic!("our own token refused: {other:?}"),
        },
        _ => assert_eq!(result, Err(Rejected::Malformed)),
    }
    // One byte changed: refused.
    let at = usize::from(flags >> 3) * token.len() / 32;
    let mut changed = token.clone().into_bytes();
    let replacement = if changed[at] == b'A' { b'B' } else { b'A' };
    changed[at] = replacement;
    let changed = String::from_utf8(changed).expect("ASCII");
    assert!(
        verify(&changed, &set, &expect).is_err(),
        "a changed token verifies"
    );
});
