//! Capture: the upstream's token-endpoint answer to a handled client, read and rewritten on
//! its way back through the `RefreshGrantLayer` (`layer::capture` and
//! `grant::capture`, over a memory store), then the proxy's refresh of the captured token.
//!
//! The layer runs over a mock upstream in-process: `POST /token` answers the input's token
//! answer, `GET /jwks` the upstream's key set (a key the harness holds), `POST /introspect`
//! the input's introspection answer (or 404), `POST /revoke` 200.
//!
//! Input: one flag byte, then NUL-separated: the token answer (JSON), access-token claims,
//! ID-token claims, an introspection answer. Flag bits 0–1: the client (`www` with Basic,
//! `www` with `client_secret_post`, public `spa` with opaque access tokens, `none` with
//! `refresh_token_ttl = 0`); bit 2: the answer's `access_token` is the access-token claims
//! signed by the upstream's key; bit 3: its `id_token` is the ID-token claims signed; bit 4:
//! those claims get the right `iss`, a future `exp` and (ID token) the client as `aud`;
//! bit 5: the answer is `text/plain`, not JSON; bit 6: introspection answers 200;
//! bit 7: the captured token is then refreshed.
//!
//! Properties:
//! - nothing panics, and the client always gets the upstream's 200;
//! - an answer that is not JSON, not an object or has no string `refresh_token` reaches the
//!   client byte for byte;
//! - for `none`, the answer is the upstream's without its `refresh_token`;
//! - otherwise the answer is either the upstream's byte for byte (not captured), or the same
//!   JSON object but for `refresh_token`, now a proxy token of generation 0;
//! - never captured: a `token_type` other than Bearer (DPoP-bound tokens), an access token whose
//!   verified claims have `cnf`, an answer whose JWTs were not signed by the upstream's key;
//! - the refresh of a captured token is answered by the proxy, never forwarded: 200, a proxy
//!   refresh token of generation 1 in the same family, and for JWT access tokens (and ID tokens
//!   on refresh) a token the proxy's key verifies, naming the proxy's issuer, the client and a
//!   subject.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use refresh_proxy::RefreshGrantLayer;
use refresh_proxy::config::{Config, SigningAlg};
use refresh_proxy::engine::Engine;
use refresh_proxy::internal::mint::jwt::{Signer, jwks};
use refresh_proxy::layer::{Endpoints, RequestBody, ResponseBody};
use refresh_proxy::store::{AnyStore, MemoryStore};
use serde_json::{Map, Value};
use tower::ServiceExt;

const ISSUER: &str = "https://idp.example.com";
const SECRET: &str = "Secr3t!";
const CONFIG: &str = r#"
[upstream]
url = "http://127.0.0.1:9"
discovery = false
issuer = "https://idp.example.com"
token_path = "/token"
revocation_path = "/revoke"
introspection_path = "/introspect"
jwks_path = "/jwks"
subject_claim = "username"

[tokens]
refresh_token_key = "fuzz: a refresh-token key of 32 bytes or more"
signing_alg = "EdDSA"
id_token_signing_alg = "EdDSA"

[clients.www]
secret = "Secr3t!"
id_token_on_refresh = true

[clients.spa]
access_token_format = "opaque"

[clients.none]
secret = "Secr3t!"
refresh_token_ttl = 0
"#;
/// Families opened before the store is replaced (memory stays bounded over long runs).
const FAMILIES_PER_STORE: u32 = 20_000;

/// What the mock upstream answers for the current input.
#[derive(Default)]
struct Scenario {
    token_answer: Bytes,
    json: bool,
    introspection: Option<Bytes>,
    /// A request the proxy should have answered itself reached the upstream.
    forwarded_refresh: bool,
}

type Svc = tower::util::BoxCloneService<
    Request<Full<Bytes>>,
    Response<ResponseBody<Full<Bytes>>>,
    Infallible,
>;

struct Harness {
    rt: tokio::runtime::Runtime,
    upstream_key: Signer,
    scenario: Arc<Mutex<Scenario>>,
    stack: Mutex<(Svc, Arc<Engine>, u32)>,
}

fn build(scenario: &Arc<Mutex<Scenario>>, jwks_body: &Bytes) -> (Svc, Arc<Engine>, u32) {
    let config = Config::from_toml_str(CONFIG, std::path::Path::new("."), std::iter::empty())
        .expect("config");
    let keys = refresh_proxy::app::build_keys(&config).expect("keys");
    let engine = Arc::new(Engine::new(
        AnyStore::Memory(MemoryStore::new()),
        keys,
        config.tokens.access_token_ttl,
        None,
    ));
    let layer = RefreshGrantLayer::builder()
        .endpoints(Endpoints {
            issuer: Some(ISSUER.into()),
            ..refresh_proxy::internal::discovery::from_config(&config.upstream)
        })
        .engine(engine.clone())
        .fallback_issuer(ISSUER)
        .subject_claim("username")
        .build();
    let scenario = scenario.clone();
    let jwks_body = jwks_body.clone();
    let upstream = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let scenario = scenario.clone();
        let jwks_body = jwks_body.clone();
        async move {
            let path = req.uri().path().to_owned();
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let mut s = scenario.lock().expect("scenario");
            let ok = |ct: &str, b: Bytes| {
                Response::builder()
                    .status(200)
                    .header("content-type", ct)
                    .body(Full::new(b))
                    .expect("response")
            };
            let res = match path.as_str() {
                "/token" => {
                    if body.windows(24).any(|w| w == b"grant_type=refresh_token") {
                        s.forwarded_refresh = true;
                    }
                    let ct = if s.json {
                        "application/json"
                    } else {
                        "text/plain"
                    };
                    ok(ct, s.token_answer.clone())
                }
                "/jwks" => ok("application/json", jwks_body),
                "/introspect" => match &s.introspection {
                    Some(b) => ok("application/json", b.clone()),
                    None => Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::new()))
                        .expect("response"),
                },
                _ => ok("application/json", Bytes::from_static(b"{}")),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let svc = tower::ServiceBuilder::new().layer(layer).service(upstream);
    (Svc::new(svc), engine, 0)
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let upstream_key = Signer::generate(SigningAlg::EdDSA);
        let jwks_body = Bytes::from(jwks(&[&upstream_key]).to_string());
        let scenario = Arc::default();
        let stack = Mutex::new(build(&scenario, &jwks_body));
        Harness {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            upstream_key,
            scenario,
            stack,
        }
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims bytes, with the right iss/exp (and aud) when asked, signed by the upstream's key.
fn sign(key: &Signer, claims: &[u8], typ: &str, fix: Option<&str>) -> String {
    if fix.is_some()
        && let Ok(Value::Object(mut c)) = serde_json::from_slice::<Value>(claims)
    {
        c.insert("iss".into(), ISSUER.into());
        c.insert("exp".into(), (now() + 600).into());
        if let Some(aud) = fix.filter(|a| !a.is_empty()) {
            c.insert("aud".into(), aud.into());
        }
        return key.sign(typ, &c);
    }
    key.sign_json(typ, claims)
}

struct Client {
    id: &'static str,
    basic: bool,
    secret: bool,
}

const CLIENTS: [Client; 4] = [
    Client {
        id: "www",
        basic: true,
        secret: true,
    },
    Client {
        id: "www",
        basic: false,
        secret: true,
    },
    Client {
        id: "spa",
        basic: false,
        secret: false,
    },
    Client {
        id: "none",
        basic: true,
        secret: true,
    },
];

fn request(client: &Client, params: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k, v);
    }
    if !client.basic {
        form.append_pair("client_id", client.id);
        if client.secret {
            form.append_pair("client_secret", SECRET);
        }
    }
    let mut req = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.finish())))
        .expect("request");
    if client.basic {
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{SECRET}", client.id))
        );
        req.headers_mut()
            .insert("authorization", basic.parse().expect("header"));
    }
    req
}

async fn call(svc: Svc, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let res = svc.oneshot(req).await.expect("infallible");
    let status = res.status();
    (
        status,
        res.into_body().collect().await.expect("body").to_bytes(),
    )
}

fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    object(&B64.decode(payload).ok()?)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let answer = parts.next().unwrap_or_default();
    let at_claims = parts.next().unwrap_or_default();
    let id_claims = parts.next().unwrap_or_default();
    let introspection = parts.next();
    let client = &CLIENTS[usize::from(flags & 3)];
    let h = harness();

    // The upstream's answer, with tokens its key signed when asked.
    let mut upstream_answer = Bytes::copy_from_slice(answer);
    let mut signed_access: Option<String> = None;
    if flags & 12 != 0
        && let Some(mut o) = object(answer)
    {
        if flags & 4 != 0 {
            let fix = (flags & 16 != 0).then_some("");
            let t = sign(&h.upstream_key, at_claims, "at+jwt", fix);
            o.insert("access_token".into(), t.clone().into());
            signed_access = Some(t);
        }
        if flags & 8 != 0 {
            let fix = (flags & 16 != 0).then_some(client.id);
            o.insert(
                "id_token".into(),
                sign(&h.upstream_key, id_claims, "JWT", fix).into(),
            );
        }
        upstream_answer = Bytes::from(serde_json::to_vec(&o).expect("JSON"));
    }
    let json = flags & 32 == 0;
    *h.scenario.lock().expect("scenario") = Scenario {
        token_answer: upstream_answer.clone(),
        json,
        introspection: (flags & 64 != 0)
            .then(|| Bytes::copy_from_slice(introspection.unwrap_or_default())),
        forwarded_refresh: false,
    };

    let mut stack = h.stack.lock().expect("stack");
    if stack.2 >= FAMILIES_PER_STORE {
        let jwks_body = Bytes::from(jwks(&[&h.upstream_key]).to_string());
        *stack = build(&h.scenario, &jwks_body);
    }
    let (svc, engine) = (stack.0.clone(), stack.1.clone());
    let req = request(
        client,
        &[("grant_type", "authorization_code"), ("code", "c")],
    );
    let (status, body) = h.rt.block_on(call(svc.clone(), req));
    assert_eq!(status, StatusCode::OK, "the upstream's 200");

    let up = object(&upstream_answer).filter(|_| json);
    let Some(up) = up.filter(|o| matches!(o.get("refresh_token"), Some(Value::String(_)))) else {
        assert_eq!(body, upstream_answer, "passed on byte for byte");
        return;
    };
    let out = object(&body).expect("a JSON object");
    let without_rt = |o: &Map<String, Value>| {
        let mut o = o.clone();
        o.shift_remove("refresh_token");
        o
    };
    if client.id == "none" {
        assert_eq!(
            out,
            without_rt(&up),
            "refresh_token_ttl = 0: the refresh token removed"
        );
        return;
    }
    if body == upstream_answer {
        return; // Not captured.
    }
    // Captured.
    stack.2 += 1;
    drop(stack);
    assert_eq!(
        without_rt(&out),
        without_rt(&up),
        "only refresh_token changes"
    );
    let rt = out["refresh_token"].as_str().expect("a string").to_owned();
    let keys = engine.keys();
    let family = {
        let parsed = keys.refresh.parse(&rt).expect("a proxy refresh token");
        assert_eq!(parsed.generation, 0);
        parsed.family.to_owned()
    };
    assert_ne!(Some(&Value::String(rt.clone())), up.get("refresh_token"));
    if let Some(t) = up.get("token_type") {
        let t = t.as_str().expect("captured: token_type is a string");
        assert!(
            t.eq_ignore_ascii_case("bearer"),
            "captured with token_type {t:?}"
        );
    }
    if let Some(Value::String(at)) = up.get("access_token")
        && at.split('.').count() == 3
    {
        assert_eq!(
            Some(at),
            signed_access.as_ref(),
            "captured a JWT the upstream did not sign"
        );
        let claims = jwt_claims(at).expect("claims");
        assert!(
            !claims.contains_key("cnf"),
            "captured a sender-constrained access token"
        );
    }

    if flags & 128 == 0 {
        return;
    }
    let req = request(
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
    );
    let (status, body) = h.rt.block_on(call(svc, req));
    assert!(
        !h.scenario.lock().expect("scenario").forwarded_refresh,
        "a refresh was forwarded"
    );
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer = object(&body).expect("a JSON answer");
    let next = answer["refresh_token"].as_str().expect("refresh_token");
    let parsed = keys.refresh.parse(next).expect("a proxy refresh token");
    assert_eq!((parsed.family, parsed.generation), (family.as_str(), 1));
    assert!(answer["scope"].is_string());
    let at = answer["access_token"].as_str().expect("access_token");
    let nonempty = |c: &Map<String, Value>, k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut subject = None;
    if at.split('.').count() == 3 {
        let claims = keys.signers[0]
            .verify(at, "at+jwt")
            .expect("our access token verifies");
        assert_eq!(claims.get("iss"), Some(&Value::from(ISSUER)));
        assert_eq!(claims.get("client_id"), Some(&Value::from(client.id)));
        assert!(!claims.contains_key("cnf"));
        subject = Some(nonempty(&claims, "sub").expect("a subject"));
    }
    if let Some(id) = answer.get("id_token") {
        let id = id.as_str().expect("id_token");
        let claims = keys.id_signers[0]
            .verify(id, "JWT")
            .expect("our ID token verifies");
        assert_eq!(claims.get("iss"), Some(&Value::from(ISSUER)));
        let sub = nonempty(&claims, "sub").expect("OIDC Core §2: an ID token names its subject");
        if let Some(subject) = subject {
            assert_eq!(
                sub, subject,
                "the ID token and the access token name one subject"
            );
        }
    }
});
