//! Wiring: the pieces built from config, and the run loop with its shutdown sequence.
//!
//! [`App::build`] does everything that can fail because of config (files, URLs, TLS) and no
//! network I/O, so `check-config` can call it. [`App::run`] serves the proxy and the admin
//! listener until `shutdown` completes.
//!
//! # Threads
//!
//! The proxy port is served by `server.workers` worker threads (default: one per core), each a
//! single-threaded tokio runtime with its own upstream connection pool and, with a Redis store,
//! its own Redis connection. The caller's runtime accepts connections and hands each to the
//! worker with the fewest open ones; from then on everything a request does (its HTTP
//! connection, its Redis call and the Redis connection's driver task, its upstream connection's
//! task) runs on that one thread, so tasks never wake each other across threads. The memory
//! store is one instance shared by every worker (it is the data). The caller's runtime also
//! runs the admin listener, discovery and the shutdown sequence, with a store handle of its
//! own.
//!
//! # Shutdown
//!
//! When `shutdown` completes:
//!
//! 1. `/readyz` answers 503 (draining) while the proxy keeps serving for `drain_delay`, so load
//!    balancers and Kubernetes endpoints stop sending new traffic;
//! 2. the proxy listener closes and in-flight requests finish;
//! 3. if they have not finished `shutdown_timeout` after the signal, they are cut off.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tower::ServiceBuilder;

use crate::access_log::AccessLogLayer;
use crate::admin::{Admin, AdminApi, IssuerSource, Readiness, WorkerStore};
use crate::classify::Endpoints;
use crate::client_auth::Clients;
use crate::client_auth::UpstreamAuth;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, Keys};
use crate::grant::dpop::Nonces;
use crate::layer::RefreshGrantLayer;
use crate::logout_relay::{self, LogoutRelay};
use crate::mint::jwt::Signer;
use crate::mint::kept::KeptKeys;
use crate::mint::refresh::{RefreshKeys, RefreshTokenKey};
use crate::proxy::Forward;
use crate::server::{self, ConnOptions, Inbox};
use crate::store::AnyStore;
use crate::upstream_revocation::{self, UpstreamRevoker};
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

/// Signers from key files (the first signs), or one ephemeral key with a warning.
fn signers(
    alg: crate::config::SigningAlg,
    paths: &[&std::path::PathBuf],
    key: &str,
    what: &str,
) -> Result<Vec<Signer>, ConfigError> {
    if paths.is_empty() {
        tracing::warn!(
            ?alg,
            "tokens.{key} is not set: {what} are signed with an ephemeral key that changes on \
             every restart and differs between replicas; set it in production"
        );
        return Ok(vec![Signer::generate(alg)]);
    }
    paths
        .iter()
        .map(|path| Signer::from_pem_file(alg, path, &format!("tokens.{key}")))
        .collect()
}

/// The clients and every key, parsed once (at start, and again on each reload).
pub fn build_keys(config: &Config) -> Result<Keys, ConfigError> {
    let tokens = &config.tokens;
    let clients = Clients::from_config(config)?;
    let secrets = tokens.refresh_token_secrets();
    let refresh = if secrets.is_empty() {
        // Validation allows this only with the memory store, whose families die with the
        // process anyway.
        RefreshKeys::single(RefreshTokenKey::generate())
    } else {
        RefreshKeys::new(
            secrets
                .iter()
                .map(|s| RefreshTokenKey::from_secret(s.expose().as_bytes()))
                .collect(),
        )
        .map_err(|e| ConfigError::invalid("tokens.refresh_token_keys", e))?
    };
    let signers = signers(
        tokens.signing_alg,
        &tokens.signing_key_paths(),
        "signing_key_file",
        "access tokens",
    )?;
    let id_signers = if clients.iter().any(|c| c.policy.id_token_on_refresh) {
        self::signers(
            tokens.id_token_signing_alg,
            &tokens.id_token_signing_key_paths(),
            "id_token_signing_key_file",
            "ID tokens on refresh",
        )?
    } else {
        Vec::new()
    };
    let kept_secrets = || {
        tokens
            .upstream_token_keys
            .iter()
            .map(|s| s.expose().as_bytes())
    };
    let kept = KeptKeys::from_secrets(kept_secrets())
        .or_else(|| KeptKeys::derived_from(secrets.iter().map(|s| s.expose().as_bytes())))
        .unwrap_or_else(KeptKeys::generate);
    // docs/design.md §4.16: every replica makes and accepts the same DPoP nonces.
    let dpop_nonces = match secrets.first() {
        Some(s) => Nonces::derived_from(s.expose().as_bytes()),
        None => {
            let mut random = [0u8; 32];
            aws_lc_rs::rand::fill(&mut random).expect("the system RNG works");
            Nonces::derived_from(&random)
        }
    };
    let client_ca = match &config.server.client_ca_file {
        Some(path) => Some(crate::tls::client_ca(path)?),
        None => None,
    };
    Ok(Keys {
        clients,
        refresh,
        signers,
        id_signers,
        kept,
        dpop_nonces,
        client_ca,
    })
}

/// The grant engine over `store`, with the keys of `config`.
fn build_engine(config: &Config, store: AnyStore) -> Result<Engine, ConfigError> {
    // docs/design.md §4.13: an upstream check's lease outlasts the upstream call it covers.
    let lease = config.upstream.connect_timeout
        + config.upstream.request_timeout
        + std::time::Duration::from_secs(3);
    Ok(Engine::new(
        store,
        build_keys(config)?,
        config.tokens.access_token_ttl,
        config.tokens.audience.clone(),
    )
    .with_check_lease(lease)
    .with_session_index(config.upstream.backchannel_logout_path.is_some()))
}

/// Replaces the clients, their secrets and every key of a running app: requests in flight
/// finish with the keys they started with, connections stay open. Other settings need a
/// restart.
#[derive(Debug, Clone)]
pub struct Reloader {
    engine: Arc<Engine>,
}

impl Reloader {
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        let keys = build_keys(config)?;
        tracing::info!(
            clients = keys.clients.iter().count(),
            refresh_token_keys = keys.refresh.len(),
            signing_keys = keys.signers.len(),
            id_token_signing_keys = keys.id_signers.len(),
            "reloaded clients and keys (other settings need a restart)"
        );
        self.engine.reload(keys);
        Ok(())
    }
}

/// Says at start which admin endpoints are on, and warns when `allow_admin_issue` and
/// `admin.issue_token` do not go together.
fn log_admin_api(config: &Config, api: Option<&AdminApi>) {
    use crate::admin::Endpoint;
    let on = |e| api.is_some_and(|api| api.enabled(e));
    tracing::info!(
        revoke = on(Endpoint::Revoke),
        issue = on(Endpoint::Issue),
        "admin API: /admin/revoke needs admin.token, /admin/issue admin.issue_token; an \
         endpoint without its token answers 404"
    );
    let issuers: Vec<&str> = config
        .clients
        .iter()
        .filter(|(_, c)| c.allow_admin_issue)
        .map(|(id, _)| id.as_str())
        .collect();
    if !issuers.is_empty() && !on(Endpoint::Issue) {
        tracing::warn!(
            clients = ?issuers,
            "clients are marked allow_admin_issue but admin.issue_token is not set: \
             /admin/issue is off"
        );
    }
    if issuers.is_empty() && on(Endpoint::Issue) {
        tracing::warn!(
            "admin.issue_token is set but no client is marked allow_admin_issue = true: \
             /admin/issue refuses every client"
        );
    }
}

/// Everything the binary runs, built from config.
pub struct App {
    config: Config,
    forward: Forward,
    layer: RefreshGrantLayer,
    engine: Arc<Engine>,
    endpoints: Arc<ArcSwap<Endpoints>>,
    readiness: Arc<Readiness>,
    store: AnyStore,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The admin listener's TLS (`server.admin_tls_*`); built once, like the proxy port's.
    admin_tls: Option<tokio_rustls::TlsAcceptor>,
    id_token_alg: Option<&'static str>,
    /// The admin API, when `admin.token` or `admin.issue_token` is set.
    admin_api: Option<Arc<AdminApi>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Family ends the engine queues, to be revoked at the upstream.
    endings: tokio::sync::mpsc::Receiver<crate::engine::Ending>,
    /// Logout tokens the layer queues, to be passed on to clients' own endpoints.
    logouts: tokio::sync::mpsc::Receiver<crate::layer::PassOn>,
    relay: LogoutRelay,
}

/// How [`App::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every in-flight request finished.
    Drained,
    /// `shutdown_timeout` passed with requests still in flight; they were cut off.
    DeadlineExceeded,
    /// No worker thread could start, so nothing was served (the reason is logged).
    NoWorkers,
    /// Discovery's result forbids serving: handled clients and no revocation endpoint known
    /// nor declared absent (the reason is logged, naming the config key).
    Refused,
}

impl App {
    pub fn build(config: Config) -> Result<App, ConfigError> {
        let endpoints = Arc::new(ArcSwap::from_pointee(Endpoints::default()));
        let store = AnyStore::open(&config.store)?;
        let (ends, endings) = upstream_revocation::queue();
        let (pass_ons, logouts) = logout_relay::queue();
        let engine = Arc::new(build_engine(&config, store.clone())?.with_endings(ends));
        let forward = Forward::new(&config.upstream, crate::error::gateway_answer)?
            .with_metrics(engine.metrics.clone());
        let mut layer = RefreshGrantLayer::builder()
            .shared_endpoints(endpoints.clone())
            .max_body_bytes(config.server.max_body_bytes)?
            .body_read_timeout(config.server.body_read_timeout)
            .server_timing(config.server.server_timing)
            .engine(engine.clone())
            .logout_relay(pass_ons)
            .fallback_issuer(config.upstream.url.clone());
        if let (Some(id), Some(secret)) = (
            &config.upstream.introspection_client_id,
            &config.upstream.introspection_client_secret,
        ) {
            layer = layer.introspection_client(id, secret.expose())?;
        }
        if let Some(claim) = &config.upstream.subject_claim {
            layer = layer.subject_claim(claim);
        }
        let layer = layer.build();
        let id_token_alg = engine.keys().id_token_alg();
        // `admin.token` turns `/admin/revoke` on, `admin.issue_token` `/admin/issue`.
        let admin_api = AdminApi::from_config(
            &config.admin,
            engine.clone(),
            IssuerSource {
                endpoints: endpoints.clone(),
                fallback: config.upstream.url.clone(),
            },
        )?;
        let body_read_timeout = config.server.body_read_timeout;
        let https_logout = config.clients.values().any(|c| {
            c.backchannel_logout_uri
                .as_deref()
                .is_some_and(|u| u.starts_with("https:"))
        });
        let relay = LogoutRelay::new(engine.metrics.clone(), https_logout)?;
        let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::server_acceptor(
                tls::Listener::Proxy,
                cert,
                key,
                config.server.tls_client_certificates,
            )?),
            _ => None,
        };
        let admin_tls = match (
            &config.server.admin_tls_cert_file,
            &config.server.admin_tls_key_file,
        ) {
            (Some(cert), Some(key)) => Some(tls::server_acceptor(
                tls::Listener::Admin,
                cert,
                key,
                false,
            )?),
            _ => None,
        };
        Ok(App {
            config,
            forward,
            layer,
            engine: engine.clone(),
            endpoints,
            readiness: Arc::new(Readiness::default()),
            store,
            tls,
            admin_tls,
            id_token_alg,
            admin_api: admin_api.map(|api| Arc::new(api.with_body_read_timeout(body_read_timeout))),
            metrics: engine.metrics.clone(),
            endings,
            logouts,
            relay,
        })
    }

    /// A handle that replaces clients and keys while the app runs (`SIGHUP`).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            engine: self.engine.clone(),
        }
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
            engine,
            endpoints,
            readiness,
            store,
            tls,
            admin_tls,
            id_token_alg,
            admin_api,
            metrics,
            endings,
            logouts,
            relay,
        } = self;
        let options = ConnOptions::from_config(&config.server);
        // The proxy port's cap, across every worker; the admin port has none of its own, so
        // probes and /metrics answer when the proxy port is full.
        let gate = server::Gate::new(config.server.max_connections).with_metrics(metrics.clone());

        // The workers first: they are serving by the time discovery or the admin port says
        // the proxy is ready.
        let (cut_off, cut_off_seen) = watch::channel(false);
        let mut outboxes = Vec::new();
        let mut finished = Vec::new();
        let mut worker_stores = Vec::new();
        let count = config.server.worker_count();
        for index in 0..count {
            let worker = Worker {
                index,
                store_config: config.store.clone(),
                store: store.clone(),
                engine: engine.clone(),
                layer: layer.clone(),
                forward: forward.clone(),
                access_log: AccessLogLayer::new(config.log.access_log),
                tls: tls.clone(),
                options: options.clone(),
            };
            if let Some((outbox, done, store)) = worker.start(cut_off_seen.clone()).await {
                outboxes.push(outbox);
                finished.push(done);
                // The memory store is the app's own; a Redis one is the worker's connection.
                if matches!(store.store, AnyStore::Redis(_)) {
                    worker_stores.push(store);
                }
            }
        }
        if outboxes.is_empty() {
            tracing::error!("no worker thread could start");
            return Outcome::NoWorkers;
        }
        if outboxes.len() < count {
            tracing::warn!(
                started = outboxes.len(),
                configured = count,
                "some worker threads could not start; serving with the others"
            );
        }

        // Family ends, revoked at the upstream in the background (docs/design.md §4.11).
        let fallback = match (
            &config.upstream.introspection_client_id,
            &config.upstream.introspection_client_secret,
        ) {
            (Some(id), Some(secret)) => Some(UpstreamAuth::Basic {
                id: id.clone(),
                secret: secret.clone(),
            }),
            _ => None,
        };
        let revoker = tokio::spawn(
            UpstreamRevoker::new(forward.clone(), engine.clone(), endpoints.clone(), fallback)
                .run(endings),
        );
        let relaying = tokio::spawn(relay.run(logouts));

        let discovered = readiness.clone();
        let upstream = config.upstream.clone();
        let handled_clients = !config.clients.is_empty();
        let known = metrics.clone();
        // Discovery's result may forbid serving (see `discovery::check`): the run loop ends.
        let (refuse, refused) = oneshot::channel::<()>();
        let discovery = discovery::spawn(
            forward.clone(),
            config.upstream.clone(),
            endpoints,
            move |found| {
                known.set_endpoints(found);
                match discovery::check(&upstream, handled_clients, found) {
                    Ok(missing) => {
                        check_id_token_alg(id_token_alg, &found.id_token_signing_algs);
                        discovered.set_discovered_missing(missing);
                    }
                    Err(_) => {
                        let _ = refuse.send(());
                    }
                }
            },
        );
        let refused = async move {
            if refused.await.is_err() {
                std::future::pending::<()>().await;
            }
        };

        log_admin_api(&config, admin_api.as_deref());
        let admin = Admin {
            readiness: readiness.clone(),
            store,
            worker_stores,
            store_timeout: config.store.response_timeout,
            engine: engine.clone(),
            api: admin_api,
            metrics,
        };
        let admin_service = tower::service_fn(move |req| {
            let admin = admin.clone();
            async move { admin.handle(req).await }
        });
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            admin_tls,
            admin_service,
            options,
            // Its own cap, apart from the proxy port's: probes and /metrics answer when the
            // proxy port is full, and a flood of the admin port cannot exhaust file handles.
            server::Gate::new(config.server.admin_max_connections)
                .named("server.admin_max_connections"),
            async move {
                let _ = admin_stopped.await;
            },
        ));

        let (signalled, mut signal_seen) = watch::channel(false);
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
        let serving = async move {
            server::accept(listener, gate, outboxes, stop_accepting).await;
            // Each worker returns once its last connection has closed (or its thread died).
            for done in finished {
                let _ = done.await;
            }
        };
        let outcome = tokio::select! {
            () = serving => Outcome::Drained,
            () = hard_deadline => Outcome::DeadlineExceeded,
            () = refused => Outcome::Refused,
        };
        // At the deadline the workers drop their runtimes, which cuts their connections off.
        let _ = cut_off.send(true);
        discovery.abort();
        revoker.abort();
        relaying.abort();
        let _ = stop_admin.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin_task).await;
        outcome
    }
}

/// What one worker thread is built from; everything is shared with the app except the store
/// handle (Redis: a connection of its own), the upstream pool, and the runtime.
struct Worker {
    index: usize,
    store_config: crate::config::StoreConfig,
    /// The app's store: shared as it is when it is the memory store.
    store: AnyStore,
    engine: Arc<Engine>,
    layer: RefreshGrantLayer,
    forward: Forward,
    access_log: AccessLogLayer,
    tls: Option<tokio_rustls::TlsAcceptor>,
    options: ConnOptions,
}

impl Worker {
    /// Starts the worker's thread and waits until it serves. Returns the acceptor's end of its
    /// channel, a receiver that completes when the thread ends, and the worker's store handle
    /// (for `/readyz`); `None` when it could not start (logged).
    async fn start(
        self,
        cut_off: watch::Receiver<bool>,
    ) -> Option<(server::Outbox, oneshot::Receiver<()>, WorkerStore)> {
        let index = self.index;
        let (outbox, inbox) = server::handoff();
        let (started, is_started) = oneshot::channel::<WorkerStore>();
        let (done, is_done) = oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                self.serve(inbox, started, cut_off);
                let _ = done.send(());
            });
        if let Err(e) = spawned {
            tracing::error!(worker = index, error = %e, "cannot start a worker thread");
            return None;
        }
        // The thread drops `started` without sending when it cannot serve.
        let store = is_started.await.ok()?;
        Some((outbox, is_done, store))
    }

    /// The thread's body: a single-threaded runtime serving what the acceptor hands over, until
    /// the acceptor stops and the last connection closes, or until `cut_off`.
    fn serve(
        self,
        inbox: Inbox,
        started: oneshot::Sender<WorkerStore>,
        mut cut_off: watch::Receiver<bool>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "cannot start a worker runtime");
                return;
            }
        };
        runtime.block_on(async move {
            // Opened here, on this runtime: the Redis connection's driver task is spawned on
            // the runtime that makes the connection.
            let store = match &self.store {
                AnyStore::Memory(_) => self.store.clone(),
                AnyStore::Redis(_) => match AnyStore::open(&self.store_config) {
                    Ok(store) => store,
                    Err(e) => {
                        tracing::error!(worker = self.index, error = %e, "cannot open the store");
                        return;
                    }
                },
            };
            let engine = Arc::new(self.engine.with_store(store.clone()));
            let service = ServiceBuilder::new()
                // Traces (docs/operations.md, "Traces"): the server span around everything
                // else; a pass-through while traces are off.
                .layer(crate::otel::ServerSpanLayer)
                // Outermost but for the span: the request id exists before anything else runs,
                // and the log line sees the final status, whoever answered.
                .layer(self.access_log)
                // The layer owns the token endpoint; everything it passes on is forwarded
                // upstream, over this worker's own pool.
                .layer(self.layer.with_engine(engine))
                .service(self.forward.new_pool());
            let _ = started.send(WorkerStore {
                store,
                runtime: tokio::runtime::Handle::current(),
            });
            tokio::select! {
                () = server::serve_inbox(inbox, self.tls, service, self.options) => {}
                _ = cut_off.wait_for(|cut| *cut) => {}
            }
        });
        // Dropping the runtime drops every task left on it: at the deadline, the connections.
        drop(runtime);
    }
}
