//! Process plumbing shared by the aigw binaries.

use std::io::IsTerminal;

/// The logging flags every binary takes (flatten into its clap `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "AIGW_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: text or json.
    #[arg(long, env = "AIGW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl LogArgs {
    pub fn init(&self) -> anyhow::Result<()> {
        init_logging(&self.log_level, &self.log_format)
    }
}

/// Runs a binary's real main; an error exits 1 with a one-line reason on stderr.
pub fn exit_on_error(binary: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("{binary}: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr: `level` is a tracing EnvFilter, `format` is `text` or `json`.
/// Colours only on a terminal, so tests and collectors read plain lines.
pub fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}
