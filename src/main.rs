//! The `refresh-proxy` binary: arguments → config → bind → [`refresh_proxy::app::App::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use refresh_proxy::app::{App, Outcome};
use refresh_proxy::config::{Config, LogFormat};
use tokio::net::TcpListener;

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
        Some(Command::CheckConfig) => match App::build(config) {
            Ok(_) => {
                println!("refresh-proxy: {} is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("refresh-proxy: config error: {e}");
                ExitCode::from(1)
            }
        },
        None => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            "refresh-proxy started"
        );
        match app.run(listener, admin_listener, shutdown_signal()).await {
            Outcome::Drained => tracing::info!("shut down cleanly"),
            Outcome::DeadlineExceeded => {
                tracing::warn!("server.shutdown_timeout passed; in-flight requests were cut off")
            }
        }
        ExitCode::SUCCESS
    })
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

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
