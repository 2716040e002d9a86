//! Steady load for fault tests: refresh chains (each rotating its own family at a fixed
//! rate, always presenting the token of its last good answer), forwarded requests, and a
//! `/readyz` poller, each answer logged with when it was sent and how long it took.
//!
//! A chain checks every 200 as it gets it: the new refresh token must be of the same family
//! and exactly one generation on. A 503 keeps the token for the next try, as a client would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One answer (or transport failure, status 0) as the load saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub chain: usize,
    /// Sent at, since the load started.
    pub at: Duration,
    pub latency: Duration,
    pub status: u16,
    /// The OAuth `error`, or the transport error.
    pub error: String,
    pub retry_after: bool,
}

impl Answer {
    pub fn done(&self) -> Duration {
        self.at + self.latency
    }
}

/// Where a chain ended.
#[derive(Debug, Clone)]
pub struct Chain {
    pub family: String,
    pub token: String,
    pub generation: u64,
    /// Answers that broke the chain's rules (wrong family, skipped or repeated generation).
    pub violations: Vec<String>,
}

pub struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    chains: Vec<tokio::task::JoinHandle<(Chain, Vec<Answer>)>>,
    forwards: tokio::task::JoinHandle<Vec<Answer>>,
    readyz: tokio::task::JoinHandle<Vec<(Duration, u16)>>,
}

pub struct Report {
    pub chains: Vec<Chain>,
    pub refreshes: Vec<Answer>,
    pub forwards: Vec<Answer>,
    pub readyz: Vec<(Duration, u16)>,
}

/// `<family>.<generation>.<rest>` of a refresh token the proxy minted.
pub fn family_and_generation(token: &str) -> (String, u64) {
    let mut parts = token.split('.');
    let family = parts.next().unwrap_or_default().to_owned();
    let generation = parts
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("not a proxy refresh token: {token:.30}…"));
    (family, generation)
}

/// A client with a timeout far above any configured one, so a hung request shows as a long
/// latency rather than hanging the test.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(128)
        .build()
        .expect("client")
}

/// One refresh grant with Basic client auth; `(status, body, Retry-After present)`, status 0
/// on a transport error (its text in `error`).
pub async fn refresh(
    http: &reqwest::Client,
    token_url: &str,
    client: (&str, &str),
    token: &str,
) -> (u16, Value, bool) {
    let res = http
        .post(token_url)
        .basic_auth(client.0, Some(client.1))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await;
    match res {
        Err(e) => (0, serde_json::json!({ "error": e.to_string() }), false),
        Ok(res) => {
            let status = res.status().as_u16();
            let retry_after = res.headers().contains_key("retry-after");
            let body = res.json::<Value>().await.unwrap_or(Value::Null);
            (status, body, retry_after)
        }
    }
}

impl Load {
    /// Starts one chain per token, each refreshing every `period`, plus `forward_rate`
    /// forwarded GETs a second to `forward_url` and a `/readyz` poll every 50 ms.
    pub fn start(
        token_url: &str,
        client: (&'static str, &'static str),
        tokens: Vec<String>,
        period: Duration,
        forward_url: &str,
        forward_rate: u32,
        readyz_url: &str,
    ) -> Load {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let http = http();
        let n = tokens.len().max(1) as u32;
        let chains = tokens
            .into_iter()
            .enumerate()
            .map(|(i, token)| {
                let (http, stop, url) = (http.clone(), stop.clone(), token_url.to_owned());
                let offset = period * i as u32 / n;
                tokio::spawn(async move {
                    tokio::time::sleep(offset).await;
                    let (family, generation) = family_and_generation(&token);
                    let mut chain = Chain {
                        family,
                        token,
                        generation,
                        violations: Vec::new(),
                    };
                    let mut answers = Vec::new();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::SeqCst) {
                        tick.tick().await;
                        let sent = Instant::now();
                        let (status, body, retry_after) =
                            refresh(&http, &url, client, &chain.token).await;
                        let latency = sent.elapsed();
                        if status == 200 {
                            check_next(&mut chain, &body);
                        }
                        answers.push(Answer {
                            chain: i,
                            at: sent - t0,
                            latency,
                            status,
                            error: body["error"].as_str().unwrap_or_default().to_owned(),
                            retry_after,
                        });
                    }
                    (chain, answers)
                })
            })
            .collect();
        let forwards = {
            let (http, stop, url) = (http.clone(), stop.clone(), forward_url.to_owned());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1) / forward_rate.max(1));
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let sent = Instant::now();
                    let (status, error) = match http.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            (status, String::new())
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    answers.push(Answer {
                        chain: usize::MAX,
                        at: sent - t0,
                        latency: sent.elapsed(),
                        status,
                        error,
                        retry_after: false,
                    });
                }
                answers
            })
        };
        let readyz = {
            let (http, stop, url) = (http, stop.clone(), readyz_url.to_owned());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let status = match http.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    seen.push((t0.elapsed(), status));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            })
        };
        Load {
            t0,
            stop,
            chains,
            forwards,
            readyz,
        }
    }

    /// Time since the load started.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut chains = Vec::new();
        let mut refreshes = Vec::new();
        for task in self.chains {
            let (chain, answers) = task.await.expect("chain task");
            chains.push(chain);
            refreshes.extend(answers);
        }
        refreshes.sort_by_key(|a| a.at);
        Report {
            chains,
            refreshes,
            forwards: self.forwards.await.expect("forward task"),
            readyz: self.readyz.await.expect("readyz task"),
        }
    }
}

/// A 200's refresh token must continue the chain: same family, next generation.
fn check_next(chain: &mut Chain, body: &Value) {
    let Some(next) = body["refresh_token"].as_str() else {
        chain
            .violations
            .push("a 200 without a refresh_token".to_owned());
        return;
    };
    let (family, generation) = family_and_generation(next);
    if family != chain.family {
        chain
            .violations
            .push(format!("family {family} instead of {}", chain.family));
    } else if generation != chain.generation + 1 {
        chain.violations.push(format!(
            "generation {generation} after {}",
            chain.generation
        ));
    }
    chain.token = next.to_owned();
    chain.generation = generation;
}

impl Report {
    /// Every refresh answered 200, or 503 `temporarily_unavailable` with Retry-After; every
    /// forwarded request 200; no chain broke its rules. Panics with the first offenders.
    pub fn assert_nothing_but_outage(&self) {
        let bad: Vec<&Answer> = self
            .refreshes
            .iter()
            .filter(|a| {
                a.status != 200
                    && !(a.status == 503 && a.error == "temporarily_unavailable" && a.retry_after)
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{} refreshes answered neither 200 nor 503 temporarily_unavailable: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        let bad: Vec<&Answer> = self.forwards.iter().filter(|a| a.status != 200).collect();
        assert!(
            bad.is_empty(),
            "{} of {} forwarded requests failed: {:?}",
            bad.len(),
            self.forwards.len(),
            &bad[..bad.len().min(5)]
        );
        for c in &self.chains {
            assert!(
                c.violations.is_empty(),
                "family {} forked or skipped: {:?}",
                c.family,
                c.violations
            );
        }
    }

    pub fn count(&self, status: u16) -> usize {
        self.refreshes.iter().filter(|a| a.status == status).count()
    }

    pub fn max_latency(&self) -> Duration {
        self.refreshes
            .iter()
            .map(|a| a.latency)
            .max()
            .unwrap_or_default()
    }

    /// From `t` until every chain has had a 200 that completed after `t`.
    pub fn recovery_after(&self, t: Duration) -> Duration {
        (0..self.chains.len())
            .map(|chain| {
                self.refreshes
                    .iter()
                    .filter(|a| a.chain == chain && a.status == 200 && a.done() >= t)
                    .map(|a| a.done())
                    .min()
                    .unwrap_or_else(|| panic!("chain {chain} never recovered"))
                    .saturating_sub(t)
            })
            .max()
            .unwrap_or_default()
    }

    /// Whether `/readyz` answered `status` at some poll between `from` and `to`.
    pub fn readyz_was(&self, status: u16, from: Duration, to: Duration) -> bool {
        self.readyz
            .iter()
            .any(|(at, s)| *s == status && *at >= from && *at <= to)
    }

    /// A one-line summary for the test log.
    pub fn summary(&self) -> String {
        format!(
            "{} refreshes ({} × 200, {} × 503), {} forwarded ({} × 200), max refresh latency {:?}",
            self.refreshes.len(),
            self.count(200),
            self.count(503),
            self.forwards.len(),
            self.forwards.iter().filter(|a| a.status == 200).count(),
            self.max_latency(),
        )
    }
}
