//! Refresh grants answered by the proxy, end to end: a real IdP (oidc-provider) behind the
//! proxy, whose URL is the IdP's issuer, and each test run on the memory store and on a
//! private redis-server.

use crate::support::idp::{
    self, ClientAuth, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET,
};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use serde_json::Value;

use crate::support::StoreKind as Kind;

/// Extra TOML for the sections the stack writes.
#[derive(Default)]
struct Extra<'a> {
    tokens: &'a str,
    www: &'a str,
    upstream: &'a str,
    more: &'a str,
}

struct Stack {
    idp: Idp,
    proxy: TestProxy,
    redis: Option<RedisServer>,
}

impl Stack {
    async fn start(kind: Kind, opts: IdpOptions, extra: Extra<'_>) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(issuer),
            ..opts
        })
        .await;
        let (redis, store) = kind.start();
        let text = format!(
            "{more}\n[store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n{tokens}\n\
             [clients.www]\nsecret = \"Secr3t!\"\n{www}\n\
             [upstream]\nurl = \"{up}\"\n{upstream}\n",
            more = extra.more,
            key = crate::support::TEST_REFRESH_KEY,
            tokens = extra.tokens,
            www = extra.www,
            up = idp.base_url,
            upstream = extra.upstream,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        Stack { idp, proxy, redis }
    }

    async fn default(kind: Kind) -> Stack {
        Stack::start(kind, IdpOptions::default(), Extra::default()).await
    }

    fn url(&self) -> &str {
        &self.proxy.url
    }

    /// The code flow through the proxy for `www`.
    async fn login(&self, scope: &str) -> Value {
        idp::code_flow(self.url(), &CodeFlow::www(scope)).await
    }

    async fn refresh(&self, rt: &str, scope: Option<&str>) -> (u16, Value) {
        idp::refresh(self.url(), WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, scope).await
    }

    async fn refresh_ok(&self, rt: &str, scope: Option<&str>) -> Value {
        let (status, body) = self.refresh(rt, scope).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn rt(v: &Value) -> &str {
    idp::str_field(v, "refresh_token")
}

/// A refresh token minted by the proxy: `<22-char family>.<generation>.<4-char key id><64 chars>`.
fn is_proxy_token(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() == 3 && parts[0].len() == 22 && parts[2].len() == 68
}

fn scope_set(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = idp::str_field(v, "scope")
        .split(' ')
        .map(str::to_owned)
        .collect();
    s.sort();
    s
}

async fn the_code_flow_is_captured_and_refreshes_rotate_at_the_proxy(kind: Kind) {
    let s = Stack::start(
        kind,
        IdpOptions::default(),
        Extra {
            www: "reuse_grace_period = 0",
            ..Extra::default()
        },
    )
    .await;
    let tokens = s.login("openid offline_access read").await;
    let first = rt(&tokens).to_owned();
    assert!(is_proxy_token(&first), "captured: {first}");
    assert!(tokens["id_token"].is_string() && tokens["access_token"].is_string());

    // A refresh answered by the proxy: Curity's five fields, the no-store headers.
    let res = reqwest::Client::new()
        .post(format!("{}/token", s.url()))
        .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &first)])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["pragma"], "no-cache");
    let body: Value = res.json().await.expect("json");
    let keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "access_token",
            "refresh_token",
            "scope",
            "token_type",
            "expires_in"
        ]
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 300);
    let second = rt(&body).to_owned();
    assert_ne!(second, first, "rotated");
    assert!(is_proxy_token(&second));

    // The old token is refused (grace 0): reuse revokes the family, the newest token too.
    let (status, err) = s.refresh(&first, None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = s.refresh(&second, None).await;
    assert_eq!(status, 400, "the family was revoked");
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        0,
        "no refresh reached the IdP"
    );

    // The security event is counted.
    let metrics = reqwest::get(format!("{}/metrics", s.proxy.admin_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "refresh_proxy_reuse_detections_total 1",
        "refresh_proxy_family_revocations_total 1",
        "refresh_proxy_captures_total 1",
        "refresh_proxy_rotations_total 1",
        "refresh_proxy_requests_total{endpoint=\"token\",outcome=\"ok\"} 1",
        "refresh_proxy_requests_total{endpoint=\"token\",outcome=\"invalid_grant\"} 2",
        "refresh_proxy_token_requests_total{grant_type=\"refresh_token\",outcome=\"ok\"} 1",
        "refresh_proxy_token_requests_total{grant_type=\"authorization_code\",outcome=\"forwarded\"} 1",
        "refresh_proxy_store_duration_seconds_count 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
}

async fn a_chain_of_refreshes_continues_without_the_upstream(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid offline_access read").await;
    let mut current = rt(&tokens).to_owned();
    for _ in 0..10 {
        let body = s.refresh_ok(&current, None).await;
        current = rt(&body).to_owned();
    }
    assert_eq!(s.idp.grant_count("refresh_token").await, 0);
}

async fn reuse_refresh_tokens_echoes_the_token(kind: Kind) {
    let s = Stack::start(
        kind,
        IdpOptions::default(),
        Extra {
            www: "reuse_refresh_tokens = true",
            ..Extra::default()
        },
    )
    .await;
    let tokens = s.login("openid offline_access").await;
    let token = rt(&tokens).to_owned();
    for _ in 0..3 {
        assert_eq!(rt(&s.refresh_ok(&token, None).await), token);
    }
}

async fn a_client_with_refresh_token_ttl_0_gets_no_refresh_tokens(kind: Kind) {
    let s = Stack::start(
        kind,
        IdpOptions::default(),
        Extra {
            www: "refresh_token_ttl = 0",
            ..Extra::default()
        },
    )
    .await;
    let tokens = s.login("openid offline_access read").await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert!(tokens["access_token"].is_string() && tokens["id_token"].is_string());
    let (status, err) = s.refresh("whatever-token", None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    assert_eq!(s.idp.grant_count("refresh_token").await, 0);
}

async fn scope_narrows_sticks_and_widens_back_up_to_the_grant(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid profile read offline_access").await;
    let granted = scope_set(&tokens);
    let narrowed = s.refresh_ok(rt(&tokens), Some("read openid profile")).await;
    assert_eq!(scope_set(&narrowed), ["openid", "profile", "read"]);
    let narrower = s.refresh_ok(rt(&narrowed), Some("read profile")).await;
    assert_eq!(scope_set(&narrower), ["profile", "read"]);
    let same = s.refresh_ok(rt(&narrower), None).await;
    assert_eq!(scope_set(&same), ["profile", "read"], "narrowing sticks");
    let wide = s.refresh_ok(rt(&same), Some(&granted.join(" "))).await;
    assert_eq!(
        scope_set(&wide),
        granted,
        "widening back to the granted scope"
    );
    let (status, err) = s.refresh(rt(&wide), Some("read write")).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // A refused scope leaves the token usable.
    s.refresh_ok(rt(&wide), None).await;
}

async fn unknown_tokens_and_unhandled_clients_reach_the_upstream_and_migrate(kind: Kind) {
    let s = Stack::default(kind).await;
    // A session from before the proxy: tokens straight from the IdP.
    let direct = idp::code_flow(&s.idp.base_url, &CodeFlow::www("openid offline_access")).await;
    let upstream_rt = rt(&direct).to_owned();
    assert!(!is_proxy_token(&upstream_rt));
    let migrated = s.refresh_ok(&upstream_rt, None).await;
    assert_eq!(s.idp.grant_count("refresh_token").await, 1, "forwarded");
    assert!(
        is_proxy_token(rt(&migrated)),
        "captured on the way back: {migrated}"
    );
    s.refresh_ok(rt(&migrated), None).await;
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        1,
        "then answered by the proxy"
    );

    // The public client `spa` is not configured: untouched, both ways.
    let spa = idp::code_flow(s.url(), &CodeFlow::spa("openid offline_access")).await;
    assert!(!is_proxy_token(rt(&spa)));
    let (status, body) = idp::refresh_with(
        s.url(),
        idp::SPA_CLIENT_ID,
        None,
        ClientAuth::None,
        rt(&spa),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!is_proxy_token(rt(&body)));
    assert_eq!(s.idp.grant_count("refresh_token").await, 2);
}

async fn capture_finds_the_subject_by_introspection_when_tokens_are_opaque(kind: Kind) {
    for upstream in [
        "",
        "introspection_client_id = \"rs\"\nintrospection_client_secret = \"rs-secret\"",
    ] {
        let s = Stack::start(
            kind,
            IdpOptions::default(),
            Extra {
                upstream,
                www: "access_token_format = \"jwt\"",
                ..Extra::default()
            },
        )
        .await;
        // No openid: no ID token, and oidc-provider's access tokens are opaque.
        let tokens = s.login("read offline_access").await;
        assert!(tokens.get("id_token").is_none());
        assert!(is_proxy_token(rt(&tokens)), "{upstream}: {tokens}");
        let body = s.refresh_ok(rt(&tokens), None).await;
        let claims = idp::jwt_claims(idp::str_field(&body, "access_token"));
        assert_eq!(claims["sub"], "alice", "{upstream}");
    }
}

async fn minted_jwts_verify_against_the_jwks_fetched_through_the_proxy(kind: Kind) {
    for alg in ["ES256", "EdDSA", "RS256"] {
        let tokens_extra = format!("signing_alg = \"{alg}\"");
        let s = Stack::start(
            kind,
            IdpOptions {
                jwt_access_tokens: true,
                ..IdpOptions::default()
            },
            Extra {
                tokens: &tokens_extra,
                ..Extra::default()
            },
        )
        .await;
        let tokens = s.login("openid offline_access read").await;
        let body = s.refresh_ok(rt(&tokens), None).await;
        let at = idp::str_field(&body, "access_token");
        let jwks_uri = idp::str_field(&idp::discovery(s.url()).await, "jwks_uri").to_owned();
        assert!(jwks_uri.starts_with(s.url()), "{jwks_uri}");
        let verified = crate::support::jose::verify_with_node_jose(&jwks_uri, at, Some(s.url()))
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(verified["header"]["typ"], "at+jwt");
        assert_eq!(verified["header"]["alg"], alg);
        let p = &verified["payload"];
        assert_eq!(p["iss"], s.url());
        assert_eq!(p["sub"], "alice");
        assert_eq!(p["client_id"], "www");
        assert_eq!(
            p["aud"],
            idp::JWT_API_RESOURCE,
            "carried from the upstream's JWT"
        );
        assert!(p["jti"].is_string() && p["exp"].as_i64() > p["iat"].as_i64());
        // The upstream's keys are still there.
        let jwks: Value = reqwest::get(&jwks_uri)
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        assert!(jwks["keys"].as_array().expect("keys").len() >= 2, "{jwks}");
        let admin: Value = reqwest::get(format!("{}/jwks", s.proxy.admin_url))
            .await
            .expect("admin jwks")
            .json()
            .await
            .expect("json");
        assert_eq!(admin["keys"][0]["kid"], verified["header"]["kid"]);
    }
}

async fn opaque_upstream_tokens_give_opaque_access_tokens_by_default(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid offline_access").await;
    let body = s.refresh_ok(rt(&tokens), None).await;
    let at = idp::str_field(&body, "access_token");
    let parts: Vec<&str> = at.split('.').collect();
    assert_eq!(parts.len(), 2, "opaque: {at}");
    assert_eq!(parts[0], &rt(&body)[..22], "carries its family id");
}

async fn an_id_token_on_refresh_only_when_asked_and_openid(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid offline_access").await;
    let body = s.refresh_ok(rt(&tokens), None).await;
    assert!(body.get("id_token").is_none(), "off by default: {body}");

    let s = Stack::start(
        kind,
        IdpOptions::default(),
        Extra {
            www: "id_token_on_refresh = true",
            ..Extra::default()
        },
    )
    .await;
    let tokens = s.login("openid profile offline_access").await;
    let original = idp::jwt_claims(idp::str_field(&tokens, "id_token"));
    let body = s.refresh_ok(rt(&tokens), None).await;
    let id_token = idp::str_field(&body, "id_token");
    let jwks_uri = format!("{}/jwks", s.url());
    let verified = crate::support::jose::verify_with_node_jose(&jwks_uri, id_token, Some(s.url()))
        .await
        .expect("the ID token verifies");
    // tokens.id_token_signing_alg (RS256 by default), which the proxy checks at start is one
    // the IdP's discovery lists: OIDC clients refuse any other.
    assert_eq!(verified["header"]["alg"], "RS256", "the configured default");
    let discovery = idp::discovery(s.url()).await;
    let listed = discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .expect("discovery lists ID-token algorithms");
    assert!(
        listed.contains(&verified["header"]["alg"]),
        "{} is not in discovery's {listed:?}",
        verified["header"]["alg"]
    );
    let p = &verified["payload"];
    for claim in ["iss", "sub", "aud", "auth_time"] {
        assert_eq!(p[claim], original[claim], "{claim} kept");
    }
    assert!(p.get("nonce").is_none());
    assert!(p["iat"].as_i64() >= original["iat"].as_i64());
    // Without openid in the effective scope: none.
    let body = s.refresh_ok(rt(&body), Some("profile")).await;
    assert!(body.get("id_token").is_none(), "{body}");
}

async fn client_authentication_at_the_proxy(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid offline_access").await;
    let token = rt(&tokens).to_owned();
    let send = |auth: Option<&'static str>,
                extra: &'static [(&'static str, &'static str)],
                token: String| {
        let url = format!("{}/token", s.url());
        async move {
            let mut form: Vec<(&str, String)> = vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", token),
            ];
            form.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            let mut req = reqwest::Client::new().post(url).form(&form);
            if let Some(raw) = auth {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
                req = req.header("authorization", format!("Basic {b64}"));
            }
            let res = req.send().await.expect("send");
            let status = res.status().as_u16();
            let www = res.headers().get("www-authenticate").is_some();
            let body: Value = res.json().await.expect("json");
            (status, www, body)
        }
    };
    // Encoded and raw Basic secrets, and client_secret_post, all work.
    let (st, _, b) = send(Some("www:Secr3t%21"), &[], token.clone()).await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = send(Some("www:Secr3t!"), &[], rt(&b).to_owned()).await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = send(
        None,
        &[("client_id", "www"), ("client_secret", "Secr3t!")],
        rt(&b).to_owned(),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let live = rt(&b).to_owned();
    // Failures.
    let (st, www, b) = send(Some("www:wrong"), &[], live.clone()).await;
    assert_eq!(
        (st, www, b["error"].as_str()),
        (401, true, Some("invalid_client"))
    );
    let (st, www, b) = send(
        None,
        &[("client_id", "www"), ("client_secret", "wrong")],
        live.clone(),
    )
    .await;
    assert_eq!(
        (st, www, b["error"].as_str()),
        (401, false, Some("invalid_client"))
    );
    let (st, _, b) = send(
        Some("www:Secr3t!"),
        &[("client_secret", "Secr3t!")],
        live.clone(),
    )
    .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("invalid_request")));
    let (st, www, b) = send(Some("www-no-colon"), &[], live.clone()).await;
    assert_eq!(
        (st, www, b["error"].as_str()),
        (401, true, Some("invalid_client"))
    );
    let res = reqwest::Client::new()
        .post(format!("{}/token", s.url()))
        .header("authorization", "Basic %%%not-base64%%%")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", live.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    // Another client's token: invalid_grant (the token is not burnt).
    let (st, _, b) = send(None, &[("client_id", "www")], live.clone()).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("invalid_client")));
    // Missing refresh_token.
    let (st, _, b) = send(Some("www:Secr3t!"), &[], String::new()).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("invalid_request")));
    // The live token still works after all that.
    let (st, _, b) = send(Some("www:Secr3t!"), &[], live).await;
    assert_eq!(st, 200, "{b}");
}

async fn another_clients_token_is_invalid_grant_and_stays_valid(kind: Kind) {
    let s = Stack::start(
        kind,
        IdpOptions::default(),
        Extra {
            more: "[clients.other]\nsecret = \"0ther-secret\"",
            ..Extra::default()
        },
    )
    .await;
    let tokens = s.login("openid offline_access").await;
    let token = rt(&tokens);
    let (status, body) = idp::refresh(s.url(), "other", "0ther-secret", token, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // RFC 6749 §6: the token was issued to www; it still works for www.
    s.refresh_ok(token, None).await;
}

async fn a_retry_after_a_lost_answer_gets_the_same_answer(kind: Kind) {
    let s = Stack::default(kind).await;
    let tokens = s.login("openid offline_access read").await;
    let presented = rt(&tokens).to_owned();
    // The answer to this refresh is "lost": the client never sees it and retries.
    let lost = s.refresh_ok(&presented, None).await;
    let retried = s.refresh_ok(&presented, None).await;
    assert_eq!(
        rt(&retried),
        rt(&lost),
        "the same refresh token again, not a new pair"
    );
    assert_eq!(retried["scope"], lost["scope"]);
    // The family goes on from that token, and the presented one is now reuse.
    let next = s.refresh_ok(rt(&retried), None).await;
    let (status, _) = s.refresh(&presented, None).await;
    assert_eq!(status, 400, "N-1 after N was used is reuse");
    let (status, _) = s.refresh(rt(&next), None).await;
    assert_eq!(status, 400, "and reuse revoked the family");
}

async fn odd_refresh_tokens_never_break_anything(kind: Kind) {
    let s = Stack::default(kind).await;
    let huge = "A".repeat(60_000);
    for token in [
        huge.as_str(),
        "x",
        "a.b.c",
        "AAAAAAAAAAAAAAAAAAAAAA.0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "ü%00\u{1}",
    ] {
        // None of these is the proxy's, so the IdP answers (oidc-provider refuses a 60 kB
        // body as unparseable); whoever answers, it is a clean OAuth error.
        let (status, body) = s.refresh(token, None).await;
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            ["invalid_grant", "invalid_request"].contains(&error),
            "{token:.20}: {body}"
        );
    }
    // A token shaped like the proxy's but forged: refused without reaching the IdP.
    let before = s.idp.grant_count("refresh_token").await;
    let forged = format!("{}.0.{}", "B".repeat(22), "C".repeat(64));
    let (status, body) = s.refresh(&forged, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        before + 1,
        "forged tokens are not ours: forwarded"
    );
    // The proxy is still fine.
    let tokens = s.login("openid offline_access").await;
    s.refresh_ok(rt(&tokens), None).await;
}

#[tokio::test]
async fn a_redis_outage_is_503_while_forwarding_goes_on() {
    let mut s = Stack::default(Kind::Redis).await;
    let tokens = s.login("openid offline_access").await;
    let token = rt(&tokens).to_owned();
    s.redis.as_mut().expect("redis").kill();
    let res = reqwest::Client::new()
        .post(format!("{}/token", s.url()))
        .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    // Forwarded traffic is unaffected.
    let disc = idp::discovery(s.url()).await;
    assert!(disc["issuer"].is_string());
    s.redis.as_mut().expect("redis").restart();
    s.proxy.wait_ready().await;
    // Nothing was half-rotated: the same token works after the outage.
    s.refresh_ok(&token, None).await;
}

both_stores!(
    the_code_flow_is_captured_and_refreshes_rotate_at_the_proxy,
    a_chain_of_refreshes_continues_without_the_upstream,
    reuse_refresh_tokens_echoes_the_token,
    a_client_with_refresh_token_ttl_0_gets_no_refresh_tokens,
    scope_narrows_sticks_and_widens_back_up_to_the_grant,
    unknown_tokens_and_unhandled_clients_reach_the_upstream_and_migrate,
    capture_finds_the_subject_by_introspection_when_tokens_are_opaque,
    minted_jwts_verify_against_the_jwks_fetched_through_the_proxy,
    opaque_upstream_tokens_give_opaque_access_tokens_by_default,
    an_id_token_on_refresh_only_when_asked_and_openid,
    client_authentication_at_the_proxy,
    odd_refresh_tokens_never_break_anything,
    another_clients_token_is_invalid_grant_and_stays_valid,
    a_retry_after_a_lost_answer_gets_the_same_answer,
);
