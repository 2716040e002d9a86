//! Minting: refresh tokens, access tokens (JWT and opaque) and their claims, signing keys and
//! the JWKS.

pub(crate) mod claims;
pub mod jwt;
pub mod kept;
pub mod opaque;
pub mod refresh;
