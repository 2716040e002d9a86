//! refresh-proxy: a reverse proxy and `tower::Layer` in front of an OAuth 2.0 / OpenID Connect
//! server that forwards everything to it except the requests it owns.
//!
//! # Layout
//!
//! Data flows one way: request → [`layer`] → [`classify`] → [`client_auth`] →
//! [`engine`] ([`grant`]'s rules, then one [`store`] operation) → [`mint`] → response;
//! everything the layer does not own goes to [`proxy`] and on to the upstream, and a handled
//! client's token answer comes back through [`grant::capture`]. Imports follow the layers
//! below, lowest first, and never go up.
//!
//! - [`access_log`]: the request id and one log line per request (never a query or a header).
//! - [`config`]: the TOML schema, env overrides, `*_file` secrets, validation, the store URL
//!   (`config::store_url`) and the limits it validates against.
//! - [`layer`]: [`RefreshGrantLayer`] / [`RefreshGrant`], the middleware (it re-exports the
//!   [`body`] types); `layer::capture` holds capture's I/O (introspection, the upstream's JWTs
//!   verified), `layer::jwks` the upstream's cached JWKS and the merge of the proxy's keys.
//! - [`body`]: the request and response body types the layer and the forwarding client share.
//! - [`conn`]: [`conn::ClientInfo`] (what the server knows about a connection) and
//!   [`conn::BoxError`].
//! - [`classify`]: which endpoint a request is for; strict form parsing. Pure.
//! - [`client_auth`]: Basic / post / public client authentication, constant-time digests. Pure.
//! - [`grant`]: scopes, the refresh rules and capture (pure), the verification of the
//!   upstream's JWTs at capture against a given key set and clock (`grant::verify`, pure).
//! - [`engine`]: runs the rules over the store: refresh, revocation, introspection, admin
//!   issue, capture's new families.
//! - [`mint`]: refresh-token format, opaque access tokens, the claims of minted tokens, JWT
//!   signing and the JWKS.
//! - [`oauth`]: wire types (token, error and introspection answers) and their JSON. Pure.
//! - [`error`]: the crate's [`error::Error`] and the one mapping of every error to a response
//!   ([`error::error_response`]); the forwarding client gets its 502/504 answers from it as a
//!   function pointer ([`error::gateway_answer`]), so it needs neither this module nor the
//!   engine.
//! - [`proxy`]: the forwarding service, header hygiene, the upstream connection pool
//!   (`proxy::pool`: an `http://` upstream's connections, driven by the requests that use them).
//! - [`discovery`]: the upstream's endpoint paths from its OIDC discovery document and RFC 8414
//!   metadata, and the checks of what they gave (an unknown revocation endpoint stops the proxy).
//! - [`store`]: the `TokenStore` trait, `memory://` and `redis://` (Lua), one contract suite.
//! - [`server`]: listeners (HTTP/1.1, h2c, TLS with ALPN), graceful shutdown, and the
//!   acceptor that hands each connection to a worker thread.
//! - [`upstream_revocation`]: family ends told to the upstream: the kept upstream refresh
//!   token revoked at its revocation endpoint, queued, retried, counted.
//! - [`logout_relay`]: accepted back-channel logout tokens passed on to the clients' own
//!   endpoints.
//! - [`metrics`]: counters and the refresh latency histogram, Prometheus text.
//! - [`admin`]: the admin listener: `/healthz`, `/readyz`, `/jwks`, `/metrics`, and the admin
//!   API (revoke families; issue families for load tests), each endpoint behind its own bearer
//!   token; HTTPS with `server.admin_tls_*`.
//! - [`admin_client`]: the HTTP client of the admin API, behind the `issue` and `admin revoke`
//!   subcommands (the command line itself is `main.rs`).
//! - [`app`]: builds all of the above from a [`config::Config`] and runs it: one
//!   single-threaded runtime per worker thread (`server.workers`), each with its own upstream
//!   pool and Redis connection, so a request never leaves its thread.
//! - [`tls`]: rustls set-up on aws-lc-rs, the crate's one crypto backend.
//! - [`net`]: IP networks from config (`server.trusted_proxies`). Pure.
//!
//! # Layers
//!
//! A module uses only modules of lower layers (and its own submodules); `tests/it/layering.rs`
//! checks this list against every `use crate::…` and `crate::…` path under `src/`.
//!
//! <!-- layers -->
//! 1. `net`, `conn`, `body`
//! 2. `config`
//! 3. `tls`, `classify`, `oauth`
//! 4. `metrics`, `client_auth`, `mint`
//! 5. `grant`
//! 6. `store`
//! 7. `engine`
//! 8. `proxy`
//! 9. `error`
//! 10. `layer`
//! 11. `discovery`, `server`, `access_log`, `upstream_revocation`, `logout_relay`
//! 12. `admin`
//! 13. `app`, `admin_client`
//! <!-- /layers -->
//!
//! `main.rs` is a thin CLI: parse arguments, load config, bind, [`app::App::run`].

pub mod access_log;
pub mod admin;
pub mod admin_client;
pub mod app;
pub mod body;
pub mod classify;

pub mod client_auth;
pub mod config;
pub mod conn;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod grant;
pub mod layer;
pub mod logout_relay;
pub mod metrics;
pub mod mint;
pub mod net;
pub mod oauth;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream_revocation;

pub use layer::{RefreshGrant, RefreshGrantLayer};
