//! Client certificates (RFC 8705): the one a client presented on the proxy's TLS listener
//! (`server.tls_client_certificates`), or the one a trusted front proxy that terminated TLS
//! passes on in an RFC 9440 `Client-Cert` header (`server.client_cert_header`). Pure: the
//! certificate is taken as the TLS layer or the front proxy gave it; its meaning (which family
//! it binds) is decided elsewhere (docs/design.md §4.17).

pub mod subject;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

/// RFC 9440 §2.2: the client certificate, as a structured-field byte sequence.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// RFC 9440 §2.3: the rest of its chain.
pub const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
/// The prefix of a certificate binding: `x5t#S256:` and the certificate's SHA-256 thumbprint
/// (RFC 8705 §3.1).
pub const X5T_S256: &str = "x5t#S256:";
/// The largest certificate read from a header (DER bytes).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// The most intermediate certificates kept from a chain.
pub const MAX_CHAIN: usize = 8;

/// A client certificate: its DER bytes and RFC 8705 §3.1 thumbprint, and the intermediate
/// certificates that came with it (for a chain check: `tls_client_auth`).
#[derive(Clone)]
pub struct ClientCert {
    der: Vec<u8>,
    thumbprint: String,
    chain: Vec<Vec<u8>>,
    /// The outcome of the first chain check, and the [`ClientCa`] generation it was made
    /// against: a TLS connection's certificate is checked once, as at its handshake.
    trusted: OnceLock<(u64, bool)>,
}

impl PartialEq for ClientCert {
    fn eq(&self, other: &ClientCert) -> bool {
        self.der == other.der && self.chain == other.chain
    }
}

impl Eq for ClientCert {}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("x5t#S256", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// The certificate the TLS layer checked the client holds the key of.
    pub fn from_der(der: &[u8]) -> ClientCert {
        ClientCert {
            der: der.to_vec(),
            thumbprint: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der)),
            chain: Vec::new(),
            trusted: OnceLock::new(),
        }
    }

    /// The certificates a client sent in its TLS handshake: its own, then intermediates.
    pub fn from_tls(certs: &[CertificateDer<'_>]) -> Option<ClientCert> {
        let (first, rest) = certs.split_first()?;
        let mut cert = ClientCert::from_der(first.as_ref());
        cert.chain = rest
            .iter()
            .take(MAX_CHAIN)
            .map(|c| c.as_ref().to_vec())
            .collect();
        Some(cert)
    }

    /// RFC 9440 §2.2 and §2.3: `Client-Cert`, and `Client-Cert-Chain` when the front proxy
    /// sends it (a list of byte sequences; a malformed chain is no chain).
    pub fn from_headers(cert: &HeaderValue, chain: Option<&HeaderValue>) -> Option<ClientCert> {
        let mut cert = ClientCert::from_header(cert)?;
        if let Some(chain) = chain.and_then(|c| c.to_str().ok()) {
            cert.chain = chain
                .split(',')
                .take(MAX_CHAIN)
                .map(byte_sequence)
                .collect::<Option<Vec<_>>>()
                .filter(|v| v.iter().all(|d| !d.is_empty()))
                .unwrap_or_default();
        }
        Some(cert)
    }

    /// RFC 9440 §2.2: `Client-Cert: :<base64 of the DER>:` (an RFC 8941 byte sequence);
    /// `None` when the value is not one, or is empty or larger than [`MAX_CERT_BYTES`].
    pub fn from_header(value: &HeaderValue) -> Option<ClientCert> {
        let der = byte_sequence(value.to_str().ok()?)?;
        (!der.is_empty()).then(|| ClientCert::from_der(&der))
    }

    /// The certificate's DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The RFC 9440 header value for this certificate.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::try_from(format!(":{}:", STANDARD.encode(&self.der)))
            .expect("base64 is a valid header value")
    }

    /// The RFC 8705 §3.1 `x5t#S256` thumbprint: base64url of the DER's SHA-256.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The family binding this certificate proves (`x5t#S256:<thumbprint>`).
    pub fn binding(&self) -> String {
        format!("{X5T_S256}{}", self.thumbprint)
    }
}

/// An RFC 8941 byte sequence (`:<base64>:`) of at most [`MAX_CERT_BYTES`].
fn byte_sequence(text: &str) -> Option<Vec<u8>> {
    let inner = text.trim().strip_prefix(':')?.strip_suffix(':')?;
    if inner.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
        return None;
    }
    let der = STANDARD.decode(inner).ok()?;
    (der.len() <= MAX_CERT_BYTES).then_some(der)
}

/// `server.client_ca_file`: the anchors a `tls_client_auth` client's certificate must chain to
/// (docs/design.md §4.19). The path is checked as RFC 5280 says (signatures, validity, name
/// and basic constraints, the clientAuth usage when the certificate limits its usage); there
/// is no revocation check (no CRL or OCSP).
///
/// A certificate is checked once per [`ClientCert`]: once per TLS connection (as a TLS server
/// checks at the handshake), once per request for a front proxy's header. Each `ClientCa` (a
/// reload makes a new one) has a generation of its own, so a check is never reused against
/// other anchors.
#[derive(Clone)]
pub struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    anchors: usize,
    generation: u64,
}

/// The next [`ClientCa`] generation.
static GENERATION: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.anchors)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// Anchors from CA certificates; an error when none can be one.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<ClientCa, String> {
        let mut roots = rustls::RootCertStore::empty();
        let (anchors, _) = roots.add_parsable_certificates(certs);
        if anchors == 0 {
            return Err("holds no CA certificate".to_owned());
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
        Ok(ClientCa {
            verifier,
            anchors,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Whether `cert` chains to an anchor (now, or when this certificate was first checked
    /// against these anchors).
    pub fn trusts(&self, cert: &ClientCert) -> bool {
        match cert.trusted.get() {
            Some((generation, ok)) if *generation == self.generation => *ok,
            _ => {
                let ok = self.check(cert);
                // The first check is kept; after a reload, later ones are made each time.
                let _ = cert.trusted.set((self.generation, ok));
                ok
            }
        }
    }

    fn check(&self, cert: &ClientCert) -> bool {
        let intermediates: Vec<CertificateDer<'_>> = cert
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        self.verifier
            .verify_client_cert(
                &CertificateDer::from(cert.der.as_slice()),
                &intermediates,
                UnixTime::now(),
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_and_the_thumbprint_is_the_der_digest() {
        let cert = ClientCert::from_der(b"\x30\x03\x02\x01\x01");
        let again = ClientCert::from_header(&cert.header_value()).expect("parses");
        assert_eq!(again, cert);
        assert_eq!(
            cert.thumbprint(),
            URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, b"\x30\x03\x02\x01\x01"))
        );
        assert_eq!(cert.binding(), format!("x5t#S256:{}", cert.thumbprint()));
        assert!(format!("{cert:?}").contains(cert.thumbprint()));
    }

    #[test]
    fn malformed_headers_are_no_certificate() {
        for bad in [
            "",
            "::",
            "MAMCAQE=",
            ":MAMCAQE=",
            ":not base64!:",
            "\"MAMCAQE=\"",
        ] {
            let value = HeaderValue::from_str(bad).expect("value");
            assert_eq!(ClientCert::from_header(&value), None, "{bad}");
        }
        let huge = format!(":{}:", STANDARD.encode(vec![0u8; MAX_CERT_BYTES + 1]));
        assert_eq!(
            ClientCert::from_header(&HeaderValue::from_str(&huge).expect("value")),
            None
        );
        assert!(
            ClientCert::from_header(&HeaderValue::from_static(" :MAMCAQE=: ")).is_some(),
            "surrounding spaces are allowed"
        );
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA");
        (cert, rcgen::Issuer::new(p, key))
    }

    fn leaf(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let p = rcgen::CertificateParams::new(vec!["client.test".to_owned()]).expect("params");
        p.signed_by(&key, issuer).expect("leaf")
    }

    fn header(der: &[u8]) -> String {
        format!(":{}:", STANDARD.encode(der))
    }

    #[test]
    fn a_client_ca_trusts_its_chains_and_nothing_else() {
        let (root, root_issuer) = ca("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let anchors = ClientCa::new(vec![root.der().clone()], provider.clone()).expect("CA");
        let direct = leaf(&root_issuer);
        assert!(anchors.trusts(&ClientCert::from_der(direct.der())));

        // Through an intermediate: trusted only with the chain (TLS, or Client-Cert-Chain).
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let mid = p.signed_by(&key, &root_issuer).expect("intermediate");
        let mid_issuer = rcgen::Issuer::new(p, key);
        let deep = leaf(&mid_issuer);
        assert!(!anchors.trusts(&ClientCert::from_der(deep.der())));
        let tls = ClientCert::from_tls(&[deep.der().clone(), mid.der().clone()]).expect("cert");
        assert!(anchors.trusts(&tls));
        let cert = HeaderValue::from_str(&header(deep.der())).expect("value");
        let chain = HeaderValue::from_str(&header(mid.der())).expect("value");
        let forwarded = ClientCert::from_headers(&cert, Some(&chain)).expect("cert");
        assert_eq!(forwarded, tls);
        assert!(anchors.trusts(&forwarded));
        let bad_chain = HeaderValue::from_static(":AA==:, nope");
        let no_chain = ClientCert::from_headers(&cert, Some(&bad_chain)).expect("cert");
        assert!(!anchors.trusts(&no_chain), "a malformed chain is no chain");

        // Another CA's certificate, a self-signed one, garbage: not trusted.
        let (_, other) = ca("root");
        assert!(!anchors.trusts(&ClientCert::from_der(leaf(&other).der())));
        let (self_signed, _) = ca("client");
        assert!(!anchors.trusts(&ClientCert::from_der(self_signed.der())));
        assert!(!anchors.trusts(&ClientCert::from_der(b"\x30\x00")));
        // A check is kept for these anchors only: other anchors (a reload) check again.
        let (other_root, other_issuer) = ca("other");
        let others = ClientCa::new(vec![other_root.der().clone()], provider.clone()).expect("CA");
        let c = ClientCert::from_der(direct.der());
        assert!(anchors.trusts(&c));
        assert!(!others.trusts(&c));
        assert!(anchors.trusts(&c));
        let theirs = ClientCert::from_der(leaf(&other_issuer).der());
        assert!(!anchors.trusts(&theirs));
        assert!(others.trusts(&theirs));
        assert!(ClientCa::new(vec![CertificateDer::from(vec![1u8, 2])], provider).is_err());
    }
}
