//! The claims the proxy writes into the tokens it mints: RFC 9068 access-token claims, the
//! ID token's times, the `jti`, and the splice of the claims capture carried from the
//! upstream's tokens. Pure, apart from the random part of a `jti`.

use std::cell::RefCell;

use aws_lc_rs::rand;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Serialize;

/// RFC 9068 §2.2 access-token claims the proxy sets (carried claims are appended).
#[derive(Serialize)]
pub(crate) struct AccessClaims<'a> {
    pub(crate) iss: &'a str,
    pub(crate) sub: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_time: Option<i64>,
    /// RFC 9449 §6.1 / RFC 7800: the key a DPoP-bound token is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cnf: Option<Confirmation<'a>>,
}

/// RFC 7800 §3.1 `cnf`: the DPoP key's thumbprint (RFC 9449 §6.1), the client certificate's
/// (RFC 8705 §3.1).
#[derive(Serialize)]
pub(crate) struct Confirmation<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jkt: Option<&'a str>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    pub(crate) x5t_s256: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct IdClaims {
    pub(crate) iat: i64,
    pub(crate) exp: i64,
}

/// `{…ours}` + `{…carried}` as one JSON object. Capture keeps the two key sets apart.
pub(crate) fn splice(ours: &str, carried: &str) -> String {
    let carried = carried.trim();
    if carried.len() <= 2 {
        return ours.to_owned();
    }
    let mut out = String::with_capacity(ours.len() + carried.len());
    out.push_str(&ours[..ours.len() - 1]);
    out.push(',');
    out.push_str(&carried[1..]);
    out
}

/// `{…ours}` + `{…carried}`, in place: `ours` is a serialised JSON object.
pub(crate) fn splice_into(ours: &mut Vec<u8>, carried: &str) {
    let carried = carried.trim();
    if carried.len() <= 2 {
        return;
    }
    ours.pop();
    ours.push(b',');
    ours.extend_from_slice(&carried.as_bytes()[1..]);
}

/// Random bytes in a `jti`: 128 bits, 22 base64url characters.
pub(crate) const JTI_RANDOM_BYTES: usize = 16;
/// The longest `jti`: a family id (22 characters, checked when its token was parsed), a dot
/// and the random part.
pub(crate) const JTI_MAX: usize = 64;

/// How many `jti` random parts one call to the system RNG makes, per thread. A call costs
/// about as much as a few hundred bytes of its output (it mixes in fresh CPU randomness each
/// time), so drawing them one at a time was about 0.4 µs of every refresh (bench/README.md).
const JTI_POOL: usize = 32;

thread_local! {
    /// Random `jti` parts not handed out yet: the index of the next one, and the pool.
    static JTI_RANDOM: RefCell<(usize, [u8; JTI_POOL * JTI_RANDOM_BYTES])> =
        const { RefCell::new((JTI_POOL, [0; JTI_POOL * JTI_RANDOM_BYTES])) };
}

/// 128 bits from the system RNG, each handed out once.
fn jti_random() -> [u8; JTI_RANDOM_BYTES] {
    JTI_RANDOM.with_borrow_mut(|(next, pool)| {
        if *next == JTI_POOL {
            rand::fill(pool).expect("the system RNG works");
            *next = 0;
        }
        let slot = &mut pool[*next * JTI_RANDOM_BYTES..][..JTI_RANDOM_BYTES];
        let mut out = [0u8; JTI_RANDOM_BYTES];
        out.copy_from_slice(slot);
        // Handed out once: the pool keeps no copy.
        slot.fill(0);
        *next += 1;
        out
    })
}

/// `<family id>.<random>`, written into `buf`.
pub(crate) fn jti_of<'b>(family_id: &str, buf: &'b mut [u8; JTI_MAX]) -> &'b str {
    let random = jti_random();
    let head = family_id.len().min(JTI_MAX - 23);
    buf[..head].copy_from_slice(&family_id.as_bytes()[..head]);
    buf[head] = b'.';
    let n = B64
        .encode_slice(random, &mut buf[head + 1..])
        .expect("22 characters fit");
    std::str::from_utf8(&buf[..head + 1 + n]).expect("a family id and base64url are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_random_parts_are_never_repeated_across_pool_refills() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..JTI_POOL * 3 + 1 {
            let r = jti_random();
            assert_ne!(r, [0u8; JTI_RANDOM_BYTES], "a used or unfilled slot");
            assert!(seen.insert(r), "a random part came out twice");
        }
        let mut a = [0u8; JTI_MAX];
        let mut b = [0u8; JTI_MAX];
        let family = "AAAAAAAAAAAAAAAAAAAAAA";
        let (a, b) = (jti_of(family, &mut a), jti_of(family, &mut b));
        assert_ne!(a, b);
        assert_eq!(a.len(), family.len() + 1 + 22);
        assert!(a.starts_with("AAAAAAAAAAAAAAAAAAAAAA."));
    }

    #[test]
    fn splice_joins_objects() {
        assert_eq!(splice(r#"{"a":1}"#, r#"{"b":2}"#), r#"{"a":1,"b":2}"#);
        assert_eq!(splice(r#"{"a":1}"#, "{}"), r#"{"a":1}"#);
        assert_eq!(splice(r#"{"a":1}"#, ""), r#"{"a":1}"#);
    }
}
