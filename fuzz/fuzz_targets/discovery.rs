//! Discovery documents: the OIDC discovery document and RFC 8414 metadata as JSON
//! (`discovery::Document`), merged under the config's overrides (`merge_documents`, `merge`),
//! then checked (`check`, `refusal`, `missing`).
//!
//! Input: one flag byte, then the OIDC document, a NUL, and the RFC 8414 document. Flag bits:
//! 0 `upstream.issuer` set, 1 `token_path`, 2 `revocation_path`, 3 `jwks_path`,
//! 4 `introspection_path`, 5 `revocation = "absent"` (without a revocation path),
//! 6 the OIDC document is missing (404), 7 the RFC 8414 one is.
//!
//! Properties:
//! - parsing and merging never panic;
//! - merging is symmetric in whether it succeeds, and in the issuer and every endpoint that only
//!   one document names;
//! - an accepted merge has a token path; a configured value always wins (source `Config`);
//!   every discovered path is a URL's path (no query, no fragment); the issuer is the
//!   configured one or one a document names, never empty;
//! - `merge` of one document is `merge_documents` with the other missing;
//! - `refusal` is exactly "handled clients, no revocation path, not declared absent", and
//!   `check` agrees with it; `missing` lists exactly the unknown endpoints.
#![no_main]

use std::sync::OnceLock;

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use refresh_proxy::config::{Config, UpstreamConfig};
use refresh_proxy::internal::discovery::{
    DiscoveryError, Document, Source, check, merge, merge_documents, missing, refusal,
};

const ISSUER: &str = "https://idp.example.com/realms/x";

fn configs() -> &'static [UpstreamConfig] {
    static CONFIGS: OnceLock<Vec<UpstreamConfig>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        (0u8..64)
            .map(|flags| {
                let mut text = String::from("[upstream]\nurl = \"http://127.0.0.1:9/realms/x\"\n");
                let mut set = |bit: u8, line: &str| {
                    if flags & (1 << bit) != 0 {
                        text.push_str(line);
                    }
                };
                set(0, &format!("issuer = \"{ISSUER}\"\n"));
                set(1, "token_path = \"/configured/token\"\n");
                set(2, "revocation_path = \"/configured/revoke\"\n");
                set(3, "jwks_path = \"/configured/jwks\"\n");
                set(4, "introspection_path = \"/configured/introspect\"\n");
                if flags & (1 << 5) != 0 && flags & (1 << 2) == 0 {
                    text.push_str("revocation = \"absent\"\n");
                }
                Config::from_toml_str(&text, std::path::Path::new("."), std::iter::empty())
                    .expect("config")
                    .upstream
            })
            .collect()
    })
}

fn doc(bytes: &[u8], missing: bool) -> Result<Document, DiscoveryError> {
    if missing {
        return Err(DiscoveryError::Status(StatusCode::NOT_FOUND));
    }
    Ok(serde_json::from_slice(bytes)?)
}

fn fuzz(flags: u8, oidc: &[u8], rfc: &[u8]) {
    let config = &configs()[usize::from(flags & 63)];
    let (no_oidc, no_rfc) = (flags & 64 != 0, flags & 128 != 0);
    let merged = merge_documents(config, doc(oidc, no_oidc), doc(rfc, no_rfc));
    let swapped = merge_documents(config, doc(rfc, no_rfc), doc(oidc, no_oidc));
    assert_eq!(merged.is_ok(), swapped.is_ok(), "{merged:?} / {swapped:?}");

    // The issuers each usable document names.
    let issuer_of = |bytes: &[u8], missing: bool| {
        doc(bytes, missing)
            .ok()
            .and_then(|d| d.issuer)
            .filter(|i| !i.is_empty())
    };
    let issuers = [issuer_of(oidc, no_oidc), issuer_of(rfc, no_rfc)];

    if let (Ok(d), Ok(s)) = (&merged, &swapped) {
        let e = &d.endpoints;
        assert!(e.token_path.is_some());
        assert_eq!(
            e.issuer, s.endpoints.issuer,
            "the issuer depends on the order"
        );
        let issuer = e.issuer.as_deref().expect("an issuer");
        assert!(!issuer.is_empty());
        match &config.issuer {
            Some(configured) => {
                assert_eq!(
                    (issuer, d.sources.issuer),
                    (configured.as_str(), Source::Config)
                )
            }
            None => assert!(issuers.iter().flatten().any(|i| i == issuer)),
        }
        for (configured, got, source, other) in [
            (
                &config.token_path,
                &e.token_path,
                d.sources.token,
                &s.endpoints.token_path,
            ),
            (
                &config.revocation_path,
                &e.revocation_path,
                d.sources.revocation,
                &s.endpoints.revocation_path,
            ),
            (
                &config.introspection_path,
                &e.introspection_path,
                d.sources.introspection,
                &s.endpoints.introspection_path,
            ),
            (
                &config.jwks_path,
                &e.jwks_path,
                d.sources.jwks,
                &s.endpoints.jwks_path,
            ),
        ] {
            match configured {
                Some(c) => assert_eq!((got, source), (&Some(c.clone()), Source::Config)),
                None => {
                    assert_ne!(source, Source::Config);
                    assert_eq!(got.is_some(), source != Source::None);
                    assert_eq!(got.is_some(), other.is_some(), "found in one order only");
                    if let Some(p) = got {
                        assert!(!p.contains(['?', '#']), "{p:?} is not a path");
                    }
                }
            }
        }
        for handled in [false, true] {
            let refused = refusal(config, handled, e);
            let want = handled
                && e.revocation_path.is_none()
                && config.revocation != refresh_proxy::config::RevocationMode::Absent;
            assert_eq!(refused.is_some(), want);
            assert_eq!(check(config, handled, e).is_err(), want);
        }
        let gone = missing(e);
        assert_eq!(gone.contains(&"revocation"), e.revocation_path.is_none());
        assert_eq!(gone.contains(&"jwks"), e.jwks_path.is_none());
        assert_eq!(
            gone.contains(&"introspection"),
            e.introspection_path.is_none()
        );
        assert!(!gone.contains(&"token"));
    }

    // One document: `merge` is `merge_documents` with the other missing.
    if let Ok(one) = doc(oidc, false) {
        let alone = merge(config, one).map_err(|e| e.to_string());
        let pair = merge_documents(
            config,
            doc(oidc, false),
            Err(DiscoveryError::Status(StatusCode::NOT_FOUND)),
        )
        .map(|d| d.endpoints)
        .map_err(|e| e.to_string());
        assert_eq!(alone, pair);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (oidc, rfc) = match rest.iter().position(|&c| c == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    fuzz(flags, oidc, rfc);
});
