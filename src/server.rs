//! Listeners: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or ALPN over TLS), connection
//! limits, graceful shutdown.
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
//!
//! # Limits
//!
//! What one client can make the proxy hold is bounded per connection, and connections are
//! bounded per listener:
//!
//! - **Connections**: a [`Gate`] (`server.max_connections`) shared by the acceptor and every
//!   worker. At the cap the acceptor stops accepting: new connections wait in the kernel's
//!   listen backlog (once that is full, the kernel drops further attempts, which clients
//!   retry) until one closes. Nothing is accepted only to be closed, so a flood costs no accept
//!   work, and a burst just over the cap is served late rather than failed.
//! - **Idle connections** (`server.idle_timeout`): an HTTP/2 connection with no stream open for
//!   that long gets GOAWAY and closes. hyper has no such timer, so the connection's service
//!   counts its open streams (a request counts until its answer's body is done or dropped) and
//!   a timer runs while the count is zero; HTTP/2 PINGs do not count. An HTTP/1.1 connection
//!   waiting for its next request is closed after the shorter of `idle_timeout` and
//!   `header_read_timeout` (hyper times the next request head from the end of the previous
//!   answer, so the two are one timer there).
//! - **Heads**: `server.max_header_bytes` for an HTTP/1.1 request line and headers (431
//!   beyond; hyper also refuses more than 100 header lines with 431) and as HTTP/2's
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`. hyper's HTTP/1.1 buffers grow to at most
//!   `max_header_bytes` + [`H1_MIN_BUF_SIZE`].
//! - **HTTP/2**: at most `server.http2_max_concurrent_streams` streams at once (more are
//!   refused with `REFUSED_STREAM`); [`H2_MAX_PENDING_ACCEPT_RESET_STREAMS`] streams reset by
//!   the client before they were served and [`H2_MAX_LOCAL_ERROR_RESET_STREAMS`] streams reset by
//!   the proxy for protocol errors, after which the connection gets GOAWAY (rapid reset, CVE
//!   2023-44487); at most [`H2_MAX_SEND_BUF_SIZE`] bytes of answer queued per stream; PINGs
//!   every `http2_keep_alive_interval`, the connection closed when one is not answered within
//!   `http2_keep_alive_timeout`.
//! - **Bodies held**: the layer reads token, revocation and introspection bodies whole, at most
//!   `max_body_bytes` each. On HTTP/2 the connection's streams share a
//!   [`BodyBudget`](crate::layer::BodyBudget) of `server.max_connection_body_bytes`; HTTP/1.1
//!   reads one request at a time. So per connection the bodies the proxy holds are at most
//!   `max_connection_body_bytes` (HTTP/2) or `max_body_bytes` (HTTP/1.1), plus what HTTP/2
//!   flow control lets a client send before the proxy reads it (hyper's windows: 1 MiB per
//!   connection).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tower::{Service, ServiceExt};

use crate::client_cert::{CLIENT_CERT, CLIENT_CERT_CHAIN, ClientCert};
use crate::config::ServerConfig;
use crate::conn::{BoxError, ClientInfo};
use crate::layer::BodyBudget;
use crate::metrics::Metrics;

/// HTTP/2 streams a client may reset before the proxy served them, after which the connection
/// gets GOAWAY (the `h2` crate's own default, set here so it cannot change under us).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the proxy may reset for a client's protocol errors (refused streams
/// included) over a connection's life, after which it gets GOAWAY.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Bytes of answer queued per HTTP/2 stream before the proxy stops reading it from upstream
/// (hyper's default is about 400 KB; a client that opens every stream and reads nothing would
/// make each hold that much).
pub const H2_MAX_SEND_BUF_SIZE: usize = 64 * 1024;

/// The smallest step of an HTTP/1.1 connection's buffers: they grow up to `max_header_bytes`
/// plus this (48 KiB with the default 32 KiB heads), at least twice this.
pub const H1_MIN_BUF_SIZE: usize = 16 * 1024;

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
    /// `server.trusted_proxies`: peers whose forwarding headers are kept and appended to.
    pub trusted_proxies: std::sync::Arc<[crate::net::IpNet]>,
    /// `server.idle_timeout`.
    pub idle_timeout: Duration,
    /// `server.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `server.http2_max_concurrent_streams`.
    pub http2_max_concurrent_streams: u32,
    /// `server.http2_keep_alive_interval`; `None`: no pings.
    pub http2_keep_alive_interval: Option<Duration>,
    /// `server.http2_keep_alive_timeout`.
    pub http2_keep_alive_timeout: Duration,
    /// `server.max_connection_body_bytes`: each HTTP/2 connection's [`BodyBudget`]; `None`:
    /// none (only `max_body_bytes` per request).
    pub max_connection_body_bytes: Option<usize>,
    /// `server.client_cert_header`: a trusted proxy's `Client-Cert` is the client's certificate.
    pub client_cert_header: bool,
}

impl ConnOptions {
    /// The settings `[server]` gives.
    pub fn from_config(server: &ServerConfig) -> ConnOptions {
        ConnOptions {
            header_read_timeout: server.header_read_timeout,
            trusted_proxies: server.trusted_proxies.clone().into(),
            idle_timeout: server.idle_timeout,
            max_header_bytes: server.max_header_bytes,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            http2_keep_alive_interval: Some(server.http2_keep_alive_interval)
                .filter(|d| !d.is_zero()),
            http2_keep_alive_timeout: server.http2_keep_alive_timeout,
            max_connection_body_bytes: Some(server.max_connection_body_bytes),
            client_cert_header: server.client_cert_header,
        }
    }
}

/// The cap on a listener's open connections (`server.max_connections`), shared by its acceptor
/// and every worker; with metrics, the open connections and the times the cap was reached.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Gate {
    slots: Option<Arc<Semaphore>>,
    max: usize,
    metrics: Option<Arc<Metrics>>,
    /// When the cap was last logged (once per [`GATE_LOG_INTERVAL`] at most).
    logged: Arc<Mutex<Option<Instant>>>,
    /// The config key of the cap, for that log line.
    key: &'static str,
}

const GATE_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Gate {
    /// No cap.
    pub fn unlimited() -> Gate {
        Gate {
            slots: None,
            max: usize::MAX,
            metrics: None,
            logged: Arc::default(),
            key: "server.max_connections",
        }
    }

    /// The same gate, naming `key` as its cap when it logs (the admin port's).
    pub fn named(mut self, key: &'static str) -> Gate {
        self.key = key;
        self
    }

    /// At most `max` connections open at once (at least 1).
    pub fn new(max: usize) -> Gate {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Gate {
            slots: Some(Arc::new(Semaphore::new(max))),
            max,
            ..Gate::unlimited()
        }
    }

    /// Counts open connections and the times the cap is reached in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Gate {
        self.metrics = Some(metrics);
        self
    }

    /// A slot for the next connection, waiting (not accepting) while every slot is taken.
    async fn admit(&self) -> Admission {
        let permit = match &self.slots {
            None => None,
            Some(slots) => Some(match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.at_cap();
                    match slots.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        // Never closed; were it, waiting forever is what the cap means.
                        Err(_) => std::future::pending().await,
                    }
                }
            }),
        };
        Admission {
            _permit: permit,
            _open: None,
        }
    }

    fn at_cap(&self) {
        if let Some(metrics) = &self.metrics {
            crate::metrics::inc(&metrics.connection_limit_reached);
        }
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= GATE_LOG_INTERVAL) {
            *logged = Some(Instant::now());
            tracing::warn!(
                max_connections = self.max,
                "{} reached: not accepting until a connection closes",
                self.key
            );
        }
    }
}

/// A connection's slot under its [`Gate`]; given back when the connection ends.
#[derive(Debug)]
struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    _open: Option<crate::metrics::OpenConnection>,
}

/// Serves `service` on `listener` until `shutdown` completes and every connection has closed.
/// At most `gate`'s connections are open at once.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    options: ConnOptions,
    gate: Gate,
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
    let drain = Drain::new();
    tokio::pin!(shutdown);
    loop {
        let Some((stream, remote, admission)) =
            next_connection(&listener, &gate, shutdown.as_mut()).await
        else {
            break;
        };
        let _ = stream.set_nodelay(true);
        spawn_connection(
            stream,
            remote,
            &tls,
            &service,
            options.clone(),
            &drain,
            (admission, None),
        );
    }
    drop(listener);
    drain.shutdown().await;
}

/// The next connection with its slot, or `None` once `shutdown` completes.
async fn next_connection(
    listener: &TcpListener,
    gate: &Gate,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<(TcpStream, SocketAddr, Admission)> {
    // The slot first: at the cap, connections stay in the kernel's backlog.
    let admission = tokio::select! {
        admission = gate.admit() => admission,
        () = shutdown.as_mut() => return None,
    };
    let (stream, remote) = tokio::select! {
        accepted = accept_one(listener) => accepted,
        () = shutdown => return None,
    };
    let mut admission = admission;
    admission._open = gate.metrics.as_ref().map(|m| m.open_connection());
    Some((stream, remote, admission))
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
    admission: Admission,
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
/// At most `gate`'s connections are open at once, all workers together. Then it closes the
/// listener and drops the outboxes: each worker finishes its connections and its
/// [`serve_inbox`] returns.
pub async fn accept(
    listener: TcpListener,
    gate: Gate,
    workers: Vec<Outbox>,
    shutdown: impl Future<Output = ()>,
) {
    let mut workers = workers;
    tokio::pin!(shutdown);
    while !workers.is_empty() {
        let Some((stream, remote, admission)) =
            next_connection(&listener, &gate, shutdown.as_mut()).await
        else {
            break;
        };
        let _ = stream.set_nodelay(true);
        // Leaves the acceptor's runtime; the worker registers it with its own.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let mut handoff = Handoff {
            stream,
            remote,
            admission,
        };
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
    let drain = Drain::new();
    while let Some(Handoff {
        stream,
        remote,
        admission,
    }) = inbox.rx.recv().await
    {
        let open = OpenGuard(inbox.open.clone());
        match TcpStream::from_std(stream) {
            Ok(stream) => spawn_connection(
                stream,
                remote,
                &tls,
                &service,
                options.clone(),
                &drain,
                (admission, Some(open)),
            ),
            Err(e) => tracing::warn!(%remote, error = %e, "cannot register a connection"),
        }
    }
    drain.shutdown().await;
}

/// Counts a worker's open connection down when it ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Asks connections to finish and waits until they have: each connection holds a receiver,
/// which the sender sees go away when the connection ends.
struct Drain(watch::Sender<()>);

impl Drain {
    fn new() -> Drain {
        Drain(watch::channel(()).0)
    }

    fn watcher(&self) -> watch::Receiver<()> {
        self.0.subscribe()
    }

    async fn shutdown(self) {
        let _ = self.0.send(());
        self.0.closed().await;
    }
}

/// Serves one connection on a task of the current runtime: TLS (with ALPN) or plaintext
/// (HTTP/2 by prior knowledge, else HTTP/1.1), watched by `drain`. `held` (its slot under the
/// gate, and its worker's count) is given back when the connection ends.
fn spawn_connection<S, B>(
    stream: TcpStream,
    remote: SocketAddr,
    tls: &Option<tokio_rustls::TlsAcceptor>,
    service: &S,
    options: ConnOptions,
    drain: &Drain,
    held: (Admission, Option<OpenGuard>),
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
    let service = service.clone();
    let drain = drain.watcher();
    let tls = tls.clone();
    tokio::spawn(async move {
        let _held = held;
        let timeout = options.header_read_timeout;
        let result = match tls {
            Some(acceptor) => {
                let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await
                else {
                    tracing::debug!(%remote, "TLS handshake failed or timed out");
                    return;
                };
                let session = stream.get_ref().1;
                let h2 = session.alpn_protocol() == Some(b"h2");
                // docs/design.md §4.17: the certificate the client proved it holds, if any.
                let cert = session
                    .peer_certificates()
                    .and_then(ClientCert::from_tls)
                    .map(Arc::new);
                let io = TokioIo::new(stream);
                let info = Conn { info, cert };
                if h2 {
                    serve_http2(io, service, info, &options, drain).await
                } else {
                    serve_http1(io, service, info, &options, drain).await
                }
            }
            None => match tokio::time::timeout(timeout, sniff_h2(&stream)).await {
                Ok(Ok(true)) => {
                    let info = Conn { info, cert: None };
                    serve_http2(TokioIo::new(stream), service, info, &options, drain).await
                }
                Ok(Ok(false)) => {
                    let info = Conn { info, cert: None };
                    serve_http1(TokioIo::new(stream), service, info, &options, drain).await
                }
                Ok(Err(_)) | Err(_) => return,
            },
        };
        if let Err(e) = result {
            tracing::debug!(%remote, error = %e, "connection ended with an error");
        }
    });
}

/// What a connection tells each of its requests: the peer, and the certificate it presented
/// on the TLS listener.
struct Conn {
    info: ClientInfo,
    cert: Option<Arc<ClientCert>>,
}

impl Conn {
    /// Puts the connection's facts into a request: [`ClientInfo`], and the client's certificate
    /// (`Arc<ClientCert>`): the TLS one, else, from a trusted proxy with
    /// `server.client_cert_header`, its RFC 9440 `Client-Cert`. From any other peer, the
    /// `Client-Cert` headers never reach the layer or the upstream as they came.
    fn tell<B>(&self, req: &mut Request<B>, options: &ConnOptions) {
        let cert = match &self.cert {
            Some(cert) => Some(cert.clone()),
            None if self.info.trusted && options.client_cert_header => req
                .headers()
                .get(CLIENT_CERT)
                .and_then(|c| ClientCert::from_headers(c, req.headers().get(CLIENT_CERT_CHAIN)))
                .map(Arc::new),
            None => None,
        };
        if !self.info.trusted {
            req.headers_mut().remove(CLIENT_CERT);
            req.headers_mut().remove(CLIENT_CERT_CHAIN);
        }
        if let Some(cert) = cert {
            req.extensions_mut().insert(cert);
        }
        req.extensions_mut().insert(self.info.clone());
    }
}

/// An HTTP/1.1 connection until it ends.
async fn serve_http1<I, S, B>(
    io: I,
    service: S,
    info: Conn,
    options: &ConnOptions,
    drain: watch::Receiver<()>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let opts = options.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        info.tell(&mut req, &opts);
        service.clone().oneshot(req)
    });
    let conn = http1_builder(options).serve_connection(io, svc);
    drive(conn, http1::Connection::graceful_shutdown, drain, None).await
}

/// An HTTP/2 connection until it ends: its streams share a [`BodyBudget`] and are counted, so
/// the connection can be closed after `idle_timeout` with none open.
async fn serve_http2<I, S, B>(
    io: I,
    service: S,
    info: Conn,
    options: &ConnOptions,
    drain: watch::Receiver<()>,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let streams = Arc::new(OpenStreams::default());
    let budget = options.max_connection_body_bytes.map(BodyBudget::new);
    let counted = streams.clone();
    let opts = options.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        info.tell(&mut req, &opts);
        if let Some(budget) = &budget {
            req.extensions_mut().insert(budget.clone());
        }
        let open = counted.open();
        let answer = service.clone().oneshot(req);
        async move {
            let res = answer.await?;
            Ok::<_, Infallible>(res.map(|body| Counted { body, _open: open }))
        }
    });
    let conn = http2_builder(options).serve_connection(io, svc);
    let idle = (streams, options.idle_timeout);
    drive(
        conn,
        http2::Connection::graceful_shutdown,
        drain,
        Some(idle),
    )
    .await
}

/// Runs a connection to its end. When `drain` fires (shutdown), or when `idle` says no request
/// has been in flight for its timeout, the connection is asked to finish gracefully (HTTP/2:
/// GOAWAY) and is run until it has.
async fn drive<C>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    mut drain: watch::Receiver<()>,
    idle: Option<(Arc<OpenStreams>, Duration)>,
) -> C::Output
where
    C: Future,
{
    let mut conn = std::pin::pin!(conn);
    let idle = async move {
        match idle {
            Some((streams, timeout)) => streams.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    let mut idle = std::pin::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            out = conn.as_mut() => return out,
            // `drain` stays alive (and counted) until the connection has ended.
            _ = drain.changed(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
            () = &mut idle, if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
        }
    }
}

/// The requests of one HTTP/2 connection that are in flight: from the service call until the
/// answer's body is done or dropped (a stream reset drops it).
#[derive(Debug, Default)]
struct OpenStreams {
    open: AtomicUsize,
    changed: Notify,
}

impl OpenStreams {
    fn open(self: &Arc<Self>) -> OpenStream {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_waiters();
        }
        OpenStream(self.clone())
    }

    /// Completes once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the count is read: no change between the two is missed.
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                biased;
                () = changed => {}
                () = tokio::time::sleep(timeout) => return,
            }
        }
    }
}

/// One request in flight on an HTTP/2 connection.
#[derive(Debug)]
struct OpenStream(Arc<OpenStreams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

pin_project! {
    /// An answer's body that keeps its request counted as in flight until it is dropped.
    struct Counted<B> {
        #[pin]
        body: B,
        _open: OpenStream,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn http1_builder(options: &ConnOptions) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // The wait for the next request on a kept-alive connection is the same timer.
        .header_read_timeout(options.header_read_timeout.min(options.idle_timeout))
        .max_header_size(options.max_header_bytes)
        // hyper's read and write buffers grow up to this (its default is about 400 KB): a
        // head must fit; bodies are read and written through it in pieces.
        .max_buf_size(options.max_header_bytes.max(H1_MIN_BUF_SIZE) + H1_MIN_BUF_SIZE)
        .keep_alive(true);
    b
}

fn http2_builder(options: &ConnOptions) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(options.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(H2_MAX_SEND_BUF_SIZE)
        .keep_alive_interval(options.http2_keep_alive_interval)
        .keep_alive_timeout(options.http2_keep_alive_timeout);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_only_with_no_request_in_flight_for_the_timeout() {
        let streams = Arc::new(OpenStreams::default());
        let timeout = Duration::from_secs(10);
        let idle = streams.idle_for(timeout);
        tokio::pin!(idle);
        // A request opens before the timeout and stays in flight well past it.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let open = streams.open();
        tokio::select! {
            () = &mut idle => panic!("idle with a request in flight"),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        // Once it is done, idle after the full timeout, not before.
        drop(open);
        let done = tokio::time::Instant::now();
        idle.await;
        assert_eq!(done.elapsed(), timeout);
    }

    #[tokio::test]
    async fn the_gate_admits_up_to_its_cap_and_counts_the_times_it_is_reached() {
        let metrics = Arc::new(Metrics::default());
        let gate = Gate::new(2).with_metrics(metrics.clone());
        let a = gate.admit().await;
        let _b = gate.admit().await;
        let third = gate.admit();
        tokio::pin!(third);
        assert!(futures_util::poll!(third.as_mut()).is_pending());
        let text = metrics.render();
        assert!(text.contains("refresh_proxy_connection_limit_reached_total 1"));
        drop(a);
        let _c = third.await;
    }
}
