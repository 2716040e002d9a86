//! Telling the upstream of family ends (docs/design.md §4.11).
//!
//! When a family ends at the proxy (the client revokes it, a reused token revokes it, the
//! admin API or a back-channel logout revokes it, or a client with `refresh_token_ttl = 0`
//! gets one), the upstream refresh token the family kept is revoked at the upstream's
//! revocation endpoint (RFC 7009), so the IdP's session ends with the proxy's family.
//!
//! The engine puts each end on a bounded queue ([`queue`]) and never waits for it; the
//! [`UpstreamRevoker`] drains it in the background, at most [`CONCURRENCY`] at once, each
//! with up to [`MAX_TRIES`] tries (backoff doubling from [`FIRST_BACKOFF`]): a 5xx, a 429 or
//! no answer is tried again; 200 is done; another 4xx is counted as rejected and not tried
//! again. Everything is counted in `refresh_proxy_upstream_revocations_total{outcome}`.
//!
//! The proxy authenticates as the family's client (`token_endpoint_auth_method` and its
//! clear `secret`; for `client_secret_jwt` a fresh assertion signed with it), or, when it only
//! has the secret's digest or the client uses `private_key_jwt` (the proxy has no private key),
//! as `upstream.introspection_client_*`.
//!
//! Caveat: the queue is in memory. Ends still queued when the process stops are not told
//! (the upstream token then lives on at the IdP until it expires there); the count of those
//! waiting is the `refresh_proxy_upstream_revocations_pending` gauge.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, mpsc};
use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::classify::Endpoints;
use crate::client_auth::{AssertionFor, UpstreamAuth};
use crate::conn::BoxError;
use crate::engine::{Ending, Endings, Engine};
use crate::metrics::UpstreamRevocation;

/// Family ends that may wait at once; more are dropped (counted), never waited for.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Revocation requests in flight at once.
pub const CONCURRENCY: usize = 8;
/// Tries per end, the first included.
pub const MAX_TRIES: u32 = 6;
/// The wait before the second try; it doubles for each next one (1, 2, 4, 8, 16 s: about
/// half a minute in all).
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A revocation answer's body is read and dropped, up to this many bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// A new queue: the engine's end ([`Engine::with_endings`]) and the revoker's.
pub fn queue() -> (Endings, mpsc::Receiver<Ending>) {
    mpsc::channel(QUEUE_CAPACITY)
}

/// Drains the queue of family ends into revocation requests at the upstream.
pub struct UpstreamRevoker<S> {
    service: S,
    engine: Arc<Engine>,
    endpoints: Arc<ArcSwap<Endpoints>>,
    /// `upstream.introspection_client_*`, for clients whose secret the proxy only has a digest of.
    fallback: Option<UpstreamAuth>,
    first_backoff: Duration,
}

/// How one try went.
enum Try {
    Done(UpstreamRevocation),
    Again(String),
}

impl<S, ResB> UpstreamRevoker<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    /// `service` sends requests to the upstream (the forwarding client); `engine` gives the
    /// clients' credentials of the moment and the metrics.
    pub fn new(
        service: S,
        engine: Arc<Engine>,
        endpoints: Arc<ArcSwap<Endpoints>>,
        fallback: Option<UpstreamAuth>,
    ) -> UpstreamRevoker<S> {
        UpstreamRevoker {
            service,
            engine,
            endpoints,
            fallback,
            first_backoff: FIRST_BACKOFF,
        }
    }

    /// Runs until every sender of the queue is gone.
    pub async fn run(self, mut queue: mpsc::Receiver<Ending>) {
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        let this = Arc::new(self);
        while let Some(ending) = queue.recv().await {
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let this = this.clone();
            tokio::spawn(async move {
                this.revoke(ending).await;
                drop(permit);
            });
        }
    }

    async fn revoke(&self, ending: Ending) {
        let metrics = &self.engine.metrics;
        // Traces (docs/operations.md, "Traces"): a trace of its own, as the family's end is
        // told after the request that ended it has been answered.
        let span = crate::otel::span!(
            "upstream.revocation",
            oauth.client_id = ending.client_id.as_str(),
            reason = ending.reason.label(),
            outcome = tracing::field::Empty,
        );
        let outcome = self.tries(&ending).instrument(span.clone()).await;
        span.record("outcome", outcome.label());
        metrics.upstream_revocation(outcome);
        metrics
            .upstream_revocations_pending
            .fetch_sub(1, Ordering::Relaxed);
        let (client_id, reason) = (ending.client_id.as_str(), ending.reason.label());
        match outcome {
            UpstreamRevocation::Revoked => tracing::info!(
                client_id,
                reason,
                "the family's upstream refresh token was revoked at the upstream"
            ),
            other => tracing::warn!(
                client_id,
                reason,
                outcome = other.label(),
                "the family's upstream refresh token could not be revoked at the upstream; \
                 it stays live there until it expires"
            ),
        }
    }

    async fn tries(&self, ending: &Ending) -> UpstreamRevocation {
        let mut backoff = self.first_backoff;
        for attempt in 1..=MAX_TRIES {
            let Some(path) = self.endpoints.load().revocation_path.clone() else {
                return UpstreamRevocation::NoEndpoint;
            };
            match self.try_once(&path, ending).await {
                Try::Done(outcome) => return outcome,
                Try::Again(why) if attempt < MAX_TRIES => {
                    self.engine
                        .metrics
                        .upstream_revocation(UpstreamRevocation::Retried);
                    tracing::debug!(
                        client_id = %ending.client_id,
                        attempt,
                        "upstream revocation failed ({why}); trying again in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Try::Again(_) => break,
            }
        }
        UpstreamRevocation::Failed
    }

    async fn try_once(&self, path: &str, ending: &Ending) -> Try {
        let keys = self.engine.keys();
        let auth = keys
            .clients
            .get(&ending.client_id)
            .and_then(|c| c.upstream_auth.clone())
            .or_else(|| self.fallback.clone())
            .unwrap_or_else(|| UpstreamAuth::Public {
                id: ending.client_id.clone(),
            });
        let pairs = [
            ("token", ending.token.expose()),
            ("token_type_hint", "refresh_token"),
        ];
        let endpoints = self.endpoints.load();
        let at = AssertionFor {
            audience: endpoints.issuer.as_deref(),
            now: crate::engine::now_ms() / 1000,
        };
        let Some(req) = auth.post_form(path, &pairs, at) else {
            return Try::Done(UpstreamRevocation::Rejected);
        };
        let req = req.map(Full::new);
        let res = match self.service.clone().oneshot(req).await {
            Ok(res) => res,
            Err(e) => return Try::Again(e.into().to_string()),
        };
        let status = res.status();
        // The answer is read so the connection can be reused; its content does not matter
        // (RFC 7009 §2.2: 200 whether or not the token was valid).
        let _ = http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await;
        match status {
            StatusCode::OK => Try::Done(UpstreamRevocation::Revoked),
            StatusCode::TOO_MANY_REQUESTS => Try::Again(status.to_string()),
            s if s.is_server_error() => Try::Again(s.to_string()),
            _ => Try::Done(UpstreamRevocation::Rejected),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as STANDARD_B64;
    use http::header::AUTHORIZATION;

    use super::*;
    use crate::engine::EndReason;
    use crate::mint::kept::KeptToken;
    use crate::store::{AnyStore, MemoryStore};

    fn engine() -> Arc<Engine> {
        let config = crate::config::Config::from_toml_str(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [clients.www]\nsecret = \"www secret\"\n\
             [clients.post]\nsecret = \"post-secret\"\ntoken_endpoint_auth_method = \"client_secret_post\"\n\
             [clients.spa]\n",
            std::path::Path::new("."),
            std::iter::empty(),
        )
        .expect("config");
        Arc::new(Engine::new(
            AnyStore::Memory(MemoryStore::new()),
            crate::app::build_keys(&config).expect("keys"),
            300,
            None,
        ))
    }

    /// What the upstream saw: (authorization header, form) of each request.
    type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

    /// Runs the revoker over one end against an upstream answering `statuses` in turn (the
    /// last one again once they run out); the requests it saw.
    async fn revoke(client: &str, statuses: &[u16], path: Option<&str>) -> (Arc<Engine>, Seen) {
        let engine = engine();
        let seen: Seen = Arc::default();
        let answers = Arc::new(Mutex::new(statuses.to_vec()));
        let log = seen.clone();
        let upstream = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let (log, answers) = (log.clone(), answers.clone());
            async move {
                let auth = req
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().expect("ascii").to_owned());
                let body = req.into_body().collect().await.expect("body").to_bytes();
                log.lock()
                    .expect("lock")
                    .push((auth, String::from_utf8(body.to_vec()).expect("utf-8")));
                let mut answers = answers.lock().expect("lock");
                let status = if answers.len() > 1 {
                    answers.remove(0)
                } else {
                    answers[0]
                };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))
                        .expect("response"),
                )
            }
        });
        let endpoints = Endpoints {
            revocation_path: path.map(str::to_owned),
            ..Endpoints::default()
        };
        let (ends, queue) = queue();
        let engine = Arc::new(
            Arc::try_unwrap(engine)
                .expect("one owner")
                .with_endings(ends),
        );
        engine.end_upstream_token(
            client,
            KeptToken::new("upstream-token"),
            EndReason::ClientRevocation,
        );
        let revoker = UpstreamRevoker::new(
            upstream,
            engine.clone(),
            Arc::new(ArcSwap::from_pointee(endpoints)),
            None,
        );
        let run = tokio::spawn(revoker.run(queue));
        // Every try and backoff runs on the paused clock; wait until the end is settled.
        while engine
            .metrics
            .upstream_revocations_pending
            .load(Ordering::Relaxed)
            > 0
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run.abort();
        (engine, seen)
    }

    fn count(engine: &Engine, outcome: UpstreamRevocation) -> u64 {
        engine.metrics.upstream_revocations(outcome)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_is_tried_six_times_then_given_up() {
        let started = tokio::time::Instant::now();
        let (engine, seen) = revoke("www", &[503], Some("/revoke")).await;
        assert_eq!(seen.lock().expect("lock").len(), MAX_TRIES as usize);
        assert_eq!(count(&engine, UpstreamRevocation::Retried), 5);
        assert_eq!(count(&engine, UpstreamRevocation::Failed), 1);
        assert_eq!(count(&engine, UpstreamRevocation::Revoked), 0);
        // 1 + 2 + 4 + 8 + 16 s of backoff.
        assert!(started.elapsed() >= Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_or_5xx_is_tried_again_and_a_4xx_is_not() {
        let (engine, seen) = revoke("www", &[429, 502, 200], Some("/revoke")).await;
        assert_eq!(seen.lock().expect("lock").len(), 3);
        assert_eq!(count(&engine, UpstreamRevocation::Revoked), 1);
        assert_eq!(count(&engine, UpstreamRevocation::Retried), 2);

        let (engine, seen) = revoke("www", &[401, 200], Some("/revoke")).await;
        assert_eq!(seen.lock().expect("lock").len(), 1);
        assert_eq!(count(&engine, UpstreamRevocation::Rejected), 1);
        assert_eq!(count(&engine, UpstreamRevocation::Retried), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_client_authenticates_as_it_is_registered() {
        let (_, seen) = revoke("www", &[200], Some("/revoke")).await;
        let (auth, form) = seen.lock().expect("lock")[0].clone();
        // RFC 6749 §2.3.1: id and secret form-encoded before base64 ("www secret" → "www+secret").
        assert_eq!(
            auth.as_deref(),
            Some(format!("Basic {}", STANDARD_B64.encode("www:www+secret")).as_str())
        );
        assert_eq!(form, "token=upstream-token&token_type_hint=refresh_token");

        let (_, seen) = revoke("post", &[200], Some("/revoke")).await;
        let (auth, form) = seen.lock().expect("lock")[0].clone();
        assert_eq!(auth, None);
        assert!(
            form.ends_with("&client_id=post&client_secret=post-secret"),
            "{form}"
        );

        let (_, seen) = revoke("spa", &[200], Some("/revoke")).await;
        let (auth, form) = seen.lock().expect("lock")[0].clone();
        assert_eq!(auth, None);
        assert!(form.ends_with("&client_id=spa"), "{form}");
        assert!(!form.contains("client_secret"), "{form}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_revocation_endpoint_nothing_is_sent() {
        let (engine, seen) = revoke("www", &[200], None).await;
        assert!(seen.lock().expect("lock").is_empty());
        assert_eq!(count(&engine, UpstreamRevocation::NoEndpoint), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_end_and_counts_it() {
        let (ends, _queue) = tokio::sync::mpsc::channel(1);
        let engine = Arc::try_unwrap(engine())
            .expect("one owner")
            .with_endings(ends);
        for _ in 0..3 {
            engine.end_upstream_token("www", KeptToken::new("t"), EndReason::Admin);
        }
        assert_eq!(count(&engine, UpstreamRevocation::Dropped), 2);
        assert_eq!(
            engine
                .metrics
                .upstream_revocations_pending
                .load(Ordering::Relaxed),
            1
        );
    }
}
