//! A per-connection budget for the request bodies the layer holds in memory.
//!
//! The layer reads token, revocation and introspection bodies whole (each at most
//! `max_body_bytes`). On an HTTP/1.1 connection one request is read at a time, so one body is
//! the most a connection makes the proxy hold. An HTTP/2 connection multiplexes: without a
//! budget, `max_concurrent_streams × max_body_bytes` per connection (100 × 64 KiB by default).
//! The server puts one [`BodyBudget`] in the extensions of every request of an HTTP/2
//! connection; the layer takes bytes from it as a body arrives and gives them back when the
//! request is done. A body that does not fit waits for room (its stream is not read, so HTTP/2
//! flow control holds the client back) within `body_read_timeout`, then gets 408.
//!
//! Without a budget in the extensions (HTTP/1.1, or the layer in another server) nothing is
//! counted beyond `max_body_bytes` per request.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of request bodies one connection may have the layer hold at once. Cheap to clone:
/// clones share the budget.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    /// A budget of `bytes` (at most [`Semaphore::MAX_PERMITS`]).
    pub fn new(bytes: usize) -> BodyBudget {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The bytes not taken now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` more bytes into `held`, waiting until they are free. `None` when `n` can never
    /// fit (more than the whole budget, counting what `held` has already).
    pub(crate) async fn take(&self, held: &mut Held, n: usize) -> Option<()> {
        if n == 0 {
            return Some(());
        }
        let held_now = held.0.as_ref().map_or(0, |p| p.num_permits());
        if held_now + n > self.total {
            return None;
        }
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(u32::try_from(n).ok()?)
            .await
            .ok()?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Some(())
    }
}

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_are_held_until_dropped_and_a_body_larger_than_the_budget_never_waits() {
        let budget = BodyBudget::new(100);
        let mut a = Held::default();
        budget.take(&mut a, 60).await.expect("fits");
        budget.take(&mut a, 30).await.expect("fits");
        assert_eq!(budget.available(), 10);
        // 20 more do not fit now: the taker waits until `a` is given back.
        let mut b = Held::default();
        {
            let waiting = budget.take(&mut b, 20);
            tokio::pin!(waiting);
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
            drop(a);
            waiting.await.expect("fits once a is given back");
        }
        assert_eq!(budget.available(), 80);
        // More than the whole budget (with what b holds): refused at once.
        assert!(budget.take(&mut b, 81).await.is_none());
        assert!(budget.take(&mut Held::default(), 101).await.is_none());
        drop(b);
        assert_eq!(budget.available(), 100);
    }
}
