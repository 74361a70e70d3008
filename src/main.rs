//! The `customer-profile` binary: parse the command line, load configuration, run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use customer_profile::domain::time::SystemClock;
use customer_profile::server::{config::Config, startup::Application, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "The company's single source of truth about its customers (gRPC)."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "CUSTOMER_PROFILE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve {
        /// Listen address, e.g. 127.0.0.1:50051.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = Config::default();
    if let Some(Command::Serve { listen, data_dir }) = &cli.command {
        overrides.listen = listen.unwrap_or(overrides.listen);
        overrides.data_dir = data_dir.clone().unwrap_or(overrides.data_dir);
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    telemetry::init(&config.log);
    let app = Application::build(config, Arc::new(SystemClock)).await?;
    app.run_until(shutdown_signal())
        .await
        .context("server failed")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or_default(),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
}
