//! Redis bytes per token family, with and without a kept upstream refresh token and a session
//! (issue 15; bench/README.md, "Redis memory per family").
//!
//! Each variant writes 1,000,000 families into a private `redis-server` through the store's own
//! `create_families`, so the measured bytes are those of the real key layout and encoding, not
//! of a model of it. `cargo run --release --example family_bytes`; needs `redis-server` on PATH.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use refresh_proxy::config::StoreConfig;
use refresh_proxy::internal::mint::kept::{KeptKeys, KeptToken};
use refresh_proxy::internal::mint::refresh::RefreshTokenKey;
use refresh_proxy::store::{FamilyId, NewFamily, RedisStore, Seal, TokenFormat, TokenStore};

const N: usize = 1_000_000;
const BATCH: usize = 1000;
/// Family hashes whose `MEMORY USAGE` is summed and scaled to N (every N/SAMPLE-th family).
const SAMPLE: usize = 1000;
const DAY_MS: i64 = 86_400_000;
/// The ID token's claims as capture keeps them (exp, iat, nonce, at_hash dropped): about 200
/// bytes, which is over Redis's 64-byte `hash-max-listpack-value` on its own.
const ID_CLAIMS: &str = r#"{"iss":"https://idp.example.com","sub":"user-12345","aud":"www","auth_time":1767225600,"sid":"sid-00000000000000042","amr":["pwd"],"email":"jane.doe@example.com","email_verified":true,"name":"Jane Doe"}"#;

struct Variant {
    name: &'static str,
    /// Characters of the upstream refresh token kept, if any.
    kept_chars: Option<usize>,
    session: bool,
}

/// The redis-server of one variant, stopped by its own pid when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, String) {
    // Bind-and-release picks a free port; nothing else on this machine races for it in practice.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        // For DEBUG HTSTATS: whether the keyspace's tables are still rehashing (`settle`).
        .args(["--enable-debug-command", "local"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server(child);
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_connection().is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, url)
}

/// Sends `cmd key args` for every key, then again while the keyspace's own tables (keys,
/// expiries) are still rehashing, and returns `used_memory`. A table that grew keeps its old
/// bucket array until every entry is moved, one bucket per lookup, and `used_memory` counts
/// both until then (33 bytes a family at 2.1 million keys); the server's cron, which should
/// finish the move, moved a fifth of it in 20 s here.
fn settle(con: &mut redis::Connection, keys: &[String], cmd: &str, args: &[&str]) -> i64 {
    for _ in 0..10 {
        for chunk in keys.chunks(10_000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd(cmd).arg(k).arg(args).ignore();
            }
            let () = pipe.query(con).expect("lookups");
        }
        let stats: String = redis::cmd("DEBUG")
            .arg("HTSTATS")
            .arg(0)
            .query(con)
            .expect("DEBUG HTSTATS (--enable-debug-command local)");
        if !stats.contains("rehashing target") {
            return used_memory(con);
        }
    }
    panic!("the keyspace is still rehashing after 10 passes");
}

fn used_memory(con: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(con)
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

/// Exact `MEMORY USAGE` (SAMPLES 0: the default samples 5 elements of a set or hashtable and
/// extrapolates) of each key, pipelined.
fn memory_usage(con: &mut redis::Connection, keys: &[String]) -> i64 {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
    }
    let sizes: Vec<Option<i64>> = pipe.query(con).expect("MEMORY USAGE");
    sizes.into_iter().flatten().sum()
}

fn random_token(chars: usize) -> String {
    // Base64url of random bytes, as oidc-provider's tokens are; a Keycloak JWT is base64url too.
    let mut bytes = vec![0u8; chars * 3 / 4 + 1];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    let mut token = URL_SAFE_NO_PAD.encode(bytes);
    token.truncate(chars);
    token
}

async fn measure(v: &Variant) {
    let (server, url) = start_redis();
    let mut con = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("a connection");
    // A batch is about 11,000 commands in one pipeline; the default 0.5 s response timeout is
    // for one refresh's script, and a pause of this 2-core machine went over it once.
    let config: StoreConfig = toml::from_str(&format!(
        "url = \"{url}\"\nresponse_timeout = 30.0\noperation_timeout = 30.0"
    ))
    .expect("store config");
    let store = RedisStore::open(&config).expect("a Redis store");
    let refresh = RefreshTokenKey::generate();
    let kept = KeptKeys::generate();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;

    let before = used_memory(&mut con);
    let started = Instant::now();
    let mut sample = Vec::with_capacity(SAMPLE);
    for start in (0..N).step_by(BATCH) {
        let batch: Vec<NewFamily> = (start..start + BATCH)
            .map(|i| {
                let id = FamilyId::random();
                if i % (N / SAMPLE) == 0 {
                    sample.push(format!("rp:{{{}}}:f", id.as_str()));
                }
                let (_, verifier) = refresh.first(&id);
                let upstream_token = v
                    .kept_chars
                    .map(|n| kept.seal(id.as_str(), &KeptToken::new(random_token(n))));
                let mut f = NewFamily {
                    id,
                    client_id: "www".into(),
                    subject: format!("user-{}", i % 100_000),
                    granted_scope: "openid profile read".into(),
                    format: TokenFormat::Jwt,
                    at_claims: r#"{"aud":"api"}"#.into(),
                    id_claims: ID_CLAIMS.into(),
                    auth_time: None,
                    created_ms: now,
                    idle_deadline_ms: now + 30 * DAY_MS,
                    expires_at_ms: now + 365 * DAY_MS,
                    verifier,
                    seal: Seal::default(),
                    upstream_token,
                    session: v.session.then(|| format!("sid-{i:017}")),
                    binding: None,
                };
                f.seal = refresh.seal(&f.sealed());
                f
            })
            .collect();
        store
            .create_families(&batch)
            .await
            .expect("families created");
    }
    let took = started.elapsed();
    // The store's connection and its buffers are not part of what a family costs.
    drop(store);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    let (index_keys, family_keys): (Vec<String>, Vec<String>) =
        keys.into_iter().partition(|k| k.starts_with("rp:idx:"));
    let all_keys = [&index_keys[..], &family_keys[..]].concat();
    // EXISTS looks keys up without touching what they hold.
    let after = settle(&mut con, &all_keys, "EXISTS", &[]);

    let one: i64 = memory_usage(&mut con, &sample[..1]);
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&sample[0])
        .query(&mut con)
        .expect("OBJECT ENCODING");
    let hashes = memory_usage(&mut con, &sample) * (N / SAMPLE) as i64;
    let by_index: Vec<(&str, i64, usize)> = ["sub", "client-subjects", "sid"]
        .into_iter()
        .map(|name| {
            let prefix = format!("rp:idx:{name}:");
            let keys: Vec<String> = index_keys
                .iter()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            let bytes = keys.chunks(10_000).map(|c| memory_usage(&mut con, c)).sum();
            (name, bytes, keys.len())
        })
        .collect();
    let indexes: i64 = by_index.iter().map(|(_, bytes, _)| bytes).sum();
    // A family hash that Redis made a hashtable (a value over hash-max-listpack-value) may be
    // left mid-rehash by the HSET that created it, holding two bucket arrays (64 bytes more)
    // until lookups of its fields finish the move; whether it is depends on the server's
    // random hash seed. The HMGET a refresh starts with (redeem.lua) does; so "after one
    // read" is what a family costs once it has been refreshed, and does not vary by run.
    let read = settle(
        &mut con,
        &family_keys,
        "HMGET",
        &[
            "c", "s", "g", "sc", "n", "r", "i", "e", "f", "a", "d", "t", "v", "u", "k", "lf", "lu",
            "cf",
        ],
    );
    let read_hashes = memory_usage(&mut con, &sample) * (N / SAMPLE) as i64;
    let delta = after - before;
    let per = |bytes: i64| bytes as f64 / N as f64;
    println!(
        "{}: {:.0} bytes/family (used_memory {before} -> {after}, {N} families in {:.1} s)",
        v.name,
        per(delta),
        took.as_secs_f64()
    );
    println!(
        "  MEMORY USAGE one family hash: {one} bytes ({encoding}); sealed kept token: {} bytes",
        v.kept_chars.map_or(0, |n| n + 33)
    );
    println!(
        "  split: family hashes {:.0} (sample of {SAMPLE} x {}), indexes {:.0} ({} sets), rest {:.0} bytes/family",
        per(hashes),
        N / SAMPLE,
        per(indexes),
        index_keys.len(),
        per(delta - hashes - indexes)
    );
    for (name, bytes, sets) in &by_index {
        println!(
            "    idx:{name}: {:.0} bytes/family ({sets} keys)",
            per(*bytes)
        );
    }
    println!(
        "  after one read of every family: {:.0} bytes/family; family hashes {:.0}, rest {:.0}",
        per(read - before),
        per(read_hashes),
        per(read - before - read_hashes - indexes)
    );
    drop(server);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let variants = [
        Variant {
            name: "(a) no kept token, no session",
            kept_chars: None,
            session: false,
        },
        Variant {
            name: "(b) kept 43-char token + session",
            kept_chars: Some(43),
            session: true,
        },
        Variant {
            name: "(c) kept 900-byte token + session",
            kept_chars: Some(900),
            session: true,
        },
    ];
    for v in &variants {
        measure(v).await;
    }
}
