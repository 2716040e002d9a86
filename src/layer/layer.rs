//! `RefreshGrantLayer`: the middleware's configuration, validated once when it is built.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Layer;

use super::service::RefreshGrant;
use crate::classify::Endpoints;
use crate::config::ConfigError;

/// The smallest body limit the builder accepts: a token request with a long refresh token and
/// a JWT client assertion fits comfortably.
const MIN_BODY_LIMIT: usize = 1024;

/// State shared by every clone of the middleware.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) endpoints: Arc<ArcSwap<Endpoints>>,
    pub(crate) max_body_bytes: usize,
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
}

impl RefreshGrantLayerBuilder {
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

    pub fn build(self) -> RefreshGrantLayer {
        RefreshGrantLayer {
            shared: Arc::new(Shared {
                endpoints: self.endpoints,
                max_body_bytes: self.max_body_bytes,
            }),
        }
    }
}
