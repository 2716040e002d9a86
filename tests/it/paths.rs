//! Request paths as the upstream routes them: every spelling of the token, revocation or
//! introspection path that a lenient server would route to that endpoint is refused by the
//! proxy, so nothing reaches those endpoints of the IdP past the proxy's rules (docs/paths.md).
//!
//! The requests are written byte for byte on raw sockets: HTTP client libraries normalise
//! paths (dot segments) before sending them, and an attacker's client does not.

use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::proxy::TestProxy;
use crate::support::raw::{host, raw_post};
use serde_json::Value;

/// Spellings of `/token` (oidc-provider's token path) that some server routes to it.
const TOKEN_VARIANTS: &[&str] = &[
    "/token/",
    "/TOKEN",
    "/Token",
    "//token",
    "/token//",
    "/./token",
    "/x/../token",
    "/../token",
    "/%2e/token",
    "/%2E%2E/token",
    "/%74oken",
    "/token%2F",
    "/%2Ftoken",
    "/x%2F..%2Ftoken",
    "/%252Ftoken",
    "/token;jsessionid=1",
    "/token%00",
    "/token/.",
    "/token%3Bx",
];

fn json(path: &str, body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// A code exchange's form (the code may be bogus).
fn code_form(code: &str, verifier: &str) -> String {
    format!(
        "grant_type=authorization_code&code={code}&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcallback\
         &code_verifier={verifier}"
    )
}

fn basic() -> (&'static str, String) {
    (
        "Authorization",
        idp::basic_auth_header(WWW_CLIENT_ID, WWW_CLIENT_SECRET),
    )
}

/// What oidc-provider itself does with each spelling (README, "Request paths"): it ignores
/// case and a trailing slash, and answers 404 to every other variant. Pins the table.
#[tokio::test]
async fn the_real_idp_ignores_case_and_a_trailing_slash() {
    let idp = Idp::start().await;
    let addr = host(&idp.base_url);
    let (_, auth) = basic();
    let form = code_form("bogus", "v".repeat(43).as_str());
    let mut routed = Vec::new();
    for path in TOKEN_VARIANTS {
        let (status, body) = raw_post(addr, path, &[("Authorization", &auth)], &form).await;
        let body = json(path, &body);
        match (status, body["error"].as_str()) {
            (400, Some("invalid_grant")) => routed.push(*path),
            (404, Some("invalid_request")) => {}
            other => panic!("{path}: unexpected answer {other:?}: {body}"),
        }
    }
    assert_eq!(routed, ["/token/", "/TOKEN", "/Token"]);
}

async fn idp_behind_proxy() -> (Idp, TestProxy) {
    let (listener, idp) = Idp::start_behind_proxy(IdpOptions::default()).await;
    let text = format!(
        "[tokens]\nrefresh_token_key = \"{key}\"\n\
         [clients.www]\nsecret = \"{secret}\"\n\
         [clients.rs]\nsecret = \"{rs}\"\nmay_introspect = true\n\
         [upstream]\nurl = \"{up}\"\n",
        key = crate::support::TEST_REFRESH_KEY,
        secret = WWW_CLIENT_SECRET,
        rs = idp::RS_CLIENT_SECRET,
        up = idp.base_url,
    );
    let proxy = TestProxy::start_on(listener, &text).await;
    proxy.wait_ready().await;
    (idp, proxy)
}

/// The finding: a code exchange sent to `/token/` or `/TOKEN` reached the IdP's token
/// endpoint, nothing was captured and the client kept the IdP's refresh token. Now every
/// variant is refused before the IdP sees it: the one code stays unused through all of them
/// and is then redeemed at the exact path, where the proxy captures it.
#[tokio::test]
async fn no_variant_of_the_token_path_reaches_the_idp() {
    let (idp, proxy) = idp_behind_proxy().await;
    let (verifier, code) =
        idp::authorize(&proxy.url, &CodeFlow::www("openid offline_access read")).await;
    let form = code_form(&code, &verifier);
    let (_, auth) = basic();
    let addr = host(&proxy.url);
    for path in TOKEN_VARIANTS {
        let (status, body) = raw_post(addr, path, &[("Authorization", &auth)], &form).await;
        let body = json(path, &body);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
        assert!(body.get("refresh_token").is_none(), "{path}: {body}");
    }
    assert_eq!(idp.grant_count("authorization_code").await, 0);

    let (status, body) = raw_post(addr, "/token", &[("Authorization", &auth)], &form).await;
    let body = json("/token", &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.grant_count("authorization_code").await, 1);
    let refresh_token = idp::str_field(&body, "refresh_token");
    assert_eq!(
        refresh_token.split('.').count(),
        3,
        "the proxy's own refresh token: {refresh_token}"
    );
}

/// Revocation and introspection: a variant is refused, so the proxy's token cannot be sent
/// to the IdP's endpoints behind the proxy's back (nor a token of the IdP past its rules).
#[tokio::test]
async fn variants_of_revocation_and_introspection_are_refused() {
    let (idp, proxy) = idp_behind_proxy().await;
    let tokens = idp::code_flow(&proxy.url, &CodeFlow::www("openid offline_access read")).await;
    let refresh_token = idp::str_field(&tokens, "refresh_token");
    let addr = host(&proxy.url);
    let (_, www) = basic();
    let rs = idp::basic_auth_header(idp::RS_CLIENT_ID, idp::RS_CLIENT_SECRET);
    let form = format!("token={refresh_token}");
    for (path, auth) in [
        ("/token/revocation/", &www),
        ("/TOKEN/REVOCATION", &www),
        ("/token//revocation", &www),
        ("/token/x/../revocation", &www),
        ("/token/introspection/", &rs),
        ("/token/Introspection", &rs),
        ("/token%2Fintrospection", &rs),
    ] {
        let (status, body) = raw_post(addr, path, &[("Authorization", auth)], &form).await;
        let body = json(path, &body);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }
    let active = idp::introspect(&proxy.url, refresh_token).await;
    assert_eq!(active["active"], true, "{active}");
    drop(idp);
}

/// RFC 6749 §3.2: token request parameters travel in the body. One that names an OAuth
/// parameter in the query is refused (an upstream that merges the query into the request
/// would otherwise act on parameters the proxy never read); other queries pass.
#[tokio::test]
async fn oauth_parameters_in_the_query_are_refused() {
    let (idp, proxy) = idp_behind_proxy().await;
    let addr = host(&proxy.url);
    let (_, auth) = basic();
    for query in [
        "grant_type=authorization_code",
        "refresh_token=x",
        "code=x",
        "client_id=www",
        "scope=admin",
        "gr%61nt_type=x",
        "a=1&token=x",
    ] {
        let path = format!("/token?{query}");
        let (status, body) = raw_post(
            addr,
            &path,
            &[("Authorization", &auth)],
            "grant_type=client_credentials",
        )
        .await;
        let body = json(&path, &body);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }
    assert_eq!(idp.grant_count("client_credentials").await, 0);
    let (status, body) = raw_post(
        addr,
        "/token?tenant=blue",
        &[("Authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.grant_count("client_credentials").await, 1);
}
