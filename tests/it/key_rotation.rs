//! Key rotation without logging anyone out: the refresh-token key, the access-token signing
//! key and the ID-token signing key are each a list (the first signs or mints, all verify and
//! are published); `SIGHUP` reloads them without dropping connections. The real binary, a
//! programmable upstream IdP, refresh traffic running through both reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::StoreKind as Kind;
use crate::support::fake_idp::{FakeIdp, TestKey, payload};
use crate::support::proxy::ProxyProcess;
use refresh_proxy::internal::mint::refresh::RefreshTokenKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: &str = "www";
const SECRET: &str = "Secr3t!";
const REFRESH_A: &str = "refresh-token-key-A-0123456789abcdef";
const REFRESH_B: &str = "refresh-token-key-B-0123456789abcdef";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A PEM file holding a new P-256 key (PKCS#8), made by rcgen, not by the proxy.
fn pem_file(dir: &std::path::Path, name: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let path = dir.join(name);
    std::fs::write(&path, key.serialize_pem()).expect("write key");
    path.display().to_string()
}

struct Keys {
    refresh: Vec<&'static str>,
    signing: Vec<String>,
    id: Vec<String>,
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

fn config(store: &str, upstream: &str, keys: &Keys) -> String {
    format!(
        "[store]\nurl = \"{store}\"\n\
         [tokens]\nrefresh_token_keys = {refresh}\nsigning_key_files = {signing}\n\
         id_token_signing_alg = \"ES256\"\nid_token_signing_key_files = {id}\n\
         [clients.{CLIENT}]\nsecret = \"{SECRET}\"\naccess_token_format = \"jwt\"\n\
         id_token_on_refresh = true\n\
         [clients.rs]\nsecret = \"rs-secret\"\nmay_introspect = true\n\
         [upstream]\nurl = \"{upstream}\"\n",
        refresh = list(&keys.refresh),
        signing = list(&keys.signing),
        id = list(&keys.id),
    )
}

fn header_kid(jwt: &str) -> String {
    use base64::Engine as _;
    let head = jwt.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .expect("base64url");
    let header: Value = serde_json::from_slice(&bytes).expect("JSON header");
    header["kid"].as_str().expect("kid").to_owned()
}

/// The key id a refresh token says made it.
fn refresh_kid(token: &str) -> &str {
    let secret = token.rsplit('.').next().expect("parts");
    &secret[..4]
}

fn kid_of(secret: &str) -> String {
    RefreshTokenKey::from_secret(secret.as_bytes())
        .kid()
        .to_owned()
}

async fn refresh(http: &reqwest::Client, url: &str, rt: &str) -> (u16, Value) {
    let res = http
        .post(format!("{url}/token"))
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn capture(http: &reqwest::Client, url: &str) -> String {
    let res = http
        .post(format!("{url}/token"))
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "authorization_code"), ("code", "c")])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned()
}

async fn introspect(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.post(format!("{url}/introspect"))
        .basic_auth("rs", Some("rs-secret"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

async fn jwks_kids(http: &reqwest::Client, admin: &str) -> Vec<String> {
    let jwks: Value = http
        .get(format!("{admin}/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Rewrites the config, sends SIGHUP, and waits until the admin JWKS has `expected` keys.
async fn reload(proxy: &ProxyProcess, http: &reqwest::Client, text: &str, expected: usize) {
    std::fs::write(&proxy.config_path, text).expect("rewrite config");
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jwks_kids(http, &proxy.admin_url).await.len() != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not take effect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request on an open connection; the status code.
async fn on_connection(conn: &mut tokio::net::TcpStream) -> u16 {
    conn.write_all(b"GET /jwks HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if buf.len() >= end + 4 + length {
                return text[9..12].parse().expect("status");
            }
        }
    }
}

async fn each_key_rotates_under_traffic_without_logging_anyone_out(kind: Kind) {
    let dir = crate::support::temp_dir("key-rotation");
    let (sa, sb) = (pem_file(&dir, "sa.pem"), pem_file(&dir, "sb.pem"));
    let (ia, ib) = (pem_file(&dir, "ia.pem"), pem_file(&dir, "ib.pem"));
    let upstream_key = TestKey::es256("up-1");
    let idp = FakeIdp::start().await;
    idp.set_jwks(json!({"keys": [upstream_key.jwk()]}));
    idp.answer_with(json!({
        "access_token": "an-opaque-upstream-access-token",
        "token_type": "Bearer",
        "refresh_token": "the-upstream-refresh-token",
        "scope": "openid read",
        "expires_in": 300,
        "id_token": upstream_key.sign(&json!({
            "iss": idp.url(), "sub": "alice", "aud": CLIENT,
            "iat": now(), "exp": now() + 3600, "auth_time": now() - 5,
        })),
    }));
    // Held to the end of the test: the store the proxy process uses.
    let (_redis, store) = kind.start();
    let before = Keys {
        refresh: vec![REFRESH_A],
        signing: vec![sa.clone()],
        id: vec![ia.clone()],
    };
    let during = Keys {
        refresh: vec![REFRESH_B, REFRESH_A],
        signing: vec![sb.clone(), sa],
        id: vec![ib.clone(), ia],
    };
    let after = Keys {
        refresh: vec![REFRESH_B],
        signing: vec![sb],
        id: vec![ib],
    };
    let proxy = ProxyProcess::spawn(&config(&store, &idp.url(), &before));
    proxy.wait_ready().await;
    let http = reqwest::Client::new();
    let url = proxy.url.clone();

    // Families made with key A: one refreshed before the rotation (its access token and ID
    // token signed by the old keys), one left alone until key A is gone, and one left alone
    // until both keys are accepted.
    let refreshed = capture(&http, &url).await;
    let idle_until_removal = capture(&http, &url).await;
    let idle_until_rotation = capture(&http, &url).await;
    assert_eq!(refresh_kid(&refreshed), kid_of(REFRESH_A));
    let (status, old_answer) = refresh(&http, &url, &refreshed).await;
    assert_eq!(status, 200, "{old_answer}");
    let old_at = old_answer["access_token"].as_str().expect("at").to_owned();
    let old_id = old_answer["id_token"]
        .as_str()
        .expect("id_token")
        .to_owned();
    let mut refreshed = old_answer["refresh_token"].as_str().expect("rt").to_owned();
    let kids_before = jwks_kids(&http, &proxy.admin_url).await;
    assert_eq!(
        kids_before.len(),
        2,
        "one access-token key, one ID-token key"
    );

    // Traffic: chains refreshing all along, and one open connection.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut chains = Vec::new();
    for _ in 0..4 {
        let mut token = capture(&http, &url).await;
        let (http, url, stop, failures, done) = (
            http.clone(),
            url.clone(),
            stop.clone(),
            failures.clone(),
            done.clone(),
        );
        chains.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = refresh(&http, &url, &token).await;
                if status == 200 {
                    token = body["refresh_token"].as_str().expect("rt").to_owned();
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("a chain failed: {status} {body}");
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }));
    }
    let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("connect");
    assert_eq!(on_connection(&mut conn).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. The new keys first, the old ones still accepted.
    reload(&proxy, &http, &config(&store, &idp.url(), &during), 4).await;
    assert_eq!(
        on_connection(&mut conn).await,
        200,
        "the connection stays open"
    );
    let kids = jwks_kids(&http, &proxy.admin_url).await;
    assert!(
        kids_before.iter().all(|k| kids.contains(k)),
        "old keys still published"
    );
    // A token made with key A still refreshes, and its successor is key B's.
    let (status, body) = refresh(&http, &url, &idle_until_rotation).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        refresh_kid(body["refresh_token"].as_str().expect("rt")),
        kid_of(REFRESH_B)
    );
    let (status, body) = refresh(&http, &url, &refreshed).await;
    assert_eq!(status, 200, "{body}");
    refreshed = body["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(refresh_kid(&refreshed), kid_of(REFRESH_B));
    // New tokens are signed by the new keys; the old keys' tokens still verify.
    let new_at = body["access_token"].as_str().expect("at");
    let new_id = body["id_token"].as_str().expect("id_token");
    assert!(
        !kids_before.contains(&header_kid(new_at)),
        "a new access-token key"
    );
    assert!(
        !kids_before.contains(&header_kid(new_id)),
        "a new ID-token key"
    );
    assert_eq!(payload(new_id)["sub"], "alice");
    assert_eq!(introspect(&http, &url, &old_at).await["active"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. The old keys removed.
    reload(&proxy, &http, &config(&store, &idp.url(), &after), 2).await;
    assert_eq!(
        on_connection(&mut conn).await,
        200,
        "the connection stays open"
    );
    let kids = jwks_kids(&http, &proxy.admin_url).await;
    assert!(
        kids_before.iter().all(|k| !kids.contains(k)),
        "old keys withdrawn"
    );
    // A token made with key A is no longer the proxy's: it is forwarded to the upstream, which
    // decides (a real IdP answers invalid_grant; this one answers whatever it is told to).
    let (status, body) = refresh(&http, &url, &idle_until_removal).await;
    assert_eq!(
        (status, &body["access_token"]),
        (200, &json!("an-opaque-upstream-access-token")),
        "the upstream answered, not the proxy: {body}"
    );
    // A family opened under key A and refreshed since goes on (it was re-sealed with key B).
    let (status, body) = refresh(&http, &url, &refreshed).await;
    assert_eq!(status, 200, "{body}");
    // The old access-token key no longer verifies: the proxy does not recognise its tokens.
    assert_ne!(introspect(&http, &url, &old_at).await["active"], true);
    let _ = old_id;
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for c in chains {
        c.await.expect("chain task");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no chain failed");
    assert!(done.load(Ordering::Relaxed) > 20, "traffic ran throughout");
}

both_stores!(each_key_rotates_under_traffic_without_logging_anyone_out);

/// A config that does not load on SIGHUP keeps the previous keys (and the process).
#[tokio::test]
async fn a_bad_config_on_reload_keeps_the_previous_keys() {
    let dir = crate::support::temp_dir("key-rotation-bad");
    let sa = pem_file(&dir, "sa.pem");
    let idp = FakeIdp::start().await;
    let keys = Keys {
        refresh: vec![REFRESH_A],
        signing: vec![sa.clone()],
        id: vec![pem_file(&dir, "ia.pem")],
    };
    let proxy = ProxyProcess::spawn(&config("memory://", &idp.url(), &keys));
    proxy.wait_ready().await;
    let http = reqwest::Client::new();
    let kids = jwks_kids(&http, &proxy.admin_url).await;
    std::fs::write(
        &proxy.config_path,
        "[tokens]\nrefresh_token_keys = [\"short\"]\n",
    )
    .expect("rewrite");
    proxy.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jwks_kids(&http, &proxy.admin_url).await, kids);
    let res = http
        .get(format!("{}/healthz", proxy.admin_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(res.status(), 200);
}
