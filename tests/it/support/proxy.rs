//! The proxy under test: in-process ([`TestProxy`], on listeners bound to port 0) or as the
//! real binary ([`ProxyProcess`], for signals, exit codes and memory use).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use refresh_proxy::app::{App, Outcome};
use refresh_proxy::config::Config;
use tokio::net::TcpListener;

/// A config with `upstream.url` set and `extra` TOML appended (it may add keys to `[upstream]`
/// since the section header is the last line).
pub fn config(upstream: &str, extra: &str) -> String {
    format!("[upstream]\nurl = \"{upstream}\"\n{extra}")
}

/// Opens families through the admin API (`POST {admin_url}/admin/issue` with `request`, e.g.
/// `{"client_id": "www", "subject": "alice", "count": 3}`); their first refresh tokens.
pub async fn issue(admin_url: &str, admin_token: &str, request: serde_json::Value) -> Vec<String> {
    let res = reqwest::Client::new()
        .post(format!("{admin_url}/admin/issue"))
        .bearer_auth(admin_token)
        .json(&request)
        .send()
        .await
        .expect("issue");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    body["refresh_tokens"]
        .as_array()
        .expect("refresh_tokens")
        .iter()
        .map(|t| t.as_str().expect("a string").to_owned())
        .collect()
}

/// The proxy running as tasks of the test's runtime.
pub struct TestProxy {
    pub url: String,
    /// `https://…` when the config gives the admin port TLS (`server.admin_tls_*`).
    pub admin_url: String,
    /// A client of the admin port: it trusts the admin certificate when there is one.
    pub admin_http: reqwest::Client,
    pub port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Outcome>>,
}

impl TestProxy {
    pub async fn start(config_text: &str) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::start_on(listener, config_text).await
    }

    /// Starts on a listener the test bound first (e.g. so the IdP's issuer can be the proxy).
    pub async fn start_on(listener: TcpListener, config_text: &str) -> TestProxy {
        let config =
            Config::from_toml_str(config_text, std::path::Path::new("."), std::iter::empty())
                .expect("test config is valid");
        let admin_http = admin_client(config.server.admin_tls_cert_file.as_deref());
        let scheme = if config.server.admin_tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        let app = App::build(config).expect("app builds");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let admin_url = format!("{scheme}://{}", admin.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(listener, admin, async move {
            let _ = rx.await;
        }));
        TestProxy {
            url,
            admin_url,
            admin_http,
            port,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until `/readyz` answers 200 (discovery done, store reachable).
    pub async fn wait_ready(&self) {
        wait_for_status_with(
            &self.admin_http,
            &format!("{}/readyz", self.admin_url),
            200,
            Duration::from_secs(15),
        )
        .await;
    }

    /// How the run loop ended by itself within `timeout` (no shutdown asked), else `None`.
    pub async fn ended_within(&mut self, timeout: Duration) -> Option<Outcome> {
        let task = self.task.as_mut().expect("running");
        match tokio::time::timeout(timeout, task).await {
            Ok(outcome) => {
                self.task = None;
                Some(outcome.expect("run loop does not panic"))
            }
            Err(_) => None,
        }
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin_url);
        let res = self
            .admin_http
            .get(&url)
            .send()
            .await
            .expect("GET /metrics");
        res.text().await.expect("the metrics text")
    }

    /// The value of the sample `series` (name and labels, as written), e.g.
    /// `refresh_proxy_captures_total` or `…_total{outcome="revoked"}`; panics when absent.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.metrics().await;
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
            .parse()
            .unwrap_or_else(|e| panic!("{series}: not a count ({e})"))
    }

    /// Triggers shutdown (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for the run loop to end.
    pub async fn shutdown(mut self) -> Outcome {
        self.begin_shutdown();
        self.task
            .take()
            .expect("running")
            .await
            .expect("run loop does not panic")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A client for an admin port: trusting the certificates of `admin_tls_cert_file` when given
/// (its HTTPS), else plain.
pub fn admin_client(admin_tls_cert_file: Option<&std::path::Path>) -> reqwest::Client {
    let Some(cert_file) = admin_tls_cert_file else {
        return reqwest::Client::new();
    };
    let pem = std::fs::read(cert_file).expect("read the admin certificate");
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("PEM certificates");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .expect("a TLS client")
}

/// Polls `url` until it answers `status` or `timeout` passes (then panics).
pub async fn wait_for_status(url: &str, status: u16, timeout: Duration) {
    wait_for_status_with(&reqwest::Client::new(), url, status, timeout).await;
}

/// [`wait_for_status`] with `client`.
pub async fn wait_for_status_with(
    client: &reqwest::Client,
    url: &str,
    status: u16,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.get(url).send().await {
            Ok(res) if res.status().as_u16() == status => return,
            Ok(res) => format!(
                "HTTP {}: {}",
                res.status(),
                res.text().await.unwrap_or_default()
            ),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{url} never answered {status} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real `refresh-proxy` binary, with its config in a temp file.
pub struct ProxyProcess {
    pub url: String,
    pub admin_url: String,
    pub config_path: PathBuf,
    child: Child,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_refresh-proxy")
}

impl ProxyProcess {
    /// Starts the binary; the listen addresses come in as environment overrides.
    pub fn spawn(config_text: &str) -> ProxyProcess {
        let dir = super::temp_dir("proxy");
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config_text).expect("write config");
        Self::spawn_with(config_path, &[])
    }

    /// Starts the binary on an existing config file, with extra environment variables.
    pub fn spawn_with(config_path: PathBuf, env: &[(&str, &str)]) -> ProxyProcess {
        Self::spawn_full(config_path, env, super::free_port(), Stdio::null())
    }

    /// Starts the binary on a given proxy port, with its stdout (the logs) going to `stdout`.
    pub fn spawn_full(
        config_path: PathBuf,
        env: &[(&str, &str)],
        port: u16,
        stdout: Stdio,
    ) -> ProxyProcess {
        let admin_port = super::free_port();
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            .env("REFRESH_PROXY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "REFRESH_PROXY_SERVER__ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn refresh-proxy");
        ProxyProcess {
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            config_path,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn wait_ready(&self) {
        wait_for_status(
            &format!("{}/readyz", self.admin_url),
            200,
            Duration::from_secs(15),
        )
        .await;
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory (VmHWM) of the process so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
