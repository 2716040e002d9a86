//! Redis faults under a steady load (docs/design.md §6): a fault costs the refresh path availability
//! for the outage only, never a token family.
//!
//! Each test runs the real binary in front of an echo upstream, issues 50 families through the
//! admin API, and drives 50 refresh chains at 200 refreshes a second in all plus 50 forwarded
//! requests a second while Redis is killed, failed over or loses an answer. Then it checks
//! that every refresh got 200 or 503 `temporarily_unavailable`, no request was held past the
//! configured operation timeout, forwarding never failed, `/readyz` said 503 during the outage
//! and 200 after, the proxy recovered by itself within 2 s, and every chain goes on from its
//! last good token: no family lost, forked or rotated twice.

use std::time::{Duration, Instant};

use crate::support::echo::EchoServer;
use crate::support::load::{Load, Report, family_and_generation};
use crate::support::proxy::ProxyProcess;
use crate::support::redis::RedisServer;
use refresh_proxy::config::StoreConfig;
use refresh_proxy::store::{RedisStore, TokenStore};

const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
const CLIENT: (&str, &str) = ("www", "Secr3t!");
const CHAINS: usize = 50;
/// Each chain refreshes every 250 ms: 200 refreshes a second in all.
const PERIOD: Duration = Duration::from_millis(250);
/// `store.operation_timeout` of these tests.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to it before a request counts as held too long.
const SLACK: Duration = Duration::from_millis(750);
const RECOVERY: Duration = Duration::from_secs(2);

/// The proxy on `store_url` (with `store_extra` lines in `[store]`), its echo upstream.
struct Stack {
    proxy: ProxyProcess,
    _echo: EchoServer,
    store_config: String,
}

impl Stack {
    async fn start(store_url: &str, store_extra: &str) -> Stack {
        let echo = EchoServer::start().await;
        let store_config = format!(
            "url = \"{store_url}\"\n\
             connect_timeout = 0.5\nresponse_timeout = 0.5\noperation_timeout = {}\n{store_extra}",
            OPERATION_TIMEOUT.as_secs_f64()
        );
        let config = format!(
            "[store]\n{store_config}\
             [tokens]\nrefresh_token_key = \"{key}\"\nreuse_grace_period = 60\n\
             [admin]\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [log]\nlevel = \"warn\"\n\
             [clients.www]\nsecret = \"{secret}\"\nallow_admin_issue = true\n\
             [upstream]\nurl = \"{upstream}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation = \"absent\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            secret = CLIENT.1,
            upstream = echo.url(),
        );
        let proxy = ProxyProcess::spawn(&config);
        proxy.wait_ready().await;
        Stack {
            proxy,
            _echo: echo,
            store_config,
        }
    }

    /// Opens families through the admin API; their first refresh tokens.
    async fn issue(&self, count: usize) -> Vec<String> {
        crate::support::proxy::issue(
            &self.proxy.admin_url,
            ISSUE_TOKEN,
            serde_json::json!({
                "client_id": CLIENT.0, "subject": "load", "scope": "read", "count": count,
            }),
        )
        .await
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.proxy.url)
    }

    fn load(&self, tokens: Vec<String>) -> Load {
        Load::start(
            &self.token_url(),
            CLIENT,
            tokens,
            PERIOD,
            &format!("{}/resource?x=1", self.proxy.url),
            50,
            &format!("{}/readyz", self.proxy.admin_url),
        )
    }

    /// The store the proxy uses, opened by the test to look at the families.
    fn store(&self) -> RedisStore {
        let config: StoreConfig = toml::from_str(&self.store_config).expect("store config");
        RedisStore::open(&config).expect("open store")
    }

    /// Every chain refreshes once more and gets the next generation.
    async fn every_chain_goes_on(&self, report: &mut Report) {
        let http = crate::support::load::http();
        for chain in &mut report.chains {
            let (status, body, _) =
                crate::support::load::refresh(&http, &self.token_url(), CLIENT, &chain.token).await;
            assert_eq!(status, 200, "family {}: {body}", chain.family);
            let next = body["refresh_token"].as_str().expect("refresh_token");
            let (family, generation) = family_and_generation(next);
            assert_eq!(
                (family.as_str(), generation),
                (chain.family.as_str(), chain.generation + 1)
            );
            chain.token = next.to_owned();
            chain.generation = generation;
        }
    }

    /// The store holds each family at exactly the chain's generation: nothing rotated twice,
    /// nothing lost (meant for a store that kept every acknowledged write).
    async fn store_matches_every_chain(&self, report: &Report) {
        let store = self.store();
        let now = now_ms();
        for c in &report.chains {
            let live = store
                .refresh_token_info(&c.family, c.generation, now)
                .await
                .expect("info");
            assert!(live.is_some(), "family {} is gone", c.family);
        }
        assert_eq!(
            self.families_behind(report).await,
            0,
            "families not at their chain's generation"
        );
    }

    /// How many families the store holds at an older generation than their chain (rotations a
    /// failover lost with asynchronous replication; their chains go on regardless).
    async fn families_behind(&self, report: &Report) -> usize {
        let store = self.store();
        let now = now_ms();
        let mut behind = 0;
        for c in &report.chains {
            let older = store
                .refresh_token_info(&c.family, c.generation - 1, now)
                .await
                .expect("info");
            behind += usize::from(older.is_some());
        }
        behind
    }

    /// After a failover: reports the families it left behind their chain, then checks that
    /// every chain goes on and the store matches every chain.
    async fn after_failover(&self, report: &mut Report) {
        eprintln!(
            "{} families behind their chain after the failover",
            self.families_behind(report).await
        );
        self.every_chain_goes_on(report).await;
        self.store_matches_every_chain(report).await;
    }

    /// Runs the load on `tokens` for 3 s, then `fault` (blocking: it kills servers and waits
    /// for failovers, on a thread of its own while the load goes on), then 4 s more. Returns
    /// the report, when the fault began and when the store was back (times since the load
    /// started), and what `fault` returned.
    async fn under_fault<T>(
        &self,
        tokens: Vec<String>,
        fault: impl FnOnce() -> T,
    ) -> (Report, Duration, Duration, T) {
        let load = self.load(tokens);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let down = load.now();
        let value = tokio::task::block_in_place(fault);
        let back = load.now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        (load.stop().await, down, back, value)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// The common checks after a fault from `down` to `back` (times since the load started).
fn assert_outage_only(report: &Report, down: Duration, back: Duration) {
    assert_outage(report, down, back, true);
}

/// The checks after a fault, with or without `/readyz` having to say 503 during it (a
/// partial outage, one cluster master of three, keeps the proxy in rotation).
fn assert_outage(report: &Report, down: Duration, back: Duration, readyz_503: bool) {
    eprintln!(
        "outage {:?}: {}; recovered {:?} after the store was back",
        back - down,
        report.summary(),
        report.recovery_after(back),
    );
    report.assert_nothing_but_outage();
    let outside: Vec<_> = report
        .refreshes
        .iter()
        .filter(|a| a.status != 200 && (a.done() < down || a.at > back + RECOVERY))
        .collect();
    assert!(
        outside.is_empty(),
        "refreshes failed outside the outage: {:?}",
        &outside[..outside.len().min(5)]
    );
    assert!(
        report.max_latency() <= OPERATION_TIMEOUT + SLACK,
        "a refresh was held {:?} (operation_timeout {OPERATION_TIMEOUT:?})",
        report.max_latency()
    );
    assert!(
        report.count(503) > 0,
        "the outage was seen by the refresh path"
    );
    assert!(
        !readyz_503 || report.readyz_was(503, down, back),
        "/readyz said 503 during the outage: {:?}",
        report.readyz
    );
    let recovery = report.recovery_after(back);
    assert!(
        recovery <= RECOVERY,
        "recovered only {recovery:?} after the store was back"
    );
    let end = report.readyz.last().map(|(at, _)| *at).unwrap_or_default();
    assert!(
        report.readyz_was(200, back, end),
        "/readyz back to 200 after the outage"
    );
}

/// Kill Redis (SIGKILL, AOF on) under load for 3 s, start it again on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_under_load_costs_availability_only() {
    let mut redis = RedisServer::start();
    let stack = Stack::start(&redis.url(), "").await;
    let tokens = stack.issue(CHAINS).await;
    let (mut report, down, back, ()) = stack
        .under_fault(tokens, || {
            redis.kill();
            std::thread::sleep(Duration::from_secs(3));
            redis.restart();
        })
        .await;
    assert_outage_only(&report, down, back);
    stack.store_matches_every_chain(&report).await;
    stack.every_chain_goes_on(&mut report).await;
    stack.store_matches_every_chain(&report).await;
}

/// The script ran, its answer never came back: the client's retry gets the same new token,
/// and the family is rotated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_script_answer_is_retried_to_the_same_token() {
    let redis = RedisServer::start();
    let relay = crate::support::relay::Relay::start(redis.port).await;
    let stack = Stack::start(&relay.url(), "").await;
    let store = stack.store();
    let key = refresh_proxy::internal::mint::refresh::RefreshTokenKey::from_secret(
        crate::support::TEST_REFRESH_KEY.as_bytes(),
    );
    let http = crate::support::load::http();
    // Once, so the script is in Redis's cache and the next EVALSHA runs it.
    let warm = stack.issue(1).await.remove(0);
    let (status, _, _) =
        crate::support::load::refresh(&http, &stack.token_url(), CLIENT, &warm).await;
    assert_eq!(status, 200);
    for round in 0..5 {
        let token = stack.issue(1).await.remove(0);
        let (family, _) = family_and_generation(&token);
        let expected = key.successor(&key.parse(&token).expect("ours")).0;

        relay.lose_next_answer(b"EVALSHA");
        let started = Instant::now();
        let (status, body, retry_after) =
            crate::support::load::refresh(&http, &stack.token_url(), CLIENT, &token).await;
        assert_eq!(
            (status, body["error"].as_str(), retry_after),
            (503, Some("temporarily_unavailable"), true),
            "round {round}: {body}"
        );
        assert!(started.elapsed() <= OPERATION_TIMEOUT + SLACK);
        assert_eq!(relay.lost(), round + 1, "the answer was lost");
        // The script did run: the family is at generation 1 already.
        let now = now_ms();
        assert!(
            store
                .refresh_token_info(&family, 1, now)
                .await
                .expect("info")
                .is_some()
        );
        assert!(
            store
                .refresh_token_info(&family, 0, now)
                .await
                .expect("info")
                .is_none()
        );

        let (status, body, _) =
            crate::support::load::refresh(&http, &stack.token_url(), CLIENT, &token).await;
        assert_eq!(status, 200, "round {round}: the retry {body}");
        assert_eq!(
            body["refresh_token"].as_str(),
            Some(expected.as_str()),
            "the token the lost answer carried"
        );
        // Rotated once, not twice, and the family goes on.
        assert!(
            store
                .refresh_token_info(&family, 0, now_ms())
                .await
                .expect("info")
                .is_none()
        );
        assert!(
            store
                .refresh_token_info(&family, 1, now_ms())
                .await
                .expect("info")
                .is_some()
        );
        let (status, body, _) =
            crate::support::load::refresh(&http, &stack.token_url(), CLIENT, &expected).await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
}

/// Kill the master a Sentinel set watches under load; the proxy follows the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_loses_no_family() {
    use crate::support::topology::{Options, Sentinel};
    let mut topology = Sentinel::start(Options::default());
    let stack = Stack::start(&topology.url(), "").await;
    let tokens = stack.issue(CHAINS).await;
    let (mut report, down, back, (old, new)) = stack
        .under_fault(tokens, || {
            let old = topology.kill_master();
            (old, topology.wait_failover(old, Duration::from_secs(20)))
        })
        .await;
    eprintln!("master {old} killed, {new} promoted");
    assert_outage_only(&report, down, back);
    stack.after_failover(&mut report).await;
}

/// Kill a cluster master under load; its replica is promoted and the proxy follows the new
/// slot map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_under_load_loses_no_family() {
    use crate::support::topology::{Cluster, Options, slot_of};
    let mut topology = Cluster::start(Options::default());
    let stack = Stack::start(&topology.url(), "").await;
    let tokens = stack.issue(CHAINS).await;
    let victim_slot = slot_of(&format!("{{{}}}", family_and_generation(&tokens[0]).0));
    let victim = topology.master_of_slot(victim_slot);
    let on_victim: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            let family = family_and_generation(t).0;
            topology.master_of_slot(slot_of(&format!("{{{family}}}"))) == victim
        })
        .map(|(i, _)| i)
        .collect();
    let (mut report, down, back, killed) = stack
        .under_fault(tokens, || {
            let killed = topology.kill_master_of_slot(victim_slot);
            topology.wait_healthy(Duration::from_secs(20));
            killed
        })
        .await;
    assert_eq!(killed, victim);
    eprintln!("master {victim} killed; {} chains on it", on_victim.len());
    assert_outage(&report, down, back, false);
    // With cluster-require-full-coverage (the default) the whole cluster answers CLUSTERDOWN
    // from the moment the master is marked failed until its replica is promoted, so chains on
    // the other masters see that window too; never anything outside the outage.
    let elsewhere = report
        .refreshes
        .iter()
        .filter(|a| a.status != 200 && !on_victim.contains(&a.chain))
        .count();
    eprintln!("{elsewhere} answers 503 to chains on the other masters");
    stack.after_failover(&mut report).await;
}

/// `/readyz` in cluster mode: 200 while every master answers (a failed-over master's replica
/// included), 503 when the cluster is gone, 200 again when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_whole_cluster() {
    use crate::support::proxy::wait_for_status;
    use crate::support::topology::{Cluster, Options};
    let mut topology = Cluster::start(Options::default());
    let stack = Stack::start(&topology.url(), "").await;
    let readyz = format!("{}/readyz", stack.proxy.admin_url);
    let token = stack.issue(1).await.remove(0);
    let nodes = topology.ports();
    for port in &nodes {
        topology.kill_node(*port);
    }
    wait_for_status(&readyz, 503, Duration::from_secs(5)).await;
    let (status, body, _) = crate::support::load::refresh(
        &crate::support::load::http(),
        &stack.token_url(),
        CLIENT,
        &token,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    for port in &nodes {
        topology.restart_node(*port);
    }
    wait_for_status(&readyz, 200, Duration::from_secs(15)).await;
    let (status, body, _) = crate::support::load::refresh(
        &crate::support::load::http(),
        &stack.token_url(),
        CLIENT,
        &token,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
