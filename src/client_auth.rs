//! Client authentication at the token endpoint (RFC 6749 §2.3.1). Pure: no I/O.
//!
//! [`presented`] reads which client a request names and how it authenticates: HTTP Basic
//! (`client_secret_basic`), `client_id` + `client_secret` in the body (`client_secret_post`), or
//! `client_id` alone (a public client). [`Clients::verify`] checks the secret against the
//! configured SHA-256 digest in constant time (never a slow hash: this is the hot path).
//!
//! RFC 6749 §2.3.1 says Basic credentials are form-urlencoded before base64; clients in the
//! wild send both `Secr3t%21` and the raw `Secr3t!`. Both are accepted: the decoded form is tried
//! first, then the raw one.
//!
//! ```
//! use refresh_proxy::internal::classify::Form;
//! use refresh_proxy::internal::client_auth::{Method, presented};
//! let basic = http::HeaderValue::from_static("Basic d3d3OlNlY3IzdCUyMQ=="); // www:Secr3t%21
//! let p = presented(Some(&basic), &Form::parse(b"grant_type=refresh_token").expect("form"))
//!     .expect("well-formed")
//!     .expect("a client");
//! assert_eq!((p.client_id.as_str(), p.method), ("www", Method::Basic));
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use aws_lc_rs::{constant_time, digest};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::HeaderValue;

use crate::classify::Form;
use crate::config::{
    AccessTokenFormat, CLIENT_SECRET_JWT_ALGS, Config, ConfigError, DpopBound,
    PRIVATE_KEY_JWT_ALGS, Secret, TokenEndpointAuthMethod, Unreachable,
};
use crate::grant::verify::KeySet;

pub mod assertion;
pub mod mtls;

pub use assertion::{AssertionAuth, AssertionKeys};
pub use mtls::{CertAuth, SelfSignedKeys};

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Basic,
    Post,
    None,
    /// `client_assertion` (RFC 7523 §2.2): `private_key_jwt` or `client_secret_jwt`.
    Assertion,
}

/// The credentials a request carries. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented {
    pub client_id: String,
    pub method: Method,
    /// Secret candidates, in the order they are tried (decoded, then raw for Basic).
    secrets: Secrets,
}

/// No secret, one, or a Basic secret both form-decoded and raw (when they differ).
#[derive(Clone, PartialEq, Eq)]
enum Secrets {
    None,
    One(String),
    Two(String, String),
    /// A client assertion (a JWT); never a secret to compare.
    Assertion(String),
}

impl Presented {
    fn secrets(&self) -> impl Iterator<Item = &str> {
        let (a, b) = match &self.secrets {
            Secrets::None => (None, None),
            Secrets::One(a) => (Some(a.as_str()), None),
            Secrets::Two(a, b) => (Some(a.as_str()), Some(b.as_str())),
            Secrets::Assertion(_) => (None, None),
        };
        a.into_iter().chain(b)
    }
}

impl Presented {
    /// The client assertion, when the client sent one.
    pub fn assertion(&self) -> Option<&str> {
        match &self.secrets {
            Secrets::Assertion(a) => Some(a),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Presented {
            client_id,
            method,
            secrets: _,
        } = self;
        f.debug_struct("Presented")
            .field("client_id", client_id)
            .field("method", method)
            .finish_non_exhaustive()
    }
}

/// Why client authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("the Authorization header is not valid Basic credentials")]
    MalformedBasic,
    #[error("more than one client authentication method in one request")]
    MultipleMethods,
    #[error("no client credentials")]
    Missing,
    #[error("client authentication failed")]
    Failed { basic: bool },
    /// A malformed client assertion request (RFC 7523 §3.2 / RFC 6749 §5.2 invalid_request).
    #[error("{0}")]
    BadAssertionRequest(&'static str),
}

/// The credentials in a request, if it names a client.
pub fn presented(
    authorization: Option<&HeaderValue>,
    form: &Form,
) -> Result<Option<Presented>, ClientAuthError> {
    let form_id = form.get("client_id");
    let form_secret = form.get("client_secret");
    if let Some(jwt) = form.get("client_assertion") {
        return presented_assertion(authorization, form, jwt).map(Some);
    }
    if let Some(value) = authorization {
        let bytes = value.as_bytes();
        let is_basic = bytes.len() > 6 && bytes[..6].eq_ignore_ascii_case(b"basic ");
        if is_basic {
            // RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in
            // each request."
            if form_secret.is_some() {
                return Err(ClientAuthError::MultipleMethods);
            }
            let mut buf = [0u8; BASIC_STACK_BYTES];
            let mut heap = Vec::new();
            let (raw_id, raw_secret) = decode_basic(&bytes[6..], &mut buf, &mut heap)?;
            let id = form_decode(raw_id);
            if form_id.is_some_and(|f| f != id && f != raw_id) {
                return Err(ClientAuthError::MultipleMethods);
            }
            let secrets = match form_decode(raw_secret) {
                Cow::Borrowed(same) => Secrets::One(same.to_owned()),
                Cow::Owned(decoded) if decoded == raw_secret => Secrets::One(decoded),
                Cow::Owned(decoded) => Secrets::Two(decoded, raw_secret.to_owned()),
            };
            return Ok(Some(Presented {
                client_id: id.into_owned(),
                method: Method::Basic,
                secrets,
            }));
        }
    }
    Ok(form_id.map(|id| Presented {
        client_id: id.to_owned(),
        method: if form_secret.is_some() {
            Method::Post
        } else {
            Method::None
        },
        secrets: form_secret.map_or(Secrets::None, |s| Secrets::One(s.to_owned())),
    }))
}

/// A request with `client_assertion` (RFC 7523 §2.2), read as oidc-provider reads it: the client
/// is the assertion's `sub`, with no other method alongside (RFC 6749 §2.3), and a `client_id`
/// in the form, when present, must be that same client.
fn presented_assertion(
    authorization: Option<&HeaderValue>,
    form: &Form,
    jwt: &str,
) -> Result<Presented, ClientAuthError> {
    if authorization.is_some() || form.get("client_secret").is_some() {
        return Err(ClientAuthError::MultipleMethods);
    }
    if form.get("client_assertion_type") != Some(assertion::JWT_BEARER) {
        return Err(ClientAuthError::BadAssertionRequest(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let Some(sub) = assertion::unverified_subject(jwt) else {
        return Err(ClientAuthError::BadAssertionRequest(
            "client_assertion is not a JWT with a sub",
        ));
    };
    if form.get("client_id").is_some_and(|id| id != sub) {
        return Err(ClientAuthError::BadAssertionRequest(
            "client_id is not the client_assertion's sub",
        ));
    }
    Ok(Presented {
        client_id: sub,
        method: Method::Assertion,
        secrets: Secrets::Assertion(jwt.to_owned()),
    })
}

/// Basic credentials up to this size are decoded on the stack.
const BASIC_STACK_BYTES: usize = 384;

/// `base64(id ":" secret)`, both still form-urlencoded; decoded into `buf`, or into `heap`
/// when they do not fit.
fn decode_basic<'b>(
    b64: &[u8],
    buf: &'b mut [u8; BASIC_STACK_BYTES],
    heap: &'b mut Vec<u8>,
) -> Result<(&'b str, &'b str), ClientAuthError> {
    let b64 = b64.trim_ascii();
    let raw: &'b [u8] = if b64.len() / 4 * 3 + 3 <= buf.len() {
        let n = STANDARD
            .decode_slice(b64, &mut buf[..])
            .or_else(|_| STANDARD_NO_PAD.decode_slice(b64, &mut buf[..]))
            .map_err(|_| ClientAuthError::MalformedBasic)?;
        &buf[..n]
    } else {
        *heap = STANDARD
            .decode(b64)
            .or_else(|_| STANDARD_NO_PAD.decode(b64))
            .map_err(|_| ClientAuthError::MalformedBasic)?;
        heap
    };
    let text = std::str::from_utf8(raw).map_err(|_| ClientAuthError::MalformedBasic)?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(ClientAuthError::MalformedBasic)?;
    if id.is_empty() {
        return Err(ClientAuthError::MalformedBasic);
    }
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding; text that does not decode to UTF-8 stays raw.
/// Borrowed when there is nothing to decode.
fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Cow::Borrowed(s);
    }
    Form::decode_value(s.as_bytes()).map_or(Cow::Borrowed(s), Cow::Owned)
}

/// A client's refresh-token policy with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Idle lifetime, seconds; 0 = the client gets no refresh tokens.
    pub refresh_token_ttl: u64,
    pub refresh_token_max_lifetime: u64,
    pub reuse_refresh_tokens: bool,
    pub reuse_grace_period: u64,
    pub access_token_format: AccessTokenFormat,
    pub id_token_on_refresh: bool,
    /// Seconds after which a refresh has the upstream confirm the session first (0 = never).
    pub upstream_check_interval: u64,
    pub upstream_unreachable: Unreachable,
    pub upstream_unreachable_max: u64,
    /// Which families are bound to a DPoP key (docs/design.md §4.16).
    pub dpop_bound: DpopBound,
    /// Refreshes with a DPoP proof need a server nonce (RFC 9449 §8).
    pub dpop_nonce: bool,
}

/// A client the proxy handles.
#[derive(Clone)]
pub struct Client {
    pub id: String,
    /// SHA-256 of the secret; `None` for a public client.
    secret_sha256: Option<[u8; 32]>,
    pub policy: Policy,
    /// May call the introspection endpoint (RFC 7662 §2.1: the endpoint MUST require
    /// authorization of its callers).
    pub may_introspect: bool,
    /// `POST /admin/issue` may open families for it (`allow_admin_issue`, load-test clients).
    pub allow_admin_issue: bool,
    /// How the proxy authenticates as this client at the upstream (to revoke its kept
    /// tokens); `None` when it cannot (only `secret_sha256` is configured).
    pub upstream_auth: Option<UpstreamAuth>,
    /// The client's own back-channel logout endpoint, to pass logout tokens on to.
    pub backchannel_logout_uri: Option<String>,
    /// `private_key_jwt` or `client_secret_jwt`: the client authenticates with assertions only.
    pub assertion: Option<AssertionAuth>,
    /// `tls_client_auth` or `self_signed_tls_client_auth`: the client authenticates with its
    /// certificate only (docs/design.md §4.19).
    pub certificate: Option<CertAuth>,
}

impl Client {
    /// Whether the client has no credentials (`token_endpoint_auth_method = "none"`).
    pub fn is_public(&self) -> bool {
        self.secret_sha256.is_none() && self.assertion.is_none() && self.certificate.is_none()
    }
}

/// Credentials the proxy presents at the upstream as a client (RFC 6749 §2.3.1, RFC 7009
/// §2.1): `Debug` hides the secret.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// `client_secret_basic`.
    Basic { id: String, secret: Secret },
    /// `client_secret_post`.
    Post { id: String, secret: Secret },
    /// A public client: `client_id` in the form.
    Public { id: String },
    /// `client_secret_jwt`: a fresh assertion signed with the secret (RFC 7523 §2.2).
    SecretJwt {
        id: String,
        secret: Secret,
        alg: &'static str,
    },
}

/// Where and when an assertion the proxy makes for the upstream is for.
#[derive(Debug, Clone, Copy)]
pub struct AssertionFor<'a> {
    /// The upstream's issuer: its `aud` (RFC 7523 §3 item 3).
    pub audience: Option<&'a str>,
    /// Seconds since the epoch.
    pub now: i64,
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAuth::Basic { id, secret: _ } => write!(f, "Basic({id})"),
            UpstreamAuth::Post { id, secret: _ } => write!(f, "Post({id})"),
            UpstreamAuth::Public { id } => write!(f, "Public({id})"),
            UpstreamAuth::SecretJwt { id, alg, .. } => write!(f, "SecretJwt({id}, {alg})"),
        }
    }
}

/// The `Authorization` value of client_secret_basic: RFC 6749 §2.3.1, id and secret
/// form-encoded, then Basic.
pub fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

impl UpstreamAuth {
    /// A form POST of `pairs` to the upstream's `path`, authenticated as this client; `None`
    /// when it cannot be made (a `client_secret_jwt` client and no issuer to address).
    pub fn post_form(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
        at: AssertionFor<'_>,
    ) -> Option<http::Request<bytes::Bytes>> {
        let (form, authorization) = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                form.append_pair(k, v);
            }
            let authorization = self.apply(&mut form, at)?;
            (form.finish(), authorization)
        };
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(value) = authorization {
            req = req.header(http::header::AUTHORIZATION, value);
        }
        req.body(bytes::Bytes::from(form)).ok()
    }

    /// The `Authorization` header value (Basic), and the form pairs to add; `None` when no
    /// credentials can be made.
    fn apply(
        &self,
        form: &mut form_urlencoded::Serializer<'_, String>,
        at: AssertionFor<'_>,
    ) -> Option<Option<String>> {
        Some(match self {
            UpstreamAuth::Basic { id, secret } => Some(basic_header(id, secret.expose())),
            UpstreamAuth::Post { id, secret } => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret.expose());
                None
            }
            UpstreamAuth::Public { id } => {
                form.append_pair("client_id", id);
                None
            }
            UpstreamAuth::SecretJwt { id, secret, alg } => {
                let jwt = assertion::sign_hmac(id, secret, alg, at.audience?, at.now)?;
                form.append_pair("client_id", id);
                form.append_pair("client_assertion_type", assertion::JWT_BEARER);
                form.append_pair("client_assertion", &jwt);
                None
            }
        })
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Client {
            id,
            secret_sha256,
            policy,
            may_introspect,
            allow_admin_issue,
            upstream_auth,
            backchannel_logout_uri,
            assertion,
            certificate,
        } = self;
        f.debug_struct("Client")
            .field("id", id)
            .field(
                "public",
                &(secret_sha256.is_none() && assertion.is_none() && certificate.is_none()),
            )
            .field("policy", policy)
            .field("may_introspect", may_introspect)
            .field("allow_admin_issue", allow_admin_issue)
            .field("upstream_auth", upstream_auth)
            .field("backchannel_logout_uri", backchannel_logout_uri)
            .field("assertion", assertion)
            .field("certificate", certificate)
            .finish()
    }
}

/// The clients the proxy handles, from `[clients.*]`.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    map: HashMap<String, Client>,
}

pub const DEFAULT_REFRESH_TOKEN_TTL: u64 = 2_592_000;
pub const DEFAULT_REFRESH_TOKEN_MAX_LIFETIME: u64 = 31_536_000;
pub const DEFAULT_REUSE_GRACE_PERIOD: u64 = 30;
/// 15 minutes: a user disabled at the IdP keeps refreshing for at most this long (plus an
/// access token's lifetime), and a session refreshed this often stays alive at an IdP whose
/// idle timeout is longer (Keycloak's default SSO Session Idle is 30 minutes). With 5-minute
/// access tokens, one refresh in three reaches the IdP.
pub const DEFAULT_UPSTREAM_CHECK_INTERVAL: u64 = 900;
/// 5 minutes: an IdP outage shorter than this is not felt by users whose check falls in it.
pub const DEFAULT_UPSTREAM_UNREACHABLE_MAX: u64 = 300;

impl Clients {
    pub fn from_config(config: &Config) -> Result<Clients, ConfigError> {
        let mut map = HashMap::new();
        for (id, c) in &config.clients {
            let secret_sha256 = match (&c.secret, &c.secret_sha256) {
                (Some(secret), _) => Some(sha256(secret.expose().as_bytes())),
                (None, Some(hex)) => Some(parse_hex32(hex).ok_or_else(|| {
                    ConfigError::invalid(format!("clients.{id}.secret_sha256"), "not 64 hex digits")
                })?),
                (None, None) => None,
            };
            let p = c.policy(&config.tokens);
            let policy = Policy {
                refresh_token_ttl: p.refresh_token_ttl.unwrap_or(DEFAULT_REFRESH_TOKEN_TTL),
                refresh_token_max_lifetime: p
                    .refresh_token_max_lifetime
                    .unwrap_or(DEFAULT_REFRESH_TOKEN_MAX_LIFETIME),
                reuse_refresh_tokens: p.reuse_refresh_tokens.unwrap_or(false),
                reuse_grace_period: p.reuse_grace_period.unwrap_or(DEFAULT_REUSE_GRACE_PERIOD),
                access_token_format: p.access_token_format.unwrap_or(AccessTokenFormat::Auto),
                id_token_on_refresh: p.id_token_on_refresh.unwrap_or(false),
                upstream_check_interval: p
                    .upstream_check_interval
                    .unwrap_or(DEFAULT_UPSTREAM_CHECK_INTERVAL),
                upstream_unreachable: p.upstream_unreachable.unwrap_or(Unreachable::Serve),
                upstream_unreachable_max: p
                    .upstream_unreachable_max
                    .unwrap_or(DEFAULT_UPSTREAM_UNREACHABLE_MAX),
                dpop_bound: p.dpop_bound.unwrap_or(DpopBound::Auto),
                dpop_nonce: p.dpop_nonce.unwrap_or(false),
            };
            let assertion = assertion_auth(id, c)?;
            let certificate = certificate_auth(id, c)?;
            let upstream_auth = match (c.token_endpoint_auth_method, &c.secret) {
                // The proxy holds neither the client's private key nor its certificate's.
                (
                    Some(
                        TokenEndpointAuthMethod::PrivateKeyJwt
                        | TokenEndpointAuthMethod::TlsClientAuth
                        | TokenEndpointAuthMethod::SelfSignedTlsClientAuth,
                    ),
                    _,
                ) => None,
                (Some(TokenEndpointAuthMethod::ClientSecretJwt), Some(secret)) => {
                    Some(UpstreamAuth::SecretJwt {
                        id: id.clone(),
                        secret: secret.clone(),
                        alg: assertion.as_ref().map_or("HS256", |a| a.algs[0]),
                    })
                }
                (Some(TokenEndpointAuthMethod::None), _) | (None, None)
                    if c.secret_sha256.is_none() =>
                {
                    Some(UpstreamAuth::Public { id: id.clone() })
                }
                (Some(TokenEndpointAuthMethod::ClientSecretPost), Some(secret)) => {
                    Some(UpstreamAuth::Post {
                        id: id.clone(),
                        secret: secret.clone(),
                    })
                }
                (_, Some(secret)) => Some(UpstreamAuth::Basic {
                    id: id.clone(),
                    secret: secret.clone(),
                }),
                _ => None,
            };
            map.insert(
                id.clone(),
                Client {
                    id: id.clone(),
                    secret_sha256,
                    policy,
                    may_introspect: c.may_introspect,
                    allow_admin_issue: c.allow_admin_issue,
                    upstream_auth,
                    backchannel_logout_uri: c.backchannel_logout_uri.clone(),
                    assertion,
                    certificate,
                },
            );
        }
        Ok(Clients { map })
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        self.map.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.map.values()
    }

    /// Checks the presented credentials against a configured client. An assertion is checked
    /// by [`assertion::verify`]; here it only passes for a client registered for one (and a
    /// secret never passes for such a client: one registered method).
    pub fn verify(client: &Client, presented: &Presented) -> Result<(), ClientAuthError> {
        let basic = presented.method == Method::Basic;
        if client.certificate.is_some() {
            // RFC 8705 §2: the client sends its id and nothing else; its certificate is checked
            // by the caller, who has it.
            return match presented.method {
                Method::None => Ok(()),
                _ => Err(ClientAuthError::Failed { basic }),
            };
        }
        match (&client.assertion, presented.method) {
            (Some(_), Method::Assertion) => return Ok(()),
            (Some(_), _) | (None, Method::Assertion) => {
                return Err(ClientAuthError::Failed { basic });
            }
            (None, _) => {}
        }
        match (&client.secret_sha256, presented.method) {
            // A public client authenticates with nothing but its id.
            (None, Method::None) => Ok(()),
            (None, _) => {
                if presented.secrets().all(str::is_empty) {
                    Ok(())
                } else {
                    Err(ClientAuthError::Failed { basic })
                }
            }
            (Some(_), Method::None) => Err(ClientAuthError::Failed { basic }),
            (Some(expected), _) => {
                // Constant-time comparison of digests: the time taken says nothing about the
                // secret.
                let ok = presented.secrets().fold(false, |ok, s| {
                    let d = sha256(s.as_bytes());
                    constant_time::verify_slices_are_equal(&d, expected).is_ok() | ok
                });
                if ok {
                    Ok(())
                } else {
                    Err(ClientAuthError::Failed { basic })
                }
            }
        }
    }
}

/// oidc-provider's default `clientAuthSigningAlgValues`, split by method: what a client
/// registered without `token_endpoint_auth_signing_alg` may use there (OIDC Registration §2).
const DEFAULT_PRIVATE_KEY_JWT_ALGS: &[&str] = &["RS256", "PS256", "ES256", "EdDSA"];
const DEFAULT_CLIENT_SECRET_JWT_ALGS: &[&str] = &["HS256"];

/// How an assertion client's assertions are checked (config validation has checked the keys
/// are there and the alg is of the right kind).
fn assertion_auth(
    id: &str,
    c: &crate::config::ClientConfig,
) -> Result<Option<AssertionAuth>, ConfigError> {
    let (all, default): (&'static [&'static str], _) = match c.token_endpoint_auth_method {
        Some(TokenEndpointAuthMethod::PrivateKeyJwt) => {
            (PRIVATE_KEY_JWT_ALGS, DEFAULT_PRIVATE_KEY_JWT_ALGS)
        }
        Some(TokenEndpointAuthMethod::ClientSecretJwt) => {
            (CLIENT_SECRET_JWT_ALGS, DEFAULT_CLIENT_SECRET_JWT_ALGS)
        }
        _ => return Ok(None),
    };
    let algs = match &c.token_endpoint_auth_signing_alg {
        Some(alg) => {
            let i = all.iter().position(|a| a == alg).ok_or_else(|| {
                ConfigError::invalid(
                    format!("clients.{id}.token_endpoint_auth_signing_alg"),
                    "not an algorithm for this method",
                )
            })?;
            std::slice::from_ref(&all[i])
        }
        None => default,
    };
    let keys = match (&c.secret, &c.jwks, &c.jwks_uri) {
        (Some(secret), _, _) => AssertionKeys::Secret(secret.clone()),
        (None, Some(jwks), _) => {
            let key = format!("clients.{id}.jwks");
            let set = KeySet::parse(jwks.as_bytes())
                .map_err(|why| ConfigError::invalid(&key, format!("not a JWK Set: {why}")))?;
            if set.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    "holds no public signing key the proxy can use (RSA, EC P-256/P-384, Ed25519)",
                ));
            }
            AssertionKeys::Jwks(std::sync::Arc::new(set))
        }
        (None, None, Some(uri)) => AssertionKeys::Uri {
            uri: uri.clone(),
            refetch_interval: c.jwks_refetch_interval.map_or(
                assertion::DEFAULT_JWKS_REFETCH_INTERVAL,
                Duration::from_secs,
            ),
        },
        (None, None, None) => {
            return Err(ConfigError::invalid(
                format!("clients.{id}.token_endpoint_auth_method"),
                "no key to check the client's assertions with",
            ));
        }
    };
    Ok(Some(AssertionAuth { algs, keys }))
}

/// How a certificate client's certificate is checked (config validation has checked the
/// subject and the key source).
fn certificate_auth(
    id: &str,
    c: &crate::config::ClientConfig,
) -> Result<Option<CertAuth>, ConfigError> {
    Ok(Some(match c.token_endpoint_auth_method {
        Some(TokenEndpointAuthMethod::TlsClientAuth) => {
            let (kind, value) = c
                .tls_client_auth_subjects()
                .into_iter()
                .find_map(|(kind, v)| Some((kind, v?)))
                .ok_or_else(|| {
                    ConfigError::invalid(
                        format!("clients.{id}.token_endpoint_auth_method"),
                        "no tls_client_auth_* subject",
                    )
                })?;
            CertAuth::Pki(mtls::Subject::parse(kind, value).map_err(|why| {
                ConfigError::invalid(format!("clients.{id}.tls_client_auth_{kind}"), why)
            })?)
        }
        Some(TokenEndpointAuthMethod::SelfSignedTlsClientAuth) => {
            CertAuth::SelfSigned(match (&c.jwks, &c.jwks_uri) {
                (Some(jwks), _) => {
                    let key = format!("clients.{id}.jwks");
                    let set = KeySet::parse(jwks.as_bytes()).map_err(|why| {
                        ConfigError::invalid(&key, format!("not a JWK Set: {why}"))
                    })?;
                    if set.certificates().is_empty() {
                        return Err(ConfigError::invalid(
                            key,
                            "holds no certificate (x5c or x5t#S256) for \
                             self_signed_tls_client_auth",
                        ));
                    }
                    SelfSignedKeys::Jwks(std::sync::Arc::new(set))
                }
                (None, Some(uri)) => SelfSignedKeys::Uri {
                    uri: uri.clone(),
                    refetch_interval: c.jwks_refetch_interval.map_or(
                        assertion::DEFAULT_JWKS_REFETCH_INTERVAL,
                        Duration::from_secs,
                    ),
                },
                (None, None) => {
                    return Err(ConfigError::invalid(
                        format!("clients.{id}.token_endpoint_auth_method"),
                        "no jwks or jwks_uri with the client's certificates",
                    ));
                }
            })
        }
        _ => return Ok(None),
    }))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw))).expect("header")
    }

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).expect("form")
    }

    fn clients(extra: &str) -> Clients {
        let text = format!(
            "[upstream]\nurl = \"http://x\"\n[clients.www]\nsecret = \"Secr3t!\"\n\
             [clients.spa]\n[clients.hashed]\nsecret_sha256 = \"{}\"\n{extra}",
            "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
        );
        let config = Config::from_toml_str(&text, std::path::Path::new("."), std::iter::empty())
            .expect("config");
        Clients::from_config(&config).expect("clients")
    }

    fn check(c: &Clients, p: &Presented) -> Result<(), ClientAuthError> {
        Clients::verify(c.get(&p.client_id).expect("configured"), p)
    }

    #[test]
    fn certificate_clients_send_their_id_alone_and_are_not_public() {
        let x5t = "A".repeat(43);
        let c = clients(&format!(
            "[server]\nclient_cert_header = true\n\
             [clients.self]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n\
             jwks = '{{\"keys\":[{{\"kty\":\"EC\",\"x5t#S256\":\"{x5t}\"}}]}}'\n"
        ));
        let client = c.get("self").expect("configured");
        assert!(!client.is_public());
        assert!(
            client.upstream_auth.is_none(),
            "the proxy holds no certificate key"
        );
        let Some(CertAuth::SelfSigned(SelfSignedKeys::Jwks(set))) = &client.certificate else {
            panic!("self-signed: {client:?}");
        };
        assert_eq!(set.certificates(), [x5t]);
        let id_only = presented(None, &form("client_id=self"))
            .expect("ok")
            .expect("c");
        assert_eq!(
            check(&c, &id_only),
            Ok(()),
            "the certificate is checked by the engine"
        );
        for other in [
            presented(None, &form("client_id=self&client_secret=x")),
            presented(Some(&basic("self:x")), &form("")),
        ] {
            let p = other.expect("ok").expect("c");
            assert!(check(&c, &p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn a_self_signed_client_needs_a_certificate_in_its_jwks() {
        let text = "[upstream]\nurl = \"http://x\"\n[server]\nclient_cert_header = true\n\
                    [clients.self]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n\
                    jwks = '{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\"}]}'\n";
        let config = Config::from_toml_str(text, std::path::Path::new("."), std::iter::empty())
            .expect("config");
        let err = Clients::from_config(&config).expect_err("no certificate");
        assert!(err.to_string().starts_with("clients.self.jwks"), "{err}");
    }

    #[test]
    fn basic_accepts_encoded_and_raw_secrets() {
        let c = clients("");
        for raw in ["www:Secr3t%21", "www:Secr3t!"] {
            let p = presented(Some(&basic(raw)), &form(""))
                .expect("ok")
                .expect("client");
            assert_eq!(p.method, Method::Basic);
            assert_eq!(check(&c, &p), Ok(()), "{raw}");
        }
        let p = presented(Some(&basic("www:wrong")), &form(""))
            .expect("ok")
            .expect("client");
        assert_eq!(check(&c, &p), Err(ClientAuthError::Failed { basic: true }));
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_padding_optional() {
        let v = HeaderValue::from_static("bAsIc d3d3OlNlY3IzdCE"); // www:Secr3t! unpadded
        let p = presented(Some(&v), &form("")).expect("ok").expect("client");
        assert_eq!(check(&clients(""), &p), Ok(()));
    }

    #[test]
    fn malformed_basic_is_an_error() {
        for bad in ["Basic !!!notbase64", "Basic d3d3", "Basic Og=="] {
            // "d3d3" = "www" (no colon); "Og==" = ":" (empty id)
            let v = HeaderValue::from_static(bad);
            assert_eq!(
                presented(Some(&v), &form("")),
                Err(ClientAuthError::MalformedBasic),
                "{bad}"
            );
        }
        let v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode([0xff, b':', b'x'])))
            .expect("header");
        assert_eq!(
            presented(Some(&v), &form("")),
            Err(ClientAuthError::MalformedBasic)
        );
    }

    #[test]
    fn post_and_public_clients() {
        let c = clients("");
        let p = presented(None, &form("client_id=www&client_secret=Secr3t%21"))
            .expect("ok")
            .expect("client");
        assert_eq!((p.method, check(&c, &p)), (Method::Post, Ok(())));
        let p = presented(None, &form("client_id=spa"))
            .expect("ok")
            .expect("client");
        assert_eq!((p.method, check(&c, &p)), (Method::None, Ok(())));
        // A confidential client without its secret fails.
        let p = presented(None, &form("client_id=www"))
            .expect("ok")
            .expect("client");
        assert_eq!(check(&c, &p), Err(ClientAuthError::Failed { basic: false }));
        assert_eq!(presented(None, &form("grant_type=x")), Ok(None));
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let b = basic("www:Secr3t!");
        assert_eq!(
            presented(Some(&b), &form("client_id=www&client_secret=Secr3t!")),
            Err(ClientAuthError::MultipleMethods)
        );
        assert_eq!(
            presented(Some(&b), &form("client_id=other")),
            Err(ClientAuthError::MultipleMethods)
        );
        // The same client_id alongside Basic is harmless.
        assert!(
            presented(Some(&b), &form("client_id=www"))
                .expect("ok")
                .is_some()
        );
    }

    #[test]
    fn a_configured_digest_verifies() {
        // sha256("hunter2")
        let c = clients("");
        let p = presented(Some(&basic("hashed:hunter2")), &form(""))
            .expect("ok")
            .expect("client");
        assert_eq!(check(&c, &p), Ok(()));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let p = presented(Some(&basic("www:Secr3t!")), &form(""))
            .expect("ok")
            .expect("client");
        assert!(!format!("{p:?}").contains("Secr3t"));
        let c = clients("");
        assert!(!format!("{c:?}").contains("Secr3t"));
    }

    fn assertion_form(sub: &str, extra: &str) -> Form {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"sub\":\"{sub}\"}}"));
        form(&format!(
            "client_assertion=e30.{payload}.sig&client_assertion_type={}{extra}",
            assertion::JWT_BEARER.replace(':', "%3A")
        ))
    }

    #[test]
    fn an_assertion_names_its_client_and_is_the_only_method() {
        let p = presented(None, &assertion_form("pk", ""))
            .expect("ok")
            .expect("client");
        assert_eq!((p.client_id.as_str(), p.method), ("pk", Method::Assertion));
        assert!(p.assertion().is_some());
        assert!(!format!("{p:?}").contains("sig"));
        let same_id = presented(None, &assertion_form("pk", "&client_id=pk"));
        assert!(same_id.expect("ok").is_some());
        // RFC 6749 §2.3: one method per request.
        assert_eq!(
            presented(Some(&basic("pk:x")), &assertion_form("pk", "")),
            Err(ClientAuthError::MultipleMethods)
        );
        assert_eq!(
            presented(None, &assertion_form("pk", "&client_secret=x")),
            Err(ClientAuthError::MultipleMethods)
        );
        assert!(matches!(
            presented(None, &assertion_form("pk", "&client_id=other")),
            Err(ClientAuthError::BadAssertionRequest(_))
        ));
        let wrong_type = form("client_assertion=e30.e30.x&client_assertion_type=saml");
        assert!(matches!(
            presented(None, &wrong_type),
            Err(ClientAuthError::BadAssertionRequest(_))
        ));
        let no_sub = form(&format!(
            "client_assertion=e30.e30.x&client_assertion_type={}",
            assertion::JWT_BEARER
        ));
        assert!(matches!(
            presented(None, &no_sub),
            Err(ClientAuthError::BadAssertionRequest(_))
        ));
    }

    #[test]
    fn a_client_uses_its_registered_method_only() {
        let c = clients(
            "[clients.cs]\nsecret = \"cs-secret\"\n\
             token_endpoint_auth_method = \"client_secret_jwt\"\n",
        );
        // Its secret alone (Basic) does not authenticate a client_secret_jwt client ...
        let p = presented(Some(&basic("cs:cs-secret")), &form(""))
            .expect("ok")
            .expect("client");
        assert_eq!(check(&c, &p), Err(ClientAuthError::Failed { basic: true }));
        // ... and an assertion does not authenticate a client_secret_basic one.
        let p = presented(None, &assertion_form("www", ""))
            .expect("ok")
            .expect("client");
        assert_eq!(check(&c, &p), Err(ClientAuthError::Failed { basic: false }));
        let cs = c.get("cs").expect("cs");
        assert_eq!(cs.assertion.as_ref().map(|a| a.algs), Some(&["HS256"][..]));
        assert!(matches!(
            cs.upstream_auth,
            Some(UpstreamAuth::SecretJwt { alg: "HS256", .. })
        ));
        assert!(!format!("{c:?}").contains("cs-secret"));
    }

    #[test]
    fn private_key_jwt_keys_are_read_at_load() {
        let jwk =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let c = clients(&format!(
            "[clients.pk]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n\
             jwks = '{{\"keys\":[{jwk}]}}'\ntoken_endpoint_auth_signing_alg = \"EdDSA\"\n"
        ));
        let pk = c.get("pk").expect("pk");
        assert_eq!(pk.assertion.as_ref().map(|a| a.algs), Some(&["EdDSA"][..]));
        // No way to make its assertions: no upstream credentials (docs/design.md §4.18).
        assert!(pk.upstream_auth.is_none());
        let config = |jwks: &str| {
            let text = format!(
                "[upstream]\nurl = \"http://x\"\n[clients.pk]\n\
                 token_endpoint_auth_method = \"private_key_jwt\"\njwks = '{jwks}'\n"
            );
            Config::from_toml_str(&text, std::path::Path::new("."), std::iter::empty())
                .expect("config")
        };
        for bad in [
            "[]",
            "{\"keys\":[]}",
            "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"}]}",
        ] {
            let err = Clients::from_config(&config(bad)).expect_err(bad);
            assert!(err.to_string().starts_with("clients.pk.jwks:"), "{err}");
        }
    }

    #[test]
    fn policy_defaults_fill_in() {
        let c = clients("[tokens]\nreuse_grace_period = 5\n");
        let p = &c.get("www").expect("www").policy;
        assert_eq!(p.refresh_token_ttl, DEFAULT_REFRESH_TOKEN_TTL);
        assert_eq!(p.reuse_grace_period, 5);
        assert_eq!(p.access_token_format, AccessTokenFormat::Auto);
    }
}
