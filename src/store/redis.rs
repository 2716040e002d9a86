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
    AccessTokenRecord, FamilyData, NewFamily, RedeemRequest, Redemption, StoreError, TokenFormat,
    TokenStore,
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

struct Scripts {
    create: redis::Script,
    redeem: redis::Script,
    access_token: redis::Script,
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
            }),
        })
    }

    fn family_key(&self, family: &str) -> String {
        format!("{}{{{family}}}:f", self.prefix)
    }

    fn access_token_key(&self, family: &str, digest: &str) -> String {
        format!("{}{{{family}}}:at:{digest}", self.prefix)
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
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(unavailable)
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
