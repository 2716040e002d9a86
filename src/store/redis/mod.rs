//! The Redis store: standalone, Sentinel or Cluster, plain or TLS (docs/design.md §6).
//!
//! Key layout (every key of a family in one cluster hash slot):
//!
//! - `<prefix>{<family>}:f` — a hash: client, subject, granted and current scope, generation,
//!   clocks, format, carried claims. It expires with the family (idle or absolute deadline).
//! - `<prefix>{<family>}:at:<digest>` — an opaque access token's record (JSON), expiring with
//!   the token.
//! - `<prefix>used:<digest>` — a one-time identifier seen (a logout token's, a client
//!   assertion's or a DPoP proof's `jti`), expiring when it may no longer be presented.
//! - `<prefix>idx:sub:<subject>`, `<prefix>idx:sid:<session>` — sets of family ids, each in
//!   its own slot, for revocation by subject or upstream session (idempotent, lazily cleaned).
//! - `<prefix>idx:client-subjects:<client>` — the set of subjects a client has opened families
//!   for: revocation by client reads each of those subjects' sets and ends that client's
//!   families there (docs/design.md §6). One member per user, not per family.
//! - `<prefix>idx:client:<client>` — the set of family ids per client that earlier versions
//!   wrote; no longer written, still read by revocation by client until it expires with the
//!   last family it names.
//!
//! Each family operation is one Lua script on one shard: one round trip per refresh
//! (`redeem.lua`, the twin of [`crate::grant::rules::redeem`]), sent as EVALSHA, and as EVAL
//! on the one node that answered NOSCRIPT (a failed-over replica, a restarted server).
//!
//! Every command is bounded by `store.response_timeout`, every connection attempt by
//! `store.connect_timeout`, and every operation in all by `store.operation_timeout`. A command
//! that failed may still have run on the server; the grace rule makes the client's retry safe.

mod conn;
pub mod msgpack;

use crate::config::store_url::RedisUrl;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use self::conn::{Batch, Conn};

use super::{
    AccessTokenRecord, Ended, FamilyData, Index, NewFamily, RedeemRequest, Redemption,
    RefreshTokenInfo, Revoke, Selection, StoreError, TokenFormat, TokenStore,
};
use crate::config::{ConfigError, StoreConfig};
use crate::grant::rules::{Checked, Verdict};
use crate::mint::refresh::{DIGEST_BYTES, MAX_KEYS, Seal, Verifier};

/// Opens a family (`u`: the kept upstream refresh token, sealed, when there is one, and `k`:
/// when the upstream last confirmed it, at first its capture). Fields at
/// their default are left out (`n` 0, `f` jwt, empty `a`, `d`,
/// `t`; `sc` is written only once it differs from `g`): a family hash is small enough that a
/// few bytes move it to a smaller allocation (200 bytes instead of 232 for a typical family).
/// For the same reason the live token's verifier and the family's seal share one field, `v`
/// (12 + 12 bytes): two fields put a typical family in the next size class (264 bytes
/// instead of 232, measured with `MEMORY USAGE`).
const CREATE: &str = r"
redis.call('HSET', KEYS[1], 'c', ARGV[1], 's', ARGV[2], 'g', ARGV[3],
  'r', ARGV[8], 'i', ARGV[9], 'e', ARGV[10], 'v', ARGV[11] .. ARGV[12])
if ARGV[4] ~= 'jwt' then redis.call('HSET', KEYS[1], 'f', ARGV[4]) end
for i, field in ipairs({'a', 'd', 't'}) do
  if ARGV[4 + i] ~= '' then redis.call('HSET', KEYS[1], field, ARGV[4 + i]) end
end
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'u', ARGV[13], 'k', ARGV[8]) end
if ARGV[14] ~= '' then redis.call('HSET', KEYS[1], 'b', ARGV[14]) end
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

const RESEAL: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v or string.sub(v, 13) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', string.sub(v, 1, 12) .. ARGV[2])
return 1
";

/// Revokes one family. ARGV: 1 the only client whose family it may be ('' = any), 2 what a
/// family of another client answers (`not_owner`, or `kept` for a bulk revocation), 3 spare a
/// family granted `offline_access` ('0'|'1'). Returns `{outcome, client, kept upstream token}`.
const REVOKE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'c', 'g', 'u')
if not f[1] then return {'unknown'} end
if ARGV[1] ~= '' and ARGV[1] ~= f[1] then return {ARGV[2]} end
if ARGV[3] == '1' then
  for t in string.gmatch(f[2] or '', '[^ ]+') do
    if t == 'offline_access' then return {'kept'} end
  end
end
redis.call('DEL', KEYS[1])
return {'revoked', f[1], f[3] or ''}
";

/// Families written per pipeline by `create_families`.
const BATCH: usize = 1000;
/// Index members read per SSCAN step when revoking: the revoke scripts of one step are in
/// flight together.
const SCAN_COUNT: usize = 1000;
/// Members of a subject's index checked for ended families per family opened (docs/design.md
/// §6): with at most one live family among them, each opening takes out at least two ended
/// ones, so the set of a user who keeps logging in stays at about its live families plus
/// half as many again.
const PRUNE_SAMPLE: usize = 3;
/// At most this many checked per subject per batch of `create_families`.
const PRUNE_SAMPLE_MAX: usize = 100;
/// A client's subjects read per SSCAN step when revoking by client; their sets are revoked
/// together, each [`SCAN_COUNT`] / this many members a step, so that about as many scripts
/// are in flight as for one set (a step's scripts must finish within
/// `store.operation_timeout`).
const SUBJECT_SCAN_COUNT: usize = 100;

/// A Lua script: its source, and its SHA-1 for EVALSHA.
struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// EVALSHA, then EVAL where the script is not cached (a promoted replica, a restarted
    /// server): EVAL goes to the node of the keys, like EVALSHA, and caches the script there.
    /// `args` appends the script's arguments.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        keys: &[&str],
        args: impl Fn(&mut redis::Cmd),
    ) -> redis::RedisResult<T> {
        let call = |first: &str, body: &str| {
            // Sized once for the command, the keys and typical arguments (no regrowth).
            let bytes = 256 + body.len() + keys.iter().map(|k| k.len()).sum::<usize>();
            let mut cmd = redis::Cmd::with_capacity(keys.len() + 16, bytes);
            cmd.arg(first).arg(body).arg(keys.len()).arg(keys);
            args(&mut cmd);
            cmd
        };
        match call("EVALSHA", &self.hash).query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                call("EVAL", self.code).query_async(conn).await
            }
            answer => answer,
        }
    }
}

struct Scripts {
    create: Lua,
    redeem: Lua,
    access_token: Lua,
    revoke: Lua,
    reseal: Lua,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    operation_timeout: Duration,
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
    /// Builds the store from validated config; connects on first use.
    pub fn open(config: &StoreConfig) -> Result<RedisStore, ConfigError> {
        let url = RedisUrl::parse(&config.url).map_err(|e| ConfigError::invalid("store.url", e))?;
        Ok(RedisStore {
            conn: Conn::open(&url, config)?,
            prefix: Arc::from(config.key_prefix.as_str()),
            scripts: Arc::new(Scripts {
                create: Lua::new(CREATE),
                redeem: Lua::new(include_str!("redeem.lua")),
                access_token: Lua::new(ACCESS_TOKEN),
                revoke: Lua::new(REVOKE),
                reseal: Lua::new(RESEAL),
            }),
            operation_timeout: config.operation_timeout,
        })
    }

    /// Runs one store operation within `store.operation_timeout`.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.operation_timeout, op).await {
            Ok(answer) => answer.map_err(unavailable),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within store.operation_timeout ({:?})",
                self.operation_timeout
            ))),
        }
    }

    fn used_key(&self, id: &str) -> String {
        format!("{}used:{id}", self.prefix)
    }

    /// `<prefix>{<family>}:f`; written by hand, as every refresh makes two keys (`format!`'s
    /// machinery costs more than the copies).
    fn family_key(&self, family: &str) -> String {
        self.slot_key(family, &[":f"])
    }

    /// `<prefix>{<family>}:at:<digest>`.
    fn access_token_key(&self, family: &str, digest: &str) -> String {
        self.slot_key(family, &[":at:", digest])
    }

    fn slot_key(&self, family: &str, tail: &[&str]) -> String {
        let len =
            self.prefix.len() + family.len() + 2 + tail.iter().map(|t| t.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(family);
        key.push('}');
        for t in tail {
            key.push_str(t);
        }
        key
    }

    /// The set of a subject's family ids (its own slot; docs/design.md §6: secondary indexes may span
    /// slots, and are idempotent and lazily cleaned).
    fn subject_key(&self, subject: &str) -> String {
        format!("{}idx:sub:{subject}", self.prefix)
    }

    /// The set of the subjects a client has opened families for (its own slot).
    fn client_subjects_key(&self, client_id: &str) -> String {
        format!("{}idx:client-subjects:{client_id}", self.prefix)
    }

    /// The set of a client's family ids that versions before the client-subjects index
    /// wrote: read by revocation by client until it expires (with the last family it names).
    fn legacy_client_key(&self, client_id: &str) -> String {
        format!("{}idx:client:{client_id}", self.prefix)
    }

    fn session_key(&self, session: &str) -> String {
        format!("{}idx:sid:{session}", self.prefix)
    }

    /// Adds families to the subject (and session) indexes and their subject to the client's
    /// subjects, one group (one slot) per set. Each set lives as long as the longest family
    /// added through it (NX then GT: set a first expiry, then only ever extend it).
    fn index(
        &self,
        batch: &mut Batch,
        owner: (&str, &str, Option<&str>),
        ids: &[&str],
        ttl_ms: i64,
    ) {
        let (subject, client, session) = owner;
        let session = session.map(|s| (self.session_key(s), ids));
        for (key, members) in [
            (self.subject_key(subject), ids),
            (self.client_subjects_key(client), &[subject][..]),
        ]
        .into_iter()
        .chain(session)
        {
            let pipe = batch.group();
            pipe.cmd("SADD").arg(&key).arg(members).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).arg("NX").ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).arg("GT").ignore();
        }
    }

    /// Takes out of index set `key` those of `sample` random members whose family has ended
    /// (its key is gone: expired, revoked or ended by reuse; family ids are never reused, and
    /// a family is written before its index entry). Every family opened prunes its subject's
    /// set so, which bounds the set of a user who keeps logging in (docs/design.md §6).
    /// Housekeeping: a failure leaves the members for a later prune or revocation and is not
    /// the caller's.
    async fn prune(&self, key: &str, sample: usize) {
        if let Err(e) = self.bounded(self.try_prune(key, sample)).await {
            tracing::warn!(error = %e, "token store: pruning a subject index failed");
        }
    }

    async fn try_prune(&self, key: &str, sample: usize) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(key)
            .arg(sample)
            .query_async(&mut conn)
            .await?;
        let checks = ids.iter().map(|id| {
            let family_key = self.family_key(id);
            let mut conn = conn.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(&family_key)
                    .query_async::<i64>(&mut conn)
                    .await
            }
        });
        let live = futures_util::future::try_join_all(checks).await?;
        let ended: Vec<&String> = ids
            .iter()
            .zip(live)
            .filter_map(|(id, live)| (live == 0).then_some(id))
            .collect();
        if !ended.is_empty() {
            redis::cmd("SREM")
                .arg(key)
                .arg(&ended)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(())
    }

    /// Revokes the families `selection` selects. By subject or session: one index set. By
    /// client: the client's families in the set of each subject it has opened families for,
    /// then those an earlier version's per-client set still names.
    async fn revoke_index(&self, selection: &Selection<'_>) -> Result<Vec<Ended>, StoreError> {
        let client = match selection.index {
            Index::Subject(s) => {
                return self
                    .revoke_set(&self.subject_key(s), selection, SCAN_COUNT)
                    .await;
            }
            Index::Session(s) => {
                return self
                    .revoke_set(&self.session_key(s), selection, SCAN_COUNT)
                    .await;
            }
            Index::Client(c) => c,
        };
        if selection.client_id.is_some_and(|other| other != client) {
            return Ok(Vec::new());
        }
        let selection = Selection {
            client_id: Some(client),
            ..*selection
        };
        let mut ended = Vec::new();
        let subjects_key = self.client_subjects_key(client);
        let mut cursor: u64 = 0;
        loop {
            let (next, subjects) = self
                .scan_step(&subjects_key, cursor, SUBJECT_SCAN_COUNT)
                .await?;
            let keys: Vec<String> = subjects.iter().map(|s| self.subject_key(s)).collect();
            let done = futures_util::future::try_join_all(
                keys.iter()
                    .map(|key| self.revoke_set(key, &selection, SCAN_COUNT / SUBJECT_SCAN_COUNT)),
            )
            .await?;
            ended.extend(done.into_iter().flatten());
            if next == 0 {
                break;
            }
            cursor = next;
        }
        ended.extend(
            self.revoke_set(&self.legacy_client_key(client), &selection, SCAN_COUNT)
                .await?,
        );
        // The subjects stay listed: a family of the client opened for one of them while this
        // ran must stay reachable (the set expires with the client's last family).
        Ok(ended)
    }

    /// One SSCAN step of set `key` from `cursor`: the next cursor (0 at the end) and about
    /// `count` members.
    async fn scan_step(
        &self,
        key: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(
            redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn),
        )
        .await
    }

    /// Revokes the families of index set `key` that `selection` selects, one script each
    /// (sent together for one scan step of about `scan_count` members: the connection
    /// pipelines them), and takes the ones that ended, or were already gone, out of the set.
    /// Only those: a family added while this runs stays indexed (an emptied set is gone in
    /// Redis).
    async fn revoke_set(
        &self,
        key: &str,
        selection: &Selection<'_>,
        scan_count: usize,
    ) -> Result<Vec<Ended>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut ended = Vec::new();
        let client = selection.client_id.unwrap_or("");
        let offline = if selection.keep_offline { "1" } else { "0" };
        loop {
            let (next, ids) = self.scan_step(key, cursor, scan_count).await?;
            let revocations = ids.iter().map(|id| {
                let family_key = self.family_key(id);
                let mut conn = conn.clone();
                async move {
                    let reply: Vec<Vec<u8>> = self
                        .scripts
                        .revoke
                        .eval(&mut conn, &[&family_key], |cmd| {
                            cmd.arg(client).arg("kept").arg(offline);
                        })
                        .await?;
                    Ok::<_, redis::RedisError>(reply)
                }
            });
            let replies = self
                .bounded(futures_util::future::try_join_all(revocations))
                .await?;
            let mut gone = Vec::new();
            for (id, reply) in ids.into_iter().zip(replies) {
                match revoked(&id, reply)? {
                    Revoke::Revoked(e) => {
                        gone.push(id);
                        ended.push(e);
                    }
                    Revoke::NotOwner => {}
                    Revoke::Unknown => gone.push(id),
                }
            }
            if !gone.is_empty() {
                self.bounded(
                    redis::cmd("SREM")
                        .arg(key)
                        .arg(&gone)
                        .query_async::<()>(&mut conn),
                )
                .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(ended)
    }
}

/// The reply of the revoke script for family `family`: a spared family (`kept`) reads as
/// [`Revoke::NotOwner`].
fn revoked(family: &str, reply: Vec<Vec<u8>>) -> Result<Revoke, StoreError> {
    let mut fields = reply.into_iter();
    match fields.next().as_deref() {
        Some(b"revoked") => {
            let client_id = text(fields.next().unwrap_or_default())?;
            let kept = fields.next().unwrap_or_default();
            Ok(Revoke::Revoked(Ended {
                family: family.to_owned(),
                client_id,
                upstream_token: (!kept.is_empty()).then_some(kept),
            }))
        }
        Some(b"not_owner" | b"kept") => Ok(Revoke::NotOwner),
        Some(b"unknown") => Ok(Revoke::Unknown),
        other => Err(StoreError::Protocol(format!(
            "revoke answered {:?}",
            other.map(String::from_utf8_lossy)
        ))),
    }
}

/// The `v` field of a new family: its verifier, then its seal.
fn verifier_and_seal(f: &NewFamily) -> Vec<u8> {
    [f.verifier.as_bytes(), f.seal.as_bytes()].concat()
}

fn utf8(b: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(b).map_err(|_| StoreError::Protocol("a family field is not UTF-8".into()))
}

fn text(b: impl Into<Vec<u8>>) -> Result<String, StoreError> {
    String::from_utf8(b.into())
        .map_err(|_| StoreError::Protocol("a family field is not UTF-8".into()))
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, StoreError> {
    s.parse::<T>()
        .map_err(|_| StoreError::Protocol(format!("not a number: {s:?}")))
}

/// The redeem script's answer: one MessagePack array of strings (src/store/redis/redeem.lua).
pub fn parse_redemption(reply: &[u8]) -> Result<Redemption, StoreError> {
    let strings = msgpack::Strings::parse(reply).ok_or_else(|| {
        StoreError::Protocol("the redeem script's answer is not an array of strings".into())
    })?;
    let reply = strings.as_slice();
    let fields = reply.len();
    let bad = || StoreError::Protocol(format!("redeem script answered {fields} fields"));
    match reply.first().copied() {
        Some(b"unknown") => return Ok(Redemption::Unknown),
        Some(b"corrupt") => return Ok(Redemption::Corrupt),
        Some(b"replayed") => {
            let index = reply.get(1).map(|b| String::from_utf8_lossy(b));
            return Ok(Redemption::Replayed {
                index: num(index.as_deref().unwrap_or(""))?,
            });
        }
        _ => {}
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
        granted,
        expires,
        seal,
        verifier,
        key,
        kept,
        binding,
    ] = <[&[u8]; msgpack::MAX_FIELDS]>::try_from(reply).map_err(|_| bad())?;
    // Read in place; only what the family keeps is copied into a String.
    let (verdict, generation, scope) = (utf8(verdict)?, utf8(generation)?, text(scope)?);
    let format = utf8(format)?;
    let verifier_of = |b: &[u8]| Verifier::from_slice(b).unwrap_or_default();
    let verdict = match verdict {
        "rotated" => Verdict::Rotated {
            generation: num(generation)?,
            scope,
        },
        "reused" => Verdict::Reused { scope },
        "grace" => Verdict::Grace {
            generation: num(generation)?,
            scope,
            key: if key.is_empty() { 0 } else { num(utf8(key)?)? },
        },
        "check_due" => Verdict::CheckDue {
            fence: num(generation)?,
        },
        "check_in_flight" => Verdict::CheckInFlight {
            until_ms: num(generation)?,
        },
        "check_failed" => Verdict::CheckFailed,
        "check_revoked" => Verdict::CheckRevoked,
        "reuse" => Verdict::ReuseDetected {
            presented: num(generation)?,
            current: num(utf8(current)?)?,
        },
        "ahead" => Verdict::Ahead {
            current: num(generation)?,
            verifier: verifier_of(verifier),
        },
        "unverified" => Verdict::Unverified,
        "expired" => Verdict::Expired,
        "wrong_client" => Verdict::WrongClient,
        "wrong_key" => Verdict::WrongKey,
        "invalid_scope" => Verdict::InvalidScope,
        other => return Err(StoreError::Protocol(format!("unknown verdict {other:?}"))),
    };
    Ok(Redemption::Decided {
        verdict,
        family: FamilyData {
            client_id: text(client)?,
            subject: text(subject)?,
            granted_scope: text(granted)?,
            format: TokenFormat::parse(format)
                .ok_or_else(|| StoreError::Protocol(format!("unknown format {format:?}")))?,
            at_claims: text(atc)?,
            id_claims: text(idc)?,
            auth_time: utf8(auth)?.parse().ok(),
            expires_at_ms: num(utf8(expires)?)?,
            binding: (!binding.is_empty()).then(|| text(binding)).transpose()?,
            // A missing or malformed seal reads as all zeros, which no family has.
            seal: Seal::from_slice(seal).unwrap_or_default(),
        },
        opaque_stored: stored == b"1",
        upstream_token: (!kept.is_empty()).then(|| kept.to_vec()),
    })
}

impl TokenStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.ping()).await
    }

    async fn create_family(&self, f: &NewFamily) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.family_key(f.id.as_str());
        let keys = [key.as_str()];
        let created = self.scripts.create.eval::<i64>(&mut conn, &keys, |cmd| {
            cmd.arg(&f.client_id)
                .arg(&f.subject)
                .arg(&f.granted_scope)
                .arg(f.format.as_str())
                .arg(&f.at_claims)
                .arg(&f.id_claims)
                .arg(f.auth_time.map(|t| t.to_string()).unwrap_or_default())
                .arg(f.created_ms)
                .arg(f.idle_deadline_ms)
                .arg(f.expires_at_ms)
                .arg(f.verifier.as_bytes())
                .arg(f.seal.as_bytes())
                .arg(f.upstream_token.as_deref().unwrap_or_default())
                .arg(f.binding.as_deref().unwrap_or_default());
        });
        self.bounded(created).await?;
        let mut batch = conn.batch();
        self.index(
            &mut batch,
            (&f.subject, &f.client_id, f.session.as_deref()),
            &[f.id.as_str()],
            f.expires_at_ms - f.created_ms,
        );
        // The prune beside the index write: the family is written, and whether the sample
        // includes its new entry or not, it is live.
        let subject = self.subject_key(&f.subject);
        let (indexed, ()) = tokio::join!(
            self.bounded(conn.run(batch)),
            self.prune(&subject, PRUNE_SAMPLE)
        );
        indexed
    }

    async fn create_families(&self, families: &[NewFamily]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for chunk in families.chunks(BATCH) {
            // Plain commands, not the script: nobody holds a token of a family that is being
            // created, so there is nothing to race with, and a pipeline of them is fast.
            let mut batch = conn.batch();
            for f in chunk {
                let key = self.family_key(f.id.as_str());
                let pipe = batch.group();
                let hset = pipe
                    .cmd("HSET")
                    .arg(&key)
                    .arg(&[
                        ("c", f.client_id.as_str()),
                        ("s", f.subject.as_str()),
                        ("g", f.granted_scope.as_str()),
                    ])
                    .arg(&[
                        ("r", f.created_ms),
                        ("i", f.idle_deadline_ms),
                        ("e", f.expires_at_ms),
                    ])
                    .arg("v")
                    .arg(verifier_and_seal(f));
                // As CREATE: fields at their default are left out.
                if f.format != TokenFormat::Jwt {
                    hset.arg("f").arg(f.format.as_str());
                }
                for (field, value) in [("a", &f.at_claims), ("d", &f.id_claims)] {
                    if !value.is_empty() {
                        hset.arg(field).arg(value);
                    }
                }
                if let Some(t) = f.auth_time {
                    hset.arg("t").arg(t);
                }
                if let Some(u) = &f.upstream_token {
                    hset.arg("u").arg(u.as_slice()).arg("k").arg(f.created_ms);
                }
                if let Some(b) = &f.binding {
                    hset.arg("b").arg(b);
                }
                hset.ignore();
                pipe.cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(f.idle_deadline_ms.min(f.expires_at_ms))
                    .ignore();
            }
            // The families first, then their index entries: a prune that finds an indexed
            // family's key missing takes it for ended.
            self.bounded(conn.run(batch)).await?;
            let mut batch = conn.batch();
            // Index by (subject, client, session) group.
            type Owner<'a> = (&'a str, &'a str, Option<&'a str>);
            let mut by_owner: std::collections::HashMap<Owner<'_>, (Vec<&str>, i64)> =
                std::collections::HashMap::new();
            for f in chunk {
                let g = by_owner
                    .entry((
                        f.subject.as_str(),
                        f.client_id.as_str(),
                        f.session.as_deref(),
                    ))
                    .or_default();
                g.0.push(f.id.as_str());
                g.1 = g.1.max(f.expires_at_ms - f.created_ms);
            }
            for (owner, (ids, ttl)) in &by_owner {
                self.index(&mut batch, *owner, ids, *ttl);
            }
            // One prune per subject, checking PRUNE_SAMPLE members per family it got.
            let mut opened: std::collections::HashMap<&str, usize> =
                std::collections::HashMap::new();
            for f in chunk {
                *opened.entry(f.subject.as_str()).or_default() += 1;
            }
            let prunes: Vec<(String, usize)> = opened
                .into_iter()
                .map(|(subject, n)| {
                    let sample = (PRUNE_SAMPLE * n).min(PRUNE_SAMPLE_MAX);
                    (self.subject_key(subject), sample)
                })
                .collect();
            let (indexed, _) = tokio::join!(
                self.bounded(conn.run(batch)),
                futures_util::future::join_all(
                    prunes.iter().map(|(key, sample)| self.prune(key, *sample))
                )
            );
            indexed?;
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
        let f: Vec<Option<Vec<u8>>> = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.family_key(family))
                    .arg(&[
                        "c", "s", "g", "sc", "n", "r", "i", "e", "f", "a", "d", "t", "v", "b",
                    ])
                    .query_async(&mut conn),
            )
            .await?;
        let [
            Some(c),
            Some(s),
            Some(g),
            sc,
            n,
            Some(r),
            Some(i),
            Some(e),
            fmt,
            a,
            d,
            t,
            v,
            b,
        ] = <[Option<Vec<u8>>; 14]>::try_from(f)
            .map_err(|_| StoreError::Protocol("HMGET".into()))?
        else {
            return Ok(None);
        };
        let opt = |b: Option<Vec<u8>>| b.map(text).transpose();
        let g = text(g)?;
        let sc = opt(sc)?.unwrap_or_else(|| g.clone());
        let (idle, expires): (i64, i64) = (num(&text(i)?)?, num(&text(e)?)?);
        let current: u64 = match opt(n)? {
            Some(n) => num(&n)?,
            None => 0,
        };
        let format = opt(fmt)?.unwrap_or_else(|| "jwt".to_owned());
        let live = now_ms < idle && now_ms < expires;
        if !(live && generation >= current) {
            return Ok(None);
        }
        Ok(Some(RefreshTokenInfo {
            family: FamilyData {
                client_id: text(c)?,
                subject: text(s)?,
                granted_scope: g,
                format: TokenFormat::parse(&format)
                    .ok_or_else(|| StoreError::Protocol(format!("unknown format {format:?}")))?,
                at_claims: opt(a)?.unwrap_or_default(),
                id_claims: opt(d)?.unwrap_or_default(),
                auth_time: opt(t)?.and_then(|t| t.parse().ok()),
                expires_at_ms: expires,
                binding: opt(b)?,
                seal: v
                    .as_deref()
                    .and_then(|v| v.get(DIGEST_BYTES..))
                    .and_then(Seal::from_slice)
                    .unwrap_or_default(),
            },
            generation: current,
            verifier: v
                .as_deref()
                .and_then(|v| v.get(..DIGEST_BYTES))
                .and_then(Verifier::from_slice)
                .unwrap_or_default(),
            scope: sc,
            issued_ms: num(&text(r)?)?,
            expires_ms: idle.min(expires),
        }))
    }

    async fn revoke_family(
        &self,
        family: &str,
        client_id: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.family_key(family);
        let reply: Vec<Vec<u8>> = self
            .bounded(self.scripts.revoke.eval(&mut conn, &[&key], |cmd| {
                cmd.arg(client_id.unwrap_or("")).arg("not_owner").arg("0");
            }))
            .await?;
        revoked(family, reply)
    }

    async fn reseal(&self, family: &str, old: &Seal, new: &Seal) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.family_key(family);
        let done: i64 = self
            .bounded(self.scripts.reseal.eval(&mut conn, &[&key], |cmd| {
                cmd.arg(old.as_bytes()).arg(new.as_bytes());
            }))
            .await?;
        Ok(done == 1)
    }

    async fn revoke_many(&self, selection: &Selection<'_>) -> Result<Vec<Ended>, StoreError> {
        self.revoke_index(selection).await
    }

    async fn first_use(&self, id: &str, _now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(self.used_key(id))
                    .arg(1)
                    .arg("NX")
                    .arg("PXAT")
                    .arg(until_ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    async fn forget_use(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(
            redis::cmd("DEL")
                .arg(self.used_key(id))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn redeem(&self, req: &RedeemRequest<'_>) -> Result<Redemption, StoreError> {
        let r = &req.redeem;
        let (issued, expires, digest) = match &req.opaque {
            Some(c) => (c.issued_ms, c.expires_ms, c.digest.as_str()),
            None => (0, 0, "-"),
        };
        let mut conn = self.conn.clone();
        let family_keys = [
            self.family_key(req.family),
            self.access_token_key(req.family, digest),
        ];
        // One-time identifiers: in the script's step on a single node; a cluster cannot run a
        // script across slots, so there they are remembered first, one round trip each
        // (docs/design.md §4.15).
        let mut once_keys = Vec::new();
        if self.conn.is_cluster() {
            for (index, once) in req.once.iter().enumerate() {
                if !self.first_use(&once.id, r.now_ms, once.until_ms).await? {
                    return Ok(Redemption::Replayed { index });
                }
            }
        } else {
            once_keys.extend(req.once.iter().map(|o| self.used_key(&o.id)));
        }
        let all: Vec<&str>;
        let keys: &[&str] = if once_keys.is_empty() {
            &[&family_keys[0], &family_keys[1]]
        } else {
            all = family_keys
                .iter()
                .chain(&once_keys)
                .map(String::as_str)
                .collect();
            &all
        };
        let (ahead_generation, ahead_verifier) = match &r.ahead_of {
            Some((n, v)) => (n.to_string(), v.as_bytes().to_vec()),
            None => (String::new(), Vec::new()),
        };
        // The successors' verifiers back to back, on the stack.
        let mut successors = [0u8; MAX_KEYS * DIGEST_BYTES];
        for (chunk, v) in successors.chunks_exact_mut(DIGEST_BYTES).zip(r.successors) {
            chunk.copy_from_slice(v.as_bytes());
        }
        let successors = &successors[..r.successors.len().min(MAX_KEYS) * DIGEST_BYTES];
        let reply: Vec<u8> = self
            .bounded(self.scripts.redeem.eval(&mut conn, keys, |cmd| {
                cmd.arg(r.generation)
                    .arg(r.client_id)
                    .arg(if r.scope.is_some() { "1" } else { "0" })
                    .arg(r.scope.unwrap_or(""))
                    .arg(r.now_ms)
                    .arg(r.grace_ms)
                    .arg(r.idle_ttl_ms)
                    .arg(if r.reuse_refresh_tokens { "1" } else { "0" })
                    .arg(issued)
                    .arg(expires)
                    .arg(r.presented.as_bytes())
                    .arg(successors)
                    .arg(&ahead_generation)
                    .arg(&ahead_verifier);
                // The upstream session check (docs/design.md §4.13).
                match &r.check {
                    Some(c) => cmd.arg(c.interval_ms).arg(c.lease_ms).arg(c.serve_ms),
                    None => cmd.arg("").arg("0").arg("0"),
                };
                match &r.confirm {
                    Some((fence, checked)) => cmd.arg(*fence).arg(match checked {
                        Checked::Confirmed => "ok",
                        Checked::Failed => "fail",
                        Checked::Revoked => "revoke",
                    }),
                    None => cmd.arg("").arg(""),
                };
                cmd.arg(req.new_upstream_token.as_deref().unwrap_or_default())
                    .arg(req.upstream_answer.as_deref().unwrap_or_default())
                    .arg(r.proven);
                if !once_keys.is_empty() {
                    for once in &req.once {
                        cmd.arg(once.until_ms);
                    }
                }
            }))
            .await?;
        parse_redemption(&reply)
    }

    async fn access_token(
        &self,
        family: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let keys = [
            self.family_key(family),
            self.access_token_key(family, digest),
        ];
        let raw: Option<String> = self
            .bounded(
                self.scripts
                    .access_token
                    .eval(&mut conn, &[&keys[0], &keys[1]], |cmd| {
                        cmd.arg(now_ms);
                    }),
            )
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let record: AccessTokenRecord = serde_json::from_str(&raw)
            .map_err(|e| StoreError::Protocol(format!("access token record: {e}")))?;
        Ok((now_ms < record.expires_ms).then_some(record))
    }
}
