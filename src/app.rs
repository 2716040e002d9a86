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

use crate::access_log::AccessLogLayer;
use crate::admin::{Admin, AdminApi, Readiness};
use crate::classify::Endpoints;
use crate::client_auth::Clients;
use crate::config::{Config, ConfigError};
use crate::grant::engine::Engine;
use crate::layer::RefreshGrantLayer;
use crate::mint::jwt::{self, Signer};
use crate::mint::refresh::RefreshTokenKey;
use crate::proxy::Forward;
use crate::server::{self, ConnOptions};
use crate::store::AnyStore;
use crate::{discovery, tls};

/// OIDC client libraries reject ID tokens signed with an algorithm discovery does not list.
fn check_id_token_alg(alg: Option<&str>, listed: &[String]) {
    if let Some(alg) = alg
        && !listed.is_empty()
        && !listed.iter().any(|l| l == alg)
    {
        tracing::warn!(
            alg,
            listed = ?listed,
            "tokens.id_token_signing_alg is not in the upstream's id_token_signing_alg_values_supported; \
             OIDC clients will reject ID tokens issued on refresh"
        );
    }
}

/// The grant engine: clients, keys and signers, parsed once.
fn build_engine(config: &Config, store: AnyStore) -> Result<Engine, ConfigError> {
    let tokens = &config.tokens;
    let clients = Clients::from_config(config)?;
    let refresh_key = match &tokens.refresh_token_key {
        Some(secret) => RefreshTokenKey::from_secret(secret.expose().as_bytes()),
        // Validation allows this only with the memory store, whose families die with the
        // process anyway.
        None => RefreshTokenKey::generate(),
    };
    let signer = match &tokens.signing_key_file {
        Some(path) => Signer::from_pem_file(tokens.signing_alg, path, "tokens.signing_key_file")?,
        None => {
            tracing::warn!(
                alg = ?tokens.signing_alg,
                "tokens.signing_key_file is not set: access tokens are signed with an ephemeral key \
                 that changes on every restart and differs between replicas; set it in production"
            );
            Signer::generate(tokens.signing_alg)
        }
    };
    let id_signer = if clients.iter().any(|c| c.policy.id_token_on_refresh) {
        Some(match &tokens.id_token_signing_key_file {
            Some(path) => Signer::from_pem_file(
                tokens.id_token_signing_alg,
                path,
                "tokens.id_token_signing_key_file",
            )?,
            None => {
                tracing::warn!(
                    alg = ?tokens.id_token_signing_alg,
                    "tokens.id_token_signing_key_file is not set: ID tokens on refresh are signed \
                     with an ephemeral key; set it in production"
                );
                Signer::generate(tokens.id_token_signing_alg)
            }
        })
    } else {
        None
    };
    Ok(Engine::new(
        store,
        clients,
        refresh_key,
        signer,
        id_signer,
        tokens.access_token_ttl,
        tokens.audience.clone(),
    ))
}

/// Everything the binary runs, built from config.
pub struct App {
    config: Config,
    forward: Forward,
    layer: RefreshGrantLayer,
    endpoints: Arc<ArcSwap<Endpoints>>,
    readiness: Arc<Readiness>,
    store: AnyStore,
    tls: Option<tokio_rustls::TlsAcceptor>,
    jwks: Arc<serde_json::Value>,
    id_token_alg: Option<&'static str>,
    /// The admin API, when `admin.token` is set.
    admin_api: Option<Arc<AdminApi>>,
    metrics: Arc<crate::metrics::Metrics>,
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
        let endpoints = Arc::new(ArcSwap::from_pointee(Endpoints::default()));
        let store = AnyStore::open(&config.store)?;
        let engine = Arc::new(build_engine(&config, store.clone())?);
        let forward = Forward::new(&config.upstream)?.with_metrics(engine.metrics.clone());
        let mut layer = RefreshGrantLayer::builder()
            .shared_endpoints(endpoints.clone())
            .max_body_bytes(config.server.max_body_bytes)?
            .engine(engine.clone())
            .fallback_issuer(config.upstream.url.clone());
        if let (Some(id), Some(secret)) = (
            &config.upstream.introspection_client_id,
            &config.upstream.introspection_client_secret,
        ) {
            layer = layer.introspection_client(id, secret.expose())?;
        }
        let layer = layer.build();
        let jwks = Arc::new(jwt::jwks(&engine.signers()));
        let id_token_alg = engine.id_token_alg();
        // Checked here, with the rest of the config: `admin.token` turns the admin API on and
        // must be long enough not to be guessed.
        let admin_api = AdminApi::from_config(config.admin.token.as_ref(), engine.clone())?;
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
            jwks,
            id_token_alg,
            admin_api: admin_api.map(Arc::new),
            metrics: engine.metrics.clone(),
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
            jwks,
            id_token_alg,
            admin_api,
            metrics,
        } = self;
        let options = ConnOptions {
            header_read_timeout: config.server.header_read_timeout,
        };

        let discovered = readiness.clone();
        let found = endpoints.clone();
        let discovery = discovery::spawn(
            forward.clone(),
            config.upstream.clone(),
            endpoints,
            move || {
                check_id_token_alg(id_token_alg, &found.load().id_token_signing_algs);
                discovered.set_discovered();
            },
        );

        if admin_api.is_none() {
            tracing::info!("admin.token is not set: the admin API is off (/admin/... answers 404)");
        }
        let admin = Admin {
            readiness: readiness.clone(),
            store,
            store_timeout: config.store.response_timeout,
            jwks,
            api: admin_api,
            metrics,
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

        let service = ServiceBuilder::new()
            // Outermost: the request id exists before anything else runs, and the log line
            // sees the final status, whoever answered.
            .layer(AccessLogLayer::new(config.log.access_log))
            // The layer owns the token endpoint; everything it passes on is forwarded upstream.
            .layer(layer)
            .service(forward);

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
