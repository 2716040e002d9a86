//! Capture is as strict as an authorization server: over real sockets, a programmable upstream
//! ([`crate::support::fake_idp`]) sends token answers a real IdP would not, and the proxy must pass
//! them on untouched (the upstream's refresh token, not a proxy one) and count the skip, or
//! capture them with the scope and audience the *upstream* granted. Each case runs on the
//! memory store and on a private redis-server.

use crate::support::StoreKind as Kind;
use crate::support::fake_idp::{FakeIdp, TestKey, payload, unsigned};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use serde_json::{Value, json};

const CLIENT: &str = "www";
const SECRET: &str = "Secr3t!";
const UPSTREAM_RT: &str = "upstream-refresh-token-1";

struct Rig {
    idp: FakeIdp,
    proxy: TestProxy,
    key: TestKey,
    _redis: Option<RedisServer>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A refresh token minted by the proxy: `<22-char family>.<generation>.<4-char key id><64 chars>`.
fn is_proxy_token(t: &str) -> bool {
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() == 3 && parts[0].len() == 22 && parts[2].len() == 68
}

impl Rig {
    async fn start(kind: Kind, tokens: &str) -> Rig {
        Rig::start_with(kind, TestKey::rs256("k1"), tokens).await
    }

    async fn start_with(kind: Kind, key: TestKey, tokens: &str) -> Rig {
        Rig::start_full(kind, key, tokens, "").await
    }

    /// With `upstream` added to the `[upstream]` table.
    async fn start_full(kind: Kind, key: TestKey, tokens: &str, upstream: &str) -> Rig {
        let idp = FakeIdp::start().await;
        idp.set_jwks(json!({"keys": [key.jwk()]}));
        let (redis, store) = kind.start();
        let text = format!(
            "[store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n{tokens}\n\
             [clients.{CLIENT}]\nsecret = \"{SECRET}\"\naccess_token_format = \"jwt\"\n\
             [upstream]\nurl = \"{up}\"\n{upstream}\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.url(),
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        Rig {
            idp,
            proxy,
            key,
            _redis: redis,
        }
    }

    fn issuer(&self) -> String {
        self.idp.url()
    }

    /// Good access-token claims from the fake IdP, with `extra` merged in.
    fn at_claims(&self, extra: Value) -> Value {
        let mut c = json!({
            "iss": self.issuer(), "sub": "alice", "aud": "https://api.example.com",
            "client_id": CLIENT, "iat": now(), "exp": now() + 300, "jti": "at-1",
            "scope": "openid read", "roles": ["reader"],
        });
        merge(&mut c, extra);
        c
    }

    /// Good ID-token claims from the fake IdP, with `extra` merged in.
    fn id_claims(&self, extra: Value) -> Value {
        let mut c = json!({
            "iss": self.issuer(), "sub": "alice", "aud": CLIENT, "iat": now(),
            "exp": now() + 300, "auth_time": now() - 5,
        });
        merge(&mut c, extra);
        c
    }

    /// An authorization-code exchange through the proxy, with `scope` in the request.
    async fn code_exchange(&self, scope: Option<&str>) -> Value {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", "the-code"),
            ("redirect_uri", "http://127.0.0.1/cb"),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let res = reqwest::Client::new()
            .post(format!("{}/token", self.proxy.url))
            .basic_auth(CLIENT, Some(SECRET))
            .form(&form)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 200);
        res.json().await.expect("json")
    }

    /// A refresh grant at the proxy: its status.
    async fn refresh_status(&self, rt: &str) -> u16 {
        reqwest::Client::new()
            .post(format!("{}/token", self.proxy.url))
            .basic_auth(CLIENT, Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }

    /// A refresh grant at the proxy; the answer (200 asserted).
    async fn refresh(&self, rt: &str) -> Value {
        let res = reqwest::Client::new()
            .post(format!("{}/token", self.proxy.url))
            .basic_auth(CLIENT, Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
            .await
            .expect("send");
        let status = res.status();
        let body: Value = res.json().await.expect("json");
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.proxy.admin_url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    async fn skips(&self, reason: &str) -> u64 {
        let prefix = format!("refresh_proxy_capture_skips_total{{reason=\"{reason}\"}} ");
        let metrics = self.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{metrics}"))
            .parse()
            .expect("a count")
    }

    /// Sends `answer` from the upstream for a code exchange and asserts it reached the client
    /// exactly as the upstream gave it, with one more skip for `reason`.
    async fn assert_passed_untouched(&self, what: &str, answer: Value, reason: &str) {
        let before = self.skips(reason).await;
        self.idp.answer_with(answer.clone());
        let got = self.code_exchange(Some("openid read")).await;
        assert_eq!(got, answer, "{what}: the answer is passed on untouched");
        assert_eq!(got["refresh_token"], UPSTREAM_RT, "{what}");
        assert_eq!(
            self.skips(reason).await,
            before + 1,
            "{what}: counted as {reason}"
        );
    }

    /// Sends `answer` and asserts it was captured; the proxy's refresh token.
    async fn assert_captured(&self, what: &str, answer: Value, scope: Option<&str>) -> String {
        self.idp.answer_with(answer);
        let got = self.code_exchange(scope).await;
        let rt = got["refresh_token"].as_str().expect("refresh_token");
        assert!(is_proxy_token(rt), "{what}: captured: {got}");
        rt.to_owned()
    }
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                into.remove(&k);
            } else {
                into.insert(k, v);
            }
        }
    }
}

fn answer(access_token: &str, extra: Value) -> Value {
    let mut a = json!({
        "access_token": access_token,
        "refresh_token": UPSTREAM_RT,
        "token_type": "Bearer",
        "expires_in": 300,
    });
    merge(&mut a, extra);
    a
}

/// Finding: a client chose its own scope. A code exchange asks for `admin payments:write openid`;
/// the upstream's answer has no `scope` (RFC 6749 §5.1 allows that) and its verified access
/// token says `openid read`: the family's scope is `openid read`.
async fn the_granted_scope_is_the_upstreams_not_the_clients(kind: Kind) {
    let r = Rig::start(kind, "").await;
    let at = r.key.sign(&r.at_claims(json!({})));
    r.idp.answer_with(answer(&at, json!({})));
    let got = r.code_exchange(Some("admin payments:write openid")).await;
    let rt = got["refresh_token"].as_str().expect("refresh_token");
    assert!(is_proxy_token(rt), "captured: {got}");
    let refreshed = r.refresh(rt).await;
    assert_eq!(refreshed["scope"], "openid read", "{refreshed}");
    let minted = payload(refreshed["access_token"].as_str().expect("at"));
    assert_eq!(minted["scope"], "openid read", "{minted}");
    assert_eq!(minted["sub"], "alice");
    assert_eq!(minted["roles"], json!(["reader"]), "carried claims");

    // `scp` as an array (Okta, Azure AD style) is read too.
    let at = r
        .key
        .sign(&r.at_claims(json!({"scope": null, "scp": ["read", "write"]})));
    let rt = r
        .assert_captured("scp", answer(&at, json!({})), Some("admin"))
        .await;
    assert_eq!(r.refresh(&rt).await["scope"], "read write");

    // The answer's own scope wins.
    let at = r.key.sign(&r.at_claims(json!({})));
    let rt = r
        .assert_captured(
            "answer scope",
            answer(&at, json!({"scope": "read"})),
            Some("admin"),
        )
        .await;
    assert_eq!(r.refresh(&rt).await["scope"], "read");

    // An opaque access token: introspection says what was granted.
    r.idp
        .introspect_with(json!({"active": true, "sub": "alice", "scope": "profile"}));
    let before = r.idp.introspections();
    let rt = r
        .assert_captured(
            "introspection",
            answer("opaque-at", json!({})),
            Some("admin"),
        )
        .await;
    assert_eq!(r.idp.introspections(), before + 1);
    assert_eq!(r.refresh(&rt).await["scope"], "profile");

    // An opaque access token, a good ID token (the subject is known) and no scope anywhere:
    // introspection is asked for the scope; it has none, so nothing is captured.
    r.idp
        .introspect_with(json!({"active": true, "sub": "alice"}));
    let id = r.key.sign(&r.id_claims(json!({})));
    let before = r.idp.introspections();
    r.assert_passed_untouched(
        "no scope anywhere",
        answer("opaque-at", json!({"id_token": id})),
        "no_scope",
    )
    .await;
    assert_eq!(
        r.idp.introspections(),
        before + 1,
        "introspection was asked"
    );
    // A verified JWT access token without scope, and no scope in the answer.
    let at = r.key.sign(&r.at_claims(json!({"scope": null})));
    r.assert_passed_untouched("JWT without scope", answer(&at, json!({})), "no_scope")
        .await;
}

/// Finding: upstream tokens were read without verification, `alg: none` included. Every
/// token below must fail verification against the upstream's JWKS: the answer passes untouched.
async fn upstream_tokens_that_do_not_verify_are_not_captured(kind: Kind) {
    let r = Rig::start(kind, "").await;
    let good = r.at_claims(json!({}));
    let stranger = TestKey::rs256("k1"); // the JWKS's kid, another key
    let unknown = TestKey::es256("not-in-the-jwks");
    let hs256 = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(json!({"alg":"HS256","kid":"k1"}).to_string()),
            b64.encode(good.to_string())
        );
        // HMAC keyed with the RSA modulus as published: the classic key-confusion attack.
        let n = r.key.jwk()["n"].as_str().expect("n").to_owned();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, n.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64.encode(tag.as_ref()))
    };
    let tampered = {
        let t = r.key.sign(&good);
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[1] = b64.encode(
            r.at_claims(json!({"sub": "mallory", "roles": ["admin"]}))
                .to_string(),
        );
        parts.join(".")
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg none", unsigned(&good)),
        ("HS256 keyed with the public key", hs256),
        (
            "signed by another key under the JWKS's kid",
            stranger.sign(&good),
        ),
        ("tampered payload", tampered),
        (
            "wrong issuer",
            r.key
                .sign(&r.at_claims(json!({"iss": "https://evil.example"}))),
        ),
        (
            "expired",
            r.key
                .sign(&r.at_claims(json!({"exp": now() - 3600, "iat": now() - 7200}))),
        ),
        ("garbage base64", "eyJ!!!.@@@.###".to_owned()),
        (
            "ES256 under the kid of an RSA key (kty does not match alg)",
            TestKey::es256("k1").sign(&good),
        ),
    ];
    for (what, at) in cases {
        r.assert_passed_untouched(what, answer(&at, json!({})), "invalid_token")
            .await;
    }
    // ID tokens are verified too, and must name the client in `aud` (OIDC Core §3.1.3.7).
    let at = r.key.sign(&good);
    for (what, id) in [
        (
            "ID token for another client",
            r.key.sign(&r.id_claims(json!({"aud": "another-client"}))),
        ),
        (
            "ID token without exp",
            r.key.sign(&r.id_claims(json!({"exp": null}))),
        ),
        ("unsigned ID token", unsigned(&r.id_claims(json!({})))),
    ] {
        r.assert_passed_untouched(what, answer(&at, json!({"id_token": id})), "invalid_token")
            .await;
    }

    // A kid the cached JWKS does not know, right after the JWKS was fetched: not captured, and
    // no refetch (at most one per 30 s; the refetch policy itself is unit-tested).
    let fetches = r.idp.jwks_fetches();
    assert_eq!(fetches, 1, "fetched once, on the first capture");
    for what in ["unknown kid", "unknown kid again"] {
        r.assert_passed_untouched(
            what,
            answer(&unknown.sign(&good), json!({})),
            "invalid_token",
        )
        .await;
    }
    assert_eq!(r.idp.jwks_fetches(), fetches, "rate-limited");

    // Good tokens still capture, from the cached JWKS: no fetch per capture.
    let fetches = r.idp.jwks_fetches();
    for _ in 0..3 {
        let id = r
            .key
            .sign(&r.id_claims(json!({"aud": [CLIENT, "other"], "azp": CLIENT})));
        r.assert_captured(
            "good",
            answer(&r.key.sign(&good), json!({"id_token": id})),
            None,
        )
        .await;
    }
    assert_eq!(r.idp.jwks_fetches(), fetches, "the JWKS is cached");
}

/// Good ES256 and EdDSA upstream keys verify end to end (RS256 is every other case's).
async fn es256_and_eddsa_upstream_keys_verify(kind: Kind) {
    for key in [TestKey::es256("ec"), TestKey::eddsa("ed")] {
        let r = Rig::start_with(kind, key, "").await;
        let at = r.key.sign(&r.at_claims(json!({})));
        let id = r.key.sign(&r.id_claims(json!({})));
        let rt = r
            .assert_captured(
                r.key.alg(),
                answer(&at, json!({"id_token": id})),
                Some("admin"),
            )
            .await;
        assert_eq!(r.refresh(&rt).await["scope"], "openid read");
    }
}

/// A JWKS that is corrupt, not JSON or holds only unusable keys: nothing verifies, nothing is
/// captured, nothing panics.
async fn a_bad_jwks_means_no_capture(kind: Kind) {
    for (what, jwks) in [
        ("not JSON", json!("<html>")),
        (
            "over 1 MiB",
            json!({"keys": [], "pad": "x".repeat(2 << 20)}),
        ),
        ("no keys", json!({"keys": []})),
        (
            "an HMAC key",
            json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}),
        ),
        (
            "an encryption key",
            json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "enc", "n": "AQAB", "e": "AQAB"}]}),
        ),
        (
            "garbage members",
            json!({"keys": [{"kty": "RSA", "kid": "k1", "n": "!!", "e": 7}]}),
        ),
    ] {
        let r = Rig::start(kind, "").await;
        r.idp.set_jwks(jwks);
        let at = r.key.sign(&r.at_claims(json!({})));
        let reason = if what == "not JSON" || what == "over 1 MiB" {
            "no_jwks"
        } else {
            "invalid_token"
        };
        r.assert_passed_untouched(what, answer(&at, json!({})), reason)
            .await;
    }
}

/// Finding: sender-constrained tokens were downgraded to bearer ones.
async fn sender_constrained_answers_are_not_captured(kind: Kind) {
    let r = Rig::start(kind, "").await;
    let cnf = json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}});
    let bound = r.key.sign(&r.at_claims(cnf.clone()));
    r.assert_passed_untouched(
        "token_type DPoP with cnf.jkt",
        answer(
            &bound,
            json!({"token_type": "DPoP", "scope": "openid read"}),
        ),
        "sender_constrained",
    )
    .await;
    r.assert_passed_untouched(
        "token_type dpop, opaque",
        answer("opaque-at", json!({"token_type": "dpop", "scope": "read"})),
        "sender_constrained",
    )
    .await;
    r.assert_passed_untouched(
        "Bearer, but cnf in the access token (mTLS-bound, RFC 8705)",
        answer(&bound, json!({"scope": "openid read"})),
        "sender_constrained",
    )
    .await;
    r.idp.introspect_with(json!({"active": true, "sub": "alice", "scope": "read",
                                 "cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}));
    r.assert_passed_untouched(
        "cnf in the introspection answer",
        answer("opaque-at", json!({})),
        "sender_constrained",
    )
    .await;
    r.assert_passed_untouched(
        "a token type the proxy does not know",
        answer("opaque-at", json!({"token_type": "N_A", "scope": "read"})),
        "unsupported_token_type",
    )
    .await;
}

/// Finding: minted access tokens defaulted to `aud` = the client id (an ID token's audience).
async fn minted_access_tokens_never_default_to_the_client_as_audience(kind: Kind) {
    // The upstream access token's aud is carried.
    let r = Rig::start(kind, "").await;
    let at = r.key.sign(&r.at_claims(json!({})));
    let rt = r
        .assert_captured("JWT aud", answer(&at, json!({})), None)
        .await;
    let minted = payload(r.refresh(&rt).await["access_token"].as_str().expect("at"));
    assert_eq!(minted["aud"], "https://api.example.com");

    // An opaque access token and an ID token: introspection's aud …
    let id = r.key.sign(&r.id_claims(json!({})));
    r.idp.introspect_with(
        json!({"active": true, "sub": "alice", "scope": "read", "aud": "urn:resource"}),
    );
    let rt = r
        .assert_captured(
            "introspection aud",
            answer("opaque-at", json!({"id_token": id})),
            None,
        )
        .await;
    let minted = payload(r.refresh(&rt).await["access_token"].as_str().expect("at"));
    assert_eq!(minted["aud"], "urn:resource");

    // … else the upstream issuer (no tokens.audience configured), never the client id.
    let id = r.key.sign(&r.id_claims(json!({})));
    let rt = r
        .assert_captured(
            "no upstream aud",
            answer("opaque-at", json!({"id_token": id, "scope": "read"})),
            None,
        )
        .await;
    let minted = payload(r.refresh(&rt).await["access_token"].as_str().expect("at"));
    assert_eq!(minted["aud"], r.issuer(), "{minted}");

    // … else tokens.audience when configured.
    let r = Rig::start(kind, "audience = \"https://api.configured\"").await;
    let id = r.key.sign(&r.id_claims(json!({})));
    let rt = r
        .assert_captured(
            "tokens.audience",
            answer("opaque-at", json!({"id_token": id, "scope": "read"})),
            None,
        )
        .await;
    let minted = payload(r.refresh(&rt).await["access_token"].as_str().expect("at"));
    assert_eq!(minted["aud"], "https://api.configured");
}

/// An upstream answer over 1 MiB is not read whole to decide capture: it is passed on as it
/// streams, byte for byte, and counted as `too_large` (it used to be a 502). The answer is one
/// the proxy would capture were it smaller: only its size keeps it uncaptured.
#[tokio::test]
async fn an_answer_over_a_mebibyte_passes_through_uncaptured() {
    let r = Rig::start(Kind::Memory, "").await;
    let at = r.key.sign(&r.at_claims(json!({})));
    r.assert_captured("small", answer(&at, json!({})), None)
        .await;
    let big = answer(&at, json!({"pad": "a".repeat(2 * 1024 * 1024)})).to_string();
    for (i, streamed) in [false, true].into_iter().enumerate() {
        if streamed {
            r.idp.answer_raw_streamed("application/json", big.clone());
        } else {
            r.idp.answer_raw("application/json", big.clone());
        }
        let res = reqwest::Client::new()
            .post(format!("{}/token", r.proxy.url))
            .basic_auth(CLIENT, Some(SECRET))
            .form(&[("grant_type", "authorization_code"), ("code", "c")])
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 200, "streamed: {streamed}");
        let got = res.bytes().await.expect("body");
        assert!(got == big.as_bytes(), "streamed: {streamed}: changed");
        assert_eq!(r.skips("too_large").await, i as u64 + 1);
    }
}

/// Back-channel logout from an IdP that sends what oidc-provider does not: Keycloak's
/// `revoke_offline_access` event, a logout by subject alone, and tokens that must be refused
/// (`alg: none`, another `typ`, an unhandled audience). OpenID Connect Back-Channel Logout 1.0
/// §2.6, §2.7.
async fn logout_tokens_from_another_idp(kind: Kind) {
    let r = Rig::start_full(
        kind,
        TestKey::rs256("k1"),
        "",
        "backchannel_logout_path = \"/bc\"",
    )
    .await;
    // Three families: two of session s1 (one of them offline), one of session s2.
    let family = |sid: &str, scope: &str| {
        let at = r.key.sign(&r.at_claims(json!({"scope": scope})));
        let id = r.key.sign(&r.id_claims(json!({"sid": sid})));
        answer(&at, json!({"id_token": id, "scope": scope}))
    };
    let online = r
        .assert_captured("online", family("s1", "openid read"), None)
        .await;
    let offline = r
        .assert_captured("offline", family("s1", "openid offline_access"), None)
        .await;
    let elsewhere = r
        .assert_captured("elsewhere", family("s2", "openid read"), None)
        .await;
    let logout = |extra: Value| {
        let mut c = json!({
            "iss": r.issuer(), "aud": CLIENT, "iat": now(), "exp": now() + 120,
            "jti": format!("j-{}", extra), "sub": "alice", "sid": "s1",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        });
        merge(&mut c, extra);
        c
    };
    let post = |token: String| {
        let url = format!("{}/bc", r.proxy.url);
        async move {
            reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    // Refused, and nothing ended: unsigned, typed as an access token, for another client.
    assert_eq!(post(unsigned(&logout(json!({"jti": "a"})))).await, 400);
    let header = json!({"alg": "RS256", "kid": "k1", "typ": "at+jwt"});
    assert_eq!(
        post(
            r.key
                .sign_with_header(&header, &logout(json!({"jti": "b"})))
        )
        .await,
        400
    );
    assert_eq!(
        post(r.key.sign(&logout(json!({"jti": "c", "aud": "other"})))).await,
        400
    );
    for rt in [&online, &offline, &elsewhere] {
        assert_eq!(r.refresh_status(rt).await, 200);
    }
    // Session s1: the online family ends, the offline one is spared (§2.7).
    assert_eq!(post(r.key.sign(&logout(json!({"jti": "d"})))).await, 200);
    assert_eq!(r.refresh_status(&online).await, 400);
    let offline = r.refresh(&offline).await["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    // Keycloak's revoke_offline_access event ends it too.
    let events = json!({
        "http://schemas.openid.net/event/backchannel-logout": {},
        "revoke_offline_access": true
    });
    assert_eq!(
        post(r.key.sign(&logout(json!({"jti": "e", "events": events})))).await,
        200
    );
    assert_eq!(r.refresh_status(&offline).await, 400);
    // sub without sid: every family of the subject (for this client).
    let elsewhere = r.refresh(&elsewhere).await["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert_eq!(
        post(r.key.sign(&logout(json!({"jti": "f", "sid": null})))).await,
        200
    );
    assert_eq!(r.refresh_status(&elsewhere).await, 400);
}

both_stores!(
    logout_tokens_from_another_idp,
    the_granted_scope_is_the_upstreams_not_the_clients,
    upstream_tokens_that_do_not_verify_are_not_captured,
    es256_and_eddsa_upstream_keys_verify,
    a_bad_jwks_means_no_capture,
    sender_constrained_answers_are_not_captured,
    minted_access_tokens_never_default_to_the_client_as_audience,
);
