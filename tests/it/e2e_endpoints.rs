//! Revocation (RFC 7009) and introspection (RFC 7662) of the proxy's own tokens, end to end
//! with the real IdP behind the proxy, on both stores. Tokens the proxy did not issue go to
//! the IdP.

use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use serde_json::Value;

use crate::support::StoreKind as Kind;

struct Stack {
    idp: Idp,
    proxy: TestProxy,
    _redis: Option<RedisServer>,
}

impl Stack {
    async fn start(kind: Kind, opts: IdpOptions, www: &str) -> Stack {
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
            "[store]\nurl = \"{store}\"\n[tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"Secr3t!\"\n{www}\n\
             [clients.other]\nsecret = \"0ther-secret\"\n\
             [clients.rs]\nsecret = \"rs-secret\"\nmay_introspect = true\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        Stack {
            idp,
            proxy,
            _redis: redis,
        }
    }

    fn url(&self) -> &str {
        &self.proxy.url
    }

    /// Logs in through the proxy and refreshes once: (refresh token, access token).
    async fn tokens(&self, scope: &str) -> (String, String) {
        let login = idp::code_flow(self.url(), &CodeFlow::www(scope)).await;
        let (status, body) = self.refresh(idp::str_field(&login, "refresh_token")).await;
        assert_eq!(status, 200, "{body}");
        (
            idp::str_field(&body, "refresh_token").to_owned(),
            idp::str_field(&body, "access_token").to_owned(),
        )
    }

    async fn refresh(&self, rt: &str) -> (u16, Value) {
        idp::refresh(self.url(), WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await
    }

    async fn revoke(&self, client: &str, secret: &str, token: &str) -> u16 {
        idp::revoke(self.url(), client, secret, token).await
    }
}

async fn revoking_a_refresh_token_ends_its_family(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "").await;
    let (rt, _) = s.tokens("openid offline_access").await;
    assert_eq!(s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, &rt).await, 200);
    let (status, body) = s.refresh(&rt).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Revoking again, or a token the proxy never saw, is still 200 (RFC 7009 §2.2).
    assert_eq!(s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, &rt).await, 200);
}

async fn revoking_an_access_token_ends_its_family(kind: Kind) {
    for (opts, format) in [
        (IdpOptions::default(), "opaque"),
        (
            IdpOptions {
                jwt_access_tokens: true,
                ..IdpOptions::default()
            },
            "jwt",
        ),
    ] {
        let s = Stack::start(kind, opts, "").await;
        let (rt, at) = s.tokens("openid offline_access read").await;
        let parts = at.split('.').count();
        assert_eq!(parts, if format == "jwt" { 3 } else { 2 }, "{format}: {at}");
        assert_eq!(s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, &at).await, 200);
        let (status, _) = s.refresh(&rt).await;
        assert_eq!(status, 400, "{format}: the family is revoked");
        assert_eq!(
            idp::introspect(s.url(), &at).await["active"],
            false,
            "{format}"
        );
    }
}

async fn another_client_cannot_revoke_a_token(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "").await;
    let (rt, _) = s.tokens("openid offline_access").await;
    assert_eq!(
        s.revoke("other", "0ther-secret", &rt).await,
        200,
        "RFC 7009: no oracle"
    );
    let (status, body) = s.refresh(&rt).await;
    assert_eq!(status, 200, "nothing was revoked: {body}");
    // Bad credentials are refused before anything else.
    assert_eq!(
        s.revoke(
            WWW_CLIENT_ID,
            "wrong",
            idp::str_field(&body, "refresh_token")
        )
        .await,
        401
    );
}

async fn introspection_answers_for_the_proxys_tokens(kind: Kind) {
    let s = Stack::start(
        kind,
        IdpOptions {
            jwt_access_tokens: true,
            ..IdpOptions::default()
        },
        "",
    )
    .await;
    let login = idp::code_flow(s.url(), &CodeFlow::www("openid offline_access read")).await;
    let first = idp::str_field(&login, "refresh_token").to_owned();
    let live = idp::introspect(s.url(), &first).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["client_id"], "www");
    assert_eq!(live["sub"], "alice");
    assert_eq!(live["token_type"], "refresh_token");
    assert_eq!(live["iss"], s.url());
    assert!(live["exp"].as_i64() > live["iat"].as_i64());

    let (status, body) = s.refresh(&first).await;
    assert_eq!(status, 200);
    let (second, at) = (
        idp::str_field(&body, "refresh_token").to_owned(),
        idp::str_field(&body, "access_token").to_owned(),
    );
    assert_eq!(
        idp::introspect(s.url(), &first).await,
        serde_json::json!({"active": false}),
        "rotated out"
    );
    assert_eq!(idp::introspect(s.url(), &second).await["active"], true);
    let jwt = idp::introspect(s.url(), &at).await;
    assert_eq!(jwt["active"], true, "{jwt}");
    assert_eq!(jwt["token_type"], "Bearer");
    assert_eq!(jwt["scope"], body["scope"]);
    assert_eq!(jwt["aud"], idp::JWT_API_RESOURCE);

    assert_eq!(
        s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, &second).await,
        200
    );
    assert_eq!(
        idp::introspect(s.url(), &second).await["active"],
        false,
        "revoked"
    );
    assert_eq!(
        idp::introspect(s.url(), &at).await["active"],
        false,
        "its family is revoked"
    );
}

async fn opaque_access_tokens_introspect_with_their_claims(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "").await;
    let (_, at) = s.tokens("openid offline_access").await;
    let v = idp::introspect(s.url(), &at).await;
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(
        (v["client_id"].as_str(), v["sub"].as_str()),
        (Some("www"), Some("alice"))
    );
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["exp"].as_i64().expect("exp") - v["iat"].as_i64().expect("iat") == 300);
}

async fn only_clients_that_may_introspect_can(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "").await;
    let (rt, _) = s.tokens("openid offline_access").await;
    let res = reqwest::Client::new()
        .post(format!("{}/token/introspection", s.url()))
        .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
        .form(&[("token", rt.as_str())])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
}

async fn tokens_the_proxy_did_not_issue_go_to_the_idp(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "").await;
    // An access token the IdP issued (the code flow's answer passes it through).
    let login = idp::code_flow(s.url(), &CodeFlow::www("openid offline_access")).await;
    let idp_at = idp::str_field(&login, "access_token");
    let v = idp::introspect(s.url(), idp_at).await;
    assert_eq!(v["active"], true, "the IdP answered: {v}");
    assert_eq!(
        s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, idp_at).await,
        200
    );
    assert_eq!(
        idp::introspect(&s.idp.base_url, idp_at).await["active"],
        false,
        "revoked at the IdP"
    );
}

/// An ID token is not an access token: introspecting one the proxy minted is inactive (it
/// answered `active: true, token_type: Bearer`, and stayed active after its family was
/// revoked), and revoking it ends nothing.
async fn an_id_token_the_proxy_minted_is_not_an_access_token(kind: Kind) {
    let s = Stack::start(kind, IdpOptions::default(), "id_token_on_refresh = true").await;
    let login = idp::code_flow(s.url(), &CodeFlow::www("openid offline_access")).await;
    let (status, body) = s.refresh(idp::str_field(&login, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
    let id_token = idp::str_field(&body, "id_token").to_owned();
    let rt = idp::str_field(&body, "refresh_token").to_owned();
    assert_eq!(
        idp::introspect(s.url(), &id_token).await,
        serde_json::json!({"active": false}),
        "an ID token introspects inactive"
    );
    assert_eq!(
        s.revoke(WWW_CLIENT_ID, WWW_CLIENT_SECRET, &id_token).await,
        200
    );
    let (status, body) = s.refresh(&rt).await;
    assert_eq!(status, 200, "revoking an ID token ends nothing: {body}");
}

both_stores!(
    revoking_a_refresh_token_ends_its_family,
    revoking_an_access_token_ends_its_family,
    another_client_cannot_revoke_a_token,
    introspection_answers_for_the_proxys_tokens,
    opaque_access_tokens_introspect_with_their_claims,
    only_clients_that_may_introspect_can,
    tokens_the_proxy_did_not_issue_go_to_the_idp,
    an_id_token_the_proxy_minted_is_not_an_access_token,
);
