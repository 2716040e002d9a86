//! An independent JOSE implementation for checking the proxy's JWTs: Node's `jose` (v5, in
//! tests/idp/node_modules as a dependency of oidc-provider), driven through
//! tests/idp/verify-jwt.mjs. A token that `jose` accepts is one real relying parties accept.
//!
//! `NODE` names the node binary (default: `node` from `PATH`), as for [`super::idp`].

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long one verification (node start-up, JWKS fetch, verify) may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Verifies `token` against the JWK Set served at `jwks_url`, checking `iss` when `issuer` is
/// given. Returns `{"header": …, "payload": …, "thumbprint": …}` (the thumbprint is `jose`'s RFC
/// 7638 thumbprint of the key that verified the token), or the script's stderr on failure, e.g.
/// `ERR_JWS_SIGNATURE_VERIFICATION_FAILED: signature verification failed`.
pub async fn verify_with_node_jose(
    jwks_url: &str,
    token: &str,
    issuer: Option<&str>,
) -> Result<serde_json::Value, String> {
    let idp_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let mut cmd = Command::new(node);
    cmd.arg(idp_dir.join("verify-jwt.mjs"))
        .arg(jwks_url)
        .arg(token)
        .args(issuer)
        .current_dir(&idp_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("verify-jwt.mjs took longer than {TIMEOUT:?}"))?
        .map_err(|e| format!("cannot run node: {e}"))?;
    if output.status.success() {
        serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "verify-jwt.mjs printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}
