//! OAuth wire types and the one place where errors become responses.
//!
//! Every answer the proxy writes itself is built here: RFC 6749 §5.2 error bodies with the
//! token-endpoint headers (`Cache-Control: no-store`, `Pragma: no-cache`), and the JSON bodies
//! for gateway failures. [`error_response`] is the only function that maps an [`Error`] to a
//! status and a body; the typed error is put in the response extensions for logs and metrics.
//! Error descriptions are fixed strings: no client input, token or secret ever reaches a body.

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::error::Error;

/// RFC 6749 §5.2 (and RFC 7009 / RFC 6750) error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    TemporarilyUnavailable,
    ServerError,
}

/// An RFC 6749 §5.2 error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<&'static str>,
}

/// One description for every refused refresh token: reused, unknown, expired, revoked or
/// another client's answer alike, so the answer is no oracle (docs/design.md §4.5).
const INVALID_GRANT: &str = "the refresh token is invalid, expired or revoked";

/// The status, code and description an error is answered with.
fn classify(err: &Error) -> (StatusCode, ErrorCode, &'static str) {
    use crate::classify::FormError;
    use crate::client_auth::ClientAuthError;
    use crate::grant::engine::GrantError;
    use crate::proxy::ForwardError;
    match err {
        Error::Grant(GrantError::InvalidRequest(why)) => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, why)
        }
        Error::Grant(GrantError::ClientAuth(ClientAuthError::MultipleMethods)) => (
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "more than one client authentication method",
        ),
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
    }
}

/// The metrics outcome of an error (the same mapping as the answer's code).
pub fn outcome_of(err: &Error) -> crate::metrics::Outcome {
    use crate::metrics::Outcome;
    match classify(err) {
        (StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT, _, _) => Outcome::UpstreamError,
        (_, ErrorCode::InvalidRequest, _) => Outcome::InvalidRequest,
        (_, ErrorCode::InvalidClient, _) => Outcome::InvalidClient,
        (_, ErrorCode::InvalidGrant, _) => Outcome::InvalidGrant,
        (_, ErrorCode::InvalidScope, _) => Outcome::InvalidScope,
        (_, ErrorCode::UnauthorizedClient, _) => Outcome::UnauthorizedClient,
        (_, ErrorCode::TemporarilyUnavailable | ErrorCode::ServerError, _) => {
            Outcome::TemporarilyUnavailable
        }
        (_, ErrorCode::UnsupportedGrantType, _) => Outcome::InvalidRequest,
    }
}

/// Builds the JSON answer for `err`. The one error → response mapping of the crate.
pub fn error_response(err: Error) -> Response<Full<Bytes>> {
    let (status, error, description) = classify(&err);
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
    // RFC 6749 §5.2: with the Authorization header, invalid_client is a 401 that "MUST include
    // the WWW-Authenticate response header field matching the authentication scheme used".
    if let Error::Grant(crate::grant::engine::GrantError::ClientAuth(e)) = &err
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
    response.extensions_mut().insert(std::sync::Arc::new(err));
    response
}

/// A JSON answer with the headers RFC 6749 §5.1 requires on token-endpoint answers
/// ("Cache-Control: no-store", "Pragma: no-cache"); they do no harm on the others.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("wire types always serialise");
    json_bytes_response(status, bytes)
}

/// A JSON answer from serialised bytes, with the token-endpoint headers.
fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// RFC 7009 §2.2: "The authorization server responds with HTTP status code 200 if the token
/// has been revoked successfully or if the client submitted an invalid token."
pub fn revoked() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A successful token answer (RFC 6749 §5.1), with the same no-store headers.
///
/// The hot path's answer: written straight into one buffer of the exact size (tokens are
/// base64url and need no escaping), byte for byte what `serde_json` makes of
/// [`TokenResponse`](crate::grant::engine::TokenResponse); a value that would need escaping
/// goes through `serde_json`.
pub fn token_response(body: &crate::grant::engine::TokenResponse) -> Response<Full<Bytes>> {
    let crate::grant::engine::TokenResponse {
        access_token,
        refresh_token,
        scope,
        token_type,
        expires_in,
        id_token,
    } = body;
    let plain = [access_token, refresh_token, scope, *token_type]
        .into_iter()
        .chain(id_token.as_deref())
        .all(json_plain);
    if !plain {
        return json_response(StatusCode::OK, body);
    }
    let mut digits = [0u8; 20];
    let expires = format_u64(*expires_in, &mut digits);
    let fields: [(&str, &str); 6] = [
        ("{\"access_token\":\"", access_token),
        ("\",\"refresh_token\":\"", refresh_token),
        ("\",\"scope\":\"", scope),
        ("\",\"token_type\":\"", token_type),
        ("\",\"expires_in\":", expires),
        (",\"id_token\":\"", id_token.as_deref().unwrap_or_default()),
    ];
    let used = if id_token.is_some() { 6 } else { 5 };
    let tail = if id_token.is_some() { "\"}" } else { "}" };
    let len = fields[..used]
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + tail.len();
    let mut out = Vec::with_capacity(len);
    for (k, v) in &fields[..used] {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(tail.as_bytes());
    debug_assert_eq!(out.len(), len);
    json_bytes_response(StatusCode::OK, out)
}

/// A JSON string value that needs no escaping (RFC 8259 §7: no quote, backslash or control
/// character).
fn json_plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `n` in decimal, in `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn every_refused_refresh_token_gets_the_same_body() {
        use crate::grant::engine::GrantError;
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

    #[tokio::test]
    async fn token_answers_are_what_serde_json_writes() {
        use crate::grant::engine::TokenResponse;
        let mut answers = Vec::new();
        for (scope, id_token) in [
            ("read write", None),
            ("", Some("eyJ.a.b")),
            ("odd\"scope\\", None),
            ("ctl\u{1}", Some("x\"y")),
        ] {
            answers.push(TokenResponse {
                access_token: "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".to_owned(),
                refresh_token: "fam.12.c2VjcmV0".to_owned(),
                scope: scope.to_owned(),
                token_type: "bearer",
                expires_in: 300,
                id_token: id_token.map(str::to_owned),
            });
        }
        answers[1].expires_in = 0;
        answers[2].expires_in = u64::MAX;
        for answer in answers {
            let res = token_response(&answer);
            assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(
                body,
                serde_json::to_vec(&answer).expect("serialises"),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn basic_failures_carry_www_authenticate() {
        use crate::client_auth::ClientAuthError;
        use crate::grant::engine::GrantError;
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
        use crate::grant::engine::GrantError;
        let r = error_response(Error::Grant(GrantError::Store(
            crate::store::StoreError::Unavailable("down".into()),
        )));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn error_codes_serialise_as_rfc6749_strings() {
        let body = ErrorBody {
            error: ErrorCode::InvalidGrant,
            error_description: None,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"error":"invalid_grant"}"#
        );
        assert_eq!(
            serde_json::to_string(&ErrorCode::TemporarilyUnavailable).expect("json"),
            r#""temporarily_unavailable""#
        );
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
