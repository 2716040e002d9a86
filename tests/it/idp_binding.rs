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
    /// The proxy's config, to start another replica on the same store.
    config: String,
}

/// The proxy's back-channel logout path in these tests.
const LOGOUT_PATH: &str = "/backchannel-logout";

impl Stack {
    async fn start(kind: Kind, www: &str) -> Stack {
        Stack::with(kind, www, false).await
    }

    /// With `logout`: the IdP sends back-channel logout tokens to the proxy's
    /// [`LOGOUT_PATH`], and issues session-bound refresh tokens (without `offline_access`) as
    /// Keycloak does.
    async fn with(kind: Kind, www: &str, logout: bool) -> Stack {
        Stack::full(kind, www, "", logout).await
    }

    /// With `upstream` added to the `[upstream]` table.
    async fn full(kind: Kind, www: &str, upstream: &str, logout: bool) -> Stack {
        Stack::on(kind, www, upstream, logout, IdpOptions::default()).await
    }

    /// With the IdP started with `idp` (its issuer and logout settings are the stack's).
    async fn on(kind: Kind, www: &str, upstream: &str, logout: bool, idp: IdpOptions) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(issuer.clone()),
            backchannel_logout_uri: logout
                .then(|| format!("{issuer}{LOGOUT_PATH}"))
                .or(idp.backchannel_logout_uri.clone()),
            session_refresh_tokens: logout || idp.session_refresh_tokens,
            ..idp
        })
        .await;
        let upstream = if logout {
            format!("backchannel_logout_path = \"{LOGOUT_PATH}\"\n{upstream}\n")
        } else {
            format!("{upstream}\n")
        };
        let (redis, store) = kind.start();
        let text = format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"{WWW_CLIENT_SECRET}\"\n{www}\n\
             [upstream]\nurl = \"{up}\"\n{upstream}",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        Stack {
            idp,
            proxy,
            redis,
            config: text,
        }
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

/// Signs in `alice` through the proxy in a browser of its own: the browser (its cookies hold
/// the IdP session) and the proxy's answer.
async fn sign_in(s: &Stack, scope: &str) -> (reqwest::Client, Value) {
    let browser = idp::new_browser();
    let tokens = idp::code_flow_in(&browser, &s.proxy.url, &CodeFlow::www(scope)).await;
    (browser, tokens)
}

async fn logouts(s: &Stack, outcome: &str) -> u64 {
    let series = format!("refresh_proxy_logouts_received_total{{outcome=\"{outcome}\"}}");
    s.proxy.metric(&series).await
}

async fn a_logout_at_the_idp_ends_the_sessions_family_at_once(kind: Kind) {
    let s = Stack::with(kind, "", true).await;
    let (browser, tokens) = sign_in(&s, "openid read").await;
    let (other_browser, other) = sign_in(&s, "openid read").await;
    let (status, next) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200, "{next}");
    // RP-initiated logout at the IdP (through the proxy, which forwards it): the IdP sends
    // its logout token to the proxy before it answers the browser.
    idp::logout_in(&browser, &s.proxy.url, idp::str_field(&tokens, "id_token")).await;
    let (status, err) = s.refresh(rt(&next)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant")),
        "refused at once, not at the next check"
    );
    assert_eq!(logouts(&s, "done").await, 1);
    // Another session of the same user is not this session.
    let (status, body) = s.refresh(rt(&other)).await;
    assert_eq!(status, 200, "{body}");
    drop(other_browser);
}

/// OpenID Connect Back-Channel Logout 1.0 §2.7: a family granted `offline_access` outlives
/// the logout of the session it was captured in (the IdP keeps the offline grant too).
async fn a_logout_spares_offline_access_families(kind: Kind) {
    let s = Stack::with(kind, "", true).await;
    let (browser, tokens) = sign_in(&s, "openid offline_access read").await;
    let upstream = s.idp.last_refresh_token().await;
    idp::logout_in(&browser, &s.proxy.url, idp::str_field(&tokens, "id_token")).await;
    assert_eq!(logouts(&s, "done").await, 1);
    let (status, body) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        s.idp.is_active(&upstream).await,
        "the IdP kept the offline grant too"
    );
}

/// The logout token, passed on to the client's own endpoint, is refused when it comes again;
/// one signed with another key, an ID token and a malformed request are refused too, and none
/// of them ends a family.
async fn replayed_and_forged_logout_tokens_are_refused(kind: Kind) {
    let client_endpoint = crate::support::echo::EchoServer::start_recording().await;
    let www = format!(
        "backchannel_logout_uri = \"{}/client-logout\"",
        client_endpoint.url()
    );
    let s = Stack::with(kind, &www, true).await;
    let (_, survivor) = sign_in(&s, "openid read").await;
    let (browser, tokens) = sign_in(&s, "openid read").await;
    idp::logout_in(&browser, &s.proxy.url, idp::str_field(&tokens, "id_token")).await;
    // Passed on in the background.
    let deadline = std::time::Instant::now() + PROMPTLY;
    let logout_token = loop {
        let raw = String::from_utf8_lossy(&client_endpoint.recorded().raw).into_owned();
        if let Some(at) = raw.find("logout_token=") {
            let value = raw[at + "logout_token=".len()..]
                .split(['&', '\r', '\n'])
                .next()
                .expect("a value")
                .to_owned();
            break value;
        }
        assert!(std::time::Instant::now() < deadline, "not passed on: {raw}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        String::from_utf8_lossy(&client_endpoint.recorded().raw).contains("POST /client-logout"),
        "sent to the client's own path"
    );
    assert_eq!(
        s.proxy
            .metric("refresh_proxy_logouts_passed_on_total{outcome=\"ok\"}")
            .await,
        1
    );
    let post = |body: String| {
        let url = format!("{}{LOGOUT_PATH}", s.proxy.url);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("send");
            let status = res.status().as_u16();
            let cache = res
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (
                status,
                cache,
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, _, err) = post(format!("logout_token={logout_token}")).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(logouts(&s, "replayed").await, 1);
    // An ID token is not a logout token (no events, a nonce), though the IdP signed it.
    let id_token = idp::str_field(&survivor, "id_token").to_owned();
    let (status, _, _) = post(format!("logout_token={id_token}")).await;
    assert_eq!(status, 400);
    // The same claims with the signature of another key.
    let key = crate::support::fake_idp::TestKey::rs256("not-the-idps");
    let claims = idp::jwt_claims(&id_token);
    let forged = key.sign(&json!({
        "iss": claims["iss"], "aud": "www", "iat": claims["iat"], "exp": claims["exp"],
        "jti": "forged-1", "sid": claims["sid"], "sub": "alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
    }));
    let (status, _, _) = post(format!("logout_token={forged}")).await;
    assert_eq!(status, 400);
    let (status, _, _) = post("token=x".into()).await;
    assert_eq!(status, 400, "no logout_token");
    let res = reqwest::get(format!("{}{LOGOUT_PATH}", s.proxy.url))
        .await
        .expect("GET");
    assert_eq!(res.status(), 405);
    assert_eq!(logouts(&s, "invalid").await, 4);
    let (status, body) = s.refresh(rt(&survivor)).await;
    assert_eq!(status, 200, "no refused token ended a family: {body}");
}

async fn checks(s: &Stack, outcome: &str) -> u64 {
    let series = format!("refresh_proxy_upstream_checks_total{{outcome=\"{outcome}\"}}");
    s.proxy.metric(&series).await
}

/// docs/design.md §4.13: a grant revoked at the IdP directly (no logout token) is refused at
/// the proxy at the next check, not before; until then no refresh reaches the IdP.
async fn a_grant_revoked_at_the_idp_is_refused_at_the_next_check(kind: Kind) {
    let s = Stack::start(kind, "upstream_check_interval = 2").await;
    let (tokens, upstream) = s.login().await;
    s.idp.reset_grant_counts().await;
    assert_eq!(
        idp::revoke(&s.idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &upstream).await,
        200
    );
    assert!(!s.idp.is_active(&upstream).await);
    let (status, next) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200, "not before the check: {next}");
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        0,
        "answered by the proxy"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, err) = s.refresh(rt(&next)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant")),
        "{err}"
    );
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        1,
        "one check reached the IdP"
    );
    assert_eq!(checks(&s, "revoked").await, 1);
    let (status, _) = s.refresh(rt(&next)).await;
    assert_eq!(status, 400, "the family is gone");
}

/// A live session is confirmed by the IdP once per interval and the family goes on; the
/// IdP's token stays the kept one (oidc-provider does not rotate a confidential client's).
async fn a_live_session_is_confirmed_and_the_family_goes_on(kind: Kind) {
    let s = Stack::start(kind, "upstream_check_interval = 1").await;
    let (tokens, upstream) = s.login().await;
    s.idp.reset_grant_counts().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut token = rt(&tokens).to_owned();
    for _ in 0..5 {
        let (status, next) = s.refresh(&token).await;
        assert_eq!(status, 200, "{next}");
        token = rt(&next).to_owned();
    }
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        1,
        "one check per interval"
    );
    assert_eq!(checks(&s, "confirmed").await, 1);
    assert!(s.idp.is_active(&upstream).await);
}

/// 200 racing refreshes with one token at a check boundary: exactly one upstream redemption
/// (counted by the IdP), every answer 200 with the same successor.
async fn racing_refreshes_at_a_check_make_one_upstream_call(kind: Kind) {
    let s = Stack::start(kind, "upstream_check_interval = 1").await;
    let (tokens, _) = s.login().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.idp.reset_grant_counts().await;
    // The IdP takes half a second over the check: the other refreshes arrive meanwhile.
    s.idp.fail_next_after("/token", 1, 0, 500).await;
    let client = reqwest::Client::new();
    let token = rt(&tokens).to_owned();
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (client, url, token) = (client.clone(), s.proxy.url.clone(), token.clone());
        racing.spawn(async move {
            let res = client
                .post(format!("{url}/token"))
                .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
                .await
                .expect("send");
            let status = res.status().as_u16();
            let body: Value = res.json().await.expect("json");
            (status, body)
        });
    }
    let mut successors = std::collections::HashSet::new();
    while let Some(done) = racing.join_next().await {
        let (status, body) = done.expect("join");
        assert_eq!(status, 200, "{body}");
        successors.insert(rt(&body).to_owned());
    }
    assert_eq!(successors.len(), 1, "one successor");
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        1,
        "one upstream call"
    );
    assert_eq!(checks(&s, "confirmed").await, 1);
    assert!(
        s.proxy
            .metric("refresh_proxy_upstream_check_waiters_total")
            .await
            > 0,
        "the others waited for it"
    );
    let successor = successors.into_iter().next().expect("one");
    let (status, _) = s.refresh(&successor).await;
    assert_eq!(status, 200, "the family goes on");
}

/// The IdP down at a check: `serve` answers from the store within upstream_unreachable_max;
/// `fail` answers 503.
async fn an_idp_down_at_a_check_is_served_or_refused_as_configured(kind: Kind) {
    let mut s = Stack::start(
        kind,
        "upstream_check_interval = 1\nupstream_unreachable = \"serve\"\nupstream_unreachable_max = 60",
    )
    .await;
    let (tokens, _) = s.login().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.idp.kill().await;
    let (status, next) = s.refresh(rt(&tokens)).await;
    assert_eq!(status, 200, "served: {next}");
    assert_eq!(checks(&s, "failed").await, 1);
    let (status, _) = s.refresh(rt(&next)).await;
    assert_eq!(status, 200, "still served, without asking again at once");
    assert_eq!(checks(&s, "failed").await, 1);

    let s = Stack::start(
        kind,
        "upstream_check_interval = 1\nupstream_unreachable = \"fail\"",
    )
    .await;
    let (tokens, _) = s.login().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.idp.fail_next("/token", 1, 503).await;
    let (status, err) = s.refresh(rt(&tokens)).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{err}"
    );
    assert_eq!(checks(&s, "refused").await, 1);
}

/// A redemption that dies while its check is at the IdP (the client gave up; on Redis, the
/// whole proxy process is killed with SIGKILL): the client's retry, at the same proxy or at
/// another replica, waits out the lease, checks again and goes on; the family is intact.
async fn a_redemption_dying_mid_check_leaves_the_family_intact(kind: Kind) {
    // The lease is connect_timeout + request_timeout + 3 s = 2 + 3 + 3 = 8 s.
    let s = Stack::full(
        kind,
        "upstream_check_interval = 1",
        "request_timeout = 3",
        false,
    )
    .await;
    let (tokens, upstream) = s.login().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The IdP takes 2.5 s over the first check (then answers it: within request_timeout).
    s.idp.fail_next_after("/token", 1, 0, 2500).await;
    let token = rt(&tokens).to_owned();
    let killed = match kind {
        Kind::Memory => None,
        Kind::Redis => {
            let replica = crate::support::proxy::ProxyProcess::spawn(&s.config);
            replica.wait_ready().await;
            Some(replica)
        }
    };
    let first_url = killed
        .as_ref()
        .map_or(s.proxy.url.clone(), |p| p.url.clone());
    let gave_up = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .expect("client")
        .post(format!("{first_url}/token"))
        .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
        .send()
        .await;
    assert!(gave_up.is_err(), "the first attempt is cut off mid-check");
    if let Some(mut replica) = killed {
        replica.signal("KILL");
        assert!(replica.wait_exit(Duration::from_secs(5)).await.is_some());
    }
    let (status, next) = s.refresh(&token).await;
    assert_eq!(status, 200, "the retry goes on: {next}");
    let (status, body) = s.refresh(rt(&next)).await;
    assert_eq!(status, 200, "the family is intact: {body}");
    assert!(s.idp.is_active(&upstream).await);
}

/// docs/design.md §4.14: `access_token_format = "upstream"` in front of an IdP that rotates
/// every refresh token: each refresh is redeemed at the IdP (its access token, the proxy's
/// refresh token), a retry within the grace window gets the same answer without a second IdP
/// call, racing refreshes make one, and a reused token ends the family and the IdP's grant.
async fn the_upstream_format_gives_the_idps_access_tokens_with_the_proxys_rotation(kind: Kind) {
    let idp = IdpOptions {
        refresh_rotation: idp::RefreshRotation::Always,
        ..IdpOptions::default()
    };
    let s = Stack::on(kind, "access_token_format = \"upstream\"", "", false, idp).await;
    let (tokens, first_upstream) = s.login().await;
    s.idp.reset_grant_counts().await;
    let first = rt(&tokens).to_owned();
    let (status, second) = s.refresh(&first).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        1,
        "redeemed at the IdP"
    );
    let access_token = idp::str_field(&second, "access_token").to_owned();
    let info = idp::introspect(&s.idp.base_url, &access_token).await;
    assert_eq!(info["active"], true, "the IdP's own access token: {info}");
    assert_eq!(info["client_id"], WWW_CLIENT_ID);
    assert!(
        second["id_token"].is_string(),
        "the IdP's ID token too: {second}"
    );
    assert_ne!(rt(&second), first, "the proxy rotated its token");
    assert!(
        !s.idp
            .refresh_tokens()
            .await
            .iter()
            .any(|t| t["token"] == rt(&second)),
        "the client never sees the IdP's refresh tokens"
    );
    // The IdP rotated its token: the family keeps the new one, the old is spent.
    let kept = s.idp.last_refresh_token().await;
    assert_ne!(kept, first_upstream);
    assert!(!s.idp.is_active(&first_upstream).await && s.idp.is_active(&kept).await);

    // A retry within the grace window: the same answer, no IdP call.
    let (status, again) = s.refresh(&first).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["access_token"], second["access_token"]);
    assert_eq!(rt(&again), rt(&second));
    assert_eq!(s.idp.grant_count("refresh_token").await, 1);

    // 50 racing refreshes of the live token: one IdP call, one answer.
    let live = rt(&second).to_owned();
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (url, token) = (s.proxy.url.clone(), live.clone());
        racing.spawn(async move {
            idp::refresh(&url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &token, None).await
        });
    }
    let mut answers = std::collections::HashSet::new();
    while let Some(done) = racing.join_next().await {
        let (status, body) = done.expect("join");
        assert_eq!(status, 200, "{body}");
        answers.insert((
            idp::str_field(&body, "access_token").to_owned(),
            rt(&body).to_owned(),
        ));
    }
    assert_eq!(answers.len(), 1, "one answer for all");
    assert_eq!(
        s.idp.grant_count("refresh_token").await,
        2,
        "one more IdP call"
    );

    // The first token again, past its successor's use: reuse ends the family, and the kept
    // token is revoked at the IdP.
    let kept = s.idp.last_refresh_token().await;
    let (status, err) = s.refresh(&first).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(s.idp.wait_inactive(&kept, PROMPTLY).await);
}

crate::both_stores!(multi_thread:
    the_upstream_format_gives_the_idps_access_tokens_with_the_proxys_rotation,
    a_redemption_dying_mid_check_leaves_the_family_intact,
    a_grant_revoked_at_the_idp_is_refused_at_the_next_check,
    a_live_session_is_confirmed_and_the_family_goes_on,
    racing_refreshes_at_a_check_make_one_upstream_call,
    an_idp_down_at_a_check_is_served_or_refused_as_configured,
    a_logout_at_the_idp_ends_the_sessions_family_at_once,
    a_logout_spares_offline_access_families,
    replayed_and_forged_logout_tokens_are_refused,
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

/// The kept token survives a rotation of `tokens.upstream_token_keys` by SIGHUP: a check after
/// the new key is first re-seals it with that key, so the old key can then be removed (without
/// the re-seal, the family would end at the next check: its token would open with no key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_tokens_are_sealed_again_with_a_new_upstream_token_key() {
    const KEY_A: &str = "upstream-token-key-A-0123456789abcdef0123";
    const KEY_B: &str = "upstream-token-key-B-0123456789abcdef0123";
    let port = crate::support::free_port();
    let idp = Idp::start_with(IdpOptions {
        issuer: Some(format!("http://127.0.0.1:{port}")),
        ..IdpOptions::default()
    })
    .await;
    let dir = crate::support::temp_dir("kept-keys");
    let config = dir.join("config.toml");
    let write = |keys: &[&str]| {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "[tokens]\nrefresh_token_key = \"{key}\"\nupstream_token_keys = [{keys}]\n\
                 [clients.www]\nsecret = \"{WWW_CLIENT_SECRET}\"\nupstream_check_interval = 1\n\
                 [upstream]\nurl = \"{up}\"\n",
                key = crate::support::TEST_REFRESH_KEY,
                keys = keys.join(", "),
                up = idp.base_url,
            ),
        )
        .expect("config");
    };
    write(&[KEY_A]);
    let mut proxy = crate::support::proxy::ProxyProcess::spawn_full(
        config.clone(),
        &[],
        port,
        std::process::Stdio::null(),
    );
    proxy.wait_ready().await;
    let tokens = idp::code_flow(&proxy.url, &CodeFlow::www("openid offline_access read")).await;
    let refresh = |token: String| {
        let url = proxy.url.clone();
        async move { idp::refresh(&url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &token, None).await }
    };
    let reload = |keys: &[&str]| {
        write(keys);
        proxy.signal("HUP");
    };
    reload(&[KEY_B, KEY_A]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, next) = refresh(rt(&tokens).to_owned()).await;
    assert_eq!(status, 200, "checked, and sealed again with key B: {next}");
    reload(&[KEY_B]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, last) = refresh(rt(&next).to_owned()).await;
    assert_eq!(status, 200, "the kept token opens with key B alone: {last}");
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(15)).await.is_some());
}

/// The session index is kept only with the back-channel logout receiver on: it is what reads
/// it, and it costs about 340 bytes a family in Redis (bench/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn families_are_indexed_by_session_only_for_back_channel_logout() {
    let session_keys = |s: &Stack| {
        let redis = s.redis.as_ref().expect("redis");
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &redis.port.to_string(),
                "--scan",
                "--pattern",
                "*idx:sid:*",
            ])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // The IdP has back-channel logout on (so its ID tokens carry sid), the proxy not.
    let idp = IdpOptions {
        backchannel_logout_uri: Some("http://127.0.0.1:9/elsewhere".into()),
        session_refresh_tokens: true,
        ..IdpOptions::default()
    };
    let off = Stack::on(Kind::Redis, "", "", false, idp).await;
    let (_, tokens) = sign_in(&off, "openid read").await;
    let claims = idp::jwt_claims(idp::str_field(&tokens, "id_token"));
    assert!(
        claims["sid"].is_string(),
        "the ID token names a session: {claims}"
    );
    assert_eq!(session_keys(&off), 0, "no receiver, no index");
    let on = Stack::with(Kind::Redis, "", true).await;
    sign_in(&on, "openid read").await;
    assert_eq!(session_keys(&on), 1, "the family's session is indexed");
}
