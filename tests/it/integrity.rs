//! What makes a token the proxy accepts: the token itself, checked against the family's
//! verifier and a family record whose seal checks out. Neither the server key alone nor write
//! access to the store makes one; a rotated-out token is reuse whatever else the request says;
//! revoking needs the token itself.
//!
//! In-process: the proxy in front of an echo upstream (`discovery = false`), families opened
//! through the admin API, on `memory://` and on a private redis-server (store tampering: Redis
//! only).

use crate::support::StoreKind as Kind;
use crate::support::echo::EchoServer;
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use refresh_proxy::internal::mint::refresh::RefreshTokenKey;
use refresh_proxy::store::FamilyId;
use serde_json::Value;

const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
const SECRET: &str = "Secr3t!";
const PREFIX: &str = "rp:";

struct Stack {
    proxy: TestProxy,
    redis: Option<RedisServer>,
    _echo: EchoServer,
    http: reqwest::Client,
}

impl Stack {
    async fn start(kind: Kind) -> Stack {
        let echo = EchoServer::start().await;
        let (redis, store) = kind.start();
        let config = format!(
            "[store]\nurl = \"{store}\"\nkey_prefix = \"{PREFIX}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [admin]\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\nmay_introspect = true\nallow_admin_issue = true\n\
             [clients.op]\nsecret = \"{SECRET}\"\naccess_token_format = \"opaque\"\nmay_introspect = true\n\
             allow_admin_issue = true\n\
             [clients.spa]\nallow_admin_issue = true\n\
             [upstream]\nurl = \"{upstream}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation_path = \"/revoke\"\nintrospection_path = \"/introspect\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            upstream = echo.url(),
        );
        let proxy = TestProxy::start(&config).await;
        proxy.wait_ready().await;
        Stack {
            proxy,
            redis,
            _echo: echo,
            http: reqwest::Client::new(),
        }
    }

    async fn issue(&self, client_id: &str, subject: &str, scope: &str) -> String {
        let tokens = crate::support::proxy::issue(
            &self.proxy.admin_url,
            ISSUE_TOKEN,
            serde_json::json!({"client_id": client_id, "subject": subject, "scope": scope, "count": 1}),
        )
        .await;
        tokens.into_iter().next().expect("one token")
    }

    async fn post(&self, path: &str, client_id: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut form: Vec<(&str, &str)> = params.to_vec();
        form.push(("client_id", client_id));
        if client_id != "spa" {
            form.push(("client_secret", SECRET));
        }
        let res = self
            .http
            .post(format!("{}{path}", self.proxy.url))
            .form(&form)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn refresh(&self, client_id: &str, token: &str, scope: Option<&str>) -> (u16, Value) {
        let mut params = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
        if let Some(s) = scope {
            params.push(("scope", s));
        }
        self.post("/token", client_id, &params).await
    }

    async fn redis(&self) -> ::redis::aio::MultiplexedConnection {
        let server = self.redis.as_ref().expect("a Redis stack");
        ::redis::Client::open(server.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }
}

fn key() -> RefreshTokenKey {
    RefreshTokenKey::from_secret(crate::support::TEST_REFRESH_KEY.as_bytes())
}

fn family_of(token: &str) -> String {
    key().parse(token).expect("a proxy token").family.to_owned()
}

fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn assert_invalid_grant((status, body): &(u16, Value), what: &str) {
    assert_eq!(*status, 400, "{what}: {body}");
    assert_eq!(body["error"], "invalid_grant", "{what}: {body}");
}

/// Whoever holds `tokens.refresh_token_key` (every replica's config) and a family id (in every
/// JWT's `jti`, in logs) can make tokens with a valid tag; the store's verifier refuses them,
/// and the family goes on with its real token.
async fn the_server_key_alone_makes_no_token_the_proxy_accepts(kind: Kind) {
    let s = Stack::start(kind).await;
    let real = s.issue("www", "alice", "openid read").await;
    let family = FamilyId::parse(&family_of(&real)).expect("a family id");
    let k = key();

    // Generation 0 (the live one), with a secret part of the forger's choosing.
    let (forged, _) = k.first(&family);
    assert_invalid_grant(
        &s.refresh("www", &forged, None).await,
        "a forged live token",
    );
    // A generation ahead of the store (what a store that lost writes would see).
    let ahead = k.successor(&k.parse(&forged).expect("a valid tag")).0;
    assert_invalid_grant(
        &s.refresh("www", &ahead, None).await,
        "a forged token ahead",
    );

    // The family is untouched: its real token rotates.
    let (status, body) = s.refresh("www", &real, None).await;
    assert_eq!(status, 200, "{body}");
    let next = body["refresh_token"].as_str().expect("refresh_token");
    assert_eq!(k.parse(next).expect("ours").generation, 1);
    // Now generation 0 is the previous token: a forged one within grace is not the real one.
    assert_invalid_grant(
        &s.refresh("www", &forged, None).await,
        "a forged previous token within grace",
    );
    // And the real chain still goes on.
    let (status, body) = s.refresh("www", next, None).await;
    assert_eq!(status, 200, "{body}");
}

/// A rotated-out token is reuse whatever else is wrong with the request: a bad `scope` no
/// longer answers `invalid_scope` and leaves the family alive.
async fn a_rotated_out_token_with_a_bad_scope_is_reuse_and_ends_the_family(kind: Kind) {
    let s = Stack::start(kind).await;
    let t0 = s.issue("www", "alice", "openid read").await;
    let (status, body) = s.refresh("www", &t0, None).await;
    assert_eq!(status, 200, "{body}");
    let t1 = body["refresh_token"].as_str().expect("t1").to_owned();
    let (status, body) = s.refresh("www", &t1, None).await;
    assert_eq!(status, 200, "{body}");
    let t2 = body["refresh_token"].as_str().expect("t2").to_owned();
    assert_invalid_grant(
        &s.refresh("www", &t0, Some("bogus")).await,
        "a rotated-out token with a bad scope",
    );
    assert_invalid_grant(
        &s.refresh("www", &t2, None).await,
        "the family was revoked by the reuse",
    );
}

/// RFC 7009: the server "invalidates the token" it is shown. An opaque access token is its
/// family id and random bits: a family id with another secret part revokes nothing, even for a
/// public client (the family id is in every JWT's `jti` and in logs).
async fn revoking_needs_the_token_itself(kind: Kind) {
    let s = Stack::start(kind).await;
    let rt = s.issue("spa", "alice", "openid read").await;
    let family = family_of(&rt);
    let guess = format!("{family}.{}", "A".repeat(43));
    let (status, body) = s
        .post(
            "/revoke",
            "spa",
            &[("token", &guess), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(status, 200, "RFC 7009 §2.2: still 200: {body}");
    let (status, body) = s.refresh("spa", &rt, None).await;
    assert_eq!(status, 200, "the family lives on: {body}");

    // The real opaque access token does revoke its family.
    let rt = s.issue("op", "bob", "read").await;
    let (status, body) = s.refresh("op", &rt, None).await;
    assert_eq!(status, 200, "{body}");
    let at = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let rt = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert_eq!(at.split('.').count(), 2, "opaque: {at}");
    let (status, _) = s.post("/revoke", "op", &[("token", &at)]).await;
    assert_eq!(status, 200);
    assert_invalid_grant(
        &s.refresh("op", &rt, None).await,
        "revoked by its access token",
    );
}

/// Introspection answers for the live refresh token only: a forged token with a valid tag is
/// not active.
async fn introspection_checks_the_verifier(kind: Kind) {
    let s = Stack::start(kind).await;
    let real = s.issue("www", "alice", "openid read").await;
    let (forged, _) = key().first(&FamilyId::parse(&family_of(&real)).expect("id"));
    let (status, body) = s.post("/introspect", "www", &[("token", &real)]).await;
    assert_eq!(
        (status, &body["active"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    assert_eq!(body["sub"], "alice");
    let (status, body) = s.post("/introspect", "www", &[("token", &forged)]).await;
    assert_eq!(
        (status, &body["active"]),
        (200, &Value::Bool(false)),
        "{body}"
    );
}

both_stores!(
    the_server_key_alone_makes_no_token_the_proxy_accepts,
    a_rotated_out_token_with_a_bad_scope_is_reuse_and_ends_the_family,
    revoking_needs_the_token_itself,
    introspection_checks_the_verifier,
);

/// Whoever can write to Redis can change a family's subject, claims or scope; the family's
/// seal (a MAC with a key derived from the refresh-token key) makes the proxy refuse such a
/// record instead of signing it, and a record it cannot read is refused, not a panic or a 500.
#[tokio::test]
async fn a_family_changed_in_redis_is_refused_not_signed() {
    let s = Stack::start(Kind::Redis).await;
    let mut conn = s.redis().await;
    for (field, value) in [
        ("s", "root"),
        ("g", "openid read admin"),
        ("a", r#"{"aud":"api","roles":["admin"]}"#),
        ("e", "99999999999999"),
    ] {
        let token = s.issue("www", "alice", "openid read").await;
        let key = format!("{PREFIX}{{{}}}:f", family_of(&token));
        let _: () = ::redis::cmd("HSET")
            .arg(&key)
            .arg(field)
            .arg(value)
            .query_async(&mut conn)
            .await
            .expect("HSET");
        assert_invalid_grant(
            &s.refresh("www", &token, None).await,
            &format!("the family's {field} changed in Redis"),
        );
    }
    // The seal itself (the last 12 bytes of `v`, after the live token's verifier).
    let token = s.issue("www", "alice", "openid read").await;
    let key = format!("{PREFIX}{{{}}}:f", family_of(&token));
    let mut v: Vec<u8> = ::redis::cmd("HGET")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(v.len(), 24, "verifier and seal");
    v[12..].fill(0);
    let _: () = ::redis::cmd("HSET")
        .arg(&key)
        .arg("v")
        .arg(&v)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    assert_invalid_grant(&s.refresh("www", &token, None).await, "a zeroed seal");
    // The current scope is not sealed (narrowing changes it), but it never exceeds the sealed
    // granted scope.
    let token = s.issue("www", "alice", "openid read").await;
    let key = format!("{PREFIX}{{{}}}:f", family_of(&token));
    let _: () = ::redis::cmd("HSET")
        .arg(&key)
        .arg("sc")
        .arg("openid read admin")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    assert_invalid_grant(
        &s.refresh("www", &token, None).await,
        "a current scope wider than the sealed grant",
    );
    // A record the store cannot read (a clock that is not a number).
    let token = s.issue("www", "alice", "openid read").await;
    let key = format!("{PREFIX}{{{}}}:f", family_of(&token));
    let _: () = ::redis::cmd("HSET")
        .arg(&key)
        .arg("r")
        .arg("not a number")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    assert_invalid_grant(&s.refresh("www", &token, None).await, "a corrupt record");

    // An untouched family still works, and its token says what was issued.
    let token = s.issue("www", "alice", "openid read").await;
    let (status, body) = s.refresh("www", &token, None).await;
    assert_eq!(status, 200, "{body}");
    let at = claims(body["access_token"].as_str().expect("access_token"));
    assert_eq!(
        (at["sub"].as_str(), at["scope"].as_str()),
        (Some("alice"), Some("openid read"))
    );

    // Every refusal was counted.
    let metrics = s
        .http
        .get(format!("{}/metrics", s.proxy.admin_url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("refresh_proxy_integrity_failures_total 7"),
        "{metrics}"
    );
}

/// A store that lost its last rotation (a Redis crash between AOF syncs, a failover with
/// asynchronous replication) sees a token ahead of its generation: the proxy walks the family's
/// chain from the stored verifier to it and the family goes on, so a lost write logs no one out.
#[tokio::test]
async fn a_store_that_lost_its_last_rotations_goes_on_with_the_chain() {
    let s = Stack::start(Kind::Redis).await;
    let mut conn = s.redis().await;
    let t0 = s.issue("www", "alice", "openid read").await;
    let hash = format!("{PREFIX}{{{}}}:f", family_of(&t0));
    let saved: Vec<u8> = ::redis::cmd("DUMP")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .expect("DUMP");
    let mut token = t0;
    for _ in 0..3 {
        let (status, body) = s.refresh("www", &token, None).await;
        assert_eq!(status, 200, "{body}");
        token = body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_owned();
    }
    // Back to generation 0: the three rotations are lost.
    let _: () = ::redis::cmd("RESTORE")
        .arg(&hash)
        .arg(0)
        .arg(&saved)
        .arg("REPLACE")
        .query_async(&mut conn)
        .await
        .expect("RESTORE");
    let (status, body) = s.refresh("www", &token, None).await;
    assert_eq!(
        status, 200,
        "a token 3 generations ahead of the store: {body}"
    );
    let next = body["refresh_token"].as_str().expect("refresh_token");
    assert_eq!(key_generation(next), 4);
    // The family is at generation 4 now: the chain goes on, and a forged token ahead does not.
    let (status, body) = s.refresh("www", next, None).await;
    assert_eq!(status, 200, "{body}");
    let k = key();
    let forged = k.first(&FamilyId::parse(&family_of(next)).expect("id")).0;
    let mut ahead = forged;
    for _ in 0..9 {
        ahead = k.successor(&k.parse(&ahead).expect("tag")).0;
    }
    assert_invalid_grant(
        &s.refresh("www", &ahead, None).await,
        "a forged token ahead",
    );
}

fn key_generation(token: &str) -> u64 {
    key().parse(token).expect("a proxy token").generation
}
