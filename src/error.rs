//! The crate's error type: every failure the proxy answers itself.
//!
//! Each module has its own `thiserror` enum; this one gathers them so that
//! [`crate::oauth::error_response`] can map all of them in one place.

use crate::classify::FormError;
use crate::grant::engine::GrantError;
use crate::proxy::ForwardError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request body exceeds server.max_body_bytes")]
    BodyTooLarge,
    #[error("request body could not be read")]
    BodyRead,
    #[error("request body not received within server.body_read_timeout")]
    BodyTimeout,
    /// A path some server routes to an owned endpoint, but not its exact path.
    #[error("request path is a variant of an endpoint the proxy answers for")]
    PathVariant,
    /// The query of an owned endpoint names a request parameter.
    #[error("request parameters in the query")]
    QueryParameters,
    #[error(transparent)]
    Form(#[from] FormError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Grant(#[from] GrantError),
}
