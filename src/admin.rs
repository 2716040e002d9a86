//! The admin listener: `/healthz`, `/readyz` and `/jwks`.
//!
//! - `GET /healthz`: 200 while the process runs; it checks nothing else, so a liveness probe
//!   never restarts the proxy for an outage of Redis or the IdP.
//! - `GET /readyz`: 200 when the store answers, discovery is done and the proxy is not
//!   draining; 503 otherwise, with the state of each check in the JSON body.
//!
//! - `GET /jwks`: the proxy's public signing keys (the same ones merged into the upstream's
//!   JWKS on the proxy port).
//!
//! Anything else is a 404 JSON answer.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::oauth::json_response;
use crate::store::{AnyStore, TokenStore};

/// What `/readyz` reports besides the store.
#[derive(Debug, Default)]
pub struct Readiness {
    discovered: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    pub fn set_discovered(&self) {
        self.discovered.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_discovered(&self) -> bool {
        self.discovered.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The admin service's state.
#[derive(Debug, Clone)]
pub struct Admin {
    pub readiness: Arc<Readiness>,
    pub store: AnyStore,
    /// How long `/readyz` waits for the store's answer.
    pub store_timeout: Duration,
    /// The proxy's public keys (`GET /jwks`).
    pub jwks: Arc<serde_json::Value>,
}

#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    store: &'static str,
    discovery: &'static str,
    draining: bool,
}

impl Admin {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        Ok(match req.uri().path() {
            "/healthz" if get => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            "/readyz" if get => self.ready().await,
            "/jwks" if get => json_response(StatusCode::OK, &*self.jwks),
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found"}),
            ),
        })
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        let store_ok = matches!(
            tokio::time::timeout(self.store_timeout, self.store.ping()).await,
            Ok(Ok(()))
        );
        let discovered = self.readiness.is_discovered();
        let draining = self.readiness.is_draining();
        let ready = store_ok && discovered && !draining;
        let body = ReadyBody {
            status: if ready { "ready" } else { "not_ready" },
            store: if store_ok { "ok" } else { "unavailable" },
            discovery: if discovered { "ok" } else { "pending" },
            draining,
        };
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}
