//! Client certificates (RFC 8705): the one a client presented on the proxy's TLS listener
//! (`server.tls_client_certificates`), or the one a trusted front proxy that terminated TLS
//! passes on in an RFC 9440 `Client-Cert` header (`server.client_cert_header`). Pure: the
//! certificate is taken as the TLS layer or the front proxy gave it; its meaning (which family
//! it binds) is decided elsewhere (docs/design.md §4.17).

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderName, HeaderValue};

/// RFC 9440 §2.2: the client certificate, as a structured-field byte sequence.
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("client-cert");
/// RFC 9440 §2.3: the rest of its chain.
pub const CLIENT_CERT_CHAIN: HeaderName = HeaderName::from_static("client-cert-chain");
/// The prefix of a certificate binding: `x5t#S256:` and the certificate's SHA-256 thumbprint
/// (RFC 8705 §3.1).
pub const X5T_S256: &str = "x5t#S256:";
/// The largest certificate read from a header (DER bytes).
pub const MAX_CERT_BYTES: usize = 16 * 1024;

/// A client certificate: its DER bytes and RFC 8705 §3.1 thumbprint.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCert {
    der: Vec<u8>,
    thumbprint: String,
}

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
        }
    }

    /// RFC 9440 §2.2: `Client-Cert: :<base64 of the DER>:` (an RFC 8941 byte sequence);
    /// `None` when the value is not one, or is empty or larger than [`MAX_CERT_BYTES`].
    pub fn from_header(value: &HeaderValue) -> Option<ClientCert> {
        let text = value.to_str().ok()?.trim();
        let inner = text.strip_prefix(':')?.strip_suffix(':')?;
        if inner.len() > MAX_CERT_BYTES * 4 / 3 + 4 {
            return None;
        }
        let der = STANDARD.decode(inner).ok()?;
        (!der.is_empty() && der.len() <= MAX_CERT_BYTES).then(|| ClientCert::from_der(&der))
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
}
