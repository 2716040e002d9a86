//! End to end with the real IdP (oidc-provider) behind the proxy: the client talks only to the
//! proxy, whose URL is the IdP's issuer, as in a real deployment.

use crate::support::idp::{self, ClientAuth, CodeFlow, Idp, IdpOptions};
use crate::support::proxy::{TestProxy, config};

/// Binds the proxy's port first, so the IdP can be started with the proxy's URL as its issuer.
async fn idp_behind_proxy(extra: &str) -> (Idp, TestProxy) {
    let (listener, idp) = Idp::start_behind_proxy(IdpOptions::default()).await;
    let proxy = TestProxy::start_on(listener, &config(&idp.base_url, extra)).await;
    proxy.wait_ready().await;
    (idp, proxy)
}

#[tokio::test]
async fn the_authorization_code_flow_runs_through_the_proxy() {
    let (idp, proxy) = idp_behind_proxy("").await;

    let discovery = idp::discovery(&proxy.url).await;
    assert_eq!(discovery["issuer"], proxy.url.as_str());

    let tokens = idp::code_flow(&proxy.url, &CodeFlow::www("openid offline_access read")).await;
    for field in ["access_token", "refresh_token", "id_token"] {
        assert!(tokens[field].is_string(), "{field} missing: {tokens}");
    }
    let claims = idp::jwt_claims(idp::str_field(&tokens, "id_token"));
    assert_eq!(claims["iss"], proxy.url.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(idp.grant_count("authorization_code").await, 1);

    // The refresh grant reaches the IdP through the proxy (its own handling comes later).
    let rt = idp::str_field(&tokens, "refresh_token");
    let (status, refreshed) = idp::refresh(
        &proxy.url,
        idp::WWW_CLIENT_ID,
        idp::WWW_CLIENT_SECRET,
        rt,
        None,
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(idp.grant_count("refresh_token").await, 1);
}

#[tokio::test]
async fn client_secret_post_and_public_clients_work_through_the_proxy() {
    let (idp, proxy) = idp_behind_proxy("").await;
    let mut flow = CodeFlow::www("read offline_access");
    flow.auth = ClientAuth::Post;
    let tokens = idp::code_flow(&proxy.url, &flow).await;
    assert!(tokens["refresh_token"].is_string(), "{tokens}");

    let tokens = idp::code_flow(&proxy.url, &CodeFlow::spa("openid offline_access")).await;
    assert!(tokens["refresh_token"].is_string(), "{tokens}");

    let cc = idp::client_credentials(
        &proxy.url,
        idp::WWW_CLIENT_ID,
        idp::WWW_CLIENT_SECRET,
        "read",
    )
    .await;
    assert!(cc["access_token"].is_string(), "{cc}");
    let counts = idp.grant_counts().await;
    assert_eq!(counts.get("authorization_code"), Some(&2));
    assert_eq!(counts.get("client_credentials"), Some(&1));
}

#[tokio::test]
async fn the_idps_own_errors_pass_through_unchanged() {
    let (_idp, proxy) = idp_behind_proxy("").await;
    let (status, body) = idp::token_request(
        &proxy.url,
        idp::WWW_CLIENT_ID,
        Some("wrong"),
        ClientAuth::Basic,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
}
