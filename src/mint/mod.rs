//! Minting: refresh tokens, access tokens (JWT and opaque), signing keys and the JWKS.

pub mod jwt;
pub mod opaque;
pub mod refresh;
