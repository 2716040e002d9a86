//! `memory://`: the in-process store, for local runs, tests and load rigs. Not durable, not
//! shared between replicas.
//!
//! One `std::sync::Mutex` over the families and one over opaque access tokens, never held
//! across an `.await`; each redemption is one critical section running the shared rules.
//! Expired entries are dropped when touched, and swept every 4,096 writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{
    AccessTokenRecord, FamilyData, NewFamily, RedeemRequest, Redemption, StoreError, TokenFormat,
    TokenStore,
};
use crate::grant::rules::{self, Effect, FamilyState, Verdict};

const SWEEP_EVERY: u64 = 4096;

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    families: Mutex<Families>,
    access_tokens: Mutex<HashMap<String, AccessTokenRecord>>,
}

#[derive(Debug, Default)]
struct Families {
    map: HashMap<String, Family>,
    writes: u64,
}

#[derive(Debug, Clone)]
struct Family {
    state: FamilyState,
    data: FamilyData,
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Number of families held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.families.lock().expect("store lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(
        families: &mut Families,
        tokens: &Mutex<HashMap<String, AccessTokenRecord>>,
        now_ms: i64,
    ) {
        families.writes += 1;
        if !families.writes.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        families
            .map
            .retain(|_, f| now_ms < f.state.idle_deadline_ms && now_ms < f.state.expires_at_ms);
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
        let family = Family {
            state: FamilyState {
                client_id: f.client_id.clone(),
                granted_scope: f.granted_scope.clone(),
                scope: f.granted_scope.clone(),
                generation: 0,
                rotated_at_ms: f.created_ms,
                idle_deadline_ms: f.idle_deadline_ms,
                expires_at_ms: f.expires_at_ms,
            },
            data: FamilyData {
                client_id: f.client_id.clone(),
                subject: f.subject.clone(),
                format: f.format,
                at_claims: f.at_claims.clone(),
                id_claims: f.id_claims.clone(),
                auth_time: f.auth_time,
            },
        };
        let mut families = self.inner.families.lock().expect("store lock");
        families.map.insert(f.id.as_str().to_owned(), family);
        Self::sweep(&mut families, &self.inner.access_tokens, f.created_ms);
        Ok(())
    }

    async fn redeem(&self, req: &RedeemRequest<'_>) -> Result<Redemption, StoreError> {
        let mut families = self.inner.families.lock().expect("store lock");
        let Some(family) = families.map.get(req.family) else {
            return Ok(Redemption::Unknown);
        };
        let (verdict, effect) = rules::redeem(&family.state, &req.redeem);
        let data = family.data.clone();
        let granted_scope = match &verdict {
            Verdict::Rotated { scope, .. }
            | Verdict::Reused { scope }
            | Verdict::Grace { scope, .. } => Some(scope.clone()),
            _ => None,
        };
        match effect {
            Effect::None => {}
            Effect::Update(next) => {
                if let Some(f) = families.map.get_mut(req.family) {
                    f.state = next;
                }
            }
            Effect::Delete => {
                families.map.remove(req.family);
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
                },
            );
            opaque_stored = true;
            Self::sweep(&mut families, &self.inner.access_tokens, req.redeem.now_ms);
        }
        Ok(Redemption::Decided {
            verdict,
            family: data,
            opaque_stored,
        })
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
