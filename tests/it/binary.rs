//! The real `refresh-proxy` binary: `check-config`, the quickstart config, signals, memory.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::echo::{EchoServer, Seen, hex};
use crate::support::proxy::{ProxyProcess, binary, config};
use aws_lc_rs::digest;
use futures_util::StreamExt;

fn repo_config() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

fn check_config(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = crate::support::temp_dir("check");
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_quickstart_config_is_valid() {
    let out = Command::new(binary())
        .args(["check-config", "--config"])
        .arg(repo_config())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_key_and_exits_1() {
    for (text, env, expected) in [
        (
            config("http://x", "[server]\nlisten_addr = 1\n"),
            vec![],
            "server.listen_addr: unknown field",
        ),
        (
            config("http://x", "[server]\nlisten = \"nope\"\n"),
            vec![],
            "server.listen:",
        ),
        (config("ftp://x", ""), vec![], "upstream.url:"),
        (
            config(
                "http://x",
                "[clients.www]\nsecret_file = \"/does/not/exist\"\n",
            ),
            vec![],
            "clients.www.secret_file: cannot read",
        ),
        (
            config(
                "http://x",
                "[server]\ntls_cert_file = \"/nope.pem\"\ntls_key_file = \"/nope.pem\"\n",
            ),
            vec![],
            "server.tls_cert_file:",
        ),
        (
            config("http://x", ""),
            vec![("REFRESH_PROXY_STORE__URL", "mongodb://x")],
            "store.url:",
        ),
        (
            config("http://x", ""),
            vec![("REFRESH_PROXY_NOSECTION", "1")],
            "REFRESH_PROXY_NOSECTION",
        ),
        ("[upstream\n".to_owned(), vec![], "config.toml:"),
    ] {
        let (code, _, stderr) = check_config(&text, &env);
        assert_eq!(code, 1, "{text}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text}: expected {expected:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = Command::new(binary())
        .args(["check-config", "--config", "/no/such/config.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn check_config_accepts_a_redis_store() {
    let (code, stdout, stderr) = check_config(
        &config(
            "http://x",
            "[store]\nurl = \"redis://127.0.0.1:1\"\n[tokens]\nrefresh_token_key = \"0123456789abcdef0123456789abcdef\"\n",
        ),
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = check_config(
        &config("http://x", "[store]\nurl = \"redis://127.0.0.1:1\"\n"),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("tokens.refresh_token_key: required with a redis store"),
        "{stderr}"
    );
}

#[test]
fn env_overrides_reach_the_binary() {
    let (code, stdout, stderr) = check_config(
        &config("http://x", ""),
        &[("REFRESH_PROXY_SERVER__MAX_BODY_BYTES", "512")],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("server.max_body_bytes: must be at least 1024"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_quickstart_config_serves_and_forwards() {
    let echo = EchoServer::start().await;
    let url = echo.url();
    let proxy = ProxyProcess::spawn_with(repo_config(), &[("REFRESH_PROXY_UPSTREAM__URL", &url)]);
    proxy.wait_ready().await;
    let seen: Seen = reqwest::get(format!("{}/hello?x=1", proxy.url))
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(seen.target, "/hello?x=1");
}

#[tokio::test]
async fn sigterm_finishes_the_in_flight_request_and_exits_0() {
    let echo = EchoServer::start().await;
    let mut proxy = ProxyProcess::spawn(&format!(
        "[server]\ndrain_delay = 0.3\nshutdown_timeout = 10\n{}",
        config(&echo.url(), "")
    ));
    proxy.wait_ready().await;
    let slow = tokio::spawn(reqwest::get(format!("{}/slow?ms=1500", proxy.url)));
    echo.slow_arrived(1).await;
    let started = Instant::now();
    proxy.signal("TERM");
    let res = slow
        .await
        .expect("join")
        .expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.expect("body"), "slow answer");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

const FIFTY_MB: u64 = 50 * 1024 * 1024;

#[tokio::test]
async fn fifty_megabytes_stream_each_way_without_being_held_in_memory() {
    let echo = EchoServer::start().await;
    let proxy = ProxyProcess::spawn(&config(&echo.url(), ""));
    proxy.wait_ready().await;
    let baseline = proxy.peak_rss_kib();
    let client = reqwest::Client::new();

    // Upload: the upstream hashes what arrives.
    let mut expected = digest::Context::new(&digest::SHA256);
    let chunk = vec![7u8; 1024 * 1024];
    for _ in 0..50 {
        expected.update(&chunk);
    }
    let stream = futures_util::stream::iter(
        (0..50).map(move |_| Ok::<_, std::io::Error>(vec![7u8; 1024 * 1024])),
    );
    let seen: Seen = client
        .post(format!("{}/upload", proxy.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    assert_eq!(seen.body_len, FIFTY_MB);
    assert_eq!(seen.body_sha256, hex(expected.finish().as_ref()));

    // Download: generated by the upstream, hashed here as it streams.
    let res = client
        .get(format!("{}/download?bytes={FIFTY_MB}", proxy.url))
        .send()
        .await
        .expect("download");
    let mut stream = res.bytes_stream();
    let (mut got, mut i) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        for b in chunk.iter() {
            assert_eq!(*b, (i % 251) as u8, "byte {i}");
            i += 1;
        }
        got += chunk.len() as u64;
    }
    assert_eq!(got, FIFTY_MB);

    let peak = proxy.peak_rss_kib();
    assert!(
        peak < baseline + 20 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB while streaming 2 x 50 MB"
    );
}

/// Text logs written to a file or a pipe carry no terminal colour codes (ANSI escapes): a log
/// collector would store them as noise. They are for terminals only.
#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let echo = EchoServer::start().await;
    let dir = crate::support::temp_dir("text-logs");
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[log]\nformat = \"text\"\nlevel = \"info\"\n{}",
            config(&echo.url(), "")
        ),
    )
    .expect("write config");
    let log_path = dir.join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut proxy =
        ProxyProcess::spawn_full(config_path, &[], crate::support::free_port(), log.into());
    proxy.wait_ready().await;
    let res = reqwest::get(format!("{}/hello", proxy.url))
        .await
        .expect("forwarded");
    assert_eq!(res.status(), 200);
    proxy.signal("TERM");
    proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    let text = std::fs::read_to_string(&log_path).expect("read log");
    assert!(text.contains("/hello"), "the request's log line: {text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
