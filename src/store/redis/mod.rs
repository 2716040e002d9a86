//! `redis://`: the Redis store, over one multiplexed, auto-reconnecting connection.
//!
//! Key layout (every key of a family in one cluster hash slot, DESIGN §6):
//!
//! - `<prefix>{<family>}:f` — a hash: client, subject, granted and current scope, generation,
//!   clocks, format, carried claims. It expires with the family (idle or absolute deadline).
//! - `<prefix>{<family>}:at:<digest>` — an opaque access token's record (JSON), expiring with
//!   the token.
//!
//! Each operation is one Lua script on one shard: one round trip per refresh
//! (`redeem.lua`, the twin of [`crate::grant::rules::redeem`]). `Script::invoke_async` sends
//! EVALSHA and loads the script on NOSCRIPT.
//!
//! The connection is made lazily: the proxy starts (and forwards) while Redis is down, and
//! `/readyz` says so until it is reachable. Every command is bounded by `store.response_timeout`
//! and every connection attempt by `store.connect_timeout`. A command that failed may still have
//! run on the server; the grace rule makes the client's retry safe.

use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    AccessTokenRecord, FamilyData, NewFamily, RedeemRequest, Redemption, RefreshTokenInfo, Revoke,
    StoreError, TokenFormat, TokenStore,
};
use crate::config::{ConfigError, StoreConfig};
use crate::grant::rules::Verdict;

const CREATE: &str = r"
redis.call('HSET', KEYS[1], 'c', ARGV[1], 's', ARGV[2], 'g', ARGV[3], 'sc', ARGV[3], 'n', '0',
  'r', ARGV[8], 'i', ARGV[9], 'e', ARGV[10], 'f', ARGV[4], 'a', ARGV[5], 'd', ARGV[6], 't', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], math.min(tonumber(ARGV[9]), tonumber(ARGV[10])))
return 1
";

const ACCESS_TOKEN: &str = r"
local d = redis.call('HMGET', KEYS[1], 'i', 'e')
if not d[1] then return false end
local now = tonumber(ARGV[1])
if now >= tonumber(d[1]) or now >= tonumber(d[2]) then return false end
return redis.call('GET', KEYS[2])
";

const REVOKE: &str = r"
local c = redis.call('HGET', KEYS[1], 'c')
if not c then return 'unknown' end
if ARGV[1] ~= '' and ARGV[1] ~= c then return 'not_owner' end
redis.call('DEL', KEYS[1])
return 'revoked'
";

/// Families written per pipeline by `create_families`.
const BATCH: usize = 1000;
/// Index members read per SSCAN step when revoking by subject or client.
const SCAN_COUNT: usize = 1000;

struct Scripts {
    create: redis::Script,
    redeem: redis::Script,
    access_token: redis::Script,
    revoke: redis::Script,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    pub fn open(config: &StoreConfig) -> Result<RedisStore, ConfigError> {
        let invalid = |e: redis::RedisError| ConfigError::invalid("store.url", e);
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(invalid)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(invalid)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(50))
            .set_max_delay(std::time::Duration::from_secs(1));
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(invalid)?;
        Ok(RedisStore {
            conn,
            prefix: Arc::from(config.key_prefix.as_str()),
            scripts: Arc::new(Scripts {
                create: redis::Script::new(CREATE),
                redeem: redis::Script::new(include_str!("redeem.lua")),
                access_token: redis::Script::new(ACCESS_TOKEN),
                revoke: redis::Script::new(REVOKE),
            }),
        })
    }

    fn family_key(&self, family: &str) -> String {
        format!("{}{{{family}}}:f", self.prefix)
    }

    fn access_token_key(&self, family: &str, digest: &str) -> String {
        format!("{}{{{family}}}:at:{digest}", self.prefix)
    }

    /// The set of a subject's family ids (its own slot; DESIGN §6: secondary indexes may span
    /// slots, and are idempotent and lazily cleaned).
    fn subject_key(&self, subject: &str) -> String {
        format!("{}idx:sub:{subject}", self.prefix)
    }

    fn client_key(&self, client_id: &str) -> String {
        format!("{}idx:client:{client_id}", self.prefix)
    }

    /// Adds families to the subject and client indexes. Each set lives as long as the longest
    /// family added to it (NX then GT: set a first expiry, then only ever extend it).
    fn index(
        &self,
        pipe: &mut redis::Pipeline,
        subject: &str,
        client: &str,
        ids: &[&str],
        ttl_ms: i64,
    ) {
        for key in [self.subject_key(subject), self.client_key(client)] {
            pipe.cmd("SADD").arg(&key).arg(ids).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).arg("GT").ignore();
        }
    }

    /// Revokes every family listed in an index set, then drops the set.
    async fn revoke_index(&self, key: String) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut revoked = 0u64;
        loop {
            let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if !ids.is_empty() {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("DEL").arg(self.family_key(id));
                }
                let deleted: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
                revoked += deleted.iter().sum::<u64>();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(revoked)
    }
}

fn parse_redemption(reply: Vec<String>) -> Result<Redemption, StoreError> {
    let bad = || StoreError::Protocol(format!("redeem script answered {} fields", reply.len()));
    if reply.first().map(String::as_str) == Some("unknown") {
        return Ok(Redemption::Unknown);
    }
    let [
        verdict,
        generation,
        scope,
        client,
        subject,
        format,
        atc,
        idc,
        auth,
        stored,
        current,
    ] = <[String; 11]>::try_from(reply.clone()).map_err(|_| bad())?;
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| StoreError::Protocol(format!("not a generation: {s:?}")))
    };
    let verdict = match verdict.as_str() {
        "rotated" => Verdict::Rotated {
            generation: num(&generation)?,
            scope,
        },
        "reused" => Verdict::Reused { scope },
        "grace" => Verdict::Grace {
            generation: num(&generation)?,
            scope,
        },
        "reuse" => Verdict::ReuseDetected {
            presented: num(&generation)?,
            current: num(&current)?,
        },
        "expired" => Verdict::Expired,
        "wrong_client" => Verdict::WrongClient,
        "invalid_scope" => Verdict::InvalidScope,
        other => return Err(StoreError::Protocol(format!("unknown verdict {other:?}"))),
    };
    Ok(Redemption::Decided {
        verdict,
        family: FamilyData {
            client_id: client,
            subject,
            format: TokenFormat::parse(&format)
                .ok_or_else(|| StoreError::Protocol(format!("unknown format {format:?}")))?,
            at_claims: atc,
            id_claims: idc,
            auth_time: auth.parse().ok(),
        },
        opaque_stored: stored == "1",
    })
}

impl TokenStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn create_family(&self, f: &NewFamily) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.create_one(&mut conn, f).await?;
        let mut pipe = redis::pipe();
        self.index(
            &mut pipe,
            &f.subject,
            &f.client_id,
            &[f.id.as_str()],
            f.expires_at_ms - f.created_ms,
        );
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn create_families(&self, families: &[NewFamily]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for chunk in families.chunks(BATCH) {
            // Plain commands, not the script: nobody holds a token of a family that is being
            // created, so there is nothing to race with, and a pipeline of them is fast.
            let mut pipe = redis::pipe();
            for f in chunk {
                let key = self.family_key(f.id.as_str());
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(&[
                        ("c", f.client_id.as_str()),
                        ("s", f.subject.as_str()),
                        ("g", f.granted_scope.as_str()),
                        ("sc", f.granted_scope.as_str()),
                        ("n", "0"),
                        ("f", f.format.as_str()),
                        ("a", f.at_claims.as_str()),
                        ("d", f.id_claims.as_str()),
                    ])
                    .arg(&[
                        ("t", f.auth_time.map(|t| t.to_string()).unwrap_or_default()),
                        ("r", f.created_ms.to_string()),
                        ("i", f.idle_deadline_ms.to_string()),
                        ("e", f.expires_at_ms.to_string()),
                    ])
                    .ignore();
                pipe.cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(f.idle_deadline_ms.min(f.expires_at_ms))
                    .ignore();
            }
            // Index by (subject, client) group.
            let mut groups: std::collections::HashMap<(&str, &str), (Vec<&str>, i64)> =
                std::collections::HashMap::new();
            for f in chunk {
                let g = groups
                    .entry((f.subject.as_str(), f.client_id.as_str()))
                    .or_default();
                g.0.push(f.id.as_str());
                g.1 = g.1.max(f.expires_at_ms - f.created_ms);
            }
            for ((subject, client), (ids, ttl)) in &groups {
                self.index(&mut pipe, subject, client, ids, *ttl);
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn refresh_token_info(
        &self,
        family: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        let mut conn = self.conn.clone();
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.family_key(family))
            .arg(&["c", "s", "sc", "n", "r", "i", "e"])
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let [
            Some(c),
            Some(s),
            Some(sc),
            Some(n),
            Some(r),
            Some(i),
            Some(e),
        ] = <[Option<String>; 7]>::try_from(f).map_err(|_| StoreError::Protocol("HMGET".into()))?
        else {
            return Ok(None);
        };
        let num = |v: &str| v.parse::<i64>().unwrap_or(0);
        let (idle, expires) = (num(&i), num(&e));
        let current = n.parse::<u64>().unwrap_or(u64::MAX);
        let live = now_ms < idle && now_ms < expires;
        Ok((live && generation >= current).then(|| RefreshTokenInfo {
            client_id: c,
            subject: s,
            scope: sc,
            issued_ms: num(&r),
            expires_ms: idle.min(expires),
        }))
    }

    async fn revoke_family(
        &self,
        family: &str,
        client_id: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        let mut conn = self.conn.clone();
        let outcome: String = self
            .scripts
            .revoke
            .key(self.family_key(family))
            .arg(client_id.unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "revoked" => Ok(Revoke::Revoked),
            "not_owner" => Ok(Revoke::NotOwner),
            "unknown" => Ok(Revoke::Unknown),
            other => Err(StoreError::Protocol(format!("revoke answered {other:?}"))),
        }
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        self.revoke_index(self.subject_key(subject)).await
    }

    async fn revoke_client(&self, client_id: &str) -> Result<u64, StoreError> {
        self.revoke_index(self.client_key(client_id)).await
    }
    async fn redeem(&self, req: &RedeemRequest<'_>) -> Result<Redemption, StoreError> {
        let r = &req.redeem;
        let (issued, expires, digest) = match &req.opaque {
            Some(c) => (c.issued_ms, c.expires_ms, c.digest.as_str()),
            None => (0, 0, "-"),
        };
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .scripts
            .redeem
            .key(self.family_key(req.family))
            .key(self.access_token_key(req.family, digest))
            .arg(r.generation)
            .arg(r.client_id)
            .arg(if r.scope.is_some() { "1" } else { "0" })
            .arg(r.scope.unwrap_or(""))
            .arg(r.now_ms)
            .arg(r.grace_ms)
            .arg(r.idle_ttl_ms)
            .arg(if r.reuse_refresh_tokens { "1" } else { "0" })
            .arg(issued)
            .arg(expires)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        parse_redemption(reply)
    }

    async fn access_token(
        &self,
        family: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .scripts
            .access_token
            .key(self.family_key(family))
            .key(self.access_token_key(family, digest))
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(raw) = raw else { return Ok(None) };
        let record: AccessTokenRecord = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Protocol(format!("access token record: {e}")))?;
        Ok((now_ms < record.expires_ms).then_some(record))
    }
}

impl RedisStore {
    async fn create_one(
        &self,
        conn: &mut ConnectionManager,
        f: &NewFamily,
    ) -> Result<(), StoreError> {
        self.scripts
            .create
            .key(self.family_key(f.id.as_str()))
            .arg(&f.client_id)
            .arg(&f.subject)
            .arg(&f.granted_scope)
            .arg(f.format.as_str())
            .arg(&f.at_claims)
            .arg(&f.id_claims)
            .arg(f.auth_time.map(|t| t.to_string()).unwrap_or_default())
            .arg(f.created_ms)
            .arg(f.idle_deadline_ms)
            .arg(f.expires_at_ms)
            .invoke_async::<i64>(conn)
            .await
            .map(drop)
            .map_err(unavailable)
    }
}
