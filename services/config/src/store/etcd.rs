//! The store on etcd v3: key `{prefix}/{kind}/{name}` (CONTRACT §15: APISIX's layout
//! with `--etcd-prefix /apisix`), value the admin API's JSON as stored.
//!
//! - Load: one range over `{prefix}/`, paged (1,000 keys a page) at the revision of the
//!   first page, so the content is one consistent revision however large it is.
//! - Feed: one watch of `{prefix}/` from the loaded revision + 1. A broken watch is
//!   opened again (backoff 100 ms → 5 s, moving across members) from the revision after
//!   the last event received, so nothing is missed or seen twice. A start revision that
//!   etcd compacted meanwhile cancels the watch: the prefix is loaded again and handed
//!   over whole ([`Feed::Reset`]), then watched from that load — no gap.
//! - Batches are one transaction: guards are comparisons (`mod_revision == r`; a prefix
//!   whose keys all have `mod_revision < r + 1`), operations puts and (range) deletes.
//!   etcd's `--max-txn-ops` (default 128) bounds both; `--etcd-max-txn-ops` says what
//!   the cluster allows.
//! - Health: fresh while the watch is open and a quorum read (a count of the prefix,
//!   every second) succeeded within the last 3 s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aigw_etcd::pb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, compare, request_op,
};
use aigw_etcd::{Client, EtcdError, Patience, prefix_end};
use tokio::sync::{Notify, mpsc, watch};

use super::{Batch, Commit, Entry, Event, Feed, Guard, Health, Loaded, Op, Rev, Store, StoreError};

/// Keys per page of the load.
const PAGE: i64 = 1000;
/// The view is stale when no quorum read succeeded for this long.
const STALE_AFTER: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Keys and values per transaction: below etcd's default `--max-request-bytes` (1.5 MiB).
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub client: aigw_etcd::Options,
    /// `/aigw` (no trailing `/`).
    pub prefix: String,
    /// The cluster's `--max-txn-ops`.
    pub max_txn_ops: usize,
}

#[derive(Default)]
struct HealthState {
    /// The member the watch is open on.
    watching: Option<String>,
    quorum_at: Option<Instant>,
    last_error: Option<String>,
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    max_ops: usize,
    health_tx: Arc<watch::Sender<Health>>,
    health: Arc<Mutex<HealthState>>,
    progress: Arc<Notify>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn rejected_or_unavailable(e: EtcdError) -> StoreError {
    match e {
        EtcdError::Unavailable(_) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Rejected(e.to_string()),
    }
}

impl EtcdStore {
    pub fn new(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let client = Client::new(opts.client).map_err(|e| StoreError::Rejected(e.to_string()))?;
        let (health_tx, _) = watch::channel(Health { fresh: false, detail: "etcd: not loaded yet".into() });
        Ok(EtcdStore {
            client,
            prefix: opts.prefix,
            max_ops: opts.max_txn_ops.max(2),
            health_tx: Arc::new(health_tx),
            health: Arc::default(),
            progress: Arc::new(Notify::new()),
            tasks: Mutex::default(),
        })
    }

    fn root(&self) -> Vec<u8> {
        format!("{}/", self.prefix).into_bytes()
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}/{key}", self.prefix).into_bytes()
    }
}

/// The relative key of an etcd key under `root` (None: outside it, or not UTF-8).
fn relative(root: &[u8], key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(root)?;
    std::str::from_utf8(rest).ok().map(str::to_owned)
}

/// Every key under `root` at one revision, paged.
async fn load(client: &Client, root: &[u8]) -> Result<Loaded, EtcdError> {
    'again: loop {
        let end = prefix_end(root);
        let mut from = root.to_vec();
        let mut loaded = Loaded::default();
        loop {
            let req =
                RangeRequest { key: from.clone(), range_end: end.clone(), limit: PAGE, revision: loaded.revision, ..Default::default() };
            let resp = match client.range(req, Patience::UntilDeadline).await {
                Ok(r) => r,
                // Compacted between two pages: start over at the current revision.
                Err(EtcdError::Compacted(_)) => continue 'again,
                Err(e) => return Err(e),
            };
            if loaded.revision == 0 {
                loaded.revision = resp.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = resp.more;
            for kv in resp.kvs {
                if let Some(k) = relative(root, &kv.key) {
                    loaded.entries.insert(k, Entry { value: kv.value, revision: kv.mod_revision });
                }
                from = kv.key;
            }
            if !more {
                return Ok(loaded);
            }
            from.push(0);
        }
    }
}

fn publish_health(tx: &watch::Sender<Health>, st: &HealthState) {
    let quorum = st.quorum_at.is_some_and(|t| t.elapsed() < STALE_AFTER);
    let h = match (&st.watching, quorum) {
        (Some(m), true) => Health { fresh: true, detail: format!("etcd: watching on {m}") },
        (None, _) => Health {
            fresh: false,
            detail: format!("etcd: watch not connected{}", st.last_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()),
        },
        (Some(_), false) => Health {
            fresh: false,
            detail: format!(
                "etcd: no quorum read for {STALE_AFTER:?}{}",
                st.last_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        },
    };
    tx.send_if_modified(|cur| {
        if *cur == h {
            false
        } else {
            if h.fresh {
                tracing::info!(detail = %h.detail, "config store view is current");
            } else {
                tracing::warn!(detail = %h.detail, "config store view may be stale: reads are marked X-AIGW-Stale, writes fail until etcd answers");
            }
            *cur = h;
            true
        }
    });
}

struct Watcher {
    client: Client,
    root: Vec<u8>,
    feed: mpsc::Sender<Feed>,
    progress: Arc<Notify>,
    health_tx: Arc<watch::Sender<Health>>,
    health: Arc<Mutex<HealthState>>,
}

impl Watcher {
    fn set_watching(&self, m: Option<String>, err: Option<String>) {
        let mut st = self.health.lock().unwrap_or_else(|e| e.into_inner());
        st.watching = m;
        if err.is_some() {
            st.last_error = err;
        }
        publish_health(&self.health_tx, &st);
    }

    /// Watches from `next` until the service stops (the feed's receiver is gone).
    async fn run(self, mut next: Rev, mut first: Option<aigw_etcd::Watcher>) {
        let mut backoff = aigw_xds::client::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let create = |start: Rev| WatchCreateRequest {
            key: self.root.clone(),
            range_end: prefix_end(&self.root),
            start_revision: start,
            progress_notify: true,
            ..Default::default()
        };
        loop {
            let opened = match first.take() {
                Some(w) => Ok(w),
                None => self.client.watch(create(next)).await,
            };
            let mut w = match opened {
                Ok(w) => w,
                Err(e) => {
                    self.set_watching(None, Some(e.to_string()));
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, from_revision = next, retry_in_ms = delay.as_millis() as u64, "etcd watch not open; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            tracing::info!(member = %w.endpoint(), from_revision = next, "watching etcd");
            self.set_watching(Some(w.endpoint().to_owned()), None);
            let reason = loop {
                let resp = tokio::select! {
                    r = w.next() => r,
                    _ = self.progress.notified() => {
                        if let Err(e) = w.request_progress().await {
                            break e.to_string();
                        }
                        continue;
                    }
                    _ = self.feed.closed() => return,
                };
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => break e.to_string(),
                };
                if resp.compact_revision != 0 {
                    tracing::warn!(
                        from_revision = next,
                        compacted = resp.compact_revision,
                        "etcd compacted the history this watch needs; reloading the prefix"
                    );
                    match load(&self.client, &self.root).await {
                        Ok(loaded) => {
                            next = loaded.revision + 1;
                            if self.feed.send(Feed::Reset(loaded)).await.is_err() {
                                return;
                            }
                            break "reloaded after a compaction".to_owned();
                        }
                        Err(e) => break format!("reload after a compaction: {e}"),
                    }
                }
                if resp.canceled {
                    break format!("watch canceled by etcd: {}", resp.cancel_reason);
                }
                backoff.reset();
                let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
                if resp.events.is_empty() {
                    // A progress notification: every event up to header_rev was sent.
                    if header_rev >= next {
                        next = header_rev + 1;
                    }
                    if self.feed.send(Feed::Progress { revision: header_rev }).await.is_err() {
                        return;
                    }
                    continue;
                }
                let mut events = Vec::with_capacity(resp.events.len());
                let mut last = 0;
                for ev in resp.events {
                    let Some(kv) = ev.kv else { continue };
                    last = last.max(kv.mod_revision);
                    let Some(key) = relative(&self.root, &kv.key) else { continue };
                    events.push(if ev.r#type == aigw_etcd::mvccpb::event::EventType::Delete as i32 {
                        Event::Delete { key, revision: kv.mod_revision }
                    } else {
                        Event::Put { key, value: kv.value, revision: kv.mod_revision }
                    });
                }
                next = last + 1;
                if self.feed.send(Feed::Changes { revision: last, events }).await.is_err() {
                    return;
                }
            };
            self.set_watching(None, Some(reason.clone()));
            if reason == "reloaded after a compaction" {
                continue;
            }
            let delay = backoff.next_delay();
            tracing::warn!(reason = %reason, from_revision = next, retry_in_ms = delay.as_millis() as u64, "etcd watch ended; opening it again");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A quorum read of the prefix every second: the proof that the view can be current.
async fn heartbeat(client: Client, root: Vec<u8>, health_tx: Arc<watch::Sender<Health>>, health: Arc<Mutex<HealthState>>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let req = RangeRequest { key: root.clone(), range_end: prefix_end(&root), count_only: true, ..Default::default() };
        let result = client.range(req, Patience::OneRound).await;
        let mut st = health.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                st.quorum_at = Some(Instant::now());
                st.last_error = None;
            }
            Err(e) => st.last_error = Some(e.to_string()),
        }
        publish_health(&health_tx, &st);
    }
}

fn guard_compare(g: &Guard, full: impl Fn(&str) -> Vec<u8>) -> Compare {
    match g {
        Guard::Revision { key, revision } => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: full(key),
            target_union: Some(compare::TargetUnion::ModRevision(*revision)),
            range_end: Vec::new(),
        },
        Guard::PrefixUnchangedSince { prefix, revision } => {
            let key = full(prefix);
            Compare {
                result: compare::CompareResult::Less as i32,
                target: compare::CompareTarget::Mod as i32,
                range_end: prefix_end(&key),
                key,
                target_union: Some(compare::TargetUnion::ModRevision(revision + 1)),
            }
        }
    }
}

fn request_op(op: &Op, full: impl Fn(&str) -> Vec<u8>) -> RequestOp {
    let request = match op {
        Op::Put { key, value } => {
            request_op::Request::RequestPut(PutRequest { key: full(key), value: value.clone(), ..Default::default() })
        }
        Op::Delete { key } => request_op::Request::RequestDeleteRange(DeleteRangeRequest { key: full(key), ..Default::default() }),
        Op::DeletePrefix { prefix } => {
            let key = full(prefix);
            request_op::Request::RequestDeleteRange(DeleteRangeRequest { range_end: prefix_end(&key), key, ..Default::default() })
        }
    };
    RequestOp { request: Some(request) }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd://{} prefix {}", self.client.endpoints().join(","), self.prefix)
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn open(&self) -> Result<(Loaded, mpsc::Receiver<Feed>), StoreError> {
        let root = self.root();
        let mut backoff = aigw_xds::client::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let loaded = loop {
            match load(&self.client, &root).await {
                Ok(l) => break l,
                Err(EtcdError::Unavailable(e)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot load the configuration from etcd; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(rejected_or_unavailable(e)),
            }
        };
        {
            let mut st = self.health.lock().unwrap_or_else(|e| e.into_inner());
            st.quorum_at = Some(Instant::now());
        }
        let (feed, rx) = mpsc::channel(1024);
        let watcher = Watcher {
            client: self.client.clone(),
            root: root.clone(),
            feed,
            progress: self.progress.clone(),
            health_tx: self.health_tx.clone(),
            health: self.health.clone(),
        };
        // The first watch is opened before the view is handed over, so a service that
        // starts with etcd healthy starts fresh (a failure here is retried by the task).
        let create = WatchCreateRequest {
            key: root.clone(),
            range_end: prefix_end(&root),
            start_revision: loaded.revision + 1,
            progress_notify: true,
            ..Default::default()
        };
        let first = self.client.watch(create).await.ok();
        if let Some(w) = &first {
            watcher.set_watching(Some(w.endpoint().to_owned()), None);
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.push(tokio::spawn(watcher.run(loaded.revision + 1, first)));
        tasks.push(tokio::spawn(heartbeat(self.client.clone(), root, self.health_tx.clone(), self.health.clone())));
        Ok((loaded, rx))
    }

    async fn commit(&self, batch: Batch, patient: bool) -> Result<Commit, StoreError> {
        let full = |k: &str| self.full(k);
        let txn = TxnRequest {
            compare: batch.guards.iter().map(|g| guard_compare(g, full)).collect(),
            success: batch.ops.iter().map(|o| request_op(o, full)).collect(),
            failure: Vec::new(),
        };
        let patience = if patient { Patience::UntilDeadline } else { Patience::OneRound };
        let resp = self.client.txn(txn, patience).await.map_err(rejected_or_unavailable)?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        Ok(if resp.succeeded { Commit::Applied { revision, failed: BTreeMap::new() } } else { Commit::Conflict { revision } })
    }

    fn max_ops(&self) -> usize {
        self.max_ops
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn health(&self) -> watch::Receiver<Health> {
        self.health_tx.subscribe()
    }

    fn request_progress(&self) {
        self.progress.notify_one();
    }

    fn rewrites_at_open(&self) -> bool {
        false
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}
