//! Hostile input over real sockets: raw TCP clients write exact bytes to the proxy port (and the
//! admin port) and read the answer with a timeout. Every case gets a clear 4xx, a closed
//! connection, or (for what the proxy does not own) the upstream's answer with the bytes passed
//! on untouched: never a 5xx for a client's mistake, a panic or a hang. After each group the
//! proxy still serves a refresh and a forwarded GET (no worker died).
//!
//! - request smuggling: Content-Length / Transfer-Encoding conflicts, duplicate lengths,
//!   obs-fold, bare LF; the upstream (an echo server recording what it parsed) never sees two
//!   requests where the proxy saw one, and its pooled connections stay in step;
//! - header floods (count, size, URI length) on HTTP/1.1, HTTP/2 and the admin port;
//! - a 100,000-parameter form;
//! - invalid UTF-8 in the path, query, header values, content type, credentials and form;
//! - token values with every byte (0x00–0xFF) in `refresh_token`, `client_id`, HTTP Basic and
//!   Bearer credentials at the token, revocation and introspection endpoints;
//! - upstream answers that are huge (50 MB), deeply nested (100,000 `[`), not UTF-8 or not JSON:
//!   passed on untouched, with the proxy's memory bounded (the real binary, VmHWM).

use std::time::Duration;

use crate::support::echo::{Seen, hex};
use crate::support::echo_stack::{ADMIN_TOKEN, EchoStack, ISSUE_TOKEN, SECRET};
use crate::support::fake_idp::FakeIdp;
use crate::support::h2raw::{self, RawH2};
use crate::support::idp;
use crate::support::proxy::ProxyProcess;
use aws_lc_rs::digest;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any answer may take before the case counts as a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

struct Stack {
    base: EchoStack,
    admin_addr: String,
}

impl std::ops::Deref for Stack {
    type Target = EchoStack;
    fn deref(&self) -> &EchoStack {
        &self.base
    }
}

impl Stack {
    async fn start(server: &str) -> Stack {
        let base = EchoStack::start(server).await;
        let admin_addr = base
            .proxy
            .admin_url
            .trim_start_matches("http://")
            .to_owned();
        Stack { base, admin_addr }
    }

    /// The proxy still answers a refresh of its own and forwards a GET, on new connections.
    async fn assert_serves(&self, what: &str) {
        let rt = self.issue(1).await.remove(0);
        let (status, body) = idp::refresh(&self.proxy.url, "www", SECRET, &rt, None).await;
        assert_eq!(status, 200, "after {what}: {body}");
        let res = reqwest::get(format!("{}/still-serving", self.proxy.url))
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(res.status(), 200, "after {what}");
    }

    /// Requests the upstream parsed from the `since`-th on, after a marker request (so that
    /// anything the case could still make reach the upstream has arrived before it).
    async fn upstream_requests_since(&self, since: usize, marker: &str) -> Vec<String> {
        let (answer, _) = send(
            &self.addr,
            format!("GET {marker} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(answer.status, Some(200), "{marker}");
        let mut seen = self.echo.recorded().requests.split_off(since);
        assert_eq!(
            seen.pop().as_deref(),
            Some(format!("GET {marker}").as_str())
        );
        seen
    }
}

/// A metric's value from the admin port (`name` with its labels, as rendered).
async fn metric(admin_url: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{admin_url}/metrics"))
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

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    /// `None`: the connection closed (or nothing came) before a whole answer.
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {} {}", self.head, String::from_utf8_lossy(&self.body))
        })
    }
}

/// Writes `request` on a new connection to `addr` and reads one answer.
async fn send(addr: &str, request: &[u8]) -> (Answer, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything (an early 4xx): that is an answer too.
    let _ = stream.write_all(request).await;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut stream))
        .await
        .unwrap_or_else(|_| panic!("no answer and no close: a hang: {:?}", lossy(request)));
    (answer, stream)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let closed = |buf: &[u8]| Answer {
        status: None,
        head: String::from_utf8_lossy(buf).into_owned(),
        body: Vec::new(),
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return closed(&buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let status = lower.get(9..12).and_then(|s| s.parse().ok());
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let mut chunk = vec![0u8; 64 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return closed(&buf),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Answer { status, head, body }
}

/// Whether the peer closes `stream` (reading and dropping anything else it sends).
async fn closes(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(ANSWER_TIMEOUT, async {
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

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// `%XX` for every byte.
fn pct(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn basic(id: &[u8], secret: &[u8]) -> String {
    let mut raw = id.to_vec();
    raw.push(b':');
    raw.extend_from_slice(secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A POST of `body` to `path` with a form content type and exact length, `extra` header lines
/// (each ending in CRLF) added.
fn form_post(path: impl AsRef<[u8]>, extra: &[u8], body: &[u8]) -> Vec<u8> {
    let mut req = b"POST ".to_vec();
    req.extend_from_slice(path.as_ref());
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(extra);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

/// The upstream must never see two requests where the proxy saw one: for each conflict in
/// how a request's body is framed, it sees at most the one request (framed by
/// Transfer-Encoding, as RFC 9112 §6.3 has it), and the client's connection is closed after
/// the answer, so bytes after the body are never read as another request.
#[tokio::test]
async fn smuggling_never_makes_two_upstream_requests_of_one() {
    let s = Stack::start("").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    // (name, request, requests the upstream must see, body length it must see); every case
    // but the last closes its connection after the answer.
    let cases: Vec<(&str, String, Vec<&str>, Option<u64>)> = vec![
        (
            "CL.TE",
            format!(
                "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec!["POST /cl-te"],
            Some(0),
        ),
        (
            "TE.CL",
            format!(
                "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                smuggled.len()
            ),
            vec!["POST /te-cl"],
            Some(smuggled.len() as u64),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /two-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                 Content-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            vec![],
            None,
        ),
        (
            "a Content-Length list",
            format!(
                "POST /cl-list HTTP/1.1\r\nHost: x\r\nContent-Length: 0, {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            vec![],
            None,
        ),
        (
            "a signed Content-Length",
            "POST /cl-plus HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello".to_owned(),
            vec![],
            None,
        ),
        (
            "Transfer-Encoding not ending in chunked",
            format!(
                "POST /te-identity HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\
                 Content-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec![],
            None,
        ),
        (
            "an unknown transfer coding",
            format!(
                "POST /te-x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec![],
            None,
        ),
        (
            "a space before the colon",
            format!(
                "POST /te-space HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec![],
            None,
        ),
        (
            "obs-fold of Transfer-Encoding",
            format!(
                "POST /te-fold HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec![],
            None,
        ),
        (
            "obs-fold of another header",
            "GET /fold HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_owned(),
            vec![],
            None,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST /te-10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            vec![],
            None,
        ),
        (
            "a chunk size that overflows",
            "POST /chunk-overflow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             fffffffffffffffffffff\r\nx\r\n0\r\n\r\n"
                .to_owned(),
            // The head is forwarded as it arrives; its body fails: one request at most.
            vec!["POST /chunk-overflow"],
            None,
        ),
        (
            "CL.TE at the token endpoint",
            format!(
                "POST /token HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n\
                 17\r\ngrant_type=password&a=b\r\n0\r\n\r\n{smuggled}"
            ),
            vec!["POST /token"],
            Some(23),
        ),
        // No conflict: a body that looks like a request is a body; the connection stays.
        (
            "a GET whose body is a request",
            format!(
                "GET /get-body HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            vec!["GET /get-body"],
            Some(smuggled.len() as u64),
        ),
    ];
    let last = cases.len() - 1;
    for (i, (name, request, expected, body_len)) in cases.into_iter().enumerate() {
        let before = s.echo.recorded().requests.len();
        let (answer, mut conn) = send(&s.addr, request.as_bytes()).await;
        if expected.is_empty() || body_len.is_none() {
            // Refused by the parser, or (a body that fails while it is forwarded) by the proxy:
            // the client's mistake is a 400, not a 502.
            assert_eq!(answer.status, Some(400), "{name}: {answer:?}");
        } else {
            assert_eq!(answer.status, Some(200), "{name}: {answer:?}");
        }
        if let Some(len) = body_len {
            let seen: Seen = serde_json::from_slice(&answer.body).expect("echo");
            assert_eq!(seen.body_len, len, "{name}");
        }
        if i != last {
            assert!(
                closes(&mut conn).await,
                "{name}: the connection stayed open"
            );
        }
        let seen = s
            .upstream_requests_since(before, &format!("/marker/{i}"))
            .await;
        assert!(
            seen.len() <= expected.len(),
            "{name}: upstream saw {seen:?}"
        );
        for (got, want) in seen.iter().zip(&expected) {
            assert_eq!(got, want, "{name}");
        }
        if body_len.is_some() {
            assert_eq!(seen, expected, "{name}");
        }
    }
    // The upstream connections the proxy pools are still in step: each answer is its own.
    for i in 0..10 {
        let (answer, _) = send(
            &s.addr,
            format!("GET /check/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        let seen: Seen = serde_json::from_slice(&answer.body).expect("echo");
        assert_eq!(seen.target, format!("/check/{i}"));
    }
    s.assert_serves("smuggling").await;
}

/// Pipelined requests on one connection are as many requests upstream, in order: the proxy
/// frames each one itself.
#[tokio::test]
async fn pipelined_requests_reach_the_upstream_one_for_one() {
    let s = Stack::start("").await;
    let before = s.echo.recorded().requests.len();
    let mut conn = TcpStream::connect(&s.addr).await.expect("connect");
    conn.write_all(
        b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /p/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          GET /p/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    for i in 1..=3 {
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_answer(&mut conn))
            .await
            .expect("answered");
        let seen: Seen = serde_json::from_slice(&answer.body).expect("echo");
        assert_eq!(seen.target, format!("/p/{i}"));
    }
    assert!(closes(&mut conn).await);
    let seen = s.upstream_requests_since(before, "/p/marker").await;
    assert_eq!(seen, ["GET /p/1", "POST /p/2", "GET /p/3"]);
}

/// Too many header lines, a header too large, too much in all, a URI too long: 431 (or 414)
/// and the connection closed, on the proxy port and the admin port; on HTTP/2 the stream is
/// refused and the connection goes on.
#[tokio::test]
async fn header_floods_get_431_and_a_closed_connection() {
    let s = Stack::start("").await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
    let spread: String = (0..40)
        .map(|i| format!("X-S{i}: {}\r\n", "b".repeat(900)))
        .collect();
    let long_uri = format!("/{}", "u".repeat(70 * 1024));
    for addr in [&s.addr, &s.admin_addr] {
        for (name, request) in [
            (
                "101 header lines",
                format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"),
            ),
            (
                "a 40 KiB header",
                format!("GET / HTTP/1.1\r\nHost: x\r\n{big}\r\n"),
            ),
            (
                "36 KiB of headers",
                format!("GET / HTTP/1.1\r\nHost: x\r\n{spread}\r\n"),
            ),
            (
                "a 70 KiB URI",
                format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"),
            ),
        ] {
            let (answer, mut conn) = send(addr, request.as_bytes()).await;
            assert!(
                matches!(answer.status, Some(431 | 414)),
                "{addr} {name}: {answer:?}"
            );
            assert!(closes(&mut conn).await, "{addr} {name}");
        }
    }
    // HTTP/2: a header list over server.max_header_bytes; the stream is answered 431 or reset,
    // and the connection serves the next stream.
    let mut raw = RawH2::connect(&s.addr).await;
    let value = "a".repeat(40 * 1024);
    let block = h2raw::header_block(&h2raw::request("GET", "/h2-big", &[("x-big", &value)]));
    raw.headers(1, &block, true).await;
    let frames = raw
        .read_until(ANSWER_TIMEOUT, |f| {
            f.iter().any(|f| {
                f.stream == 1
                    && (f.kind == h2raw::RST_STREAM
                        || (f.kind == h2raw::HEADERS && f.flags & h2raw::END_STREAM != 0))
            })
        })
        .await;
    assert!(
        frames.iter().any(|f| f.stream == 1),
        "the stream was not answered: {frames:?}"
    );
    let block = h2raw::header_block(&h2raw::request("GET", "/h2-small", &[]));
    raw.headers(3, &block, true).await;
    let frames = raw
        .read_until(ANSWER_TIMEOUT, |f| {
            f.iter().any(|f| f.stream == 3 && f.kind == h2raw::DATA)
        })
        .await;
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 3 && f.kind == h2raw::DATA),
        "{frames:?}"
    );
    assert!(
        !s.echo
            .recorded()
            .requests
            .iter()
            .any(|r| r.contains("h2-big"))
    );
    s.assert_serves("header floods").await;
}

/// A 100,000-parameter form: 413 beyond `max_body_bytes` (declared or found while reading),
/// and 400 `invalid_request` when the limit allows the bytes (at most 64 parameters). The
/// same in a query string is refused before it reaches anything.
#[tokio::test]
async fn a_hundred_thousand_parameter_form_is_refused() {
    let s = Stack::start("max_body_bytes = 2097152\nmax_connection_body_bytes = 2097152").await;
    let form: String = (0..100_000).map(|i| format!("p{i}=1&")).collect();
    let (answer, _) = send(&s.addr, &form_post("/token", b"", form.as_bytes())).await;
    assert_eq!(answer.status, Some(400), "{answer:?}");
    assert_eq!(answer.json()["error"], "invalid_request");
    // Chunked, so the size is only found while reading, on a proxy with the default limit.
    let small = Stack::start("").await;
    let mut chunked = b"POST /token HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for part in form.as_bytes().chunks(8192) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (answer, _) = send(&small.addr, &chunked).await;
    assert_eq!(answer.status, Some(413), "{answer:?}");
    assert_eq!(answer.json()["error"], "invalid_request");
    let (answer, _) = send(&small.addr, &form_post("/token", b"", form.as_bytes())).await;
    assert_eq!(answer.status, Some(413), "{answer:?}");
    let query = format!("GET /search?{form} HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, _) = send(&small.addr, query.as_bytes()).await;
    assert!(matches!(answer.status, Some(414 | 431)), "{answer:?}");
    s.assert_serves("a 100,000-parameter form").await;
    small.assert_serves("a 100,000-parameter form").await;
}

/// Invalid UTF-8 in every place a client can put it: never a 5xx. What the proxy reads (the
/// token form, the content type, credentials) is refused with a 4xx; what it only forwards
/// (paths, other headers) reaches the upstream byte for byte or is refused by the parser.
#[tokio::test]
async fn invalid_utf8_anywhere_is_a_4xx_or_passes_through() {
    let s = Stack::start("").await;
    let rt = s.issue(1).await.remove(0);
    let auth = format!("Authorization: {}\r\n", basic(b"www", SECRET.as_bytes()));
    let valid = format!("grant_type=refresh_token&refresh_token={rt}");
    let mut cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "path",
            b"GET /caf\xe9/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[200, 400],
        ),
        (
            "query",
            b"GET /q?x=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &[200, 400],
        ),
        (
            "token path query",
            form_post(b"/token?\xff", auth.as_bytes(), valid.as_bytes()),
            &[200, 400],
        ),
        (
            "a forwarded header value",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-Bin: \xff\xfe\x80\r\n\r\n".to_vec(),
            &[200],
        ),
        (
            "a header name",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-\xff: v\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "the request id",
            b"GET /h HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\xfe\r\n\r\n".to_vec(),
            &[200],
        ),
        (
            "the content type",
            {
                let mut r = b"POST /token HTTP/1.1\r\nHost: x\r\n\
                    Content-Type: application/x-www-form-urlencoded\xff\r\n"
                    .to_vec();
                r.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n{valid}", valid.len()).as_bytes(),
                );
                r
            },
            &[400],
        ),
        (
            "the Basic header",
            form_post(
                "/token",
                b"Authorization: Basic \xff\xfe\r\n",
                valid.as_bytes(),
            ),
            &[401],
        ),
        (
            "Basic credentials",
            form_post(
                "/token",
                format!("Authorization: {}\r\n", basic(b"www\xff", b"\xfe")).as_bytes(),
                valid.as_bytes(),
            ),
            &[401],
        ),
        (
            "a percent-encoded value",
            form_post(
                "/token",
                auth.as_bytes(),
                format!("grant_type=refresh_token&refresh_token={rt}%FF").as_bytes(),
            ),
            &[400],
        ),
        (
            "a raw value",
            form_post(
                "/token",
                auth.as_bytes(),
                b"grant_type=refresh_token&refresh_token=\xff\xfe",
            ),
            &[400],
        ),
        (
            "a parameter name",
            form_post(
                "/token",
                auth.as_bytes(),
                format!("grant_type=refresh_token&refresh_token={rt}&%FF=1").as_bytes(),
            ),
            &[400],
        ),
        (
            "a revocation token",
            form_post("/revoke", auth.as_bytes(), b"token=%FF%FE"),
            &[400],
        ),
        (
            "an introspection token",
            form_post(
                "/introspect",
                format!("Authorization: {}\r\n", basic(b"rs", SECRET.as_bytes())).as_bytes(),
                b"token=\xff",
            ),
            &[400],
        ),
    ];
    // The admin API: a Bearer token and a JSON body that are not UTF-8.
    let admin_auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let json_post = |body: &[u8], auth: &[u8]| {
        let mut r = format!(
            "POST /admin/revoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(auth);
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
        r
    };
    let admin_cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "an admin Bearer token",
            json_post(br#"{"subject":"x"}"#, b"Authorization: Bearer \xff\xfe\r\n"),
            &[401],
        ),
        (
            "an admin body",
            json_post(b"{\"subject\":\"\xff\xfe\"}", admin_auth.as_bytes()),
            &[400],
        ),
        (
            "a deeply nested admin body",
            json_post("[".repeat(60_000).as_bytes(), admin_auth.as_bytes()),
            &[400],
        ),
    ];
    for (name, request, allowed) in cases.drain(..) {
        let (answer, _) = send(&s.addr, &request).await;
        let status = answer.status.unwrap_or(0);
        assert!(allowed.contains(&status), "{name}: {answer:?}");
        if status == 200 {
            let _: Seen = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{name}: not the upstream's answer: {e}"));
        } else if !answer.body.is_empty() {
            // The proxy's own refusals are OAuth-shaped (an empty 400 is the HTTP parser's).
            assert!(answer.json()["error"].is_string(), "{name}: {answer:?}");
        }
    }
    for (name, request, allowed) in admin_cases {
        let (answer, _) = send(&s.admin_addr, &request).await;
        assert!(
            allowed.contains(&answer.status.unwrap_or(0)),
            "{name}: {answer:?}"
        );
    }
    // The family survived all of it.
    let (status, body) = idp::refresh(&s.proxy.url, "www", SECRET, &rt, None).await;
    assert_eq!(status, 200, "{body}");
    s.assert_serves("invalid UTF-8").await;
}

/// Every byte 0x00–0xFF in a refresh token, a client id, Basic credentials (encoded and raw)
/// and Bearer credentials at revocation and introspection: a 4xx, or (for a token the proxy
/// did not mint) the request forwarded to the upstream byte for byte; never a 5xx, never the
/// proxy's own tokens, and the family of the real token lives on.
#[tokio::test]
async fn token_values_with_every_byte_are_refused_or_forwarded_untouched() {
    let s = Stack::start("").await;
    let rt = s.issue(1).await.remove(0);
    let auth = format!("Authorization: {}\r\n", basic(b"www", SECRET.as_bytes()));
    let rs_auth = format!("Authorization: {}\r\n", basic(b"rs", SECRET.as_bytes()));
    // `sent_body`: the body the upstream must see when the request is forwarded (`None`: the
    // framing may differ, e.g. a bare LF in a header line ends it, as RFC 9112 §2.2 allows).
    let check = |name: String, answer: Answer, sent_body: Option<&[u8]>| match answer.status {
        Some(200) => {
            let seen: Seen = serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{name}: 200 not from the upstream: {e}"));
            if let Some(sent) = sent_body {
                assert_eq!(seen.body_sha256, sha256_hex(sent), "{name}");
            }
        }
        Some(400 | 401) => {
            assert!(answer.json()["error"].is_string(), "{name}: {answer:?}");
        }
        _ => panic!("{name}: {answer:?}"),
    };
    let mut conns = 0;
    for b in 0..=255u8 {
        let one = [b];
        let bodies = [
            (
                "refresh_token alone",
                format!("grant_type=refresh_token&refresh_token={}", pct(&one)),
                auth.clone(),
            ),
            (
                "refresh_token after a real one",
                format!("grant_type=refresh_token&refresh_token={rt}{}", pct(&one)),
                auth.clone(),
            ),
            (
                "refresh_token with a byte inside",
                {
                    // One byte of the secret part replaced (by another: never the same token).
                    let at = rt.len() - 10;
                    let b = if rt.as_bytes()[at] == b { b'!' } else { b };
                    format!(
                        "grant_type=refresh_token&refresh_token={}{}{}",
                        &rt[..at],
                        pct(&[b]),
                        &rt[at + 1..]
                    )
                },
                auth.clone(),
            ),
            (
                "client_id",
                format!(
                    "grant_type=refresh_token&refresh_token={rt}&client_id={}&client_secret=x",
                    pct(&one)
                ),
                String::new(),
            ),
            (
                "Basic id",
                format!("grant_type=refresh_token&refresh_token={rt}"),
                format!(
                    "Authorization: {}\r\n",
                    basic(&[b'w', b'w', b'w', b], SECRET.as_bytes())
                ),
            ),
            (
                "Basic secret",
                format!("grant_type=refresh_token&refresh_token={rt}"),
                format!("Authorization: {}\r\n", basic(b"www", &[b'S', b])),
            ),
        ];
        for (what, body, headers) in bodies {
            let (answer, _) = send(
                &s.addr,
                &form_post("/token", headers.as_bytes(), body.as_bytes()),
            )
            .await;
            conns += 1;
            check(format!("{what} 0x{b:02x}"), answer, Some(body.as_bytes()));
        }
        // Raw bytes in header values: what HTTP allows reaches the proxy's checks; the rest
        // is refused by the parser.
        let valid = format!("grant_type=refresh_token&refresh_token={rt}");
        for (path, body, header) in [
            (
                "/token",
                valid.clone(),
                [&b"Authorization: Basic "[..], &one, b"\r\n"].concat(),
            ),
            (
                "/token",
                valid.clone(),
                [&b"Authorization: Basic d3d3"[..], &one, b"\r\n"].concat(),
            ),
            (
                "/revoke",
                format!("token={rt}"),
                [&b"Authorization: Bearer "[..], &one, b"\r\n"].concat(),
            ),
            (
                "/introspect",
                format!("token={rt}"),
                [&b"Authorization: Bearer "[..], &one, b"\r\n"].concat(),
            ),
        ] {
            let (answer, _) = send(&s.addr, &form_post(path, &header, body.as_bytes())).await;
            conns += 1;
            let name = format!("{path} raw header byte 0x{b:02x}");
            match answer.status {
                // The parser refused the header: an empty 400 from hyper.
                Some(400) if answer.body.is_empty() => {}
                _ => check(name, answer, Some(body.as_bytes()).filter(|_| b != b'\n')),
            }
        }
        // Bearer tokens with the byte, and the byte in the token, at revocation and
        // introspection.
        for (path, headers) in [("/revoke", &auth), ("/introspect", &rs_auth)] {
            let body = format!("token={}", pct(&[b'x', b]));
            let (answer, _) = send(
                &s.addr,
                &form_post(path, headers.as_bytes(), body.as_bytes()),
            )
            .await;
            conns += 1;
            check(
                format!("{path} token 0x{b:02x}"),
                answer,
                Some(body.as_bytes()),
            );
        }
    }
    assert_eq!(conns, 256 * 12);
    // The real token's family was never touched by any of it.
    let (status, body) = idp::refresh(&s.proxy.url, "www", SECRET, &rt, None).await;
    assert_eq!(status, 200, "{body}");
    s.assert_serves("every byte").await;
}

/// The upstream's answers to a handled client's token request, as a hostile or broken IdP
/// could send them: each passes on untouched (the upstream's own refresh token, not captured)
/// and the proxy's memory stays bounded. A 50 MB answer is streamed through, not held: the
/// proxy reads at most 1 MiB of an answer to decide capture (`too_large`).
#[tokio::test]
async fn hostile_upstream_answers_pass_through_untouched_with_memory_bounded() {
    let idp = FakeIdp::start().await;
    let proxy = ProxyProcess::spawn(&format!(
        "[tokens]\nrefresh_token_key = \"{key}\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\nissue_token = \"{ISSUE_TOKEN}\"\n\
         [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
         [upstream]\nurl = \"{up}\"\n",
        key = crate::support::TEST_REFRESH_KEY,
        up = idp.url(),
    ));
    proxy.wait_ready().await;
    let baseline = proxy.peak_rss_kib();
    let client = reqwest::Client::new();
    let token_request = || {
        client
            .post(format!("{}/token", proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[("grant_type", "authorization_code"), ("code", "c")])
            .send()
    };
    let huge = {
        let mut body = br#"{"refresh_token":"upstream-rt","access_token":"at","token_type":"Bearer","scope":"read","pad":""#.to_vec();
        body.resize(50 * 1024 * 1024, b'a');
        body.extend_from_slice(b"\"}");
        body
    };
    let nested = "[".repeat(100_000).into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        ("50 MB with a length", "application/json", huge.clone(), false),
        ("50 MB streamed", "application/json", huge, true),
        ("100,000 [", "application/json", nested.clone(), false),
        ("100,000 [ streamed", "application/json", nested, true),
        (
            "not UTF-8",
            "application/json",
            b"{\"refresh_token\":\"\xff\xfe\",\"access_token\":\"\xc0\"}".to_vec(),
            false,
        ),
        (
            "not JSON",
            "application/json",
            b"refresh_token=upstream-rt&access_token=at".to_vec(),
            false,
        ),
        (
            "another content type",
            "text/html",
            br#"{"refresh_token":"upstream-rt","access_token":"at","token_type":"Bearer","scope":"read"}"#.to_vec(),
            false,
        ),
        (
            "a refresh token that is not a string",
            "application/json",
            br#"{"refresh_token":{"a":[1,2,3]},"access_token":"at","token_type":"Bearer"}"#.to_vec(),
            false,
        ),
    ];
    for (name, content_type, body, streamed) in cases {
        if streamed {
            idp.answer_raw_streamed(content_type, body.clone());
        } else {
            idp.answer_raw(content_type, body.clone());
        }
        let res = tokio::time::timeout(Duration::from_secs(60), token_request())
            .await
            .unwrap_or_else(|_| panic!("{name}: a hang"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(res.status(), 200, "{name}");
        let got = res.bytes().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got.len() == body.len() && got[..] == body[..],
            "{name}: changed"
        );
    }
    let too_large = metric(
        &proxy.admin_url,
        "refresh_proxy_capture_skips_total{reason=\"too_large\"}",
    )
    .await;
    assert_eq!(too_large, 2);
    assert_eq!(
        metric(&proxy.admin_url, "refresh_proxy_captures_total").await,
        0
    );
    let peak = proxy.peak_rss_kib();
    assert!(
        peak < baseline + 20 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB for two 50 MB answers"
    );
    // Still serving: a refresh of a family the admin API opens.
    let rt = crate::support::proxy::issue(
        &proxy.admin_url,
        ISSUE_TOKEN,
        json!({"client_id": "www", "subject": "alice", "count": 1}),
    )
    .await
    .remove(0);
    let (status, body) = idp::refresh(&proxy.url, "www", SECRET, &rt, None).await;
    assert_eq!(status, 200, "{body}");
}
