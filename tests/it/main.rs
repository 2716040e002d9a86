//! Every integration test, in one test binary: the rig (`support`) is compiled once and the
//! crate linked once, instead of once per file. Each module is what used to be its own
//! `tests/<name>.rs`; `cargo nextest run -E 'test(/^<name>::/)'` runs one of them
//! (docs/testing.md).

#[macro_use]
mod support;

mod admin;
mod bench_cli;
mod binary;
mod capture_verify;
mod client_assertions;
mod concurrency;
mod demo;
mod discovery_any_idp;
mod docs;
mod dpop;
mod e2e_endpoints;
mod e2e_idp;
mod e2e_idp_py;
mod e2e_refresh;
mod faults;
mod hostile;
mod idp_binding;
mod idp_fixture;
mod integrity;
mod jwt_jose;
mod key_rotation;
mod layer;
mod layering;
mod lifecycle;
mod limits;
mod logs;
mod mtls;
mod observability;
mod paths;
mod store_contract;
mod topology_rig;
mod tracing;
mod transparency;
mod upstream_pool;
mod workers;
