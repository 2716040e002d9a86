//! Bound to the IdP's decision (docs/design.md §4.11, §4.12), end to end against the real IdP
//! (oidc-provider, with revocation, introspection and back-channel logout on): what ends at the
//! proxy ends at the IdP too, and what the IdP logs out ends at the proxy.
//!
//! The IdP's test API lists the refresh tokens it issued, so a test can ask the IdP's own
//! introspection whether the upstream token a family kept is still live.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::StoreKind as Kind;
use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// How long an end may take to reach the IdP when nothing fails (it is queued, not awaited).
const PROMPTLY: Duration = Duration::from_secs(10);

struct Stack {
    idp: Idp,
    proxy: TestProxy,
    redis: Option<RedisServer>,
}

impl Stack {
    async fn start(kind: Kind, www: &str) -> Stack {
        let (listener, idp) = Idp::start_behind_proxy(IdpOptions::default()).await;
        let redis = matches!(kind, Kind::Redis).then(RedisServer::start);
        let store = redis
            .as_ref()
            .map_or("memory://".to_owned(), RedisServer::url);
        let text = format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"{WWW_CLIENT_SECRET}\"\n{www}\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        Stack { idp, proxy, redis }
    }

    /// Logs `alice` in through the proxy: the proxy's answer, and the upstream refresh token
    /// the family kept (the last one the IdP issued).
    async fn login(&self) -> (Value, String) {
        let tokens = idp::code_flow(
            &self.proxy.url,
            &CodeFlow::www("openid offline_access read"),
        )
        .await;
        let upstream = self.idp.last_refresh_token().await;
        assert_ne!(rt(&tokens), upstream, "the client got the proxy's token");
        assert!(self.idp.is_active(&upstream).await, "live at the IdP");
        (tokens, upstream)
    }

    async fn refresh(&self, token: &str) -> (u16, Value) {
        idp::refresh(
            &self.proxy.url,
            WWW_CLIENT_ID,
            WWW_CLIENT_SECRET,
            token,
            None,
        )
        .await
    }

    /// `refresh_proxy_upstream_revocations_total{outcome}`.
    async fn revocations(&self, outcome: &str) -> u64 {
        let series = format!("refresh_proxy_upstream_revocations_total{{outcome=\"{outcome}\"}}");
        self.proxy.metric(&series).await
    }

    async fn admin_revoke(&self, body: Value) -> u64 {
        let answer: Value = self
            .proxy
            .admin_http
            .post(format!("{}/admin/revoke", self.proxy.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin revoke")
            .json()
            .await
            .expect("json");
        answer["revoked"].as_u64().expect("a count")
    }
}

fn rt(v: &Value) -> &str {
    idp::str_field(v, "refresh_token")
}

async fn a_revocation_at_the_proxy_revokes_the_kept_token_at_the_idp(kind: Kind) {
    let s = Stack::start(kind, "").await;
    let (tokens, upstream) = s.login().await;
    let (status, next) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200, "{next}");
    assert!(
        s.idp.is_active(&upstream).await,
        "a refresh changes nothing at the IdP"
    );
    assert_eq!(
        idp::revoke(&s.proxy.url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt(&next)).await,
        200
    );
    assert!(
        s.idp.wait_inactive(&upstream, PROMPTLY).await,
        "the IdP's introspection still says the kept token is active"
    );
    assert_eq!(s.revocations("revoked").await, 1);
    let (status, _) = s.refresh(rt(&next)).await;
    assert_eq!(status, 400, "the family is gone at the proxy too");
}

async fn reuse_detection_revokes_the_kept_token_at_the_idp(kind: Kind) {
    let s = Stack::start(kind, "reuse_grace_period = 0").await;
    let (tokens, upstream) = s.login().await;
    let (status, _) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200);
    let (status, err) = s.refresh(rt(&tokens)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        s.idp.wait_inactive(&upstream, PROMPTLY).await,
        "reuse ended the family at the proxy but not the session at the IdP"
    );
}

async fn admin_revocation_by_subject_revokes_every_kept_token(kind: Kind) {
    let s = Stack::start(kind, "").await;
    let (_, first) = s.login().await;
    let (_, second) = s.login().await;
    assert_ne!(first, second);
    assert_eq!(s.admin_revoke(json!({"subject": "alice"})).await, 2);
    for upstream in [&first, &second] {
        assert!(s.idp.wait_inactive(upstream, PROMPTLY).await);
    }
    assert_eq!(s.revocations("revoked").await, 2);
}

async fn a_client_with_refresh_token_ttl_0_has_the_upstream_token_revoked(kind: Kind) {
    let s = Stack::start(kind, "refresh_token_ttl = 0").await;
    let tokens = idp::code_flow(&s.proxy.url, &CodeFlow::www("openid offline_access read")).await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let upstream = s.idp.last_refresh_token().await;
    assert!(s.idp.wait_inactive(&upstream, PROMPTLY).await);
    assert_eq!(s.revocations("revoked").await, 1);
}

async fn a_failing_revocation_endpoint_is_tried_again(kind: Kind) {
    let s = Stack::start(kind, "").await;
    let (tokens, upstream) = s.login().await;
    // The IdP answers 503 twice, then revokes: tries after 1 s and 2 s.
    s.idp.fail_next("/token/revocation", 2, 503).await;
    assert_eq!(
        idp::revoke(&s.proxy.url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt(&tokens)).await,
        200,
        "the client's answer does not wait for the upstream"
    );
    assert!(
        s.idp
            .wait_inactive(&upstream, Duration::from_secs(15))
            .await
    );
    assert_eq!(s.revocations("retried").await, 2);
    assert_eq!(s.revocations("revoked").await, 1);
}

crate::both_stores!(multi_thread:
    a_revocation_at_the_proxy_revokes_the_kept_token_at_the_idp,
    reuse_detection_revokes_the_kept_token_at_the_idp,
    admin_revocation_by_subject_revokes_every_kept_token,
    a_client_with_refresh_token_ttl_0_has_the_upstream_token_revoked,
    a_failing_revocation_endpoint_is_tried_again,
);

/// The kept upstream token is in the family, sealed: a dump of every key and value in Redis
/// holds no clear copy of it (nor of the proxy's own refresh token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_the_kept_token_only_sealed() {
    let s = Stack::start(Kind::Redis, "").await;
    let (tokens, upstream) = s.login().await;
    let redis = s.redis.as_ref().expect("redis");
    let dump = redis.dump_files();
    let has = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"alice"), "the family is in the dump");
    for secret in [upstream.as_str(), rt(&tokens)] {
        let secret_part = secret.rsplit('.').next().unwrap_or(secret);
        assert!(
            !has(&secret_part.as_bytes()[..20]),
            "a token is in clear in Redis's files"
        );
    }
}
