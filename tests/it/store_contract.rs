//! The store contract: the same cases run against `memory://` and a private `redis-server`.
//! Times are passed in, so lifetimes and grace are tested without waiting.

use std::sync::Arc;

use refresh_proxy::config::StoreConfig;
use refresh_proxy::store::{
    CheckPolicy, Checked, Ended, FamilyId, Index, MemoryStore, NewFamily, OneTime, OpaqueCandidate,
    Redeem, RedeemRequest, Redemption, RedisStore, Revoke, Seal, Selection, TokenFormat,
    TokenStore, Verdict, Verifier,
};

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 60 * MIN;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn family(t0: i64, format: TokenFormat) -> NewFamily {
    NewFamily {
        id: FamilyId::random(),
        client_id: "www".into(),
        subject: "alice".into(),
        granted_scope: "openid profile read".into(),
        format,
        at_claims: r#"{"aud":"api","roles":["a"]}"#.into(),
        id_claims: r#"{"sub":"alice","email":"a@example.com"}"#.into(),
        auth_time: Some(t0 / 1000 - 5),
        created_ms: t0,
        idle_deadline_ms: t0 + DAY,
        expires_at_ms: t0 + 7 * DAY,
        verifier: v(0),
        // Stores keep the seal; the engine checks it (src/engine/mod.rs, tests/it/integrity.rs).
        seal: Seal([7; 12]),
        // Stores keep the sealed upstream token as bytes; the engine seals and opens it.
        upstream_token: Some(KEPT.to_vec()),
        session: Some("sid-1".into()),
        binding: None,
    }
}

/// A kept upstream token as the store sees it: opaque bytes (not UTF-8).
const KEPT: &[u8] = b"\x01kept\xffupstream\x00token";

/// What a store returns for a family it ended.
fn ended(f: &NewFamily) -> Ended {
    Ended {
        family: f.id.as_str().to_owned(),
        client_id: f.client_id.clone(),
        upstream_token: f.upstream_token.clone(),
    }
}

/// The ids of ended families, sorted.
fn ids(mut ended: Vec<Ended>) -> Vec<String> {
    let mut ids: Vec<String> = ended.drain(..).map(|e| e.family).collect();
    ids.sort();
    ids
}

fn sorted<'a>(families: impl IntoIterator<Item = &'a NewFamily>) -> Vec<String> {
    let mut ids: Vec<String> = families
        .into_iter()
        .map(|f| f.id.as_str().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Generation `g`'s verifier, in these cases (the engine derives real ones from the token).
fn v(g: u64) -> Verifier {
    Verifier([g as u8 + 1; 12])
}

/// The successor verifiers of generation `g`'s token (one key).
fn next(g: u64) -> &'static [Verifier] {
    Box::leak(vec![v(g + 1)].into_boxed_slice())
}

fn redeem(generation: u64, now_ms: i64) -> Redeem<'static> {
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

async fn go<S: TokenStore>(store: &S, f: &NewFamily, r: Redeem<'_>) -> Redemption {
    store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: r,
            opaque: None,
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("store answers")
}

fn verdict(r: Redemption) -> Verdict {
    match r {
        Redemption::Decided { verdict, .. } => verdict,
        other => panic!("{other:?}"),
    }
}

async fn rotation_returns_the_family_and_advances_the_generation<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    match go(&store, &f, redeem(0, t0 + 1000)).await {
        Redemption::Decided {
            verdict,
            family,
            opaque_stored,
            upstream_token,
        } => {
            assert_eq!(
                upstream_token, None,
                "the kept token only comes back on reuse"
            );
            assert_eq!(
                verdict,
                Verdict::Rotated {
                    generation: 1,
                    scope: "openid profile read".into()
                }
            );
            assert_eq!(family.client_id, "www");
            assert_eq!(family.subject, "alice");
            assert_eq!(family.format, TokenFormat::Jwt);
            assert_eq!(family.at_claims, f.at_claims);
            assert_eq!(family.id_claims, f.id_claims);
            assert_eq!(family.auth_time, f.auth_time);
            assert_eq!(family.granted_scope, f.granted_scope);
            assert_eq!(family.expires_at_ms, f.expires_at_ms);
            assert_eq!(family.seal, f.seal, "the seal comes back as stored");
            assert!(!opaque_stored);
        }
        other => panic!("{other:?}"),
    }
    let v = verdict(go(&store, &f, redeem(1, t0 + 2000)).await);
    assert!(matches!(v, Verdict::Rotated { generation: 2, .. }), "{v:?}");
}

async fn an_unknown_family_is_unknown<S: TokenStore>(store: S) {
    let f = family(now(), TokenFormat::Jwt);
    assert_eq!(go(&store, &f, redeem(0, now())).await, Redemption::Unknown);
}

async fn the_previous_token_within_grace_gets_the_live_generation<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    verdict(go(&store, &f, redeem(0, t0 + 1000)).await);
    for dt in [1000, 20_000, 31_000] {
        let v = verdict(go(&store, &f, redeem(0, t0 + dt)).await);
        assert!(
            matches!(v, Verdict::Grace { generation: 1, .. }),
            "{dt}: {v:?}"
        );
    }
    // The live token still rotates normally afterwards.
    let v = verdict(go(&store, &f, redeem(1, t0 + 32_000)).await);
    assert!(matches!(v, Verdict::Rotated { generation: 2, .. }), "{v:?}");
}

async fn reuse_outside_grace_revokes_the_family<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    verdict(go(&store, &f, redeem(0, t0)).await);
    verdict(go(&store, &f, redeem(1, t0 + 1)).await);
    let Redemption::Decided {
        verdict: v,
        upstream_token,
        ..
    } = go(&store, &f, redeem(0, t0 + 2)).await
    else {
        panic!("decided")
    };
    assert_eq!(
        v,
        Verdict::ReuseDetected {
            presented: 0,
            current: 2
        }
    );
    assert_eq!(
        upstream_token.as_deref(),
        Some(KEPT),
        "the kept upstream token comes back, to be revoked there"
    );
    assert_eq!(go(&store, &f, redeem(2, t0 + 3)).await, Redemption::Unknown);
}

/// RFC 9700 §4.14.2: a rotated-out token is reuse whatever else is wrong with the request; a
/// bad `scope` or another client must not let it probe the family and leave it alive.
async fn a_rotated_out_token_is_reuse_whatever_else_is_wrong<S: TokenStore>(store: S) {
    let t0 = now();
    for bad in ["scope", "client"] {
        let f = family(t0, TokenFormat::Jwt);
        store.create_family(&f).await.expect("create");
        verdict(go(&store, &f, redeem(0, t0)).await);
        verdict(go(&store, &f, redeem(1, t0 + 1)).await);
        let mut r = redeem(0, t0 + 2);
        match bad {
            "scope" => r.scope = Some("bogus"),
            _ => r.client_id = "mallory",
        }
        let v = verdict(go(&store, &f, r).await);
        assert_eq!(
            v,
            Verdict::ReuseDetected {
                presented: 0,
                current: 2
            },
            "with a bad {bad}"
        );
        assert_eq!(
            go(&store, &f, redeem(2, t0 + 3)).await,
            Redemption::Unknown,
            "the family is revoked (bad {bad})"
        );
    }
}

/// The store checks the presented token against the family's verifier in the same atomic step:
/// a token whose secret part is not the family's changes nothing; a token ahead of the store
/// is reported with the state to walk from, and accepted once the caller has walked it.
async fn the_verifier_is_checked_in_the_same_step<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let mut forged = redeem(0, t0);
    forged.presented = v(99);
    assert_eq!(verdict(go(&store, &f, forged).await), Verdict::Unverified);
    let v1 = verdict(go(&store, &f, redeem(0, t0 + 1)).await);
    assert!(
        matches!(v1, Verdict::Rotated { generation: 1, .. }),
        "{v1:?}"
    );
    // Generation 0 again within grace: its successor's verifier must be the stored one.
    let mut forged = redeem(0, t0 + 2);
    forged.successors = next(98);
    assert_eq!(verdict(go(&store, &f, forged).await), Verdict::Unverified);
    // A retry whose successor an older key made (the keys changed since the rotation).
    let mut retry = redeem(0, t0 + 2);
    retry.successors = Box::leak(vec![v(77), v(1)].into_boxed_slice());
    assert!(
        matches!(
            verdict(go(&store, &f, retry).await),
            Verdict::Grace {
                generation: 1,
                key: 1,
                ..
            }
        ),
        "the second key's successor"
    );
    // A token two generations ahead (the store lost writes).
    assert_eq!(
        verdict(go(&store, &f, redeem(3, t0 + 3)).await),
        Verdict::Ahead {
            current: 1,
            verifier: v(1)
        }
    );
    let mut stale = redeem(3, t0 + 4);
    stale.ahead_of = Some((0, v(0)));
    assert_eq!(verdict(go(&store, &f, stale).await), Verdict::Unverified);
    let mut walked = redeem(3, t0 + 5);
    walked.ahead_of = Some((1, v(1)));
    let v4 = verdict(go(&store, &f, walked).await);
    assert!(
        matches!(v4, Verdict::Rotated { generation: 4, .. }),
        "{v4:?}"
    );
    // The family now holds generation 4's verifier: the chain goes on from there.
    let v5 = verdict(go(&store, &f, redeem(4, t0 + 6)).await);
    assert!(
        matches!(v5, Verdict::Rotated { generation: 5, .. }),
        "{v5:?}"
    );
}

/// A family sealed with a key that is no longer current is re-sealed with the current one,
/// only if it still holds the seal the caller read (a compare-and-set).
async fn reseal_replaces_only_the_seal_it_expects<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let new = Seal([9; 12]);
    assert!(
        !store
            .reseal(f.id.as_str(), &Seal([1; 12]), &new)
            .await
            .expect("reseal")
    );
    assert!(
        store
            .reseal(f.id.as_str(), &f.seal, &new)
            .await
            .expect("reseal")
    );
    match go(&store, &f, redeem(0, t0 + 1)).await {
        Redemption::Decided { family, .. } => assert_eq!(family.seal, new),
        other => panic!("{other:?}"),
    }
    assert!(
        !store
            .reseal("AAAAAAAAAAAAAAAAAAAAAA", &f.seal, &new)
            .await
            .expect("reseal")
    );
}

async fn zero_grace_makes_every_second_presentation_reuse<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let mut r = redeem(0, t0);
    r.grace_ms = 0;
    verdict(go(&store, &f, r).await);
    assert!(matches!(
        verdict(go(&store, &f, r).await),
        Verdict::ReuseDetected { .. }
    ));
}

async fn another_clients_token_changes_nothing<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let mut r = redeem(0, t0);
    r.client_id = "mallory";
    assert_eq!(verdict(go(&store, &f, r).await), Verdict::WrongClient);
    let v = verdict(go(&store, &f, redeem(0, t0 + 1)).await);
    assert!(matches!(v, Verdict::Rotated { generation: 1, .. }), "{v:?}");
}

async fn narrowing_sticks_and_widening_stops_at_the_grant<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let mut r = redeem(0, t0);
    r.scope = Some("read  profile read");
    let v = verdict(go(&store, &f, r).await);
    assert!(
        matches!(v, Verdict::Rotated { ref scope, .. } if scope == "read profile"),
        "{v:?}"
    );
    let v = verdict(go(&store, &f, redeem(1, t0 + 1)).await);
    assert!(
        matches!(v, Verdict::Rotated { ref scope, .. } if scope == "read profile"),
        "{v:?}"
    );
    let mut r = redeem(2, t0 + 2);
    r.scope = Some("read write");
    assert_eq!(verdict(go(&store, &f, r).await), Verdict::InvalidScope);
    let mut r = redeem(2, t0 + 3);
    r.scope = Some("openid profile read");
    let v = verdict(go(&store, &f, r).await);
    assert!(
        matches!(v, Verdict::Rotated { generation: 3, ref scope } if scope == "openid profile read"),
        "{v:?}"
    );
}

async fn reuse_mode_keeps_the_token_valid<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let mut r = redeem(0, t0);
    r.reuse_refresh_tokens = true;
    for i in 0..3 {
        r.now_ms = t0 + i;
        assert!(matches!(
            verdict(go(&store, &f, r).await),
            Verdict::Reused { .. }
        ));
    }
}

async fn idle_and_absolute_lifetimes_end_the_family<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    // Used just before the idle deadline: the idle clock restarts.
    verdict(go(&store, &f, redeem(0, t0 + DAY - 1)).await);
    let v = verdict(go(&store, &f, redeem(1, t0 + 2 * DAY - 2)).await);
    assert!(matches!(v, Verdict::Rotated { .. }), "{v:?}");
    // Idle too long.
    let v = go(&store, &f, redeem(2, t0 + 3 * DAY)).await;
    assert!(
        matches!(
            v,
            Redemption::Unknown
                | Redemption::Decided {
                    verdict: Verdict::Expired,
                    ..
                }
        ),
        "{v:?}"
    );
    assert_eq!(
        go(&store, &f, redeem(2, t0 + 3 * DAY)).await,
        Redemption::Unknown
    );

    // The absolute lifetime is never extended by use.
    let g = family(t0, TokenFormat::Jwt);
    store.create_family(&g).await.expect("create");
    let mut generation = 0;
    let mut t = t0 + 10;
    while t < t0 + 7 * DAY {
        let v = verdict(go(&store, &g, redeem(generation, t)).await);
        assert!(
            matches!(v, Verdict::Rotated { .. }),
            "at +{}ms: {v:?}",
            t - t0
        );
        generation += 1;
        t += DAY - MIN;
    }
    let v = go(&store, &g, redeem(generation, t0 + 7 * DAY)).await;
    assert!(
        matches!(
            v,
            Redemption::Unknown
                | Redemption::Decided {
                    verdict: Verdict::Expired,
                    ..
                }
        ),
        "{v:?}"
    );
}

async fn opaque_access_tokens_are_stored_with_the_family<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Opaque);
    store.create_family(&f).await.expect("create");
    let candidate = |digest: &str, t: i64| OpaqueCandidate {
        digest: digest.into(),
        issued_ms: t,
        expires_ms: t + 5 * MIN,
    };
    let mut r = redeem(0, t0);
    r.scope = Some("read");
    let res = store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: r,
            opaque: Some(candidate("d1", t0)),
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("redeem");
    assert!(
        matches!(
            res,
            Redemption::Decided {
                opaque_stored: true,
                ..
            }
        ),
        "{res:?}"
    );
    let rec = store
        .access_token(f.id.as_str(), "d1", t0 + 1)
        .await
        .expect("lookup")
        .expect("stored");
    assert_eq!(
        (
            rec.client_id.as_str(),
            rec.subject.as_str(),
            rec.scope.as_str()
        ),
        ("www", "alice", "read")
    );
    assert_eq!((rec.issued_ms, rec.expires_ms), (t0, t0 + 5 * MIN));
    assert!(
        store
            .access_token(f.id.as_str(), "d1", t0 + 5 * MIN)
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        store
            .access_token(f.id.as_str(), "nope", t0)
            .await
            .expect("lookup")
            .is_none()
    );

    // A refused redemption stores nothing.
    let mut r = redeem(1, t0 + 2);
    r.scope = Some("write");
    let res = store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: r,
            opaque: Some(candidate("d2", t0)),
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("redeem");
    assert!(matches!(
        res,
        Redemption::Decided {
            verdict: Verdict::InvalidScope,
            opaque_stored: false,
            ..
        }
    ));
    assert!(
        store
            .access_token(f.id.as_str(), "d2", t0 + 3)
            .await
            .expect("lookup")
            .is_none()
    );

    // Revoking the family (reuse) makes its access tokens inactive.
    verdict(go(&store, &f, redeem(1, t0 + 4)).await);
    verdict(go(&store, &f, redeem(0, t0 + 5 * MIN)).await);
    assert!(
        store
            .access_token(f.id.as_str(), "d1", t0 + 5)
            .await
            .expect("lookup")
            .is_none()
    );

    // JWT families never store opaque tokens.
    let j = family(t0, TokenFormat::Jwt);
    store.create_family(&j).await.expect("create");
    let res = store
        .redeem(&RedeemRequest {
            family: j.id.as_str(),
            redeem: redeem(0, t0),
            opaque: Some(candidate("d3", t0)),
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("redeem");
    assert!(matches!(
        res,
        Redemption::Decided {
            opaque_stored: false,
            ..
        }
    ));
}

async fn concurrent_redemptions_fork_nothing<S: TokenStore + Clone>(store: S) {
    let t0 = now();
    let f = Arc::new(family(t0, TokenFormat::Jwt));
    store.create_family(&f).await.expect("create");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (store, f) = (store.clone(), f.clone());
            tokio::spawn(async move { verdict(go(&store, &f, redeem(0, t0 + 10)).await) })
        })
        .collect();
    let mut rotated = 0;
    for t in tasks {
        match t.await.expect("join") {
            Verdict::Rotated { generation: 1, .. } => rotated += 1,
            Verdict::Grace { generation: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rotated, 1, "exactly one request opens generation 1");
    let v = verdict(go(&store, &f, redeem(1, t0 + 20)).await);
    assert!(matches!(v, Verdict::Rotated { generation: 2, .. }), "{v:?}");
}

async fn revocation_is_by_owner_and_ends_the_family<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Opaque);
    store.create_family(&f).await.expect("create");
    let at = OpaqueCandidate {
        digest: "d".into(),
        issued_ms: t0,
        expires_ms: t0 + MIN,
    };
    store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: redeem(0, t0),
            opaque: Some(at),
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("redeem");
    let id = f.id.as_str();
    assert_eq!(
        store
            .revoke_family(id, Some("mallory"))
            .await
            .expect("revoke"),
        Revoke::NotOwner
    );
    assert!(
        store
            .refresh_token_info(id, 1, t0 + 1)
            .await
            .expect("info")
            .is_some()
    );
    assert_eq!(
        store.revoke_family(id, Some("www")).await.expect("revoke"),
        Revoke::Revoked(ended(&f))
    );
    assert_eq!(
        store.revoke_family(id, None).await.expect("revoke"),
        Revoke::Unknown
    );
    assert_eq!(go(&store, &f, redeem(1, t0 + 2)).await, Redemption::Unknown);
    assert!(
        store
            .access_token(id, "d", t0 + 3)
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        store
            .refresh_token_info(id, 1, t0 + 3)
            .await
            .expect("info")
            .is_none()
    );
}

async fn introspection_sees_only_the_live_generation<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let id = f.id.as_str();
    let info = store
        .refresh_token_info(id, 0, t0 + 1)
        .await
        .expect("info")
        .expect("live");
    assert_eq!(
        (info.family.client_id.as_str(), info.family.subject.as_str()),
        ("www", "alice")
    );
    assert_eq!((info.generation, info.verifier), (0, v(0)));
    assert_eq!(info.family.seal, f.seal);
    assert_eq!(info.family.at_claims, f.at_claims);
    assert_eq!(info.scope, "openid profile read");
    assert_eq!((info.issued_ms, info.expires_ms), (t0, t0 + DAY));
    let mut r = redeem(0, t0 + 10);
    r.scope = Some("read");
    verdict(go(&store, &f, r).await);
    assert!(
        store
            .refresh_token_info(id, 0, t0 + 11)
            .await
            .expect("info")
            .is_none(),
        "rotated out"
    );
    let info = store
        .refresh_token_info(id, 1, t0 + 11)
        .await
        .expect("info")
        .expect("live");
    assert_eq!((info.scope.as_str(), info.issued_ms), ("read", t0 + 10));
    assert!(
        store
            .refresh_token_info(id, 1, t0 + 10 + DAY)
            .await
            .expect("info")
            .is_none(),
        "idle"
    );
}

async fn revocation_by_subject_and_by_client<S: TokenStore>(store: S) {
    let t0 = now();
    let mk = |client: &str, subject: &str| NewFamily {
        id: FamilyId::random(),
        client_id: client.into(),
        subject: subject.into(),
        ..family(t0, TokenFormat::Jwt)
    };
    let alice_www = [mk("www", "alice"), mk("www", "alice")];
    let alice_app = mk("app", "alice");
    let bob_www = mk("www", "bob");
    for f in alice_www.iter().chain([&alice_app, &bob_www]) {
        store.create_family(f).await.expect("create");
    }
    let subject = Selection::all(Index::Subject("alice"));
    let gone = store.revoke_many(&subject).await.expect("revoke");
    assert!(
        gone.iter()
            .all(|e| e.upstream_token.as_deref() == Some(KEPT))
    );
    assert_eq!(ids(gone), sorted(alice_www.iter().chain([&alice_app])));
    assert_eq!(
        store.revoke_many(&subject).await.expect("revoke"),
        Vec::new(),
        "idempotent"
    );
    for f in alice_www.iter().chain([&alice_app]) {
        assert_eq!(go(&store, f, redeem(0, t0)).await, Redemption::Unknown);
    }
    let mut r = redeem(0, t0);
    r.client_id = "www";
    assert!(matches!(
        verdict(go(&store, &bob_www, r).await),
        Verdict::Rotated { .. }
    ));
    // A subject with families of two clients: revoking one client spares the other's, which
    // stays in the subject's index.
    let carol_www = mk("www", "carol");
    let carol_app = mk("app", "carol");
    for f in [&carol_www, &carol_app] {
        store.create_family(f).await.expect("create");
    }
    let client = Selection::all(Index::Client("www"));
    let other = Selection {
        client_id: Some("app"),
        ..client
    };
    assert_eq!(
        store.revoke_many(&other).await.expect("revoke"),
        vec![],
        "www's index, limited to app's families: none"
    );
    assert_eq!(
        ids(store.revoke_many(&client).await.expect("revoke")),
        sorted([&bob_www, &carol_www])
    );
    for f in [&bob_www, &carol_www] {
        assert_eq!(go(&store, f, redeem(1, t0)).await, Redemption::Unknown);
    }
    let mut r = redeem(0, t0);
    r.client_id = "app";
    assert!(matches!(
        verdict(go(&store, &carol_app, r).await),
        Verdict::Rotated { .. }
    ));
    assert_eq!(
        store
            .revoke_many(&Selection::all(Index::Subject("carol")))
            .await
            .expect("revoke"),
        vec![ended(&carol_app)]
    );
    let nobody = Selection::all(Index::Client("nobody"));
    assert_eq!(store.revoke_many(&nobody).await.expect("revoke"), vec![]);
}

/// Revocation by subject and by client over sets larger than one scan step: every family is
/// ended once, and another client's families of the same subjects are spared.
async fn revocation_reads_large_indexes_to_the_end<S: TokenStore>(store: S) {
    let t0 = now();
    let mk = |client: &str, subject: &str| NewFamily {
        id: FamilyId::random(),
        client_id: client.into(),
        subject: subject.into(),
        session: None,
        ..family(t0, TokenFormat::Jwt)
    };
    let www: Vec<NewFamily> = (0..2_400)
        .map(|i| mk("www", if i % 2 == 0 { "fay" } else { "gus" }))
        .collect();
    let app: Vec<NewFamily> = (0..5).map(|_| mk("app", "fay")).collect();
    store.create_families(&www).await.expect("create");
    store.create_families(&app).await.expect("create");
    let gone = store
        .revoke_many(&Selection::all(Index::Client("www")))
        .await
        .expect("revoke");
    assert_eq!(ids(gone), sorted(&www));
    let gone = store
        .revoke_many(&Selection::all(Index::Subject("fay")))
        .await
        .expect("revoke");
    assert_eq!(ids(gone), sorted(&app));
}

/// Back-channel logout: a session's families, one client's only, sparing `offline_access`
/// ones when asked; what is spared stays in the index for a later revocation.
async fn revocation_by_session_spares_what_it_is_told_to<S: TokenStore>(store: S) {
    let t0 = now();
    let mk = |client: &str, session: Option<&str>, scope: &str| NewFamily {
        id: FamilyId::random(),
        client_id: client.into(),
        session: session.map(str::to_owned),
        granted_scope: scope.into(),
        ..family(t0, TokenFormat::Jwt)
    };
    let online = mk("www", Some("s1"), "openid read");
    let offline = mk("www", Some("s1"), "openid offline_access");
    let other_client = mk("app", Some("s1"), "openid");
    let other_session = mk("www", Some("s2"), "openid");
    let no_session = mk("www", None, "openid");
    let all = [
        &online,
        &offline,
        &other_client,
        &other_session,
        &no_session,
    ];
    for f in all {
        store.create_family(f).await.expect("create");
    }
    let logout = Selection {
        index: Index::Session("s1"),
        client_id: Some("www"),
        keep_offline: true,
    };
    assert_eq!(
        store.revoke_many(&logout).await.expect("revoke"),
        vec![ended(&online)]
    );
    for f in [&offline, &other_client, &other_session, &no_session] {
        let mut r = redeem(0, t0 + 1);
        r.client_id = &f.client_id;
        assert!(
            matches!(verdict(go(&store, f, r).await), Verdict::Rotated { .. }),
            "spared"
        );
    }
    // What was spared is still found by the session.
    let everything = Selection::all(Index::Session("s1"));
    assert_eq!(
        ids(store.revoke_many(&everything).await.expect("revoke")),
        sorted([&offline, &other_client])
    );
    assert_eq!(
        store.revoke_many(&everything).await.expect("revoke"),
        vec![]
    );
}

async fn many_families_at_once<S: TokenStore>(store: S) {
    let t0 = now();
    let batch: Vec<NewFamily> = (0..2500).map(|_| family(t0, TokenFormat::Opaque)).collect();
    store.create_families(&batch).await.expect("create");
    for f in [&batch[0], &batch[1234], &batch[2499]] {
        let v = verdict(go(&store, f, redeem(0, t0 + 1)).await);
        assert!(matches!(v, Verdict::Rotated { generation: 1, .. }), "{v:?}");
        assert!(
            store
                .refresh_token_info(f.id.as_str(), 1, t0 + 2)
                .await
                .expect("info")
                .is_some()
        );
    }
    let gone = store
        .revoke_many(&Selection::all(Index::Subject("alice")))
        .await
        .expect("revoke");
    assert_eq!(gone.len(), 2500);
}

async fn a_revocation_racing_refreshes_always_wins<S: TokenStore + Clone>(store: S) {
    for _ in 0..20 {
        let t0 = now();
        let f = Arc::new(family(t0, TokenFormat::Jwt));
        store.create_family(&f).await.expect("create");
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let (store, f) = (store.clone(), f.clone());
            tasks.push(tokio::spawn(async move {
                if i == 10 {
                    store
                        .revoke_family(f.id.as_str(), Some("www"))
                        .await
                        .expect("revoke");
                } else {
                    go(&store, &f, redeem(0, t0 + 1)).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        for g in 0..3 {
            assert_eq!(
                go(&store, &f, redeem(g, t0 + 2)).await,
                Redemption::Unknown,
                "revoked, whoever won"
            );
        }
    }
}

/// The upstream session check of these cases: due 1 s after the last confirmation, a lease of
/// 5 s, served for 2 s past the interval after a failure.
const CHECK: CheckPolicy = CheckPolicy {
    interval_ms: 1000,
    lease_ms: 5000,
    serve_ms: 2000,
};

/// A redemption with the check on, and optionally a check's outcome under `fence`.
async fn checked<S: TokenStore>(
    store: &S,
    f: &NewFamily,
    generation: u64,
    now_ms: i64,
    confirm: Option<(u64, Checked)>,
    new_token: Option<&[u8]>,
) -> Redemption {
    store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: Redeem {
                check: Some(CHECK),
                confirm,
                ..redeem(generation, now_ms)
            },
            opaque: None,
            new_upstream_token: new_token.map(<[u8]>::to_vec),
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("store answers")
}

fn kept_of(r: &Redemption) -> Option<&[u8]> {
    match r {
        Redemption::Decided { upstream_token, .. } => upstream_token.as_deref(),
        _ => None,
    }
}

/// docs/design.md §4.13: once the interval has passed, one redemption gets the check (with the
/// kept token and a fencing token) and the others wait; its outcome under that fencing token
/// confirms the family (keeping the upstream's rotated token) in the same step as the rotation.
async fn a_due_check_goes_to_one_redemption_and_its_outcome_rotates<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    let v = verdict(checked(&store, &f, 0, t0 + 500, None, None).await);
    assert!(
        matches!(v, Verdict::Rotated { generation: 1, .. }),
        "not due yet: {v:?}"
    );
    let due = checked(&store, &f, 1, t0 + 1500, None, None).await;
    assert_eq!(
        kept_of(&due),
        Some(KEPT),
        "the kept token, to redeem at the upstream"
    );
    assert_eq!(verdict(due), Verdict::CheckDue { fence: 1 });
    for at in [t0 + 1600, t0 + 6499] {
        assert_eq!(
            verdict(checked(&store, &f, 1, at, None, None).await),
            Verdict::CheckInFlight {
                until_ms: t0 + 6500
            },
            "the others wait for the lease holder"
        );
    }
    // A wrong fencing token is not the family's outcome.
    assert_eq!(
        verdict(
            checked(
                &store,
                &f,
                1,
                t0 + 1700,
                Some((7, Checked::Confirmed)),
                None
            )
            .await
        ),
        Verdict::CheckInFlight {
            until_ms: t0 + 6500
        }
    );
    let confirmed = checked(
        &store,
        &f,
        1,
        t0 + 1800,
        Some((1, Checked::Confirmed)),
        Some(b"rotated-upstream"),
    )
    .await;
    assert!(
        matches!(verdict(confirmed), Verdict::Rotated { generation: 2, .. }),
        "confirmed and rotated in one step"
    );
    // Confirmed at +1800: not due again before +2800; then with the upstream's new token.
    let v = verdict(checked(&store, &f, 2, t0 + 2700, None, None).await);
    assert!(matches!(v, Verdict::Rotated { generation: 3, .. }), "{v:?}");
    let due = checked(&store, &f, 3, t0 + 2800, None, None).await;
    assert_eq!(kept_of(&due), Some(&b"rotated-upstream"[..]));
    assert_eq!(verdict(due), Verdict::CheckDue { fence: 2 });
    // A lease that ran out (its holder died) goes to the next redemption, with a new fence;
    // the old holder's outcome is then stale and ignored.
    assert_eq!(
        verdict(checked(&store, &f, 3, t0 + 7800, None, None).await),
        Verdict::CheckDue { fence: 3 }
    );
    assert_eq!(
        verdict(checked(&store, &f, 3, t0 + 7801, Some((2, Checked::Revoked)), None).await),
        Verdict::CheckInFlight {
            until_ms: t0 + 12_800
        },
        "a stale holder cannot revoke"
    );
    // A retry of the previous token within grace is answered as before, check or not.
    assert!(matches!(
        verdict(checked(&store, &f, 2, t0 + 7802, None, None).await),
        Verdict::Grace { generation: 3, .. }
    ));
}

async fn a_failed_check_is_served_for_a_while_then_refused<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    assert_eq!(
        verdict(checked(&store, &f, 0, t0 + 1000, None, None).await),
        Verdict::CheckDue { fence: 1 }
    );
    // Failed at +1100: served (within interval + 2 s of the last confirmation at t0), and
    // not asked again before the lease time (5 s) has passed.
    let v = verdict(checked(&store, &f, 0, t0 + 1100, Some((1, Checked::Failed)), None).await);
    assert!(
        matches!(v, Verdict::Rotated { generation: 1, .. }),
        "served: {v:?}"
    );
    let v = verdict(checked(&store, &f, 1, t0 + 2900, None, None).await);
    assert!(
        matches!(v, Verdict::Rotated { generation: 2, .. }),
        "served: {v:?}"
    );
    assert_eq!(
        verdict(checked(&store, &f, 2, t0 + 3000, None, None).await),
        Verdict::CheckFailed,
        "past interval + serve"
    );
    // After the lease time, a new check.
    assert_eq!(
        verdict(checked(&store, &f, 2, t0 + 6100, None, None).await),
        Verdict::CheckDue { fence: 2 }
    );
}

async fn an_upstream_invalid_grant_revokes_the_family<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Jwt);
    store.create_family(&f).await.expect("create");
    assert_eq!(
        verdict(checked(&store, &f, 0, t0 + 1000, None, None).await),
        Verdict::CheckDue { fence: 1 }
    );
    assert_eq!(
        verdict(checked(&store, &f, 0, t0 + 1100, Some((1, Checked::Revoked)), None).await),
        Verdict::CheckRevoked
    );
    assert_eq!(
        go(&store, &f, redeem(0, t0 + 1200)).await,
        Redemption::Unknown
    );
}

async fn a_family_without_a_kept_token_is_never_checked<S: TokenStore>(store: S) {
    let t0 = now();
    let f = NewFamily {
        upstream_token: None,
        ..family(t0, TokenFormat::Jwt)
    };
    store.create_family(&f).await.expect("create");
    let v = verdict(checked(&store, &f, 0, t0 + 10 * MIN, None, None).await);
    assert!(matches!(v, Verdict::Rotated { generation: 1, .. }), "{v:?}");
}

/// `access_token_format = "upstream"`: every refresh is checked (interval 0), even right
/// after a confirmation; the confirmed answer is kept for a retry within the grace window.
async fn an_upstream_format_family_keeps_its_answer_for_the_grace_window<S: TokenStore>(store: S) {
    let t0 = now();
    let f = family(t0, TokenFormat::Upstream);
    store.create_family(&f).await.expect("create");
    let every = Redeem {
        check: Some(CheckPolicy {
            interval_ms: 0,
            ..CHECK
        }),
        ..redeem(0, t0 + 10)
    };
    let request = |redeem, confirm, answer: Option<&[u8]>| RedeemRequest {
        family: f.id.as_str(),
        redeem: Redeem { confirm, ..redeem },
        opaque: None,
        new_upstream_token: None,
        upstream_answer: answer.map(<[u8]>::to_vec),
        once: Vec::new(),
    };
    let r = store
        .redeem(&request(every, None, None))
        .await
        .expect("redeem");
    assert_eq!(verdict(r), Verdict::CheckDue { fence: 1 });
    let confirmed = Some((1, Checked::Confirmed));
    let r = store
        .redeem(&request(every, confirmed, Some(b"sealed-answer")))
        .await
        .expect("redeem");
    assert!(matches!(verdict(r), Verdict::Rotated { generation: 1, .. }));
    let retry = store
        .redeem(&request(
            Redeem {
                now_ms: t0 + 20,
                ..every
            },
            None,
            None,
        ))
        .await
        .expect("redeem");
    assert_eq!(
        kept_of(&retry),
        Some(&b"sealed-answer"[..]),
        "the same answer again"
    );
    assert!(matches!(
        verdict(retry),
        Verdict::Grace { generation: 1, .. }
    ));
    let next = Redeem {
        generation: 1,
        presented: v(1),
        successors: next(1),
        now_ms: t0 + 30,
        ..every
    };
    let r = store
        .redeem(&request(next, None, None))
        .await
        .expect("redeem");
    assert_eq!(verdict(r), Verdict::CheckDue { fence: 2 }, "checked again");
}

/// docs/design.md §4.16: a bound family rotates only for a request that proved its key; any
/// other changes nothing (and a rotated-out token is still reuse, whoever presents it).
async fn a_bound_family_needs_its_key<S: TokenStore>(store: S) {
    let t0 = now();
    let bound = NewFamily {
        binding: Some("jkt:key-a".into()),
        ..family(t0, TokenFormat::Jwt)
    };
    store.create_family(&bound).await.expect("create");
    let with = |proven: &'static str, g, at| Redeem {
        proven,
        ..redeem(g, at)
    };
    for wrong in ["", "jkt:key-b", "key-a", "jkt:key-ab", "x5t#S256:key-a"] {
        assert_eq!(
            verdict(go(&store, &bound, with(wrong, 0, t0 + 1)).await),
            Verdict::WrongKey,
            "{wrong:?}"
        );
    }
    match go(&store, &bound, with("x5t#S256:c jkt:key-a", 0, t0 + 2)).await {
        Redemption::Decided {
            verdict, family, ..
        } => {
            assert_eq!(
                verdict,
                Verdict::Rotated {
                    generation: 1,
                    scope: "openid profile read".into()
                }
            );
            assert_eq!(family.binding.as_deref(), Some("jkt:key-a"));
        }
        other => panic!("{other:?}"),
    }
    // A grace retry needs the key too.
    assert_eq!(
        verdict(go(&store, &bound, with("", 0, t0 + 3)).await),
        Verdict::WrongKey
    );
    assert!(matches!(
        verdict(go(&store, &bound, with("jkt:key-a", 0, t0 + 4)).await),
        Verdict::Grace { generation: 1, .. }
    ));
    // An unbound family goes on with or without a key, and says it is unbound.
    let bearer = family(t0, TokenFormat::Jwt);
    store.create_family(&bearer).await.expect("create");
    match go(&store, &bearer, with("jkt:key-a", 0, t0 + 5)).await {
        Redemption::Decided {
            verdict, family, ..
        } => {
            assert!(matches!(verdict, Verdict::Rotated { .. }));
            assert_eq!(family.binding, None);
        }
        other => panic!("{other:?}"),
    }
    // Bulk creation keeps the binding too.
    let many = NewFamily {
        binding: Some("jkt:key-c".into()),
        ..family(t0, TokenFormat::Jwt)
    };
    store
        .create_families(std::slice::from_ref(&many))
        .await
        .expect("create");
    assert_eq!(
        verdict(go(&store, &many, with("", 0, t0 + 6)).await),
        Verdict::WrongKey
    );
    assert!(matches!(
        verdict(go(&store, &many, with("jkt:key-c x5t#S256:d", 0, t0 + 7)).await),
        Verdict::Rotated { .. }
    ));
}

/// docs/design.md §4.15: a one-time identifier (an assertion's or a DPoP proof's `jti`) is
/// remembered in the redemption's own step; presented again it makes the redemption a replay
/// that changes nothing, on any family, until it expires.
async fn one_time_ids_are_remembered_in_the_redemption<S: TokenStore>(store: S) {
    let t0 = now();
    let (a, b) = (family(t0, TokenFormat::Jwt), family(t0, TokenFormat::Jwt));
    store.create_family(&a).await.expect("create");
    store.create_family(&b).await.expect("create");
    let id = |n: u8| format!("{:064x}", u64::from(n) * 0x1_0000_0001 + t0 as u64);
    let with = |f: &NewFamily, r: Redeem<'static>, once: Vec<OneTime>| {
        let family = f.id.as_str().to_owned();
        let store = &store;
        async move {
            store
                .redeem(&RedeemRequest {
                    family: &family,
                    redeem: r,
                    opaque: None,
                    new_upstream_token: None,
                    upstream_answer: None,
                    once,
                })
                .await
                .expect("store answers")
        }
    };
    let once = |n: u8, until_ms: i64| OneTime {
        id: id(n),
        until_ms,
    };
    // First use: the redemption goes on as usual.
    let first = with(&a, redeem(0, t0 + 1), vec![once(1, t0 + MIN)]).await;
    assert!(matches!(
        verdict(first),
        Verdict::Rotated { generation: 1, .. }
    ));
    // The same id again, on this family or another, with a token that would rotate: a replay,
    // and nothing changes (the next token of each family still rotates from where it was).
    let replay = with(&a, redeem(1, t0 + 2), vec![once(1, t0 + MIN)]).await;
    assert_eq!(replay, Redemption::Replayed { index: 0 });
    let replay = with(
        &b,
        redeem(0, t0 + 3),
        vec![once(2, t0 + MIN), once(1, t0 + MIN)],
    )
    .await;
    assert_eq!(replay, Redemption::Replayed { index: 1 });
    assert!(matches!(
        verdict(go(&store, &b, redeem(0, t0 + 4)).await),
        Verdict::Rotated { generation: 1, .. }
    ));
    // An id before the replayed one was remembered.
    let replay = with(&b, redeem(1, t0 + 5), vec![once(2, t0 + MIN)]).await;
    assert_eq!(replay, Redemption::Replayed { index: 0 });
    assert!(matches!(
        verdict(go(&store, &a, redeem(1, t0 + 6)).await),
        Verdict::Rotated { generation: 2, .. }
    ));
    // Even a request for an unknown family remembers its ids.
    let unknown = NewFamily {
        id: FamilyId::random(),
        ..family(t0, TokenFormat::Jwt)
    };
    assert_eq!(
        with(&unknown, redeem(0, t0 + 7), vec![once(3, t0 + MIN)]).await,
        Redemption::Unknown
    );
    assert_eq!(
        with(&a, redeem(2, t0 + 8), vec![once(3, t0 + MIN)]).await,
        Redemption::Replayed { index: 0 }
    );
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        /// Every case in turn, each on a store from `open(case name)` (e.g. its own key
        /// prefix on one shared topology).
        #[allow(dead_code)]
        async fn every_case(open: impl Fn(&str) -> RedisStore) {
            $(
                eprintln!("contract case {}", stringify!($case));
                $case(open(stringify!($case))).await;
            )*
        }

        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(MemoryStore::new()).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let server = crate::support::redis::RedisServer::start();
                    super::$case(redis_store(&server)).await;
                }
            )*
        }
    };
}

fn redis_store(server: &crate::support::redis::RedisServer) -> RedisStore {
    let config: StoreConfig =
        toml::from_str(&format!("url = \"{}\"", server.url())).expect("config");
    RedisStore::open(&config).expect("open")
}

contract!(
    rotation_returns_the_family_and_advances_the_generation,
    an_unknown_family_is_unknown,
    the_previous_token_within_grace_gets_the_live_generation,
    reuse_outside_grace_revokes_the_family,
    a_rotated_out_token_is_reuse_whatever_else_is_wrong,
    the_verifier_is_checked_in_the_same_step,
    reseal_replaces_only_the_seal_it_expects,
    zero_grace_makes_every_second_presentation_reuse,
    another_clients_token_changes_nothing,
    narrowing_sticks_and_widening_stops_at_the_grant,
    reuse_mode_keeps_the_token_valid,
    idle_and_absolute_lifetimes_end_the_family,
    opaque_access_tokens_are_stored_with_the_family,
    concurrent_redemptions_fork_nothing,
    revocation_is_by_owner_and_ends_the_family,
    introspection_sees_only_the_live_generation,
    revocation_by_subject_and_by_client,
    revocation_by_session_spares_what_it_is_told_to,
    revocation_reads_large_indexes_to_the_end,
    a_due_check_goes_to_one_redemption_and_its_outcome_rotates,
    a_failed_check_is_served_for_a_while_then_refused,
    an_upstream_invalid_grant_revokes_the_family,
    a_family_without_a_kept_token_is_never_checked,
    an_upstream_format_family_keeps_its_answer_for_the_grace_window,
    many_families_at_once,
    a_revocation_racing_refreshes_always_wins,
    one_time_ids_are_remembered_in_the_redemption,
    a_bound_family_needs_its_key,
);

#[tokio::test]
async fn redis_keeps_every_key_of_a_family_in_one_slot_and_no_token() {
    let server = crate::support::redis::RedisServer::start();
    let store = redis_store(&server);
    let key = refresh_proxy::internal::mint::refresh::RefreshTokenKey::generate();
    let t0 = now();
    let mut f = family(t0, TokenFormat::Opaque);
    let (token, verifier) = key.first(&f.id);
    f.verifier = verifier;
    let parsed = key.parse(&token).expect("ours");
    let (next, successor) = key.successor(&parsed);
    store.create_family(&f).await.expect("create");
    let at = refresh_proxy::internal::mint::opaque::mint(&f.id);
    let res = store
        .redeem(&RedeemRequest {
            family: f.id.as_str(),
            redeem: Redeem {
                presented: parsed.verifier(),
                successors: &[successor],
                ..redeem(0, t0)
            },
            opaque: Some(OpaqueCandidate {
                digest: at.digest.clone(),
                issued_ms: t0,
                expires_ms: t0 + MIN,
            }),
            new_upstream_token: None,
            upstream_answer: None,
            once: Vec::new(),
        })
        .await
        .expect("redeem");
    assert!(
        matches!(
            res,
            Redemption::Decided {
                verdict: Verdict::Rotated { .. },
                opaque_stored: true,
                ..
            }
        ),
        "{res:?}"
    );

    let client = ::redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    // The family's own keys; the subject and client indexes are separate keys by design.
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("rp:{*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let tag = format!("rp:{{{}}}:", f.id);
    assert!(keys.iter().all(|k| k.starts_with(&tag)), "{keys:?}");
    let mut dump = String::new();
    for k in &keys {
        let kind: String = ::redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("type");
        let text: Vec<Vec<u8>> = if kind == "hash" {
            ::redis::cmd("HGETALL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .expect("hgetall")
        } else {
            vec![
                ::redis::cmd("GET")
                    .arg(k)
                    .query_async(&mut conn)
                    .await
                    .expect("get"),
            ]
        };
        for t in &text {
            dump.push_str(&String::from_utf8_lossy(t));
            dump.push('|');
        }
    }
    for secret in [&token, &next, &at.token] {
        let random_part = secret.rsplit('.').next().expect("parts");
        assert!(!dump.contains(random_part), "a token reached Redis: {dump}");
    }
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0, "family keys expire");
}

/// A plain connection to `server`, to look at the keys a store wrote.
async fn raw(server: &crate::support::redis::RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn")
}

/// `command key`'s integer answer (SCARD, EXISTS, PTTL).
async fn number(conn: &mut ::redis::aio::MultiplexedConnection, command: &str, key: &str) -> i64 {
    ::redis::cmd(command)
        .arg(key)
        .query_async(conn)
        .await
        .expect(command)
}

/// A family of client `www` for `subject`, with no upstream session.
fn family_for(t0: i64, subject: &str) -> NewFamily {
    NewFamily {
        subject: subject.into(),
        session: None,
        ..family(t0, TokenFormat::Jwt)
    }
}

/// The client's index grows with its subjects, not with its families: a client that keeps
/// opening families for the same users adds no member per family (docs/design.md §6).
#[tokio::test]
async fn redis_indexes_a_client_by_its_subjects() {
    let server = crate::support::redis::RedisServer::start();
    let store = redis_store(&server);
    let t0 = now();
    let families: Vec<NewFamily> = (0..60)
        .map(|i| family_for(t0, &format!("user-{}", i % 3)))
        .collect();
    store
        .create_families(&families[..30])
        .await
        .expect("create");
    for f in &families[30..] {
        store.create_family(f).await.expect("create");
    }
    let mut conn = raw(&server).await;
    let subjects: Vec<String> = ::redis::cmd("SMEMBERS")
        .arg("rp:idx:client-subjects:www")
        .query_async(&mut conn)
        .await
        .expect("smembers");
    let mut subjects = subjects;
    subjects.sort();
    assert_eq!(subjects, ["user-0", "user-1", "user-2"]);
    let legacy = number(&mut conn, "EXISTS", "rp:idx:client:www").await;
    assert_eq!(legacy, 0, "no set with a member per family");
    let ttl = number(&mut conn, "PTTL", "rp:idx:client-subjects:www").await;
    assert!(
        ttl > 6 * DAY && ttl <= 7 * DAY,
        "lives as long as the longest family: {ttl}"
    );
    let gone = store
        .revoke_many(&Selection::all(Index::Client("www")))
        .await
        .expect("revoke");
    assert_eq!(ids(gone), sorted(&families));
}

/// A user who keeps logging in opens a family each time; the families end (here revoked,
/// as by expiry or logout), but their ids were left in the subject's index, which grew by one
/// member a login for as long as the user stayed active. Each family opened now takes ended
/// ones out (docs/design.md §6), and never a live one.
#[tokio::test]
async fn redis_keeps_a_subjects_index_to_its_live_families() {
    let server = crate::support::redis::RedisServer::start();
    let store = redis_store(&server);
    let t0 = now();
    let login = || family_for(t0, "dave");
    let mut conn = raw(&server).await;
    let mut previous: Option<NewFamily> = None;
    for _ in 0..50 {
        let f = login();
        store.create_family(&f).await.expect("create");
        if let Some(p) = previous.take() {
            let gone = store
                .revoke_family(p.id.as_str(), None)
                .await
                .expect("revoke");
            assert!(matches!(gone, Revoke::Revoked(_)), "{gone:?}");
        }
        previous = Some(f);
    }
    let members = number(&mut conn, "SCARD", "rp:idx:sub:dave").await;
    assert!(
        (1..=3).contains(&members),
        "50 logins, one family live: {members} members"
    );

    // Live families are never taken out, one at a time or in bulk.
    let live: Vec<NewFamily> = (0..40).map(|_| family_for(t0, "erin")).collect();
    for f in &live[..20] {
        store.create_family(f).await.expect("create");
    }
    store.create_families(&live[20..]).await.expect("create");
    let members = number(&mut conn, "SCARD", "rp:idx:sub:erin").await;
    assert_eq!(members, 40);
    let gone = store
        .revoke_many(&Selection::all(Index::Subject("erin")))
        .await
        .expect("revoke");
    assert_eq!(ids(gone), sorted(&live));
}

/// Families that an earlier version indexed per client (`idx:client:<client>`, a member per
/// family) are still ended by revocation by client: an upgrade must not make a revocation
/// silently miss them.
#[tokio::test]
async fn redis_revocation_by_client_reads_the_earlier_per_family_index() {
    let server = crate::support::redis::RedisServer::start();
    let store = redis_store(&server);
    let t0 = now();
    let old = family_for(t0, "alice");
    let new = family_for(t0, "bob");
    store.create_family(&old).await.expect("create");
    store.create_family(&new).await.expect("create");
    // `old` as the earlier version left it: in the subject's set and the per-family client
    // set, with no client-subjects entry for its subject.
    let mut conn = raw(&server).await;
    let _: () = ::redis::pipe()
        .cmd("SREM")
        .arg("rp:idx:client-subjects:www")
        .arg("alice")
        .ignore()
        .cmd("SADD")
        .arg("rp:idx:client:www")
        .arg(old.id.as_str())
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("pipe");
    let gone = store
        .revoke_many(&Selection::all(Index::Client("www")))
        .await
        .expect("revoke");
    assert_eq!(ids(gone), sorted([&old, &new]));
    assert_eq!(go(&store, &old, redeem(0, t0)).await, Redemption::Unknown);
    let left = number(&mut conn, "EXISTS", "rp:idx:client:www").await;
    assert_eq!(left, 0, "the emptied set is gone");
}

/// The contract on Redis topologies: one topology per test, every case on its own key prefix.
mod topologies {
    use super::*;
    use crate::support::topology::{Cluster, Options, Sentinel, Standalone};

    /// A store on `url` with the topology's TLS files and ACL user, one prefix per case.
    async fn every_case_on(url: &str, opts: &Options) {
        every_case_with(url, opts, "").await;
    }

    /// Like `every_case_on`, with `extra` lines in `[store]`.
    async fn every_case_with(url: &str, opts: &Options, extra: &str) {
        // Generous timeouts: the contract is about what the store does, not how fast a
        // loaded machine runs six Redis servers.
        let mut store =
            format!("url = \"{url}\"\nresponse_timeout = 5\noperation_timeout = 10\n{extra}");
        if let Some(tls) = &opts.tls {
            store.push_str(&format!("tls_ca_file = {:?}\n", tls.files.ca));
            if tls.mutual {
                store.push_str(&format!(
                    "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
                    tls.files.client_cert, tls.files.client_key
                ));
            }
        }
        if let Some((user, password)) = &opts.acl {
            store.push_str(&format!(
                "username = \"{user}\"\npassword = \"{password}\"\n"
            ));
        }
        every_case(|case| {
            let config: StoreConfig =
                toml::from_str(&format!("{store}key_prefix = \"{case}:\"\n")).expect("config");
            RedisStore::open(&config).expect("open")
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls() {
        let server = Standalone::start(Options::tls(false));
        every_case_on(&server.url(), server.options()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutual_tls_with_an_acl_user() {
        let server = Standalone::start(Options::tls(true).with_acl("refresh-proxy", "s3cret pw"));
        every_case_on(&server.url(), server.options()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acl_user_and_database() {
        let server = Standalone::start(Options::acl("refresh-proxy", "pw"));
        every_case_on(&format!("{}/3", server.url()), server.options()).await;
        let keys = server.cli(&["-n", "3", "DBSIZE"]);
        assert_ne!(keys.trim(), "0", "the families are in database 3");
        assert_eq!(server.cli(&["-n", "0", "DBSIZE"]).trim(), "0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sentinel() {
        let topology = Sentinel::start(Options::default());
        every_case_on(&topology.url(), topology.options()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sentinel_over_mutual_tls_with_authenticated_sentinels() {
        let topology =
            Sentinel::start_requiring_auth(Options::tls(true).with_acl("refresh-proxy", "pw"));
        let sentinel_auth = "sentinel_username = \"refresh-proxy\"\nsentinel_password = \"pw\"\n";
        every_case_with(&topology.url(), topology.options(), sentinel_auth).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        let topology = Cluster::start(Options::default());
        every_case_on(&topology.url(), topology.options()).await;
        // The families were spread over the shards, each family's keys on one of them.
        let used = topology
            .masters()
            .into_iter()
            .filter(|port| topology.cli(*port, &["DBSIZE"]).trim() != "0")
            .count();
        assert!(used >= 2, "keys on {used} of 3 masters");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_over_mutual_tls_with_an_acl_user() {
        let topology = Cluster::start(Options::tls(true).with_acl("refresh-proxy", "pw"));
        every_case_on(&topology.url(), topology.options()).await;
    }
}
