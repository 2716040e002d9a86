//! The layer's own calls around the upstream: capturing refresh tokens from its answers (with
//! an introspection call when its tokens say nothing of the subject), revoking refresh tokens
//! of clients that get none, and merging the JWKS.
//!
//! These calls go through the inner service, so whatever forwards client traffic (pool, TLS,
//! timeouts) also carries them. Failures here never fail the client's request: an answer that
//! cannot be captured is passed on as the upstream gave it, and the reason is logged.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};
use tower::{Service, ServiceExt};

use super::body::{RequestBody, ResponseBody};
use super::layer::Shared;
use super::service::inner_response;
use crate::classify::Form;
use crate::client_auth::{self, Client};
use crate::grant::capture::{self, Skip};
use crate::grant::engine::Engine;
use crate::metrics::CaptureSkip;
use crate::proxy::BoxError;

/// Upstream token answers, JWKS and introspection answers larger than this are not read.
const MAX_UPSTREAM_JSON: usize = 1024 * 1024;

/// The client a token request names, when the proxy handles it (no secret check: the upstream
/// authenticates what it is sent).
pub(super) fn handled_client(
    engine: &Engine,
    authorization: Option<&HeaderValue>,
    form: &Form,
) -> Option<Client> {
    let presented = client_auth::presented(authorization, form).ok()??;
    engine.clients.get(&presented.client_id).cloned()
}

/// What capture needs from the original request.
pub(super) struct CaptureContext {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub client: Client,
    pub authorization: Option<HeaderValue>,
    pub form: Form,
}

fn is_json(res: &Response<impl Body>) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json") || media.ends_with("+json")
        })
}

/// The upstream's response head with a new body the proxy holds.
fn rebuilt<B>(mut parts: http::response::Parts, body: Bytes) -> Response<ResponseBody<B>> {
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, ResponseBody::local(Full::new(body)))
}

async fn read_json<B>(body: B) -> Result<Bytes, &'static str>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    Limited::new(body, MAX_UPSTREAM_JSON)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| "the upstream's answer could not be read (or is over 1 MiB)")
}

/// Captures a handled client's upstream answer: opens a family and swaps the refresh token.
pub(super) async fn capture<S, B, ResB>(
    spare: S,
    ctx: CaptureContext,
    res: Response<ResB>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if res.status() != StatusCode::OK || !is_json(&res) {
        return Ok(inner_response(res));
    }
    let (parts, body) = res.into_parts();
    let bytes = match read_json(body).await {
        Ok(b) => b,
        Err(why) => {
            tracing::warn!(client_id = %ctx.client.id, "capture skipped: {why}");
            return Ok(super::service::local_response(
                crate::error::Error::Forward(crate::proxy::ForwardError::Failed(why.into())),
            ));
        }
    };
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(rebuilt(parts, bytes));
    };
    let Some(Value::String(upstream_refresh_token)) = answer.get("refresh_token").cloned() else {
        return Ok(rebuilt(parts, bytes));
    };
    let client = &ctx.client;
    if client.policy.refresh_token_ttl == 0 {
        // DESIGN §4.2: this client gets no refresh tokens; the upstream's is revoked.
        answer.remove("refresh_token");
        let revocation = ctx.shared.endpoints.load().revocation_path.clone();
        if let Some(path) = revocation {
            let form = upstream_form(
                &ctx,
                &[
                    ("token", &upstream_refresh_token),
                    ("token_type_hint", "refresh_token"),
                ],
            );
            let auth = ctx.authorization.clone();
            tokio::spawn(async move {
                match call_upstream(spare, &path, auth, form).await {
                    Some(_) => tracing::debug!("revoked the upstream refresh token"),
                    None => tracing::warn!("could not revoke the upstream refresh token"),
                }
            });
        }
        tracing::info!(client_id = %client.id, "refresh token removed (refresh_token_ttl = 0)");
        return Ok(rebuilt(parts, json_bytes(&answer)));
    }
    let (identity, granted) = match examine(spare, &ctx, &answer).await {
        Ok(found) => found,
        Err((reason, why)) => {
            tracing::warn!(client_id = %client.id, reason = reason.label(), "capture skipped: {why}");
            ctx.engine.metrics.capture_skip(reason);
            return Ok(rebuilt(parts, bytes));
        }
    };
    match ctx
        .engine
        .open_family(client, identity, &granted, &mut answer)
        .await
    {
        Ok(()) => Ok(rebuilt(parts, json_bytes(&answer))),
        Err(e) => {
            // Fail open: the client keeps the upstream's token; its next refresh is forwarded
            // and captured then.
            tracing::warn!(client_id = %client.id, reason = "store", error = %e, "capture skipped: the store failed");
            ctx.engine.metrics.capture_skip(CaptureSkip::Store);
            Ok(rebuilt(parts, bytes))
        }
    }
}

/// Reads what the upstream granted in `answer`: who the tokens are for and the granted scope,
/// asking the upstream's introspection endpoint when the tokens do not say.
async fn examine<S, B, ResB>(
    spare: S,
    ctx: &CaptureContext,
    answer: &Map<String, Value>,
) -> Result<(capture::Identity, String), Skip>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    capture::check_token_type(answer)?;
    let access_token = answer.get("access_token").and_then(Value::as_str);
    let access = access_token.and_then(capture::jwt_payload);
    let id = answer
        .get("id_token")
        .and_then(Value::as_str)
        .and_then(capture::jwt_payload);
    if access.as_ref().is_some_and(capture::is_sender_constrained) {
        return Err((
            CaptureSkip::SenderConstrained,
            "the upstream's access token is bound to a key (cnf); the proxy only mints bearer tokens",
        ));
    }
    let mut upstream = capture::Upstream {
        access,
        id,
        introspection: None,
    };
    let has_subject = [upstream.id.as_ref(), upstream.access.as_ref()]
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("sub")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        });
    let has_scope = capture::granted_scope(answer, &upstream).is_some();
    let opaque = upstream.access.is_none();
    let introspection = match access_token {
        // The tokens do not say who, or an opaque access token and no scope: ask the upstream.
        Some(token) if !has_subject || (opaque && !has_scope) => {
            let found = introspect(spare, ctx, token).await?;
            if capture::is_sender_constrained(&found) {
                return Err((
                    CaptureSkip::SenderConstrained,
                    "the upstream's introspection says the access token is bound to a key (cnf)",
                ));
            }
            Some(found)
        }
        _ => None,
    };
    upstream.introspection = introspection.as_ref();
    let granted = capture::granted_scope(answer, &upstream).ok_or((
        CaptureSkip::NoScope,
        "neither the answer, the access token nor introspection says what scope was granted",
    ))?;
    let audience = ctx.engine.default_audience(&ctx.client.id).to_owned();
    Ok((capture::identify(upstream, &audience)?, granted))
}

fn json_bytes(answer: &Map<String, Value>) -> Bytes {
    Bytes::from(serde_json::to_vec(answer).expect("a JSON map serialises"))
}

/// The form of a call the proxy makes to the upstream on the client's behalf: the client's
/// own `client_secret_post` credentials are added when it used them.
fn upstream_form(ctx: &CaptureContext, params: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    if ctx.authorization.is_none()
        && let (Some(id), Some(secret)) = (ctx.form.get("client_id"), ctx.form.get("client_secret"))
    {
        form.append_pair("client_id", id);
        form.append_pair("client_secret", secret);
    }
    form.finish()
}

/// POSTs a form to the upstream through the inner service; the JSON answer, if 2xx.
async fn call_upstream<S, B, ResB>(
    service: S,
    path: &str,
    authorization: Option<HeaderValue>,
    form: String,
) -> Option<Bytes>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(RequestBody::buffered(Bytes::from(form)))
        .ok()?;
    if let Some(auth) = authorization {
        req.headers_mut().insert(AUTHORIZATION, auth);
    }
    let res = service.oneshot(req).await.ok()?;
    if !res.status().is_success() {
        tracing::debug!(status = %res.status(), path, "upstream call refused");
        return None;
    }
    read_json(res.into_body()).await.ok()
}

/// Asks the upstream's introspection endpoint (RFC 7662) about its new access token, with the
/// configured introspection client or else the client's own credentials.
async fn introspect<S, B, ResB>(
    service: S,
    ctx: &CaptureContext,
    access_token: &str,
) -> Result<Map<String, Value>, Skip>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let path = ctx
        .shared
        .endpoints
        .load()
        .introspection_path
        .clone()
        .ok_or((
            CaptureSkip::Introspection,
            "the tokens do not say enough and the upstream has no introspection endpoint",
        ))?;
    let (authorization, form) = match &ctx.shared.introspection_auth {
        Some(auth) => (
            Some(auth.clone()),
            form_urlencoded::Serializer::new(String::new())
                .append_pair("token", access_token)
                .append_pair("token_type_hint", "access_token")
                .finish(),
        ),
        None => (
            ctx.authorization.clone(),
            upstream_form(
                ctx,
                &[("token", access_token), ("token_type_hint", "access_token")],
            ),
        ),
    };
    let body = call_upstream(service, &path, authorization, form)
        .await
        .ok_or((
            CaptureSkip::Introspection,
            "the upstream's introspection endpoint did not answer 2xx",
        ))?;
    match serde_json::from_slice::<Value>(&body) {
        // RFC 7662 §2.2: "active" is REQUIRED; an inactive token says nothing else.
        Ok(Value::Object(answer)) if answer.get("active") == Some(&Value::Bool(true)) => Ok(answer),
        Ok(Value::Object(_)) => Err((
            CaptureSkip::Introspection,
            "the upstream's introspection says the new access token is not active",
        )),
        _ => Err((
            CaptureSkip::Introspection,
            "the upstream's introspection answer is not a JSON object",
        )),
    }
}

/// Adds the proxy's public keys to a JWKS answer; anything else passes through.
pub(super) async fn merge_jwks<ResB>(
    res: Response<ResB>,
    ours: &[Value],
) -> Response<ResponseBody<ResB>>
where
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    if res.status() != StatusCode::OK || !is_json(&res) {
        return inner_response(res);
    }
    let (parts, body) = res.into_parts();
    match read_json(body).await {
        Ok(bytes) => match crate::mint::jwt::merge_jwks(&bytes, ours) {
            Some(merged) => rebuilt(parts, Bytes::from(merged)),
            None => rebuilt(parts, bytes),
        },
        Err(why) => {
            tracing::warn!("JWKS not merged: {why}");
            super::service::local_response(crate::error::Error::Forward(
                crate::proxy::ForwardError::Failed(why.into()),
            ))
        }
    }
}
