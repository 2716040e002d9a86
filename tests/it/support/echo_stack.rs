//! The proxy in front of a recording echo upstream (`discovery = false`, token path `/token`),
//! with its admin API on: the rig of the hostile-input and connection-limit tests. Clients:
//! `www` (may be issued families) and `rs` (may introspect), both with [`SECRET`].

use super::echo::EchoServer;
use super::proxy::TestProxy;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
pub const SECRET: &str = "Secr3t!";

pub struct EchoStack {
    pub proxy: TestProxy,
    pub echo: EchoServer,
    /// `127.0.0.1:<port>` of the proxy port, for raw sockets.
    pub addr: String,
}

impl EchoStack {
    /// The proxy with `server` keys added to its `[server]` table.
    pub async fn start(server: &str) -> EchoStack {
        let echo = EchoServer::start_recording().await;
        let text = format!(
            "[server]\n{server}\n\
             [tokens]\nrefresh_token_key = \"{key}\"\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
             [clients.rs]\nsecret = \"{SECRET}\"\nmay_introspect = true\n\
             [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation_path = \"/revoke\"\nintrospection_path = \"/introspect\"\n",
            key = super::TEST_REFRESH_KEY,
            up = echo.url(),
        );
        let proxy = TestProxy::start(&text).await;
        proxy.wait_ready().await;
        let addr = format!("127.0.0.1:{}", proxy.port);
        EchoStack { proxy, echo, addr }
    }

    /// `count` families of `www` for `alice`, through the admin API; their first tokens.
    pub async fn issue(&self, count: u64) -> Vec<String> {
        super::proxy::issue(
            &self.proxy.admin_url,
            ISSUE_TOKEN,
            serde_json::json!({"client_id": "www", "subject": "alice", "count": count}),
        )
        .await
    }
}
