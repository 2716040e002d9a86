//! Plain-HTTP/1.1 upstream connections, driven by the request that uses them.
//!
//! For an `http://` upstream each worker keeps its idle upstream connections here rather than
//! in hyper-util's pooled client. A request takes a connection, sends on it and polls the
//! connection itself while it waits for the response head; the answer's body ([`PooledBody`])
//! goes on polling it until the last byte and then gives it back. So a forwarded request never
//! leaves the task of the client's connection: no connection task to wake and no keyed map to
//! hash per request, which is most of what separated the proxy from nginx on the forwarding path
//! (bench/README.md). `https://` upstreams keep the pooled client, which negotiates HTTP/2.
//!
//! Idle connections are not polled. One the upstream closed is noticed when it is next taken
//! (a poll finds the end of its stream) or by the reaper, which runs every
//! `upstream.pool_idle_timeout` (at most every 5 s) and also closes connections idle that long. A request that finds its connection closed before
//! anything was written is sent again on a new one, as hyper-util's client does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::{ForwardError, UpstreamBody};

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, UpstreamBody>>>;

/// One upstream connection: the handle that sends on it and the state machine that runs it.
struct Conn {
    sender: SendRequest<UpstreamBody>,
    driver: Driver,
    idle_since: Instant,
}

impl Conn {
    /// Polls an idle connection without a task to wake: `true` when it has ended (the upstream
    /// closed it, or it failed).
    fn has_ended(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.driver.as_mut().poll(&mut cx).is_ready()
    }
}

/// One worker's idle connections to one `http://` upstream.
pub(super) struct Pool {
    idle: Mutex<Vec<Conn>>,
    connector: HttpConnector,
    /// The upstream's `http://host:port`, what the connector dials.
    target: Uri,
    host: HeaderValue,
    max_idle: usize,
    idle_timeout: Duration,
    /// A reaper task is running.
    reaping: AtomicBool,
}

/// The reaper runs every `pool_idle_timeout`, within these bounds: often enough that a
/// connection the upstream closed (after its own, usually shorter, keep-alive timeout) does not
/// hold a socket for long, and never in a tight loop.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(100);
const MAX_REAP_PERIOD: Duration = Duration::from_secs(5);

impl Pool {
    pub(super) fn new(
        connector: HttpConnector,
        target: Uri,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            connector,
            target,
            host,
            max_idle,
            idle_timeout,
            reaping: AtomicBool::new(false),
        }
    }

    /// Sends `req` on an idle connection or a new one and returns the response head; the body
    /// keeps the connection until it has been read.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, ForwardError> {
        let mut req = self.prepared(req);
        let mut reused = self.checkout();
        // A copy to send again if a connection that sat idle fails before its answer: the
        // upstream may have closed it just as this request went out (RFC 9112 §9.3.1 allows
        // retrying idempotent requests then; nginx does). Only safe methods without a body, and
        // only after an idle spell, so the hot path of a busy proxy copies nothing.
        let mut again = reused
            .as_ref()
            .filter(|c| c.idle_since.elapsed() >= RACE_IDLE)
            .and_then(|_| replayable(&req));
        loop {
            let fresh = reused.is_none();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                None => self.connect().await?,
            };
            match exchange(&mut conn, req).await {
                Ok((res, ended)) => {
                    let lease = (!ended).then(|| Lease {
                        conn,
                        pool: Arc::clone(self),
                    });
                    let (parts, body) = res.into_parts();
                    let mut body = PooledBody { body, lease };
                    if body.body.is_end_stream() {
                        // No body to read (HEAD, 204, 304, a zero length): the connection is
                        // free now, and no poll of the body would free it.
                        std::future::poll_fn(|cx| {
                            body.release(cx);
                            Poll::Ready(())
                        })
                        .await;
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match (e.take_message(), again.take()) {
                    // Closed before anything was written (the upstream ended the idle
                    // connection just now): once more on a new connection.
                    (Some(unsent), _) if !fresh => req = unsent,
                    // Written, then the connection failed before an answer: a safe request
                    // goes once more on a new connection.
                    (None, Some(copy)) if !fresh => req = copy,
                    _ => return Err(ForwardError::Failed(e.into_error().into())),
                },
            }
        }
    }

    /// HTTP/1.1 with a `Host` (requests built with [`super::Forward::uri`] carry the origin
    /// form already).
    fn prepared(&self, mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        req
    }

    /// A pool for another worker: the same upstream and limits, no connections.
    pub(super) fn empty_twin(&self) -> Pool {
        Pool::new(
            self.connector.clone(),
            self.target.clone(),
            self.host.clone(),
            self.max_idle,
            self.idle_timeout,
        )
    }

    /// The most recently used idle connection that is still open and ready.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut conn) = idle.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout
                && !conn.has_ended()
                && conn.sender.is_ready()
            {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, ForwardError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.target.clone())
            .await
            .map_err(|e| ForwardError::Unreachable(e.into()))?;
        let (sender, driver) = http1::handshake(io)
            .await
            .map_err(|e| ForwardError::Unreachable(e.into()))?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            idle_since: Instant::now(),
        })
    }

    fn put(self: &Arc<Self>, mut conn: Conn) {
        conn.idle_since = Instant::now();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(conn);
        }
        self.ensure_reaper();
    }

    /// Closes idle connections that timed out or ended. `true`: none is left.
    fn reap(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|c| c.idle_since.elapsed() < self.idle_timeout && !c.has_ended());
        idle.is_empty()
    }

    /// Starts the reaper on the current runtime (the worker's) unless one runs. It stops when
    /// nothing is idle and the next `put` starts it again.
    fn ensure_reaper(self: &Arc<Self>) {
        if self.reaping.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Release);
            return;
        };
        let pool: Weak<Pool> = Arc::downgrade(self);
        let period = self.idle_timeout.clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = pool.upgrade() else { return };
                if !pool.reap() {
                    continue;
                }
                pool.reaping.store(false, Ordering::Release);
                // A `put` between the reap and the store saw a reaper running: take it over.
                let idle_again = !pool
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if !idle_again || pool.reaping.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

/// A connection idle at least this long may be closed by the upstream as a request goes out
/// (servers close idle connections after their keep-alive timeout, seconds in practice).
const RACE_IDLE: Duration = Duration::from_millis(100);

/// A copy of a safe request without a body (GET, HEAD, OPTIONS), to send again.
fn replayable(req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(UpstreamBody::default());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Sends `req` on `conn` and polls the connection until the response head is in. Also says
/// whether the connection ended meanwhile (the upstream closes it after this answer).
async fn exchange(
    conn: &mut Conn,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, bool), hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
    let Conn { sender, driver, .. } = conn;
    let mut answer = std::pin::pin!(sender.try_send_request(req));
    let mut ended = false;
    std::future::poll_fn(|cx| {
        if !ended {
            ended = driver.as_mut().poll(cx).is_ready();
        }
        answer.as_mut().poll(cx)
    })
    .await
    .map(|res| (res, ended))
}

/// A connection lent to one answer's body.
struct Lease {
    conn: Conn,
    pool: Arc<Pool>,
}

/// The body of an answer read over a pooled connection. Polling it also runs the connection;
/// at its end the connection goes back to the pool. Dropped before its end, it closes the
/// connection, whose state is then unknown.
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    /// The body is read: run the connection once more, so it is idle and ready for the next
    /// request, and give it back.
    fn release(&mut self, cx: &mut Context<'_>) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        if lease.conn.driver.as_mut().poll(cx).is_pending() && lease.conn.sender.is_ready() {
            lease.pool.put(lease.conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease
            && lease.conn.driver.as_mut().poll(cx).is_ready()
        {
            // The connection ended; what it read is already in the body's channel.
            this.lease = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(cx),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(cx),
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
