//! OpenID Connect discovery: where the upstream's endpoints are.
//!
//! At start-up the proxy reads `<upstream.url>/.well-known/openid-configuration` (OIDC
//! Discovery §4) and takes the token, revocation and introspection endpoints, the JWKS URI, the
//! issuer and the ID-token signing algorithms from it. Only the *paths* of the endpoint URLs are
//! kept: clients reach those paths through the proxy. A path or issuer set in config wins over
//! the document. With `discovery = false` the config alone says where things are.
//!
//! Discovery retries with exponential backoff (100 ms doubling to 5 s) until it succeeds;
//! until then `/readyz` answers 503 and every request is forwarded untouched.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use crate::classify::Endpoints;
use crate::config::UpstreamConfig;
use crate::proxy::{BoxError, Forward};

/// The discovery document path, appended to the upstream URL.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// Discovery documents larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0}")]
    Forward(#[from] crate::proxy::ForwardError),
    #[error("the discovery document answered HTTP {0}")]
    Status(StatusCode),
    #[error("the discovery document could not be read: {0}")]
    Body(BoxError),
    #[error("the discovery document is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the discovery document has no {0}")]
    Missing(&'static str),
    #[error("the discovery document's {0} is not a URL")]
    BadUrl(&'static str),
}

/// The fields of a discovery document the proxy uses.
#[derive(Debug, Default, Deserialize)]
pub struct Document {
    pub issuer: Option<String>,
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
}

/// The endpoints config alone gives (no discovery).
pub fn from_config(config: &UpstreamConfig) -> Endpoints {
    Endpoints {
        issuer: config.issuer.clone(),
        token_path: config.token_path.clone(),
        revocation_path: config.revocation_path.clone(),
        introspection_path: config.introspection_path.clone(),
        jwks_path: config.jwks_path.clone(),
        id_token_signing_algs: Vec::new(),
    }
}

/// Merges a discovery document under the config's overrides. Pure.
pub fn merge(config: &UpstreamConfig, doc: Document) -> Result<Endpoints, DiscoveryError> {
    fn path(field: &'static str, url: Option<String>) -> Result<Option<String>, DiscoveryError> {
        url.map(|u| {
            u.parse::<Uri>()
                .map(|uri| uri.path().to_owned())
                .map_err(|_| DiscoveryError::BadUrl(field))
        })
        .transpose()
    }
    let token = match &config.token_path {
        Some(p) => Some(p.clone()),
        None => Some(
            path("token_endpoint", doc.token_endpoint)?
                .ok_or(DiscoveryError::Missing("token_endpoint"))?,
        ),
    };
    Ok(Endpoints {
        issuer: config.issuer.clone().or(doc.issuer),
        token_path: token,
        revocation_path: match &config.revocation_path {
            Some(p) => Some(p.clone()),
            None => path("revocation_endpoint", doc.revocation_endpoint)?,
        },
        introspection_path: match &config.introspection_path {
            Some(p) => Some(p.clone()),
            None => path("introspection_endpoint", doc.introspection_endpoint)?,
        },
        jwks_path: match &config.jwks_path {
            Some(p) => Some(p.clone()),
            None => path("jwks_uri", doc.jwks_uri)?,
        },
        id_token_signing_algs: doc.id_token_signing_alg_values_supported,
    })
}

/// Fetches and merges the discovery document once.
pub async fn discover(
    forward: &Forward,
    config: &UpstreamConfig,
) -> Result<Endpoints, DiscoveryError> {
    let base_path = config
        .url
        .parse::<Uri>()
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let path = format!("{base_path}{WELL_KNOWN}");
    let uri = forward.uri(
        path.parse()
            .map_err(|_| DiscoveryError::BadUrl("upstream.url"))?,
    );
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a GET with a valid URI is a valid request");
    let res = forward.send(req).await?;
    if res.status() != StatusCode::OK {
        return Err(DiscoveryError::Status(res.status()));
    }
    let body = Limited::new(res.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(DiscoveryError::Body)?
        .to_bytes();
    let doc: Document = serde_json::from_slice(&body)?;
    merge(config, doc)
}

/// Discovers in the background until it succeeds, then publishes the endpoints and calls
/// `on_ready`. With discovery off, publishes the config's endpoints at once.
pub fn spawn(
    forward: Forward,
    config: UpstreamConfig,
    endpoints: Arc<ArcSwap<Endpoints>>,
    on_ready: impl FnOnce() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !config.discovery {
            endpoints.store(Arc::new(from_config(&config)));
            on_ready();
            return;
        }
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match discover(&forward, &config).await {
                Ok(found) => {
                    tracing::info!(
                        token_path = found.token_path.as_deref().unwrap_or(""),
                        issuer = found.issuer.as_deref().unwrap_or(""),
                        "discovery complete"
                    );
                    endpoints.store(Arc::new(found));
                    on_ready();
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, retry_in_ms = delay.as_millis() as u64, "discovery failed");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> UpstreamConfig {
        let text = format!("[upstream]\nurl = \"http://idp:9090/realms/x\"\n{extra}");
        crate::config::Config::from_toml_str(&text, std::path::Path::new("."), std::iter::empty())
            .expect("valid")
            .upstream
    }

    fn doc() -> Document {
        serde_json::from_str(
            r#"{"issuer":"https://login.example.com/realms/x",
                "token_endpoint":"https://login.example.com/realms/x/protocol/openid-connect/token",
                "revocation_endpoint":"https://login.example.com/realms/x/revoke",
                "jwks_uri":"https://login.example.com/realms/x/certs",
                "id_token_signing_alg_values_supported":["RS256","ES256"],
                "unrelated":true}"#,
        )
        .expect("json")
    }

    #[test]
    fn keeps_paths_of_discovered_endpoints() {
        let e = merge(&config(""), doc()).expect("merge");
        assert_eq!(
            e.issuer.as_deref(),
            Some("https://login.example.com/realms/x")
        );
        assert_eq!(
            e.token_path.as_deref(),
            Some("/realms/x/protocol/openid-connect/token")
        );
        assert_eq!(e.revocation_path.as_deref(), Some("/realms/x/revoke"));
        assert_eq!(e.introspection_path, None);
        assert_eq!(e.jwks_path.as_deref(), Some("/realms/x/certs"));
        assert_eq!(e.id_token_signing_algs, ["RS256", "ES256"]);
    }

    #[test]
    fn config_overrides_win() {
        let e = merge(
            &config("token_path = \"/t\"\nissuer = \"https://proxy.example.com\"\n"),
            doc(),
        )
        .expect("merge");
        assert_eq!(e.token_path.as_deref(), Some("/t"));
        assert_eq!(e.issuer.as_deref(), Some("https://proxy.example.com"));
    }

    #[test]
    fn a_document_without_token_endpoint_is_refused() {
        let err = merge(&config(""), Document::default()).expect_err("missing");
        assert!(matches!(err, DiscoveryError::Missing("token_endpoint")));
    }
}
