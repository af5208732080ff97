//! The discovery server: typed resources with delta semantics over one bidi stream.
//!
//! Rules (xDS, with the go-control-plane pitfalls avoided):
//! - Every stream must present the node token (`x-node-token`), compared in constant
//!   time; otherwise it ends with UNAUTHENTICATED before anything is sent.
//! - The first response of a stream is the full set of the subscribed types, unless the
//!   proxy already runs the current version (then nothing is sent until it changes).
//!   Later responses are deltas from what the proxy last acknowledged: changed and
//!   removed resources under the new system version.
//! - At most one response is unacknowledged per stream; versions published meanwhile
//!   are coalesced into the next delta.
//! - A request whose nonce is not the one in flight is stale and ignored (counted).
//! - `error_detail` marks a NACK: logged, counted, recorded per node for
//!   `/status/nodes`, and that version is not resent *on this stream* (no NACK loop);
//!   the next different version is sent as soon as it exists. A new stream starts
//!   afresh, so a proxy restarted with a fix receives the current version again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aigw_proto::discovery::v1::discovery_service_server::DiscoveryService;
use aigw_proto::discovery::v1::{Resource, ResourceName, StreamSnapshotsRequest, StreamSnapshotsResponse};
use futures_util::Stream;
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The resources of one type, by name.
pub type TypeSet = BTreeMap<Arc<str>, Arc<Resource>>;

/// One published, immutable set of resources of every type.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Content hash of every resource (the system version).
    pub version: String,
    /// type URL → resources by name.
    pub types: BTreeMap<String, TypeSet>,
}

impl Snapshot {
    /// Number of resources of every type.
    pub fn len(&self) -> usize {
        self.types.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resources of the types `wanted` accepts.
    fn all(&self, wanted: &dyn Fn(&str) -> bool) -> Vec<Resource> {
        self.types.iter().filter(|(t, _)| wanted(t)).flat_map(|(_, set)| set.values().map(|r| (**r).clone())).collect()
    }

    /// What changes from `self` to `newer` for the types `wanted` accepts: changed or
    /// added resources, and removed names. One merge walk per type: O(resources), with
    /// unchanged resources recognised by pointer before their versions are compared.
    fn delta(&self, newer: &Snapshot, wanted: &dyn Fn(&str) -> bool) -> (Vec<Resource>, Vec<ResourceName>) {
        let empty = TypeSet::new();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let type_urls: std::collections::BTreeSet<&String> = self.types.keys().chain(newer.types.keys()).collect();
        for t in type_urls.into_iter().filter(|t| wanted(t)) {
            let old = self.types.get(t).unwrap_or(&empty);
            let new = newer.types.get(t).unwrap_or(&empty);
            let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
            loop {
                match (a.peek(), b.peek()) {
                    (None, None) => break,
                    (Some((name, _)), None) => {
                        removed.push(ResourceName { type_url: t.clone(), name: name.to_string() });
                        a.next();
                    }
                    (None, Some((_, r))) => {
                        changed.push(Resource::clone(r));
                        b.next();
                    }
                    (Some((na, ra)), Some((nb, rb))) => match na.cmp(nb) {
                        std::cmp::Ordering::Less => {
                            removed.push(ResourceName { type_url: t.clone(), name: na.to_string() });
                            a.next();
                        }
                        std::cmp::Ordering::Greater => {
                            changed.push(Resource::clone(rb));
                            b.next();
                        }
                        std::cmp::Ordering::Equal => {
                            if !Arc::ptr_eq(ra, rb) && ra.version != rb.version {
                                changed.push(Resource::clone(rb));
                            }
                            a.next();
                            b.next();
                        }
                    },
                }
            }
        }
        (changed, removed)
    }
}

/// Counters exposed by the config service's `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub streams_active: AtomicU64,
    pub responses_sent: AtomicU64,
    pub full_responses_sent: AtomicU64,
    pub resources_sent: AtomicU64,
    /// gRPC message bytes of every response sent (protobuf encoding + 5-byte frame header).
    pub response_bytes: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub stale_nonces: AtomicU64,
    pub suppressed_resends: AtomicU64,
    pub unauthenticated: AtomicU64,
}

/// What the server knows of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    pub node_id: String,
    pub connected_streams: u32,
    pub acked_version: String,
    /// The most recent versions this node rejected (newest last).
    pub nacked_versions: Vec<String>,
    pub last_nack_error: Option<String>,
    pub last_seen_unix: u64,
}

/// How many rejected versions `/status/nodes` keeps per node.
const NACK_HISTORY: usize = 8;

#[derive(Default)]
struct NodeState {
    connected: u32,
    acked: String,
    nacked: VecDeque<String>,
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
    node_token: Arc<str>,
}

/// Metadata key proxies use to present `--node-token`.
pub const NODE_TOKEN_HEADER: &str = "x-node-token";

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Compares a presented secret with the expected one in constant time: both are hashed
/// with SHA-256 and the digests compared with a fold of XORs, so neither the position of
/// the first difference nor the expected length shows in the timing.
pub fn secret_eq(got: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(got), Sha256::digest(expected));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl XdsServer {
    /// `node_token` is required: discovery is always authenticated.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, control_plane: String, node_token: String) -> Self {
        Self { snapshots, nodes: Default::default(), metrics: Default::default(), control_plane, node_token: node_token.into() }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Per-node status, ordered by node id.
    pub fn node_statuses(&self) -> Vec<NodeStatus> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .map(|(id, s)| NodeStatus {
                node_id: id.clone(),
                connected_streams: s.connected,
                acked_version: s.acked.clone(),
                nacked_versions: s.nacked.iter().cloned().collect(),
                last_nack_error: s.last_error.clone(),
                last_seen_unix: s.last_seen,
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

/// Per-stream protocol state.
#[derive(Default)]
struct StreamState {
    nonce_counter: u64,
    /// Types the proxy subscribed to; empty = every type.
    types: HashSet<String>,
    /// What the proxy has applied, as far as this stream knows (None: unknown, so the
    /// next response is the full set).
    acked: Option<Arc<Snapshot>>,
    /// The unacknowledged response: its nonce and the snapshot it brings the proxy to.
    in_flight: Option<(String, Arc<Snapshot>)>,
    /// The version the proxy rejected on this stream: never resent here.
    nacked: Option<String>,
}

type Tx = mpsc::Sender<Result<StreamSnapshotsResponse, Status>>;

impl XdsServer {
    async fn run_stream(self, mut inbound: Streaming<StreamSnapshotsRequest>, tx: Tx) {
        self.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
        let mut guard = StreamGuard { server: self.clone(), node: None };
        let mut snapshots = self.snapshots.clone();
        let mut st = StreamState::default();
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
                            self.with_node(&id, |s| {
                                s.connected += 1;
                                if !req.system_version_info.is_empty() {
                                    s.acked = req.system_version_info.clone();
                                }
                            });
                            tracing::info!(node = %id, version = %req.system_version_info, "discovery stream opened");
                            guard.node = Some(id.clone());
                            st.types = req.type_urls.iter().cloned().collect();
                            let current = snapshots.borrow_and_update().clone();
                            // The proxy runs the current version already: nothing to send yet.
                            if !req.system_version_info.is_empty() && req.system_version_info == current.version {
                                st.acked = Some(current.clone());
                            }
                            if !self.maybe_send(&id, &mut st, &current, &tx).await {
                                break;
                            }
                            continue;
                        }
                    };
                    let in_flight_nonce = st.in_flight.as_ref().map(|(n, _)| n.as_str());
                    if in_flight_nonce != Some(req.response_nonce.as_str()) {
                        self.metrics.stale_nonces.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = %node_id, nonce = %req.response_nonce, "ignoring a request with a stale nonce");
                        continue;
                    }
                    let Some((_, sent)) = st.in_flight.take() else { continue };
                    if let Some(err) = &req.error_detail {
                        self.metrics.nacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %node_id, version = %sent.version, error = %err.message, "proxy rejected an update (nack)");
                        self.with_node(&node_id, |s| {
                            if s.nacked.len() == NACK_HISTORY {
                                s.nacked.pop_front();
                            }
                            s.nacked.push_back(sent.version.clone());
                            s.last_error = Some(err.message.clone());
                        });
                        st.nacked = Some(sent.version.clone());
                    } else {
                        self.metrics.acks.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(node = %node_id, version = %sent.version, "proxy applied an update (ack)");
                        self.with_node(&node_id, |s| s.acked = sent.version.clone());
                        st.acked = Some(sent);
                    }
                    let current = snapshots.borrow_and_update().clone();
                    if !self.maybe_send(&node_id, &mut st, &current, &tx).await {
                        break;
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let current = snapshots.borrow_and_update().clone();
                    if let Some(node_id) = guard.node.clone()
                        && !self.maybe_send(&node_id, &mut st, &current, &tx).await
                    {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
    }

    /// Sends the proxy what it lacks of `current`, when it needs it and nothing is in
    /// flight. Returns false when the stream is gone.
    async fn maybe_send(&self, node_id: &str, st: &mut StreamState, current: &Arc<Snapshot>, tx: &Tx) -> bool {
        if st.in_flight.is_some() || st.acked.as_ref().is_some_and(|a| a.version == current.version) {
            return true;
        }
        if st.nacked.as_deref() == Some(current.version.as_str()) {
            self.metrics.suppressed_resends.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %node_id, version = %current.version, "not resending a version this stream rejected");
            return true;
        }
        let types = &st.types;
        let wanted = |t: &str| types.is_empty() || types.contains(t);
        let (resources, removed, full_state) = match &st.acked {
            None => (current.all(&wanted), Vec::new(), true),
            Some(acked) => {
                let (changed, removed) = acked.delta(current, &wanted);
                (changed, removed, false)
            }
        };
        st.nonce_counter += 1;
        let nonce = st.nonce_counter.to_string();
        st.in_flight = Some((nonce.clone(), current.clone()));
        let resp = StreamSnapshotsResponse {
            system_version_info: current.version.clone(),
            nonce,
            resources,
            removed_resources: removed,
            full_state,
            control_plane: self.control_plane.clone(),
        };
        let bytes = resp.encoded_len() as u64 + 5;
        self.metrics.responses_sent.fetch_add(1, Ordering::Relaxed);
        if full_state {
            self.metrics.full_responses_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.resources_sent.fetch_add(resp.resources.len() as u64, Ordering::Relaxed);
        self.metrics.response_bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::debug!(node = %node_id, version = %current.version, full_state, resources = resp.resources.len(),
            removed = resp.removed_resources.len(), bytes, "sending update");
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
        let got = request.metadata().get(NODE_TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if !secret_eq(got, self.node_token.as_bytes()) {
            self.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unauthenticated("missing or wrong x-node-token"));
        }
        let (tx, rx) = mpsc::channel(4);
        let server = self.clone();
        tokio::spawn(server.run_stream(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
    use aigw_proto::discovery::v1::discovery_service_server::DiscoveryServiceServer;
    use aigw_proto::discovery::v1::{ErrorDetail, Node};
    use std::time::Duration;

    const ROUTE: &str = "type.googleapis.com/aigw.config.v1.Route";
    const OTHER: &str = "type.googleapis.com/aigw.config.v1.Consumer";
    const TOKEN: &str = "tok";

    fn res(t: &str, name: &str, v: &str) -> Arc<Resource> {
        Arc::new(Resource { type_url: t.into(), name: name.into(), version: v.into(), payload: None })
    }

    /// A snapshot: (type, name, resource version) triples; the version names the set.
    fn snap(version: &str, items: &[(&str, &str, &str)]) -> Arc<Snapshot> {
        let mut s = Snapshot { version: version.into(), types: BTreeMap::new() };
        for (t, n, v) in items {
            s.types.entry((*t).to_owned()).or_default().insert(Arc::from(*n), res(t, n, v));
        }
        Arc::new(s)
    }

    async fn start(initial: Arc<Snapshot>) -> (String, watch::Sender<Arc<Snapshot>>, XdsServer) {
        let (tx, rx) = watch::channel(initial);
        let server = XdsServer::new(rx, "test".into(), TOKEN.into());
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

    fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut().insert(NODE_TOKEN_HEADER, t.parse().unwrap());
        }
        r
    }

    impl Peer {
        async fn open(url: &str, node: &str, version: &str, types: &[&str]) -> Peer {
            let mut c = DiscoveryServiceClient::connect(url.to_owned()).await.unwrap();
            let (tx, rx) = mpsc::channel(8);
            let mut first = req(Some(node), version, "", None);
            first.type_urls = types.iter().map(|t| (*t).to_owned()).collect();
            tx.send(first).await.unwrap();
            let rx = c.stream_snapshots(with_token(ReceiverStream::new(rx), Some(TOKEN))).await.unwrap().into_inner();
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
        async fn ack(&self, r: &StreamSnapshotsResponse) {
            self.send(req(None, &r.system_version_info, &r.nonce, None)).await;
        }
    }

    fn req(node: Option<&str>, version: &str, nonce: &str, nack: Option<&str>) -> StreamSnapshotsRequest {
        StreamSnapshotsRequest {
            node: node.map(|n| Node { id: n.into(), build_version: String::new() }),
            system_version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: nack.map(|m| ErrorDetail { code: 3, message: m.into() }),
            type_urls: Vec::new(),
        }
    }

    fn names(r: &StreamSnapshotsResponse) -> (Vec<String>, Vec<String>) {
        (r.resources.iter().map(|x| x.name.clone()).collect(), r.removed_resources.iter().map(|x| x.name.clone()).collect())
    }

    #[test]
    fn deltas_are_changes_and_removals() {
        let all = |_: &str| true;
        let a = snap("1", &[(ROUTE, "a", "1"), (ROUTE, "b", "1"), (ROUTE, "c", "1"), (OTHER, "x", "1")]);
        let b = snap("2", &[(ROUTE, "b", "2"), (ROUTE, "c", "1"), (ROUTE, "d", "1"), (OTHER, "y", "1")]);
        let (changed, removed) = a.delta(&b, &all);
        let changed: Vec<_> = changed.iter().map(|r| r.name.as_str()).collect();
        let removed: Vec<_> = removed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!((changed, removed), (vec!["y", "b", "d"], vec!["x", "a"]), "types in order, names in order");
        let only_routes = |t: &str| t == ROUTE;
        let (changed, removed) = a.delta(&b, &only_routes);
        assert_eq!((changed.len(), removed.len()), (2, 1));
        assert_eq!(b.all(&only_routes).len(), 3);
        assert_eq!(b.len(), 4);
    }

    #[tokio::test]
    async fn full_set_then_deltas_acks_nacks_and_stale_nonces() {
        let (url, publish, server) = start(snap("v1", &[(ROUTE, "a", "1"), (ROUTE, "b", "1")])).await;
        let mut p = Peer::open(&url, "n1", "", &[]).await;
        let r = p.next().await;
        assert!(r.full_state);
        assert_eq!((r.system_version_info.as_str(), r.nonce.as_str(), names(&r).0.len()), ("v1", "1", 2));
        // Published before the ACK: held back (one response in flight), then coalesced.
        publish.send(snap("v2", &[(ROUTE, "a", "2"), (ROUTE, "b", "1")])).unwrap();
        publish.send(snap("v3", &[(ROUTE, "a", "3"), (ROUTE, "c", "1")])).unwrap();
        p.assert_silent().await;
        p.ack(&r).await;
        let r = p.next().await;
        assert!(!r.full_state);
        assert_eq!(r.system_version_info, "v3");
        assert_eq!(names(&r), (vec!["a".to_owned(), "c".to_owned()], vec!["b".to_owned()]));
        // NACK: kept at v1; v3 is not resent on this stream, a stale nonce is ignored.
        p.send(req(None, "v1", &r.nonce, Some("bad route"))).await;
        p.assert_silent().await;
        p.send(req(None, "v1", "1", None)).await;
        p.assert_silent().await;
        // A newer version is a delta from what the proxy has (v1), not from v3.
        publish.send(snap("v4", &[(ROUTE, "a", "1"), (ROUTE, "b", "1"), (ROUTE, "d", "1")])).unwrap();
        let r = p.next().await;
        assert_eq!((r.system_version_info.as_str(), r.full_state), ("v4", false));
        assert_eq!(names(&r), (vec!["d".to_owned()], vec![]));
        p.ack(&r).await;

        tokio::time::timeout(Duration::from_secs(5), async {
            while server.node_statuses()[0].acked_version != "v4" {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let m = server.metrics();
        assert_eq!((m.acks.load(Ordering::Relaxed), m.nacks.load(Ordering::Relaxed)), (2, 1));
        assert_eq!(m.stale_nonces.load(Ordering::Relaxed), 1);
        assert!(m.response_bytes.load(Ordering::Relaxed) > 0);
        let status = server.node_statuses();
        assert_eq!(status[0].nacked_versions, vec!["v3".to_owned()]);
        assert_eq!(status[0].last_nack_error.as_deref(), Some("bad route"));
    }

    #[tokio::test]
    async fn a_nack_holds_for_its_stream_only() {
        let (url, publish, _server) = start(snap("v1", &[(ROUTE, "a", "1")])).await;
        let mut p = Peer::open(&url, "n1", "", &[]).await;
        let r = p.next().await;
        p.ack(&r).await;
        publish.send(snap("v2", &[(ROUTE, "a", "2")])).unwrap();
        let r = p.next().await;
        p.send(req(None, "v1", &r.nonce, Some("missing $env://X"))).await;
        p.assert_silent().await;
        // Republishing the same rejected version is not resent on this stream (no loop).
        publish.send(snap("v2", &[(ROUTE, "a", "2")])).unwrap();
        p.assert_silent().await;
        // The proxy restarts (same node id) with the fix: a new stream gets v2 in full.
        drop(p);
        let mut p = Peer::open(&url, "n1", "v1", &[]).await;
        let r = p.next().await;
        assert_eq!((r.system_version_info.as_str(), r.full_state), ("v2", true));
        // And if it NACKs again, it is still not resent on that stream.
        p.send(req(None, "v1", &r.nonce, Some("still missing"))).await;
        p.assert_silent().await;
    }

    #[tokio::test]
    async fn reconnect_at_the_current_version_gets_nothing_and_types_filter() {
        let (url, publish, _server) = start(snap("v1", &[(ROUTE, "a", "1"), (OTHER, "x", "1")])).await;
        let mut p = Peer::open(&url, "n1", "v1", &[]).await;
        p.assert_silent().await;
        publish.send(snap("v2", &[(ROUTE, "a", "1"), (OTHER, "x", "2")])).unwrap();
        let r = p.next().await;
        assert_eq!(names(&r), (vec!["x".to_owned()], vec![]));
        // A proxy that only knows routes never sees other types.
        let mut q = Peer::open(&url, "n2", "", &[ROUTE]).await;
        let r = q.next().await;
        assert_eq!(names(&r), (vec!["a".to_owned()], vec![]));
    }

    #[tokio::test]
    async fn streams_need_the_node_token_and_a_node_id() {
        let (url, _publish, server) = start(snap("v1", &[(ROUTE, "a", "1")])).await;
        for token in [None, Some("wrong"), Some("")] {
            let mut c = DiscoveryServiceClient::connect(url.clone()).await.unwrap();
            let (tx, rx) = mpsc::channel(1);
            tx.send(req(Some("n"), "", "", None)).await.unwrap();
            let err = c.stream_snapshots(with_token(ReceiverStream::new(rx), token)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}");
        }
        assert_eq!(server.metrics().unauthenticated.load(Ordering::Relaxed), 3);
        let mut c = DiscoveryServiceClient::connect(url).await.unwrap();
        let (tx, rx) = mpsc::channel(1);
        tx.send(req(None, "", "", None)).await.unwrap();
        let mut s = c.stream_snapshots(with_token(ReceiverStream::new(rx), Some(TOKEN))).await.unwrap().into_inner();
        assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    /// Two replicas publishing the same content: a client whose stream to the first one
    /// breaks moves to the second at once, and gets nothing resent (same version).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_fails_over_to_the_next_replica_without_a_resend() {
        let content = [(ROUTE, "a", "1"), (ROUTE, "b", "1")];
        let (url_a, _pa, server_a) = start(snap("v1", &content)).await;
        let (url_b, _pb, server_b) = start(snap("v1", &content)).await;
        let relay = aigw_testkit::relay::Relay::start(url_a.trim_start_matches("http://")).await;
        let mut cfg = crate::client::ClientConfig::new(vec![format!("http://{}", relay.addr), url_b.clone()], "n1");
        cfg.node_token = Some(TOKEN.into());
        let applied = Arc::new(AtomicU64::new(0));
        let count = applied.clone();
        let applier: crate::Applier = Arc::new(move |_u| {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = tokio::spawn(crate::client::run(cfg, applier, async move {
            let _ = stopped.await;
        }));
        let wait = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !f() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        };
        let a = server_a.clone();
        wait("the first replica's full set applied", Box::new(move || a.node_statuses().first().is_some_and(|n| n.acked_version == "v1")))
            .await;
        relay.cut();
        let b = server_b.clone();
        wait("a stream on the second replica", Box::new(move || b.metrics().streams_active.load(Ordering::Relaxed) == 1)).await;
        assert_eq!(server_b.node_statuses()[0].acked_version, "v1", "the proxy said which version it runs");
        assert_eq!(server_b.metrics().responses_sent.load(Ordering::Relaxed), 0, "nothing resent at the same version");
        assert_eq!(applied.load(Ordering::Relaxed), 1);
        let _ = stop.send(());
        client.await.unwrap();
    }

    #[test]
    fn secrets_compare_by_digest() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"", b"abc"));
        assert!(!secret_eq(b"abc", b"abcd"));
    }
}
