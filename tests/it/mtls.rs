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
        Cert::of(&cert, &key)
    }

    fn of(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Cert {
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

    /// A JWK Set with this certificate in `x5c` (RFC 7517 §4.7), as a client registers it for
    /// `self_signed_tls_client_auth`.
    fn jwks(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "x5c": [b64]}]}).to_string()
    }
}

/// A CA (made by rcgen) that issues client certificates.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A client certificate with the subject `O=<o>, CN=<cn>` in certificate order (RFC 4514:
    /// `CN=<cn>,O=<o>`).
    fn issue(&self, cn: &str, o: &str) -> Cert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, o);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("issued");
        Cert::of(&cert, &key)
    }
}

impl Cert {
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

/// What a stack adds for certificate clients (docs/design.md §4.19).
#[derive(Default)]
struct Extra {
    /// The CA of `mtls-pki` at the IdP, and `server.client_ca_file` at the proxy.
    ca_pem: Option<String>,
    /// `mtls-self`'s certificate at the IdP.
    self_signed_pem: Option<String>,
    /// More `[clients.*]` tables for the proxy.
    clients: String,
}

impl Stack {
    async fn start(kind: Kind, via: Via) -> Stack {
        Stack::start_with(kind, via, Extra::default()).await
    }

    async fn start_with(kind: Kind, via: Via, extra: Extra) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let base = match via {
            Via::Tls => format!("https://localhost:{port}"),
            Via::Header | Via::Untrusted => format!("http://127.0.0.1:{port}"),
        };
        let dir = crate::support::temp_dir("mtls");
        let write = |name: &str, pem: &Option<String>| {
            pem.as_ref().map(|pem| {
                std::fs::write(dir.join(name), pem).expect("write");
                dir.join(name)
            })
        };
        let ca_file = write("client-ca.pem", &extra.ca_pem);
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(base.clone()),
            mtls: true,
            mtls_ca_file: ca_file.clone(),
            mtls_self_signed_cert: write("self-signed.pem", &extra.self_signed_pem),
            ..IdpOptions::default()
        })
        .await;
        let client_ca = ca_file.map_or(String::new(), |f| {
            format!("client_ca_file = \"{}\"\n", f.display())
        });
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
            "[server]\n{listen}{client_ca}\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.spa]\naccess_token_format = \"jwt\"\n{clients}\n\
             [upstream]\nurl = \"{up}\"\nforward_client_cert = true\n\
             introspection_client_id = \"rs\"\nintrospection_client_secret = \"rs-secret\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
            clients = extra.clients,
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

    /// A form POST to `path` from a client holding `cert` (none: a plain client): on the TLS
    /// listener the certificate is the client's, else it goes in `Client-Cert`.
    fn post(
        &self,
        path: &str,
        cert: Option<&Cert>,
        form: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let http = match (cert, self.via) {
            (Some(c), Via::Tls) => c.client(),
            _ => reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .build()
                .expect("client"),
        };
        let mut req = http.post(format!("{}{path}", self.base)).form(form);
        if let (Some(c), Via::Header | Via::Untrusted) = (cert, self.via) {
            req = req.header("Client-Cert", c.header());
        }
        req
    }

    /// A token request from a client holding `cert` (none: a plain client).
    async fn token(&self, cert: Option<&Cert>, form: &[(&str, &str)]) -> (u16, Value) {
        let res = self
            .post("/token", cert, form)
            .send()
            .await
            .expect("POST /token");
        let status = res.status().as_u16();
        (status, res.json().await.expect("JSON"))
    }

    async fn login(&self, cert: Option<&Cert>) -> (u16, Value) {
        self.login_as("spa", cert).await
    }

    async fn login_as(&self, client_id: &str, cert: Option<&Cert>) -> (u16, Value) {
        let flow = CodeFlow {
            client_id,
            ..CodeFlow::spa("openid offline_access read")
        };
        let (verifier, code) =
            idp::authorize_in(&idp::new_browser(), &self.base, "/auth", true, &flow).await;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
            ("client_id", client_id),
        ];
        self.token(cert, &form).await
    }

    async fn refresh(&self, cert: Option<&Cert>, token: &str) -> (u16, Value) {
        self.refresh_as("spa", cert, token).await
    }

    async fn refresh_as(&self, client_id: &str, cert: Option<&Cert>, token: &str) -> (u16, Value) {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
        ];
        self.token(cert, &form).await
    }

    /// Logs in as `client_id` with `cert` and refreshes once: the family is the proxy's, its
    /// access tokens are the client's and bound to the certificate. The refresh's answer.
    async fn captured_and_bound(&self, client_id: &str, cert: &Cert) -> Value {
        let (status, login) = self.login_as(client_id, Some(cert)).await;
        assert_eq!(status, 200, "{login}");
        let upstream = self.idp.last_refresh_token().await;
        assert_ne!(rt(&login), upstream, "captured: {login}");
        let (status, first) = self.refresh_as(client_id, Some(cert), rt(&login)).await;
        assert_eq!(status, 200, "{first}");
        let claims = idp::jwt_claims(first["access_token"].as_str().expect("at"));
        assert_eq!(claims["cnf"]["x5t#S256"], cert.x5t.as_str(), "{claims}");
        assert_eq!(claims["client_id"], client_id, "{claims}");
        first
    }

    /// RFC 7009 revocation at the proxy as `client_id` (no secret).
    async fn revoke_as(&self, client_id: &str, cert: Option<&Cert>, token: &str) -> u16 {
        let form = [("token", token), ("client_id", client_id)];
        let req = self.post("/token/revocation", cert, &form);
        req.send()
            .await
            .expect("POST /token/revocation")
            .status()
            .as_u16()
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

/// Certificate client authentication (RFC 8705 §2, docs/design.md §4.19): `mtls-pki`
/// (`tls_client_auth`: a certificate from the test CA with the registered subject DN) and
/// `mtls-self` (`self_signed_tls_client_auth`: the certificate in its jwks) log in at the real
/// IdP through the proxy, their families are captured and bound to the certificate, and only
/// that certificate refreshes or revokes them; every other certificate, or none, is
/// `invalid_client`, and the family is intact after each.
async fn certificate_clients(kind: Kind, via: Via) {
    let ca = Ca::new("refresh-proxy test client CA");
    let rogue = Ca::new("refresh-proxy test client CA"); // same name, another key
    let good = ca.issue("mtls-pki-client", "refresh-proxy tests");
    let self_signed = Cert::new("mtls-self-client");
    let s = Stack::start_with(
        kind,
        via,
        Extra {
            ca_pem: Some(ca.pem.clone()),
            self_signed_pem: Some(self_signed.pem.clone()),
            clients: format!(
                "[clients.mtls-pki]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"{dn}\"\naccess_token_format = \"jwt\"\n\
                 [clients.mtls-self]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n\
                 jwks = '{jwks}'\naccess_token_format = \"jwt\"\n",
                dn = idp::MTLS_PKI_SUBJECT_DN,
                jwks = self_signed.jwks(),
            ),
        },
    )
    .await;
    let refused = |what: &str, (status, body): (u16, Value)| {
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
    };

    // tls_client_auth.
    let first = s.captured_and_bound("mtls-pki", &good).await;
    let wrong_subject = ca.issue("someone-else", "refresh-proxy tests");
    let wrong_ca = rogue.issue("mtls-pki-client", "refresh-proxy tests");
    for (what, cert) in [
        ("no certificate", None),
        ("another subject from the CA", Some(&wrong_subject)),
        ("the subject from another CA", Some(&wrong_ca)),
        ("a self-signed certificate", Some(&self_signed)),
    ] {
        refused(what, s.refresh_as("mtls-pki", cert, rt(&first)).await);
    }
    // A secret alongside is a second method (RFC 6749 §2.3).
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt(&first)),
        ("client_id", "mtls-pki"),
        ("client_secret", "anything"),
    ];
    refused("a secret too", s.token(Some(&good), &form).await);
    let (status, second) = s.refresh_as("mtls-pki", Some(&good), rt(&first)).await;
    assert_eq!(status, 200, "the family is intact: {second}");
    // Revocation authenticates the same way.
    assert_eq!(s.revoke_as("mtls-pki", None, rt(&second)).await, 401);
    assert_eq!(s.revoke_as("mtls-pki", Some(&good), rt(&second)).await, 200);
    let (status, body) = s.refresh_as("mtls-pki", Some(&good), rt(&second)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // self_signed_tls_client_auth.
    let first = s.captured_and_bound("mtls-self", &self_signed).await;
    for (what, cert) in [
        ("no certificate", None),
        (
            "another self-signed certificate",
            Some(&Cert::new("mtls-self-client")),
        ),
        ("a CA-issued certificate", Some(&good)),
    ] {
        refused(what, s.refresh_as("mtls-self", cert, rt(&first)).await);
    }
    let (status, second) = s
        .refresh_as("mtls-self", Some(&self_signed), rt(&first))
        .await;
    assert_eq!(status, 200, "the family is intact: {second}");
}

/// When the proxy's own check of a certificate client disagrees with the IdP's (here the proxy
/// has `mtls-pki` registered with another subject), the IdP's answer passes through uncaptured:
/// the client keeps the IdP's refresh token, and its refreshes go to the IdP.
async fn a_certificate_the_proxy_would_refuse_is_not_captured(kind: Kind) {
    let ca = Ca::new("refresh-proxy test client CA");
    let good = ca.issue("mtls-pki-client", "refresh-proxy tests");
    let s = Stack::start_with(
        kind,
        Via::Header,
        Extra {
            ca_pem: Some(ca.pem.clone()),
            clients: "[clients.mtls-pki]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                      tls_client_auth_san_dns = \"client.example.test\"\n"
                .to_owned(),
            ..Extra::default()
        },
    )
    .await;
    let (status, login) = s.login_as("mtls-pki", Some(&good)).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(
        rt(&login),
        s.idp.last_refresh_token().await,
        "passed through: {login}"
    );
    let (status, body) = s.refresh_as("mtls-pki", Some(&good), rt(&login)).await;
    assert_eq!(status, 200, "the IdP answers its own token: {body}");
}

async fn certificate_clients_on_the_tls_listener(kind: Kind) {
    certificate_clients(kind, Via::Tls).await;
}

async fn certificate_clients_from_a_trusted_front_proxy(kind: Kind) {
    certificate_clients(kind, Via::Header).await;
}

crate::both_stores!(multi_thread:
    on_the_tls_listener,
    from_a_trusted_front_proxy,
    a_client_cert_header_from_an_untrusted_peer_goes_nowhere,
    certificate_clients_on_the_tls_listener,
    certificate_clients_from_a_trusted_front_proxy,
    a_certificate_the_proxy_would_refuse_is_not_captured,
);
