//! DPoP-bound families (docs/design.md §4.16), end to end: the real IdP (oidc-provider with
//! RFC 9449 on) binds its tokens to the client's key, the proxy captures the family bound to
//! the same key, and every refresh needs a proof of it. The client's keys and proofs are made
//! by `jose` (tests/idp/dpop-proofs.mjs), not by the proxy's code.

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::support::StoreKind as Kind;
use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, REDIRECT_URI};
use crate::support::jose::{DpopKey, ProofClaims, verify_with_node_jose};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;

struct Stack {
    idp: Idp,
    proxy: TestProxy,
    _redis: Option<RedisServer>,
    config: String,
    /// One client (one connection pool) for the stack's requests.
    http: reqwest::Client,
}

/// An answer: status, headers, JSON body.
type Answer = (u16, HeaderMap, Value);

impl Stack {
    /// The proxy in front of the IdP (DPoP on at the IdP when `idp_dpop`), handling the public
    /// client `spa` with `spa` added to its table.
    async fn start(kind: Kind, spa: &str, idp_dpop: bool) -> Stack {
        let (listener, idp) = Idp::start_behind_proxy(IdpOptions {
            dpop: idp_dpop,
            ..IdpOptions::default()
        })
        .await;
        let (redis, store) = kind.start();
        let config = format!(
            "[store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.spa]\n{spa}\n\
             [clients.rs]\nsecret = \"rs-secret\"\nmay_introspect = true\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &config).await;
        proxy.wait_ready().await;
        Stack {
            idp,
            proxy,
            _redis: redis,
            config,
            http: reqwest::Client::new(),
        }
    }

    /// The token endpoint's URL as the client calls it (the IdP's issuer is the proxy).
    fn htu(&self) -> String {
        format!("{}/token", self.proxy.url)
    }

    /// `spa` logs `alice` in through the proxy, sending a proof of `key` with the code.
    async fn login(&self, key: Option<&DpopKey>) -> Answer {
        let flow = CodeFlow::spa("openid offline_access read");
        let (verifier, code) =
            idp::authorize_in(&idp::new_browser(), &self.proxy.url, "/auth", true, &flow).await;
        let proof = match key {
            Some(k) => Some(k.proof(&self.htu()).await),
            None => None,
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier.as_str()),
            ("client_id", "spa"),
        ];
        post(&self.http, &self.proxy.url, &form, proof.as_deref()).await
    }

    /// A refresh by `spa` at `base` with these DPoP headers.
    async fn refresh_at<'p>(
        &self,
        base: &str,
        token: &str,
        proofs: impl IntoIterator<Item = &'p str>,
    ) -> Answer {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "spa"),
        ];
        post(&self.http, base, &form, proofs).await
    }

    async fn refresh(&self, token: &str, proof: Option<&str>) -> Answer {
        self.refresh_at(&self.proxy.url, token, proof).await
    }
}

async fn post<'p>(
    http: &reqwest::Client,
    base: &str,
    form: &[(&str, &str)],
    proofs: impl IntoIterator<Item = &'p str>,
) -> Answer {
    let mut req = http.post(format!("{base}/token")).form(form);
    for p in proofs {
        req = req.header("DPoP", p);
    }
    let res = req.send().await.expect("POST /token");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.json().await.expect("a JSON answer");
    (status, headers, body)
}

fn rt(v: &Value) -> &str {
    v["refresh_token"].as_str().expect("a refresh token")
}

/// The status and `token_type` of an answer.
fn typed(status: u16, body: &Value) -> (u16, &str) {
    (status, body["token_type"].as_str().unwrap_or("(none)"))
}

fn error(a: &Answer) -> (u16, &str) {
    (a.0, a.2["error"].as_str().unwrap_or("(none)"))
}

/// A DPoP-bound login is captured bound to the client's key; every refresh needs a fresh proof
/// of that key, and a refused one changes nothing.
async fn a_bound_login_is_captured_and_every_refresh_needs_its_key(kind: Kind) {
    let s = Stack::start(kind, JWT, true).await;
    let key = DpopKey::new("ES256").await;
    let (status, _, login) = s.login(Some(&key)).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(
        login["token_type"], "DPoP",
        "the IdP bound its tokens: {login}"
    );
    let upstream = s.idp.last_refresh_token().await;
    assert_ne!(
        rt(&login),
        upstream,
        "captured: the client has the proxy's token"
    );

    // With a proof of the key: a DPoP-bound answer whose access token carries cnf.jkt, as
    // jose reads it.
    let (status, _, first) = s
        .refresh(rt(&login), Some(&key.proof(&s.htu()).await))
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["token_type"], "DPoP");
    let at = first["access_token"].as_str().expect("an access token");
    let verified = verify_with_node_jose(&format!("{}/jwks", s.proxy.url), at, None)
        .await
        .expect("jose verifies the access token");
    assert_eq!(verified["payload"]["cnf"]["jkt"], key.jkt.as_str());

    // Without a proof, or with another key's: invalid_grant, nothing changes.
    let other = DpopKey::new("ES256").await;
    let token = rt(&first);
    assert_eq!(error(&s.refresh(token, None).await), (400, "invalid_grant"));
    let (status, _, body) = s.refresh(token, Some(&other.proof(&s.htu()).await)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Proofs that are not valid for this request: invalid_dpop_proof, nothing changes.
    let mut bad = key
        .proofs(&[
            ProofClaims::to(&format!("{}/other", s.proxy.url)),
            ProofClaims {
                htm: Some("GET".into()),
                ..ProofClaims::to(&s.htu())
            },
            ProofClaims {
                typ: Some("JWT".into()),
                ..ProofClaims::to(&s.htu())
            },
            ProofClaims {
                iat: Some(now() - 3600),
                ..ProofClaims::to(&s.htu())
            },
        ])
        .await;
    bad.push("not-a-jwt".into());
    for proof in &bad {
        assert_eq!(
            error(&s.refresh(token, Some(proof)).await),
            (400, "invalid_dpop_proof"),
            "{proof}"
        );
    }
    let two = key
        .proofs(&[ProofClaims::to(&s.htu()), ProofClaims::to(&s.htu())])
        .await;
    assert_eq!(
        error(
            &s.refresh_at(&s.proxy.url, token, two.iter().map(String::as_str))
                .await
        ),
        (400, "invalid_dpop_proof"),
        "two DPoP headers"
    );

    // A proof is good once: replayed on the next refresh it is refused, and a fresh one goes on.
    let proof = key.proof(&s.htu()).await;
    let (status, _, second) = s.refresh(token, Some(&proof)).await;
    assert_eq!(status, 200, "the family is intact: {second}");
    assert_eq!(
        error(&s.refresh(rt(&second), Some(&proof)).await),
        (400, "invalid_dpop_proof"),
        "a replayed proof"
    );
    let (status, _, third) = s
        .refresh(rt(&second), Some(&key.proof(&s.htu()).await))
        .await;
    assert_eq!(status, 200, "{third}");

    if kind == Kind::Redis {
        // Replicas agree: a proof used at one is refused at another.
        let replica = TestProxy::start(&s.config).await;
        replica.wait_ready().await;
        let proof = key.proof(&s.htu()).await;
        let (status, _, fourth) = s.refresh(rt(&third), Some(&proof)).await;
        assert_eq!(status, 200, "{fourth}");
        assert_eq!(
            error(
                &s.refresh_at(&replica.url, rt(&fourth), Some(proof.as_str()))
                    .await
            ),
            (400, "invalid_dpop_proof"),
            "replayed at another replica"
        );
        let fresh = key.proof(&s.htu()).await;
        let (status, _, _) = s
            .refresh_at(&replica.url, rt(&fourth), Some(fresh.as_str()))
            .await;
        assert_eq!(status, 200);
    }
}

/// 200 racing refreshes of one token, each with its own proof: one successor, every answer
/// DPoP-bound to the same key.
async fn racing_refreshes_with_proofs_fork_nothing(kind: Kind) {
    let s = Stack::start(kind, JWT, true).await;
    let key = DpopKey::new("ES256").await;
    let (_, _, login) = s.login(Some(&key)).await;
    let proofs = key.proofs(&vec![ProofClaims::to(&s.htu()); 200]).await;
    let token = rt(&login).to_owned();
    let answers =
        futures_util::future::join_all(proofs.iter().map(|p| s.refresh(&token, Some(p.as_str()))))
            .await;
    let mut successors = std::collections::HashSet::new();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["token_type"], "DPoP");
        let claims = idp::jwt_claims(body["access_token"].as_str().expect("access token"));
        assert_eq!(claims["cnf"]["jkt"], key.jkt.as_str());
        successors.insert(rt(body).to_owned());
    }
    assert_eq!(
        successors.len(),
        1,
        "one successor for 200 racing refreshes"
    );
    let next = successors.into_iter().next().expect("one");
    let (status, _, body) = s.refresh(&next, Some(&key.proof(&s.htu()).await)).await;
    assert_eq!(status, 200, "the one family goes on: {body}");
}

/// `dpop_nonce = true`: a proof without the server's nonce is answered use_dpop_nonce with one
/// in the DPoP-Nonce header; with it, the refresh goes on and the answer carries the next one.
async fn server_nonces_are_required_when_configured(kind: Kind) {
    let s = Stack::start(kind, "dpop_nonce = true", true).await;
    let key = DpopKey::new("ES256").await;
    let (status, _, login) = s.login(Some(&key)).await;
    assert_eq!(status, 200, "{login}");
    let answer = s
        .refresh(rt(&login), Some(&key.proof(&s.htu()).await))
        .await;
    assert_eq!(error(&answer), (400, "use_dpop_nonce"));
    let nonce = answer.1["dpop-nonce"]
        .to_str()
        .expect("a DPoP-Nonce header")
        .to_owned();
    let proof = key
        .proofs(&[ProofClaims {
            nonce: Some(nonce.clone()),
            ..ProofClaims::to(&s.htu())
        }])
        .await
        .remove(0);
    let (status, headers, body) = s.refresh(rt(&login), Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains_key("dpop-nonce"),
        "the answer carries the next nonce"
    );
    // A made-up nonce is refused the same way.
    let forged = key
        .proofs(&[ProofClaims {
            nonce: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            ..ProofClaims::to(&s.htu())
        }])
        .await
        .remove(0);
    assert_eq!(
        error(&s.refresh(rt(&body), Some(&forged)).await),
        (400, "use_dpop_nonce")
    );
}

/// `dpop_bound = "required"` in front of an IdP without DPoP: the family is bound to the key of
/// the proof the client sent with its code; a client that sent none keeps the IdP's own token.
async fn required_binding_binds_bearer_answers_to_the_clients_key(kind: Kind) {
    let s = Stack::start(kind, "dpop_bound = \"required\"", false).await;
    let key = DpopKey::new("ES256").await;
    let (status, _, login) = s.login(Some(&key)).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(
        login["token_type"]
            .as_str()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("bearer"),
        "the IdP does not do DPoP: {login}"
    );
    assert_ne!(rt(&login), s.idp.last_refresh_token().await, "captured");
    assert_eq!(
        error(&s.refresh(rt(&login), None).await),
        (400, "invalid_grant")
    );
    let (status, _, body) = s
        .refresh(rt(&login), Some(&key.proof(&s.htu()).await))
        .await;
    assert_eq!(typed(status, &body), (200, "DPoP"), "{body}");

    let (status, _, unbound) = s.login(None).await;
    assert_eq!(status, 200, "{unbound}");
    assert_eq!(
        rt(&unbound),
        s.idp.last_refresh_token().await,
        "no proof: not captured, the IdP's own refresh token"
    );
}

/// A client that may not be bound (`dpop_bound = "auto"`, the default) gets bearer families from
/// bearer answers, and a proof on refresh binds the access token only: an opaque one says so
/// at introspection (never a bearer token for a DPoP answer).
async fn a_bearer_family_with_a_proof_gets_a_bound_access_token(kind: Kind) {
    let s = Stack::start(kind, "access_token_format = \"opaque\"", false).await;
    let key = DpopKey::new("ES256").await;
    let (_, _, login) = s.login(None).await;
    assert_ne!(rt(&login), s.idp.last_refresh_token().await, "captured");
    let (status, _, plain) = s.refresh(rt(&login), None).await;
    assert_eq!(typed(status, &plain), (200, "bearer"), "{plain}");
    let seen = idp::introspect(&s.proxy.url, plain["access_token"].as_str().expect("at")).await;
    assert_eq!(
        (seen["active"].as_bool(), seen.get("cnf")),
        (Some(true), None),
        "{seen}"
    );
    let (status, _, bound) = s
        .refresh(rt(&plain), Some(&key.proof(&s.htu()).await))
        .await;
    assert_eq!(typed(status, &bound), (200, "DPoP"), "{bound}");
    let seen = idp::introspect(&s.proxy.url, bound["access_token"].as_str().expect("at")).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["token_type"], "DPoP", "{seen}");
    assert_eq!(seen["cnf"]["jkt"], key.jkt.as_str(), "{seen}");
    let (status, _, again) = s.refresh(rt(&bound), None).await;
    assert_eq!(typed(status, &again), (200, "bearer"), "{again}");
}

/// Minted access tokens are JWTs (the IdP's are opaque).
const JWT: &str = "access_token_format = \"jwt\"";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

crate::both_stores!(multi_thread:
    a_bound_login_is_captured_and_every_refresh_needs_its_key,
    racing_refreshes_with_proofs_fork_nothing,
    server_nonces_are_required_when_configured,
    required_binding_binds_bearer_answers_to_the_clients_key,
    a_bearer_family_with_a_proof_gets_a_bound_access_token,
);
