//! The upstream session check's call (docs/design.md §4.13): a family's kept refresh token
//! redeemed at the upstream's token endpoint through the inner service, as its client. The
//! engine decides when; this only asks and reads the answer.

use std::marker::PhantomData;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use serde_json::Value;
use tower::{Service, ServiceExt};

use super::capture::read_json;
use super::layer::Shared;
use crate::body::RequestBody;
use crate::client_auth::Client;
use crate::conn::BoxError;
use crate::engine::{UpstreamAnswer, UpstreamRefresh, UpstreamTokens};
use crate::mint::kept::{KeptToken, MAX_KEPT_TOKEN};

/// The layer's way to the upstream for the engine: the inner service it was given.
pub(super) struct InnerUpstream<'a, S, B> {
    pub service: &'a mut S,
    pub shared: &'a Shared,
    pub body: PhantomData<fn() -> B>,
}

impl<S, B, ResB> UpstreamRefresh for InnerUpstream<'_, S, B>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResB: Body<Data = Bytes> + Send,
    ResB::Error: Into<BoxError>,
{
    async fn refresh(
        &mut self,
        client: &Client,
        token: &KeptToken,
        scope: Option<&str>,
    ) -> UpstreamAnswer {
        let endpoints = self.shared.endpoints.load_full();
        let Some(path) = endpoints.token_path.clone() else {
            return UpstreamAnswer::Unavailable("the upstream's token endpoint is not known");
        };
        let Some(auth) = &client.upstream_auth else {
            return UpstreamAnswer::Unavailable("no credentials for the client at the upstream");
        };
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token.expose()),
        ];
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        let at = crate::client_auth::AssertionFor {
            audience: endpoints.issuer.as_deref(),
            now: crate::engine::now_ms() / 1000,
        };
        let Some(req) = auth.post_form(&path, &pairs, at) else {
            return UpstreamAnswer::Unavailable("the check request could not be built");
        };
        let req = req.map(RequestBody::buffered);
        let Ok(res) = self.service.clone().oneshot(req).await else {
            return UpstreamAnswer::Unavailable("the upstream could not be reached");
        };
        let status = res.status();
        let Ok(body) = read_json(res.into_body()).await else {
            return UpstreamAnswer::Unavailable("the upstream's answer could not be read");
        };
        let json: Option<serde_json::Map<String, Value>> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match status {
            StatusCode::OK => {
                // RFC 6749 §5.1 for `access_token_format = "upstream"`: the proxy passes these
                // on, so only a bearer answer with an access token is one it can give.
                let bearer = field("token_type").is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
                let tokens = field("access_token")
                    .filter(|_| bearer)
                    .map(|access_token| UpstreamTokens {
                        access_token,
                        expires_in: json
                            .as_ref()
                            .and_then(|j| j.get("expires_in"))
                            .and_then(Value::as_u64),
                        id_token: field("id_token"),
                        scope: field("scope"),
                    });
                UpstreamAnswer::Valid {
                    refresh_token: field("refresh_token")
                        .filter(|t| !t.is_empty() && t.len() <= MAX_KEPT_TOKEN)
                        .map(KeptToken::new),
                    tokens,
                }
            }
            // RFC 6749 §5.2: the refresh token is invalid, expired or revoked: the session is
            // over. Any other error (a client misconfigured, a server error) says nothing of
            // the session.
            StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED
                if field("error").as_deref() == Some("invalid_grant") =>
            {
                UpstreamAnswer::InvalidGrant
            }
            s if s.is_server_error() => UpstreamAnswer::Unavailable("the upstream answered 5xx"),
            _ => UpstreamAnswer::Unavailable(
                "the upstream answered an error other than invalid_grant",
            ),
        }
    }
}
