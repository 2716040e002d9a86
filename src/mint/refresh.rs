//! Refresh tokens: opaque, URL-safe, carrying their family id and generation, checked with a
//! server key and, in the store, with a per-family verifier.
//!
//! ```text
//! <family id: 22 base64url chars>.<generation: decimal>.<key id: 4 chars><64 base64url chars: x (32 bytes) ‖ tag (16 bytes)>
//! ```
//!
//! - The key id says which key of the ring ([`RefreshKeys`]) made the token: the first key
//!   mints, every key is accepted, so keys rotate without logging anyone out.
//!
//! - The family id (128 random bits) lets the store find the family in O(1).
//! - `x` of generation 0 is 256 random bits. The store keeps the family's **verifier**
//!   `v(x) = SHA-256(x)` truncated to 128 bits, for the live generation only, and each next
//!   generation's `x` is `HMAC(chain key, family ‖ generation ‖ v(previous x))`. So the token of
//!   generation `N+1` is a function of the token of generation `N` and the server key: the
//!   proxy answers a retry of `N` with the same `N+1` again without storing any answer
//!   (the grace rule in [`crate::grant::rules`]).
//! - `tag` is `HMAC(tag key, family ‖ generation ‖ x)`, truncated to 128 bits: a token the proxy
//!   did not mint is recognised without a store round trip and never touches a family (a forged
//!   token cannot trigger reuse detection). It is compared in constant time.
//! - A redemption is accepted only when the presented `x` digests to the stored verifier (the
//!   live token), or its successor does (the previous token, within the grace window), or the
//!   family's chain leads from the stored verifier to it (a token ahead of a store that lost
//!   its last writes; [`RefreshTokenKey::descends`]). The check runs in the same atomic step as
//!   the rotation.
//!
//! What each secret can do: the server key alone makes tags, but no token the store accepts
//! (it never sees a verifier); the store alone (read or write) holds verifiers, which are
//! digests, and no key to make a tag or the next `x`; the key *and* a token of a family, or
//! the key *and* read access to the store, derive that family's later tokens. The key alone
//! can still present a forged *rotated-out* generation, which is reuse and ends the family:
//! it can log a family out, never in.
//!
//! The same key seals each family's fixed fields ([`RefreshTokenKey::seal`]): a record changed
//! in the store is refused, never signed.
//!
//! Every character is in `[A-Za-z0-9_.-]`, so clients can send tokens unencoded (docs/design.md §4.8).
//!
//! ```
//! use refresh_proxy::internal::mint::refresh::{FamilyId, RefreshTokenKey};
//! let key = RefreshTokenKey::from_secret(b"a server secret of at least 32 bytes!!");
//! let family = FamilyId::random();
//! let (first, verifier) = key.first(&family);
//! let parsed = key.parse(&first).expect("ours");
//! assert_eq!((parsed.family, parsed.generation), (family.as_str(), 0));
//! assert_eq!(parsed.verifier(), verifier);
//! let (second, _) = key.successor(&parsed);
//! assert_eq!(key.parse(&second).expect("ours").generation, 1);
//! assert_eq!(key.successor(&parsed).0, second, "deterministic: a retry gets the same token");
//! assert!(key.parse("someone-elses-token").is_none());
//! ```

use aws_lc_rs::{constant_time, digest, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use std::fmt::Write as _;

const FAMILY_BYTES: usize = 16;
const FAMILY_CHARS: usize = 22;
const X_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const SECRET_CHARS: usize = 64;
/// The largest generation a token may carry: 2^53 - 1, the largest integer the Redis store's
/// Lua numbers (doubles) hold exactly. A chain rotating every second reaches it in 285 million
/// years.
pub const MAX_GENERATION: u64 = (1 << 53) - 1;
/// 2^53 - 1 has 16 decimal digits.
const MAX_GENERATION_DIGITS: usize = 16;
/// How far ahead of the store a presented token may be and still be checked by walking the
/// chain (a store that lost its last writes is behind by one rotation per lost write).
pub const MAX_AHEAD: u64 = 64;
/// Verifier and seal sizes: 96 bits. A verifier is never shown to anyone who could use it (only
/// the store holds it), and a seal is a MAC under a key only the proxy has: either is found only
/// by guessing, one online request per guess. 96 bits keep a family's record in a smaller Redis
/// allocation than 128 would (see the store's `CREATE`).
pub const DIGEST_BYTES: usize = 12;

/// The digest of a generation's secret part that the store keeps to check the token it is
/// shown (never the token itself).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Verifier(pub [u8; DIGEST_BYTES]);

/// A MAC over a family's fixed fields, kept with them in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seal(pub [u8; DIGEST_BYTES]);

macro_rules! digest_newtype {
    ($t:ident) => {
        impl $t {
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }

            /// From the store's bytes; `None` when the length is wrong.
            pub fn from_slice(b: &[u8]) -> Option<$t> {
                <[u8; DIGEST_BYTES]>::try_from(b).ok().map($t)
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    };
}
digest_newtype!(Verifier);
digest_newtype!(Seal);

fn verifier_of(x: &[u8]) -> Verifier {
    let d = digest::digest(&digest::SHA256, x);
    let mut v = [0u8; DIGEST_BYTES];
    v.copy_from_slice(&d.as_ref()[..DIGEST_BYTES]);
    Verifier(v)
}

/// A family's fixed fields, as sealed: everything minted tokens carry from the family.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    pub family: &'a str,
    pub client_id: &'a str,
    pub subject: &'a str,
    pub granted_scope: &'a str,
    pub format: &'a str,
    pub at_claims: &'a str,
    pub id_claims: &'a str,
    pub auth_time: Option<i64>,
    pub expires_at_ms: i64,
    /// The key the family is bound to (`""`: none).
    pub binding: &'a str,
}

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

/// Characters of a key id: 24 bits of the key's own derivation, base64url.
pub const KID_CHARS: usize = 4;
/// The most refresh-token keys a ring may hold ([`crate::config::MAX_REFRESH_KEYS`]).
pub use crate::config::MAX_REFRESH_KEYS as MAX_KEYS;

/// One server key refresh tokens are derived and checked with.
pub struct RefreshTokenKey {
    tag: hmac::Key,
    chain: hmac::Key,
    seal: hmac::Key,
    /// Which key made a token: the first [`KID_CHARS`] characters of its secret part.
    kid: [u8; KID_CHARS],
}

impl std::fmt::Debug for RefreshTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokenKey(<redacted>)")
    }
}

/// A refresh token the proxy minted, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken<'a> {
    pub family: &'a str,
    pub generation: u64,
    x: [u8; X_BYTES],
}

impl std::fmt::Debug for RefreshToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RefreshToken {
            family,
            generation,
            x: _,
        } = self;
        f.debug_struct("RefreshToken")
            .field("family", family)
            .field("generation", generation)
            .finish_non_exhaustive()
    }
}

impl RefreshToken<'_> {
    /// The digest of this token's secret part, as the store keeps it for the live generation.
    pub fn verifier(&self) -> Verifier {
        verifier_of(&self.x)
    }
}

impl RefreshTokenKey {
    /// Derives the two HMAC keys from a configured secret (`tokens.refresh_token_key`).
    pub fn from_secret(secret: &[u8]) -> RefreshTokenKey {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive =
            |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        let id = hmac::sign(&root, b"refresh-proxy refresh-token key id v1");
        let mut kid = [0u8; KID_CHARS];
        B64.encode_slice(&id.as_ref()[..3], &mut kid)
            .expect("3 bytes are 4 base64url characters");
        RefreshTokenKey {
            tag: derive(b"refresh-proxy refresh-token tag v2"),
            chain: derive(b"refresh-proxy refresh-token chain v2"),
            seal: derive(b"refresh-proxy family seal v1"),
            kid,
        }
    }

    /// The key id tokens made with this key carry.
    pub fn kid(&self) -> &str {
        std::str::from_utf8(&self.kid).expect("base64url is ASCII")
    }

    /// A random key, for a process whose tokens need not outlive it (the memory store).
    pub fn generate() -> RefreshTokenKey {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret).expect("the system RNG works");
        Self::from_secret(&secret)
    }

    /// Generation 0 of a new family, and the verifier the store keeps for it.
    pub fn first(&self, family: &FamilyId) -> (String, Verifier) {
        let mut x = [0u8; X_BYTES];
        rand::fill(&mut x).expect("the system RNG works");
        (self.encode(family.as_str(), 0, &x), verifier_of(&x))
    }

    /// The token of the generation after `token`'s, and its verifier.
    pub fn successor(&self, token: &RefreshToken<'_>) -> (String, Verifier) {
        let generation = token.generation.saturating_add(1);
        let x = self.chain_x(token.family, generation, &token.verifier());
        (self.encode(token.family, generation, &x), verifier_of(&x))
    }

    /// Whether the family's chain leads from the stored state (generation `current`, verifier
    /// `verifier`) to `token`: a token ahead of a store that lost its last writes. Walks at
    /// most [`MAX_AHEAD`] generations; a token further ahead is not accepted.
    pub fn descends(&self, token: &RefreshToken<'_>, current: u64, verifier: &Verifier) -> bool {
        if token.generation <= current || token.generation - current > MAX_AHEAD {
            return false;
        }
        let mut v = *verifier;
        let mut x = [0u8; X_BYTES];
        for generation in current + 1..=token.generation {
            x = self.chain_x(token.family, generation, &v);
            v = verifier_of(&x);
        }
        constant_time::verify_slices_are_equal(&x, &token.x).is_ok()
    }

    fn chain_x(&self, family: &str, generation: u64, previous: &Verifier) -> [u8; X_BYTES] {
        let mac = self.mac(&self.chain, family, generation, previous.as_bytes());
        let mut x = [0u8; X_BYTES];
        x.copy_from_slice(&mac.as_ref()[..X_BYTES]);
        x
    }

    /// The MAC over a family's fixed fields that the store keeps with them.
    pub fn seal(&self, f: &Sealed<'_>) -> Seal {
        let mut ctx = hmac::Context::with_key(&self.seal);
        for field in [
            f.family,
            f.client_id,
            f.subject,
            f.granted_scope,
            f.format,
            f.at_claims,
            f.id_claims,
        ] {
            // Length-prefixed, so no two field lists give the same input.
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        match f.auth_time {
            Some(t) => {
                ctx.update(&[1]);
                ctx.update(&t.to_be_bytes());
            }
            None => ctx.update(&[0]),
        }
        ctx.update(&f.expires_at_ms.to_be_bytes());
        // Only a bound family's seal covers a binding, so every seal made before bindings
        // existed still verifies; the length prefix keeps the inputs apart.
        if !f.binding.is_empty() {
            ctx.update(b"b");
            ctx.update(&(f.binding.len() as u64).to_be_bytes());
            ctx.update(f.binding.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; DIGEST_BYTES];
        out.copy_from_slice(&tag.as_ref()[..DIGEST_BYTES]);
        Seal(out)
    }

    /// Whether `seal` is the seal of `fields`, compared in constant time.
    pub fn check_seal(&self, fields: &Sealed<'_>, seal: &Seal) -> bool {
        constant_time::verify_slices_are_equal(self.seal(fields).as_bytes(), seal.as_bytes())
            .is_ok()
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
            || secret.len() != KID_CHARS + SECRET_CHARS
            || secret.as_bytes()[..KID_CHARS] != self.kid
        {
            return None;
        }
        let secret = &secret[KID_CHARS..];
        let generation: u64 = generation.parse().ok()?;
        if generation > MAX_GENERATION {
            return None;
        }
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
        let mut out = String::with_capacity(
            FAMILY_CHARS + 2 + MAX_GENERATION_DIGITS + KID_CHARS + SECRET_CHARS,
        );
        out.push_str(family);
        out.push('.');
        // Into the buffer: `to_string` would allocate a second one.
        let _ = write!(out, "{generation}");
        out.push('.');
        out.push_str(self.kid());
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

/// A token's successors, one per key of the ring ([`RefreshKeys::successors`]).
pub struct Successors {
    /// The presented token's own verifier (the successors are derived from it).
    presented: Verifier,
    xs: [[u8; X_BYTES]; MAX_KEYS],
    verifiers: [Verifier; MAX_KEYS],
    len: usize,
}

impl Successors {
    /// The verifier of the token they follow.
    pub fn presented(&self) -> Verifier {
        self.presented
    }

    /// Their verifiers, the current key's first.
    pub fn verifiers(&self) -> &[Verifier] {
        &self.verifiers[..self.len]
    }
}

impl std::fmt::Debug for Successors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Successors")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The refresh-token keys in use: the first mints, every one is accepted (key rotation without
/// logging anyone out: add the new key first, keep the old one until its tokens are gone).
pub struct RefreshKeys {
    keys: Vec<RefreshTokenKey>,
}

impl std::fmt::Debug for RefreshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(RefreshTokenKey::kid).collect();
        f.debug_struct("RefreshKeys").field("kids", &kids).finish()
    }
}

impl RefreshKeys {
    /// A ring of 1 to [`MAX_KEYS`] keys with distinct ids; the first mints.
    pub fn new(keys: Vec<RefreshTokenKey>) -> Result<RefreshKeys, &'static str> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err("one to four refresh-token keys");
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err("two refresh-token keys are the same (or share a key id)");
            }
        }
        Ok(RefreshKeys { keys })
    }

    /// One key.
    pub fn single(key: RefreshTokenKey) -> RefreshKeys {
        RefreshKeys { keys: vec![key] }
    }

    /// The key that mints.
    pub fn current(&self) -> &RefreshTokenKey {
        &self.keys[0]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parses and authenticates a token with the key its id names; `None` when no key of the
    /// ring made it.
    pub fn parse<'a>(&self, token: &'a str) -> Option<RefreshToken<'a>> {
        let (_, secret) = token.rsplit_once('.')?;
        let kid = secret.as_bytes().get(..KID_CHARS)?;
        let key = self.keys.iter().find(|k| k.kid == kid)?;
        key.parse(token)
    }

    /// Generation 0 of a new family, with the current key.
    pub fn first(&self, family: &FamilyId) -> (String, Verifier) {
        self.current().first(family)
    }

    /// `token`'s successor as each key would make it (index 0: the current key, whose
    /// successor a rotation stores). A retry within the grace window matches whichever key
    /// made the live token, so a key change between the first use and the retry logs no one
    /// out. Computed once per refresh, without allocating; the token string is written only
    /// for the one that is answered ([`RefreshKeys::successor_token`]).
    pub fn successors(&self, token: &RefreshToken<'_>) -> Successors {
        let generation = token.generation.saturating_add(1);
        let previous = token.verifier();
        let mut s = Successors {
            presented: previous,
            xs: [[0; X_BYTES]; MAX_KEYS],
            verifiers: [Verifier::default(); MAX_KEYS],
            len: self.keys.len(),
        };
        for (i, k) in self.keys.iter().enumerate() {
            s.xs[i] = k.chain_x(token.family, generation, &previous);
            s.verifiers[i] = verifier_of(&s.xs[i]);
        }
        s
    }

    /// The successor token key `index` makes, from [`RefreshKeys::successors`].
    pub fn successor_token(
        &self,
        successors: &Successors,
        index: usize,
        token: &RefreshToken<'_>,
    ) -> String {
        let index = if index < successors.len { index } else { 0 };
        let key = self.keys.get(index).unwrap_or_else(|| self.current());
        key.encode(
            token.family,
            token.generation.saturating_add(1),
            &successors.xs[index],
        )
    }

    /// `token`'s successor as key `index` makes it.
    pub fn successor(&self, index: usize, token: &RefreshToken<'_>) -> String {
        self.keys
            .get(index)
            .unwrap_or_else(|| self.current())
            .successor(token)
            .0
    }

    /// Whether some key's chain leads from the stored state to `token`
    /// ([`RefreshTokenKey::descends`]).
    pub fn descends(&self, token: &RefreshToken<'_>, current: u64, verifier: &Verifier) -> bool {
        self.keys
            .iter()
            .any(|k| k.descends(token, current, verifier))
    }

    /// The seal of a family's fixed fields, with the current key.
    pub fn seal(&self, fields: &Sealed<'_>) -> Seal {
        self.current().seal(fields)
    }

    /// Which key's seal `seal` is (0: the current key's), or `None`.
    pub fn check_seal(&self, fields: &Sealed<'_>, seal: &Seal) -> Option<usize> {
        self.keys.iter().position(|k| k.check_seal(fields, seal))
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
        let (t, _) = k.first(&f);
        assert!(t.bytes().all(|b| is_b64url(b) || b == b'.'), "{t}");
        assert_eq!(t.len(), FAMILY_CHARS + 1 + 1 + 1 + KID_CHARS + SECRET_CHARS);
        assert_ne!(k.first(&f).0, t, "generation 0 is random");
    }

    #[test]
    fn the_chain_is_deterministic_and_authenticated() {
        let k = key();
        let f = FamilyId::random();
        let (t0, v0) = k.first(&f);
        let p0 = k.parse(&t0).expect("ours");
        assert_eq!(p0.verifier(), v0);
        let (t1, v1) = k.successor(&p0);
        let p1 = k.parse(&t1).expect("ours");
        assert_eq!(p1.generation, 1);
        assert_eq!(p1.family, f.as_str());
        assert_eq!(p1.verifier(), v1);
        assert_ne!(v1, v0);
        assert_eq!(k.successor(&p0), (t1.clone(), v1));
        assert_ne!(k.successor(&p1).0, t1);
    }

    #[test]
    fn tampered_or_foreign_tokens_are_not_ours() {
        let k = key();
        let (t, _) = k.first(&FamilyId::random());
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
    fn the_largest_generation_parses_and_no_larger_one() {
        let k = key();
        let f = FamilyId::random();
        let t = k.encode(f.as_str(), MAX_GENERATION, &[7; X_BYTES]);
        assert_eq!(k.parse(&t).expect("ours").generation, MAX_GENERATION);
        for g in [MAX_GENERATION + 1, u64::MAX] {
            let t = k.encode(f.as_str(), g, &[7; X_BYTES]);
            assert!(k.parse(&t).is_none(), "{g}");
        }
    }

    #[test]
    fn the_chain_is_walked_from_the_stored_verifier_and_no_further_than_max_ahead() {
        let k = key();
        let f = FamilyId::random();
        let (t0, v0) = k.first(&f);
        let mut tokens = vec![(t0, v0)];
        for _ in 0..MAX_AHEAD + 1 {
            let last = tokens.last().expect("one").0.clone();
            tokens.push(k.successor(&k.parse(&last).expect("ours")));
        }
        let at = |g: usize| k.parse(&tokens[g].0).expect("ours");
        assert!(k.descends(&at(3), 1, &tokens[1].1), "1 -> 3");
        assert!(k.descends(&at(1), 0, &v0), "0 -> 1");
        assert!(!k.descends(&at(1), 1, &tokens[1].1), "not ahead");
        assert!(!k.descends(&at(3), 1, &tokens[2].1), "another verifier");
        assert!(!k.descends(&at(3), 1, &Verifier([9; DIGEST_BYTES])));
        let far = MAX_AHEAD as usize + 1;
        assert!(!k.descends(&at(far), 0, &v0), "further than MAX_AHEAD");
        assert!(k.descends(&at(far), 1, &tokens[1].1), "MAX_AHEAD exactly");
        // A token made with the key alone, at a generation ahead: a valid tag, not the chain.
        let forged = k.encode(f.as_str(), 2, &[1; X_BYTES]);
        assert!(!k.descends(&k.parse(&forged).expect("a valid tag"), 1, &tokens[1].1));
    }

    #[test]
    fn the_seal_covers_every_fixed_field() {
        let k = key();
        let base = Sealed {
            family: "f",
            client_id: "www",
            subject: "alice",
            granted_scope: "openid read",
            format: "jwt",
            at_claims: r#"{"aud":"api"}"#,
            id_claims: "",
            auth_time: Some(1),
            expires_at_ms: 10,
            binding: "",
        };
        let seal = k.seal(&base);
        assert!(k.check_seal(&base, &seal));
        let changed = [
            Sealed {
                family: "g",
                ..base
            },
            Sealed {
                client_id: "wwx",
                ..base
            },
            Sealed {
                subject: "root",
                ..base
            },
            Sealed {
                granted_scope: "openid read admin",
                ..base
            },
            Sealed {
                format: "opaque",
                ..base
            },
            Sealed {
                at_claims: r#"{"aud":"api","roles":["admin"]}"#,
                ..base
            },
            Sealed {
                id_claims: "{}",
                ..base
            },
            Sealed {
                auth_time: None,
                ..base
            },
            Sealed {
                expires_at_ms: 11,
                ..base
            },
            Sealed {
                binding: "jkt:abc",
                ..base
            },
            // Moving bytes between fields changes the seal too.
            Sealed {
                client_id: "wwwa",
                subject: "lice",
                ..base
            },
        ];
        for c in changed {
            assert!(!k.check_seal(&c, &seal), "{c:?}");
        }
        let other = RefreshTokenKey::from_secret(b"another secret, another deployment!");
        assert!(!other.check_seal(&base, &seal), "another key");
    }

    #[test]
    fn a_ring_accepts_every_key_and_mints_with_the_first() {
        let old = || RefreshTokenKey::from_secret(b"the old secret, at least 32 bytes long");
        let new = || RefreshTokenKey::from_secret(b"the new secret, at least 32 bytes long");
        assert_ne!(old().kid(), new().kid());
        let before = RefreshKeys::single(old());
        let during = RefreshKeys::new(vec![new(), old()]).expect("two keys");
        let after = RefreshKeys::single(new());
        let f = FamilyId::random();
        let (t_old, v_old) = before.first(&f);
        let p = during.parse(&t_old).expect("the old key is still accepted");
        assert_eq!(p.verifier(), v_old);
        assert!(after.parse(&t_old).is_none(), "until it is removed");
        // The successor is the current key's; a retry matches the old key's too.
        let successors = during.successors(&p);
        let vs = successors.verifiers();
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[1], before.successors(&p).verifiers()[0]);
        assert_eq!(vs[0], during.current().successor(&p).1);
        assert_eq!(
            during.successor_token(&successors, 1, &p),
            before.successor(0, &p)
        );
        let t_new = during.successor(0, &p);
        assert!(t_new.contains(&format!(".{}", new().kid())), "{t_new}");
        assert!(after.parse(&t_new).is_some());
        assert_eq!(during.successor(1, &p), before.successor(0, &p));
        // Seals: the current key seals; every key's seal is recognised, and says which.
        let fields = Sealed {
            family: f.as_str(),
            client_id: "www",
            subject: "alice",
            granted_scope: "read",
            format: "jwt",
            at_claims: "",
            id_claims: "",
            auth_time: None,
            expires_at_ms: 1,
            binding: "",
        };
        assert_eq!(during.check_seal(&fields, &before.seal(&fields)), Some(1));
        assert_eq!(during.check_seal(&fields, &during.seal(&fields)), Some(0));
        assert_eq!(after.check_seal(&fields, &before.seal(&fields)), None);
        assert!(RefreshKeys::new(vec![old(), old()]).is_err(), "duplicate");
        assert!(RefreshKeys::new(vec![]).is_err(), "empty");
    }

    #[test]
    fn debug_hides_the_secret_part() {
        let k = key();
        let (t, v) = k.first(&FamilyId::random());
        let p = k.parse(&t).expect("ours");
        let (_, secret) = t.rsplit_once('.').expect("dots");
        assert!(!format!("{p:?}").contains(&secret[..20]));
        assert_eq!(format!("{v:?}"), "Verifier(<redacted>)");
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key()), "RefreshTokenKey(<redacted>)");
    }
}
