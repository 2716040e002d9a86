//! Refresh tokens: opaque, URL-safe, carrying their family id and generation, checked with a
//! server key.
//!
//! ```text
//! <family id: 22 base64url chars>.<generation: decimal>.<64 base64url chars: x (32 bytes) ‖ tag (16 bytes)>
//! ```
//!
//! - The family id (128 random bits) lets the store find the family in O(1).
//! - `x` of generation 0 is 256 random bits; each next generation's `x` is
//!   `HMAC(chain key, family ‖ generation ‖ previous x)`. So the token of generation `N+1` is a
//!   function of the token of generation `N` and the server key: the proxy can answer a retry of
//!   `N` with the same `N+1` again without storing any answer (DESIGN §4.6), and the store holds
//!   no token and no digest of one, only the family's generation counter.
//! - `tag` is `HMAC(tag key, family ‖ generation ‖ x)`, truncated to 128 bits: a token the proxy
//!   did not mint is recognised without a store round trip and never touches a family (a forged
//!   token cannot trigger reuse detection). It is compared in constant time.
//!
//! Every character is in `[A-Za-z0-9_.-]`, so clients can send tokens unencoded (DESIGN §4.8).
//! Anyone holding the server key *and* a token of a family can derive that family's later
//! tokens; the key alone or the store alone gives nothing.
//!
//! ```
//! use refresh_proxy::mint::refresh::{FamilyId, RefreshTokenKey};
//! let key = RefreshTokenKey::from_secret(b"a server secret of at least 32 bytes!!");
//! let family = FamilyId::random();
//! let first = key.first(&family);
//! let parsed = key.parse(&first).expect("ours");
//! assert_eq!((parsed.family, parsed.generation), (family.as_str(), 0));
//! let second = key.next(&parsed);
//! assert_eq!(key.parse(&second).expect("ours").generation, 1);
//! assert_eq!(key.next(&parsed), second, "deterministic: a retry gets the same token");
//! assert!(key.parse("someone-elses-token").is_none());
//! ```

use aws_lc_rs::{constant_time, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::fmt::Write as _;

const FAMILY_BYTES: usize = 16;
const FAMILY_CHARS: usize = 22;
const X_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const SECRET_CHARS: usize = 64;
/// Generations are decimal; 20 digits hold any u64.
const MAX_GENERATION_DIGITS: usize = 20;

/// A family's id: 128 random bits, base64url.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FamilyId(String);

impl FamilyId {
    pub fn random() -> FamilyId {
        let mut bytes = [0u8; FAMILY_BYTES];
        rand::fill(&mut bytes).expect("the system RNG works");
        FamilyId(B64.encode(bytes))
    }

    /// A family id as it appears in a token or the store (checked for shape only).
    pub fn parse(s: &str) -> Option<FamilyId> {
        is_family_id(s).then(|| FamilyId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for FamilyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn is_family_id(s: &str) -> bool {
    s.len() == FAMILY_CHARS && s.bytes().all(is_b64url)
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The server key refresh tokens are derived and checked with.
pub struct RefreshTokenKey {
    tag: hmac::Key,
    chain: hmac::Key,
}

impl std::fmt::Debug for RefreshTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokenKey(<redacted>)")
    }
}

/// A refresh token the proxy minted, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken<'a> {
    pub family: &'a str,
    pub generation: u64,
    x: [u8; X_BYTES],
}

impl RefreshTokenKey {
    /// Derives the two HMAC keys from a configured secret (`tokens.refresh_token_key`).
    pub fn from_secret(secret: &[u8]) -> RefreshTokenKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        RefreshTokenKey {
            tag: derive(b"refresh-proxy refresh-token tag v1"),
            chain: derive(b"refresh-proxy refresh-token chain v1"),
        }
    }

    /// A random key, for a process whose tokens need not outlive it (the memory store).
    pub fn generate() -> RefreshTokenKey {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret).expect("the system RNG works");
        Self::from_secret(&secret)
    }

    /// Generation 0 of a new family.
    pub fn first(&self, family: &FamilyId) -> String {
        let mut x = [0u8; X_BYTES];
        rand::fill(&mut x).expect("the system RNG works");
        self.encode(family.as_str(), 0, &x)
    }

    /// The token of the generation after `token`'s.
    pub fn next(&self, token: &RefreshToken<'_>) -> String {
        let generation = token.generation.saturating_add(1);
        let x = self.mac(&self.chain, token.family, generation, &token.x);
        let mut next = [0u8; X_BYTES];
        next.copy_from_slice(&x.as_ref()[..X_BYTES]);
        self.encode(token.family, generation, &next)
    }

    /// Parses and authenticates a token; `None` when the proxy did not mint it.
    pub fn parse<'a>(&self, token: &'a str) -> Option<RefreshToken<'a>> {
        let mut parts = token.splitn(3, '.');
        let (family, generation, secret) = (parts.next()?, parts.next()?, parts.next()?);
        if !is_family_id(family)
            || generation.is_empty()
            || generation.len() > MAX_GENERATION_DIGITS
            || !generation.bytes().all(|b| b.is_ascii_digit())
            || (generation.len() > 1 && generation.starts_with('0'))
            || secret.len() != SECRET_CHARS
        {
            return None;
        }
        let generation: u64 = generation.parse().ok()?;
        let mut raw = [0u8; X_BYTES + TAG_BYTES];
        let n = B64.decode_slice(secret, &mut raw).ok()?;
        if n != raw.len() {
            return None;
        }
        let (x, tag) = raw.split_at(X_BYTES);
        let expected = self.mac(&self.tag, family, generation, x);
        constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_BYTES], tag).ok()?;
        let mut x_arr = [0u8; X_BYTES];
        x_arr.copy_from_slice(x);
        Some(RefreshToken {
            family,
            generation,
            x: x_arr,
        })
    }

    fn encode(&self, family: &str, generation: u64, x: &[u8; X_BYTES]) -> String {
        let tag = self.mac(&self.tag, family, generation, x);
        let mut raw = [0u8; X_BYTES + TAG_BYTES];
        raw[..X_BYTES].copy_from_slice(x);
        raw[X_BYTES..].copy_from_slice(&tag.as_ref()[..TAG_BYTES]);
        let mut out =
            String::with_capacity(FAMILY_CHARS + 2 + MAX_GENERATION_DIGITS + SECRET_CHARS);
        out.push_str(family);
        out.push('.');
        // Into the buffer: `to_string` would allocate a second one.
        let _ = write!(out, "{generation}");
        out.push('.');
        B64.encode_string(raw, &mut out);
        out
    }

    fn mac(&self, key: &hmac::Key, family: &str, generation: u64, x: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(family.as_bytes());
        ctx.update(&[0]);
        ctx.update(&generation.to_be_bytes());
        ctx.update(x);
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RefreshTokenKey {
        RefreshTokenKey::from_secret(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn tokens_are_url_safe_and_carry_256_random_bits() {
        let k = key();
        let f = FamilyId::random();
        let t = k.first(&f);
        assert!(t.bytes().all(|b| is_b64url(b) || b == b'.'), "{t}");
        assert_eq!(t.len(), FAMILY_CHARS + 1 + 1 + 1 + SECRET_CHARS);
        assert_ne!(k.first(&f), t, "generation 0 is random");
    }

    #[test]
    fn the_chain_is_deterministic_and_authenticated() {
        let k = key();
        let f = FamilyId::random();
        let t0 = k.first(&f);
        let p0 = k.parse(&t0).expect("ours");
        let t1 = k.next(&p0);
        let p1 = k.parse(&t1).expect("ours");
        assert_eq!(p1.generation, 1);
        assert_eq!(p1.family, f.as_str());
        assert_eq!(k.next(&p0), t1);
        assert_ne!(k.next(&p1), t1);
    }

    #[test]
    fn tampered_or_foreign_tokens_are_not_ours() {
        let k = key();
        let t = k.first(&FamilyId::random());
        let other = RefreshTokenKey::from_secret(b"another secret, another deployment!");
        assert!(other.parse(&t).is_none(), "another key");
        let (head, _) = t.rsplit_once('.').expect("dots");
        let bumped = t.replacen(".0.", ".1.", 1);
        assert!(k.parse(&bumped).is_none(), "generation changed");
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(
            k.parse(std::str::from_utf8(&flipped).expect("ascii"))
                .is_none()
        );
        for junk in [
            "",
            ".",
            "..",
            head,
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            &format!("{t}.extra"),
            &t.replacen(".0.", ".00.", 1),
            &t.replacen(".0.", ".+0.", 1),
            &"a".repeat(100_000),
            "ü.0.ü",
        ] {
            assert!(k.parse(junk).is_none(), "{junk:.40}");
        }
    }

    #[test]
    fn the_largest_generation_parses() {
        let k = key();
        let f = FamilyId::random();
        let t = k.encode(f.as_str(), u64::MAX, &[7; X_BYTES]);
        assert_eq!(k.parse(&t).expect("ours").generation, u64::MAX);
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key()), "RefreshTokenKey(<redacted>)");
    }
}
