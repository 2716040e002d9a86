//! Capture: the layer's own calls around an upstream token answer: capturing refresh tokens
//! from it (with an introspection call when its tokens say nothing of the subject, and the
//! upstream's JWTs verified against its JWKS, [`super::jwks::UpstreamKeys`]), and revoking
//! refresh tokens of clients that get none.
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
use tracing::Instrument;

use super::jwks::UpstreamKeys;
use super::layer::Shared;
use super::service::inner_response;
use crate::body::{RequestBody, ResponseBody};
use crate::classify::Form;
use crate::client_auth::{self, Client};
use crate::client_cert::ClientCert;
use crate::config::{AccessTokenFormat, DpopBound};
use crate::conn::BoxError;
use crate::engine::{EndReason, Engine};
use crate::grant::capture::{self, Skip};
use crate::grant::dpop::{self, DpopError};
use crate::grant::verify::{self, Expect, KeySet, Rejected};
use crate::metrics::CaptureSkip;
use crate::mint::kept::{KeptToken, MAX_KEPT_TOKEN};

/// Upstream token answers, JWKS and introspection answers larger than this are not read whole:
/// a token answer is passed on uncaptured, as it is (`too_large`); a JWKS is not merged (502);
/// an introspection answer is not used.
pub(crate) const MAX_UPSTREAM_JSON: usize = 1024 * 1024;
/// Verifies an upstream JWT against `set`, fetching the JWKS again (rate-limited) when the
/// token names a key the set does not hold: the upstream may have rotated its keys.
pub(super) async fn verify_jwt<S, B, ResB>(
    service: S,
    keys: &UpstreamKeys,
    path: &str,
    set: &mut Arc<KeySet>,
    token: &str,
    expect: &Expect<'_>,
) -> Result<Map<String, Value>, Skip>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let mut result = verify::verify(token, set, expect);
    if result == Err(Rejected::UnknownKey) {
        *set = keys.get(service, path, true).await?;
        result = verify::verify(token, set, expect);
    }
    result.map_err(|r| (CaptureSkip::InvalidToken, r.describe()))
}

/// The client a token request names, when the proxy handles it (no secret check: the upstream
/// authenticates what it is sent).
pub(super) fn handled_client(
    engine: &Engine,
    authorization: Option<&HeaderValue>,
    form: &Form,
) -> Option<Client> {
    let presented = client_auth::presented(authorization, form).ok()??;
    engine.keys().clients.get(&presented.client_id).cloned()
}

/// What capture needs from the original request.
pub(super) struct CaptureContext {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub client: Client,
    pub authorization: Option<HeaderValue>,
    pub form: Form,
    /// The request's `DPoP` header (`Err`: several).
    pub dpop: Result<Option<HeaderValue>, DpopError>,
    /// The client certificate the proxy took (docs/design.md §4.17).
    pub client_cert: Option<Arc<ClientCert>>,
    /// Whether a client certificate may have reached the upstream (taken by the proxy, or in a
    /// `Client-Cert` header it passed on).
    pub cert_forwarded: bool,
}

impl CaptureContext {
    /// The DPoP proof the client sent the upstream, checked as the proxy would check it
    /// (docs/design.md §4.16), but for its nonce and `jti`, which the upstream checked: its
    /// key's thumbprint, or why it was refused; `None` without one.
    fn dpop_proof(&self) -> Option<Result<String, &'static str>> {
        let header = match &self.dpop {
            Ok(None) => return None,
            Ok(Some(h)) => h,
            Err(_) => return Some(Err("the token request carried more than one DPoP header")),
        };
        let refused = "the client's DPoP proof does not verify at the proxy";
        let token_url = self.shared.endpoints.load().token_url();
        let Some(htu) = token_url.as_deref() else {
            return Some(Err("the token endpoint's URL is not known (no issuer)"));
        };
        let Ok(proof) = header.to_str() else {
            return Some(Err(refused));
        };
        let expect = dpop::Expect {
            method: "POST",
            htu,
            now: crate::engine::now_ms() / 1000,
            nonces: None,
        };
        Some(
            dpop::check(proof, &expect)
                .map(|p| p.jkt)
                .map_err(|_| refused),
        )
    }
}

pub(super) fn is_json(res: &Response<impl Body>) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json") || media.ends_with("+json")
        })
}

/// The upstream's response head with a new body the proxy holds.
pub(super) fn rebuilt<B>(
    mut parts: http::response::Parts,
    body: Bytes,
) -> Response<ResponseBody<B>> {
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, ResponseBody::local(Full::new(body)))
}

pub(super) async fn read_json<B>(body: B) -> Result<Bytes, &'static str>
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

/// An upstream answer read up to a limit.
enum Bounded<B> {
    /// The whole body.
    Whole(Bytes),
    /// More than the limit: what was read, and the rest still to stream.
    TooLarge(Bytes, std::pin::Pin<Box<B>>),
    /// The body failed before its end.
    Failed,
}

/// Reads `body` whole if it is at most `limit` bytes; else stops just past the limit and hands
/// back what it read and the rest, so the answer can go on untouched.
async fn read_bounded<B>(body: B, limit: usize) -> Bounded<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut read = bytes::BytesMut::new();
    loop {
        // `let else`, not `match`: no body error is held across the next await.
        let Some(frame) = body.frame().await else {
            return Bounded::Whole(read.freeze());
        };
        let Ok(frame) = frame else {
            return Bounded::Failed;
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        read.extend_from_slice(&data);
        if read.len() > limit {
            return Bounded::TooLarge(read.freeze(), body);
        }
    }
}

/// Captures a handled client's upstream answer: opens a family and swaps the refresh token.
/// An answer larger than [`MAX_UPSTREAM_JSON`] is passed on as it is, uncaptured: the proxy
/// holds at most that much of an answer to decide.
pub(super) async fn capture<S, B, ResB>(
    spare: S,
    ctx: CaptureContext,
    res: Response<ResB>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if res.status() != StatusCode::OK || !is_json(&res) {
        return Ok(inner_response(res));
    }
    let too_large = |client: &Client| {
        tracing::warn!(
            client_id = %client.id,
            reason = CaptureSkip::TooLarge.label(),
            "capture skipped: the upstream's answer is over 1 MiB; passed on as it is"
        );
        ctx.engine.metrics.capture_skip(CaptureSkip::TooLarge);
    };
    let declared = res
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPSTREAM_JSON as u64) {
        too_large(&ctx.client);
        return Ok(inner_response(res));
    }
    let (parts, body) = res.into_parts();
    let bytes = match read_bounded(body, MAX_UPSTREAM_JSON).await {
        Bounded::Whole(b) => b,
        Bounded::TooLarge(read, rest) => {
            too_large(&ctx.client);
            return Ok(Response::from_parts(
                parts,
                ResponseBody::prefixed(read, rest),
            ));
        }
        Bounded::Failed => {
            let why = "the upstream's answer could not be read";
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
        // docs/design.md §4.2: this client gets no refresh tokens; the upstream's is revoked
        // there (queued, retried: docs/design.md §4.11).
        answer.remove("refresh_token");
        ctx.engine.end_upstream_token(
            &client.id,
            KeptToken::new(upstream_refresh_token),
            EndReason::NoRefreshTokens,
        );
        tracing::info!(client_id = %client.id, "refresh token removed (refresh_token_ttl = 0)");
        return Ok(rebuilt(parts, json_bytes(&answer)));
    }
    if upstream_refresh_token.len() > MAX_KEPT_TOKEN {
        let why = "the upstream's refresh token is longer than the proxy keeps (8 KiB)";
        tracing::warn!(client_id = %client.id, reason = "too_large", "capture skipped: {why}");
        ctx.engine.metrics.capture_skip(CaptureSkip::TooLarge);
        return Ok(rebuilt(parts, bytes));
    }
    if let Err(why) = client_auth_ok(&ctx).await {
        let reason = CaptureSkip::ClientAuth;
        tracing::warn!(client_id = %client.id, reason = reason.label(), "capture skipped: {why}");
        ctx.engine.metrics.capture_skip(reason);
        return Ok(rebuilt(parts, bytes));
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

/// For a client that authenticates with assertions (or sent one), the proxy's own check of the
/// assertion the IdP accepted: signature, `iss`/`sub`, `aud`, times (docs/design.md §4.18).
/// Its `jti` is not recorded: the IdP did. For a client that authenticates with a certificate,
/// the proxy's own check of the certificate it saw (docs/design.md §4.19).
async fn client_auth_ok(ctx: &CaptureContext) -> Result<(), &'static str> {
    let presented = client_auth::presented(ctx.authorization.as_ref(), &ctx.form)
        .ok()
        .flatten();
    let sent_one = presented.as_ref().is_some_and(|p| p.assertion().is_some());
    if ctx.client.assertion.is_none() && ctx.client.certificate.is_none() && !sent_one {
        return Ok(());
    }
    let presented = presented.ok_or("the request names no client")?;
    let issuer = ctx.shared.issuer();
    let token_url = ctx.shared.endpoints.load().token_url();
    ctx.engine
        .verify_client(
            &ctx.client,
            &presented,
            &ctx.shared
                .authn(&issuer, &token_url, ctx.client_cert.as_deref()),
        )
        .await
        .map(|_| ())
        .map_err(|_| "the proxy's own check of the client's authentication failed")
}

/// Reads what the upstream granted in `answer`: who the tokens are for and the granted scope,
/// asking the upstream's introspection endpoint when the tokens do not say.
async fn examine<S, B, ResB>(
    spare: S,
    ctx: &CaptureContext,
    answer: &Map<String, Value>,
) -> Result<(capture::Identity, String), Skip>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let token_type = capture::check_token_type(answer)?;
    // docs/design.md §4.16: what the proof allows is known before any upstream call.
    let policy = &ctx.client.policy;
    let required = policy.dpop_bound == DpopBound::Required;
    let proof = ctx.dpop_proof();
    let presented = capture::Presented {
        proof: proof.as_ref().map(|p| p.as_deref().map_err(|e| *e)),
        cert: ctx.client_cert.as_deref().map(ClientCert::thumbprint),
    };
    capture::binding(token_type, [], &presented, required)?;
    let access_token = answer.get("access_token").and_then(Value::as_str);
    let id_token = answer.get("id_token").and_then(Value::as_str);
    let jwt_access_token = access_token.filter(|t| verify::is_jws(t));
    let (access, id) = if jwt_access_token.is_some() || id_token.is_some() {
        let issuer = ctx.shared.issuer().to_owned();
        let now = crate::engine::now_ms() / 1000;
        let path = ctx.shared.endpoints.load().jwks_path.clone().ok_or((
            CaptureSkip::NoJwks,
            "the answer has JWTs and the upstream's JWKS location is not known",
        ))?;
        let keys = &ctx.shared.upstream_keys;
        let mut set = keys.get(spare.clone(), &path, false).await?;
        let expect = |client_id| Expect {
            issuer: &issuer,
            client_id,
            now,
        };
        let id = match id_token {
            Some(t) if verify::is_jws(t) => Some(
                verify_jwt(
                    spare.clone(),
                    keys,
                    &path,
                    &mut set,
                    t,
                    &expect(Some(&ctx.client.id)),
                )
                .await?,
            ),
            // A JWE (RFC 7516) or anything else: the proxy cannot read it.
            Some(_) => {
                return Err((
                    CaptureSkip::InvalidToken,
                    "the upstream's ID token is not a signed JWT (JWS)",
                ));
            }
            None => None,
        };
        let access = match jwt_access_token {
            Some(t) => {
                Some(verify_jwt(spare.clone(), keys, &path, &mut set, t, &expect(None)).await?)
            }
            None => None,
        };
        (access, id)
    } else {
        (None, None)
    };
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
        // The tokens do not say who, or an opaque access token and no scope, or an opaque
        // access token the upstream may have bound to a client certificate (RFC 8705 §3.2:
        // introspection says so): ask the upstream.
        Some(token) if !has_subject || (opaque && (!has_scope || ctx.cert_forwarded)) => Some(
            introspect(spare, ctx, token)
                .instrument(crate::otel::span!("capture.introspection"))
                .await?,
        ),
        _ => None,
    };
    upstream.introspection = introspection.as_ref();
    // docs/design.md §4.16: bound to the DPoP key the upstream bound its tokens to (or, with
    // dpop_bound = "required", the key of the client's proof); never a bearer family for
    // tokens bound to anything.
    let binding = capture::binding(
        token_type,
        upstream.access.iter().chain(upstream.introspection),
        &presented,
        required,
    )?;
    if binding.is_some() && policy.access_token_format == AccessTokenFormat::Upstream {
        return Err((
            CaptureSkip::SenderConstrained,
            "access_token_format = \"upstream\" cannot answer with the upstream's DPoP-bound \
             access tokens (the proxy holds no key to prove)",
        ));
    }
    let granted = capture::granted_scope(answer, &upstream).ok_or((
        CaptureSkip::NoScope,
        "neither the answer, the access token nor introspection says what scope was granted",
    ))?;
    let issuer = ctx.shared.issuer();
    let audience = ctx.engine.default_audience(&issuer);
    let subject_claim = ctx.shared.subject_claim.as_deref();
    let mut identity = capture::identify_with(upstream, audience, subject_claim)?;
    identity.binding = binding;
    Ok((identity, granted))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_over_the_limit_is_handed_back_whole_read_part_first() {
        use http_body_util::{BodyExt, StreamBody};
        let chunks = || {
            let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = [&b"abc"[..], b"de", b"f"]
                .iter()
                .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c))))
                .collect();
            StreamBody::new(futures_util::stream::iter(frames))
        };
        assert!(matches!(read_bounded(chunks(), 6).await, Bounded::Whole(b) if b == "abcdef"));
        let Bounded::TooLarge(read, rest) = read_bounded(chunks(), 4).await else {
            panic!("over the limit");
        };
        assert_eq!(read, "abcde");
        let passed = ResponseBody::prefixed(read, rest)
            .collect()
            .await
            .map_err(|_| "body")
            .expect("streams")
            .to_bytes();
        assert_eq!(passed, "abcdef");
    }

    /// Found by fuzzing (fuzz/corpus/capture): a captured answer is written again, and a number
    /// in it must keep its value (serde_json's default float parsing may be one ULP off, so
    /// that each rewrite could move it; the `float_roundtrip` feature makes parsing exact).
    #[test]
    fn a_rewritten_answer_keeps_every_number() {
        let upstream = br#"{"expires_in":60077777777777777777777777777777777777777777,"g":6.007777777777777e43,"a":0.1,"b":-1.7976931348623157e308,"c":5e-324,"d":18446744073709551615,"e":-9223372036854775808,"f":2.2250738585072014e-308}"#;
        let answer: Map<String, Value> = serde_json::from_slice(upstream).expect("JSON");
        let rewritten: Map<String, Value> =
            serde_json::from_slice(&json_bytes(&answer)).expect("JSON");
        assert_eq!(rewritten, answer);
        assert_eq!(json_bytes(&rewritten), json_bytes(&answer));
    }
}
