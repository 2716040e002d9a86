//! The JWKS around the upstream: the upstream's own key set, fetched through the inner service
//! and cached for capture's verification ([`UpstreamKeys`]), and the proxy's public keys merged
//! into the JWKS answers the upstream gives clients ([`merge_jwks`]).
//!
//! These calls go through the inner service, so whatever forwards client traffic (pool, TLS,
//! timeouts) also carries them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use serde_json::Value;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::capture::{is_json, read_json, rebuilt};
use super::service::inner_response;
use crate::body::{RequestBody, ResponseBody};
use crate::conn::BoxError;
use crate::grant::capture::Skip;
use crate::grant::verify::KeySet;
use crate::metrics::CaptureSkip;

/// The upstream's JWKS is fetched again when a token names a `kid` it does not hold, but no
/// sooner than this after the last fetch.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Before any JWKS could be fetched, attempts are at least this far apart.
const JWKS_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// A cached JWKS is fetched again (on the next capture) after this long, so keys the upstream
/// withdrew stop verifying.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The upstream's JWKS, shared by every worker. A warm cache answers without I/O; fetches go
/// one at a time (others wait for the result) and are rate-limited.
#[derive(Debug, Default)]
pub(crate) struct UpstreamKeys {
    state: Mutex<KeysState>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct KeysState {
    /// The path the keys came from (the endpoints may change).
    path: String,
    keys: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// What to do for a capture that needs the keys.
#[derive(Debug, PartialEq)]
enum KeysPlan {
    Use(Arc<KeySet>),
    Fetch,
    Unavailable,
}

impl KeysState {
    /// `refresh`: the cached set lacks a `kid` a token named.
    fn plan(&self, path: &str, refresh: bool, now: Instant) -> KeysPlan {
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let keys = self.keys.clone().filter(|_| self.path == path);
        let recently =
            |limit: Duration| self.path == path && since(self.attempted).is_some_and(|d| d < limit);
        match keys {
            Some(keys) => {
                let stale = since(self.fetched).is_none_or(|d| d >= JWKS_MAX_AGE);
                if (!refresh && !stale) || recently(JWKS_REFETCH_INTERVAL) {
                    KeysPlan::Use(keys)
                } else {
                    KeysPlan::Fetch
                }
            }
            None if recently(JWKS_RETRY_INTERVAL) => KeysPlan::Unavailable,
            None => KeysPlan::Fetch,
        }
    }
}

impl UpstreamKeys {
    fn plan(&self, path: &str, refresh: bool) -> KeysPlan {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan(path, refresh, Instant::now())
    }

    /// The keys at `path`: cached, or fetched through `service` when the plan says so.
    pub(super) async fn get<S, B, ResB>(
        &self,
        service: S,
        path: &str,
        refresh: bool,
    ) -> Result<Arc<KeySet>, Skip>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
        ResB: Body<Data = Bytes>,
        ResB::Error: Into<BoxError>,
    {
        const UNAVAILABLE: Skip = (
            CaptureSkip::NoJwks,
            "the upstream's JWKS could not be fetched (retried at most every few seconds)",
        );
        if let KeysPlan::Use(keys) = self.plan(path, refresh) {
            return Ok(keys);
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Another capture may have fetched while this one waited.
        match self.plan(path, refresh) {
            KeysPlan::Use(keys) => return Ok(keys),
            KeysPlan::Unavailable => return Err(UNAVAILABLE),
            KeysPlan::Fetch => {}
        }
        let started = Instant::now();
        let fetched = fetch_jwks(service, path)
            .instrument(crate::otel::span!("upstream.jwks"))
            .await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.path != path {
            *state = KeysState {
                path: path.to_owned(),
                ..KeysState::default()
            };
        }
        state.attempted = Some(started);
        match fetched {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched the upstream's JWKS");
                let keys = Arc::new(keys);
                state.keys = Some(keys.clone());
                state.fetched = Some(started);
                Ok(keys)
            }
            Err(why) => {
                tracing::warn!("could not fetch the upstream's JWKS: {why}");
                // A stale set is better than none; a withdrawn key is caught on a later fetch.
                state.keys.clone().ok_or(UNAVAILABLE)
            }
        }
    }
}

/// GETs the upstream's JWKS through the inner service.
async fn fetch_jwks<S, B, ResB>(service: S, path: &str) -> Result<KeySet, &'static str>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(http::header::ACCEPT, "application/json")
        .body(RequestBody::buffered(Bytes::new()))
        .map_err(|_| "the JWKS path is not a valid request target")?;
    let res = service
        .oneshot(req)
        .await
        .map_err(|_| "the upstream could not be reached")?;
    if res.status() != StatusCode::OK {
        return Err("the upstream's JWKS did not answer 200");
    }
    let body = read_json(res.into_body()).await?;
    KeySet::parse(&body)
}

/// Adds the proxy's public keys to a JWKS answer; anything else passes through.
pub(super) async fn merge_jwks<ResB>(
    res: Response<ResB>,
    ours: &[Value],
) -> Response<ResponseBody<ResB>>
where
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    if res.status() != StatusCode::OK || !is_json(&res) {
        return inner_response(res);
    }
    let (parts, body) = res.into_parts();
    match read_json(body).await {
        Ok(bytes) => match crate::mint::jwt::merge_jwks(&bytes, ours) {
            Some(merged) => rebuilt(parts, Bytes::from(merged)),
            None => rebuilt(parts, bytes),
        },
        Err(why) => {
            tracing::warn!("JWKS not merged: {why}");
            super::service::local_response(crate::error::Error::Forward(
                crate::proxy::ForwardError::Failed(why.into()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(path: &str, at: Instant) -> KeysState {
        KeysState {
            path: path.to_owned(),
            keys: Some(Arc::new(KeySet::default())),
            fetched: Some(at),
            attempted: Some(at),
        }
    }

    #[test]
    fn a_warm_cache_is_used_and_refetches_are_rate_limited() {
        let t0 = Instant::now();
        let s = warm("/jwks", t0);
        let secs = |n| t0 + Duration::from_secs(n);
        // Warm: no fetch, whatever the time within the max age.
        assert!(matches!(s.plan("/jwks", false, secs(1)), KeysPlan::Use(_)));
        assert!(matches!(
            s.plan("/jwks", false, secs(3599)),
            KeysPlan::Use(_)
        ));
        // An unknown kid: a refetch, but not within 30 s of the last one.
        assert!(matches!(s.plan("/jwks", true, secs(29)), KeysPlan::Use(_)));
        assert_eq!(s.plan("/jwks", true, secs(30)), KeysPlan::Fetch);
        // Stale after an hour.
        assert_eq!(s.plan("/jwks", false, secs(3600)), KeysPlan::Fetch);
        // Another path (the endpoints changed): fetch.
        assert_eq!(s.plan("/other", false, secs(1)), KeysPlan::Fetch);
        // Cold: fetch; after a failed attempt, not again within 5 s.
        let cold = KeysState::default();
        assert_eq!(cold.plan("/jwks", false, t0), KeysPlan::Fetch);
        let failed = KeysState {
            path: "/jwks".into(),
            attempted: Some(t0),
            ..KeysState::default()
        };
        assert_eq!(failed.plan("/jwks", false, secs(4)), KeysPlan::Unavailable);
        assert_eq!(failed.plan("/jwks", true, secs(5)), KeysPlan::Fetch);
    }
}
