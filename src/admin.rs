//! The admin listener: `/healthz`, `/readyz`, `/jwks` and the admin API.
//!
//! - `GET /healthz`: 200 while the process runs; it checks nothing else, so a liveness probe
//!   never restarts the proxy for an outage of Redis or the IdP.
//! - `GET /readyz`: 200 when the store answers, discovery is done and the proxy is not
//!   draining; 503 otherwise, with the state of each check in the JSON body, which also lists
//!   the endpoints the proxy answers for but could not locate (`missing_endpoints`).
//! - `GET /jwks`: the proxy's public signing keys (the same ones merged into the upstream's
//!   JWKS on the proxy port).
//! - `/admin/...`: the admin API ([`AdminApi`]), only when `admin.token` is set.
//!
//! Anything else is a 404 JSON answer.
//!
//! # The admin API
//!
//! It exists exactly when `admin.token` is set (at least 16 characters, checked once at
//! start); without it every `/admin/...` path answers 404 `admin_api_disabled`, so an
//! unauthenticated admin API can never be exposed, whatever address the admin port listens
//! on. Every request must carry `Authorization: Bearer <admin.token>`, compared as SHA-256
//! digests in constant time; a missing or wrong token is 401 `unauthorized` with
//! `WWW-Authenticate: Bearer realm="refresh-proxy-admin"`.
//!
//! - `POST /admin/revoke` with exactly one of `{"family": "<id>"}`, `{"subject": "<sub>"}`,
//!   `{"client_id": "<id>"}` → `{"revoked": n}`: the number of live families revoked (1 or 0
//!   for a family; every client's families for a subject).
//! - `POST /admin/issue` with `{"client_id", "subject", "scope", "count"}` (`scope` may be
//!   empty or left out, `1 <= count <= 1_000_000`) → `{"refresh_tokens": [...]}`: `count` new
//!   families, as if the client had logged in `count` times (load-testing rigs).
//!
//! Errors: a body that is not such a JSON object, or is larger than 64 KiB → 400 (413)
//! `invalid_request`; an unknown client → 400 `invalid_request`; a client with
//! `refresh_token_ttl = 0` → 400 `unauthorized_client`; the store unreachable → 503
//! `temporarily_unavailable` with `Retry-After: 1`. Grant errors are answered by
//! [`crate::oauth::error_response`], the crate's one mapping; [`AdminError::into_response`]
//! adds the admin API's own few.
//!
//! Each action is logged on one line (what, for whom, how many, how long); never the admin
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
use crate::config::{ConfigError, Secret};
use crate::grant::engine::{Engine, GrantError};
use crate::mint::refresh::FamilyId;
use crate::oauth::json_response;
use crate::store::{AnyStore, Revoke, TokenStore};

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
    pub engine: Arc<crate::grant::engine::Engine>,
    /// The admin API; `None` when `admin.token` is not set.
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
                None => AdminError::Disabled.into_response(),
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

/// The shortest `admin.token` accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The largest admin request body read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most families one `POST /admin/issue` opens.
pub const MAX_ISSUE_COUNT: u64 = 1_000_000;

/// The upstream issuer as of now: the discovered (or configured) one, else `fallback`.
#[derive(Debug, Clone)]
pub struct IssuerSource {
    pub endpoints: Arc<arc_swap::ArcSwap<Endpoints>>,
    pub fallback: String,
}

impl IssuerSource {
    pub fn current(&self) -> String {
        self.endpoints
            .load()
            .issuer
            .clone()
            .unwrap_or_else(|| self.fallback.clone())
    }
}

/// The admin API: revocation and issuing over the grant engine, behind a bearer token.
pub struct AdminApi {
    engine: Arc<Engine>,
    /// The default `aud` of issued families' access tokens, without `tokens.audience`.
    issuer: IssuerSource,
    /// SHA-256 of `admin.token`; the token itself is not kept.
    token_digest: digest::Digest,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AdminApi {
            engine,
            issuer,
            token_digest: _,
        } = self;
        f.debug_struct("AdminApi")
            .field("engine", engine)
            .field("issuer", issuer)
            .field("token_digest", &"<redacted>")
            .finish()
    }
}

impl AdminApi {
    /// The admin API for `admin.token`: `Ok(None)` when it is not set (the API is off).
    pub fn from_config(
        token: Option<&Secret>,
        engine: Arc<Engine>,
        issuer: IssuerSource,
    ) -> Result<Option<AdminApi>, ConfigError> {
        let Some(token) = token else { return Ok(None) };
        let token = token.expose();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(ConfigError::invalid(
                "admin.token",
                format_args!("must be at least {MIN_TOKEN_CHARS} characters"),
            ));
        }
        Ok(Some(AdminApi {
            engine,
            issuer,
            token_digest: digest::digest(&digest::SHA256, token.as_bytes()),
        }))
    }

    /// Answers one `/admin/...` request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.route(req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<Full<Bytes>>, AdminError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Authentication first, so an unauthenticated caller learns nothing, not even which
        // paths exist.
        if !self.authorized(req.headers()) {
            return Err(AdminError::Unauthorized);
        }
        let action = match req.uri().path() {
            "/admin/revoke" => Action::Revoke,
            "/admin/issue" => Action::Issue,
            _ => return Err(AdminError::NotFound),
        };
        if req.method() != Method::POST {
            return Err(AdminError::MethodNotAllowed);
        }
        let body = read_body(req).await?;
        match action {
            Action::Revoke => self.revoke(parse_revoke(&body)?).await,
            Action::Issue => self.issue(parse_issue(&body)?).await,
        }
    }

    /// `Authorization: Bearer <admin.token>` (RFC 6750 §2.1; the scheme is case-insensitive,
    /// RFC 9110 §11.1), compared as digests in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers.get(AUTHORIZATION).and_then(bearer_token) else {
            return false;
        };
        let presented = digest::digest(&digest::SHA256, token);
        constant_time::verify_slices_are_equal(presented.as_ref(), self.token_digest.as_ref())
            .is_ok()
    }

    async fn revoke(&self, target: RevokeTarget) -> Result<Response<Full<Bytes>>, AdminError> {
        let started = Instant::now();
        let store = &self.engine.store;
        let revoked = match &target {
            RevokeTarget::Family(family) => {
                match store.revoke_family(family.as_str(), None).await {
                    Ok(Revoke::Revoked) => 1,
                    Ok(Revoke::NotOwner | Revoke::Unknown) => 0,
                    Err(e) => return Err(GrantError::Store(e).into()),
                }
            }
            RevokeTarget::Subject(subject) => store
                .revoke_subject(subject)
                .await
                .map_err(GrantError::Store)?,
            RevokeTarget::Client(client_id) => store
                .revoke_client(client_id)
                .await
                .map_err(GrantError::Store)?,
        };
        let (by, value) = target.describe();
        tracing::info!(
            admin_action = "revoke",
            by,
            value,
            revoked,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "admin API: families revoked"
        );
        Ok(json_response(StatusCode::OK, &RevokeAnswer { revoked }))
    }

    async fn issue(&self, request: IssueRequest) -> Result<Response<Full<Bytes>>, AdminError> {
        let started = Instant::now();
        let refresh_tokens = self
            .engine
            .issue(
                &request.client_id,
                &request.subject,
                &request.scope,
                request.count as usize,
                &self.issuer.current(),
            )
            .await?;
        tracing::info!(
            admin_action = "issue",
            client_id = %request.client_id,
            subject = %request.subject,
            count = refresh_tokens.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "admin API: families issued"
        );
        Ok(json_response(
            StatusCode::OK,
            &IssueAnswer { refresh_tokens },
        ))
    }
}

#[derive(Clone, Copy)]
enum Action {
    Revoke,
    Issue,
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

/// Reads the body, at most [`MAX_BODY_BYTES`].
async fn read_body<B>(req: Request<B>) -> Result<Bytes, AdminError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(AdminError::BodyTooLarge);
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AdminError::BodyTooLarge),
        Err(_) => Err(AdminError::invalid("the request body could not be read")),
    }
}

/// `POST /admin/revoke` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    family: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RevokeTarget {
    Family(FamilyId),
    Subject(String),
    Client(String),
}

impl RevokeTarget {
    /// For the log line: which key, and its value (ids and subjects, never a token).
    fn describe(&self) -> (&'static str, &str) {
        match self {
            RevokeTarget::Family(f) => ("family", f.as_str()),
            RevokeTarget::Subject(s) => ("subject", s),
            RevokeTarget::Client(c) => ("client_id", c),
        }
    }
}

const REVOKE_SHAPE: &str = "the body must be a JSON object with exactly one of \
                            \"family\", \"subject\" or \"client_id\" (a non-empty string)";

fn parse_revoke(body: &[u8]) -> Result<RevokeTarget, AdminError> {
    let RevokeBody {
        family,
        subject,
        client_id,
    } = parse_json(body, REVOKE_SHAPE)?;
    let target = match (family, subject, client_id) {
        (Some(f), None, None) => RevokeTarget::Family(FamilyId::parse(&f).ok_or_else(|| {
            AdminError::invalid(
                "family must be a family id: the part of a refresh token before its first dot",
            )
        })?),
        (None, Some(s), None) if !s.is_empty() => RevokeTarget::Subject(s),
        (None, None, Some(c)) if !c.is_empty() => RevokeTarget::Client(c),
        _ => return Err(AdminError::invalid(REVOKE_SHAPE)),
    };
    Ok(target)
}

/// `POST /admin/issue` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    client_id: String,
    subject: String,
    #[serde(default)]
    scope: String,
    count: u64,
}

const ISSUE_SHAPE: &str = "the body must be a JSON object {\"client_id\": string, \
                           \"subject\": string, \"scope\": string, \"count\": integer}";

fn parse_issue(body: &[u8]) -> Result<IssueRequest, AdminError> {
    let request: IssueRequest = parse_json(body, ISSUE_SHAPE)?;
    if request.subject.is_empty() {
        return Err(AdminError::invalid("subject must not be empty"));
    }
    if !(1..=MAX_ISSUE_COUNT).contains(&request.count) {
        return Err(AdminError::invalid(
            "count must be between 1 and 1000000 (ask again for more)",
        ));
    }
    Ok(request)
}

/// Parses a JSON body; the error names what was wrong (the caller is the authenticated
/// operator, and these bodies carry no secret).
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], shape: &str) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::Invalid(format!("{shape}: {e}")))
}

#[derive(Serialize)]
struct RevokeAnswer {
    revoked: u64,
}

#[derive(Serialize)]
struct IssueAnswer {
    refresh_tokens: Vec<String>,
}

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API is disabled (admin.token is not set)")]
    Disabled,
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("no such admin endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// An admin error body: `error`, and `error_description` when there is something to add.
#[derive(Serialize)]
struct AdminErrorBody<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl AdminError {
    fn invalid(why: &str) -> AdminError {
        AdminError::Invalid(why.to_owned())
    }

    /// The admin API's error → response mapping; grant and store errors go through
    /// [`crate::oauth::error_response`].
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = |error, error_description| AdminErrorBody {
            error,
            error_description,
        };
        match self {
            AdminError::Disabled => json_response(
                StatusCode::NOT_FOUND,
                &body(
                    "admin_api_disabled",
                    Some("set admin.token to enable the admin API"),
                ),
            ),
            AdminError::Unauthorized => {
                let mut response =
                    json_response(StatusCode::UNAUTHORIZED, &body("unauthorized", None));
                // RFC 6750 §3: a 401 carries the challenge of the scheme it wants.
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"refresh-proxy-admin\""),
                );
                response
            }
            AdminError::NotFound => json_response(StatusCode::NOT_FOUND, &body("not_found", None)),
            AdminError::MethodNotAllowed => {
                let mut response = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &body("method_not_allowed", Some("use POST")),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                response
            }
            AdminError::BodyTooLarge => json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &body("invalid_request", Some("request body larger than 64 KiB")),
            ),
            AdminError::Invalid(why) => json_response(
                StatusCode::BAD_REQUEST,
                &body("invalid_request", Some(&why)),
            ),
            AdminError::Grant(e) => crate::oauth::error_response(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_json(e: AdminError) -> (StatusCode, serde_json::Value, HeaderMap) {
        let response = e.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = futures_body(response.into_body());
        (
            status,
            serde_json::from_slice(&bytes).expect("json"),
            headers,
        )
    }

    fn futures_body(body: Full<Bytes>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(body.collect()).expect("infallible").to_bytes()
    }

    #[test]
    fn bearer_tokens_are_found_case_insensitively() {
        let t = |v: &'static str| {
            bearer_token(&HeaderValue::from_static(v))
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        assert_eq!(t("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(t("bearer  abc").as_deref(), Some("abc"));
        assert_eq!(t("BEARER abc").as_deref(), Some("abc"));
        assert_eq!(t("Basic abc"), None);
        assert_eq!(t("Bearer"), None);
        assert_eq!(t("Bearer "), None);
        assert_eq!(t("Bearerabc"), None);
    }

    #[test]
    fn revoke_bodies_need_exactly_one_key() {
        let family = "AAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(
            parse_revoke(format!(r#"{{"family":"{family}"}}"#).as_bytes()).expect("ok"),
            RevokeTarget::Family(FamilyId::parse(family).expect("id"))
        );
        assert_eq!(
            parse_revoke(br#"{"subject":"alice"}"#).expect("ok"),
            RevokeTarget::Subject("alice".into())
        );
        assert_eq!(
            parse_revoke(br#"{"client_id":"www"}"#).expect("ok"),
            RevokeTarget::Client("www".into())
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"subject":"a","client_id":"b"}"#,
            br#"{"subject":""}"#,
            br#"{"subject":null}"#,
            br#"{"family":"not a family"}"#,
            br#"{"user":"alice"}"#,
            br#"{"subject":5}"#,
            br#"["subject"]"#,
            b"subject=alice",
            b"",
        ] {
            assert!(
                matches!(parse_revoke(bad), Err(AdminError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn issue_bodies_are_checked() {
        let ok = parse_issue(br#"{"client_id":"www","subject":"u","count":3}"#).expect("ok");
        assert_eq!((ok.scope.as_str(), ok.count), ("", 3));
        for bad in [
            &br#"{"client_id":"www","subject":"u","scope":"","count":0}"#[..],
            br#"{"client_id":"www","subject":"u","scope":"","count":1000001}"#,
            br#"{"client_id":"www","subject":"u","scope":"","count":-1}"#,
            br#"{"client_id":"www","subject":"","scope":"","count":1}"#,
            br#"{"client_id":"www","scope":"","count":1}"#,
            br#"{"client_id":"www","subject":"u","scope":"","count":1,"x":1}"#,
        ] {
            assert!(
                matches!(parse_issue(bad), Err(AdminError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn error_bodies_are_pinned() {
        let (status, body, _) = error_json(AdminError::Disabled);
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body.to_string(),
            r#"{"error":"admin_api_disabled","error_description":"set admin.token to enable the admin API"}"#
        );
        let (status, body, headers) = error_json(AdminError::Unauthorized);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body.to_string(), r#"{"error":"unauthorized"}"#);
        assert_eq!(
            headers[WWW_AUTHENTICATE],
            "Bearer realm=\"refresh-proxy-admin\""
        );
        let store_down = AdminError::Grant(GrantError::Store(
            crate::store::StoreError::Unavailable("down".into()),
        ));
        let (status, body, headers) = error_json(store_down);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(headers["retry-after"], "1");
    }

    #[test]
    fn short_admin_tokens_are_refused() {
        let issuer = || IssuerSource {
            endpoints: Arc::default(),
            fallback: "http://127.0.0.1:9".into(),
        };
        let err = AdminApi::from_config(
            Some(&Secret::new("too-short")),
            Arc::new(test_engine()),
            issuer(),
        )
        .expect_err("short");
        assert!(err.to_string().starts_with("admin.token: "), "{err}");
        assert!(
            AdminApi::from_config(None, Arc::new(test_engine()), issuer())
                .expect("no token")
                .is_none()
        );
        let api = AdminApi::from_config(
            Some(&Secret::new("0123456789abcdef")),
            Arc::new(test_engine()),
            issuer(),
        )
        .expect("16 chars")
        .expect("enabled");
        let mut headers = HeaderMap::new();
        assert!(!api.authorized(&headers));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdeX"),
        );
        assert!(!api.authorized(&headers));
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer 0123456789abcdef"),
        );
        assert!(api.authorized(&headers));
        assert!(!format!("{api:?}").contains("0123456789abcdef"));
    }

    fn test_engine() -> Engine {
        let config = crate::config::Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            std::path::Path::new("."),
            std::iter::empty(),
        )
        .expect("config");
        Engine::new(
            AnyStore::Memory(crate::store::MemoryStore::new()),
            crate::app::build_keys(&config).expect("keys"),
            300,
            None,
        )
    }
}
