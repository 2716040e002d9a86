//! The back-channel logout receiver (OpenID Connect Back-Channel Logout 1.0; docs/design.md
//! §4.12): the upstream POSTs a logout token to `upstream.backchannel_logout_path`; the layer
//! checks it against the upstream's keys (§2.6), the engine ends the families it names (§2.7),
//! and the answer follows §2.8: 200 when done, 400 when the token is not valid (503 when the
//! store or the upstream's keys are unavailable, so the IdP may try again).
//!
//! A client that has its own `backchannel_logout_uri` gets the logout token passed on, in the
//! background ([`PassOn`]): the IdP now sends it to the proxy instead.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::capture::verify_jwt;
use super::layer::Shared;
use super::service::{local_response, read_form};
use crate::body::{RequestBody, ResponseBody};
use crate::conn::BoxError;
use crate::engine::LoggedOut;
use crate::error::Error;
use crate::grant::logout::{self, Logout};
use crate::grant::verify::Expect;
use crate::metrics::{LogoutReceived, Route};

/// A logout token to pass on to a client's own back-channel logout endpoint.
#[derive(Clone)]
pub struct PassOn {
    pub client_id: String,
    pub uri: String,
    pub logout_token: String,
}

impl std::fmt::Debug for PassOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassOn")
            .field("client_id", &self.client_id)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Where the layer queues logout tokens to pass on; `crate::logout_relay` sends them.
pub type PassOns = tokio::sync::mpsc::Sender<PassOn>;

pub(super) async fn backchannel_logout<S, B, ResB>(
    inner: S,
    shared: Arc<Shared>,
    req: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let engine = shared
        .engine
        .clone()
        .expect("routed here only with an engine");
    let answer = |outcome: LogoutReceived, result: Result<(), Error>| {
        engine.metrics.logout(outcome);
        match result {
            Ok(()) => {
                shared.record(Route::BackchannelLogout, crate::metrics::Outcome::Ok);
                let mut res = Response::new(ResponseBody::local(Full::new(Bytes::new())));
                res.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                Ok(res)
            }
            Err(err) => {
                shared.record(Route::BackchannelLogout, crate::error::outcome_of(&err));
                Ok(local_response(err))
            }
        }
    };
    if req.method() != Method::POST {
        return answer(LogoutReceived::Invalid, Err(Error::MethodNotAllowed));
    }
    let (_req, form, _held) = match read_form(req, &shared).await {
        Ok(read) => read,
        Err(err) => return answer(LogoutReceived::Invalid, Err(err)),
    };
    // §2.5: the token is the `logout_token` form parameter (a repeated one was refused).
    let Some(token) = form.get("logout_token").filter(|t| !t.is_empty()) else {
        return answer(
            LogoutReceived::Invalid,
            Err(Error::LogoutToken("the request has no logout_token")),
        );
    };
    let logout = match checked(inner, &shared, token).await {
        Ok(logout) => logout,
        Err((outcome, err)) => {
            if let Error::LogoutToken(why) = &err {
                tracing::warn!(
                    security_event = "logout_token_refused",
                    "back-channel logout refused: {why}"
                );
            }
            return answer(outcome, Err(err));
        }
    };
    match engine.logout(&logout).await {
        Ok(LoggedOut::Ended(families)) => {
            tracing::info!(
                clients = ?logout.clients,
                by = if logout.session.is_some() { "session" } else { "subject" },
                revoke_offline = logout.revoke_offline,
                families,
                "back-channel logout: families ended"
            );
            pass_on(&shared, &logout, token);
            answer(LogoutReceived::Done, Ok(()))
        }
        Ok(LoggedOut::Replayed) => {
            tracing::warn!(
                security_event = "logout_token_replayed",
                clients = ?logout.clients,
                "back-channel logout refused: its jti was seen before"
            );
            answer(
                LogoutReceived::Replayed,
                Err(Error::LogoutToken("the logout token was already used")),
            )
        }
        Err(e) => answer(
            LogoutReceived::Unavailable,
            Err(Error::Grant(crate::engine::GrantError::Store(e))),
        ),
    }
}

/// The logout token verified against the upstream's keys and checked (§2.6).
async fn checked<S, B, ResB>(
    inner: S,
    shared: &Shared,
    token: &str,
) -> Result<Logout, (LogoutReceived, Error)>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let invalid = |why| (LogoutReceived::Invalid, Error::LogoutToken(why));
    let unavailable = (LogoutReceived::Unavailable, Error::UpstreamKeys);
    let engine = shared
        .engine
        .as_ref()
        .expect("routed here only with an engine");
    let Some(path) = shared.endpoints.load().jwks_path.clone() else {
        return Err(unavailable);
    };
    let keys = &shared.upstream_keys;
    let mut set = keys
        .get(inner.clone(), &path, false)
        .await
        .map_err(|_| unavailable)?;
    let issuer = shared.issuer().to_owned();
    let now = crate::engine::now_ms() / 1000;
    let expect = Expect {
        issuer: &issuer,
        // aud is checked against every handled client below.
        client_id: None,
        now,
    };
    let claims = verify_jwt(inner, keys, &path, &mut set, token, &expect)
        .await
        .map_err(|(_, why)| invalid(why))?;
    let header = logout::header(token).ok_or(invalid("the logout token is not a JWS"))?;
    let clients = engine.keys();
    logout::check(
        &header,
        &claims,
        |id| clients.clients.get(id).is_some(),
        now,
    )
    .map_err(|e| invalid(e.describe()))
}

/// Queues the token for every client it is for that has its own back-channel logout endpoint.
fn pass_on(shared: &Shared, logout: &Logout, token: &str) {
    let (Some(relay), Some(engine)) = (&shared.logout_relay, &shared.engine) else {
        return;
    };
    let keys = engine.keys();
    for client in &logout.clients {
        let Some(uri) = keys
            .clients
            .get(client)
            .and_then(|c| c.backchannel_logout_uri.clone())
        else {
            continue;
        };
        let item = PassOn {
            client_id: client.clone(),
            uri,
            logout_token: token.to_owned(),
        };
        if relay.try_send(item).is_err() {
            engine
                .metrics
                .logouts_pass_on_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(client_id = %client, "the logout pass-on queue is full; not passed on");
        }
    }
}
