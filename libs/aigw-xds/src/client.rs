//! Snapshot subscriber for proxies.
//!
//! - The first request of every stream carries the node and the last *applied* version
//!   (so a reconnect at the current version triggers no resend) and an empty nonce.
//! - Each response is handed to the applier; an ACK is sent only after it returns Ok
//!   (ACK = applied). On Err the version stays at the last good one and a NACK with the
//!   reason is sent; the proxy keeps serving what it had.
//! - Disconnects: jittered exponential backoff from 0.5 s to 30 s, reset when a
//!   response arrives (not on connect: a server that accepts and closes at once must
//!   not cause a hot loop).

use std::sync::Arc;
use std::time::Duration;

use aigw_proto::config::v1::Route;
use aigw_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
use aigw_proto::discovery::v1::{ErrorDetail, Node, StreamSnapshotsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::server::NODE_TOKEN_HEADER;

/// Applies a snapshot: Ok = now serving it; Err = rejected, with the reason.
pub type Applier = Arc<dyn Fn(&str, Vec<Route>) -> Result<(), String> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` of aigw-config.
    pub endpoint: String,
    pub node_id: String,
    pub build_version: String,
    pub node_token: Option<String>,
    /// Version already applied before the first connect (from a snapshot cache).
    pub initial_version: String,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            node_id: node_id.into(),
            build_version: String::new(),
            node_token: None,
            initial_version: String::new(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
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

/// Why one stream ended.
enum StreamEnd {
    /// At least one response was received on it.
    AfterResponse(String),
    BeforeResponse(String),
}

/// Runs until `shutdown` resolves: connects, applies snapshots, reconnects.
pub async fn run(cfg: ClientConfig, applier: Applier, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut version = cfg.initial_version.clone();
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    loop {
        let end = tokio::select! {
            _ = &mut shutdown => return,
            end = one_stream(&cfg, &applier, &mut version) => end,
        };
        let reason = match end {
            StreamEnd::AfterResponse(r) => {
                backoff.reset();
                r
            }
            StreamEnd::BeforeResponse(r) => r,
        };
        let delay = backoff.next_delay();
        tracing::warn!(endpoint = %cfg.endpoint, reason = %reason, retry_in_ms = delay.as_millis() as u64, "config service stream ended; serving last good snapshot");
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn one_stream(cfg: &ClientConfig, applier: &Applier, version: &mut String) -> StreamEnd {
    let endpoint = match Endpoint::from_shared(cfg.endpoint.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true),
        Err(e) => return StreamEnd::BeforeResponse(format!("invalid endpoint: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return StreamEnd::BeforeResponse(format!("connect: {e}")),
    };
    let mut client = DiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<StreamSnapshotsRequest>(4);
    let first = StreamSnapshotsRequest {
        node: Some(Node { id: cfg.node_id.clone(), build_version: cfg.build_version.clone() }),
        version_info: version.clone(),
        response_nonce: String::new(),
        error_detail: None,
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
        Err(s) => return StreamEnd::BeforeResponse(format!("{}: {}", s.code(), s.message())),
    };
    let mut got_response = false;
    let end_reason = loop {
        let resp = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break "closed by server".to_owned(),
            Err(s) => break format!("{}: {}", s.code(), s.message()),
        };
        got_response = true;
        let applier = applier.clone();
        let v = resp.version_info.clone();
        let routes = resp.routes;
        // Compiling a large snapshot is CPU work: keep it off the async workers.
        let result =
            tokio::task::spawn_blocking(move || applier(&v, routes)).await.unwrap_or_else(|e| Err(format!("applier panicked: {e}")));
        let ack = match result {
            Ok(()) => {
                tracing::info!(version = %resp.version_info, "applied snapshot from config service");
                *version = resp.version_info.clone();
                StreamSnapshotsRequest { node: None, version_info: version.clone(), response_nonce: resp.nonce, error_detail: None }
            }
            Err(reason) => {
                tracing::warn!(version = %resp.version_info, error = %reason, "rejected snapshot (nack); keeping the last good one");
                StreamSnapshotsRequest {
                    node: None,
                    version_info: version.clone(),
                    response_nonce: resp.nonce,
                    error_detail: Some(ErrorDetail { code: tonic::Code::InvalidArgument as i32, message: reason }),
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
