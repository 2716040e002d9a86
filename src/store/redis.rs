//! `redis://`: the Redis store, over one multiplexed, auto-reconnecting connection.
//!
//! The connection is made lazily: the proxy starts (and forwards) while Redis is down, and
//! `/readyz` says so until it is reachable. Every command is bounded by `store.response_timeout`
//! and every connection attempt by `store.connect_timeout`.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{StoreError, TokenStore};
use crate::config::{ConfigError, StoreConfig};

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn open(config: &StoreConfig) -> Result<RedisStore, ConfigError> {
        let invalid = |e: redis::RedisError| ConfigError::invalid("store.url", e);
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(invalid)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &config.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &config.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(invalid)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(std::time::Duration::from_millis(50))
            .set_max_delay(std::time::Duration::from_secs(1));
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(invalid)?;
        Ok(RedisStore { conn })
    }
}

impl TokenStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}
