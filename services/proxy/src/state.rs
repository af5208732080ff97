//! What the stages of a request share: the node's state (applied config, upstream
//! clients, sinks, counters) and the response body type. Nothing here imports a stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::complete::Sinks;
use crate::metrics::Metrics;
use crate::runtime::RuntimeConfig;
use crate::upstream::Upstreams;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Limits on clients (nginx's `client_header_timeout` / `client_body_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits { header_timeout: Duration::from_secs(60), body_timeout: Duration::from_secs(60) }
    }
}

/// Shared state of a proxy node.
pub struct AppState {
    pub config: ArcSwap<RuntimeConfig>,
    pub ready: AtomicBool,
    /// Turns true with the first applied config: the data listener accepts from then on.
    pub applied: tokio::sync::watch::Sender<bool>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub sinks: Arc<Sinks>,
    /// Whether a sink renders `$http_*` (the request headers are then kept in the record).
    pub keep_headers: bool,
    pub client_limits: ClientLimits,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, sinks: Sinks, keep_headers: bool, client_limits: ClientLimits) -> Arc<AppState> {
        Arc::new(AppState {
            config: ArcSwap::from_pointee(RuntimeConfig::empty()),
            ready: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(false),
            upstreams: Upstreams::default(),
            metrics,
            sinks: Arc::new(sinks),
            keep_headers,
            client_limits,
        })
    }

    /// Swaps in a compiled snapshot; the node is ready from the first one on.
    pub fn apply(&self, cfg: RuntimeConfig) {
        self.apply_shared(Arc::new(cfg));
    }

    pub fn apply_shared(&self, cfg: Arc<RuntimeConfig>) {
        tracing::info!(version = %cfg.version, routes = cfg.routes.len(), "config applied");
        self.config.store(cfg);
        self.ready.store(true, Ordering::Release);
        self.applied.send_replace(true);
        Metrics::add(&self.metrics.config_applied, 1);
    }
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A request id unique to this process run: a random per-process prefix and a counter.
pub fn request_id() -> String {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(Instant::now()));
    format!("{seed:016x}{:08x}", REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed))
}
