//! `private_key_jwt` clients' `jwks_uri` key sets (docs/design.md §4.18): fetched with the
//! proxy's own HTTP client (not through the inner service: the URL is the client's, not the
//! upstream's), cached per client, fetched again when an assertion names a `kid` the cached set
//! lacks, at most once per `jwks_refetch_interval` (30 s by default) per client, and after
//! [`MAX_AGE`].
//!
//! A fetch has [`TIMEOUT`] and reads at most [`MAX_JWKS_BYTES`]; `https` is verified with the
//! system's roots (config allows `http` only to loopback). Fetches go one at a time per proxy;
//! a warm cache answers without waiting for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};

use crate::engine::{ClientJwks, KeysFuture};
use crate::grant::verify::KeySet;

/// After a failed first fetch, no new attempt for this long.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// A cached set is fetched again after this long, so withdrawn keys stop verifying.
pub const MAX_AGE: Duration = Duration::from_secs(3600);
/// Time for one fetch, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWK Set read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

type HttpClient = crate::tls::HttpClient<Empty<Bytes>>;

/// The clients' key sets, shared by every worker.
#[derive(Default)]
pub(crate) struct ClientKeys {
    state: Mutex<HashMap<String, Entry>>,
    fetching: tokio::sync::Mutex<()>,
    http: OnceLock<Option<HttpClient>>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    uri: String,
    keys: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
    attempted: Instant,
}

#[derive(Debug, PartialEq)]
enum Plan {
    Use(Option<Arc<KeySet>>),
    Fetch,
}

/// `refetch`: an assertion named an unknown key; fetch again unless the last attempt was
/// within that interval.
fn plan(entry: Option<&Entry>, uri: &str, refetch: Option<Duration>, now: Instant) -> Plan {
    let Some(e) = entry.filter(|e| e.uri == uri) else {
        return Plan::Fetch;
    };
    let since_attempt = now.saturating_duration_since(e.attempted);
    match &e.keys {
        Some(keys) => {
            let stale = e
                .fetched
                .is_none_or(|t| now.saturating_duration_since(t) >= MAX_AGE);
            let fetch = match refetch {
                Some(interval) => since_attempt >= interval,
                None => stale && since_attempt >= RETRY_INTERVAL,
            };
            if fetch {
                Plan::Fetch
            } else {
                Plan::Use(Some(keys.clone()))
            }
        }
        None if since_attempt < RETRY_INTERVAL => Plan::Use(None),
        None => Plan::Fetch,
    }
}

impl ClientKeys {
    fn plan(&self, client_id: &str, uri: &str, refetch: Option<Duration>) -> Plan {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        plan(state.get(client_id), uri, refetch, Instant::now())
    }

    fn http(&self) -> Option<&HttpClient> {
        self.http
            .get_or_init(|| crate::tls::http1_client(crate::tls::Roots::System, TIMEOUT).ok())
            .as_ref()
    }

    async fn get(
        &self,
        client_id: &str,
        uri: &str,
        refetch: Option<Duration>,
    ) -> Option<Arc<KeySet>> {
        if let Plan::Use(keys) = self.plan(client_id, uri, refetch) {
            return keys;
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Plan::Use(keys) = self.plan(client_id, uri, refetch) {
            return keys;
        }
        let started = Instant::now();
        let fetched = self.fetch(uri).await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let entry = state.entry(client_id.to_owned()).or_insert_with(|| Entry {
            uri: uri.to_owned(),
            keys: None,
            fetched: None,
            attempted: started,
        });
        if entry.uri != uri {
            *entry = Entry {
                uri: uri.to_owned(),
                keys: None,
                fetched: None,
                attempted: started,
            };
        }
        entry.attempted = started;
        match fetched {
            Ok(keys) => {
                tracing::info!(
                    client_id,
                    keys = keys.len(),
                    "fetched the client's jwks_uri"
                );
                let keys = Arc::new(keys);
                entry.keys = Some(keys.clone());
                entry.fetched = Some(started);
                Some(keys)
            }
            Err(why) => {
                tracing::warn!(client_id, "could not fetch the client's jwks_uri: {why}");
                // A stale set is better than none; a withdrawn key is caught on a later fetch.
                entry.keys.clone()
            }
        }
    }

    async fn fetch(&self, uri: &str) -> Result<KeySet, &'static str> {
        let http = self.http().ok_or("no TLS client configuration")?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| "not a valid URL")?;
        let body = tokio::time::timeout(TIMEOUT, async {
            let res = http.request(req).await.map_err(|_| "no answer")?;
            if res.status() != StatusCode::OK {
                return Err("the answer is not 200");
            }
            Limited::new(res.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|_| "the answer could not be read (or is over 64 KiB)")
        })
        .await
        .map_err(|_| "timed out")??;
        KeySet::parse(&body)
    }
}

impl ClientJwks for ClientKeys {
    fn keys<'a>(
        &'a self,
        client_id: &'a str,
        uri: &'a str,
        refetch: Option<Duration>,
    ) -> KeysFuture<'a> {
        Box::pin(self.get(client_id, uri, refetch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_set_is_used_and_refetches_are_rate_limited() {
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        let secs30 = Duration::from_secs(30);
        let warm = Entry {
            uri: "https://c/jwks".into(),
            keys: Some(Arc::new(KeySet::default())),
            fetched: Some(t0),
            attempted: t0,
        };
        let p = |e: &Entry, uri: &str, unknown_kid: bool, at| {
            plan(Some(e), uri, unknown_kid.then_some(secs30), at)
        };
        assert!(matches!(
            p(&warm, "https://c/jwks", false, secs(3599)),
            Plan::Use(Some(_))
        ));
        // An unknown kid: refetched, but not within 30 s of the last attempt.
        assert!(matches!(
            p(&warm, "https://c/jwks", true, secs(29)),
            Plan::Use(Some(_))
        ));
        assert_eq!(p(&warm, "https://c/jwks", true, secs(30)), Plan::Fetch);
        assert_eq!(p(&warm, "https://c/jwks", false, secs(3600)), Plan::Fetch);
        // A reload changed the client's jwks_uri.
        assert_eq!(p(&warm, "https://c/other", false, secs(1)), Plan::Fetch);
        assert_eq!(plan(None, "https://c/jwks", None, t0), Plan::Fetch);
        // A failed first fetch: nothing for 5 s.
        let failed = Entry {
            keys: None,
            fetched: None,
            ..warm
        };
        assert_eq!(p(&failed, "https://c/jwks", true, secs(4)), Plan::Use(None));
        assert_eq!(p(&failed, "https://c/jwks", true, secs(5)), Plan::Fetch);
    }
}
