//! The admin listener: `/healthz`, `/readyz`, `/jwks`, `/metrics` and the admin API. This file
//! routes and answers the probes, `/metrics` and `/jwks`; `api` holds the admin API.
//!
//! Served over HTTPS only when `server.admin_tls_cert_file` and `server.admin_tls_key_file` are
//! set (the acceptor is built by [`crate::tls::server_acceptor`] and run by
//! [`crate::server::serve`], as for the proxy port); else plain HTTP. Every path below is
//! served either way.
//!
//! - `GET /healthz`: 200 while the process runs; it checks nothing else, so a liveness probe
//!   never restarts the proxy for an outage of Redis or the IdP.
//! - `GET /readyz`: 200 when the store answers, discovery is done and the proxy is not
//!   draining; 503 otherwise, with the state of each check in the JSON body, which also lists
//!   the endpoints the proxy answers for but could not locate (`missing_endpoints`).
//! - `GET /jwks`: the proxy's public signing keys (the same ones merged into the upstream's
//!   JWKS on the proxy port).
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]).
//! - `/admin/...`: the admin API ([`AdminApi`]), each endpoint only when its token is set.
//!
//! Anything else is a 404 JSON answer.
//!
//! # The admin API
//!
//! Two endpoints with two tokens, so that the token operators use to revoke cannot mint
//! tokens (families the proxy signs for any subject and scope):
//!
//! | endpoint | token | unset |
//! |---|---|---|
//! | `POST /admin/revoke` | `admin.token` | 404 `admin_api_disabled` |
//! | `POST /admin/issue` | `admin.issue_token`, a separate opt-in for load-test rigs | 404 `admin_api_disabled` |
//!
//! Both are at least 16 characters and must differ (checked once at start, with the rest of
//! the config), so an unauthenticated endpoint can never be exposed, whatever address the admin
//! port listens on. Every request must carry `Authorization: Bearer <its endpoint's token>`,
//! compared as SHA-256 digests in constant time; a missing or wrong token, the other
//! endpoint's token included, is 401 `unauthorized` with
//! `WWW-Authenticate: Bearer realm="refresh-proxy-admin"`. Any other `/admin/...` path is 401
//! unless one of the two tokens is presented (then 404 `not_found`): an unauthenticated caller
//! learns no more than which of the two endpoints are on.
//!
//! - `POST /admin/revoke` with exactly one of `{"family": "<id>"}`, `{"subject": "<sub>"}`,
//!   `{"client_id": "<id>"}` → `{"revoked": n}`: the number of live families revoked (1 or 0
//!   for a family; every client's families for a subject).
//! - `POST /admin/issue` with `{"client_id", "subject", "scope", "count"}` (`scope` may be
//!   empty or left out, `1 <= count <= 1_000_000`) → `{"refresh_tokens": [...]}`: `count` new
//!   families, as if the client had logged in `count` times (load-testing rigs). Only for
//!   clients marked `allow_admin_issue = true`; any other client is 400 `unauthorized_client`.
//!
//! Errors: a body that is not such a JSON object, or is larger than 64 KiB → 400 (413)
//! `invalid_request`; an unknown client → 400 `invalid_request`; a client without
//! `allow_admin_issue`, or with `refresh_token_ttl = 0` → 400 `unauthorized_client` (RFC 6749
//! §5.2: the client is not authorized for this way of obtaining tokens); the store unreachable → 503
//! `temporarily_unavailable` with `Retry-After: 1`. Grant errors are answered by
//! [`crate::error::error_response`], the crate's one mapping; [`AdminError::into_response`]
//! adds the admin API's own few.
//!
//! Each action is logged on one line (what, for whom, how many, how long); never an admin
//! token, never a refresh token.
//!
//! Caveat: issuing a million tokens in one request builds the whole answer (about 90 MB) in
//! memory and, on `memory://`, holds the store's lock while it inserts them; the CLI
//! (`refresh-proxy issue`) asks for at most 10,000 at a time.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::{constant_time, digest};
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::classify::Endpoints;
use crate::config::{AdminConfig, ConfigError, Secret};
use crate::engine::{EndReason, Engine, GrantError};
use crate::mint::refresh::FamilyId;
use crate::oauth::json_response;
use crate::store::{AnyStore, Index, Selection, TokenStore};

/// What `/readyz` reports besides the store.
#[derive(Debug, Default)]
pub struct Readiness {
    discovered: AtomicBool,
    draining: AtomicBool,
    /// Endpoints the proxy answers for but cannot locate at the upstream.
    missing: std::sync::Mutex<Vec<&'static str>>,
}

impl Readiness {
    pub fn set_discovered(&self) {
        self.discovered.store(true, Ordering::Release);
    }

    /// Discovery is done and these endpoints could not be located.
    pub fn set_discovered_missing(&self, missing: Vec<&'static str>) {
        *self.missing.lock().unwrap_or_else(|e| e.into_inner()) = missing;
        self.set_discovered();
    }

    pub fn missing_endpoints(&self) -> Vec<&'static str> {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// The worker threads' own store handles (their Redis connections), checked by `/readyz`
    /// with `store`: ready means every connection a request may use answers.
    pub worker_stores: Vec<WorkerStore>,
    /// How long `/readyz` waits for the store's answer.
    pub store_timeout: Duration,
    /// The engine whose public keys `GET /jwks` serves (as they are after any reload).
    pub engine: Arc<crate::engine::Engine>,
    /// The admin API; `None` when neither `admin.token` nor `admin.issue_token` is set.
    pub api: Option<Arc<AdminApi>>,
    /// `GET /metrics` (no token, like the probes: Prometheus scrapes it).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A worker thread's store handle and the runtime it belongs to.
///
/// Its pings run as tasks of that runtime: a Redis connection (or a reconnection) is made by
/// whoever uses the handle first, and its driver task is spawned where that happens, so a
/// ping from the admin thread would move the worker's driver task off the worker's thread.
#[derive(Debug, Clone)]
pub struct WorkerStore {
    pub store: AnyStore,
    pub runtime: tokio::runtime::Handle,
}

impl WorkerStore {
    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        let store = self.store.clone();
        match self.runtime.spawn(async move { store.ping().await }).await {
            Ok(result) => result,
            Err(e) => Err(crate::store::StoreError::Unavailable(format!(
                "the worker thread is gone: {e}"
            ))),
        }
    }
}

#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    store: &'static str,
    discovery: &'static str,
    draining: bool,
    /// Endpoints the proxy answers for that neither discovery nor config located.
    missing_endpoints: Vec<&'static str>,
}

impl Admin {
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path();
        if path == "/admin" || path.starts_with("/admin/") {
            return Ok(match &self.api {
                Some(api) => api.handle(req).await,
                None => AdminError::Disabled(Endpoint::of(path)).into_response(),
            });
        }
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        Ok(match path {
            "/healthz" if get => {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            "/readyz" if get => self.ready().await,
            "/jwks" if get => json_response(
                StatusCode::OK,
                // RFC 7517 §5.1: "The value of the "keys" parameter is an array of JWK values."
                &serde_json::json!({ "keys": self.engine.keys().public_jwks() }),
            ),
            "/metrics" if get => {
                let mut res = Response::new(Full::new(Bytes::from(self.metrics.render())));
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_found"}),
            ),
        })
    }

    async fn ready(&self) -> Response<Full<Bytes>> {
        // Each ping also makes a connection that found Redis gone reconnect now.
        let pings = async {
            self.store.ping().await?;
            for worker in &self.worker_stores {
                worker.ping().await?;
            }
            Ok::<(), crate::store::StoreError>(())
        };
        let store_ok = matches!(
            tokio::time::timeout(self.store_timeout, pings).await,
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
            missing_endpoints: self.readiness.missing_endpoints(),
        };
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, &body)
    }
}

mod api;

pub use api::{AdminApi, AdminError, Endpoint, IssuerSource};
