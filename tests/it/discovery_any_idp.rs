//! Issue 19, in front of any IdP: over real sockets, a programmable upstream
//! ([`crate::support::fake_idp`]) publishes its metadata the ways real IdPs do (revocation and
//! introspection only in RFC 8414 metadata, at RFC 8414 §3.1's location for an issuer with a
//! path or appended to the issuer; or nowhere), and the proxy must find every endpoint it
//! answers for, refuse to run when a handled client's revocation could be answered "revoked"
//! by an upstream that never saw the token, say what it cannot locate, and refuse documents
//! naming another issuer. Capture reads the subject from a named introspection claim.

use std::process::Stdio;
use std::time::Duration;

use crate::support::fake_idp::{FakeIdp, payload};
use crate::support::proxy::{ProxyProcess, TestProxy, issue};
use refresh_proxy::app::Outcome;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const ISSUE_TOKEN: &str = "issue-token-0123456789";
const SECRET: &str = "Secr3t!";
const OIDC: &str = "/.well-known/openid-configuration";
const RFC8414: &str = "/.well-known/oauth-authorization-server";

/// An OIDC discovery document that lists no revocation or introspection endpoint.
fn oidc_without_revocation(idp: &FakeIdp, issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{}/authorize", idp.url()),
        "token_endpoint": format!("{}/token", idp.url()),
        "jwks_uri": format!("{}/jwks", idp.url()),
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

/// RFC 8414 metadata that does list them.
fn rfc8414_metadata(idp: &FakeIdp, issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "token_endpoint": format!("{}/token", idp.url()),
        "revocation_endpoint": format!("{}/revoke", idp.url()),
        "introspection_endpoint": format!("{}/introspect", idp.url()),
    })
}

fn config_text(upstream: &str, extra_upstream: &str) -> String {
    format!(
        "[admin]\nissue_token = \"{ISSUE_TOKEN}\"\n\
         [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
         [upstream]\nurl = \"{upstream}\"\n{extra_upstream}"
    )
}

async fn get_json(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.expect("get");
    (res.status().as_u16(), res.json().await.expect("json"))
}

async fn metrics(proxy: &TestProxy) -> String {
    reqwest::get(format!("{}/metrics", proxy.admin_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The test of issue 19: a proxy configured with discovery alone, in front of an IdP that
/// publishes its revocation endpoint only in RFC 8414 metadata, revokes proxy tokens. Both
/// RFC 8414 locations for an issuer with a path: §3.1's (inserted before the path) and the
/// one appended to the issuer that some servers use.
#[tokio::test]
async fn revocation_listed_only_in_rfc8414_metadata_revokes_proxy_tokens() {
    for rfc8414_path in [format!("{RFC8414}/realms/x"), format!("/realms/x{RFC8414}")] {
        let idp = FakeIdp::start().await;
        let issuer = format!("{}/realms/x", idp.url());
        idp.serve_document(
            &format!("/realms/x{OIDC}"),
            Some(oidc_without_revocation(&idp, &issuer)),
        );
        idp.serve_document(&rfc8414_path, Some(rfc8414_metadata(&idp, &issuer)));
        let proxy = TestProxy::start(&config_text(&issuer, "")).await;
        proxy.wait_ready().await;

        let rt = issue(
            &proxy.admin_url,
            ISSUE_TOKEN,
            json!({"client_id": "www", "subject": "alice", "scope": "read", "count": 1}),
        )
        .await
        .remove(0);
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{}/revoke", proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[("token", rt.as_str()), ("token_type_hint", "refresh_token")])
            .send()
            .await
            .expect("revoke");
        assert_eq!(res.status(), 200);
        assert_eq!(
            idp.revocations(),
            0,
            "{rfc8414_path}: the proxy's token went to the upstream"
        );
        let res = http
            .post(format!("{}/token", proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ])
            .send()
            .await
            .expect("refresh");
        assert_eq!(
            res.status(),
            400,
            "{rfc8414_path}: a revoked token refreshed"
        );
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"], "invalid_grant");

        let (status, ready) = get_json(&format!("{}/readyz", proxy.admin_url)).await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(
            ready["missing_endpoints"],
            json!([]),
            "{rfc8414_path}: {ready}"
        );
        let m = metrics(&proxy).await;
        for endpoint in ["token", "revocation", "introspection", "jwks"] {
            assert!(
                m.contains(&format!(
                    "refresh_proxy_endpoint_known{{endpoint=\"{endpoint}\"}} 1"
                )),
                "{endpoint}: {m}"
            );
        }
    }
}

/// No revocation endpoint anywhere and handled clients: the proxy must not serve (a client's
/// revocation would be answered 200 by the upstream while the token stays live). The run loop
/// ends by itself; the binary exits 1 and its log names the key to set.
#[tokio::test]
async fn an_unknown_revocation_endpoint_with_handled_clients_stops_the_proxy() {
    let idp = FakeIdp::start().await;
    idp.serve_document(OIDC, Some(oidc_without_revocation(&idp, &idp.url())));
    let mut proxy = TestProxy::start(&config_text(&idp.url(), "")).await;
    assert_eq!(
        proxy.ended_within(Duration::from_secs(10)).await,
        Some(Outcome::Refused)
    );

    let dir = crate::support::temp_dir("refused");
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(&idp.url(), "")).expect("config");
    let log_path = dir.join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut process =
        ProxyProcess::spawn_full(config, &[], crate::support::free_port(), Stdio::from(log));
    let status = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the proxy exits");
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("upstream.revocation_path") && log.contains("upstream.revocation = "),
        "{log}"
    );
}

/// Declared absent, the proxy starts and says what it cannot do: in its log, in `/readyz`'s
/// body and in the endpoint gauge.
#[tokio::test]
async fn a_revocation_declared_absent_starts_and_says_so() {
    let idp = FakeIdp::start().await;
    idp.serve_document(OIDC, Some(oidc_without_revocation(&idp, &idp.url())));
    let text = config_text(&idp.url(), "revocation = \"absent\"\n");
    let proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;
    let (_, ready) = get_json(&format!("{}/readyz", proxy.admin_url)).await;
    assert_eq!(
        ready["missing_endpoints"],
        json!(["revocation", "introspection"]),
        "{ready}"
    );
    let m = metrics(&proxy).await;
    assert!(
        m.contains("refresh_proxy_endpoint_known{endpoint=\"revocation\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("refresh_proxy_endpoint_known{endpoint=\"token\"} 1"),
        "{m}"
    );

    let dir = crate::support::temp_dir("absent");
    let config = dir.join("config.toml");
    std::fs::write(&config, &text).expect("config");
    let log_path = dir.join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let process =
        ProxyProcess::spawn_full(config, &[], crate::support::free_port(), Stdio::from(log));
    process.wait_ready().await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("client revocation of the proxy's refresh tokens is impossible"),
        "{log}"
    );
    assert!(log.contains("revocation endpoint is not known"), "{log}");
}

/// RFC 8414 §3.3: metadata naming another issuer is not used; discovery keeps failing (503)
/// rather than merge it.
#[tokio::test]
async fn metadata_naming_another_issuer_is_not_merged() {
    let idp = FakeIdp::start().await;
    idp.serve_document(OIDC, Some(oidc_without_revocation(&idp, &idp.url())));
    idp.serve_document(
        RFC8414,
        Some(rfc8414_metadata(&idp, "https://elsewhere.example.com")),
    );
    let proxy = TestProxy::start(&config_text(&idp.url(), "")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, ready) = get_json(&format!("{}/readyz", proxy.admin_url)).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["discovery"], "pending", "{ready}");
}

/// Issue 19: the IdP's introspection answer names the user in `username`, not `sub` (RFC 7662
/// §2.2: `sub` is OPTIONAL). Without `upstream.subject_claim` the answer is passed on
/// uncaptured; with it, the family's subject is that claim.
#[tokio::test]
async fn capture_takes_the_subject_from_a_named_introspection_claim() {
    for (subject_claim, captured) in [("", false), ("subject_claim = \"username\"\n", true)] {
        let idp = FakeIdp::start().await;
        idp.answer_with(json!({
            "access_token": "opaque-upstream-access-token", "token_type": "Bearer",
            "expires_in": 300, "refresh_token": "upstream-refresh-token", "scope": "read",
        }));
        idp.introspect_with(json!({
            "active": true, "scope": "read", "client_id": "www", "username": "alice",
            "exp": 4_000_000_000u64,
        }));
        let text = format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\naccess_token_format = \"jwt\"\n\
             [upstream]\nurl = \"{}\"\n{subject_claim}",
            idp.url()
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!("{}/token", proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "c"),
                ("redirect_uri", "http://127.0.0.1/cb"),
            ])
            .send()
            .await
            .expect("code")
            .json()
            .await
            .expect("json");
        let rt = answer["refresh_token"].as_str().expect("refresh_token");
        assert_eq!(idp.introspections(), 1);
        if !captured {
            assert_eq!(rt, "upstream-refresh-token", "captured without a subject");
            let m = metrics(&proxy).await;
            assert!(
                m.contains("refresh_proxy_capture_skips_total{reason=\"no_subject\"} 1"),
                "{m}"
            );
            continue;
        }
        assert_ne!(rt, "upstream-refresh-token", "not captured");
        let refreshed: Value = http
            .post(format!("{}/token", proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .expect("refresh")
            .json()
            .await
            .expect("json");
        let at = refreshed["access_token"].as_str().expect("access_token");
        assert_eq!(payload(at)["sub"], "alice", "{refreshed}");
        // Revocation by subject reaches the family opened under the named claim.
        let res = http
            .post(format!("{}/admin/revoke", proxy.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"subject": "alice"}))
            .send()
            .await
            .expect("admin revoke");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["revoked"], 1, "{body}");
    }
}

/// `check-config` catches statically what it can: without discovery, handled clients need a
/// revocation path or `revocation = "absent"`.
#[test]
fn check_config_refuses_clients_without_a_revocation_path_when_discovery_is_off() {
    let dir = crate::support::temp_dir("check-revocation");
    let run = |extra: &str| {
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[clients.www]\nsecret = \"{SECRET}\"\n\
                 [upstream]\nurl = \"http://127.0.0.1:9\"\ndiscovery = false\n\
                 token_path = \"/token\"\n{extra}"
            ),
        )
        .expect("write");
        let out = std::process::Command::new(crate::support::proxy::binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run check-config");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run("");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("upstream.revocation_path"), "{text}");
    let (code, text) = run("revocation_path = \"/revoke\"\n");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run("revocation = \"absent\"\n");
    assert_eq!(code, Some(0), "{text}");
}
