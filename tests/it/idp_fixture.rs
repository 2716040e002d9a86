//! Proves the oidc-provider fixture (tests/idp, tests/support/idp.rs) works, talking to the IdP
//! directly. Needs Node.js and `npm ci --prefix tests/idp`.
#![allow(dead_code)]

use std::time::Instant;

use crate::support::idp::{
    self, ClientAuth, CodeFlow, Idp, IdpOptions, JWT_API_RESOURCE, RefreshRotation, SPA_CLIENT_ID,
    WWW_CLIENT_ID, WWW_CLIENT_SECRET, str_field,
};
use serde_json::Value;

fn scopes(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = str_field(v, "scope")
        .split(' ')
        .map(str::to_owned)
        .collect();
    s.sort();
    s
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut s: Vec<String> = list.iter().map(|x| (*x).to_owned()).collect();
    s.sort();
    s
}

#[tokio::test]
async fn code_flow_returns_access_refresh_and_id_token() {
    let started = Instant::now();
    let idp = Idp::start().await;
    eprintln!("IdP started in {:?}", started.elapsed());
    assert_eq!(idp.issuer, idp.base_url);

    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    assert!(!str_field(&tokens, "access_token").is_empty());
    assert!(!str_field(&tokens, "refresh_token").is_empty());
    assert_eq!(str_field(&tokens, "token_type"), "Bearer");
    assert!(tokens["expires_in"].as_u64().expect("expires_in") > 0);
    assert_eq!(
        scopes(&tokens),
        sorted(&["openid", "offline_access", "read"]),
        "{tokens}"
    );

    let id_token = idp::jwt_claims(str_field(&tokens, "id_token"));
    assert_eq!(id_token["iss"], idp.issuer.as_str());
    assert_eq!(id_token["sub"], "alice");
    assert_eq!(id_token["aud"], WWW_CLIENT_ID);
    assert!(id_token["nonce"].is_string(), "{id_token}");

    // The opaque access token is known to the resource server.
    let info = idp::introspect(&idp.base_url, str_field(&tokens, "access_token")).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["client_id"], WWW_CLIENT_ID);
}

#[tokio::test]
async fn code_flow_without_offline_access_has_no_refresh_token() {
    let idp = Idp::start().await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid read")).await;
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    assert!(tokens["access_token"].is_string());
}

#[tokio::test]
async fn login_name_becomes_the_subject_and_profile_claims_are_served() {
    let idp = Idp::start().await;
    let flow = CodeFlow {
        login: "bob",
        ..CodeFlow::www("openid profile email")
    };
    let tokens = idp::code_flow(&idp.base_url, &flow).await;
    let id_token = idp::jwt_claims(str_field(&tokens, "id_token"));
    assert_eq!(id_token["sub"], "bob");

    let resp = reqwest::Client::new()
        .get(idp.url("/me"))
        .bearer_auth(str_field(&tokens, "access_token"))
        .send()
        .await
        .expect("userinfo request");
    assert_eq!(resp.status(), 200);
    let me: Value = resp.json().await.expect("userinfo JSON");
    assert_eq!(me["sub"], "bob");
    assert_eq!(me["email"], "bob@example.test");
    assert_eq!(me["email_verified"], true);
    assert!(me["name"].is_string(), "{me}");
}

#[tokio::test]
async fn www_accepts_client_secret_post_as_well_as_basic() {
    let idp = Idp::start().await;
    let flow = CodeFlow {
        auth: ClientAuth::Post,
        ..CodeFlow::www("openid offline_access read")
    };
    let tokens = idp::code_flow(&idp.base_url, &flow).await;
    let rt = str_field(&tokens, "refresh_token");

    // Same client, refresh with client_secret_post, then with client_secret_basic.
    let (status, body) = idp::refresh_with(
        &idp.base_url,
        WWW_CLIENT_ID,
        Some(WWW_CLIENT_SECRET),
        ClientAuth::Post,
        rt,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 200, "{body}");

    // A wrong secret is refused either way.
    let (status, body) = idp::refresh(&idp.base_url, WWW_CLIENT_ID, "wrong", rt, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    let (status, body) = idp::refresh_with(
        &idp.base_url,
        WWW_CLIENT_ID,
        Some("wrong"),
        ClientAuth::Post,
        rt,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");

    // Without any secret the confidential client is refused.
    let (status, body) = idp::refresh_with(
        &idp.base_url,
        WWW_CLIENT_ID,
        None,
        ClientAuth::None,
        rt,
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn default_policy_does_not_rotate_confidential_refresh_tokens() {
    let idp = Idp::start().await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    let rt = str_field(&tokens, "refresh_token");

    let (status, first) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(str_field(&first, "refresh_token"), rt, "not rotated");
    assert_ne!(first["access_token"], tokens["access_token"]);
    assert!(first["id_token"].is_string(), "{first}");

    let (status, second) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(str_field(&second, "refresh_token"), rt);
}

#[tokio::test]
async fn refresh_rotates_and_replaying_the_old_token_revokes_the_grant() {
    let idp = Idp::start_with(IdpOptions {
        refresh_rotation: RefreshRotation::Always,
        ..IdpOptions::default()
    })
    .await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    let rt0 = str_field(&tokens, "refresh_token");

    let (status, first) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt0, None).await;
    assert_eq!(status, 200, "{first}");
    let rt1 = str_field(&first, "refresh_token");
    assert_ne!(rt1, rt0, "rotated");
    assert_eq!(
        scopes(&first),
        sorted(&["openid", "offline_access", "read"])
    );
    let at1 = str_field(&first, "access_token");
    assert_eq!(idp::introspect(&idp.base_url, at1).await["active"], true);

    // Narrowing the scope on refresh is allowed.
    let (status, narrowed) = idp::refresh(
        &idp.base_url,
        WWW_CLIENT_ID,
        WWW_CLIENT_SECRET,
        rt1,
        Some("openid"),
    )
    .await;
    assert_eq!(status, 200, "{narrowed}");
    assert_eq!(str_field(&narrowed, "scope"), "openid");
    let rt2 = str_field(&narrowed, "refresh_token");
    assert_ne!(rt2, rt1);

    // Replaying a consumed refresh token fails ...
    let (status, body) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt0, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_description"], "grant request is invalid");

    // ... and revokes the whole grant: the newest refresh token and the access tokens die too.
    let (status, body) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt2, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(idp::introspect(&idp.base_url, at1).await["active"], false);
}

#[tokio::test]
async fn refresh_with_unknown_token_or_wider_scope_fails() {
    let idp = Idp::start().await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    let rt = str_field(&tokens, "refresh_token");

    let (status, body) = idp::refresh(
        &idp.base_url,
        WWW_CLIENT_ID,
        WWW_CLIENT_SECRET,
        "nope",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");

    let (status, body) = idp::refresh(
        &idp.base_url,
        WWW_CLIENT_ID,
        WWW_CLIENT_SECRET,
        rt,
        Some("openid write"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope");

    // A revoked refresh token is refused.
    assert_eq!(
        idp::revoke(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt).await,
        200
    );
    let (status, body) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn client_credentials_works() {
    let idp = Idp::start().await;
    let tokens =
        idp::client_credentials(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, "read").await;
    assert_eq!(str_field(&tokens, "token_type"), "Bearer");
    assert_eq!(str_field(&tokens, "scope"), "read");
    assert!(tokens.get("refresh_token").is_none(), "{tokens}");
    let info = idp::introspect(&idp.base_url, str_field(&tokens, "access_token")).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], WWW_CLIENT_ID);

    // client_secret_post works for this grant too.
    let (status, body) = idp::token_request(
        &idp.base_url,
        WWW_CLIENT_ID,
        Some(WWW_CLIENT_SECRET),
        ClientAuth::Post,
        &[("grant_type", "client_credentials"), ("scope", "write")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(str_field(&body, "scope"), "write");
}

#[tokio::test]
async fn grant_counter_counts_token_requests_by_grant_type() {
    let idp = Idp::start().await;
    assert!(idp.grant_counts().await.is_empty());

    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    let rt = str_field(&tokens, "refresh_token");
    for _ in 0..2 {
        let (status, body) =
            idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
        assert_eq!(status, 200, "{body}");
    }
    // Errors count too.
    let (status, _) = idp::refresh(
        &idp.base_url,
        WWW_CLIENT_ID,
        WWW_CLIENT_SECRET,
        "bogus",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = idp::refresh(&idp.base_url, WWW_CLIENT_ID, "wrong", rt, None).await;
    assert_eq!(status, 401);
    idp::client_credentials(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, "read").await;

    let counts = idp.grant_counts().await;
    assert_eq!(counts.get("authorization_code"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("refresh_token"), Some(&4), "{counts:?}");
    assert_eq!(counts.get("client_credentials"), Some(&1), "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(idp.grant_count("refresh_token").await, 4);

    // A request without grant_type is counted as "unknown".
    let (status, body) = idp::token_request(
        &idp.base_url,
        WWW_CLIENT_ID,
        Some(WWW_CLIENT_SECRET),
        ClientAuth::Basic,
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(idp.grant_count("unknown").await, 1);

    idp.reset_grant_counts().await;
    assert!(idp.grant_counts().await.is_empty());
    let (status, _) = idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 200);
    assert_eq!(idp.grant_count("refresh_token").await, 1);
    assert_eq!(idp.grant_count("authorization_code").await, 0);
}

#[tokio::test]
async fn jwt_access_tokens_mode() {
    let idp = Idp::start_with(IdpOptions {
        jwt_access_tokens: true,
        ..IdpOptions::default()
    })
    .await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::www("openid offline_access read")).await;
    let at = str_field(&tokens, "access_token");
    assert_eq!(at.split('.').count(), 3, "not a JWT: {at}");
    let header = idp::jwt_header(at);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    let claims = idp::jwt_claims(at);
    assert_eq!(claims["iss"], idp.issuer.as_str());
    assert_eq!(claims["aud"], JWT_API_RESOURCE);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], WWW_CLIENT_ID);
    assert_eq!(claims["scope"], "read", "{claims}");
    // In this mode the token response's scope is the access token's: resource-server scopes only.
    assert_eq!(str_field(&tokens, "scope"), "read", "{tokens}");
    assert!(tokens["id_token"].is_string(), "{tokens}");
    let rt = str_field(&tokens, "refresh_token");

    let (status, refreshed) =
        idp::refresh(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, rt, None).await;
    assert_eq!(status, 200, "{refreshed}");
    let at2 = str_field(&refreshed, "access_token");
    assert_ne!(at2, at);
    assert_eq!(idp::jwt_header(at2)["typ"], "at+jwt");
    assert_eq!(idp::jwt_claims(at2)["aud"], JWT_API_RESOURCE);
    assert_eq!(idp::jwt_claims(at2)["sub"], "alice");
    assert_eq!(
        str_field(&refreshed, "refresh_token"),
        rt,
        "default policy: not rotated"
    );

    let cc =
        idp::client_credentials(&idp.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, "write").await;
    let cc_at = str_field(&cc, "access_token");
    assert_eq!(idp::jwt_header(cc_at)["typ"], "at+jwt");
    assert_eq!(idp::jwt_claims(cc_at)["scope"], "write");
}

#[tokio::test]
async fn public_client_code_flow_and_default_rotation() {
    let idp = Idp::start().await;
    let tokens = idp::code_flow(&idp.base_url, &CodeFlow::spa("openid offline_access read")).await;
    let rt0 = str_field(&tokens, "refresh_token");
    assert!(tokens["access_token"].is_string());
    assert_eq!(
        idp::jwt_claims(str_field(&tokens, "id_token"))["aud"],
        SPA_CLIENT_ID
    );

    // oidc-provider's default rotates public clients' refresh tokens on every use.
    let (status, first) = idp::refresh_with(
        &idp.base_url,
        SPA_CLIENT_ID,
        None,
        ClientAuth::None,
        rt0,
        None,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let rt1 = str_field(&first, "refresh_token");
    assert_ne!(rt1, rt0);

    let (status, body) = idp::refresh_with(
        &idp.base_url,
        SPA_CLIENT_ID,
        None,
        ClientAuth::None,
        rt0,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn issuer_option_is_used_for_every_absolute_url() {
    let issuer = "http://127.0.0.1:9";
    let idp = Idp::start_with(IdpOptions {
        issuer: Some(issuer.to_owned()),
        ..IdpOptions::default()
    })
    .await;
    assert_eq!(idp.issuer, issuer);
    assert_ne!(idp.base_url, issuer);

    let doc = idp::discovery(&idp.base_url).await;
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}/auth"));
    assert_eq!(doc["jwks_uri"], format!("{issuer}/jwks"));

    // The dev login form posts to the issuer's host, even when the page is fetched directly.
    let (_verifier, challenge) = idp::pkce_pair();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    let resp = client
        .get(idp.url("/auth"))
        .query(&[
            ("client_id", WWW_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", idp::REDIRECT_URI),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .expect("GET /auth");
    assert_eq!(resp.status(), 303);
    let location = resp
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .expect("ASCII Location")
        .to_owned();
    assert!(location.starts_with("/interaction/"), "{location}");
    let cookie: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().expect("ASCII cookie");
            v.split(';').next().expect("cookie pair").to_owned()
        })
        .collect();
    let page = client
        .get(idp.url(&location))
        .header("cookie", cookie.join("; "))
        .send()
        .await
        .expect("GET the login page")
        .text()
        .await
        .expect("login page body");
    assert!(
        page.contains(&format!("action=\"{issuer}/interaction/")),
        "{page}"
    );
}

/// A transparent TCP forwarder standing in for the proxy: the IdP's issuer is the forwarder's URL
/// and the whole code flow, refresh included, goes through it.
#[tokio::test]
async fn code_flow_through_a_forwarder_whose_url_is_the_issuer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the forwarder");
    let front = format!(
        "http://{}",
        listener.local_addr().expect("forwarder address")
    );
    let idp = Idp::start_with(IdpOptions {
        issuer: Some(front.clone()),
        ..IdpOptions::default()
    })
    .await;
    let target = format!("127.0.0.1:{}", idp.port);
    let forwarder = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });

    assert_eq!(
        idp::discovery(&front).await["token_endpoint"],
        format!("{front}/token")
    );
    let tokens = idp::code_flow(&front, &CodeFlow::www("openid offline_access read")).await;
    let id_token = idp::jwt_claims(str_field(&tokens, "id_token"));
    assert_eq!(id_token["iss"], front.as_str());
    let (status, body) = idp::refresh(
        &front,
        WWW_CLIENT_ID,
        WWW_CLIENT_SECRET,
        str_field(&tokens, "refresh_token"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let counts = idp.grant_counts().await;
    assert_eq!(counts.get("authorization_code"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("refresh_token"), Some(&1), "{counts:?}");
    forwarder.abort();
}

#[tokio::test]
async fn idps_run_in_parallel_and_are_independent() {
    let (a, b) = tokio::join!(Idp::start(), Idp::start());
    assert_ne!(a.port, b.port);
    idp::client_credentials(&a.base_url, WWW_CLIENT_ID, WWW_CLIENT_SECRET, "read").await;
    assert_eq!(a.grant_count("client_credentials").await, 1);
    assert_eq!(b.grant_count("client_credentials").await, 0);
}

#[tokio::test]
async fn dropping_the_idp_kills_it() {
    let idp = Idp::start().await;
    let url = idp.url("/__test/grants");
    drop(idp);
    let mut refused = false;
    for _ in 0..50 {
        if reqwest::Client::new().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "IdP still answering at {url} after drop");
}
