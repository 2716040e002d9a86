//! The admin API: `POST /admin/revoke` and `POST /admin/issue`, each behind its own bearer
//! token (compared as SHA-256 digests in constant time), with strict JSON bodies and
//! [`AdminError`]s mapped to answers.

use super::*;

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

/// The admin API: revocation and issuing over the grant engine, each behind its own bearer
/// token.
pub struct AdminApi {
    engine: Arc<Engine>,
    /// The default `aud` of issued families' access tokens, without `tokens.audience`.
    issuer: IssuerSource,
    /// SHA-256 of `admin.token` (`/admin/revoke`); the token itself is not kept.
    revoke_digest: Option<digest::Digest>,
    /// SHA-256 of `admin.issue_token` (`/admin/issue`).
    issue_digest: Option<digest::Digest>,
    /// How long a request body may take to arrive (`server.body_read_timeout`).
    body_read_timeout: Duration,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AdminApi {
            engine,
            issuer,
            revoke_digest,
            issue_digest,
            body_read_timeout,
        } = self;
        let state = |d: &Option<digest::Digest>| if d.is_some() { "<redacted>" } else { "off" };
        f.debug_struct("AdminApi")
            .field("engine", engine)
            .field("issuer", issuer)
            .field("revoke_digest", &state(revoke_digest))
            .field("issue_digest", &state(issue_digest))
            .field("body_read_timeout", body_read_timeout)
            .finish()
    }
}

/// `server.body_read_timeout`'s default.
const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The two endpoints of the admin API, each with its own token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /admin/revoke`, with `admin.token`.
    Revoke,
    /// `POST /admin/issue`, with `admin.issue_token`.
    Issue,
}

impl Endpoint {
    /// The endpoint at `path`; `None` for any other path.
    pub fn of(path: &str) -> Option<Endpoint> {
        match path {
            "/admin/revoke" => Some(Endpoint::Revoke),
            "/admin/issue" => Some(Endpoint::Issue),
            _ => None,
        }
    }

    /// The config key of its token.
    pub fn token_key(self) -> &'static str {
        match self {
            Endpoint::Revoke => "admin.token",
            Endpoint::Issue => "admin.issue_token",
        }
    }
}

impl AdminApi {
    /// The admin API for `[admin]`: `Ok(None)` when neither token is set (the API is off).
    /// The same API giving request bodies `timeout` to arrive (default 10 s).
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> AdminApi {
        self.body_read_timeout = timeout;
        self
    }

    pub fn from_config(
        admin: &AdminConfig,
        engine: Arc<Engine>,
        issuer: IssuerSource,
    ) -> Result<Option<AdminApi>, ConfigError> {
        admin.validate()?;
        let digest_of = |t: &Option<Secret>| {
            t.as_ref()
                .map(|t| digest::digest(&digest::SHA256, t.expose().as_bytes()))
        };
        let (revoke_digest, issue_digest) =
            (digest_of(&admin.token), digest_of(&admin.issue_token));
        if revoke_digest.is_none() && issue_digest.is_none() {
            return Ok(None);
        }
        Ok(Some(AdminApi {
            engine,
            issuer,
            revoke_digest,
            issue_digest,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }))
    }

    /// Whether `endpoint` is on (its token is set).
    pub fn enabled(&self, endpoint: Endpoint) -> bool {
        self.digest(endpoint).is_some()
    }

    fn digest(&self, endpoint: Endpoint) -> Option<&digest::Digest> {
        match endpoint {
            Endpoint::Revoke => self.revoke_digest.as_ref(),
            Endpoint::Issue => self.issue_digest.as_ref(),
        }
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
        let presented = presented_digest(req.headers());
        let presented = presented.as_ref();
        // Authentication before anything else about the request, so an unauthenticated caller
        // learns nothing but which endpoints are on.
        let endpoint = match Endpoint::of(req.uri().path()) {
            Some(endpoint) => {
                let Some(expected) = self.digest(endpoint) else {
                    return Err(AdminError::Disabled(Some(endpoint)));
                };
                if !matches(presented, expected) {
                    return Err(AdminError::Unauthorized);
                }
                endpoint
            }
            None => {
                // Either token may learn that a path does not exist; nobody else may.
                let known = [self.revoke_digest.as_ref(), self.issue_digest.as_ref()]
                    .into_iter()
                    .flatten()
                    .fold(false, |ok, expected| matches(presented, expected) | ok);
                return Err(if known {
                    AdminError::NotFound
                } else {
                    AdminError::Unauthorized
                });
            }
        };
        if req.method() != Method::POST {
            return Err(AdminError::MethodNotAllowed);
        }
        // A body that trickles in holds the admin port's connection: bounded like the proxy
        // port's (`server.body_read_timeout`).
        let body = tokio::time::timeout(self.body_read_timeout, read_body(req))
            .await
            .map_err(|_| AdminError::BodyTimeout)??;
        match endpoint {
            Endpoint::Revoke => self.revoke(parse_revoke(&body)?).await,
            Endpoint::Issue => self.issue(parse_issue(&body)?).await,
        }
    }

    async fn revoke(&self, target: Revocation) -> Result<Response<Full<Bytes>>, AdminError> {
        let started = Instant::now();
        let engine = &self.engine;
        let reason = EndReason::Admin;
        let revoked = match &target {
            Revocation::Family(family) => u64::from(
                engine
                    .revoke_family(family.as_str(), reason)
                    .await
                    .map_err(GrantError::Store)?,
            ),
            Revocation::Subject(subject) => engine
                .revoke_many(&Selection::all(Index::Subject(subject)), reason)
                .await
                .map_err(GrantError::Store)?,
            Revocation::Client(client_id) => engine
                .revoke_many(&Selection::all(Index::Client(client_id)), reason)
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

/// SHA-256 of the token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is
/// case-insensitive, RFC 9110 §11.1), if there is one.
pub(super) fn presented_digest(headers: &HeaderMap) -> Option<digest::Digest> {
    let token = headers.get(AUTHORIZATION).and_then(bearer_token)?;
    Some(digest::digest(&digest::SHA256, token))
}

/// Whether the presented token's digest is `expected`, compared in constant time.
pub(super) fn matches(presented: Option<&digest::Digest>, expected: &digest::Digest) -> bool {
    presented.is_some_and(|p| {
        constant_time::verify_slices_are_equal(p.as_ref(), expected.as_ref()).is_ok()
    })
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(super) fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
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
pub(super) async fn read_body<B>(req: Request<B>) -> Result<Bytes, AdminError>
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
pub(super) struct RevokeBody {
    family: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Revocation {
    Family(FamilyId),
    Subject(String),
    Client(String),
}

impl Revocation {
    /// For the log line: which key, and its value (ids and subjects, never a token).
    fn describe(&self) -> (&'static str, &str) {
        match self {
            Revocation::Family(f) => ("family", f.as_str()),
            Revocation::Subject(s) => ("subject", s),
            Revocation::Client(c) => ("client_id", c),
        }
    }
}

pub(super) const REVOKE_SHAPE: &str = "the body must be a JSON object with exactly one of \
                            \"family\", \"subject\" or \"client_id\" (a non-empty string)";

pub(super) fn parse_revoke(body: &[u8]) -> Result<Revocation, AdminError> {
    let RevokeBody {
        family,
        subject,
        client_id,
    } = parse_json(body, REVOKE_SHAPE)?;
    let target = match (family, subject, client_id) {
        (Some(f), None, None) => Revocation::Family(FamilyId::parse(&f).ok_or_else(|| {
            AdminError::invalid(
                "family must be a family id: the part of a refresh token before its first dot",
            )
        })?),
        (None, Some(s), None) if !s.is_empty() => Revocation::Subject(s),
        (None, None, Some(c)) if !c.is_empty() => Revocation::Client(c),
        _ => return Err(AdminError::invalid(REVOKE_SHAPE)),
    };
    Ok(target)
}

/// `POST /admin/issue` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    client_id: String,
    subject: String,
    #[serde(default)]
    scope: String,
    count: u64,
}

pub(super) const ISSUE_SHAPE: &str = "the body must be a JSON object {\"client_id\": string, \
                           \"subject\": string, \"scope\": string, \"count\": integer}";

pub(super) fn parse_issue(body: &[u8]) -> Result<IssueRequest, AdminError> {
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
pub(super) fn parse_json<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    shape: &str,
) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| AdminError::Invalid(format!("{shape}: {e}")))
}

#[derive(Serialize)]
pub(super) struct RevokeAnswer {
    revoked: u64,
}

#[derive(Serialize)]
pub(super) struct IssueAnswer {
    refresh_tokens: Vec<String>,
}

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The endpoint's token is not set (`None`: a path of no endpoint, with the API off).
    #[error("the admin API endpoint is disabled (its token is not set)")]
    Disabled(Option<Endpoint>),
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("no such admin endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request body not received within server.body_read_timeout")]
    BodyTimeout,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// An admin error body: `error`, and `error_description` when there is something to add.
#[derive(Serialize)]
pub(super) struct AdminErrorBody<'a> {
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_description: Option<&'a str>,
}

impl AdminError {
    fn invalid(why: &str) -> AdminError {
        AdminError::Invalid(why.to_owned())
    }

    /// The admin API's error → response mapping; grant and store errors go through
    /// [`crate::error::error_response`].
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = |error, error_description| AdminErrorBody {
            error,
            error_description,
        };
        match self {
            AdminError::Disabled(endpoint) => json_response(
                StatusCode::NOT_FOUND,
                &body(
                    "admin_api_disabled",
                    Some(match endpoint {
                        Some(Endpoint::Revoke) => "set admin.token to enable /admin/revoke",
                        Some(Endpoint::Issue) => "set admin.issue_token to enable /admin/issue",
                        None => {
                            "set admin.token (revoke) or admin.issue_token (issue) to enable \
                             the admin API"
                        }
                    }),
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
            AdminError::BodyTimeout => json_response(
                StatusCode::REQUEST_TIMEOUT,
                &body("invalid_request", Some("request body not received in time")),
            ),
            AdminError::Invalid(why) => json_response(
                StatusCode::BAD_REQUEST,
                &body("invalid_request", Some(&why)),
            ),
            AdminError::Grant(e) => crate::error::error_response(e.into()),
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
            Revocation::Family(FamilyId::parse(family).expect("id"))
        );
        assert_eq!(
            parse_revoke(br#"{"subject":"alice"}"#).expect("ok"),
            Revocation::Subject("alice".into())
        );
        assert_eq!(
            parse_revoke(br#"{"client_id":"www"}"#).expect("ok"),
            Revocation::Client("www".into())
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
        for (endpoint, description) in [
            (
                Some(Endpoint::Revoke),
                "set admin.token to enable /admin/revoke",
            ),
            (
                Some(Endpoint::Issue),
                "set admin.issue_token to enable /admin/issue",
            ),
            (
                None,
                "set admin.token (revoke) or admin.issue_token (issue) to enable the admin API",
            ),
        ] {
            let (status, body, _) = error_json(AdminError::Disabled(endpoint));
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(
                body,
                serde_json::json!({"error": "admin_api_disabled", "error_description": description})
            );
        }
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

    fn issuer() -> IssuerSource {
        IssuerSource {
            endpoints: Arc::default(),
            fallback: "http://127.0.0.1:9".into(),
        }
    }

    fn admin(token: Option<&str>, issue_token: Option<&str>) -> AdminConfig {
        AdminConfig {
            token: token.map(Secret::new),
            issue_token: issue_token.map(Secret::new),
        }
    }

    #[test]
    fn short_or_shared_admin_tokens_are_refused() {
        for (config, key) in [
            (admin(Some("too-short"), None), "admin.token: "),
            (admin(None, Some("too-short")), "admin.issue_token: "),
            (
                admin(Some("0123456789abcdef"), Some("0123456789abcdef")),
                "admin.issue_token: must differ from admin.token",
            ),
        ] {
            let err = AdminApi::from_config(&config, Arc::new(test_engine()), issuer())
                .expect_err("refused");
            assert!(err.to_string().starts_with(key), "{err}");
        }
        assert!(
            AdminApi::from_config(&admin(None, None), Arc::new(test_engine()), issuer())
                .expect("no token")
                .is_none()
        );
    }

    #[test]
    fn each_endpoint_is_on_with_its_own_token_only() {
        let revoke = "0123456789abcdef";
        let issue = "fedcba9876543210";
        let api = AdminApi::from_config(
            &admin(Some(revoke), Some(issue)),
            Arc::new(test_engine()),
            issuer(),
        )
        .expect("16 chars")
        .expect("enabled");
        assert!(api.enabled(Endpoint::Revoke) && api.enabled(Endpoint::Issue));
        let presented = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            presented_digest(&headers)
        };
        let revoke_digest = api.digest(Endpoint::Revoke).expect("on");
        let issue_digest = api.digest(Endpoint::Issue).expect("on");
        let as_revoke = presented("Bearer 0123456789abcdef");
        assert!(matches(as_revoke.as_ref(), revoke_digest));
        assert!(!matches(as_revoke.as_ref(), issue_digest));
        let as_issue = presented("Bearer fedcba9876543210");
        assert!(matches(as_issue.as_ref(), issue_digest));
        assert!(!matches(as_issue.as_ref(), revoke_digest));
        assert!(!matches(
            presented("Bearer 0123456789abcdeX").as_ref(),
            revoke_digest
        ));
        assert!(!matches(None, revoke_digest));
        let dump = format!("{api:?}");
        assert!(!dump.contains(revoke) && !dump.contains(issue), "{dump}");

        let revoke_only = AdminApi::from_config(
            &admin(Some(revoke), None),
            Arc::new(test_engine()),
            issuer(),
        )
        .expect("valid")
        .expect("enabled");
        assert!(revoke_only.enabled(Endpoint::Revoke));
        assert!(!revoke_only.enabled(Endpoint::Issue));
        assert!(format!("{revoke_only:?}").contains("issue_digest: \"off\""));
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
