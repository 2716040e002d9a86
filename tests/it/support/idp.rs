//! A real OAuth 2.0 / OpenID Connect provider for end-to-end tests: `node tests/idp/server.js`
//! (the npm package `oidc-provider` 8.8.1), one child process per [`Idp`], killed on drop.
//!
//! Clients registered in the IdP (see tests/idp/server.js):
//! - `www` / `Secr3t!`: confidential; authorization_code, refresh_token, client_credentials.
//!   oidc-provider accepts both client_secret_basic and client_secret_post for it.
//! - `spa`: public (token_endpoint_auth_method none); authorization_code, refresh_token.
//! - `rs` / `rs-secret`: resource server, for introspection (and revocation).
//!
//! Every client's redirect URI is [`REDIRECT_URI`]; PKCE (S256) is required for every
//! authorization request. Any login name is accepted (with any password) and becomes the subject.
//!
//! Refresh-token rotation follows oidc-provider's default unless [`IdpOptions::refresh_rotation`]
//! says otherwise: the refresh token of a public client (`spa`) rotates on every use, the one of a
//! confidential client (`www`) is returned unchanged (until it is past 70% of its 14-day
//! lifetime). Presenting a rotated (consumed) refresh token again fails with HTTP 400
//! `invalid_grant` (error_description "grant request is invalid"; the detail "refresh token already
//! used" is not sent) and revokes the whole grant: every access and refresh token issued from it,
//! including the newest one.
//!
//! The IdP's stderr (oidc-provider's start-up warnings, server errors) is forwarded to the test's
//! stderr with an `[idp]` prefix. Environment knobs: `IDP_TRACE_FLOW=1` prints every step of
//! [`code_flow`], `IDP_LOG_STARTUP=1` prints how long each start took, `NODE` names the node binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// The redirect URI registered for `www` and `spa`. Never requested: [`code_flow`] reads the
/// authorization code from the `Location` header pointing here.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// The confidential client.
pub const WWW_CLIENT_ID: &str = "www";
pub const WWW_CLIENT_SECRET: &str = "Secr3t!";
/// The public client.
pub const SPA_CLIENT_ID: &str = "spa";
/// The resource server allowed to introspect tokens.
pub const RS_CLIENT_ID: &str = "rs";
pub const RS_CLIENT_SECRET: &str = "rs-secret";
/// The audience of JWT access tokens (`IdpOptions::jwt_access_tokens`), and the resource every
/// access token is issued for in that mode.
pub const JWT_API_RESOURCE: &str = "urn:refresh-proxy:test-api";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects and form posts that [`code_flow`] follows before giving up.
const MAX_FLOW_STEPS: usize = 20;

/// A running test IdP. The node process is killed when this is dropped.
#[derive(Debug)]
pub struct Idp {
    /// Where the IdP itself listens: `http://127.0.0.1:<port>` (no trailing slash).
    pub base_url: String,
    /// The issuer identifier it was started with (`base_url` unless `IdpOptions::issuer`).
    pub issuer: String,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    child: Child,
    /// Held open: the IdP exits when its stdin closes, so it dies with this test process even if
    /// the process is killed without running destructors.
    _stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
}

/// Refresh-token rotation policy of the IdP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RefreshRotation {
    /// oidc-provider's default: rotate for public clients (`spa`) on every use, for confidential
    /// clients (`www`) only once the token is past 70% of its lifetime (so, in tests, never).
    #[default]
    ProviderDefault,
    /// Every refresh consumes the presented refresh token and returns a new one.
    Always,
    /// Refresh tokens are never rotated.
    Never,
}

#[derive(Debug, Clone, Default)]
pub struct IdpOptions {
    /// Issuer identifier (e.g. the URL of a proxy in front of the IdP). Default: the IdP's own
    /// `http://127.0.0.1:<port>`. Every absolute URL the IdP emits (discovery, form actions,
    /// redirects) is built from the issuer's scheme and host, whatever Host header it received.
    pub issuer: Option<String>,
    /// Issue access tokens as JWTs (RFC 9068, `typ: at+jwt`, RS256, audience
    /// [`JWT_API_RESOURCE`]) instead of opaque strings, for code, refresh and client_credentials
    /// grants alike. Their `scope` (and the token response's `scope`) then only holds the resource
    /// server's scopes (`read`, `write`): `openid`, `offline_access`, `profile`, `email` are dropped
    /// from it, though the refresh token and ID token still carry them.
    pub jwt_access_tokens: bool,
    /// Refresh-token rotation policy.
    pub refresh_rotation: RefreshRotation,
    /// The `www` client's back-channel logout URI (OpenID Connect Back-Channel Logout 1.0);
    /// `None` leaves the feature off.
    pub backchannel_logout_uri: Option<String>,
    /// Issue refresh tokens without `offline_access` too, bound to the login session (as
    /// Keycloak does); a logout at the IdP revokes them.
    pub session_refresh_tokens: bool,
    /// RFC 9449 DPoP on: token requests with a proof get DPoP-bound tokens.
    pub dpop: bool,
    /// RFC 8705 certificate-bound tokens for `spa`, the certificate read from `Client-Cert`.
    pub mtls: bool,
    /// With `mtls`: a PEM CA certificate; adds the `tls_client_auth` client `mtls-pki`, whose
    /// certificate that CA issues with the subject [`MTLS_PKI_SUBJECT_DN`].
    pub mtls_ca_file: Option<std::path::PathBuf>,
    /// With `mtls`: a PEM self-signed certificate; adds the `self_signed_tls_client_auth`
    /// client `mtls-self` with it in its jwks.
    pub mtls_self_signed_cert: Option<std::path::PathBuf>,
}

/// The subject the IdP registers for `mtls-pki` (RFC 4514 text).
pub const MTLS_PKI_SUBJECT_DN: &str = "CN=mtls-pki-client,O=refresh-proxy tests";

impl Idp {
    /// Starts an IdP with default options.
    pub async fn start() -> Idp {
        Idp::start_with(IdpOptions::default()).await
    }

    /// Binds the proxy's port first and starts an IdP whose issuer is the proxy's URL, as in a
    /// real deployment (clients talk only to the proxy); the proxy is then started on the
    /// listener.
    pub async fn start_behind_proxy(opts: IdpOptions) -> (tokio::net::TcpListener, Idp) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy's port");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let idp = Idp::start_with(IdpOptions {
            issuer: Some(issuer),
            ..opts
        })
        .await;
        (listener, idp)
    }

    /// Starts an IdP on a free port and waits (up to 20 s) until it listens.
    pub async fn start_with(opts: IdpOptions) -> Idp {
        let idp_dir = idp_dir();
        let node_modules = idp_dir.join("node_modules");
        if !node_modules.join("oidc-provider").is_dir() {
            panic!(
                "{} is missing (or has no oidc-provider): run npm ci --prefix tests/idp",
                node_modules.display()
            );
        }

        let mut cmd = Command::new(node_binary());
        cmd.arg(idp_dir.join("server.js"))
            .current_dir(&idp_dir)
            .env("PORT", "0")
            .env("EXIT_ON_STDIN_EOF", "1")
            .env_remove("ISSUER")
            .env_remove("JWT_ACCESS_TOKENS")
            .env_remove("ROTATE_REFRESH_TOKENS")
            .env_remove("BACKCHANNEL_LOGOUT_URI")
            .env_remove("SESSION_REFRESH_TOKENS")
            .env_remove("DPOP")
            .env_remove("MTLS")
            .env_remove("MTLS_CA_FILE")
            .env_remove("MTLS_SELF_SIGNED_CERT")
            .env_remove("DEBUG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(issuer) = &opts.issuer {
            cmd.env("ISSUER", issuer);
        }
        if opts.jwt_access_tokens {
            cmd.env("JWT_ACCESS_TOKENS", "1");
        }
        if let Some(uri) = &opts.backchannel_logout_uri {
            cmd.env("BACKCHANNEL_LOGOUT_URI", uri);
        }
        if opts.session_refresh_tokens {
            cmd.env("SESSION_REFRESH_TOKENS", "1");
        }
        if opts.dpop {
            cmd.env("DPOP", "1");
        }
        if opts.mtls {
            cmd.env("MTLS", "1");
        }
        if let Some(path) = &opts.mtls_ca_file {
            cmd.env("MTLS_CA_FILE", path);
        }
        if let Some(path) = &opts.mtls_self_signed_cert {
            cmd.env("MTLS_SELF_SIGNED_CERT", path);
        }
        match opts.refresh_rotation {
            RefreshRotation::ProviderDefault => {}
            RefreshRotation::Always => {
                cmd.env("ROTATE_REFRESH_TOKENS", "always");
            }
            RefreshRotation::Never => {
                cmd.env("ROTATE_REFRESH_TOKENS", "never");
            }
        }

        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run `node` for the test IdP (is Node.js >= 18 installed?): {e}")
        });
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr_pipe = child.stderr.take().expect("child stderr is piped");

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_task = tokio::spawn(forward_stderr(stderr_pipe, Arc::clone(&stderr)));

        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = tokio::time::timeout(STARTUP_TIMEOUT, stdout.read_line(&mut line)).await;
        let port = match read {
            Ok(Ok(n)) if n > 0 => parse_listening_line(&line),
            Ok(Ok(_)) | Ok(Err(_)) => {
                let status = child.wait().await;
                // The pipe closes when the process exits; give the forwarder time to finish.
                let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
                panic!(
                    "the test IdP exited before listening ({status:?}); its stderr:\n{}",
                    stderr.lock().expect("stderr buffer lock").as_str()
                );
            }
            Err(_) => panic!(
                "the test IdP did not print its listening line within {STARTUP_TIMEOUT:?}; \
                 its stderr so far:\n{}",
                stderr.lock().expect("stderr buffer lock").as_str()
            ),
        };
        let port = port.unwrap_or_else(|| {
            panic!("unexpected first line from the test IdP on stdout: {line:?}")
        });
        // Nothing else is expected on stdout; drain it anyway so the child can never block on it.
        tokio::spawn(forward_stdout(stdout));

        let base_url = format!("http://127.0.0.1:{port}");
        let issuer = opts.issuer.clone().unwrap_or_else(|| base_url.clone());
        if std::env::var_os("IDP_LOG_STARTUP").is_some() {
            eprintln!(
                "[idp] listening on {base_url} (issuer {issuer}) after {:?}",
                started.elapsed()
            );
        }
        Idp {
            base_url,
            issuer,
            port,
            child,
            _stdin: stdin,
            stderr,
        }
    }

    /// `base_url` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Everything the IdP wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer lock").clone()
    }

    /// Process id of the node process (for tests that want to kill the IdP).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the IdP now and waits for it to exit.
    pub async fn kill(&mut self) {
        // An error means it already exited.
        let _ = self.child.kill().await;
    }

    /// Requests to the token endpoint seen by the IdP itself, by grant_type (successes and
    /// errors; `unknown` when the request had none), since start or the last reset.
    pub async fn grant_counts(&self) -> HashMap<String, u64> {
        let url = self.url("/__test/grants");
        let resp = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("read /__test/grants body");
        assert!(status.is_success(), "GET {url}: HTTP {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {url}: not a map of counts ({e}): {body}"))
    }

    /// The count for one grant type (0 if never seen).
    pub async fn grant_count(&self, grant_type: &str) -> u64 {
        self.grant_counts()
            .await
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// Every refresh token the IdP issued, oldest first: `{"token","client_id","sub","sid"}`.
    pub async fn refresh_tokens(&self) -> Vec<Value> {
        let url = self.url("/__test/refresh_tokens");
        let resp = http_client()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = resp.text().await.expect("read /__test/refresh_tokens body");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    /// The last refresh token the IdP issued.
    pub async fn last_refresh_token(&self) -> String {
        let tokens = self.refresh_tokens().await;
        let last = tokens.last().expect("the IdP issued a refresh token");
        str_field(last, "token").to_owned()
    }

    /// The next `count` requests to `path` answer `status` without reaching oidc-provider.
    pub async fn fail_next(&self, path: &str, count: u32, status: u16) {
        self.fail_next_after(path, count, status, 0).await;
    }

    /// The next `count` requests to `path` wait `delay_ms`, then answer `status` (0: they go on
    /// to oidc-provider, late).
    pub async fn fail_next_after(&self, path: &str, count: u32, status: u16, delay_ms: u64) {
        let url = self.url("/__test/fail");
        let resp = http_client()
            .post(&url)
            .json(&serde_json::json!({
                "path": path, "count": count, "status": status, "delay": delay_ms
            }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(resp.status(), 204, "POST {url}");
    }

    /// Whether the IdP's own introspection says `token` is active (asked as `rs`).
    pub async fn is_active(&self, token: &str) -> bool {
        introspect(&self.base_url, token).await["active"] == Value::Bool(true)
    }

    /// Waits up to `timeout` for the IdP to say `token` is no longer active.
    pub async fn wait_inactive(&self, token: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_active(token).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Zeroes the token-endpoint counters.
    pub async fn reset_grant_counts(&self) {
        let url = self.url("/__test/grants/reset");
        let resp = http_client()
            .post(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        assert!(
            status.is_success(),
            "POST {url}: HTTP {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// `node`, or the program named by `$NODE` if set.
fn node_binary() -> std::ffi::OsString {
    std::env::var_os("NODE").unwrap_or_else(|| "node".into())
}

fn parse_listening_line(line: &str) -> Option<u16> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    u16::try_from(v.get("listening")?.as_u64()?).ok()
}

async fn forward_stderr(pipe: impl AsyncRead + Unpin, buf: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[idp] {line}");
        let mut buf = buf.lock().expect("stderr buffer lock");
        buf.push_str(&line);
        buf.push('\n');
    }
}

async fn forward_stdout(pipe: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("[idp stdout] {line}");
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (client_secret_basic).
    Basic,
    /// `client_id` and `client_secret` in the form body (client_secret_post).
    Post,
    /// Only `client_id` in the form body (public client).
    None,
}

/// Parameters of [`code_flow`].
#[derive(Debug, Clone)]
pub struct CodeFlow<'a> {
    pub client_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub auth: ClientAuth,
    pub scope: &'a str,
    /// The login name typed into the dev login form; it becomes the token subject.
    pub login: &'a str,
}

impl CodeFlow<'_> {
    /// Client `www` / `Secr3t!` with client_secret_basic, logging in as `alice`.
    pub fn www(scope: &str) -> CodeFlow<'_> {
        CodeFlow {
            client_id: WWW_CLIENT_ID,
            client_secret: Some(WWW_CLIENT_SECRET),
            auth: ClientAuth::Basic,
            scope,
            login: "alice",
        }
    }

    /// The public client `spa` (no secret, PKCE only), logging in as `alice`.
    pub fn spa(scope: &str) -> CodeFlow<'_> {
        CodeFlow {
            client_id: SPA_CLIENT_ID,
            client_secret: None,
            auth: ClientAuth::None,
            scope,
            login: "alice",
        }
    }
}

/// A client that keeps cookies and follows no redirect.
fn browser() -> reqwest::Client {
    client_builder()
        .cookie_store(true)
        .build()
        .expect("build the cookie-keeping HTTP client")
}

/// A plain client (no cookies, no redirects).
fn http_client() -> reqwest::Client {
    client_builder().build().expect("build the HTTP client")
}

/// Follows no redirect. Accepts any TLS certificate: these helpers only talk to servers the tests
/// run on 127.0.0.1, such as a proxy with a self-signed certificate in front of the IdP.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HTTP_TIMEOUT)
        .tls_danger_accept_invalid_certs(true)
}

fn random_b64url(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A PKCE pair: (code_verifier, S256 code_challenge).
pub fn pkce_pair() -> (String, String) {
    let verifier = random_b64url(32);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(digest.as_ref());
    (verifier, challenge)
}

fn trim_base(base: &str) -> &str {
    base.trim_end_matches('/')
}

/// Drives the authorization code flow with PKCE against `base` (the IdP itself, or a proxy in front of it whose URL is the IdP's issuer):
/// GET {base}/auth?... with prompt=consent, follows redirects manually with a cookie jar (redirect policy none), resolving relative Location headers,
/// submits the dev login form (login = opts.login, any password) and the consent form by parsing the form action and hidden inputs from the HTML,
/// until the redirect to the redirect_uri carries `code`; then POSTs {base}/token (authorization_code, code_verifier) with the chosen client auth.
/// Returns the token endpoint's JSON answer (panics with a clear message, including the HTTP status and body, on any unexpected step).
pub async fn code_flow(base: &str, flow: &CodeFlow<'_>) -> Value {
    code_flow_in(&browser(), base, flow).await
}

/// The browser part of [`code_flow`]: returns (code_verifier, authorization code) without
/// redeeming the code.
pub async fn authorize(base: &str, flow: &CodeFlow<'_>) -> (String, String) {
    authorize_at(base, "/auth", true, flow).await
}

/// [`authorize`] at another IdP's authorization endpoint (`{base}{path}`), with or without
/// `prompt=consent` (not every IdP supports it). Login forms may name the login field `login`
/// or `username`; the password typed is `any-password`.
pub async fn authorize_at(
    base: &str,
    path: &str,
    prompt_consent: bool,
    flow: &CodeFlow<'_>,
) -> (String, String) {
    authorize_in(&browser(), base, path, prompt_consent, flow).await
}

/// A cookie-keeping client, to sign in with [`code_flow_in`] and sign out with [`logout_in`]
/// as one browser.
pub fn new_browser() -> reqwest::Client {
    browser()
}

/// [`code_flow`] in `browser`, whose cookies then hold the IdP session.
pub async fn code_flow_in(browser: &reqwest::Client, base: &str, flow: &CodeFlow<'_>) -> Value {
    let base = trim_base(base);
    let (verifier, code) = authorize_in(browser, base, "/auth", true, flow).await;
    let (status, body) = token_request(
        base,
        flow.client_id,
        flow.client_secret,
        flow.auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(
        status, 200,
        "code flow: POST {base}/token (authorization_code, client {}) answered HTTP {status}: {body}",
        flow.client_id
    );
    body
}

/// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) in `browser` at oidc-provider:
/// GET `{base}/session/end` with the ID token as hint, then the confirmation form with
/// `logout=yes`. oidc-provider sends its back-channel logout tokens before it answers.
pub async fn logout_in(browser: &reqwest::Client, base: &str, id_token: &str) {
    let base = trim_base(base);
    let mut url = url::Url::parse(&format!("{base}/session/end")).expect("URL");
    url.query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("post_logout_redirect_uri", REDIRECT_URI);
    let resp = browser
        .get(url.clone())
        .send()
        .await
        .expect("GET /session/end");
    let status = resp.status();
    let body = resp.text().await.expect("logout page");
    assert_eq!(status, 200, "GET {url}: {body}");
    let form = parse_form(&body).unwrap_or_else(|| panic!("no logout form at {url}: {body}"));
    let action = url.join(&form.action).expect("form action");
    let mut fields: Vec<(String, String)> = form
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.value.clone().unwrap_or_default()))
        .collect();
    fields.push(("logout".into(), "yes".into()));
    let resp = browser
        .post(action.clone())
        .form(&fields)
        .send()
        .await
        .expect("POST the logout confirmation");
    assert!(
        resp.status().is_redirection(),
        "POST {action}: HTTP {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
}

/// [`authorize_at`] in a given browser.
pub async fn authorize_in(
    browser: &reqwest::Client,
    base: &str,
    path: &str,
    prompt_consent: bool,
    flow: &CodeFlow<'_>,
) -> (String, String) {
    let base = trim_base(base);
    let (verifier, challenge) = pkce_pair();
    let state = random_b64url(16);

    let mut url = url::Url::parse(&format!("{base}{path}"))
        .unwrap_or_else(|e| panic!("code flow: bad base URL {base:?}: {e}"));
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", flow.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", REDIRECT_URI)
            .append_pair("scope", flow.scope)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        if prompt_consent {
            q.append_pair("prompt", "consent");
        }
        // oidc-provider rejects a nonce in a plain OAuth 2.0 (no `openid`) request.
        if flow.scope.split(' ').any(|s| s == "openid") {
            q.append_pair("nonce", &random_b64url(16));
        }
    }

    let redirect_uri = url::Url::parse(REDIRECT_URI).expect("REDIRECT_URI is a URL");
    let mut req = browser.get(url.clone());
    let mut trail: Vec<String> = Vec::new();
    let trace = std::env::var_os("IDP_TRACE_FLOW").is_some();
    for _ in 0..MAX_FLOW_STEPS {
        trail.push(url.to_string());
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("code flow: request to {url} failed: {e}"));
        let status = resp.status();
        if trace {
            let cookies: Vec<&str> = resp
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            eprintln!(
                "[code flow] {url} -> HTTP {status} location={:?} set-cookie={cookies:?}",
                resp.headers().get(reqwest::header::LOCATION)
            );
        }
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .unwrap_or_else(|| panic!("code flow: HTTP {status} from {url} without Location"))
                .to_str()
                .unwrap_or_else(|e| panic!("code flow: non-ASCII Location from {url}: {e}"))
                .to_owned();
            let next = url
                .join(&location)
                .unwrap_or_else(|e| panic!("code flow: bad Location {location:?} from {url}: {e}"));
            if is_redirect_uri(&next, &redirect_uri) {
                let params: HashMap<String, String> = next.query_pairs().into_owned().collect();
                if let Some(error) = params.get("error") {
                    panic!(
                        "code flow: authorization error {error:?} ({:?}) redirected to {next}; steps: {trail:#?}",
                        params.get("error_description")
                    );
                }
                let code = params.get("code").unwrap_or_else(|| {
                    panic!("code flow: redirect to the redirect_uri without code: {next}")
                });
                assert_eq!(
                    params.get("state"),
                    Some(&state),
                    "code flow: state mismatch in {next}"
                );
                return (verifier, code.clone());
            }
            url = next;
            req = browser.get(url.clone());
            continue;
        }

        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("code flow: reading the body from {url}: {e}"));
        if status != reqwest::StatusCode::OK {
            panic!("code flow: HTTP {status} from {url}: {body}\nsteps: {trail:#?}");
        }
        let form = parse_form(&body).unwrap_or_else(|| {
            panic!("code flow: HTTP 200 from {url} has no form to submit: {body}")
        });
        assert!(
            form.method.eq_ignore_ascii_case("post"),
            "code flow: unexpected form method {:?} at {url}: {body}",
            form.method
        );
        let action = url.join(&form.action).unwrap_or_else(|e| {
            panic!("code flow: bad form action {:?} at {url}: {e}", form.action)
        });
        let mut fields: Vec<(String, String)> = Vec::new();
        for input in &form.inputs {
            let value = match (input.kind.as_str(), input.name.as_str()) {
                (_, "login" | "username") => flow.login.to_owned(),
                ("password", _) => "any-password".to_owned(),
                _ => input.value.clone().unwrap_or_default(),
            };
            fields.push((input.name.clone(), value));
        }
        url = action;
        req = browser.post(url.clone()).form(&fields);
    }
    panic!("code flow: no authorization code after {MAX_FLOW_STEPS} steps: {trail:#?}");
}

fn is_redirect_uri(candidate: &url::Url, redirect_uri: &url::Url) -> bool {
    candidate.scheme() == redirect_uri.scheme()
        && candidate.host_str() == redirect_uri.host_str()
        && candidate.port_or_known_default() == redirect_uri.port_or_known_default()
        && candidate.path() == redirect_uri.path()
}

#[derive(Debug)]
struct HtmlForm {
    action: String,
    method: String,
    inputs: Vec<HtmlInput>,
}

#[derive(Debug)]
struct HtmlInput {
    name: String,
    kind: String,
    value: Option<String>,
}

/// The first `<form>` of a page with its named `<input>`s. Just enough HTML for oidc-provider's
/// development login and consent pages.
fn parse_form(html: &str) -> Option<HtmlForm> {
    let lower = html.to_ascii_lowercase();
    let start = lower.find("<form")?;
    let tag_end = start + lower[start..].find('>')?;
    let attrs = parse_attrs(&html[start + "<form".len()..tag_end]);
    let end = lower[tag_end..]
        .find("</form")
        .map_or(html.len(), |i| tag_end + i);
    let mut inputs = Vec::new();
    let mut pos = tag_end;
    while let Some(i) = lower[pos..end].find("<input") {
        let open = pos + i + "<input".len();
        let close = open + lower[open..end].find('>')?;
        let a = parse_attrs(&html[open..close]);
        if let Some(name) = a.get("name") {
            inputs.push(HtmlInput {
                name: name.clone(),
                kind: a
                    .get("type")
                    .map_or_else(|| "text".to_owned(), |t| t.to_ascii_lowercase()),
                value: a.get("value").cloned(),
            });
        }
        pos = close;
    }
    Some(HtmlForm {
        action: attrs.get("action").cloned().unwrap_or_default(),
        method: attrs
            .get("method")
            .cloned()
            .unwrap_or_else(|| "get".to_owned()),
        inputs,
    })
}

/// Attributes of a tag (the text between the tag name and `>`): names lower-cased, values
/// unquoted and entity-decoded; bare attributes get an empty value.
fn parse_attrs(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if name_start == i {
            break;
        }
        let name = s[name_start..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let quote = b[i];
                i += 1;
                let v_start = i;
                while i < b.len() && b[i] != quote {
                    i += 1;
                }
                value = decode_entities(&s[v_start..i]);
                i += 1;
            } else {
                let v_start = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode_entities(&s[v_start..i]);
            }
        }
        out.entry(name).or_insert(value);
    }
    out
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn form_urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `Authorization` header value of client_secret_basic (RFC 6749 section 2.3.1: id and
/// secret are form-urlencoded before base64).
pub fn basic_auth_header(client_id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_urlencode(client_id), form_urlencode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}

/// POSTs `params` to `{base}/token` with the given client authentication; returns the HTTP status
/// and the JSON body (panics if the body is not JSON).
pub async fn token_request(
    base: &str,
    client_id: &str,
    client_secret: Option<&str>,
    auth: ClientAuth,
    params: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}/token", trim_base(base));
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut req = http_client().post(&url);
    match auth {
        ClientAuth::Basic => {
            let secret = client_secret.unwrap_or_else(|| {
                panic!("ClientAuth::Basic needs a client secret (client {client_id})")
            });
            req = req.header(
                reqwest::header::AUTHORIZATION,
                basic_auth_header(client_id, secret),
            );
        }
        ClientAuth::Post => {
            let secret = client_secret.unwrap_or_else(|| {
                panic!("ClientAuth::Post needs a client secret (client {client_id})")
            });
            form.push(("client_id", client_id));
            form.push(("client_secret", secret));
        }
        ClientAuth::None => form.push(("client_id", client_id)),
    }
    post_form_json(req.form(&form), &url).await
}

async fn post_form_json(req: reqwest::RequestBuilder, url: &str) -> (u16, Value) {
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("POST {url}: HTTP {status}, body is not JSON ({e}): {body}"));
    (status, json)
}

/// client_credentials grant with client_secret_basic; panics unless HTTP 200.
pub async fn client_credentials(base: &str, client_id: &str, secret: &str, scope: &str) -> Value {
    let mut params = vec![("grant_type", "client_credentials")];
    if !scope.is_empty() {
        params.push(("scope", scope));
    }
    let (status, body) =
        token_request(base, client_id, Some(secret), ClientAuth::Basic, &params).await;
    assert_eq!(
        status,
        200,
        "POST {}/token (client_credentials, client {client_id}) answered HTTP {status}: {body}",
        trim_base(base)
    );
    body
}

/// POST {base}/token grant_type=refresh_token with Basic auth (id and secret form-urlencoded before base64); returns (status, json)
pub async fn refresh(
    base: &str,
    client_id: &str,
    secret: &str,
    refresh_token: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    refresh_with(
        base,
        client_id,
        Some(secret),
        ClientAuth::Basic,
        refresh_token,
        scope,
    )
    .await
}

/// Like [`refresh`] with any client authentication (e.g. `ClientAuth::None` for `spa`).
pub async fn refresh_with(
    base: &str,
    client_id: &str,
    client_secret: Option<&str>,
    auth: ClientAuth,
    refresh_token: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut params = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    if let Some(scope) = scope {
        params.push(("scope", scope));
    }
    token_request(base, client_id, client_secret, auth, &params).await
}

/// Token introspection (RFC 7662) at `{base}/token/introspection` as the resource server `rs`;
/// panics unless HTTP 200. Inactive tokens answer `{"active":false}`.
pub async fn introspect(base: &str, token: &str) -> Value {
    let url = format!("{}/token/introspection", trim_base(base));
    let req = http_client()
        .post(&url)
        .header(
            reqwest::header::AUTHORIZATION,
            basic_auth_header(RS_CLIENT_ID, RS_CLIENT_SECRET),
        )
        .form(&[("token", token)]);
    let (status, body) = post_form_json(req, &url).await;
    assert_eq!(status, 200, "POST {url} answered HTTP {status}: {body}");
    body
}

/// Token revocation (RFC 7009) at `{base}/token/revocation` with client_secret_basic; returns
/// the HTTP status (200 whether or not the token was known).
pub async fn revoke(base: &str, client_id: &str, secret: &str, token: &str) -> u16 {
    let url = format!("{}/token/revocation", trim_base(base));
    let resp = http_client()
        .post(&url)
        .header(
            reqwest::header::AUTHORIZATION,
            basic_auth_header(client_id, secret),
        )
        .form(&[("token", token)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"));
    resp.status().as_u16()
}

/// GET `{base}/.well-known/openid-configuration`; panics unless HTTP 200 with JSON.
pub async fn discovery(base: &str) -> Value {
    let url = format!("{}/.well-known/openid-configuration", trim_base(base));
    let resp = http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    let status = resp.status();
    let body = resp.text().await.expect("read the discovery document");
    assert!(status.is_success(), "GET {url}: HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Decodes one part of a compact JWS without checking anything: 0 = header, 1 = claims.
pub fn jwt_part(token: &str, index: usize) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[index])
        .unwrap_or_else(|e| panic!("JWT part {index} is not base64url ({e}): {token}"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("JWT part {index} is not JSON ({e}): {token}"))
}

/// The header of a JWT (not verified).
pub fn jwt_header(token: &str) -> Value {
    jwt_part(token, 0)
}

/// The claims of a JWT (not verified).
pub fn jwt_claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// A string field of a JSON object, or a panic naming it.
pub fn str_field<'v>(v: &'v Value, name: &str) -> &'v str {
    v.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {name:?} in {v}"))
}
