//! The discovery client for proxies.
//!
//! - The first request of every stream carries the node, the types the proxy applies and
//!   the system version it last *applied* (so a reconnect at the current version gets
//!   nothing) and an empty nonce. Nonces belong to a stream; the version survives.
//! - Each response (a full set or a delta) is handed to the applier whole; an ACK is sent
//!   only after it returns Ok (ACK = applied). On Err the version stays at the last good
//!   one and a NACK with the reason is sent; the proxy keeps serving what it had.
//! - `https://` endpoints are verified against `--control-plane-ca` (else the webpki
//!   roots). Connection, TLS and authentication failures are logged with their cause and
//!   retried; the proxy keeps its last good config meanwhile.
//! - Several endpoints (aigw-config replicas on one etcd, `--config-service A,B`): a
//!   stream that ends or cannot be opened moves to the next one. After a stream that
//!   delivered a response, the next endpoint is tried at once (failover); when every
//!   endpoint failed in a row without a response, the client waits: jittered
//!   exponential backoff from 0.5 s to 30 s, reset when a response arrives (not on
//!   connect: a server that accepts and closes at once must not cause a hot loop). With
//!   one endpoint, a reconnect after a response waits the first backoff step, as before.
//! - Replicas publish the same system version for the same content, so a proxy that
//!   arrives at another replica at the version it runs gets nothing resent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aigw_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
use aigw_proto::discovery::v1::{ErrorDetail, Node, Resource, ResourceName, StreamSnapshotsRequest};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::server::NODE_TOKEN_HEADER;

/// One response, as the applier sees it.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// The system version after this update.
    pub version: String,
    /// True: `resources` is the complete set (replace everything); false: a delta.
    pub full_state: bool,
    pub resources: Vec<Resource>,
    pub removed: Vec<ResourceName>,
    /// Bytes of the gRPC message (protobuf + 5-byte frame header).
    pub bytes: u64,
}

/// Applies an update: Ok = now serving it; Err = rejected (nothing of it applied), with
/// the reason.
pub type Applier = Arc<dyn Fn(Update) -> Result<(), ApplyRejected> + Send + Sync>;

/// Why an applier rejected an update: the NACK's message is its display.
pub type ApplyRejected = Box<dyn std::error::Error + Send + Sync>;

/// What the client has received, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub responses: AtomicU64,
    pub bytes: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
}

#[derive(Clone)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port` of each aigw-config replica, tried in order.
    pub endpoints: Vec<String>,
    pub node_id: String,
    pub build_version: String,
    pub node_token: Option<String>,
    /// PEM bundle verifying an `https://` endpoint; None: the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Resource types this client applies (empty: every type).
    pub type_urls: Vec<String>,
    /// Version already applied before the first connect (from a snapshot cache).
    pub initial_version: String,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Largest response accepted (a full set of 10,000 routes is several MB).
    pub max_message_bytes: usize,
    pub stats: Arc<ClientStats>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("node_id", &self.node_id)
            .field("node_token", &self.node_token.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("type_urls", &self.type_urls)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, node_id: impl Into<String>) -> Self {
        Self {
            endpoints,
            node_id: node_id.into(),
            build_version: String::new(),
            node_token: None,
            ca_pem: None,
            type_urls: Vec::new(),
            initial_version: String::new(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_message_bytes: 512 << 20,
            stats: Arc::default(),
        }
    }
}

/// Jittered exponential backoff (±20 %).
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.initial.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.8 + 0.4 * unit_random())
    }
}

/// A number in [0, 1) from the std hasher's random keys: enough for jitter.
fn unit_random() -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    (h % 10_000) as f64 / 10_000.0
}

/// An error with its causes (`transport error: ...: invalid peer certificate: ...`):
/// tonic's own message is only the outermost layer.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        src = s.source();
    }
    out
}

fn status_reason(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    if let Some(src) = std::error::Error::source(s) {
        out.push_str(": ");
        out.push_str(&error_chain(src));
    }
    out
}

/// Why one stream ended.
enum StreamEnd {
    /// At least one response was received on it.
    AfterResponse(String),
    BeforeResponse(String),
}

/// Runs until `shutdown` resolves: connects, applies updates, reconnects (moving
/// across the endpoints).
pub async fn run(cfg: ClientConfig, applier: Applier, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut version = cfg.initial_version.clone();
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let n = cfg.endpoints.len().max(1);
    let mut next = 0usize;
    // Streams in a row that ended before any response.
    let mut failures = 0usize;
    loop {
        let endpoint = cfg.endpoints.get(next % n).cloned().unwrap_or_default();
        next = (next + 1) % n;
        let end = tokio::select! {
            _ = &mut shutdown => return,
            end = one_stream(&cfg, &endpoint, &applier, &mut version) => end,
        };
        let (reason, delay) = match end {
            StreamEnd::AfterResponse(r) => {
                backoff.reset();
                failures = 0;
                // Another replica at once; the same one (the only one) after a pause.
                (r, if n > 1 { Duration::ZERO } else { backoff.next_delay() })
            }
            StreamEnd::BeforeResponse(r) => {
                failures += 1;
                (r, if failures.is_multiple_of(n) { backoff.next_delay() } else { Duration::ZERO })
            }
        };
        let keeping = if version.is_empty() { "no config applied yet" } else { "keeping the last good config" };
        let then = cfg.endpoints.get(next % n).map(String::as_str).unwrap_or_default();
        tracing::warn!(endpoint = %endpoint, reason = %reason, applied_version = %version, next_endpoint = %then,
            retry_in_ms = delay.as_millis() as u64, "config service stream ended or refused; {keeping}");
        if !delay.is_zero() {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

async fn one_stream(cfg: &ClientConfig, endpoint: &str, applier: &Applier, version: &mut String) -> StreamEnd {
    let cfg_endpoint = endpoint;
    let endpoint = match Endpoint::from_shared(endpoint.to_owned()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
        Err(e) => return StreamEnd::BeforeResponse(format!("invalid endpoint: {e}")),
    };
    let connector = match aigw_net::grpc_connector(cfg.ca_pem.as_deref()) {
        Ok(c) => c,
        Err(e) => return StreamEnd::BeforeResponse(e.to_string()),
    };
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::BeforeResponse(format!("connect: {}", error_chain(&e))),
    };
    let mut client = DiscoveryServiceClient::new(channel).max_decoding_message_size(cfg.max_message_bytes);
    let (tx, rx) = mpsc::channel::<StreamSnapshotsRequest>(4);
    let first = StreamSnapshotsRequest {
        node: Some(Node { id: cfg.node_id.clone(), build_version: cfg.build_version.clone() }),
        system_version_info: version.clone(),
        response_nonce: String::new(),
        error_detail: None,
        type_urls: cfg.type_urls.clone(),
    };
    if tx.send(first).await.is_err() {
        return StreamEnd::BeforeResponse("request channel closed".into());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(tok) = &cfg.node_token {
        match tok.parse() {
            Ok(v) => {
                request.metadata_mut().insert(NODE_TOKEN_HEADER, v);
            }
            Err(_) => return StreamEnd::BeforeResponse("node token is not a valid header value".into()),
        }
    }
    let mut inbound = match client.stream_snapshots(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return StreamEnd::BeforeResponse(status_reason(&s)),
    };
    tracing::info!(endpoint = %cfg_endpoint, applied_version = %version, "discovery stream open");
    let mut got_response = false;
    let end_reason = loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break "closed by server".to_owned(),
            Err(s) => break status_reason(&s),
        };
        got_response = true;
        let bytes = resp.encoded_len() as u64 + 5;
        cfg.stats.responses.fetch_add(1, Ordering::Relaxed);
        cfg.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        let (new_version, nonce) = (resp.system_version_info.clone(), resp.nonce.clone());
        let (full_state, changed, removed) = (resp.full_state, resp.resources.len(), resp.removed_resources.len());
        let update = Update {
            version: resp.system_version_info,
            full_state: resp.full_state,
            resources: resp.resources,
            removed: resp.removed_resources,
            bytes,
        };
        let applier = applier.clone();
        // Compiling a large update is CPU work: keep it off the async workers.
        let result =
            tokio::task::spawn_blocking(move || applier(update)).await.unwrap_or_else(|e| Err(format!("applier panicked: {e}").into()));
        let ack = match result {
            Ok(()) => {
                cfg.stats.acks.fetch_add(1, Ordering::Relaxed);
                tracing::info!(version = %new_version, full_state, changed, removed, bytes, control_plane = %resp.control_plane, "applied update from config service");
                *version = new_version;
                StreamSnapshotsRequest { system_version_info: version.clone(), response_nonce: nonce, ..Default::default() }
            }
            Err(reason) => {
                cfg.stats.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(version = %new_version, error = %reason, "rejected update (nack); keeping the last good config");
                StreamSnapshotsRequest {
                    system_version_info: version.clone(),
                    response_nonce: nonce,
                    error_detail: Some(ErrorDetail { code: tonic::Code::InvalidArgument as i32, message: reason.to_string() }),
                    ..Default::default()
                }
            }
        };
        if tx.send(ack).await.is_err() {
            break "request stream closed".to_owned();
        }
    };
    if got_response { StreamEnd::AfterResponse(end_reason) } else { StreamEnd::BeforeResponse(end_reason) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(400) && d[0] <= Duration::from_millis(600), "{d:?}");
        assert!(d[1] >= Duration::from_millis(800) && d[1] <= Duration::from_millis(1200), "{d:?}");
        assert!(d[9] <= Duration::from_secs(36) && d[9] >= Duration::from_secs(24), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(600));
    }
}
