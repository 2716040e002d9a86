//! The `refresh-proxy` binary: arguments → config → bind → [`refresh_proxy::app::App::run`].
//!
//! `issue` and `admin revoke` are clients of a running proxy's admin API
//! ([`refresh_proxy::admin_client`]): they read the same config to find it and its token.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use refresh_proxy::admin_client::{self, AdminClient, Endpoint, IssueJob, RevokeTarget};
use refresh_proxy::app::{App, Outcome};
use refresh_proxy::config::{Config, LogFormat};
use refresh_proxy::otel_export::{self, Telemetry};
use tokio::net::TcpListener;

/// mimalloc instead of glibc's malloc: per-thread heaps without arena-lock contention, and
/// fewer instructions per allocation on the ~50 allocations of a refresh (bench/README.md
/// has the measurements). The binary's choice; the library leaves it to its user.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "refresh-proxy", version, about)]
struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        default_value = "config.toml",
        env = "REFRESH_PROXY_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config (files, URLs, TLS material) and exit 0, or print what is wrong and
    /// exit 1.
    CheckConfig,
    /// Open COUNT token families on the running proxy (load-testing rigs) and write their
    /// refresh tokens to OUT, one a line. Uses the admin API that the config names, with
    /// `admin.issue_token`; the client must be marked `allow_admin_issue = true`.
    Issue(IssueArgs),
    /// Operate a running proxy through its admin API (`server.admin_listen`, `admin.token`).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Args)]
struct IssueArgs {
    /// The client the families belong to (a `[clients.<id>]` table of the proxy's config).
    #[arg(long = "client", value_name = "CLIENT_ID")]
    client: String,
    /// The subject (`sub`) of the families.
    #[arg(long)]
    subject: String,
    /// The granted scope, space-separated.
    #[arg(long, default_value = "")]
    scope: String,
    /// How many families (and refresh tokens).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Where the tokens go, one a line; `-` is stdout.
    #[arg(long, value_name = "FILE", default_value = "-")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Revoke a family, every family of a subject, or every family of a client; prints
    /// `{"revoked":n}`.
    Revoke(RevokeArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RevokeArgs {
    /// A family id: the part of a refresh token before its first dot.
    #[arg(long)]
    family: Option<String>,
    /// Every family of this subject, whatever the client.
    #[arg(long)]
    subject: Option<String>,
    /// Every family of this client.
    #[arg(long = "client", value_name = "CLIENT_ID")]
    client: Option<String>,
}

impl RevokeArgs {
    /// The one target clap's group lets through.
    fn target(self) -> Option<RevokeTarget> {
        match (self.family, self.subject, self.client) {
            (Some(f), None, None) => Some(RevokeTarget::Family(f)),
            (None, Some(s), None) => Some(RevokeTarget::Subject(s)),
            (None, None, Some(c)) => Some(RevokeTarget::Client(c)),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("refresh-proxy: config error: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => check_config(config, &cli.config),
        Some(Command::Issue(args)) => issue(&config, &cli.config, args),
        Some(Command::Admin(AdminCommand::Revoke(args))) => revoke(&config, &cli.config, args),
        None => run(config, cli.config.clone()),
    }
}

/// A small runtime for the admin clients.
fn client_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("refresh-proxy: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn admin_client(
    config: &Config,
    config_path: &Path,
    endpoint: Endpoint,
) -> Result<AdminClient, ExitCode> {
    AdminClient::from_config(config, config_path, endpoint).map_err(|e| {
        eprintln!("refresh-proxy: {e}");
        ExitCode::from(1)
    })
}

fn issue(config: &Config, config_path: &Path, args: IssueArgs) -> ExitCode {
    let (runtime, client) = match (
        client_runtime(),
        admin_client(config, config_path, Endpoint::Issue),
    ) {
        (Ok(rt), Ok(client)) => (rt, client),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let job = IssueJob {
        client_id: args.client,
        subject: args.subject,
        scope: args.scope,
        count: args.count,
        out: args.out,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    match runtime.block_on(admin_client::issue(&client, &job)) {
        Ok(elapsed) => {
            eprintln!(
                "issued {} refresh tokens for client {} in {:.2}s",
                job.count,
                job.client_id,
                elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("refresh-proxy: issue failed: {}", failure.error);
            if failure.written > 0 {
                eprintln!(
                    "refresh-proxy: {} of {} refresh tokens were issued and written to {} before \
                     the failure",
                    failure.written,
                    job.count,
                    if job.out == Path::new("-") {
                        "stdout".to_owned()
                    } else {
                        job.out.display().to_string()
                    }
                );
            }
            ExitCode::from(1)
        }
    }
}

fn revoke(config: &Config, config_path: &Path, args: RevokeArgs) -> ExitCode {
    let Some(target) = args.target() else {
        eprintln!("refresh-proxy: admin revoke needs exactly one of --family, --subject, --client");
        return ExitCode::from(2);
    };
    let (runtime, client) = match (
        client_runtime(),
        admin_client(config, config_path, Endpoint::Revoke),
    ) {
        (Ok(rt), Ok(client)) => (rt, client),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    match runtime.block_on(client.revoke(&target)) {
        Ok(revoked) => {
            // Not println!: it panics when stdout is a closed pipe.
            let line = format!("{}\n", serde_json::json!({ "revoked": revoked }));
            match std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("refresh-proxy: revoked {revoked}, but cannot write stdout: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("refresh-proxy: revoke failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Builds everything the config describes (files, keys, TLS, store client) without serving.
/// The Redis client needs a runtime to exist, though it connects to nothing here.
fn check_config(config: Config, path: &std::path::Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("refresh-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(code) = otel_settings() {
        return code;
    }
    match runtime.block_on(async { App::build(config).map(drop) }) {
        Ok(()) => {
            println!("refresh-proxy: {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refresh-proxy: config error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Serves: this thread's runtime accepts connections and runs the admin listener, discovery
/// and the shutdown sequence; `server.workers` threads of their own serve the requests
/// ([`refresh_proxy::app`]).
fn run(config: Config, config_path: std::path::PathBuf) -> ExitCode {
    // Traces (docs/operations.md, "Traces"): from the OTEL_* environment, before the runtime,
    // so that the exporter's own runtime is started (and later stopped) outside it.
    let telemetry = match otel_settings() {
        Ok(None) => None,
        Ok(Some(settings)) => match Telemetry::start(&settings) {
            Ok(telemetry) => Some((telemetry, settings.service_name)),
            Err(e) => {
                eprintln!("refresh-proxy: traces: {e}");
                return ExitCode::from(1);
            }
        },
        Err(code) => return code,
    };
    init_logging(&config, telemetry.as_ref().map(|(t, _)| t));
    if let Some((_, service_name)) = &telemetry {
        tracing::info!(service_name, "traces: OTLP export on");
    }
    let code = serve(config, config_path);
    // After the drain (the SIGTERM path): the last spans go out before the process exits.
    if let Some((telemetry, _)) = telemetry {
        telemetry.shutdown();
    }
    code
}

/// The OTEL_* environment read, or the exit code for a value the proxy cannot honour.
fn otel_settings() -> Result<Option<otel_export::Settings>, ExitCode> {
    otel_export::settings(|name| std::env::var(name).ok()).map_err(|e| {
        eprintln!("refresh-proxy: traces: {e}");
        ExitCode::from(1)
    })
}

fn serve(config: Config, config_path: std::path::PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("refresh-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listen = config.server.listen;
        let admin_listen = config.server.admin_listen;
        let config_workers = config.server.worker_count();
        let app = match App::build(config) {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("config error: {e}");
                return ExitCode::from(1);
            }
        };
        let (listener, admin_listener) = match (
            TcpListener::bind(listen).await,
            TcpListener::bind(admin_listen).await,
        ) {
            (Ok(l), Ok(a)) => (l, a),
            (Err(e), _) => {
                tracing::error!(%listen, "cannot bind server.listen: {e}");
                return ExitCode::from(1);
            }
            (_, Err(e)) => {
                tracing::error!(%admin_listen, "cannot bind server.admin_listen: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin_listen = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            version = env!("CARGO_PKG_VERSION"),
            workers = config_workers,
            "refresh-proxy started"
        );
        tokio::spawn(reload_on_hangup(config_path, app.reloader()));
        match app.run(listener, admin_listener, shutdown_signal()).await {
            Outcome::Drained => tracing::info!("shut down cleanly"),
            Outcome::DeadlineExceeded => {
                tracing::warn!("server.shutdown_timeout passed; in-flight requests were cut off")
            }
            Outcome::NoWorkers => return ExitCode::from(1),
            // A crash loop with the reason in the log, rather than a proxy that reports
            // "revoked" for tokens that stay live.
            Outcome::Refused => return ExitCode::from(1),
        }
        ExitCode::SUCCESS
    })
}

/// On each SIGHUP: reads the config file again and replaces the clients, their secrets and
/// every key (connections and requests in flight are not touched). A config that does not
/// load keeps the previous keys.
async fn reload_on_hangup(path: std::path::PathBuf, reloader: refresh_proxy::app::Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; keys reload only on restart");
        return;
    };
    while hangup.recv().await.is_some() {
        match Config::load(&path).and_then(|c| reloader.reload(&c)) {
            Ok(()) => {}
            Err(e) => tracing::error!("reload refused, the previous keys stay: {e}"),
        }
    }
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shut down with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

fn init_logging(config: &Config, telemetry: Option<&Telemetry>) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    if let Some(telemetry) = telemetry {
        return init_logging_with_traces(config, filter, telemetry);
    }
    // Colours only for a terminal: in a file or a log collector's pipe they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The same log output, and the OpenTelemetry layer beside it: the proxy's spans
/// (`refresh_proxy::span`) go to the exporter only, never to the log.
fn init_logging_with_traces(
    config: &Config,
    filter: tracing_subscriber::EnvFilter,
    telemetry: &Telemetry,
) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = filter.add_directive(
        format!("{}=off", refresh_proxy::otel::TARGET)
            .parse()
            .expect("a valid directive"),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(std::io::stdout);
    let fmt = match config.log.format {
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(telemetry.layer())
        .init();
}
