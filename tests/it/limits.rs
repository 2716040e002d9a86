//! Connection limits over real sockets: `server.max_connections` across workers, idle HTTP/1.1
//! and HTTP/2 connections closed, HTTP/2 streams over the limit refused, rapid reset, the
//! per-connection body budget, and a slowloris plus a stream flood while a well-behaved
//! client's refreshes and forwarded GETs keep succeeding.
//!
//! The proxy runs in-process in front of an echo upstream (`discovery = false`, token path
//! `/token`) on `memory://`, with families opened through the admin API.

use std::time::{Duration, Instant};

use crate::support::echo_stack::{EchoStack, SECRET};
use crate::support::h2raw::{self, RawH2};
use crate::support::idp;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Stack(EchoStack);

impl std::ops::Deref for Stack {
    type Target = EchoStack;
    fn deref(&self) -> &EchoStack {
        &self.0
    }
}

impl Stack {
    /// The proxy with `server` keys added to its `[server]` table.
    async fn start(server: &str) -> Stack {
        Stack(EchoStack::start(server).await)
    }

    /// The admin port's `host:port`.
    fn admin_addr(&self) -> String {
        let url = &self.proxy.admin_url;
        url.strip_prefix("http://").expect("http").to_owned()
    }

    /// One refresh on a new connection; the next token.
    async fn refresh(&self, rt: &str) -> String {
        let (status, body) = idp::refresh(&self.proxy.url, "www", SECRET, rt, None).await;
        assert_eq!(status, 200, "{body}");
        body["refresh_token"].as_str().expect("rotated").to_owned()
    }

    /// A forwarded GET on a new connection answers 200.
    async fn forwarded_get(&self, path: &str) {
        let res = reqwest::get(format!("{}{path}", self.proxy.url))
            .await
            .expect("forwarded");
        assert_eq!(res.status(), 200, "{path}");
    }

    /// The value of a metric without labels, from the admin port.
    async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.proxy.admin_url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
            .parse()
            .expect("a number")
    }

    /// Polls a metric until `ok` holds (panics after 10 s).
    async fn wait_metric(&self, name: &str, ok: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(name).await;
            if ok(value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} stayed at {value}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes a GET on a kept-alive HTTP/1.1 connection and reads its answer (head and a
/// Content-Length body); the status, or `None` when the connection closed first.
async fn get_on(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_answer(stream).await
}

/// Reads one answer (head and a Content-Length body) from `stream`; its status.
async fn read_answer(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf.len() - head_end;
    while body < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body += n;
    }
    Some(status)
}

/// Waits for the peer to close `stream` (reading and dropping anything it sends); false when
/// it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// An h2c (prior knowledge) connection with the `h2` crate; the task driving it ends when the
/// connection does.
async fn h2_client(
    addr: &str,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(connection))
}

/// Sends a request on an h2 connection; its status and body.
async fn h2_request(
    client: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    body: Option<Bytes>,
) -> (u16, Bytes) {
    let mut ready = client.clone().ready().await.expect("ready");
    let (answer, mut send) = ready
        .send_request(req, body.is_none())
        .expect("send request");
    if let Some(body) = body {
        send.send_data(body, true).expect("send body");
    }
    let answer = answer.await.expect("an answer");
    let status = answer.status().as_u16();
    let mut recv = answer.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    (status, Bytes::from(got))
}

fn h2_get(addr: &str, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .expect("request")
}

fn h2_token_post(addr: &str, length: usize) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("content-length", length)
        .body(())
        .expect("request")
}

/// A form body of exactly `len` bytes that is not a refresh grant (it goes upstream).
fn form_of(len: usize) -> Vec<u8> {
    let mut form = b"grant_type=client_credentials&pad=".to_vec();
    form.resize(len, b'a');
    form
}

/// `server.max_connections` counts every worker's connections: at the cap the next connection
/// is not accepted (it waits in the kernel's backlog and its request reaches nobody) until one
/// closes, and the metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_next_connection_until_one_closes() {
    let s = Stack::start("workers = 2\nmax_connections = 3").await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut conn = TcpStream::connect(&s.addr).await.expect("connect");
        assert_eq!(get_on(&mut conn, &format!("/held/{i}")).await, Some(200));
        held.push(conn);
    }
    // The kernel completes the handshake (backlog); the proxy does not accept it.
    let mut fourth = TcpStream::connect(&s.addr).await.expect("connect");
    fourth
        .write_all(b"GET /fourth HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    // A bounded wait for something that must not happen: on a proxy without the cap the
    // answer comes back in a few milliseconds.
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the fourth connection was served: {early:?}"
    );
    assert!(
        !s.echo
            .recorded()
            .requests
            .iter()
            .any(|r| r.contains("/fourth")),
        "the upstream saw the fourth connection's request"
    );
    assert_eq!(s.metric("refresh_proxy_open_connections").await, 3);
    assert!(
        s.metric("refresh_proxy_connection_limit_reached_total")
            .await
            >= 1
    );

    // One closes: the fourth is accepted and served.
    drop(held.remove(0));
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut fourth))
        .await
        .expect("served once a connection closed");
    assert_eq!(answer, Some(200));
    assert_eq!(s.metric("refresh_proxy_open_connections").await, 3);
    drop(held);
    drop(fourth);
    s.wait_metric("refresh_proxy_open_connections", |n| n == 0)
        .await;
}

/// An HTTP/1.1 connection idle between requests is closed after `idle_timeout` (here well
/// before `header_read_timeout`, which used to be the only timer); one in use is not.
#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_idle_timeout() {
    let s = Stack::start("idle_timeout = 0.3\nheader_read_timeout = 20").await;
    let mut conn = TcpStream::connect(&s.addr).await.expect("connect");
    // A request slower than the idle timeout is not cut off: it is not idle.
    assert_eq!(get_on(&mut conn, "/slow?ms=600").await, Some(200));
    assert_eq!(get_on(&mut conn, "/again").await, Some(200));
    assert!(
        closed_within(&mut conn, Duration::from_secs(10)).await,
        "an idle HTTP/1.1 connection stayed open"
    );
}

/// An HTTP/2 connection with no stream open for `idle_timeout` gets GOAWAY and ends, however
/// often it answers the proxy's PINGs; a stream open longer than the timeout is not cut off.
#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_but_not_while_a_stream_is_open() {
    let s = Stack::start(
        "idle_timeout = 0.4\nhttp2_keep_alive_interval = 0.1\nhttp2_keep_alive_timeout = 5",
    )
    .await;
    let (mut client, connection) = h2_client(&s.addr).await;
    let (status, _) = h2_request(&mut client, h2_get(&s.addr, "/slow?ms=1000"), None).await;
    assert_eq!(status, 200);
    let (status, _) = h2_request(&mut client, h2_get(&s.addr, "/again"), None).await;
    assert_eq!(status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection ended")
        .expect("join");
    assert!(ended.is_ok(), "GOAWAY with NO_ERROR, then close: {ended:?}");

    // Raw, to see the frame itself: GOAWAY with NO_ERROR after the idle timeout.
    let mut raw = RawH2::connect(&s.addr).await;
    let frames = raw
        .read_until(Duration::from_secs(10), |f| {
            f.last().is_some_and(|f| f.kind == h2raw::GOAWAY)
        })
        .await;
    let goaway = frames.last().expect("frames");
    assert_eq!(goaway.kind, h2raw::GOAWAY, "{frames:?}");
    assert_eq!(goaway.error_code(), Some(h2raw::NO_ERROR));
}

/// Streams beyond `http2_max_concurrent_streams` (100 by default; hyper's own default is 200)
/// are refused with REFUSED_STREAM; those within the limit stay open.
#[tokio::test]
async fn http2_streams_over_the_limit_are_refused() {
    let s = Stack::start("").await;
    let mut raw = RawH2::connect(&s.addr).await;
    // 150 token requests whose bodies never come: each holds its stream open.
    let block = h2raw::header_block(&h2raw::request(
        "POST",
        "/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "100"),
        ],
    ));
    let frames: Vec<Vec<u8>> = (0..150u32)
        .map(|i| RawH2::encode(h2raw::HEADERS, h2raw::END_HEADERS, 1 + 2 * i, &block))
        .collect();
    raw.burst(&frames).await;
    let frames = raw
        .read_until(Duration::from_secs(3), |f| {
            f.iter()
                .filter(|f| f.error_code() == Some(h2raw::REFUSED_STREAM))
                .count()
                >= 50
        })
        .await;
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.kind == h2raw::RST_STREAM && f.error_code() == Some(h2raw::REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    let expected: Vec<u32> = (100..150u32).map(|i| 1 + 2 * i).collect();
    assert_eq!(refused, expected, "{frames:?}");
    assert!(
        !frames.iter().any(|f| f.kind == h2raw::GOAWAY),
        "{frames:?}"
    );
}

/// Rapid reset (CVE-2023-44487): a burst of streams opened and reset at once gets the
/// connection a GOAWAY (ENHANCE_YOUR_CALM); what those streams started is dropped, and other
/// clients are served meanwhile.
#[tokio::test]
async fn rapid_reset_gets_goaway_and_leaves_nothing_in_flight() {
    let s = Stack::start("").await;
    let rt = s.issue(1).await.remove(0);
    let mut raw = RawH2::connect(&s.addr).await;
    let block = h2raw::header_block(&h2raw::request("GET", "/slow?ms=5000", &[]));
    let mut frames = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        frames.push(RawH2::encode(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &block,
        ));
        frames.push(RawH2::encode(
            h2raw::RST_STREAM,
            0,
            id,
            &h2raw::CANCEL.to_be_bytes(),
        ));
    }
    raw.burst(&frames).await;
    let seen = raw
        .read_until(Duration::from_secs(5), |f| {
            f.last().is_some_and(|f| f.kind == h2raw::GOAWAY)
        })
        .await;
    let goaway = seen.last().expect("frames");
    assert_eq!(goaway.kind, h2raw::GOAWAY, "{seen:?}");
    assert_eq!(goaway.error_code(), Some(h2raw::ENHANCE_YOUR_CALM));
    // Meanwhile and after: others are served, and nothing the reset streams started is left.
    s.refresh(&rt).await;
    s.forwarded_get("/after-reset").await;
    s.wait_metric("refresh_proxy_in_flight_requests", |n| n == 0)
        .await;
}

/// The token bodies of one HTTP/2 connection share `max_connection_body_bytes`: with two
/// bodies held (dripping), a third that does not fit is not read until one of them is given
/// back (cut off with 408 at `body_read_timeout`), instead of being held too. Another
/// connection has its own budget.
#[tokio::test]
async fn an_http2_connections_token_bodies_share_its_budget() {
    let s = Stack::start(
        "max_body_bytes = 4096\nmax_connection_body_bytes = 8192\nbody_read_timeout = 1",
    )
    .await;
    let (client, _connection) = h2_client(&s.addr).await;
    let (done, mut answered) = tokio::sync::mpsc::unbounded_channel();
    // Two bodies of 4096 declared bytes, all but the last byte sent: held by the layer.
    for i in 0..2 {
        let mut ready = client.clone().ready().await.expect("ready");
        let (answer, mut send) = ready
            .send_request(h2_token_post(&s.addr, 4096), false)
            .expect("send");
        send.send_data(Bytes::from(form_of(4095)), false)
            .expect("send body");
        let done = done.clone();
        tokio::spawn(async move {
            let _send = send;
            let status = answer.await.expect("an answer").status().as_u16();
            let _ = done.send((i, status));
        });
    }
    // A third, whole: it does not fit in what is left of the budget.
    let mut third = client.clone();
    let addr = s.addr.clone();
    tokio::spawn(async move {
        let (status, _) = h2_request(
            &mut third,
            h2_token_post(&addr, 4096),
            Some(Bytes::from(form_of(4096))),
        )
        .await;
        let _ = done.send((2, status));
    });
    let mut order = Vec::new();
    while let Some(answer) = answered.recv().await {
        order.push(answer);
    }
    // The third is answered only after a held one was cut off and gave its bytes back.
    assert_eq!(order.len(), 3, "{order:?}");
    assert!(order[0].0 < 2 && order[0].1 == 408, "{order:?}");
    assert!(order.contains(&(2, 200)), "{order:?}");
    assert_eq!(
        order.iter().filter(|(_, status)| *status == 408).count(),
        2,
        "{order:?}"
    );

    // Another connection has a budget of its own, and this one is whole again.
    for mut client in [h2_client(&s.addr).await.0, client] {
        let (status, _) = h2_request(
            &mut client,
            h2_token_post(&s.addr, 4096),
            Some(Bytes::from(form_of(4096))),
        )
        .await;
        assert_eq!(status, 200, "forwarded to the echo upstream");
    }
}

/// A slowloris (HTTP/1.1 connections dripping their heads, others dripping token bodies), an
/// HTTP/2 stream flood (every stream a dripping token body, more streams than allowed) and a
/// rapid-reset connection, all at once: meanwhile a well-behaved client's refreshes and
/// forwarded GETs all succeed, over HTTP/1.1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_and_a_stream_flood_leave_other_clients_served() {
    let s = Stack::start("workers = 2").await;
    let tokens = s.issue(4).await;
    let addr = s.addr.clone();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..200 {
        let addr = addr.clone();
        attackers.spawn(async move {
            let Ok(mut conn) = TcpStream::connect(&addr).await else {
                return;
            };
            let head = format!("GET /slowloris/{i} HTTP/1.1\r\nHost: x\r\nX-Pad: ");
            for b in head.bytes().chain(std::iter::repeat(b'a')) {
                if conn.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    for _ in 0..50 {
        let addr = addr.clone();
        attackers.spawn(async move {
            let Ok(mut conn) = TcpStream::connect(&addr).await else {
                return;
            };
            let head = b"POST /token HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n";
            if conn.write_all(head).await.is_err() {
                return;
            }
            loop {
                if conn.write_all(b"a").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    for _ in 0..2 {
        let addr = addr.clone();
        attackers.spawn(async move {
            let mut raw = RawH2::connect(&addr).await;
            let block = h2raw::header_block(&h2raw::request(
                "POST",
                "/token",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("content-length", "65536"),
                ],
            ));
            let ids: Vec<u32> = (0..150u32).map(|i| 1 + 2 * i).collect();
            let heads: Vec<Vec<u8>> = ids
                .iter()
                .map(|id| RawH2::encode(h2raw::HEADERS, h2raw::END_HEADERS, *id, &block))
                .collect();
            raw.burst(&heads).await;
            let chunk = vec![b'a'; 16 * 1024];
            loop {
                for id in &ids {
                    raw.data(*id, &chunk, false).await;
                }
                while raw.next(Duration::from_millis(10)).await.is_some() {}
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    {
        let addr = addr.clone();
        attackers.spawn(async move {
            let block = h2raw::header_block(&h2raw::request("GET", "/slow?ms=2000", &[]));
            loop {
                let mut raw = RawH2::connect(&addr).await;
                let frames: Vec<Vec<u8>> = (0..200u32)
                    .flat_map(|i| {
                        let id = 1 + 2 * i;
                        [
                            RawH2::encode(
                                h2raw::HEADERS,
                                h2raw::END_HEADERS | h2raw::END_STREAM,
                                id,
                                &block,
                            ),
                            RawH2::encode(h2raw::RST_STREAM, 0, id, &h2raw::CANCEL.to_be_bytes()),
                        ]
                    })
                    .collect();
                raw.burst(&frames).await;
                while raw.next(Duration::from_millis(500)).await.is_some() {}
            }
        });
    }
    // Let the attack get going: the flood's connections are all open.
    s.wait_metric("refresh_proxy_open_connections", |n| n >= 250)
        .await;

    // The well-behaved client, over HTTP/1.1 and HTTP/2.
    for rt in tokens {
        let mut rt = rt;
        for _ in 0..5 {
            rt = s.refresh(&rt).await;
        }
    }
    for i in 0..20 {
        s.forwarded_get(&format!("/meanwhile/{i}")).await;
    }
    let (mut h2, _c) = h2_client(&s.addr).await;
    for i in 0..20 {
        let (status, _) = h2_request(&mut h2, h2_get(&s.addr, &format!("/h2/{i}")), None).await;
        assert_eq!(status, 200);
    }
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
    s.refresh(&s.issue(1).await.remove(0)).await;
}

/// The admin port has a connection cap of its own (`server.admin_max_connections`): at the cap
/// the next connection waits until one closes, as on the proxy port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_has_its_own_connection_cap() {
    let s = Stack::start("admin_max_connections = 2").await;
    let admin = s.admin_addr();
    // The rig's own admin client may hold one of the two (a pooled keep-alive connection):
    // at most two of ours are served before one waits.
    let mut held = Vec::new();
    let mut waiting = None;
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&admin).await.expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin.test\r\n\r\n")
            .await
            .expect("write");
        // A bounded wait for an answer that, at the cap, must not come.
        match tokio::time::timeout(Duration::from_millis(500), read_answer(&mut conn)).await {
            Ok(answer) => {
                assert_eq!(answer, Some(200));
                held.push(conn);
            }
            Err(_) => {
                waiting = Some(conn);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("a connection past the cap waits");
    assert!(held.len() <= 2, "{} connections served", held.len());
    // The proxy port is not affected.
    s.forwarded_get("/still-served").await;
    // Closing ours lets the waiting one in.
    held.clear();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut waiting))
        .await
        .expect("served once a connection closed");
    assert_eq!(answer, Some(200));
}

/// An admin request body that trickles in is cut off at `server.body_read_timeout` (408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_admin_body_gets_408() {
    let s = Stack::start("body_read_timeout = 1").await;
    let admin = s.admin_addr();
    let mut conn = TcpStream::connect(&admin).await.expect("connect");
    let head = format!(
        "POST /admin/revoke HTTP/1.1\r\nHost: admin.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"subject\":",
        crate::support::echo_stack::ADMIN_TOKEN
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut conn))
        .await
        .expect("answered, not held");
    assert_eq!(answer, Some(408));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}
