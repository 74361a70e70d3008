//! Logging set-up: structured `tracing` output, pretty or JSON.

use tracing_subscriber::EnvFilter;

use super::config::{LogConfig, LogFormat};

/// Installs the global subscriber (once; later calls are ignored, as in tests).
pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
