//! OpenTelemetry traces: the spans the proxy makes and the W3C trace context it continues and
//! passes on (docs/operations.md, "Traces").
//!
//! Off unless the binary's exporter set-up (`otel_export`, from the `OTEL_*` environment) turns
//! it on with [`turn_on`]. While off, [`span!`] makes no span at all (one relaxed load), the
//! server layer passes the request straight through, and nothing touches a `traceparent`: a
//! client's goes upstream as it came, like any other header.
//!
//! While on: the [`ServerSpanLayer`] continues the client's `traceparent` / `tracestate` (or
//! starts a trace), every span named in docs/operations.md is a child of the one around it,
//! and each request to the upstream (forwarded or the proxy's own) carries a `traceparent` for
//! the proxy's `forward` span ([`inject`]).
//!
//! What no span ever records: a token, a secret, a code, an assertion, a header value, a cookie,
//! a form body or a query string. The attributes are the request's method, path and status,
//! the grant type as one of a fixed set of names, and the client id only of a client in the
//! config.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header::{HeaderMap, HeaderName};
use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span of the proxy's own: the OpenTelemetry layer takes only these, the
/// log output never shows them.
pub const TARGET: &str = "refresh_proxy::span";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (and so spans made and trace context passed on).
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Turns spans and propagation on for the process: called once, by the exporter set-up, before
/// the proxy serves.
pub fn turn_on() {
    ON.store(true, Ordering::Relaxed);
}

/// A span of the proxy's own, or `Span::none()` (free) while traces are off.
macro_rules! span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::otel::on() {
            tracing::info_span!(target: $crate::otel::TARGET, $name $(, $($fields)*)?)
        } else {
            tracing::Span::none()
        }
    };
}
pub(crate) use span;

/// Records the grant type (one of the fixed names of `metrics::Grant`) on the request's span.
pub(crate) fn record_grant_type(name: &'static str) {
    if on() {
        tracing::Span::current().record("oauth.grant_type", name);
    }
}

/// Records the client id on the request's span: only for a client in the config (a client id
/// a client made up is attacker-chosen text).
pub(crate) fn record_client_id(id: &str) {
    if on() {
        tracing::Span::current().record("oauth.client_id", id);
    }
}

/// Sets the current span's context as `traceparent` (and `tracestate`, when it has one) on a
/// request about to go upstream, replacing the client's. While off, does nothing.
pub(crate) fn inject(headers: &mut HeaderMap) {
    if !on() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Makes the server span of each request, the child of the client's `traceparent` when it
/// sent a valid one. Wraps the whole stack (src/app.rs).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> ServerSpan<S> {
        ServerSpan { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ServerSpan<S> {
    inner: S,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<Request<B>> for ServerSpan<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResB: 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Either<S::Future, Boxed<Result<Response<ResB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !on() {
            return Either::Left(self.inner.call(req));
        }
        let method = req.method().as_str();
        let span = tracing::info_span!(
            target: TARGET,
            "request",
            otel.kind = "server",
            otel.name = method,
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            url.path = req.uri().path(),
            http.response.status_code = tracing::field::Empty,
            oauth.grant_type = tracing::field::Empty,
            oauth.client_id = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let _ = span.set_parent(parent);
        let fut = span.in_scope(|| self.inner.call(req));
        let done = span.clone();
        Either::Right(Box::pin(
            async move {
                let res = fut.await;
                if let Ok(res) = &res {
                    let status = res.status();
                    done.record("http.response.status_code", status.as_u16());
                    // OpenTelemetry's HTTP conventions: a server span is an error on 5xx only.
                    if status.is_server_error() {
                        done.record("otel.status_code", "error");
                    }
                }
                res
            }
            .instrument(span),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_so_nothing_is_injected() {
        // No test in this binary turns traces on.
        assert!(!on());
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .expect("header"),
        );
        let before = h.clone();
        inject(&mut h);
        assert_eq!(h, before);
        assert!(span!("x").is_none());
    }
}
