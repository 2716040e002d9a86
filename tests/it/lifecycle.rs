//! Readiness, discovery, the store's health and graceful shutdown, over real sockets.

use std::time::{Duration, Instant};

use crate::support::echo::{EchoServer, Seen};
use crate::support::proxy::{TestProxy, config, wait_for_status};
use crate::support::redis::RedisServer;
use refresh_proxy::app::Outcome;

async fn readyz(proxy: &TestProxy) -> (u16, serde_json::Value) {
    let res = reqwest::get(format!("{}/readyz", proxy.admin_url))
        .await
        .expect("readyz");
    (res.status().as_u16(), res.json().await.expect("json"))
}

#[tokio::test]
async fn healthz_is_always_200_and_unknown_admin_paths_are_404() {
    let port = crate::support::free_port();
    let proxy = TestProxy::start(&config(&format!("http://127.0.0.1:{port}"), "")).await;
    let res = reqwest::get(format!("{}/healthz", proxy.admin_url))
        .await
        .expect("healthz");
    assert_eq!(res.status(), 200, "healthz does not depend on the upstream");
    let res = reqwest::get(format!("{}/nope", proxy.admin_url))
        .await
        .expect("404");
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn readyz_waits_for_discovery_which_retries_until_the_upstream_appears() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve");
    let addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let proxy = TestProxy::start(&config(&format!("http://{addr}"), "")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, 503);
    assert_eq!(body["discovery"], "pending");
    assert_eq!(body["store"], "ok");

    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let _echo = EchoServer::serve(listener);
    let started = Instant::now();
    proxy.wait_ready().await;
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let (_, body) = readyz(&proxy).await;
    assert_eq!(body["discovery"], "ok");
}

#[tokio::test]
async fn the_token_endpoint_comes_from_discovery() {
    let echo = EchoServer::start().await;
    let proxy = TestProxy::start(&config(&echo.url(), "")).await;
    proxy.wait_ready().await;
    let client = reqwest::Client::new();
    // Discovery says /oauth/token: the proxy reads and checks that form.
    let res = client
        .post(format!("{}/oauth/token", proxy.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=a&scope=b")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "invalid_request");
    // A valid form is passed on, body intact.
    let form = "grant_type=client_credentials&scope=read+write";
    let seen: Seen = client
        .post(format!("{}/oauth/token", proxy.url))
        .header(
            "content-type",
            "application/x-www-form-urlencoded;charset=UTF-8",
        )
        .body(form)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(seen.body_len, form.len() as u64);
    assert_eq!(
        seen.header("content-length"),
        Some(form.len().to_string().as_str())
    );
    // Other paths are not the token endpoint.
    let seen: Seen = client
        .post(format!("{}/not/token", proxy.url))
        .body("a=1&a=2")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(seen.body_len, 7);
}

#[tokio::test]
async fn config_paths_replace_discovery() {
    let echo = EchoServer::start().await;
    let proxy = TestProxy::start(&config(
        &echo.url(),
        "discovery = false\ntoken_path = \"/custom/token\"\n",
    ))
    .await;
    proxy.wait_ready().await;
    let client = reqwest::Client::new();
    let post = |path: &str| {
        client
            .post(format!("{}{path}", proxy.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("x=1&x=2")
            .send()
    };
    assert_eq!(post("/custom/token").await.expect("send").status(), 400);
    assert_eq!(post("/oauth/token").await.expect("send").status(), 200);
}

#[tokio::test]
async fn readyz_follows_redis_while_forwarding_keeps_working() {
    let mut redis = RedisServer::start();
    let echo = EchoServer::start().await;
    let text = format!(
        "[store]\nurl = \"{}\"\nresponse_timeout = 0.3\nconnect_timeout = 0.3\n\
         [tokens]\nrefresh_token_key = \"{}\"\n{}",
        redis.url(),
        crate::support::TEST_REFRESH_KEY,
        config(&echo.url(), "")
    );
    let proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;

    redis.kill();
    wait_for_status(
        &format!("{}/readyz", proxy.admin_url),
        503,
        Duration::from_secs(5),
    )
    .await;
    let (_, body) = readyz(&proxy).await;
    assert_eq!(body["store"], "unavailable");
    let res = reqwest::get(format!("{}/still-forwarding", proxy.url))
        .await
        .expect("send");
    assert_eq!(res.status(), 200);

    redis.restart();
    let started = Instant::now();
    proxy.wait_ready().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_drains_then_finishes_in_flight_requests() {
    let echo = EchoServer::start().await;
    let text = format!(
        "[server]\ndrain_delay = 0.6\nshutdown_timeout = 10\n{}",
        config(&echo.url(), "")
    );
    let mut proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;
    let slow = tokio::spawn(reqwest::get(format!("{}/slow?ms=1500", proxy.url)));
    echo.slow_arrived(1).await;
    let started = Instant::now();
    proxy.begin_shutdown();

    // Draining: not ready, still serving new requests.
    wait_for_status(
        &format!("{}/readyz", proxy.admin_url),
        503,
        Duration::from_secs(1),
    )
    .await;
    let (_, body) = readyz(&proxy).await;
    assert_eq!(body["draining"], true);
    let during = reqwest::get(format!("{}/during-drain", proxy.url))
        .await
        .expect("send");
    assert_eq!(during.status(), 200);

    let res = slow.await.expect("join").expect("slow request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.expect("body"), "slow answer");
    assert_eq!(proxy.shutdown().await, Outcome::Drained);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "drain delay honoured"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_cuts_off_requests_at_the_deadline() {
    let echo = EchoServer::start().await;
    let text = format!(
        "[server]\ndrain_delay = 0\nshutdown_timeout = 1\n{}",
        config(&echo.url(), "")
    );
    let mut proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;
    let _slow = tokio::spawn(reqwest::get(format!("{}/slow?ms=10000", proxy.url)));
    echo.slow_arrived(1).await;
    let started = Instant::now();
    proxy.begin_shutdown();
    assert_eq!(proxy.shutdown().await, Outcome::DeadlineExceeded);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
