//! The OTLP exporter of traces, set up from the standard `OTEL_*` environment variables
//! (docs/operations.md, "Traces"); the spans themselves are `otel`'s.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and
//! off whenever `OTEL_SDK_DISABLED=true`. The protocol is `http/protobuf` (the only one built
//! in: gRPC would add tonic); any other `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` stops the proxy
//! at start with the reason. The OpenTelemetry SDK reads the rest itself: the endpoint, headers,
//! timeout and compression of the exporter, `OTEL_TRACES_SAMPLER` / `_ARG`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`. `OTEL_SERVICE_NAME` defaults to `refresh-proxy`.
//!
//! Export runs on a thread and runtime of its own ("otel-export"), so neither the acceptor's
//! runtime nor a worker's ever waits for the collector, and [`Telemetry::shutdown`] (after
//! the server has drained) can flush the last spans from the main thread. Requests to the
//! collector go through hyper with the crate's rustls on aws-lc-rs (`tls`), the system's CAs
//! for an `https://` endpoint.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The service name when neither `OTEL_SERVICE_NAME` nor `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES` gives one.
pub const DEFAULT_SERVICE_NAME: &str = "refresh-proxy";
/// An export request's deadline unless the environment sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a collector's answer that is read (it is only looked at for its status).
const MAX_ANSWER: usize = 64 * 1024;

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub service_name: String,
    /// Each export request's deadline: `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` milliseconds,
    /// 10 s by default (the specification's).
    pub timeout: Duration,
}

/// Reads the settings from `var` (the environment, in the binary). `Ok(None)`: traces off.
/// Pure, for the tests.
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    if set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = set(name) {
            if protocol.trim() != "http/protobuf" {
                return Err(format!(
                    "{name}={protocol}: only http/protobuf is supported (docs/operations.md, \
                     \"Traces\")"
                ));
            }
            // The signal's own variable wins over the general one.
            break;
        }
    }
    let service_name = set("OTEL_SERVICE_NAME")
        .or_else(|| {
            set("OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| {
                attrs.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == "service.name" && !v.trim().is_empty())
                        .then(|| v.trim().to_owned())
                })
            })
        })
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let timeout = set("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| set("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .map(|ms| {
            ms.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| {
                    format!("OTEL_EXPORTER_OTLP_TIMEOUT={ms}: not a number of milliseconds")
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(Some(Settings {
        service_name,
        timeout,
    }))
}

/// The running exporter: keep it until the server has stopped, then [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the exporter for `settings` and turns the proxy's spans on (`otel::turn_on`).
    /// Must not be called inside an async runtime.
    pub fn start(settings: &Settings) -> Result<Telemetry, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otel-export")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the export runtime: {e}"))?;
        let tls = crate::tls::client_config(crate::tls::Roots::System)
            .map_err(|e| format!("TLS for the OTLP endpoint: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let client = ExportClient {
            client: Client::builder(TokioExecutor::new())
                .build(crate::proxy::https_connector(tls, http)),
            runtime: runtime.handle().clone(),
            timeout: settings.timeout,
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| format!("the OTLP exporter: {e}"))?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        crate::otel::turn_on();
        Ok(Telemetry { provider, runtime })
    }

    /// The `tracing` layer that turns the proxy's spans (and only those: never a log event)
    /// into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("refresh-proxy"))
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(crate::otel::TARGET, tracing::Level::TRACE))
    }

    /// Sends what is still buffered (within a few seconds) and stops the exporter. Called after
    /// the server has drained, outside any runtime.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "traces: the last spans may not have been sent");
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// The exporter's HTTP client: hyper on the export runtime. The SDK's batch thread waits for
/// each request; the exporter's own timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`) bounds it.
#[derive(Clone)]
struct ExportClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient").finish_non_exhaustive()
    }
}

impl HttpClient for ExportClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            let exchange = async {
                let res = client.request(request.map(Full::new)).await?;
                let (head, body) = res.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(head, body))
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| HttpError::from("the OTLP request timed out"))?
        });
        Box::pin(async move { sent.await? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        settings(|name| map.get(name).cloned())
    }

    fn named(name: &str) -> Result<Option<Settings>, String> {
        Ok(Some(Settings {
            service_name: name.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }))
    }

    #[test]
    fn the_timeout_is_milliseconds_and_the_signals_own_wins() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let timeout = |vars: &[(&str, &str)]| read(vars).map(|s| s.map(|s| s.timeout));
        assert_eq!(
            timeout(&[on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]),
            Ok(Some(Duration::from_millis(2500)))
        );
        assert_eq!(
            timeout(&[
                on,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ]),
            Ok(Some(Duration::from_millis(700)))
        );
        assert!(read(&[on, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).is_err());
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        assert_eq!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        for disabled in ["true", "TRUE", " true "] {
            assert_eq!(
                read(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                    ("OTEL_SDK_DISABLED", disabled),
                ]),
                Ok(None)
            );
        }
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "false"),
            ]),
            named(DEFAULT_SERVICE_NAME)
        );
    }

    #[test]
    fn either_endpoint_turns_it_on_and_the_service_name_has_a_default() {
        assert_eq!(
            read(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]),
            named("refresh-proxy")
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "a=b, service.name = idp-edge ,c=d"
                ),
            ]),
            named("idp-edge")
        );
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=idp-edge"),
                ("OTEL_SERVICE_NAME", "proxy-a"),
            ]),
            named("proxy-a")
        );
    }

    #[test]
    fn only_http_protobuf_is_accepted() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            read(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            named(DEFAULT_SERVICE_NAME)
        );
        for bad in ["grpc", "http/json", "HTTP"] {
            let err = read(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", bad)]).expect_err(bad);
            assert!(err.contains("only http/protobuf"), "{err}");
        }
        // The signal's own variable wins over the general one, both ways.
        assert_eq!(
            read(&[
                on,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ]),
            named(DEFAULT_SERVICE_NAME)
        );
        assert!(
            read(&[
                on,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ])
            .is_err()
        );
    }
}
