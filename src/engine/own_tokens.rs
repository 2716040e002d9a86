//! The proxy's own tokens at the revocation (RFC 7009) and introspection (RFC 7662)
//! endpoints: recognising a token, authenticating the caller, and the answer.

use super::*;

impl Engine {
    /// What a presented token is, when the proxy issued it.
    pub(super) fn recognise<'a>(&self, keys: &Keys, token: &'a str) -> Option<Owned<'a>> {
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
    pub(super) async fn authenticate<'k>(
        &self,
        keys: &'k Keys,
        authorization: Option<&HeaderValue>,
        form: &Form,
        authn: &Authn<'_>,
    ) -> Result<&'k Client, GrantError> {
        let presented =
            client_auth::presented(authorization, form)?.ok_or(ClientAuthError::Missing)?;
        let basic = presented.method == client_auth::Method::Basic;
        let client = keys
            .clients
            .get(&presented.client_id)
            .ok_or(ClientAuthError::Failed { basic })?;
        if let Some(verified) = self.verify_client(client, &presented, authn).await?
            && !self.assertion_first_use(client, &verified).await?
        {
            return Err(ClientAuthError::Failed { basic: false }.into());
        }
        Ok(client)
    }

    /// RFC 7009 revocation. `Ok(None)`: not a token the proxy issued; forward it.
    /// `Ok(Some(()))`: answer 200 (RFC 7009 §2.2: also for invalid tokens).
    pub(crate) async fn revoke(
        &self,
        authorization: Option<&HeaderValue>,
        form: &Form,
        authn: &Authn<'_>,
    ) -> Result<Option<()>, GrantError> {
        let keys = self.keys();
        let Some(owned) = form.get("token").and_then(|t| self.recognise(&keys, t)) else {
            return Ok(None);
        };
        let client = self.authenticate(&keys, authorization, form, authn).await?;
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
            Revoke::Revoked(ended) => {
                inc(&self.metrics.family_revocations);
                tracing::info!(family, client_id = %client.id, "family revoked");
                self.ended(ended, EndReason::ClientRevocation);
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
    pub(crate) async fn introspect(
        &self,
        authorization: Option<&HeaderValue>,
        form: &Form,
        authn: &Authn<'_>,
    ) -> Result<Option<Value>, GrantError> {
        let issuer = authn.audience.issuer;
        let keys = self.keys();
        let Some(owned) = form.get("token").and_then(|t| self.recognise(&keys, t)) else {
            return Ok(None);
        };
        let caller = self.authenticate(&keys, authorization, form, authn).await?;
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
                    cnf: confirmation(info.family.binding.as_deref()),
                }
            }
            Owned::Opaque { family, digest } => {
                let Some(at) = self.store.access_token(family, &digest, now).await? else {
                    return inactive();
                };
                let cnf = confirmation(at.binding.as_deref());
                let dpop = cnf.as_ref().is_some_and(|c| c.get("jkt").is_some());
                Introspection {
                    active: true,
                    scope: at.scope,
                    client_id: at.client_id,
                    sub: at.subject,
                    exp: at.expires_ms / 1000,
                    iat: at.issued_ms / 1000,
                    iss: issuer.to_owned(),
                    token_type: if dpop { "DPoP" } else { "Bearer" },
                    aud: None,
                    cnf,
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
                    token_type: if claims.get("cnf").and_then(|c| c.get("jkt")).is_some() {
                        "DPoP"
                    } else {
                        "Bearer"
                    },
                    aud: claims.get("aud").cloned(),
                    cnf: claims.get("cnf").cloned(),
                }
            }
        };
        Ok(Some(
            serde_json::to_value(answer).expect("introspection serialises"),
        ))
    }
}

/// A token the proxy issued, recognised.
pub(super) enum Owned<'a> {
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

/// RFC 9449 §6.2, RFC 8705 §3.2: `cnf` of a token bound to keys (bindings `jkt:<thumbprint>`
/// and `x5t#S256:<thumbprint>`, separated by spaces).
fn confirmation(bindings: Option<&str>) -> Option<Value> {
    let mut cnf = serde_json::Map::new();
    for b in bindings?.split(' ') {
        if let Some(jkt) = b.strip_prefix(JKT) {
            cnf.insert("jkt".to_owned(), Value::from(jkt));
        } else if let Some(x5t) = b.strip_prefix(X5T_S256) {
            cnf.insert("x5t#S256".to_owned(), Value::from(x5t));
        }
    }
    (!cnf.is_empty()).then_some(Value::Object(cnf))
}
