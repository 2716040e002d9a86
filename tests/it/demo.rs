//! `bash scripts/demo`, the README's first command, run end to end as a newcomer would: the
//! bundled IdP and the proxy started by the script, the code flow and the refreshes with curl,
//! and everything stopped afterwards. The script is given the binary built for the tests
//! (`DEMO_PROXY_BIN`) instead of building a release one, and a `TMPDIR` of its own, so the test
//! can see that its temp dir is gone. Needs node, npm (tests/idp's packages, which the script
//! installs when missing) and curl, like the script.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one run of the demo may take before the test gives up (it takes a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The `TMPDIR` the script ran with.
    tmpdir: PathBuf,
}

impl Run {
    fn output(&self) -> String {
        format!(
            "exit status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The pid the script printed after `marker` (`"pid "` for the IdP, `"(pid "` for the
    /// proxy, on the lines that start with `IdP:` and `proxy:`).
    fn pid(&self, line_start: &str, marker: &str) -> u32 {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no line starting with {line_start:?}\n{}", self.output()));
        let at = line.find(marker).expect("the pid marker") + marker.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"))
    }

    fn idp_pid(&self) -> u32 {
        self.pid("IdP:", "pid ")
    }

    fn proxy_pid(&self) -> u32 {
        self.pid("proxy:", "(pid ")
    }

    /// The IdP and the proxy have exited, and the script's temp dir is gone.
    fn assert_cleaned_up(&self) {
        for (what, pid) in [("IdP", self.idp_pid()), ("proxy", self.proxy_pid())] {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "the {what} (pid {pid}) is still running after the demo ended\n{}",
                self.output()
            );
        }
        let left: Vec<_> = std::fs::read_dir(&self.tmpdir)
            .expect("read TMPDIR")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "the demo left {left:?} in its TMPDIR\n{}",
            self.output()
        );
        let _ = std::fs::remove_dir_all(&self.tmpdir);
    }
}

/// Runs `bash scripts/demo` with `DEMO_PROXY_BIN=proxy_bin`; when `interrupt_at` is given,
/// sends SIGINT (Ctrl-C) to the script once it printed a line containing it.
fn run_demo(proxy_bin: &Path, interrupt_at: Option<&str>) -> Run {
    let tmpdir = crate::support::temp_dir("demo-tmpdir");
    let mut child = Command::new("bash")
        .arg("scripts/demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DEMO_PROXY_BIN", proxy_bin)
        .env("TMPDIR", &tmpdir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash scripts/demo");

    let (lines_tx, lines_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stdout_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = lines_tx.send(line);
        }
        all
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });

    let deadline = Instant::now() + RUN_TIMEOUT;
    if let Some(marker) = interrupt_at {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) if line.contains(marker) => break,
                Ok(_) => {}
                Err(_) => {
                    signal(child.id(), "TERM");
                    let _ = child.wait();
                    panic!(
                        "the demo never printed {marker:?}; stdout:\n{}\nstderr:\n{}",
                        stdout_reader.join().expect("stdout reader"),
                        stderr_reader.join().expect("stderr reader")
                    );
                }
            }
        }
        signal(child.id(), "INT");
    }

    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // SIGTERM, so that the script's trap stops what it started.
            signal(child.id(), "TERM");
            let _ = child.wait();
            panic!(
                "the demo did not end within {RUN_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                stdout_reader.join().expect("stdout reader"),
                stderr_reader.join().expect("stderr reader")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: stdout_reader.join().expect("stdout reader"),
        stderr: stderr_reader.join().expect("stderr reader"),
        tmpdir,
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A stand-in for the proxy binary: a shell script in a temp dir of its own, removed on drop.
struct FakeProxy {
    path: PathBuf,
}

impl FakeProxy {
    fn new(name: &str, script: &str) -> FakeProxy {
        let path = crate::support::temp_dir("demo-bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write the fake proxy");
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&path)
            .status()
            .expect("chmod");
        assert!(status.success());
        FakeProxy { path }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn the_demo_shows_capture_rotation_grace_narrowing_and_reuse_then_cleans_up() {
    let run = run_demo(Path::new(crate::support::proxy::binary()), None);
    assert!(run.status.success(), "the demo failed\n{}", run.output());
    let out = &run.stdout;
    for fact in [
        // The code exchange: the IdP's answer, with the proxy's refresh token (generation 0).
        "✔ the refresh token is the proxy's: family ",
        // A refresh: rotation, then the grace window's retry gets the same successor.
        "✔ a new refresh token: same family, generation 1",
        "✔ the same refresh token as in step 4 (generation 1), not a new branch",
        // Narrowing, in the answer and in the minted access token's claims.
        "\"scope\": \"read profile\"",
        "✔ so is the new access token's",
        "\"error\": \"invalid_scope\"",
        // Reuse: invalid_grant, and then the latest token fails too.
        "✔ HTTP 400 invalid_grant\n",
        "✔ HTTP 400 invalid_grant, with the same body as any invalid token (no oracle)",
        "\"error_description\": \"the refresh token is invalid, expired or revoked\"",
        "\"active\": false",
        // The metrics and the log line, and the IdP never saw a refresh grant.
        "refresh_proxy_reuse_detections_total 1\n",
        "\"security_event\": \"refresh_token_reuse\"",
        "\"authorization_code\": 1\n}",
        "demo: every step showed what it claims",
        "stopped the proxy and the IdP, removed the temp dir",
    ] {
        assert!(out.contains(fact), "{fact:?} is not in\n{}", run.output());
    }
    // Every request is printed as a curl command line before its answer.
    assert!(
        out.contains("$ curl -sS http://127.0.0.1:")
            && out.contains("    -d grant_type=refresh_token \\\n"),
        "{}",
        run.output()
    );
    run.assert_cleaned_up();
}

#[test]
fn ctrl_c_stops_the_idp_and_the_proxy_and_removes_the_temp_dir() {
    // A "proxy" that never gets ready, so the script is surely still running when Ctrl-C comes.
    let never_ready = FakeProxy::new("never-ready", "exec sleep 600");
    let run = run_demo(&never_ready.path, Some("waiting for the proxy's /readyz"));
    assert_eq!(run.status.code(), Some(130), "{}", run.output());
    assert!(run.stderr.contains("demo: interrupted"), "{}", run.output());
    run.assert_cleaned_up();
}

#[test]
fn a_proxy_that_exits_fails_the_demo_and_stops_the_idp() {
    let exits = FakeProxy::new("exits", "echo 'config error: no luck' >&2; exit 3");
    let run = run_demo(&exits.path, None);
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(
        run.stderr.contains("demo: FAILED: the proxy exited")
            && run.stderr.contains("config error: no luck"),
        "the failure and the proxy's own words are shown\n{}",
        run.output()
    );
    run.assert_cleaned_up();
}

#[test]
fn the_demo_fails_when_the_proxy_does_not_do_its_job() {
    // The real proxy, with the demo's config changed so that it does not handle `www`: the
    // code exchange then carries the IdP's own refresh token, and the demo must say so and fail
    // rather than print its story anyway.
    let unhandled = FakeProxy::new(
        "www-not-handled",
        &format!(
            "sed -i 's/^\\[clients.www\\]$/[clients.not-www]/' \"$2\"\nexec '{}' \"$@\"",
            crate::support::proxy::binary()
        ),
    );
    let run = run_demo(&unhandled.path, None);
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(
        run.stderr
            .contains("demo: FAILED: the refresh token is the proxy's"),
        "{}",
        run.output()
    );
    assert!(
        !run.stdout.contains("every step showed what it claims"),
        "{}",
        run.output()
    );
    run.assert_cleaned_up();
}
