//! The token-endpoint form parser (`classify::Form`) and the content-type check.
//!
//! Input: a request body, as the proxy reads it (up to `server.max_body_bytes`).
//!
//! Properties:
//! - `Form::parse` agrees exactly (pairs, or which error) with a plain reference parser built on
//!   the `percent-encoding` crate: `&`-separated, empty pairs skipped, the first `=` splits,
//!   `+` is a space, `%XX` a byte, values must be UTF-8, no name twice, at most `MAX_PARAMS`;
//! - `parse_bytes` gives the same as `parse`; `get` is the value of the name, `None` when empty;
//! - a parsed form, written again with `form_urlencoded::Serializer`, parses to the same form;
//! - `Form::decode_value` agrees with the reference decoding;
//! - `is_form_content_type` of the input as a header value never panics and agrees with a
//!   reference (the media type before `;`, trimmed, case-insensitively).
#![no_main]

use bytes::Bytes;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::internal::classify::{Form, FormError, MAX_PARAMS, is_form_content_type};

fn reference_decode(raw: &[u8]) -> Option<String> {
    let plus: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    String::from_utf8(percent_encoding::percent_decode(&plus).collect()).ok()
}

fn reference_parse(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if out.len() == MAX_PARAMS {
            return Err(FormError::TooMany);
        }
        let name = reference_decode(name).ok_or(FormError::NotUtf8)?;
        let value = reference_decode(value).ok_or(FormError::NotUtf8)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(FormError::Repeated);
        }
        out.push((name, value));
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let parsed = Form::parse(data);
    let expected = reference_parse(data);
    match (&parsed, &expected) {
        (Ok(form), Ok(pairs)) => {
            let got: Vec<(String, String)> = form
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(&got, pairs, "pairs differ from the reference");
            assert_eq!(form.len(), pairs.len());
            assert_eq!(form.is_empty(), pairs.is_empty());
            for (n, v) in pairs {
                let want = Some(v.as_str()).filter(|v| !v.is_empty());
                assert_eq!(form.get(n), want, "get({n:?})");
            }
            // Written again, it parses to the same form.
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (n, v) in form.iter() {
                s.append_pair(n, v);
            }
            let again = Form::parse(s.finish().as_bytes()).expect("a serialised form parses");
            assert_eq!(&again, form, "round trip");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "a different error than the reference"),
        _ => panic!("parse {parsed:?} but reference {expected:?}"),
    }
    assert_eq!(
        Form::parse_bytes(Bytes::copy_from_slice(data)),
        parsed,
        "parse_bytes differs from parse"
    );
    assert_eq!(Form::decode_value(data), reference_decode(data));

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let want = value.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        assert_eq!(is_form_content_type(Some(&value)), want);
    }
});
