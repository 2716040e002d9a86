//! The least a forwarder on the proxy's runtime can cost: a lower bound for the "CPU per
//! forwarded GET" line of bench/README.md, measured beside nginx and the proxy by
//! `python3 bench/forward_bound.py`.
//!
//! What it keeps of the proxy: tokio, one single-threaded runtime per worker thread (the
//! listener shared with `SO_REUSEPORT`), keep-alive HTTP/1.1 on both sides, and `httparse`, the
//! parser under hyper. What it leaves out: hyper's connection state machines, `HeaderMap`s and
//! `Request`/`Response` values, every header rule (hop-by-hop fields, `X-Forwarded-*`, the
//! request id), the access log, timers, limits, the pool (each client connection gets its own
//! upstream connection) and every error path. It relays each message byte for byte and handles
//! only messages without a body or framed by `Content-Length`: enough for the benchmark's GETs,
//! and nothing to forward real traffic with.
//!
//! `cargo run --release --example bare_forward -- LISTEN UPSTREAM [WORKERS]`

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_forward LISTEN UPSTREAM [WORKERS]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is host:port");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is host:port");
    let workers: usize = args.get(3).and_then(|w| w.parse().ok()).unwrap_or(2);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .expect("a runtime");
                runtime.block_on(serve(listen, upstream));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseport(true).expect("SO_REUSEPORT");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(listen).expect("bind LISTEN");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

/// One client connection and its own upstream connection, request after request.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let mut inbuf = Vec::with_capacity(8192);
    let mut outbuf = Vec::with_capacity(8192);
    loop {
        // Each message, head and `Content-Length` body, relayed as it came.
        let Some(n) = read_message(&mut client, &mut inbuf, Side::Request).await? else {
            return Ok(());
        };
        up.write_all(&inbuf[..n]).await?;
        inbuf.drain(..n);
        let Some(n) = read_message(&mut up, &mut outbuf, Side::Response).await? else {
            return Ok(());
        };
        client.write_all(&outbuf[..n]).await?;
        outbuf.drain(..n);
    }
}

#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

/// Reads until `buf` holds one whole message (head and `Content-Length` body); its length, or
/// `None` at the end of the stream.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    side: Side,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(n) = complete(buf, side)? {
            return Ok(Some(n));
        }
        // Into the spare capacity: nothing is zeroed first.
        buf.reserve(8192);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The length of the first whole message in `buf`, if it holds one.
fn complete(buf: &[u8], side: Side) -> std::io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let invalid = |e: httparse::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let (status, body) = match side {
        Side::Request => {
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(buf).map_err(invalid)?;
            (status, content_length(req.headers))
        }
        Side::Response => {
            let mut res = httparse::Response::new(&mut headers);
            let status = res.parse(buf).map_err(invalid)?;
            (status, content_length(res.headers))
        }
    };
    let httparse::Status::Complete(head) = status else {
        return Ok(None);
    };
    Ok((buf.len() >= head + body).then_some(head + body))
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0)
}
