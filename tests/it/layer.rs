//! The `RefreshGrantLayer` over a recording inner service (`tower::ServiceExt::oneshot`):
//! what it answers itself, and what it passes on, with which body.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use refresh_proxy::RefreshGrantLayer;
use refresh_proxy::layer::{Endpoints, RequestBody, ResponseBody};
use tower::{Service, ServiceBuilder, ServiceExt};

type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;

/// The layer over a recording service, as the tests see it.
trait TestService:
    Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Full<Bytes>>>, Error = Infallible>
{
}
impl<S> TestService for S where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        >
{
}

/// A layer over an inner service that records each request's path and whole body.
fn stack(limit: usize) -> (impl TestService, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let layer = RefreshGrantLayer::builder()
        .endpoints(Endpoints {
            token_path: Some("/oauth/token".into()),
            ..Endpoints::default()
        })
        .max_body_bytes(limit)
        .expect("valid limit")
        .build();
    let service = ServiceBuilder::new().layer(layer).service_fn(
        move |req: Request<RequestBody<Full<Bytes>>>| {
            let record = record.clone();
            async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.expect("body").to_bytes();
                record.lock().expect("lock").push((path, body));
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner"))))
            }
        },
    );
    (service, seen)
}

fn token_request(content_type: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post("/oauth/token")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

async fn json(res: Response<ResponseBody<Full<Bytes>>>) -> serde_json::Value {
    let body = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).expect("json")
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_valid_token_request_is_passed_on_with_its_body_intact() {
    let (svc, seen) = stack(4096);
    let body = b"grant_type=authorization_code&code=abc&redirect_uri=http%3A%2F%2Fx";
    let res = svc
        .oneshot(token_request(
            "application/x-www-form-urlencoded;charset=UTF-8",
            body,
        ))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        seen.lock().expect("lock").as_slice(),
        [("/oauth/token".to_owned(), Bytes::from_static(body))]
    );
}

#[tokio::test]
async fn a_repeated_parameter_is_invalid_request_and_not_passed_on() {
    let (svc, seen) = stack(4096);
    let res = svc
        .oneshot(token_request(
            FORM,
            b"grant_type=refresh_token&scope=a&scope=b",
        ))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["pragma"], "no-cache");
    let body = json(res).await;
    assert_eq!(body["error"], "invalid_request");
    assert!(seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_form_with_too_many_parameters_is_invalid_request_and_not_passed_on() {
    // 18,447 distinct names in 64 KiB: each was compared with every earlier one.
    let body: String = (0..18_447)
        .map(|i| format!("{i:x}"))
        .collect::<Vec<_>>()
        .join("&");
    let body: &'static [u8] = Box::leak(body.into_bytes().into_boxed_slice());
    let (svc, seen) = stack(128 * 1024);
    let res = svc
        .oneshot(token_request(FORM, body))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = json(res).await;
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_description"], "too many request parameters");
    assert!(seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn authorization_read_by_the_proxy_cannot_be_repeated_or_made_hop_by_hop() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("authorization", "Basic YTpi"),
                ("authorization", "Basic Yzpk"),
            ],
            "the Authorization header is repeated",
        ),
        (
            &[
                ("authorization", "Basic YTpi"),
                ("connection", "keep-alive, Authorization"),
            ],
            "the Connection header may not name Authorization",
        ),
        (
            &[("connection", "close"), ("connection", "AUTHORIZATION")],
            "the Connection header may not name Authorization",
        ),
    ];
    for (headers, why) in cases {
        let (svc, seen) = stack(4096);
        let mut req = token_request(FORM, b"grant_type=refresh_token&refresh_token=x");
        for (name, value) in headers {
            req.headers_mut().append(
                *name,
                http::HeaderValue::from_str(value).expect("header value"),
            );
        }
        let res = svc.oneshot(req).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{why}");
        let body = json(res).await;
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], why);
        assert!(
            seen.lock().expect("lock").is_empty(),
            "{why}: not passed on"
        );
    }
}

#[tokio::test]
async fn a_wrong_content_type_is_invalid_request() {
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let (svc, seen) = stack(4096);
        let res = svc
            .oneshot(token_request(ct, b"{\"grant_type\":\"refresh_token\"}"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(
            json(res).await["error_description"],
            "content type must be application/x-www-form-urlencoded"
        );
        assert!(seen.lock().expect("lock").is_empty());
    }
}

#[tokio::test]
async fn non_utf8_values_are_invalid_request() {
    let (svc, _) = stack(4096);
    let res = svc
        .oneshot(token_request(
            FORM,
            b"grant_type=refresh_token&refresh_token=%FF%FE",
        ))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json(res).await["error_description"],
        "request parameters must be UTF-8"
    );
}

#[tokio::test]
async fn an_oversized_token_body_is_413_whether_declared_or_not() {
    let big: &'static [u8] = Box::leak(vec![b'a'; 5000].into_boxed_slice());
    // Declared by Content-Length.
    let (svc, seen) = stack(4096);
    let mut req = token_request(FORM, big);
    req.headers_mut()
        .insert("content-length", "5000".parse().expect("value"));
    let res = svc.oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(res).await["error"], "invalid_request");
    assert!(seen.lock().expect("lock").is_empty(), "declared: passed on");
    // Not declared: found while reading.
    let (svc, seen) = stack(4096);
    let res = svc
        .oneshot(token_request(FORM, big))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(res).await["error"], "invalid_request");
    assert!(
        seen.lock().expect("lock").is_empty(),
        "undeclared: passed on"
    );
}

#[tokio::test]
async fn other_requests_are_passed_on_untouched_even_with_odd_bodies() {
    let (mut svc, seen) = stack(1024);
    let big: &'static [u8] = Box::leak(vec![0xff; 10_000].into_boxed_slice());
    for (method, path) in [
        ("POST", "/other"),
        ("GET", "/oauth/token"),
        ("PUT", "/oauth/token"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(big)))
            .expect("request");
        let res = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
    }
    assert_eq!(seen.lock().expect("lock").len(), 3);
    assert!(
        seen.lock()
            .expect("lock")
            .iter()
            .all(|(_, b)| b.len() == 10_000)
    );
}

#[test]
fn the_builder_refuses_a_tiny_body_limit() {
    let err = RefreshGrantLayer::builder()
        .max_body_bytes(10)
        .expect_err("too small");
    assert!(
        err.to_string().starts_with("server.max_body_bytes"),
        "{err}"
    );
}
