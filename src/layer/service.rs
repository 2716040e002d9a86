//! `RefreshGrant<S>`: the middleware service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;
use tracing::Instrument;

use super::budget::{BodyBudget, Held};
use super::layer::Shared;
use super::{capture, check, jwks, logout};
use crate::body::{RequestBody, ResponseBody};
use crate::classify::{self, Endpoint, Form, FormError};
use crate::client_cert::{CLIENT_CERT, ClientCert};
use crate::conn::BoxError;
use crate::engine::TokenRequest;
use crate::error::Error;
use crate::grant::dpop::DpopError;
use crate::metrics::{Grant, Outcome, Route};
use crate::oauth;
use crate::timing::{Phase, Timing};

/// The middleware; see the [module docs](crate::layer).
#[derive(Debug, Clone)]
pub struct RefreshGrant<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RefreshGrant<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        RefreshGrant { inner, shared }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<Request<B>> for RefreshGrant<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Call the service that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let endpoint = self
            .shared
            .endpoints
            .load()
            .classify(req.method(), req.uri().path());
        let refusal = match endpoint {
            Endpoint::Variant(owned) => Some((owned, Error::PathVariant)),
            _ => endpoint
                .owned()
                .filter(|_| {
                    req.uri()
                        .query()
                        .is_some_and(classify::query_names_a_request_parameter)
                })
                .map(|owned| (owned, Error::QueryParameters)),
        };
        if let Some((owned, err)) = refusal {
            let response = refused(&self.shared, route_of(owned.into()), err);
            return Box::pin(std::future::ready(Ok(response)));
        }
        let shared = self.shared.clone();
        // Held by each future until it completes (inside it: no second box per request).
        let in_flight = shared.engine.as_ref().map(|e| e.metrics.in_flight());
        match endpoint {
            Endpoint::Token => Box::pin(async move {
                let _in_flight = in_flight;
                token_endpoint(inner, shared, req).await
            }),
            Endpoint::Jwks if shared.engine.is_some() => Box::pin(async move {
                let _in_flight = in_flight;
                jwks(inner, shared, req).await
            }),
            Endpoint::BackchannelLogout if shared.engine.is_some() => Box::pin(async move {
                let _in_flight = in_flight;
                logout::backchannel_logout(inner, shared, req).await
            }),
            Endpoint::Revocation | Endpoint::Introspection if shared.engine.is_some() => {
                Box::pin(async move {
                    let _in_flight = in_flight;
                    own_tokens(inner, shared, req, endpoint).await
                })
            }
            Endpoint::Revocation
            | Endpoint::Introspection
            | Endpoint::Jwks
            | Endpoint::BackchannelLogout
            | Endpoint::Variant(_)
            | Endpoint::Other => {
                let mut inner = inner;
                let fut = inner.call(req.map(RequestBody::streaming));
                Box::pin(async move {
                    let _in_flight = in_flight;
                    let res = fut.await?;
                    shared.record(route_of(endpoint), forwarded(&res));
                    Ok(inner_response(res))
                })
            }
        }
    }
}

fn route_of(endpoint: Endpoint) -> Route {
    match endpoint {
        Endpoint::Token => Route::Token,
        Endpoint::Revocation => Route::Revocation,
        Endpoint::Introspection => Route::Introspection,
        Endpoint::Jwks => Route::Jwks,
        Endpoint::BackchannelLogout => Route::BackchannelLogout,
        Endpoint::Variant(owned) => route_of(owned.into()),
        Endpoint::Other => Route::Other,
    }
}

/// A forwarded answer's outcome: the forwarding service marks its own 502/504 answers.
pub(super) fn forwarded<B>(res: &Response<B>) -> Outcome {
    match res.extensions().get::<Arc<Error>>() {
        Some(err) => crate::error::outcome_of(err),
        None => Outcome::Forwarded,
    }
}

/// The outcome and the local answer for an error the layer answers itself.
fn refused<B>(shared: &Shared, route: Route, err: Error) -> Response<ResponseBody<B>> {
    shared.record(route, crate::error::outcome_of(&err));
    local_response(err)
}

pub(super) fn inner_response<B>(res: Response<B>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::inner)
}

pub(super) fn local_response<B>(err: Error) -> Response<ResponseBody<B>> {
    crate::error::error_response(err).map(ResponseBody::local)
}

/// The request's `DPoP` header: more than one is refused (RFC 9449 §4.3 check 1).
pub(super) fn dpop_header(
    headers: &http::HeaderMap,
) -> Result<Option<&http::HeaderValue>, DpopError> {
    let mut all = headers.get_all(DPOP).iter();
    match (all.next(), all.next()) {
        (first, None) => Ok(first),
        _ => Err(DpopError::Repeated),
    }
}

/// RFC 9449 §4.1's request header.
const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");
/// W3C Server Timing's response header (`server.server_timing`).
const SERVER_TIMING: http::HeaderName = http::HeaderName::from_static("server-timing");

/// The token endpoint: refresh grants the proxy owns are answered here; everything else goes
/// upstream, and a handled client's answer is captured on the way back.
async fn token_endpoint<S, B, ResB>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let timing = shared.server_timing.then(Timing::start);
    // `_held`: the connection's body budget taken by this body, given back when done.
    let (req, form, _held) = match read_form(req, &shared).await {
        Ok(read) => read,
        Err(err) => return Ok(refused(&shared, Route::Token, err)),
    };
    if let Some(t) = &timing {
        t.mark(Phase::Form);
    }
    let Some(engine) = shared.engine.clone() else {
        return inner.call(req).await.map(inner_response);
    };
    let authorization = req.headers().get(AUTHORIZATION).cloned();
    let grant = Grant::of(form.get("grant_type"));
    crate::otel::record_grant_type(grant.label());
    let record = |outcome: Outcome| {
        shared.record(Route::Token, outcome);
        engine.metrics.token_request(grant, outcome);
    };
    if grant == Grant::RefreshToken {
        let issuer = shared.issuer();
        let started = Instant::now();
        let mut upstream = check::InnerUpstream {
            service: &mut inner,
            shared: &shared,
            body: std::marker::PhantomData,
        };
        let token_url = shared.endpoints.load().token_url();
        let answered = engine
            .refresh(
                &TokenRequest {
                    authorization: authorization.as_ref(),
                    dpop: dpop_header(req.headers()),
                    form: &form,
                    issuer: &issuer,
                    token_url: token_url.as_deref(),
                    client_jwks: &*shared.client_keys,
                    client_cert: req.extensions().get::<Arc<ClientCert>>().map(|c| &**c),
                    timing: timing.as_ref(),
                },
                &mut upstream,
            )
            .await;
        if !matches!(answered, Ok(None)) {
            engine.metrics.refresh_latency(started.elapsed());
        }
        let answered_here = match answered {
            Ok(Some(answer)) => {
                record(Outcome::Ok);
                Some(oauth::token_response(&answer).map(ResponseBody::local))
            }
            Err(err) => {
                let err = Error::Grant(err);
                record(crate::error::outcome_of(&err));
                Some(local_response(err))
            }
            Ok(None) => None,
        };
        if let Some(mut res) = answered_here {
            if let Some(t) = &timing {
                res.headers_mut().insert(SERVER_TIMING, t.header());
            }
            return Ok(res);
        }
    }
    // Not answered here: forward, and capture a handled client's new refresh token.
    let client = capture::handled_client(&engine, authorization.as_ref(), &form);
    let dpop = dpop_header(req.headers()).map(Option::<&http::HeaderValue>::cloned);
    let client_cert = req.extensions().get::<Arc<ClientCert>>().cloned();
    // A certificate may reach the upstream in a header the proxy does not take as one (a
    // trusted front proxy's, without server.client_cert_header): capture must then find out
    // whether the upstream bound its tokens to it.
    let cert_forwarded = client_cert.is_some() || req.headers().contains_key(CLIENT_CERT);
    let spare = inner.clone();
    let res = inner.call(req).await?;
    record(forwarded(&res));
    match client {
        Some(client) => {
            crate::otel::record_client_id(&client.id);
            let ctx = capture::CaptureContext {
                engine,
                shared,
                client,
                authorization,
                form,
                dpop,
                client_cert,
                cert_forwarded,
            };
            capture::capture(spare, ctx, res)
                .instrument(crate::otel::span!("capture"))
                .await
        }
        None => Ok(inner_response(res)),
    }
}

/// Revocation (RFC 7009) and introspection (RFC 7662): the proxy answers for the tokens it
/// issued and forwards everything else.
async fn own_tokens<S, B, ResB>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<B>,
    endpoint: Endpoint,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let route = route_of(endpoint);
    let (req, form, _held) = match read_form(req, &shared).await {
        Ok(read) => read,
        Err(err) => return Ok(refused(&shared, route, err)),
    };
    let engine = shared
        .engine
        .clone()
        .expect("routed here only with an engine");
    let authorization = req.headers().get(AUTHORIZATION);
    let issuer = shared.issuer();
    let token_url = shared.endpoints.load().token_url();
    let client_cert = req.extensions().get::<Arc<ClientCert>>().map(|c| &**c);
    let authn = shared.authn(&issuer, &token_url, client_cert);
    let answer = if endpoint == Endpoint::Revocation {
        engine
            .revoke(authorization, &form, &authn)
            .await
            .map(|done| done.map(|()| oauth::revoked()))
    } else {
        engine
            .introspect(authorization, &form, &authn)
            .await
            .map(|found| found.map(|v| oauth::json_response(http::StatusCode::OK, &v)))
    };
    match answer {
        Ok(Some(res)) => {
            shared.record(route, Outcome::Ok);
            Ok(res.map(ResponseBody::local))
        }
        Ok(None) => {
            let res = inner.call(req).await?;
            shared.record(route, forwarded(&res));
            Ok(inner_response(res))
        }
        Err(err) => Ok(refused(&shared, route, Error::Grant(err))),
    }
}

/// The JWKS: the upstream's keys plus the proxy's, so resource servers that fetch the issuer's
/// JWKS through the proxy accept the tokens it signs.
async fn jwks<S, B, ResB>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let res = inner.call(req.map(RequestBody::streaming)).await?;
    shared.record(Route::Jwks, forwarded(&res));
    // The keys of the moment: a reload may have added or removed one.
    let ours = shared
        .engine
        .as_ref()
        .map(|e| e.keys().public_jwks())
        .unwrap_or_default();
    Ok(jwks::merge_jwks(res, &ours).await)
}

/// Reads a token-endpoint request: form content type, body within `limit` (and within the
/// connection's [`BodyBudget`], when the server gave one), a valid form.
pub(super) async fn read_form<B>(
    req: Request<B>,
    shared: &Shared,
) -> Result<(Request<RequestBody<B>>, Form, Held), Error>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if !classify::is_form_content_type(req.headers().get(CONTENT_TYPE)) {
        return Err(FormError::ContentType.into());
    }
    // The proxy authenticates the client from the one Authorization header it reads: a second
    // one (which the upstream might read instead) is ambiguous, and a Connection header naming
    // it (RFC 9110 §7.6.1) would strip it on the way upstream after the proxy had read it.
    if req.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err(FormError::RepeatedAuthorization.into());
    }
    let names_authorization = req
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("authorization"));
    if names_authorization {
        return Err(FormError::HopByHopAuthorization.into());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = shared.max_body_bytes;
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::BodyTooLarge);
    }
    let (parts, body) = req.into_parts();
    let budget = parts.extensions.get::<BodyBudget>();
    let mut held = Held::default();
    let read = read_body(body, limit, declared, budget, &mut held);
    let bytes = tokio::time::timeout(shared.body_read_timeout, read)
        .await
        .map_err(|_| Error::BodyTimeout)??;
    let form = Form::parse_bytes(bytes.clone())?;
    Ok((
        Request::from_parts(parts, RequestBody::buffered(bytes)),
        form,
        held,
    ))
}

/// What [`read_body`] has read so far.
enum Read {
    Nothing,
    /// One frame, kept as it came (no copy).
    One(Bytes),
    /// Two frames or more, copied into one buffer.
    Joined(bytes::BytesMut),
}

/// The whole body, at most `limit` bytes. A body that arrives in one frame (a token request
/// nearly always does) is kept as it is, without a copy or a frame list. With a `budget`, the
/// bytes are taken from it into `held` before they are kept: the declared length at once, else
/// each frame as it comes.
async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    budget: Option<&BodyBudget>,
    held: &mut Held,
) -> Result<Bytes, Error>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut read = Read::Nothing;
    // Bytes taken from the budget so far, ahead of the frames that fill them.
    let mut taken = 0usize;
    if let (Some(budget), Some(n)) = (budget, declared) {
        // At most `limit`: a larger declared body was refused before.
        let n = usize::try_from(n).map_err(|_| Error::BodyTooLarge)?;
        budget.take(held, n).await.ok_or(Error::BodyTooLarge)?;
        taken = n;
    }
    loop {
        // Not `while let`: its temporaries would live across the budget's await below.
        let Some(frame) = body.as_mut().frame().await else {
            break;
        };
        let Ok(data) = frame.map_err(|_| Error::BodyRead)?.into_data() else {
            continue; // trailers
        };
        let len = match &read {
            Read::Nothing => 0,
            Read::One(first) => first.len(),
            Read::Joined(joined) => joined.len(),
        };
        if len + data.len() > limit {
            return Err(Error::BodyTooLarge);
        }
        if let Some(budget) = budget {
            let more_than_taken = (len + data.len()).saturating_sub(taken);
            budget
                .take(held, more_than_taken)
                .await
                .ok_or(Error::BodyTooLarge)?;
            taken += more_than_taken;
        }
        read = match read {
            Read::Nothing => Read::One(data),
            Read::One(first) => {
                // A copy from the second frame on, sized once: a frame from the server shares
                // the connection's read buffer, which holding it would keep allocated while
                // the rest of a slow body arrives.
                let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
                let capacity = declared.clamp(first.len() + data.len(), limit);
                let mut joined = bytes::BytesMut::with_capacity(capacity);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Read::Joined(joined)
            }
            Read::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Read::Joined(joined)
            }
        };
    }
    Ok(match read {
        Read::Nothing => Bytes::new(),
        Read::One(first) => first,
        Read::Joined(joined) => joined.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn body(chunks: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_up_to_the_limit_in_any_number_of_frames() {
        async fn read(chunks: &[&'static [u8]], limit: usize) -> Result<Bytes, Error> {
            read_body(body(chunks), limit, None, None, &mut Held::default()).await
        }
        let one = read(&[b"abcd"], 4).await.expect("fits");
        assert_eq!(one, "abcd");
        let many = read(&[b"ab", b"", b"c", b"d"], 4)
            .await
            .expect("fits exactly");
        assert_eq!(many, "abcd");
        assert_eq!(read(&[], 4).await.expect("empty"), "");
        for chunks in [
            &[&b"abcde"[..]][..],
            &[b"ab", b"cd", b"e"],
            &[b"abc", b"de"],
        ] {
            assert!(matches!(read(chunks, 4).await, Err(Error::BodyTooLarge)));
        }
    }

    #[tokio::test]
    async fn a_body_takes_its_bytes_from_the_connections_budget_until_the_request_is_done() {
        let budget = BodyBudget::new(10);
        // Declared: taken at once, whatever the frames.
        let mut held = Held::default();
        let bytes = read_body(body(&[b"ab", b"cd"]), 8, Some(4), Some(&budget), &mut held)
            .await
            .expect("fits");
        assert_eq!((bytes.as_ref(), budget.available()), (&b"abcd"[..], 6));
        // Undeclared: frame by frame.
        let mut other = Held::default();
        read_body(body(&[b"abc", b"def"]), 8, None, Some(&budget), &mut other)
            .await
            .expect("fits");
        assert_eq!(budget.available(), 0);
        // Given back when the requests are done.
        drop((held, other));
        assert_eq!(budget.available(), 10);
    }
}
