//! A second real IdP of another implementation family: django-oauth-toolkit (Python, Django),
//! pinned in `tests/idp-py/requirements.txt` and installed by `scripts/test` into
//! `tests/idp-py/.venv`. One process per test, on a free port, with its SQLite database and RSA
//! key in a temp dir (`tests/idp-py/serve.py`).
//!
//! Its provider lives under `/o/` (issuer `http://127.0.0.1:<port>/o`). Its OpenID discovery
//! document lists no revocation or introspection endpoint; its RFC 8414 metadata, at
//! `/.well-known/oauth-authorization-server/o`, does (`/o/revoke_token/`, `/o/introspect/`).
//! Its introspection answers name the user in `username`, not `sub`; its ID tokens' `sub` is
//! the username too (`tests/idp-py/idp/validator.py`).
//!
//! Seeded: user `alice` (password `any-password`, which [`super::idp::authorize_at`] types);
//! confidential clients `www` / `Secr3t!` (authorization code with PKCE, redirect URI
//! [`super::idp::REDIRECT_URI`], RS256 ID tokens) and `rs` / `rs-secret` (client credentials).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const AUTHORIZE_PATH: &str = "/o/authorize/";
pub const TOKEN_PATH: &str = "/o/token/";
pub const REVOCATION_PATH: &str = "/o/revoke_token/";
pub const INTROSPECTION_PATH: &str = "/o/introspect/";
pub const RS_CLIENT_ID: &str = "rs";
pub const RS_CLIENT_SECRET: &str = "rs-secret";

/// How long the IdP may take to start (a cold start builds its template database).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PyIdp {
    /// `http://127.0.0.1:<port>`
    pub base_url: String,
    /// The issuer and the proxy's `upstream.url`: `{base_url}/o`.
    pub issuer: String,
    /// From spawn to its `listening` line.
    pub start_time: Duration,
    child: Child,
}

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp-py")
}

impl PyIdp {
    pub async fn start() -> PyIdp {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("the IdP start does not panic")
    }

    fn start_blocking() -> PyIdp {
        let python = idp_dir().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash scripts/test` once (it creates the venv from \
             tests/idp-py/requirements.txt)",
            python.display()
        );
        let state = super::temp_dir("idp-py");
        let began = Instant::now();
        let mut child = Command::new(python)
            .arg(idp_dir().join("serve.py"))
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the Python IdP");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the IdP never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!("the Python IdP did not start within {START_TIMEOUT:?}: {e}");
            }
        };
        let port: u16 = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the Python IdP: {line:?}"));
        let base_url = format!("http://127.0.0.1:{port}");
        PyIdp {
            issuer: format!("{base_url}/o"),
            base_url,
            start_time: began.elapsed(),
            child,
        }
    }
}

impl Drop for PyIdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
