//! Opening families: the admin API's `issue`, and capture's new family for a token answer the
//! upstream gave a handled client.

use super::*;

impl Engine {
    /// Opens `count` families for a client and subject (load-testing rigs, the admin API) and
    /// returns their refresh tokens. `issuer` is the upstream issuer (the default `aud`).
    ///
    /// Only for a client marked `allow_admin_issue` (checked against the clients as of now, so
    /// a reload that takes the mark away takes effect at once); others get
    /// [`GrantError::AdminIssueNotAllowed`], whatever else the request says.
    pub(crate) async fn issue(
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
            // With no upstream token to go by, `auto` means JWT; and with none kept, the
            // upstream cannot answer for the family (`upstream`).
            AccessTokenFormat::Jwt | AccessTokenFormat::Auto | AccessTokenFormat::Upstream => {
                TokenFormat::Jwt
            }
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
                        upstream_token: None,
                        session: None,
                        binding: None,
                    },
                );
                (family, token)
            })
            .unzip();
        self.store.create_families(&families).await?;
        Ok(tokens)
    }

    /// Opens a family for a captured upstream answer and puts the proxy's refresh token in it.
    pub(crate) async fn open_family(
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
            AccessTokenFormat::Upstream => TokenFormat::Upstream,
        };
        let now = (self.clock)();
        let expires_at_ms = now.saturating_add(secs_to_ms(policy.refresh_token_max_lifetime));
        let keys = self.keys();
        let id = FamilyId::random();
        let (token, verifier) = keys.refresh.first(&id);
        // docs/design.md §4.11: the upstream's refresh token is kept, sealed for this family.
        let upstream_token = answer
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(|t| keys.kept.seal(id.as_str(), &KeptToken::new(t)));
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
                upstream_token,
                session: identity.session.filter(|_| self.index_sessions),
                binding: identity.binding,
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
