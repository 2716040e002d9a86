//! The refresh-token format (`mint::refresh`): `RefreshKeys::parse`, `RefreshTokenKey::parse`,
//! `FamilyId::parse`, and the chain `first` / `successor` / `successors` / `descends`.
//!
//! Input: bytes; as text, a presented refresh token; the first bytes also seed a family.
//!
//! Properties:
//! - parsing arbitrary text never panics; `FamilyId::parse` accepts exactly 22 base64url
//!   characters; a token a ring accepts names a family id and a generation at most
//!   `MAX_GENERATION`, and is accepted by exactly the ring's key whose id it carries and by no
//!   key outside the ring;
//! - round trip: a family's generation 0 (`first`) and each successor (up to 8, with either key
//!   of a two-key ring) parse back to the same family and the next generation, with the
//!   verifier the mint returned; `successor_token` and `successor` agree; the chain `descends`
//!   from the stored verifier; a retry derives the same successor;
//! - any one-byte change of a minted token is refused.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::internal::mint::refresh::{FamilyId, MAX_GENERATION, RefreshKeys, RefreshTokenKey};

const NEW: &[u8] = b"fuzz: the current refresh-token key, 32+ bytes";
const OLD: &[u8] = b"fuzz: the previous refresh-token key, 32+ bytes";
const OTHER: &[u8] = b"fuzz: a key of another deployment, 32+ bytes";

struct Keys {
    ring: RefreshKeys,
    new: RefreshTokenKey,
    old: RefreshTokenKey,
    other: RefreshTokenKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        ring: RefreshKeys::new(vec![
            RefreshTokenKey::from_secret(NEW),
            RefreshTokenKey::from_secret(OLD),
        ])
        .expect("two keys"),
        new: RefreshTokenKey::from_secret(NEW),
        old: RefreshTokenKey::from_secret(OLD),
        other: RefreshTokenKey::from_secret(OTHER),
    })
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn arbitrary_text(k: &Keys, text: &str) {
    let family = FamilyId::parse(text);
    let shape = text.len() == 22 && text.bytes().all(is_b64url);
    assert_eq!(family.is_some(), shape, "FamilyId::parse");
    if let Some(f) = family {
        assert_eq!(f.as_str(), text);
    }
    let by_new = k.new.parse(text);
    let by_old = k.old.parse(text);
    assert!(
        k.other.parse(text).is_none(),
        "a key outside the ring accepts {text:?}"
    );
    assert!(
        by_new.is_none() || by_old.is_none(),
        "two keys accept one token"
    );
    let by_ring = k.ring.parse(text);
    assert_eq!(
        by_ring,
        by_new.clone().or(by_old.clone()),
        "the ring picks the key by id"
    );
    if let Some(t) = by_ring {
        assert!(FamilyId::parse(t.family).is_some());
        assert!(t.generation <= MAX_GENERATION);
        let kid = if by_new.is_some() {
            k.new.kid()
        } else {
            k.old.kid()
        };
        let prefix = format!("{}.{}.{kid}", t.family, t.generation);
        assert!(text.starts_with(&prefix), "{text:?} is not {prefix}…");
    }
}

fn round_trip(k: &Keys, data: &[u8]) {
    let mut seed = [0u8; 19];
    let n = data.len().min(seed.len());
    seed[..n].copy_from_slice(&data[..n]);
    let family = FamilyId::parse(&B64.encode(&seed[..16])).expect("16 bytes are a family id");
    let steps = seed[16] % 9;
    let (mut token, mut verifier) = k.ring.first(&family);
    for generation in 0..=u64::from(steps) {
        let p = k.ring.parse(&token).expect("a minted token parses");
        assert_eq!((p.family, p.generation), (family.as_str(), generation));
        assert_eq!(p.verifier(), verifier, "the verifier the mint returned");
        // Any one-byte change is refused.
        let at = usize::from(seed[17]) % token.len();
        let mut changed = token.clone().into_bytes();
        if changed[at] != seed[18] && seed[18].is_ascii() {
            changed[at] = seed[18];
            let changed = String::from_utf8(changed).expect("ASCII");
            assert!(
                k.ring.parse(&changed).is_none(),
                "{changed:?} (from {token:?}) parses"
            );
        }
        let successors = k.ring.successors(&p);
        assert_eq!(successors.presented(), verifier);
        let index = usize::from(seed[16] >> 7) & 1;
        let next = k.ring.successor(index, &p);
        assert_eq!(k.ring.successor_token(&successors, index, &p), next);
        assert_eq!(
            k.ring.successor(index, &p),
            next,
            "a retry gets the same successor"
        );
        let parsed = k.ring.parse(&next).expect("a successor parses");
        assert_eq!(
            (parsed.family, parsed.generation),
            (family.as_str(), generation + 1)
        );
        assert_eq!(parsed.verifier(), successors.verifiers()[index]);
        assert!(
            k.ring.descends(&parsed, generation, &verifier),
            "the chain leads to it"
        );
        assert!(
            !k.ring.descends(&parsed, generation + 1, &parsed.verifier()),
            "not ahead"
        );
        verifier = parsed.verifier();
        token = next;
    }
}

fuzz_target!(|data: &[u8]| {
    let k = keys();
    if let Ok(text) = std::str::from_utf8(data) {
        arbitrary_text(k, text);
    }
    round_trip(k, data);
});
