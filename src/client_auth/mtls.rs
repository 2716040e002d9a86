//! Client authentication with a certificate (RFC 8705 §2; docs/design.md §4.19). Pure: the
//! certificate is the one the connection or a trusted front proxy gave, the trust anchors and
//! the client's registered keys are given.
//!
//! - `tls_client_auth` (§2.1): the certificate chains to one of `server.client_ca_file`'s
//!   anchors, and its subject matches the one value the client registered: a distinguished name
//!   (`tls_client_auth_subject_dn`, RFC 4514 text) or a subject alternative name (DNS name, URI,
//!   IP address or e-mail address).
//! - `self_signed_tls_client_auth` (§2.2): the certificate is one the client registered, in the
//!   `x5c` (or `x5t#S256`) of a key in its JWK Set; no chain is checked.
//!
//! The subject and its matching are `client_cert::subject`'s (config checks it too).

use std::sync::Arc;

pub use crate::client_cert::subject::Subject;
use crate::grant::verify::KeySet;

/// How a client that authenticates with a certificate is checked.
#[derive(Debug, Clone)]
pub enum CertAuth {
    /// `tls_client_auth`: a chain to `server.client_ca_file` and this subject.
    Pki(Subject),
    /// `self_signed_tls_client_auth`: one of the client's registered certificates.
    SelfSigned(SelfSignedKeys),
}

/// Where a `self_signed_tls_client_auth` client's certificates are registered.
#[derive(Debug, Clone)]
pub enum SelfSignedKeys {
    /// `jwks` or `jwks_file`, parsed once: [`KeySet::certificates`].
    Jwks(Arc<KeySet>),
    /// `jwks_uri`: fetched and cached by the caller; fetched again (at most once per interval)
    /// when the presented certificate is not in the cached set.
    Uri {
        uri: String,
        refetch_interval: std::time::Duration,
    },
}
