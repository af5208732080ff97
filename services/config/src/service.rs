//! The resource service behind both admin APIs: validate, protect secrets, persist,
//! publish — for every kind ([`crate::kinds`]), on either store ([`crate::store`]).
//!
//! Writes: every PUT and DELETE goes through one committer task, so a write whose
//! client goes away completes fully (store, view, publish) or, when it never reached
//! the queue, not at all. The committer takes the writes that arrive within
//! [`COALESCE`] of each other (up to the store's `max_ops`) as one group: each decided
//! in order against the view as the earlier ones leave it, then one guarded batch (one
//! etcd transaction, or one group commit of files). A guard that fails (another replica
//! wrote meanwhile) makes the committer catch up and decide the group again. A write is
//! answered once its batch is durable *and* back in this replica's view, so a read
//! after the answer sees it.
//!
//! The view: one applier task builds it from the store's feed only — this replica's own
//! writes included — so every replica on one etcd builds the same view from the same
//! revisions, and publishes the same snapshot with the same system version. Each feed
//! delivery (one batch, or several queued ones) is one new version, one delta.
//!
//! Stored values that cannot be served today (they fail today's validation, their
//! secrets do not decrypt with today's key, they are not JSON) are quarantined: kept,
//! listed by [`ResourceService::quarantine`], left out of what proxies receive, until a
//! write replaces or a delete removes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aigw_model::secrets::DataKey;
use aigw_model::snapshot::SetHash;
use aigw_proto::discovery::v1::Resource;
use aigw_xds::Snapshot;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ApiError;
use crate::kinds::{self, Kind, Lookup, WriteCtx};
use crate::store::{self, Batch, Commit, Feed, Guard, Health, Rev, Store, StoreError};

/// Writes arriving within this window of the first one share a batch and a version.
pub const COALESCE: Duration = Duration::from_millis(2);
/// Decisions of one group tried again after a conflict.
const ATTEMPTS: u32 = 5;
/// How long a committed write waits to be back in the view before it is answered anyway.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WriteMetrics {
    pub writes: AtomicU64,
    pub commits: AtomicU64,
    /// Batches refused because another writer changed what they depended on.
    pub conflicts: AtomicU64,
    /// Full reloads (a watch's start revision compacted).
    pub reloads: AtomicU64,
    /// Keys under the prefix that no kind owns (another program's data), seen.
    pub ignored_keys: AtomicU64,
}

struct Stored {
    /// Normalized value; None when the stored bytes are not JSON (quarantined).
    value: Option<Arc<Value>>,
    revision: Rev,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Stored>,
    /// key → why it is not published.
    quarantine: BTreeMap<String, String>,
    version: String,
    /// The revision the view reflects.
    revision: Rev,
    /// Stored key-auth hash → the consumer and credential keys holding it (uniqueness
    /// without a scan of every consumer).
    key_holders: HashMap<String, BTreeSet<String>>,
}

impl State {
    fn index_keys(&mut self, key: &str, old: Option<&Value>, new: Option<&Value>) {
        let (old, new) = (old.and_then(kinds::stored_key_hash), new.and_then(kinds::stored_key_hash));
        if old == new {
            return;
        }
        if let Some(h) = old
            && let Some(set) = self.key_holders.get_mut(h)
        {
            set.remove(key);
            if set.is_empty() {
                self.key_holders.remove(h);
            }
        }
        if let Some(h) = new {
            self.key_holders.entry(h.to_owned()).or_default().insert(key.to_owned());
        }
    }
}

/// Result of a put: whether the resource is new, and what the answer shows.
#[derive(Debug)]
pub struct PutOutcome {
    pub created: bool,
    /// The resource's name (from the path or the body).
    pub name: String,
    pub value: Value,
}

enum Write {
    Put { kind: &'static dyn Kind, name: String, body: Value },
    Delete { kind: &'static dyn Kind, name: String },
}

enum Done {
    Put(PutOutcome),
    Deleted,
}

type Reply = oneshot::Sender<Result<Done, ApiError>>;

struct Job {
    write: Write,
    reply: Reply,
}

/// What `/status/store` shows.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    pub kind: &'static str,
    pub describe: String,
    pub revision: Rev,
    pub health: Health,
}

pub struct ResourceService {
    jobs: mpsc::Sender<Job>,
    state: Arc<RwLock<State>>,
    health: watch::Receiver<Health>,
    store_kind: &'static str,
    store_describe: String,
    pub metrics: Arc<WriteMetrics>,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(m) => ApiError::unavailable(m),
        StoreError::Rejected(m) if m.contains("too large") => ApiError::too_large(m),
        e => ApiError::internal(e),
    }
}

impl ResourceService {
    /// Opens the store, builds the view from its content (quarantining what cannot be
    /// published), rewrites clear-text secrets when the store allows it, and starts the
    /// applier and the committer. Returns the service and the channel of snapshots.
    pub async fn start(store: Arc<dyn Store>, key: Option<DataKey>) -> Result<(Arc<Self>, watch::Receiver<Arc<Snapshot>>), ApiError> {
        Self::start_with(kinds::all(), store, key).await
    }

    /// [`ResourceService::start`] serving the kinds of `registry`.
    pub async fn start_with(
        registry: kinds::Registry,
        store: Arc<dyn Store>,
        key: Option<DataKey>,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Snapshot>>), ApiError> {
        let (loaded, feed) = store.open().await.map_err(store_error)?;
        let state = Arc::new(RwLock::new(State::default()));
        let metrics = Arc::new(WriteMetrics::default());
        let (publish, snapshots) = watch::channel(Arc::new(Snapshot { version: SetHash::default().version(), types: BTreeMap::new() }));
        let (applied_tx, applied) = watch::channel(0);
        let mut applier = Applier {
            state: state.clone(),
            publish,
            applied: applied_tx,
            hash: SetHash::default(),
            key: key.clone(),
            metrics: metrics.clone(),
            initial: true,
            registry,
        };
        applier.apply(vec![Feed::Reset(loaded)]);
        applier.initial = false;
        tokio::spawn(applier.run(feed));
        let committer = Committer {
            store: store.clone(),
            key,
            state: state.clone(),
            applied,
            health: store.health(),
            metrics: metrics.clone(),
            registry,
        };
        if store.rewrites_at_open() {
            committer.encrypt_at_rest().await?;
        }
        let (jobs, queue) = mpsc::channel(1024);
        tokio::spawn(committer.run(queue));
        let service =
            ResourceService { jobs, state, health: store.health(), store_kind: store.kind(), store_describe: store.describe(), metrics };
        Ok((Arc::new(service), snapshots))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, write: Write) -> Result<Done, ApiError> {
        let (reply, done) = oneshot::channel();
        // Cancel-safe: either the job is queued (and then runs to the end whatever happens
        // to this request) or it is not queued at all.
        self.jobs.send(Job { write, reply }).await.map_err(|_| ApiError::internal("the committer has stopped"))?;
        done.await.map_err(|_| ApiError::internal("the committer dropped a write"))?
    }

    /// Creates or replaces a resource; `path_name` is the name in the URL, if any.
    pub async fn put(&self, kind: &'static dyn Kind, mut body: Value, path_name: Option<&str>) -> Result<PutOutcome, ApiError> {
        let name = kind.name_for_put(&mut body, path_name)?;
        match self.submit(Write::Put { kind, name, body }).await? {
            Done::Put(out) => Ok(out),
            Done::Deleted => Err(ApiError::internal("unexpected committer answer")),
        }
    }

    pub async fn delete(&self, kind: &'static dyn Kind, name: &str) -> Result<(), ApiError> {
        self.submit(Write::Delete { kind, name: name.to_owned() }).await.map(|_| ())
    }

    /// The read view of one resource (quarantined ones included, unless unreadable).
    pub fn get(&self, kind: &'static dyn Kind, name: &str) -> Result<Value, ApiError> {
        let state = self.read();
        state
            .entries
            .get(&kind.key(name))
            .and_then(|s| s.value.as_deref())
            .map(|v| kind.view(v))
            .ok_or_else(|| ApiError::not_found(kind.noun(), name))
    }

    /// Every readable resource of a kind (quarantined ones included), by name, and the
    /// published system version.
    pub fn list(&self, kind: &'static dyn Kind) -> (Vec<Value>, String) {
        let state = self.read();
        let list = owned(&state.entries, kind).filter_map(|(_, s)| s.value.as_deref().map(|v| kind.view(v))).collect();
        (list, state.version.clone())
    }

    /// Every readable resource of a kind, with its name, in key order.
    pub fn list_named(&self, kind: &'static dyn Kind) -> Vec<(String, Value)> {
        self.list_prefix(kind, kind.key_prefix())
    }

    /// The readable resources of a kind whose store keys start with `key_prefix` (one
    /// consumer's credentials: `consumers/bob/credentials/`), by name.
    pub fn list_prefix(&self, kind: &'static dyn Kind, key_prefix: &str) -> Vec<(String, Value)> {
        let state = self.read();
        state
            .entries
            .range::<str, _>((std::ops::Bound::Included(key_prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(key_prefix))
            .filter_map(|(k, s)| Some((kind.name_of(k)?.to_owned(), kind.view(s.value.as_deref()?))))
            .collect()
    }

    /// The stored (normalized, unredacted) value of a resource: for the service's own
    /// reads (the usage read-back's budgets). Never answered to a client as is.
    pub fn stored(&self, kind: &'static dyn Kind, name: &str) -> Option<Arc<Value>> {
        self.read().entries.get(&kind.key(name)).and_then(|s| s.value.clone())
    }

    /// Every stored (unredacted) value of a kind, by name (the service's own reads).
    pub fn stored_all(&self, kind: &'static dyn Kind) -> Vec<(String, Arc<Value>)> {
        let state = self.read();
        owned(&state.entries, kind).filter_map(|(k, s)| Some((kind.name_of(k)?.to_owned(), s.value.clone()?))).collect()
    }

    pub fn count(&self, kind: &'static dyn Kind) -> usize {
        owned(&self.read().entries, kind).count()
    }

    /// Stored resources of a kind left out of snapshots: (name, reason).
    pub fn quarantine(&self, kind: &'static dyn Kind) -> Vec<(String, String)> {
        let state = self.read();
        let prefix = kind.key_prefix();
        state
            .quarantine
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, r)| kind.name_of(k).map(|n| (n.to_owned(), r.clone())))
            .collect()
    }

    /// Why the view may be stale (etcd unreachable or without quorum); None when current.
    pub fn stale(&self) -> Option<String> {
        let h = self.health.borrow();
        (!h.fresh).then(|| h.detail.clone())
    }

    pub fn store_status(&self) -> StoreStatus {
        StoreStatus {
            kind: self.store_kind,
            describe: self.store_describe.clone(),
            revision: self.read().revision,
            health: self.health.borrow().clone(),
        }
    }
}

/// The entries a kind owns, in key order.
fn owned<'a>(entries: &'a BTreeMap<String, Stored>, kind: &'static dyn Kind) -> impl Iterator<Item = (&'a String, &'a Stored)> + 'a {
    let prefix = kind.key_prefix();
    entries
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
        .filter(move |(k, _)| kind.name_of(k).is_some())
}

/// The view with the group's earlier writes on top.
struct Overlay<'a> {
    state: &'a State,
    /// key → value written earlier in the group (None: deleted).
    staged: BTreeMap<String, Option<Arc<Value>>>,
    /// Prefixes deleted earlier in the group.
    deleted: Vec<String>,
}

impl Overlay<'_> {
    fn committed(&self, key: &str) -> Option<&Stored> {
        if self.deleted.iter().any(|p| key.starts_with(p.as_str())) {
            return None;
        }
        self.state.entries.get(key)
    }

    /// Whether `key` exists (readable or not).
    fn exists(&self, key: &str) -> bool {
        match self.staged.get(key) {
            Some(v) => v.is_some(),
            None => self.committed(key).is_some(),
        }
    }

    /// The guard that `key` is as this group first saw it (None: the group wrote it).
    fn guard(&self, key: &str) -> Option<Guard> {
        if self.staged.contains_key(key) {
            return None;
        }
        let revision = self.committed(key).map_or(0, |s| s.revision);
        Some(Guard::Revision { key: key.to_owned(), revision })
    }
}

impl Lookup for Overlay<'_> {
    fn get(&self, key: &str) -> Option<(&Value, Option<Rev>)> {
        if let Some(v) = self.staged.get(key) {
            return v.as_deref().map(|v| (v, None));
        }
        self.committed(key).and_then(|s| s.value.as_deref().map(|v| (v, Some(s.revision))))
    }

    fn scan<'a>(&'a self, prefix: &str) -> Vec<(&'a str, &'a Value)> {
        let mut out: BTreeMap<&'a str, &'a Value> = self
            .state
            .entries
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| !self.deleted.iter().any(|p| k.starts_with(p.as_str())))
            .filter_map(|(k, s)| s.value.as_deref().map(|v| (k.as_str(), v)))
            .collect();
        for (k, v) in self.staged.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(v) => out.insert(k.as_str(), v),
                None => out.remove(k.as_str()),
            };
        }
        out.into_iter().collect()
    }

    fn guard(&self, key: &str) -> Option<Guard> {
        Overlay::guard(self, key)
    }

    fn key_holders(&self, hash: &str) -> Vec<String> {
        let mut out: BTreeSet<String> = self
            .state
            .key_holders
            .get(hash)
            .into_iter()
            .flatten()
            .filter(|k| !self.staged.contains_key(k.as_str()) && self.committed(k).is_some())
            .cloned()
            .collect();
        for (k, v) in &self.staged {
            if v.as_deref().and_then(kinds::stored_key_hash) == Some(hash) {
                out.insert(k.clone());
            }
        }
        out.into_iter().collect()
    }
}

/// One decided job.
struct Decided {
    /// Its answer if the batch commits.
    result: Result<Done, ApiError>,
    /// Keys it writes (its answer fails if one of them failed).
    keys: Vec<String>,
    /// It is part of the batch (not an error decided without the store).
    in_batch: bool,
}

struct Committer {
    store: Arc<dyn Store>,
    key: Option<DataKey>,
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<Rev>,
    health: watch::Receiver<Health>,
    metrics: Arc<WriteMetrics>,
    registry: kinds::Registry,
}

impl Committer {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        let max = self.store.max_ops().max(1);
        let mut carry: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
        loop {
            let first = match carry.pop_front() {
                Some(j) => j,
                None => match queue.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut group = vec![first];
            let deadline = tokio::time::Instant::now() + COALESCE;
            while group.len() < max {
                if let Some(j) = carry.pop_front() {
                    group.push(j);
                    continue;
                }
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => group.push(job),
                    _ => break,
                }
            }
            let rest = self.commit(group).await;
            for j in rest.into_iter().rev() {
                carry.push_front(j);
            }
        }
    }

    /// Waits until the view reflects `revision` (asking the feed for progress when no
    /// change of ours will bring it there). False after [`APPLY_WAIT`].
    async fn wait_applied(&mut self, revision: Rev) -> bool {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        let mut asked = false;
        loop {
            if *self.applied.borrow_and_update() >= revision {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            // Our own events usually arrive within milliseconds; past that, ask.
            let step = if asked {
                self.store.request_progress();
                Duration::from_millis(100)
            } else {
                Duration::from_millis(50)
            };
            asked = true;
            let _ = tokio::time::timeout(step.min(deadline - now), self.applied.changed()).await;
        }
    }

    /// Decides the jobs of `group` in order; stops (deferring the rest) where the batch
    /// would exceed the store's limits.
    fn decide(&self, group: &[Job]) -> (Vec<Decided>, Batch) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut overlay = Overlay { state: &state, staged: BTreeMap::new(), deleted: Vec::new() };
        let (max_ops, max_bytes) = (self.store.max_ops(), self.store.max_bytes());
        let mut batch = Batch::default();
        let mut bytes = 0usize;
        let mut decided = Vec::with_capacity(group.len());
        for job in group {
            let ctx = WriteCtx { lookup: &overlay, data_key: self.key.as_ref(), revision: state.revision };
            // A job's operations and guards, and what applying it does to the overlay.
            let plan = match &job.write {
                Write::Put { kind, name, body } => {
                    let key = kind.key(name);
                    let existing = overlay.get(&key).map(|(v, _)| v.clone());
                    kind.prepare(&ctx, name, body.clone(), existing.as_ref()).and_then(|p| {
                        let value = serde_json::to_vec(&p.stored).map_err(ApiError::internal)?;
                        let answer = p.answer.unwrap_or_else(|| kind.view(&p.stored));
                        let guards: Vec<Guard> = overlay.guard(&key).into_iter().chain(p.guards).collect();
                        let done = Done::Put(PutOutcome { created: !overlay.exists(&key), name: name.clone(), value: answer });
                        Ok((vec![store::Op::Put { key: key.clone(), value }], guards, done, vec![(key, Some(Arc::new(p.stored)))]))
                    })
                }
                Write::Delete { kind, name } => {
                    let key = kind.key(name);
                    if overlay.exists(&key) {
                        kind.removal(&ctx, name).map(|r| {
                            let guards: Vec<Guard> = overlay.guard(&key).into_iter().chain(r.guards).collect();
                            let ops: Vec<store::Op> = std::iter::once(store::Op::Delete { key: key.clone() }).chain(r.ops).collect();
                            (ops, guards, Done::Deleted, vec![(key, None)])
                        })
                    } else {
                        Err(ApiError::not_found(kind.noun(), name))
                    }
                }
            };
            let (ops, guards, done, staged) = match plan {
                Ok(p) => p,
                Err(e) => {
                    decided.push(Decided { result: Err(e), keys: Vec::new(), in_batch: false });
                    continue;
                }
            };
            let size: usize = ops.iter().map(store::Op::size).sum();
            let new_guards: Vec<Guard> = guards.into_iter().filter(|g| !batch.guards.contains(g)).collect();
            if ops.len() > max_ops || new_guards.len() > max_ops || size > max_bytes {
                let what = match &job.write {
                    Write::Put { kind, name, .. } | Write::Delete { kind, name } => format!("{} {name:?}", kind.noun()),
                };
                let e = ApiError::too_large(format!(
                    "{what}: this write is {size} bytes in {} operations; the store ({}) takes at most {max_bytes} bytes and {max_ops} operations in one write",
                    ops.len(),
                    self.store.kind()
                ));
                decided.push(Decided { result: Err(e), keys: Vec::new(), in_batch: false });
                continue;
            }
            if batch.ops.len() + ops.len() > max_ops || batch.guards.len() + new_guards.len() > max_ops || bytes + size > max_bytes {
                break; // this job and the rest go in the next batch
            }
            // etcd refuses a transaction that touches a key twice (a put inside a range
            // it deletes included): a later write of the same key replaces the earlier
            // one (as if both applied in order); one that overlaps a range delete waits
            // for the next batch.
            let overlaps = ops.iter().any(|op| match op {
                store::Op::DeletePrefix { prefix } => batch.ops.iter().any(|b| match b {
                    store::Op::DeletePrefix { prefix: other } => other.starts_with(prefix.as_str()) || prefix.starts_with(other.as_str()),
                    b => b.key().starts_with(prefix.as_str()),
                }),
                op => batch.ops.iter().any(|b| matches!(b, store::Op::DeletePrefix { prefix } if op.key().starts_with(prefix.as_str()))),
            });
            if overlaps {
                break;
            }
            for op in &ops {
                if !matches!(op, store::Op::DeletePrefix { .. }) {
                    batch.ops.retain(|b| matches!(b, store::Op::DeletePrefix { .. }) || b.key() != op.key());
                }
            }
            bytes += size;
            let keys: Vec<String> = ops.iter().map(|o| o.key().to_owned()).collect();
            for op in &ops {
                if let store::Op::DeletePrefix { prefix } = op {
                    let under: Vec<String> = overlay.staged.keys().filter(|k| k.starts_with(prefix.as_str())).cloned().collect();
                    for k in under {
                        overlay.staged.insert(k, None);
                    }
                    overlay.deleted.push(prefix.clone());
                }
            }
            for (k, v) in staged {
                overlay.staged.insert(k, v);
            }
            batch.ops.extend(ops);
            batch.guards.extend(new_guards);
            decided.push(Decided { result: Ok(done), keys, in_batch: true });
        }
        (decided, batch)
    }

    /// Commits a group; returns the jobs that did not fit in its batch.
    async fn commit(&mut self, mut group: Vec<Job>) -> Vec<Job> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (decided, batch) = self.decide(&group);
            let rest = group.split_off(decided.len());
            let outcome = if batch.ops.is_empty() {
                Ok(Commit::Applied { revision: 0, failed: BTreeMap::new() })
            } else {
                let patient = self.health.borrow().fresh;
                self.store.commit(batch.clone(), patient).await
            };
            let failed = match outcome {
                Ok(Commit::Applied { revision, failed }) => {
                    if revision > 0 {
                        if !self.wait_applied(revision).await {
                            tracing::warn!(revision, "a committed write is not back in the view yet; answering anyway (it is stored)");
                        }
                        self.metrics.commits.fetch_add(1, Ordering::Relaxed);
                        self.metrics.writes.fetch_add(decided.iter().filter(|d| d.in_batch).count() as u64, Ordering::Relaxed);
                    }
                    failed.into_iter().map(|(k, e)| (k, ApiError::internal(e))).collect::<BTreeMap<_, _>>()
                }
                Ok(Commit::Conflict { revision }) => {
                    self.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(revision, attempt, "another writer changed what this batch depends on; catching up and deciding again");
                    let caught_up = self.wait_applied(revision).await;
                    if caught_up && attempt < ATTEMPTS {
                        group.extend(rest);
                        continue;
                    }
                    let e = ApiError::conflict(format!(
                        "the store kept changing under this write ({attempt} attempts, other writers on the same resources); try again"
                    ));
                    batch.ops.iter().map(|o| (o.key().to_owned(), e.clone())).collect()
                }
                Err(e) => {
                    let e = store_error(e);
                    tracing::warn!(error = %e, "batch not committed");
                    batch.ops.iter().map(|o| (o.key().to_owned(), e.clone())).collect()
                }
            };
            for (job, d) in group.into_iter().zip(decided) {
                let result = match d.keys.iter().find_map(|k| failed.get(k)) {
                    Some(e) if d.in_batch => Err(e.clone()),
                    _ => d.result,
                };
                let _ = job.reply.send(result);
            }
            return rest;
        }
    }

    /// File store at start: secrets stored in clear before a key was configured are
    /// encrypted now (one batch).
    async fn encrypt_at_rest(&self) -> Result<(), ApiError> {
        let Some(key) = &self.key else { return Ok(()) };
        let mut batch = Batch::default();
        let mut names = Vec::new();
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            for (k, s) in &state.entries {
                let (Some(v), Some((kind, name))) = (&s.value, kinds::owner(self.registry, k)) else { continue };
                if state.quarantine.contains_key(k) {
                    continue;
                }
                if let Some(new) = kind.encrypt_at_rest(v, key) {
                    batch.guards.push(Guard::Revision { key: k.clone(), revision: s.revision });
                    batch.ops.push(store::Op::Put { key: k.clone(), value: serde_json::to_vec(&new).map_err(ApiError::internal)? });
                    names.push((kind.noun(), name.to_owned()));
                }
            }
        }
        if batch.ops.is_empty() {
            return Ok(());
        }
        match self.store.commit(batch, true).await.map_err(store_error)? {
            Commit::Applied { failed, .. } if failed.is_empty() => {
                for (noun, name) in names {
                    tracing::info!(kind = noun, name = %name, "encrypted clear-text secrets at rest");
                }
                Ok(())
            }
            Commit::Applied { failed, .. } => Err(ApiError::internal(format!("encrypting secrets at rest: {failed:?}"))),
            Commit::Conflict { .. } => Err(ApiError::internal("encrypting secrets at rest: the store changed meanwhile")),
        }
    }
}

/// Builds the view and the published snapshot from the feed.
struct Applier {
    state: Arc<RwLock<State>>,
    publish: watch::Sender<Arc<Snapshot>>,
    applied: watch::Sender<Rev>,
    hash: SetHash,
    key: Option<DataKey>,
    metrics: Arc<WriteMetrics>,
    /// Applying the content loaded at start (not counted as a reload).
    initial: bool,
    registry: kinds::Registry,
}

impl Applier {
    async fn run(mut self, mut feed: mpsc::Receiver<Feed>) {
        while let Some(item) = feed.recv().await {
            let mut items = vec![item];
            // Everything already queued becomes one version.
            while let Ok(more) = feed.try_recv() {
                items.push(more);
            }
            self.apply(items);
        }
    }

    fn apply(&mut self, items: Vec<Feed>) {
        let mut next: Option<Snapshot> = None;
        let shared = self.state.clone();
        let mut state = shared.write().unwrap_or_else(|e| e.into_inner());
        let (mut puts, mut deletes) = (0u64, 0u64);
        for item in items {
            match item {
                Feed::Changes { revision, events } => {
                    for ev in events {
                        match ev {
                            store::Event::Put { key, value, revision } => {
                                puts += 1;
                                self.put(&mut state, &mut next, key, &value, revision);
                            }
                            store::Event::Delete { key, .. } => {
                                deletes += 1;
                                self.delete(&mut state, &mut next, &key);
                            }
                        }
                    }
                    state.revision = state.revision.max(revision);
                }
                Feed::Progress { revision } => state.revision = state.revision.max(revision),
                Feed::Reset(loaded) => {
                    if !self.initial {
                        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                    }
                    let gone: Vec<String> = state.entries.keys().filter(|k| !loaded.entries.contains_key(*k)).cloned().collect();
                    for k in gone {
                        deletes += 1;
                        self.delete(&mut state, &mut next, &k);
                    }
                    for (k, e) in loaded.entries {
                        if state.entries.get(&k).is_some_and(|s| s.revision == e.revision) {
                            continue;
                        }
                        puts += 1;
                        self.put(&mut state, &mut next, k, &e.value, e.revision);
                    }
                    state.revision = state.revision.max(loaded.revision);
                }
            }
        }
        if let Some(mut snap) = next {
            snap.version = self.hash.version();
            state.version = snap.version.clone();
            let resources = snap.len();
            tracing::info!(puts, deletes, revision = state.revision, version = %snap.version, resources, "configuration changes applied");
            self.publish.send_replace(Arc::new(snap));
        } else if self.initial {
            state.version = self.hash.version();
        }
        let revision = state.revision;
        drop(state);
        self.applied.send_replace(revision);
    }

    /// The snapshot being built (a copy of the published one, made on first change).
    fn next<'a>(&self, next: &'a mut Option<Snapshot>) -> &'a mut Snapshot {
        next.get_or_insert_with(|| (**self.publish.borrow()).clone())
    }

    fn unpublish(&mut self, next: &mut Option<Snapshot>, type_url: &str, name: &str) {
        let published = match next {
            Some(s) => s.types.get(type_url).is_some_and(|t| t.contains_key(name)),
            None => self.publish.borrow().types.get(type_url).is_some_and(|t| t.contains_key(name)),
        };
        if published && let Some(old) = self.next(next).types.get_mut(type_url).and_then(|t| t.remove(name)) {
            self.hash.remove(type_url, name, &old.version);
        }
    }

    fn put(&mut self, state: &mut State, next: &mut Option<Snapshot>, key: String, bytes: &[u8], revision: Rev) {
        let Some((kind, name)) = kinds::owner(self.registry, &key) else {
            self.metrics.ignored_keys.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %key, "ignoring a key no resource kind owns");
            return;
        };
        if let Some(t) = kind.type_url() {
            self.unpublish(next, t, name);
        }
        state.quarantine.remove(&key);
        let value = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => {
                let v = kind.normalize(name, v);
                match kind.check(name, &v, self.key.as_ref()) {
                    Ok(Some(p)) => {
                        if let Some(t) = kind.type_url() {
                            self.hash.add(t, name, &p.version);
                            let res =
                                Resource { type_url: t.to_owned(), name: name.to_owned(), version: p.version, payload: Some(p.payload) };
                            self.next(next).types.entry(t.to_owned()).or_default().insert(Arc::from(name), Arc::new(res));
                        }
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        tracing::error!(kind = kind.noun(), name = %name, reason = %reason, "stored {} quarantined: not published until it is replaced or deleted", kind.noun());
                        state.quarantine.insert(key.clone(), reason);
                    }
                }
                Some(Arc::new(v))
            }
            Err(e) => {
                let reason = format!("the stored value is not JSON: {e}");
                tracing::error!(kind = kind.noun(), name = %name, reason = %reason, "stored {} quarantined: not published until it is replaced or deleted", kind.noun());
                state.quarantine.insert(key.clone(), reason);
                None
            }
        };
        tracing::debug!(key = %key, revision, "stored");
        let old = state.entries.get(&key).and_then(|s| s.value.clone());
        state.index_keys(&key, old.as_deref(), value.as_deref());
        state.entries.insert(key, Stored { value, revision });
    }

    fn delete(&mut self, state: &mut State, next: &mut Option<Snapshot>, key: &str) {
        let Some((kind, name)) = kinds::owner(self.registry, key) else { return };
        if let Some(t) = kind.type_url() {
            self.unpublish(next, t, name);
        }
        state.quarantine.remove(key);
        if let Some(old) = state.entries.remove(key) {
            state.index_keys(key, old.value.as_deref(), None);
        }
        tracing::debug!(key = %key, "deleted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::ROUTES;
    use crate::store::etcd::{EtcdOptions, EtcdStore};
    use aigw_testkit::etcd::EtcdCluster;
    use serde_json::json;

    fn route(id: &str, uri: &str) -> Value {
        json!({"id": id, "uri": uri, "plugins": {"ai-proxy": {"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
            "override": {"endpoint": "http://127.0.0.1:9/v1/chat/completions"}}}})
    }

    /// Two replicas writing the same routes at once: every write succeeds, each route is
    /// created exactly once (the loser of a race sees the winner's write: guards, then
    /// a new decision), and both end with the same view and the same version.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_racing_on_the_same_routes_converge() {
        let etcd = EtcdCluster::single().await;
        let store = || {
            let client = aigw_etcd::Options::new(vec![etcd.endpoint(0)]);
            Arc::new(EtcdStore::new(EtcdOptions { client, prefix: "/race".into(), max_txn_ops: 128 }).unwrap()) as Arc<dyn Store>
        };
        let (a, snap_a) = ResourceService::start(store(), None).await.unwrap();
        let (b, snap_b) = ResourceService::start(store(), None).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..60 {
            for (svc, tag) in [(a.clone(), "a"), (b.clone(), "b")] {
                let id = format!("same{}", i % 6);
                tasks.push(tokio::spawn(async move {
                    svc.put(&ROUTES, route(&id, &format!("/{tag}{i}")), None).await.map(|o| (id, o.created))
                }));
            }
        }
        let mut created = std::collections::BTreeMap::<String, u32>::new();
        for t in tasks {
            let (id, c) = t.await.unwrap().unwrap();
            *created.entry(id).or_default() += u32::from(c);
        }
        assert!(created.values().all(|&n| n == 1), "each route created exactly once: {created:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.list(&ROUTES) != b.list(&ROUTES) || snap_a.borrow().version != snap_b.borrow().version {
            assert!(tokio::time::Instant::now() < deadline, "the replicas never converged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.count(&ROUTES), 6);
        let conflicts = a.metrics.conflicts.load(Ordering::Relaxed) + b.metrics.conflicts.load(Ordering::Relaxed);
        println!("120 racing writes: {conflicts} conflicts decided again");
    }

    // ---- the interface's promises to the next kinds, with two kinds of the test's own:
    // parents/{p} and parents/{p}/children/{c} (like consumers and their credentials): a
    // child needs its parent, a child's `tag` is unique across all children (like a
    // credential's key hash), deleting a parent deletes its children.

    struct Parents;
    struct Children;

    fn named(body: &mut Value, field: &str, path: Option<&str>) -> Result<String, ApiError> {
        let name = path.map(str::to_owned).or_else(|| body.get(field).and_then(Value::as_str).map(str::to_owned));
        name.ok_or_else(|| ApiError::invalid(format!("{field}: is required")))
    }

    impl Kind for Parents {
        fn plural(&self) -> &'static str {
            "parents"
        }
        fn noun(&self) -> &'static str {
            "parent"
        }
        fn key_prefix(&self) -> &'static str {
            "parents/"
        }
        fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
            key.strip_prefix("parents/").filter(|n| !n.is_empty() && !n.contains('/'))
        }
        fn type_url(&self) -> Option<&'static str> {
            None
        }
        fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
            named(body, "name", path)
        }
        fn validate_name(&self, _: &str) -> Result<(), ApiError> {
            Ok(())
        }
        fn prepare(&self, _: &WriteCtx<'_>, _: &str, body: Value, _: Option<&Value>) -> Result<kinds::Prepared, ApiError> {
            Ok(kinds::Prepared { stored: body, answer: None, guards: Vec::new() })
        }
        fn removal(&self, _: &WriteCtx<'_>, name: &str) -> Result<kinds::Removal, ApiError> {
            Ok(kinds::Removal { ops: vec![store::Op::DeletePrefix { prefix: format!("parents/{name}/children/") }], guards: Vec::new() })
        }
        fn check(&self, _: &str, _: &Value, _: Option<&DataKey>) -> Result<Option<kinds::Published>, String> {
            Ok(None)
        }
        fn view(&self, stored: &Value) -> Value {
            stored.clone()
        }
    }

    impl Kind for Children {
        fn plural(&self) -> &'static str {
            "children"
        }
        fn noun(&self) -> &'static str {
            "child"
        }
        fn key_prefix(&self) -> &'static str {
            "parents/"
        }
        /// Name `{parent}/{child}`.
        fn key(&self, name: &str) -> String {
            let (p, c) = name.split_once('/').unwrap_or((name, ""));
            format!("parents/{p}/children/{c}")
        }
        fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
            let rest = key.strip_prefix("parents/")?;
            let (p, c) = rest.split_once("/children/")?;
            (!p.is_empty() && !c.is_empty() && !c.contains('/')).then_some(rest)
        }
        fn type_url(&self) -> Option<&'static str> {
            None
        }
        fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
            named(body, "name", path)
        }
        fn validate_name(&self, _: &str) -> Result<(), ApiError> {
            Ok(())
        }
        fn prepare(&self, ctx: &WriteCtx<'_>, name: &str, body: Value, _: Option<&Value>) -> Result<kinds::Prepared, ApiError> {
            let parent = format!("parents/{}", name.split_once('/').map_or(name, |(p, _)| p));
            if ctx.lookup.get(&parent).is_none() {
                return Err(ApiError::invalid(format!("{parent} does not exist")));
            }
            let tag = body["tag"].clone();
            let me = self.key(name);
            let taken = ctx.lookup.scan("parents/").into_iter().any(|(k, v)| k != me && CHILDREN.name_of(k).is_some() && v["tag"] == tag);
            if taken {
                return Err(ApiError::invalid(format!("tag {tag} is taken")));
            }
            let guards = ctx.unchanged(&parent).into_iter().chain([ctx.prefix_unchanged("parents/")]).collect();
            Ok(kinds::Prepared { stored: body, answer: None, guards })
        }
        fn check(&self, _: &str, _: &Value, _: Option<&DataKey>) -> Result<Option<kinds::Published>, String> {
            Ok(None)
        }
        fn view(&self, stored: &Value) -> Value {
            stored.clone()
        }
    }

    static PARENTS: Parents = Parents;
    static CHILDREN: Children = Children;
    /// Children first: their keys are under their parent's.
    static FAMILY: [&dyn Kind; 2] = [&CHILDREN, &PARENTS];

    async fn family_rules_hold(store: Arc<dyn Store>, other: Option<Arc<dyn Store>>) {
        let (a, _) = ResourceService::start_with(&FAMILY, store, None).await.unwrap();
        let b = match other {
            Some(s) => ResourceService::start_with(&FAMILY, s, None).await.unwrap().0,
            None => a.clone(),
        };
        let child = |tag: &str| json!({"tag": tag});
        // A child needs its parent; a parent and its child in one group are fine.
        let e = a.put(&CHILDREN, child("t0"), Some("bob/c0")).await.err().unwrap();
        assert!(e.message.contains("does not exist"), "{}", e.message);
        let (p, c) = tokio::join!(a.put(&PARENTS, json!({}), Some("bob")), a.put(&CHILDREN, child("t1"), Some("bob/c1")));
        assert!(p.unwrap().created && c.unwrap().created);
        b.put(&PARENTS, json!({}), Some("bobby")).await.unwrap();
        b.put(&CHILDREN, child("t2"), Some("bobby/c2")).await.unwrap();
        // Unique across the kind, whichever replica writes: two racing writes of one tag,
        // exactly one wins.
        let (x, y) = tokio::join!(a.put(&CHILDREN, child("t3"), Some("bob/x")), b.put(&CHILDREN, child("t3"), Some("bobby/y")));
        assert!(x.is_ok() != y.is_ok(), "exactly one of two racing writes of a tag: {:?} {:?}", x.err(), y.err());
        let e = b.put(&CHILDREN, child("t1"), Some("bobby/c9")).await.err().unwrap();
        assert!(e.message.contains("taken"), "{}", e.message);
        // Deleting bob deletes bob's children, not bobby's.
        a.delete(&PARENTS, "bob").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let names = |s: &ResourceService| -> Vec<String> {
            let (list, _) = s.list(&CHILDREN);
            let mut n: Vec<String> = list.iter().map(|v| v["tag"].as_str().unwrap_or_default().to_owned()).collect();
            n.sort();
            n
        };
        loop {
            let (na, nb) = (names(&a), names(&b));
            if na == nb && !na.contains(&"t1".to_owned()) {
                assert!(na.contains(&"t2".to_owned()), "{na:?}");
                assert_eq!(a.count(&PARENTS), 1);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{na:?} {nb:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(a.get(&CHILDREN, "bob/c1").err().unwrap().code, crate::error::ErrorCode::NotFound);
    }

    /// The real consumer kinds on two etcd replicas: credentials racing for one key — in
    /// one group and across replicas — give exactly one holder (the index of hashes and
    /// the prefix guard); once its holder is deleted the key is free again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_key_has_one_holder_across_replicas() {
        use crate::kinds::{CONSUMERS, CREDENTIALS, SETTINGS, consumer};
        let etcd = EtcdCluster::single().await;
        let store = || {
            let client = aigw_etcd::Options::new(vec![etcd.endpoint(0)]);
            Arc::new(EtcdStore::new(EtcdOptions { client, prefix: "/keys".into(), max_txn_ops: 128 }).unwrap()) as Arc<dyn Store>
        };
        let (a, _sa) = ResourceService::start(store(), None).await.unwrap();
        let (b, _sb) = ResourceService::start(store(), None).await.unwrap();
        a.put(&SETTINGS, consumer::new_settings(None), Some("key-auth")).await.unwrap();
        // The second replica's settings write keeps the first hash key.
        let first = a.stored(&SETTINGS, "key-auth").unwrap();
        b.put(&SETTINGS, consumer::new_settings(None), Some("key-auth")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while b.stored(&SETTINGS, "key-auth").as_deref() != Some(&*first) || a.stored(&SETTINGS, "key-auth").as_deref() != Some(&*first) {
            assert!(tokio::time::Instant::now() < deadline, "the settings never converged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for u in ["u1", "u2"] {
            a.put(&CONSUMERS, json!({"username": u}), None).await.unwrap();
        }
        while b.count(&CONSUMERS) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut tasks = Vec::new();
        for i in 0..8 {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let name = consumer::CredentialKind::name(if i < 4 { "u1" } else { "u2" }, &format!("c{i}"));
            tasks.push(tokio::spawn(async move {
                svc.put(&CREDENTIALS, json!({"plugins": {"key-auth": {"key": "the-one-key"}}}), Some(&name)).await.map(|_| name)
            }));
        }
        let mut holders = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(name) => holders.push(name),
                Err(e) => assert!(e.message.contains("already used") || e.code == crate::error::ErrorCode::Conflict, "{e:?}"),
            }
        }
        assert_eq!(holders.len(), 1, "exactly one holder: {holders:?}");
        // The key is taken: a later write anywhere is refused, by name.
        let e = b.put(&CONSUMERS, json!({"username": "u3", "plugins": {"key-auth": {"key": "the-one-key"}}}), None).await.unwrap_err();
        assert!(e.message.contains("already used"), "{e:?}");
        // Deleting its consumer (and so the credential) frees it.
        let (owner, _) = consumer::CredentialKind::split(&holders[0]).unwrap();
        a.delete(&CONSUMERS, owner).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match b.put(&CONSUMERS, json!({"username": "u3", "plugins": {"key-auth": {"key": "the-one-key"}}}), None).await {
                Ok(_) => break,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "never freed: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dependent_writes_uniqueness_and_cascades_on_the_file_store() {
        let dir = aigw_testkit::proc::TempDir::new("family");
        family_rules_hold(Arc::new(crate::store::file::FileStore::open(dir.path()).unwrap()), None).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dependent_writes_uniqueness_and_cascades_across_etcd_replicas() {
        let etcd = EtcdCluster::single().await;
        let store = || {
            let client = aigw_etcd::Options::new(vec![etcd.endpoint(0)]);
            Arc::new(EtcdStore::new(EtcdOptions { client, prefix: "/family".into(), max_txn_ops: 128 }).unwrap()) as Arc<dyn Store>
        };
        family_rules_hold(store(), Some(store())).await;
    }
}
