//! The admin API on the admin port, and its CLI front ends (`refresh-proxy issue`,
//! `refresh-proxy admin revoke`).
//!
//! Two endpoints, two tokens: `admin.token` revokes, `admin.issue_token` (a separate opt-in)
//! issues, and only for clients marked `allow_admin_issue = true`.
//!
//! In-process: the proxy in front of an echo upstream (`discovery = false`, token path
//! `/token`), so every refresh grant below is answered by the proxy itself; the cases that
//! touch the store run on `memory://` and on a private redis-server. Then the real binary:
//! the CLI against a running proxy process, and its failure exits.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::echo::EchoServer;
use crate::support::idp;
use crate::support::proxy::{ProxyProcess, TestProxy, admin_client, binary, wait_for_status_with};
use crate::support::redis::RedisServer;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
const SECRET: &str = "Secr3t!";

use crate::support::StoreKind as Kind;

/// Which admin tokens a proxy is configured with.
#[derive(Clone, Copy)]
struct Tokens {
    revoke: Option<&'static str>,
    issue: Option<&'static str>,
}

const BOTH: Tokens = Tokens {
    revoke: Some(ADMIN_TOKEN),
    issue: Some(ISSUE_TOKEN),
};
const NONE: Tokens = Tokens {
    revoke: None,
    issue: None,
};
/// The configuration before the issue token existed: one token for everything.
const REVOKE_ONLY: Tokens = Tokens {
    revoke: Some(ADMIN_TOKEN),
    issue: None,
};

/// The proxy's config: clients `www` and `app` (refresh tokens), `nort` (none), all three
/// marked `allow_admin_issue`, and `plain` (refresh tokens, not marked); the admin tokens; the
/// echo upstream.
fn config_text(store: &str, tokens: Tokens, upstream: &str) -> String {
    let mut admin = String::new();
    if tokens.revoke.is_some() || tokens.issue.is_some() {
        admin.push_str("[admin]\n");
    }
    if let Some(t) = tokens.revoke {
        admin.push_str(&format!("token = \"{t}\"\n"));
    }
    if let Some(t) = tokens.issue {
        admin.push_str(&format!("issue_token = \"{t}\"\n"));
    }
    format!(
        "[store]\nurl = \"{store}\"\n\
         [tokens]\nrefresh_token_key = \"{key}\"\n\
         {admin}\
         [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
         [clients.app]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
         [clients.nort]\nsecret = \"{SECRET}\"\nrefresh_token_ttl = 0\nallow_admin_issue = true\n\
         [clients.plain]\nsecret = \"{SECRET}\"\n\
         [upstream]\nurl = \"{upstream}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation = \"absent\"\n",
        key = crate::support::TEST_REFRESH_KEY,
    )
}

struct Stack {
    proxy: TestProxy,
    redis: Option<RedisServer>,
    _echo: EchoServer,
    http: reqwest::Client,
}

/// An admin API answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Stack {
    async fn start(kind: Kind, tokens: Tokens) -> Stack {
        let echo = EchoServer::start().await;
        let (redis, store) = kind.start();
        let proxy = TestProxy::start(&config_text(&store, tokens, &echo.url())).await;
        proxy.wait_ready().await;
        Stack {
            proxy,
            redis,
            _echo: echo,
            http: reqwest::Client::new(),
        }
    }

    async fn with_admin(kind: Kind) -> Stack {
        Stack::start(kind, BOTH).await
    }

    /// A request to the admin port with `Authorization: <authorization>` when given.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.proxy.admin_url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let res = req.send().await.expect("admin request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered non-JSON ({e}): {text}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A POST with the token of its endpoint: the issue token for `/admin/issue`, else the
    /// revoke token.
    async fn post(&self, path: &str, body: &str) -> Answer {
        let token = if path == "/admin/issue" {
            ISSUE_TOKEN
        } else {
            ADMIN_TOKEN
        };
        self.admin(
            reqwest::Method::POST,
            path,
            Some(&format!("Bearer {token}")),
            body,
        )
        .await
    }

    async fn issue(&self, client_id: &str, subject: &str, scope: &str, count: u64) -> Vec<String> {
        let body = serde_json::json!({
            "client_id": client_id, "subject": subject, "scope": scope, "count": count,
        });
        let a = self.post("/admin/issue", &body.to_string()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let tokens: Vec<String> = a.body["refresh_tokens"]
            .as_array()
            .expect("refresh_tokens")
            .iter()
            .map(|t| t.as_str().expect("a string").to_owned())
            .collect();
        assert_eq!(tokens.len() as u64, count);
        tokens
    }

    async fn revoke(&self, body: Value) -> u64 {
        let a = self.post("/admin/revoke", &body.to_string()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["revoked"].as_u64().expect("revoked")
    }

    /// A refresh grant at the proxy's token endpoint, as `client_id`.
    async fn refresh(&self, client_id: &str, rt: &str) -> (u16, Value) {
        idp::refresh(&self.proxy.url, client_id, SECRET, rt, None).await
    }

    async fn refresh_ok(&self, client_id: &str, rt: &str) -> Value {
        let (status, body) = self.refresh(client_id, rt).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn assert_invalid_grant(&self, client_id: &str, rt: &str) {
        let (status, body) = self.refresh(client_id, rt).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant"))
        );
    }
}

fn family_of(token: &str) -> &str {
    token.split('.').next().expect("a family id")
}

// ---------------------------------------------------------------------------------------
// Authentication and the switch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_api_needs_the_bearer_token() {
    let s = Stack::with_admin(Kind::Memory).await;
    let body = r#"{"subject":"nobody"}"#;
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for authorization in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some("Bearer"),
        Some("Bearer "),
    ] {
        for path in ["/admin/revoke", "/admin/issue", "/admin/nope", "/admin"] {
            let a = s
                .admin(reqwest::Method::POST, path, authorization, body)
                .await;
            assert_eq!(a.status, 401, "{path} with {authorization:?}");
            assert_eq!(a.body, serde_json::json!({"error": "unauthorized"}));
            assert_eq!(
                a.headers["www-authenticate"],
                "Bearer realm=\"refresh-proxy-admin\""
            );
        }
    }
    // The right token, with the scheme in any case.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let a = s
            .admin(
                reqwest::Method::POST,
                "/admin/revoke",
                Some(&format!("{scheme} {ADMIN_TOKEN}")),
                body,
            )
            .await;
        assert_eq!(
            (a.status, &a.body),
            (200, &serde_json::json!({"revoked": 0}))
        );
    }
    // Either token learns that other paths do not exist; nothing else does (above).
    for token in [ADMIN_TOKEN, ISSUE_TOKEN] {
        let a = s
            .admin(
                reqwest::Method::POST,
                "/admin/nope",
                Some(&format!("Bearer {token}")),
                body,
            )
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (404, Some("not_found"))
        );
    }
    // The probes and the JWKS stay open.
    for path in ["/healthz", "/readyz", "/jwks"] {
        let a = s.admin(reqwest::Method::GET, path, None, "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
}

/// Security issue, item 5: one admin token covered revoke and issue, so whoever could revoke
/// could mint a family for any client, subject and scope (`sub: root`, `admin superuser`).
/// With only `admin.token` set (the configuration of before), `/admin/issue` is off; the old
/// code answered 200 with refresh tokens here.
async fn the_revoke_token_cannot_issue(kind: Kind) {
    let s = Stack::start(kind, REVOKE_ONLY).await;
    let golden = r#"{"client_id":"www","subject":"root","scope":"admin superuser","count":1}"#;
    let a = s
        .admin(
            reqwest::Method::POST,
            "/admin/issue",
            Some(&format!("Bearer {ADMIN_TOKEN}")),
            golden,
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(
        a.body,
        serde_json::json!({
            "error": "admin_api_disabled",
            "error_description": "set admin.issue_token to enable /admin/issue",
        })
    );
    assert!(a.body.get("refresh_tokens").is_none());
    // Nothing was opened for root; revoking still works with the revoke token.
    assert_eq!(s.revoke(serde_json::json!({"subject": "root"})).await, 0);
    assert_eq!(s.revoke(serde_json::json!({"client_id": "www"})).await, 0);
}

/// With both tokens set, each opens its own endpoint only.
async fn each_token_opens_its_own_endpoint_only(kind: Kind) {
    let s = Stack::with_admin(kind).await;
    let issue_body = r#"{"client_id":"www","subject":"root","scope":"admin superuser","count":1}"#;
    let a = s
        .admin(
            reqwest::Method::POST,
            "/admin/issue",
            Some(&format!("Bearer {ADMIN_TOKEN}")),
            issue_body,
        )
        .await;
    assert_eq!(
        (a.status, &a.body),
        (401, &serde_json::json!({"error": "unauthorized"})),
        "the revoke token at /admin/issue"
    );
    let token = s.issue("www", "alice", "read", 1).await.remove(0);
    let a = s
        .admin(
            reqwest::Method::POST,
            "/admin/revoke",
            Some(&format!("Bearer {ISSUE_TOKEN}")),
            r#"{"subject":"alice"}"#,
        )
        .await;
    assert_eq!(
        (a.status, &a.body),
        (401, &serde_json::json!({"error": "unauthorized"})),
        "the issue token at /admin/revoke"
    );
    // The issue token revoked nothing: the family is live until the revoke token ends it.
    let next = s.refresh_ok("www", &token).await;
    assert_eq!(s.revoke(serde_json::json!({"subject": "alice"})).await, 1);
    s.assert_invalid_grant("www", next["refresh_token"].as_str().expect("rt"))
        .await;
}

/// `/admin/issue` opens families only for clients marked `allow_admin_issue = true`.
async fn only_clients_marked_allow_admin_issue_get_families(kind: Kind) {
    let s = Stack::with_admin(kind).await;
    let a = s
        .post(
            "/admin/issue",
            r#"{"client_id":"plain","subject":"root","scope":"admin superuser","count":3}"#,
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        a.body,
        serde_json::json!({
            "error": "unauthorized_client",
            "error_description": "the client is not marked allow_admin_issue = true",
        })
    );
    assert_eq!(s.revoke(serde_json::json!({"client_id": "plain"})).await, 0);
    assert_eq!(s.revoke(serde_json::json!({"subject": "root"})).await, 0);
    // A marked client gets them.
    s.refresh_ok("www", &s.issue("www", "load-1", "read", 1).await[0])
        .await;
}

#[tokio::test]
async fn an_issue_token_alone_turns_on_issue_only() {
    let s = Stack::start(
        Kind::Memory,
        Tokens {
            revoke: None,
            issue: Some(ISSUE_TOKEN),
        },
    )
    .await;
    let token = s.issue("www", "alice", "read", 1).await.remove(0);
    for bearer in [ISSUE_TOKEN, ADMIN_TOKEN] {
        let a = s
            .admin(
                reqwest::Method::POST,
                "/admin/revoke",
                Some(&format!("Bearer {bearer}")),
                r#"{"subject":"alice"}"#,
            )
            .await;
        assert_eq!(a.status, 404);
        assert_eq!(
            a.body,
            serde_json::json!({
                "error": "admin_api_disabled",
                "error_description": "set admin.token to enable /admin/revoke",
            })
        );
    }
    s.refresh_ok("www", &token).await;
}

#[tokio::test]
async fn without_admin_tokens_the_admin_api_is_off() {
    let s = Stack::start(Kind::Memory, NONE).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for (path, authorization, description) in [
        (
            "/admin/issue",
            None,
            "set admin.issue_token to enable /admin/issue",
        ),
        (
            "/admin/revoke",
            Some(bearer.as_str()),
            "set admin.token to enable /admin/revoke",
        ),
        (
            "/admin",
            Some(bearer.as_str()),
            "set admin.token (revoke) or admin.issue_token (issue) to enable the admin API",
        ),
        (
            "/admin/anything",
            None,
            "set admin.token (revoke) or admin.issue_token (issue) to enable the admin API",
        ),
    ] {
        let a = s
            .admin(
                reqwest::Method::POST,
                path,
                authorization,
                r#"{"subject":"x"}"#,
            )
            .await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(
            a.body,
            serde_json::json!({
                "error": "admin_api_disabled",
                "error_description": description,
            })
        );
    }
    let a = s.admin(reqwest::Method::GET, "/healthz", None, "").await;
    assert_eq!(a.status, 200);
}

#[test]
fn short_or_shared_admin_tokens_are_config_errors() {
    let parse = |tokens| {
        refresh_proxy::config::Config::from_toml_str(
            &config_text("memory://", tokens, "http://127.0.0.1:9"),
            Path::new("."),
            std::iter::empty(),
        )
    };
    for (tokens, message) in [
        (
            Tokens {
                revoke: Some("short-token-15c"),
                issue: None,
            },
            "admin.token: must be at least 16 characters",
        ),
        (
            Tokens {
                revoke: None,
                issue: Some("short-token-15c"),
            },
            "admin.issue_token: must be at least 16 characters",
        ),
        (
            Tokens {
                revoke: Some(ADMIN_TOKEN),
                issue: Some(ADMIN_TOKEN),
            },
            "admin.issue_token: must differ from admin.token",
        ),
    ] {
        let err = parse(tokens).expect_err(message);
        assert!(err.to_string().starts_with(message), "{err}");
    }
    // 16 is enough, and App::build takes it.
    let config = parse(Tokens {
        revoke: Some("sixteen-chars-ok"),
        issue: Some("sixteen-chars-OK"),
    })
    .expect("valid");
    assert!(refresh_proxy::app::App::build(config).is_ok());
}

#[tokio::test]
async fn bad_admin_requests_are_400_and_say_why() {
    let s = Stack::with_admin(Kind::Memory).await;
    let token = s.issue("www", "alice", "", 1).await.remove(0);
    let family = family_of(&token).to_owned();
    for (path, body) in [
        ("/admin/revoke", "not json".to_owned()),
        ("/admin/revoke", "{}".to_owned()),
        ("/admin/revoke", r#"{"subject":null}"#.to_owned()),
        ("/admin/revoke", r#"{"subject":""}"#.to_owned()),
        (
            "/admin/revoke",
            r#"{"subject":"alice","client_id":"www"}"#.to_owned(),
        ),
        (
            "/admin/revoke",
            format!(r#"{{"family":"{family}","subject":"alice"}}"#),
        ),
        (
            "/admin/revoke",
            r#"{"family":"not-a-family-id"}"#.to_owned(),
        ),
        ("/admin/revoke", r#"{"user":"alice"}"#.to_owned()),
        ("/admin/revoke", r#"{"subject":42}"#.to_owned()),
        ("/admin/revoke", "".to_owned()),
        ("/admin/issue", "[]".to_owned()),
        (
            "/admin/issue",
            r#"{"client_id":"www","subject":"a","scope":"","count":0}"#.to_owned(),
        ),
        (
            "/admin/issue",
            r#"{"client_id":"www","subject":"a","scope":"","count":1000001}"#.to_owned(),
        ),
        (
            "/admin/issue",
            r#"{"client_id":"www","subject":"a","scope":"","count":-3}"#.to_owned(),
        ),
        (
            "/admin/issue",
            r#"{"client_id":"www","subject":"a","scope":"","count":"5"}"#.to_owned(),
        ),
        (
            "/admin/issue",
            r#"{"client_id":"www","scope":"","count":5}"#.to_owned(),
        ),
        (
            "/admin/issue",
            r#"{"client_id":"nobody","subject":"a","scope":"","count":5}"#.to_owned(),
        ),
    ] {
        let a = s.post(path, &body).await;
        assert_eq!(a.status, 400, "{path} {body}: {}", a.body);
        assert_eq!(a.body["error"], "invalid_request", "{path} {body}");
        assert!(
            a.body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{path} {body}: {}",
            a.body
        );
    }
    // A client with refresh_token_ttl = 0 gets no refresh tokens from the admin API either,
    // allow_admin_issue or not.
    let a = s
        .post(
            "/admin/issue",
            r#"{"client_id":"nort","subject":"a","scope":"","count":1}"#,
        )
        .await;
    assert_eq!(
        (a.status, &a.body),
        (
            400,
            &serde_json::json!({
                "error": "unauthorized_client",
                "error_description": "the client is not allowed to use refresh tokens",
            })
        )
    );
    // Bodies are read up to 64 KiB.
    let big = format!(r#"{{"subject":"{}"}}"#, "x".repeat(70 * 1024));
    let a = s.post("/admin/revoke", &big).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (413, Some("invalid_request"))
    );
    // Only POST, only the two endpoints.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let a = s
        .admin(reqwest::Method::GET, "/admin/revoke", Some(&bearer), "")
        .await;
    assert_eq!(a.status, 405);
    assert_eq!(a.headers["allow"], "POST");
    let a = s.post("/admin/unknown", "{}").await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("not_found"))
    );
    // Nothing above changed the family those requests named (by id and by its subject): its
    // first token still refreshes.
    s.refresh_ok("www", &token).await;
}

// ---------------------------------------------------------------------------------------
// Issue and revoke, on both stores
// ---------------------------------------------------------------------------------------

async fn issued_tokens_are_refreshed_at_the_proxy(kind: Kind) {
    let s = Stack::with_admin(kind).await;
    let tokens = s.issue("www", "alice", "read write", 200).await;
    let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
    assert_eq!(distinct.len(), 200);
    let families: std::collections::HashSet<&str> = tokens.iter().map(|t| family_of(t)).collect();
    assert_eq!(families.len(), 200, "one family per token");
    for t in [&tokens[0], &tokens[99], &tokens[199]] {
        let answer = s.refresh_ok("www", t).await;
        assert_eq!(answer["scope"], "read write");
        assert_eq!(answer["token_type"], "bearer");
        let next = answer["refresh_token"].as_str().expect("rotated");
        assert_ne!(next, t.as_str());
        assert_eq!(family_of(next), family_of(t));
        // The rotated token goes on.
        s.refresh_ok("www", next).await;
    }
    // An empty scope is allowed; the tokens belong to their client only.
    let bare = s.issue("app", "bob", "", 1).await;
    let answer = s.refresh_ok("app", &bare[0]).await;
    assert_eq!(answer["scope"], "");
    let other = s.issue("app", "bob", "read", 1).await;
    s.assert_invalid_grant("www", &other[0]).await;
}

async fn revocation_by_family_subject_and_client(kind: Kind) {
    let s = Stack::with_admin(kind).await;
    let alice_www = s.issue("www", "alice", "read", 3).await;
    let alice_app = s.issue("app", "alice", "read", 2).await;
    let bob_www = s.issue("www", "bob", "read", 3).await;
    let carol_app = s.issue("app", "carol", "read", 4).await;

    // One family: revoked once, then there is nothing left to revoke.
    let family = family_of(&alice_www[0]).to_owned();
    assert_eq!(s.revoke(serde_json::json!({"family": family})).await, 1);
    assert_eq!(s.revoke(serde_json::json!({"family": family})).await, 0);
    s.assert_invalid_grant("www", &alice_www[0]).await;
    // Its siblings are untouched; a rotated family is still the subject's.
    let rotated = s.refresh_ok("www", &alice_www[1]).await;

    // A subject, across clients: the live ones (2 of www, 2 of app).
    assert_eq!(s.revoke(serde_json::json!({"subject": "alice"})).await, 4);
    assert_eq!(s.revoke(serde_json::json!({"subject": "alice"})).await, 0);
    s.assert_invalid_grant("www", rotated["refresh_token"].as_str().expect("rt"))
        .await;
    s.assert_invalid_grant("www", &alice_www[2]).await;
    for t in &alice_app {
        s.assert_invalid_grant("app", t).await;
    }
    s.refresh_ok("www", &bob_www[0]).await;
    s.refresh_ok("app", &carol_app[0]).await;

    // A client: carol's 4 (alice's app families are gone already).
    assert_eq!(s.revoke(serde_json::json!({"client_id": "app"})).await, 4);
    for t in &carol_app[1..] {
        s.assert_invalid_grant("app", t).await;
    }
    // The other client's families still work.
    for t in &bob_www[1..] {
        s.refresh_ok("www", t).await;
    }
    assert_eq!(
        s.revoke(serde_json::json!({"subject": "nobody-at-all"}))
            .await,
        0
    );
    assert_eq!(s.revoke(serde_json::json!({"client_id": "nort"})).await, 0);
}

both_stores!(
    the_revoke_token_cannot_issue,
    each_token_opens_its_own_endpoint_only,
    only_clients_marked_allow_admin_issue_get_families,
    issued_tokens_are_refreshed_at_the_proxy,
    revocation_by_family_subject_and_client,
    the_cli_issues_tokens_the_proxy_accepts_and_revokes_them,
);

#[tokio::test]
async fn a_store_outage_is_503_with_retry_after() {
    let mut s = Stack::with_admin(Kind::Redis).await;
    let token = s.issue("www", "alice", "read", 1).await.remove(0);
    s.redis.as_mut().expect("redis").kill();
    let family = family_of(&token).to_owned();
    for (path, body) in [
        (
            "/admin/issue",
            r#"{"client_id":"www","subject":"a","scope":"","count":5}"#.to_owned(),
        ),
        ("/admin/revoke", format!(r#"{{"family":"{family}"}}"#)),
        ("/admin/revoke", r#"{"subject":"alice"}"#.to_owned()),
        ("/admin/revoke", r#"{"client_id":"www"}"#.to_owned()),
    ] {
        let a = s.post(path, &body).await;
        assert_eq!(a.status, 503, "{path} {body}: {}", a.body);
        assert_eq!(a.body["error"], "temporarily_unavailable");
        assert_eq!(a.headers["retry-after"], "1");
    }
    // Back again: nothing was revoked while it was down.
    s.redis.as_mut().expect("redis").restart();
    s.proxy.wait_ready().await;
    s.refresh_ok("www", &token).await;
}

// ---------------------------------------------------------------------------------------
// The binary: `refresh-proxy issue` and `refresh-proxy admin revoke`
// ---------------------------------------------------------------------------------------

/// Runs the CLI; `admin_listen` goes in as the same env override the proxy process got.
async fn cli(config: &Path, admin_listen: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env("REFRESH_PROXY_SERVER__ADMIN_LISTEN", admin_listen)
        .envs(env.iter().copied());
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("the CLI finishes")
        .expect("run the CLI")
}

fn admin_addr(process: &ProxyProcess) -> String {
    process
        .admin_url
        .strip_prefix("http://")
        .expect("http URL")
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn the_cli_issues_tokens_the_proxy_accepts_and_revokes_them(kind: Kind) {
    let echo = EchoServer::start().await;
    let (redis, store) = kind.start();
    let proxy = ProxyProcess::spawn(&config_text(&store, BOTH, &echo.url()));
    proxy.wait_ready().await;
    let admin = admin_addr(&proxy);
    let out_file = crate::support::temp_dir("issue").join("tokens.txt");
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "www",
            "--subject",
            "load-test",
            "--scope",
            "read write",
            "--count",
            "2500",
            "--out",
            out_file.to_str().expect("utf-8 path"),
        ],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("issued 2500 refresh tokens for client www in ")
            && stderr.ends_with("s\n"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&out_file).expect("the output file");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 2500);
    assert_eq!(
        lines.iter().collect::<std::collections::HashSet<_>>().len(),
        2500
    );
    for t in [lines[0], lines[1], lines[1234], lines[2499]] {
        let (status, body) = idp::refresh(&proxy.url, "www", SECRET, t, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["scope"], "read write");
    }

    // On a terminal (a pseudo-terminal made by `script`), a progress line is redrawn as the
    // chunks arrive, and cleared before the summary; above, with stderr a pipe, none.
    let pty_out = crate::support::temp_dir("issue-pty").join("tokens.txt");
    let command = format!(
        "{bin} issue --client www --subject pty --count 25000 --out {out} --config {config}",
        bin = binary(),
        out = pty_out.display(),
        config = proxy.config_path.display(),
    );
    let transcript = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("REFRESH_PROXY_SERVER__ADMIN_LISTEN", &admin)
        .output()
        .await
        .expect("run script (util-linux)");
    let shown = text(&transcript.stdout);
    assert!(transcript.status.success(), "{shown}");
    // Three chunks (10,000 at most each), in the order their answers arrive.
    assert_eq!(
        shown.matches(" of 25000 refresh tokens (").count(),
        3,
        "progress on a terminal: {shown:?}"
    );
    assert!(
        shown.contains("issued 25000 of 25000 refresh tokens (100%"),
        "{shown:?}"
    );
    assert!(
        shown.contains("\x1b[2Kissued 25000 refresh tokens for client www in "),
        "the progress line is cleared before the summary: {shown:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&pty_out)
            .expect("tokens")
            .lines()
            .count(),
        25000
    );

    // `--out -` is stdout.
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "app",
            "--subject",
            "other",
            "--count",
            "3",
            "--out",
            "-",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 3);

    let out = cli(
        &proxy.config_path,
        &admin,
        &["admin", "revoke", "--subject", "load-test"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"revoked\":2500}\n");
    let (status, body) = idp::refresh(&proxy.url, "www", SECRET, lines[7], None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let out = cli(
        &proxy.config_path,
        &admin,
        &["admin", "revoke", "--client", "app"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"revoked\":3}\n");
    drop(redis);
}

#[tokio::test]
async fn the_cli_fails_with_exit_1_and_says_why() {
    let echo = EchoServer::start().await;
    let config = config_text("memory://", BOTH, &echo.url());

    // Nothing listens on the admin address.
    let dir = crate::support::temp_dir("cli");
    let path = dir.join("config.toml");
    std::fs::write(&path, &config).expect("write config");
    let nowhere = format!("127.0.0.1:{}", crate::support::free_port());
    let out_file = dir.join("tokens.txt");
    let out_arg = out_file.to_str().expect("utf-8 path");
    let issue = [
        "issue",
        "--client",
        "www",
        "--subject",
        "s",
        "--count",
        "5",
        "--out",
        out_arg,
    ];
    let out = cli(&path, &nowhere, &issue, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("is the proxy running at {nowhere}?")),
        "{stderr}"
    );
    let out = cli(&path, &nowhere, &["admin", "revoke", "--subject", "s"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("is the proxy running at {nowhere}?")),
        "{}",
        text(&out.stderr)
    );

    let proxy = ProxyProcess::spawn(&config);
    proxy.wait_ready().await;
    let admin = admin_addr(&proxy);

    // The wrong token, each command with its own.
    for (args, var, key) in [
        (
            &issue[..],
            "REFRESH_PROXY_ADMIN__ISSUE_TOKEN",
            "admin.issue_token",
        ),
        (
            &["admin", "revoke", "--subject", "s"][..],
            "REFRESH_PROXY_ADMIN__TOKEN",
            "admin.token",
        ),
    ] {
        let wrong = [(var, "not-the-proxys-admin-token")];
        let out = cli(&proxy.config_path, &admin, args, &wrong).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{key} does not match the running proxy's")),
            "{stderr}"
        );
        assert!(!stderr.contains("not-the-proxys-admin-token"), "{stderr}");
    }
    // The revoke token as the CLI's issue token: its own config is refused before any request.
    let out = cli(
        &proxy.config_path,
        &admin,
        &issue,
        &[
            ("REFRESH_PROXY_ADMIN__ISSUE_TOKEN", ADMIN_TOKEN),
            ("REFRESH_PROXY_ADMIN__TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin.issue_token: must differ from admin.token"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains(ADMIN_TOKEN));

    // What the proxy refuses is passed on: an unknown client, no refresh tokens for a client.
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "nobody",
            "--subject",
            "s",
            "--count",
            "5",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("400 Bad Request invalid_request: unknown client_id"),
        "{stderr}"
    );
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "nort",
            "--subject",
            "s",
            "--count",
            "5",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unauthorized_client"));
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "plain",
            "--subject",
            "s",
            "--count",
            "5",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "400 Bad Request unauthorized_client: the client is not marked allow_admin_issue = true"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &proxy.config_path,
        &admin,
        &["admin", "revoke", "--family", "nope"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("family must be a family id"));

    // An output file that cannot be written: nothing is issued.
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "www",
            "--subject",
            "s",
            "--count",
            "5",
            "--out",
            dir.join("no/such/dir/tokens.txt").to_str().expect("utf-8"),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot write"),
        "{}",
        text(&out.stderr)
    );

    // No token for the command in the CLI's config.
    let revoke_only_path = dir.join("revoke-only.toml");
    std::fs::write(
        &revoke_only_path,
        config_text("memory://", REVOKE_ONLY, &echo.url()),
    )
    .expect("write config");
    let out = cli(&revoke_only_path, &admin, &issue, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin.issue_token is not set"),
        "{}",
        text(&out.stderr)
    );
    let issue_only_path = dir.join("issue-only.toml");
    let issue_only = Tokens {
        revoke: None,
        issue: Some(ISSUE_TOKEN),
    };
    std::fs::write(
        &issue_only_path,
        config_text("memory://", issue_only, &echo.url()),
    )
    .expect("write config");
    let out = cli(
        &issue_only_path,
        &admin,
        &["admin", "revoke", "--subject", "s"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("admin.token is not set"),
        "{}",
        text(&out.stderr)
    );

    // A proxy running without admin.issue_token (its /admin/issue is off), and one without
    // any admin token.
    for tokens in [REVOKE_ONLY, NONE] {
        let off = ProxyProcess::spawn(&config_text("memory://", tokens, &echo.url()));
        off.wait_ready().await;
        let out = cli(&path, &admin_addr(&off), &issue, &[]).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains(
                "has /admin/issue disabled (404 admin_api_disabled): set admin.issue_token"
            ),
            "{}",
            text(&out.stderr)
        );
    }

    // A usage error is clap's (exit 2), never a panic.
    let out = cli(&path, &admin, &["admin", "revoke"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = cli(
        &path,
        &admin,
        &["admin", "revoke", "--subject", "a", "--client", "b"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = cli(
        &path,
        &admin,
        &["issue", "--client", "www", "--subject", "s", "--count", "0"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// TLS on the admin listener
// ---------------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, written to `dir`.
fn admin_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("cert");
    let (cert_path, key_path) = (dir.join("admin-cert.pem"), dir.join("admin-key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

/// `config_text` with the admin port on TLS.
fn tls_config_text(cert: &Path, key: &Path, store: &str, tokens: Tokens, upstream: &str) -> String {
    format!(
        "[server]\nadmin_tls_cert_file = \"{}\"\nadmin_tls_key_file = \"{}\"\n{}",
        cert.display(),
        key.display(),
        config_text(store, tokens, upstream)
    )
}

#[tokio::test]
async fn with_admin_tls_the_admin_port_speaks_https_only() {
    let echo = EchoServer::start().await;
    let dir = crate::support::temp_dir("admin-tls");
    let (cert, key) = admin_cert(&dir);
    let proxy = TestProxy::start(&tls_config_text(
        &cert,
        &key,
        "memory://",
        BOTH,
        &echo.url(),
    ))
    .await;
    assert!(
        proxy.admin_url.starts_with("https://127.0.0.1:"),
        "{}",
        proxy.admin_url
    );
    // Over HTTPS, verified against the admin certificate: the probes, the JWKS, the metrics.
    proxy.wait_ready().await;
    let https = &proxy.admin_http;
    for path in ["/healthz", "/readyz", "/jwks", "/metrics"] {
        let res = https
            .get(format!("{}{path}", proxy.admin_url))
            .send()
            .await
            .expect("https");
        assert_eq!(res.status(), 200, "{path}");
    }
    // The admin API, each endpoint with its token.
    let res = https
        .post(format!("{}/admin/issue", proxy.admin_url))
        .bearer_auth(ISSUE_TOKEN)
        .json(
            &serde_json::json!({"client_id": "www", "subject": "tls", "scope": "read", "count": 2}),
        )
        .send()
        .await
        .expect("issue");
    assert_eq!(res.status(), 200);
    let issued: Value = res.json().await.expect("json");
    let token = issued["refresh_tokens"][0].as_str().expect("a token");
    let (status, body) = idp::refresh(&proxy.url, "www", SECRET, token, None).await;
    assert_eq!(status, 200, "{body}");
    let res = https
        .post(format!("{}/admin/revoke", proxy.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"subject": "tls"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(
        res.json::<Value>().await.expect("json"),
        serde_json::json!({"revoked": 2})
    );
    // Plain HTTP to the admin port gets no answer at all, with or without a token: the TLS
    // handshake fails and the connection is closed.
    let plain = proxy.admin_url.replacen("https://", "http://", 1);
    for path in ["/healthz", "/admin/revoke"] {
        let res = reqwest::Client::new()
            .post(format!("{plain}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .body(r#"{"subject":"tls"}"#)
            .send()
            .await;
        assert!(res.is_err(), "{path} answered over plain HTTP: {res:?}");
    }
    // The proxy port is not affected: still plain HTTP here.
    let res = reqwest::get(format!("{}/anything", proxy.url))
        .await
        .expect("proxy port");
    assert_eq!(res.status(), 200);
}

#[test]
fn admin_tls_files_are_checked_at_start() {
    let dir = crate::support::temp_dir("admin-tls-bad");
    let (cert, key) = admin_cert(&dir);
    let not_pem = dir.join("not-pem.txt");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    for (cert, key, named) in [
        (&not_pem, &key, "server.admin_tls_cert_file: "),
        (&cert, &not_pem, "server.admin_tls_key_file: "),
        (
            &dir.join("missing.pem"),
            &key,
            "server.admin_tls_cert_file: ",
        ),
    ] {
        let text = tls_config_text(cert, key, "memory://", BOTH, "http://127.0.0.1:9");
        let config =
            refresh_proxy::config::Config::from_toml_str(&text, Path::new("."), std::iter::empty())
                .expect("the config parses");
        let err = refresh_proxy::app::App::build(config)
            .err()
            .expect("App::build refuses it");
        assert!(err.to_string().starts_with(named), "{err}");
    }
}

#[tokio::test]
async fn the_cli_speaks_https_to_an_admin_port_with_tls() {
    let echo = EchoServer::start().await;
    let dir = crate::support::temp_dir("admin-tls-cli");
    let (cert, key) = admin_cert(&dir);
    let proxy = ProxyProcess::spawn(&tls_config_text(
        &cert,
        &key,
        "memory://",
        BOTH,
        &echo.url(),
    ));
    let https_admin = proxy.admin_url.replacen("http://", "https://", 1);
    wait_for_status_with(
        &admin_client(Some(&cert)),
        &format!("{https_admin}/readyz"),
        200,
        std::time::Duration::from_secs(15),
    )
    .await;
    let admin = admin_addr(&proxy);
    let out = cli(
        &proxy.config_path,
        &admin,
        &[
            "issue",
            "--client",
            "www",
            "--subject",
            "tls-cli",
            "--count",
            "3",
            "--out",
            "-",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tokens = text(&out.stdout);
    assert_eq!(tokens.lines().count(), 3);
    let (status, body) = idp::refresh(
        &proxy.url,
        "www",
        SECRET,
        tokens.lines().next().expect("a token"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = cli(
        &proxy.config_path,
        &admin,
        &["admin", "revoke", "--subject", "tls-cli"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"revoked\":3}\n");

    // A CLI whose config has no admin TLS speaks plain HTTP to it and gets no answer.
    let plain_config = dir.join("plain.toml");
    std::fs::write(&plain_config, config_text("memory://", BOTH, &echo.url())).expect("write");
    let out = cli(
        &plain_config,
        &admin,
        &["admin", "revoke", "--subject", "x"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("revoke failed: the request to the admin API"),
        "{}",
        text(&out.stderr)
    );
}
