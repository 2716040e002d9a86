//! Client certificates (`client_cert`, `client_cert::subject`): what a trusted front proxy's
//! `Client-Cert`/`Client-Cert-Chain` headers and a client's TLS certificate can make the proxy
//! read, and the RFC 4514 subject names of `tls_client_auth` (docs/design.md §4.19).
//!
//! Input: one byte, then a body. `byte % 3`:
//! - 0: the body is the two header values, `Client-Cert` up to the first newline, then
//!   `Client-Cert-Chain`;
//! - 1: the body is RFC 4514 text;
//! - 2: the body is a certificate's DER (as a TLS handshake would hand it over).
//!
//! Properties:
//! - nothing panics: reading the headers, parsing a subject, matching any subject against any
//!   bytes;
//! - an accepted header holds a non-empty certificate of at most `MAX_CERT_BYTES`, whose
//!   thumbprint is the SHA-256 (base64url) of exactly the bytes the header carried, and whose
//!   binding is `x5t#S256:` and that thumbprint;
//! - a parsed subject has at least one RDN, none empty, and every value is already in the
//!   compared form (lower case, single spaces, none at the ends), so parsing is a normal form:
//!   the same text upper-cased parses to the same subject.
#![no_main]

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::internal::client_cert::subject::Subject;
use refresh_proxy::internal::client_cert::{ClientCert, MAX_CERT_BYTES, X5T_S256};

fn subjects() -> Vec<Subject> {
    [
        ("subject_dn", "CN=client,O=Example"),
        ("san_dns", "client.test"),
        ("san_uri", "spiffe://example.test/client"),
        ("san_ip", "10.0.0.1"),
        ("san_email", "ops@example.test"),
    ]
    .into_iter()
    .map(|(kind, value)| Subject::parse(kind, value).expect("a valid subject"))
    .collect()
}

fn match_all(der: &[u8]) {
    for s in subjects() {
        let _ = s.matches(der);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let (cert, chain) = match body.iter().position(|&b| b == b'\n') {
                Some(i) => (&body[..i], Some(&body[i + 1..])),
                None => (body, None),
            };
            let Ok(cert_value) = HeaderValue::from_bytes(cert) else {
                return;
            };
            let chain_value = chain.and_then(|c| HeaderValue::from_bytes(c).ok());
            let Some(got) = ClientCert::from_headers(&cert_value, chain_value.as_ref()) else {
                return;
            };
            let text = cert_value.to_str().expect("accepted as text").trim();
            let der = STANDARD
                .decode(&text[1..text.len() - 1])
                .expect("the header is a byte sequence");
            assert!(!der.is_empty() && der.len() <= MAX_CERT_BYTES);
            assert_eq!(got.der(), der.as_slice());
            let thumbprint = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &der));
            assert_eq!(got.thumbprint(), thumbprint);
            assert_eq!(got.binding(), format!("{X5T_S256}{thumbprint}"));
            match_all(got.der());
        }
        1 => {
            let text = String::from_utf8_lossy(body);
            let Ok(subject) = Subject::dn(&text) else {
                return;
            };
            let Subject::Dn(rdns) = &subject else {
                panic!("dn() makes a DN");
            };
            assert!(!rdns.is_empty());
            for rdn in rdns {
                assert!(!rdn.is_empty());
                for (oid, value) in rdn {
                    assert!(!oid.is_empty());
                    let normal = value.split_whitespace().collect::<Vec<_>>().join(" ");
                    assert_eq!(&normal.to_lowercase(), value, "values are in the compared form");
                }
            }
            // Upper-casing ASCII changes neither the attribute types (names are compared
            // without case, OIDs are digits) nor the compared values; `\c3` becomes `\C3`, the
            // same byte.
            let again = Subject::dn(&text.to_ascii_uppercase()).expect("upper-cased, it parses");
            assert!(again == subject, "upper-cased, the same subject");
            let _ = subject.matches(body);
        }
        _ => {
            let cert = ClientCert::from_der(body);
            assert_eq!(
                cert.thumbprint(),
                URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, body))
            );
            match_all(body);
        }
    }
});
