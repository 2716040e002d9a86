//! One log line per request, with a request id.
//!
//! [`AccessLogLayer`] wraps the proxy's whole stack. It takes the request id from the client's
//! `X-Request-Id` (when it is 1–128 visible ASCII characters) or makes one, puts it on the
//! request (so the upstream gets it) and on the response, and when the response head is ready
//! logs one `info` line: request id, method, path, status, duration, client address.
//!
//! What it never logs: the query string (authorization codes and, with some clients, tokens
//! travel there), any header value other than the request id, any body. The path is logged as
//! received, which is safe for an OAuth server's endpoints.
//!
//! Set `log.access_log = false` to drop these lines (load-testing rigs at tens of thousands of
//! requests a second); security events and errors are logged either way.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use tower::{Layer, Service};

use crate::conn::ClientInfo;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Makes request ids: a random per-process prefix and a counter (unique, cheap, no syscall).
#[derive(Debug)]
struct Ids {
    prefix: String,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Ids {
        let mut bytes = [0u8; 6];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
        Ids {
            prefix: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            next: AtomicU64::new(1),
        }
    }

    fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // `<prefix>-<n in hex>`, written on the stack: the header value's own copy is the one
        // allocation.
        let mut buf = [0u8; 32];
        let head = self.prefix.len();
        buf[..head].copy_from_slice(self.prefix.as_bytes());
        buf[head] = b'-';
        let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for (i, out) in buf[head + 1..head + 1 + digits].iter_mut().enumerate() {
            let shift = 4 * (digits - 1 - i);
            *out = b"0123456789abcdef"[((n >> shift) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf[..head + 1 + digits]).expect("hex is a valid header")
    }
}

/// Accepts a client's request id only when it is short, visible ASCII.
fn usable(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    ids: Arc<Ids>,
    enabled: bool,
}

impl AccessLogLayer {
    /// `enabled = false` keeps the request ids but drops the per-request line.
    pub fn new(enabled: bool) -> AccessLogLayer {
        AccessLogLayer {
            ids: Arc::new(Ids::new()),
            enabled,
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    layer: AccessLogLayer,
}

impl<S, B, ResB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if usable(v) => v.clone(),
            _ => {
                let id = self.layer.ids.make();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // What the line needs is taken only for a line that will be written (`log.level` may
        // drop it).
        let line = (self.layer.enabled && tracing::enabled!(tracing::Level::INFO)).then(|| Line {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            remote: req.extensions().get::<ClientInfo>().map(|c| c.remote.ip()),
        });
        AccessLogFuture {
            inner: inner.call(req),
            id: Some(id),
            line,
        }
    }
}

/// What one access log line says besides the status.
struct Line {
    started: Instant,
    method: Method,
    path: String,
    remote: Option<IpAddr>,
}

pin_project_lite::pin_project! {
    /// [`AccessLog`]'s response future: the inner service's, then the line and the request id
    /// on the answer. A struct rather than a boxed `async` block, so a request costs no
    /// allocation and no copy of the inner future here.
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
        line: Option<Line>,
    }
}

impl<F, ResB, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(line) = this.line.take() {
            tracing::info!(
                request_id = this
                    .id
                    .as_ref()
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or_default(),
                method = %line.method,
                path = line.path,
                status = res.status().as_u16(),
                duration_us = line.started.elapsed().as_micros() as u64,
                remote = line.remote.map(|ip| ip.to_string()).unwrap_or_default(),
                "request"
            );
        }
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[test]
    fn request_ids_are_the_prefix_and_a_hex_counter() {
        let ids = Ids {
            prefix: "0a1b2c3d4e5f".to_owned(),
            next: AtomicU64::new(0),
        };
        for expected in ["0a1b2c3d4e5f-0", "0a1b2c3d4e5f-1"] {
            assert_eq!(ids.make(), expected);
        }
        ids.next.store(0xabc, Ordering::Relaxed);
        assert_eq!(ids.make(), "0a1b2c3d4e5f-abc");
        ids.next.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(ids.make(), "0a1b2c3d4e5f-ffffffffffffffff");
    }

    async fn seen(req: Request<()>) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let svc =
            AccessLogLayer::new(true).layer(tower::service_fn(|req: Request<()>| async move {
                let mut res = Response::new(());
                if let Some(v) = req.headers().get(&X_REQUEST_ID) {
                    res.headers_mut().insert("x-upstream-saw", v.clone());
                }
                Ok::<_, Infallible>(res)
            }));
        let res = svc.oneshot(req).await.expect("infallible");
        (
            res.headers().get("x-upstream-saw").cloned(),
            res.headers().get(&X_REQUEST_ID).cloned(),
        )
    }

    #[tokio::test]
    async fn a_clients_request_id_is_passed_on_and_returned() {
        let req = Request::get("/x")
            .header("x-request-id", "abc-123")
            .body(())
            .expect("req");
        let (upstream, returned) = seen(req).await;
        assert_eq!(
            upstream.as_ref().map(|v| v.as_bytes()),
            Some(&b"abc-123"[..])
        );
        assert_eq!(returned, upstream);
    }

    #[tokio::test]
    async fn a_missing_or_odd_request_id_is_replaced() {
        for bad in [None, Some("has space"), Some(&*"x".repeat(200))] {
            let mut b = Request::get("/x");
            if let Some(v) = bad {
                b = b.header("x-request-id", v);
            }
            let (upstream, returned) = seen(b.body(()).expect("req")).await;
            let id = upstream.expect("an id was made");
            assert_ne!(Some(id.as_bytes()), bad.map(str::as_bytes));
            assert_eq!(Some(id), returned);
        }
    }
}
