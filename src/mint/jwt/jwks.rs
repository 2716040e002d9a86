//! The JWKS of the proxy's public keys, and its merge into the upstream's JWKS answer.

use serde_json::{Value, json};

use super::Signer;

/// `{"keys":[…]}` for a set of signers, deduplicated by kid.
///
/// RFC 7517 §4.5: "different keys within the JWK Set SHOULD use distinct "kid" values"; the kid
/// is the key's thumbprint, so the same kid twice is the same key twice.
pub fn jwks(signers: &[&Signer]) -> Value {
    let mut keys: Vec<Value> = Vec::with_capacity(signers.len());
    for (i, signer) in signers.iter().enumerate() {
        if signers[..i].iter().all(|s| s.kid != signer.kid) {
            keys.push(signer.public_jwk());
        }
    }
    // RFC 7517 §5.1: "The value of the "keys" parameter is an array of JWK values."
    json!({ "keys": keys })
}

/// Merges our public JWKs into an upstream JWKS response body.
///
/// Returns `None` when the body is not a JSON object with a `"keys"` array (the caller then
/// passes the upstream body on unchanged). A key whose `kid` is already present upstream is not
/// added again; other members of the upstream object are kept. When nothing needs adding the
/// upstream bytes are returned as they were.
pub fn merge_jwks(upstream_body: &[u8], ours: &[Value]) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(upstream_body).ok()?;
    // RFC 7517 §5: "Additional members can be present in the JWK Set"; they are kept as they are.
    let keys = doc.as_object_mut()?.get_mut("keys")?.as_array_mut()?;
    let mut added = false;
    for jwk in ours {
        let present = match jwk.get("kid").and_then(Value::as_str) {
            Some(kid) => keys
                .iter()
                .any(|k| k.get("kid").and_then(Value::as_str) == Some(kid)),
            None => keys.contains(jwk),
        };
        if !present {
            keys.push(jwk.clone());
            added = true;
        }
    }
    if !added {
        return Some(upstream_body.to_vec());
    }
    Some(serde_json::to_vec(&doc).expect("a JSON value serialises"))
}
