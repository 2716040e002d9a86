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

/// A DPoP key held by the test client, whose proofs `jose` makes (tests/idp/dpop-proofs.mjs).
#[derive(Debug, Clone)]
pub struct DpopKey {
    /// The private JWK, as `jose` exported it.
    jwk: serde_json::Value,
    /// `jose`'s RFC 7638 thumbprint of the public key.
    pub jkt: String,
}

/// What one proof says; [`DpopKey::proofs`] fills in the rest (`htm` POST, `iat` now, a
/// random `jti`, `typ` dpop+jwt).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProofClaims {
    pub htu: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

impl ProofClaims {
    pub fn to(htu: &str) -> ProofClaims {
        ProofClaims {
            htu: htu.to_owned(),
            ..ProofClaims::default()
        }
    }
}

impl DpopKey {
    /// A new key of `alg` (ES256, RS256, EdDSA, …).
    pub async fn new(alg: &str) -> DpopKey {
        let (key, _) =
            dpop_proofs(serde_json::json!({"key": null, "alg": alg, "proofs": []})).await;
        key
    }

    /// One proof for each of `claims`, signed with this key.
    pub async fn proofs(&self, claims: &[ProofClaims]) -> Vec<String> {
        let (_, proofs) = dpop_proofs(serde_json::json!({"key": self.jwk, "proofs": claims})).await;
        proofs
    }

    /// A proof of a POST to `htu`.
    pub async fn proof(&self, htu: &str) -> String {
        self.proofs(&[ProofClaims::to(htu)]).await.remove(0)
    }
}

async fn dpop_proofs(request: serde_json::Value) -> (DpopKey, Vec<String>) {
    use tokio::io::AsyncWriteExt as _;
    let idp_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp");
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let mut child = Command::new(node)
        .arg(idp_dir.join("dpop-proofs.mjs"))
        .current_dir(&idp_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .expect("write the request");
    drop(stdin);
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("dpop-proofs.mjs in time")
        .expect("dpop-proofs.mjs ran");
    assert!(
        output.status.success(),
        "dpop-proofs.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("dpop-proofs.mjs printed JSON");
    let key = DpopKey {
        jwk: answer["key"].clone(),
        jkt: answer["jkt"].as_str().expect("jkt").to_owned(),
    };
    let proofs = answer["proofs"]
        .as_array()
        .expect("proofs")
        .iter()
        .map(|p| p.as_str().expect("a proof").to_owned())
        .collect();
    (key, proofs)
}
