//! What the stages of a request share: the node's state (applied config, upstream
//! clients, sinks, counters) and the response body type. Nothing here imports a stage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aigw_gcp_auth::GcpAuth;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

use crate::complete::Sinks;
use crate::metrics::Metrics;
use crate::phases::{Registry, Resources};
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
    /// GCP token sources for `auth.gcp` (through aigw-token-cache with `--token-cache`).
    pub gcp: GcpAuth,
    /// The plugins routes may use, and the resources they share.
    pub plugins: Registry,
    pub resources: Resources,
}

impl AppState {
    pub fn new(
        metrics: Arc<Metrics>,
        sinks: Sinks,
        keep_headers: bool,
        client_limits: ClientLimits,
        gcp: GcpAuth,
        plugins: Registry,
        resources: Resources,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            config: ArcSwap::from_pointee(RuntimeConfig::empty()),
            ready: AtomicBool::new(false),
            applied: tokio::sync::watch::Sender::new(false),
            upstreams: Upstreams::default(),
            metrics,
            sinks: Arc::new(sinks),
            keep_headers,
            client_limits,
            gcp,
            plugins,
            resources,
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

/// A request id unique to this process run: a random per-process prefix and a counter,
/// 24 hex digits (written by hand: `format!` was a measurable share of a request).
pub fn request_id() -> String {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(Instant::now()));
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed) as u32;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 24];
    for (i, b) in out[..16].iter_mut().enumerate() {
        *b = HEX[((seed >> (60 - 4 * i)) & 0xf) as usize];
    }
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = HEX[((n >> (28 - 4 * i)) & 0xf) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_24_hex_digits_and_unique() {
        let (a, b) = (super::request_id(), super::request_id());
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16], "one prefix per process");
    }
}
