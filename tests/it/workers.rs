//! Worker threads (`server.workers`): each connection is served by one of several threads, each
//! with its own Redis connection and upstream pool, over one set of families.
//!
//! In-process, in front of an echo upstream (`discovery = false`, token path `/token`), on
//! `memory://` (one store shared by every worker) and on a private redis-server.

use std::collections::HashSet;

use crate::support::StoreKind as Kind;
use crate::support::echo::EchoServer;
use crate::support::idp;
use crate::support::proxy::TestProxy;
use crate::support::redis::RedisServer;

const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
const SECRET: &str = "Secr3t!";
const WORKERS: usize = 4;

struct Stack {
    proxy: TestProxy,
    _redis: Option<RedisServer>,
    echo: EchoServer,
}

impl Stack {
    async fn start(kind: Kind) -> Stack {
        let echo = EchoServer::start_recording().await;
        let (redis, store) = kind.start();
        let text = format!(
            "[server]\nworkers = {WORKERS}\n\
             [store]\nurl = \"{store}\"\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [admin]\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
             [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation = \"absent\"\n",
            key = crate::support::TEST_REFRESH_KEY,
            up = echo.url(),
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        Stack {
            proxy,
            _redis: redis,
            echo,
        }
    }

    /// Families opened through the admin API, which runs on the main thread's store handle.
    async fn issue(&self, count: u64) -> Vec<String> {
        crate::support::proxy::issue(
            &self.proxy.admin_url,
            ISSUE_TOKEN,
            serde_json::json!({"client_id": "www", "subject": "alice", "count": count}),
        )
        .await
    }

    /// One refresh on a new connection (so the acceptor places it anew); the next token.
    async fn refresh(&self, rt: &str) -> String {
        let (status, body) = idp::refresh(&self.proxy.url, "www", SECRET, rt, None).await;
        assert_eq!(status, 200, "{body}");
        body["refresh_token"].as_str().expect("rotated").to_owned()
    }
}

/// A chain refreshed in turn on connections served by different workers goes on, and reuse of a
/// rotated-out token is detected whichever worker saw the rotation: every worker works on the
/// same families.
///
/// That the connections are on different workers is shown, not assumed: the acceptor hands a
/// new connection to the worker with the fewest open ones, so `WORKERS` connections held open
/// at once land on `WORKERS` workers, and each worker has its own upstream pool, so one GET
/// forwarded on each reaches the upstream on `WORKERS` distinct connections (one worker would
/// have reused one: with `workers = 1` this test fails with 1 upstream connection, not 4).
async fn a_chain_goes_on_whichever_worker_serves_it(kind: Kind) {
    let s = Stack::start(kind).await;
    let clients: Vec<reqwest::Client> = (0..WORKERS)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client")
        })
        .collect();
    for (i, client) in clients.iter().enumerate() {
        let res = client
            .get(format!("{}/resource/{i}", s.proxy.url))
            .send()
            .await
            .expect("forwarded");
        assert_eq!(res.status(), 200);
        res.bytes().await.expect("body");
    }
    assert_eq!(
        s.echo.recorded().connections,
        WORKERS,
        "one upstream connection per worker: the {WORKERS} client connections are on {WORKERS} workers"
    );

    let first = s.issue(1).await.remove(0);
    let mut rt = first.clone();
    let mut seen = HashSet::new();
    for round in 0..3 * WORKERS {
        let client = &clients[round % WORKERS];
        let res = client
            .post(format!("{}/token", s.proxy.url))
            .basic_auth("www", Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
            .send()
            .await
            .expect("refresh");
        assert_eq!(res.status(), 200, "round {round}");
        let body: serde_json::Value = res.json().await.expect("json");
        rt = body["refresh_token"].as_str().expect("rotated").to_owned();
        assert!(seen.insert(rt.clone()), "every rotation is a new token");
    }
    assert_eq!(
        s.echo.recorded().connections,
        WORKERS,
        "the refreshes were answered by the proxy, on the same connections"
    );
    // The first token is long rotated out: presenting it is reuse.
    let (status, body) = idp::refresh(&s.proxy.url, "www", SECRET, &first, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Reuse revoked the family for every worker.
    let (status, _) = idp::refresh(&s.proxy.url, "www", SECRET, &rt, None).await;
    assert_eq!(status, 400);
}

/// Many connections at once, spread over the workers: every request is answered, refreshes
/// and forwarded requests alike.
async fn concurrent_connections_are_all_served(kind: Kind) {
    let s = &Stack::start(kind).await;
    let tokens = s.issue(4 * WORKERS as u64).await;
    let refreshes = tokens.iter().map(|t| async move {
        let mut rt = t.clone();
        for _ in 0..3 {
            rt = s.refresh(&rt).await;
        }
    });
    let forwards = (0..4 * WORKERS).map(|i| {
        let url = format!("{}/resource/{i}", s.proxy.url);
        async move {
            let res = reqwest::get(&url).await.expect("forwarded");
            assert_eq!(res.status(), 200);
        }
    });
    futures_util::future::join(
        futures_util::future::join_all(refreshes),
        futures_util::future::join_all(forwards),
    )
    .await;
}

both_stores!(
    multi_thread: a_chain_goes_on_whichever_worker_serves_it,
    concurrent_connections_are_all_served,
);
