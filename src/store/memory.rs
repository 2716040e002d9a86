//! `memory://`: the in-process store, for local runs, tests and load rigs. Not durable, not
//! shared between replicas.
//!
//! One `std::sync::Mutex` over the families and one over opaque access tokens, never held
//! across an `.await`; each redemption is one critical section running the shared rules.
//! Expired entries are dropped when touched, and swept once the writes since the last sweep
//! reach the number of live families (at least 4,096): amortised O(1) per write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{
    AccessTokenRecord, Ended, FamilyData, Index, NewFamily, RedeemRequest, Redemption,
    RefreshTokenInfo, Revoke, Selection, StoreError, TokenFormat, TokenStore,
};
use crate::grant::rules::{self, CheckState, Checked, Effect, FamilyState, Verdict};
use crate::mint::refresh::Seal;

const SWEEP_EVERY: u64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    families: Mutex<Families>,
    access_tokens: Mutex<HashMap<String, AccessTokenRecord>>,
    /// One-time identifiers seen (`first_use`), until when; swept when they outnumber 4,096.
    used: Mutex<HashMap<String, i64>>,
}

#[derive(Debug, Default)]
struct Families {
    map: HashMap<String, Family>,
    /// Family ids by subject and by client; stale ids are dropped when a revocation reads them.
    by_subject: HashMap<String, HashSet<String>>,
    by_client: HashMap<String, HashSet<String>>,
    by_session: HashMap<String, HashSet<String>>,
    writes: u64,
    /// Families whose record the store cannot read (a test hook: [`MemoryStore::set_unreadable`]).
    #[cfg(test)]
    unreadable: HashSet<String>,
}

impl Families {
    fn insert(&mut self, f: &NewFamily) {
        let id = f.id.as_str().to_owned();
        self.by_subject
            .entry(f.subject.clone())
            .or_default()
            .insert(id.clone());
        self.by_client
            .entry(f.client_id.clone())
            .or_default()
            .insert(id.clone());
        if let Some(session) = &f.session {
            self.by_session
                .entry(session.clone())
                .or_default()
                .insert(id.clone());
        }
        self.map.insert(id, new_family(f));
    }

    /// Removes the families in `index` that `selection` selects; returns them. The index
    /// keeps the ids it spared.
    fn revoke_many(&mut self, selection: &Selection<'_>) -> Vec<Ended> {
        let (index, key) = match selection.index {
            Index::Subject(s) => (&mut self.by_subject, s),
            Index::Client(c) => (&mut self.by_client, c),
            Index::Session(s) => (&mut self.by_session, s),
        };
        let Some(ids) = index.get_mut(key) else {
            return Vec::new();
        };
        let map = &mut self.map;
        let mut ended = Vec::new();
        ids.retain(|id| {
            let Some(f) = map.get(id.as_str()) else {
                return false;
            };
            if !selection.selects(&f.state.client_id, &f.state.granted_scope) {
                return true;
            }
            let f = map.remove(id.as_str()).expect("looked up above");
            ended.push(Ended {
                family: id.clone(),
                client_id: f.state.client_id,
                upstream_token: f.upstream_token,
            });
            false
        });
        if ids.is_empty() {
            index.remove(key);
        }
        ended
    }
}

fn new_family(f: &NewFamily) -> Family {
    Family {
        state: FamilyState {
            client_id: f.client_id.clone(),
            granted_scope: f.granted_scope.clone(),
            scope: f.granted_scope.clone(),
            generation: 0,
            rotated_at_ms: f.created_ms,
            idle_deadline_ms: f.idle_deadline_ms,
            expires_at_ms: f.expires_at_ms,
            verifier: f.verifier,
            check: CheckState {
                kept: f.upstream_token.is_some(),
                confirmed_ms: f.created_ms,
                ..CheckState::default()
            },
            binding: f.binding.clone(),
        },
        data: FamilyData {
            client_id: f.client_id.clone(),
            subject: f.subject.clone(),
            granted_scope: f.granted_scope.clone(),
            format: f.format,
            at_claims: f.at_claims.clone(),
            id_claims: f.id_claims.clone(),
            auth_time: f.auth_time,
            expires_at_ms: f.expires_at_ms,
            binding: f.binding.clone(),
            seal: f.seal,
        },
        upstream_token: f.upstream_token.clone(),
        upstream_answer: None,
    }
}

#[derive(Debug, Clone)]
struct Family {
    state: FamilyState,
    data: FamilyData,
    upstream_token: Option<Vec<u8>>,
    /// An `upstream`-format family's last upstream answer (sealed), for grace retries.
    upstream_answer: Option<Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Remembers one-time identifier `id` until `until_ms`: whether this is its first use.
    fn remember(&self, id: &str, now_ms: i64, until_ms: i64) -> bool {
        let mut used = self.inner.used.lock().expect("store lock");
        if used.len() >= SWEEP_EVERY as usize {
            used.retain(|_, until| *until > now_ms);
        }
        match used.get(id) {
            Some(until) if *until > now_ms => false,
            _ => {
                used.insert(id.to_owned(), until_ms);
                true
            }
        }
    }

    /// Number of families held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.families.lock().expect("store lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes family `id`'s record one the store cannot read, or readable again: its
    /// redemptions answer [`Redemption::Corrupt`] and change nothing, as a Redis hash whose
    /// fields were changed by hand does. The memory store's typed records cannot be unreadable
    /// otherwise; this lets the engine's tests reach that answer.
    #[cfg(test)]
    pub(crate) fn set_unreadable(&self, id: &str, unreadable: bool) {
        let mut families = self.inner.families.lock().expect("store lock");
        if unreadable {
            families.unreadable.insert(id.to_owned());
        } else {
            families.unreadable.remove(id);
        }
    }

    fn sweep(
        families: &mut Families,
        tokens: &Mutex<HashMap<String, AccessTokenRecord>>,
        now_ms: i64,
    ) {
        Self::sweep_after(families, tokens, now_ms, 1);
    }

    fn sweep_after(
        families: &mut Families,
        tokens: &Mutex<HashMap<String, AccessTokenRecord>>,
        now_ms: i64,
        writes: u64,
    ) {
        families.writes += writes;
        if families.writes < SWEEP_EVERY.max(families.map.len() as u64) {
            return;
        }
        families.writes = 0;
        families
            .map
            .retain(|_, f| now_ms < f.state.idle_deadline_ms && now_ms < f.state.expires_at_ms);
        let Families {
            map,
            by_subject,
            by_client,
            by_session,
            ..
        } = families;
        for index in [by_subject, by_client, by_session] {
            index.retain(|_, ids| {
                ids.retain(|id| map.contains_key(id));
                !ids.is_empty()
            });
        }
        let live = &families.map;
        tokens
            .lock()
            .expect("store lock")
            .retain(|key, t| now_ms < t.expires_ms && live.contains_key(family_of_key(key)));
    }
}

fn at_key(family: &str, digest: &str) -> String {
    format!("{family}:{digest}")
}

fn family_of_key(key: &str) -> &str {
    key.split_once(':').map(|(f, _)| f).unwrap_or(key)
}

impl TokenStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_family(&self, f: &NewFamily) -> Result<(), StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        families.insert(f);
        Self::sweep(&mut families, &self.inner.access_tokens, f.created_ms);
        Ok(())
    }

    async fn create_families(&self, batch: &[NewFamily]) -> Result<(), StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        for f in batch {
            families.insert(f);
        }
        if let Some(f) = batch.first() {
            Self::sweep_after(
                &mut families,
                &self.inner.access_tokens,
                f.created_ms,
                batch.len() as u64,
            );
        }
        Ok(())
    }

    async fn refresh_token_info(
        &self,
        family: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        let families = self.inner.families.lock().expect("store lock");
        Ok(families.map.get(family).and_then(|f| {
            let s = &f.state;
            let live = now_ms < s.idle_deadline_ms && now_ms < s.expires_at_ms;
            (live && generation >= s.generation).then(|| RefreshTokenInfo {
                family: f.data.clone(),
                generation: s.generation,
                verifier: s.verifier,
                scope: s.scope.clone(),
                issued_ms: s.rotated_at_ms,
                expires_ms: s.idle_deadline_ms.min(s.expires_at_ms),
            })
        }))
    }

    async fn revoke_family(
        &self,
        family: &str,
        client_id: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        match families.map.get(family) {
            None => Ok(Revoke::Unknown),
            Some(f) if client_id.is_some_and(|c| c != f.state.client_id) => Ok(Revoke::NotOwner),
            Some(_) => {
                let f = families.map.remove(family).expect("looked up above");
                Ok(Revoke::Revoked(Ended {
                    family: family.to_owned(),
                    client_id: f.state.client_id,
                    upstream_token: f.upstream_token,
                }))
            }
        }
    }

    async fn reseal(&self, family: &str, old: &Seal, new: &Seal) -> Result<bool, StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        Ok(match families.map.get_mut(family) {
            Some(f) if f.data.seal == *old => {
                f.data.seal = *new;
                true
            }
            _ => false,
        })
    }

    async fn revoke_many(&self, selection: &Selection<'_>) -> Result<Vec<Ended>, StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        Ok(families.revoke_many(selection))
    }

    async fn redeem(&self, req: &RedeemRequest<'_>) -> Result<Redemption, StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        // One-time identifiers first, under the families' lock: the same step as the
        // redemption (docs/design.md §4.15).
        for (index, once) in req.once.iter().enumerate() {
            if !self.remember(&once.id, req.redeem.now_ms, once.until_ms) {
                return Ok(Redemption::Replayed { index });
            }
        }
        let Some(family) = families.map.get(req.family) else {
            return Ok(Redemption::Unknown);
        };
        #[cfg(test)]
        if families.unreadable.contains(req.family) {
            return Ok(Redemption::Corrupt);
        }
        let (verdict, effect) = rules::redeem(&family.state, &req.redeem);
        // The upstream's rotated refresh token, when this caller's check confirmed the family
        // (its fencing token still the family's): the same test as the rules'.
        let check = family.state.check;
        let confirmed = matches!(req.redeem.confirm, Some((fence, Checked::Confirmed))
            if check.lease_until_ms.is_some() && check.fence == fence);
        let rotated_upstream = req.new_upstream_token.clone().filter(|_| confirmed);
        let answer = req.upstream_answer.clone().filter(|_| confirmed);
        let data = family.data.clone();
        let granted_scope = match &verdict {
            Verdict::Rotated { scope, .. }
            | Verdict::Reused { scope }
            | Verdict::Grace { scope, .. } => Some(scope.clone()),
            _ => None,
        };
        let mut upstream_token = None;
        if matches!(verdict, Verdict::Grace { .. }) && data.format == TokenFormat::Upstream {
            upstream_token = family.upstream_answer.clone();
        }
        match effect {
            Effect::None => {}
            Effect::Update(next) => {
                if let Some(f) = families.map.get_mut(req.family) {
                    f.state = next;
                    if rotated_upstream.is_some() {
                        f.upstream_token = rotated_upstream;
                    }
                    if answer.is_some() {
                        f.upstream_answer = answer;
                    }
                    if matches!(verdict, Verdict::CheckDue { .. }) {
                        upstream_token = f.upstream_token.clone();
                    }
                }
            }
            Effect::Delete => {
                let removed = families.map.remove(req.family);
                if matches!(verdict, Verdict::ReuseDetected { .. }) {
                    upstream_token = removed.and_then(|f| f.upstream_token);
                }
            }
        }
        let mut opaque_stored = false;
        if let (Some(scope), Some(candidate), TokenFormat::Opaque) =
            (granted_scope, &req.opaque, data.format)
        {
            self.inner.access_tokens.lock().expect("store lock").insert(
                at_key(req.family, &candidate.digest),
                AccessTokenRecord {
                    client_id: data.client_id.clone(),
                    subject: data.subject.clone(),
                    scope,
                    issued_ms: candidate.issued_ms,
                    expires_ms: candidate.expires_ms,
                    binding: Some(req.redeem.proven)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned),
                },
            );
            opaque_stored = true;
            Self::sweep(&mut families, &self.inner.access_tokens, req.redeem.now_ms);
        }
        Ok(Redemption::Decided {
            verdict,
            family: data,
            opaque_stored,
            upstream_token,
        })
    }

    async fn first_use(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        Ok(self.remember(id, now_ms, until_ms))
    }

    async fn forget_use(&self, id: &str) -> Result<(), StoreError> {
        self.inner.used.lock().expect("store lock").remove(id);
        Ok(())
    }

    async fn access_token(
        &self,
        family: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
        let live = {
            let families = self.inner.families.lock().expect("store lock");
            families.map.get(family).is_some_and(|f| {
                now_ms < f.state.idle_deadline_ms && now_ms < f.state.expires_at_ms
            })
        };
        let mut tokens = self.inner.access_tokens.lock().expect("store lock");
        let key = at_key(family, digest);
        if !live {
            tokens.remove(&key);
            return Ok(None);
        }
        match tokens.get(&key) {
            Some(t) if now_ms < t.expires_ms => Ok(Some(t.clone())),
            Some(_) => {
                tokens.remove(&key);
                Ok(None)
            }
            None => Ok(None),
        }
    }
}
