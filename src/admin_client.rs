//! The HTTP client of the admin API, behind `refresh-proxy issue` and
//! `refresh-proxy admin revoke`.
//!
//! They call the admin API of the proxy that a config file describes (`server.admin_listen`),
//! so they work whatever the store: the running proxy does the work. Each endpoint has its own
//! token: `issue` sends `admin.issue_token`, `admin revoke` sends `admin.token`.
//! An unspecified listen address (`0.0.0.0`, `::`) is reached on the loopback address of the
//! same family. When the config gives the admin port TLS (`server.admin_tls_cert_file`), they
//! speak HTTPS and verify the proxy's certificate against the certificates of that file and
//! the system roots; the certificate must name the address they connect to (e.g. an IP SAN
//! `127.0.0.1` for a proxy listening on `0.0.0.0`).
//!
//! ```text
//! refresh-proxy issue --config config.toml --client www --subject load-1 --scope "read" \
//!     --count 100000 --out tokens.txt
//! refresh-proxy admin revoke --config config.toml --subject load-1
//! ```
//!
//! `issue` asks for at most [`ISSUE_CHUNK`] tokens per request, a few requests in flight at
//! once, and writes the tokens one a line as the answers arrive. Every failure is a
//! [`CliError`] whose message says what failed and what to check.
//!
//! Caveat: when a request fails half-way through a large `issue`, the families already
//! issued stay open (their tokens are in the output); they expire like any other, or
//! `admin revoke --subject` removes them.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

pub use crate::admin::Endpoint;
use crate::config::{Config, Secret};

/// The most tokens one `POST /admin/issue` of the CLI asks for.
pub const ISSUE_CHUNK: u64 = 10_000;
/// Issue requests in flight at once: enough to overlap the proxy's work with the transfers,
/// few enough not to crowd out the proxy's real traffic.
const ISSUE_IN_FLIGHT: usize = 4;
/// Time to open the TCP connection to the admin port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one admin request, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (a chunk of 10,000 tokens is about 1 MB).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why a CLI command failed. The messages are what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "{key} is not set in {config}: the admin API's {endpoint} is off without it; set it (the \
         same value as the running proxy's)"
    )]
    NoToken {
        config: String,
        key: &'static str,
        endpoint: &'static str,
    },
    #[error(
        "cannot connect to the admin API at {addr}: is the proxy running at {addr}? ({reason})"
    )]
    Connect { addr: SocketAddr, reason: String },
    #[error("the admin API at {addr} did not answer within {}s", .timeout.as_secs())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the request to the admin API at {addr} failed: {reason}")]
    Request { addr: SocketAddr, reason: String },
    #[error(
        "the admin API at {addr} refused the token (401): {key} does not match the running \
         proxy's"
    )]
    Unauthorized { addr: SocketAddr, key: &'static str },
    #[error(
        "the proxy at {addr} has {endpoint} disabled (404 admin_api_disabled): set {key} in its \
         config and restart it"
    )]
    Disabled {
        addr: SocketAddr,
        key: &'static str,
        endpoint: &'static str,
    },
    #[error("the admin API at {addr} answered {status} {error}{}", describe(.description))]
    Refused {
        addr: SocketAddr,
        status: StatusCode,
        error: String,
        description: Option<String>,
    },
    #[error("the admin API at {addr} answered something unexpected: {reason}")]
    BadAnswer { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot write {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
}

fn describe(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// What `admin revoke` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Family(String),
    Subject(String),
    Client(String),
}

#[derive(Serialize)]
struct RevokeBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

#[derive(Serialize)]
struct IssueBody<'a> {
    client_id: &'a str,
    subject: &'a str,
    scope: &'a str,
    count: u64,
}

#[derive(Deserialize)]
struct IssueAnswer {
    refresh_tokens: Vec<String>,
}

#[derive(Deserialize)]
struct RevokeAnswer {
    revoked: u64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    error_description: Option<String>,
}

/// A client of one endpoint of one proxy's admin API, with that endpoint's token.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    /// `https` when the admin port serves TLS, else `http`.
    scheme: &'static str,
    endpoint: Endpoint,
    token: HeaderValue,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AdminClient {
            addr,
            scheme,
            endpoint,
            token: _,
            client: _,
            timeout,
        } = self;
        f.debug_struct("AdminClient")
            .field("addr", addr)
            .field("scheme", scheme)
            .field("endpoint", endpoint)
            .field("token", &"<redacted>")
            .field("timeout", timeout)
            .finish_non_exhaustive()
    }
}

/// Where to reach a listener bound to `addr`: an unspecified address means "every local
/// address", so the loopback address of the same family reaches it.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

impl AdminClient {
    /// The `endpoint` of the admin API of the proxy `config` describes, with its token
    /// (`config_path` is for messages).
    pub fn from_config(
        config: &Config,
        config_path: &Path,
        endpoint: Endpoint,
    ) -> Result<AdminClient, CliError> {
        let no_token = || CliError::NoToken {
            config: config_path.display().to_string(),
            key: endpoint.token_key(),
            endpoint: path_of(endpoint),
        };
        let token = match endpoint {
            Endpoint::Revoke => config.admin.token.as_ref(),
            Endpoint::Issue => config.admin.issue_token.as_ref(),
        };
        let tls = config
            .server
            .admin_tls_cert_file
            .as_deref()
            .map(crate::tls::admin_client_config)
            .transpose()?;
        AdminClient::new(
            config.server.admin_listen,
            tls,
            endpoint,
            token.ok_or_else(no_token)?,
        )
        .ok_or_else(no_token)
    }

    /// A client of `endpoint` at `admin_listen`, over TLS with `tls` when given. `None` when
    /// the token cannot be sent in a header (a control character).
    pub fn new(
        admin_listen: SocketAddr,
        tls: Option<rustls::ClientConfig>,
        endpoint: Endpoint,
        token: &Secret,
    ) -> Option<AdminClient> {
        let mut token = HeaderValue::try_from(format!("Bearer {}", token.expose())).ok()?;
        token.set_sensitive(true);
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Without TLS the connector never makes a TLS connection: `http://` URIs only.
        let tls = match tls {
            Some(tls) => tls,
            None => crate::tls::client_config(crate::tls::Roots::Unused).ok()?,
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Some(AdminClient {
            addr: reachable(admin_listen),
            scheme,
            endpoint,
            token,
            client,
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The address requests go to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `POST /admin/issue` once: `count` (at most 1,000,000) new families' refresh tokens.
    /// Needs a client made for [`Endpoint::Issue`].
    pub async fn issue(
        &self,
        client_id: &str,
        subject: &str,
        scope: &str,
        count: u64,
    ) -> Result<Vec<String>, CliError> {
        self.expect(Endpoint::Issue)?;
        let body = IssueBody {
            client_id,
            subject,
            scope,
            count,
        };
        let answer: IssueAnswer = self.post("/admin/issue", &body).await?;
        if answer.refresh_tokens.len() as u64 != count {
            return Err(self.bad_answer(format!(
                "{} refresh tokens instead of {count}",
                answer.refresh_tokens.len()
            )));
        }
        Ok(answer.refresh_tokens)
    }

    /// `POST /admin/revoke`: how many live families were revoked. Needs a client made for
    /// [`Endpoint::Revoke`].
    pub async fn revoke(&self, target: &RevokeTarget) -> Result<u64, CliError> {
        self.expect(Endpoint::Revoke)?;
        let mut body = RevokeBody {
            family: None,
            subject: None,
            client_id: None,
        };
        match target {
            RevokeTarget::Family(f) => body.family = Some(f),
            RevokeTarget::Subject(s) => body.subject = Some(s),
            RevokeTarget::Client(c) => body.client_id = Some(c),
        }
        let answer: RevokeAnswer = self.post("/admin/revoke", &body).await?;
        Ok(answer.revoked)
    }

    /// Each token goes to its own endpoint only.
    fn expect(&self, endpoint: Endpoint) -> Result<(), CliError> {
        if self.endpoint == endpoint {
            return Ok(());
        }
        Err(CliError::Request {
            addr: self.addr,
            reason: format!(
                "this client holds {} and cannot call {}",
                self.endpoint.token_key(),
                path_of(endpoint)
            ),
        })
    }

    fn bad_answer(&self, reason: impl Into<String>) -> CliError {
        CliError::BadAnswer {
            addr: self.addr,
            reason: reason.into(),
        }
    }

    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, CliError> {
        let addr = self.addr;
        let json = serde_json::to_vec(body).expect("request bodies serialise");
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}://{addr}{path}", self.scheme))
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, self.token.clone())
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| CliError::Request {
                addr,
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    CliError::Connect {
                        addr,
                        reason: innermost(&e),
                    }
                } else {
                    CliError::Request {
                        addr,
                        reason: source_chain(&e),
                    }
                }
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CliError::Request {
                    addr,
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, CliError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CliError::Timeout {
                addr,
                timeout: self.timeout,
            })??;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| self.bad_answer(e.to_string()));
        }
        let error: Option<ErrorAnswer> = serde_json::from_slice(&bytes).ok();
        Err(match (status, error) {
            (StatusCode::UNAUTHORIZED, _) => CliError::Unauthorized {
                addr,
                key: self.endpoint.token_key(),
            },
            (StatusCode::NOT_FOUND, Some(e)) if e.error == "admin_api_disabled" => {
                CliError::Disabled {
                    addr,
                    key: self.endpoint.token_key(),
                    endpoint: path_of(self.endpoint),
                }
            }
            (status, Some(e)) => CliError::Refused {
                addr,
                status,
                error: e.error,
                description: e.error_description,
            },
            (status, None) => CliError::Refused {
                addr,
                status,
                error: "(no JSON error body)".to_owned(),
                description: None,
            },
        })
    }
}

/// The endpoint's path, for messages.
fn path_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Revoke => "/admin/revoke",
        Endpoint::Issue => "/admin/issue",
    }
}

/// The root cause ("Connection refused (os error 111)"), without hyper's wrappers.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// "outer: inner: innermost", so "connection refused" is not hidden behind "client error".
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What `refresh-proxy issue` asks for.
#[derive(Debug, Clone)]
pub struct IssueJob {
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub count: u64,
    /// `-` is stdout.
    pub out: PathBuf,
    /// Show progress on stderr (`main` sets it when stderr is a terminal): one line, redrawn
    /// as answers arrive.
    pub progress: bool,
}

/// A failed `issue`: what went wrong, and how many tokens were written before it.
#[derive(Debug)]
pub struct IssueFailure {
    pub error: CliError,
    pub written: u64,
}

impl From<CliError> for IssueFailure {
    fn from(error: CliError) -> Self {
        IssueFailure { error, written: 0 }
    }
}

/// Redraws the progress line: tokens issued of the total, the rate, the time left.
fn show_progress(written: u64, total: u64, elapsed: Duration) {
    let rate = written as f64 / elapsed.as_secs_f64().max(1e-3);
    let left = total.saturating_sub(written) as f64 / rate.max(1.0);
    eprint!(
        "\r\x1b[2Kissued {written} of {total} refresh tokens ({:.0}%, {rate:.0}/s, about {left:.0}s left)",
        100.0 * written as f64 / total.max(1) as f64
    );
}

/// Runs `refresh-proxy issue`: the tokens go to `job.out`, one a line. Returns the time it
/// took.
pub async fn issue(client: &AdminClient, job: &IssueJob) -> Result<Duration, IssueFailure> {
    let started = Instant::now();
    let to_stdout = job.out == Path::new("-");
    let out_name = if to_stdout {
        "stdout".to_owned()
    } else {
        job.out.display().to_string()
    };
    let output_error = |source| CliError::Output {
        path: out_name.clone(),
        source,
    };
    // Opened before the first request, so a bad path costs no tokens.
    let sink: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::fs::File::create(&job.out).map_err(output_error)?)
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);

    let mut chunks =
        (0..job.count.div_ceil(ISSUE_CHUNK)).map(|i| ISSUE_CHUNK.min(job.count - i * ISSUE_CHUNK));
    let mut in_flight = tokio::task::JoinSet::new();
    // Answers are written in the order they arrive; the tokens are independent families.
    let mut written = 0u64;
    let mut failed: Option<CliError> = None;
    loop {
        // After a failure no more are asked for, but the answers in flight are still written:
        // their families exist either way.
        while failed.is_none()
            && in_flight.len() < ISSUE_IN_FLIGHT
            && let Some(n) = chunks.next()
        {
            let client = client.clone();
            let job = job.clone();
            in_flight.spawn(async move {
                client
                    .issue(&job.client_id, &job.subject, &job.scope, n)
                    .await
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let tokens = match joined {
            Ok(Ok(tokens)) => tokens,
            Ok(Err(e)) => {
                failed.get_or_insert(e);
                continue;
            }
            Err(e) => {
                failed.get_or_insert(CliError::Request {
                    addr: client.addr(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let mut text = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
        for t in &tokens {
            text.push_str(t);
            text.push('\n');
        }
        if let Err(e) = out.write_all(text.as_bytes()) {
            // Nowhere to put more tokens: stop asking, and stop writing.
            in_flight.abort_all();
            return Err(IssueFailure {
                error: output_error(e),
                written,
            });
        }
        written += tokens.len() as u64;
        if job.progress {
            show_progress(written, job.count, started.elapsed());
        }
    }
    if job.progress {
        // The progress line goes, so the summary line stands alone.
        eprint!("\r\x1b[2K");
    }
    if let Some(error) = failed {
        let _ = out.flush();
        return Err(IssueFailure { error, written });
    }
    out.flush().map_err(|e| IssueFailure {
        error: output_error(e),
        written,
    })?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(reachable(a("0.0.0.0:9901")), a("127.0.0.1:9901"));
        assert_eq!(reachable(a("[::]:9901")), a("[::1]:9901"));
        assert_eq!(reachable(a("10.1.2.3:9901")), a("10.1.2.3:9901"));
        assert_eq!(reachable(a("[::1]:9901")), a("[::1]:9901"));
    }

    #[test]
    fn messages_say_what_to_check() {
        let addr: SocketAddr = "127.0.0.1:9901".parse().expect("addr");
        let connect = CliError::Connect {
            addr,
            reason: "connection refused".into(),
        };
        assert!(
            connect
                .to_string()
                .contains("is the proxy running at 127.0.0.1:9901?")
        );
        assert!(
            CliError::Unauthorized {
                addr,
                key: "admin.issue_token"
            }
            .to_string()
            .contains("admin.issue_token does not match the running proxy's")
        );
        assert_eq!(
            CliError::Disabled {
                addr,
                key: "admin.issue_token",
                endpoint: "/admin/issue"
            }
            .to_string(),
            "the proxy at 127.0.0.1:9901 has /admin/issue disabled (404 admin_api_disabled): set \
             admin.issue_token in its config and restart it"
        );
        let refused = CliError::Refused {
            addr,
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request".into(),
            description: Some("unknown client_id".into()),
        };
        assert_eq!(
            refused.to_string(),
            "the admin API at 127.0.0.1:9901 answered 400 Bad Request invalid_request: unknown client_id"
        );
    }

    #[test]
    fn the_token_stays_out_of_debug() {
        let client = AdminClient::new(
            "127.0.0.1:1".parse().expect("addr"),
            None,
            Endpoint::Revoke,
            &Secret::new("a-very-secret-admin-token"),
        )
        .expect("client");
        assert!(!format!("{client:?}").contains("a-very-secret"));
    }

    #[tokio::test]
    async fn a_token_is_never_sent_to_the_other_endpoint() {
        // Nothing listens at port 1: a request that went out would fail to connect instead.
        let revoker = AdminClient::new(
            "127.0.0.1:1".parse().expect("addr"),
            None,
            Endpoint::Revoke,
            &Secret::new("revoke-token-0123456789"),
        )
        .expect("client");
        let err = revoker.issue("www", "s", "", 1).await.expect_err("refused");
        assert!(
            err.to_string()
                .contains("holds admin.token and cannot call /admin/issue"),
            "{err}"
        );
        let issuer = AdminClient::new(
            "127.0.0.1:1".parse().expect("addr"),
            None,
            Endpoint::Issue,
            &Secret::new("issue-token-0123456789"),
        )
        .expect("client");
        let err = issuer
            .revoke(&RevokeTarget::Subject("s".into()))
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("holds admin.issue_token and cannot call /admin/revoke"),
            "{err}"
        );
    }

    #[test]
    fn revoke_bodies_have_one_key() {
        let body = RevokeBody {
            family: None,
            subject: Some("alice"),
            client_id: None,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"subject":"alice"}"#
        );
    }
}
