//! The test rig every integration test shares: real processes and real sockets.
//!
//! - [`redis`]: a private `redis-server` per test on a free port, which can be stopped and
//!   restarted to inject faults.
//! - [`topology`]: Redis Cluster, Sentinel and TLS / ACL servers on free ports, with failover
//!   faults (kill a master, wait for its replica to take over).
//! - [`idp`]: a real OpenID Connect provider (npm `oidc-provider`, pinned in tests/idp).
//! - [`idp_py`]: a second real one of another family (PyPI `django-oauth-toolkit`, pinned in
//!   tests/idp-py), whose revocation and introspection endpoints are only in RFC 8414 metadata.
//! - [`echo`]: a plain upstream that reports what reached it, for transparency tests.
//! - [`echo_stack`]: the proxy in front of a recording echo upstream, admin API on.
//! - [`fake_idp`]: a programmable upstream IdP (token answer, JWKS, introspection set by the
//!   test) and signing keys for its tokens, for capture tests.
//! - [`proxy`]: the proxy itself, in-process or as the real binary.
//! - [`jose`]: an independent JOSE implementation (Node's `jose`) to verify minted JWTs.
//! - [`assertion`]: client assertions made by Node's `jose` (private_key_jwt, client_secret_jwt).
//! - [`load`]: steady refresh chains and forwarded traffic for fault tests.
//! - [`raw`]: HTTP/1.1 requests written byte for byte on a raw socket.
//! - [`relay`]: a TCP relay to Redis that can lose an answer after Redis ran the request.
//! - [`h2raw`]: a raw HTTP/2 client writing exact frames (stream floods, rapid reset, bad
//!   header blocks).
//! - [`ports`]: ports for servers the tests start, outside the ephemeral range and reserved
//!   across test processes.
#![allow(dead_code)]

pub mod assertion;
pub mod echo;
pub mod echo_stack;
pub mod fake_idp;
pub mod h2raw;
pub mod idp;
pub mod idp_py;
pub mod jose;
pub mod load;
pub mod ports;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod relay;
pub mod topology;

/// Which token store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

/// Runs each `async fn case(kind: StoreKind)` on both stores: generates `mod memory` and
/// `mod redis` with one test each (`multi_thread:` first for a 2-worker runtime).
#[macro_export]
macro_rules! both_stores {
    (multi_thread: $($case:ident),* $(,)?) => {
        $crate::both_stores!(@gen (flavor = "multi_thread", worker_threads = 2); $($case),*);
    };
    ($($case:ident),* $(,)?) => {
        $crate::both_stores!(@gen (); $($case),*);
    };
    (@gen $flavor:tt; $($case:ident),*) => {
        mod memory {
            $(
                #[tokio::test $flavor]
                async fn $case() {
                    super::$case($crate::support::StoreKind::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test $flavor]
                async fn $case() {
                    super::$case($crate::support::StoreKind::Redis).await;
                }
            )*
        }
    };
}

impl StoreKind {
    /// A store of this kind for one test: the Redis server it started (if any) and the
    /// `store.url` to configure.
    pub fn start(self) -> (Option<redis::RedisServer>, String) {
        let server = matches!(self, StoreKind::Redis).then(redis::RedisServer::start);
        let url = server
            .as_ref()
            .map_or("memory://".to_owned(), redis::RedisServer::url);
        (server, url)
    }
}

/// A `tokens.refresh_token_key` for tests (at least 32 bytes).
pub const TEST_REFRESH_KEY: &str = "test-refresh-token-key-0123456789abcdef";

/// A free port on 127.0.0.1 for a server the test starts, reserved for this test process
/// ([`ports`]).
pub fn free_port() -> u16 {
    ports::take(1)[0]
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "refresh-proxy-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
