//! Which endpoint a request is for, and the token-endpoint form. Pure: no I/O.
//!
//! The endpoint paths come from the upstream's discovery document or from config
//! ([`Endpoints`]). A request is classified by method and exact path (the query is ignored, as
//! the upstream would ignore it); everything that is not one of the endpoints the proxy owns is
//! [`Endpoint::Other`] and is forwarded untouched.
//!
//! [`Form::parse`] reads an `application/x-www-form-urlencoded` body strictly: values must be
//! UTF-8 after percent-decoding, and a parameter may appear once (RFC 6749 §3.2: "Request and
//! response parameters MUST NOT be included more than once").
//!
//! ```
//! use refresh_proxy::classify::Form;
//! let form = Form::parse(b"grant_type=refresh_token&refresh_token=a%2Bb&scope=").expect("valid");
//! assert_eq!(form.get("refresh_token"), Some("a+b"));
//! assert_eq!(form.get("scope"), None); // RFC 6749 §3.1: empty means omitted
//! assert!(Form::parse(b"a=1&a=2").is_err());
//! ```

use bytes::Bytes;
use http::Method;
use http::header::HeaderValue;

/// The endpoints of the upstream the proxy knows about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub issuer: Option<String>,
    pub token_path: Option<String>,
    pub revocation_path: Option<String>,
    pub introspection_path: Option<String>,
    pub jwks_path: Option<String>,
    /// `id_token_signing_alg_values_supported` from discovery.
    pub id_token_signing_algs: Vec<String>,
}

/// What a request is, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revocation,
    Introspection,
    Jwks,
    Other,
}

impl Endpoints {
    pub fn classify(&self, method: &Method, path: &str) -> Endpoint {
        let is = |p: &Option<String>| p.as_deref() == Some(path);
        if method == Method::POST {
            if is(&self.token_path) {
                return Endpoint::Token;
            }
            if is(&self.revocation_path) {
                return Endpoint::Revocation;
            }
            if is(&self.introspection_path) {
                return Endpoint::Introspection;
            }
        } else if method == Method::GET && is(&self.jwks_path) {
            return Endpoint::Jwks;
        }
        Endpoint::Other
    }
}

/// Why a form body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("content type is not application/x-www-form-urlencoded")]
    ContentType,
    #[error("a parameter is repeated")]
    Repeated,
    #[error("a parameter is not UTF-8")]
    NotUtf8,
    #[error("too many parameters")]
    TooMany,
    #[error("the Authorization header is repeated")]
    RepeatedAuthorization,
    #[error("Connection names Authorization")]
    HopByHopAuthorization,
}

/// The most parameters a token-endpoint form may have. OAuth requests carry a dozen at most
/// (grant, credentials, code, PKCE, scope, resource, DPoP, …); more is not a client.
pub const MAX_PARAMS: usize = 64;
/// Up to this many parameters, repeats are found by comparing with each earlier name (no
/// allocation); beyond it, with a hash set, so parsing stays linear in the body.
const LINEAR_SCAN_PARAMS: usize = 16;

/// RFC 6749 §3.2: the token endpoint takes `application/x-www-form-urlencoded`; a parameter
/// such as `;charset=UTF-8` is allowed, and media types are case-insensitive (RFC 9110 §8.3.1).
pub fn is_form_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// A parsed form: each name at most once, in the order received.
///
/// It keeps the body it was parsed from: a name or value with nothing to decode (no `+`, no
/// `%`) is a range of the body, not a copy, so a typical token request costs one allocation.
#[derive(Clone, Default)]
pub struct Form {
    body: Bytes,
    params: Vec<(Text, Text)>,
}

/// A name or value of a [`Form`].
#[derive(Clone)]
enum Text {
    /// `body[start..end]`, UTF-8 and needing no decoding.
    Raw(u32, u32),
    Decoded(Box<str>),
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        Form::parse_bytes(Bytes::copy_from_slice(body))
    }

    /// Like [`Form::parse`], keeping `body` instead of copying from it.
    pub fn parse_bytes(body: Bytes) -> Result<Form, FormError> {
        // Ranges are u32: a token form is far smaller (server.max_body_bytes), but say so.
        if u32::try_from(body.len()).is_err() {
            return Err(FormError::NotUtf8);
        }
        let mut params: Vec<(Text, Text)> = Vec::with_capacity(4);
        let mut form = Form {
            body: Bytes::new(),
            params: Vec::new(),
        };
        // Owned names: only forms past LINEAR_SCAN_PARAMS parameters (not a real client's) pay.
        let mut seen_names: Option<std::collections::HashSet<String>> = None;
        let mut start = 0;
        for pair in body.split(|&b| b == b'&') {
            let at = start;
            start += pair.len() + 1;
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => ((at, at + i), (at + i + 1, at + pair.len())),
                None => ((at, at + pair.len()), (at + pair.len(), at + pair.len())),
            };
            if params.len() == MAX_PARAMS {
                return Err(FormError::TooMany);
            }
            let name = text(&body, name)?;
            let value = text(&body, value)?;
            // RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than
            // once." Comparing with every earlier name is quadratic: fine for a handful, a hash
            // set beyond that.
            let seen = match &mut seen_names {
                Some(set) => !set.insert(resolve(&body, &name).to_owned()),
                None => params
                    .iter()
                    .any(|(n, _)| resolve(&body, n) == resolve(&body, &name)),
            };
            if seen {
                return Err(FormError::Repeated);
            }
            params.push((name, value));
            if params.len() == LINEAR_SCAN_PARAMS && seen_names.is_none() {
                seen_names = Some(
                    params
                        .iter()
                        .map(|(n, _)| resolve(&body, n).to_owned())
                        .collect(),
                );
            }
        }
        form.body = body;
        form.params = params;
        Ok(form)
    }

    /// The value of `name`; RFC 6749 §3.1: "Parameters sent without a value MUST be treated as
    /// if they were omitted from the request."
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }

    /// Every parameter, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params
            .iter()
            .map(|(n, v)| (resolve(&self.body, n), resolve(&self.body, v)))
    }

    /// Decodes one form-urlencoded value; `None` when it is not UTF-8.
    pub fn decode_value(bytes: &[u8]) -> Option<String> {
        decode(bytes).ok()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

impl PartialEq for Form {
    fn eq(&self, other: &Form) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Form {}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Form")
            .field("params", &self.iter().collect::<Vec<_>>())
            .finish()
    }
}

/// One name or value of `body`: a range when it needs no decoding, else decoded.
fn text(body: &[u8], (start, end): (usize, usize)) -> Result<Text, FormError> {
    let raw = &body[start..end];
    if raw.iter().any(|&b| b == b'+' || b == b'%') {
        return decode(raw).map(|s| Text::Decoded(s.into_boxed_str()));
    }
    std::str::from_utf8(raw).map_err(|_| FormError::NotUtf8)?;
    // In range: parse_bytes checked that the body's length fits in a u32.
    Ok(Text::Raw(start as u32, end as u32))
}

fn resolve<'a>(body: &'a [u8], text: &'a Text) -> &'a str {
    match text {
        // Checked to be UTF-8 when the form was parsed.
        Text::Raw(start, end) => std::str::from_utf8(&body[*start as usize..*end as usize])
            .expect("checked to be UTF-8 at parse"),
        Text::Decoded(s) => s,
    }
}

/// `application/x-www-form-urlencoded` decoding (WHATWG URL §5.1): `+` is a space, `%XX` a byte,
/// a `%` not followed by two hex digits is kept as it is; the result must be UTF-8.
fn decode(input: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            token_path: Some("/oauth/token".into()),
            revocation_path: Some("/oauth/revoke".into()),
            introspection_path: Some("/oauth/introspect".into()),
            jwks_path: Some("/jwks".into()),
            ..Endpoints::default()
        }
    }

    #[test]
    fn classifies_by_method_and_exact_path() {
        let e = endpoints();
        assert_eq!(e.classify(&Method::POST, "/oauth/token"), Endpoint::Token);
        assert_eq!(e.classify(&Method::GET, "/oauth/token"), Endpoint::Other);
        assert_eq!(e.classify(&Method::POST, "/oauth/token/"), Endpoint::Other);
        assert_eq!(
            e.classify(&Method::POST, "/oauth/revoke"),
            Endpoint::Revocation
        );
        assert_eq!(
            e.classify(&Method::POST, "/oauth/introspect"),
            Endpoint::Introspection
        );
        assert_eq!(e.classify(&Method::GET, "/jwks"), Endpoint::Jwks);
        assert_eq!(
            Endpoints::default().classify(&Method::POST, "/oauth/token"),
            Endpoint::Other
        );
    }

    #[test]
    fn a_form_has_at_most_max_params_and_repeats_are_found_past_the_linear_scan() {
        let form = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            Form::parse(form(MAX_PARAMS).as_bytes())
                .expect("at the cap")
                .len(),
            MAX_PARAMS
        );
        for n in [MAX_PARAMS + 1, 18_447, 100_000] {
            assert_eq!(
                Form::parse(form(n).as_bytes()),
                Err(FormError::TooMany),
                "{n}"
            );
        }
        // A repeat after the switch to the hash set, raw and percent-encoded.
        let late = format!("{}&p3=again", form(LINEAR_SCAN_PARAMS + 5));
        assert_eq!(Form::parse(late.as_bytes()), Err(FormError::Repeated));
        let encoded = format!("{}&%70%32%30=again", form(LINEAR_SCAN_PARAMS + 5));
        assert_eq!(Form::parse(encoded.as_bytes()), Err(FormError::Repeated));
        // And one right at the switch.
        let at = format!("{}&p0=again", form(LINEAR_SCAN_PARAMS));
        assert_eq!(Form::parse(at.as_bytes()), Err(FormError::Repeated));
    }

    #[test]
    fn form_content_type_allows_charset_and_any_case() {
        for ok in [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded;charset=UTF-8",
            "Application/X-WWW-Form-Urlencoded ; charset=utf-8",
        ] {
            assert!(
                is_form_content_type(Some(&HeaderValue::from_static(ok))),
                "{ok}"
            );
        }
        for bad in ["application/json", "multipart/form-data", "text/plain"] {
            assert!(
                !is_form_content_type(Some(&HeaderValue::from_static(bad))),
                "{bad}"
            );
        }
        assert!(!is_form_content_type(None));
    }

    #[test]
    fn form_decodes_plus_and_percent_escapes() {
        let f = Form::parse(b"a=x+y%21&b=%E2%9C%93&c&d=100%&e=%zz").expect("valid");
        assert_eq!(f.get("a"), Some("x y!"));
        assert_eq!(f.get("b"), Some("\u{2713}"));
        assert_eq!(f.get("c"), None);
        assert_eq!(f.get("d"), Some("100%"));
        assert_eq!(f.get("e"), Some("%zz"));
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn form_rejects_repeats_even_when_encoded_differently() {
        assert_eq!(Form::parse(b"scope=a&scope=b"), Err(FormError::Repeated));
        assert_eq!(Form::parse(b"scope=a&sc%6Fpe=b"), Err(FormError::Repeated));
        assert_eq!(Form::parse(b"scope=&scope="), Err(FormError::Repeated));
    }

    #[test]
    fn form_rejects_non_utf8() {
        assert_eq!(Form::parse(b"a=%FF"), Err(FormError::NotUtf8));
        assert_eq!(Form::parse(b"a=\xff"), Err(FormError::NotUtf8));
    }

    #[test]
    fn empty_body_and_stray_ampersands_are_fine() {
        assert!(Form::parse(b"").expect("valid").is_empty());
        assert_eq!(Form::parse(b"&&a=1&&").expect("valid").get("a"), Some("1"));
    }
}
