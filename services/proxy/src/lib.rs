//! aigw-proxy: a stateless LLM gateway node. It takes its routes from a file
//! (standalone) or from aigw-config, and runs each request through the stages of
//! [`pipeline`]: read → route → plan → authorize → send → respond → complete.
//!
//! Module arrows point one way: `pipeline` → stages (`read`, `routing`, `authorize`,
//! `send`, `respond`, `complete`) → shared (`state`, `record`, `errors`, `runtime`,
//! `compiled`, `router`, `upstream`, `metrics`); `lib` → `serve`, `sources`, `status`.

pub mod access_log;
pub mod authorize;
pub mod compiled;
pub mod complete;
pub mod consumers;
pub mod errors;
pub mod health;
pub mod metrics;
pub mod phases;
pub mod pipeline;
pub mod plugins;
pub mod read;
pub mod record;
pub mod reqvars;
pub mod respond;
pub mod router;
pub mod routing;
pub mod runtime;
pub mod send;
pub mod serve;
pub mod sources;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use aigw_model::secrets::DataKey;
use tokio::net::TcpListener;

pub use state::ClientLimits;

pub enum Source {
    /// Standalone: a routes file, watched.
    File(PathBuf),
    /// Subscribed to aigw-config.
    Xds(Box<sources::XdsSource>),
}

pub struct Config {
    pub source: Source,
    pub data_key: Option<DataKey>,
    pub access_log: access_log::AccessLog,
    pub client_limits: ClientLimits,
    /// `--token-cache` (with `--node-token` and `--control-plane-ca`): GCP tokens through
    /// aigw-token-cache; None: minted in-process.
    pub token_cache: Option<aigw_gcp_auth::TokenCacheOptions>,
    pub telemetry: Telemetry,
    /// `--control-plane-ca`: PEM bundle verifying `https://` control-plane URLs (the
    /// config service, the token cache); None: the webpki roots.
    pub control_plane_ca: Option<Vec<u8>>,
    /// The plugins routes may use (`plugins::builtin`, plus a node's own).
    pub plugins: phases::Registry,
    /// `--redis`: where `ai-rate-limiting` / `ai-budget` with `policy: redis` count when
    /// they name no `redis_host`.
    pub redis: Option<String>,
}

/// What `main` set up for OpenTelemetry: the instruments (served on `/metrics`, pushed by
/// the exporter) and, when spans are exported, the tracer.
pub struct Telemetry {
    pub registry: Arc<aigw_telemetry::metrics::Registry>,
    pub tracer: Option<Arc<aigw_telemetry::export::Tracer>>,
    /// `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`.
    pub genai_latest: bool,
    /// `--metrics-max-consumers`: distinct `consumer` label values (the rest `other`).
    pub max_consumers: usize,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { registry: Default::default(), tracer: None, genai_latest: false, max_consumers: metrics::DEFAULT_MAX_CONSUMERS }
    }
}

/// Runs the node until `shutdown` resolves, then drains in-flight requests (30 s at most).
/// In file mode the first load must succeed: its error is returned.
pub async fn run(
    cfg: Config,
    data: TcpListener,
    status: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new(cfg.telemetry.registry.clone(), cfg.telemetry.genai_latest, cfg.telemetry.max_consumers));
    let access = Arc::new(cfg.access_log);
    let keep_headers = access.enabled() && access.format.needs_headers;
    let keep_upstream_uri = access.enabled() && access.format.needs_upstream_uri;
    let resources = phases::Resources::default();
    resources.insert_shared(metrics.clone());
    resources.insert(aigw_limits::Counters::new(cfg.redis.clone(), aigw_limits::system_clock()));
    let mut sinks: Vec<Arc<dyn complete::Sink>> =
        vec![Arc::new(complete::MetricsSink(metrics.clone())), Arc::new(telemetry::GenAiSink(metrics.clone()))];
    if let Some(t) = &cfg.telemetry.tracer {
        sinks.push(Arc::new(telemetry::SpanSink(t.clone())));
    }
    if access.enabled() {
        sinks.push(access.clone());
    }
    let sinks = complete::Sinks::new(sinks).with_tracer(cfg.telemetry.tracer.clone()).keeping_upstream_uri(keep_upstream_uri);
    let gcp = aigw_gcp_auth::GcpAuth::new(aigw_gcp_auth::GcpAuthOptions { token_cache: cfg.token_cache, ..Default::default() })?;
    let stats = resources.get::<plugins::http_logger::Loggers>().stats.clone();
    let state = state::AppState::new(metrics, sinks, keep_headers, cfg.client_limits, gcp, cfg.plugins, resources);
    status::observe_node(
        &state,
        vec![
            ("access_log", Arc::new(move || access.dropped.load(std::sync::atomic::Ordering::Relaxed))),
            (
                "http_logger",
                Arc::new(move || {
                    stats.dropped.load(std::sync::atomic::Ordering::Relaxed) + stats.failed.load(std::sync::atomic::Ordering::Relaxed)
                }),
            ),
        ],
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stopped = stop_rx.clone();
    let stop_signal = async move { serve::wait_stop(&mut stopped).await };
    // Init gating (Envoy's init manager): the data listener is bound (connections queue
    // in its backlog) but accepts nothing until the first config is applied, from the
    // routes file, the snapshot cache or the config service: never a 404 for a route the
    // node is about to have.
    let data_addr = data.local_addr()?;
    match cfg.source {
        Source::File(path) => {
            let first = std::fs::read(&path).unwrap_or_default();
            let compiled = sources::load_file_for(&path, cfg.data_key.as_ref(), &state).map_err(|e| anyhow::anyhow!(e))?;
            state.apply(compiled);
            tokio::spawn(sources::watch_file(path, cfg.data_key, state.clone(), first));
        }
        Source::Xds(mut src) => {
            if src.ca_pem.is_none() {
                src.ca_pem = cfg.control_plane_ca.clone();
            }
            tokio::spawn(sources::run_xds(*src, state.clone(), stop_signal));
        }
    }
    if *state.applied.borrow() {
        tracing::info!(kind = "data", addr = %data_addr, "listening");
    } else {
        tracing::info!(kind = "data", addr = %data_addr, "listening; connections wait until the first config is applied");
    }
    tracing::info!(kind = "status", addr = %status.local_addr()?, "listening");

    let limits = cfg.client_limits;
    let st = state.clone();
    let status_task = tokio::spawn(serve::serve(status, stop_rx.clone(), limits, move |req, _| status::handle(st.clone(), req)));
    let st = state.clone();
    let mut data_stop = stop_rx.clone();
    let data_task = tokio::spawn(async move {
        let mut applied = st.applied.subscribe();
        let first_config = async move { applied.wait_for(|a| *a).await.is_ok() };
        tokio::select! {
            ok = first_config => if !ok { return },
            _ = serve::wait_stop(&mut data_stop) => return,
        }
        tracing::info!(kind = "data", addr = %data_addr, "accepting: first config applied");
        serve::serve(data, stop_rx, limits, move |req, remote| pipeline::handle(st.clone(), req, remote)).await
    });
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = data_task.await;
    let _ = status_task.await;
    tracing::info!("stopped");
    Ok(())
}
