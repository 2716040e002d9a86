//! Forwarding to the upstream IdP: the pooled client and header hygiene.
//!
//! [`Forward`] is a `tower::Service` that sends any request to the upstream and streams the
//! answer back. It rewrites only what a reverse proxy must:
//!
//! - the target: the upstream's scheme and authority, with the request's path and query passed
//!   byte for byte;
//! - hop-by-hop headers are removed both ways (RFC 9110 §7.6.1: `Connection`, the headers it
//!   names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`),
//!   and `Expect`, since the proxy answers `100-continue` itself;
//! - `Host` becomes the upstream's (or stays the client's with `preserve_host`);
//! - `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` get this hop appended;
//! - with `forward_client_cert`, the client's certificate goes in `Client-Cert` (RFC 9440).
//!
//! Redirects and 4xx/5xx answers come back as they are. When the upstream cannot be reached the
//! answer is a 502, when its response head does not arrive within `request_timeout` a 504, both
//! with a JSON body (the [`GatewayAnswer`] it is given: [`crate::error::gateway_answer`]).
//!
//! Caveat: protocol upgrades (WebSocket) are not forwarded; an IdP does not need them.

use std::future::Future;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;
use tracing::Instrument;

use crate::client_cert::{CLIENT_CERT, CLIENT_CERT_CHAIN, ClientCert};
#[cfg(test)]
use crate::conn::ip_value;
pub use crate::conn::{BoxError, ClientInfo};

use crate::body::ResponseBody;
use crate::config::{ConfigError, UpstreamConfig};
use crate::metrics::Metrics;

mod pool;

pub use pool::PooledBody;

/// The body type the upstream client sends.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the upstream's response head did not arrive within upstream.request_timeout")]
    Timeout,
    #[error("cannot connect to the upstream: {0}")]
    Unreachable(BoxError),
    #[error("the upstream request failed: {0}")]
    Failed(BoxError),
    /// The client's own request body failed while it was being forwarded (a malformed chunked
    /// encoding, a connection cut mid-body): the client's mistake, not the upstream's.
    #[error("the client's request body could not be read")]
    ClientBody,
}

/// A client's request body error, marked on its way into the upstream request so that a
/// failure it causes is told apart from the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed: {0}")]
struct ClientBodyError(BoxError);

impl ForwardError {
    /// `Failed` because of the client's body: `ClientBody`.
    fn blame(self) -> ForwardError {
        let ForwardError::Failed(e) = &self else {
            return self;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(err) = cause {
            if err.is::<ClientBodyError>() {
                return ForwardError::ClientBody;
            }
            cause = err.source();
        }
        self
    }
}

/// The forwarding service. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpClient,
    /// `http://` upstreams: this worker's own HTTP/1.1 connections ([`pool`]); `https://`
    /// upstreams go through `client`.
    pool: Option<Arc<pool::Pool>>,
    /// What [`Forward::new_pool`] builds another client from (its TLS config is shared).
    connector: HttpsConnector<HttpConnector>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    request_timeout: Duration,
    preserve_host: bool,
    /// `upstream.forward_client_cert`: the client's certificate goes upstream in `Client-Cert`.
    forward_client_cert: bool,
    metrics: Option<Arc<Metrics>>,
    gateway: GatewayAnswer,
}

/// How a forwarding failure is answered: the crate's one error mapping
/// ([`crate::error::gateway_answer`]), given by whoever builds the [`Forward`] service so that
/// the forwarding client depends on no module above it.
pub type GatewayAnswer = fn(ForwardError) -> Response<Full<Bytes>>;

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstream", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl Forward {
    pub fn new(config: &UpstreamConfig, gateway: GatewayAnswer) -> Result<Forward, ConfigError> {
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e| ConfigError::invalid("upstream.url", e))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(ConfigError::invalid(
                "upstream.url",
                "needs a scheme and a host",
            ));
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| ConfigError::invalid("upstream.url", e))?;

        let roots = match (&config.ca_file, scheme == Scheme::HTTPS) {
            (Some(path), _) => crate::tls::Roots::File(path),
            (None, true) => crate::tls::Roots::System,
            // Start-up stays fast: nothing reads the system roots for a plain-http upstream.
            (None, false) => crate::tls::Roots::Unused,
        };
        let tls = crate::tls::client_config(roots)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let pool = (scheme == Scheme::HTTP).then(|| {
            let target = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority.clone())
                .path_and_query("/")
                .build()
                .expect("a scheme and an authority make a URI");
            Arc::new(pool::Pool::new(
                http.clone(),
                target,
                host.clone(),
                config.pool_max_idle_per_host,
                config.pool_idle_timeout,
            ))
        });
        let connector = https_connector(tls, http);
        let client = http_client(
            connector.clone(),
            config.pool_idle_timeout,
            config.pool_max_idle_per_host,
        );
        let inner = Inner {
            client,
            pool,
            connector,
            pool_idle_timeout: config.pool_idle_timeout,
            pool_max_idle_per_host: config.pool_max_idle_per_host,
            scheme,
            authority,
            host,
            request_timeout: config.request_timeout,
            preserve_host: config.preserve_host,
            forward_client_cert: config.forward_client_cert,
            metrics: None,
            gateway,
        };
        Ok(Forward {
            inner: Arc::new(inner),
        })
    }

    /// The same forwarding service with a connection pool of its own (and the same metrics).
    /// Each worker thread gets one, so a request and its upstream connection stay on one
    /// thread (the pooled client spawns its connection tasks on the runtime that calls it).
    pub fn new_pool(&self) -> Forward {
        let i = &*self.inner;
        let inner = Inner {
            client: http_client(
                i.connector.clone(),
                i.pool_idle_timeout,
                i.pool_max_idle_per_host,
            ),
            pool: i.pool.as_deref().map(|p| Arc::new(p.empty_twin())),
            connector: i.connector.clone(),
            pool_idle_timeout: i.pool_idle_timeout,
            pool_max_idle_per_host: i.pool_max_idle_per_host,
            scheme: i.scheme.clone(),
            authority: i.authority.clone(),
            host: i.host.clone(),
            request_timeout: i.request_timeout,
            preserve_host: i.preserve_host,
            forward_client_cert: i.forward_client_cert,
            metrics: i.metrics.clone(),
            gateway: i.gateway,
        };
        Forward {
            inner: Arc::new(inner),
        }
    }

    /// Counts upstream answers and their latency in `metrics`. Call before cloning.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Forward {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.metrics = Some(metrics),
            None => tracing::warn!("Forward::with_metrics after cloning: metrics not attached"),
        }
        self
    }

    /// Sends `req` (whose URI is a path and query) to the upstream, within `request_timeout`.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ForwardedBody>, ForwardError> {
        let started = std::time::Instant::now();
        let result = self.send_timed(req).await.map_err(ForwardError::blame);
        if let Some(m) = &self.inner.metrics
            && !matches!(result, Err(ForwardError::ClientBody))
        {
            m.upstream(
                result.as_ref().ok().map(|r| r.status().as_u16()),
                started.elapsed(),
            );
        }
        result
    }

    async fn send_timed(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ForwardedBody>, ForwardError> {
        let sent = async {
            match &self.inner.pool {
                Some(pool) => pool
                    .send(req)
                    .await
                    .map(|res| res.map(ForwardedBody::Pooled)),
                None => match self.inner.client.request(req).await {
                    Ok(res) => Ok(res.map(ForwardedBody::Client)),
                    Err(e) if e.is_connect() => Err(ForwardError::Unreachable(e.into())),
                    Err(e) => Err(ForwardError::Failed(e.into())),
                },
            }
        };
        match tokio::time::timeout(self.inner.request_timeout, sent).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Ok(mut res)) => {
                strip_hop_by_hop(res.headers_mut());
                Ok(res)
            }
            Ok(Err(e)) => Err(e),
        }
    }

    /// The upstream request target for a path and query: the origin form (`/path?query`) on
    /// this proxy's own HTTP/1.1 connections, the absolute URI for the pooled client, which
    /// picks the connection by it.
    pub fn uri(&self, path_and_query: PathAndQuery) -> Uri {
        if self.inner.pool.is_some() {
            return Uri::from(path_and_query);
        }
        Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("scheme, authority and path are valid parts")
    }

    /// Rewrites a client's request into the upstream's.
    fn upstream_request<B>(&self, req: Request<B>) -> Request<UpstreamBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = self.uri(path_and_query);
        // The upstream connection's own protocol is negotiated by the client (ALPN).
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.remove(header::EXPECT);
        match (&client_host, self.inner.preserve_host) {
            (Some(host), true) => headers.insert(header::HOST, host.clone()),
            _ => headers.insert(header::HOST, self.inner.host.clone()),
        };
        if let Some(info) = parts.extensions.get::<ClientInfo>() {
            if !info.trusted {
                // A peer outside server.trusted_proxies says nothing about earlier hops: what it
                // claims (a spoofed client address defeats the IdP's per-IP lockout; a spoofed
                // host poisons the URLs it builds) is replaced by what the proxy saw.
                for name in [
                    X_FORWARDED_FOR,
                    X_FORWARDED_PROTO,
                    X_FORWARDED_HOST,
                    header::FORWARDED,
                ] {
                    headers.remove(name);
                }
            }
            append(headers, X_FORWARDED_FOR, info.forwarded_for.clone());
            append(
                headers,
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if info.tls { "https" } else { "http" }),
            );
        }
        if let Some(host) = client_host.filter(|h| h.to_str().is_ok()) {
            append(headers, X_FORWARDED_HOST, host);
        }
        // docs/design.md §4.17: the IdP behind the proxy sees the certificate the client
        // presented to the proxy (RFC 9440), when asked to.
        if self.inner.forward_client_cert
            && let Some(cert) = parts.extensions.get::<Arc<ClientCert>>()
        {
            let headers = &mut parts.headers;
            headers.insert(CLIENT_CERT, cert.header_value());
            headers.remove(CLIENT_CERT_CHAIN);
        }
        let body = body.map_err(|e| Box::new(ClientBodyError(e.into())) as BoxError);
        Request::from_parts(parts, body.boxed_unsync())
    }
}

/// An upstream answer's body, from whichever path carried the request.
pub enum ForwardedBody {
    /// Through hyper-util's pooled client (`https://` upstreams).
    Client(Incoming),
    /// Over a connection of this worker's [`pool`] (`http://` upstreams).
    Pooled(PooledBody),
}

impl Body for ForwardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ForwardedBody::Client(body) => Pin::new(body).poll_frame(cx),
            ForwardedBody::Pooled(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardedBody::Client(body) => body.is_end_stream(),
            ForwardedBody::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ForwardedBody::Client(body) => body.size_hint(),
            ForwardedBody::Pooled(body) => body.size_hint(),
        }
    }
}

/// HTTPS (with `tls`, ALPN h2 and http/1.1) or plain HTTP over `http`: the connector of the
/// forwarding client, and of the trace exporter's (`otel_export`).
pub(crate) fn https_connector(
    tls: rustls::ClientConfig,
    http: HttpConnector,
) -> HttpsConnector<HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

fn http_client(
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
) -> HttpClient {
    Client::builder(TokioExecutor::new())
        // Without a timer the idle timeout below is silently ignored.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(max_idle_per_host)
        .timer(TokioTimer::new())
        .build(connector)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends `value` (visible ASCII) to a comma-separated list header, folding earlier lines
/// into one. The common case, no earlier line, inserts `value` as it is.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let mut entry = match headers.entry(name) {
        header::Entry::Vacant(vacant) => {
            vacant.insert(value);
            return;
        }
        header::Entry::Occupied(entry) => entry,
    };
    let joined = {
        let existing: Vec<&str> = entry.iter().filter_map(|v| v.to_str().ok()).collect();
        let value = value.to_str().unwrap_or_default();
        if existing.is_empty() {
            value.to_owned()
        } else {
            format!("{}, {value}", existing.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        // Replaces every earlier line with the one joined value.
        entry.insert(v);
    }
}

/// RFC 9110 §7.6.1: "a proxy or gateway MUST ... remove any header or trailer field that
/// is listed in the Connection header field" and the connection-specific fields.
///
/// One pass over the message's (few) names: nothing is hashed or allocated for a message that
/// carries none of them, and only the names present are removed.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let connection = headers.get_all(header::CONNECTION);
    let listed = connection.iter().next().is_some();
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if is_hop_by_hop(name) || (listed && lists(&connection, name)) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// The connection-specific fields of RFC 9110 §7.6.1 (and `Proxy-Connection`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether one of the `Connection` lines lists `name` (names are case-insensitive).
fn lists(connection: &header::GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    connection
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
}

impl<B> Service<Request<B>> for Forward
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ForwardedBody>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let mut req = this.upstream_request(req);
        // Traces (docs/operations.md, "Traces"): a client span per upstream request, whose
        // context the upstream gets as its `traceparent`; while off, no span and the client's
        // trace headers pass as they came.
        let span = crate::otel::span!(
            "forward",
            otel.kind = "client",
            http.request.method = req.method().as_str(),
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if crate::otel::on() {
            span.in_scope(|| crate::otel::inject(req.headers_mut()));
        }
        Box::pin(
            async move {
                match this.send(req).await {
                    Ok(res) => {
                        if crate::otel::on() {
                            tracing::Span::current()
                                .record("http.response.status_code", res.status().as_u16());
                        }
                        Ok(res.map(ResponseBody::inner))
                    }
                    Err(err) => {
                        if crate::otel::on() {
                            tracing::Span::current().record("otel.status_code", "error");
                        }
                        tracing::warn!(error = %err, "forwarding failed");
                        Ok((this.inner.gateway)(err).map(ResponseBody::local))
                    }
                }
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_for_http_and_https_upstreams() {
        for url in ["http://127.0.0.1:9", "https://idp.example.com"] {
            let text = format!("[upstream]\nurl = \"{url}\"\n");
            let config = crate::config::Config::from_toml_str(
                &text,
                std::path::Path::new("."),
                std::iter::empty(),
            )
            .expect("valid");
            Forward::new(&config.upstream, crate::error::gateway_answer).expect("builds");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn append_folds_existing_values() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append(&mut h, X_FORWARDED_FOR, ip_value([127, 0, 0, 1].into()));
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        append(&mut h, X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        let v6 = ip_value("2001:db8::1".parse().expect("an IPv6 address"));
        assert_eq!(v6, "2001:db8::1");
    }
}
