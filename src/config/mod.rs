//! Configuration: the TOML schema, environment overrides, `*_file` secrets and validation.
//!
//! Loading happens once, at start-up, in three steps over a `toml::Table`:
//!
//! 1. the file is parsed (`config.toml` by default);
//! 2. every environment variable `REFRESH_PROXY_<SECTION>__<KEY>` (more `__` for deeper keys, e.g.
//!    `REFRESH_PROXY_CLIENTS__WWW__SECRET`) replaces the key it names. Its value is read as a TOML
//!    value when it is one (`30`, `true`, `"quoted"`), else as a plain string;
//! 3. every secret key given as `<key>_file` (`secret_file`, `token_file`, `password_file`, …) is
//!    replaced by the file's content, trailing newline trimmed.
//!
//! Then the table is deserialised with unknown keys rejected, and the result is checked once.
//! Every error names the key (`server.listen: …`) so `refresh-proxy check-config` can say what is
//! wrong; nothing here panics.
//!
//! ```
//! let config = refresh_proxy::config::Config::from_toml_str(
//!     "[upstream]\nurl = \"http://127.0.0.1:9090\"\n",
//!     std::path::Path::new("."),
//!     std::iter::empty(),
//! )
//! .expect("a minimal config is valid");
//! assert_eq!(config.server.listen.port(), 8080);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod store_url;

/// The type of `server.trusted_proxies`' entries.
pub use crate::net::IpNet;

/// The shortest `admin.token` and `admin.issue_token` accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;
/// The most refresh-token keys a ring may hold (the current one and those still accepted).
pub const MAX_REFRESH_KEYS: usize = 4;

/// The prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "REFRESH_PROXY_";
/// The environment variable that names the config file (read by the CLI, not an override).
pub const ENV_CONFIG_PATH: &str = "REFRESH_PROXY_CONFIG";

/// Keys that hold a list of secrets, and the key that lists the files holding them instead.
const SECRET_LISTS: &[(&str, &str)] = &[
    ("refresh_token_keys", "refresh_token_key_files"),
    ("upstream_token_keys", "upstream_token_key_files"),
];

/// Keys that hold secrets; each may instead be given as `<key>_file`.
const SECRET_KEYS: &[&str] = &[
    "secret",
    "token",
    "issue_token",
    "password",
    "introspection_client_secret",
    "refresh_token_key",
    "sentinel_password",
    // Not a secret (a client's public keys), but read from a file the same way.
    "jwks",
];

/// A configuration error. Its message names the key and says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// A secret value from the config. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    // An environment override of a secret that looks like a number (`1234`) arrives as a TOML
    // integer: accept any scalar as the secret's text.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub clients: BTreeMap<String, ClientConfig>,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Largest token-endpoint request body the proxy reads (others are streamed, unbounded).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A client that has not sent a complete request head within this time is disconnected.
    #[serde(default = "secs::<10>", deserialize_with = "seconds")]
    pub header_read_timeout: Duration,
    /// A token, revocation or introspection body not received whole within this time (from the
    /// end of its head) is refused with 408 and its connection closed.
    #[serde(default = "secs::<10>", deserialize_with = "seconds")]
    pub body_read_timeout: Duration,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM certificate chain and key of the admin listener: both set = it serves HTTPS only.
    pub admin_tls_cert_file: Option<PathBuf>,
    pub admin_tls_key_file: Option<PathBuf>,
    /// Peers whose `X-Forwarded-*` and `Forwarded` headers are believed (addresses or CIDR
    /// networks); from any other peer they are replaced by what the proxy saw. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The TLS listener asks clients for a certificate (RFC 8705; optional for the client):
    /// any certificate whose key the client proves it holds is taken, and what it means is
    /// decided per family (docs/design.md §4.17).
    #[serde(default)]
    pub tls_client_certificates: bool,
    /// A trusted proxy's RFC 9440 `Client-Cert` header is the client's certificate (a front
    /// proxy that terminated TLS). From any other peer the header is removed.
    #[serde(default)]
    pub client_cert_header: bool,
    /// Refresh grants the proxy answers carry a W3C `Server-Timing` header saying how long
    /// each of its phases took (a load-testing aid; off by default).
    #[serde(default)]
    pub server_timing: bool,
    /// PEM CA certificates a `tls_client_auth` client's certificate must chain to (RFC 8705
    /// §2.1; docs/design.md §4.19). Read again on reload.
    pub client_ca_file: Option<PathBuf>,
    /// After SIGTERM/SIGINT: readiness turns 503 and the proxy keeps serving this long.
    #[serde(default = "secs::<5>", deserialize_with = "seconds")]
    pub drain_delay: Duration,
    /// After SIGTERM/SIGINT: the process exits by this deadline, in-flight requests or not.
    #[serde(default = "secs::<30>", deserialize_with = "seconds")]
    pub shutdown_timeout: Duration,
    /// Worker threads serving the proxy port, each a single-threaded runtime with its own
    /// connections, upstream pool and Redis connection; 0 = one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Open connections on the proxy port, all workers together. At the cap the proxy stops
    /// accepting (new connections wait in the kernel's listen backlog) until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections on the admin port (a cap of its own; the proxy port's does not count
    /// them). At the cap it stops accepting until one closes.
    #[serde(default = "default_admin_max_connections")]
    pub admin_max_connections: usize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY). An
    /// HTTP/1.1 connection's wait for its next request is also bounded by
    /// `header_read_timeout` (hyper times the next head from the end of the previous answer).
    #[serde(default = "secs::<60>", deserialize_with = "seconds")]
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1.1 request line and headers (431 beyond), HTTP/2 header list
    /// as `SETTINGS_MAX_HEADER_LIST_SIZE` counts it.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Streams one HTTP/2 connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// more are refused with `REFUSED_STREAM`.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 PING interval on a connection (0 = no pings); a ping unanswered within
    /// `http2_keep_alive_timeout` closes it. Pings do not count as activity for `idle_timeout`.
    #[serde(default = "secs::<30>", deserialize_with = "seconds")]
    pub http2_keep_alive_interval: Duration,
    /// An HTTP/2 connection whose PING is not answered within this is closed.
    #[serde(default = "secs::<10>", deserialize_with = "seconds")]
    pub http2_keep_alive_timeout: Duration,
    /// Bytes of token, revocation and introspection bodies held in memory at once for one
    /// HTTP/2 connection (its streams together); a body that does not fit waits for room, within
    /// `body_read_timeout`. At least `max_body_bytes`.
    #[serde(default = "default_max_connection_body_bytes")]
    pub max_connection_body_bytes: usize,
}

/// The most worker threads `server.workers` may ask for.
pub const MAX_WORKERS: usize = 1024;
/// The most `server.max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The longest `header_read_timeout`, `body_read_timeout`, `idle_timeout` and HTTP/2 keep-alive
/// interval and timeout: an hour. Bounded so that no deadline computed from one can overflow.
pub const MAX_SERVER_TIMEOUT: Duration = Duration::from_secs(3600);
/// The bounds of `server.max_header_bytes`.
pub const MIN_HEADER_BYTES: usize = 4 * 1024;
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// The most `server.http2_max_concurrent_streams` may allow.
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// The most `server.max_connection_body_bytes` may allow: a GiB.
pub const MAX_CONNECTION_BODY_BYTES: usize = 1 << 30;

impl ServerConfig {
    /// `server.workers` with 0 resolved to the number of CPU cores this process may use.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        from_empty_table()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub url: String,
    #[serde(default = "yes")]
    pub discovery: bool,
    pub issuer: Option<String>,
    pub token_path: Option<String>,
    pub revocation_path: Option<String>,
    pub introspection_path: Option<String>,
    pub jwks_path: Option<String>,
    /// `"absent"` declares that the upstream has no revocation endpoint: the proxy then starts
    /// with handled clients and none known (and says that clients cannot revoke its tokens).
    #[serde(default)]
    pub revocation: RevocationMode,
    /// The introspection claim that names the subject at capture when the answer has no `sub`
    /// (RFC 7662 §2.2 makes `sub` optional); it must carry what the ID token's `sub` carries.
    pub subject_claim: Option<String>,
    #[serde(default = "secs::<2>", deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// Time until the upstream's response head arrives (bodies may stream for longer).
    #[serde(default = "secs::<30>", deserialize_with = "seconds")]
    pub request_timeout: Duration,
    #[serde(default = "secs::<90>", deserialize_with = "seconds")]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// PEM bundle of CAs trusted for an https upstream, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Forward the client's Host header instead of the upstream's.
    #[serde(default)]
    pub preserve_host: bool,
    /// Pass the client's certificate (from the TLS listener or a trusted front proxy) to the
    /// upstream in an RFC 9440 `Client-Cert` header, so the IdP can bind its tokens to it.
    #[serde(default)]
    pub forward_client_cert: bool,
    /// Client credentials for the upstream's introspection endpoint at capture (instead of the
    /// client's own).
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<Secret>,
    /// The proxy's own path where the upstream sends OpenID Connect Back-Channel Logout 1.0
    /// logout tokens (register `<proxy URL><path>` as the handled clients'
    /// `backchannel_logout_uri` at the IdP). Unset: off.
    pub backchannel_logout_path: Option<String>,
}

/// Whether the upstream has a revocation endpoint (`upstream.revocation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationMode {
    /// `revocation_path`, else discovery, says where it is; handled clients need one.
    #[default]
    Auto,
    /// Declared absent: no client can revoke the proxy's refresh tokens (only the admin API).
    Absent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_store_url")]
    pub url: String,
    /// ACL username for the Redis servers; overrides the one in `url`.
    pub username: Option<String>,
    /// Password for the Redis servers; overrides the one in `url`.
    pub password: Option<Secret>,
    /// ACL username for the sentinels (`redis+sentinel://`), when they require one.
    pub sentinel_username: Option<String>,
    /// Password for the sentinels (`redis+sentinel://`), when they require one.
    pub sentinel_password: Option<Secret>,
    /// Database index (standalone and Sentinel; a cluster has only 0); overrides the URL's.
    pub database: Option<i64>,
    /// PEM CA bundle that signs the servers' certificates (`rediss…://`; default: system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (`rediss…://`), with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    #[serde(default = "secs::<1>", deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    #[serde(default = "millis::<500>", deserialize_with = "seconds")]
    pub response_timeout: Duration,
    /// The longest one store operation may take in all, reconnects, redirects and retries
    /// included; a refresh waiting longer answers 503.
    #[serde(default = "secs::<1>", deserialize_with = "seconds")]
    pub operation_timeout: Duration,
    /// Reconnect attempts per reconnection (and, in a cluster, retries of a redirected or
    /// failed command), within `operation_timeout`.
    #[serde(default = "default_store_retries")]
    pub retries: u32,
    /// TCP keepalive probes on idle Redis connections (servers and sentinels), so a peer that
    /// vanished behind a firewall or NAT is noticed before the next command; 0 = off.
    #[serde(default = "secs::<30>", deserialize_with = "seconds")]
    pub tcp_keepalive: Duration,
    /// Backoff between reconnect attempts: first delay …
    #[serde(default = "millis::<50>", deserialize_with = "seconds")]
    pub retry_min_delay: Duration,
    /// … growing exponentially up to this.
    #[serde(default = "secs::<1>", deserialize_with = "seconds")]
    pub retry_max_delay: Duration,
    /// Prepended to every Redis key.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        from_empty_table()
    }
}

/// How access tokens minted on refresh look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessTokenFormat {
    Auto,
    Jwt,
    Opaque,
    /// The upstream's own access tokens: every refresh is redeemed at the upstream
    /// (docs/design.md §4.14), with the proxy's rotation, reuse detection and grace window.
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlg {
    ES256,
    EdDSA,
    RS256,
}

/// Refresh-token policy keys that may be set per client or, as the default, in `[tokens]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicy {
    /// Idle lifetime of a refresh token, seconds; 0 = the client gets no refresh tokens.
    pub refresh_token_ttl: Option<u64>,
    /// Absolute lifetime of a token family, seconds.
    pub refresh_token_max_lifetime: Option<u64>,
    pub reuse_refresh_tokens: Option<bool>,
    pub reuse_grace_period: Option<u64>,
    pub access_token_format: Option<AccessTokenFormat>,
    pub id_token_on_refresh: Option<bool>,
    /// Seconds after which a refresh first has the upstream confirm the session (0 = never).
    pub upstream_check_interval: Option<u64>,
    /// What a refresh does when that check cannot reach the upstream.
    pub upstream_unreachable: Option<Unreachable>,
    /// With `serve`: how long past the interval the store still answers (seconds).
    pub upstream_unreachable_max: Option<u64>,
    /// Which families are bound to a DPoP key (docs/design.md §4.16).
    pub dpop_bound: Option<DpopBound>,
    /// Refreshes of DPoP-bound families need a server nonce (RFC 9449 §8).
    pub dpop_nonce: Option<bool>,
}

/// `dpop_bound`: which of a client's families are bound to a DPoP key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpopBound {
    /// Those whose upstream answer was DPoP-bound (`token_type: DPoP`), to that key.
    Auto,
    /// Every family: to the key of the DPoP proof the client sent with the token request
    /// that opened it, whatever the upstream answered; none is opened without one.
    Required,
}

/// `upstream_unreachable`: what a refresh whose upstream check failed gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unreachable {
    /// Answered from the store, for at most `upstream_unreachable_max` past the interval.
    Serve,
    /// 503 `temporarily_unavailable`.
    Fail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(default = "default_access_token_ttl")]
    pub access_token_ttl: u64,
    #[serde(default = "default_signing_alg")]
    pub signing_alg: SigningAlg,
    pub signing_key_file: Option<PathBuf>,
    /// Access-token signing keys for rotation: the first signs, all are published and verify.
    /// Instead of `signing_key_file`.
    #[serde(default)]
    pub signing_key_files: Vec<PathBuf>,
    /// The server secret refresh tokens are derived and checked with (at least 32 bytes).
    /// Required with a shared store: every replica and every restart must check the same tokens.
    pub refresh_token_key: Option<Secret>,
    /// Refresh-token keys for rotation (or `refresh_token_key_files`): the first mints, all
    /// are accepted. Instead of `refresh_token_key`.
    #[serde(default)]
    pub refresh_token_keys: Vec<Secret>,
    /// Keys the upstream's refresh tokens are kept with in their families (AES-256-GCM; or
    /// `upstream_token_key_files`): the first encrypts, all decrypt. Unset: one derived from
    /// each refresh-token key (docs/design.md §4.11).
    #[serde(default)]
    pub upstream_token_keys: Vec<Secret>,
    /// `aud` of minted access tokens when the upstream's access token had none (default: the
    /// client id).
    pub audience: Option<String>,
    /// Algorithm of ID tokens issued on refresh; one the upstream's discovery lists.
    #[serde(default = "default_id_token_alg")]
    pub id_token_signing_alg: SigningAlg,
    pub id_token_signing_key_file: Option<PathBuf>,
    /// ID-token signing keys for rotation, as `signing_key_files`.
    #[serde(default)]
    pub id_token_signing_key_files: Vec<PathBuf>,
    pub refresh_token_ttl: Option<u64>,
    pub refresh_token_max_lifetime: Option<u64>,
    pub reuse_refresh_tokens: Option<bool>,
    pub reuse_grace_period: Option<u64>,
    pub access_token_format: Option<AccessTokenFormat>,
    pub id_token_on_refresh: Option<bool>,
    pub upstream_check_interval: Option<u64>,
    pub upstream_unreachable: Option<Unreachable>,
    pub upstream_unreachable_max: Option<u64>,
    pub dpop_bound: Option<DpopBound>,
    pub dpop_nonce: Option<bool>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        from_empty_table()
    }
}

impl TokensConfig {
    /// The refresh-token secrets, the minting one first (empty: none configured).
    pub fn refresh_token_secrets(&self) -> Vec<&Secret> {
        self.refresh_token_key
            .iter()
            .chain(&self.refresh_token_keys)
            .collect()
    }

    /// The access-token signing key files, the signing one first.
    pub fn signing_key_paths(&self) -> Vec<&PathBuf> {
        self.signing_key_file
            .iter()
            .chain(&self.signing_key_files)
            .collect()
    }

    /// The ID-token signing key files, the signing one first.
    pub fn id_token_signing_key_paths(&self) -> Vec<&PathBuf> {
        self.id_token_signing_key_file
            .iter()
            .chain(&self.id_token_signing_key_files)
            .collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of `POST /admin/revoke`; unset = that endpoint is off.
    pub token: Option<Secret>,
    /// Bearer token of `POST /admin/issue`, a separate opt-in (load-test rigs); unset = that
    /// endpoint is off. Must differ from `token`.
    pub issue_token: Option<Secret>,
}

impl AdminConfig {
    /// Each token long enough not to be guessed, and the two different: the revoke token must
    /// never be able to mint families.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let min = MIN_TOKEN_CHARS;
        for (key, token) in [
            ("admin.token", &self.token),
            ("admin.issue_token", &self.issue_token),
        ] {
            if let Some(token) = token
                && token.expose().chars().count() < min
            {
                return Err(ConfigError::invalid(
                    key,
                    format_args!("must be at least {min} characters"),
                ));
            }
        }
        if let (Some(revoke), Some(issue)) = (&self.token, &self.issue_token)
            && revoke == issue
        {
            return Err(ConfigError::invalid(
                "admin.issue_token",
                "must differ from admin.token (the revoke token must not be able to issue)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub secret: Option<Secret>,
    /// Hex SHA-256 digest of the secret, so the secret itself need not be in the config.
    pub secret_sha256: Option<String>,
    pub refresh_token_ttl: Option<u64>,
    pub refresh_token_max_lifetime: Option<u64>,
    pub reuse_refresh_tokens: Option<bool>,
    pub reuse_grace_period: Option<u64>,
    pub access_token_format: Option<AccessTokenFormat>,
    pub id_token_on_refresh: Option<bool>,
    pub upstream_check_interval: Option<u64>,
    pub upstream_unreachable: Option<Unreachable>,
    pub upstream_unreachable_max: Option<u64>,
    pub dpop_bound: Option<DpopBound>,
    pub dpop_nonce: Option<bool>,
    /// A resource server allowed to introspect the proxy's tokens (RFC 7662).
    #[serde(default)]
    pub may_introspect: bool,
    /// `POST /admin/issue` may open families for this client (meant for load-test clients).
    #[serde(default)]
    pub allow_admin_issue: bool,
    /// How the client authenticates at the upstream's token endpoint, as the IdP's
    /// registration says; the proxy uses the same method when it revokes the client's kept
    /// upstream tokens there. Default: `client_secret_basic` with a secret, `none` without.
    pub token_endpoint_auth_method: Option<TokenEndpointAuthMethod>,
    /// `private_key_jwt`: the client's public keys, a JWK Set (RFC 7517 §5) as JSON text, given
    /// inline or as `jwks_file`; or `jwks_uri`, where the proxy fetches it.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    /// Seconds between fetches of `jwks_uri` when assertions name a key it lacks.
    pub jwks_refetch_interval: Option<u64>,
    /// The JWS `alg` of the client's assertions (OIDC Registration §2), as registered at the
    /// IdP. Default: the IdP's default set (docs/configuration.md).
    pub token_endpoint_auth_signing_alg: Option<String>,
    /// `tls_client_auth` (RFC 8705 §2.1.2): the one value the client's certificate subject is
    /// registered as: a distinguished name (RFC 4514) or a subject alternative name.
    pub tls_client_auth_subject_dn: Option<String>,
    pub tls_client_auth_san_dns: Option<String>,
    pub tls_client_auth_san_uri: Option<String>,
    pub tls_client_auth_san_ip: Option<String>,
    pub tls_client_auth_san_email: Option<String>,
    /// The client's own back-channel logout endpoint: a logout token the proxy accepted for
    /// this client is passed on to it (the IdP sends it to the proxy instead).
    pub backchannel_logout_uri: Option<String>,
}

/// A client authentication method (RFC 7591 §2 `token_endpoint_auth_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    /// A JWT signed with the client's secret (RFC 7523 §2.2, OIDC Core §9).
    ClientSecretJwt,
    /// A JWT signed with the client's private key (RFC 7523 §2.2, OIDC Core §9).
    PrivateKeyJwt,
    /// A certificate from a CA, with a registered subject (RFC 8705 §2.1).
    TlsClientAuth,
    /// A self-signed certificate registered in the client's JWK Set (RFC 8705 §2.2).
    SelfSignedTlsClientAuth,
    None,
}

impl TokenEndpointAuthMethod {
    /// Whether the client authenticates with a certificate (RFC 8705 §2).
    pub fn uses_certificate(self) -> bool {
        matches!(
            self,
            TokenEndpointAuthMethod::TlsClientAuth
                | TokenEndpointAuthMethod::SelfSignedTlsClientAuth
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `refresh_proxy=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// One `info` line per request (request id, method, path, status, duration).
    #[serde(default = "yes")]
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        from_empty_table()
    }
}

impl ClientConfig {
    /// The `tls_client_auth_*` subject keys (RFC 8705 §2.1.2), by kind (`subject_dn`,
    /// `san_dns`, …), each with its value when set.
    pub fn tls_client_auth_subjects(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("subject_dn", self.tls_client_auth_subject_dn.as_deref()),
            ("san_dns", self.tls_client_auth_san_dns.as_deref()),
            ("san_uri", self.tls_client_auth_san_uri.as_deref()),
            ("san_ip", self.tls_client_auth_san_ip.as_deref()),
            ("san_email", self.tls_client_auth_san_email.as_deref()),
        ]
    }

    /// This client's policy, with `[tokens]` defaults filled in where it sets nothing.
    pub fn policy(&self, defaults: &TokensConfig) -> ClientPolicy {
        ClientPolicy {
            refresh_token_ttl: self.refresh_token_ttl.or(defaults.refresh_token_ttl),
            refresh_token_max_lifetime: self
                .refresh_token_max_lifetime
                .or(defaults.refresh_token_max_lifetime),
            reuse_refresh_tokens: self.reuse_refresh_tokens.or(defaults.reuse_refresh_tokens),
            reuse_grace_period: self.reuse_grace_period.or(defaults.reuse_grace_period),
            access_token_format: self.access_token_format.or(defaults.access_token_format),
            id_token_on_refresh: self.id_token_on_refresh.or(defaults.id_token_on_refresh),
            upstream_check_interval: self
                .upstream_check_interval
                .or(defaults.upstream_check_interval),
            upstream_unreachable: self.upstream_unreachable.or(defaults.upstream_unreachable),
            upstream_unreachable_max: self
                .upstream_unreachable_max
                .or(defaults.upstream_unreachable_max),
            dpop_bound: self.dpop_bound.or(defaults.dpop_bound),
            dpop_nonce: self.dpop_nonce.or(defaults.dpop_nonce),
        }
    }
}

impl Config {
    /// Reads `path`, applies the `REFRESH_PROXY_*` environment overrides and checks the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let overrides = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX));
        Config::from_toml_str(&text, base, overrides).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text; relative `*_file` paths are resolved against `base`.
    pub fn from_toml_str(
        text: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("config"),
            message: e.to_string(),
        })?;
        let mut env: Vec<_> = env.into_iter().collect();
        env.sort();
        for (var, value) in env {
            apply_env_override(&mut table, &var, &value)?;
        }
        resolve_secret_files(&mut table, base, "")?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // toml appends "in `section`" on a second line; the key path says it already.
                let message = e.into_inner().to_string();
                let first = message.lines().next().unwrap_or_default().replace('`', "'");
                ConfigError::invalid(key, first)
            })?;
        config.validate(base)
    }

    fn validate(mut self, base: &Path) -> Result<Config, ConfigError> {
        let url: http::Uri = self
            .upstream
            .url
            .parse()
            .map_err(|e| ConfigError::invalid("upstream.url", e))?;
        match (url.scheme_str(), url.authority()) {
            (Some("http" | "https"), Some(_)) if url.query().is_none() => {}
            _ => {
                return Err(ConfigError::invalid(
                    "upstream.url",
                    "must be an http:// or https:// URL with a host and no query",
                ));
            }
        }
        self.upstream.url = self.upstream.url.trim_end_matches('/').to_owned();
        for (key, path) in [
            ("upstream.token_path", &self.upstream.token_path),
            ("upstream.revocation_path", &self.upstream.revocation_path),
            (
                "upstream.introspection_path",
                &self.upstream.introspection_path,
            ),
            ("upstream.jwks_path", &self.upstream.jwks_path),
            (
                "upstream.backchannel_logout_path",
                &self.upstream.backchannel_logout_path,
            ),
        ] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.contains('?') || p.contains('#'))
            {
                return Err(ConfigError::invalid(
                    key,
                    "must be a path starting with '/', without query or fragment",
                ));
            }
        }
        if !self.upstream.discovery && self.upstream.token_path.is_none() {
            return Err(ConfigError::invalid(
                "upstream.token_path",
                "required when upstream.discovery = false",
            ));
        }
        if self.upstream.revocation == RevocationMode::Absent
            && self.upstream.revocation_path.is_some()
        {
            return Err(ConfigError::invalid(
                "upstream.revocation",
                "\"absent\" contradicts upstream.revocation_path; set one of them",
            ));
        }
        // A handled client's RFC 7009 revocation of a proxy token that reached the upstream
        // would be answered 200 (RFC 7009 §2.2: "invalid tokens do not cause an error
        // response") while the token stays live at the proxy: without discovery, config must
        // say where the endpoint is, or that there is none.
        if !self.upstream.discovery
            && !self.clients.is_empty()
            && self.upstream.revocation_path.is_none()
            && self.upstream.revocation != RevocationMode::Absent
        {
            return Err(ConfigError::invalid(
                "upstream.revocation_path",
                "required with [clients] when upstream.discovery = false, or the proxy cannot \
                 answer revocations of its own refresh tokens (the upstream would answer 200 and \
                 they would stay live); set it, or declare upstream.revocation = \"absent\"",
            ));
        }
        if let Some(claim) = &self.upstream.subject_claim
            && claim.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                "upstream.subject_claim",
                "must name a claim (e.g. \"username\"), or be left out",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.server.workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "server.workers",
                format_args!("must be at most {MAX_WORKERS} (0 = one per CPU core)"),
            ));
        }
        validate_connections(&self.server)?;
        if self.server.drain_delay >= self.server.shutdown_timeout {
            return Err(ConfigError::invalid(
                "server.drain_delay",
                "must be shorter than server.shutdown_timeout",
            ));
        }
        for (cert, key, prefix) in [
            (
                &self.server.tls_cert_file,
                &self.server.tls_key_file,
                "server.tls",
            ),
            (
                &self.server.admin_tls_cert_file,
                &self.server.admin_tls_key_file,
                "server.admin_tls",
            ),
        ] {
            match (cert, key) {
                (Some(_), None) => {
                    return Err(ConfigError::invalid(
                        format!("{prefix}_key_file"),
                        format_args!("required when {prefix}_cert_file is set"),
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        format!("{prefix}_cert_file"),
                        format_args!("required when {prefix}_key_file is set"),
                    ));
                }
                _ => {}
            }
        }
        self.admin.validate()?;
        for path in [
            &mut self.server.tls_cert_file,
            &mut self.server.tls_key_file,
            &mut self.server.admin_tls_cert_file,
            &mut self.server.admin_tls_key_file,
            &mut self.upstream.ca_file,
            &mut self.tokens.signing_key_file,
            &mut self.tokens.id_token_signing_key_file,
            &mut self.store.tls_ca_file,
            &mut self.store.tls_cert_file,
            &mut self.store.tls_key_file,
        ]
        .into_iter()
        .flatten()
        .chain(&mut self.tokens.signing_key_files)
        .chain(&mut self.tokens.id_token_signing_key_files)
        {
            *path = base.join(&*path);
        }
        for (single, list, one, many) in [
            (
                self.tokens.signing_key_file.is_some(),
                !self.tokens.signing_key_files.is_empty(),
                "signing_key_file",
                "signing_key_files",
            ),
            (
                self.tokens.id_token_signing_key_file.is_some(),
                !self.tokens.id_token_signing_key_files.is_empty(),
                "id_token_signing_key_file",
                "id_token_signing_key_files",
            ),
            (
                self.tokens.refresh_token_key.is_some(),
                !self.tokens.refresh_token_keys.is_empty(),
                "refresh_token_key",
                "refresh_token_keys",
            ),
        ] {
            if single && list {
                return Err(ConfigError::invalid(
                    format!("tokens.{many}"),
                    format_args!("set either {one} or {many}, not both"),
                ));
            }
        }
        for (key, count) in [
            (
                "tokens.signing_key_files",
                self.tokens.signing_key_files.len(),
            ),
            (
                "tokens.id_token_signing_key_files",
                self.tokens.id_token_signing_key_files.len(),
            ),
            (
                "tokens.refresh_token_keys",
                self.tokens.refresh_token_keys.len(),
            ),
            (
                "tokens.upstream_token_keys",
                self.tokens.upstream_token_keys.len(),
            ),
        ] {
            if count > MAX_REFRESH_KEYS {
                return Err(ConfigError::invalid(
                    key,
                    "at most 4 keys (the current one and those still accepted)",
                ));
            }
        }
        let store = store_url::StoreUrl::parse(&self.store.url)
            .map_err(|e| ConfigError::invalid("store.url", e))?;
        validate_store(&self.store, &store)?;
        let refresh_secrets = self.tokens.refresh_token_secrets();
        if refresh_secrets.iter().any(|k| k.expose().len() < 32) {
            return Err(ConfigError::invalid(
                if self.tokens.refresh_token_keys.is_empty() {
                    "tokens.refresh_token_key"
                } else {
                    "tokens.refresh_token_keys"
                },
                "must be at least 32 bytes (e.g. `openssl rand -base64 48`)",
            ));
        }
        for (i, k) in refresh_secrets.iter().enumerate() {
            if refresh_secrets[..i].contains(k) {
                return Err(ConfigError::invalid(
                    "tokens.refresh_token_keys",
                    "the same key is listed twice",
                ));
            }
        }
        let kept = &self.tokens.upstream_token_keys;
        if kept.iter().any(|k| k.expose().len() < 32) {
            return Err(ConfigError::invalid(
                "tokens.upstream_token_keys",
                "must be at least 32 bytes each (e.g. `openssl rand -base64 48`)",
            ));
        }
        for (i, k) in kept.iter().enumerate() {
            if kept[..i].contains(k) || refresh_secrets.contains(&k) {
                return Err(ConfigError::invalid(
                    "tokens.upstream_token_keys",
                    "each key once, and none that is also a refresh-token key",
                ));
            }
        }
        match refresh_secrets.first() {
            None if store != store_url::StoreUrl::Memory => {
                return Err(ConfigError::invalid(
                    "tokens.refresh_token_key",
                    "required with a redis store: every replica and every restart must check the \
                     same refresh tokens (e.g. `openssl rand -base64 48` in refresh_token_key_file)",
                ));
            }
            _ => {}
        }
        if self.upstream.introspection_client_id.is_some()
            != self.upstream.introspection_client_secret.is_some()
        {
            return Err(ConfigError::invalid(
                "upstream.introspection_client_secret",
                "introspection_client_id and introspection_client_secret go together",
            ));
        }
        if !(1..=MAX_ACCESS_TOKEN_TTL).contains(&self.tokens.access_token_ttl) {
            return Err(ConfigError::invalid(
                "tokens.access_token_ttl",
                format_args!("must be 1 to {MAX_ACCESS_TOKEN_TTL} seconds"),
            ));
        }
        let t = &self.tokens;
        validate_lifetimes(
            "tokens",
            [
                t.refresh_token_ttl,
                t.refresh_token_max_lifetime,
                t.reuse_grace_period,
                t.upstream_check_interval,
                t.upstream_unreachable_max,
            ],
        )?;
        for (id, client) in &self.clients {
            validate_client(id, client)?;
            validate_certificate_auth(id, client, &self.server)?;
            validate_lifetimes(
                &format!("clients.{id}"),
                [
                    client.refresh_token_ttl,
                    client.refresh_token_max_lifetime,
                    client.reuse_grace_period,
                    client.upstream_check_interval,
                    client.upstream_unreachable_max,
                ],
            )?;
        }
        // A span field filter (`target[span{field=value}]=level`) compiles its value into a
        // regular-expression DFA, which for some patterns takes exponential time and memory
        // (found by fuzzing: validation, and so `check-config` and start-up, never returned).
        // Targets, span names and levels are all the proxy's logs need.
        if self.log.level.contains(['{', '}']) {
            return Err(ConfigError::invalid(
                "log.level",
                "span field filters ({...}) are not supported; use targets and levels (e.g. \
                 \"refresh_proxy=debug,info\")",
            ));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::invalid(
                "log.level",
                "not a tracing filter directive (e.g. \"info\" or \"refresh_proxy=debug,info\")",
            ));
        }
        Ok(self)
    }
}

fn validate_store(store: &StoreConfig, url: &store_url::StoreUrl) -> Result<(), ConfigError> {
    use store_url::{StoreUrl, Topology};
    let redis = match url {
        StoreUrl::Memory => None,
        StoreUrl::Redis(redis) => Some(redis),
    };
    let tls = redis.is_some_and(|r| r.tls);
    for (key, set) in [
        ("store.tls_ca_file", store.tls_ca_file.is_some()),
        ("store.tls_cert_file", store.tls_cert_file.is_some()),
        ("store.tls_key_file", store.tls_key_file.is_some()),
    ] {
        if set && !tls {
            return Err(ConfigError::invalid(
                key,
                "only with a TLS store URL (rediss://, rediss+sentinel://, rediss+cluster://)",
            ));
        }
    }
    if store.tls_cert_file.is_some() != store.tls_key_file.is_some() {
        return Err(ConfigError::invalid(
            "store.tls_key_file",
            "tls_cert_file and tls_key_file go together (the client certificate and its key)",
        ));
    }
    let sentinel = redis.is_some_and(|r| matches!(r.topology, Topology::Sentinel { .. }));
    if !sentinel && (store.sentinel_username.is_some() || store.sentinel_password.is_some()) {
        return Err(ConfigError::invalid(
            "store.sentinel_password",
            "sentinel credentials are only for redis+sentinel:// URLs",
        ));
    }
    if let Some(db) = store.database {
        if db < 0 {
            return Err(ConfigError::invalid("store.database", "must be 0 or more"));
        }
        if redis.is_some_and(|r| r.topology == Topology::Cluster) && db != 0 {
            return Err(ConfigError::invalid(
                "store.database",
                "a Redis Cluster has only database 0",
            ));
        }
    }
    for (key, d) in [
        ("store.connect_timeout", store.connect_timeout),
        ("store.response_timeout", store.response_timeout),
        ("store.operation_timeout", store.operation_timeout),
    ] {
        if d.is_zero() {
            return Err(ConfigError::invalid(key, "must be more than 0"));
        }
    }
    if store.operation_timeout < store.response_timeout {
        return Err(ConfigError::invalid(
            "store.operation_timeout",
            "must be at least store.response_timeout",
        ));
    }
    if store.retry_min_delay > store.retry_max_delay {
        return Err(ConfigError::invalid(
            "store.retry_min_delay",
            "must not exceed store.retry_max_delay",
        ));
    }
    Ok(())
}

/// The `[server]` keys that bound connections: each within its range, so no deadline overflows
/// and no limit is zero.
fn validate_connections(server: &ServerConfig) -> Result<(), ConfigError> {
    let hour = MAX_SERVER_TIMEOUT.as_secs();
    for (key, d, zero_allowed) in [
        (
            "server.header_read_timeout",
            server.header_read_timeout,
            false,
        ),
        ("server.body_read_timeout", server.body_read_timeout, false),
        ("server.idle_timeout", server.idle_timeout, false),
        (
            "server.http2_keep_alive_interval",
            server.http2_keep_alive_interval,
            true,
        ),
        (
            "server.http2_keep_alive_timeout",
            server.http2_keep_alive_timeout,
            false,
        ),
    ] {
        if d > MAX_SERVER_TIMEOUT || (d.is_zero() && !zero_allowed) {
            let low = if zero_allowed { "0" } else { "more than 0" };
            return Err(ConfigError::invalid(
                key,
                format_args!("must be {low} and at most {hour} seconds"),
            ));
        }
    }
    for (key, value, low, high) in [
        (
            "server.max_connections",
            server.max_connections,
            1,
            MAX_CONNECTIONS,
        ),
        (
            "server.admin_max_connections",
            server.admin_max_connections,
            1,
            MAX_CONNECTIONS,
        ),
        (
            "server.max_header_bytes",
            server.max_header_bytes,
            MIN_HEADER_BYTES,
            MAX_HEADER_BYTES,
        ),
        (
            "server.http2_max_concurrent_streams",
            server.http2_max_concurrent_streams as usize,
            1,
            MAX_CONCURRENT_STREAMS as usize,
        ),
        (
            "server.max_connection_body_bytes",
            server.max_connection_body_bytes,
            server.max_body_bytes,
            MAX_CONNECTION_BODY_BYTES,
        ),
    ] {
        if !(low..=high).contains(&value) {
            let at_least = if key == "server.max_connection_body_bytes" {
                format!("server.max_body_bytes ({low})")
            } else {
                low.to_string()
            };
            return Err(ConfigError::invalid(
                key,
                format_args!("must be at least {at_least} and at most {high}"),
            ));
        }
    }
    Ok(())
}

/// The longest access-token lifetime: a day (access tokens are meant to be short-lived; RFC
/// 9700 §4.14.2 relies on it).
pub const MAX_ACCESS_TOKEN_TTL: u64 = 86_400;
/// The longest refresh-token idle or absolute lifetime: 10 years. Bounded so that no deadline
/// computed from one can overflow.
pub const MAX_LIFETIME: u64 = 10 * 365 * 86_400;
/// The longest grace window: an hour (it is for retries and racing tabs; a longer one lets a
/// stolen rotated-out token through for longer).
pub const MAX_GRACE: u64 = 3_600;

/// Every lifetime is bounded at config time, so no deadline arithmetic can overflow.
fn validate_lifetimes(section: &str, values: [Option<u64>; 5]) -> Result<(), ConfigError> {
    let [idle, max, grace, check, unreachable] = values;
    for (k, value, low, high) in [
        ("refresh_token_ttl", idle, 0, MAX_LIFETIME),
        ("refresh_token_max_lifetime", max, 1, MAX_LIFETIME),
        ("reuse_grace_period", grace, 0, MAX_GRACE),
        ("upstream_check_interval", check, 0, MAX_LIFETIME),
        ("upstream_unreachable_max", unreachable, 0, MAX_LIFETIME),
    ] {
        if let Some(v) = value
            && !(low..=high).contains(&v)
        {
            return Err(ConfigError::invalid(
                format!("{section}.{k}"),
                format_args!("must be {low} to {high} seconds"),
            ));
        }
    }
    Ok(())
}

fn validate_client(id: &str, client: &ClientConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("clients.{id}.{k}");
    if id.is_empty() || id.chars().any(|c| c.is_control()) {
        return Err(ConfigError::invalid(
            format!("clients.{id:?}"),
            "client ids must be non-empty and printable",
        ));
    }
    if client.secret.is_some() && client.secret_sha256.is_some() {
        return Err(ConfigError::invalid(
            key("secret_sha256"),
            "set either secret (or secret_file) or secret_sha256, not both",
        ));
    }
    if let Some(hex) = &client.secret_sha256
        && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ConfigError::invalid(
            key("secret_sha256"),
            "must be 64 hex digits (a SHA-256 digest)",
        ));
    }
    if let Some(secret) = &client.secret
        && secret.expose().is_empty()
    {
        return Err(ConfigError::invalid(
            key("secret"),
            "must not be empty (omit it for a public client)",
        ));
    }
    if let Some(uri) = &client.backchannel_logout_uri {
        let ok = uri.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if !ok {
            return Err(ConfigError::invalid(
                key("backchannel_logout_uri"),
                "must be an absolute http:// or https:// URL",
            ));
        }
    }
    if client.access_token_format == Some(AccessTokenFormat::Upstream)
        && client.secret.is_none()
        && client.secret_sha256.is_some()
    {
        return Err(ConfigError::invalid(
            key("access_token_format"),
            "\"upstream\" redeems every refresh at the upstream as the client: it needs the \
             client's secret (secret or secret_file), not only its digest",
        ));
    }
    validate_assertion_keys(id, client)?;
    let confidential = client.secret.is_some() || client.secret_sha256.is_some();
    match client.token_endpoint_auth_method {
        Some(TokenEndpointAuthMethod::None) if confidential => {
            return Err(ConfigError::invalid(
                key("token_endpoint_auth_method"),
                "\"none\" is for public clients; this client has a secret",
            ));
        }
        Some(
            TokenEndpointAuthMethod::ClientSecretBasic | TokenEndpointAuthMethod::ClientSecretPost,
        ) if !confidential => {
            return Err(ConfigError::invalid(
                key("token_endpoint_auth_method"),
                "a client_secret method needs secret (or secret_file, or secret_sha256)",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The `alg` names a client assertion may use (docs/configuration.md, `[clients]`).
pub const PRIVATE_KEY_JWT_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
pub const CLIENT_SECRET_JWT_ALGS: &[&str] = &["HS256", "HS384", "HS512"];

/// `private_key_jwt` and `client_secret_jwt` (docs/design.md §4.18): the keys each needs, and
/// an `alg` of the right kind.
fn validate_assertion_keys(id: &str, client: &ClientConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("clients.{id}.{k}");
    let method = client.token_endpoint_auth_method;
    let sources = [
        ("jwks", client.jwks.is_some()),
        ("jwks_uri", client.jwks_uri.is_some()),
    ];
    let jwt_method = matches!(
        method,
        Some(TokenEndpointAuthMethod::PrivateKeyJwt | TokenEndpointAuthMethod::ClientSecretJwt)
    );
    if client.token_endpoint_auth_signing_alg.is_some() && !jwt_method {
        return Err(ConfigError::invalid(
            key("token_endpoint_auth_signing_alg"),
            "only for token_endpoint_auth_method = \"private_key_jwt\" or \"client_secret_jwt\"",
        ));
    }
    if client.jwks_refetch_interval.is_some() && client.jwks_uri.is_none() {
        return Err(ConfigError::invalid(
            key("jwks_refetch_interval"),
            "only with jwks_uri",
        ));
    }
    if client.jwks_refetch_interval == Some(0) {
        return Err(ConfigError::invalid(
            key("jwks_refetch_interval"),
            "must be at least 1 (seconds)",
        ));
    }
    let keyed = matches!(
        method,
        Some(
            TokenEndpointAuthMethod::PrivateKeyJwt
                | TokenEndpointAuthMethod::SelfSignedTlsClientAuth
        )
    );
    if !keyed && let Some((name, _)) = sources.iter().find(|(_, set)| *set) {
        return Err(ConfigError::invalid(
            key(name),
            "client keys are only for token_endpoint_auth_method = \"private_key_jwt\" or \
             \"self_signed_tls_client_auth\"",
        ));
    }
    if method == Some(TokenEndpointAuthMethod::PrivateKeyJwt)
        && client.access_token_format == Some(AccessTokenFormat::Upstream)
    {
        return Err(ConfigError::invalid(
            key("access_token_format"),
            "\"upstream\" redeems every refresh at the upstream as the client: the proxy cannot \
             sign a \"private_key_jwt\" client's assertions",
        ));
    }
    match method {
        Some(TokenEndpointAuthMethod::PrivateKeyJwt) => {
            match sources.iter().filter(|(_, set)| *set).count() {
                1 => {}
                0 => {
                    return Err(ConfigError::invalid(
                        key("token_endpoint_auth_method"),
                        "\"private_key_jwt\" needs the client's public keys: jwks (or jwks_file) or jwks_uri",
                    ));
                }
                _ => {
                    return Err(ConfigError::invalid(
                        key("jwks_uri"),
                        "set one of jwks (or jwks_file) and jwks_uri, not both",
                    ));
                }
            }
            if client.secret.is_some() || client.secret_sha256.is_some() {
                let name = if client.secret.is_some() {
                    "secret"
                } else {
                    "secret_sha256"
                };
                return Err(ConfigError::invalid(
                    key(name),
                    "a \"private_key_jwt\" client authenticates with its key, not a secret",
                ));
            }
            if let Some(uri) = &client.jwks_uri {
                validate_jwks_uri(uri).map_err(|why| ConfigError::invalid(key("jwks_uri"), why))?;
            }
            if let Some(alg) = &client.token_endpoint_auth_signing_alg
                && !PRIVATE_KEY_JWT_ALGS.contains(&alg.as_str())
            {
                return Err(ConfigError::invalid(
                    key("token_endpoint_auth_signing_alg"),
                    format!(
                        "{alg:?} is not an asymmetric algorithm the proxy verifies ({})",
                        PRIVATE_KEY_JWT_ALGS.join(", ")
                    ),
                ));
            }
        }
        Some(TokenEndpointAuthMethod::ClientSecretJwt) => {
            if client.secret.is_none() {
                let why = if client.secret_sha256.is_some() {
                    "\"client_secret_jwt\" needs the secret itself (secret or secret_file): a \
                     digest cannot verify an HMAC"
                } else {
                    "\"client_secret_jwt\" needs the client's secret (secret or secret_file)"
                };
                let name = if client.secret_sha256.is_some() {
                    "secret_sha256"
                } else {
                    "token_endpoint_auth_method"
                };
                return Err(ConfigError::invalid(key(name), why));
            }
            if let Some(alg) = &client.token_endpoint_auth_signing_alg
                && !CLIENT_SECRET_JWT_ALGS.contains(&alg.as_str())
            {
                return Err(ConfigError::invalid(
                    key("token_endpoint_auth_signing_alg"),
                    format!(
                        "{alg:?} is not an HMAC algorithm ({})",
                        CLIENT_SECRET_JWT_ALGS.join(", ")
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// `tls_client_auth` and `self_signed_tls_client_auth` (docs/design.md §4.19): what each
/// needs, and a way for a certificate to reach the proxy.
fn validate_certificate_auth(
    id: &str,
    client: &ClientConfig,
    server: &ServerConfig,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("clients.{id}.{k}");
    let set: Vec<_> = client
        .tls_client_auth_subjects()
        .into_iter()
        .filter_map(|(kind, v)| Some((kind, v?)))
        .collect();
    let Some(method) = client.token_endpoint_auth_method else {
        return match set.first() {
            Some((kind, _)) => Err(ConfigError::invalid(
                key(&format!("tls_client_auth_{kind}")),
                "only for token_endpoint_auth_method = \"tls_client_auth\"",
            )),
            None => Ok(()),
        };
    };
    if method != TokenEndpointAuthMethod::TlsClientAuth
        && let Some((kind, _)) = set.first()
    {
        return Err(ConfigError::invalid(
            key(&format!("tls_client_auth_{kind}")),
            "only for token_endpoint_auth_method = \"tls_client_auth\"",
        ));
    }
    if !method.uses_certificate() {
        return Ok(());
    }
    let method_key = key("token_endpoint_auth_method");
    if let Some(name) = [
        ("secret", client.secret.is_some()),
        ("secret_sha256", client.secret_sha256.is_some()),
    ]
    .iter()
    .find_map(|(n, on)| on.then_some(*n))
    {
        return Err(ConfigError::invalid(
            key(name),
            "a client that authenticates with a certificate has no secret",
        ));
    }
    if client.access_token_format == Some(AccessTokenFormat::Upstream) {
        return Err(ConfigError::invalid(
            key("access_token_format"),
            "\"upstream\" redeems every refresh at the upstream as the client: the proxy cannot \
             present the client's certificate",
        ));
    }
    if !server.tls_client_certificates && !server.client_cert_header {
        return Err(ConfigError::invalid(
            method_key,
            "no client certificate can reach the proxy: set server.tls_client_certificates \
             (with the TLS listener) or server.client_cert_header",
        ));
    }
    match method {
        TokenEndpointAuthMethod::TlsClientAuth => {
            let (kind, value) = match set.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ConfigError::invalid(
                        method_key,
                        "\"tls_client_auth\" needs the certificate's registered subject: one of \
                         tls_client_auth_subject_dn, _san_dns, _san_uri, _san_ip, _san_email",
                    ));
                }
                [_, (second, _), ..] => {
                    return Err(ConfigError::invalid(
                        key(&format!("tls_client_auth_{second}")),
                        "set exactly one tls_client_auth_* subject (RFC 8705 §2.1.2)",
                    ));
                }
            };
            crate::client_cert::subject::Subject::parse(kind, value).map_err(|why| {
                ConfigError::invalid(key(&format!("tls_client_auth_{kind}")), why)
            })?;
            if server.client_ca_file.is_none() {
                return Err(ConfigError::invalid(
                    method_key,
                    "\"tls_client_auth\" needs server.client_ca_file, the CAs its certificate \
                     chains to",
                ));
            }
        }
        _ => {
            if client.jwks.is_none() && client.jwks_uri.is_none() {
                return Err(ConfigError::invalid(
                    method_key,
                    "\"self_signed_tls_client_auth\" needs the client's certificates: jwks (or \
                     jwks_file) or jwks_uri, with x5c",
                ));
            }
            if client.jwks.is_some() && client.jwks_uri.is_some() {
                return Err(ConfigError::invalid(
                    key("jwks_uri"),
                    "set one of jwks (or jwks_file) and jwks_uri, not both",
                ));
            }
            if let Some(uri) = &client.jwks_uri {
                validate_jwks_uri(uri).map_err(|why| ConfigError::invalid(key("jwks_uri"), why))?;
            }
        }
    }
    Ok(())
}

/// A client's `jwks_uri`: `https`, or `http` to a loopback host only (a test or a sidecar).
fn validate_jwks_uri(uri: &str) -> Result<(), &'static str> {
    let parsed: http::Uri = uri.parse().map_err(|_| "not a URL")?;
    let host = parsed.host().ok_or("must be an absolute URL")?;
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err("must be an https:// URL (http:// only to a loopback address)"),
    }
}

/// Applies `REFRESH_PROXY_SECTION__KEY=value` to the table.
fn apply_env_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    if var == ENV_CONFIG_PATH {
        return Ok(());
    }
    let env_err = |message: &str| ConfigError::Env {
        var: var.to_owned(),
        message: message.to_owned(),
    };
    // `load` passes only names with the prefix; a caller of `from_toml_str` may pass any.
    let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
        return Err(env_err("does not start with REFRESH_PROXY_"));
    };
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(env_err(
            "expected REFRESH_PROXY_<SECTION>__<KEY> (e.g. REFRESH_PROXY_SERVER__LISTEN)",
        ));
    }
    let value = parse_env_value(raw);
    let (last, parents) = path.split_last().expect("path has at least two segments");
    let mut node = table;
    for segment in parents {
        let entry = node
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| env_err(&format!("{segment} is not a table in the config")))?;
    }
    node.insert(last.clone(), value);
    Ok(())
}

/// An env value is a TOML value when it parses as one (`30`, `true`, `"x"`, `["a", "b"]`), else
/// a string. A number or boolean counts only when the value is written exactly as TOML writes
/// it back: `0x12`, `1e3`, `1_000`, `+1` or `1.50` stay the strings they are, so a secret made
/// of such characters never silently changes (a secret `30` or `true` reads back the same).
fn parse_env_value(raw: &str) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match parsed {
        Some(v @ (toml::Value::Integer(_) | toml::Value::Boolean(_))) if v.to_string() == raw => v,
        Some(v @ toml::Value::Float(_))
            if v.as_float().is_some_and(f64::is_finite) && v.to_string() == raw =>
        {
            v
        }
        Some(v @ (toml::Value::String(_) | toml::Value::Array(_) | toml::Value::Table(_))) => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Replaces every `<secret>_file = "path"` with `<secret> = "<content>"`, at any depth.
fn resolve_secret_files(
    table: &mut toml::Table,
    base: &Path,
    prefix: &str,
) -> Result<(), ConfigError> {
    let file_keys: Vec<String> = table
        .keys()
        .filter(|k| {
            k.strip_suffix("_file")
                .is_some_and(|s| SECRET_KEYS.contains(&s))
        })
        .cloned()
        .collect();
    for file_key in file_keys {
        let key = file_key.trim_end_matches("_file").to_owned();
        let full = format!("{prefix}{file_key}");
        if table.contains_key(&key) {
            return Err(ConfigError::invalid(
                full,
                format!("set either {key} or {file_key}, not both"),
            ));
        }
        let Some(toml::Value::String(path)) = table.remove(&file_key) else {
            return Err(ConfigError::invalid(full, "must be a file path (a string)"));
        };
        let path = base.join(path);
        let content = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::invalid(&full, format!("cannot read {}: {e}", path.display()))
        })?;
        let content = content.trim_end_matches(['\r', '\n']).to_owned();
        table.insert(key, toml::Value::String(content));
    }
    for (key, files_key) in SECRET_LISTS {
        let Some(files) = table.remove(*files_key) else {
            continue;
        };
        let full = format!("{prefix}{files_key}");
        if table.contains_key(*key) {
            return Err(ConfigError::invalid(
                full,
                format!("set either {key} or {files_key}, not both"),
            ));
        }
        let toml::Value::Array(paths) = files else {
            return Err(ConfigError::invalid(full, "must be a list of file paths"));
        };
        let mut secrets = Vec::with_capacity(paths.len());
        for path in paths {
            let toml::Value::String(path) = path else {
                return Err(ConfigError::invalid(full, "must be a list of file paths"));
            };
            let path = base.join(path);
            let content = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(&full, format!("cannot read {}: {e}", path.display()))
            })?;
            secrets.push(toml::Value::String(
                content.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        table.insert((*key).to_owned(), toml::Value::Array(secrets));
    }
    for (k, v) in table.iter_mut() {
        if let toml::Value::Table(inner) = v {
            let prefix = format!("{prefix}{k}.");
            if prefix == "clients." {
                // The keys of [clients] are client ids, not settings: a client may be called
                // `secret_file`. Its own table is resolved as any other.
                for (id, client) in inner.iter_mut() {
                    if let toml::Value::Table(client) = client {
                        resolve_secret_files(client, base, &format!("clients.{id}."))?;
                    }
                }
            } else {
                resolve_secret_files(inner, base, &prefix)?;
            }
        }
    }
    Ok(())
}

fn from_empty_table<T: serde::de::DeserializeOwned>() -> T {
    toml::Value::Table(toml::Table::new())
        .try_into()
        .expect("every key of this section has a default")
}

/// Durations are given in seconds, whole or fractional (`0.25`).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(d)?;
    Duration::try_from_secs_f64(s)
        .map_err(|_| serde::de::Error::custom("must be a non-negative number of seconds"))
}

const fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
const fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}
const fn yes() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
const fn default_max_body_bytes() -> usize {
    64 * 1024
}
const fn default_admin_max_connections() -> usize {
    256
}

const fn default_max_connections() -> usize {
    10_000
}
const fn default_max_header_bytes() -> usize {
    32 * 1024
}
const fn default_http2_max_concurrent_streams() -> u32 {
    100
}
const fn default_max_connection_body_bytes() -> usize {
    1024 * 1024
}
const fn default_pool_max_idle() -> usize {
    256
}
fn default_key_prefix() -> String {
    "rp:".to_owned()
}

fn default_store_retries() -> u32 {
    2
}

fn default_store_url() -> String {
    "memory://".to_owned()
}
const fn default_access_token_ttl() -> u64 {
    300
}
const fn default_id_token_alg() -> SigningAlg {
    SigningAlg::RS256
}
const fn default_signing_alg() -> SigningAlg {
    SigningAlg::ES256
}
const fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Path::new("/nonexistent"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:9090/\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL, &[]).expect("valid");
        assert_eq!(c.upstream.url, "http://127.0.0.1:9090");
        assert_eq!(c.server.admin_listen.port(), 9901);
        assert_eq!(c.store.url, "memory://");
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.store.response_timeout, Duration::from_millis(500));
        assert_eq!(c.tokens.signing_alg, SigningAlg::ES256);
    }

    #[test]
    fn every_lifetime_is_bounded() {
        for (section, key, value) in [
            ("tokens", "access_token_ttl", "0"),
            ("tokens", "access_token_ttl", "86401"),
            ("tokens", "refresh_token_ttl", "315360001"),
            ("tokens", "refresh_token_max_lifetime", "0"),
            (
                "tokens",
                "refresh_token_max_lifetime",
                "9223372036854775807",
            ),
            ("tokens", "reuse_grace_period", "3601"),
            ("clients.www", "refresh_token_ttl", "9223372036854775807"),
            ("clients.www", "refresh_token_max_lifetime", "315360001"),
            ("clients.www", "reuse_grace_period", "100000"),
        ] {
            let text = format!("{MINIMAL}[{section}]\n{key} = {value}\n");
            let err = parse(&text, &[]).expect_err(&text);
            assert!(
                err.to_string().starts_with(&format!("{section}.{key}:")),
                "{err}"
            );
        }
        let ok = format!(
            "{MINIMAL}[tokens]\naccess_token_ttl = 86400\nrefresh_token_max_lifetime = 315360000\n\
             [clients.www]\nrefresh_token_ttl = 0\nreuse_grace_period = 3600\n"
        );
        parse(&ok, &[]).expect("the bounds themselves are allowed");
    }

    #[test]
    fn workers_default_to_the_cores_and_can_be_set() {
        let c = parse(MINIMAL, &[]).expect("valid");
        assert_eq!(c.server.workers, 0);
        assert!(c.server.worker_count() >= 1);
        let c = parse(MINIMAL, &[("REFRESH_PROXY_SERVER__WORKERS", "3")]).expect("valid");
        assert_eq!(c.server.worker_count(), 3);
        let err =
            parse(&format!("{MINIMAL}[server]\nworkers = 100000\n"), &[]).expect_err("too many");
        assert!(err.to_string().starts_with("server.workers:"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_path() {
        let err = parse(&format!("{MINIMAL}[server]\nlisten_addr = \"x\"\n"), &[])
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(
            msg.starts_with("server.listen_addr: unknown field 'listen_addr'"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = parse(&format!("{MINIMAL}[server]\nlisten = \"nope\"\n"), &[]).expect_err("bad");
        assert!(err.to_string().starts_with("server.listen:"), "{err}");
        let err = parse(
            &format!("{MINIMAL}[clients.www]\nreuse_grace_period = -1\n"),
            &[],
        )
        .expect_err("negative");
        assert!(
            err.to_string()
                .starts_with("clients.www.reuse_grace_period:"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_replace_keys_with_typed_values() {
        let c = parse(
            MINIMAL,
            &[
                ("REFRESH_PROXY_SERVER__LISTEN", "0.0.0.0:8081"),
                ("REFRESH_PROXY_SERVER__MAX_BODY_BYTES", "4096"),
                ("REFRESH_PROXY_UPSTREAM__DISCOVERY", "false"),
                ("REFRESH_PROXY_UPSTREAM__TOKEN_PATH", "/oauth/token"),
                ("REFRESH_PROXY_UPSTREAM__REVOCATION", "absent"),
                ("REFRESH_PROXY_CLIENTS__WWW__SECRET", "1234"),
                ("REFRESH_PROXY_CONFIG", "ignored.toml"),
            ],
        )
        .expect("valid");
        assert_eq!(c.server.listen.port(), 8081);
        assert_eq!(c.server.max_body_bytes, 4096);
        assert!(!c.upstream.discovery);
        assert_eq!(c.upstream.token_path.as_deref(), Some("/oauth/token"));
        assert_eq!(
            c.clients["www"].secret.as_ref().map(Secret::expose),
            Some("1234")
        );
    }

    #[test]
    fn env_overrides_of_secrets_stay_the_strings_they_are() {
        for secret in [
            "0x12",
            "1e3",
            "1_000",
            "+1",
            "1.50",
            "0o17",
            "inf",
            "nan",
            "true",
            "30",
            "007",
            "1979-05-27",
        ] {
            let c =
                parse(MINIMAL, &[("REFRESH_PROXY_CLIENTS__WWW__SECRET", secret)]).expect("valid");
            assert_eq!(
                c.clients["www"].secret.as_ref().map(Secret::expose),
                Some(secret),
                "{secret}"
            );
        }
        let c = parse(
            MINIMAL,
            &[(
                "REFRESH_PROXY_TOKENS__REFRESH_TOKEN_KEYS",
                r#"["a-refresh-token-key-of-32-bytes-or-more", "another-key-of-32-bytes-or-more!!"]"#,
            )],
        )
        .expect("a TOML list");
        assert_eq!(c.tokens.refresh_token_keys.len(), 2);
    }

    #[test]
    fn env_overrides_of_numbers_and_durations_stay_typed() {
        let c = parse(
            MINIMAL,
            &[
                ("REFRESH_PROXY_STORE__RESPONSE_TIMEOUT", "1.0"),
                ("REFRESH_PROXY_STORE__OPERATION_TIMEOUT", "2.5"),
                ("REFRESH_PROXY_TOKENS__ACCESS_TOKEN_TTL", "600"),
            ],
        )
        .expect("valid");
        assert_eq!(c.store.response_timeout, Duration::from_secs(1));
        assert_eq!(c.store.operation_timeout, Duration::from_millis(2500));
        assert_eq!(c.tokens.access_token_ttl, 600);
    }

    #[test]
    fn env_override_without_section_is_an_error() {
        let err = parse(MINIMAL, &[("REFRESH_PROXY_LISTEN", "x")]).expect_err("bad var");
        assert!(err.to_string().contains("REFRESH_PROXY_LISTEN"), "{err}");
    }

    /// Found by fuzzing (fuzz/corpus/config): a name without the prefix panicked.
    #[test]
    fn env_override_without_the_prefix_is_an_error() {
        for var in [
            "",
            "X",
            "REFRESH_PROXY",
            "refresh_proxy_server__workers",
            "é",
        ] {
            let err = parse(MINIMAL, &[(var, "1")]).expect_err("not an override");
            assert!(matches!(err, ConfigError::Env { .. }), "{var:?}: {err}");
        }
    }

    /// Found by fuzzing (fuzz/corpus/config): a field filter's value is compiled into a DFA,
    /// exponential for patterns like this one; validation never returned.
    #[test]
    fn log_level_field_filters_are_refused_before_they_are_compiled() {
        let dots = ".".repeat(40);
        for level in [
            format!("x[{{f=a{dots}}}]=debug"),
            "refresh_proxy[request{method=POST}]=debug".to_owned(),
        ] {
            let text = format!("{MINIMAL}[log]\nlevel = \"{level}\"\n");
            let err = parse(&text, &[]).expect_err("refused");
            assert!(err.to_string().starts_with("log.level:"), "{err}");
        }
        for level in [
            "info",
            "refresh_proxy=debug,info",
            "refresh_proxy[request]=trace",
        ] {
            let text = format!("{MINIMAL}[log]\nlevel = \"{level}\"\n");
            parse(&text, &[]).unwrap_or_else(|e| panic!("{level}: {e}"));
        }
    }

    /// Found by fuzzing (fuzz/corpus/basic_auth): a client id that reads like a `*_file` key
    /// was taken for one.
    #[test]
    fn client_ids_are_not_secret_file_keys() {
        for id in ["secret_file", "token_file", "refresh_token_key_files"] {
            let text = format!("{MINIMAL}[clients.{id}]\nsecret = \"s\"\n");
            let c = parse(&text, &[]).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(c.clients[id].secret.as_ref().map(Secret::expose), Some("s"));
        }
    }

    #[test]
    fn secret_files_are_read_and_exclusive() {
        let dir = std::env::temp_dir().join(format!("rp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::write(dir.join("www.secret"), "Secr3t!\n").expect("write");
        let text = format!("{MINIMAL}[clients.www]\nsecret_file = \"www.secret\"\n");
        let c = Config::from_toml_str(&text, &dir, std::iter::empty()).expect("valid");
        assert_eq!(
            c.clients["www"].secret.as_ref().map(Secret::expose),
            Some("Secr3t!")
        );

        let both = format!("{text}secret = \"x\"\n");
        let err = Config::from_toml_str(&both, &dir, std::iter::empty()).expect_err("both");
        assert!(
            err.to_string().starts_with("clients.www.secret_file:"),
            "{err}"
        );

        let missing = format!("{MINIMAL}[admin]\ntoken_file = \"nope\"\n");
        let err = Config::from_toml_str(&missing, &dir, std::iter::empty()).expect_err("missing");
        assert!(
            err.to_string().starts_with("admin.token_file: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(
            &format!("{MINIMAL}[clients.www]\nsecret = \"Secr3t!\"\n"),
            &[],
        )
        .expect("valid");
        let dump = format!("{c:?}");
        assert!(!dump.contains("Secr3t!"), "{dump}");
    }

    #[test]
    fn semantic_checks_name_the_key() {
        for (extra, key) in [
            (
                "[server]\ntls_cert_file = \"c.pem\"\n",
                "server.tls_key_file",
            ),
            (
                "[server]\nadmin_tls_cert_file = \"c.pem\"\n",
                "server.admin_tls_key_file: required when server.admin_tls_cert_file is set",
            ),
            (
                "[server]\nadmin_tls_key_file = \"k.pem\"\n",
                "server.admin_tls_cert_file: required when server.admin_tls_key_file is set",
            ),
            ("[store]\nurl = \"mongodb://x\"\n", "store.url"),
            ("[store]\nurl = \"redis://a,b\"\n", "store.url"),
            (
                "[store]\nurl = \"redis://r\"\ntls_ca_file = \"ca.pem\"\n",
                "store.tls_ca_file",
            ),
            (
                "[store]\nurl = \"rediss://r\"\ntls_cert_file = \"c.pem\"\n",
                "store.tls_key_file",
            ),
            (
                "[store]\nurl = \"redis+cluster://a,b/\"\ndatabase = 2\n",
                "store.database",
            ),
            (
                "[store]\nurl = \"redis://r\"\nsentinel_password = \"x\"\n",
                "store.sentinel_password",
            ),
            (
                "[store]\nresponse_timeout = 2\noperation_timeout = 1\n",
                "store.operation_timeout",
            ),
            ("[store]\nconnect_timeout = 0\n", "store.connect_timeout"),
            ("[upstream]\n", "upstream"),
            (
                "[clients.www]\nsecret = \"a\"\nsecret_sha256 = \"00\"\n",
                "clients.www.secret_sha256",
            ),
            (
                "[clients.www]\nsecret_sha256 = \"00\"\n",
                "clients.www.secret_sha256",
            ),
            ("[log]\nlevel = \"=[\"\n", "log.level"),
            ("[tokens]\nsigning_alg = \"HS256\"\n", "tokens.signing_alg"),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n",
                "clients.c.token_endpoint_auth_method",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\njwks = \"{}\"\n\
                 jwks_uri = \"https://c/jwks\"\n",
                "clients.c.jwks_uri",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\njwks = \"{}\"\n\
                 secret = \"s\"\n",
                "clients.c.secret",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\n\
                 jwks_uri = \"http://c.example/jwks\"\n",
                "clients.c.jwks_uri",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\njwks = \"{}\"\n\
                 token_endpoint_auth_signing_alg = \"HS256\"\n",
                "clients.c.token_endpoint_auth_signing_alg",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"private_key_jwt\"\njwks = \"{}\"\n\
                 token_endpoint_auth_signing_alg = \"none\"\n",
                "clients.c.token_endpoint_auth_signing_alg",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"client_secret_jwt\"\n\
                 secret_sha256 = \"f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7\"\n",
                "clients.c.secret_sha256",
            ),
            (
                "[clients.c]\ntoken_endpoint_auth_method = \"client_secret_jwt\"\nsecret = \"s\"\n\
                 token_endpoint_auth_signing_alg = \"RS256\"\n",
                "clients.c.token_endpoint_auth_signing_alg",
            ),
            (
                "[clients.c]\nsecret = \"s\"\njwks = \"{}\"\n",
                "clients.c.jwks",
            ),
            (
                "[clients.c]\nsecret = \"s\"\ntoken_endpoint_auth_signing_alg = \"HS256\"\n",
                "clients.c.token_endpoint_auth_signing_alg",
            ),
            // docs/design.md §4.19: certificate clients.
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n",
                "clients.c.token_endpoint_auth_method",
            ),
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=c\"\ntls_client_auth_san_dns = \"c.test\"\n",
                "clients.c.tls_client_auth_san_dns",
            ),
            (
                "[server]\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=c\"\n",
                "clients.c.token_endpoint_auth_method",
            ),
            (
                "[server]\nclient_cert_header = true\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=c\"\n",
                "clients.c.token_endpoint_auth_method",
            ),
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=#0403\"\n",
                "clients.c.tls_client_auth_subject_dn",
            ),
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_san_ip = \"c.test\"\n",
                "clients.c.tls_client_auth_san_ip",
            ),
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=c\"\nsecret = \"s\"\n",
                "clients.c.secret",
            ),
            (
                "[server]\nclient_cert_header = true\nclient_ca_file = \"ca.pem\"\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"tls_client_auth\"\n\
                 tls_client_auth_subject_dn = \"CN=c\"\naccess_token_format = \"upstream\"\n",
                "clients.c.access_token_format",
            ),
            (
                "[clients.c]\ntls_client_auth_san_dns = \"c.test\"\n",
                "clients.c.tls_client_auth_san_dns",
            ),
            (
                "[server]\nclient_cert_header = true\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n",
                "clients.c.token_endpoint_auth_method",
            ),
            (
                "[server]\nclient_cert_header = true\n\
                 [clients.c]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n\
                 jwks_uri = \"http://c.example/jwks\"\n",
                "clients.c.jwks_uri",
            ),
        ] {
            let text = if extra.starts_with("[upstream]") {
                format!("{extra}discovery = false\nurl = \"http://x\"\n")
            } else {
                format!("{MINIMAL}{extra}")
            };
            let err = parse(&text, &[]).expect_err(extra);
            assert!(err.to_string().starts_with(key), "{extra}: {err}");
        }
    }

    #[test]
    fn client_policy_falls_back_to_tokens_defaults() {
        let c = parse(
            &format!(
                "{MINIMAL}[tokens]\nreuse_grace_period = 10\nrefresh_token_ttl = 60\n\
                 [clients.www]\nrefresh_token_ttl = 0\n"
            ),
            &[],
        )
        .expect("valid");
        let p = c.clients["www"].policy(&c.tokens);
        assert_eq!(p.refresh_token_ttl, Some(0));
        assert_eq!(p.reuse_grace_period, Some(10));
        assert_eq!(p.reuse_refresh_tokens, None);
    }

    /// Issue 19: without discovery, nothing would say where the revocation endpoint is, so a
    /// handled client's revocation of a proxy token would go to the upstream (200, still live).
    #[test]
    fn handled_clients_without_discovery_need_a_revocation_path_or_absent() {
        let base = "[upstream]\nurl = \"http://x\"\ndiscovery = false\ntoken_path = \"/t\"\n";
        let client = "[clients.www]\nsecret = \"s\"\n";
        let err = parse(&format!("{base}{client}"), &[]).expect_err("no revocation path");
        let msg = err.to_string();
        assert!(msg.starts_with("upstream.revocation_path:"), "{msg}");
        assert!(msg.contains("upstream.revocation = \"absent\""), "{msg}");
        // No handled client: nothing of the proxy's to revoke.
        parse(base, &[]).expect("no clients");
        let c = parse(&format!("{base}revocation_path = \"/r\"\n{client}"), &[]).expect("path");
        assert_eq!(c.upstream.revocation, RevocationMode::Auto);
        let c = parse(&format!("{base}revocation = \"absent\"\n{client}"), &[]).expect("absent");
        assert_eq!(c.upstream.revocation, RevocationMode::Absent);
        // With discovery the check waits for its result (at start).
        parse(&format!("{MINIMAL}{client}"), &[]).expect("discovery");
        let err = parse(
            &format!("{base}revocation = \"absent\"\nrevocation_path = \"/r\"\n"),
            &[],
        )
        .expect_err("both");
        assert!(err.to_string().starts_with("upstream.revocation:"), "{err}");
        let err = parse(&format!("{base}revocation = \"none\"\n"), &[]).expect_err("value");
        assert!(err.to_string().starts_with("upstream.revocation:"), "{err}");
    }

    /// Security issue, item 5: the revoke token must not be able to mint families.
    #[test]
    fn admin_tokens_are_long_and_distinct() {
        for (admin, key) in [
            (
                "token = \"short-token-15c\"\n",
                "admin.token: must be at least 16",
            ),
            (
                "issue_token = \"short-token-15c\"\n",
                "admin.issue_token: must be at least 16",
            ),
            (
                "token = \"the-same-token-twice\"\nissue_token = \"the-same-token-twice\"\n",
                "admin.issue_token: must differ from admin.token",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}[admin]\n{admin}"), &[]).expect_err(admin);
            assert!(err.to_string().starts_with(key), "{admin}: {err}");
        }
        // The same through the environment and a file: still refused.
        let dir = std::env::temp_dir().join(format!("rp-config-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        std::fs::write(dir.join("issue-token"), "the-same-token-twice\n").expect("write");
        let text = format!("{MINIMAL}[admin]\nissue_token_file = \"issue-token\"\n");
        let env = [("REFRESH_PROXY_ADMIN__TOKEN", "the-same-token-twice")];
        let err = Config::from_toml_str(
            &text,
            &dir,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect_err("shared");
        assert!(
            err.to_string()
                .starts_with("admin.issue_token: must differ"),
            "{err}"
        );
        let c = Config::from_toml_str(&text, &dir, std::iter::empty()).expect("issue only");
        assert_eq!(
            c.admin.issue_token.as_ref().map(Secret::expose),
            Some("the-same-token-twice")
        );
        assert!(c.admin.token.is_none());
        let both = format!("{text}issue_token = \"x\"\n");
        let err = Config::from_toml_str(&both, &dir, std::iter::empty()).expect_err("both");
        assert!(
            err.to_string()
                .starts_with("admin.issue_token_file: set either"),
            "{err}"
        );
        let c = parse(
            &format!(
                "{MINIMAL}[admin]\ntoken = \"revoke-token-0123456789\"\n\
                 issue_token = \"issue-token-0123456789\"\n"
            ),
            &[],
        )
        .expect("two different tokens");
        assert!(!format!("{c:?}").contains("-token-0123456789"));
    }

    #[test]
    fn allow_admin_issue_is_off_unless_set() {
        let c = parse(
            &format!(
                "{MINIMAL}[clients.www]\nsecret = \"s\"\n\
                 [clients.load]\nsecret = \"s\"\nallow_admin_issue = true\n"
            ),
            &[],
        )
        .expect("valid");
        assert!(!c.clients["www"].allow_admin_issue);
        assert!(c.clients["load"].allow_admin_issue);
        // Without admin.issue_token it is allowed (and warned about at start): nothing can
        // issue anyway.
        assert!(c.admin.issue_token.is_none());
        let err = parse(
            &format!("{MINIMAL}[clients.www]\nallow_admin_issue = \"yes\"\n"),
            &[],
        )
        .expect_err("not a boolean");
        assert!(
            err.to_string()
                .starts_with("clients.www.allow_admin_issue:"),
            "{err}"
        );
    }

    #[test]
    fn connection_limits_have_defaults_and_bounds_that_name_the_key() {
        let c = parse(MINIMAL, &[]).expect("valid");
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_header_bytes, 32 * 1024);
        assert_eq!(c.server.http2_max_concurrent_streams, 100);
        assert_eq!(c.server.http2_keep_alive_interval, Duration::from_secs(30));
        assert_eq!(c.server.http2_keep_alive_timeout, Duration::from_secs(10));
        assert_eq!(c.server.max_connection_body_bytes, 1024 * 1024);
        let c = parse(
            &format!(
                "{MINIMAL}[server]\nmax_connections = 3\nidle_timeout = 0.5\n\
                 http2_keep_alive_interval = 0\nmax_connection_body_bytes = 65536\n"
            ),
            &[],
        )
        .expect("valid");
        assert_eq!(c.server.max_connections, 3);
        assert_eq!(c.server.idle_timeout, Duration::from_millis(500));
        assert!(c.server.http2_keep_alive_interval.is_zero());
        for (extra, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = 1000001", "server.max_connections"),
            ("idle_timeout = 0", "server.idle_timeout"),
            ("idle_timeout = 3601", "server.idle_timeout"),
            // Would overflow a deadline: every connection would panic or close at once.
            ("header_read_timeout = 1e18", "server.header_read_timeout"),
            ("header_read_timeout = 0", "server.header_read_timeout"),
            ("body_read_timeout = 0", "server.body_read_timeout"),
            (
                "http2_keep_alive_interval = 7200",
                "server.http2_keep_alive_interval",
            ),
            (
                "http2_keep_alive_timeout = 0",
                "server.http2_keep_alive_timeout",
            ),
            ("max_header_bytes = 100", "server.max_header_bytes"),
            ("max_header_bytes = 2000000", "server.max_header_bytes"),
            (
                "http2_max_concurrent_streams = 0",
                "server.http2_max_concurrent_streams",
            ),
            (
                "http2_max_concurrent_streams = 5000",
                "server.http2_max_concurrent_streams",
            ),
            (
                "max_connection_body_bytes = 1024",
                "server.max_connection_body_bytes",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}[server]\n{extra}\n"), &[]).expect_err(extra);
            assert!(err.to_string().starts_with(key), "{extra}: {err}");
        }
    }

    #[test]
    fn subject_claim_must_name_a_claim() {
        let c = parse(&format!("{MINIMAL}subject_claim = \"username\"\n"), &[]).expect("valid");
        assert_eq!(c.upstream.subject_claim.as_deref(), Some("username"));
        assert_eq!(
            parse(MINIMAL, &[]).expect("valid").upstream.subject_claim,
            None
        );
        let err = parse(&format!("{MINIMAL}subject_claim = \" \"\n"), &[]).expect_err("empty");
        assert!(
            err.to_string().starts_with("upstream.subject_claim:"),
            "{err}"
        );
    }
}
