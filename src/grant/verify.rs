//! Verifying the upstream's JWTs at capture: JWS compact serialization (RFC 7515) against the
//! upstream's JWK Set (RFC 7517), then the claims (RFC 7519, OIDC Core §3.1.3.7). Pure: the key
//! set and the clock are given; fetching and caching the key set is `layer::jwks`'s.
//!
//! Only asymmetric algorithms are accepted from the upstream: RS256/384/512, PS256/384/512,
//! ES256, ES384 and EdDSA (Ed25519). `none` and HS* never verify against a key set, whatever it
//! holds, and symmetric (`oct`) keys in a JWK Set are ignored. [`verify_jws`] is the signature
//! check alone, also used for clients' assertions (`client_auth::assertion`), where HS256/384/512
//! verify with the client's secret ([`Verifier::Hmac`]). The key must fit the algorithm (`kty`, `crv`, and
//! `alg` when the JWK names one); a JWK whose `use` is not `sig` is ignored.

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const CLOCK_LEEWAY_SECS: i64 = 60;
/// The most keys read from one JWK Set; the rest are ignored.
pub const MAX_KEYS: usize = 100;

/// The JWS algorithms accepted (RFC 7518 §3.1 names, RFC 8037 §3.1 for EdDSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" => Alg::EdDsa,
            // "none", HS256/384/512 and anything else.
            _ => return None,
        })
    }

    fn rsa(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// SEC 1 uncompressed point: 0x04 || X || Y.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    material: Material,
}

impl Jwk {
    fn parse(v: &Value) -> Option<Jwk> {
        let o = v.as_object()?;
        let text = |k: &str| o.get(k).and_then(Value::as_str);
        let bytes = |k: &str| text(k).and_then(|s| B64.decode(s).ok());
        // RFC 7517 §4.2: "sig" (signature) or "enc" (encryption).
        if o.contains_key("use") && text("use") != Some("sig") {
            return None;
        }
        // RFC 7517 §4.3: a key whose operations do not include "verify" is not for this.
        if let Some(ops) = o.get("key_ops")
            && !ops
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op == "verify"))
        {
            return None;
        }
        let material = match text("kty")? {
            // RFC 7518 §6.3.1.
            "RSA" => {
                let strip = |b: Vec<u8>| {
                    let first = b.iter().position(|x| *x != 0)?;
                    Some(b[first..].to_vec())
                };
                Material::Rsa {
                    n: strip(bytes("n")?)?,
                    e: strip(bytes("e")?)?,
                }
            }
            // RFC 7518 §6.2.1: x and y are the full coordinate size of the curve.
            "EC" => {
                let (curve, size) = match text("crv")? {
                    "P-256" => (Curve::P256, 32),
                    "P-384" => (Curve::P384, 48),
                    _ => return None,
                };
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Material::Ec { curve, point }
            }
            // RFC 8037 §2.
            "OKP" if text("crv")? == "Ed25519" => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return None;
                }
                Material::Ed25519(x)
            }
            // "oct" (symmetric) and anything else: never.
            _ => return None,
        };
        Some(Jwk {
            kid: text("kid").map(str::to_owned),
            alg: text("alg").map(str::to_owned),
            material,
        })
    }

    /// Whether this key may verify `alg` (`alg_name` as the JWS header says it).
    fn fits(&self, alg: Alg, alg_name: &str) -> bool {
        // RFC 7517 §4.4: a key's "alg" names the one algorithm it is for.
        if self.alg.as_deref().is_some_and(|a| a != alg_name) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Rsa { .. }, a) => a.rsa().is_some(),
            (Material::Ec { curve, .. }, Alg::Es256) => *curve == Curve::P256,
            (Material::Ec { curve, .. }, Alg::Es384) => *curve == Curve::P384,
            (Material::Ed25519(_), Alg::EdDsa) => true,
            _ => false,
        }
    }

    fn verifies(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Rsa { n, e }, a) => a.rsa().is_some_and(|params| {
                RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .verify(params, message, sig)
                .is_ok()
            }),
            // RFC 7518 §3.4: R || S, fixed size ("FIXED", not ASN.1 DER).
            (Material::Ec { point, .. }, Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ec { point, .. }, Alg::Es384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(x), Alg::EdDsa) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// The upstream's signing keys: the usable keys of its JWK Set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Jwk>,
    /// The RFC 8705 §3.1 thumbprints (`x5t#S256`) of the keys' certificates: the first of each
    /// key's `x5c`, or its `x5t#S256` member (`self_signed_tls_client_auth`, docs/design.md
    /// §4.19).
    certificates: Vec<String>,
}

impl KeySet {
    /// Parses a JWK Set (RFC 7517 §5). Keys that cannot verify a JWS with an accepted
    /// algorithm (symmetric, encryption-only, malformed, unknown types) are left out; an error
    /// only when the document is not a JWK Set at all.
    pub fn parse(document: &[u8]) -> Result<KeySet, &'static str> {
        let Ok(Value::Object(set)) = serde_json::from_slice::<Value>(document) else {
            return Err("the JWKS is not a JSON object");
        };
        // RFC 7517 §5.1: "keys" is REQUIRED.
        let Some(Value::Array(keys)) = set.get("keys") else {
            return Err("the JWKS has no keys array");
        };
        Ok(KeySet {
            keys: keys.iter().filter_map(Jwk::parse).take(MAX_KEYS).collect(),
            certificates: keys
                .iter()
                .filter_map(certificate_thumbprint)
                .take(MAX_KEYS)
                .collect(),
        })
    }

    /// The thumbprints of the certificates the set's keys carry.
    pub fn certificates(&self) -> &[String] {
        &self.certificates
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A JWK's certificate thumbprint: SHA-256 of the DER of `x5c[0]` (RFC 7517 §4.7: standard
/// base64), else its own `x5t#S256` (RFC 7517 §4.9).
fn certificate_thumbprint(key: &Value) -> Option<String> {
    use base64::engine::general_purpose::STANDARD;
    let key = key.as_object()?;
    if let Some(first) = key
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        let der = STANDARD.decode(first.as_str()?).ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        return Some(B64.encode(digest));
    }
    let x5t = key.get("x5t#S256")?.as_str()?;
    (x5t.len() == 43 && B64.decode(x5t).is_ok()).then(|| x5t.to_owned())
}

/// Why an upstream JWT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not three base64url parts of JSON objects.
    Malformed,
    /// `alg` is not an accepted asymmetric algorithm (`none`, HS*, …), or a `crit` header.
    Algorithm,
    /// No key in the set has the token's `kid` (or, without `kid`, fits its `alg`): the set
    /// may be out of date.
    UnknownKey,
    /// The `kid`'s key does not fit the `alg` (`kty`, `crv` or the JWK's `alg`).
    KeyMismatch,
    Signature,
    Issuer,
    Expired,
    NotYetValid,
    /// A claim that is required here is missing or of the wrong type.
    MissingClaim,
    Audience,
}

impl Rejected {
    /// For logs: what failed, never the token.
    pub fn describe(self) -> &'static str {
        match self {
            Rejected::Malformed => "an upstream JWT is not a well-formed JWS",
            Rejected::Algorithm => {
                "an upstream JWT uses an algorithm that is not accepted (none, HS*, crit, …)"
            }
            Rejected::UnknownKey => {
                "an upstream JWT is signed with a key not in the upstream's JWKS"
            }
            Rejected::KeyMismatch => "an upstream JWT's key does not fit its algorithm",
            Rejected::Signature => "an upstream JWT's signature does not verify",
            Rejected::Issuer => "an upstream JWT's iss is not the upstream issuer",
            Rejected::Expired => "an upstream JWT has expired",
            Rejected::NotYetValid => "an upstream JWT is not valid yet (nbf)",
            Rejected::MissingClaim => "an upstream JWT lacks a required claim",
            Rejected::Audience => "the upstream ID token is not for this client (aud/azp)",
        }
    }
}

/// What the claims must say.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The upstream issuer; `iss` must equal it.
    pub issuer: &'a str,
    /// For an ID token: the client id, which `aud` must contain; `exp` is then required.
    pub client_id: Option<&'a str>,
    /// Now, in seconds since the epoch.
    pub now: i64,
}

/// Whether a token is in JWS compact form (three dot-separated parts) and so must verify; a
/// JWE has five parts (RFC 7516 §7.1) and anything else is opaque.
pub fn is_jws(token: &str) -> bool {
    token.split('.').count() == 3
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&B64.decode(part).ok()?).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// A JWT's header and claims.
pub type HeaderAndClaims = (Map<String, Value>, Map<String, Value>);

/// A JWS in compact form, its header read and its algorithm accepted; not verified yet.
struct Jws<'t> {
    raw: RawJws<'t>,
    alg: Alg,
}

/// A JWS in compact form split and its header read, any algorithm.
struct RawJws<'t> {
    header: Map<String, Value>,
    /// The signing input: ASCII(BASE64URL(header) || '.' || BASE64URL(payload)) (RFC 7515 §5.2).
    signed: &'t [u8],
    payload_b64: &'t str,
    sig: Vec<u8>,
}

impl<'t> RawJws<'t> {
    fn parse(token: &'t str) -> Result<RawJws<'t>, Rejected> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejected::Malformed);
        };
        let header = decode_object(header_b64).ok_or(Rejected::Malformed)?;
        if !header.get("alg").is_some_and(Value::is_string) {
            return Err(Rejected::Malformed);
        }
        // RFC 7515 §4.1.11: extensions listed in "crit" that are not understood make the JWS
        // invalid; the proxy understands none.
        if header.contains_key("crit") {
            return Err(Rejected::Algorithm);
        }
        let sig = B64.decode(sig_b64).map_err(|_| Rejected::Malformed)?;
        Ok(RawJws {
            signed: &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()],
            header,
            payload_b64,
            sig,
        })
    }

    fn alg_name(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }
}

impl<'t> Jws<'t> {
    fn parse(token: &'t str) -> Result<Jws<'t>, Rejected> {
        let raw = RawJws::parse(token)?;
        let alg = Alg::from_name(raw.alg_name()).ok_or(Rejected::Algorithm)?;
        Ok(Jws { raw, alg })
    }

    fn alg_name(&self) -> &str {
        self.raw.alg_name()
    }

    /// The claims, once one of `keys` verifies the signature.
    fn verified_by<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k Jwk>,
    ) -> Result<Map<String, Value>, Rejected> {
        let fitting: Vec<&Jwk> = keys
            .into_iter()
            .filter(|k| k.fits(self.alg, self.alg_name()))
            .collect();
        if fitting.is_empty() {
            return Err(Rejected::KeyMismatch);
        }
        if !fitting
            .iter()
            .any(|k| k.verifies(self.alg, self.raw.signed, &self.raw.sig))
        {
            return Err(Rejected::Signature);
        }
        decode_object(self.raw.payload_b64).ok_or(Rejected::Malformed)
    }
}

/// Verifies a JWS-compact JWT from the upstream; its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expect: &Expect<'_>,
) -> Result<Map<String, Value>, Rejected> {
    let claims = verified_by_set(Jws::parse(token)?, keys)?;
    check_claims(&claims, expect)?;
    Ok(claims)
}

/// What a JWS is checked with: a JWK Set (asymmetric algorithms only), or a shared secret
/// (HS256/384/512 only, e.g. a client's secret for `client_secret_jwt`, RFC 7523 §2.2).
#[derive(Clone, Copy)]
pub enum Verifier<'a> {
    Set(&'a KeySet),
    Hmac(&'a [u8]),
}

/// Checks a JWS in compact serialization (RFC 7515 §7.1) and returns its payload, the claims,
/// unchecked. `allowed`: the `alg` names accepted (others are [`Rejected::Algorithm`]); an
/// algorithm that does not go with `verifier` never verifies, whatever `allowed` says. A JWE
/// (five parts) is [`Rejected::Malformed`].
pub fn verify_jws(
    token: &str,
    verifier: Verifier<'_>,
    allowed: &[&str],
) -> Result<Map<String, Value>, Rejected> {
    let raw = RawJws::parse(token)?;
    if !allowed.contains(&raw.alg_name()) {
        return Err(Rejected::Algorithm);
    }
    match verifier {
        Verifier::Set(keys) => {
            let alg = Alg::from_name(raw.alg_name()).ok_or(Rejected::Algorithm)?;
            verified_by_set(Jws { raw, alg }, keys)
        }
        Verifier::Hmac(secret) => {
            let algorithm = match raw.alg_name() {
                "HS256" => hmac::HMAC_SHA256,
                "HS384" => hmac::HMAC_SHA384,
                "HS512" => hmac::HMAC_SHA512,
                _ => return Err(Rejected::Algorithm),
            };
            // `hmac::verify` compares in constant time.
            hmac::verify(&hmac::Key::new(algorithm, secret), raw.signed, &raw.sig)
                .map_err(|_| Rejected::Signature)?;
            decode_object(raw.payload_b64).ok_or(Rejected::Malformed)
        }
    }
}

/// The claims of `jws` once a key of `keys` verifies it: the one its `kid` names, else those
/// that fit its algorithm.
fn verified_by_set(jws: Jws<'_>, keys: &KeySet) -> Result<Map<String, Value>, Rejected> {
    let kid = match jws.raw.header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Rejected::Malformed),
    };
    let candidates: Vec<&Jwk> = match kid {
        // RFC 7515 §4.1.4: "kid" picks the key.
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect(),
        None => keys
            .keys
            .iter()
            .filter(|k| k.fits(jws.alg, jws.alg_name()))
            .collect(),
    };
    if candidates.is_empty() {
        return Err(Rejected::UnknownKey);
    }
    jws.verified_by(candidates)
}

/// Verifies a JWS signed by the public key its own header carries (`jwk`), as a DPoP proof
/// is (RFC 9449 §4.2): its header and claims. A `jwk` with private members, or one that does
/// not fit the `alg`, is refused. The claims are not checked here.
pub fn verify_self_signed(token: &str) -> Result<HeaderAndClaims, Rejected> {
    let jws = Jws::parse(token)?;
    let jwk = match jws.raw.header.get("jwk") {
        Some(Value::Object(o)) => o,
        _ => return Err(Rejected::Malformed),
    };
    // RFC 9449 §4.3 check 7: "the jwk JOSE Header Parameter does not contain a private key".
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(Rejected::KeyMismatch);
    }
    let key = Jwk::parse(&jws.raw.header["jwk"]).ok_or(Rejected::KeyMismatch)?;
    let claims = jws.verified_by([&key])?;
    Ok((jws.raw.header, claims))
}

fn check_claims(claims: &Map<String, Value>, expect: &Expect<'_>) -> Result<(), Rejected> {
    // RFC 7519 §4.1.1; OIDC Core §3.1.3.7 step 2: iss "MUST exactly match" the issuer.
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(Rejected::Issuer);
    }
    let number = |k: &str| match claims.get(k) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(Rejected::MissingClaim),
    };
    // RFC 7519 §4.1.4: not accepted on or after exp (with a small leeway).
    match number("exp")? {
        Some(exp) if (expect.now - CLOCK_LEEWAY_SECS) as f64 >= exp => {
            return Err(Rejected::Expired);
        }
        Some(_) => {}
        // OIDC Core §2: exp is REQUIRED in an ID token.
        None if expect.client_id.is_some() => return Err(Rejected::MissingClaim),
        None => {}
    }
    // RFC 7519 §4.1.5: not accepted before nbf.
    if let Some(nbf) = number("nbf")?
        && ((expect.now + CLOCK_LEEWAY_SECS) as f64) < nbf
    {
        return Err(Rejected::NotYetValid);
    }
    if let Some(client_id) = expect.client_id {
        // OIDC Core §3.1.3.7 step 3: aud "MUST contain the client_id" (a string or an array).
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == client_id,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client_id)),
            _ => false,
        };
        // OIDC Core §3.1.3.7 step 5: an azp present must be the client_id.
        let azp_ok = claims
            .get("azp")
            .is_none_or(|azp| azp.as_str() == Some(client_id));
        if !ok || !azp_ok {
            return Err(Rejected::Audience);
        }
        // OIDC Core §2: "sub REQUIRED. Subject Identifier": a string, never empty. Capture takes
        // the family's subject from it first, and the ID tokens issued on refresh carry it.
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(Rejected::MissingClaim);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
        RSA_PKCS1_SHA256, RsaKeyPair,
    };
    use serde_json::json;

    const ISS: &str = "https://idp.example.com";
    const NOW: i64 = 1_800_000_000;

    enum Key {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair),
        Ed(Ed25519KeyPair),
    }

    impl Key {
        fn alg(&self) -> &'static str {
            match self {
                Key::Rsa(_) => "RS256",
                Key::Ec(_) => "ES256",
                Key::Ed(_) => "EdDSA",
            }
        }

        fn jwk(&self, kid: &str) -> Value {
            let mut j = match self {
                Key::Rsa(kp) => {
                    let p = kp.public_key();
                    json!({"kty":"RSA",
                           "n": B64.encode(p.modulus().big_endian_without_leading_zero()),
                           "e": B64.encode(p.exponent().big_endian_without_leading_zero())})
                }
                Key::Ec(kp) => {
                    let p = kp.public_key().as_ref();
                    json!({"kty":"EC","crv":"P-256","x":B64.encode(&p[1..33]),"y":B64.encode(&p[33..])})
                }
                Key::Ed(kp) => {
                    json!({"kty":"OKP","crv":"Ed25519","x":B64.encode(kp.public_key().as_ref())})
                }
            };
            j["kid"] = json!(kid);
            j
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let rng = SystemRandom::new();
            let sig = match self {
                Key::Rsa(kp) => {
                    let mut s = vec![0; kp.public_modulus_len()];
                    kp.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s)
                        .expect("sign");
                    s
                }
                Key::Ec(kp) => kp
                    .sign(&rng, input.as_bytes())
                    .expect("sign")
                    .as_ref()
                    .to_vec(),
                Key::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
            };
            format!("{input}.{}", B64.encode(sig))
        }
    }

    fn rsa() -> Key {
        Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa"))
    }
    fn ec() -> Key {
        Key::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec"))
    }
    fn ed() -> Key {
        Key::Ed(Ed25519KeyPair::generate().expect("ed"))
    }

    fn set(jwks: Value) -> KeySet {
        KeySet::parse(jwks.to_string().as_bytes()).expect("a JWKS")
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "alice", "aud": "www", "iat": NOW - 10, "exp": NOW + 300})
    }

    const AT: Expect<'static> = Expect {
        issuer: ISS,
        client_id: None,
        now: NOW,
    };
    const ID: Expect<'static> = Expect {
        issuer: ISS,
        client_id: Some("www"),
        now: NOW,
    };

    fn good(key: &Key, kid: &str, claims: &Value) -> String {
        key.sign(&json!({"alg": key.alg(), "kid": kid}), claims)
    }

    #[test]
    fn good_rs256_es256_and_eddsa_tokens_verify() {
        for key in [rsa(), ec(), ed()] {
            let keys = set(json!({"keys": [key.jwk("k1")]}));
            let token = good(&key, "k1", &claims());
            let got = verify(&token, &keys, &ID).unwrap_or_else(|e| panic!("{}: {e:?}", key.alg()));
            assert_eq!(got["sub"], "alice");
            // Without a kid, the key that fits the alg is tried.
            let token = key.sign(&json!({"alg": key.alg()}), &claims());
            assert!(
                verify(&token, &keys, &AT).is_ok(),
                "{} without kid",
                key.alg()
            );
        }
    }

    #[test]
    fn none_and_hmac_never_verify() {
        let key = rsa();
        let keys = set(json!({"keys": [key.jwk("k1"), {"kty":"oct","kid":"h","k":"c2VjcmV0"}]}));
        assert_eq!(keys.len(), 1, "the symmetric key is ignored");
        let payload = B64.encode(claims().to_string());
        let none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none"}"#));
        assert_eq!(verify(&none, &keys, &AT), Err(Rejected::Algorithm));
        for alg in ["HS256", "HS384", "HS512", "RS1", "none", "NONE"] {
            let header = B64.encode(json!({"alg": alg, "kid": "k1"}).to_string());
            let token = format!("{header}.{payload}.c2ln");
            assert_eq!(
                verify(&token, &keys, &AT),
                Err(Rejected::Algorithm),
                "{alg}"
            );
        }
        let crit = key.sign(
            &json!({"alg":"RS256","kid":"k1","crit":["exp"],"exp":1}),
            &claims(),
        );
        assert_eq!(verify(&crit, &keys, &AT), Err(Rejected::Algorithm));
    }

    #[test]
    fn a_wrong_key_or_a_tampered_payload_fails() {
        let key = ec();
        let keys = set(json!({"keys": [key.jwk("k1")]}));
        let other = ec();
        assert_eq!(
            verify(&good(&other, "k1", &claims()), &keys, &AT),
            Err(Rejected::Signature)
        );
        let token = good(&key, "k1", &claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(json!({"iss": ISS, "sub": "mallory", "exp": NOW + 300}).to_string());
        assert_eq!(
            verify(&parts.join("."), &keys, &AT),
            Err(Rejected::Signature)
        );
    }

    #[test]
    fn an_unknown_kid_and_a_key_that_does_not_fit_fail() {
        let key = rsa();
        let keys = set(json!({"keys": [key.jwk("k1")]}));
        assert_eq!(
            verify(&good(&key, "k2", &claims()), &keys, &AT),
            Err(Rejected::UnknownKey)
        );
        // ES256 under the kid of an RSA key: kty does not match alg.
        let ec_key = ec();
        assert_eq!(
            verify(&good(&ec_key, "k1", &claims()), &keys, &AT),
            Err(Rejected::KeyMismatch)
        );
        // The JWK's own alg must match the header's.
        let mut jwk = key.jwk("k1");
        jwk["alg"] = json!("PS256");
        let pinned = set(json!({"keys": [jwk]}));
        assert_eq!(
            verify(&good(&key, "k1", &claims()), &pinned, &AT),
            Err(Rejected::KeyMismatch)
        );
        // An encryption key is not a signing key.
        let mut jwk = key.jwk("k1");
        jwk["use"] = json!("enc");
        let enc = set(json!({"keys": [jwk]}));
        assert!(enc.is_empty());
        assert_eq!(
            verify(&good(&key, "k1", &claims()), &enc, &AT),
            Err(Rejected::UnknownKey)
        );
    }

    #[test]
    fn claims_are_checked() {
        let key = ed();
        let keys = set(json!({"keys": [key.jwk("k1")]}));
        let with = |extra: Value| {
            let mut c = claims();
            for (k, v) in extra.as_object().expect("object") {
                if v.is_null() {
                    c.as_object_mut().expect("object").remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            good(&key, "k1", &c)
        };
        let cases = [
            (
                json!({"iss": "https://evil.example.com"}),
                AT,
                Rejected::Issuer,
            ),
            (json!({"iss": null}), AT, Rejected::Issuer),
            (json!({"exp": NOW - 61}), AT, Rejected::Expired),
            (json!({"exp": "soon"}), AT, Rejected::MissingClaim),
            (json!({"nbf": NOW + 61}), AT, Rejected::NotYetValid),
            (json!({"exp": null}), ID, Rejected::MissingClaim),
            (json!({"aud": "another"}), ID, Rejected::Audience),
            (json!({"aud": ["a", "b"]}), ID, Rejected::Audience),
            (json!({"aud": null}), ID, Rejected::Audience),
            (
                json!({"aud": ["www", "b"], "azp": "b"}),
                ID,
                Rejected::Audience,
            ),
        ];
        for (extra, expect, want) in cases {
            assert_eq!(
                verify(&with(extra.clone()), &keys, &expect),
                Err(want),
                "{extra}"
            );
        }
        // Within the leeway, without exp for an access token, aud as an array: fine.
        for (extra, expect) in [
            (json!({"exp": NOW - 30}), AT),
            (json!({"nbf": NOW + 30}), AT),
            (json!({"exp": null}), AT),
            (json!({"aud": ["x", "www"], "azp": "www"}), ID),
        ] {
            assert!(
                verify(&with(extra.clone()), &keys, &expect).is_ok(),
                "{extra}"
            );
        }
    }

    /// Found by fuzzing (fuzz/corpus/capture): an ID token without `sub` was captured with the
    /// access token's subject, and the ID tokens issued on refresh then had no `sub`.
    #[test]
    fn an_id_token_without_a_string_subject_is_refused() {
        let key = ed();
        let keys = set(json!({"keys": [key.jwk("k1")]}));
        for sub in [Value::Null, json!(""), json!(42), json!(["alice"])] {
            let mut c = claims();
            if sub.is_null() {
                c.as_object_mut().expect("object").remove("sub");
            } else {
                c["sub"] = sub.clone();
            }
            let token = good(&key, "k1", &c);
            assert_eq!(
                verify(&token, &keys, &ID),
                Err(Rejected::MissingClaim),
                "{sub}"
            );
            // An access token may leave the subject to introspection (RFC 9068 aside).
            assert!(verify(&token, &keys, &AT).is_ok(), "{sub}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let key = rsa();
        let keys = set(json!({"keys": [key.jwk("k1")]}));
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJ!!!.@@@.###",
            "e30.e30.",
            "W10.e30.c2ln",
        ] {
            assert!(verify(t, &keys, &AT).is_err(), "{t}");
        }
        for doc in [&b"not json"[..], b"[]", b"{}", b"{\"keys\":7}", b"\xff\xfe"] {
            assert!(KeySet::parse(doc).is_err());
        }
        let odd = set(
            json!({"keys": [7, {"kty":"RSA","n":"!!","e":7}, {"kty":"EC","crv":"P-256",
            "x":"AAAA","y":"AAAA"}, {"kty":"OKP","crv":"X25519","x":"AAAA"}, {"kty":"RSA","n":"AA","e":"AA"}]}),
        );
        assert!(odd.is_empty(), "{odd:?}");
        assert!(is_jws("a.b.c") && !is_jws("opaque") && !is_jws("a.b.c.d.e"));
    }
}
