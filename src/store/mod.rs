//! The token store: one trait, an in-process implementation and a Redis one.
//!
//! [`TokenStore`] is what the grant logic talks to; [`AnyStore`] picks the implementation from
//! `store.url` (`memory://`, or Redis standalone, Sentinel or Cluster, plain or TLS). Futures are `Send` and statically dispatched, so the
//! hot path pays no boxing for the choice. Both implementations pass one contract suite
//! (`tests/it/store_contract.rs`).
//!
//! What a family holds: its client, subject, granted and current scope, the claims to carry
//! into minted tokens, its generation counter and clocks, the verifier of its live refresh
//! token (a digest of the token's secret part), and a seal (MAC) over its fixed fields (see
//! [`crate::mint::refresh`]). No refresh token is stored; opaque access tokens are stored
//! under their SHA-256 digest. Every operation on a family is one atomic step — one Lua script on Redis,
//! one critical section in memory — that runs [`crate::grant::rules::redeem`].
//!
//! Times are passed in by the caller (milliseconds since the epoch), so the rules are testable
//! with any clock; Redis key expiry follows the same deadlines.
//!
//! Every key of a family is in one Redis Cluster hash slot.

mod memory;
mod redis;

use std::future::Future;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use crate::config::store_url::{RedisUrl, StoreUrl, Topology};
use crate::config::{ConfigError, StoreConfig};
// The types the trait's signatures name, so that a caller or an implementation can name them.
pub use crate::grant::rules::{Redeem, Verdict};
pub use crate::mint::refresh::{FamilyId, Seal, Sealed, Verifier};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store answered something unexpected: {0}")]
    Protocol(String),
}

/// How access tokens of a family are minted (fixed at capture; `auto` is resolved then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Jwt,
    Opaque,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Jwt => "jwt",
            TokenFormat::Opaque => "opaque",
        }
    }

    pub fn parse(s: &str) -> Option<TokenFormat> {
        match s {
            "jwt" => Some(TokenFormat::Jwt),
            "opaque" => Some(TokenFormat::Opaque),
            _ => None,
        }
    }
}

/// A family opened at capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFamily {
    pub id: FamilyId,
    pub client_id: String,
    pub subject: String,
    pub granted_scope: String,
    pub format: TokenFormat,
    /// JSON object of claims carried into minted access tokens.
    pub at_claims: String,
    /// JSON object of the original ID token's claims (empty when there was none).
    pub id_claims: String,
    pub auth_time: Option<i64>,
    pub created_ms: i64,
    pub idle_deadline_ms: i64,
    pub expires_at_ms: i64,
    /// The verifier of generation 0's token.
    pub verifier: Verifier,
    /// The MAC over the fixed fields above ([`NewFamily::sealed`]).
    pub seal: Seal,
}

impl NewFamily {
    /// The fields the seal covers.
    pub fn sealed(&self) -> Sealed<'_> {
        Sealed {
            family: self.id.as_str(),
            client_id: &self.client_id,
            subject: &self.subject,
            granted_scope: &self.granted_scope,
            format: self.format.as_str(),
            at_claims: &self.at_claims,
            id_claims: &self.id_claims,
            auth_time: self.auth_time,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// A family's fixed fields as the store holds them, for minting, for logs, and for checking
/// its seal: the store may have been changed under the proxy, so nothing here is trusted until
/// [`FamilyData::sealed`] checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyData {
    pub client_id: String,
    pub subject: String,
    pub granted_scope: String,
    pub format: TokenFormat,
    pub at_claims: String,
    pub id_claims: String,
    pub auth_time: Option<i64>,
    pub expires_at_ms: i64,
    pub seal: Seal,
}

impl FamilyData {
    /// The fields the seal covers, for family `family`.
    pub fn sealed<'a>(&'a self, family: &'a str) -> Sealed<'a> {
        Sealed {
            family,
            client_id: &self.client_id,
            subject: &self.subject,
            granted_scope: &self.granted_scope,
            format: self.format.as_str(),
            at_claims: &self.at_claims,
            id_claims: &self.id_claims,
            auth_time: self.auth_time,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// An opaque access token to store if the redemption grants one (and the family is opaque).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueCandidate {
    pub digest: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

/// One redemption of a refresh token of family `family`.
#[derive(Debug, Clone)]
pub struct RedeemRequest<'a> {
    pub family: &'a str,
    pub redeem: Redeem<'a>,
    pub opaque: Option<OpaqueCandidate>,
}

/// The outcome of a redemption.
// `Decided` is the common case and is moved once per refresh; boxing it would add an
// allocation to the hot path to shrink the rare variants.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// No such family: never existed, expired earlier, or revoked.
    Unknown,
    /// The family's record cannot be read (changed in the store, or written by something
    /// else); nothing was changed.
    Corrupt,
    Decided {
        verdict: Verdict,
        family: FamilyData,
        /// Whether the opaque candidate was stored.
        opaque_stored: bool,
    },
}

/// What the store keeps about an opaque access token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessTokenRecord {
    #[serde(rename = "c")]
    pub client_id: String,
    #[serde(rename = "s")]
    pub subject: String,
    #[serde(rename = "sc")]
    pub scope: String,
    #[serde(rename = "iat")]
    pub issued_ms: i64,
    #[serde(rename = "exp")]
    pub expires_ms: i64,
}

/// What introspection says about a live refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenInfo {
    /// The family's fixed fields (client, subject, …), to check against its seal.
    pub family: FamilyData,
    /// The family's live generation and its verifier.
    pub generation: u64,
    pub verifier: Verifier,
    /// The family's current scope.
    pub scope: String,
    /// When this generation was issued (ms).
    pub issued_ms: i64,
    /// When the family dies if unused (ms): the idle deadline, capped by the absolute one.
    pub expires_ms: i64,
}

/// The outcome of revoking one family on a client's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    Revoked,
    /// The family belongs to another client; nothing changed.
    NotOwner,
    /// No such family (never existed, expired, or already revoked).
    Unknown,
}

/// The operations the proxy needs from a store.
pub trait TokenStore: Send + Sync + 'static {
    /// Succeeds when the store can serve requests now.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Opens a family (capture).
    fn create_family(
        &self,
        family: &NewFamily,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks and applies one redemption atomically (docs/design.md §4.7).
    fn redeem(
        &self,
        request: &RedeemRequest<'_>,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send;

    /// An opaque access token's record, if it and its family are live at `now_ms`.
    fn access_token(
        &self,
        family: &str,
        digest: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<AccessTokenRecord>, StoreError>> + Send;

    /// The refresh token of generation `generation`, if it is the family's live one at `now_ms`
    /// (rotated-out, revoked and expired tokens are `None`).
    fn refresh_token_info(
        &self,
        family: &str,
        generation: u64,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<RefreshTokenInfo>, StoreError>> + Send;

    /// Revokes a family, atomically with respect to redemptions: a refresh racing it either
    /// ran before (and the family is revoked after) or finds no family. `client_id` limits it
    /// to that client's families (RFC 7009 §2.1); `None` revokes whatever the owner (admin).
    fn revoke_family(
        &self,
        family: &str,
        client_id: Option<&str>,
    ) -> impl Future<Output = Result<Revoke, StoreError>> + Send;

    /// Revokes every family of a subject (all clients); returns how many were live.
    fn revoke_subject(&self, subject: &str)
    -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Revokes every family of a client; returns how many were live.
    fn revoke_client(
        &self,
        client_id: &str,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Replaces a family's seal `old` with `new` (one made with a newer key), if the family is
    /// there and still holds `old`; whether it did.
    fn reseal(
        &self,
        family: &str,
        old: &Seal,
        new: &Seal,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Opens many families at once (load-testing rigs); faster than one call each.
    fn create_families(
        &self,
        families: &[NewFamily],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store chosen by config.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl AnyStore {
    pub fn open(config: &StoreConfig) -> Result<AnyStore, ConfigError> {
        match StoreUrl::parse(&config.url).map_err(|e| ConfigError::invalid("store.url", e))? {
            StoreUrl::Memory => Ok(AnyStore::Memory(MemoryStore::new())),
            StoreUrl::Redis(_) => Ok(AnyStore::Redis(RedisStore::open(config)?)),
        }
    }
}

impl TokenStore for AnyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.ping().await,
            AnyStore::Redis(s) => s.ping().await,
        }
    }

    async fn create_family(&self, family: &NewFamily) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.create_family(family).await,
            AnyStore::Redis(s) => s.create_family(family).await,
        }
    }

    async fn redeem(&self, request: &RedeemRequest<'_>) -> Result<Redemption, StoreError> {
        match self {
            AnyStore::Memory(s) => s.redeem(request).await,
            AnyStore::Redis(s) => s.redeem(request).await,
        }
    }

    async fn access_token(
        &self,
        family: &str,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.access_token(family, digest, now_ms).await,
            AnyStore::Redis(s) => s.access_token(family, digest, now_ms).await,
        }
    }

    async fn refresh_token_info(
        &self,
        family: &str,
        generation: u64,
        now_ms: i64,
    ) -> Result<Option<RefreshTokenInfo>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.refresh_token_info(family, generation, now_ms).await,
            AnyStore::Redis(s) => s.refresh_token_info(family, generation, now_ms).await,
        }
    }

    async fn revoke_family(
        &self,
        family: &str,
        client_id: Option<&str>,
    ) -> Result<Revoke, StoreError> {
        match self {
            AnyStore::Memory(s) => s.revoke_family(family, client_id).await,
            AnyStore::Redis(s) => s.revoke_family(family, client_id).await,
        }
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        match self {
            AnyStore::Memory(s) => s.revoke_subject(subject).await,
            AnyStore::Redis(s) => s.revoke_subject(subject).await,
        }
    }

    async fn revoke_client(&self, client_id: &str) -> Result<u64, StoreError> {
        match self {
            AnyStore::Memory(s) => s.revoke_client(client_id).await,
            AnyStore::Redis(s) => s.revoke_client(client_id).await,
        }
    }

    async fn reseal(&self, family: &str, old: &Seal, new: &Seal) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.reseal(family, old, new).await,
            AnyStore::Redis(s) => s.reseal(family, old, new).await,
        }
    }

    async fn create_families(&self, families: &[NewFamily]) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.create_families(families).await,
            AnyStore::Redis(s) => s.create_families(families).await,
        }
    }
}
