//! Grant logic without I/O: scopes and the refresh-token rules.

pub mod rules;
pub mod scope;
