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
//! `mint::refresh`); the upstream's refresh token sealed with AES-256-GCM
//! (`mint::kept`), its upstream session (`sid`) in an index, and the state of its
//! upstream session check (when last confirmed, the lease and fencing token, the last
//! failure; docs/design.md §4.13). None of the proxy's refresh tokens is stored; opaque
//! access tokens are stored under their SHA-256 digest; one-time identifiers (a logout
//! token's `jti`) under a digest. Every operation on a family is one atomic step — one Lua script on Redis,
//! one critical section in memory — that runs [`crate::grant::rules::redeem`].
//!
//! Times are passed in by the caller (milliseconds since the epoch), so the rules are testable
//! with any clock; Redis key expiry follows the same deadlines.
//!
//! Every key of a family is in one Redis Cluster hash slot.

mod memory;
pub(crate) mod redis;

use std::future::Future;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use crate::config::store_url::{RedisUrl, StoreUrl, Topology};
use crate::config::{ConfigError, StoreConfig};
// The types the trait's signatures name, so that a caller or an implementation can name them.
pub use crate::grant::rules::{CheckPolicy, Checked, Redeem, Verdict};
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
    /// The upstream's access tokens (`access_token_format = "upstream"`).
    Upstream,
}

impl TokenFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Jwt => "jwt",
            TokenFormat::Opaque => "opaque",
            TokenFormat::Upstream => "upstream",
        }
    }

    pub fn parse(s: &str) -> Option<TokenFormat> {
        match s {
            "jwt" => Some(TokenFormat::Jwt),
            "opaque" => Some(TokenFormat::Opaque),
            "upstream" => Some(TokenFormat::Upstream),
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
    /// The upstream's refresh token, sealed for this family (`mint::kept`); `None`
    /// for families the admin API opened. Not under the seal: it changes when the upstream
    /// rotates it, and AES-GCM binds it to the family itself.
    pub upstream_token: Option<Vec<u8>>,
    /// The upstream session (`sid` of its ID token) the family belongs to, for back-channel
    /// logout (docs/design.md §4.12).
    pub session: Option<String>,
    /// The key the family's refresh tokens are bound to (docs/design.md §4.16, §4.17): `jkt:`
    /// and a DPoP key's thumbprint, or `x5t#S256:` and a certificate's; `None` for a bearer
    /// family. Under the seal, fixed at capture.
    pub binding: Option<String>,
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
            binding: self.binding.as_deref().unwrap_or(""),
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
    /// The key the family is bound to ([`NewFamily::binding`]).
    pub binding: Option<String>,
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
            binding: self.binding.as_deref().unwrap_or(""),
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
    /// With a confirmation ([`Redeem::confirm`]): the upstream's new refresh token (sealed),
    /// kept in place of the old one if the confirmation is the family's.
    pub new_upstream_token: Option<Vec<u8>>,
    /// With a confirmation of an `upstream`-format family: the upstream's answer (sealed),
    /// kept so a retry within the grace window gets the same one.
    pub upstream_answer: Option<Vec<u8>>,
    /// One-time identifiers the request carries (a client assertion's or a DPoP proof's
    /// `jti`), remembered in the same step as the redemption, before it: one that was seen
    /// before makes the redemption [`Redemption::Replayed`] and changes nothing else
    /// (docs/design.md §4.15). Empty on the common path.
    pub once: Vec<OneTime>,
}

/// A one-time identifier to remember until `until_ms` ([`TokenStore::first_use`]'s `id`: a
/// digest the caller made, fixed length, no client-chosen bytes in a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTime {
    pub id: String,
    pub until_ms: i64,
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
    /// `once[index]` was seen before: the request is a replay. Nothing else was changed (the
    /// one-time identifiers before `index` are now remembered).
    Replayed { index: usize },
    Decided {
        verdict: Verdict,
        family: FamilyData,
        /// Whether the opaque candidate was stored.
        opaque_stored: bool,
        /// The family's kept upstream refresh token (sealed) when the verdict needs it: reuse
        /// ended the family (to tell the upstream), or a check is due (to redeem it there);
        /// for a grace retry of an `upstream`-format family, the kept upstream answer instead;
        /// `None` otherwise.
        upstream_token: Option<Vec<u8>>,
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
    /// The keys the token is bound to (`jkt:<thumbprint>`, `x5t#S256:<thumbprint>`, separated
    /// by spaces; docs/design.md §4.16, §4.17), if any.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
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

/// A family the store ended (revoked, or revoked on reuse): what telling the upstream needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Ended {
    pub family: String,
    pub client_id: String,
    /// The family's kept upstream refresh token, still sealed.
    pub upstream_token: Option<Vec<u8>>,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ended {
            family,
            client_id,
            upstream_token,
        } = self;
        f.debug_struct("Ended")
            .field("family", family)
            .field("client_id", client_id)
            .field(
                "upstream_token",
                &upstream_token.as_ref().map(|_| "<sealed>"),
            )
            .finish()
    }
}

/// Which index a bulk revocation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index<'a> {
    Subject(&'a str),
    Client(&'a str),
    /// An upstream session (`sid`).
    Session(&'a str),
}

/// The families a bulk revocation ends: those in `index`, limited to one client's when
/// `client_id` is set, and sparing families granted `offline_access` when `keep_offline` is
/// set (OpenID Connect Back-Channel Logout 1.0 §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection<'a> {
    pub index: Index<'a>,
    pub client_id: Option<&'a str>,
    pub keep_offline: bool,
}

impl<'a> Selection<'a> {
    /// Every family in `index`.
    pub fn all(index: Index<'a>) -> Selection<'a> {
        Selection {
            index,
            client_id: None,
            keep_offline: false,
        }
    }

    /// Whether a family of `client` granted `granted_scope` is selected.
    pub fn selects(&self, client: &str, granted_scope: &str) -> bool {
        self.client_id.is_none_or(|c| c == client)
            && !(self.keep_offline
                && crate::grant::scope::contains(granted_scope, "offline_access"))
    }
}

/// The outcome of revoking one family on a client's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    Revoked(Ended),
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

    /// Revokes every live family `selection` selects (each atomically with respect to its
    /// redemptions) and returns them.
    fn revoke_many(
        &self,
        selection: &Selection<'_>,
    ) -> impl Future<Output = Result<Vec<Ended>, StoreError>> + Send;

    /// Replaces a family's seal `old` with `new` (one made with a newer key), if the family is
    /// there and still holds `old`; whether it did.
    fn reseal(
        &self,
        family: &str,
        old: &Seal,
        new: &Seal,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Remembers `id` until `until_ms` (it is `now_ms`): whether this is its first use (a replayed one-time
    /// identifier, such as a logout token's `jti`, answers `false`). `id` is a digest the
    /// caller made (fixed length, no client-chosen bytes in a key).
    fn first_use(
        &self,
        id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets `id` (a use that did not go through).
    fn forget_use(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

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

    async fn revoke_many(&self, selection: &Selection<'_>) -> Result<Vec<Ended>, StoreError> {
        match self {
            AnyStore::Memory(s) => s.revoke_many(selection).await,
            AnyStore::Redis(s) => s.revoke_many(selection).await,
        }
    }

    async fn reseal(&self, family: &str, old: &Seal, new: &Seal) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.reseal(family, old, new).await,
            AnyStore::Redis(s) => s.reseal(family, old, new).await,
        }
    }

    async fn first_use(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.first_use(id, now_ms, until_ms).await,
            AnyStore::Redis(s) => s.first_use(id, now_ms, until_ms).await,
        }
    }

    async fn forget_use(&self, id: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.forget_use(id).await,
            AnyStore::Redis(s) => s.forget_use(id).await,
        }
    }

    async fn create_families(&self, families: &[NewFamily]) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.create_families(families).await,
            AnyStore::Redis(s) => s.create_families(families).await,
        }
    }
}
