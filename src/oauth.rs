//! OAuth wire types and their JSON rendering: RFC 6749 §5.1 token answers, RFC 6749 §5.2 error
//! bodies, RFC 7662 introspection answers, all with the token-endpoint headers
//! (`Cache-Control: no-store`, `Pragma: no-cache`). Pure: no crate error type is known here;
//! which error gets which code is [`crate::error::error_response`]'s business.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// RFC 6749 §5.2 (and RFC 7009 / RFC 6750) error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    InvalidScope,
    TemporarilyUnavailable,
    /// RFC 9449 §7.1.
    InvalidDpopProof,
    /// RFC 9449 §8.
    UseDpopNonce,
}

/// An RFC 6749 §5.2 error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<&'static str>,
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
/// [`TokenResponse`]; a value that would need escaping
/// goes through `serde_json`.
pub fn token_response(body: &TokenResponse) -> Response<Full<Bytes>> {
    let TokenResponse {
        access_token,
        refresh_token,
        scope,
        token_type,
        expires_in,
        id_token,
        dpop_nonce,
    } = body;
    let mut response = token_body(
        body,
        [access_token, refresh_token, scope, *token_type],
        *expires_in,
        id_token.as_deref(),
    );
    if let Some(nonce) = dpop_nonce
        && let Ok(value) = HeaderValue::from_str(nonce)
    {
        response.headers_mut().insert(DPOP_NONCE, value);
    }
    response
}

/// RFC 9449 §8.1's response header.
pub const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

fn token_body(
    body: &TokenResponse,
    [access_token, refresh_token, scope, token_type]: [&str; 4],
    expires_in: u64,
    id_token: Option<&str>,
) -> Response<Full<Bytes>> {
    let plain = [access_token, refresh_token, scope, token_type]
        .into_iter()
        .chain(id_token)
        .all(json_plain);
    if !plain {
        return json_response(StatusCode::OK, body);
    }
    let mut digits = [0u8; 20];
    let expires = format_u64(expires_in, &mut digits);
    let fields: [(&str, &str); 6] = [
        ("{\"access_token\":\"", access_token),
        ("\",\"refresh_token\":\"", refresh_token),
        ("\",\"scope\":\"", scope),
        ("\",\"token_type\":\"", token_type),
        ("\",\"expires_in\":", expires),
        (",\"id_token\":\"", id_token.unwrap_or_default()),
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
    // Without an early exit, so the compiler checks 32 bytes at a time: tokens are long and
    // almost always plain, and this runs over every answer (8 instructions a byte before).
    s.as_bytes().chunks(32).all(|c| {
        c.iter()
            .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
    })
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

/// RFC 6749 §5.1 successful answer. Curity always sends the first five fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub scope: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// RFC 9449 §8: the next DPoP nonce, sent in the `DPoP-Nonce` header.
    #[serde(skip)]
    pub dpop_nonce: Option<String>,
}

/// RFC 7662 §2.2 answer for an active token.
#[derive(Serialize)]
pub struct Introspection {
    pub active: bool,
    pub scope: String,
    pub client_id: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// RFC 9449 §6.2: the key a DPoP-bound token is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_character_to_escape_is_found_anywhere_in_a_value() {
        let plain = "a".repeat(100);
        assert!(json_plain(&plain) && json_plain(""));
        for at in [0, 1, 31, 32, 33, 63, 64, 99] {
            for c in ['"', '\\', '\n', '\u{1f}', '\0'] {
                let mut s = plain.clone().into_bytes();
                s[at] = c as u8;
                let s = String::from_utf8(s).expect("ASCII");
                assert!(!json_plain(&s), "{c:?} at {at}");
            }
        }
        // Past ASCII needs no escaping.
        assert!(json_plain("é ü \u{7f} \u{10ffff}"));
    }

    #[tokio::test]
    async fn token_answers_are_what_serde_json_writes() {
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
                dpop_nonce: None,
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

    #[test]
    fn the_token_response_pins_curitys_shape() {
        let r = TokenResponse {
            dpop_nonce: None,
            access_token: "at".into(),
            refresh_token: "rt".into(),
            scope: "read profile".into(),
            token_type: "bearer",
            expires_in: 300,
            id_token: None,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"access_token":"at","refresh_token":"rt","scope":"read profile","token_type":"bearer","expires_in":300}"#
        );
    }
}
