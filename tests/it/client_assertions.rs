//! `private_key_jwt` and `client_secret_jwt` (RFC 7523 §2.2 and §3, OIDC Core §9;
//! docs/design.md §4.18), end to end. Every assertion is made by Node's `jose`
//! (tests/idp/client-assertion.mjs) with the test-only keys of tests/idp/test-client-keys.json.
//!
//! - with the real IdP (oidc-provider registers `pkjwt` ES256, `pkjwt-ed` EdDSA and `csjwt`
//!   HS256): a code exchange the IdP accepted is captured as the assertion's client, and the
//!   proxy answers that client's refreshes itself; a replayed assertion is refused; a
//!   `client_secret_jwt` family's end is told to the IdP with an assertion the proxy makes;
//! - without an IdP (families from the admin API): every way an assertion can be wrong, a replay
//!   on a second replica sharing the Redis, and `jwks_uri` keys fetched, refetched for an
//!   unknown `kid` and rate-limited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::StoreKind as Kind;
use crate::support::assertion::{self, fields, public_jwks};
use crate::support::echo::EchoServer;
use crate::support::idp::{self, ClientAuth, CodeFlow, Idp, IdpOptions, REDIRECT_URI};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;

const CS_SECRET: &str = "csjwt-secret-0123456789abcdef-0123456789";
const ISSUE_TOKEN: &str = "issue-token-0123456789abcdef";
/// The issuer of the proxies without an IdP.
const ISSUER: &str = "https://idp.test";

/// POSTs `form` to `{base}{path}`, with Basic credentials when given.
async fn post(
    base: &str,
    path: &str,
    form: &[(&str, String)],
    basic: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .form(form);
    if let Some((id, secret)) = basic {
        req = req.header("authorization", idp::basic_auth_header(id, secret));
    }
    let res = req.send().await.expect("POST");
    let status = res.status().as_u16();
    assert!(
        res.headers().get("www-authenticate").is_none() || basic.is_some(),
        "no WWW-Authenticate without the Authorization header"
    );
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A refresh grant with `assertion` (and `extra` fields).
async fn refresh(base: &str, rt: &str, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", rt.to_owned()),
    ];
    form.extend(fields(assertion));
    form.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    post(base, "/token", &form, None).await
}

fn rt(v: &Value) -> String {
    idp::str_field(v, "refresh_token").to_owned()
}

/// A refresh token the proxy minted: `<family>.<generation>.<key id and tag>`.
fn is_proxy_token(t: &str) -> bool {
    t.split('.').count() == 3 && t.len() > 80
}

// ---- With the real IdP ----

struct WithIdp {
    idp: Idp,
    proxy: TestProxy,
    _redis: Option<RedisServer>,
}

impl WithIdp {
    async fn start(kind: Kind) -> WithIdp {
        // pkjwt's keys inline, pkjwt-ed's from a file.
        let dir = crate::support::temp_dir("assertion-keys");
        let ed_file = dir.join("pkjwt-ed.jwks.json");
        std::fs::write(&ed_file, public_jwks(&["pk-ed-1"]).to_string()).expect("write");
        let clients = format!(
            "[clients.pkjwt]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n\
             token_endpoint_auth_signing_alg = \"ES256\"\njwks = '{es}'\n\
             [clients.pkjwt-ed]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n\
             token_endpoint_auth_signing_alg = \"EdDSA\"\njwks_file = \"{ed}\"\n\
             [clients.csjwt]\ntoken_endpoint_auth_method = \"client_secret_jwt\"\n\
             secret = \"{CS_SECRET}\"\n",
            es = public_jwks(&["pk-es-1"]),
            ed = ed_file.display(),
        );
        WithIdp::start_with(kind, &clients).await
    }

    async fn start_with(kind: Kind, clients: &str) -> WithIdp {
        let (listener, idp) = Idp::start_behind_proxy(IdpOptions::default()).await;
        let (redis, store) = kind.start();
        let text = format!(
            "[store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n{clients}\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        WithIdp {
            idp,
            proxy,
            _redis: redis,
        }
    }

    /// A spec for `client`'s assertions at this proxy (aud: the issuer).
    fn spec(&self, client: &str) -> Value {
        match client {
            "pkjwt" => json!({"client": client, "aud": self.proxy.url, "key": "pk-es-1"}),
            "pkjwt-ed" => json!({"client": client, "aud": self.proxy.url, "key": "pk-ed-1"}),
            _ => json!({"client": client, "aud": self.proxy.url, "secret": CS_SECRET}),
        }
    }

    /// The code flow for `client`, the code redeemed with an assertion through the proxy.
    async fn login(&self, client: &str, spec: Value) -> Value {
        let flow = CodeFlow {
            client_id: client,
            client_secret: None,
            auth: ClientAuth::None,
            scope: "openid offline_access",
            login: "alice",
        };
        let (verifier, code) = idp::authorize(&self.proxy.url, &flow).await;
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", REDIRECT_URI.to_owned()),
            ("code_verifier", verifier),
            ("client_id", client.to_owned()),
        ];
        form.extend(fields(&assertion::one(spec).await));
        let (status, body) = post(&self.proxy.url, "/token", &form, None).await;
        assert_eq!(status, 200, "{client}: {body}");
        body
    }
}

async fn assertion_clients_are_captured_and_refreshed_by_the_proxy(kind: Kind) {
    let s = WithIdp::start(kind).await;
    for client in ["pkjwt", "pkjwt-ed", "csjwt"] {
        let tokens = s.login(client, s.spec(client)).await;
        let first = rt(&tokens);
        assert!(is_proxy_token(&first), "{client}: not captured: {tokens}");
        // aud: the issuer, or the token endpoint's URL.
        let mut spec = s.spec(client);
        spec["aud"] = json!(format!("{}/token", s.proxy.url));
        let used = assertion::one(spec).await;
        let (status, body) = refresh(&s.proxy.url, &first, &used, &[]).await;
        assert_eq!(status, 200, "{client}: {body}");
        let second = rt(&body);
        // The same assertion again: refused, whatever the token (RFC 7523 §3 item 7).
        let (status, body) = refresh(&s.proxy.url, &second, &used, &[]).await;
        assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
        // The refresh grants never reached the IdP.
        assert_eq!(s.idp.grant_count("refresh_token").await, 0, "{client}");
        let fresh = assertion::one(s.spec(client)).await;
        let (status, body) = refresh(&s.proxy.url, &second, &fresh, &[]).await;
        assert_eq!(status, 200, "{client}: {body}");
    }
    assert_eq!(
        s.proxy
            .metric("refresh_proxy_capture_skips_total{reason=\"client_auth\"}")
            .await,
        0
    );
}

both_stores!(assertion_clients_are_captured_and_refreshed_by_the_proxy);

/// The proxy checks an assertion the IdP accepted before it captures: when its own check fails
/// (here its config has another secret than the IdP's), the IdP's answer passes untouched.
#[tokio::test]
async fn an_assertion_the_proxy_cannot_verify_is_not_captured() {
    let clients = "[clients.csjwt]\ntoken_endpoint_auth_method = \"client_secret_jwt\"\n\
                   secret = \"not-the-secret-the-idp-has-0123456789\"\n";
    let s = WithIdp::start_with(Kind::Memory, clients).await;
    let tokens = s.login("csjwt", s.spec("csjwt")).await;
    assert!(!is_proxy_token(&rt(&tokens)), "captured: {tokens}");
    assert_eq!(
        s.proxy
            .metric("refresh_proxy_capture_skips_total{reason=\"client_auth\"}")
            .await,
        1
    );
}

/// A `client_secret_jwt` family ends at the proxy: the IdP's refresh token is revoked there
/// with an assertion the proxy makes with the client's secret (aud: the IdP's issuer).
#[tokio::test]
async fn a_client_secret_jwt_familys_end_is_told_to_the_idp() {
    let s = WithIdp::start(Kind::Memory).await;
    let tokens = s.login("csjwt", s.spec("csjwt")).await;
    let upstream_rt = s.idp.last_refresh_token().await;
    assert!(s.idp.is_active(&upstream_rt).await);
    let mut form = vec![
        ("token", rt(&tokens)),
        ("token_type_hint", "refresh_token".to_owned()),
    ];
    form.extend(fields(&assertion::one(s.spec("csjwt")).await));
    let (status, body) = post(&s.proxy.url, "/token/revocation", &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        s.idp
            .wait_inactive(&upstream_rt, Duration::from_secs(10))
            .await,
        "the IdP's refresh token is still active"
    );
    assert_eq!(
        s.proxy
            .metric("refresh_proxy_upstream_revocations_total{outcome=\"revoked\"}")
            .await,
        1
    );
}

// ---- Without an IdP: families from the admin API ----

struct Local {
    proxy: TestProxy,
    _echo: EchoServer,
}

impl Local {
    async fn start(store: &str, clients: &str) -> Local {
        let echo = EchoServer::start().await;
        let text = format!(
            "[store]\nurl = \"{store}\"\n[tokens]\nrefresh_token_key = \"{key}\"\n\
             [admin]\nissue_token = \"{ISSUE_TOKEN}\"\n{clients}\n\
             [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation_path = \"/revoke\"\n\
             issuer = \"{ISSUER}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = echo.url(),
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        Local { proxy, _echo: echo }
    }

    async fn issue(&self, client: &str) -> String {
        crate::support::proxy::issue(
            &self.proxy.admin_url,
            ISSUE_TOKEN,
            json!({"client_id": client, "subject": "alice", "scope": "read", "count": 1}),
        )
        .await
        .remove(0)
    }
}

fn pkjwt_clients(keys: &str) -> String {
    format!(
        "[clients.pkjwt]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n\
         token_endpoint_auth_signing_alg = \"ES256\"\nallow_admin_issue = true\n{keys}\n\
         [clients.csjwt]\ntoken_endpoint_auth_method = \"client_secret_jwt\"\n\
         secret = \"{CS_SECRET}\"\nallow_admin_issue = true\n"
    )
}

fn base() -> Value {
    json!({"client": "pkjwt", "aud": ISSUER, "key": "pk-es-1"})
}

fn with(edits: Value) -> Value {
    let mut spec = base();
    for (k, v) in edits.as_object().expect("object") {
        spec[k] = v.clone();
    }
    spec
}

#[tokio::test]
async fn every_wrong_assertion_is_refused() {
    // The client's set holds its ES256 key and an EdDSA key: a token signed with the latter has
    // a key of the client but not the registered alg.
    let jwks = public_jwks(&["pk-es-1", "pk-ed-1"]);
    let s = Local::start("memory://", &pkjwt_clients(&format!("jwks = '{jwks}'"))).await;
    let mut token = s.issue("pkjwt").await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "another key under the client's kid",
            with(json!({"key": "pk-es-other", "kid": "pk-es-1"})),
        ),
        (
            "a key of the set, not the registered alg",
            with(json!({"key": "pk-ed-1"})),
        ),
        ("alg none", with(json!({"alg": "none"}))),
        (
            "HS256 with another client's secret",
            with(json!({"key": null, "secret": CS_SECRET, "alg": "HS256"})),
        ),
        ("expired", with(json!({"exp_in": -120}))),
        ("exp too far ahead", with(json!({"exp_in": 3600}))),
        (
            "another audience",
            with(json!({"aud": "https://other.test"})),
        ),
        ("iss is not sub", with(json!({"claims": {"iss": "csjwt"}}))),
        ("no jti", with(json!({"claims": {"jti": null}}))),
        ("no exp", with(json!({"claims": {"exp": null}}))),
        (
            "iat in the future",
            with(json!({"claims": {"iat": 4_000_000_000u64}})),
        ),
    ];
    let specs: Vec<Value> = cases.iter().map(|(_, s)| s.clone()).collect();
    let made = assertion::make(&specs).await;
    for ((why, _), jwt) in cases.iter().zip(&made) {
        let (status, body) = refresh(&s.proxy.url, &token, jwt, &[]).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("invalid_client")),
            "{why}: {body}"
        );
    }
    // Malformed requests: 400 invalid_request (RFC 6749 §5.2, as oidc-provider answers).
    let good = assertion::one(base()).await;
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", token.clone()),
    ];
    form.extend(fields(&good));
    let (status, body) = post(&s.proxy.url, "/token", &form, Some(("pkjwt", "x"))).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_request")),
        "with Basic"
    );
    let mut with_secret = form.clone();
    with_secret.push(("client_secret", "x".to_owned()));
    let (status, body) = post(&s.proxy.url, "/token", &with_secret, None).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_request")),
        "with a secret"
    );
    let (status, body) = refresh(&s.proxy.url, &token, &good, &[("client_id", "csjwt")]).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_request")),
        "client_id"
    );
    let mut wrong_type = form.clone();
    wrong_type[2].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".to_owned();
    let (status, body) = post(&s.proxy.url, "/token", &wrong_type, None).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_request")),
        "type"
    );
    // The secret alone does not authenticate a client_secret_jwt client.
    let cs_token = s.issue("csjwt").await;
    let (status, _) = idp::refresh(&s.proxy.url, "csjwt", CS_SECRET, &cs_token, None).await;
    assert_eq!(status, 401);
    // None of that spent the token or the good assertion; the right ones work.
    let (status, body) = refresh(&s.proxy.url, &token, &good, &[("client_id", "pkjwt")]).await;
    assert_eq!(status, 200, "{body}");
    token = rt(&body);
    let cs = assertion::one(
        json!({"client": "csjwt", "aud": format!("{ISSUER}/token"), "secret": CS_SECRET}),
    )
    .await;
    let (status, body) = refresh(&s.proxy.url, &cs_token, &cs, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token.is_empty());
}

#[tokio::test]
async fn a_replay_is_refused_by_another_replica_sharing_the_store() {
    let redis = RedisServer::start();
    let jwks = public_jwks(&["pk-es-1"]);
    let clients = pkjwt_clients(&format!("jwks = '{jwks}'"));
    let a = Local::start(&redis.url(), &clients).await;
    let b = Local::start(&redis.url(), &clients).await;
    let token = a.issue("pkjwt").await;
    let used = assertion::one(base()).await;
    let (status, body) = refresh(&a.proxy.url, &token, &used, &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = refresh(&b.proxy.url, &rt(&body), &used, &[]).await;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
}

/// A client's `jwks_uri`, served by the test: fetched once, fetched again for an unknown `kid`,
/// but not within `jwks_refetch_interval` of the last fetch.
#[tokio::test]
async fn jwks_uri_keys_are_refetched_for_an_unknown_kid_at_most_once_per_interval() {
    let served = Arc::new(Mutex::new(public_jwks(&["pk-es-1"]).to_string()));
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks_uri = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    {
        let (served, hits) = (served.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().expect("lock").clone();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
    }
    let keys = format!("jwks_uri = \"{jwks_uri}\"\njwks_refetch_interval = 2");
    let s = Local::start("memory://", &pkjwt_clients(&keys)).await;
    let mut token = s.issue("pkjwt").await;
    let by = |key: &str| with(json!({"key": key}));
    let made = assertion::make(&[
        by("pk-es-1"),
        by("pk-es-2"),
        by("pk-es-2"),
        by("pk-es-other"),
    ])
    .await;
    let (status, body) = refresh(&s.proxy.url, &token, &made[0], &[]).await;
    assert_eq!(status, 200, "{body}");
    token = rt(&body);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The client rotates in a new key; right away the proxy does not fetch again.
    *served.lock().expect("lock") = public_jwks(&["pk-es-1", "pk-es-2"]).to_string();
    let (status, _) = refresh(&s.proxy.url, &token, &made[1], &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "refetched within the interval"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, body) = refresh(&s.proxy.url, &token, &made[2], &[]).await;
    assert_eq!(status, 200, "{body}");
    token = rt(&body);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // An unknown kid right after: refused without a fetch.
    let (status, _) = refresh(&s.proxy.url, &token, &made[3], &[]).await;
    assert_eq!(status, 401);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// An assertion and a DPoP proof in one refresh: both one-time ids go into the redemption,
/// and a replay of either is refused as that proof's error (docs/design.md §4.15).
#[tokio::test]
async fn an_assertion_and_a_dpop_proof_are_each_used_once() {
    use crate::support::jose::{DpopKey, ProofClaims};
    let jwks = public_jwks(&["pk-es-1"]);
    let s = Local::start("memory://", &pkjwt_clients(&format!("jwks = '{jwks}'"))).await;
    let mut token = s.issue("pkjwt").await;
    let key = DpopKey::new("ES256").await;
    let htu = format!("{ISSUER}/token");
    let proofs = key.proofs(&vec![ProofClaims::to(&htu); 3]).await;
    let made = assertion::make(&[base(), base(), base()]).await;
    let send = |token: String, jwt: &str, proof: &str| {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", token),
        ];
        form.extend(fields(jwt));
        let req = reqwest::Client::new()
            .post(format!("{}/token", s.proxy.url))
            .header("dpop", proof)
            .form(&form);
        async move {
            let res = req.send().await.expect("POST");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = send(token.clone(), &made[0], &proofs[0]).await;
    assert_eq!(
        (status, &body["token_type"]),
        (200, &json!("DPoP")),
        "{body}"
    );
    token = rt(&body);
    // The assertion again, with a fresh proof: the client's authentication failed.
    let (status, body) = send(token.clone(), &made[0], &proofs[1]).await;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
    // A fresh assertion, the first proof again: the proof's error.
    let (status, body) = send(token.clone(), &made[1], &proofs[0]).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_dpop_proof"))
    );
    // Both fresh: the refresh goes on (a replay changed nothing).
    let (status, body) = send(token.clone(), &made[2], &proofs[2]).await;
    assert_eq!(status, 200, "{body}");
}

/// `jwks_file` is read again on SIGHUP, as every client key is: a client that rotated its key
/// is accepted with the new one once the file is rewritten and the proxy reloaded.
#[tokio::test]
async fn a_reload_reads_the_clients_keys_again() {
    use crate::support::proxy::ProxyProcess;
    let echo = EchoServer::start().await;
    let dir = crate::support::temp_dir("assertion-reload");
    let jwks_file = dir.join("pkjwt.jwks.json");
    std::fs::write(&jwks_file, public_jwks(&["pk-es-1"]).to_string()).expect("write");
    let text = format!(
        "[store]\nurl = \"memory://\"\n[tokens]\nrefresh_token_key = \"{key}\"\n\
         [admin]\nissue_token = \"{ISSUE_TOKEN}\"\n{clients}\n\
         [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
         revocation_path = \"/revoke\"\nissuer = \"{ISSUER}\"\n",
        key = crate::support::TEST_REFRESH_KEY,
        clients = pkjwt_clients(&format!("jwks_file = \"{}\"", jwks_file.display())),
        up = echo.url(),
    );
    let proxy = ProxyProcess::spawn(&text);
    proxy.wait_ready().await;
    let token = crate::support::proxy::issue(
        &proxy.admin_url,
        ISSUE_TOKEN,
        json!({"client_id": "pkjwt", "subject": "alice", "scope": "read", "count": 1}),
    )
    .await
    .remove(0);
    let specs = vec![with(json!({"key": "pk-es-2"})); 40];
    let mut made = assertion::make(&specs).await.into_iter();
    let (status, _) = refresh(&proxy.url, &token, &made.next().expect("one"), &[]).await;
    assert_eq!(status, 401, "a key the client does not have yet");
    std::fs::write(&jwks_file, public_jwks(&["pk-es-2"]).to_string()).expect("rewrite");
    proxy.signal("HUP");
    let accepted = async {
        for jwt in made {
            let (status, _) = refresh(&proxy.url, &token, &jwt, &[]).await;
            if status == 200 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(accepted.await, "the new key was not accepted after SIGHUP");
}
