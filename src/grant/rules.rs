//! The refresh-token state machine of a token family. Pure: both stores run it (the memory
//! store calls [`redeem`]; the Redis store's Lua script is its line-by-line twin, and the store
//! contract suite holds them to the same answers).
//!
//! A family has one live refresh token, generation `N`. Presenting generation `g`:
//!
//! | presented | answer |
//! |---|---|
//! | `g >= N` | **rotate**: the family moves to `g + 1` (docs/design.md §4.1). `g > N` only happens when the store lost its last writes (e.g. a Redis crash between AOF syncs, a failover); once the caller has walked the family's chain to the token (**ahead**), the family continues from it. |
//! | `g == N`, `reuse_refresh_tokens` | **reuse**: the same token stays valid (Curity's "Reuse Refresh Tokens"). |
//! | `g == N - 1`, within `reuse_grace_period` of its first use | **grace**: the same token `N` again, state unchanged, so lost answers, retries and racing tabs continue one family (docs/design.md §4.6, FAPI 2.0 §5.3.2.1). Replays never extend the window. |
//! | anything else | **reuse detected**: the family is revoked (RFC 9700 §4.14.2). |
//!
//! Every accepted token is checked against the family's verifier in the same step: a token
//! whose secret part is not the family's (made with the server key alone) is **unverified**
//! and changes nothing.
//!
//! In this order: a family past its idle or absolute lifetime is expired (docs/design.md §4.4); a
//! rotated-out token outside the grace rule is reuse, whatever else is wrong with the request;
//! then a token presented by another client is refused without touching the family (RFC 6749
//! §6), and a `scope` beyond the granted scope is `invalid_scope` (docs/design.md §4.3).
//!
//! Then the upstream session check (docs/design.md §4.13): a family that keeps the upstream's
//! refresh token and was last confirmed by the upstream `interval` ago or more is not rotated
//! until the upstream confirms it again. One redemption takes a lease with a new fencing token
//! (**check due**: the caller redeems the kept token at the upstream and comes back with the
//! outcome and that fencing token); while the lease holds, the others are told to wait
//! (**check in flight**); a failed check is not retried before the lease time has passed, and
//! meanwhile the family is served for `serve` past the interval (**check failed** after that).

use super::scope;
use crate::mint::refresh::Verifier;

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
    /// The verifier of generation `generation`'s token ([`crate::mint::refresh`]).
    pub verifier: Verifier,
    /// The upstream session check's state.
    pub check: CheckState,
    /// The key the family's tokens are bound to (docs/design.md §4.16).
    pub binding: Option<String>,
}

/// What the rules know of the upstream session check of a family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckState {
    /// Whether the family keeps the upstream's refresh token (families the admin API opened
    /// do not, and are never checked).
    pub kept: bool,
    /// When the upstream last confirmed the family (ms; its capture at first).
    pub confirmed_ms: i64,
    /// The last fencing token handed out (0: none yet).
    pub fence: u64,
    /// When the lease of fencing token `fence` ends (ms), while one is held.
    pub lease_until_ms: Option<i64>,
    /// When the last check failed (ms), until one succeeds.
    pub failed_ms: Option<i64>,
}

/// A client's upstream session check settings (`upstream_check_interval` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckPolicy {
    /// A family last confirmed this long ago (ms) or more is checked first.
    pub interval_ms: i64,
    /// How long one redemption holds the check (ms): longer than the upstream call can take.
    pub lease_ms: i64,
    /// How long past `interval_ms` a family whose check failed is still served from the store
    /// (ms; 0 = not at all: `upstream_unreachable = "fail"`).
    pub serve_ms: i64,
}

/// The outcome of an upstream check, brought back with its fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The upstream redeemed the kept token: the session is live.
    Confirmed,
    /// The upstream could not be asked (unreachable, 5xx, a timeout).
    Failed,
    /// The upstream refused the kept token (`invalid_grant`): the session is over.
    Revoked,
}

/// A redemption attempt.
#[derive(Debug, Clone, Copy)]
pub struct Redeem<'a> {
    pub generation: u64,
    /// The presented token's verifier.
    pub presented: Verifier,
    /// The verifiers of the token that follows the presented one, as each refresh-token key
    /// makes it: index 0 is the current key's (the answer to a rotation, and what it stores);
    /// the others let a retry within the grace window match a successor an older key made.
    pub successors: &'a [Verifier],
    /// `Some((n, v))` once the caller walked the family's chain from generation `n` with
    /// verifier `v` (what an [`Verdict::Ahead`] reported) to the presented token: it is accepted
    /// if the family is still there.
    pub ahead_of: Option<(u64, Verifier)>,
    pub client_id: &'a str,
    /// The `scope` parameter, if given.
    pub scope: Option<&'a str>,
    pub now_ms: i64,
    pub grace_ms: i64,
    pub idle_ttl_ms: i64,
    pub reuse_refresh_tokens: bool,
    /// The client's upstream session check (`None`: never).
    pub check: Option<CheckPolicy>,
    /// The outcome of the upstream check this caller made, with the fencing token it was given.
    pub confirm: Option<(u64, Checked)>,
    /// The keys the request proved it holds, as bindings separated by spaces (a DPoP proof's
    /// `jkt:<thumbprint>`, a client certificate's `x5t#S256:<thumbprint>`); empty: none.
    pub proven: &'a str,
}

/// What the rules decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A new generation was opened; answer with the token derived from the presented one.
    Rotated { generation: u64, scope: String },
    /// `reuse_refresh_tokens`: answer with the presented token.
    Reused { scope: String },
    /// The previous token again, within the grace period: answer with the token derived from the
    /// presented one by key `key` (which is the live token).
    Grace {
        generation: u64,
        scope: String,
        key: usize,
    },
    /// A rotated-out token outside the grace rule: the family is revoked.
    ReuseDetected { presented: u64, current: u64 },
    /// Past its idle or absolute lifetime: the family is gone.
    Expired,
    /// The token belongs to another client; nothing changes.
    WrongClient,
    /// The family is bound to a key the request did not prove it holds; nothing changes.
    WrongKey,
    /// The token has a valid tag but is not the family's (its secret part does not match the
    /// verifier): made with the server key alone. Nothing changes.
    Unverified,
    /// The token is ahead of the family's generation (the store lost its last writes): the
    /// caller walks the chain from this state ([`crate::mint::refresh::RefreshTokenKey::descends`])
    /// and asks again with [`Redeem::ahead_of`]. Nothing changes.
    Ahead { current: u64, verifier: Verifier },
    /// `scope` asks for more than was granted; nothing changes.
    InvalidScope,
    /// The upstream must confirm the family first: the caller holds the check with `fence`,
    /// redeems the kept token at the upstream and redeems again with [`Redeem::confirm`].
    CheckDue { fence: u64 },
    /// Another redemption is checking with the upstream until `until_ms`: ask again shortly.
    CheckInFlight { until_ms: i64 },
    /// The last check failed and the family may not be served any longer.
    CheckFailed,
    /// The upstream refused the kept token: the family is revoked.
    CheckRevoked,
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
    // The outcome of this caller's upstream check, if its lease is still the family's (a
    // later lease's holder decides otherwise: the fencing token is stale).
    let mut current = state.clone();
    let mut changed = false;
    let mut confirmed_now = false;
    if let Some((fence, checked)) = r.confirm
        && state.check.lease_until_ms.is_some()
        && state.check.fence == fence
    {
        current.check.lease_until_ms = None;
        changed = true;
        match checked {
            Checked::Confirmed => {
                current.check.confirmed_ms = r.now_ms;
                current.check.failed_ms = None;
                confirmed_now = true;
            }
            Checked::Failed => current.check.failed_ms = Some(r.now_ms),
            Checked::Revoked => return (Verdict::CheckRevoked, Effect::Delete),
        }
    }
    let state = &current;
    let keep = |verdict: Verdict| {
        let effect = if changed {
            Effect::Update(state.clone())
        } else {
            Effect::None
        };
        (verdict, effect)
    };
    let n = state.generation;
    let g = r.generation;
    // The previous token again, within the grace period of its first use (`g < n`, so `g + 1`
    // cannot overflow).
    let grace = g < n
        && g + 1 == n
        && r.grace_ms > 0
        && r.now_ms.saturating_sub(state.rotated_at_ms) <= r.grace_ms;
    if g < n && !grace {
        // RFC 9700 §4.14.2: a rotated-out token was presented again; revoke the family. This
        // comes before every other check: a rotated-out token is reuse whatever else is wrong
        // with the request (scope, client), so a bad parameter cannot probe a family and
        // leave it alive.
        return (
            Verdict::ReuseDetected {
                presented: g,
                current: n,
            },
            Effect::Delete,
        );
    }
    // The token must be this family's, not one made with the server key alone: the live
    // token's secret part digests to the verifier; the previous token's successor does; a
    // token ahead of the store is checked by walking the chain (see crate::mint::refresh, and
    // docs/design.md §4.8 and docs/threat-model.md).
    let successor_key = r.successors.iter().position(|v| *v == state.verifier);
    let verified = if grace {
        successor_key.is_some()
    } else if g == n {
        r.presented == state.verifier
    } else {
        r.ahead_of == Some((n, state.verifier))
    };
    if !verified {
        if g > n && r.ahead_of.is_none() {
            return keep(Verdict::Ahead {
                current: n,
                verifier: state.verifier,
            });
        }
        return keep(Verdict::Unverified);
    }
    // RFC 6749 §6: the authorization server MUST "validate the refresh token ... and ensure
    // that the refresh token was issued to the authenticated client".
    if r.client_id != state.client_id {
        return keep(Verdict::WrongClient);
    }
    // RFC 9449 §5: a bound refresh token is used only with a proof of its key
    // (docs/design.md §4.16).
    if let Some(bound) = &state.binding
        && !r.proven.split(' ').any(|p| p == bound)
    {
        return keep(Verdict::WrongKey);
    }
    let effective = match r.scope {
        None => state.scope.clone(),
        Some(requested) => match scope::narrow(requested, &state.granted_scope) {
            Some(s) => s,
            None => return keep(Verdict::InvalidScope),
        },
    };
    let idle_deadline_ms = r
        .now_ms
        .saturating_add(r.idle_ttl_ms)
        .min(state.expires_at_ms);
    if grace {
        return keep(Verdict::Grace {
            generation: n,
            scope: effective,
            key: successor_key.unwrap_or(0),
        });
    }
    // docs/design.md §4.13: the upstream confirms the session first, once per interval.
    // (Not again in the step that brought a confirmation: an interval of 0 checks every
    // refresh, `access_token_format = "upstream"`.)
    if let Some(policy) = r.check
        && !confirmed_now
        && state.check.kept
        && r.now_ms.saturating_sub(state.check.confirmed_ms) >= policy.interval_ms
    {
        let since = r.now_ms.saturating_sub(state.check.confirmed_ms);
        let recently_failed = state
            .check
            .failed_ms
            .is_some_and(|f| r.now_ms.saturating_sub(f) < policy.lease_ms);
        match state.check.lease_until_ms {
            _ if recently_failed => {
                if since >= policy.interval_ms.saturating_add(policy.serve_ms) {
                    return keep(Verdict::CheckFailed);
                }
                // Served from the store, within upstream_unreachable_max.
            }
            Some(until) if until > r.now_ms => {
                return keep(Verdict::CheckInFlight { until_ms: until });
            }
            _ => {
                let mut next = state.clone();
                next.check.fence = state.check.fence.saturating_add(1);
                next.check.lease_until_ms = Some(r.now_ms.saturating_add(policy.lease_ms));
                let fence = next.check.fence;
                return (Verdict::CheckDue { fence }, Effect::Update(next));
            }
        }
    }
    if g == n && r.reuse_refresh_tokens {
        let next = FamilyState {
            scope: effective.clone(),
            idle_deadline_ms,
            ..state.clone()
        };
        return (Verdict::Reused { scope: effective }, Effect::Update(next));
    }
    // g >= n.
    let next = FamilyState {
        scope: effective.clone(),
        generation: g.saturating_add(1),
        rotated_at_ms: r.now_ms,
        idle_deadline_ms,
        verifier: r.successors.first().copied().unwrap_or_default(),
        ..state.clone()
    };
    (
        Verdict::Rotated {
            generation: next.generation,
            scope: effective,
        },
        Effect::Update(next),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    /// Generation `g`'s verifier, in these tests.
    fn v(g: u64) -> Verifier {
        Verifier([g as u8; 12])
    }

    /// The successor verifiers of generation `g` (one key), leaked for a `'static` slice.
    fn next(g: u64) -> &'static [Verifier] {
        Box::leak(vec![v(g + 1)].into_boxed_slice())
    }

    fn family() -> FamilyState {
        FamilyState {
            client_id: "www".into(),
            granted_scope: "openid profile read".into(),
            scope: "openid profile read".into(),
            generation: 0,
            rotated_at_ms: 0,
            idle_deadline_ms: DAY,
            expires_at_ms: 10 * DAY,
            verifier: v(0),
            check: CheckState::default(),
            binding: None,
        }
    }

    fn at(generation: u64, now_ms: i64) -> Redeem<'static> {
        Redeem {
            generation,
            presented: v(generation),
            successors: next(generation),
            ahead_of: None,
            client_id: "www",
            scope: None,
            now_ms,
            grace_ms: 30_000,
            idle_ttl_ms: DAY,
            reuse_refresh_tokens: false,
            check: None,
            confirm: None,
            proven: "",
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
                scope: "openid profile read".into(),
                key: 0
            }
        );
        assert_eq!(f, before, "replays never extend the window");
    }

    #[test]
    fn a_retry_within_grace_matches_a_successor_an_older_key_made() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        // The keys changed between the first use and the retry: the current key's successor
        // differs, the old key's (second) is the one the family holds.
        let mut retry = at(0, 2000);
        retry.successors = Box::leak(vec![v(50), v(1)].into_boxed_slice());
        assert!(matches!(
            redeem(&f, &retry).0,
            Verdict::Grace {
                generation: 1,
                key: 1,
                ..
            }
        ));
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
    fn a_token_from_the_future_continues_the_family_once_its_chain_is_walked() {
        let mut f = family();
        let before = f.clone();
        let verdict = apply(&mut f, at(3, 1000));
        assert_eq!(
            verdict,
            Verdict::Ahead {
                current: 0,
                verifier: v(0)
            }
        );
        assert_eq!(f, before, "nothing changes until the chain is walked");
        let mut r = at(3, 1000);
        r.ahead_of = Some((0, v(0)));
        let verdict = apply(&mut f, r);
        assert!(matches!(verdict, Verdict::Rotated { generation: 4, .. }));
        assert_eq!((f.generation, f.verifier), (4, v(4)));
        // A walk from a state the family has left proves nothing.
        let mut r = at(9, 2000);
        r.ahead_of = Some((0, v(0)));
        assert_eq!(redeem(&f, &r), (Verdict::Unverified, Effect::None));
    }

    #[test]
    fn a_token_with_a_valid_tag_but_not_the_familys_secret_changes_nothing() {
        let mut f = family();
        apply(&mut f, at(0, 1000));
        // The live generation, the previous one within grace: wrong secret parts.
        let mut live = at(1, 2000);
        live.presented = v(77);
        assert_eq!(redeem(&f, &live), (Verdict::Unverified, Effect::None));
        let mut previous = at(0, 2000);
        previous.successors = next(76);
        assert_eq!(redeem(&f, &previous), (Verdict::Unverified, Effect::None));
        // The real ones still work.
        assert!(matches!(
            apply(&mut f, at(0, 2000)),
            Verdict::Grace { generation: 1, .. }
        ));
        assert!(matches!(
            apply(&mut f, at(1, 2000)),
            Verdict::Rotated { generation: 2, .. }
        ));
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
    fn a_rotated_out_token_is_reuse_even_with_a_bad_scope_or_client() {
        for bad_scope in [true, false] {
            let mut f = family();
            apply(&mut f, at(0, 1000));
            apply(&mut f, at(1, 2000));
            let mut r = at(0, 3000);
            if bad_scope {
                r.scope = Some("bogus");
            } else {
                r.client_id = "other";
            }
            let (v, e) = redeem(&f, &r);
            assert_eq!(
                v,
                Verdict::ReuseDetected {
                    presented: 0,
                    current: 2
                }
            );
            assert_eq!(e, Effect::Delete);
        }
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
