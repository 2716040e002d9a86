//! JWT signing (RFC 7515 compact JWS) and the JWKS of the proxy's public keys.
