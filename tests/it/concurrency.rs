//! Rotation under racing requests (docs/design.md §4.5–4.7), over real sockets: a real IdP
//! (oidc-provider) behind the proxy, whose URL is the IdP's issuer, 200 refresh requests released
//! together with one refresh token, on the memory store and on a private redis-server.
//!
//! - With a grace period, every racer gets the same next token and the family goes on with it.
//! - Strict (`reuse_grace_period = 0`), exactly one racer wins; the others are reuse, which
//!   revokes the family, so the winner's token is refused too.
//! - Racing refreshes never reach the upstream.
//!
//! The grace test prints its wall time and request rate (not asserted): run with
//! `--no-capture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::idp::{self, CodeFlow, Idp, IdpOptions, WWW_CLIENT_ID, WWW_CLIENT_SECRET};
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::Barrier;

/// Requests released together in one race.
const RACERS: usize = 200;
/// Races in a row, chained on one family, with a grace period.
const GRACE_ROUNDS: usize = 100;
/// Races without a grace period, each on a fresh family.
const STRICT_ROUNDS: usize = 20;
/// Logins in flight at once while preparing the strict families.
const PARALLEL_LOGINS: usize = 4;
const SCOPE: &str = "openid offline_access read";
/// No single request may take longer than this (a hang is a failure, not a stuck test).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

use crate::support::StoreKind as Kind;

struct Stack {
    kind: Kind,
    idp: Idp,
    proxy: TestProxy,
    _redis: Option<RedisServer>,
    /// One client for every racer: its pool keeps (up to) 200 connections to the proxy open
    /// between races, so later races start on warm connections.
    client: reqwest::Client,
}

impl Stack {
    /// IdP and proxy as in tests/e2e_refresh.rs; `www` is the `[clients.www]` extra TOML.
    async fn start(kind: Kind, www: &str) -> Stack {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy's listener");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(issuer),
            ..IdpOptions::default()
        })
        .await;
        let (redis, store) = kind.start();
        let text = format!(
            // Generous store timeouts: this test is about the grace rule, and a slow answer
            // on a loaded machine must not turn into a 503.
            "[store]\nurl = \"{store}\"\nresponse_timeout = 5\noperation_timeout = 10\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [clients.www]\nsecret = \"Secr3t!\"\n{www}\n\
             [upstream]\nurl = \"{up}\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = idp.base_url,
        );
        let proxy = TestProxy::start_on(listener, &text).await;
        proxy.wait_ready().await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(RACERS)
            .build()
            .expect("build the racers' HTTP client");
        Stack {
            kind,
            idp,
            proxy,
            _redis: redis,
            client,
        }
    }

    /// The code flow through the proxy for `www`; returns the proxy's refresh token.
    async fn login(&self) -> String {
        let tokens = idp::code_flow(&self.proxy.url, &CodeFlow::www(SCOPE)).await;
        let token = idp::str_field(&tokens, "refresh_token").to_owned();
        assert!(
            Parsed::of(&token).is_some(),
            "{:?}: the login's refresh token is not the proxy's: {token}",
            self.kind
        );
        token
    }

    /// A refresh request for `token`, built and ready to send.
    fn refresh_request(&self, token: &str) -> reqwest::Request {
        self.client
            .post(format!("{}/token", self.proxy.url))
            .basic_auth(WWW_CLIENT_ID, Some(WWW_CLIENT_SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
            .build()
            .expect("build a refresh request")
    }

    async fn refresh(&self, token: &str) -> Outcome {
        send(&self.client, self.refresh_request(token)).await
    }

    /// [`RACERS`] refreshes with `token`: every request is built and every task is waiting
    /// before a barrier releases them all at once.
    async fn race(&self, token: &str) -> Race {
        let barrier = Arc::new(Barrier::new(RACERS + 1));
        let tasks: Vec<_> = (0..RACERS)
            .map(|_| {
                let request = self.refresh_request(token);
                let client = self.client.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let sent = Instant::now();
                    let outcome = send(&client, request).await;
                    (sent, Instant::now(), outcome)
                })
            })
            .collect();
        barrier.wait().await;
        let released = Instant::now();
        let mut spans = Vec::with_capacity(RACERS);
        let mut outcomes = Vec::with_capacity(RACERS);
        for task in tasks {
            let (sent, answered, outcome) = task.await.expect("a racer task panicked");
            spans.push((sent, answered));
            outcomes.push(outcome);
        }
        Race {
            elapsed: released.elapsed(),
            peak_in_flight: peak_overlap(&spans),
            outcomes,
        }
    }

    /// Refresh grants the IdP has seen.
    async fn upstream_refreshes(&self) -> u64 {
        self.idp.grant_count("refresh_token").await
    }
}

/// What one request got.
#[derive(Debug)]
enum Outcome {
    Http {
        status: u16,
        /// The JSON body, or `Value::Null` when it was not JSON (kept in `text`).
        json: Value,
        text: String,
    },
    /// No complete HTTP answer: connect error, reset, timeout.
    Transport(String),
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Http { status, .. } => Some(*status),
            Outcome::Transport(_) => None,
        }
    }

    fn json_str(&self, field: &str) -> Option<&str> {
        match self {
            Outcome::Http { json, .. } => json.get(field).and_then(Value::as_str),
            Outcome::Transport(_) => None,
        }
    }

    fn refresh_token(&self) -> Option<&str> {
        self.json_str("refresh_token")
    }

    fn error(&self) -> Option<&str> {
        self.json_str("error")
    }

    /// `200`, `400 invalid_grant`, `503 temporarily_unavailable`, `502 (not JSON)`,
    /// `transport: timeout`: what the tallies count.
    fn label(&self) -> String {
        match self {
            Outcome::Http { status, json, .. } => match (json.is_null(), self.error()) {
                (true, _) => format!("{status} (not JSON)"),
                (false, Some(error)) => format!("{status} {error}"),
                (false, None) => status.to_string(),
            },
            Outcome::Transport(kind) => format!("transport: {kind}"),
        }
    }

    /// `true` for HTTP 400 `invalid_grant`.
    fn is_invalid_grant(&self) -> bool {
        self.status() == Some(400) && self.error() == Some("invalid_grant")
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Http { status, text, .. } => write!(f, "HTTP {status}: {text}"),
            Outcome::Transport(e) => write!(f, "no answer: {e}"),
        }
    }
}

async fn send(client: &reqwest::Client, request: reqwest::Request) -> Outcome {
    let response = match client.execute(request).await {
        Ok(response) => response,
        Err(e) => return Outcome::Transport(transport_kind(&e)),
    };
    let status = response.status().as_u16();
    match response.text().await {
        Ok(text) => Outcome::Http {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        },
        Err(e) => Outcome::Transport(format!("reading the body of HTTP {status}: {}", chain(&e))),
    }
}

fn transport_kind(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    format!("{kind} ({})", chain(e))
}

/// An error with its sources, e.g. "error sending request: connection reset by peer".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The most requests that were in flight at one moment.
fn peak_overlap(spans: &[(Instant, Instant)]) -> usize {
    // (time, +1 for a start / -1 for an end); at equal times ends go first.
    let mut events: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// The answers to one race.
struct Race {
    outcomes: Vec<Outcome>,
    /// From the release to the last answer.
    elapsed: Duration,
    peak_in_flight: usize,
}

impl Race {
    /// How many answers of each kind, e.g. `{"200": 1, "400 invalid_grant": 199}`.
    fn tally(&self) -> BTreeMap<String, usize> {
        let mut tally = BTreeMap::new();
        for outcome in &self.outcomes {
            *tally.entry(outcome.label()).or_insert(0) += 1;
        }
        tally
    }

    /// The distinct refresh tokens among the answers.
    fn refresh_tokens(&self) -> BTreeSet<&str> {
        self.outcomes
            .iter()
            .filter_map(Outcome::refresh_token)
            .collect()
    }

    /// The first answer that is not `ok`, for the failure message.
    fn first_other(&self, ok: impl Fn(&Outcome) -> bool) -> String {
        self.outcomes
            .iter()
            .find(|o| !ok(o))
            .map_or_else(|| "none".to_owned(), ToString::to_string)
    }
}

/// A proxy refresh token: `<family, 22 chars>.<generation>.<4-char key id><64 chars>`.
#[derive(Debug, PartialEq, Eq)]
struct Parsed<'a> {
    family: &'a str,
    generation: u64,
}

impl<'a> Parsed<'a> {
    fn of(token: &'a str) -> Option<Parsed<'a>> {
        let mut parts = token.split('.');
        let (family, generation, rest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || family.len() != 22 || rest.len() != 68 {
            return None;
        }
        Some(Parsed {
            family,
            generation: generation.parse().ok()?,
        })
    }

    fn expect(token: &'a str) -> Parsed<'a> {
        Parsed::of(token).unwrap_or_else(|| panic!("not a proxy refresh token: {token}"))
    }
}

async fn racing_refreshes_with_grace_all_get_the_same_new_token(kind: Kind) {
    let s = Stack::start(kind, "reuse_grace_period = 30").await;
    let mut token = s.login().await;
    let family = Parsed::expect(&token).family.to_owned();
    let mut requests = 0usize;
    let mut race_times = Vec::with_capacity(GRACE_ROUNDS);
    let mut lowest_peak = usize::MAX;
    let started = Instant::now();
    for round in 0..GRACE_ROUNDS {
        let n = Parsed::expect(&token).generation;
        let race = s.race(&token).await;
        requests += RACERS;
        race_times.push(race.elapsed);
        lowest_peak = lowest_peak.min(race.peak_in_flight);
        let tally = race.tally();
        let ok = |o: &Outcome| o.status() == Some(200) && o.json_str("access_token").is_some();
        assert!(
            race.outcomes.iter().all(ok),
            "{kind:?}, round {round} (generation {n}): not every racer got 200 with an access \
             token: {tally:?}; first other answer: {}",
            race.first_other(ok)
        );
        let distinct = race.refresh_tokens();
        assert_eq!(
            distinct.len(),
            1,
            "{kind:?}, round {round} (generation {n}): {} distinct refresh tokens among {RACERS} \
             answers, generations {:?}",
            distinct.len(),
            distinct
                .iter()
                .map(|t| Parsed::of(t).map(|p| p.generation))
                .collect::<Vec<_>>()
        );
        let next = distinct.first().copied().expect("one token").to_owned();
        assert_eq!(
            Parsed::expect(&next),
            Parsed {
                family: &family,
                generation: n + 1
            },
            "{kind:?}, round {round}: the racers' token is not the family's next generation"
        );

        // The family goes on with exactly that token.
        let follow = s.refresh(&next).await;
        requests += 1;
        assert_eq!(
            follow.status(),
            Some(200),
            "{kind:?}, round {round}: refreshing with the racers' token (generation {}): {follow}",
            n + 1
        );
        let after = follow.refresh_token().expect("200 carries a refresh token");
        assert_eq!(
            Parsed::expect(after),
            Parsed {
                family: &family,
                generation: n + 2
            },
            "{kind:?}, round {round}: refreshing with generation {} did not give the next one",
            n + 1
        );
        token = after.to_owned();

        let upstream = s.upstream_refreshes().await;
        assert_eq!(
            upstream, 0,
            "{kind:?}, round {round}: {upstream} refresh grants reached the IdP"
        );
    }
    let elapsed = started.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean_ms =
        |times: &[Duration]| times.iter().copied().map(ms).sum::<f64>() / times.len() as f64;
    let tenth = GRACE_ROUNDS / 10;
    eprintln!(
        "[concurrency] {kind:?} store, grace: {GRACE_ROUNDS} races x {RACERS} racers (+1 follow-up \
         refresh each) = {requests} refreshes in {:.2} s, {:.0} requests/s; a race takes {:.1} ms \
         on average ({:.1} ms in the first {tenth} races, {:.1} ms in the last {tenth}), {:.1} ms \
         at most; fewest requests in flight at once in a race {lowest_peak}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        mean_ms(&race_times),
        mean_ms(&race_times[..tenth]),
        mean_ms(&race_times[GRACE_ROUNDS - tenth..]),
        race_times.iter().copied().map(ms).fold(0.0, f64::max),
    );
}

async fn racing_refreshes_without_grace_one_wins_and_reuse_revokes_the_family(kind: Kind) {
    let s = Stack::start(kind, "reuse_grace_period = 0").await;
    // One fresh family per race, logged in up front (a login takes about a second).
    let tokens: Vec<String> = futures_util::stream::iter(0..STRICT_ROUNDS)
        .map(|_| s.login())
        .buffer_unordered(PARALLEL_LOGINS)
        .collect()
        .await;
    let mut lowest_peak = usize::MAX;
    let started = Instant::now();
    for (round, token) in tokens.iter().enumerate() {
        let presented = Parsed::expect(token);
        let race = s.race(token).await;
        lowest_peak = lowest_peak.min(race.peak_in_flight);
        let tally = race.tally();
        let winners: Vec<&Outcome> = race
            .outcomes
            .iter()
            .filter(|o| o.status() == Some(200))
            .collect();
        let losers = race
            .outcomes
            .iter()
            .filter(|o| o.is_invalid_grant())
            .count();
        assert!(
            winners.len() == 1 && losers == RACERS - 1,
            "{kind:?}, round {round}: expected 1 x 200 and {} x 400 invalid_grant, got {tally:?}; \
             first answer that is neither: {}",
            RACERS - 1,
            race.first_other(|o| o.status() == Some(200) || o.is_invalid_grant())
        );
        let won = winners[0]
            .refresh_token()
            .unwrap_or_else(|| panic!("{kind:?}, round {round}: the 200 has no refresh token"));
        assert_eq!(
            Parsed::expect(won),
            Parsed {
                family: presented.family,
                generation: presented.generation + 1
            },
            "{kind:?}, round {round}: the winner's token is not the family's next generation"
        );

        // The losers presented a rotated-out token: reuse, the family is revoked.
        let after = s.refresh(won).await;
        assert!(
            after.is_invalid_grant(),
            "{kind:?}, round {round}: the winner's token after the reuse: expected 400 \
             invalid_grant, got {after}"
        );

        let upstream = s.upstream_refreshes().await;
        assert_eq!(
            upstream, 0,
            "{kind:?}, round {round}: {upstream} refresh grants reached the IdP"
        );
    }
    eprintln!(
        "[concurrency] {kind:?} store, strict: {STRICT_ROUNDS} races x {RACERS} racers in {:.2} s; \
         fewest requests in flight at once in a race {lowest_peak}",
        started.elapsed().as_secs_f64(),
    );
}

both_stores!(
    multi_thread:
    racing_refreshes_with_grace_all_get_the_same_new_token,
    racing_refreshes_without_grace_one_wins_and_reuse_revokes_the_family,
);
