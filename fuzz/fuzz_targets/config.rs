//! The config loader: `Config::from_toml_str`, which turns TOML text and `REFRESH_PROXY_*`
//! environment overrides into a validated `Config` (what `Config::load` and `check-config` run).
//! The overrides are given as input; the process environment is never read or changed.
//!
//! Input: TOML text, then NUL-separated `NAME=VALUE` overrides. A leading `+` in a name stands
//! for `REFRESH_PROXY_` (so overrides are easy to reach); other names are used as they are
//! (`from_toml_str` is public and takes any names).
//!
//! `*_file` secrets are read from disk: they are allowed only as plain names inside a scratch
//! directory holding a few secret files (an input that could name another file, such as
//! `/dev/zero`, is skipped).
//!
//! Properties:
//! - no panic, whatever the text and overrides;
//! - what validation promises holds for an accepted config: the limits on body size, workers,
//!   drain delay and lifetimes; the client secrets and digests build `Clients`; the
//!   refresh-token keys build a key ring; the store URL parses; the upstream URL parses as
//!   http(s) without a trailing `/`, and the endpoint paths start with `/`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use refresh_proxy::config::{
    Config, ENV_PREFIX, MAX_ACCESS_TOKEN_TTL, MAX_GRACE, MAX_LIFETIME, MAX_WORKERS,
};
use refresh_proxy::internal::client_auth::Clients;
use refresh_proxy::internal::mint::refresh::{RefreshKeys, RefreshTokenKey};
use refresh_proxy::store::StoreUrl;

/// A scratch directory with a few secret files (`secret`, `key1`, `key2`, `empty`).
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("refresh-proxy-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        for (name, content) in [
            ("secret", "a client secret\n"),
            ("key1", "0123456789abcdef0123456789abcdef-one\n"),
            ("key2", "0123456789abcdef0123456789abcdef-two\r\n"),
            ("empty", ""),
        ] {
            std::fs::write(dir.join(name), content).expect("secret file");
        }
        dir
    })
}

/// Whether text could name a `*_file` key: literally, or through a TOML unicode escape.
fn may_name_files(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("_file") || lower.contains("\\u")
}

/// A `*_file(s)` value that stays inside the scratch directory.
fn safe_path(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => {
            s.len() <= 16
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                && !s.contains("..")
        }
        toml::Value::Array(items) => items.len() <= 8 && items.iter().all(safe_path),
        _ => true,
    }
}

fn files_are_safe(table: &toml::Table) -> bool {
    table.iter().all(|(k, v)| {
        if k.ends_with("_file") || k.ends_with("_files") {
            return safe_path(v);
        }
        match v {
            toml::Value::Table(t) => files_are_safe(t),
            toml::Value::Array(items) => items.iter().all(|i| match i {
                toml::Value::Table(t) => files_are_safe(t),
                _ => true,
            }),
            _ => true,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let mut env = Vec::new();
    for part in parts {
        let Ok(part) = std::str::from_utf8(part) else {
            return;
        };
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        // The process environment holds no NUL and no '=' in a name.
        let name = match name.strip_prefix('+') {
            Some(rest) => format!("{ENV_PREFIX}{rest}"),
            None => name.to_owned(),
        };
        if may_name_files(&name) || may_name_files(value) {
            return;
        }
        env.push((name, value.to_owned()));
    }
    if may_name_files(text) {
        match toml::from_str::<toml::Table>(text) {
            Ok(table) if !files_are_safe(&table) => return,
            _ => {}
        }
    }
    let base = base();
    let Ok(config) = Config::from_toml_str(text, base, env) else {
        return;
    };

    // What validation promised.
    assert!(config.server.max_body_bytes >= 1024);
    assert!(config.server.workers <= MAX_WORKERS);
    assert!(config.server.drain_delay < config.server.shutdown_timeout);
    assert!((1..=MAX_ACCESS_TOKEN_TTL).contains(&config.tokens.access_token_ttl));
    let lifetimes = |idle: Option<u64>, max: Option<u64>, grace: Option<u64>| {
        assert!(idle.is_none_or(|v| v <= MAX_LIFETIME));
        assert!(max.is_none_or(|v| (1..=MAX_LIFETIME).contains(&v)));
        assert!(grace.is_none_or(|v| v <= MAX_GRACE));
    };
    let t = &config.tokens;
    lifetimes(
        t.refresh_token_ttl,
        t.refresh_token_max_lifetime,
        t.reuse_grace_period,
    );
    for (id, c) in &config.clients {
        assert!(
            !id.is_empty() && !id.chars().any(char::is_control),
            "client id {id:?}"
        );
        lifetimes(
            c.refresh_token_ttl,
            c.refresh_token_max_lifetime,
            c.reuse_grace_period,
        );
    }
    let url: http::Uri = config
        .upstream
        .url
        .parse()
        .expect("upstream.url was checked");
    assert!(matches!(url.scheme_str(), Some("http" | "https")));
    assert!(!config.upstream.url.ends_with('/'));
    for path in [
        &config.upstream.token_path,
        &config.upstream.revocation_path,
        &config.upstream.introspection_path,
        &config.upstream.jwks_path,
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            path.starts_with('/') && !path.contains(['?', '#']),
            "{path:?}"
        );
    }
    Clients::from_config(&config).expect("validated clients build");
    let secrets = config.tokens.refresh_token_secrets();
    assert!(secrets.iter().all(|s| s.expose().len() >= 32));
    if !secrets.is_empty() {
        RefreshKeys::new(
            secrets
                .iter()
                .map(|s| RefreshTokenKey::from_secret(s.expose().as_bytes()))
                .collect(),
        )
        .expect("validated refresh-token keys make a ring");
    }
    StoreUrl::parse(&config.store.url).expect("store.url was checked");
    let _ = refresh_proxy::internal::discovery::from_config(&config.upstream);
});
