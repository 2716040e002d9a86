//! Client authentication at the token endpoint (`client_auth::presented`, `Clients::verify`):
//! HTTP Basic decoding per RFC 6749 §2.3.1, and the form's `client_id` / `client_secret`.
//!
//! Input: one flag byte, then `Authorization` header bytes, a NUL, and a form body.
//!
//! Flag bit 0 clear, arbitrary input. Properties:
//! - `presented` never panics, whatever the header and form;
//! - a header that is not Basic leaves the form's credentials in charge: `client_id`,
//!   `Post` with a `client_secret`, `None` without, nothing without a `client_id`;
//! - a Basic header is decoded like a reference (base64 padded or not, UTF-8, `id:secret`,
//!   non-empty id, the id form-decoded): `MalformedBasic` exactly when the reference fails,
//!   else the reference's client id, never together with a form `client_secret`, and a form
//!   `client_id` beside it is the same client (decoded or raw).
//!
//! - a form with `client_assertion` is that method alone: with any `Authorization` header or a
//!   `client_secret`, `MultipleMethods`; else the assertion's `sub` is the client when the type
//!   is jwt-bearer and a form `client_id` agrees, and `BadAssertionRequest` otherwise.
//!
//! Flag bit 0 set, a round trip: the two parts are a client id and secret; a client configured
//! with them (through the TOML config, as an operator would) authenticates with Basic as
//! RFC 6749 §2.3.1 says (form-urlencoded, then base64), with the raw secret that clients in the
//! wild send, and with `client_secret_post`; any other secret fails.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::config::Config;
use refresh_proxy::internal::classify::Form;
use refresh_proxy::internal::client_auth::{
    ClientAuthError, Clients, Method, assertion, presented,
};

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Form decoding as `client_auth` documents it: text that does not decode to UTF-8 stays raw.
fn form_decode(s: &str) -> String {
    if !s.contains(['+', '%']) {
        return s.to_owned();
    }
    Form::decode_value(s.as_bytes()).unwrap_or_else(|| s.to_owned())
}

fn reference_basic(b64: &[u8]) -> Option<(String, String)> {
    let b64 = b64.trim_ascii();
    let raw = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    (!id.is_empty()).then(|| (id.to_owned(), secret.to_owned()))
}

fn toml_string(s: &str) -> String {
    // serde_json's escapes are TOML basic-string escapes, but for `/` (not escaped by
    // serde_json) and DEL (which TOML refuses raw).
    serde_json::to_string(s)
        .expect("a string serialises")
        .replace('\u{7f}', "\\u007f")
}

/// The `sub` of a JWT read without verifying it, as the reference: three parts, the second
/// base64url JSON with a non-empty string `sub`.
fn reference_sub(jwt: &str) -> Option<String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .ok()?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&payload).ok()?;
    claims
        .get("sub")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn arbitrary_input(header: &[u8], body: &[u8]) {
    let Ok(form) = Form::parse(body) else { return };
    let header = HeaderValue::from_bytes(header).ok();
    let result = presented(header.as_ref(), &form);
    let form_id = form.get("client_id");
    let form_secret = form.get("client_secret");
    // A client assertion (RFC 7523 §2.2) is the only method of its request, and names the
    // client by its sub.
    if let Some(jwt) = form.get("client_assertion") {
        if header.is_some() || form_secret.is_some() {
            assert_eq!(result, Err(ClientAuthError::MultipleMethods));
            return;
        }
        let typed = form.get("client_assertion_type") == Some(assertion::JWT_BEARER);
        match reference_sub(jwt) {
            Some(sub) if typed && form_id.is_none_or(|id| id == sub) => {
                let p = result.expect("well-formed").expect("a client");
                assert_eq!(
                    (p.client_id.as_str(), p.method),
                    (sub.as_str(), Method::Assertion)
                );
                assert_eq!(p.assertion(), Some(jwt));
            }
            _ => assert!(
                matches!(result, Err(ClientAuthError::BadAssertionRequest(_))),
                "{result:?}"
            ),
        }
        return;
    }
    let basic = header
        .as_ref()
        .map(HeaderValue::as_bytes)
        .filter(|b| b.len() > 6 && b[..6].eq_ignore_ascii_case(b"basic "));
    match basic {
        None => {
            let p = result.expect("without Basic, nothing fails");
            match (p, form_id) {
                (None, None) => {}
                (Some(p), Some(id)) => {
                    assert_eq!(p.client_id, id);
                    let want = if form_secret.is_some() {
                        Method::Post
                    } else {
                        Method::None
                    };
                    assert_eq!(p.method, want);
                }
                (p, id) => panic!("presented {p:?} for form client_id {id:?}"),
            }
        }
        Some(b) => {
            if form_secret.is_some() {
                assert_eq!(result, Err(ClientAuthError::MultipleMethods));
                return;
            }
            match reference_basic(&b[6..]) {
                None => assert_eq!(result, Err(ClientAuthError::MalformedBasic)),
                Some((raw_id, _)) => {
                    let id = form_decode(&raw_id);
                    if form_id.is_some_and(|f| f != id && f != raw_id) {
                        assert_eq!(result, Err(ClientAuthError::MultipleMethods));
                    } else {
                        let p = result.expect("well-formed Basic").expect("a client");
                        assert_eq!(
                            (p.client_id.as_str(), p.method),
                            (id.as_str(), Method::Basic)
                        );
                    }
                }
            }
        }
    }
}

fn round_trip(id: &str, secret: &str) {
    // What config accepts: a printable, non-empty id and a non-empty secret.
    if id.is_empty() || id.chars().any(char::is_control) || secret.is_empty() {
        return;
    }
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[clients.{}]\nsecret = {}\n",
        toml_string(id),
        toml_string(secret)
    );
    let config = Config::from_toml_str(&text, std::path::Path::new("."), std::iter::empty())
        .unwrap_or_else(|e| panic!("a client config with a printable id: {e}"));
    let clients = Clients::from_config(&config).expect("clients");
    let client = clients.get(id).expect("the configured client");
    let empty = Form::default();
    let basic = |raw: &str| {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw)))
            .expect("base64 is a header")
    };
    // RFC 6749 §2.3.1: form-urlencoded, then base64.
    let encoded = format!("{}:{}", form_encode(id), form_encode(secret));
    let p = presented(Some(&basic(&encoded)), &empty)
        .expect("well-formed")
        .expect("a client");
    assert_eq!((p.client_id.as_str(), p.method), (id, Method::Basic));
    assert_eq!(Clients::verify(client, &p), Ok(()), "the encoded secret");
    // The raw secret, as many clients send it (ids that decode to themselves only).
    if !id.contains([':', '%', '+']) {
        let p = presented(Some(&basic(&format!("{id}:{secret}"))), &empty)
            .expect("well-formed")
            .expect("a client");
        assert_eq!(p.client_id, id);
        assert_eq!(Clients::verify(client, &p), Ok(()), "the raw secret");
    }
    // client_secret_post.
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.append_pair("client_id", id)
        .append_pair("client_secret", secret);
    let form = Form::parse(body.finish().as_bytes()).expect("a serialised form");
    let p = presented(None, &form).expect("ok").expect("a client");
    assert_eq!((p.client_id.as_str(), p.method), (id, Method::Post));
    assert_eq!(Clients::verify(client, &p), Ok(()), "client_secret_post");
    // Another secret fails, however it is sent.
    let wrong = format!("{secret}x");
    let p = presented(
        Some(&basic(&format!(
            "{}:{}",
            form_encode(id),
            form_encode(&wrong)
        ))),
        &empty,
    )
    .expect("well-formed")
    .expect("a client");
    assert_eq!(
        Clients::verify(client, &p),
        Err(ClientAuthError::Failed { basic: true })
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = match rest.iter().position(|&c| c == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if flags & 1 == 0 {
        arbitrary_input(a, b);
    } else if let (Ok(id), Ok(secret)) = (std::str::from_utf8(a), std::str::from_utf8(b)) {
        round_trip(id, secret);
    }
});
