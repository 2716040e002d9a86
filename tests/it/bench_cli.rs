//! `refresh-bench` as a user runs it: the progress line only on a terminal, and `--report`.

use crate::support::echo::EchoServer;

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_refresh-bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_only_on_a_terminal_and_a_report_file() {
    let echo = EchoServer::start().await;
    let url = format!("http://{}/get", echo.addr);
    let dir = crate::support::temp_dir("bench-cli");
    let report = dir.join("report.html");

    // stderr a pipe: no progress line, nothing on stderr at all.
    let out = tokio::process::Command::new(bench())
        .args([
            "--url",
            &url,
            "--get",
            "--connections",
            "2",
            "--threads",
            "1",
        ])
        .args(["--duration", "1.5", "--report"])
        .arg(&report)
        .output()
        .await
        .expect("run refresh-bench");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{:?}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("refresh-bench: GET to "));

    let html = std::fs::read_to_string(&report).expect("the report");
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Two seconds (1.5 s): a point each on the throughput line, and the histogram's bars.
    let ok_line = html
        .split(r#"data-series="200 answers per second""#)
        .nth(1)
        .expect("the throughput line");
    let points = ok_line
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .expect("points");
    assert_eq!(points.split(' ').count(), 2, "{points}");
    assert!(html.contains(r#"<rect class="bar""#));
    assert!(!html.contains("<script"));

    // On a terminal (a pseudo-terminal made by `script`): the line is redrawn and erased
    // before the summary.
    let command = format!(
        "{} --url {url} --get --connections 2 --threads 1 --duration 1.2",
        bench()
    );
    let transcript = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .await
        .expect("run script (util-linux)");
    let shown = text(&transcript.stdout);
    assert!(transcript.status.success(), "{shown}");
    assert!(
        shown.matches(" s of 1.2 s  ").count() >= 3,
        "a line every 250 ms: {shown:?}"
    );
    assert!(shown.contains(" req/s  0 errors"), "{shown:?}");
    assert!(
        shown.contains("\x1b[2Krefresh-bench: GET to "),
        "the line is erased before the summary: {shown:?}"
    );
}
