//! refresh-proxy: a reverse proxy and `tower::Layer` in front of an OAuth 2.0 / OpenID Connect
//! server that forwards everything to it except the requests it owns.
//!
//! # Layout
//!
//! Data flows one way: request → [`layer`] → [`classify`] → [`client_auth`] →
//! [`grant`] (rules, then one [`store`] operation) → [`mint`] → response; everything the layer
//! does not own goes to [`proxy`] and on to the upstream, and a handled client's token answer
//! comes back through [`grant::capture`].
//!
//! - [`access_log`]: the request id and one log line per request (never a query or a header).
//! - [`config`]: the TOML schema, env overrides, `*_file` secrets, validation.
//! - [`layer`]: [`RefreshGrantLayer`] / [`RefreshGrant`], the middleware, and its body types;
//!   `layer::upstream` holds capture's I/O (introspection, the upstream's cached JWKS).
//! - [`classify`]: which endpoint a request is for; strict form parsing. Pure.
//! - [`client_auth`]: Basic / post / public client authentication, constant-time digests. Pure.
//! - [`grant`]: scopes, the refresh rules and capture (pure), the verification of the
//!   upstream's JWTs at capture against a given key set and clock (`grant::verify`, pure), and
//!   the engine that runs them over the store.
//! - [`mint`]: refresh-token format, opaque access tokens, JWT signing and the JWKS.
//! - [`oauth`]: wire types and the one mapping from [`error::Error`] to a response.
//! - [`proxy`]: the forwarding service, header hygiene, the upstream connection pool
//!   (`proxy::pool`: an `http://` upstream's connections, driven by the requests that use them).
//! - [`discovery`]: the upstream's endpoint paths from its OIDC discovery document and RFC 8414
//!   metadata, and the checks of what they gave (an unknown revocation endpoint stops the proxy).
//! - [`store`]: the `TokenStore` trait, `memory://` and `redis://` (Lua), one contract suite.
//! - [`server`]: listeners (HTTP/1.1, h2c, TLS with ALPN), graceful shutdown, and the
//!   acceptor that hands each connection to a worker thread.
//! - [`metrics`]: counters and the refresh latency histogram, Prometheus text.
//! - [`admin`]: the admin listener: `/healthz`, `/readyz`, `/jwks`, `/metrics`, and the admin
//!   API (revoke families; issue families for load tests), each endpoint behind its own bearer
//!   token; HTTPS with `server.admin_tls_*`.
//! - [`cli`]: the `issue` and `admin revoke` front ends, which call a running proxy's admin API.
//! - [`app`]: builds all of the above from a [`config::Config`] and runs it: one
//!   single-threaded runtime per worker thread (`server.workers`), each with its own upstream
//!   pool and Redis connection, so a request never leaves its thread.
//! - [`tls`]: rustls set-up on aws-lc-rs, the crate's one crypto backend.
//! - [`net`]: IP networks from config (`server.trusted_proxies`). Pure.
//!
//! `main.rs` is a thin CLI: parse arguments, load config, bind, [`app::App::run`].

pub mod access_log;
pub mod admin;
pub mod app;
pub mod classify;
pub mod cli;
pub mod client_auth;
pub mod config;
pub mod discovery;
pub mod error;
pub mod grant;
pub mod layer;
pub mod metrics;
pub mod mint;
pub mod net;
pub mod oauth;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tls;

pub use layer::{RefreshGrant, RefreshGrantLayer};
