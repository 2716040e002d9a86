//! The connections and their schedules.
//!
//! Each connection is one task that owns its HTTP/1.1 connection (it polls hyper's connection
//! driver itself, next to the request, so an exchange costs no cross-task wake-ups), its chain
//! and its statistics; nothing is shared on the request path but the spare tokens. The tasks are
//! spread over single-threaded event loops, one per thread, and every connection is opened
//! before the clock starts.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::chains::ChainPool;
use crate::progress::Counters;
use crate::target::Target;
use crate::timeline::Timeline;

/// What to run.
#[derive(Clone)]
pub struct Plan {
    pub target: Arc<Target>,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Open loop at this many requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    pub timeout: Duration,
    /// Keep per-second data ([`Timeline`]) for `--report`: under 1 KiB per connection and second.
    pub timeline: bool,
    /// Counters for the progress line (only when stderr is a terminal).
    pub progress: Option<Arc<Counters>>,
}

/// Latencies are recorded in microseconds, from 1 µs to a minute, to 3 significant digits.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
const SIGFIG: u8 = 3;
/// Pause after a failed connection attempt, so a dead server is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG).expect("valid histogram bounds")
}

/// One connection's statistics (and, merged, the run's). Everything but `chains_lost` and
/// `reconnects` counts only requests that started in the measured window.
pub struct Stats {
    /// Closed loop: send → end of the answer. Open loop: the same for requests sent on time,
    /// intended send time → end of the answer for requests sent late (the server's queueing).
    pub latency: Histogram<u64>,
    /// Open loop: actual send → end of the answer (closed loop: empty, it is `latency`).
    pub service: Histogram<u64>,
    /// Requests that got an HTTP answer, any status.
    pub answered: u64,
    /// HTTP 200 answers.
    pub ok: u64,
    /// Other answers by `"<status> <OAuth error code>"` (or just the status without one).
    pub non_200: BTreeMap<String, u64>,
    /// Requests without an HTTP answer: `io`, `timeout`, `connect`, `closed`.
    pub transport: BTreeMap<&'static str, u64>,
    /// Open loop: requests sent late because the previous answer came after their send time.
    pub behind: u64,
    /// 200 answers without a `refresh_token` (the chain goes on with the same token).
    pub no_refresh_token: u64,
    /// Chains ended by a 4xx answer (a spare, if any, took over), whole run.
    pub chains_lost: u64,
    /// Connections replaced after an error or a close by the server, whole run.
    pub reconnects: u64,
    /// Connections that stopped early because their chain died and no spare was left.
    pub exhausted: u64,
    /// Per-second data of the measured window (empty unless [`Plan::timeline`]).
    pub timeline: Timeline,
    /// Answers that said where their time went (`Server-Timing`), measured window only.
    pub phases: Vec<crate::phases::Sample>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: histogram(),
            service: histogram(),
            answered: 0,
            ok: 0,
            non_200: BTreeMap::new(),
            transport: BTreeMap::new(),
            behind: 0,
            no_refresh_token: 0,
            chains_lost: 0,
            reconnects: 0,
            exhausted: 0,
            timeline: Timeline::default(),
            phases: Vec::new(),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.latency
            .add(&other.latency)
            .expect("histograms share their bounds");
        self.service
            .add(&other.service)
            .expect("histograms share their bounds");
        self.answered += other.answered;
        self.ok += other.ok;
        for (k, v) in &other.non_200 {
            *self.non_200.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.transport {
            *self.transport.entry(k).or_default() += v;
        }
        self.behind += other.behind;
        self.no_refresh_token += other.no_refresh_token;
        self.chains_lost += other.chains_lost;
        self.reconnects += other.reconnects;
        self.exhausted += other.exhausted;
        self.timeline.merge(&other.timeline);
        self.phases.extend_from_slice(&other.phases);
    }
}

/// The run's result.
pub struct Outcome {
    pub stats: Stats,
    /// The last token of every live chain (refresh mode).
    pub final_tokens: Vec<String>,
    /// Wall time from the start of the clock to the last answer.
    pub elapsed: Duration,
}

/// One keep-alive HTTP/1.1 connection, driven by the task that uses it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    /// The driver finished (the server closed the connection): replace it before the next send.
    done: bool,
}

impl Conn {
    async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, &'static str> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect")?
            .map_err(|_| "connect")?;
        // Requests are small and sent whole: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(|_| "connect")?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "connect")?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            done: false,
        })
    }

    /// Sends `request` and reads the whole answer, polling the connection meanwhile.
    async fn exchange(
        &mut self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(u16, Bytes, Option<[u32; 6]>), &'static str> {
        let Conn {
            sender,
            driver,
            done,
        } = self;
        let answer = async {
            sender.ready().await.map_err(|_| "closed")?;
            let response = sender.send_request(request).await.map_err(|_| "io")?;
            let status = response.status().as_u16();
            let phases = response
                .headers()
                .get("server-timing")
                .and_then(|v| crate::phases::parse(v.as_bytes()));
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| "io")?
                .to_bytes();
            Ok((status, body, phases))
        };
        let mut answer = std::pin::pin!(answer);
        tokio::select! {
            biased;
            result = &mut answer => result,
            _ = driver.as_mut() => {
                // The connection ended; an answer it delivered first is still in the channel.
                *done = true;
                answer.await
            }
        }
    }
}

/// The parts of a token endpoint's JSON answer that matter here.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    refresh_token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

/// `"<status> <error>"` for an error answer; the error code only when it looks like one
/// (RFC 6749 §5.2 codes are short ASCII words), so a strange body cannot blow up the report.
fn error_key(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Answer<'_>>(body)
        .ok()
        .and_then(|a| a.error)
        .filter(|e| {
            !e.is_empty()
                && e.len() <= 48
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    match code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Start-up rendezvous of the threads: every connection is open before the clock starts.
struct Rendezvous {
    connected: Barrier,
    started: Barrier,
    t0: OnceLock<std::time::Instant>,
}

/// Runs the plan on `threads` threads, each a single-threaded event loop that owns every
/// `threads`-th connection (as wrk's threads do): a connection's request, answer and timer never
/// leave their thread, so the generator spends no CPU on cross-thread wake-ups, CPU that the
/// server under test shares on a small machine.
pub fn run(plan: &Plan, threads: usize, pool: Arc<ChainPool>) -> Result<Outcome, String> {
    let meet = Arc::new(Rendezvous {
        connected: Barrier::new(threads + 1),
        started: Barrier::new(threads + 1),
        t0: OnceLock::new(),
    });
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let plan = plan.clone();
        let pool = Arc::clone(&pool);
        let meet = Arc::clone(&meet);
        let handle = std::thread::Builder::new()
            .name(format!("refresh-bench-{t}"))
            .spawn(move || thread_main(t, threads, &plan, pool, &meet))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        handles.push(handle);
    }
    meet.connected.wait();
    // A moment for every task to be spawned before the first scheduled send.
    let t0 = std::time::Instant::now() + Duration::from_millis(5);
    meet.t0.set(t0).expect("the clock is started once");
    meet.started.wait();

    let mut stats = Stats::new();
    let mut final_tokens = Vec::with_capacity(plan.connections);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok((thread_stats, tokens))) => {
                stats.merge(&thread_stats);
                final_tokens.extend(tokens);
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a load thread panicked".to_owned()),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Outcome {
            stats,
            final_tokens,
            elapsed: t0.elapsed(),
        }),
    }
}

/// One thread: opens its connections, meets the others, runs them, merges their statistics.
fn thread_main(
    t: usize,
    threads: usize,
    plan: &Plan,
    pool: Arc<ChainPool>,
    meet: &Rendezvous,
) -> Result<(Stats, Vec<String>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            // Never leave the others waiting at the rendezvous.
            meet.connected.wait();
            meet.started.wait();
            return Err(format!("cannot start the runtime: {e}"));
        }
    };
    runtime.block_on(async {
        let addr = plan.target.addr;
        let mut conns = Vec::new();
        let mut failure = None;
        for i in (t..plan.connections).step_by(threads) {
            match Conn::open(addr, plan.timeout).await {
                Ok(c) => conns.push((i, c)),
                Err(_) => {
                    failure = Some(format!("cannot connect to {addr} ({})", plan.target.url));
                    break;
                }
            }
        }
        // Blocking here is fine: nothing else runs on this thread yet.
        meet.connected.wait();
        meet.started.wait();
        if let Some(e) = failure {
            return Err(e);
        }
        let t0 = Instant::from_std(*meet.t0.get().expect("the clock was started"));
        let mut tasks = JoinSet::new();
        for (i, conn) in conns {
            tasks.spawn(connection(i, plan.clone(), Arc::clone(&pool), conn, t0));
        }
        let mut stats = Stats::new();
        let mut tokens = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (conn_stats, token) = done.map_err(|e| format!("a connection task failed: {e}"))?;
            stats.merge(&conn_stats);
            tokens.extend(token);
        }
        Ok((stats, tokens))
    })
}

/// One connection's loop. Returns its statistics and its chain's last token.
async fn connection(
    i: usize,
    plan: Plan,
    pool: Arc<ChainPool>,
    conn: Conn,
    t0: Instant,
) -> (Stats, Option<String>) {
    let mut stats = Stats::new();
    let refresh = plan.target.is_refresh();
    let mut token = pool.first(i);
    let mut conn = Some(conn);
    let warm_end = t0 + plan.warmup;
    let end = warm_end + plan.duration;
    let timeline = plan.timeline;
    // Open loop: connection i sends at t0 + (i + k·N) / R, k = 0, 1, …
    let schedule = plan
        .rate
        .map(|rate| (i as f64 / rate, plan.connections as f64 / rate));
    let mut k: u64 = 0;
    // Closed loop too starts on the common clock, not while other connections are being spawned.
    tokio::time::sleep_until(t0).await;

    loop {
        // `slot`: when this request belongs (its window membership); `start`: where its latency
        // is measured from.
        let (slot, start) = match schedule {
            Some((offset, interval)) => {
                let intended = t0 + Duration::from_secs_f64(offset + k as f64 * interval);
                k += 1;
                if intended >= end {
                    break;
                }
                if Instant::now() < intended {
                    // On time: measure from the actual send, so the timer's lateness (tokio's
                    // 1 ms granularity) is not counted against the server.
                    tokio::time::sleep_until(intended).await;
                    (intended, Instant::now())
                } else {
                    // Behind: the previous answer came after this send time. Measure from the
                    // intended time, so the queueing the server caused is counted (no
                    // coordinated omission).
                    if intended >= warm_end {
                        stats.behind += 1;
                    }
                    (intended, intended)
                }
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                (now, now)
            }
        };
        let counted = slot >= warm_end;

        if conn.as_ref().is_none_or(|c| c.done) {
            match Conn::open(plan.target.addr, plan.timeout).await {
                Ok(c) => {
                    stats.reconnects += 1;
                    conn = Some(c);
                }
                Err(kind) => {
                    if counted {
                        *stats.transport.entry(kind).or_default() += 1;
                        if timeline {
                            stats.timeline.failure(slot - warm_end);
                        }
                        if let Some(p) = &plan.progress {
                            p.failure();
                        }
                    }
                    conn = None;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("a connection was just ensured");

        let request = plan.target.request(&token);
        let sent = Instant::now();
        let result = tokio::time::timeout(plan.timeout, c.exchange(request)).await;
        let finished = Instant::now();
        let (status, body, phases) = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(kind)) => {
                if counted {
                    *stats.transport.entry(kind).or_default() += 1;
                    if timeline {
                        stats.timeline.failure(slot - warm_end);
                    }
                    if let Some(p) = &plan.progress {
                        p.failure();
                    }
                }
                conn = None;
                continue;
            }
            Err(_elapsed) => {
                if counted {
                    *stats.transport.entry("timeout").or_default() += 1;
                    if timeline {
                        stats.timeline.failure(slot - warm_end);
                    }
                    if let Some(p) = &plan.progress {
                        p.failure();
                    }
                }
                conn = None;
                continue;
            }
        };

        if counted {
            stats.answered += 1;
            let latency = micros(finished - start);
            stats.latency.saturating_record(latency);
            if let Some(phases) = phases {
                let clamp = |us: u64| u32::try_from(us).unwrap_or(u32::MAX);
                stats.phases.push(crate::phases::Sample {
                    latency: clamp(latency),
                    service: clamp(micros(finished - sent)),
                    phases,
                });
            }
            if timeline {
                stats
                    .timeline
                    .answer(slot - warm_end, status == 200, latency);
            }
            if let Some(p) = &plan.progress {
                p.answer(status == 200);
            }
            if schedule.is_some() {
                stats.service.saturating_record(micros(finished - sent));
            }
        }
        if status == 200 {
            if counted {
                stats.ok += 1;
            }
            if refresh {
                match serde_json::from_slice::<Answer<'_>>(&body)
                    .ok()
                    .and_then(|a| a.refresh_token)
                {
                    Some(next) => token = next.into_owned(),
                    // A server that does not rotate: the chain goes on with the same token.
                    None => {
                        if counted {
                            stats.no_refresh_token += 1;
                        }
                    }
                }
            }
            continue;
        }
        if counted {
            *stats.non_200.entry(error_key(status, &body)).or_default() += 1;
        }
        // A 4xx (invalid_grant: reused, revoked, expired, unknown) ends the chain; 5xx, 408
        // and 429 are passing troubles, and the same token is presented again.
        if refresh && (400..500).contains(&status) && status != 408 && status != 429 {
            stats.chains_lost += 1;
            match pool.spare() {
                Some(spare) => token = spare,
                None => {
                    stats.exhausted += 1;
                    return (stats, None);
                }
            }
        }
    }
    (stats, refresh.then_some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_keys_carry_the_oauth_code() {
        let body = br#"{"error":"invalid_grant","error_description":"x"}"#;
        assert_eq!(error_key(400, body), "400 invalid_grant");
        assert_eq!(error_key(502, b"<html>bad gateway</html>"), "502");
        assert_eq!(error_key(400, br#"{"error":"has spaces in it"}"#), "400");
    }

    #[test]
    fn refresh_tokens_are_read_from_answers() {
        let body = br#"{"access_token":"a","refresh_token":"f.1.x","expires_in":300}"#;
        let answer: Answer<'_> = serde_json::from_slice(body).expect("json");
        assert_eq!(answer.refresh_token.as_deref(), Some("f.1.x"));
    }
}
