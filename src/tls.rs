//! TLS set-up with rustls on the aws-lc-rs provider (the crate's one crypto backend).
//!
//! - [`client_config`]: for an `https` upstream, trusting the system roots or a CA file;
//!   the connector offers `h2` and `http/1.1` by ALPN.
//! - [`server_acceptor`]: for the optional TLS listeners (the proxy port, `server.tls_*`, and
//!   the admin port, `server.admin_tls_*`), from PEM certificate chain and key files; ALPN
//!   offers `h2` and `http/1.1`.
//! - [`admin_client_config`]: for the CLI talking to an admin port that serves TLS, trusting
//!   the certificates of `server.admin_tls_cert_file` and the system roots.
//!
//! Both are built once at start-up; a file that cannot be read or parsed is a config error
//! naming its key.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which CAs an upstream connection trusts.
#[derive(Debug, Clone, Copy)]
pub enum Roots<'a> {
    /// The system's roots (read from disk: tens of milliseconds).
    System,
    /// The certificates of a PEM file.
    File(&'a Path),
    /// None: the upstream is plain http, so no TLS connection is ever made.
    Unused,
}

/// The TLS configuration for connections to the upstream.
pub fn client_config(roots_from: Roots<'_>) -> Result<rustls::ClientConfig, ConfigError> {
    let key = "upstream.ca_file";
    let mut roots = RootCertStore::empty();
    match roots_from {
        Roots::Unused => {}
        Roots::File(path) => {
            for cert in read_certs(key, path)? {
                roots
                    .add(cert)
                    .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
            }
        }
        Roots::System => {
            // Unreadable system certificates are skipped, as every TLS client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    // ALPN (h2, http/1.1) is set by the connector that uses this config.
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(key, e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What [`http1_client`] makes.
pub type HttpClient<B> = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>;

/// An HTTP/1.1 client for URLs outside the upstream (clients' endpoints and key sets):
/// `https` verified with `roots`, `http` allowed, `timeout` to connect.
pub fn http1_client<B>(
    roots: Roots<'_>,
    timeout: std::time::Duration,
) -> Result<HttpClient<B>, ConfigError>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let tls = client_config(roots)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// Which listener an acceptor is for: its config keys name the files in errors.
#[derive(Debug, Clone, Copy)]
pub enum Listener {
    /// The proxy port: `server.tls_cert_file`, `server.tls_key_file`.
    Proxy,
    /// The admin port: `server.admin_tls_cert_file`, `server.admin_tls_key_file`.
    Admin,
}

impl Listener {
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Listener::Proxy => ("server.tls_cert_file", "server.tls_key_file"),
            Listener::Admin => ("server.admin_tls_cert_file", "server.admin_tls_key_file"),
        }
    }
}

/// The TLS acceptor of a listener.
pub fn server_acceptor(
    listener: Listener,
    cert_file: &Path,
    key_file: &Path,
    client_certificates: bool,
) -> Result<tokio_rustls::TlsAcceptor, ConfigError> {
    let (cert_key, key_key) = listener.keys();
    let certs = read_certs(cert_key, cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        ConfigError::invalid(
            key_key,
            format!("{}: no PEM private key ({e})", key_file.display()),
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(cert_key, e))?;
    let builder = if client_certificates {
        builder.with_client_cert_verifier(Arc::new(AnyClientCert(provider())))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::invalid(key_key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `server.tls_client_certificates`: asks every client for a certificate and takes any whose
/// key the client proves it holds (the handshake signature is checked); a client may send none.
/// There is no chain check here: a certificate means nothing until a family is bound to it
/// (docs/design.md §4.17).
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS configuration of a client of the admin port (the CLI), which reads the same config
/// as the proxy: it trusts the certificates of `server.admin_tls_cert_file` (a self-signed
/// certificate, or a chain that holds its CA) and the system roots.
pub fn admin_client_config(cert_file: &Path) -> Result<rustls::ClientConfig, ConfigError> {
    let key = "server.admin_tls_cert_file";
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for cert in read_certs(key, cert_file)? {
        roots
            .add(cert)
            .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", cert_file.display())))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(key, e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `server.client_ca_file`: the anchors of `tls_client_auth` certificates (docs/design.md
/// §4.19).
pub fn client_ca(path: &Path) -> Result<crate::client_cert::ClientCa, ConfigError> {
    let key = "server.client_ca_file";
    crate::client_cert::ClientCa::new(read_certs(key, path)?, provider())
        .map_err(|why| ConfigError::invalid(key, format!("{}: {why}", path.display())))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(certs)
}
