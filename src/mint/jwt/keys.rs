//! What kind of private key a PEM file holds: a small DER reader over PKCS#8 and SEC1, so
//! that a key for another algorithm, curve or container gets a clear config error.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivateKeyDer;

use crate::config::SigningAlg;

/// The PEM container of a key, for error messages; PKCS#8 is the default and goes unnamed.
pub(super) fn container(der: &PrivateKeyDer<'_>) -> &'static str {
    match der {
        PrivateKeyDer::Pkcs1(_) => " (PKCS#1 \"RSA PRIVATE KEY\")",
        PrivateKeyDer::Sec1(_) => " (SEC1 \"EC PRIVATE KEY\")",
        _ => "",
    }
}

/// What a private key is, read from the algorithm identifiers in its DER, so that an error can
/// say what is wrong with the file rather than only that aws-lc refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// An EC key; the curve's name when the key names a curve we know.
    Ec(Option<&'static str>),
    Ed25519,
    Rsa,
    /// A recognised key type no `SigningAlg` uses.
    Other(&'static str),
    Unknown,
}

// DER-encoded object identifiers (the contents octets).
pub(super) const OID_RSA_ENCRYPTION: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
pub(super) const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
pub(super) const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
pub(super) const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(super) const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub(super) const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
pub(super) const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
pub(super) const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];
pub(super) const OID_X448: &[u8] = &[0x2b, 0x65, 0x6f];
pub(super) const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
pub(super) const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];

pub(super) const TAG_INTEGER: u8 = 0x02;
pub(super) const TAG_OCTET_STRING: u8 = 0x04;
pub(super) const TAG_OID: u8 = 0x06;
pub(super) const TAG_SEQUENCE: u8 = 0x30;
pub(super) const TAG_CONTEXT_0: u8 = 0xa0;

impl KeyKind {
    pub(super) fn of(der: &PrivateKeyDer<'_>) -> KeyKind {
        match der {
            PrivateKeyDer::Pkcs1(_) => KeyKind::Rsa,
            PrivateKeyDer::Sec1(k) => sec1_kind(k.secret_sec1_der()),
            PrivateKeyDer::Pkcs8(k) => pkcs8_kind(k.secret_pkcs8_der()),
            _ => KeyKind::Unknown,
        }
    }

    /// Whether a key of this kind is meant for `alg` (an EC key whose curve we cannot name is
    /// given the benefit of the doubt: aws-lc decides).
    pub(super) fn may_sign(self, alg: SigningAlg) -> bool {
        match self {
            KeyKind::Ec(None) | KeyKind::Ec(Some("P-256")) => alg == SigningAlg::ES256,
            KeyKind::Ed25519 => alg == SigningAlg::EdDSA,
            KeyKind::Rsa => alg == SigningAlg::RS256,
            KeyKind::Ec(Some(_)) | KeyKind::Other(_) | KeyKind::Unknown => false,
        }
    }

    pub(super) fn describe(self) -> String {
        match self {
            KeyKind::Ec(Some(curve)) => format!("a {curve} EC key"),
            KeyKind::Ec(None) => "an EC key on an unnamed or unsupported curve".to_owned(),
            KeyKind::Ed25519 => "an Ed25519 key".to_owned(),
            KeyKind::Rsa => "an RSA key".to_owned(),
            KeyKind::Other(name) => format!("an {name} key"),
            KeyKind::Unknown => "a key of an unsupported type".to_owned(),
        }
    }
}

pub(super) fn curve(oid: &[u8]) -> Option<&'static str> {
    match oid {
        OID_P256 => Some("P-256"),
        OID_P384 => Some("P-384"),
        OID_P521 => Some("P-521"),
        OID_SECP256K1 => Some("secp256k1"),
        _ => None,
    }
}

/// RFC 5208 §5 / RFC 5958 §2: `SEQUENCE { version INTEGER, privateKeyAlgorithm
/// AlgorithmIdentifier, privateKey OCTET STRING, … }`, and RFC 5280 §4.1.1.2:
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }`.
pub(super) fn pkcs8_kind(der: &[u8]) -> KeyKind {
    let algorithm = || {
        let info = der_expect(der, TAG_SEQUENCE)?.0;
        let rest = der_expect(info, TAG_INTEGER)?.1;
        let algorithm_id = der_expect(rest, TAG_SEQUENCE)?.0;
        let (oid, parameters) = der_expect(algorithm_id, TAG_OID)?;
        Some((oid, parameters))
    };
    let Some((oid, parameters)) = algorithm() else {
        return KeyKind::Unknown;
    };
    match oid {
        OID_RSA_ENCRYPTION => KeyKind::Rsa,
        OID_RSASSA_PSS => KeyKind::Other("RSA-PSS"),
        // RFC 5480 §2.1.1: the parameters of id-ecPublicKey name the curve.
        OID_EC_PUBLIC_KEY => {
            KeyKind::Ec(der_expect(parameters, TAG_OID).and_then(|(named, _)| curve(named)))
        }
        OID_ED25519 => KeyKind::Ed25519,
        OID_ED448 => KeyKind::Other("Ed448"),
        OID_X25519 => KeyKind::Other("X25519"),
        OID_X448 => KeyKind::Other("X448"),
        _ => KeyKind::Unknown,
    }
}

pub(super) fn sec1_kind(der: &[u8]) -> KeyKind {
    if let Some(named) = sec1_curve(der).and_then(curve) {
        return KeyKind::Ec(Some(named));
    }
    // Explicit curve parameters (`openssl ec -param_enc explicit`) name no curve, but aws-lc
    // still recognises P-256 in them.
    let p256 = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der).is_ok();
    KeyKind::Ec(p256.then_some("P-256"))
}

/// RFC 5915 §3: `ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING,
/// parameters [0] ECParameters OPTIONAL, publicKey [1] BIT STRING OPTIONAL }`; returns the
/// named curve's OID when present.
pub(super) fn sec1_curve(der: &[u8]) -> Option<&[u8]> {
    let key = der_expect(der, TAG_SEQUENCE)?.0;
    let rest = der_expect(key, TAG_INTEGER)?.1;
    let rest = der_expect(rest, TAG_OCTET_STRING)?.1;
    let parameters = der_expect(rest, TAG_CONTEXT_0)?.0;
    Some(der_expect(parameters, TAG_OID)?.0)
}

/// The contents of the DER element at the start of `input` if its tag is `tag`, and the bytes
/// after it. `None` on any other tag or a malformed length (only definite lengths up to 4 bytes).
pub(super) fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (octets, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
        if octets.is_empty() || octets.len() > 4 {
            return None;
        }
        let len = octets
            .iter()
            .fold(0usize, |len, octet| (len << 8) | usize::from(*octet));
        (len, rest)
    };
    rest.split_at_checked(len)
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
