//! Wiring: the pieces built from config, and the run loop with its shutdown sequence.
//!
//! [`App::build`] does everything that can fail because of config (files, URLs, TLS) and no
//! network I/O, so `check-config` can call it. [`App::run`] serves the proxy and the admin
//! listener until `shutdown` completes, then:
//!
//! 1. `/readyz` answers 503 (draining) while the proxy keeps serving for `drain_delay`, so load
//!    balancers and Kubernetes endpoints stop sending new traffic;
//! 2. the proxy listener closes and in-flight requests finish;
//! 3. if they have not finished `shutdown_timeout` after the signal, they are cut off.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::admin::{Admin, Readiness};
use crate::classify::Endpoints;
use crate::config::{Config, ConfigError};
use crate::layer::RefreshGrantLayer;
use crate::proxy::Forward;
use crate::server::{self, ConnOptions};
use crate::store::AnyStore;
use crate::{discovery, tls};

/// Everything the binary runs, built from config.
pub struct App {
    config: Config,
    forward: Forward,
    layer: RefreshGrantLayer,
    endpoints: Arc<ArcSwap<Endpoints>>,
    readiness: Arc<Readiness>,
    store: AnyStore,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How [`App::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every in-flight request finished.
    Drained,
    /// `shutdown_timeout` passed with requests still in flight; they were cut off.
    DeadlineExceeded,
}

impl App {
    pub fn build(config: Config) -> Result<App, ConfigError> {
        let forward = Forward::new(&config.upstream)?;
        let endpoints = Arc::new(ArcSwap::from_pointee(Endpoints::default()));
        let layer = RefreshGrantLayer::builder()
            .shared_endpoints(endpoints.clone())
            .max_body_bytes(config.server.max_body_bytes)?
            .build();
        let store = AnyStore::open(&config.store)?;
        let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::server_acceptor(cert, key)?),
            _ => None,
        };
        Ok(App {
            config,
            forward,
            layer,
            endpoints,
            readiness: Arc::new(Readiness::default()),
            store,
            tls,
        })
    }

    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(
        self,
        listener: TcpListener,
        admin_listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Outcome {
        let App {
            config,
            forward,
            layer,
            endpoints,
            readiness,
            store,
            tls,
        } = self;
        let options = ConnOptions {
            header_read_timeout: config.server.header_read_timeout,
        };

        let discovered = readiness.clone();
        let discovery = discovery::spawn(
            forward.clone(),
            config.upstream.clone(),
            endpoints,
            move || discovered.set_discovered(),
        );

        let admin = Admin {
            readiness: readiness.clone(),
            store,
            store_timeout: config.store.response_timeout,
        };
        let admin_service = tower::service_fn(move |req| {
            let admin = admin.clone();
            async move { admin.handle(req).await }
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            None,
            admin_service,
            options,
            async move {
                let _ = admin_stopped.await;
            },
        ));

        // The layer owns the token endpoint; everything it passes on is forwarded upstream.
        let service = ServiceBuilder::new().layer(layer).service(forward);

        let (signalled, mut signal_seen) = tokio::sync::watch::channel(false);
        let drain_delay = config.server.drain_delay;
        let draining = readiness.clone();
        let stop_accepting = async move {
            shutdown.await;
            draining.set_draining();
            let _ = signalled.send(true);
            tracing::info!(drain_delay_ms = drain_delay.as_millis() as u64, "draining");
            tokio::time::sleep(drain_delay).await;
            tracing::info!("no longer accepting connections; finishing in-flight requests");
        };
        let deadline = config.server.shutdown_timeout;
        let hard_deadline = async move {
            let _ = signal_seen.wait_for(|s| *s).await;
            tokio::time::sleep(deadline).await;
        };
        let outcome = tokio::select! {
            () = server::serve(listener, tls, service, options, stop_accepting) => Outcome::Drained,
            () = hard_deadline => Outcome::DeadlineExceeded,
        };
        discovery.abort();
        let _ = stop_admin.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin_task).await;
        outcome
    }
}
