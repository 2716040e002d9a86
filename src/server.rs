//! Listeners: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or ALPN over TLS), graceful
//! shutdown.
//!
//! [`serve`] takes a bound listener and a shutdown future (the caller binds and owns shutdown;
//! tests bind `127.0.0.1:0`). When `shutdown` completes it stops accepting, asks every
//! connection to finish (HTTP/1.1 closes after the in-flight response, HTTP/2 sends GOAWAY) and
//! returns when all have. A hard deadline is the caller's: drop the future.
//!
//! For a listener served by several threads, [`accept`] runs the accept loop on the caller's
//! runtime and hands each connection (through an [`Outbox`]/[`Inbox`] pair from [`handoff`])
//! to the worker with the fewest open connections; each worker runs [`serve_inbox`] on its own
//! runtime, with the same per-connection handling and graceful shutdown as [`serve`].
//!
//! A plaintext connection is HTTP/2 when it opens with the HTTP/2 preface, else HTTP/1.1. A
//! client that sends nothing, or not a complete request head, within `header_read_timeout` is
//! disconnected; so is a TLS handshake that takes longer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

use crate::proxy::{BoxError, ClientInfo};

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
    /// `server.trusted_proxies`: peers whose forwarding headers are kept and appended to.
    pub trusted_proxies: std::sync::Arc<[crate::net::IpNet]>,
}

/// Serves `service` on `listener` until `shutdown` completes and every connection has closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    options: ConnOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = accept_one(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        spawn_connection(
            stream,
            remote,
            &tls,
            &service,
            options.clone(),
            &graceful,
            None,
        );
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection; accept errors (out of file descriptors and the like) are logged and
/// retried after a pause instead of spinning.
async fn accept_one(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection on its way from the acceptor to a worker.
struct Handoff {
    stream: std::net::TcpStream,
    remote: SocketAddr,
}

/// The acceptor's end of a worker: where [`accept`] sends connections.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

/// A worker's end: the connections [`serve_inbox`] serves.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Handoff>,
    open: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// A channel from the acceptor to one worker.
pub fn handoff() -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            open: open.clone(),
        },
        Inbox { rx, open },
    )
}

/// Accepts on `listener` until `shutdown` completes, handing each connection to the worker
/// with the fewest open connections (a connection stays on its worker for its whole life, so
/// its requests, their Redis calls and their upstream connections all run on one thread).
/// Then it closes the listener and drops the outboxes: each worker finishes its connections
/// and its [`serve_inbox`] returns.
pub async fn accept(
    listener: TcpListener,
    workers: Vec<Outbox>,
    shutdown: impl Future<Output = ()>,
) {
    let mut workers = workers;
    tokio::pin!(shutdown);
    while !workers.is_empty() {
        let (stream, remote) = tokio::select! {
            accepted = accept_one(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Leaves the acceptor's runtime; the worker registers it with its own.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let mut handoff = Handoff { stream, remote };
        let least_busy = |workers: &[Outbox]| {
            (0..workers.len()).min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
        };
        while let Some(i) = least_busy(&workers) {
            workers[i].open.fetch_add(1, Ordering::Relaxed);
            match workers[i].tx.send(handoff) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    // That worker is gone (its thread died): use the others.
                    workers.swap_remove(i);
                    handoff = back;
                }
            }
        }
    }
    drop(listener);
}

/// Serves the connections the acceptor hands to this worker until the acceptor stops, then
/// waits until every one of them has closed (HTTP/1.1 after the in-flight response, HTTP/2
/// after GOAWAY).
pub async fn serve_inbox<S, B>(
    mut inbox: Inbox,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    options: ConnOptions,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    while let Some(Handoff { stream, remote }) = inbox.rx.recv().await {
        let open = OpenGuard(inbox.open.clone());
        match TcpStream::from_std(stream) {
            Ok(stream) => spawn_connection(
                stream,
                remote,
                &tls,
                &service,
                options.clone(),
                &graceful,
                Some(open),
            ),
            Err(e) => tracing::warn!(%remote, error = %e, "cannot register a connection"),
        }
    }
    graceful.shutdown().await;
}

/// Counts a worker's open connection down when it ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection on a task of the current runtime: TLS (with ALPN) or plaintext
/// (HTTP/2 by prior knowledge, else HTTP/1.1), watched by `graceful`.
fn spawn_connection<S, B>(
    stream: TcpStream,
    remote: SocketAddr,
    tls: &Option<tokio_rustls::TlsAcceptor>,
    service: &S,
    options: ConnOptions,
    graceful: &GracefulShutdown,
    open: Option<OpenGuard>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let trusted = options
        .trusted_proxies
        .iter()
        .any(|net| net.contains(remote.ip()));
    let info = ClientInfo::new(remote, tls.is_some()).trusted(trusted);
    let svc = service.clone();
    let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        svc.clone().oneshot(req)
    });
    let watcher = graceful.watcher();
    let tls = tls.clone();
    tokio::spawn(async move {
        let _open = open;
        let timeout = options.header_read_timeout;
        let result = match tls {
            Some(acceptor) => {
                let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await
                else {
                    tracing::debug!(%remote, "TLS handshake failed or timed out");
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = TokioIo::new(stream);
                if h2 {
                    watcher
                        .watch(http2_builder().serve_connection(io, hyper_svc))
                        .await
                } else {
                    watcher
                        .watch(http1_builder(options).serve_connection(io, hyper_svc))
                        .await
                }
            }
            None => match tokio::time::timeout(timeout, sniff_h2(&stream)).await {
                Ok(Ok(true)) => {
                    let io = TokioIo::new(stream);
                    watcher
                        .watch(http2_builder().serve_connection(io, hyper_svc))
                        .await
                }
                Ok(Ok(false)) => {
                    let io = TokioIo::new(stream);
                    watcher
                        .watch(http1_builder(options).serve_connection(io, hyper_svc))
                        .await
                }
                Ok(Err(_)) | Err(_) => return,
            },
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    });
}

fn http1_builder(options: ConnOptions) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    b
}

fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Whether the connection opens with the HTTP/2 preface (`PRI * HTTP/2.0…`). Only its first
/// three bytes are needed: no HTTP/1.1 method starts with `PRI`. Peeks, so nothing is consumed.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != b"PRI"[..n] {
            return Ok(false);
        }
        if n == 3 {
            return Ok(true);
        }
        // A partial "P" or "PR": wait for the rest (bounded by the caller's timeout).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
