//! The proxy's own HTTP/1.1 connections to an `http://` upstream (src/proxy/pool.rs), against
//! a raw TCP upstream that counts its connections and controls exactly when it closes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::proxy::{TestProxy, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of the `/big` answer: far more than socket buffers hold, so it is still being
/// written when the client goes away.
const BIG: usize = 8 * 1024 * 1024;

/// An HTTP/1.1 upstream written by hand. Paths: `/ok` (200, body `ok`), `/empty` (204),
/// `/close` (200 with `Connection: close`, then closes), `/big` ([`BIG`] bytes with a length).
/// With `idle_close`, a connection that gets no next request within that time is closed
/// without a word, as servers with a keep-alive timeout do. With `drop_second`, the second
/// request on a connection is read and the connection closed without an answer: a server
/// that closed its idle connection just as the request went out.
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(idle_close: Option<Duration>) -> Upstream {
        Upstream::start_with(idle_close, false).await
    }

    async fn start_with(idle_close: Option<Duration>, drop_second: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    serve(stream, idle_close, drop_second).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            url,
            accepted,
            open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Returns once exactly `n` connections are open (panics after 3 s).
    async fn wait_open(&self, n: usize, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.open() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{why}: {} connections open after 3 s, not {n}",
                self.open()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One connection: request heads (these tests send no bodies) and fixed answers.
async fn serve(mut stream: TcpStream, idle_close: Option<Duration>, drop_second: bool) {
    let mut buf = Vec::new();
    for n in 1.. {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match idle_close {
                Some(idle) => match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => return, // idle too long: close
                },
                None => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        if drop_second && n == 2 {
            return;
        }
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let written = match path.as_str() {
            "/ok" => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
            }
            "/empty" => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
            "/close" => {
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose",
                    )
                    .await;
                return;
            }
            "/big" => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                let mut result = stream.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..BIG / chunk.len() {
                    if result.is_err() {
                        break;
                    }
                    result = stream.write_all(&chunk).await;
                }
                result
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn setup(upstream: &Upstream, extra: &str) -> TestProxy {
    let text = config(
        &upstream.url,
        &format!("discovery = false\ntoken_path = \"/token\"\n{extra}"),
    );
    let proxy = TestProxy::start(&text).await;
    proxy.wait_ready().await;
    proxy
}

/// One keep-alive client connection, so every request lands on one proxy worker.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let res = client.get(url).send().await.expect("an answer");
    let status = res.status().as_u16();
    (status, res.text().await.expect("a body"))
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = Upstream::start(None).await;
    let proxy = setup(&upstream, "").await;
    let client = client();
    for i in 0..60 {
        let path = if i % 3 == 2 { "/empty" } else { "/ok" };
        let (status, body) = get(&client, &format!("{}{path}", proxy.url)).await;
        if path == "/ok" {
            assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
        } else {
            // A bodyless answer frees its connection at once, too.
            assert_eq!((status, body.as_str()), (204, ""), "request {i}");
        }
    }
    assert_eq!(upstream.accepted(), 1, "one upstream connection, reused");
}

#[tokio::test]
async fn connection_close_answers_are_not_reused() {
    let upstream = Upstream::start(None).await;
    let proxy = setup(&upstream, "").await;
    let client = client();
    for i in 0..5 {
        let (status, body) = get(&client, &format!("{}/close", proxy.url)).await;
        assert_eq!((status, body.as_str()), (200, "close"), "request {i}");
    }
    assert_eq!(
        upstream.accepted(),
        5,
        "a connection the upstream closes is not reused"
    );
    let (status, _) = get(&client, &format!("{}/ok", proxy.url)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_costs_no_request() {
    // The upstream drops connections idle for 50 ms; the proxy keeps them for 90 s.
    let upstream = Upstream::start(Some(Duration::from_millis(50))).await;
    let proxy = setup(&upstream, "").await;
    let client = client();
    for i in 0..8 {
        let (status, body) = get(&client, &format!("{}/ok", proxy.url)).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}: no 502");
        upstream
            .wait_open(0, "the upstream closes the idle connection")
            .await;
    }
    assert_eq!(
        upstream.accepted(),
        8,
        "each request found its pooled connection closed"
    );
}

#[tokio::test]
async fn a_body_the_client_abandons_does_not_poison_the_pool() {
    let upstream = Upstream::start(None).await;
    let proxy = setup(&upstream, "").await;
    // A raw client reads the head and a little of a large body, then goes away.
    let addr = proxy.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .expect("write");
    let mut first = vec![0u8; 16 * 1024];
    let n = stream.read(&mut first).await.expect("read");
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "the large answer started"
    );
    drop(stream);
    upstream
        .wait_open(0, "the proxy closes the abandoned answer's connection")
        .await;

    // The half-read connection must not be handed to the next request: its unread bytes
    // would be taken for the next answer.
    let client = client();
    for i in 0..10 {
        let (status, body) = get(&client, &format!("{}/ok", proxy.url)).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(
        upstream.accepted(),
        2,
        "the abandoned connection was closed, the next one reused"
    );
    assert_eq!(upstream.open(), 1, "the abandoned connection is closed");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let upstream = Upstream::start(None).await;
    let proxy = setup(&upstream, "pool_idle_timeout = 0.2\n").await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(get(&client, &format!("{}/ok", proxy.url)).await.0, 200);
    }
    assert_eq!(upstream.open(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while upstream.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection is still open 3 s after a 0.2 s idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the pool goes on with a new connection.
    assert_eq!(get(&client, &format!("{}/ok", proxy.url)).await.0, 200);
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn pool_max_idle_per_host_zero_keeps_nothing() {
    let upstream = Upstream::start(None).await;
    let proxy = setup(&upstream, "pool_max_idle_per_host = 0\n").await;
    let client = client();
    for _ in 0..4 {
        assert_eq!(get(&client, &format!("{}/ok", proxy.url)).await.0, 200);
    }
    assert_eq!(upstream.accepted(), 4, "no connection kept idle");
}

#[tokio::test]
async fn a_safe_request_meeting_a_connection_closed_under_it_is_sent_again() {
    let upstream = Upstream::start_with(None, true).await;
    let proxy = setup(&upstream, "").await;
    let client = client();
    let url = format!("{}/ok", proxy.url);
    assert_eq!(get(&client, &url).await, (200, "ok".to_owned()));
    // The connection idles, then the upstream drops it as the next request arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&client, &url).await,
        (200, "ok".to_owned()),
        "the GET went again on a new connection"
    );
    assert_eq!(upstream.accepted(), 2);

    // A POST is not sent twice: its answer is the 502 of a failed upstream request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = client
        .post(&url)
        .body("x=1")
        .send()
        .await
        .expect("an answer");
    assert_eq!(res.status().as_u16(), 502);
    assert_eq!(upstream.accepted(), 2, "no second connection for the POST");
}
