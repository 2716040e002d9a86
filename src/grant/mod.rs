//! Grant logic without I/O: scopes, the refresh-token rules, capture and the verification
//! of the upstream's JWTs at capture.

pub mod capture;
pub mod engine;
pub mod rules;
pub mod scope;
pub mod verify;
