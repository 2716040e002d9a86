//! The grants: scopes, the refresh-token rules, capture and the verification of the upstream's
//! JWTs at capture, all without I/O; and [`engine`], which runs them over the token store.

pub mod capture;
pub mod engine;
pub mod rules;
pub mod scope;
pub mod verify;
