//! The `RefreshGrantLayer` middleware: the part of the proxy that owns the token endpoint.
//!
//! It sits in front of any service that talks to the upstream IdP (the binary puts
//! `crate::proxy::Forward` there; in an axum or tower stack it can be anything). For each
//! request it looks at the method and path (`crate::classify`):
//!
//! - token-endpoint requests (`POST <token_path>`) are read into memory, bounded by
//!   `max_body_bytes` (413 beyond), and their form is checked: the right content type, UTF-8
//!   values, no repeated parameter (400 `invalid_request` otherwise, RFC 6749 §3.2). The request
//!   then goes on with its buffered body ([`RequestBody::Buffered`]);
//! - with an engine: refresh grants it owns are answered (a family whose upstream session
//!   check is due is first redeemed at the upstream through the inner service, `check`),
//!   revocation and introspection of its own tokens, the JWKS with its keys merged, and
//!   back-channel logout tokens at `upstream.backchannel_logout_path` (`logout`);
//! - everything else goes on untouched, its body streaming ([`RequestBody::Streaming`]).
//!
//! Answers it writes itself are [`ResponseBody::Local`]; the inner service's are
//! [`ResponseBody::Inner`]. Its failures are always responses, never service errors.
//!
//! ```
//! use refresh_proxy::layer::{Endpoints, RefreshGrantLayer};
//!
//! let layer = RefreshGrantLayer::builder()
//!     .endpoints(Endpoints { token_path: Some("/oauth/token".into()), ..Endpoints::default() })
//!     .max_body_bytes(16 * 1024)
//!     .expect("16 KiB is a valid limit")
//!     .build();
//! // The inner service gets `RequestBody<B>`: the client's stream, or the buffered form.
//! type Inner = refresh_proxy::layer::RequestBody<http_body_util::Full<bytes::Bytes>>;
//! let _service = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: http::Request<Inner>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     });
//! ```
//!
//! Caveat: endpoint paths may be swapped at run time (discovery finishes after start-up); until
//! they are known, every request is forwarded untouched.

mod budget;
mod capture;
mod check;
mod client_jwks;
mod jwks;
#[allow(clippy::module_inception)]
mod layer;
mod logout;
mod service;

pub use crate::body::{RequestBody, ResponseBody};
pub use crate::classify::Endpoints;
pub use budget::BodyBudget;
pub use layer::{RefreshGrantLayer, RefreshGrantLayerBuilder};
pub use logout::{PassOn, PassOns};
pub use service::RefreshGrant;
