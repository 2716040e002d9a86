//! End to end in front of a second real IdP of another implementation family:
//! django-oauth-toolkit (Python, Django; [`crate::support::idp_py`]), so no one IdP's habits hide in
//! the proxy. The proxy is configured with discovery alone: this IdP's OpenID discovery lists
//! no revocation or introspection endpoint, only its RFC 8414 metadata does, and its
//! introspection names the user in `username` (hence `upstream.subject_claim = "username"`).
//!
//! Driven like a browser and a client would: the authorization-code flow with PKCE through the
//! proxy (log in and consent over HTTP), capture, refresh chains, narrowing, reuse, revocation
//! and introspection at the proxy.

use crate::support::StoreKind as Kind;
use crate::support::idp::{self, CodeFlow, REDIRECT_URI, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::idp_py::{
    AUTHORIZE_PATH, INTROSPECTION_PATH, PyIdp, REVOCATION_PATH, RS_CLIENT_ID, RS_CLIENT_SECRET,
    TOKEN_PATH,
};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-0123456789";

struct Stack {
    idp: PyIdp,
    proxy: TestProxy,
    _redis: Option<RedisServer>,
}

impl Stack {
    async fn start(kind: Kind) -> Stack {
        let idp = PyIdp::start().await;
        eprintln!("django-oauth-toolkit started in {:?}", idp.start_time);
        let (redis, store) = kind.start();
        let text = format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"{WWW_CLIENT_SECRET}\"\nreuse_grace_period = 0\n\
             [clients.rs]\nsecret = \"{RS_CLIENT_SECRET}\"\nmay_introspect = true\n\
             [upstream]\nurl = \"{up}\"\nsubject_claim = \"username\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.issuer,
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        Stack {
            idp,
            proxy,
            _redis: redis,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.url)
    }

    /// Log in as alice and consent, through the proxy; the token answer of the code exchange.
    async fn login(&self, scope: &str) -> Value {
        let flow = CodeFlow::www(scope);
        let (verifier, code) =
            idp::authorize_at(&self.proxy.url, AUTHORIZE_PATH, false, &flow).await;
        let (status, body) = self
            .post(
                TOKEN_PATH,
                (WWW_CLIENT_ID, WWW_CLIENT_SECRET),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT_URI),
                    ("code_verifier", &verifier),
                ],
            )
            .await;
        assert_eq!(status, 200, "code exchange: {body}");
        body
    }

    async fn post(
        &self,
        path: &str,
        (id, secret): (&str, &str),
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(self.url(path))
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"))
        };
        (status, body)
    }

    async fn refresh(&self, rt: &str, scope: Option<&str>) -> (u16, Value) {
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.post(TOKEN_PATH, (WWW_CLIENT_ID, WWW_CLIENT_SECRET), &form)
            .await
    }

    async fn introspect(&self, token: &str) -> Value {
        let (status, body) = self
            .post(
                INTROSPECTION_PATH,
                (RS_CLIENT_ID, RS_CLIENT_SECRET),
                &[("token", token)],
            )
            .await;
        assert_eq!(status, 200, "introspection: {body}");
        body
    }

    async fn revoke(&self, token: &str) {
        let (status, body) = self
            .post(
                REVOCATION_PATH,
                (WWW_CLIENT_ID, WWW_CLIENT_SECRET),
                &[("token", token)],
            )
            .await;
        assert_eq!(status, 200, "revocation: {body}");
    }
}

/// A refresh token minted by the proxy: `<22-char family>.<generation>.<4-char key id><64 chars>`.
fn is_proxy_token(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() == 3 && parts[0].len() == 22 && parts[2].len() == 68
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// Capture of the code exchange, a refresh chain, narrowing, and reuse of a rotated-out token
/// (invalid_grant, and the whole family revoked).
async fn code_flow_capture_chain_narrowing_and_reuse(kind: Kind) {
    let s = Stack::start(kind).await;
    let login = s.login("read openid profile").await;
    let first = str_of(&login, "refresh_token").to_owned();
    assert!(is_proxy_token(&first), "not captured: {login}");
    assert!(login["id_token"].is_string(), "{login}");
    let claims = idp::jwt_claims(str_of(&login, "id_token"));
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], s.idp.issuer.as_str());

    // A chain of three refreshes: each rotates, each access token is alice's.
    let mut rt = first.clone();
    let mut seen = vec![first.clone()];
    for _ in 0..3 {
        let (status, body) = s.refresh(&rt, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scope"], "read openid profile", "{body}");
        rt = str_of(&body, "refresh_token").to_owned();
        assert!(is_proxy_token(&rt));
        assert!(!seen.contains(&rt), "not rotated");
        seen.push(rt.clone());
        let info = s.introspect(str_of(&body, "access_token")).await;
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["sub"], "alice", "{info}");
        assert_eq!(info["client_id"], "www", "{info}");
    }

    // Narrowing: kept by a refresh without `scope`; never past the grant, up to it again
    // (RFC 6749 §6: no scope "not originally granted by the resource owner").
    let (status, narrowed) = s.refresh(&rt, Some("read profile")).await;
    assert_eq!(status, 200, "{narrowed}");
    assert_eq!(narrowed["scope"], "read profile");
    rt = str_of(&narrowed, "refresh_token").to_owned();
    let (status, kept) = s.refresh(&rt, None).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["scope"], "read profile");
    rt = str_of(&kept, "refresh_token").to_owned();
    let info = s.introspect(str_of(&kept, "access_token")).await;
    assert_eq!(info["scope"], "read profile", "{info}");
    let (status, wider) = s.refresh(&rt, Some("read profile introspection")).await;
    assert_eq!(status, 400, "{wider}");
    assert_eq!(wider["error"], "invalid_scope");
    let (status, back) = s.refresh(&rt, Some("read openid profile")).await;
    assert_eq!(status, 200, "{back}");
    rt = str_of(&back, "refresh_token").to_owned();

    // Reuse of a rotated-out token: invalid_grant, and the live token dies with its family.
    let (status, reused) = s.refresh(&seen[1], None).await;
    assert_eq!(status, 400, "{reused}");
    assert_eq!(reused["error"], "invalid_grant");
    let (status, after) = s.refresh(&rt, None).await;
    assert_eq!(status, 400, "the family survived reuse: {after}");
    assert_eq!(after["error"], "invalid_grant");
}

/// Revocation and introspection at the upstream's paths, which the proxy learned only from
/// RFC 8414 metadata: the proxy answers for its own tokens and forwards the IdP's.
async fn revocation_and_introspection_at_the_proxy(kind: Kind) {
    let s = Stack::start(kind).await;
    let login = s.login("read openid").await;
    let rt = str_of(&login, "refresh_token").to_owned();
    assert!(is_proxy_token(&rt), "{login}");
    let (status, refreshed) = s.refresh(&rt, None).await;
    assert_eq!(status, 200, "{refreshed}");
    let rt = str_of(&refreshed, "refresh_token").to_owned();
    let at = str_of(&refreshed, "access_token").to_owned();

    // RFC 7009 at the IdP's revocation path: the proxy's family is revoked, not forwarded.
    s.revoke(&rt).await;
    let (status, body) = s.refresh(&rt, None).await;
    assert_eq!(status, 400, "a revoked token refreshed: {body}");
    assert_eq!(body["error"], "invalid_grant");
    // RFC 7662 at the IdP's introspection path: the proxy answers for its tokens.
    assert_eq!(s.introspect(&rt).await, json!({"active": false}));
    assert_eq!(s.introspect(&at).await["active"], false);

    // The revocation ended the session at the IdP too (docs/design.md §4.11): the proxy
    // revoked the refresh token the family kept, and django-oauth-toolkit revokes a refresh
    // token's access token with it, so the code exchange's access token is inactive there.
    let first_at = str_of(&login, "access_token").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.introspect(&first_at).await["active"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "the IdP still has the session the proxy's family ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Another login's access token is the IdP's: introspection and revocation are forwarded
    // to it, and it turns the token inactive.
    let other = s.login("read openid").await;
    let upstream_at = str_of(&other, "access_token").to_owned();
    let info = s.introspect(&upstream_at).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["username"], "alice", "{info}");
    s.revoke(&upstream_at).await;
    assert_eq!(s.introspect(&upstream_at).await["active"], false);

    let res = reqwest::get(format!("{}/readyz", s.proxy.admin_url))
        .await
        .expect("readyz");
    assert_eq!(res.status(), 200);
    let ready: Value = res.json().await.expect("json");
    assert_eq!(ready["missing_endpoints"], json!([]), "{ready}");
}

/// Without `openid` the IdP returns no ID token and an opaque access token: the subject comes
/// from its introspection answer's `username`, the same value as its ID tokens' `sub`, so one
/// revocation by subject reaches both families.
async fn subject_from_introspection_matches_the_id_token(kind: Kind) {
    let s = Stack::start(kind).await;
    let plain = s.login("read").await;
    assert!(plain["id_token"].is_null(), "{plain}");
    let plain_rt = str_of(&plain, "refresh_token").to_owned();
    assert!(is_proxy_token(&plain_rt), "not captured: {plain}");
    let oidc = s.login("read openid").await;
    let oidc_rt = str_of(&oidc, "refresh_token").to_owned();
    assert!(is_proxy_token(&oidc_rt), "{oidc}");

    let (status, refreshed) = s.refresh(&plain_rt, None).await;
    assert_eq!(status, 200, "{refreshed}");
    let info = s.introspect(str_of(&refreshed, "access_token")).await;
    assert_eq!(info["sub"], "alice", "{info}");
    assert_eq!(info["scope"], "read", "{info}");

    let res = reqwest::Client::new()
        .post(format!("{}/admin/revoke", s.proxy.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"subject": "alice"}))
        .send()
        .await
        .expect("admin revoke");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["revoked"], 2, "{body}");
    let (status, _) = s.refresh(&oidc_rt, None).await;
    assert_eq!(status, 400);
}

both_stores!(
    code_flow_capture_chain_narrowing_and_reuse,
    revocation_and_introspection_at_the_proxy,
    subject_from_introspection_matches_the_id_token,
);

/// Spellings of django-oauth-toolkit's token path (`/o/token/`) that some server routes to it.
const TOKEN_VARIANTS: &[&str] = &[
    "//o/token/",
    "/o/%74oken/",
    "/o%2Ftoken/",
    "/o/token",
    "/O/TOKEN/",
    "/o//token/",
    "/o/./token/",
    "/o/x/../token/",
    "/o/token;x/",
    "/o/token//",
];

/// What this IdP itself routes to its token endpoint (README, "Request paths"): Python's WSGI
/// server decodes percent-escapes, `%2F` included, and drops a leading `//`; Django matches
/// case and the trailing slash exactly. Pins the table.
#[tokio::test]
async fn the_python_idp_decodes_escapes_and_a_leading_double_slash() {
    let idp = PyIdp::start().await;
    let auth = idp::basic_auth_header(RS_CLIENT_ID, RS_CLIENT_SECRET);
    let mut routed = Vec::new();
    for path in TOKEN_VARIANTS {
        let (status, body) = crate::support::raw::raw_post(
            crate::support::raw::host(&idp.base_url),
            path,
            &[("Authorization", &auth)],
            "grant_type=client_credentials",
        )
        .await;
        match status {
            200 => routed.push(*path),
            404 => {}
            other => panic!("{path}: unexpected HTTP {other}: {body}"),
        }
    }
    assert_eq!(routed, ["//o/token/", "/o/%74oken/", "/o%2Ftoken/"]);
}

/// The proxy in front of it refuses every variant before the IdP sees it: no token is issued
/// by any of them, and the exact path still works.
#[tokio::test]
async fn no_variant_of_the_python_idps_token_path_gets_past_the_proxy() {
    let s = Stack::start(Kind::Memory).await;
    let auth = idp::basic_auth_header(RS_CLIENT_ID, RS_CLIENT_SECRET);
    let addr = crate::support::raw::host(&s.proxy.url);
    for path in TOKEN_VARIANTS {
        let (status, body) = crate::support::raw::raw_post(
            addr,
            path,
            &[("Authorization", &auth)],
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }
    let (status, body) = s
        .post(
            TOKEN_PATH,
            (RS_CLIENT_ID, RS_CLIENT_SECRET),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
