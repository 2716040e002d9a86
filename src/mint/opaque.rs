//! Opaque access tokens: `<family id>.<43 base64url chars of 256 random bits>`.
//!
//! The store keeps them under the SHA-256 digest of the whole token (never the token), next to
//! their family's keys (same cluster slot), with their claims and TTL.

use aws_lc_rs::{digest, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::refresh::{FamilyId, is_family_id};

/// A freshly minted opaque access token and the digest the store keys it by.
#[derive(Clone, PartialEq, Eq)]
pub struct OpaqueToken {
    pub token: String,
    pub digest: String,
}

impl std::fmt::Debug for OpaqueToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpaqueToken")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

pub fn mint(family: &FamilyId) -> OpaqueToken {
    let mut random = [0u8; 32];
    rand::fill(&mut random).expect("the system RNG works");
    let mut token = String::with_capacity(22 + 1 + 43);
    token.push_str(family.as_str());
    token.push('.');
    B64.encode_string(random, &mut token);
    let digest = digest_of(&token);
    OpaqueToken { token, digest }
}

/// base64url(SHA-256(token)): the store key of an opaque token.
pub fn digest_of(token: &str) -> String {
    B64.encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// The family id of a token shaped like an opaque access token.
pub fn family_of(token: &str) -> Option<&str> {
    let (family, random) = token.split_once('.')?;
    (is_family_id(family)
        && random.len() == 43
        && random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_tokens_carry_their_family_and_are_keyed_by_digest() {
        let f = FamilyId::random();
        let t = mint(&f);
        assert_eq!(family_of(&t.token), Some(f.as_str()));
        assert_eq!(t.digest, digest_of(&t.token));
        assert_ne!(mint(&f).token, t.token);
        assert!(!format!("{t:?}").contains(&t.token));
        assert_eq!(family_of("not.an-opaque-token"), None);
    }
}
