//! The grant engine: refresh grants and capture, over the [`TokenStore`] trait.
//!
//! It knows nothing of HTTP: the layer hands it the `Authorization` header value and the parsed
//! form, and gets back either "not mine, forward it", a [`TokenResponse`], or a [`GrantError`]
//! that [`crate::error::error_response`] turns into the answer.
//!
//! A refresh grant is the proxy's when its `refresh_token` is one the proxy minted (checked
//! with the server key, no store access). Then, in order: client authentication, the client's
//! policy (`refresh_token_ttl = 0` → `unauthorized_client`), one store round trip running the
//! refresh rules, and minting. Reused, unknown, expired, revoked and other clients' tokens all
//! get the same `invalid_grant` body, so the answer is no oracle (docs/design.md §4.5).

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::HeaderValue;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::classify::Form;
use crate::client_auth::{self, Client, ClientAuthError, Clients};
use crate::config::AccessTokenFormat;
use crate::grant::capture::Identity;
use crate::grant::rules::{Redeem, Verdict};
use crate::grant::scope;
use crate::metrics::{Metrics, inc};
use crate::mint::jwt::{Signer, TYP_AT_JWT, TYP_JWT};
use crate::mint::opaque;
use crate::mint::refresh::{FamilyId, RefreshKeys, RefreshToken, Seal};
use crate::oauth::{Introspection, TokenResponse};
use crate::store::{
    AnyStore, FamilyData, NewFamily, OpaqueCandidate, RedeemRequest, Redemption, Revoke,
    StoreError, TokenFormat, TokenStore,
};

/// Why a grant the proxy owns was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
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
}

impl Keys {
    /// The public JWKs of every signer, for the JWKS (each `kid` once).
    pub fn public_jwks(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.signers
            .iter()
            .chain(&self.id_signers)
            .filter(|s| seen.insert(s.kid().to_owned()))
            .map(Signer::public_jwk)
            .collect()
    }

    /// The JOSE `alg` of ID tokens on refresh, when any client gets them.
    pub fn id_token_alg(&self) -> Option<&'static str> {
        self.id_signers.first().map(Signer::alg_name)
    }
}

/// Everything refresh grants and capture need, built once from config.
pub struct Engine {
    pub store: AnyStore,
    pub metrics: Arc<Metrics>,
    // Shared by every worker's engine (`with_store`), and replaced as a whole on reload.
    keys: Arc<ArcSwap<Keys>>,
    access_token_ttl: u64,
    audience: Option<String>,
    /// The wall clock in milliseconds: [`now_ms`] in production, a fixed or stepped one in tests.
    clock: Clock,
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

/// RFC 9068 §2.2 access-token claims the proxy sets (carried claims are appended).
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    client_id: &'a str,
    scope: &'a str,
    iat: i64,
    exp: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<i64>,
}

#[derive(Serialize)]
struct IdClaims {
    iat: i64,
    exp: i64,
}

/// Seconds (a TTL from config, bounded there) as milliseconds, saturating.
fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `{…ours}` + `{…carried}` as one JSON object. Capture keeps the two key sets apart.
fn splice(ours: &str, carried: &str) -> String {
    let carried = carried.trim();
    if carried.len() <= 2 {
        return ours.to_owned();
    }
    let mut out = String::with_capacity(ours.len() + carried.len());
    out.push_str(&ours[..ours.len() - 1]);
    out.push(',');
    out.push_str(&carried[1..]);
    out
}

/// `{…ours}` + `{…carried}`, in place: `ours` is a serialised JSON object.
fn splice_into(ours: &mut Vec<u8>, carried: &str) {
    let carried = carried.trim();
    if carried.len() <= 2 {
        return;
    }
    ours.pop();
    ours.push(b',');
    ours.extend_from_slice(&carried.as_bytes()[1..]);
}

/// Random bytes in a `jti`: 128 bits, 22 base64url characters.
const JTI_RANDOM_BYTES: usize = 16;
/// The longest `jti`: a family id (22 characters, checked when its token was parsed), a dot
/// and the random part.
const JTI_MAX: usize = 64;

/// `<family id>.<random>`, written into `buf`.
fn jti_of<'b>(family_id: &str, buf: &'b mut [u8; JTI_MAX]) -> &'b str {
    let mut random = [0u8; JTI_RANDOM_BYTES];
    rand::fill(&mut random).expect("the system RNG works");
    let head = family_id.len().min(JTI_MAX - 23);
    buf[..head].copy_from_slice(&family_id.as_bytes()[..head]);
    buf[head] = b'.';
    let n = B64
        .encode_slice(random, &mut buf[head + 1..])
        .expect("22 characters fit");
    std::str::from_utf8(&buf[..head + 1 + n]).expect("a family id and base64url are ASCII")
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
        }
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
        }
    }

    /// A refresh grant. `Ok(None)`: not the proxy's (a client or token it does not handle);
    /// forward it.
    pub async fn refresh(
        &self,
        authorization: Option<&HeaderValue>,
        form: &Form,
        issuer: &str,
    ) -> Result<Option<TokenResponse>, GrantError> {
        let keys = self.keys();
        let token_param = form.get("refresh_token");
        let presented = client_auth::presented(authorization, form);
        let handled = presented
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|p| keys.clients.get(&p.client_id));
        let token = token_param.and_then(|t| keys.refresh.parse(t));
        // docs/design.md §4.2: a handled client with refresh_token_ttl = 0 gets unauthorized_client
        // for every refresh grant, whoever minted the token.
        let no_refresh_tokens = handled.is_some_and(|c| c.policy.refresh_token_ttl == 0);
        if token.is_none() && !no_refresh_tokens {
            // Not a token the proxy minted: the upstream's own (sessions from before the proxy
            // was deployed), or a client the proxy does not handle. A handled client that sent
            // no token at all gets the error here.
            if token_param.is_none() && handled.is_some() {
                return Err(GrantError::InvalidRequest("refresh_token is required"));
            }
            return Ok(None);
        }
        let presented = presented?.ok_or(ClientAuthError::Missing)?;
        let basic = presented.method == client_auth::Method::Basic;
        let client = handled.ok_or(ClientAuthError::Failed { basic })?;
        Clients::verify(client, &presented)?;
        let policy = &client.policy;
        if policy.refresh_token_ttl == 0 {
            return Err(GrantError::UnauthorizedClient);
        }
        let Some(token) = token else {
            return Err(GrantError::InvalidGrant("not a proxy token"));
        };

        let now = (self.clock)();
        let candidate = (policy.access_token_format != AccessTokenFormat::Jwt).then(|| {
            opaque::mint(&FamilyId::parse(token.family).expect("a parsed token has a family id"))
        });
        let at_ttl_ms = secs_to_ms(self.access_token_ttl);
        // The successor is a function of the presented token: computed now, its verifier goes
        // into the store's atomic step, which stores it on rotation.
        let successors = keys.refresh.successors(&token);
        let mut request = RedeemRequest {
            family: token.family,
            redeem: Redeem {
                generation: token.generation,
                presented: successors.presented(),
                successors: successors.verifiers(),
                ahead_of: None,
                client_id: &client.id,
                scope: form.get("scope"),
                now_ms: now,
                grace_ms: secs_to_ms(policy.reuse_grace_period),
                idle_ttl_ms: secs_to_ms(policy.refresh_token_ttl),
                reuse_refresh_tokens: policy.reuse_refresh_tokens,
            },
            opaque: candidate.as_ref().map(|c| OpaqueCandidate {
                digest: c.digest.clone(),
                issued_ms: now,
                expires_ms: now.saturating_add(at_ttl_ms),
            }),
        };
        let mut redemption = self.redeem_once(&request).await?;
        if let Redemption::Decided {
            verdict: Verdict::Ahead { current, verifier },
            ..
        } = redemption
        {
            // The store is behind the token (it lost its last writes): walk the family's chain
            // from what it holds; only a token of this family's chain goes on (a second round
            // trip, only in this case).
            if keys.refresh.descends(&token, current, &verifier) {
                request.redeem.ahead_of = Some((current, verifier));
                redemption = self.redeem_once(&request).await?;
            } else if let Redemption::Decided { verdict, .. } = &mut redemption {
                *verdict = Verdict::Unverified;
            }
        }
        let (verdict, family, opaque_stored) = match redemption {
            Redemption::Unknown => return Err(GrantError::InvalidGrant("unknown family")),
            Redemption::Corrupt => {
                return Err(self.record_refused(
                    "family_record_corrupt",
                    token.family,
                    &client.id,
                    "corrupt family record",
                ));
            }
            Redemption::Decided {
                verdict,
                family,
                opaque_stored,
            } => (verdict, family, opaque_stored),
        };
        let (refresh_token, scope) = match verdict {
            Verdict::Rotated { scope, .. } => {
                inc(&self.metrics.rotations);
                (keys.refresh.successor_token(&successors, 0, &token), scope)
            }
            Verdict::Grace {
                generation,
                scope,
                key,
            } => {
                inc(&self.metrics.grace_hits);
                tracing::info!(
                    family = token.family,
                    client_id = %client.id,
                    generation,
                    "refresh token presented again within the grace period; same answer"
                );
                (
                    keys.refresh.successor_token(&successors, key, &token),
                    scope,
                )
            }
            Verdict::Reused { scope } => {
                inc(&self.metrics.reuses);
                (token_param.unwrap_or_default().to_owned(), scope)
            }
            Verdict::ReuseDetected { presented, current } => {
                inc(&self.metrics.reuse_detections);
                inc(&self.metrics.family_revocations);
                // RFC 9700 §4.14.2: the family is revoked; tell the operators.
                tracing::warn!(
                    security_event = "refresh_token_reuse",
                    family = token.family,
                    client_id = %client.id,
                    subject = %family.subject,
                    presented_generation = presented,
                    current_generation = current,
                    "a rotated-out refresh token was presented again; the family is revoked"
                );
                return Err(GrantError::InvalidGrant("reuse detected"));
            }
            Verdict::Expired => return Err(GrantError::InvalidGrant("expired")),
            Verdict::WrongClient => {
                tracing::warn!(
                    security_event = "refresh_token_wrong_client",
                    family = token.family,
                    client_id = %client.id,
                    owner_client_id = %family.client_id,
                    "a refresh token was presented by a client it was not issued to"
                );
                return Err(GrantError::InvalidGrant("wrong client"));
            }
            Verdict::InvalidScope => return Err(GrantError::InvalidScope),
            Verdict::Unverified | Verdict::Ahead { .. } => {
                inc(&self.metrics.integrity_failures);
                tracing::warn!(
                    security_event = "refresh_token_unverified",
                    family = token.family,
                    client_id = %client.id,
                    presented_generation = token.generation,
                    "a refresh token with a valid tag is not the family's (made with the server key alone?); nothing changed"
                );
                return Err(GrantError::InvalidGrant("not the family's token"));
            }
        };
        // Nothing read from the store is trusted before its seal checks out: a record changed
        // in the store is refused, never signed. The current scope is mutable, so it is held
        // to the sealed granted scope (RFC 6749 §6).
        let sealed_by = keys
            .refresh
            .check_seal(&family.sealed(token.family), &family.seal);
        if sealed_by.is_none()
            || scope::narrow(&scope, &family.granted_scope).is_none()
            || now >= family.expires_at_ms
        {
            return Err(self.record_refused(
                "family_record_tampered",
                token.family,
                &client.id,
                "family record fails its seal",
            ));
        }
        if sealed_by != Some(0) {
            // Sealed with a key that is still accepted but no longer current: re-seal with the
            // current one (once per family), so the old key can be removed without ending it.
            let new = keys.refresh.seal(&family.sealed(token.family));
            if let Err(e) = self.store.reseal(token.family, &family.seal, &new).await {
                tracing::warn!(family = token.family, error = %e, "could not re-seal the family with the current key");
            }
        }
        let access_token = match (family.format, opaque_stored, candidate) {
            (TokenFormat::Opaque, true, Some(c)) => c.token,
            _ => self.mint_jwt(&keys, token.family, &family, &scope, issuer, now),
        };
        let id_token = (policy.id_token_on_refresh && scope::contains(&scope, "openid"))
            .then(|| self.mint_id_token(&keys, &family, now))
            .flatten();
        Ok(Some(TokenResponse {
            access_token,
            refresh_token,
            scope,
            token_type: "bearer",
            expires_in: self.access_token_ttl,
            id_token,
        }))
    }

    fn mint_jwt(
        &self,
        keys: &Keys,
        family_id: &str,
        family: &FamilyData,
        scope: &str,
        issuer: &str,
        now_ms: i64,
    ) -> String {
        let iat = now_ms / 1000;
        // The jti carries the family id, so revoking or introspecting the JWT finds its family.
        let mut jti = [0u8; JTI_MAX];
        let jti = jti_of(family_id, &mut jti);
        // Our claims and the carried ones, serialised once into one buffer.
        let mut payload = Vec::with_capacity(
            192 + issuer.len()
                + family.subject.len()
                + family.client_id.len()
                + scope.len()
                + family.at_claims.len(),
        );
        serde_json::to_writer(
            &mut payload,
            &AccessClaims {
                iss: issuer,
                sub: &family.subject,
                client_id: &family.client_id,
                scope,
                iat,
                exp: iat.saturating_add(self.access_token_ttl as i64),
                jti,
                auth_time: family.auth_time,
            },
        )
        .expect("claims serialise");
        splice_into(&mut payload, &family.at_claims);
        // RFC 9068 §2.1: "access tokens MUST include 'application/at+jwt' in the typ header".
        keys.signers[0].sign_json("at+jwt", &payload)
    }

    /// OIDC Core §12.2: a new ID token keeps `iss`, `sub`, `aud`, `azp` and `auth_time` of the
    /// original and gets a new `iat` and `exp`.
    fn mint_id_token(&self, keys: &Keys, family: &FamilyData, now_ms: i64) -> Option<String> {
        let signer = keys.id_signers.first()?;
        if family.id_claims.trim().len() <= 2 {
            return None;
        }
        let iat = now_ms / 1000;
        let ours = serde_json::to_string(&IdClaims {
            iat,
            exp: iat.saturating_add(self.access_token_ttl as i64),
        })
        .expect("claims serialise");
        // The claims are sealed, so they are what capture wrote; still, a record that is not a
        // JSON object gets no ID token rather than a panic.
        let raw = RawValue::from_string(splice(&ours, &family.id_claims))
            .inspect_err(|_| tracing::error!("a family's ID-token claims are not JSON"))
            .ok()?;
        Some(signer.sign("JWT", &*raw))
    }

    /// A family record refused by an integrity check (unreadable, or failing its seal: changed
    /// in the store, or sealed with a key no longer listed): counted, logged, `invalid_grant`.
    fn record_refused(
        &self,
        event: &'static str,
        family: &str,
        client_id: &str,
        why: &'static str,
    ) -> GrantError {
        inc(&self.metrics.integrity_failures);
        tracing::error!(
            security_event = event,
            family,
            client_id,
            "the family's record was refused ({why}); nothing was minted"
        );
        GrantError::InvalidGrant(why)
    }

    /// One store redemption, timed and counted.
    async fn redeem_once(&self, request: &RedeemRequest<'_>) -> Result<Redemption, GrantError> {
        let started = std::time::Instant::now();
        let redemption = self.store.redeem(request).await;
        self.metrics.store_latency(started.elapsed());
        Ok(redemption.inspect_err(|_| inc(&self.metrics.store_errors))?)
    }

    /// What a presented token is, when the proxy issued it.
    fn recognise<'a>(&self, keys: &Keys, token: &'a str) -> Option<Owned<'a>> {
        if let Some(t) = keys.refresh.parse(token) {
            return Some(Owned::Refresh(t));
        }
        if let Some(family) = opaque::family_of(token) {
            return Some(Owned::Opaque {
                family,
                digest: opaque::digest_of(token),
            });
        }
        // RFC 9068 §2.1: the proxy's access tokens have `typ: at+jwt`; an ID token (its own
        // signer, `typ: JWT`) is recognised as one, never as an access token.
        let access = keys
            .signers
            .iter()
            .find_map(|s| s.verify(token, TYP_AT_JWT));
        let Some(claims) = access else {
            let id_token = keys
                .id_signers
                .iter()
                .find_map(|s| s.verify(token, TYP_JWT));
            return id_token.map(|_| Owned::IdToken);
        };
        let family = claims
            .get("jti")
            .and_then(Value::as_str)
            .and_then(|j| j.split_once('.'))
            .and_then(|(f, _)| FamilyId::parse(f))
            .map(|f| f.as_str().to_owned());
        Some(Owned::Jwt { claims, family })
    }

    /// Authenticates a client the proxy handles, for revocation and introspection.
    fn authenticate<'k>(
        &self,
        keys: &'k Keys,
        authorization: Option<&HeaderValue>,
        form: &Form,
    ) -> Result<&'k Client, GrantError> {
        let presented =
            client_auth::presented(authorization, form)?.ok_or(ClientAuthError::Missing)?;
        let basic = presented.method == client_auth::Method::Basic;
        let client = keys
            .clients
            .get(&presented.client_id)
            .ok_or(ClientAuthError::Failed { basic })?;
        Clients::verify(client, &presented)?;
        Ok(client)
    }

    /// RFC 7009 revocation. `Ok(None)`: not a token the proxy issued; forward it.
    /// `Ok(Some(()))`: answer 200 (RFC 7009 §2.2: also for invalid tokens).
    pub async fn revoke(
        &self,
        authorization: Option<&HeaderValue>,
        form: &Form,
    ) -> Result<Option<()>, GrantError> {
        let keys = self.keys();
        let Some(owned) = form.get("token").and_then(|t| self.recognise(&keys, t)) else {
            return Ok(None);
        };
        let client = self.authenticate(&keys, authorization, form)?;
        let family = match &owned {
            // The tag proves the token is the proxy's.
            Owned::Refresh(t) => Some(t.family),
            // An opaque token is only its family id and random bits: it is the proxy's only if
            // the store holds its digest. A family id with any other secret part revokes
            // nothing (RFC 7009 §2.2: still 200).
            Owned::Opaque { family, digest } => {
                let known = self
                    .store
                    .access_token(family, digest, (self.clock)())
                    .await
                    .inspect_err(|_| inc(&self.metrics.store_errors))?;
                known.is_some().then_some(*family)
            }
            Owned::Jwt { family, .. } => family.as_deref(),
            // RFC 7009 covers access and refresh tokens; an ID token ends nothing.
            Owned::IdToken => None,
        };
        let Some(family) = family else {
            return Ok(Some(()));
        };
        // RFC 7009 §2.1: the server "first validates the client credentials ... and then
        // verifies whether the token was issued to the client making the revocation request".
        let revoked = self
            .store
            .revoke_family(family, Some(&client.id))
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?;
        match revoked {
            Revoke::Revoked => {
                inc(&self.metrics.family_revocations);
                tracing::info!(family, client_id = %client.id, "family revoked");
            }
            Revoke::NotOwner => tracing::warn!(
                security_event = "revocation_by_other_client",
                family,
                client_id = %client.id,
                "a client tried to revoke another client's token; nothing was revoked"
            ),
            Revoke::Unknown => {}
        }
        Ok(Some(()))
    }

    /// RFC 7662 introspection of the proxy's own tokens, for a client with `may_introspect`.
    /// `Ok(None)`: not a token the proxy issued; forward it.
    pub async fn introspect(
        &self,
        authorization: Option<&HeaderValue>,
        form: &Form,
        issuer: &str,
    ) -> Result<Option<Value>, GrantError> {
        let keys = self.keys();
        let Some(owned) = form.get("token").and_then(|t| self.recognise(&keys, t)) else {
            return Ok(None);
        };
        let caller = self.authenticate(&keys, authorization, form)?;
        if !caller.may_introspect {
            return Err(ClientAuthError::Failed {
                basic: authorization.is_some(),
            }
            .into());
        }
        let now = (self.clock)();
        let inactive = || Ok(Some(serde_json::json!({"active": false})));
        let answer = match owned {
            Owned::IdToken => return inactive(),
            Owned::Refresh(t) => {
                let Some(info) = self
                    .store
                    .refresh_token_info(t.family, t.generation, now)
                    .await?
                else {
                    return inactive();
                };
                // Active only as the family's live token (its verifier), from a record whose
                // seal checks out.
                if info.generation != t.generation || info.verifier != t.verifier() {
                    return inactive();
                }
                if keys
                    .refresh
                    .check_seal(&info.family.sealed(t.family), &info.family.seal)
                    .is_none()
                {
                    inc(&self.metrics.integrity_failures);
                    tracing::error!(
                        security_event = "family_record_tampered",
                        family = t.family,
                        "the family's record fails its seal; introspection says inactive"
                    );
                    return inactive();
                }
                Introspection {
                    active: true,
                    scope: info.scope,
                    client_id: info.family.client_id,
                    sub: info.family.subject,
                    exp: info.expires_ms / 1000,
                    iat: info.issued_ms / 1000,
                    iss: issuer.to_owned(),
                    token_type: "refresh_token",
                    aud: None,
                }
            }
            Owned::Opaque { family, digest } => {
                let Some(at) = self.store.access_token(family, &digest, now).await? else {
                    return inactive();
                };
                Introspection {
                    active: true,
                    scope: at.scope,
                    client_id: at.client_id,
                    sub: at.subject,
                    exp: at.expires_ms / 1000,
                    iat: at.issued_ms / 1000,
                    iss: issuer.to_owned(),
                    token_type: "Bearer",
                    aud: None,
                }
            }
            Owned::Jwt { claims, family } => {
                let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
                let family_live = match &family {
                    // A revoked family's JWTs are reported inactive, though they still verify.
                    Some(f) => self
                        .store
                        .refresh_token_info(f, u64::MAX, now)
                        .await?
                        .is_some(),
                    None => true,
                };
                if exp * 1000 <= now || !family_live {
                    return inactive();
                }
                let text = |k: &str| {
                    claims
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                Introspection {
                    active: true,
                    scope: text("scope"),
                    client_id: text("client_id"),
                    sub: text("sub"),
                    exp,
                    iat: claims.get("iat").and_then(Value::as_i64).unwrap_or(0),
                    iss: text("iss"),
                    token_type: "Bearer",
                    aud: claims.get("aud").cloned(),
                }
            }
        };
        Ok(Some(
            serde_json::to_value(answer).expect("introspection serialises"),
        ))
    }

    /// Opens `count` families for a client and subject (load-testing rigs, the admin API) and
    /// returns their refresh tokens. `issuer` is the upstream issuer (the default `aud`).
    ///
    /// Only for a client marked `allow_admin_issue` (checked against the clients as of now, so
    /// a reload that takes the mark away takes effect at once); others get
    /// [`GrantError::AdminIssueNotAllowed`], whatever else the request says.
    pub async fn issue(
        &self,
        client_id: &str,
        subject: &str,
        scope: &str,
        count: usize,
        issuer: &str,
    ) -> Result<Vec<String>, GrantError> {
        let keys = self.keys();
        let client = keys
            .clients
            .get(client_id)
            .ok_or(GrantError::InvalidRequest("unknown client_id"))?;
        if !client.allow_admin_issue {
            return Err(GrantError::AdminIssueNotAllowed);
        }
        let policy = &client.policy;
        if policy.refresh_token_ttl == 0 {
            return Err(GrantError::UnauthorizedClient);
        }
        let format = match policy.access_token_format {
            AccessTokenFormat::Opaque => TokenFormat::Opaque,
            // With no upstream token to go by, `auto` means JWT.
            AccessTokenFormat::Jwt | AccessTokenFormat::Auto => TokenFormat::Jwt,
        };
        let now = (self.clock)();
        let expires_at_ms = now.saturating_add(secs_to_ms(policy.refresh_token_max_lifetime));
        let at_claims = serde_json::json!({"aud": self.default_audience(issuer)}).to_string();
        let scope = scope::tokens(scope).join(" ");
        let (families, tokens): (Vec<NewFamily>, Vec<String>) = (0..count)
            .map(|_| {
                let id = FamilyId::random();
                let (token, verifier) = keys.refresh.first(&id);
                let family = sealed(
                    &keys,
                    NewFamily {
                        id,
                        client_id: client.id.clone(),
                        subject: subject.to_owned(),
                        granted_scope: scope.clone(),
                        format,
                        at_claims: at_claims.clone(),
                        id_claims: String::new(),
                        auth_time: Some(now / 1000),
                        created_ms: now,
                        idle_deadline_ms: now
                            .saturating_add(secs_to_ms(policy.refresh_token_ttl))
                            .min(expires_at_ms),
                        expires_at_ms,
                        verifier,
                        seal: Seal::default(),
                    },
                );
                (family, token)
            })
            .unzip();
        self.store.create_families(&families).await?;
        Ok(tokens)
    }

    /// The `aud` of minted access tokens when the upstream names none: `tokens.audience`, else
    /// the upstream issuer. Never the client id: that is an ID token's audience (OIDC Core
    /// §2), and an access token must not be one a client could pass off as an ID token.
    pub fn default_audience<'a>(&'a self, issuer: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(issuer)
    }

    /// Opens a family for a captured upstream answer and puts the proxy's refresh token in it.
    pub async fn open_family(
        &self,
        client: &Client,
        identity: Identity,
        granted_scope: &str,
        answer: &mut Map<String, Value>,
    ) -> Result<(), StoreError> {
        let policy = &client.policy;
        let format = match policy.access_token_format {
            AccessTokenFormat::Jwt => TokenFormat::Jwt,
            AccessTokenFormat::Opaque => TokenFormat::Opaque,
            AccessTokenFormat::Auto if identity.upstream_jwt => TokenFormat::Jwt,
            AccessTokenFormat::Auto => TokenFormat::Opaque,
        };
        let now = (self.clock)();
        let expires_at_ms = now.saturating_add(secs_to_ms(policy.refresh_token_max_lifetime));
        let keys = self.keys();
        let id = FamilyId::random();
        let (token, verifier) = keys.refresh.first(&id);
        let family = sealed(
            &keys,
            NewFamily {
                id,
                client_id: client.id.clone(),
                subject: identity.subject,
                granted_scope: scope::tokens(granted_scope).join(" "),
                format,
                at_claims: Value::Object(identity.at_claims).to_string(),
                id_claims: identity
                    .id_claims
                    .map(|c| Value::Object(c).to_string())
                    .unwrap_or_default(),
                auth_time: identity.auth_time,
                created_ms: now,
                idle_deadline_ms: now
                    .saturating_add(secs_to_ms(policy.refresh_token_ttl))
                    .min(expires_at_ms),
                expires_at_ms,
                verifier,
                seal: Seal::default(),
            },
        );
        self.store
            .create_family(&family)
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?;
        inc(&self.metrics.captures);
        answer.insert("refresh_token".to_owned(), Value::String(token));
        tracing::info!(
            family = %family.id,
            client_id = %client.id,
            format = family.format.as_str(),
            "captured the upstream's refresh token; family opened"
        );
        Ok(())
    }
}

/// `family` with its seal set, with the current key.
fn sealed(keys: &Keys, mut family: NewFamily) -> NewFamily {
    family.seal = keys.refresh.seal(&family.sealed());
    family
}

/// A token the proxy issued, recognised.
enum Owned<'a> {
    Refresh(RefreshToken<'a>),
    /// An ID token the proxy minted: neither revocable nor introspectable.
    IdToken,
    Opaque {
        family: &'a str,
        digest: String,
    },
    Jwt {
        claims: Map<String, Value>,
        family: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_joins_objects() {
        assert_eq!(splice(r#"{"a":1}"#, r#"{"b":2}"#), r#"{"a":1,"b":2}"#);
        assert_eq!(splice(r#"{"a":1}"#, "{}"), r#"{"a":1}"#);
        assert_eq!(splice(r#"{"a":1}"#, ""), r#"{"a":1}"#);
    }

    // Engine-level verdicts on the memory store, with a clock the test moves: no IdP, no
    // sockets. The store-level rules are tests/store_contract.rs's; these check what the
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
            engine.refresh(None, &form(&pairs), ISSUER).await
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
            let answer = engine.refresh(None, &f, ISSUER).await;
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
                .revoke(None, &f)
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
                .introspect(basic, &f, ISSUER)
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
