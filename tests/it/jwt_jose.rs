//! The proxy's JWTs and JWKS, checked by an independent JOSE implementation (Node's `jose`):
//! for every signing algorithm, a token signed by [`Signer`] verifies against the JWK Set that
//! [`jwks`] publishes, fetched over HTTP as a relying party would; forged or foreign tokens do
//! not.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::jose::verify_with_node_jose;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use refresh_proxy::config::SigningAlg;
use refresh_proxy::internal::mint::jwt::{Signer, TYP_AT_JWT, jwks, merge_jwks};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const ISSUER: &str = "https://idp.example.test";

/// A JWKS endpoint: answers every request on 127.0.0.1 with `body` as JSON. Aborted on drop.
struct JwksServer {
    url: String,
    task: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_jwks(body: Vec<u8>) -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                // Read the request head (jose sends a bodiless GET), then answer and close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    JwksServer { url, task }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// RFC 9068 §2.2 claims of a JWT access token.
fn access_token_claims() -> Value {
    let iat = now();
    json!({
        "iss": ISSUER,
        "sub": "alice",
        "aud": "urn:refresh-proxy:test-api",
        "client_id": "www",
        "scope": "openid offline_access api:read",
        "iat": iat,
        "exp": iat + 300,
        "jti": "3f9c2b1e-jose-test",
    })
}

async fn token_verifies_with_node_jose(alg: SigningAlg) {
    let signer = Signer::generate(alg);
    let server = serve_jwks(serde_json::to_vec(&jwks(&[&signer])).expect("serialise")).await;
    let claims = access_token_claims();
    let token = signer.sign(TYP_AT_JWT, &claims);

    let verified = verify_with_node_jose(&server.url, &token, Some(ISSUER))
        .await
        .unwrap_or_else(|e| panic!("{alg:?} token rejected by jose: {e}"));
    assert_eq!(
        verified["header"],
        json!({ "alg": signer.alg_name(), "typ": "at+jwt", "kid": signer.kid() })
    );
    assert_eq!(verified["payload"], claims);
    // jose's own RFC 7638 thumbprint of the key it used is our kid.
    assert_eq!(verified["thumbprint"], signer.kid());

    // The issuer is checked when given.
    let err = verify_with_node_jose(&server.url, &token, Some("https://other.example"))
        .await
        .expect_err("wrong issuer");
    assert!(err.contains("ERR_JWT_CLAIM_VALIDATION_FAILED"), "{err}");
}

#[tokio::test]
async fn es256_token_verifies_with_node_jose() {
    token_verifies_with_node_jose(SigningAlg::ES256).await;
}

#[tokio::test]
async fn eddsa_token_verifies_with_node_jose() {
    token_verifies_with_node_jose(SigningAlg::EdDSA).await;
}

#[tokio::test]
async fn rs256_token_verifies_with_node_jose() {
    token_verifies_with_node_jose(SigningAlg::RS256).await;
}

#[tokio::test]
async fn tokens_from_another_key_or_tampered_are_rejected() {
    let published = Signer::generate(SigningAlg::ES256);
    let other = Signer::generate(SigningAlg::ES256);
    let server = serve_jwks(serde_json::to_vec(&jwks(&[&published])).expect("serialise")).await;
    let claims = access_token_claims();

    // Signed by a key that is not in the JWKS: no key matches its kid.
    let foreign = other.sign(TYP_AT_JWT, &claims);
    let err = verify_with_node_jose(&server.url, &foreign, None)
        .await
        .expect_err("foreign key");
    assert!(err.contains("ERR_JWKS_NO_MATCHING_KEY"), "{err}");

    // The other key's signature under the published key's header: the signature check fails.
    let genuine = published.sign(TYP_AT_JWT, &claims);
    let (signing_input, _) = genuine.rsplit_once('.').expect("three parts");
    let (_, other_sig) = foreign.rsplit_once('.').expect("three parts");
    let spliced = format!("{signing_input}.{other_sig}");
    let err = verify_with_node_jose(&server.url, &spliced, None)
        .await
        .expect_err("wrong signature");
    assert!(
        err.contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        "{err}"
    );

    // A changed payload under the genuine signature fails the same way.
    let parts: Vec<&str> = genuine.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("mallory");
    let forged_payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).expect("serialise"));
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let err = verify_with_node_jose(&server.url, &forged, None)
        .await
        .expect_err("forged payload");
    assert!(
        err.contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        "{err}"
    );

    // The genuine token still verifies (the failures above are not a broken rig).
    verify_with_node_jose(&server.url, &genuine, None)
        .await
        .expect("genuine token verifies");
}

#[tokio::test]
async fn merged_jwks_verifies_tokens_of_the_idp_and_of_the_proxy() {
    // The IdP's key set, with a member the proxy does not know, merged with ours.
    let idp = Signer::generate(SigningAlg::RS256);
    let proxy = Signer::generate(SigningAlg::EdDSA);
    let mut upstream = jwks(&[&idp]);
    upstream["x-idp-extension"] = json!("kept");
    let upstream = serde_json::to_vec(&upstream).expect("serialise");
    let merged = merge_jwks(&upstream, &[proxy.public_jwk()]).expect("upstream is a JWKS");
    let merged_json: Value = serde_json::from_slice(&merged).expect("JSON");
    assert_eq!(merged_json["x-idp-extension"], "kept");
    assert_eq!(merged_json["keys"].as_array().map(Vec::len), Some(2));

    let server = serve_jwks(merged).await;
    for signer in [&idp, &proxy] {
        let token = signer.sign(TYP_AT_JWT, &access_token_claims());
        let verified = verify_with_node_jose(&server.url, &token, Some(ISSUER))
            .await
            .unwrap_or_else(|e| panic!("{:?} token rejected: {e}", signer.alg()));
        assert_eq!(verified["header"]["kid"], signer.kid());
    }
}
