//! refresh-proxy: a reverse proxy and `tower::Layer` in front of an OAuth 2.0 / OpenID Connect
//! server that forwards everything to it except the requests it owns.
//!
//! # Public API
//!
//! What a library user needs is public, and nothing else:
//!
//! - [`layer`]: [`RefreshGrantLayer`], its builder ([`layer::RefreshGrantLayerBuilder`]), the
//!   service it makes ([`RefreshGrant`]), the body types it takes and gives
//!   ([`layer::RequestBody`], [`layer::ResponseBody`]) and the endpoint paths it is given
//!   ([`layer::Endpoints`]).
//! - [`engine`]: the grant [`engine::Engine`] the layer answers refresh grants and captures
//!   with, built from config: [`engine::Engine::new`] over a store and the keys of
//!   [`app::build_keys`].
//! - [`store`]: the [`store::TokenStore`] trait, its two implementations
//!   ([`store::MemoryStore`], [`store::RedisStore`]), [`store::AnyStore`] that picks one from
//!   `store.url`, and the types the trait's methods name.
//! - [`config`]: the configuration the engine, the stores and the app are built from.
//! - [`app`] and [`admin_client`]: what the binaries use (`src/main.rs` is a crate of its own
//!   that uses the library by its name): the whole proxy built from a config and run, and the
//!   admin API's client (with its [`admin_client::Endpoint`]).
//!
//! Every other module is `pub(crate)`, so it can change without breaking a user. The crate's
//! own integration tests (`tests/it/`), fuzz targets (`fuzz/`) and doc tests reach the internal
//! modules they exercise through `refresh_proxy::internal` (hidden from the docs): not API, with
//! no stability promise. They use the public path where there is one.
//!
//! # Layout
//!
//! Data flows one way: request → [`layer`] → `classify` → `client_auth` →
//! [`engine`] (`grant`'s rules, then one [`store`] operation) → `mint` → response;
//! everything the layer does not own goes to `proxy` and on to the upstream, and a handled
//! client's token answer comes back through `grant::capture`. Imports follow the layers
//! below, lowest first, and never go up.
//!
//! - `access_log`: the request id and one log line per request (never a query or a header).
//! - [`config`]: the TOML schema, env overrides, `*_file` secrets, validation, the store URL
//!   (`config::store_url`) and the limits it validates against.
//! - [`layer`]: [`RefreshGrantLayer`] / [`RefreshGrant`], the middleware (it re-exports the
//!   `body` types); `layer::capture` holds capture's I/O (introspection, the upstream's JWTs
//!   verified), `layer::jwks` the upstream's cached JWKS and the merge of the proxy's keys.
//! - `body`: the request and response body types the layer and the forwarding client share.
//! - `conn`: `conn::ClientInfo` (what the server knows about a connection) and
//!   `conn::BoxError`.
//! - `classify`: which endpoint a request is for; strict form parsing. Pure.
//! - `client_auth`: Basic / post / public client authentication, constant-time digests. Pure.
//! - `grant`: scopes, the refresh rules and capture (pure), the verification of the
//!   upstream's JWTs at capture against a given key set and clock (`grant::verify`, pure).
//! - [`engine`]: runs the rules over the store: refresh, revocation, introspection, admin
//!   issue, capture's new families.
//! - `mint`: refresh-token format, opaque access tokens, the claims of minted tokens, JWT
//!   signing and the JWKS.
//! - `oauth`: wire types (token, error and introspection answers) and their JSON. Pure.
//! - `error`: the crate's `error::Error` and the one mapping of every error to a response
//!   (`error::error_response`); the forwarding client gets its 502/504 answers from it as a
//!   function pointer (`error::gateway_answer`), so it needs neither this module nor the
//!   engine.
//! - `proxy`: the forwarding service, header hygiene, the upstream connection pool
//!   (`proxy::pool`: an `http://` upstream's connections, driven by the requests that use them).
//! - `discovery`: the upstream's endpoint paths from its OIDC discovery document and RFC 8414
//!   metadata, and the checks of what they gave (an unknown revocation endpoint stops the proxy).
//! - [`store`]: the `TokenStore` trait, `memory://` and `redis://` (Lua), one contract suite.
//! - `server`: listeners (HTTP/1.1, h2c, TLS with ALPN), graceful shutdown, and the
//!   acceptor that hands each connection to a worker thread.
//! - `upstream_revocation`: family ends told to the upstream: the kept upstream refresh
//!   token revoked at its revocation endpoint, queued, retried, counted.
//! - `logout_relay`: accepted back-channel logout tokens passed on to the clients' own
//!   endpoints.
//! - `metrics`: counters and the refresh latency histogram, Prometheus text.
//! - `admin`: the admin listener: `/healthz`, `/readyz`, `/jwks`, `/metrics`, and the admin
//!   API (revoke families; issue families for load tests), each endpoint behind its own bearer
//!   token; HTTPS with `server.admin_tls_*`.
//! - [`admin_client`]: the HTTP client of the admin API, behind the `issue` and `admin revoke`
//!   subcommands (the command line itself is `main.rs`).
//! - [`app`]: builds all of the above from a [`config::Config`] and runs it: one
//!   single-threaded runtime per worker thread (`server.workers`), each with its own upstream
//!   pool and Redis connection, so a request never leaves its thread.
//! - `tls`: rustls set-up on aws-lc-rs, the crate's one crypto backend.
//! - `net`: IP networks from config (`server.trusted_proxies`). Pure.
//! - `client_cert`: the client certificate a connection or a trusted front proxy gave, the
//!   anchors of `tls_client_auth` chains, and certificate subjects. Pure.
//! - `timing`: the phases of a refresh for `server.server_timing` (`Server-Timing`). Pure.
//! - [`otel`]: the proxy's OpenTelemetry spans and the W3C trace context it continues and
//!   passes upstream; off (no span, no header touched) unless the exporter turns it on.
//! - [`otel_export`]: the OTLP exporter from the `OTEL_*` environment (what `main.rs` sets up
//!   beside the log output).
//!
//! # Layers
//!
//! A module uses only modules of lower layers (and its own submodules); `tests/it/layering.rs`
//! checks this list against every `use crate::…` and `crate::…` path under `src/`.
//!
//! <!-- layers -->
//! 1. `net`, `conn`, `body`, `client_cert`, `timing`, [`otel`]
//! 2. `config`
//! 3. `tls`, `classify`, `oauth`
//! 4. `metrics`, `mint`
//! 5. `grant`
//! 6. `client_auth`
//! 7. `store`
//! 8. `engine`
//! 9. `proxy`
//! 10. `error`
//! 11. `layer`
//! 12. `discovery`, `server`, `access_log`, `upstream_revocation`, `logout_relay`
//! 13. `admin`
//! 14. `app`, `admin_client`, [`otel_export`]
//! <!-- /layers -->
//!
//! `main.rs` is a thin CLI: parse arguments, load config, bind, [`app::App::run`].

pub(crate) mod access_log;
pub(crate) mod admin;
pub mod admin_client;
pub mod app;
pub(crate) mod body;
pub(crate) mod classify;
pub(crate) mod client_auth;
pub(crate) mod client_cert;
pub mod config;
pub(crate) mod conn;
pub(crate) mod discovery;
pub mod engine;
pub(crate) mod error;
pub(crate) mod grant;
pub mod layer;
pub(crate) mod logout_relay;
pub(crate) mod metrics;
pub(crate) mod mint;
pub(crate) mod net;
pub(crate) mod oauth;
pub mod otel;
pub mod otel_export;
pub(crate) mod proxy;
pub(crate) mod server;
pub mod store;
pub(crate) mod timing;
pub(crate) mod tls;
pub(crate) mod upstream_revocation;

pub use layer::{RefreshGrant, RefreshGrantLayer};

/// Not API: for this crate's tests, fuzz targets and benchmarks; no stability promise.
///
/// The internal modules that `tests/it/`, `fuzz/fuzz_targets/` and the doc tests exercise
/// directly, re-exported as they are. A module is here only when one of them needs it, so that
/// what the crate itself no longer uses still shows up as dead code.
#[doc(hidden)]
pub mod internal {
    pub mod classify {
        pub use crate::classify::*;
    }
    pub mod client_auth {
        pub use crate::client_auth::*;
    }
    pub mod client_cert {
        pub use crate::client_cert::*;
    }
    pub mod discovery {
        pub use crate::discovery::*;
    }
    pub mod grant {
        pub use crate::grant::*;
    }
    pub mod mint {
        pub use crate::mint::*;
    }
    pub mod timing {
        pub use crate::timing::*;
    }
    /// The Redis store's reading of the redeem script's answer.
    pub mod store_redis {
        pub use crate::store::redis::{msgpack, parse_redemption};
    }
}
