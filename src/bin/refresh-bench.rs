//! `refresh-bench`: a refresh-chain load generator for OAuth 2.0 token endpoints.
//!
//! Each keep-alive HTTP/1.1 connection carries its own refresh-token chain: every request
//! presents the refresh token of the previous answer (RFC 6749 §6), so a rotating server sees
//! exactly the traffic of N clients that each refresh as fast as they can (closed loop) or on a
//! fixed schedule (open loop). It works against any token endpoint: refresh-proxy, the IdP
//! behind it, or anything else that answers `grant_type=refresh_token`.
//!
//! ```text
//! refresh-bench --url http://127.0.0.1:8080/token --client-id bench --client-secret s3cret \
//!     --tokens tokens.txt --connections 64 --duration 10            # closed loop
//! refresh-bench ... --rate 8000                                       # open loop, 8000 req/s
//! refresh-bench --url http://127.0.0.1:8081/ --get --rate 8000        # plain GETs, same clock
//! ```
//!
//! # Layout
//!
//! - this file: arguments, the run, the exit status.
//! - `target`: the endpoint (URL, address, `Host`) and the request bodies and headers.
//! - `chains`: the token chains read from the file (one per connection, the rest spares) and
//!   the tokens written back with `--save-tokens`.
//! - `load`: the connections, closed- and open-loop schedules, per-connection statistics.
//! - `report`: merged statistics, the human summary and the JSON document.
//! - `timeline`: per-second answers, errors and latency buckets, kept for `--report`.
//! - `html`: the `--report` page, with its SVG charts.
//! - `progress`: the progress line redrawn on stderr when it is a terminal.
//!
//! # What is measured
//!
//! Latency goes into HDR histograms (1 µs to 60 s, 3 significant digits). In closed-loop mode it
//! runs from the send to the end of the answer's body. In open-loop mode (`--rate`) a request
//! that could not be sent at its intended time, because its connection's previous answer came
//! later than that, is measured from the *intended* time, so a server that falls behind shows
//! its queueing instead of slowing the generator down (no coordinated omission); a request sent
//! on time is measured from its actual send, so the timer's lateness (tokio's timer has a 1 ms
//! granularity) is not counted against the server. The time from the actual send is reported
//! beside it as the service time. Requests whose start (intended or actual) falls in the
//! measured window (after `--warmup`) are counted, and all of them are awaited.
//!
//! Caveats: one request is in flight per connection in both modes (a chain cannot send its
//! next token before it has it), so an open-loop rate needs enough connections (a connection
//! that falls behind sends at once and the lateness shows in its latency); sends are released
//! on tokio's 1 ms timer ticks, so every request due within the same millisecond leaves in one
//! small burst.

// A crate root finds its modules beside it; these live in `src/bin/refresh-bench/`.
#[path = "refresh-bench/chains.rs"]
mod chains;
#[path = "refresh-bench/html.rs"]
mod html;
#[path = "refresh-bench/load.rs"]
mod load;
#[path = "refresh-bench/phases.rs"]
mod phases;
#[path = "refresh-bench/progress.rs"]
mod progress;
#[path = "refresh-bench/report.rs"]
mod report;
#[path = "refresh-bench/target.rs"]
mod target;
#[path = "refresh-bench/timeline.rs"]
mod timeline;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::chains::ChainPool;
use crate::load::Plan;
use crate::target::{ClientAuth, Mode, Target};

/// Refresh-chain load generator: N keep-alive connections, each rotating its own refresh-token
/// chain, closed-loop or at a fixed rate; HDR latencies and non-200 answers by OAuth error.
#[derive(Debug, Parser)]
#[command(name = "refresh-bench", version)]
struct Args {
    /// Token endpoint (or, with --get, any URL); http only, e.g. http://127.0.0.1:8080/token
    #[arg(long)]
    url: String,
    /// Client id; with --client-secret sent as HTTP Basic (RFC 6749 §2.3.1), without it sent in
    /// the body (public client)
    #[arg(long)]
    client_id: Option<String>,
    /// Client secret for HTTP Basic authentication
    #[arg(long, requires = "client_id")]
    client_secret: Option<String>,
    /// File of refresh tokens, one per line (as `refresh-proxy issue --out FILE` writes them):
    /// connection i starts with line i, the lines beyond --connections replace chains that die
    #[arg(long, required_unless_present = "get")]
    tokens: Option<PathBuf>,
    /// Write every chain's last refresh token (and the unused spares) here at the end, so a
    /// later run continues the chains; may be the --tokens file itself
    #[arg(long)]
    save_tokens: Option<PathBuf>,
    /// `scope` parameter sent with every refresh (default: none, the current scope)
    #[arg(long)]
    scope: Option<String>,
    /// Keep-alive connections, each with one request in flight and its own chain
    #[arg(short, long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured, after the warm-up
    #[arg(short, long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the measured window (not counted)
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Open loop: requests per second in total, spread evenly over the connections; latency is
    /// measured from each request's intended send time. Without it: closed loop
    #[arg(short = 'R', long)]
    rate: Option<f64>,
    /// Plain `GET <url>` requests instead of refresh grants (a baseline on the same clock)
    #[arg(long, conflicts_with_all = ["tokens", "client_id", "scope", "save_tokens"])]
    get: bool,
    /// Seconds before a request without an answer counts as a timeout (the connection is
    /// then replaced and the chain's token presented again)
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Threads, each an event loop owning its share of the connections, as wrk's are
    /// (default: one per core)
    #[arg(long)]
    threads: Option<usize>,
    /// Print the JSON document instead of the human summary
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report here: throughput and latency percentiles per
    /// second, the latency histogram, the errors by code, the run's parameters
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("refresh-bench: {message}");
            ExitCode::from(2)
        }
    }
}

fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration, String> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) {
        return Err(format!(
            "--{name} must be a positive number of seconds, not {value}"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn run(args: Args) -> Result<ExitCode, String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let duration = seconds("duration", args.duration, false)?;
    let warmup = seconds("warmup", args.warmup, true)?;
    let timeout = seconds("timeout", args.timeout, false)?;
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!("--rate must be a positive number, not {rate}"));
    }

    let mode = if args.get {
        Mode::Get
    } else {
        let auth = match (args.client_id, args.client_secret) {
            (Some(id), Some(secret)) => ClientAuth::basic(&id, &secret),
            (Some(id), None) => ClientAuth::Public(id),
            (None, _) => ClientAuth::None,
        };
        Mode::Refresh {
            auth,
            scope: args.scope,
        }
    };

    let pool = match &args.tokens {
        Some(path) => ChainPool::load(path, args.connections)?,
        None => ChainPool::empty(),
    };

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, args.connections);
    let target = Target::resolve(&args.url, mode)?;
    let plan = Plan {
        target: Arc::new(target),
        connections: args.connections,
        warmup,
        duration,
        rate: args.rate,
        timeout,
        timeline: args.report.is_some(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr())
            .then(|| Arc::new(progress::Counters::default())),
    };
    let pool = Arc::new(pool);
    let printer = plan.progress.as_ref().map(|counters| {
        progress::Printer::start(
            Arc::clone(counters),
            warmup + duration,
            Duration::from_millis(250),
        )
    });
    let outcome = load::run(&plan, threads, Arc::clone(&pool));
    if let Some(printer) = printer {
        printer.stop();
    }
    let outcome = outcome?;

    if let Some(path) = &args.save_tokens {
        pool.save(path, &outcome.final_tokens)?;
    }

    let summary = report::Summary::new(&plan, &outcome, pool.total(), pool.spares_left());
    if let Some(path) = &args.report {
        std::fs::write(path, summary.html(threads))
            .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.human());
    }
    Ok(if summary.ok() == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
