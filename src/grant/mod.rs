//! The grants: scopes, the refresh-token rules, capture, the verification of the upstream's
//! JWTs at capture and the checks of its logout tokens, all without I/O; and the rules
//! [`crate::engine`] runs over the token store.

pub mod capture;
pub mod dpop;
pub mod logout;
pub mod rules;
pub mod scope;
pub mod verify;
