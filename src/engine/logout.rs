//! Back-channel logout: ending the families of a session (or a subject) the upstream logged
//! out (docs/design.md §4.12). The token was checked by the layer ([`crate::grant::logout`]).

use super::*;
use crate::grant::logout::Logout;
use crate::store::Index;

/// What a logout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoggedOut {
    /// The families it named were ended (how many: possibly none).
    Ended(u64),
    /// Its `jti` was seen before: nothing was done.
    Replayed,
}

impl Engine {
    /// Ends the families `logout` names: of its session when it has a `sid`, else of its
    /// subject; only those of the clients it is for; sparing families granted
    /// `offline_access` unless it asks for them too (OpenID Connect Back-Channel Logout 1.0
    /// §2.7). Each end is told to the upstream. A replayed `jti` does nothing.
    pub async fn logout(&self, logout: &Logout) -> Result<LoggedOut, StoreError> {
        let now = (self.clock)();
        let id = one_time_id(&["logout", &logout.jti]);
        let until = logout.remember_until.saturating_mul(1000);
        if !self
            .store
            .first_use(&id, now, until)
            .await
            .inspect_err(|_| inc(&self.metrics.store_errors))?
        {
            return Ok(LoggedOut::Replayed);
        }
        let index = match (&logout.session, &logout.subject) {
            (Some(session), _) => Index::Session(session),
            (None, Some(subject)) => Index::Subject(subject),
            (None, None) => return Ok(LoggedOut::Ended(0)),
        };
        let mut ended = 0;
        for client in &logout.clients {
            let selection = Selection {
                index,
                client_id: Some(client),
                keep_offline: !logout.revoke_offline,
            };
            match self.revoke_many(&selection, EndReason::Logout).await {
                Ok(n) => ended += n,
                Err(e) => {
                    // The IdP may send it again: it must not then be taken for a replay.
                    let _ = self.store.forget_use(&id).await;
                    return Err(e);
                }
            }
        }
        Ok(LoggedOut::Ended(ended))
    }
}
