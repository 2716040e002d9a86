//! The refresh grant: client authentication, the rules over one store operation, and the
//! minting of the successor's access token (opaque or JWT) and ID token.

use tracing::Instrument;

use super::*;

impl Engine {
    /// A refresh grant. `Ok(None)`: not the proxy's (a client or token it does not handle);
    /// forward it.
    /// `upstream` redeems a family's kept token at the upstream when its session check is due
    /// (docs/design.md §4.13).
    pub(crate) async fn refresh(
        &self,
        req: &TokenRequest<'_>,
        upstream: &mut impl UpstreamRefresh,
    ) -> Result<Option<TokenResponse>, GrantError> {
        let (authorization, form, issuer) = (req.authorization, req.form, req.issuer);
        let keys = self.keys();
        let token_param = form.get("refresh_token");
        let presented = client_auth::presented(authorization, form);
        let handled = presented
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .and_then(|p| keys.clients.get(&p.client_id));
        if let Some(client) = handled {
            crate::otel::record_client_id(&client.id);
        }
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
        let (client, verified) = {
            let span = crate::otel::span!("client_authentication");
            let presented = presented?.ok_or(ClientAuthError::Missing)?;
            let basic = presented.method == client_auth::Method::Basic;
            let client = handled.ok_or(ClientAuthError::Failed { basic })?;
            // An assertion client's check may fetch its jwks_uri (docs/design.md §4.18).
            let verified = self
                .verify_client(client, &presented, &req.authn())
                .instrument(span)
                .await?;
            (client, verified)
        };
        let mark = |phase| {
            if let Some(t) = req.timing {
                t.mark(phase);
            }
        };
        mark(crate::timing::Phase::Auth);
        let policy = &client.policy;
        if policy.refresh_token_ttl == 0 {
            return Err(GrantError::UnauthorizedClient);
        }
        let Some(token) = token else {
            return Err(GrantError::InvalidGrant("not a proxy token"));
        };

        let now = (self.clock)();
        // docs/design.md §4.16: a DPoP proof, when the request carries one, checked before the
        // store is asked; its key goes into the redemption (a bound family needs it) and its
        // jti into the same step (docs/design.md §4.15).
        let proof = self.dpop_proof(&keys, client, req, now)?;
        // Every key the request proved: the DPoP proof's, the client certificate's.
        let proven = [
            proof.as_ref().map(|p| format!("{JKT}{}", p.jkt)),
            req.client_cert.map(ClientCert::binding),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let candidate = matches!(
            policy.access_token_format,
            AccessTokenFormat::Opaque | AccessTokenFormat::Auto
        )
        .then(|| {
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
                // A public client's upstream refresh token is bound to its DPoP key, which the
                // proxy does not hold: not checked (docs/design.md §4.16).
                check: self
                    .check_policy(client)
                    .filter(|_| proof.is_none() || !client.is_public()),
                confirm: None,
                proven: &proven,
            },
            opaque: candidate.as_ref().map(|c| OpaqueCandidate {
                digest: c.digest.clone(),
                issued_ms: now,
                expires_ms: now.saturating_add(at_ttl_ms),
            }),
            new_upstream_token: None,
            upstream_answer: None,
            // Client assertion first (RFC 7523 §3 item 7), then a DPoP proof's: each used once,
            // remembered in the redemption's own step (docs/design.md §4.15).
            once: verified
                .iter()
                .map(|v| assertion_once(&client.id, v))
                .chain(proof.iter().map(|p| OneTime {
                    id: one_time_id(&["dpop", &p.jkt, &p.jti]),
                    until_ms: p.remember_until_ms(),
                }))
                .collect(),
        };
        mark(crate::timing::Phase::Prepare);
        let mut redemption = self.redeem_once(&request).await?;
        // The one-time identifiers are remembered now: a second redemption of this request
        // (ahead, a check's outcome, waiting for another's check) must not see them as replays.
        request.once.clear();
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
        let (redemption, fresh) = self
            .upstream_check(&keys, client, &mut request, redemption, upstream)
            .await?;
        mark(crate::timing::Phase::Store);
        let now = request.redeem.now_ms;
        let (verdict, family, opaque_stored, kept_answer) = match redemption {
            Redemption::Unknown => return Err(GrantError::InvalidGrant("unknown family")),
            // The assertion's id is `once[0]` when there is one.
            Redemption::Replayed { index: 0 } if verified.is_some() => {
                tracing::warn!(
                    security_event = "client_assertion_replay",
                    client_id = %client.id,
                    "a client assertion was presented again; refused"
                );
                return Err(ClientAuthError::Failed { basic: false }.into());
            }
            Redemption::Replayed { .. } => {
                tracing::warn!(
                    security_event = "dpop_proof_replayed",
                    client_id = %client.id,
                    "a DPoP proof was presented again; nothing changed"
                );
                return Err(GrantError::DpopProof(DpopError::Replayed));
            }
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
                upstream_token,
            } => {
                let mut kept_answer = None;
                match (&verdict, upstream_token) {
                    (Verdict::ReuseDetected { .. }, Some(sealed)) => self.ended(
                        Ended {
                            family: token.family.to_owned(),
                            client_id: family.client_id.clone(),
                            upstream_token: Some(sealed),
                        },
                        EndReason::ReuseDetected,
                    ),
                    (Verdict::Grace { .. }, Some(sealed)) => kept_answer = Some(sealed),
                    _ => {}
                }
                (verdict, family, opaque_stored, kept_answer)
            }
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
            Verdict::WrongKey => {
                tracing::warn!(
                    security_event = "refresh_token_wrong_key",
                    family = token.family,
                    client_id = %client.id,
                    proof = proof.is_some(),
                    "a DPoP-bound refresh token was presented without a proof of its key"
                );
                return Err(GrantError::InvalidGrant("not the family's key"));
            }
            Verdict::CheckRevoked => {
                inc(&self.metrics.family_revocations);
                tracing::info!(
                    family = token.family,
                    client_id = %client.id,
                    subject = %family.subject,
                    "the upstream refused the family's kept refresh token (its session is over); \
                     the family is revoked"
                );
                return Err(GrantError::InvalidGrant("the upstream ended the session"));
            }
            Verdict::CheckFailed | Verdict::CheckDue { .. } | Verdict::CheckInFlight { .. } => {
                self.metrics.upstream_check(UpstreamCheck::Refused);
                return Err(GrantError::UpstreamUnavailable);
            }
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
            || family
                .binding
                .as_deref()
                .is_some_and(|b| !proven.split(' ').any(|p| p == b))
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
        if family.format == TokenFormat::Upstream {
            // docs/design.md §4.14: the upstream's own tokens, as it answered this refresh (or,
            // for a retry within the grace window, as it answered the first).
            let tokens = match kept_answer {
                Some(sealed) => keys
                    .kept
                    .open(&answer_aad(token.family), &sealed)
                    .and_then(|t| serde_json::from_str::<UpstreamTokens>(t.expose()).ok()),
                None => fresh,
            };
            if let Some(tokens) = tokens
                && family.binding.is_none()
                && proof.is_none()
            {
                return Ok(Some(TokenResponse {
                    access_token: tokens.access_token,
                    refresh_token,
                    scope: tokens.scope.unwrap_or(scope),
                    token_type: "bearer",
                    expires_in: tokens.expires_in.unwrap_or(self.access_token_ttl),
                    id_token: tokens.id_token,
                    dpop_nonce: None,
                }));
            }
            // No upstream answer to give (the client's access_token_format changed since the
            // family was captured): minted by the proxy, as `jwt`.
        }
        let _span = crate::otel::span!("mint").entered();
        // RFC 9449 §5: with a proof, the access token is bound to its key (also for a family
        // that is not: a confidential client's refresh tokens need not be). RFC 8705 §3: a
        // certificate-bound family's access tokens are bound to the certificate.
        let jkt = proof.as_ref().map(|p| p.jkt.as_str());
        let x5t = family
            .binding
            .as_deref()
            .and_then(|b| b.strip_prefix(X5T_S256));
        let cnf = (jkt.is_some() || x5t.is_some()).then_some(Confirmation { jkt, x5t_s256: x5t });
        let access_token = match (family.format, opaque_stored, candidate) {
            (TokenFormat::Opaque, true, Some(c)) => c.token,
            _ => self.mint_jwt(&keys, token.family, &family, (&scope, cnf), issuer, now),
        };
        let id_token = (policy.id_token_on_refresh && scope::contains(&scope, "openid"))
            .then(|| self.mint_id_token(&keys, &family, now))
            .flatten();
        Ok(Some(TokenResponse {
            access_token,
            refresh_token,
            scope,
            token_type: if jkt.is_some() { "DPoP" } else { "bearer" },
            expires_in: self.access_token_ttl,
            id_token,
            dpop_nonce: (policy.dpop_nonce && jkt.is_some())
                .then(|| keys.dpop_nonces.current(now / 1000)),
        }))
    }

    /// The request's DPoP proof, checked (RFC 9449 §4.3); `None` without one. With
    /// `dpop_nonce`, a proof without this period's or the last one's nonce is answered
    /// `use_dpop_nonce` with the current one.
    fn dpop_proof(
        &self,
        keys: &Keys,
        client: &Client,
        req: &TokenRequest<'_>,
        now_ms: i64,
    ) -> Result<Option<Proof>, GrantError> {
        let Some(header) = req.dpop? else {
            return Ok(None);
        };
        let now = now_ms / 1000;
        let nonces = client.policy.dpop_nonce.then_some(&keys.dpop_nonces);
        let checked = header
            .to_str()
            .map_err(|_| DpopError::Malformed)
            .and_then(|proof| {
                dpop::check(
                    proof,
                    &dpop::Expect {
                        method: "POST",
                        // An unknown token endpoint URL matches no htu.
                        htu: req.token_url.unwrap_or(""),
                        now,
                        nonces,
                    },
                )
            });
        match checked {
            Ok(proof) => Ok(Some(proof)),
            Err(DpopError::Nonce) => Err(GrantError::UseDpopNonce(keys.dpop_nonces.current(now))),
            Err(e) => Err(e.into()),
        }
    }

    /// The client's upstream session check policy (`None`: never checked; also when the proxy
    /// cannot authenticate as the client at the upstream).
    fn check_policy(&self, client: &Client) -> Option<CheckPolicy> {
        let p = &client.policy;
        // Without credentials at the upstream there is no asking it.
        client.upstream_auth.as_ref()?;
        if p.access_token_format == AccessTokenFormat::Upstream {
            // docs/design.md §4.14: every refresh is the upstream's; nothing to serve without it.
            return Some(CheckPolicy {
                interval_ms: 0,
                lease_ms: self.check_lease_ms,
                serve_ms: 0,
            });
        }
        (p.upstream_check_interval > 0).then(|| CheckPolicy {
            interval_ms: secs_to_ms(p.upstream_check_interval),
            lease_ms: self.check_lease_ms,
            serve_ms: match p.upstream_unreachable {
                Unreachable::Serve => secs_to_ms(p.upstream_unreachable_max),
                Unreachable::Fail => 0,
            },
        })
    }

    /// docs/design.md §4.13: while the store says a check is due, this redemption redeems the
    /// family's kept token at the upstream and brings the outcome back under its fencing
    /// token; while another redemption's check is in flight, it waits for that outcome. The
    /// common case (no check due) returns `redemption` as it is, with no extra round trip.
    async fn upstream_check(
        &self,
        keys: &Keys,
        client: &Client,
        request: &mut RedeemRequest<'_>,
        mut redemption: Redemption,
        upstream: &mut impl UpstreamRefresh,
    ) -> Result<(Redemption, Option<UpstreamTokens>), GrantError> {
        let mut fresh = None;
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(self.check_lease_ms.max(0) as u64)
            + CHECK_WAIT_MARGIN;
        let mut pause = std::time::Duration::from_millis(10);
        let mut waited = false;
        let mut checks = 0;
        loop {
            let Redemption::Decided {
                verdict,
                upstream_token,
                family,
                ..
            } = &redemption
            else {
                return Ok((redemption, fresh));
            };
            match *verdict {
                Verdict::CheckDue { fence } if checks < MAX_CHECKS_PER_REFRESH => {
                    checks += 1;
                    let kept = upstream_token
                        .as_deref()
                        .and_then(|sealed| keys.kept.open(request.family, sealed));
                    let answer = match &kept {
                        Some(kept) => {
                            upstream
                                .refresh(client, kept, request.redeem.scope)
                                .instrument(crate::otel::span!("upstream.check"))
                                .await
                        }
                        None => {
                            // Sealed with a key no longer listed: the family can never be
                            // confirmed again, so it ends now (the user signs in again) rather
                            // than failing its every check.
                            tracing::warn!(
                                family = request.family,
                                client_id = %client.id,
                                "the family's kept upstream refresh token opens with no key of \
                                 tokens.upstream_token_keys; the family is revoked"
                            );
                            UpstreamAnswer::InvalidGrant
                        }
                    };
                    // An `upstream`-format family needs the upstream's access token to answer.
                    let answer = match answer {
                        UpstreamAnswer::Valid { tokens: None, .. }
                            if family.format == TokenFormat::Upstream =>
                        {
                            UpstreamAnswer::Unavailable(
                                "the upstream's answer has no bearer access token",
                            )
                        }
                        answer => answer,
                    };
                    let (checked, outcome) = match answer {
                        UpstreamAnswer::Valid {
                            refresh_token,
                            tokens,
                        } => {
                            // The IdP's rotated token is kept; an unrotated one sealed with
                            // a key that is no longer the first is sealed again with the first.
                            let stale = upstream_token
                                .as_deref()
                                .is_some_and(|sealed| keys.kept.is_stale(sealed));
                            let idp_rotated = refresh_token.filter(|t| Some(t) != kept.as_ref());
                            let outcome = if idp_rotated.is_some() {
                                UpstreamCheck::Rotated
                            } else {
                                UpstreamCheck::Confirmed
                            };
                            request.new_upstream_token = idp_rotated
                                .or_else(|| kept.clone().filter(|_| stale))
                                .map(|t| keys.kept.seal(request.family, &t));
                            // Kept (sealed) for retries within the grace window.
                            request.upstream_answer = tokens.as_ref().map(|t| {
                                let json = serde_json::to_string(t).expect("tokens serialise");
                                keys.kept
                                    .seal(&answer_aad(request.family), &KeptToken::new(json))
                            });
                            fresh = tokens;
                            (Checked::Confirmed, outcome)
                        }
                        UpstreamAnswer::InvalidGrant => (Checked::Revoked, UpstreamCheck::Revoked),
                        UpstreamAnswer::Unavailable(why) => {
                            tracing::warn!(
                                family = request.family,
                                client_id = %client.id,
                                "the upstream session check failed: {why}"
                            );
                            (Checked::Failed, UpstreamCheck::Failed)
                        }
                    };
                    self.metrics.upstream_check(outcome);
                    request.redeem.confirm = Some((fence, checked));
                }
                Verdict::CheckInFlight { .. } if std::time::Instant::now() < deadline => {
                    if !waited {
                        waited = true;
                        inc(&self.metrics.upstream_check_waiters);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CHECK_WAIT_MAX_PAUSE);
                }
                _ => return Ok((redemption, fresh)),
            }
            // Again, with the outcome (or after the wait), at the time of now.
            let now = (self.clock)();
            request.redeem.now_ms = now;
            if let Some(c) = &mut request.opaque {
                c.expires_ms = now.saturating_add(c.expires_ms - c.issued_ms);
                c.issued_ms = now;
            }
            redemption = self.redeem_once(request).await?;
            request.redeem.confirm = None;
            request.new_upstream_token = None;
            request.upstream_answer = None;
        }
    }

    pub(super) fn mint_jwt(
        &self,
        keys: &Keys,
        family_id: &str,
        family: &FamilyData,
        (scope, cnf): (&str, Option<Confirmation<'_>>),
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
                cnf,
            },
        )
        .expect("claims serialise");
        splice_into(&mut payload, &family.at_claims);
        // RFC 9068 §2.1: "access tokens MUST include 'application/at+jwt' in the typ header".
        keys.signers[0].sign_json("at+jwt", &payload)
    }

    /// OIDC Core §12.2: a new ID token keeps `iss`, `sub`, `aud`, `azp` and `auth_time` of the
    /// original and gets a new `iat` and `exp`.
    pub(super) fn mint_id_token(
        &self,
        keys: &Keys,
        family: &FamilyData,
        now_ms: i64,
    ) -> Option<String> {
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
    pub(super) fn record_refused(
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
    pub(super) async fn redeem_once(
        &self,
        request: &RedeemRequest<'_>,
    ) -> Result<Redemption, GrantError> {
        let started = std::time::Instant::now();
        let redemption = self
            .store
            .redeem(request)
            .instrument(crate::otel::span!("store.redeem"))
            .await;
        self.metrics.store_latency(started.elapsed());
        Ok(redemption.inspect_err(|_| inc(&self.metrics.store_errors))?)
    }
}
