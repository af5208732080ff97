//! A small etcd v3 client: KV (Range, Txn, Put, DeleteRange, Compact), Watch and
//! Auth.Authenticate, over the tonic and prost already in the tree, with rustls TLS.
//!
//! Why not the `etcd-client` crate: its build script runs `tonic-prost-build` on etcd's
//! protos, which needs a `protoc` binary; this workspace compiles its protos with
//! `protox` (no system protoc), so the subset of etcd's API used here is declared in
//! `proto/etcd/` with etcd's own names and field numbers (aigw-proto compiles it).
//!
//! Behaviour:
//! - Several endpoints (members of one cluster); one is current. Every request carries
//!   `hasleader: true`, so a member that has lost its leader answers at once with
//!   "etcdserver: no leader" instead of holding the request.
//! - A request that certainly did not reach a member with a leader (connection refused
//!   or failed, "no leader", "too many requests") moves to the next member and is tried
//!   again, until the request's deadline ([`Options::timeout`]) — or, with
//!   [`Patience::OneRound`], once on every member. A request that may have been applied
//!   (the connection broke mid-flight, the member timed out) is retried only if it is
//!   a read; a write then fails with [`EtcdError::Unavailable`] saying so.
//! - `--etcd-user/--etcd-password`: a token from Authenticate is sent as metadata
//!   `token`; an expired token is renewed once per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aigw_proto::etcd::etcdserverpb::auth_client::AuthClient;
use aigw_proto::etcd::etcdserverpb::kv_client::KvClient;
use aigw_proto::etcd::etcdserverpb::watch_client::WatchClient;
use aigw_proto::etcd::etcdserverpb::{
    AuthenticateRequest, CompactionRequest, CompactionResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, watch_request,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

pub use aigw_proto::etcd::etcdserverpb as pb;
pub use aigw_proto::etcd::mvccpb;

/// Largest message accepted from etcd (a full range of 10,000 routes is several MB; the
/// load pages anyway).
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No member with quorum answered within the deadline (or the request may have been
    /// applied and cannot be retried: the message says so).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the request (permission denied, request too large, bad credentials…).
    #[error("etcd refused the request: {0}")]
    Rejected(String),
    /// The revision asked for is older than etcd's compaction point.
    #[error("etcd: {0}")]
    Compacted(String),
    #[error("etcd client options: {0}")]
    Config(String),
}

/// A user name and password (`--etcd-user/--etcd-password`); the password is never shown.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// TLS to the members (`--etcd-ca`, `--etcd-cert/--etcd-key`), as PEM.
#[derive(Clone, Default)]
pub struct Tls {
    /// Verifies the members' certificates (None: the webpki roots).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (etcd's `--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("ca", &self.ca_pem.is_some()).field("identity", &self.identity.is_some()).finish()
    }
}

#[derive(Clone)]
pub struct Options {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// TLS to every member (None: plain HTTP/2).
    pub tls: Option<Tls>,
    pub credentials: Option<Credentials>,
    /// Deadline of one request, retries included.
    pub timeout: Duration,
    /// TCP connect timeout to one member.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Options {
    pub fn new(endpoints: Vec<String>) -> Options {
        Options { endpoints, tls: None, credentials: None, timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(1) }
    }
}

/// How long a request keeps trying members that certainly did not apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Until the deadline, with a short backoff between rounds (rides over a leader
    /// election).
    UntilDeadline,
    /// Once on every member, then fail (fail fast when quorum is known to be lost).
    OneRound,
}

/// What a failed attempt means for the request.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// It never reached a member that could apply it: try another.
    NotSent,
    /// It may have been applied.
    Ambiguous,
    /// The auth token expired: authenticate again.
    AuthExpired,
    Compacted,
    Rejected,
}

/// Whether an error chain says the connection could not be made (so nothing was sent).
fn is_connect_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        let text = err.to_string();
        if text.contains("tcp connect error") || text.contains("dns error") || text.contains("client error (Connect)") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn classify(s: &tonic::Status) -> Failure {
    let msg = s.message();
    match s.code() {
        tonic::Code::Unavailable if msg.contains("no leader") => Failure::NotSent,
        tonic::Code::ResourceExhausted if msg.contains("too many requests") => Failure::NotSent,
        tonic::Code::Unauthenticated | tonic::Code::InvalidArgument if msg.contains("invalid auth token") => Failure::AuthExpired,
        tonic::Code::OutOfRange if msg.contains("compacted") => Failure::Compacted,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal => {
            if std::error::Error::source(s).is_some_and(is_connect_error) || msg.contains("tcp connect error") {
                Failure::NotSent
            } else {
                Failure::Ambiguous
            }
        }
        tonic::Code::DeadlineExceeded | tonic::Code::Aborted => Failure::Ambiguous,
        _ => Failure::Rejected,
    }
}

/// A status as one line with its causes (tonic's message is only the outermost layer).
fn describe(s: &tonic::Status) -> String {
    let mut out = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_owned() };
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let m = e.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = e.source();
    }
    out
}

struct Member {
    addr: String,
    channel: Channel,
}

struct Inner {
    members: Vec<Member>,
    current: AtomicUsize,
    credentials: Option<Credentials>,
    token: RwLock<Option<AsciiMetadataValue>>,
    timeout: Duration,
}

/// The client. Cheap to clone; every clone shares the members' connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.inner.members.iter().map(|m| m.addr.as_str()).collect();
        f.debug_struct("Client").field("endpoints", &endpoints).field("current", &self.current_endpoint()).finish_non_exhaustive()
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a
/// prefix): the prefix with its last byte incremented (trailing 0xff bytes dropped).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the whole key space after the prefix.
    vec![0]
}

/// The one client builder of aigw-net, for gRPC (ALPN h2), with the etcd flags' names in
/// its errors.
fn connector(tls: Option<&Tls>, connect_timeout: Duration) -> Result<aigw_net::client::HttpsConnector, EtcdError> {
    use aigw_net::client::{Alpn, Identity, Options as NetOptions, Roots};
    let mut o = NetOptions::default().alpn(Alpn::H2).connect_timeout(connect_timeout).tcp_keepalive(Duration::from_secs(30));
    if let Some(t) = tls {
        if let Some(pem) = &t.ca_pem {
            o = o.roots(Roots::Pem { pem, what: "--etcd-ca" });
        }
        if let Some((cert, key)) = &t.identity {
            o = o.identity(Identity { cert_pem: cert, cert_what: "--etcd-cert", key_pem: key, key_what: "--etcd-key" });
        }
    }
    aigw_net::client::connector(&o).map_err(|e| EtcdError::Config(e.to_string()))
}

impl Client {
    /// Connections are made lazily, on the first request to each member.
    pub fn new(opts: Options) -> Result<Client, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::Config("no etcd endpoint".into()));
        }
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let connector = connector(opts.tls.as_ref(), opts.connect_timeout)?;
        let mut members = Vec::with_capacity(opts.endpoints.len());
        for addr in &opts.endpoints {
            let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                .map_err(|e| EtcdError::Config(format!("etcd endpoint {addr:?}: {e}")))?
                .connect_timeout(opts.connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true);
            members.push(Member { addr: addr.clone(), channel: endpoint.connect_with_connector_lazy(connector.clone()) });
        }
        Ok(Client {
            inner: Arc::new(Inner {
                members,
                current: AtomicUsize::new(0),
                credentials: opts.credentials,
                token: RwLock::new(None),
                timeout: opts.timeout,
            }),
        })
    }

    /// The member requests go to now.
    pub fn current_endpoint(&self) -> String {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.members.len();
        self.inner.members[i].addr.clone()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.addr.clone()).collect()
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Moves off member `i` (if it is still the current one).
    fn fail_over(&self, i: usize) {
        let n = self.inner.members.len();
        let _ = self.inner.current.compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn metadata(&self, md: &mut MetadataMap) {
        md.insert("hasleader", AsciiMetadataValue::from_static("true"));
        if let Some(t) = self.inner.token.read().unwrap_or_else(|e| e.into_inner()).clone() {
            md.insert("token", t);
        }
    }

    fn request<T>(&self, msg: T, deadline: Instant) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        self.metadata(req.metadata_mut());
        req.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        req
    }

    /// Authenticates on member `i` when credentials are set and no token is held.
    async fn ensure_token(&self, i: usize, deadline: Instant) -> Result<(), tonic::Status> {
        let Some(c) = &self.inner.credentials else { return Ok(()) };
        if self.inner.token.read().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        let mut req = tonic::Request::new(AuthenticateRequest { name: c.user.clone(), password: c.password.clone() });
        req.metadata_mut().insert("hasleader", AsciiMetadataValue::from_static("true"));
        req.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        let resp = AuthClient::new(self.inner.members[i].channel.clone()).authenticate(req).await?.into_inner();
        let token =
            resp.token.parse::<AsciiMetadataValue>().map_err(|_| tonic::Status::internal("etcd returned an unusable auth token"))?;
        *self.inner.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        tracing::debug!(member = %self.inner.members[i].addr, user = %c.user, "authenticated to etcd");
        Ok(())
    }

    /// Runs `call` on the current member, moving to the next one as the module doc says.
    async fn call<T, F, Fut>(&self, what: &str, read: bool, patience: Patience, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.inner.members.len();
        let deadline = Instant::now() + self.inner.timeout;
        let mut errors: Vec<String> = Vec::new();
        let mut tried_in_round = 0usize;
        let mut rounds = 0u32;
        let mut auth_renewed = false;
        loop {
            let i = self.inner.current.load(Ordering::Relaxed) % n;
            let addr = self.inner.members[i].addr.clone();
            let attempt = async {
                self.ensure_token(i, deadline).await?;
                call(self.inner.members[i].channel.clone(), deadline).await
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => {
                    let kind = classify(&status);
                    let text = describe(&status);
                    tracing::debug!(member = %addr, op = what, error = %text, kind = ?kind, "etcd request failed");
                    match kind {
                        Failure::AuthExpired if !auth_renewed && self.inner.credentials.is_some() => {
                            auth_renewed = true;
                            *self.inner.token.write().unwrap_or_else(|e| e.into_inner()) = None;
                            continue;
                        }
                        Failure::Compacted => return Err(EtcdError::Compacted(format!("{addr}: {text}"))),
                        Failure::Rejected | Failure::AuthExpired => return Err(EtcdError::Rejected(format!("{addr}: {text}"))),
                        Failure::Ambiguous if !read => {
                            self.fail_over(i);
                            return Err(EtcdError::Unavailable(format!("{addr}: {text} (the {what} may or may not have been applied)")));
                        }
                        _ => {
                            errors.retain(|e| !e.starts_with(&format!("{addr}:")));
                            errors.push(format!("{addr}: {text}"));
                        }
                    }
                }
                Err(_) => {
                    errors.push(format!("{addr}: no answer within {:?}", self.inner.timeout));
                    if !read {
                        errors.push(format!("the {what} may or may not have been applied"));
                    }
                    self.fail_over(i);
                    return Err(EtcdError::Unavailable(errors.join("; ")));
                }
            }
            if Instant::now() >= deadline {
                errors.push(format!("no answer within {:?}", self.inner.timeout));
                return Err(EtcdError::Unavailable(errors.join("; ")));
            }
            self.fail_over(i);
            tried_in_round += 1;
            if tried_in_round >= n {
                tried_in_round = 0;
                rounds += 1;
                if patience == Patience::OneRound {
                    return Err(EtcdError::Unavailable(errors.join("; ")));
                }
                // Every member refused: wait a little (a leader election takes about one
                // election timeout), within the deadline.
                let pause = Duration::from_millis(50u64 << rounds.min(3));
                if Instant::now() + pause >= deadline {
                    errors.push(format!("no member with a leader within {:?}", self.inner.timeout));
                    return Err(EtcdError::Unavailable(errors.join("; ")));
                }
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// A linearizable (quorum) read unless `req.serializable`.
    pub async fn range(&self, req: RangeRequest, patience: Patience) -> Result<RangeResponse, EtcdError> {
        self.call("range", true, patience, |ch, deadline| {
            let req = self.request(req.clone(), deadline);
            async move { Ok(KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE).range(req).await?.into_inner()) }
        })
        .await
    }

    /// A transaction: applied at one revision, or not at all (`succeeded` false when a
    /// comparison failed).
    pub async fn txn(&self, req: TxnRequest, patience: Patience) -> Result<TxnResponse, EtcdError> {
        self.call("transaction", false, patience, |ch, deadline| {
            let req = self.request(req.clone(), deadline);
            async move {
                Ok(KvClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
                    .txn(req)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    pub async fn compact(&self, revision: i64) -> Result<CompactionResponse, EtcdError> {
        self.call("compaction", false, Patience::UntilDeadline, |ch, deadline| {
            let req = self.request(CompactionRequest { revision, physical: true }, deadline);
            async move { Ok(KvClient::new(ch).compact(req).await?.into_inner()) }
        })
        .await
    }

    /// Opens a watch stream on the current member (moving on, one round, from members
    /// that refuse) and sends `create`; its first response (`created`) has been read.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<Watcher, EtcdError> {
        let first = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        let (endpoint, inbound, requests, created) = self
            .call("watch", true, Patience::OneRound, |ch, deadline| {
                let first = first.clone();
                let i = self.inner.current.load(Ordering::Relaxed) % self.inner.members.len();
                let addr = self.inner.members[i].addr.clone();
                let (tx, requests) = mpsc::channel::<WatchRequest>(8);
                let mut req = tonic::Request::new(ReceiverStream::new(requests));
                self.metadata(req.metadata_mut());
                async move {
                    tx.send(first).await.map_err(|_| tonic::Status::internal("watch request channel closed"))?;
                    let mut stream = WatchClient::new(ch).max_decoding_message_size(MAX_MESSAGE).watch(req).await?.into_inner();
                    match tokio::time::timeout_at(deadline, stream.message()).await {
                        Ok(Ok(Some(r))) if r.created => Ok((addr, stream, tx, r)),
                        Ok(Ok(Some(r))) => Err(tonic::Status::internal(format!("unexpected first watch response: {:?}", r.cancel_reason))),
                        Ok(Ok(None)) => Err(tonic::Status::unavailable("watch stream closed before the watch was created")),
                        Ok(Err(s)) => Err(s),
                        Err(_) => Err(tonic::Status::deadline_exceeded("watch not created in time")),
                    }
                }
            })
            .await?;
        // A watch created canceled (e.g. its start revision is compacted) is reported by next().
        Ok(Watcher { endpoint, requests, inbound, pending: Some(created).filter(|r| r.canceled || r.compact_revision != 0) })
    }
}

/// One watch stream.
pub struct Watcher {
    endpoint: String,
    requests: mpsc::Sender<WatchRequest>,
    inbound: tonic::Streaming<WatchResponse>,
    pending: Option<WatchResponse>,
}

impl Watcher {
    /// The member it is open on.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next response (events, a progress notification, or a cancellation: check
    /// `canceled` and `compact_revision`). Err when the stream ended or broke.
    pub async fn next(&mut self) -> Result<WatchResponse, EtcdError> {
        if let Some(r) = self.pending.take() {
            return Ok(r);
        }
        match self.inbound.message().await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(EtcdError::Unavailable(format!("{}: watch stream closed", self.endpoint))),
            Err(s) => Err(EtcdError::Unavailable(format!("{}: watch: {}", self.endpoint, describe(&s)))),
        }
    }

    /// Asks for a progress notification: a response without events whose header revision
    /// says every event up to it was sent.
    pub async fn request_progress(&self) -> Result<(), EtcdError> {
        let req = WatchRequest { request_union: Some(watch_request::RequestUnion::ProgressRequest(WatchProgressRequest {})) };
        self.requests.send(req).await.map_err(|_| EtcdError::Unavailable(format!("{}: watch stream closed", self.endpoint)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/aigw/"), b"/aigw0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b"consumers/bob/"), b"consumers/bob0".to_vec());
    }

    #[test]
    fn failures_are_classified_by_what_they_mean_for_a_retry() {
        let check = |s: tonic::Status, want: Failure| assert_eq!(classify(&s), want, "{s:?}");
        check(tonic::Status::unavailable("etcdserver: no leader"), Failure::NotSent);
        check(tonic::Status::resource_exhausted("etcdserver: too many requests"), Failure::NotSent);
        check(tonic::Status::unavailable("etcdserver: request timed out"), Failure::Ambiguous);
        check(tonic::Status::unavailable("error reading a body from connection"), Failure::Ambiguous);
        check(tonic::Status::deadline_exceeded("context deadline exceeded"), Failure::Ambiguous);
        check(tonic::Status::unauthenticated("etcdserver: invalid auth token"), Failure::AuthExpired);
        check(tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted"), Failure::Compacted);
        check(tonic::Status::permission_denied("etcdserver: permission denied"), Failure::Rejected);
        check(tonic::Status::invalid_argument("etcdserver: request is too large"), Failure::Rejected);
        check(tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)"), Failure::NotSent);
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials { user: "root".into(), password: "hunter2".into() };
        let mut o = Options::new(vec!["127.0.0.1:2379".into()]);
        o.credentials = Some(c.clone());
        for shown in [format!("{c:?}"), format!("{o:?}")] {
            assert!(shown.contains("root") && shown.contains("<redacted>") && !shown.contains("hunter2"), "{shown}");
        }
    }
}
