//! One connection handle for every Redis topology (docs/design.md §6), behind the `redis` crate's
//! `ConnectionLike`, so the store's commands and scripts do not care which one it is.
//!
//! - standalone (`redis://`, `rediss://`): one multiplexed `ConnectionManager`, which
//!   reconnects to the same address by itself;
//! - Sentinel: a multiplexed connection to the master the sentinels name (checked with `ROLE`).
//!   A connection error, `READONLY` or `MASTERDOWN` drops it, and the next command asks the
//!   sentinels again, so a failover is followed without a restart;
//! - Cluster: the crate's cluster connection (slot map, `MOVED`/`ASK`, reconnects and topology
//!   refresh), made on first use.
//!
//! Every connection is made lazily: the proxy starts and forwards while Redis is down.
//! Nothing here retries a command that may have run: a failed refresh answers 503 and the
//! client's retry is made safe by the grace rule.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::io::tcp::{TcpSettings, socket2};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use tokio::sync::{Mutex, OnceCell};

use crate::config::store_url::{RedisUrl, Topology};
use crate::config::{ConfigError, StoreConfig};

/// A cloneable handle to the store's Redis, whatever its topology.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelConn>),
    Cluster(Arc<ClusterConn>),
}

impl Conn {
    pub(super) fn open(url: &RedisUrl, config: &StoreConfig) -> Result<Conn, ConfigError> {
        let invalid = |e: RedisError| ConfigError::invalid("store.url", e);
        let username = config.username.clone().or_else(|| url.username.clone());
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .or_else(|| url.password.clone());
        let database = config.database.or(url.database).unwrap_or(0);
        let certs = tls_certificates(config)?;
        let tcp = tcp_settings(config);
        let addr = |host: &str, port: u16| {
            if url.tls {
                ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.to_owned(), port)
            }
        };
        match &url.topology {
            Topology::Standalone => {
                let (host, port) = &url.nodes[0];
                let mut settings = redis::RedisConnectionInfo::default().set_db(database);
                if let Some(u) = &username {
                    settings = settings.set_username(u);
                }
                if let Some(p) = &password {
                    settings = settings.set_password(p);
                }
                let info = redis::IntoConnectionInfo::into_connection_info(addr(host, *port))
                    .map_err(invalid)?
                    .set_redis_settings(settings)
                    .set_tcp_settings(tcp);
                let client = match certs {
                    Some(certs) => Client::build_with_tls(info, certs),
                    None => Client::open(info),
                }
                .map_err(invalid)?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.response_timeout))
                    .set_number_of_retries(config.retries as usize)
                    .set_min_delay(config.retry_min_delay)
                    .set_max_delay(config.retry_max_delay);
                ConnectionManager::new_lazy_with_config(client, manager)
                    .map(Conn::Single)
                    .map_err(invalid)
            }
            Topology::Sentinel { master } => {
                let sentinels = url.nodes.iter().map(|(h, p)| addr(h, *p));
                let mut b =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)
                        .map_err(invalid)?
                        .set_client_to_redis_db(database)
                        .set_client_to_redis_tcp_settings(tcp.clone())
                        .set_client_to_sentinel_tcp_settings(tcp);
                if let Some(u) = &username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &password {
                    b = b.set_client_to_redis_password(p);
                }
                if let Some(u) = &config.sentinel_username {
                    b = b.set_client_to_sentinel_username(u);
                }
                if let Some(p) = &config.sentinel_password {
                    b = b.set_client_to_sentinel_password(p.expose());
                }
                if url.tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                let client = b.build().map_err(invalid)?;
                Ok(Conn::Sentinel(Arc::new(SentinelConn {
                    sentinels: Mutex::new(client),
                    master: ArcSwapOption::empty(),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.response_timeout)),
                })))
            }
            Topology::Cluster => {
                let mut b = ClusterClientBuilder::new(url.nodes.iter().map(|(h, p)| addr(h, *p)))
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    .overall_response_timeout(Some(config.operation_timeout))
                    .retries(config.retries)
                    .tcp_settings(tcp)
                    .min_retry_wait(millis(config.retry_min_delay))
                    .max_retry_wait(millis(config.retry_max_delay));
                if let Some(u) = &username {
                    b = b.username(u);
                }
                if let Some(p) = &password {
                    b = b.password(p);
                }
                if url.tls {
                    b = b.tls(TlsMode::Secure);
                    if let Some(certs) = certs {
                        b = b.certs(certs);
                    }
                }
                let client = b.build().map_err(invalid)?;
                Ok(Conn::Cluster(Arc::new(ClusterConn {
                    client,
                    conn: OnceCell::new(),
                })))
            }
        }
    }

    /// Whether this is a cluster (a script may touch one slot only).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// An empty batch of commands for this topology (see [`Batch`]).
    pub(super) fn batch(&self) -> Batch {
        Batch {
            cluster: self.is_cluster(),
            pipes: Vec::new(),
        }
    }

    /// Whether the store can serve: the server (or the master the sentinels name) answers PING;
    /// in a cluster, every master answers and says `cluster_state:ok` (all slots served).
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Conn::Cluster(c) => {
                let mut conn = c.get().await?;
                let answers = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("INFO").to_owned(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let infos: std::collections::HashMap<String, String> =
                    redis::FromRedisValue::from_redis_value(answers)?;
                match infos
                    .iter()
                    .find(|(_, info)| !info.contains("cluster_state:ok"))
                {
                    None => Ok(()),
                    Some((node, _)) => Err(RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ClusterDown),
                        "the cluster is not serving every slot",
                        format!("{node} reports cluster_state other than ok"),
                    ))),
                }
            }
            _ => redis::cmd("PING").query_async::<()>(self).await,
        }
    }

    /// Runs a batch: its one pipeline on a single node; each slot's pipeline, all at once, in a
    /// cluster.
    pub(super) async fn run(&mut self, batch: Batch) -> RedisResult<()> {
        let runs = batch.pipes.into_iter().map(|pipe| {
            let mut conn = self.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        futures_util::future::try_join_all(runs).await.map(drop)
    }
}

/// Commands that span slots (index writes, bulk creation), grouped so that each group is one
/// slot's: a cluster rejects a pipeline across slots, while a single node is best served one
/// pipeline of everything.
pub(super) struct Batch {
    cluster: bool,
    pipes: Vec<Pipeline>,
}

impl Batch {
    /// Where to add the commands of one slot: a new pipeline in a cluster, the one pipeline of
    /// the batch on a single node.
    pub(super) fn group(&mut self) -> &mut Pipeline {
        if self.cluster || self.pipes.is_empty() {
            self.pipes.push(redis::pipe());
        }
        self.pipes.last_mut().expect("just ensured")
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let (slot, mut conn) = s.get().await?;
                let answer = conn.req_packed_command(cmd).await;
                s.check(&slot, &answer);
                answer
            }),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let (slot, mut conn) = s.get().await?;
                let answer = conn.req_packed_commands(cmd, offset, count).await;
                s.check(&slot, &answer);
                answer
            }),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_commands(cmd, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(_) | Conn::Cluster(_) => 0,
        }
    }
}

/// The master the sentinels name, connected on demand and dropped when it stops being one.
pub(super) struct SentinelConn {
    sentinels: Mutex<SentinelClient>,
    master: ArcSwapOption<MultiplexedConnection>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    /// The current master's connection, asking the sentinels first when there is none.
    async fn get(&self) -> RedisResult<(Arc<MultiplexedConnection>, MultiplexedConnection)> {
        if let Some(conn) = self.master.load_full() {
            let c = (*conn).clone();
            return Ok((conn, c));
        }
        // One resolution at a time; those who waited use its result.
        let mut sentinels = self.sentinels.lock().await;
        if let Some(conn) = self.master.load_full() {
            let c = (*conn).clone();
            return Ok((conn, c));
        }
        let master = sentinels.async_get_client().await?;
        let conn = master
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let slot = Arc::new(conn.clone());
        self.master.store(Some(slot.clone()));
        tracing::info!(
            master = %master.get_connection_info().addr(),
            "token store: connected to the master named by the sentinels"
        );
        Ok((slot, conn))
    }

    /// Forgets the connection when the answer says it no longer leads to the master (unless
    /// another request already replaced it).
    fn check<T>(&self, used: &Arc<MultiplexedConnection>, answer: &RedisResult<T>) {
        if let Err(e) = answer
            && lost_master(e)
        {
            let prev = self.master.compare_and_swap(used, None);
            if prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, used)) {
                tracing::warn!(error = %e, "token store: lost the master; asking the sentinels again");
            }
        }
    }
}

/// Errors after which the connection may point at a server that is gone or no longer the master.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// A cluster connection made on first use (it needs a running Tokio runtime, and the cluster
/// may be down when the proxy starts; after that the crate reconnects by itself).
pub(super) struct ClusterConn {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl ClusterConn {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let conn = self
            .conn
            .get_or_init(|| async {
                self.client
                    .get_pending_async_connection_with_config(Default::default())
            })
            .await;
        Ok(conn.clone())
    }
}

/// The CA and client certificate files, read once at start-up.
fn tls_certificates(config: &StoreConfig) -> Result<Option<TlsCertificates>, ConfigError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    let root_cert = config
        .tls_ca_file
        .as_deref()
        .map(|p| read("store.tls_ca_file", p))
        .transpose()?;
    let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("store.tls_cert_file", cert)?,
            client_key: read("store.tls_key_file", key)?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// Nagle off (small commands go out at once) and keepalive probes per `store.tcp_keepalive`.
fn tcp_settings(config: &StoreConfig) -> TcpSettings {
    let tcp = TcpSettings::default().set_nodelay(true);
    if config.tcp_keepalive.is_zero() {
        return tcp;
    }
    tcp.set_keepalive(
        socket2::TcpKeepalive::new()
            .with_time(config.tcp_keepalive)
            .with_interval(config.tcp_keepalive.min(Duration::from_secs(10))),
    )
}

/// `Duration` → whole milliseconds for the crate's `u64` settings.
fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
