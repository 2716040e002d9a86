//! `memory://`: the in-process store, for local runs, tests and load rigs. Not durable, not
//! shared between replicas.

use super::{StoreError, TokenStore};

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {}
    }
}

impl TokenStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
