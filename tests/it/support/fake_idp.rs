//! A programmable upstream IdP for capture tests, in-process on a free port: the test decides
//! what its token endpoint answers, which keys its JWKS holds and what its introspection
//! endpoint says, so it can send answers a real IdP would not (unsigned tokens, foreign keys,
//! DPoP-bound tokens, wrong audiences).
//!
//! Paths:
//! - `GET /.well-known/openid-configuration`: issuer = [`FakeIdp::url`], and the endpoints
//!   below on this server;
//! - `GET /jwks`: the JWK Set set with [`FakeIdp::set_jwks`] (counted: [`FakeIdp::jwks_fetches`]);
//! - `POST /token`: the JSON set with [`FakeIdp::answer_with`], whatever the request (or the
//!   bytes and content type set with [`FakeIdp::answer_raw`]: huge, not JSON, not UTF-8);
//! - `POST /introspect`: the JSON set with [`FakeIdp::introspect_with`] (default
//!   `{"active": false}`; counted: [`FakeIdp::introspections`]);
//! - `POST /revoke`: 200 (counted: [`FakeIdp::revocations`]);
//! - any `GET` path given a document with [`FakeIdp::serve_document`] (e.g. RFC 8414 metadata,
//!   or an OIDC discovery document that replaces the default one); a path set to `None` is 404.
//!
//! [`TestKey`] signs the test's upstream tokens with aws-lc-rs directly (not the proxy's
//! signer), for RS256, ES256 and EdDSA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
struct State {
    jwks: Value,
    token_answer: Value,
    /// Instead of `token_answer`: a content type and body as they are, with a Content-Length
    /// (`false`) or streamed in 64 KiB chunks without one (`true`).
    token_raw: Option<(String, Bytes, bool)>,
    introspection: Value,
    jwks_fetches: u64,
    introspections: u64,
    revocations: u64,
    /// Documents served at GET paths, before the defaults (`None`: 404).
    documents: std::collections::HashMap<String, Option<Value>>,
}

pub struct FakeIdp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeIdp {
    pub async fn start() -> FakeIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake IdP");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            jwks: json!({"keys": []}),
            token_answer: json!({"error": "invalid_grant"}),
            token_raw: None,
            introspection: json!({"active": false}),
            jwks_fetches: 0,
            introspections: 0,
            revocations: 0,
            documents: std::collections::HashMap::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(req, addr, state.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeIdp { addr, state, task }
    }

    /// The issuer and base URL: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().expect("state").jwks = jwks;
    }

    /// What `POST /token` answers (HTTP 200, `application/json`).
    pub fn answer_with(&self, answer: Value) {
        let mut state = self.state.lock().expect("state");
        state.token_answer = answer;
        state.token_raw = None;
    }

    /// What `POST /token` answers: HTTP 200 with this content type and body, byte for byte.
    pub fn answer_raw(&self, content_type: &str, body: impl Into<Bytes>) {
        self.state.lock().expect("state").token_raw =
            Some((content_type.to_owned(), body.into(), false));
    }

    /// As [`FakeIdp::answer_raw`], the body streamed in 64 KiB chunks without a Content-Length.
    pub fn answer_raw_streamed(&self, content_type: &str, body: impl Into<Bytes>) {
        self.state.lock().expect("state").token_raw =
            Some((content_type.to_owned(), body.into(), true));
    }

    /// What `POST /introspect` answers.
    pub fn introspect_with(&self, answer: Value) {
        self.state.lock().expect("state").introspection = answer;
    }

    /// Serves `doc` at `GET path` (`None`: 404), instead of whatever was there.
    pub fn serve_document(&self, path: &str, doc: Option<Value>) {
        self.state
            .lock()
            .expect("state")
            .documents
            .insert(path.to_owned(), doc);
    }

    /// `POST /revoke` requests that reached this upstream.
    pub fn revocations(&self) -> u64 {
        self.state.lock().expect("state").revocations
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.lock().expect("state").jwks_fetches
    }

    pub fn introspections(&self) -> u64 {
        self.state.lock().expect("state").introspections
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

async fn handle(
    req: Request<Incoming>,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Read (and drop) the body so the connection stays usable.
    let _ = req.into_body().collect().await;
    let base = format!("http://{addr}");
    let mut state = state.lock().expect("state");
    if method == Method::GET
        && let Some(doc) = state.documents.get(&path)
    {
        return Ok(match doc {
            Some(doc) => json_response(StatusCode::OK, doc),
            None => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        });
    }
    Ok(match (method, path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration") => json_response(
            StatusCode::OK,
            &json!({
                "issuer": base,
                "token_endpoint": format!("{base}/token"),
                "revocation_endpoint": format!("{base}/revoke"),
                "introspection_endpoint": format!("{base}/introspect"),
                "jwks_uri": format!("{base}/jwks"),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            }),
        ),
        (Method::GET, "/jwks") => {
            state.jwks_fetches += 1;
            json_response(StatusCode::OK, &state.jwks)
        }
        (Method::POST, "/token") => match &state.token_raw {
            Some((content_type, body, streamed)) => {
                let body = if *streamed {
                    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = body
                        .chunks(64 * 1024)
                        .map(|c| Ok(Frame::data(body.slice_ref(c))))
                        .collect();
                    BoxBody::new(StreamBody::new(futures_util::stream::iter(chunks)))
                } else {
                    Full::new(body.clone()).boxed()
                };
                Response::builder()
                    .header("content-type", content_type.as_str())
                    .body(body)
                    .expect("valid response")
            }
            None => json_response(StatusCode::OK, &state.token_answer),
        },
        (Method::POST, "/introspect") => {
            state.introspections += 1;
            json_response(StatusCode::OK, &state.introspection)
        }
        (Method::POST, "/revoke") => {
            state.revocations += 1;
            json_response(StatusCode::OK, &json!({}))
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    })
}

/// A signing key of the fake IdP's.
pub enum TestKey {
    Rs256(RsaKeyPair, String),
    Es256(EcdsaKeyPair, String),
    EdDsa(Ed25519KeyPair, String),
}

impl TestKey {
    pub fn rs256(kid: &str) -> TestKey {
        TestKey::Rs256(
            RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key"),
            kid.to_owned(),
        )
    }

    pub fn es256(kid: &str) -> TestKey {
        TestKey::Es256(
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key"),
            kid.to_owned(),
        )
    }

    pub fn eddsa(kid: &str) -> TestKey {
        TestKey::EdDsa(
            Ed25519KeyPair::generate().expect("Ed25519 key"),
            kid.to_owned(),
        )
    }

    pub fn kid(&self) -> &str {
        match self {
            TestKey::Rs256(_, k) | TestKey::Es256(_, k) | TestKey::EdDsa(_, k) => k,
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Rs256(..) => "RS256",
            TestKey::Es256(..) => "ES256",
            TestKey::EdDsa(..) => "EdDSA",
        }
    }

    /// The public JWK (RFC 7517), with `kid`, `alg` and `use`.
    pub fn jwk(&self) -> Value {
        let mut jwk = match self {
            TestKey::Rs256(kp, _) => {
                let public = kp.public_key();
                json!({
                    "kty": "RSA",
                    "n": B64.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(public.exponent().big_endian_without_leading_zero()),
                })
            }
            TestKey::Es256(kp, _) => {
                let point = kp.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256",
                       "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
            }
            TestKey::EdDsa(kp, _) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(kp.public_key().as_ref())})
            }
        };
        jwk["kid"] = json!(self.kid());
        jwk["alg"] = json!(self.alg());
        jwk["use"] = json!("sig");
        jwk
    }

    /// A JWS compact token of `claims` with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "kid": self.kid(), "typ": "JWT"}),
            claims,
        )
    }

    /// A JWS compact token with the header given as is (signed with this key whatever it says).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            TestKey::Rs256(kp, _) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA sign");
                sig
            }
            TestKey::Es256(kp, _) => kp
                .sign(&rng, input.as_bytes())
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
            TestKey::EdDsa(kp, _) => kp.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", B64.encode(signature))
    }
}

/// An unsigned JWT (`alg: none`, RFC 7519 §6): header and payload, empty signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        B64.encode(claims.to_string())
    )
}

/// The payload of a JWT, unverified (for reading the proxy's minted tokens in tests).
pub fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&B64.decode(part).expect("base64url")).expect("JSON payload")
}
