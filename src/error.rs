//! The crate's error type: every failure the proxy answers itself.
//!
//! Each module has its own `thiserror` enum; this one gathers them, and [`error_response`]
//! maps all of them to answers in one place: the status, the RFC 6749 §5.2 code and a fixed
//! description (no client input, token or secret ever reaches a body), with the typed error
//! put in the response extensions for logs and metrics; [`outcome_of`] is the same mapping
//! for metrics.

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::classify::FormError;
use crate::engine::GrantError;
use crate::grant::dpop::DpopError;
use crate::oauth::{DPOP_NONCE, ErrorBody, ErrorCode, json_response};
use crate::proxy::ForwardError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request body exceeds server.max_body_bytes")]
    BodyTooLarge,
    #[error("request body could not be read")]
    BodyRead,
    #[error("request body not received within server.body_read_timeout")]
    BodyTimeout,
    /// A path some server routes to an owned endpoint, but not its exact path.
    #[error("request path is a variant of an endpoint the proxy answers for")]
    PathVariant,
    /// The query of an owned endpoint names a request parameter.
    #[error("request parameters in the query")]
    QueryParameters,
    #[error(transparent)]
    Form(#[from] FormError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// A back-channel logout request that is not a valid logout token (OpenID Connect
    /// Back-Channel Logout 1.0 §2.8: 400).
    #[error("logout token refused: {0}")]
    LogoutToken(&'static str),
    /// The upstream's keys could not be had to check a logout token.
    #[error("the upstream's JWKS is unavailable")]
    UpstreamKeys,
    /// A method other than POST at the back-channel logout path.
    #[error("method not allowed")]
    MethodNotAllowed,
}

/// One description for every refused refresh token: reused, unknown, expired, revoked or
/// another client's answer alike, so the answer is no oracle (docs/design.md §4.5).
const INVALID_GRANT: &str = "the refresh token is invalid, expired or revoked";

/// The status, code and description an error is answered with.
fn describe(err: &Error) -> (StatusCode, ErrorCode, &'static str) {
    use crate::client_auth::ClientAuthError;
    match err {
        Error::Grant(GrantError::InvalidRequest(why)) => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, why)
        }
        Error::Grant(GrantError::ClientAuth(ClientAuthError::MultipleMethods)) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "more than one client authentication method",
        ),
        Error::Grant(GrantError::ClientAuth(ClientAuthError::BadAssertionRequest(why))) => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, why)
        }
        Error::Grant(GrantError::ClientAuth(_)) => (
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidClient,
            "client authentication failed",
        ),
        Error::Grant(GrantError::UnauthorizedClient) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::UnauthorizedClient,
            "the client is not allowed to use refresh tokens",
        ),
        // RFC 6749 §5.2: "The authenticated client is not authorized to use this
        // authorization grant type": here, families opened by the admin API.
        Error::Grant(GrantError::AdminIssueNotAllowed) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::UnauthorizedClient,
            "the client is not marked allow_admin_issue = true",
        ),
        Error::Grant(GrantError::InvalidGrant(_)) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidGrant,
            INVALID_GRANT,
        ),
        Error::Grant(GrantError::InvalidScope) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidScope,
            "the requested scope exceeds the granted scope",
        ),
        Error::Grant(GrantError::UpstreamUnavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "the upstream could not confirm the session; retry shortly",
        ),
        Error::Grant(GrantError::DpopProof(e)) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidDpopProof,
            match e {
                DpopError::Nonce => "the DPoP proof carries no valid server nonce",
                DpopError::Repeated => "more than one DPoP header",
                DpopError::Malformed => "the DPoP proof is not a well-formed JWT with a public jwk",
                DpopError::Type => "the DPoP proof's typ is not dpop+jwt",
                DpopError::Algorithm => "the DPoP proof's algorithm is not accepted",
                DpopError::Key => "the DPoP proof's jwk is not an accepted public key",
                DpopError::Signature => "the DPoP proof's signature does not verify",
                DpopError::Method => "the DPoP proof's htm is not the request's method",
                DpopError::Url => "the DPoP proof's htu is not the token endpoint",
                DpopError::Time => "the DPoP proof's iat is missing, too old or in the future",
                DpopError::Jti => "the DPoP proof has no usable jti",
                DpopError::Replayed => "the DPoP proof was used before",
            },
        ),
        // RFC 9449 §8: 400 with the nonce in the DPoP-Nonce header.
        Error::Grant(GrantError::UseDpopNonce(_)) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::UseDpopNonce,
            "use the server's DPoP nonce",
        ),
        Error::Grant(GrantError::Store(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "the token store is unavailable; retry shortly",
        ),
        Error::BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRequest,
            "request body too large",
        ),
        Error::BodyRead => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "request body could not be read",
        ),
        Error::BodyTimeout => (
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::InvalidRequest,
            "request body not received in time",
        ),
        Error::PathVariant => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "use the endpoint's exact path",
        ),
        Error::QueryParameters => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "request parameters belong in the body",
        ),
        Error::Form(e) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            match e {
                FormError::ContentType => "content type must be application/x-www-form-urlencoded",
                FormError::Repeated => "a request parameter is repeated",
                FormError::NotUtf8 => "request parameters must be UTF-8",
                FormError::TooMany => "too many request parameters",
                FormError::RepeatedAuthorization => "the Authorization header is repeated",
                FormError::HopByHopAuthorization => {
                    "the Connection header may not name Authorization"
                }
            },
        ),
        Error::Forward(ForwardError::Timeout) => (
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::TemporarilyUnavailable,
            "the upstream did not answer in time",
        ),
        Error::Forward(ForwardError::Unreachable(_)) => (
            StatusCode::BAD_GATEWAY,
            ErrorCode::TemporarilyUnavailable,
            "the upstream is unreachable",
        ),
        Error::Forward(ForwardError::Failed(_)) => (
            StatusCode::BAD_GATEWAY,
            ErrorCode::TemporarilyUnavailable,
            "the upstream connection failed",
        ),
        Error::Forward(ForwardError::ClientBody) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "request body could not be read",
        ),
        Error::LogoutToken(why) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, why),
        Error::UpstreamKeys => (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TemporarilyUnavailable,
            "the upstream's keys are unavailable; retry shortly",
        ),
        Error::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidRequest,
            "use POST",
        ),
    }
}

/// The metrics outcome of an error (the same mapping as the answer's code).
pub fn outcome_of(err: &Error) -> crate::metrics::Outcome {
    use crate::metrics::Outcome;
    match describe(err) {
        (StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT, _, _) => Outcome::UpstreamError,
        (_, ErrorCode::InvalidRequest, _) => Outcome::InvalidRequest,
        (_, ErrorCode::InvalidClient, _) => Outcome::InvalidClient,
        (_, ErrorCode::InvalidGrant, _) => Outcome::InvalidGrant,
        (_, ErrorCode::InvalidScope, _) => Outcome::InvalidScope,
        (_, ErrorCode::UnauthorizedClient, _) => Outcome::UnauthorizedClient,
        (_, ErrorCode::TemporarilyUnavailable, _) => Outcome::TemporarilyUnavailable,
        (_, ErrorCode::InvalidDpopProof, _) => Outcome::InvalidDpopProof,
        (_, ErrorCode::UseDpopNonce, _) => Outcome::UseDpopNonce,
    }
}

/// Builds the JSON answer for `err`. The one error → response mapping of the crate.
pub fn error_response(err: Error) -> Response<Full<Bytes>> {
    let (status, error, description) = describe(&err);
    let body = ErrorBody {
        error,
        error_description: Some(description),
    };
    let mut response = json_response(status, &body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    // RFC 6749 §5.2: with the Authorization header, invalid_client is a 401 that "MUST include
    // the WWW-Authenticate response header field matching the authentication scheme used".
    if let Error::Grant(GrantError::ClientAuth(e)) = &err
        && matches!(
            e,
            crate::client_auth::ClientAuthError::MalformedBasic
                | crate::client_auth::ClientAuthError::Failed { basic: true }
        )
    {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"refresh-proxy\", charset=\"UTF-8\""),
        );
    }
    // RFC 9449 §8: the nonce to use goes in the DPoP-Nonce header.
    if let Error::Grant(GrantError::UseDpopNonce(nonce)) = &err
        && let Ok(value) = HeaderValue::from_str(nonce)
    {
        response.headers_mut().insert(DPOP_NONCE, value);
    }
    response.extensions_mut().insert(std::sync::Arc::new(err));
    response
}

/// A forwarding failure's answer (502, 504, or 400 for the client's own body): the
/// [`crate::proxy::Forward`] service is given this function, so that the forwarding client
/// needs neither this module nor the engine.
pub fn gateway_answer(err: ForwardError) -> Response<Full<Bytes>> {
    error_response(Error::Forward(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_refused_refresh_token_gets_the_same_body() {
        use crate::engine::GrantError;
        let mut bodies = Vec::new();
        for why in [
            "unknown family",
            "reuse detected",
            "expired",
            "wrong client",
        ] {
            let r = error_response(Error::Grant(GrantError::InvalidGrant(why)));
            assert_eq!(r.status(), StatusCode::BAD_REQUEST);
            bodies.push(r.into_body().collect().await.expect("body").to_bytes());
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
        assert!(!String::from_utf8_lossy(&bodies[0]).contains("reuse"));
    }

    #[test]
    fn basic_failures_carry_www_authenticate() {
        use crate::client_auth::ClientAuthError;
        use crate::engine::GrantError;
        let r = error_response(Error::Grant(GrantError::ClientAuth(
            ClientAuthError::Failed { basic: true },
        )));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            r.headers()[WWW_AUTHENTICATE]
                .to_str()
                .expect("ascii")
                .starts_with("Basic realm=")
        );
        let r = error_response(Error::Grant(GrantError::ClientAuth(
            ClientAuthError::Failed { basic: false },
        )));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn store_outages_are_503_with_retry_after() {
        use crate::engine::GrantError;
        let r = error_response(Error::Grant(GrantError::Store(
            crate::store::StoreError::Unavailable("down".into()),
        )));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn repeated_parameter_is_a_400_with_no_store_headers() {
        let response = error_response(Error::Form(crate::classify::FormError::Repeated));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[PRAGMA], "no-cache");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(
            &body[..],
            br#"{"error":"invalid_request","error_description":"a request parameter is repeated"}"#
        );
    }
}
