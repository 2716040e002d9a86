//! The refresh-token state machine of a token family. Pure: both stores run it (the memory
//! store calls [`redeem`]; the Redis store's Lua script is its line-by-line twin, and the store
//! contract suite holds them to the same answers).
//!
//! A family has one live refresh token, generation `N`. Presenting generation `g`:
//!
//! | presented | answer |
//! |---|---|
//! | `g >= N` | **rotate**: the family moves to `g + 1` (DESIGN §4.1). `g > N` only happens when the store lost its last writes (e.g. a Redis crash between AOF syncs); the token is still one the proxy minted, so the family continues from it. |
//! | `g == N`, `reuse_refresh_tokens` | **reuse**: the same token stays valid (Curity's "Reuse Refresh Tokens"). |
//! | `g == N - 1`, within `reuse_grace_period` of its first use | **grace**: the same token `N` again, state unchanged, so lost answers, retries and racing tabs continue one family (DESIGN §4.6, FAPI 2.0 §5.3.2.1). Replays never extend the window. |
//! | anything else | **reuse detected**: the family is revoked (RFC 9700 §4.14.2). |
//!
//! Before that: a family past its idle or absolute lifetime is expired (DESIGN §4.4); a token
//! presented by another client is refused without touching the family (RFC 6749 §6); a `scope`
//! beyond the granted scope is `invalid_scope` (DESIGN §4.3).

use super::scope;

/// What the store keeps about a family, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyState {
    pub client_id: String,
    /// The ceiling, fixed at capture.
    pub granted_scope: String,
    /// The scope later refreshes without `scope` get.
    pub scope: String,
    /// The generation of the one live refresh token.
    pub generation: u64,
    /// When generation `generation - 1` was first redeemed (ms since the epoch).
    pub rotated_at_ms: i64,
    /// The family dies if not used by then (ms).
    pub idle_deadline_ms: i64,
    /// The family dies then, used or not (ms; fixed at capture).
    pub expires_at_ms: i64,
}

/// A redemption attempt.
#[derive(Debug, Clone, Copy)]
pub struct Redeem<'a> {
    pub generation: u64,
    pub client_id: &'a str,
    /// The `scope` parameter, if given.
    pub scope: Option<&'a str>,
    pub now_ms: i64,
    pub grace_ms: i64,
    pub idle_ttl_ms: i64,
    pub reuse_refresh_tokens: bool,
}

/// What the rules decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A new generation was opened; answer with the token derived from the presented one.
    Rotated { generation: u64, scope: String },
    /// `reuse_refresh_tokens`: answer with the presented token.
    Reused { scope: String },
    /// The previous token again, within the grace period: answer with the token derived from the
    /// presented one (which is the live token).
    Grace { generation: u64, scope: String },
    /// A rotated-out token outside the grace rule: the family is revoked.
    ReuseDetected { presented: u64, current: u64 },
    /// Past its idle or absolute lifetime: the family is gone.
    Expired,
    /// The token belongs to another client; nothing changes.
    WrongClient,
    /// `scope` asks for more than was granted; nothing changes.
    InvalidScope,
}

/// The state change a verdict brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    Update(FamilyState),
    Delete,
}

/// Applies the rules to one redemption. The caller stores the effect atomically with the read.
pub fn redeem(state: &FamilyState, r: &Redeem<'_>) -> (Verdict, Effect) {
    if r.now_ms >= state.expires_at_ms || r.now_ms >= state.idle_deadline_ms {
        return (Verdict::Expired, Effect::Delete);
    }
    // RFC 6749 §6: the authorization server MUST "validate the refresh token ... and ensure
    // that the refresh token was issued to the authenticated client".
    if r.client_id != state.client_id {
        return (Verdict::WrongClient, Effect::None);
    }
    let effective = match r.scope {
        None => state.scope.clone(),
        Some(requested) => match scope::narrow(requested, &state.granted_scope) {
            Some(s) => s,
            None => return (Verdict::InvalidScope, Effect::None),
        },
    };
    let idle_deadline_ms = (r.now_ms + r.idle_ttl_ms).min(state.expires_at_ms);
    let n = state.generation;
    let g = r.generation;
    if g == n && r.reuse_refresh_tokens {
        let next = FamilyState {
            scope: effective.clone(),
            idle_deadline_ms,
            ..state.clone()
        };
        return (Verdict::Reused { scope: effective }, Effect::Update(next));
    }
    if g >= n {
        let next = FamilyState {
            scope: effective.clone(),
            generation: g + 1,
            rotated_at_ms: r.now_ms,
            idle_deadline_ms,
            ..state.clone()
        };
        return (
            Verdict::Rotated {
                generation: g + 1,
                scope: effective,
            },
            Effect::Update(next),
        );
    }
    if g + 1 == n && r.grace_ms > 0 && r.now_ms - state.rotated_at_ms <= r.grace_ms {
        return (
            Verdict::Grace {
                generation: n,
                scope: effective,
            },
            Effect::None,
        );
    }
    (
        Verdict::ReuseDetected {
            presented: g,
            current: n,
        },
        Effect::Delete,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn family() -> FamilyState {
        FamilyState {
            client_id: "www".into(),
            granted_scope: "openid profile read".into(),
            scope: "openid profile read".into(),
            generation: 0,
            rotated_at_ms: 0,
            idle_deadline_ms: DAY,
            expires_at_ms: 10 * DAY,
        }
    }

    fn at(generation: u64, now_ms: i64) -> Redeem<'static> {
        Redeem {
            generation,
            client_id: "www",
            scope: None,
            now_ms,
            grace_ms: 30_000,
            idle_ttl_ms: DAY,
            reuse_refresh_tokens: false,
        }
    }

    fn apply(state: &mut FamilyState, r: Redeem<'_>) -> Verdict {
        let (v, e) = redeem(state, &r);
        match e {
            Effect::Update(next) => *state = next,
            Effect::Delete => state.generation = u64::MAX, // marks "gone" for these tests
            Effect::None => {}
        }
        v
    }

    #[test]
    fn the_current_token_rotates_and_resets_the_idle_clock() {
        let mut f = family();
        let v = apply(&mut f, at(0, 1000));
        assert_eq!(
            v,
            Verdict::Rotated {
                generation: 1,
                scope: "openid profile read".into()
            }
        );
        assert_eq!(f.generation, 1);
        assert_eq!(f.rotated_at_ms, 1000);
        assert_eq!(f.idle_deadline_ms, 1000 + DAY);
    }

    #[test]
    fn the_previous_token_within_grace_gets_the_live_token_and_changes_nothing() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        let before = f.clone();
        let v = apply(&mut f, at(0, 1000 + 30_000));
        assert_eq!(
            v,
            Verdict::Grace {
                generation: 1,
                scope: "openid profile read".into()
            }
        );
        assert_eq!(f, before, "replays never extend the window");
    }

    #[test]
    fn the_previous_token_after_grace_is_reuse() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        let v = apply(&mut f, at(0, 1000 + 30_001));
        assert_eq!(
            v,
            Verdict::ReuseDetected {
                presented: 0,
                current: 1
            }
        );
    }

    #[test]
    fn the_previous_token_after_its_successor_was_used_is_reuse() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        apply(&mut f, at(1, 2000));
        assert!(matches!(
            apply(&mut f, at(0, 3000)),
            Verdict::ReuseDetected { .. }
        ));
    }

    #[test]
    fn zero_grace_is_strict() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        let mut r = at(0, 1000);
        r.grace_ms = 0;
        assert!(matches!(apply(&mut f, r), Verdict::ReuseDetected { .. }));
    }

    #[test]
    fn reuse_mode_keeps_the_generation() {
        let mut f = family();
        let mut r = at(0, 1000);
        r.reuse_refresh_tokens = true;
        assert!(matches!(apply(&mut f, r), Verdict::Reused { .. }));
        assert_eq!(f.generation, 0);
        assert_eq!(f.idle_deadline_ms, 1000 + DAY);
    }

    #[test]
    fn a_token_from_the_future_continues_the_family() {
        let mut f = family();
        let v = apply(&mut f, at(3, 1000));
        assert!(matches!(v, Verdict::Rotated { generation: 4, .. }));
        assert_eq!(f.generation, 4);
    }

    #[test]
    fn narrowing_sticks_and_widening_is_capped_by_the_grant() {
        let mut f = family();
        let mut r = at(0, 1000);
        r.scope = Some("read profile");
        assert_eq!(
            apply(&mut f, r),
            Verdict::Rotated {
                generation: 1,
                scope: "read profile".into()
            }
        );
        assert_eq!(f.scope, "read profile");
        let v = apply(&mut f, at(1, 2000));
        assert!(matches!(v, Verdict::Rotated { ref scope, .. } if scope == "read profile"));
        let mut r = at(2, 3000);
        r.scope = Some("openid profile read");
        assert!(
            matches!(apply(&mut f, r), Verdict::Rotated { ref scope, .. } if scope == "openid profile read")
        );
        let before = f.clone();
        let mut r = at(3, 4000);
        r.scope = Some("read write");
        assert_eq!(apply(&mut f, r), Verdict::InvalidScope);
        assert_eq!(f, before, "a refused scope changes nothing");
    }

    #[test]
    fn another_clients_token_is_refused_without_change() {
        let f = family();
        let mut r = at(0, 1000);
        r.client_id = "other";
        assert_eq!(redeem(&f, &r), (Verdict::WrongClient, Effect::None));
    }

    #[test]
    fn idle_and_absolute_lifetimes_expire_the_family() {
        let f = family();
        assert_eq!(redeem(&f, &at(0, DAY)).0, Verdict::Expired);
        let mut f = family();
        f.idle_deadline_ms = 20 * DAY;
        assert_eq!(redeem(&f, &at(0, 10 * DAY)).0, Verdict::Expired);
        // The idle clock never runs past the absolute deadline.
        let mut f = family();
        f.idle_deadline_ms = 20 * DAY;
        apply(&mut f, at(0, 9 * DAY + 1));
        assert_eq!(f.idle_deadline_ms, 10 * DAY);
    }
}
