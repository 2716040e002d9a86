//! OpenTelemetry traces (docs/operations.md, "Traces"), end to end: the real binary exports
//! to an OTLP/HTTP receiver in this rig (its protobuf decoded with `opentelemetry-proto`),
//! in front of the real IdP through a relay that records the `traceparent` of every request
//! the IdP gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::support::echo::{EchoServer, Seen};
use crate::support::idp::{self, ClientAuth, CodeFlow, Idp, IdpOptions, REDIRECT_URI};
use crate::support::proxy::ProxyProcess;
use crate::support::redis::RedisServer;

const WWW: &str = "www";
const SECRET: &str = "Secr3t!";

// ---------------------------------------------------------------------------------------------
// The rig: an OTLP receiver and a recording relay.

/// What the receiver got: every span, and the resource attributes of each export.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resources: Vec<Vec<KeyValue>>,
    posts: usize,
}

/// Accepts `POST /v1/traces` (OTLP/HTTP, protobuf) and keeps what it decodes.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Received>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got = Arc::new(Mutex::new(Received::default()));
        let shared = got.clone();
        let addr = serve(move |req: Request<Incoming>| {
            let got = shared.clone();
            async move {
                let ok = req.method() == hyper::Method::POST
                    && req.uri().path() == "/v1/traces"
                    && req
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v == "application/x-protobuf");
                let body = req.into_body().collect().await.expect("body").to_bytes();
                if !ok {
                    return status(400);
                }
                let decoded = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut got = got.lock().expect("lock");
                got.posts += 1;
                for rs in decoded.resource_spans {
                    got.resources
                        .push(rs.resource.map(|r| r.attributes).unwrap_or_default());
                    for ss in rs.scope_spans {
                        got.spans.extend(ss.spans);
                    }
                }
                status(200)
            }
        })
        .await;
        Receiver { addr, got }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.got.lock().expect("lock").spans.clone()
    }
}

/// A request the IdP got through the relay: `METHOD path`, its `traceparent`, its
/// `tracestate`.
type Hop = (String, Option<String>, Option<String>);

/// An HTTP relay in front of the IdP that records each request's `traceparent`.
struct RecordingRelay {
    addr: SocketAddr,
    hops: Arc<Mutex<Vec<Hop>>>,
}

impl RecordingRelay {
    async fn start(target: String) -> RecordingRelay {
        let hops = Arc::new(Mutex::new(Vec::new()));
        let shared = hops.clone();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let addr = serve(move |req: Request<Incoming>| {
            let (hops, client, target) = (shared.clone(), client.clone(), target.clone());
            async move {
                let (parts, body) = req.into_parts();
                let header = |name| {
                    parts
                        .headers
                        .get(name)
                        .map(|v: &http::HeaderValue| v.to_str().expect("ascii").to_owned())
                };
                hops.lock().expect("lock").push((
                    format!("{} {}", parts.method, parts.uri.path()),
                    header("traceparent"),
                    header("tracestate"),
                ));
                let body = body.collect().await.expect("body").to_bytes();
                let mut out = client.request(
                    parts.method.clone(),
                    format!("{target}{}", parts.uri.path_and_query().expect("target")),
                );
                for (name, value) in &parts.headers {
                    if name != "host" && name != "content-length" {
                        out = out.header(name, value);
                    }
                }
                let res = out.body(body).send().await.expect("the IdP answers");
                let mut back = Response::builder().status(res.status());
                for (name, value) in res.headers() {
                    if name != "content-length" && name != "transfer-encoding" {
                        back = back.header(name, value);
                    }
                }
                let bytes = res.bytes().await.expect("the IdP's body");
                Ok::<_, Infallible>(back.body(Full::new(bytes)).expect("response"))
            }
        })
        .await;
        RecordingRelay { addr, hops }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hops(&self) -> Vec<Hop> {
        self.hops.lock().expect("lock").clone()
    }
}

fn status(code: u16) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .expect("response"))
}

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1) on this runtime; returns the address.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Reading spans.

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> String {
    let mut buf = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut buf).expect("random");
    hex(&buf)
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

/// Every string a span carries: name, attribute keys and values, events and links.
fn strings_of(span: &Span) -> Vec<String> {
    let mut all = vec![span.name.clone()];
    let mut kvs: Vec<&KeyValue> = span.attributes.iter().collect();
    for event in &span.events {
        all.push(event.name.clone());
        kvs.extend(event.attributes.iter());
    }
    for link in &span.links {
        kvs.extend(link.attributes.iter());
    }
    if let Some(status) = &span.status {
        all.push(status.message.clone());
    }
    for kv in kvs {
        all.push(kv.key.clone());
        all.push(text(&kv.value));
    }
    all
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
        .collect()
}

/// The one server span of the trace `trace_id` (hex).
fn server_span<'a>(spans: &'a [Span], trace_id: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32 && hex(&s.trace_id) == trace_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "server spans of trace {trace_id}: {found:#?}"
    );
    found[0]
}

/// The `traceparent` the IdP got for `forward` span `span`.
fn traceparent_of(span: &Span) -> String {
    format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
}

/// A refresh in a new client trace: (trace id, the client's span id, the new refresh token,
/// the access token).
async fn traced_refresh(
    client: &reqwest::Client,
    proxy: &str,
    refresh_token: &str,
) -> (String, String, String, String) {
    let (trace, parent) = (random_hex(16), random_hex(8));
    let res = client
        .post(format!("{proxy}/token"))
        .basic_auth(WWW, Some(SECRET))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .header("tracestate", "vendor=opaque")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .expect("refresh");
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.expect("json");
    let field = |name| idp::str_field(&answer, name).to_owned();
    (trace, parent, field("refresh_token"), field("access_token"))
}

// ---------------------------------------------------------------------------------------------

/// Capture (code flow against the real IdP), refreshes with a client `traceparent`, an upstream
/// check and an upstream revocation, all exported and linked; the spans flushed on SIGTERM;
/// no token, secret or code anywhere in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_clients_trace_and_reach_the_upstream() {
    let receiver = Receiver::start().await;
    let port = crate::support::free_port();
    let proxy_url = format!("http://127.0.0.1:{port}");
    let idp = Idp::start_with(IdpOptions {
        issuer: Some(proxy_url.clone()),
        ..IdpOptions::default()
    })
    .await;
    let relay = RecordingRelay::start(idp.base_url.clone()).await;
    let redis = RedisServer::start();
    let dir = crate::support::temp_dir("tracing");
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\ndrain_delay = 0\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\nupstream_check_interval = 1\n\
             [upstream]\nurl = \"{up}\"\n",
            store = redis.url(),
            key = crate::support::TEST_REFRESH_KEY,
            up = relay.url(),
        ),
    )
    .expect("config");
    let endpoint = receiver.endpoint();
    let log_path = dir.join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut proxy = ProxyProcess::spawn_full(
        config_path,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Nothing is sent before the shutdown's flush: that flush is under test too.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ],
        port,
        log.into(),
    );
    proxy.wait_ready().await;

    // Capture: the code flow through the proxy, the code redeemed by this test.
    let flow = CodeFlow::www("openid offline_access");
    let (verifier, code) = idp::authorize(&proxy.url, &flow).await;
    let (status, tokens) = idp::token_request(
        &proxy.url,
        WWW,
        Some(SECRET),
        ClientAuth::Basic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let first_refresh = idp::str_field(&tokens, "refresh_token").to_owned();
    let upstream_refresh = idp.last_refresh_token().await;
    // A second capture without `openid`: no ID token, an opaque access token, so capture asks
    // the IdP's introspection endpoint who the subject is.
    let plain = idp::code_flow(&proxy.url, &CodeFlow::www("offline_access")).await;
    let plain_refresh = idp::str_field(&plain, "refresh_token").to_owned();
    let plain_upstream_refresh = idp.last_refresh_token().await;

    // A refresh the proxy answers, in the client's trace.
    let client = reqwest::Client::new();
    let (trace_a, parent_a, second_refresh, access_a) =
        traced_refresh(&client, &proxy.url, &first_refresh).await;
    // Past upstream_check_interval: this refresh first asks the IdP (the upstream check).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (trace_b, parent_b, third_refresh, access_b) =
        traced_refresh(&client, &proxy.url, &second_refresh).await;

    // The client revokes: the family ends, and its upstream token is revoked at the IdP.
    assert_eq!(
        idp::revoke(&proxy.url, WWW, SECRET, &third_refresh).await,
        200
    );
    let revoked = idp
        .wait_inactive(&upstream_refresh, Duration::from_secs(10))
        .await;
    assert!(revoked, "the upstream refresh token was not revoked");

    assert!(
        receiver.spans().is_empty(),
        "spans were sent before the shutdown (OTEL_BSP_SCHEDULE_DELAY is 10 minutes)"
    );
    proxy.signal("TERM");
    let exit = proxy.wait_exit(Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    let spans = receiver.spans();
    assert!(!spans.is_empty(), "no span arrived");
    let got = receiver.got.lock().expect("lock");
    assert!(
        got.resources.iter().all(|r| r
            .iter()
            .any(|kv| kv.key == "service.name" && text(&kv.value) == "refresh-proxy")),
        "service.name: {:?}",
        got.resources
    );
    drop(got);

    // The first refresh: the client's trace continued, its span the server span's parent.
    let server_a = server_span(&spans, &trace_a);
    assert_eq!(hex(&server_a.parent_span_id), parent_a);
    assert_eq!(server_a.name, "POST");
    for (key, want) in [
        ("http.request.method", "POST"),
        ("url.path", "/token"),
        ("http.response.status_code", "200"),
        ("oauth.grant_type", "refresh_token"),
        ("oauth.client_id", WWW),
    ] {
        assert_eq!(attr(server_a, key).as_deref(), Some(want), "{key}");
    }
    for name in ["client_authentication", "store.redeem", "mint"] {
        assert_eq!(
            children(&spans, server_a, name).len(),
            1,
            "{name} under the refresh's server span"
        );
    }
    assert!(
        children(&spans, server_a, "upstream.check").is_empty(),
        "no check was due on the first refresh"
    );

    // The second refresh: the upstream check, and the IdP got the proxy's traceparent for it.
    let server_b = server_span(&spans, &trace_b);
    assert_eq!(hex(&server_b.parent_span_id), parent_b);
    let check = children(&spans, server_b, "upstream.check");
    assert_eq!(
        check.len(),
        1,
        "one upstream.check under the second refresh"
    );
    let forward = children(&spans, check[0], "forward");
    assert_eq!(forward.len(), 1, "the check's request to the IdP");
    assert_eq!(forward[0].kind, SpanKind::Client as i32);
    let hops = relay.hops();
    let want = traceparent_of(forward[0]);
    assert!(
        hops.iter().any(|(hop, tp, ts)| hop == "POST /token"
            && tp.as_deref() == Some(want.as_str())
            && ts.as_deref() == Some("vendor=opaque")),
        "the IdP did not get the check's traceparent {want} and the client's tracestate: \
         {hops:#?}"
    );

    // Capture: under the code grant's server span, with the JWKS fetch for the ID token; the
    // code exchange forwarded with the proxy's traceparent.
    let code_server: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.kind == SpanKind::Server as i32
                && attr(s, "oauth.grant_type").as_deref() == Some("authorization_code")
        })
        .collect();
    assert_eq!(code_server.len(), 2, "two code grants");
    let captures: Vec<&Span> = code_server
        .iter()
        .flat_map(|server| children(&spans, server, "capture"))
        .collect();
    assert_eq!(captures.len(), 2, "one capture span per code grant");
    // One fetched the IdP's JWKS for the ID token, the other introspected.
    let with = |name| {
        captures
            .iter()
            .filter(|c| children(&spans, c, name).len() == 1)
            .count()
    };
    assert_eq!(with("upstream.jwks"), 1, "one JWKS fetch, under a capture");
    assert_eq!(
        with("capture.introspection"),
        1,
        "one introspection, under a capture"
    );
    let introspection = named(&spans, "capture.introspection");
    assert_eq!(introspection.len(), 1);
    assert_eq!(children(&spans, introspection[0], "forward").len(), 1);
    for server in &code_server {
        assert_eq!(attr(server, "oauth.client_id").as_deref(), Some(WWW));
    }
    let code_server = code_server
        .into_iter()
        .find(|s| {
            children(&spans, s, "capture")
                .iter()
                .any(|c| children(&spans, c, "upstream.jwks").len() == 1)
        })
        .expect("the openid capture");
    let exchange = children(&spans, code_server, "forward");
    assert_eq!(exchange.len(), 1, "the code exchange, forwarded");
    let want = traceparent_of(exchange[0]);
    assert!(
        hops.iter()
            .any(|(_, tp, _)| tp.as_deref() == Some(want.as_str())),
        "the IdP did not get the code exchange's traceparent {want}"
    );

    // The revocation at the upstream: a span with its request, whose traceparent the IdP got.
    let revocation = named(&spans, "upstream.revocation");
    assert_eq!(revocation.len(), 1);
    assert_eq!(attr(revocation[0], "outcome").as_deref(), Some("revoked"));
    let forward = children(&spans, revocation[0], "forward");
    assert!(!forward.is_empty(), "the revocation's request");
    let want = traceparent_of(forward[0]);
    assert!(
        hops.iter()
            .any(|(hop, tp, _)| hop.ends_with("/token/revocation")
                && tp.as_deref() == Some(want.as_str())),
        "the IdP did not get the revocation's traceparent {want}: {hops:#?}"
    );

    // Nothing secret in any span: names, attributes, events, links, statuses.
    let secrets = [
        ("the client secret", SECRET.to_owned()),
        ("the code", code.clone()),
        ("the code verifier", verifier.clone()),
        ("the upstream's refresh token", upstream_refresh.clone()),
        (
            "the upstream's access token",
            idp::str_field(&tokens, "access_token").to_owned(),
        ),
        ("the first refresh token", first_refresh.clone()),
        ("the second refresh token", second_refresh.clone()),
        ("the third refresh token", third_refresh.clone()),
        ("an access token", access_a.clone()),
        ("an access token", access_b.clone()),
        ("a refresh token", plain_refresh.clone()),
        ("an upstream refresh token", plain_upstream_refresh.clone()),
        (
            "an access token",
            idp::str_field(&plain, "access_token").to_owned(),
        ),
    ];
    let mut scanned = 0;
    for span in &spans {
        for s in strings_of(span) {
            scanned += 1;
            for (what, secret) in &secrets {
                assert!(
                    !s.contains(secret.as_str()),
                    "{what} is in span {} ({s})",
                    span.name
                );
            }
            assert!(
                !s.to_ascii_lowercase().starts_with("basic "),
                "an Authorization header in span {}",
                span.name
            );
        }
    }
    assert!(scanned > 50, "{scanned} strings scanned");

    // The log is what it is without traces: the proxy's spans never show in it (no span
    // fields on its lines), even at level debug.
    let log = std::fs::read_to_string(&log_path).expect("log");
    let mut access_lines = 0;
    for line in log.lines() {
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            json.get("span").is_none() && json.get("spans").is_none(),
            "a log line carries a span: {line}"
        );
        access_lines += usize::from(json["message"] == "request");
    }
    assert!(access_lines >= 4, "{access_lines} access log lines");
    assert!(log.contains("traces: OTLP export on"));
}

/// With no OTEL_* variable (and with OTEL_SDK_DISABLED=true beside an endpoint), nothing is
/// exported and the client's trace headers reach the upstream as they were sent.
#[tokio::test]
async fn without_otel_variables_nothing_is_sent_and_traceparent_passes_unchanged() {
    let receiver = Receiver::start().await;
    let echo = EchoServer::start().await;
    let endpoint = receiver.endpoint();
    let cases: [&[(&str, &str)]; 2] = [
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    ];
    for env in cases {
        let dir = crate::support::temp_dir("tracing-off");
        let config_path = dir.join("config.toml");
        let config = format!(
            "[server]\ndrain_delay = 0\n{}",
            crate::support::proxy::config(&echo.url(), "")
        );
        std::fs::write(&config_path, config).expect("config");
        let mut proxy = ProxyProcess::spawn_with(config_path, env);
        proxy.wait_ready().await;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
        let seen: Seen = reqwest::Client::new()
            .get(format!("{}/anything", proxy.url))
            .header("traceparent", traceparent)
            .header("tracestate", tracestate)
            .send()
            .await
            .expect("forwarded")
            .json()
            .await
            .expect("the echo's JSON");
        assert_eq!(seen.header("traceparent"), Some(traceparent), "{env:?}");
        assert_eq!(seen.header("tracestate"), Some(tracestate), "{env:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.signal("TERM");
        assert!(proxy.wait_exit(Duration::from_secs(30)).await.is_some());
    }
    assert_eq!(
        receiver.got.lock().expect("lock").posts,
        0,
        "something was exported"
    );
}

/// An OTLP protocol the proxy does not speak stops it at start (and check-config says why),
/// rather than tracing nothing quietly.
#[test]
fn an_unsupported_protocol_is_refused_at_start() {
    let dir = crate::support::temp_dir("tracing-grpc");
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        crate::support::proxy::config(
            "http://127.0.0.1:9",
            "discovery = false\ntoken_path = \"/token\"\n",
        ),
    )
    .expect("config");
    let mut env: HashMap<&str, &str> = HashMap::new();
    env.insert("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
    env.insert("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    for args in [&["check-config"][..], &[][..]] {
        let out = Command::new(crate::support::proxy::binary())
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .envs(env.iter())
            .env("REFRESH_PROXY_SERVER__LISTEN", "127.0.0.1:0")
            .env("REFRESH_PROXY_SERVER__ADMIN_LISTEN", "127.0.0.1:0")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: only http/protobuf"),
            "{args:?}: {stderr}"
        );
    }
}
