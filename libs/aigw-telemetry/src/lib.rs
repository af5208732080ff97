//! Process plumbing shared by the aigw binaries: logging, shutdown signals, and
//! OpenTelemetry (the standard `OTEL_*` environment, OTLP export of spans and metrics
//! from a background thread, Prometheus text of the same instruments). Design and costs:
//! `docs/observability.md`.

pub mod config;
pub mod duration;

/// A bad `OTEL_*` setting or an exporter that cannot start (the message names the variable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OtelError(pub String);

impl From<String> for OtelError {
    fn from(s: String) -> Self {
        OtelError(s)
    }
}

pub mod export;
pub mod ids;
pub mod layer;
pub mod metrics;
pub mod sampler;
pub mod wire;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
        init_logging(&self.log_level, &self.log_format, None)
    }

    /// Like [`init`](Self::init); with a tracer, the process's own `tracing` spans are
    /// exported too (see [`layer::OtlpLayer`]).
    pub fn init_with(&self, tracer: Option<std::sync::Arc<export::Tracer>>) -> anyhow::Result<()> {
        init_logging(&self.log_level, &self.log_format, tracer)
    }
}

/// Registers the process's own instruments (`process.cpu.time`, `process.memory.usage`,
/// read from `/proc/self` at collection time: nothing is recorded between scrapes).
pub fn observe_process(registry: &metrics::Registry) {
    registry.observe(|o| {
        // Linux reports these in clock ticks (USER_HZ, 100 on every mainstream kernel) and pages.
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // Fields after the command: state(0) … utime(11) stime(12).
            o.gauge(
                "process.cpu.time",
                "s",
                "CPU time of this process (user and system), seconds.",
                &[("cpu.mode", "user")],
                tick(11) as f64 / 100.0,
            );
            o.gauge("process.cpu.time", "s", "", &[("cpu.mode", "system")], tick(12) as f64 / 100.0);
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok())
        {
            o.gauge("process.memory.usage", "By", "Resident memory of this process.", &[], (rss * 4096) as f64);
        }
    });
}

/// Reads `OTEL_*` and starts the exporter when an endpoint is set (None otherwise: no
/// thread, no queue, nothing on any request path). `registry` is the process's
/// instruments, pushed every `OTEL_METRIC_EXPORT_INTERVAL`.
pub fn start_otel(
    service: &'static str,
    version: &'static str,
    registry: std::sync::Arc<metrics::Registry>,
) -> anyhow::Result<Option<export::Exporter>> {
    match config::OtelConfig::from_process_env(service).map_err(|e| anyhow::anyhow!(e))? {
        None => Ok(None),
        Some(cfg) => Ok(Some(export::Exporter::start(cfg, registry, service, version).map_err(|e| anyhow::anyhow!(e))?)),
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
pub fn init_logging(level: &str, format: &str, tracer: Option<std::sync::Arc<export::Tracer>>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    let ansi = std::io::stderr().is_terminal();
    let otlp = tracer.map(layer::OtlpLayer::new);
    let registry = tracing_subscriber::registry().with(filter).with(otlp);
    if format == "json" {
        registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init();
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).init();
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
