//! What a certificate client's authentication costs per refresh (docs/design.md §4.19), as a
//! ratio to the ES256 signature every refresh makes anyway, measured in the same run
//! (bench/README.md, "What certificate client authentication costs").
//!
//! - `tls_client_auth`: the chain check against `server.client_ca_file` (rustls' WebPKI
//!   verifier: one ECDSA P-256 verification per certificate in the path; made once per TLS
//!   connection, once per request for a front proxy's `Client-Cert`) and the subject match (the
//!   certificate parsed with x509-parser);
//! - `self_signed_tls_client_auth`: the thumbprint compared with the registered ones (the
//!   thumbprint is computed once per connection or header, with the certificate).
//!
//! `cargo run --release --example cert_auth`. Prints medians of 15 rounds of 2,000 operations.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use refresh_proxy::internal::client_auth::mtls::Subject;
use refresh_proxy::internal::client_cert::{ClientCa, ClientCert};

const ROUNDS: usize = 15;
const OPS: usize = 2_000;

/// Median nanoseconds per call of `f`.
fn median_ns(mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..OPS {
                f();
            }
            start.elapsed().as_nanos() as f64 / OPS as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Example Corp");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "payments");
    let leaf = params.signed_by(&key, &issuer).expect("leaf");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let anchors = ClientCa::new(vec![ca_cert.der().clone()], provider).expect("anchors");
    let subject = Subject::dn("CN=payments,O=Example Corp").expect("dn");
    let cert = ClientCert::from_der(leaf.der());
    assert!(anchors.trusts(&cert) && subject.matches(cert.der()));
    let registered: Vec<String> = (0..3)
        .map(|i| format!("{i:0>43}"))
        .chain([cert.thumbprint().to_owned()])
        .collect();

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("key");
    let message = [7u8; 300];

    let sign = median_ns(|| {
        black_box(signer.sign(&rng, black_box(&message)).expect("sign"));
    });
    // A front proxy's header makes a new certificate per request: checked each time.
    let chain = median_ns(|| {
        black_box(anchors.trusts(black_box(&ClientCert::from_der(leaf.der()))));
    });
    let parse = median_ns(|| {
        black_box(ClientCert::from_der(black_box(leaf.der())));
    });
    // A TLS connection's certificate is checked once, whatever it sends on the connection.
    let kept = median_ns(|| {
        black_box(anchors.trusts(black_box(&cert)));
    });
    let matched = median_ns(|| {
        black_box(subject.matches(black_box(cert.der())));
    });
    let self_signed = median_ns(|| {
        black_box(
            registered
                .iter()
                .any(|t| t == black_box(&cert).thumbprint()),
        );
    });
    let header = chain - parse + matched;
    let connection = kept + matched;
    println!(
        "ES256 signature (every refresh)      {:>9.1} µs",
        sign / 1000.0
    );
    println!(
        "tls_client_auth, Client-Cert header  {:>9.1} µs = {:.2}x the signature (chain {:.1} µs, subject {:.1} µs)",
        header / 1000.0,
        header / sign,
        (chain - parse) / 1000.0,
        matched / 1000.0
    );
    println!(
        "tls_client_auth, TLS connection      {:>9.1} µs = {:.2}x the signature (chain checked once per connection)",
        connection / 1000.0,
        connection / sign
    );
    println!(
        "self_signed_tls_client_auth check    {:>9.3} µs = {:.4}x the signature",
        self_signed / 1000.0,
        self_signed / sign
    );
}
