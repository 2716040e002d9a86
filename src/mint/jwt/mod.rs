//! JWT signing (RFC 7515 compact JWS) and the JWKS of the proxy's public keys.
//!
//! The proxy mints access tokens (and ID tokens) itself, so it needs a signing key, and relying
//! parties need its public half. A [`Signer`] holds one private key, parsed once at start-up,
//! and turns any `Serialize` claims into a compact JWS; its `kid` is the RFC 7638 thumbprint of
//! the public key, so the same key file gives the same `kid` on every replica and after every
//! restart. [`jwks()`] builds the proxy's own JWK Set; [`merge_jwks`] adds our keys to the IdP's
//! JWKS response, so a client that fetches `jwks_uri` through the proxy trusts tokens from both.
//! Files: this one signs; `jwks` holds the key set and its merge; `keys` the PEM/DER sniffer
//! that tells which kind of key a file holds.
//!
//! The one crypto backend is `aws-lc-rs` (the same one rustls uses): ES256 is ECDSA P-256 with
//! the fixed-length `r || s` signature, EdDSA is Ed25519, RS256 is RSASSA-PKCS1-v1_5 with
//! SHA-256.
//!
//! # Example
//!
//! ```
//! use refresh_proxy::config::SigningAlg;
//! use refresh_proxy::internal::mint::jwt::{Signer, TYP_AT_JWT, jwks};
//!
//! let signer = Signer::generate(SigningAlg::ES256);
//! let token = signer.sign(TYP_AT_JWT, &serde_json::json!({ "sub": "alice", "exp": 1 }));
//! assert_eq!(token.split('.').count(), 3);
//!
//! let set = jwks(&[&signer]);
//! assert_eq!(set["keys"][0]["kid"], signer.kid());
//! ```
//!
//! # Caveats
//!
//! - Cost differs by two orders of magnitude: ES256 and EdDSA take tens of µs per token, RS256
//!   hundreds (one core signs only about 1.4k RS256 tokens a second). Prefer ES256 or EdDSA
//!   unless a relying party can only verify RS256.
//! - [`Signer::generate`] keys are ephemeral: each replica gets its own key, and tokens cannot be
//!   verified after a restart once clients have refetched the JWKS. Configure a key file for
//!   anything beyond a single test instance.
//! - Rotating keys: publish the old and the new public key together ([`jwks()`] takes several
//!   signers) until tokens signed with the old key have expired.
//! - The PEM text and the DER bytes read from a key file are ordinary heap memory and are not
//!   zeroised after parsing; aws-lc keeps its own copy of the key.
//! - [`merge_jwks`] re-serialises the upstream document when it adds a key, so whitespace may
//!   change (member order is kept only while serde_json's `preserve_order` feature is on, as it
//!   is in this crate); the members and values do not change.
//! - Encrypted PEM keys (`ENCRYPTED PRIVATE KEY`) are refused; decrypt them first.

use std::fmt;
use std::path::Path;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject as _};
use serde::Serialize;
use serde_json::{Value, json};

mod jwks;
mod keys;

pub use jwks::{jwks, merge_jwks};
use keys::*;

use crate::config::{ConfigError, SigningAlg};

/// The `typ` of a JWT access token.
///
/// RFC 9068 §2.1: "JWT access tokens MUST include this media type in the "typ" header
/// parameter" … "the "typ" value used SHOULD be "at+jwt"" (RFC 7515 §4.1.9 recommends dropping
/// the "application/" prefix).
pub const TYP_AT_JWT: &str = "at+jwt";

/// The `typ` of other JWTs, such as ID tokens (RFC 7519 §5.1).
pub const TYP_JWT: &str = "JWT";

/// The `typ` values whose encoded header is built once, in [`Signer`]'s constructor.
const CACHED_TYPS: [&str; 2] = [TYP_AT_JWT, TYP_JWT];

/// RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
const RSA_MIN_MODULUS_BYTES: usize = 2048 / 8;

/// A signing key parsed once at start-up; signs compact JWS.
///
/// `Send + Sync`: share one behind an `Arc`; signing takes `&self`.
pub struct Signer {
    key: Key,
    /// aws-lc-rs's ECDSA and RSA `sign` take a `SecureRandom` for ring compatibility; aws-lc
    /// ignores it and draws nonces and blinding from its own DRBG.
    rng: SystemRandom,
    kid: String,
    jwk: Value,
    /// The base64url-encoded protected header for each of [`CACHED_TYPS`], same order.
    headers: [String; CACHED_TYPS.len()],
}

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// The JOSE header of every token we sign. Field order is the serialisation order.
#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'a str,
    kid: &'a str,
}

impl Signer {
    /// Loads a PEM private key: PKCS#8 (`PRIVATE KEY`) for all three algorithms, also SEC1
    /// (`EC PRIVATE KEY`) for ES256 and PKCS#1 (`RSA PRIVATE KEY`) for RS256.
    ///
    /// `key` is the config key named in errors (e.g. `"tokens.signing_key_file"`); errors also
    /// name the file, and never show key material.
    pub fn from_pem_file(alg: SigningAlg, path: &Path, key: &str) -> Result<Signer, ConfigError> {
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))
        })?;
        load(alg, &pem)
            .map_err(|why| ConfigError::invalid(key, format!("{}: {why}", path.display())))
    }

    /// Same as [`Signer::from_pem_file`], from PEM text.
    pub fn from_pem(alg: SigningAlg, pem: &[u8], key: &str) -> Result<Signer, ConfigError> {
        load(alg, pem).map_err(|why| ConfigError::invalid(key, why))
    }

    /// A fresh random key (ephemeral; RSA 2048 for RS256).
    ///
    /// # Panics
    ///
    /// If aws-lc cannot generate a key, which means its random source is broken.
    pub fn generate(alg: SigningAlg) -> Signer {
        let key = match alg {
            SigningAlg::ES256 => Key::Es256(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("aws-lc generates a P-256 key"),
            ),
            SigningAlg::EdDSA => {
                Key::EdDsa(Ed25519KeyPair::generate().expect("aws-lc generates an Ed25519 key"))
            }
            SigningAlg::RS256 => Key::Rs256(
                RsaKeyPair::generate(KeySize::Rsa2048).expect("aws-lc generates an RSA 2048 key"),
            ),
        };
        Signer::new(key)
    }

    fn new(key: Key) -> Signer {
        let public = PublicJwk::of(&key);
        let kid = public.thumbprint();
        let alg = key.alg_name();
        let mut jwk = public.members();
        // RFC 7517 §4.2 "use", §4.4 "alg", §4.5 "kid": tell verifiers what the key is for.
        jwk.insert("kid".to_owned(), Value::from(kid.as_str()));
        jwk.insert("alg".to_owned(), Value::from(alg));
        jwk.insert("use".to_owned(), Value::from("sig"));
        let headers = CACHED_TYPS.map(|typ| encode_header(alg, typ, &kid));
        Signer {
            key,
            rng: SystemRandom::new(),
            kid,
            jwk: Value::Object(jwk),
            headers,
        }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> SigningAlg {
        match self.key {
            Key::Es256(_) => SigningAlg::ES256,
            Key::EdDsa(_) => SigningAlg::EdDSA,
            Key::Rs256(_) => SigningAlg::RS256,
        }
    }

    /// The JOSE "alg" string: `"ES256"`, `"EdDSA"` or `"RS256"`.
    pub fn alg_name(&self) -> &'static str {
        self.key.alg_name()
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWS with the protected header `{"alg","typ","kid"}`.
    ///
    /// `typ` is [`TYP_AT_JWT`] for access tokens (RFC 9068) and [`TYP_JWT`] for ID tokens;
    /// the headers for those two are encoded once, any other `typ` is encoded per call.
    ///
    /// # Panics
    ///
    /// If `claims` cannot be serialised as JSON (a map with non-string keys, a failing
    /// `Serialize` impl): claims are the proxy's own types, so that is a bug, not input.
    pub fn sign<C: Serialize + ?Sized>(&self, typ: &str, claims: &C) -> String {
        let payload = serde_json::to_vec(claims).expect("JWT claims serialise to JSON");
        self.sign_json(typ, &payload)
    }

    /// Signs `payload`, claims already serialised as a JSON object (the hot path serialises
    /// them once, straight into one buffer). Same JWS as [`Signer::sign`].
    pub fn sign_json(&self, typ: &str, payload: &[u8]) -> String {
        let cached = CACHED_TYPS.iter().position(|t| *t == typ);
        let uncached;
        let header = match cached {
            Some(i) => &self.headers[i],
            None => {
                uncached = encode_header(self.alg_name(), typ, &self.kid);
                &uncached
            }
        };
        let mut jws = String::with_capacity(
            header.len() + 2 + b64_len(payload.len()) + b64_len(self.key.signature_len()),
        );
        // RFC 7515 §7.1: BASE64URL(UTF8(JWS Protected Header)) || '.' || BASE64URL(JWS Payload)
        // || '.' || BASE64URL(JWS Signature), and §5.1 step 8: the signing input is the first
        // two parts joined by '.'.
        jws.push_str(header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let signature = self.key.sign(&self.rng, jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        jws
    }

    /// The public JWK: `{"kty", "crv"/"n", "e", "x", "y", …, "kid", "alg", "use": "sig"}`.
    /// The claims of a compact JWS this key signed with header `typ` (its `kid` and `alg` in
    /// the header, a valid signature), or `None`. Times are not checked: that is the caller's
    /// business. `typ` keeps token kinds apart (RFC 8725 §3.11): an ID token ([`TYP_JWT`]) is
    /// never taken for an access token ([`TYP_AT_JWT`]), even when one key signs both.
    pub fn verify(&self, token: &str, typ: &str) -> Option<serde_json::Map<String, Value>> {
        use aws_lc_rs::signature::{self as sig, KeyPair as _};
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.get("kid")?.as_str()? != self.kid
            || header.get("alg")?.as_str()? != self.alg_name()
            || header.get("typ")?.as_str()? != typ
        {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let ok = match &self.key {
            Key::Es256(k) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, k.public_key().as_ref())
                    .verify(signing_input.as_bytes(), &signature)
            }
            Key::EdDsa(k) => sig::UnparsedPublicKey::new(&sig::ED25519, k.public_key().as_ref())
                .verify(signing_input.as_bytes(), &signature),
            Key::Rs256(k) => sig::UnparsedPublicKey::new(
                &sig::RSA_PKCS1_2048_8192_SHA256,
                k.public_key().as_ref(),
            )
            .verify(signing_input.as_bytes(), &signature),
        };
        ok.ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    pub fn public_jwk(&self) -> Value {
        self.jwk.clone()
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field has to be considered here before it can leak.
        let Signer {
            key: _,
            rng: _,
            kid,
            jwk: _,
            headers: _,
        } = self;
        f.debug_struct("Signer")
            .field("alg", &self.alg_name())
            .field("kid", kid)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn alg_name(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            // RFC 8037 §3.1: "The JWS "alg" value is "EdDSA"" (the curve is in the JWK's "crv").
            Key::EdDsa(_) => "EdDSA",
            Key::Rs256(_) => "RS256",
        }
    }

    fn signature_len(&self) -> usize {
        match self {
            Key::Es256(_) => 64,
            Key::EdDsa(_) => 64,
            Key::Rs256(kp) => kp.public_modulus_len(),
        }
    }

    fn sign(&self, rng: &SystemRandom, message: &[u8]) -> Signature {
        match self {
            // RFC 7518 §3.4: the JWS Signature is R || S, each a 32-octet big-endian unsigned
            // integer for P-256 — the "FIXED" encoding, not ASN.1 DER.
            Key::Es256(kp) => Signature::Fixed(
                kp.sign(rng, message)
                    .expect("ECDSA P-256 signing with a validated key does not fail"),
            ),
            // RFC 8037 §3.1: the signature is the Ed25519 signature of the JWS Signing Input.
            Key::EdDsa(kp) => Signature::Fixed(kp.sign(message)),
            // RFC 7518 §3.3: RS256 is RSASSA-PKCS1-v1_5 using SHA-256.
            Key::Rs256(kp) => {
                let mut signature = vec![0; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, rng, message, &mut signature)
                    .expect("RSA signing with a validated key does not fail");
                Signature::Owned(signature)
            }
        }
    }
}

/// A signature: aws-lc-rs's fixed-size one as it is (no heap copy), or RSA's buffer.
// aws-lc-rs's `Signature` is a 4.6 KB inline buffer; it lives on the stack for one call, and
// boxing it would bring back the allocation this type avoids.
#[allow(clippy::large_enum_variant)]
enum Signature {
    Fixed(aws_lc_rs::signature::Signature),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        match self {
            Signature::Fixed(s) => s.as_ref(),
            Signature::Owned(v) => v,
        }
    }
}

/// The members of a public JWK that RFC 7638 §3.2 calls required, base64url-encoded.
enum PublicJwk {
    Ec { x: String, y: String },
    Okp { x: String },
    Rsa { n: String, e: String },
}

impl PublicJwk {
    fn of(key: &Key) -> PublicJwk {
        match key {
            Key::Es256(kp) => {
                // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y.
                let point = kp.public_key().as_ref();
                assert!(
                    point.len() == 65 && point[0] == 0x04,
                    "aws-lc returns an uncompressed P-256 point"
                );
                // RFC 7518 §6.2.1.2/§6.2.1.3: "The length of this octet string MUST be the full
                // size of a coordinate for the curve" — 32 octets each, leading zeros kept.
                PublicJwk::Ec {
                    x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                    y: URL_SAFE_NO_PAD.encode(&point[33..65]),
                }
            }
            // RFC 8037 §2: "x" is the public key, for Ed25519 its 32-octet encoding.
            Key::EdDsa(kp) => PublicJwk::Okp {
                x: URL_SAFE_NO_PAD.encode(kp.public_key().as_ref()),
            },
            Key::Rs256(kp) => {
                let public = kp.public_key();
                // RFC 7518 §6.3.1.1: "n" "MUST utilize the minimum number of octets to represent
                // the value"; §6.3.1.2 says the same of "e".
                PublicJwk::Rsa {
                    n: URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    e: URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                }
            }
        }
    }

    /// The RFC 7638 JWK thumbprint: SHA-256 over the required members, base64url.
    fn thumbprint(&self) -> String {
        // RFC 7638 §3.3: the members "in lexicographic order", with "no whitespace or line
        // breaks". The values are base64url, which never needs JSON escaping.
        let canonical = match self {
            // RFC 7638 §3.2: EC requires crv, kty, x, y.
            PublicJwk::Ec { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            // RFC 8037 §2 (and its Appendix A.3 example): OKP requires crv, kty, x.
            PublicJwk::Okp { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            // RFC 7638 §3.2: RSA requires e, kty, n.
            PublicJwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        // RFC 7638 §3.1 step 2: "Hash the octets of the UTF-8 representation of this JSON object".
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    fn members(&self) -> serde_json::Map<String, Value> {
        let value = match self {
            PublicJwk::Ec { x, y } => json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
            PublicJwk::Okp { x } => json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            PublicJwk::Rsa { n, e } => json!({ "kty": "RSA", "n": n, "e": e }),
        };
        match value {
            Value::Object(map) => map,
            _ => unreachable!("json!({{…}}) is an object"),
        }
    }
}

/// RFC 7515 §4: the protected header, as base64url of its UTF-8 JSON.
fn encode_header(alg: &'static str, typ: &str, kid: &str) -> String {
    let json = serde_json::to_vec(&Header { alg, typ, kid }).expect("a JOSE header serialises");
    URL_SAFE_NO_PAD.encode(json)
}

/// The length of unpadded base64 for `n` bytes.
fn b64_len(n: usize) -> usize {
    base64::encoded_len(n, false).unwrap_or(0)
}

/// Parses `pem` as a key for `alg`. The error text is safe to log: it names formats, never bytes.
fn load(alg: SigningAlg, pem: &[u8]) -> Result<Signer, String> {
    let mut sections = PrivateKeyDer::pem_slice_iter(pem);
    let der = match sections.next() {
        Some(Ok(der)) => der,
        // The pem errors' Display can quote a line of the file, so only their kind is reported.
        Some(Err(pem::Error::Base64Decode(_))) => {
            return Err("the private key section is not valid base64".to_owned());
        }
        Some(Err(_)) => return Err("not a well-formed PEM file".to_owned()),
        None if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            return Err(
                "encrypted private keys are not supported; decrypt it first \
                 (openssl pkcs8 -topk8 -nocrypt)"
                    .to_owned(),
            );
        }
        None => {
            return Err(
                "no PEM \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" \
                 section found"
                    .to_owned(),
            );
        }
    };
    match sections.next() {
        None => {}
        Some(Ok(_)) => {
            return Err("more than one private key in the file; keep exactly one".to_owned());
        }
        Some(Err(_)) => return Err("not a well-formed PEM file".to_owned()),
    }

    let cannot_sign = || {
        format!(
            "the file holds {}{}, which cannot sign {alg:?}",
            KeyKind::of(&der).describe(),
            container(&der)
        )
    };
    let parsed = match (alg, &der) {
        (SigningAlg::ES256, PrivateKeyDer::Pkcs8(k)) => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der())
                .map(Key::Es256)
        }
        // from_private_key_der takes RFC 5915 ECPrivateKey (SEC1) as well as PKCS#8.
        (SigningAlg::ES256, PrivateKeyDer::Sec1(k)) => EcdsaKeyPair::from_private_key_der(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            k.secret_sec1_der(),
        )
        .map(Key::Es256),
        // Accepts PKCS#8 v1 (openssl genpkey) and v2 (with the public key, which is checked).
        (SigningAlg::EdDSA, PrivateKeyDer::Pkcs8(k)) => {
            Ed25519KeyPair::from_pkcs8(k.secret_pkcs8_der()).map(Key::EdDsa)
        }
        (SigningAlg::RS256, PrivateKeyDer::Pkcs8(k)) => {
            RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map(Key::Rs256)
        }
        (SigningAlg::RS256, PrivateKeyDer::Pkcs1(k)) => {
            RsaKeyPair::from_der(k.secret_pkcs1_der()).map(Key::Rs256)
        }
        _ => return Err(cannot_sign()),
    };
    let key = parsed.map_err(|rejected| {
        let kind = KeyKind::of(&der);
        if !kind.may_sign(alg) {
            return cannot_sign();
        }
        let hint = match alg {
            SigningAlg::RS256 => "; RS256 needs an RSA key of 2048 to 8192 bits",
            SigningAlg::ES256 | SigningAlg::EdDSA => "",
        };
        format!(
            "the file holds {}{} that aws-lc rejected ({rejected}){hint}",
            kind.describe(),
            container(&der)
        )
    })?;
    // RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used" (aws-lc-rs refuses
    // smaller keys itself today; this keeps the rule here if that ever changes).
    if let Key::Rs256(kp) = &key
        && kp.public_modulus_len() < RSA_MIN_MODULUS_BYTES
    {
        return Err(format!(
            "the RSA key has {} bits; RS256 needs at least 2048",
            kp.public_modulus_len() * 8
        ));
    }
    Ok(Signer::new(key))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, ED25519,
        RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
    };
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const ALGS: [SigningAlg; 3] = [SigningAlg::ES256, SigningAlg::EdDSA, SigningAlg::RS256];
    const KEY: &str = "tokens.signing_key_file";

    fn b64d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(s)
            .expect("base64url without padding")
    }

    fn parts(token: &str) -> (Value, Value, Vec<u8>) {
        let p: Vec<&str> = token.split('.').collect();
        assert_eq!(p.len(), 3, "compact JWS has three parts: {token}");
        let header = serde_json::from_slice(&b64d(p[0])).expect("header is JSON");
        let payload = serde_json::from_slice(&b64d(p[1])).expect("payload is JSON");
        (header, payload, b64d(p[2]))
    }

    fn member(jwk: &Value, name: &str) -> Vec<u8> {
        b64d(jwk[name].as_str().expect("member is a string"))
    }

    /// Verifies `token`'s signature using only the components of the public JWK.
    fn verify_with_jwk(jwk: &Value, token: &str) -> Result<(), aws_lc_rs::error::Unspecified> {
        let (input, sig) = token.rsplit_once('.').expect("two dots");
        let sig = b64d(sig);
        match jwk["kty"].as_str().expect("kty") {
            "EC" => {
                assert_eq!(jwk["crv"], "P-256");
                let mut point = vec![0x04];
                point.extend(member(jwk, "x"));
                point.extend(member(jwk, "y"));
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(input.as_bytes(), &sig)
            }
            "OKP" => {
                assert_eq!(jwk["crv"], "Ed25519");
                UnparsedPublicKey::new(&ED25519, member(jwk, "x")).verify(input.as_bytes(), &sig)
            }
            "RSA" => RsaPublicKeyComponents {
                n: member(jwk, "n"),
                e: member(jwk, "e"),
            }
            .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig),
            other => panic!("unexpected kty {other}"),
        }
    }

    /// RFC 7638 thumbprint computed independently of the module: pick the required members,
    /// let a BTreeMap sort them and serde_json print them compactly.
    fn rfc7638(jwk: &Value) -> String {
        let required: &[&str] = match jwk["kty"].as_str().expect("kty") {
            "EC" => &["crv", "kty", "x", "y"],
            "OKP" => &["crv", "kty", "x"],
            "RSA" => &["e", "kty", "n"],
            other => panic!("unexpected kty {other}"),
        };
        let members: BTreeMap<&str, &str> = required
            .iter()
            .map(|m| (*m, jwk[*m].as_str().expect("string member")))
            .collect();
        let json = serde_json::to_string(&members).expect("serialise");
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, json.as_bytes()))
    }

    /// The RSA key of RFC 7638 §3.1.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    const RFC7638_E: &str = "AQAB";
    const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    /// A 1024-bit RSA key (PKCS#8), generated for this test with `openssl genpkey -algorithm RSA
    /// -pkeyopt rsa_keygen_bits:1024`: too small for RS256 (aws-lc-rs cannot generate one).
    const RSA_1024_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAMzec6GWxTEeAgzg\n\
hCPeBRAbjdkgl89hdnsI8oX73pzntVQ98Lwwf43JTQfynGgX/aRF/wVSK6odgbio\n\
HvCEfu2vgGYP8IctJSraIW3/x2iDKzXw0eNYa6CoLBO3wqfENrAz/pdFq1XtxEY4\n\
9aF8mZbRUBFjye5fPoRRoE/+n1hXAgMBAAECgYB0IlpMLKrGCCvDXvapWm9mTShh\n\
AF/ueGJwpobMuxXbvmIFSkOQerGkD4vySG6vd4IaQG+rdYQ5IBbsNamsUH+ee7VF\n\
mHu/i1kGhJTa/iDnYlJB8TQF4bJZhB66MGnByqm3xUnsInq2LRNE+x3cMQ3xyAoH\n\
J12kjPQFcHU7LCElMQJBAO6L9bHpP4Xa76Jwqh0FuAazgYxc3kBcqyWVi+hfQtzO\n\
XHrj2r8xoG6dM2qX2u960ykmk9ANXVnsuuudJ4s9D68CQQDb27Lp1VzenLxakbKP\n\
+mkxRVMAaO0MCg7mQv+F4KrdAXxdbKwGpTL8iNUzIawD7++AzZt5OqXhyyGFhrZ3\n\
sgPZAkEA3Mx1pbClGIvW5T9tZiGl/aXnknlfSqm7zLUIZBTQubrVBPakwfX4bopZ\n\
Th+zCZlhnKRViuzj7FlfhrjXIl1phwJAQYqIFn89lTtiRxmiApvi2gZRjRC6gdlJ\n\
wcj9RZrJNOMpgOxRiBWdUn00GW8TSYUwf9RLYeNi6iHVF2omYR5XWQJAWlkAMOhW\n\
a2BpR7HBVkZyYtrDpM4WuVLhwI/eE02xjDWz5umfnHWfGlij+039DZkRJqm8ou0a\n\
LPKTUHpyPxImwA==\n\
-----END PRIVATE KEY-----\n\
";

    /// An X25519 key (PKCS#8, `openssl genpkey -algorithm X25519`): a key agreement key.
    const X25519_PKCS8: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VuBCIEIEAeOAewyFOu3i+ShxDutGf3ichmyi/Ow4BJP0INgl5R\n\
-----END PRIVATE KEY-----\n\
";

    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("ascii"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// Reads one DER TLV at the start of `der`: (tag, contents, rest).
    fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = der[0];
        let (len, header) = match der[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let k = (n & 0x7f) as usize;
                let len = der[2..2 + k]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                (len, 2 + k)
            }
        };
        (tag, &der[header..header + len], &der[header + len..])
    }

    /// The inner private key of a PKCS#8 PrivateKeyInfo (for RSA: the PKCS#1 RSAPrivateKey).
    fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
        let (tag, seq, _) = tlv(pkcs8);
        assert_eq!(tag, 0x30);
        let (tag, _version, rest) = tlv(seq);
        assert_eq!(tag, 0x02);
        let (tag, _alg_id, rest) = tlv(rest);
        assert_eq!(tag, 0x30);
        let (tag, inner, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        inner.to_vec()
    }

    fn claims() -> Value {
        json!({
            "iss": "https://idp.example",
            "sub": "alice",
            "aud": "api",
            "client_id": "app",
            "scope": "openid offline_access",
            "iat": 1_700_000_000,
            "exp": 1_700_000_300,
            "jti": "abc",
        })
    }

    #[test]
    fn tokens_verify_with_the_published_jwk_for_every_alg() {
        for alg in ALGS {
            let signer = Signer::generate(alg);
            assert_eq!(signer.alg(), alg);
            let token = signer.sign(TYP_AT_JWT, &claims());
            let (header, payload, sig) = parts(&token);
            assert_eq!(
                header,
                json!({ "alg": signer.alg_name(), "typ": "at+jwt", "kid": signer.kid() })
            );
            assert_eq!(payload, claims());
            let jwk = signer.public_jwk();
            assert_eq!(jwk["alg"], signer.alg_name());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], signer.kid());
            verify_with_jwk(&jwk, &token).unwrap_or_else(|_| panic!("{alg:?} signature"));

            // A changed payload no longer verifies.
            let mut forged: Vec<&str> = token.split('.').collect();
            let other = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#);
            forged[1] = &other;
            assert!(verify_with_jwk(&jwk, &forged.join(".")).is_err());

            match alg {
                SigningAlg::ES256 => {
                    assert_eq!(sig.len(), 64, "RFC 7518 §3.4 R || S");
                    assert_eq!(member(&jwk, "x").len(), 32);
                    assert_eq!(member(&jwk, "y").len(), 32);
                }
                SigningAlg::EdDSA => {
                    assert_eq!(sig.len(), 64);
                    assert_eq!(jwk["kty"], "OKP");
                    assert_eq!(member(&jwk, "x").len(), 32);
                }
                SigningAlg::RS256 => {
                    assert_eq!(sig.len(), 256);
                    assert_eq!(member(&jwk, "n").len(), 256);
                    assert_eq!(jwk["e"], "AQAB");
                }
            }
            assert!(!token.contains('='), "base64url without padding");
        }
    }

    #[test]
    fn header_carries_the_requested_typ() {
        let signer = Signer::generate(SigningAlg::EdDSA);
        for typ in ["JWT", "at+jwt", "application/at+jwt", "we\"ird"] {
            let token = signer.sign(typ, &json!({}));
            let (header, _, _) = parts(&token);
            assert_eq!(header["typ"], typ);
            assert_eq!(header["alg"], "EdDSA");
            verify_with_jwk(&signer.public_jwk(), &token).expect("verifies");
        }
        // Member order alg, typ, kid: the cached header is exactly this JSON.
        let header = b64d(token_header(&signer.sign("JWT", &json!({}))));
        assert_eq!(
            String::from_utf8(header).expect("utf-8"),
            format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, signer.kid())
        );
    }

    fn token_header(token: &str) -> &str {
        token.split('.').next().expect("header")
    }

    #[test]
    fn thumbprint_matches_the_rfc7638_example() {
        let example = json!({ "kty": "RSA", "n": RFC7638_N, "e": RFC7638_E });
        assert_eq!(rfc7638(&example), RFC7638_THUMBPRINT);
        let ours = PublicJwk::Rsa {
            n: RFC7638_N.to_owned(),
            e: RFC7638_E.to_owned(),
        };
        assert_eq!(ours.thumbprint(), RFC7638_THUMBPRINT);
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_of_the_public_jwk() {
        for alg in ALGS {
            let signer = Signer::generate(alg);
            assert_eq!(signer.kid(), rfc7638(&signer.public_jwk()), "{alg:?}");
            assert_eq!(signer.kid().len(), 43, "base64url of 32 bytes");
        }
    }

    /// Loads `pem` for `alg` and checks the JWK is the one of `public_key` (raw, as aws-lc-rs
    /// returns it) and that the loaded key signs verifiably.
    fn assert_loads(alg: SigningAlg, pem: &str, public_key: &[u8]) {
        let signer = Signer::from_pem(alg, pem.as_bytes(), KEY).expect("key loads");
        let jwk = signer.public_jwk();
        match alg {
            SigningAlg::ES256 => {
                assert_eq!(public_key[1..33], member(&jwk, "x")[..]);
                assert_eq!(public_key[33..], member(&jwk, "y")[..]);
            }
            SigningAlg::EdDSA => assert_eq!(public_key, &member(&jwk, "x")[..]),
            // aws-lc-rs's RSA public key bytes are the RFC 8017 RSAPublicKey DER.
            SigningAlg::RS256 => {
                let (_, seq, _) = tlv(public_key);
                let (_, n, rest) = tlv(seq);
                let (_, e, _) = tlv(rest);
                let strip = |b: &[u8]| {
                    b.iter()
                        .skip_while(|x| **x == 0)
                        .copied()
                        .collect::<Vec<_>>()
                };
                assert_eq!(strip(n), member(&jwk, "n"));
                assert_eq!(strip(e), member(&jwk, "e"));
            }
        }
        let token = signer.sign(TYP_JWT, &claims());
        verify_with_jwk(&jwk, &token).expect("loaded key signs");
    }

    #[test]
    fn es256_loads_from_pkcs8_and_sec1_pem() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
        let public = kp.public_key().as_ref().to_vec();
        let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
        assert_loads(
            SigningAlg::ES256,
            &pem("PRIVATE KEY", pkcs8.as_ref()),
            &public,
        );

        let sec1 = kp.private_key().as_der().expect("sec1");
        let sec1_pem = pem("EC PRIVATE KEY", sec1.as_ref());
        assert_loads(SigningAlg::ES256, &sec1_pem, &public);

        // `openssl ecparam -genkey` writes an EC PARAMETERS section (the prime256v1 OID) first.
        let params = pem(
            "EC PARAMETERS",
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        );
        assert_loads(SigningAlg::ES256, &format!("{params}{sec1_pem}"), &public);
    }

    #[test]
    fn eddsa_loads_from_pkcs8_v1_and_v2_pem() {
        let kp = Ed25519KeyPair::generate().expect("generate");
        let public = kp.public_key().as_ref().to_vec();
        let v1 = kp.to_pkcs8v1().expect("pkcs8 v1");
        assert_loads(SigningAlg::EdDSA, &pem("PRIVATE KEY", v1.as_ref()), &public);
        let v2 = kp.to_pkcs8().expect("pkcs8 v2");
        assert_loads(SigningAlg::EdDSA, &pem("PRIVATE KEY", v2.as_ref()), &public);
    }

    #[test]
    fn rs256_loads_from_pkcs8_and_pkcs1_pem() {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate");
        let public = kp.public_key().as_ref().to_vec();
        let pkcs8 = kp.as_der().expect("pkcs8");
        assert_loads(
            SigningAlg::RS256,
            &pem("PRIVATE KEY", pkcs8.as_ref()),
            &public,
        );
        let pkcs1 = pkcs8_inner(pkcs8.as_ref());
        assert_loads(SigningAlg::RS256, &pem("RSA PRIVATE KEY", &pkcs1), &public);
    }

    #[test]
    fn rcgen_pkcs8_pem_loads_for_every_alg() {
        for (alg, rc) in [
            (SigningAlg::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (SigningAlg::EdDSA, &rcgen::PKCS_ED25519),
            (SigningAlg::RS256, &rcgen::PKCS_RSA_SHA256),
        ] {
            let kp = rcgen::KeyPair::generate_for(rc).expect("rcgen generates");
            assert_loads(alg, &kp.serialize_pem(), kp.public_key_raw());
        }
    }

    fn invalid_message(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, message } => {
                assert_eq!(key, KEY);
                message
            }
            other => panic!("expected ConfigError::Invalid, got {other:?}"),
        }
    }

    fn load_err(alg: SigningAlg, pem: &str) -> String {
        let err = Signer::from_pem(alg, pem.as_bytes(), KEY).expect_err("must be refused");
        let message = invalid_message(err);
        // Never echo the key: no line of the PEM body appears in the message.
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!message.contains(line), "{message} leaks {line}");
        }
        message
    }

    #[test]
    fn a_key_for_another_alg_is_a_clear_config_error() {
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
        let ec_pkcs8 = pem("PRIVATE KEY", ec.to_pkcs8v1().expect("pkcs8").as_ref());
        let ec_sec1 = pem(
            "EC PRIVATE KEY",
            ec.private_key().as_der().expect("sec1").as_ref(),
        );
        let ed = Ed25519KeyPair::generate().expect("generate");
        let ed_pkcs8 = pem("PRIVATE KEY", ed.to_pkcs8().expect("pkcs8").as_ref());
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate");
        let rsa_der = rsa.as_der().expect("pkcs8");
        let rsa_pkcs8 = pem("PRIVATE KEY", rsa_der.as_ref());
        let rsa_pkcs1 = pem("RSA PRIVATE KEY", &pkcs8_inner(rsa_der.as_ref()));
        let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("generate");
        let p384_pkcs8 = pem("PRIVATE KEY", p384.to_pkcs8v1().expect("pkcs8").as_ref());
        let p384_sec1 = pem(
            "EC PRIVATE KEY",
            p384.private_key().as_der().expect("sec1").as_ref(),
        );

        let cases = [
            (
                SigningAlg::RS256,
                &ec_pkcs8,
                "holds a P-256 EC key, which cannot sign RS256",
            ),
            (SigningAlg::EdDSA, &ec_sec1, "holds a P-256 EC key (SEC1"),
            (
                SigningAlg::ES256,
                &ed_pkcs8,
                "holds an Ed25519 key, which cannot sign ES256",
            ),
            (
                SigningAlg::ES256,
                &rsa_pkcs8,
                "holds an RSA key, which cannot sign ES256",
            ),
            (SigningAlg::EdDSA, &rsa_pkcs1, "holds an RSA key (PKCS#1"),
            (
                SigningAlg::ES256,
                &p384_pkcs8,
                "holds a P-384 EC key, which cannot sign ES256",
            ),
            (
                SigningAlg::ES256,
                &p384_sec1,
                "holds a P-384 EC key (SEC1 \"EC PRIVATE KEY\"), which cannot sign ES256",
            ),
            (
                SigningAlg::EdDSA,
                &X25519_PKCS8.to_owned(),
                "holds an X25519 key, which cannot sign EdDSA",
            ),
            (
                SigningAlg::RS256,
                &RSA_1024_PKCS8.to_owned(),
                "holds an RSA key that aws-lc rejected (TooSmall); RS256 needs an RSA key of 2048",
            ),
            (
                SigningAlg::ES256,
                &RSA_1024_PKCS8.to_owned(),
                "holds an RSA key, which cannot sign ES256",
            ),
        ];
        for (alg, pem, expected) in cases {
            let message = load_err(alg, pem);
            assert!(message.contains(expected), "{alg:?}: {message}");
        }
    }

    #[test]
    fn unusable_files_are_clear_config_errors() {
        let cases = [
            ("", "no PEM \"PRIVATE KEY\""),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "no PEM",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted private keys are not supported",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n",
                "not a well-formed PEM",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n@@@@\n-----END PRIVATE KEY-----\n",
                "not valid base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "holds a key of an unsupported type",
            ),
        ];
        for (text, expected) in cases {
            let message = load_err(SigningAlg::ES256, text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }

        let kp = Ed25519KeyPair::generate().expect("generate");
        let one = pem("PRIVATE KEY", kp.to_pkcs8().expect("pkcs8").as_ref());
        let message = load_err(SigningAlg::EdDSA, &format!("{one}{one}"));
        assert!(message.contains("more than one private key"), "{message}");
    }

    #[test]
    fn key_classification_survives_truncated_and_mangled_der() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
        let pkcs8 = kp.to_pkcs8v1().expect("pkcs8").as_ref().to_vec();
        let sec1 = kp.private_key().as_der().expect("sec1").as_ref().to_vec();
        assert_eq!(pkcs8_kind(&pkcs8), KeyKind::Ec(Some("P-256")));
        assert_eq!(sec1_curve(&sec1).and_then(curve), Some("P-256"));
        for der in [&pkcs8, &sec1] {
            for end in 0..der.len() {
                let _ = pkcs8_kind(&der[..end]);
                let _ = sec1_curve(&der[..end]);
            }
            for i in 0..der.len().min(40) {
                for byte in [0x00, 0x7f, 0x80, 0x84, 0x85, 0xff] {
                    let mut mangled = der.clone();
                    mangled[i] = byte;
                    let _ = pkcs8_kind(&mangled);
                    let _ = sec1_curve(&mangled);
                }
            }
        }
    }

    #[test]
    fn file_errors_name_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("jwt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        let message = invalid_message(
            Signer::from_pem_file(SigningAlg::ES256, &missing, KEY).expect_err("missing"),
        );
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        assert!(message.starts_with("cannot read"), "{message}");

        let kp = Ed25519KeyPair::generate().expect("generate");
        let text = pem("PRIVATE KEY", kp.to_pkcs8().expect("pkcs8").as_ref());
        let file = dir.join("ed.pem");
        std::fs::write(&file, &text).expect("write key");
        let signer = Signer::from_pem_file(SigningAlg::EdDSA, &file, KEY).expect("loads");
        assert_eq!(signer.alg(), SigningAlg::EdDSA);
        let err = Signer::from_pem_file(SigningAlg::ES256, &file, KEY).expect_err("wrong alg");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "{KEY}: {}: the file holds an Ed25519 key",
                file.display()
            )),
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn verify_accepts_only_this_keys_own_tokens() {
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA, SigningAlg::RS256] {
            let a = Signer::generate(alg);
            let b = Signer::generate(alg);
            let t = a.sign(TYP_AT_JWT, &json!({"sub": "alice"}));
            assert_eq!(a.verify(&t, TYP_AT_JWT).expect("own token")["sub"], "alice");
            assert!(a.verify(&t, TYP_JWT).is_none(), "{alg:?}: another typ");
            assert!(b.verify(&t, TYP_AT_JWT).is_none(), "{alg:?}: another key");
            let (head, _) = t.rsplit_once('.').expect("dots");
            let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode([0u8; 64]));
            assert!(a.verify(&forged, TYP_AT_JWT).is_none());
            assert!(a.verify("not.a.jwt", TYP_AT_JWT).is_none());
        }
    }

    #[test]
    fn jwks_lists_each_key_once() {
        let a = Signer::generate(SigningAlg::ES256);
        let b = Signer::generate(SigningAlg::EdDSA);
        let set = jwks(&[&a, &b, &a]);
        let keys = set["keys"].as_array().expect("keys array");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], a.public_jwk());
        assert_eq!(keys[1], b.public_jwk());
        assert_eq!(jwks(&[]), json!({ "keys": [] }));
    }

    #[test]
    fn merge_jwks_keeps_upstream_and_adds_ours_once() {
        let ours = Signer::generate(SigningAlg::ES256).public_jwk();
        let upstream = json!({
            "keys": [{ "kty": "RSA", "kid": "idp-1", "n": "AQAB", "e": "AQAB" }],
            "x-extra": { "kept": true },
        });
        let body = serde_json::to_vec(&upstream).expect("serialise");
        let merged = merge_jwks(&body, &[ours.clone(), ours.clone()]).expect("a JWKS");
        let merged: Value = serde_json::from_slice(&merged).expect("JSON");
        assert_eq!(merged["x-extra"], json!({ "kept": true }));
        assert_eq!(merged["keys"], json!([upstream["keys"][0], ours]));

        // Merging again adds nothing, and the bytes pass through untouched.
        let again_body = serde_json::to_vec_pretty(&merged).expect("serialise");
        let again = merge_jwks(&again_body, std::slice::from_ref(&ours)).expect("a JWKS");
        assert_eq!(again, again_body);

        // An upstream key with our kid wins.
        let clash = json!({ "keys": [{ "kid": ours["kid"], "kty": "EC" }] });
        let body = serde_json::to_vec(&clash).expect("serialise");
        assert_eq!(merge_jwks(&body, &[ours]), Some(body));
    }

    #[test]
    fn merge_jwks_returns_none_for_other_bodies() {
        let ours = [Signer::generate(SigningAlg::EdDSA).public_jwk()];
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            b"{}",
            b"{\"keys\":{}}",
            b"{\"keys\":null}",
            b"\"keys\"",
            b"{\"keys\":[]",
        ] {
            assert_eq!(
                merge_jwks(body, &ours),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let empty = merge_jwks(b"{\"keys\":[]}", &ours).expect("a JWKS");
        let empty: Value = serde_json::from_slice(&empty).expect("JSON");
        assert_eq!(empty, json!({ "keys": [ours[0]] }));
    }

    #[test]
    fn debug_shows_alg_and_kid_only() {
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
        let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
        let signer = Signer::from_pem(
            SigningAlg::ES256,
            pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
            KEY,
        )
        .expect("loads");
        let shown = format!("{signer:?}");
        assert_eq!(
            shown,
            format!("Signer {{ alg: \"ES256\", kid: \"{}\", .. }}", signer.kid())
        );
        for alg in ALGS {
            let signer = Signer::generate(alg);
            assert_eq!(
                format!("{signer:?}"),
                format!(
                    "Signer {{ alg: {:?}, kid: {:?}, .. }}",
                    signer.alg_name(),
                    signer.kid()
                )
            );
        }
    }

    #[test]
    fn signer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Signer>();
    }
}
