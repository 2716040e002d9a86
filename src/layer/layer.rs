//! `RefreshGrantLayer`: the middleware's configuration, validated once when it is built.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Layer;

use super::client_jwks::ClientKeys;
use super::jwks::UpstreamKeys;
use super::service::RefreshGrant;
use crate::classify::Endpoints;
use crate::client_auth::assertion::Audience;
use crate::client_cert::ClientCert;
use crate::config::ConfigError;
use crate::engine::Authn;
use crate::engine::Engine;
use crate::metrics::{Outcome, Route};
use http::HeaderValue;

/// The smallest body limit the builder accepts: a token request with a long refresh token and
/// a JWT client assertion fits comfortably.
const MIN_BODY_LIMIT: usize = 1024;
/// `server.body_read_timeout`'s default.
const DEFAULT_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// State shared by every clone of the middleware.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) endpoints: Arc<ArcSwap<Endpoints>>,
    pub(crate) max_body_bytes: usize,
    /// How long a body the layer reads may take to arrive.
    pub(crate) body_read_timeout: std::time::Duration,
    /// Answers refresh grants and captures; without it the layer only checks token forms.
    pub(crate) engine: Option<Arc<Engine>>,
    /// The proxy's public keys, merged into the upstream's JWKS.
    /// `iss` of minted tokens when discovery and config name no issuer.
    pub(crate) fallback_issuer: String,
    /// Credentials for the upstream's introspection endpoint at capture, when configured.
    pub(crate) introspection_auth: Option<HeaderValue>,
    /// The upstream's JWKS, cached for capture; one for every worker.
    pub(crate) upstream_keys: Arc<UpstreamKeys>,
    /// The introspection claim naming the subject when there is no `sub`, when configured.
    pub(crate) subject_claim: Option<String>,
    /// Where accepted logout tokens go to be passed on to clients' own endpoints.
    pub(crate) logout_relay: Option<super::PassOns>,
    /// `private_key_jwt` clients' `jwks_uri` key sets; one for every worker.
    pub(crate) client_keys: Arc<ClientKeys>,
    /// Refresh answers say where their time went (`Server-Timing`).
    pub(crate) server_timing: bool,
}

impl Shared {
    /// Counts a request (only with an engine, which owns the metrics).
    pub(crate) fn record(&self, route: Route, outcome: Outcome) {
        if let Some(engine) = &self.engine {
            engine.metrics.request(route, outcome);
        }
    }

    /// What client authentication needs (docs/design.md §4.18): the issuer, the token
    /// endpoint's URL as clients see it ([`Endpoints::token_url`]), the `jwks_uri` cache.
    pub(crate) fn authn<'a>(
        &'a self,
        issuer: &'a str,
        token_url: &'a Option<String>,
        client_cert: Option<&'a ClientCert>,
    ) -> Authn<'a> {
        Authn {
            audience: Audience {
                issuer,
                token_endpoint: token_url.as_deref(),
            },
            jwks: &*self.client_keys,
            client_cert,
        }
    }

    /// The issuer of minted tokens: the upstream's (docs/design.md §4.9).
    pub(crate) fn issuer(&self) -> Issuer<'_> {
        Issuer {
            endpoints: self.endpoints.load_full(),
            fallback: &self.fallback_issuer,
        }
    }
}

/// The issuer, borrowed from the endpoints of the moment (no copy per request).
pub(crate) struct Issuer<'a> {
    endpoints: Arc<Endpoints>,
    fallback: &'a str,
}

impl std::ops::Deref for Issuer<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        self.endpoints.issuer.as_deref().unwrap_or(self.fallback)
    }
}

/// Applies [`RefreshGrant`] to a service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RefreshGrantLayer {
    shared: Arc<Shared>,
}

impl RefreshGrantLayer {
    pub fn builder() -> RefreshGrantLayerBuilder {
        RefreshGrantLayerBuilder {
            endpoints: Arc::new(ArcSwap::from_pointee(Endpoints::default())),
            max_body_bytes: 64 * 1024,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            engine: None,
            fallback_issuer: String::new(),
            introspection_auth: None,
            subject_claim: None,
            logout_relay: None,
            server_timing: false,
        }
    }
}

impl RefreshGrantLayer {
    /// The same layer over another engine: a worker thread's, whose store handle is its own
    /// (see [`Engine::with_store`]). Endpoints, limits and credentials are shared.
    pub fn with_engine(&self, engine: Arc<Engine>) -> RefreshGrantLayer {
        let s = &*self.shared;
        RefreshGrantLayer {
            shared: Arc::new(Shared {
                endpoints: s.endpoints.clone(),
                max_body_bytes: s.max_body_bytes,
                body_read_timeout: s.body_read_timeout,
                engine: Some(engine),
                fallback_issuer: s.fallback_issuer.clone(),
                introspection_auth: s.introspection_auth.clone(),
                upstream_keys: s.upstream_keys.clone(),
                subject_claim: s.subject_claim.clone(),
                logout_relay: s.logout_relay.clone(),
                client_keys: s.client_keys.clone(),
                server_timing: s.server_timing,
            }),
        }
    }
}

impl<S> Layer<S> for RefreshGrantLayer {
    type Service = RefreshGrant<S>;

    fn layer(&self, inner: S) -> RefreshGrant<S> {
        RefreshGrant::new(inner, self.shared.clone())
    }
}

/// Builds a [`RefreshGrantLayer`]; fallible setters check their value once, here.
#[must_use]
#[derive(Debug)]
pub struct RefreshGrantLayerBuilder {
    endpoints: Arc<ArcSwap<Endpoints>>,
    max_body_bytes: usize,
    body_read_timeout: std::time::Duration,
    engine: Option<Arc<Engine>>,
    fallback_issuer: String,
    introspection_auth: Option<HeaderValue>,
    subject_claim: Option<String>,
    logout_relay: Option<super::PassOns>,
    server_timing: bool,
}

impl RefreshGrantLayerBuilder {
    /// Refresh grants the layer answers carry a W3C `Server-Timing` header: how long each of
    /// its phases took (docs/behaviour.md, "Server timing"). Off by default: a load-testing aid.
    pub fn server_timing(mut self, on: bool) -> Self {
        self.server_timing = on;
        self
    }

    /// Where accepted back-channel logout tokens are queued to be passed on to the clients'
    /// own `backchannel_logout_uri` (`crate::logout_relay` sends them).
    pub fn logout_relay(mut self, relay: super::PassOns) -> Self {
        self.logout_relay = Some(relay);
        self
    }

    /// At capture, the introspection claim that names the subject when the answer has no `sub`
    /// (`upstream.subject_claim`); it must carry the value the ID token's `sub` carries.
    pub fn subject_claim(mut self, claim: impl Into<String>) -> Self {
        self.subject_claim = Some(claim.into());
        self
    }

    /// Fixed endpoint paths.
    pub fn endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints = Arc::new(ArcSwap::from_pointee(endpoints));
        self
    }

    /// Endpoint paths that may change at run time (filled in when discovery completes).
    pub fn shared_endpoints(mut self, endpoints: Arc<ArcSwap<Endpoints>>) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// The largest token-endpoint body read; larger ones get 413.
    pub fn max_body_bytes(mut self, limit: usize) -> Result<Self, ConfigError> {
        if limit < MIN_BODY_LIMIT {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                format!("must be at least {MIN_BODY_LIMIT}"),
            ));
        }
        self.max_body_bytes = limit;
        Ok(self)
    }

    /// How long a token, revocation or introspection body may take to arrive (default 10 s);
    /// a slower one gets 408 and its connection is closed, so a client sending a byte a second
    /// holds no worker's attention for long.
    pub fn body_read_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// The grant engine: with it the layer answers refresh grants, captures handled clients'
    /// refresh tokens and merges its keys into the JWKS.
    pub fn engine(mut self, engine: Arc<Engine>) -> Self {
        self.engine = Some(engine);
        self
    }

    /// The `iss` of minted tokens when the endpoints name no issuer (normally the upstream URL).
    pub fn fallback_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.fallback_issuer = issuer.into();
        self
    }

    /// Basic credentials for the upstream's introspection endpoint at capture (instead of the
    /// client's own).
    pub fn introspection_client(
        mut self,
        client_id: &str,
        secret: &str,
    ) -> Result<Self, ConfigError> {
        let value = crate::client_auth::basic_header(client_id, secret);
        let mut value = HeaderValue::from_str(&value)
            .map_err(|e| ConfigError::invalid("upstream.introspection_client_id", e))?;
        value.set_sensitive(true);
        self.introspection_auth = Some(value);
        Ok(self)
    }

    pub fn build(self) -> RefreshGrantLayer {
        RefreshGrantLayer {
            shared: Arc::new(Shared {
                endpoints: self.endpoints,
                max_body_bytes: self.max_body_bytes,
                body_read_timeout: self.body_read_timeout,
                engine: self.engine,
                fallback_issuer: self.fallback_issuer,
                introspection_auth: self.introspection_auth,
                upstream_keys: Arc::default(),
                subject_claim: self.subject_claim,
                logout_relay: self.logout_relay,
                client_keys: Arc::default(),
                server_timing: self.server_timing,
            }),
        }
    }
}
