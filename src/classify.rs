//! Which endpoint a request is for, and the token-endpoint form. Pure: no I/O.
//!
//! The endpoint paths come from the upstream's discovery document or from config
//! ([`Endpoints`]). A request is classified by method and exact path (the query is ignored, as
//! the upstream would ignore it); everything that is not one of the endpoints the proxy owns is
//! [`Endpoint::Other`] and is forwarded untouched.
//!
//! Servers route leniently: one merges `//`, one ignores case, one decodes `%2F` or drops a
//! trailing slash. A path that is not the exact token, revocation or introspection path but that
//! some server could route there ([`canonical_path`]: the union of those normalisations) is
//! [`Endpoint::Variant`], which the proxy refuses, so no request reaches those endpoints of the
//! upstream without passing the proxy's rules (docs/paths.md).
//!
//! [`Form::parse`] reads an `application/x-www-form-urlencoded` body strictly: values must be
//! UTF-8 after percent-decoding, and a parameter may appear once (RFC 6749 §3.2: "Request and
//! response parameters MUST NOT be included more than once").
//!
//! ```
//! use refresh_proxy::internal::classify::Form;
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
    /// The proxy's own back-channel logout receiver (`upstream.backchannel_logout_path`).
    pub backchannel_logout_path: Option<String>,
}

/// What a request is, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Revocation,
    Introspection,
    Jwks,
    /// The proxy's back-channel logout receiver (any method; only POST is answered 200).
    BackchannelLogout,
    /// Not the exact path of the token, revocation or introspection endpoint (whatever the
    /// method), but one a lenient server routes there: refused with 400.
    Variant(Owned),
    Other,
}

/// The endpoints whose variants are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Token,
    Revocation,
    Introspection,
}

impl Endpoints {
    /// The token endpoint's URL as clients call it: the issuer's origin and the token path
    /// (the proxy stands at the IdP's address). A DPoP proof's `htu` must name it.
    pub fn token_url(&self) -> Option<String> {
        let issuer = url::Url::parse(self.issuer.as_deref()?).ok()?;
        let path = self.token_path.as_deref()?;
        Some(format!("{}{path}", issuer.origin().ascii_serialization()))
    }

    pub fn classify(&self, method: &Method, path: &str) -> Endpoint {
        let is = |p: &Option<String>| p.as_deref() == Some(path);
        if is(&self.backchannel_logout_path) {
            return Endpoint::BackchannelLogout;
        }
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
        let owned = [
            (&self.token_path, Owned::Token),
            (&self.revocation_path, Owned::Revocation),
            (&self.introspection_path, Owned::Introspection),
        ];
        let mut canonical = None;
        for (owned_path, which) in owned {
            let Some(owned_path) = owned_path.as_deref() else {
                continue;
            };
            if owned_path == path {
                // The exact path with another method: the upstream answers it.
                continue;
            }
            let c = canonical.get_or_insert_with(|| canonical_path(path));
            if **c == *canonical_path(owned_path) {
                return Endpoint::Variant(which);
            }
        }
        Endpoint::Other
    }
}

impl Endpoint {
    /// The token, revocation or introspection endpoint (not a variant of one).
    pub fn owned(self) -> Option<Owned> {
        match self {
            Endpoint::Token => Some(Owned::Token),
            Endpoint::Revocation => Some(Owned::Revocation),
            Endpoint::Introspection => Some(Owned::Introspection),
            Endpoint::Jwks
            | Endpoint::BackchannelLogout
            | Endpoint::Variant(_)
            | Endpoint::Other => None,
        }
    }
}

impl From<Owned> for Endpoint {
    fn from(owned: Owned) -> Endpoint {
        match owned {
            Owned::Token => Endpoint::Token,
            Owned::Revocation => Endpoint::Revocation,
            Owned::Introspection => Endpoint::Introspection,
        }
    }
}

/// Parameter names that carry a token request, its client's credentials or the token of a
/// revocation or introspection request (RFC 6749, 7009, 7521, 7523, 7662, 8628, 8693, 8707).
const REQUEST_PARAMETERS: &[&str] = &[
    "grant_type",
    "refresh_token",
    "code",
    "code_verifier",
    "redirect_uri",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "username",
    "password",
    "device_code",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "audience",
    "resource",
    "token",
    "token_type_hint",
];

/// Whether a query on the token, revocation or introspection endpoint names a request
/// parameter (or one that does not decode): RFC 6749 §3.2 puts them in the body, which is all
/// the proxy reads, so an upstream that merged the query into the request would act on
/// parameters the proxy never saw. Other queries (a tenant selector, say) are the upstream's.
pub fn query_names_a_request_parameter(query: &str) -> bool {
    query.split('&').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        match decode(name.as_bytes()) {
            Ok(name) => REQUEST_PARAMETERS.contains(&name.as_str()),
            Err(_) => true,
        }
    })
}

/// How many times [`canonical_path`] percent-decodes (`%252F` → `%2F` → `/`).
const DECODE_ROUNDS: usize = 3;

/// `path` as the most lenient of common servers would route it: percent-decoded (repeatedly,
/// up to three times, `%2F` and `%2E` included), cut at a NUL byte, `\` read as
/// `/`, `;`-parameters dropped from each segment (servlet containers), empty and `.` segments
/// dropped and `..` resolved, no trailing slash, ASCII lowercase. Two paths with the same
/// canonical form may reach the same handler of some upstream. Borrows when `path` is already
/// canonical (the common case: no allocation).
pub fn canonical_path(path: &str) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    let bytes = path.as_bytes();
    if is_canonical(bytes) {
        return Cow::Borrowed(bytes);
    }
    let mut decoded = bytes.to_vec();
    for _ in 0..DECODE_ROUNDS {
        match percent_decode_once(&decoded) {
            Some(next) => decoded = next,
            None => break,
        }
    }
    if let Some(nul) = decoded.iter().position(|&b| b == 0) {
        decoded.truncate(nul);
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/' || b == b'\\') {
        let segment = match segment.iter().position(|&b| b == b';') {
            Some(i) => &segment[..i],
            None => segment,
        };
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in segments {
        out.push(b'/');
        out.extend(s.iter().map(u8::to_ascii_lowercase));
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// Whether [`canonical_path`] would leave `path` as it is.
fn is_canonical(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    !rest
        .iter()
        .any(|&b| matches!(b, b'%' | b'\\' | b';' | 0) || b.is_ascii_uppercase())
        && rest
            .split(|&b| b == b'/')
            .all(|s| !matches!(s, b"" | b"." | b".."))
}

/// One round of percent-decoding; `None` when there was nothing to decode.
fn percent_decode_once(input: &[u8]) -> Option<Vec<u8>> {
    if !input.contains(&b'%') {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            changed = true;
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    changed.then_some(out)
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
                    .any(|(n, _)| bytes(&body, n) == bytes(&body, &name)),
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
        // Names compared as bytes: only the value found is turned into a `&str` (each turn
        // re-checks UTF-8, and the engine looks up a dozen names a request).
        self.params
            .iter()
            .find(|(n, _)| bytes(&self.body, n) == name.as_bytes())
            .map(|(_, v)| resolve(&self.body, v))
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

/// The bytes of one name or value, unchecked (compare with these; hand out [`resolve`]'s).
fn bytes<'a>(body: &'a [u8], text: &'a Text) -> &'a [u8] {
    match text {
        Text::Raw(start, end) => &body[*start as usize..*end as usize],
        Text::Decoded(s) => s.as_bytes(),
    }
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
        assert_eq!(
            e.classify(&Method::POST, "/oauth/token/"),
            Endpoint::Variant(Owned::Token)
        );
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
    fn every_lenient_spelling_of_an_owned_path_is_a_variant() {
        let e = endpoints();
        for path in [
            "/oauth/token/",
            "/OAUTH/TOKEN",
            "/oauth/Token",
            "//oauth/token",
            "/oauth//token",
            "/./oauth/token",
            "/oauth/./token",
            "/oauth/x/../token",
            "/x/../oauth/token",
            "/../oauth/token",
            "/oauth/%2e/token",
            "/oauth/%2E%2E/oauth/token",
            "/oauth%2Ftoken",
            "/oauth%2ftoken",
            "/oauth%252Ftoken",
            "/oauth/%74oken",
            "/oauth/token%2F",
            "/oauth/token;jsessionid=1",
            "/oauth;x=y/token",
            "/oauth/token%00.json",
            "/oauth\\token",
            "/oauth/token/.",
            "oauth/token",
        ] {
            for method in [Method::POST, Method::GET, Method::PUT] {
                assert_eq!(
                    e.classify(&method, path),
                    Endpoint::Variant(Owned::Token),
                    "{method} {path}"
                );
            }
        }
        assert_eq!(
            e.classify(&Method::POST, "/oauth/REVOKE"),
            Endpoint::Variant(Owned::Revocation)
        );
        assert_eq!(
            e.classify(&Method::POST, "/oauth/introspect/"),
            Endpoint::Variant(Owned::Introspection)
        );
        for other in [
            "/oauth/tokens",
            "/oauth/token/x",
            "/oauth/token.json",
            "/oauth",
            "/",
            "/jwks/",
            "/oauth/%zz/token",
        ] {
            assert_eq!(e.classify(&Method::POST, other), Endpoint::Other, "{other}");
        }
    }

    #[test]
    fn an_owned_path_that_is_not_itself_canonical_still_matches_exactly() {
        // django-oauth-toolkit's token path ends with a slash; Keycloak's holds the realm name.
        let e = Endpoints {
            token_path: Some("/o/token/".into()),
            revocation_path: Some("/realms/Main/revoke".into()),
            ..Endpoints::default()
        };
        assert_eq!(e.classify(&Method::POST, "/o/token/"), Endpoint::Token);
        assert_eq!(
            e.classify(&Method::POST, "/o/token"),
            Endpoint::Variant(Owned::Token)
        );
        assert_eq!(
            e.classify(&Method::POST, "/realms/Main/revoke"),
            Endpoint::Revocation
        );
        assert_eq!(
            e.classify(&Method::POST, "/realms/main/revoke"),
            Endpoint::Variant(Owned::Revocation)
        );
        assert_eq!(e.classify(&Method::GET, "/o/token/"), Endpoint::Other);
    }

    #[test]
    fn a_query_naming_a_request_parameter_is_found_however_it_is_spelled() {
        for q in [
            "grant_type=x",
            "a=1&refresh_token",
            "gr%61nt_type=x",
            "client+id=x&client_id=y",
            "token=",
            "%ff=1",
        ] {
            assert!(query_names_a_request_parameter(q), "{q}");
        }
        for q in [
            "",
            "p=B2C_1_signin",
            "tenant=blue&x=grant_type",
            "grant_typex=1",
        ] {
            assert!(!query_names_a_request_parameter(q), "{q}");
        }
    }

    #[test]
    fn canonical_paths_borrow_when_nothing_changes() {
        use std::borrow::Cow;
        assert!(matches!(canonical_path("/oauth/token"), Cow::Borrowed(_)));
        assert!(matches!(canonical_path("/"), Cow::Borrowed(_)));
        assert_eq!(&*canonical_path("/A//b/./c/../d/"), b"/a/b/d");
        assert_eq!(&*canonical_path("/.."), b"/");
        assert_eq!(
            &*canonical_path("/%2525252Fx"),
            b"/%2fx",
            "three rounds, no more"
        );
        assert_eq!(&*canonical_path("/a%ff"), b"/a\xff");
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
