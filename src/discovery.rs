//! Discovery: where the upstream's endpoints are.
//!
//! At start-up the proxy reads both metadata documents an authorization server may publish:
//!
//! - OpenID Connect Discovery §4: `<upstream.url>/.well-known/openid-configuration`;
//! - RFC 8414 §3.1 authorization-server metadata: `/.well-known/oauth-authorization-server`
//!   with the upstream URL's path appended (`https://host/realms/x` →
//!   `https://host/.well-known/oauth-authorization-server/realms/x`), else, for servers that
//!   serve it there, `<upstream.url>/.well-known/oauth-authorization-server`.
//!
//! Some IdPs list the revocation and introspection endpoints only in the RFC 8414 document, so
//! each field is taken from config, else the OIDC document, else the RFC 8414 one: the token,
//! revocation and introspection endpoints, the JWKS URI, the issuer and the ID-token signing
//! algorithms. Only the *paths* of the endpoint URLs are kept: clients reach those paths
//! through the proxy. Either document alone is enough. The documents must name the same issuer
//! as each other and as `upstream.issuer` when it is set; otherwise discovery fails (logged as
//! an error) rather than merge them. With `discovery = false` the config alone says where things
//! are.
//!
//! Discovery retries with exponential backoff (100 ms doubling to 5 s) until it succeeds;
//! until then `/readyz` answers 503 and every request is forwarded untouched. Its result is then
//! checked ([`check`]): an endpoint the proxy answers for but cannot locate is a warning, and
//! handled clients without a revocation endpoint stop the proxy unless config declares it
//! absent.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use serde::Deserialize;

use crate::classify::Endpoints;
use crate::config::{RevocationMode, UpstreamConfig};
use crate::conn::BoxError;
use crate::proxy::Forward;

/// The OIDC discovery document path, appended to the upstream URL.
pub const WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// The RFC 8414 metadata well-known path, before the issuer's path (RFC 8414 §3.1).
pub const WELL_KNOWN_AS: &str = "/.well-known/oauth-authorization-server";
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
    #[error(
        "the upstream's metadata documents disagree on the issuer: {first_source} says {first:?}, \
         {second_source} says {second:?}; neither is used"
    )]
    IssuerMismatch {
        first_source: &'static str,
        first: String,
        second_source: &'static str,
        second: String,
    },
    #[error(
        "neither metadata document could be used: {oidc} ({WELL_KNOWN}); {rfc8414} ({WELL_KNOWN_AS})"
    )]
    Neither {
        oidc: Box<DiscoveryError>,
        rfc8414: Box<DiscoveryError>,
    },
}

/// The fields of a metadata document the proxy uses.
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

/// Where a value of the merged endpoints came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    /// The OpenID Connect discovery document.
    Oidc,
    /// The RFC 8414 authorization-server metadata.
    Rfc8414,
    /// Nowhere: not known.
    None,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Oidc => "openid-configuration",
            Source::Rfc8414 => "oauth-authorization-server",
            Source::None => "none",
        }
    }
}

/// Where each endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    pub issuer: Source,
    pub token: Source,
    pub revocation: Source,
    pub introspection: Source,
    pub jwks: Source,
}

/// The merged endpoints and where each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub endpoints: Endpoints,
    pub sources: Sources,
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
        backchannel_logout_path: config.backchannel_logout_path.clone(),
    }
}

fn url_path(field: &'static str, url: Option<&String>) -> Result<Option<String>, DiscoveryError> {
    url.map(|u| {
        u.parse::<Uri>()
            .map(|uri| uri.path().to_owned())
            .map_err(|_| DiscoveryError::BadUrl(field))
    })
    .transpose()
}

/// A document's issuer, which both specifications require: OIDC Discovery §3 and RFC 8414 §2
/// ("issuer REQUIRED").
fn issuer_of(doc: &Document) -> Result<&str, DiscoveryError> {
    doc.issuer
        .as_deref()
        .filter(|i| !i.is_empty())
        .ok_or(DiscoveryError::Missing("issuer"))
}

/// A document the proxy can use: it names its issuer and its endpoint URLs parse.
fn checked(doc: Result<Document, DiscoveryError>) -> Result<Document, DiscoveryError> {
    let d = doc?;
    issuer_of(&d)?;
    for (field, url) in [
        ("token_endpoint", &d.token_endpoint),
        ("revocation_endpoint", &d.revocation_endpoint),
        ("introspection_endpoint", &d.introspection_endpoint),
        ("jwks_uri", &d.jwks_uri),
    ] {
        url_path(field, url.as_ref())?;
    }
    Ok(d)
}

/// Merges whatever documents could be read under the config's overrides. Pure.
///
/// Each document is checked on its own (issuer present, URLs parse); one that fails is left
/// out when the other is usable. Two usable documents must name the same issuer, and each must
/// name `upstream.issuer` when it is set.
pub fn merge_documents(
    config: &UpstreamConfig,
    oidc: Result<Document, DiscoveryError>,
    rfc8414: Result<Document, DiscoveryError>,
) -> Result<Discovered, DiscoveryError> {
    let (oidc, rfc8414) = match (checked(oidc), checked(rfc8414)) {
        (Err(a), Err(b)) => {
            return Err(DiscoveryError::Neither {
                oidc: Box::new(a),
                rfc8414: Box::new(b),
            });
        }
        (a, b) => (a.ok(), b.ok()),
    };
    // RFC 8414 §3.3: "The "issuer" value returned MUST be identical to the authorization
    // server's issuer identifier value [...]. If these values are not identical, the data
    // contained in the response MUST NOT be used." (OIDC Discovery §4.3 says the same.)
    let mut named: Vec<(&'static str, &str)> = Vec::new();
    if let Some(issuer) = &config.issuer {
        named.push(("upstream.issuer", issuer));
    }
    for (source, doc) in [(Source::Oidc, &oidc), (Source::Rfc8414, &rfc8414)] {
        if let Some(doc) = doc {
            named.push((source.label(), issuer_of(doc)?));
        }
    }
    if let Some((first_source, first)) = named.first()
        && let Some((second_source, second)) = named.iter().find(|(_, i)| i != first)
    {
        return Err(DiscoveryError::IssuerMismatch {
            first_source,
            first: (*first).to_owned(),
            second_source,
            second: (*second).to_owned(),
        });
    }

    let docs = [
        (Source::Oidc, oidc.as_ref()),
        (Source::Rfc8414, rfc8414.as_ref()),
    ];
    // Config, else the first document that lists it.
    let pick = |configured: &Option<String>,
                field: &'static str,
                get: fn(&Document) -> Option<&String>|
     -> Result<(Option<String>, Source), DiscoveryError> {
        if let Some(p) = configured {
            return Ok((Some(p.clone()), Source::Config));
        }
        let mut found: Option<(String, Source)> = None;
        for (source, doc) in docs {
            let Some(path) = url_path(field, doc.and_then(get))? else {
                continue;
            };
            match &found {
                None => found = Some((path, source)),
                Some((first, first_source)) if *first != path => tracing::warn!(
                    field,
                    used = %first,
                    used_from = first_source.label(),
                    ignored = %path,
                    ignored_from = source.label(),
                    "the upstream's metadata documents list different endpoints"
                ),
                Some(_) => {}
            }
        }
        Ok(found.map_or((None, Source::None), |(p, s)| (Some(p), s)))
    };
    let (token_path, token) = pick(&config.token_path, "token_endpoint", |d| {
        d.token_endpoint.as_ref()
    })?;
    if token_path.is_none() {
        return Err(DiscoveryError::Missing("token_endpoint"));
    }
    let (revocation_path, revocation) =
        pick(&config.revocation_path, "revocation_endpoint", |d| {
            d.revocation_endpoint.as_ref()
        })?;
    let (introspection_path, introspection) =
        pick(&config.introspection_path, "introspection_endpoint", |d| {
            d.introspection_endpoint.as_ref()
        })?;
    let (jwks_path, jwks) = pick(&config.jwks_path, "jwks_uri", |d| d.jwks_uri.as_ref())?;
    let (issuer, issuer_source) = match (&config.issuer, &oidc, &rfc8414) {
        (Some(i), _, _) => (Some(i.clone()), Source::Config),
        (None, Some(d), _) => (d.issuer.clone(), Source::Oidc),
        (None, None, Some(d)) => (d.issuer.clone(), Source::Rfc8414),
        (None, None, None) => (None, Source::None),
    };
    let id_token_signing_algs = [&oidc, &rfc8414]
        .into_iter()
        .flatten()
        .map(|d| d.id_token_signing_alg_values_supported.clone())
        .find(|algs| !algs.is_empty())
        .unwrap_or_default();
    Ok(Discovered {
        endpoints: Endpoints {
            issuer,
            token_path,
            revocation_path,
            introspection_path,
            jwks_path,
            id_token_signing_algs,
            backchannel_logout_path: config.backchannel_logout_path.clone(),
        },
        sources: Sources {
            issuer: issuer_source,
            token,
            revocation,
            introspection,
            jwks,
        },
    })
}

/// Merges one OIDC discovery document under the config's overrides. Pure.
pub fn merge(config: &UpstreamConfig, doc: Document) -> Result<Endpoints, DiscoveryError> {
    merge_documents(
        config,
        Ok(doc),
        Err(DiscoveryError::Status(StatusCode::NOT_FOUND)),
    )
    .map(|d| d.endpoints)
}

/// GETs one metadata document at `path` on the upstream.
async fn fetch(forward: &Forward, path: &str) -> Result<Document, DiscoveryError> {
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
    Ok(serde_json::from_slice(&body)?)
}

/// The RFC 8414 document: at the §3.1 location, else appended to the upstream URL's path.
async fn fetch_rfc8414(forward: &Forward, base_path: &str) -> Result<Document, DiscoveryError> {
    // RFC 8414 §3.1: "the well-known URI string [...] is inserted [...] between the host
    // component and the path component, if any."
    let first = fetch(forward, &format!("{WELL_KNOWN_AS}{base_path}")).await;
    if first.is_ok() || base_path.is_empty() {
        return first;
    }
    fetch(forward, &format!("{base_path}{WELL_KNOWN_AS}"))
        .await
        .or(first)
}

/// What each document gave, for the log.
#[derive(Debug)]
pub struct Fetched {
    pub discovered: Discovered,
    /// `"ok"` or why the OIDC document was not used.
    pub oidc: String,
    /// `"ok"` or why the RFC 8414 document was not used.
    pub rfc8414: String,
}

/// Fetches both documents and merges them once.
pub async fn discover(
    forward: &Forward,
    config: &UpstreamConfig,
) -> Result<Fetched, DiscoveryError> {
    let base_path = config
        .url
        .parse::<Uri>()
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let oidc_path = format!("{base_path}{WELL_KNOWN}");
    let (oidc, rfc8414) = tokio::join!(
        fetch(forward, &oidc_path),
        fetch_rfc8414(forward, &base_path),
    );
    let (oidc, rfc8414) = (checked(oidc), checked(rfc8414));
    let state = |d: &Result<Document, DiscoveryError>| match d {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    let (oidc_state, rfc8414_state) = (state(&oidc), state(&rfc8414));
    let discovered = merge_documents(config, oidc, rfc8414)?;
    Ok(Fetched {
        discovered,
        oidc: oidc_state,
        rfc8414: rfc8414_state,
    })
}

/// The endpoints the proxy answers for that it cannot locate at the upstream.
pub fn missing(e: &Endpoints) -> Vec<&'static str> {
    [
        ("token", &e.token_path),
        ("revocation", &e.revocation_path),
        ("introspection", &e.introspection_path),
        ("jwks", &e.jwks_path),
    ]
    .into_iter()
    .filter(|(_, p)| p.is_none())
    .map(|(name, _)| name)
    .collect()
}

/// Why the proxy must not serve with these endpoints: handled clients and no revocation path,
/// not declared absent. `None` when it may serve.
pub fn refusal(config: &UpstreamConfig, handled_clients: bool, e: &Endpoints) -> Option<String> {
    (handled_clients && e.revocation_path.is_none() && config.revocation != RevocationMode::Absent)
        .then(|| {
            "the upstream's revocation endpoint is not known (discovery found none and \
             upstream.revocation_path is not set): a handled client's RFC 7009 revocation of a \
             proxy refresh token would be forwarded to the upstream, which answers 200 for a \
             token it does not know, and the token would stay live; set \
             upstream.revocation_path, or declare upstream.revocation = \"absent\""
                .to_owned()
        })
}

/// Checks endpoints as they are published: warns of each endpoint the proxy cannot locate and
/// of a revocation declared absent; `Err` with the reason when the proxy must not serve.
/// Returns the missing endpoints.
pub fn check(
    config: &UpstreamConfig,
    handled_clients: bool,
    e: &Endpoints,
) -> Result<Vec<&'static str>, String> {
    if let Some(why) = refusal(config, handled_clients, e) {
        tracing::error!(key = "upstream.revocation_path", "{why}");
        return Err(why);
    }
    let missing = missing(e);
    for endpoint in &missing {
        let consequence = match *endpoint {
            "revocation" => {
                "clients cannot revoke the proxy's refresh tokens (only the admin API can); \
                 upstream.revocation = \"absent\" declares this"
            }
            "introspection" => {
                "the proxy cannot answer introspection of its tokens at the upstream's path, nor \
                 introspect opaque upstream tokens at capture"
            }
            "jwks" => {
                "the proxy cannot verify the upstream's JWTs at capture nor add its keys to the \
                 upstream's JWKS"
            }
            _ => "refresh grants are forwarded untouched",
        };
        tracing::warn!(
            endpoint,
            "the upstream's {endpoint} endpoint is not known: {consequence}; set \
             upstream.{endpoint}_path if the upstream has one"
        );
    }
    if config.revocation == RevocationMode::Absent {
        match &e.revocation_path {
            None if handled_clients => tracing::warn!(
                "upstream.revocation = \"absent\": client revocation of the proxy's refresh tokens \
                 is impossible; they end by expiry, reuse detection or the admin API"
            ),
            None => {}
            Some(path) => tracing::warn!(
                path = %path,
                "upstream.revocation = \"absent\" but discovery found a revocation endpoint; the \
                 proxy answers revocations of its tokens there"
            ),
        }
    }
    Ok(missing)
}

/// Discovers in the background until it succeeds, then publishes the endpoints and calls
/// `on_ready` with them. With discovery off, publishes the config's endpoints at once.
pub fn spawn(
    forward: Forward,
    config: UpstreamConfig,
    endpoints: Arc<ArcSwap<Endpoints>>,
    on_ready: impl FnOnce(&Endpoints) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !config.discovery {
            let found = from_config(&config);
            endpoints.store(Arc::new(found.clone()));
            on_ready(&found);
            return;
        }
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match discover(&forward, &config).await {
                Ok(Fetched {
                    discovered:
                        Discovered {
                            endpoints: found,
                            sources,
                        },
                    oidc,
                    rfc8414,
                }) => {
                    let path = |p: &Option<String>| p.as_deref().unwrap_or("").to_owned();
                    tracing::info!(
                        issuer = found.issuer.as_deref().unwrap_or(""),
                        issuer_from = sources.issuer.label(),
                        token_path = path(&found.token_path),
                        token_from = sources.token.label(),
                        revocation_path = path(&found.revocation_path),
                        revocation_from = sources.revocation.label(),
                        introspection_path = path(&found.introspection_path),
                        introspection_from = sources.introspection.label(),
                        jwks_path = path(&found.jwks_path),
                        jwks_from = sources.jwks.label(),
                        openid_configuration = %oidc,
                        oauth_authorization_server = %rfc8414,
                        "discovery complete"
                    );
                    endpoints.store(Arc::new(found.clone()));
                    on_ready(&found);
                    return;
                }
                Err(err @ DiscoveryError::IssuerMismatch { .. }) => {
                    tracing::error!(error = %err, attempt, retry_in_ms = delay.as_millis() as u64, "discovery failed");
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
            &config("token_path = \"/t\"\nissuer = \"https://login.example.com/realms/x\"\n"),
            doc(),
        )
        .expect("merge");
        assert_eq!(e.token_path.as_deref(), Some("/t"));
        assert_eq!(
            e.issuer.as_deref(),
            Some("https://login.example.com/realms/x")
        );
    }

    fn json(v: serde_json::Value) -> Result<Document, DiscoveryError> {
        Ok(serde_json::from_value(v).expect("document"))
    }

    const ISS: &str = "https://login.example.com/realms/x";

    /// An OIDC document without revocation or introspection endpoints, as some IdPs publish.
    fn oidc_without_revocation() -> Result<Document, DiscoveryError> {
        json(serde_json::json!({
            "issuer": ISS,
            "token_endpoint": format!("{ISS}/token"),
            "jwks_uri": format!("{ISS}/jwks"),
            "id_token_signing_alg_values_supported": ["RS256"],
        }))
    }

    fn rfc8414_with_revocation() -> Result<Document, DiscoveryError> {
        json(serde_json::json!({
            "issuer": ISS,
            "token_endpoint": format!("{ISS}/token"),
            "revocation_endpoint": format!("{ISS}/revoke"),
            "introspection_endpoint": format!("{ISS}/introspect"),
        }))
    }

    fn not_found() -> Result<Document, DiscoveryError> {
        Err(DiscoveryError::Status(StatusCode::NOT_FOUND))
    }

    /// Issue 19: the revocation and introspection endpoints listed only in RFC 8414 metadata
    /// are found, and each value says where it came from.
    #[test]
    fn rfc8414_metadata_fills_what_oidc_discovery_lacks() {
        let d = merge_documents(
            &config(""),
            oidc_without_revocation(),
            rfc8414_with_revocation(),
        )
        .expect("merge");
        assert_eq!(
            d.endpoints.revocation_path.as_deref(),
            Some("/realms/x/revoke")
        );
        assert_eq!(
            d.endpoints.introspection_path.as_deref(),
            Some("/realms/x/introspect")
        );
        assert_eq!(d.endpoints.token_path.as_deref(), Some("/realms/x/token"));
        assert_eq!(d.endpoints.jwks_path.as_deref(), Some("/realms/x/jwks"));
        assert_eq!(d.endpoints.id_token_signing_algs, ["RS256"]);
        assert_eq!(d.sources.revocation, Source::Rfc8414);
        assert_eq!(d.sources.introspection, Source::Rfc8414);
        assert_eq!(d.sources.token, Source::Oidc);
        assert_eq!(d.sources.jwks, Source::Oidc);
        assert_eq!(d.sources.issuer, Source::Oidc);

        let d = merge_documents(
            &config("revocation_path = \"/mine\"\n"),
            oidc_without_revocation(),
            rfc8414_with_revocation(),
        )
        .expect("merge");
        assert_eq!(d.endpoints.revocation_path.as_deref(), Some("/mine"));
        assert_eq!(d.sources.revocation, Source::Config);
    }

    #[test]
    fn either_document_alone_is_enough() {
        let d = merge_documents(&config(""), not_found(), rfc8414_with_revocation()).expect("8414");
        assert_eq!(d.endpoints.issuer.as_deref(), Some(ISS));
        assert_eq!(d.sources.issuer, Source::Rfc8414);
        assert_eq!(d.endpoints.jwks_path, None);
        assert_eq!(d.sources.jwks, Source::None);
        let d = merge_documents(&config(""), oidc_without_revocation(), not_found()).expect("oidc");
        assert_eq!(d.endpoints.revocation_path, None);
        assert_eq!(d.sources.revocation, Source::None);
        let err = merge_documents(&config(""), not_found(), not_found()).expect_err("neither");
        assert!(matches!(err, DiscoveryError::Neither { .. }), "{err}");
        assert!(err.to_string().contains("HTTP 404"), "{err}");
    }

    /// RFC 8414 §3.3: documents naming another issuer are not merged.
    #[test]
    fn documents_naming_different_issuers_are_refused() {
        let other = json(serde_json::json!({
            "issuer": "https://evil.example.com",
            "token_endpoint": "https://evil.example.com/token",
            "revocation_endpoint": "https://evil.example.com/revoke",
        }));
        let err = merge_documents(&config(""), oidc_without_revocation(), other).expect_err("mix");
        assert!(
            matches!(err, DiscoveryError::IssuerMismatch { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("openid-configuration") && msg.contains("evil"),
            "{msg}"
        );

        let err = merge_documents(
            &config("issuer = \"https://proxy.example.com\"\n"),
            not_found(),
            rfc8414_with_revocation(),
        )
        .expect_err("config issuer");
        assert!(err.to_string().contains("upstream.issuer"), "{err}");
    }

    #[test]
    fn unusable_documents_are_left_out_and_never_panic() {
        // No issuer (REQUIRED in both specifications), or an endpoint that is not a URL.
        for bad in [
            serde_json::json!({"token_endpoint": "https://x/token", "revocation_endpoint": "https://x/r"}),
            serde_json::json!({"issuer": "", "token_endpoint": "https://x/token"}),
            serde_json::json!({"issuer": ISS, "token_endpoint": "https://x/token", "revocation_endpoint": "http://[::1"}),
        ] {
            let d = merge_documents(&config(""), oidc_without_revocation(), json(bad))
                .expect("the good one");
            assert_eq!(d.endpoints.revocation_path, None);
        }
        // Wrong JSON types are an error of that document, not a panic.
        for text in [
            r#"{"issuer": 7}"#,
            "[]",
            "null",
            r#"{"revocation_endpoint": ["x"]}"#,
        ] {
            let doc = serde_json::from_str::<Document>(text).map_err(DiscoveryError::from);
            assert!(doc.is_err(), "{text}");
            merge_documents(&config(""), doc, not_found()).expect_err(text);
        }
    }

    #[test]
    fn missing_endpoints_and_refusal() {
        let full = merge(&config(""), doc()).expect("merge");
        assert_eq!(missing(&full), ["introspection"]);
        assert_eq!(refusal(&config(""), true, &full), None);
        let none = Endpoints {
            token_path: Some("/t".into()),
            ..Endpoints::default()
        };
        assert_eq!(missing(&none), ["revocation", "introspection", "jwks"]);
        let why = refusal(&config(""), true, &none).expect("refused");
        assert!(why.contains("upstream.revocation_path"), "{why}");
        assert!(why.contains("upstream.revocation = \"absent\""), "{why}");
        assert_eq!(refusal(&config(""), false, &none), None);
        assert_eq!(
            refusal(&config("revocation = \"absent\"\n"), true, &none),
            None
        );
        assert!(check(&config(""), true, &none).is_err());
        assert_eq!(
            check(&config("revocation = \"absent\"\n"), true, &none),
            Ok(vec!["revocation", "introspection", "jwks"])
        );
    }

    #[test]
    fn a_document_without_token_endpoint_is_refused() {
        let doc = Document {
            issuer: Some(ISS.into()),
            ..Document::default()
        };
        let err = merge(&config(""), doc).expect_err("missing");
        assert!(matches!(err, DiscoveryError::Missing("token_endpoint")));
    }
}
