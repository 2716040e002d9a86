//! No token, secret, Authorization or Cookie value reaches the logs, at any level: the real
//! binary at `trace`, JSON logs captured from stdout, driven through every flow it has.

use std::process::Stdio;
use std::time::Duration;

use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::proxy::ProxyProcess;

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const ISSUE_TOKEN: &str = "issue-token-0123456789";
const COOKIE: &str = "session=cookie-value-that-must-not-be-logged";
const QUERY_SECRET: &str = "query-secret-that-must-not-be-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace_level() {
    let port = crate::support::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let idp = Idp::start_with(IdpOptions {
        issuer: Some(issuer),
        ..IdpOptions::default()
    })
    .await;
    let dir = crate::support::temp_dir("logs");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nformat = \"json\"\nlevel = \"trace\"\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"Secr3t!\"\nreuse_grace_period = 0\nallow_admin_issue = true\n\
             [clients.rs]\nsecret = \"rs-secret\"\nmay_introspect = true\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url
        ),
    )
    .expect("config");
    let log_path = dir.join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut proxy = ProxyProcess::spawn_full(config, &[], port, Stdio::from(log));
    proxy.wait_ready().await;
    let url = proxy.url.clone();

    let mut secrets: Vec<String> = vec![
        WWW_CLIENT_SECRET.into(),
        "Secr3t%21".into(),
        "d3d3OlNlY3IzdCE".into(), // base64("www:Secr3t!")
        "rs-secret".into(),
        ADMIN_TOKEN.into(),
        "cookie-value-that-must-not-be-logged".into(),
        QUERY_SECRET.into(),
        crate::support::TEST_REFRESH_KEY.into(),
    ];

    // Login (cookies, the code, PKCE), refreshes, introspection, revocation, reuse.
    let login = idp::code_flow(&url, &CodeFlow::www("openid offline_access read")).await;
    for field in ["access_token", "refresh_token", "id_token"] {
        secrets.push(idp::str_field(&login, field).to_owned());
    }
    let first = idp::str_field(&login, "refresh_token").to_owned();
    let (status, body) = idp::refresh(&url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &first, None).await;
    assert_eq!(status, 200, "{body}");
    for field in ["access_token", "refresh_token"] {
        secrets.push(idp::str_field(&body, field).to_owned());
    }
    let second = idp::str_field(&body, "refresh_token").to_owned();
    assert_eq!(idp::introspect(&url, &second).await["active"], true);
    let (status, _) = idp::refresh(&url, WWW_CLIENT_ID, "wrong-secret-xyz", &second, None).await;
    assert_eq!(status, 401);
    secrets.push("wrong-secret-xyz".into());
    let (status, _) = idp::refresh(&url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &first, None).await;
    assert_eq!(status, 400, "reuse: a security event is logged");
    assert_eq!(
        idp::revoke(&url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, &second).await,
        200
    );

    let client = reqwest::Client::new();
    let res = client
        .get(format!("{url}/me?access_token={QUERY_SECRET}"))
        .header("cookie", COOKIE)
        .header("authorization", format!("Bearer {}", secrets[8]))
        .send()
        .await
        .expect("send");
    assert!(res.status().as_u16() < 500);
    secrets.push(ISSUE_TOKEN.into());
    let issued: serde_json::Value = client
        .post(format!("{}/admin/issue", proxy.admin_url))
        .bearer_auth(ISSUE_TOKEN)
        .json(&serde_json::json!({"client_id":"www","subject":"load","scope":"read","count":2}))
        .send()
        .await
        .expect("issue")
        .json()
        .await
        .expect("json");
    for t in issued["refresh_tokens"].as_array().expect("tokens") {
        secrets.push(t.as_str().expect("token").to_owned());
    }

    // The upstream's refresh tokens the proxy kept (sealed) and, after the revocation and the
    // reuse above, revoked at the IdP (docs/design.md §4.11): never in clear in a log line.
    let upstream = idp.refresh_tokens().await;
    assert!(!upstream.is_empty(), "the IdP issued refresh tokens");
    for t in &upstream {
        let token = idp::str_field(t, "token").to_owned();
        assert!(
            idp.wait_inactive(&token, Duration::from_secs(10)).await,
            "the kept upstream token was revoked at the IdP"
        );
        secrets.push(token);
    }

    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(15)).await.is_some());
    let logs = std::fs::read_to_string(&log_path).expect("logs");
    // Trace logging was on: the secrets below had every chance to be logged. (Lines at TRACE
    // come from the dependencies: hyper-util's connector, the Redis client, …)
    let trace_lines = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"TRACE\""))
        .count();
    assert!(
        trace_lines > 0,
        "trace logging was on ({trace_lines} TRACE lines)"
    );
    assert!(
        logs.contains("\"security_event\":\"refresh_token_reuse\""),
        "the reuse event is logged"
    );
    assert!(logs.contains("\"request_id\""), "request lines are logged");
    for secret in &secrets {
        // The secret part of a token is its last dot-separated segment (a refresh or opaque
        // token's random part, a JWT's signature); the family id in front is not secret and is
        // logged on purpose. Any 20 characters of the secret part count as a leak.
        let tail = secret.rsplit('.').next().unwrap_or(secret);
        let part = if tail.len() >= 20 {
            tail
        } else {
            secret.as_str()
        };
        let probe = &part[..part.len().min(20)];
        if let Some(line) = logs.lines().find(|l| l.contains(probe)) {
            panic!("{probe:?} (from a secret) is in the logs: {line}");
        }
    }
}
