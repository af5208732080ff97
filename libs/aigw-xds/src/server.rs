//! State-of-the-world snapshot server.
//!
//! Rules (xDS, with the go-control-plane pitfalls avoided):
//! - A response is sent when the current snapshot version differs from what the node
//!   last applied and from what this stream last sent; a node that reconnects with the
//!   current version gets nothing.
//! - A request whose nonce is not the last one sent on this stream is stale and ignored.
//! - `error_detail` marks a NACK: it is logged, counted, and the rejected version is
//!   remembered per node id so it is never sent to that node again (also after a
//!   reconnect). A newer version is sent as soon as it exists.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aigw_proto::config::v1::Route;
use aigw_proto::discovery::v1::discovery_service_server::DiscoveryService;
use aigw_proto::discovery::v1::{StreamSnapshotsRequest, StreamSnapshotsResponse};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One published route set.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Content hash of the routes.
    pub version: String,
    pub routes: Vec<Route>,
}

/// Counters exposed by the config service's `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub streams_active: AtomicU64,
    pub responses_sent: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub stale_nonces: AtomicU64,
    pub suppressed_resends: AtomicU64,
}

/// What the server knows of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub node_id: String,
    pub connected_streams: u32,
    pub acked_version: String,
    pub nacked_versions: Vec<String>,
    pub last_nack_error: Option<String>,
    pub last_seen_unix: u64,
}

#[derive(Default)]
struct NodeState {
    connected: u32,
    acked: String,
    nacked: HashSet<String>,
    last_error: Option<String>,
    last_seen: u64,
}

/// The discovery service. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    nodes: Arc<Mutex<HashMap<String, NodeState>>>,
    metrics: Arc<Metrics>,
    control_plane: String,
    node_token: Option<String>,
}

/// Metadata key proxies use to present `--node-token`.
pub const NODE_TOKEN_HEADER: &str = "x-node-token";

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl XdsServer {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, control_plane: String, node_token: Option<String>) -> Self {
        Self { snapshots, nodes: Default::default(), metrics: Default::default(), control_plane, node_token }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Per-node status, ordered by node id.
    pub fn node_statuses(&self) -> Vec<NodeStatus> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .map(|(id, s)| {
                let mut nacked: Vec<String> = s.nacked.iter().cloned().collect();
                nacked.sort();
                NodeStatus {
                    node_id: id.clone(),
                    connected_streams: s.connected,
                    acked_version: s.acked.clone(),
                    nacked_versions: nacked,
                    last_nack_error: s.last_error.clone(),
                    last_seen_unix: s.last_seen,
                }
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    fn with_node<R>(&self, id: &str, f: impl FnOnce(&mut NodeState) -> R) -> R {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let st = nodes.entry(id.to_owned()).or_default();
        st.last_seen = now_unix();
        f(st)
    }
}

/// Drop guard: a stream's node bookkeeping ends with the stream.
struct StreamGuard {
    server: XdsServer,
    node: Option<String>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.server.metrics.streams_active.fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = &self.node {
            self.server.with_node(id, |s| s.connected = s.connected.saturating_sub(1));
            tracing::info!(node = %id, "discovery stream closed");
        }
    }
}

struct StreamState {
    nonce_counter: u64,
    last_nonce: String,
    last_sent: Option<String>,
    client_version: String,
    subscribed: bool,
}

impl XdsServer {
    async fn run_stream(self, mut inbound: Streaming<StreamSnapshotsRequest>, tx: mpsc::Sender<Result<StreamSnapshotsResponse, Status>>) {
        self.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
        let mut guard = StreamGuard { server: self.clone(), node: None };
        let mut snapshots = self.snapshots.clone();
        let mut st =
            StreamState { nonce_counter: 0, last_nonce: String::new(), last_sent: None, client_version: String::new(), subscribed: false };
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "discovery stream receive error");
                            break;
                        }
                    };
                    let node_id = match &guard.node {
                        Some(id) => id.clone(),
                        None => {
                            let Some(id) = req.node.as_ref().map(|n| n.id.clone()).filter(|id| !id.is_empty()) else {
                                let _ = tx.send(Err(Status::invalid_argument("the first request must carry node.id"))).await;
                                break;
                            };
                            self.with_node(&id, |s| s.connected += 1);
                            tracing::info!(node = %id, version = %req.version_info, "discovery stream opened");
                            guard.node = Some(id.clone());
                            id
                        }
                    };
                    if !req.response_nonce.is_empty() && req.response_nonce != st.last_nonce {
                        self.metrics.stale_nonces.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = %node_id, nonce = %req.response_nonce, "ignoring request with stale nonce");
                        continue;
                    }
                    if let Some(err) = &req.error_detail {
                        let rejected = st.last_sent.clone().unwrap_or_default();
                        self.metrics.nacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %node_id, version = %rejected, error = %err.message, "proxy rejected snapshot (nack)");
                        self.with_node(&node_id, |s| {
                            s.nacked.insert(rejected);
                            s.last_error = Some(err.message.clone());
                        });
                    } else if !req.response_nonce.is_empty() {
                        self.metrics.acks.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(node = %node_id, version = %req.version_info, "proxy applied snapshot (ack)");
                        self.with_node(&node_id, |s| s.acked = req.version_info.clone());
                    } else if !req.version_info.is_empty() {
                        // First request of a stream: the node already runs this version.
                        self.with_node(&node_id, |s| s.acked = req.version_info.clone());
                    }
                    st.client_version = req.version_info;
                    st.subscribed = true;
                    let snap = snapshots.borrow_and_update().clone();
                    if !self.maybe_send(&node_id, &mut st, &snap, &tx).await {
                        break;
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    if let (true, Some(node_id)) = (st.subscribed, guard.node.clone())
                        && !self.maybe_send(&node_id, &mut st, &snap, &tx).await
                    {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
    }

    /// Sends `snap` when the node needs it. Returns false when the stream is gone.
    async fn maybe_send(
        &self,
        node_id: &str,
        st: &mut StreamState,
        snap: &Snapshot,
        tx: &mpsc::Sender<Result<StreamSnapshotsResponse, Status>>,
    ) -> bool {
        if snap.version == st.client_version || st.last_sent.as_deref() == Some(snap.version.as_str()) {
            return true;
        }
        if self.with_node(node_id, |s| s.nacked.contains(&snap.version)) {
            self.metrics.suppressed_resends.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %node_id, version = %snap.version, "not resending a version this node rejected");
            return true;
        }
        st.nonce_counter += 1;
        st.last_nonce = st.nonce_counter.to_string();
        st.last_sent = Some(snap.version.clone());
        let resp = StreamSnapshotsResponse {
            version_info: snap.version.clone(),
            nonce: st.last_nonce.clone(),
            routes: snap.routes.clone(),
            control_plane: self.control_plane.clone(),
        };
        self.metrics.responses_sent.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(node = %node_id, version = %snap.version, routes = snap.routes.len(), "sending snapshot");
        tx.send(Ok(resp)).await.is_ok()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<StreamSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryService for XdsServer {
    type StreamSnapshotsStream = ResponseStream;

    async fn stream_snapshots(
        &self,
        request: Request<Streaming<StreamSnapshotsRequest>>,
    ) -> Result<Response<Self::StreamSnapshotsStream>, Status> {
        if let Some(expected) = &self.node_token {
            let got = request.metadata().get(NODE_TOKEN_HEADER).and_then(|v| v.to_str().ok());
            if !got.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
                return Err(Status::unauthenticated("missing or wrong x-node-token"));
            }
        }
        let (tx, rx) = mpsc::channel(4);
        let server = self.clone();
        tokio::spawn(server.run_stream(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
    use aigw_proto::discovery::v1::discovery_service_server::DiscoveryServiceServer;
    use aigw_proto::discovery::v1::{ErrorDetail, Node};
    use std::time::Duration;

    fn snap(v: &str) -> Arc<Snapshot> {
        Arc::new(Snapshot { version: v.into(), routes: vec![Route { id: format!("r-{v}"), ..Default::default() }] })
    }

    async fn start(initial: &str) -> (String, watch::Sender<Arc<Snapshot>>, XdsServer) {
        let (tx, rx) = watch::channel(snap(initial));
        let server = XdsServer::new(rx, "test".into(), None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = DiscoveryServiceServer::new(server.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (format!("http://{addr}"), tx, server)
    }

    struct Peer {
        tx: mpsc::Sender<StreamSnapshotsRequest>,
        rx: Streaming<StreamSnapshotsResponse>,
    }

    impl Peer {
        async fn open(url: &str, node: &str, version: &str) -> Peer {
            let mut c = DiscoveryServiceClient::connect(url.to_owned()).await.unwrap();
            let (tx, rx) = mpsc::channel(8);
            tx.send(req(Some(node), version, "", None)).await.unwrap();
            let rx = c.stream_snapshots(ReceiverStream::new(rx)).await.unwrap().into_inner();
            Peer { tx, rx }
        }
        async fn next(&mut self) -> StreamSnapshotsResponse {
            tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await.expect("response in time").unwrap().unwrap()
        }
        /// Absence check: nothing arrives within a short bounded window.
        async fn assert_silent(&mut self) {
            let r = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
            assert!(r.is_err(), "unexpected response: {r:?}");
        }
        async fn send(&self, r: StreamSnapshotsRequest) {
            self.tx.send(r).await.unwrap();
        }
    }

    fn req(node: Option<&str>, version: &str, nonce: &str, nack: Option<&str>) -> StreamSnapshotsRequest {
        StreamSnapshotsRequest {
            node: node.map(|n| Node { id: n.into(), build_version: String::new() }),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|m| ErrorDetail { code: 3, message: m.into() }),
        }
    }

    #[tokio::test]
    async fn ack_nack_stale_nonce_and_reconnect() {
        let (url, publish, server) = start("v1").await;
        let mut p = Peer::open(&url, "n1", "").await;
        let r = p.next().await;
        assert_eq!((r.version_info.as_str(), r.nonce.as_str(), r.routes.len()), ("v1", "1", 1));
        p.send(req(None, "v1", "1", None)).await; // ACK
        p.assert_silent().await;

        publish.send(snap("v2")).unwrap();
        let r = p.next().await;
        assert_eq!((r.version_info.as_str(), r.nonce.as_str()), ("v2", "2"));
        p.send(req(None, "v1", "2", Some("bad route"))).await; // NACK keeps v1
        p.assert_silent().await; // never resent
        p.send(req(None, "v1", "1", None)).await; // stale nonce: ignored
        p.assert_silent().await;

        publish.send(snap("v3")).unwrap();
        let r = p.next().await;
        assert_eq!(r.version_info, "v3", "a new version after a NACK is sent");
        p.send(req(None, "v3", &r.nonce, None)).await;

        let m = server.metrics();
        assert_eq!(m.nacks.load(Ordering::Relaxed), 1);
        assert_eq!(m.stale_nonces.load(Ordering::Relaxed), 1);
        let status = server.node_statuses();
        assert_eq!(status[0].nacked_versions, vec!["v2".to_owned()]);
        assert_eq!(status[0].last_nack_error.as_deref(), Some("bad route"));

        // Reconnect at the current version: nothing is resent.
        drop(p);
        let mut p = Peer::open(&url, "n1", "v3").await;
        p.assert_silent().await;
        // A NACKed version is not resent after a reconnect either.
        publish.send(snap("v2")).unwrap();
        p.assert_silent().await;
        // ...but another node gets it.
        let mut other = Peer::open(&url, "n2", "").await;
        assert_eq!(other.next().await.version_info, "v2");
        assert_eq!(server.node_statuses().iter().find(|s| s.node_id == "n2").unwrap().connected_streams, 1);
        assert!(server.metrics().suppressed_resends.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn first_request_needs_a_node_id() {
        let (url, _publish, _server) = start("v1").await;
        let mut c = DiscoveryServiceClient::connect(url).await.unwrap();
        let (tx, rx) = mpsc::channel(1);
        tx.send(req(None, "", "", None)).await.unwrap();
        let mut s = c.stream_snapshots(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let err = s.message().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
