//! The token store: one trait, an in-process implementation and a Redis one.
//!
//! [`TokenStore`] is what the grant logic talks to; [`AnyStore`] picks the implementation from
//! `store.url` (`memory://` or `redis://`). Futures are `Send` and statically dispatched, so the
//! hot path pays no boxing for the choice.
//!
//! Today the trait holds the health check that `/readyz` uses; the refresh-grant operations are
//! added with the grant engine.
//!
//! Caveat: `rediss://`, `redis+sentinel://` and `redis+cluster://` URLs are recognised and
//! refused with a clear config error until the production-Redis work lands.

mod memory;
mod redis;

use std::future::Future;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::config::{ConfigError, StoreConfig};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The operations the proxy needs from a store.
pub trait TokenStore: Send + Sync + 'static {
    /// Succeeds when the store can serve requests now.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The kinds of store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Redis(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "memory" => Ok(StoreUrl::Memory),
            "redis" => Ok(StoreUrl::Redis(url.to_owned())),
            "rediss" | "redis+sentinel" | "rediss+sentinel" | "redis+cluster" | "rediss+cluster" => {
                Err(format!("{scheme}:// is not supported yet; use redis:// or memory://"))
            }
            _ => Err("must start with memory://, redis://, rediss://, redis+sentinel:// or redis+cluster://".to_owned()),
        }
    }
}

/// The store chosen by config.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl AnyStore {
    pub fn open(config: &StoreConfig) -> Result<AnyStore, ConfigError> {
        match StoreUrl::parse(&config.url).map_err(|e| ConfigError::invalid("store.url", e))? {
            StoreUrl::Memory => Ok(AnyStore::Memory(MemoryStore::new())),
            StoreUrl::Redis(_) => Ok(AnyStore::Redis(RedisStore::open(config)?)),
        }
    }
}

impl TokenStore for AnyStore {
    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.ping().await,
            AnyStore::Redis(s) => s.ping().await,
        }
    }
}
