//! The upstream's refresh token, kept in its family encrypted (docs/design.md §4.11).
//!
//! AES-256-GCM with the family id as associated data, so a kept token cannot be moved to
//! another family's record. The keys are a ring: the first encrypts, every one decrypts; each
//! sealed value names the key that made it (4 bytes of the key's own derivation), so opening
//! is one decryption, not a try of every key.
//!
//! Sealed layout: `version (1) || key id (4) || nonce (12) || ciphertext || tag (16)`.
//!
//! Caveat: the seal proves a value was made by the proxy for this family, not that it is the
//! family's latest one; a writer to the store could put back an older kept token of the same
//! family (docs/threat-model.md).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hmac, rand};

const VERSION: u8 = 1;
const KID_BYTES: usize = 4;
const TAG_BYTES: usize = 16;
const HEADER: usize = 1 + KID_BYTES + NONCE_LEN;
/// What associated data starts with: a value sealed for another purpose never opens here.
const AAD_LABEL: &[u8] = b"refresh-proxy kept upstream token v1\0";
/// The derivation label when the key comes from a refresh-token secret
/// (`tokens.upstream_token_keys` not set).
const DERIVE_LABEL: &[u8] = b"refresh-proxy kept upstream token key v1";

/// The most bytes of an upstream refresh token the proxy keeps. Keycloak's are JWTs of about
/// 1 KB; an answer with a longer one is not captured (`capture_skipped_total{reason}`).
pub const MAX_KEPT_TOKEN: usize = 8 * 1024;

/// One key of the ring.
struct KeptKey {
    key: LessSafeKey,
    id: [u8; KID_BYTES],
}

/// The ring of keys kept upstream tokens are sealed and opened with.
pub struct KeptKeys {
    keys: Vec<KeptKey>,
}

impl std::fmt::Debug for KeptKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeptKeys({} keys, <redacted>)", self.keys.len())
    }
}

/// An upstream refresh token in clear: only for the call that uses it. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeptToken(String);

impl KeptToken {
    pub fn new(token: impl Into<String>) -> KeptToken {
        KeptToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for KeptToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptToken(<redacted>)")
    }
}

fn aad(family: &str) -> Aad<Vec<u8>> {
    Aad::from([AAD_LABEL, family.as_bytes()].concat())
}

impl KeptKey {
    fn from_key_bytes(bytes: &[u8; 32]) -> KeptKey {
        let id_mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), b"key id");
        let mut id = [0u8; KID_BYTES];
        id.copy_from_slice(&id_mac.as_ref()[..KID_BYTES]);
        KeptKey {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
            ),
            id,
        }
    }

    /// A key from a configured secret (any length; at least 32 bytes is checked by config):
    /// HMAC-SHA256 of `label` under the secret, so the same secret used for two purposes
    /// gives two unrelated keys.
    fn from_secret(secret: &[u8], label: &[u8]) -> KeptKey {
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), label);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(mac.as_ref());
        Self::from_key_bytes(&bytes)
    }
}

impl KeptKeys {
    /// The ring from `tokens.upstream_token_keys` (the first encrypts).
    pub fn from_secrets<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<KeptKeys> {
        let keys: Vec<KeptKey> = secrets
            .into_iter()
            .map(|s| KeptKey::from_secret(s, b"refresh-proxy kept upstream token key"))
            .collect();
        (!keys.is_empty()).then_some(KeptKeys { keys })
    }

    /// The ring derived from the refresh-token secrets (the default): one key each, in the
    /// same order, so rotating the refresh-token keys rotates these too.
    pub fn derived_from<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Option<KeptKeys> {
        let keys: Vec<KeptKey> = secrets
            .into_iter()
            .map(|s| KeptKey::from_secret(s, DERIVE_LABEL))
            .collect();
        (!keys.is_empty()).then_some(KeptKeys { keys })
    }

    /// One random key, for a process whose families die with it (the memory store without a
    /// configured refresh-token key).
    pub fn generate() -> KeptKeys {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes).expect("the system RNG works");
        KeptKeys {
            keys: vec![KeptKey::from_key_bytes(&bytes)],
        }
    }

    /// Seals `token` for family `family` with the first key.
    pub fn seal(&self, family: &str, token: &KeptToken) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).expect("the system RNG works");
        let mut out = Vec::with_capacity(HEADER + token.0.len() + TAG_BYTES);
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = token.0.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(family), &mut body)
            .expect("AES-GCM seals any length the proxy keeps");
        out.extend_from_slice(&body);
        out
    }

    /// Opens a sealed value of family `family`: `None` when no key of the ring made it, it was
    /// made for another family, or it was changed.
    pub fn open(&self, family: &str, sealed: &[u8]) -> Option<KeptToken> {
        if sealed.len() < HEADER + TAG_BYTES || sealed[0] != VERSION {
            return None;
        }
        let id = &sealed[1..1 + KID_BYTES];
        let key = self.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1 + KID_BYTES..HEADER]).ok()?;
        let mut body = sealed[HEADER..].to_vec();
        let clear = key.key.open_in_place(nonce, aad(family), &mut body).ok()?;
        String::from_utf8(clear.to_vec()).ok().map(KeptToken)
    }

    /// Whether `sealed` was made with a key other than the first (re-seal it when the
    /// upstream next rotates the token).
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        sealed.get(1..1 + KID_BYTES) != Some(&self.keys[0].id[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(secrets: &[&str]) -> KeptKeys {
        KeptKeys::from_secrets(secrets.iter().map(|s| s.as_bytes())).expect("one key at least")
    }

    #[test]
    fn a_sealed_token_opens_for_its_family_only() {
        let keys = ring(&["k1-0123456789abcdef0123456789abcdef"]);
        let token = KeptToken::new("upstream-refresh-token-value");
        let sealed = keys.seal("fam-A", &token);
        assert_eq!(keys.open("fam-A", &sealed), Some(token.clone()));
        assert_eq!(keys.open("fam-B", &sealed), None, "the family id is bound");
        let clear = token.expose().as_bytes();
        assert!(
            !sealed.windows(clear.len()).any(|w| w == clear),
            "the token is not in the sealed bytes"
        );
        assert_ne!(
            keys.seal("fam-A", &token),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn a_changed_byte_or_an_unknown_key_does_not_open() {
        let keys = ring(&["k1-0123456789abcdef0123456789abcdef"]);
        let sealed = keys.seal("f", &KeptToken::new("t"));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(keys.open("f", &bad), None, "byte {i} changed");
        }
        let other = ring(&["k2-0123456789abcdef0123456789abcdef"]);
        assert_eq!(other.open("f", &sealed), None);
        assert_eq!(keys.open("f", &sealed[..sealed.len() - 1]), None);
        assert_eq!(keys.open("f", &[]), None);
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = ring(&["old-0123456789abcdef0123456789abcdef"]);
        let sealed_old = old.seal("f", &KeptToken::new("t1"));
        let rotated = ring(&[
            "new-0123456789abcdef0123456789abcdef",
            "old-0123456789abcdef0123456789abcdef",
        ]);
        assert_eq!(
            rotated
                .open("f", &sealed_old)
                .map(|t| t.expose().to_owned()),
            Some("t1".to_owned())
        );
        assert!(rotated.is_stale(&sealed_old));
        let sealed_new = rotated.seal("f", &KeptToken::new("t2"));
        assert!(!rotated.is_stale(&sealed_new));
        assert_eq!(old.open("f", &sealed_new), None, "made with the new key");
    }

    #[test]
    fn derived_keys_differ_from_configured_ones_of_the_same_secret() {
        let secret = b"same-secret-0123456789abcdef012345";
        let derived = KeptKeys::derived_from([&secret[..]]).expect("a key");
        let configured = KeptKeys::from_secrets([&secret[..]]).expect("a key");
        let sealed = derived.seal("f", &KeptToken::new("t"));
        assert_eq!(configured.open("f", &sealed), None);
        assert!(format!("{derived:?}").contains("redacted"));
        assert_eq!(
            format!("{:?}", KeptToken::new("secret")),
            "KeptToken(<redacted>)"
        );
    }
}
