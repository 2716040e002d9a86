//! The grants: scopes, the refresh-token rules, capture and the verification of the upstream's
//! JWTs at capture, all without I/O; and the rules [`crate::engine`] runs over the token store.

pub mod capture;
pub mod rules;
pub mod scope;
pub mod verify;
