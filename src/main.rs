//! The `customer-profile` binary: parse the command line, load configuration, run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use customer_profile::domain::time::SystemClock;
use customer_profile::server::{config::Config, startup::Application, telemetry};

/// mimalloc instead of the system allocator: the read and import paths allocate many small,
/// short-lived buffers, where glibc malloc took a fifth of the CPU in profiles (issue 7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "The company's single source of truth about its customers (gRPC)."
)]
struct Cli {
    /// TOML configuration file; give it several times to layer files (later ones win, e.g. a
    /// mounted secret with principals over a config map).
    #[arg(
        long,
        short,
        global = true,
        env = "CUSTOMER_PROFILE_CONFIG",
        value_delimiter = ','
    )]
    config: Vec<PathBuf>,
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
    /// Take an online backup from a running server into a file (values stay encrypted).
    Backup {
        /// The server, e.g. http://127.0.0.1:50051.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// A bearer token with the admin:backup scope (not needed in local development).
        #[arg(long, env = "CUSTOMER_PROFILE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where to write the backup.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup file into an empty data directory (offline; the server must use the
    /// same master key). A damaged file is refused before anything is written.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        /// The empty data directory to fill.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Load and validate the configuration, print it with secrets redacted; exit 2 when it
    /// is invalid (the message names the key).
    CheckConfig,
    /// Print a new random bearer token and the SHA-256 hash to put in the configuration.
    Token,
    /// Bulk-load customers from NDJSON (one customer a line; format in README) into a data
    /// directory, offline: stop the server first. Resumable: run the same command again after
    /// an interruption and it continues after the last committed batch.
    Import {
        /// Data directory (default: from the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Lines per transaction; each batch is made durable with one flush.
        #[arg(long, default_value_t = customer_profile::import::DEFAULT_BATCH)]
        batch: usize,
        /// When a line's identifiers belong to several profiles, merge them (as Resolve with
        /// allow_merge); without it such a line is rejected.
        #[arg(long)]
        allow_merge: bool,
        /// Where to list rejected lines as {"line":N,"reason":"..."} (default:
        /// NAME.rejects.ndjson next to the input).
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Ignore a stored position of an earlier run and import from the first line.
        #[arg(long)]
        restart: bool,
        /// No progress bar (CI, scripts).
        #[arg(long)]
        no_progress: bool,
        /// Exit with status 1 when any line was rejected (default: 0, with the summary).
        #[arg(long)]
        strict: bool,
        /// Stop after this many lines (a trial run; the rest follows on the next run).
        #[arg(long)]
        max_lines: Option<u64>,
        /// The NDJSON file, or - for standard input (not resumable).
        file: PathBuf,
    },
    /// Check the hash chain of the audit log; exits 1 and names the first broken entry.
    AuditVerify {
        /// Data directory (default: from the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let runtime = match customer_profile::server::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token) = &cli.command {
        let (token, hash) = customer_profile::auth::tokens::generate()
            .map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        writeln!(
            out,
            "token (give it to the client, store it as a secret; it is not shown again):\n  {token}\n\n\
             hash (put it in the principal's configuration):\n  token_sha256 = [\"{hash}\"]"
        )?;
        return Ok(());
    }
    if let Some(Command::Backup { server, token, out }) = &cli.command {
        return backup(server, token.as_deref(), out).await;
    }
    if let Some(Command::Restore { from, data_dir }) = &cli.command {
        let n = customer_profile::store::SledStore::restore(from, data_dir)
            .with_context(|| format!("restoring {}", from.display()))?;
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        writeln!(out, "restored {n} records into {}", data_dir.display())?;
        return Ok(());
    }
    if let Some(Command::CheckConfig) = &cli.command {
        let config = Config::load(&cli.config, &Config::default())?;
        let text = config.redacted_toml()?;
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        writeln!(out, "# effective configuration (valid)\n{text}")?;
        return Ok(());
    }
    if let Some(Command::Import {
        data_dir,
        batch,
        allow_merge,
        rejects,
        restart,
        no_progress,
        strict,
        max_lines,
        file,
    }) = &cli.command
    {
        let mut overrides = Config::default();
        overrides.data_dir = data_dir.clone().unwrap_or(overrides.data_dir);
        let config = Config::load(&cli.config, &overrides)?;
        let opts = customer_profile::import::Options {
            input: file.clone(),
            batch: *batch,
            allow_merge: *allow_merge,
            rejects: rejects.clone(),
            restart: *restart,
            progress: !*no_progress,
            max_lines: *max_lines,
        };
        let report = tokio::task::spawn_blocking(move || {
            customer_profile::import::run(&opts, &config, Arc::new(SystemClock))
        })
        .await
        .context("the import thread failed")??;
        use std::io::Write;
        write!(std::io::stdout().lock(), "{report}")?;
        if *strict && report.this_run.rejected > 0 {
            std::process::exit(1);
        }
        return Ok(());
    }
    if let Some(Command::AuditVerify { data_dir }) = &cli.command {
        let dir = match data_dir {
            Some(d) => d.clone(),
            None => Config::load(&cli.config, &Config::default())?.data_dir,
        };
        let path = customer_profile::audit::log_path(&dir);
        let verdict = customer_profile::audit::verify(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut out = std::io::stdout().lock();
        use std::io::Write;
        return match verdict {
            customer_profile::audit::Verdict::Intact { entries, first_seq } => {
                let rotated = customer_profile::audit::rotated_files(&path)?.len();
                let files = rotated + usize::from(path.exists());
                let files = if rotated == 0 {
                    String::new()
                } else {
                    format!(" in {files} files ({rotated} of them rotated)")
                };
                let from = if first_seq > 1 {
                    format!(
                        "; it begins at entry {first_seq}: the {} before were in rotated files since deleted (audit.keep_files)",
                        first_seq - 1
                    )
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "audit log {} is intact: {entries} entries{files}{from}",
                    path.display()
                )?;
                Ok(())
            }
            customer_profile::audit::Verdict::Broken { file, line, reason } => {
                writeln!(
                    out,
                    "audit log {} is BROKEN at line {line} of {}: {reason}",
                    path.display(),
                    file.display()
                )?;
                std::process::exit(1);
            }
        };
    }
    let mut overrides = Config::default();
    if let Some(Command::Serve { listen, data_dir }) = &cli.command {
        overrides.listen = listen.unwrap_or(overrides.listen);
        overrides.data_dir = data_dir.clone().unwrap_or(overrides.data_dir);
    }
    let config = Config::load(&cli.config, &overrides)?;
    let telemetry = telemetry::init(&config.log);
    let app = Application::build(config, Arc::new(SystemClock)).await?;
    let result = app
        .run_until(shutdown_signal())
        .await
        .context("server failed");
    telemetry.shutdown();
    result
}

/// Streams a backup from `server` into `out` (written to a temporary name, then renamed, so
/// an interrupted backup never looks complete).
async fn backup(server: &str, token: Option<&str>, out: &std::path::Path) -> anyhow::Result<()> {
    use customer_profile::service::pb;
    use std::io::Write;
    let channel = tonic::transport::Endpoint::from_shared(server.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let header = token
        .map(|t| tonic::metadata::MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .context("the token is not a valid header value")?;
    let mut client = pb::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert("authorization", h.clone());
            }
            Ok(req)
        },
    );
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .context("starting the backup")?
        .into_inner();
    let partial = out.with_extension("partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.message().await.context("receiving the backup")? {
        file.write_all(&chunk.data)?;
        bytes += chunk.data.len();
    }
    file.sync_all()?;
    std::fs::rename(&partial, out)?;
    // The rename is durable only once the directory entry is: a crash right after "backup
    // written" must not leave the old name or none.
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    customer_profile::store::sync_dir(dir)
        .with_context(|| format!("syncing the directory of {}", out.display()))?;
    writeln!(
        std::io::stdout().lock(),
        "backup written to {} ({bytes} bytes)",
        out.display()
    )?;
    Ok(())
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
