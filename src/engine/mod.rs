//! The grant engine: refresh grants and capture, over the [`TokenStore`] trait. One file per
//! thing it answers: `refresh` (the refresh grant and minting), `own_tokens` (revocation and
//! introspection of the proxy's tokens), `issue` (admin issue, capture's new families),
//! `logout` (back-channel logout); the time comes from a [`Clock`] it is given.
//!
//! It knows nothing of HTTP: the layer hands it the `Authorization` header value and the parsed
//! form, and gets back either "not mine, forward it", a `TokenResponse`, or a `GrantError`
//! that `crate::error::error_response` turns into the answer.
//!
//! A refresh grant is the proxy's when its `refresh_token` is one the proxy minted (checked
//! with the server key, no store access). Then, in order: client authentication, the client's
//! policy (`refresh_token_ttl = 0` → `unauthorized_client`), one store round trip running the
//! refresh rules, and minting. Reused, unknown, expired, revoked and other clients' tokens all
//! get the same `invalid_grant` body, so the answer is no oracle (docs/design.md §4.5).

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

mod issue;
mod logout;
mod own_tokens;
mod refresh;

pub use logout::LoggedOut;

use crate::classify::Form;
use crate::client_auth::{self, Client, ClientAuthError, Clients};
use crate::client_cert::{ClientCert, X5T_S256};
use crate::config::AccessTokenFormat;
use crate::config::Unreachable;
use crate::grant::capture::{Identity, JKT};
use crate::grant::dpop::{self, DpopError, Nonces, Proof};
use crate::grant::rules::{CheckPolicy, Checked, Redeem, Verdict};
use crate::grant::scope;
use crate::metrics::{Metrics, inc};
use crate::metrics::{UpstreamCheck, UpstreamRevocation};
use crate::mint::claims::{
    AccessClaims, Confirmation, IdClaims, JTI_MAX, jti_of, splice, splice_into,
};
use crate::mint::jwt::{Signer, TYP_AT_JWT, TYP_JWT};
use crate::mint::kept::{KeptKeys, KeptToken};
use crate::mint::opaque;
use crate::mint::refresh::{FamilyId, RefreshKeys, RefreshToken, Seal};
use crate::oauth::{Introspection, TokenResponse};
use crate::store::{
    AnyStore, Ended, FamilyData, NewFamily, OneTime, OpaqueCandidate, RedeemRequest, Redemption,
    Revoke, Selection, StoreError, TokenFormat, TokenStore,
};

/// The store key of a one-time identifier (docs/design.md §4.15): a digest of its kind and
/// parts, NUL-separated, so no client-chosen bytes reach a key.
pub(crate) fn one_time_id(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            ctx.update(b"\0");
        }
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token request as the engine sees it.
pub(crate) struct TokenRequest<'a> {
    pub(crate) authorization: Option<&'a HeaderValue>,
    /// The request's `DPoP` header; `Err` when it has several (RFC 9449 §4.3 check 1).
    pub(crate) dpop: Result<Option<&'a HeaderValue>, DpopError>,
    pub(crate) form: &'a Form,
    /// The issuer of minted tokens.
    pub(crate) issuer: &'a str,
    /// The token endpoint's URL as clients call it (a DPoP proof's `htu`, an assertion's
    /// `aud`), when known.
    pub(crate) token_url: Option<&'a str>,
    /// `private_key_jwt` clients' `jwks_uri` keys.
    pub(crate) client_jwks: &'a dyn ClientJwks,
    /// The client certificate the connection presented (docs/design.md §4.17), if any.
    pub(crate) client_cert: Option<&'a ClientCert>,
    /// Where the phases' ends are marked, with `server.server_timing`.
    pub(crate) timing: Option<&'a crate::timing::Timing>,
}

impl<'a> TokenRequest<'a> {
    /// A request with a form alone (tests, the admin API).
    #[cfg(test)]
    pub(crate) fn form(form: &'a Form, issuer: &'a str) -> TokenRequest<'a> {
        TokenRequest {
            authorization: None,
            dpop: Ok(None),
            form,
            issuer,
            token_url: None,
            client_jwks: &NoClientJwks,
            client_cert: None,
            timing: None,
        }
    }

    /// What client authentication needs from the request.
    pub(crate) fn authn(&self) -> Authn<'a> {
        Authn {
            audience: client_auth::assertion::Audience {
                issuer: self.issuer,
                token_endpoint: self.token_url,
            },
            jwks: self.client_jwks,
            client_cert: self.client_cert,
        }
    }
}

/// Why a grant the proxy owns was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GrantError {
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error(transparent)]
    ClientAuth(#[from] ClientAuthError),
    #[error("the client may not use refresh tokens")]
    UnauthorizedClient,
    /// `POST /admin/issue` for a client without `allow_admin_issue = true`.
    #[error("the client is not marked allow_admin_issue")]
    AdminIssueNotAllowed,
    #[error("invalid grant: {0}")]
    InvalidGrant(&'static str),
    #[error("the requested scope exceeds the granted scope")]
    InvalidScope,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream session check could not be made and the family may not be served.
    #[error("the upstream could not confirm the session")]
    UpstreamUnavailable,
    /// RFC 9449 §7.1: `invalid_dpop_proof`.
    #[error(transparent)]
    DpopProof(#[from] DpopError),
    /// RFC 9449 §8: `use_dpop_nonce`, with the nonce to use.
    #[error("the DPoP proof needs the server's nonce")]
    UseDpopNonce(String),
}

/// What a reload (`SIGHUP`) replaces: the clients and their secrets, and every key. Each list
/// of keys is a ring: the first signs or mints, all verify, all are published.
#[derive(Debug)]
pub struct Keys {
    pub clients: Clients,
    pub refresh: RefreshKeys,
    /// Access-token signers (at least one).
    pub signers: Vec<Signer>,
    /// ID-token signers (empty when no client gets ID tokens on refresh).
    pub id_signers: Vec<Signer>,
    /// The keys the upstream's refresh tokens are kept with (docs/design.md §4.11).
    pub kept: KeptKeys,
    /// DPoP server nonces (docs/design.md §4.16), the same on every replica.
    pub dpop_nonces: Nonces,
    /// `server.client_ca_file`: what `tls_client_auth` certificates chain to (§4.19).
    pub client_ca: Option<crate::client_cert::ClientCa>,
}

impl Keys {
    /// The public JWKs of every signer, for the JWKS (each `kid` once).
    pub(crate) fn public_jwks(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.signers
            .iter()
            .chain(&self.id_signers)
            .filter(|s| seen.insert(s.kid().to_owned()))
            .map(Signer::public_jwk)
            .collect()
    }

    /// The JOSE `alg` of ID tokens on refresh, when any client gets them.
    pub(crate) fn id_token_alg(&self) -> Option<&'static str> {
        self.id_signers.first().map(Signer::alg_name)
    }
}

/// How long a redemption waits, past the lease, for another's upstream check.
const CHECK_WAIT_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest pause between two looks at a check in flight.
const CHECK_WAIT_MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// Upstream calls one refresh may make (a lease lost to a slower holder may bring a second).
const MAX_CHECKS_PER_REFRESH: u32 = 2;
/// The default lease of an upstream check: longer than the upstream call can take with the
/// default timeouts (2 s to connect, 30 s for the answer).
pub const DEFAULT_CHECK_LEASE: std::time::Duration = std::time::Duration::from_secs(35);

/// The tokens of an upstream answer that `access_token_format = "upstream"` gives the client.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamTokens {
    pub access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let UpstreamTokens {
            access_token: _,
            expires_in,
            id_token,
            scope,
        } = self;
        f.debug_struct("UpstreamTokens")
            .field("expires_in", expires_in)
            .field("id_token", &id_token.as_ref().map(|_| "<redacted>"))
            .field("scope", scope)
            .finish_non_exhaustive()
    }
}

/// The associated data an `upstream`-format family's kept answer is sealed with: not the
/// family id alone, so a sealed answer never opens as the kept refresh token, or back.
fn answer_aad(family: &str) -> String {
    format!("{family}#answer")
}

/// What the upstream said to a redemption of a family's kept refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAnswer {
    /// Redeemed: the session is live. `refresh_token`: the one the upstream answered with
    /// (the same as the kept one, or a rotated one), if any; `tokens`: its access token and
    /// the rest, for `access_token_format = "upstream"`.
    Valid {
        refresh_token: Option<KeptToken>,
        tokens: Option<UpstreamTokens>,
    },
    /// `invalid_grant`: the session is over (logged out, revoked, the user disabled).
    InvalidGrant,
    /// No usable answer (unreachable, a timeout, 5xx, another error): why, for the log.
    Unavailable(&'static str),
}

/// How the engine redeems a kept upstream refresh token at the upstream: the layer's over its
/// inner service; never for the engine to do itself (it does no HTTP).
/// A `jwks_uri` client's keys, fetched and cached by the layer (docs/design.md §4.18).
pub trait ClientJwks: Send + Sync {
    /// The keys at `uri` for `client_id`; `refetch`: an assertion named a key the cached set
    /// lacks (fetched again at most once per `interval`). `None`: no keys could be had.
    fn keys<'a>(
        &'a self,
        client_id: &'a str,
        uri: &'a str,
        refetch: Option<std::time::Duration>,
    ) -> KeysFuture<'a>;
}

/// What [`ClientJwks::keys`] answers.
pub type KeysFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<Arc<crate::grant::verify::KeySet>>> + Send + 'a>,
>;

/// No `jwks_uri` keys (tests).
#[cfg(test)]
pub(crate) struct NoClientJwks;

#[cfg(test)]
impl ClientJwks for NoClientJwks {
    fn keys<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Option<std::time::Duration>,
    ) -> KeysFuture<'a> {
        Box::pin(std::future::ready(None))
    }
}

/// What client authentication needs beyond the request: the audiences an assertion may name
/// and the fetcher of `jwks_uri` keys.
pub(crate) struct Authn<'a> {
    pub audience: client_auth::assertion::Audience<'a>,
    pub jwks: &'a dyn ClientJwks,
    /// The certificate the client presented (docs/design.md §4.17), if any.
    pub client_cert: Option<&'a ClientCert>,
}

impl Authn<'_> {
    /// Only an issuer (no token endpoint URL, no `jwks_uri` fetcher).
    #[cfg(test)]
    pub(crate) fn issuer(issuer: &str) -> Authn<'_> {
        Authn {
            audience: client_auth::assertion::Audience {
                issuer,
                token_endpoint: None,
            },
            jwks: &NoClientJwks,
            client_cert: None,
        }
    }
}

impl Engine {
    /// Authenticates `presented` as `client` (docs/design.md §4.18 for assertions): `Some` the
    /// verified assertion, whose `jti` the caller must see used once.
    pub(crate) async fn verify_client(
        &self,
        client: &Client,
        presented: &client_auth::Presented,
        authn: &Authn<'_>,
    ) -> Result<Option<client_auth::assertion::Verified>, ClientAuthError> {
        Clients::verify(client, presented)?;
        if let Some(auth) = &client.certificate {
            return match self.certificate_refusal(client, auth, authn).await {
                None => Ok(None),
                Some(why) => {
                    tracing::info!(client_id = %client.id, reason = why, "client certificate refused");
                    Err(ClientAuthError::Failed { basic: false })
                }
            };
        }
        let (Some(jwt), Some(auth)) = (presented.assertion(), &client.assertion) else {
            return Ok(None);
        };
        use client_auth::AssertionKeys;
        use client_auth::assertion::{self, Refused};
        let now = (self.clock)() / 1000;
        let uri = match &auth.keys {
            AssertionKeys::Uri {
                uri,
                refetch_interval,
            } => Some((uri.as_str(), *refetch_interval)),
            _ => None,
        };
        let check = |fetched: Option<Arc<crate::grant::verify::KeySet>>| {
            assertion::verify(
                &client.id,
                auth,
                fetched.as_deref(),
                jwt,
                &authn.audience,
                now,
            )
        };
        let mut result = match uri {
            Some((uri, _)) => check(authn.jwks.keys(&client.id, uri, None).await),
            None => check(None),
        };
        if let (
            Some((uri, interval)),
            Err(Refused::Jws(crate::grant::verify::Rejected::UnknownKey)),
        ) = (uri, &result)
        {
            // The client may have rotated its keys: its jwks_uri is fetched again (rate-limited).
            result = check(authn.jwks.keys(&client.id, uri, Some(interval)).await);
        }
        match result {
            Ok(verified) => Ok(Some(verified)),
            Err(refused) => {
                tracing::info!(
                    client_id = %client.id,
                    reason = refused.describe(),
                    "client assertion refused"
                );
                Err(ClientAuthError::Failed { basic: false })
            }
        }
    }

    /// Why a certificate client's certificate does not authenticate it (docs/design.md §4.19);
    /// `None`: it does.
    async fn certificate_refusal(
        &self,
        client: &Client,
        auth: &client_auth::CertAuth,
        authn: &Authn<'_>,
    ) -> Option<&'static str> {
        use client_auth::{CertAuth, SelfSignedKeys};
        let Some(cert) = authn.client_cert else {
            return Some("no client certificate");
        };
        match auth {
            CertAuth::Pki(subject) => {
                let keys = self.keys();
                let Some(ca) = &keys.client_ca else {
                    return Some("no server.client_ca_file");
                };
                if !ca.trusts(cert) {
                    return Some("the certificate does not chain to server.client_ca_file");
                }
                (!subject.matches(cert.der()))
                    .then_some("the certificate's subject is not the registered one")
            }
            CertAuth::SelfSigned(keys) => {
                let registered = |set: &crate::grant::verify::KeySet| {
                    set.certificates().iter().any(|t| t == cert.thumbprint())
                };
                let found = match keys {
                    SelfSignedKeys::Jwks(set) => registered(set),
                    SelfSignedKeys::Uri {
                        uri,
                        refetch_interval,
                    } => {
                        let cached = authn.jwks.keys(&client.id, uri, None).await;
                        if cached.as_deref().is_some_and(registered) {
                            true
                        } else {
                            // The client may have registered a new certificate: its jwks_uri
                            // is fetched again (rate-limited).
                            let again = authn
                                .jwks
                                .keys(&client.id, uri, Some(*refetch_interval))
                                .await;
                            again.as_deref().is_some_and(registered)
                        }
                    }
                };
                (!found).then_some("the certificate is not one the client registered")
            }
        }
    }

    /// Remembers a verified assertion's `jti` (revocation and introspection: outside a
    /// redemption): `false` when it was used before (docs/design.md §4.15).
    pub(super) async fn assertion_first_use(
        &self,
        client: &Client,
        verified: &client_auth::assertion::Verified,
    ) -> Result<bool, GrantError> {
        let once = assertion_once(&client.id, verified);
        let now = (self.clock)();
        Ok(self
            .store
            .first_use(&once.id, now, once.until_ms.max(now + 1))
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?)
    }
}

/// A verified assertion's one-time id: a digest of the client and the `jti`, remembered until
/// its `exp` plus the clock leeway (docs/design.md §4.15).
pub(crate) fn assertion_once(
    client_id: &str,
    verified: &client_auth::assertion::Verified,
) -> crate::store::OneTime {
    crate::store::OneTime {
        id: one_time_id(&["assertion", client_id, &verified.jti]),
        until_ms: verified
            .exp
            .saturating_add(crate::grant::verify::CLOCK_LEEWAY_SECS)
            .saturating_mul(1000),
    }
}

pub trait UpstreamRefresh: Send {
    /// Redeems `token` as `client`, asking for `scope` when the client's request named one.
    fn refresh(
        &mut self,
        client: &Client,
        token: &KeptToken,
        scope: Option<&str>,
    ) -> impl std::future::Future<Output = UpstreamAnswer> + Send;
}

/// No upstream to ask: every check fails (and the family is served or refused as its client's
/// `upstream_unreachable` says).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUpstream;

impl UpstreamRefresh for NoUpstream {
    async fn refresh(&mut self, _: &Client, _: &KeptToken, _: Option<&str>) -> UpstreamAnswer {
        UpstreamAnswer::Unavailable("no upstream to check with")
    }
}

/// Why a family ended, as the logs of its upstream revocation say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client revoked it (RFC 7009).
    ClientRevocation,
    /// A rotated-out refresh token was presented again (RFC 9700 §4.14.2).
    ReuseDetected,
    /// The admin API revoked it (by family, subject or client).
    Admin,
    /// The upstream logged the session out (back-channel logout).
    Logout,
    /// A client with `refresh_token_ttl = 0` got a refresh token from the upstream.
    NoRefreshTokens,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            EndReason::ClientRevocation => "client_revocation",
            EndReason::ReuseDetected => "reuse_detected",
            EndReason::Admin => "admin",
            EndReason::Logout => "logout",
            EndReason::NoRefreshTokens => "no_refresh_tokens",
        }
    }
}

/// A family end to tell the upstream: revoke `token`, the upstream refresh token the family
/// kept, as client `client_id` (docs/design.md §4.11).
#[derive(Debug, Clone)]
pub struct Ending {
    pub client_id: String,
    pub token: KeptToken,
    pub reason: EndReason,
}

/// Where the engine puts family ends for the upstream: a bounded queue that
/// `crate::upstream_revocation` drains. Full: the end is dropped and counted, never waited for.
pub type Endings = tokio::sync::mpsc::Sender<Ending>;

/// Everything refresh grants and capture need, built once from config.
pub struct Engine {
    pub store: AnyStore,
    pub(crate) metrics: Arc<Metrics>,
    // Shared by every worker's engine (`with_store`), and replaced as a whole on reload.
    keys: Arc<ArcSwap<Keys>>,
    access_token_ttl: u64,
    audience: Option<String>,
    /// The wall clock in milliseconds: [`now_ms`] in production, a fixed or stepped one in tests.
    clock: Clock,
    /// Family ends go here to be told to the upstream; `None`: they are not.
    endings: Option<Endings>,
    /// How long one redemption holds a family's upstream check (ms).
    check_lease_ms: i64,
    /// Whether families are indexed by upstream session (only back-channel logout reads it).
    index_sessions: bool,
}

/// A clock: milliseconds since the Unix epoch. A plain function pointer, so the hot path pays
/// one indirect call and no allocation or trait object.
pub type Clock = fn() -> i64;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("keys", &self.keys.load())
            .finish_non_exhaustive()
    }
}

/// Seconds (a TTL from config, bounded there) as milliseconds, saturating.
fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// The system clock in milliseconds since the Unix epoch: the engine's [`Clock`] unless it is
/// given another.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(
        store: AnyStore,
        keys: Keys,
        access_token_ttl: u64,
        audience: Option<String>,
    ) -> Engine {
        Engine {
            store,
            metrics: Arc::default(),
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            access_token_ttl,
            audience,
            clock: now_ms,
            endings: None,
            check_lease_ms: DEFAULT_CHECK_LEASE.as_millis() as i64,
            index_sessions: true,
        }
    }

    /// The same engine indexing families by upstream session (`sid`) or not: only the
    /// back-channel logout receiver needs the index, and it costs about 340 bytes a family in
    /// Redis (bench/README.md), so without the receiver it is not kept.
    pub fn with_session_index(mut self, on: bool) -> Engine {
        self.index_sessions = on;
        self
    }

    /// The same engine holding an upstream check for `lease`: set it longer than the upstream
    /// call can take (connect and request timeouts), or a slow call loses its lease.
    pub fn with_check_lease(mut self, lease: std::time::Duration) -> Engine {
        self.check_lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// The same engine sending family ends to `endings` (to be told to the upstream).
    pub fn with_endings(mut self, endings: Endings) -> Engine {
        self.endings = Some(endings);
        self
    }

    /// The same engine reading the time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Engine {
        self.clock = clock;
        self
    }

    /// The clients and keys of the moment.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.load_full()
    }

    /// Replaces the clients and keys (a reload); requests in flight finish with the old ones.
    pub fn reload(&self, keys: Keys) {
        self.keys.store(Arc::new(keys));
    }

    /// The same engine over another handle of the store: a worker thread's own Redis
    /// connection, so that its driver task runs on the thread whose requests it serves. Keys,
    /// signers, clients and metrics are shared with `self`.
    pub fn with_store(&self, store: AnyStore) -> Engine {
        Engine {
            store,
            metrics: self.metrics.clone(),
            keys: self.keys.clone(),
            access_token_ttl: self.access_token_ttl,
            audience: self.audience.clone(),
            clock: self.clock,
            endings: self.endings.clone(),
            check_lease_ms: self.check_lease_ms,
            index_sessions: self.index_sessions,
        }
    }

    /// A family ended: queue its kept upstream token (if any) to be revoked at the upstream.
    /// Never waits: a full queue drops the end (counted).
    pub(crate) fn ended(&self, ended: Ended, reason: EndReason) {
        let Some(sealed) = ended.upstream_token else {
            return;
        };
        if self.endings.is_none() {
            return;
        }
        let Some(token) = self.keys().kept.open(&ended.family, &sealed) else {
            self.metrics
                .upstream_revocation(UpstreamRevocation::Unreadable);
            tracing::warn!(
                family = %ended.family,
                client_id = %ended.client_id,
                reason = reason.label(),
                "the family's kept upstream refresh token opens with no key of \
                 tokens.upstream_token_keys; it cannot be revoked at the upstream"
            );
            return;
        };
        self.end_upstream_token(&ended.client_id, token, reason);
    }

    /// Queues an upstream refresh token of `client_id` to be revoked at the upstream.
    pub(crate) fn end_upstream_token(&self, client_id: &str, token: KeptToken, reason: EndReason) {
        let Some(endings) = &self.endings else {
            return;
        };
        let ending = Ending {
            client_id: client_id.to_owned(),
            token,
            reason,
        };
        match endings.try_send(ending) {
            Ok(()) => {
                self.metrics
                    .upstream_revocations_pending
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => {
                self.metrics
                    .upstream_revocation(UpstreamRevocation::Dropped);
                tracing::warn!(
                    client_id,
                    reason = reason.label(),
                    "the upstream revocation queue is full; this upstream refresh token is not revoked"
                );
            }
        }
    }

    /// Revokes the families `selection` selects, on behalf of `reason` (admin, logout); each
    /// end is told to the upstream. How many were live.
    pub async fn revoke_many(
        &self,
        selection: &Selection<'_>,
        reason: EndReason,
    ) -> Result<u64, StoreError> {
        let ended = self
            .store
            .revoke_many(selection)
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?;
        let count = ended.len() as u64;
        for e in ended {
            inc(&self.metrics.family_revocations);
            self.ended(e, reason);
        }
        Ok(count)
    }

    /// Revokes one family whatever its client (the admin API); whether it was live.
    pub async fn revoke_family(&self, family: &str, reason: EndReason) -> Result<bool, StoreError> {
        match self
            .store
            .revoke_family(family, None)
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?
        {
            Revoke::Revoked(e) => {
                inc(&self.metrics.family_revocations);
                self.ended(e, reason);
                Ok(true)
            }
            Revoke::NotOwner | Revoke::Unknown => Ok(false),
        }
    }

    /// The `aud` of minted access tokens when the upstream names none: `tokens.audience`, else
    /// the upstream issuer. Never the client id: that is an ID token's audience (OIDC Core
    /// §2), and an access token must not be one a client could pass off as an ID token.
    pub(crate) fn default_audience<'a>(&'a self, issuer: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(issuer)
    }
}

/// `family` with its seal set, with the current key.
fn sealed(keys: &Keys, mut family: NewFamily) -> NewFamily {
    family.seal = keys.refresh.seal(&family.sealed());
    family
}

#[cfg(test)]
mod tests {
    // docs/design.md §4.19: a `self_signed_tls_client_auth` client with `jwks_uri`.
    mod certificate_auth {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use serde_json::json;

        use super::super::*;
        use crate::classify::Form;
        use crate::grant::verify::KeySet;

        /// The client's `jwks_uri`: the cached set, and the one a refetch finds.
        struct Registered {
            cached: Arc<KeySet>,
            fetched: Arc<KeySet>,
            calls: AtomicUsize,
        }

        impl ClientJwks for Registered {
            fn keys<'a>(
                &'a self,
                _: &'a str,
                _: &'a str,
                refetch: Option<std::time::Duration>,
            ) -> KeysFuture<'a> {
                self.calls.fetch_add(1, Ordering::Relaxed);
                let set = match refetch {
                    Some(_) => self.fetched.clone(),
                    None => self.cached.clone(),
                };
                Box::pin(std::future::ready(Some(set)))
            }
        }

        fn set_with(thumbprints: &[&str]) -> Arc<KeySet> {
            let keys: Vec<_> = thumbprints
                .iter()
                .map(|t| json!({"kty": "EC", "x5t#S256": t}))
                .collect();
            let doc = json!({ "keys": keys }).to_string();
            Arc::new(KeySet::parse(doc.as_bytes()).expect("a JWK Set"))
        }

        #[tokio::test]
        async fn a_certificate_new_to_the_cached_set_is_looked_for_again() {
            let config = crate::config::Config::from_toml_str(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [server]\nclient_cert_header = true\n\
                 [clients.dev]\ntoken_endpoint_auth_method = \"self_signed_tls_client_auth\"\n\
                 jwks_uri = \"http://127.0.0.1:9/jwks\"\n",
                std::path::Path::new("."),
                std::iter::empty(),
            )
            .expect("config");
            let engine = Engine::new(
                AnyStore::Memory(crate::store::MemoryStore::new()),
                crate::app::build_keys(&config).expect("keys"),
                300,
                None,
            );
            let cert = ClientCert::from_der(b"\x30\x03\x02\x01\x07");
            let other = ClientCert::from_der(b"\x30\x03\x02\x01\x08");
            let jwks = Registered {
                cached: set_with(&[]),
                fetched: set_with(&[cert.thumbprint()]),
                calls: AtomicUsize::new(0),
            };
            let client = engine.keys().clients.get("dev").cloned().expect("client");
            assert!(!client.is_public());
            let form = Form::parse(b"client_id=dev").expect("form");
            let presented = client_auth::presented(None, &form)
                .expect("well-formed")
                .expect("a client");
            let authn = |client_cert| Authn {
                audience: client_auth::assertion::Audience {
                    issuer: "https://idp.example",
                    token_endpoint: None,
                },
                jwks: &jwks,
                client_cert,
            };
            let with_cert = authn(Some(&cert));
            let verdict = engine.verify_client(&client, &presented, &with_cert).await;
            assert!(verdict.is_ok(), "registered since the cached set");
            assert_eq!(
                jwks.calls.load(Ordering::Relaxed),
                2,
                "cached, then fetched"
            );
            for (what, c) in [("another certificate", Some(&other)), ("none", None)] {
                let with = authn(c);
                let verdict = engine.verify_client(&client, &presented, &with).await;
                assert_eq!(
                    verdict.err(),
                    Some(ClientAuthError::Failed { basic: false }),
                    "{what}"
                );
            }
        }
    }

    // Engine-level verdicts on the memory store, with a clock the test moves: no IdP, no
    // sockets. The store-level rules are tests/it/store_contract.rs's; these check what the
    // engine answers for them.
    mod verdicts {
        use std::cell::Cell;

        use http::HeaderValue;
        use serde_json::Value;

        use super::super::*;
        use crate::classify::Form;

        thread_local! {
            static NOW: Cell<i64> = const { Cell::new(1_700_000_000_000) };
        }

        fn clock() -> i64 {
            NOW.with(Cell::get)
        }

        fn advance_secs(secs: i64) {
            NOW.with(|n| n.set(n.get() + secs * 1000));
        }

        const ISSUER: &str = "https://idp.example";

        fn engine() -> Engine {
            let config = crate::config::Config::from_toml_str(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n\
                 [clients.www]\nsecret = \"www-secret\"\nallow_admin_issue = true\n\
                 refresh_token_ttl = 100\nrefresh_token_max_lifetime = 1000\n\
                 reuse_grace_period = 10\n\
                 [clients.app]\nsecret = \"app-secret\"\nallow_admin_issue = true\n\
                 [clients.rs]\nsecret = \"rs-secret\"\nmay_introspect = true\n",
                std::path::Path::new("."),
                std::iter::empty(),
            )
            .expect("config");
            Engine::new(
                AnyStore::Memory(crate::store::MemoryStore::new()),
                crate::app::build_keys(&config).expect("keys"),
                300,
                None,
            )
            .with_clock(clock)
        }

        fn form(pairs: &[(&str, &str)]) -> Form {
            let body: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace(' ', "+")))
                .collect();
            Form::parse(body.join("&").as_bytes()).expect("form")
        }

        async fn issue(engine: &Engine, client: &str, scope: &str) -> String {
            let mut tokens = engine
                .issue(client, "alice", scope, 1, ISSUER)
                .await
                .expect("issue");
            tokens.pop().expect("one token")
        }

        async fn refresh(
            engine: &Engine,
            client: &str,
            token: &str,
            scope: Option<&str>,
        ) -> Result<Option<TokenResponse>, GrantError> {
            let secret = format!("{client}-secret");
            let mut pairs = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", client),
                ("client_secret", secret.as_str()),
            ];
            if let Some(scope) = scope {
                pairs.push(("scope", scope));
            }
            engine
                .refresh(&TokenRequest::form(&form(&pairs), ISSUER), &mut NoUpstream)
                .await
        }

        fn rotated(answer: Result<Option<TokenResponse>, GrantError>) -> TokenResponse {
            answer.expect("answered").expect("the proxy's token")
        }

        fn invalid_grant(answer: Result<Option<TokenResponse>, GrantError>) {
            assert!(
                matches!(answer, Err(GrantError::InvalidGrant(_))),
                "{answer:?}"
            );
        }

        #[tokio::test]
        async fn a_refresh_rotates_and_the_new_token_refreshes() {
            let engine = engine();
            let first = issue(&engine, "www", "read write").await;
            let second = rotated(refresh(&engine, "www", &first, None).await);
            assert_ne!(second.refresh_token, first);
            assert_eq!(second.scope, "read write");
            assert_eq!(second.expires_in, 300);
            let third = rotated(refresh(&engine, "www", &second.refresh_token, None).await);
            assert_ne!(third.refresh_token, second.refresh_token);
        }

        #[tokio::test]
        async fn a_retry_within_the_grace_period_gets_the_same_successor() {
            let engine = engine();
            let first = issue(&engine, "www", "read").await;
            let a = rotated(refresh(&engine, "www", &first, None).await);
            advance_secs(5);
            let b = rotated(refresh(&engine, "www", &first, None).await);
            assert_eq!(a.refresh_token, b.refresh_token);
        }

        #[tokio::test]
        async fn reuse_after_the_grace_period_revokes_the_family() {
            let engine = engine();
            let first = issue(&engine, "www", "read").await;
            let second = rotated(refresh(&engine, "www", &first, None).await);
            advance_secs(11);
            invalid_grant(refresh(&engine, "www", &first, None).await);
            // The family is gone: the live token is refused too.
            invalid_grant(refresh(&engine, "www", &second.refresh_token, None).await);
        }

        #[tokio::test]
        async fn an_idle_token_expires() {
            let engine = engine();
            let first = issue(&engine, "www", "read").await;
            advance_secs(99);
            let second = rotated(refresh(&engine, "www", &first, None).await);
            advance_secs(101);
            invalid_grant(refresh(&engine, "www", &second.refresh_token, None).await);
        }

        #[tokio::test]
        async fn a_family_expires_at_its_absolute_lifetime_however_active() {
            let engine = engine();
            let mut token = issue(&engine, "www", "read").await;
            for _ in 0..10 {
                advance_secs(90);
                token = rotated(refresh(&engine, "www", &token, None).await).refresh_token;
            }
            advance_secs(90); // 990 s: still inside
            token = rotated(refresh(&engine, "www", &token, None).await).refresh_token;
            advance_secs(20); // 1010 s
            invalid_grant(refresh(&engine, "www", &token, None).await);
        }

        /// A store that lost its last writes (a Redis crash between AOF syncs, a failover)
        /// holds generation N while the client has N+2: the engine walks the chain from the
        /// stored verifier to the presented token and the family goes on from it.
        #[tokio::test]
        async fn a_token_ahead_of_the_store_is_walked_to_and_the_family_goes_on() {
            let engine = engine();
            let first = issue(&engine, "www", "read").await;
            let keys = engine.keys();
            let parsed = keys.refresh.parse(&first).expect("the proxy's token");
            let second = keys.refresh.successor(0, &parsed);
            let parsed = keys.refresh.parse(&second).expect("the proxy's token");
            let third = keys.refresh.successor(0, &parsed);
            // The store never saw `second` or `third` (as if it had lost those rotations).
            let fourth = rotated(refresh(&engine, "www", &third, None).await);
            let parsed = keys.refresh.parse(&fourth.refresh_token).expect("ours");
            assert_eq!(parsed.generation, 3, "the family continues from the token");
            rotated(refresh(&engine, "www", &fourth.refresh_token, None).await);
        }

        /// A family record the store cannot read (on Redis, a hash changed by hand; here the
        /// memory store's test hook) is `invalid_grant` with the body every refused token gets,
        /// counted as an integrity failure, and changes nothing: the family is neither rotated
        /// nor revoked, so once the record reads again the same token rotates it.
        #[tokio::test]
        async fn a_corrupt_family_record_is_invalid_grant_and_changes_nothing() {
            use http_body_util::BodyExt as _;
            use std::sync::atomic::Ordering;

            async fn wire(err: GrantError) -> (http::StatusCode, Value) {
                let response = crate::error::error_response(err.into());
                let status = response.status();
                let body = response.into_body().collect().await.expect("body");
                let body = serde_json::from_slice(&body.to_bytes()).expect("JSON");
                (status, body)
            }

            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let keys = engine.keys();
            let family = keys
                .refresh
                .parse(&token)
                .expect("the proxy's token")
                .family;
            let AnyStore::Memory(store) = &engine.store else {
                panic!("the memory store")
            };
            store.set_unreadable(family, true);
            let unknown = wire(GrantError::InvalidGrant("unknown family")).await;
            assert_eq!(unknown.0, http::StatusCode::BAD_REQUEST);
            assert_eq!(unknown.1["error"], "invalid_grant");
            // Twice: a retry gets the same answer (no rotation happened that it could reuse).
            for failures in 1..=2 {
                let answer = refresh(&engine, "www", &token, None).await;
                let Err(err) = answer else {
                    panic!("{answer:?}")
                };
                assert!(
                    matches!(err, GrantError::InvalidGrant("corrupt family record")),
                    "{err:?}"
                );
                assert_eq!(wire(err).await, unknown, "no oracle (docs/design.md §4.5)");
                assert_eq!(
                    engine.metrics.integrity_failures.load(Ordering::Relaxed),
                    failures
                );
            }
            assert_eq!(engine.metrics.rotations.load(Ordering::Relaxed), 0);
            store.set_unreadable(family, false);
            let next = rotated(refresh(&engine, "www", &token, None).await);
            let parsed = keys.refresh.parse(&next.refresh_token).expect("ours");
            assert_eq!((parsed.family, parsed.generation), (family, 1));
            assert_eq!(next.scope, "read");
        }

        #[tokio::test]
        async fn another_clients_token_is_invalid_grant() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            invalid_grant(refresh(&engine, "app", &token, None).await);
            // and the owner's token still works: a wrong client revokes nothing
            rotated(refresh(&engine, "www", &token, None).await);
        }

        #[tokio::test]
        async fn a_wider_scope_is_invalid_scope_and_a_narrower_one_is_granted() {
            let engine = engine();
            let token = issue(&engine, "www", "read write").await;
            let answer = refresh(&engine, "www", &token, Some("read admin")).await;
            assert!(
                matches!(answer, Err(GrantError::InvalidScope)),
                "{answer:?}"
            );
            let narrowed = rotated(refresh(&engine, "www", &token, Some("read")).await);
            assert_eq!(narrowed.scope, "read");
        }

        #[tokio::test]
        async fn a_wrong_secret_is_a_client_auth_error() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let f = form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &token),
                ("client_id", "www"),
                ("client_secret", "wrong"),
            ]);
            let answer = engine
                .refresh(&TokenRequest::form(&f, ISSUER), &mut NoUpstream)
                .await;
            assert!(
                matches!(answer, Err(GrantError::ClientAuth(_))),
                "{answer:?}"
            );
        }

        #[tokio::test]
        async fn a_token_whose_tag_does_not_verify_is_not_the_proxys_and_is_forwarded() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let mut tampered = token.clone().into_bytes();
            // a character inside the tag (the last one may carry padding bits)
            let at = tampered.len() - 5;
            tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).expect("ascii");
            let answer = refresh(&engine, "www", &tampered, None).await;
            assert!(matches!(answer, Ok(None)), "{answer:?}");
            // Not the proxy's format at all: the upstream's token, forwarded too.
            let answer = refresh(&engine, "www", "upstream-opaque-token", None).await;
            assert!(matches!(answer, Ok(None)), "{answer:?}");
        }

        async fn revoke(engine: &Engine, client: &str, token: &str) -> Option<()> {
            let secret = format!("{client}-secret");
            let f = form(&[
                ("token", token),
                ("client_id", client),
                ("client_secret", &secret),
            ]);
            engine
                .revoke(None, &f, &Authn::issuer(ISSUER))
                .await
                .expect("revocation answers 200")
        }

        #[tokio::test]
        async fn the_owner_revokes_its_family() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let access = rotated(refresh(&engine, "www", &token, None).await);
            assert_eq!(
                revoke(&engine, "www", &access.refresh_token).await,
                Some(())
            );
            invalid_grant(refresh(&engine, "www", &access.refresh_token, None).await);
        }

        #[tokio::test]
        async fn another_client_revokes_nothing() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            // RFC 7009 §2.1: the token was not issued to this client; the answer reveals nothing.
            let _ = revoke(&engine, "app", &token).await;
            rotated(refresh(&engine, "www", &token, None).await);
        }

        #[tokio::test]
        async fn an_unknown_token_is_not_the_proxys_to_revoke() {
            let engine = engine();
            assert_eq!(revoke(&engine, "www", "upstream-opaque-token").await, None);
        }

        #[tokio::test]
        async fn revoking_an_access_token_revokes_its_family() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let answer = rotated(refresh(&engine, "www", &token, None).await);
            assert_eq!(revoke(&engine, "www", &answer.access_token).await, Some(()));
            invalid_grant(refresh(&engine, "www", &answer.refresh_token, None).await);
        }

        async fn introspect(engine: &Engine, token: &str) -> Option<Value> {
            let f = form(&[
                ("token", token),
                ("client_id", "rs"),
                ("client_secret", "rs-secret"),
            ]);
            let basic: Option<&HeaderValue> = None;
            engine
                .introspect(basic, &f, &Authn::issuer(ISSUER))
                .await
                .expect("answered")
        }

        #[tokio::test]
        async fn introspection_of_live_revoked_and_expired_tokens() {
            let engine = engine();
            let token = issue(&engine, "www", "read").await;
            let answer = rotated(refresh(&engine, "www", &token, None).await);
            let live = introspect(&engine, &answer.refresh_token)
                .await
                .expect("ours");
            assert_eq!(live["active"], true, "{live}");
            assert_eq!(live["client_id"], "www");
            assert_eq!(live["scope"], "read");
            let at = introspect(&engine, &answer.access_token)
                .await
                .expect("ours");
            assert_eq!(at["active"], true, "{at}");
            // the rotated-away token is no longer active
            let old = introspect(&engine, &token).await.expect("ours");
            assert_eq!(old["active"], false, "{old}");
            advance_secs(301); // the access token's 300 s are over
            let at = introspect(&engine, &answer.access_token)
                .await
                .expect("ours");
            assert_eq!(at["active"], false, "{at}");
            revoke(&engine, "www", &answer.refresh_token).await;
            let gone = introspect(&engine, &answer.refresh_token)
                .await
                .expect("ours");
            assert_eq!(gone["active"], false, "{gone}");
        }
    }
}
