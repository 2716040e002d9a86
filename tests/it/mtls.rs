//! Certificate-bound families (RFC 8705, docs/design.md §4.17), end to end: the client presents
//! a certificate to the proxy's TLS listener (or a trusted front proxy passes it on in an RFC
//! 9440 `Client-Cert` header), the proxy passes it to the real IdP (oidc-provider with
//! certificate-bound tokens on), the IdP binds its tokens to it, and the proxy's family is bound
//! to the same certificate. Certificates are made by rcgen, not by the proxy's code.

use base64::Engine as _;
use serde_json::Value;

use crate::support::StoreKind as Kind;
use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, REDIRECT_URI};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;

/// A client certificate and its key, self-signed by rcgen.
struct Cert {
    pem: String,
    key: String,
    /// RFC 8705 §3.1: base64url(SHA-256(DER)).
    x5t: String,
    der: Vec<u8>,
}

impl Cert {
    fn new(name: &str) -> Cert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        let der = cert.der().to_vec();
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der));
        Cert {
            pem: cert.pem(),
            key: key.serialize_pem(),
            x5t,
            der,
        }
    }

    /// A client that presents this certificate (and trusts any server certificate).
    fn client(&self) -> reqwest::Client {
        let identity = reqwest::Identity::from_pem(format!("{}{}", self.pem, self.key).as_bytes())
            .expect("identity");
        reqwest::Client::builder()
            .identity(identity)
            .tls_danger_accept_invalid_certs(true)
            .build()
            .expect("client")
    }

    /// RFC 9440 `Client-Cert` value.
    fn header(&self) -> String {
        format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(&self.der)
        )
    }
}

/// How the client's certificate reaches the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// On the proxy's TLS listener.
    Tls,
    /// In a trusted front proxy's `Client-Cert` header (here the test itself, on 127.0.0.1).
    Header,
    /// In a `Client-Cert` header from a peer that is not a trusted proxy.
    Untrusted,
}

struct Stack {
    idp: Idp,
    _proxy: TestProxy,
    _redis: Option<RedisServer>,
    base: String,
    via: Via,
    _dir: std::path::PathBuf,
}

impl Stack {
    async fn start(kind: Kind, via: Via) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base = match via {
            Via::Tls => format!("https://localhost:{port}"),
            Via::Header | Via::Untrusted => format!("http://127.0.0.1:{port}"),
        };
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(base.clone()),
            mtls: true,
            ..IdpOptions::default()
        })
        .await;
        let dir = crate::support::temp_dir("mtls");
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("server certificate");
        std::fs::write(dir.join("cert.pem"), server.cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), server.signing_key.serialize_pem()).expect("write");
        let listen = match via {
            Via::Tls => format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_certificates = true\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ),
            Via::Header => {
                "trusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = true\n".to_owned()
            }
            Via::Untrusted => "client_cert_header = true\n".to_owned(),
        };
        let (redis, store) = kind.start();
        let config = format!(
            "[server]\n{listen}\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.spa]\naccess_token_format = \"jwt\"\n\
             [upstream]\nurl = \"{up}\"\nforward_client_cert = true\n\
             introspection_client_id = \"rs\"\nintrospection_client_secret = \"rs-secret\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &config).await;
        proxy.wait_ready().await;
        Stack {
            idp,
            _proxy: proxy,
            _redis: redis,
            base,
            via,
            _dir: dir,
        }
    }

    /// A token request from a client holding `cert` (none: a plain client).
    async fn token(&self, cert: Option<&Cert>, form: &[(&str, &str)]) -> (u16, Value) {
        let http = match (cert, self.via) {
            (Some(c), Via::Tls) => c.client(),
            _ => reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .expect("client"),
        };
        let mut req = http.post(format!("{}/token", self.base)).form(form);
        if let (Some(c), Via::Header | Via::Untrusted) = (cert, self.via) {
            req = req.header("Client-Cert", c.header());
        }
        let res = req.send().await.expect("POST /token");
        let status = res.status().as_u16();
        (status, res.json().await.expect("JSON"))
    }

    async fn login(&self, cert: Option<&Cert>) -> (u16, Value) {
        let flow = CodeFlow::spa("openid offline_access read");
        let (verifier, code) =
            idp::authorize_in(&idp::new_browser(), &self.base, "/auth", true, &flow).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
            ("client_id", "spa"),
        ];
        self.token(cert, &form).await
    }

    async fn refresh(&self, cert: Option<&Cert>, token: &str) -> (u16, Value) {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "spa"),
        ];
        self.token(cert, &form).await
    }
}

fn rt(v: &Value) -> &str {
    v["refresh_token"].as_str().expect("a refresh token")
}

/// The IdP binds its tokens to the certificate the client presented to the proxy; the proxy's
/// family is bound to the same certificate, refreshed only by a client presenting it, and its
/// access tokens carry `cnf.x5t#S256`.
async fn certificate_bound_families(kind: Kind, via: Via) {
    let s = Stack::start(kind, via).await;
    let cert = Cert::new("client-a");
    let (status, login) = s.login(Some(&cert)).await;
    assert_eq!(status, 200, "{login}");
    let upstream = s.idp.last_refresh_token().await;
    assert_ne!(rt(&login), upstream, "captured: {login}");
    // The IdP saw the certificate and bound its access token to it.
    let seen = idp::introspect(&s.idp.base_url, login["access_token"].as_str().expect("at")).await;
    assert_eq!(seen["cnf"]["x5t#S256"], cert.x5t.as_str(), "{seen}");

    let (status, first) = s.refresh(Some(&cert), rt(&login)).await;
    assert_eq!(status, 200, "{first}");
    let claims = idp::jwt_claims(first["access_token"].as_str().expect("at"));
    assert_eq!(claims["cnf"]["x5t#S256"], cert.x5t.as_str(), "{claims}");

    // Without the certificate, or with another: invalid_grant, and nothing changes.
    let other = Cert::new("client-b");
    for (who, c) in [
        ("no certificate", None),
        ("another certificate", Some(&other)),
    ] {
        let (status, body) = s.refresh(c, rt(&first)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{who}: {body}"
        );
    }
    let (status, second) = s.refresh(Some(&cert), rt(&first)).await;
    assert_eq!(status, 200, "the family is intact: {second}");
}

/// A `Client-Cert` header from a peer that is not a trusted proxy is no certificate: the proxy
/// neither takes it nor passes it to the IdP, which would bind its tokens to a certificate the
/// client never proved it holds. (The IdP, registered to bind `spa`'s tokens to a certificate,
/// refuses the code exchange without one; with the header passed on it answers 200, as the
/// trusted case shows.)
async fn a_client_cert_header_from_an_untrusted_peer_goes_nowhere(kind: Kind) {
    let s = Stack::start(kind, Via::Untrusted).await;
    let (status, login) = s.login(Some(&Cert::new("forged"))).await;
    assert_eq!(
        (status, login["error"].as_str()),
        (400, Some("invalid_grant")),
        "the IdP saw no certificate: {login}"
    );
}

async fn on_the_tls_listener(kind: Kind) {
    certificate_bound_families(kind, Via::Tls).await;
}

async fn from_a_trusted_front_proxy(kind: Kind) {
    certificate_bound_families(kind, Via::Header).await;
}

crate::both_stores!(multi_thread:
    on_the_tls_listener,
    from_a_trusted_front_proxy,
    a_client_cert_header_from_an_untrusted_peer_goes_nowhere,
);
