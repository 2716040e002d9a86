//! Forwarding over real sockets: client → proxy → echo upstream. What goes in comes out, except
//! what a reverse proxy must change (hop-by-hop headers, Host, X-Forwarded-*).

use std::time::{Duration, Instant};

use crate::support::echo::{EchoServer, Seen};
use crate::support::proxy::{TestProxy, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn setup(extra: &str) -> (EchoServer, TestProxy) {
    let echo = EchoServer::start().await;
    let proxy = TestProxy::start(&config(&echo.url(), extra)).await;
    proxy.wait_ready().await;
    (echo, proxy)
}

/// Sends raw bytes on a new connection and reads until the server closes it or `timeout`.
/// Writes `request` on a new connection and reads until the proxy closes it; panics if the
/// connection is still open after `timeout` (every caller expects it closed: `Connection:
/// close`, a malformed request, or a client too slow).
async fn raw(addr: &str, request: &[u8], timeout: Duration) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    match tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await {
        // Closed, by FIN or by reset (a server closing with unread input sends RST).
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading the answer: {e}"),
        Err(_) => panic!(
            "the connection is still open after {timeout:?}; read so far: {}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_json(raw: &str) -> Seen {
    let body = raw.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

#[tokio::test]
async fn methods_pass_through_unchanged() {
    let (_echo, proxy) = setup("").await;
    let c = client();
    for method in [
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND",
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let seen: Seen = c
            .request(m, format!("{}/any", proxy.url))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(seen.method, method);
    }
    let head = c
        .head(format!("{}/any", proxy.url))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn odd_paths_and_queries_pass_byte_for_byte() {
    let (_echo, proxy) = setup("").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    for target in [
        "/a%20b/%2F/%2e%2E/./../x;y=1/~%7E/%C3%BC?q=1&q=2&x=%zz&empty=&plus=a+b&&#",
        "/path//double?%3D=%26",
        "/?",
        "/UPPER/Case%2f",
    ] {
        let target = target.trim_end_matches('#');
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
        let res = raw(&addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        assert_eq!(body_json(&res).target, target);
    }
}

#[tokio::test]
async fn repeated_headers_pass_both_ways_and_hop_by_hop_headers_do_not() {
    let (_echo, proxy) = setup("").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    let req = "GET /h HTTP/1.1\r\nHost: example.test\r\nX-Multi: one\r\nX-Multi: two\r\n\
               Connection: close, X-Remove-Me\r\nX-Remove-Me: secret\r\nKeep-Alive: timeout=5\r\n\
               TE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\r\n";
    let res = raw(&addr, req.as_bytes(), Duration::from_secs(5)).await;
    let seen = body_json(&res);
    assert_eq!(seen.header_all("x-multi"), ["one", "two"]);
    for gone in [
        "x-remove-me",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            seen.header_all(gone).is_empty(),
            "{gone} reached the upstream: {seen:?}"
        );
    }
    assert!(
        seen.header_all("connection")
            .iter()
            .all(|v| !v.contains("X-Remove-Me")),
        "{seen:?}"
    );

    let res = client()
        .get(format!("{}/hop", proxy.url))
        .send()
        .await
        .expect("send");
    let multi: Vec<_> = res.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(res.headers().get("x-hop-secret").is_none());
    assert!(res.headers().get("keep-alive").is_none());
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced_by_what_the_proxy_saw() {
    // No server.trusted_proxies: a client at the IdP's public address cannot claim another
    // address (defeating the IdP's per-IP lockout), host or scheme.
    let (_echo, proxy) = setup("").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    let req = "GET /fwd HTTP/1.1\r\nHost: login.example.test\r\nX-Forwarded-For: 6.6.6.6\r\n\
               X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
               Forwarded: for=6.6.6.6;host=evil.example\r\nConnection: close\r\n\r\n";
    let seen = body_json(&raw(&addr, req.as_bytes(), Duration::from_secs(5)).await);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["login.example.test"]);
    assert!(
        seen.header("forwarded").is_none(),
        "the client's Forwarded is dropped"
    );
}

#[tokio::test]
async fn host_is_the_upstreams_and_forwarded_headers_from_a_trusted_proxy_are_appended() {
    let (echo, proxy) =
        setup("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    let req = "GET /fwd HTTP/1.1\r\nHost: login.example.test\r\nX-Forwarded-For: 203.0.113.9\r\n\
               Connection: close\r\n\r\n";
    let seen = body_json(&raw(&addr, req.as_bytes(), Duration::from_secs(5)).await);
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("login.example.test"));
}

#[tokio::test]
async fn preserve_host_keeps_the_clients_host() {
    let (_echo, proxy) = setup("preserve_host = true\n").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    let req = "GET /fwd HTTP/1.1\r\nHost: login.example.test\r\nConnection: close\r\n\r\n";
    let seen = body_json(&raw(&addr, req.as_bytes(), Duration::from_secs(5)).await);
    assert_eq!(seen.header("host"), Some("login.example.test"));
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    let (_echo, proxy) = setup("").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..50).map(|i| Ok(vec![i as u8; 1000 + i])).collect();
    let expected: Vec<u8> = (0..50).flat_map(|i| vec![i as u8; 1000 + i]).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = client()
        .post(format!("{}/echo-body", proxy.url))
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    assert_eq!(res.bytes().await.expect("body").to_vec(), expected);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let (_echo, proxy) = setup("").await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let res = c
        .post(format!("{}/h2?x=1", proxy.url))
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    let seen: Seen = res.json().await.expect("json");
    assert_eq!(seen.target, "/h2?x=1");
    assert_eq!(seen.body_len, 5);
    assert_eq!(seen.method, "POST");
}

#[tokio::test]
async fn http2_and_http1_over_tls_are_served() {
    let echo = EchoServer::start().await;
    let dir = crate::support::temp_dir("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).expect("write key");
    let text = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display(),
        config(&echo.url(), "")
    );
    let proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    let url = format!("https://localhost:{}/tls", proxy.port);
    for (h2, version) in [
        (true, reqwest::Version::HTTP_2),
        (false, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([root.clone()])
            .resolve("localhost", ([127, 0, 0, 1], proxy.port).into());
        if !h2 {
            b = b.http1_only();
        }
        let res = b
            .build()
            .expect("client")
            .get(&url)
            .send()
            .await
            .expect("send");
        assert_eq!(res.version(), version);
        let seen: Seen = res.json().await.expect("json");
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (_echo, proxy) = setup("").await;
    let res = client()
        .get(format!("{}/redirect", proxy.url))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "/elsewhere?x=1");
}

#[tokio::test]
async fn upstream_errors_pass_through_as_they_are() {
    let (_echo, proxy) = setup("").await;
    for code in [400u16, 401, 404, 500, 503] {
        let res = client()
            .get(format!("{}/status/{code}", proxy.url))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status().as_u16(), code);
        assert_eq!(
            res.text().await.expect("text"),
            format!("upstream says {code}")
        );
    }
}

#[tokio::test]
async fn upstream_down_is_a_502_with_json() {
    let port = crate::support::free_port();
    let proxy = TestProxy::start(&config(
        &format!("http://127.0.0.1:{port}"),
        "discovery = false\ntoken_path = \"/token\"\nconnect_timeout = 1\n",
    ))
    .await;
    proxy.wait_ready().await;
    let res = client()
        .get(format!("{}/anything", proxy.url))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(body["error_description"], "the upstream is unreachable");
}

#[tokio::test]
async fn slow_upstream_is_a_504_with_json() {
    let (_echo, proxy) = setup("request_timeout = 0.3\n").await;
    let started = Instant::now();
    let res = client()
        .get(format!("{}/slow?ms=3000", proxy.url))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"], "temporarily_unavailable");
    let ok = client()
        .get(format!("{}/slow?ms=10", proxy.url))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_client_that_sends_headers_too_slowly_is_disconnected() {
    let (_echo, proxy) = setup("").await;
    drop(proxy);
    let echo = EchoServer::start().await;
    let proxy = TestProxy::start(&format!(
        "[server]\nheader_read_timeout = 0.5\n{}",
        config(&echo.url(), "")
    ))
    .await;
    proxy.wait_ready().await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    for partial in [&b""[..], b"P", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
        let started = Instant::now();
        let res = raw(&addr, partial, Duration::from_secs(5)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{partial:?}: closed after {waited:?}"
        );
        assert!(!res.contains("200 OK"), "{res}");
    }
}

#[tokio::test]
async fn malformed_requests_get_a_400_and_a_closed_connection() {
    let (_echo, proxy) = setup("").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    for bad in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ] {
        let res = raw(&addr, bad, Duration::from_secs(5)).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{bad:?}: {res}");
    }
}

/// A forwarded request whose own body is malformed (a chunk size that overflows, a chunk that
/// is not hex) fails while it streams upstream: that is the client's mistake, a 400, not the
/// upstream's 502.
#[tokio::test]
async fn a_malformed_forwarded_body_is_a_400_not_a_502() {
    let (_echo, proxy) = setup("").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    for body in [
        &b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n"[..],
        b"5\r\nhello\r\nzz\r\n",
    ] {
        let mut request =
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let res = raw(&addr, &request, Duration::from_secs(5)).await;
        assert!(res.starts_with("HTTP/1.1 400"), "{res}");
        assert!(res.contains("\"error\":\"invalid_request\""), "{res}");
    }
    let ok = client()
        .get(format!("{}/after", proxy.url))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
}

/// A token-endpoint body sent a byte at a time (slowloris) is cut off after
/// `server.body_read_timeout` with a 408 and a closed connection; other clients are served
/// meanwhile.
#[tokio::test]
async fn a_slow_token_body_is_cut_off_and_others_are_served_meanwhile() {
    let (_echo, proxy) = setup("[server]\nbody_read_timeout = 0.5\n").await;
    let addr = format!("127.0.0.1:{}", proxy.port);
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ng",
    )
    .await
    .expect("write");
    let started = std::time::Instant::now();
    let dripping = tokio::spawn(async move {
        // One byte every 100 ms until the server closes the connection.
        let mut out = Vec::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"r").await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), slow.read_to_end(&mut out)).await;
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    });
    // Another client, on the same proxy, meanwhile.
    let res = client()
        .get(format!("{}/meanwhile", proxy.url))
        .send()
        .await
        .expect("served");
    assert_eq!(res.status(), 200);
    let (answer, took) = dripping.await.expect("drip task");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"invalid_request\""), "{answer}");
    assert!(
        took < Duration::from_secs(4),
        "cut off after the timeout, not after the 100 bytes: {took:?}"
    );
}
