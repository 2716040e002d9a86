//! Grant logic without I/O: scopes and the refresh-token rules.

pub mod capture;
pub mod engine;
pub mod rules;
pub mod scope;
