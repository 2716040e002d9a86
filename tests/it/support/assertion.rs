//! Client assertions (RFC 7523 §2.2) made by Node's `jose` through
//! tests/idp/client-assertion.mjs, never by the proxy's code; the test-only client keys are in
//! tests/idp/test-client-keys.json (the IdP registers their public halves).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

/// `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn idp_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

/// One assertion per spec (see tests/idp/client-assertion.mjs for the fields).
pub async fn make(specs: &[Value]) -> Vec<String> {
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let mut cmd = Command::new(node);
    cmd.arg(idp_dir().join("client-assertion.mjs"))
        .arg(Value::Array(specs.to_vec()).to_string())
        .current_dir(idp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("client-assertion.mjs in time")
        .expect("run node");
    assert!(
        out.status.success(),
        "client-assertion.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), specs.len());
    lines
}

/// One assertion.
pub async fn one(spec: Value) -> String {
    make(&[spec]).await.remove(0)
}

/// A JWK Set of the public halves of the named test keys.
pub fn public_jwks(names: &[&str]) -> Value {
    let text = std::fs::read_to_string(idp_dir().join("test-client-keys.json")).expect("keys");
    let all: Value = serde_json::from_str(&text).expect("json");
    let keys: Vec<Value> = names
        .iter()
        .map(|n| {
            let mut k = all[*n].clone();
            let o = k.as_object_mut().expect("a JWK");
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                o.remove(private);
            }
            k
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// The form fields of an assertion.
pub fn fields(assertion: &str) -> [(&'static str, String); 2] {
    [
        ("client_assertion_type", JWT_BEARER.to_owned()),
        ("client_assertion", assertion.to_owned()),
    ]
}
