//! Passing accepted logout tokens on to clients' own back-channel logout endpoints
//! (docs/design.md §4.12).
//!
//! With the proxy's `upstream.backchannel_logout_path` registered at the IdP as a client's
//! `backchannel_logout_uri`, the IdP's logout token reaches the proxy instead of the client.
//! When the client has its own endpoint (`clients.<id>.backchannel_logout_uri`), the proxy
//! POSTs the same token there after it has ended the client's families, in the background
//! (the IdP's answer never waits for it): up to [`MAX_TRIES`] tries, 1 then 2 s apart, each
//! within [`TIMEOUT`]; 200 or 204 is done (§2.8). Counted in
//! `refresh_proxy_logouts_passed_on_total{outcome}`. The client checks the token itself, as it
//! would have had the IdP sent it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::config::ConfigError;
use crate::layer::{PassOn, PassOns};
use crate::metrics::Metrics;

/// Logout tokens that may wait to be passed on; more are dropped (counted as failed).
pub const QUEUE_CAPACITY: usize = 1_000;
/// Tries per token.
pub const MAX_TRIES: u32 = 3;
/// Time for one try, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A new queue: the layer's end and the relay's.
pub fn queue() -> (PassOns, mpsc::Receiver<PassOn>) {
    mpsc::channel(QUEUE_CAPACITY)
}

/// Sends queued logout tokens to the clients' endpoints.
pub struct LogoutRelay {
    client: crate::tls::HttpClient<Full<Bytes>>,
    metrics: Arc<Metrics>,
    first_backoff: Duration,
}

impl LogoutRelay {
    /// A relay trusting the system's roots for `https` endpoints (read only when `https` is
    /// set: some client's endpoint is one).
    pub fn new(metrics: Arc<Metrics>, https: bool) -> Result<LogoutRelay, ConfigError> {
        let roots = if https {
            crate::tls::Roots::System
        } else {
            crate::tls::Roots::Unused
        };
        Ok(LogoutRelay {
            client: crate::tls::http1_client(roots, TIMEOUT)?,
            metrics,
            first_backoff: Duration::from_secs(1),
        })
    }

    /// Runs until every sender of the queue is gone; tokens are passed on one after another.
    pub async fn run(self, mut queue: mpsc::Receiver<PassOn>) {
        while let Some(item) = queue.recv().await {
            let done = self.pass_on(&item).await;
            let counter = if done {
                &self.metrics.logouts_passed_on
            } else {
                &self.metrics.logouts_pass_on_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if done {
                tracing::info!(client_id = %item.client_id, "logout token passed on to the client");
            } else {
                tracing::warn!(
                    client_id = %item.client_id,
                    "the client's backchannel_logout_uri did not accept the logout token"
                );
            }
        }
    }

    async fn pass_on(&self, item: &PassOn) -> bool {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("logout_token", &item.logout_token)
            .finish();
        let mut backoff = self.first_backoff;
        for attempt in 1..=MAX_TRIES {
            let Ok(req) = Request::builder()
                .method(Method::POST)
                .uri(&item.uri)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body.clone())))
            else {
                return false;
            };
            let sent = tokio::time::timeout(TIMEOUT, async {
                let res = self.client.request(req).await.ok()?;
                let status = res.status();
                let _ = http_body_util::Limited::new(res.into_body(), 64 * 1024)
                    .collect()
                    .await;
                Some(status)
            })
            .await
            .ok()
            .flatten();
            match sent {
                Some(StatusCode::OK | StatusCode::NO_CONTENT) => return true,
                // §2.8: 400 means the client refused the token; trying again will not help.
                Some(s) if s.is_client_error() => return false,
                _ if attempt < MAX_TRIES => {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                _ => {}
            }
        }
        false
    }
}
