//! The route service behind both admin APIs: validate, protect secrets, persist, publish.
//!
//! Every write goes through one committer task, so a write whose client goes away
//! completes fully (disk, memory, publish) or, when it never reached the queue, not at
//! all. The committer takes the writes that arrive within [`COALESCE`] of each other as
//! one group: one group commit on disk (parallel fsyncs, one directory fsync), one new
//! system version, one delta to every proxy.
//!
//! Routes stored earlier that today's validation rejects, or whose secrets today's key
//! cannot decrypt, are quarantined at start: kept on disk, listed by
//! [`RouteService::quarantine`], left out of what proxies receive, until a PUT replaces
//! or a DELETE removes them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aigw_model::RouteSpec;
use aigw_model::proto_json::route_to_proto;
use aigw_model::secrets::{self, DataKey, REDACTED};
use aigw_model::snapshot::{ROUTE_TYPE_URL, SetHash, resource_version};
use aigw_proto::discovery::v1::Resource;
use aigw_xds::Snapshot;
use prost::Message as _;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ApiError;
use crate::store::Store;

/// Writes arriving within this window of the first one share a group commit and a version.
pub const COALESCE: Duration = Duration::from_millis(2);
/// Largest group.
const MAX_GROUP: usize = 512;

pub struct RouteService {
    jobs: mpsc::Sender<Job>,
    state: Arc<RwLock<State>>,
    pub metrics: Arc<WriteMetrics>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct WriteMetrics {
    pub writes: AtomicU64,
    pub commits: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Stored form (secrets encrypted when the service has a key), by id.
    routes: BTreeMap<String, Arc<Value>>,
    /// id → why it is not published.
    quarantine: BTreeMap<String, String>,
    version: String,
}

/// Result of a put: whether the route is new, and its read view.
pub struct PutOutcome {
    pub created: bool,
    pub route: Value,
}

enum Op {
    Put { id: String, route: Value },
    Delete { id: String },
}

enum Done {
    Put(PutOutcome),
    Deleted,
}

type Reply = oneshot::Sender<Result<Done, ApiError>>;

struct Job {
    op: Op,
    reply: Reply,
}

/// What reads return: encrypted secrets when a key is set, else redacted.
fn view(stored: &Value) -> Value {
    let mut v = stored.clone();
    secrets::redact_route(&mut v);
    v
}

/// Why a stored route cannot be published today, if it cannot.
fn unpublishable(id: &str, v: &Value, key: Option<&DataKey>) -> Option<String> {
    if v.get("id").and_then(Value::as_str) != Some(id) {
        return Some(format!("the file of route {id:?} holds id {:?}", v.get("id")));
    }
    if let Err(e) = RouteSpec::from_json(v) {
        return Some(format!("fails validation: {e}"));
    }
    let mut bad = None;
    secrets::for_each_secret(&mut v.clone(), |path, s| {
        if bad.is_none() && secrets::is_encrypted(s) {
            match key {
                None => bad = Some(format!("{path}: is encrypted but this service has no --data-encryption-key")),
                Some(k) if k.decrypt(s, path).is_err() => bad = Some(format!("{path}: cannot be decrypted with this service's key")),
                _ => {}
            }
        }
    });
    bad
}

/// A secret sent back as the redaction marker keeps the stored value, at every secret
/// path (`plugins.ai-proxy.auth.…` and `plugins.ai-proxy-multi.instances[i].auth.…`),
/// so a GET → edit → PUT round trip never loses or leaks a secret.
fn restore_secrets(route: &mut Value, existing: Option<&Value>) -> Result<(), ApiError> {
    let mut missing = None;
    secrets::for_each_secret_at(route, |path, ptr, s| {
        if s == REDACTED && missing.is_none() {
            match existing.and_then(|e| e.pointer(ptr)).and_then(Value::as_str) {
                Some(old) => *s = old.to_owned(),
                None => missing = Some(path.to_owned()),
            }
        }
    });
    match missing {
        Some(p) => Err(ApiError::invalid(format!("{p}: is the redaction marker {REDACTED:?}; send the secret value"))),
        None => Ok(()),
    }
}

/// A route as a discovery resource: the proto route in an `Any`, versioned by content.
fn route_resource(id: &str, v: &Value) -> Result<Arc<Resource>, String> {
    let pb = route_to_proto(v).map_err(|e| e.to_string())?;
    Ok(Arc::new(Resource {
        type_url: ROUTE_TYPE_URL.to_owned(),
        name: id.to_owned(),
        version: resource_version(v),
        payload: Some(prost_types::Any { type_url: ROUTE_TYPE_URL.to_owned(), value: pb.encode_to_vec() }),
    }))
}

impl RouteService {
    /// Builds the service over a loaded store (quarantining what cannot be published,
    /// encrypting secrets stored in clear before a key was set) and starts its committer.
    /// Returns it and the channel of published snapshots.
    pub fn new(
        store: Store,
        loaded: BTreeMap<String, Value>,
        key: Option<DataKey>,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Snapshot>>), ApiError> {
        let mut state = State::default();
        let mut hash = SetHash::default();
        let mut snap = Snapshot::default();
        let set = snap.types.entry(ROUTE_TYPE_URL.to_owned()).or_default();
        for (id, mut r) in loaded {
            if let Some(reason) = unpublishable(&id, &r, key.as_ref()) {
                tracing::error!(route = %id, reason = %reason, "stored route quarantined: not published until it is replaced or deleted");
                state.quarantine.insert(id.clone(), reason);
                state.routes.insert(id, Arc::new(r));
                continue;
            }
            if let Some(k) = &key {
                // Secrets stored before a key was configured are encrypted now.
                let before = r.clone();
                secrets::encrypt_route(&mut r, k);
                if r != before {
                    store.put(&id, &r).map_err(ApiError::internal)?;
                    tracing::info!(route = %id, "encrypted clear-text secrets at rest");
                }
            }
            match route_resource(&id, &r) {
                Ok(res) => {
                    hash.add(ROUTE_TYPE_URL, &id, &res.version);
                    set.insert(Arc::from(id.as_str()), res);
                }
                Err(e) => {
                    tracing::error!(route = %id, reason = %e, "stored route quarantined");
                    state.quarantine.insert(id.clone(), e);
                }
            }
            state.routes.insert(id, Arc::new(r));
        }
        snap.version = hash.version();
        state.version = snap.version.clone();
        let (publish, rx) = watch::channel(Arc::new(snap));
        let state = Arc::new(RwLock::new(state));
        let metrics = Arc::new(WriteMetrics::default());
        let (jobs, queue) = mpsc::channel(1024);
        let committer = Committer { store: Arc::new(store), key, hash, publish, state: state.clone(), metrics: metrics.clone() };
        tokio::spawn(committer.run(queue));
        Ok((Arc::new(RouteService { jobs, state, metrics }), rx))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn submit(&self, op: Op) -> Result<Done, ApiError> {
        let (reply, done) = oneshot::channel();
        // Cancel-safe: either the job is queued (and then runs to the end whatever happens
        // to this request) or it is not queued at all.
        self.jobs.send(Job { op, reply }).await.map_err(|_| ApiError::internal("the committer has stopped"))?;
        done.await.map_err(|_| ApiError::internal("the committer dropped a write"))?
    }

    pub async fn put(&self, mut route: Value, path_id: Option<&str>) -> Result<PutOutcome, ApiError> {
        let obj = route.as_object_mut().ok_or_else(|| ApiError::invalid("(root): a route must be a JSON object"))?;
        if let Some(pid) = path_id {
            aigw_model::route::validate_id(pid).map_err(|e| ApiError::invalid(e.to_string()))?;
            match obj.get("id") {
                Some(Value::String(bid)) if bid != pid => {
                    let shown: String = bid.chars().take(80).collect();
                    return Err(ApiError::invalid(format!("id: {shown:?} in the body does not match {pid:?} in the path")));
                }
                Some(Value::String(_)) => {}
                Some(_) => return Err(ApiError::invalid("id: must be a string")),
                None => {
                    obj.insert("id".into(), Value::String(pid.to_owned()));
                }
            }
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid("id: must be a string")),
            None => return Err(ApiError::invalid("id: is required")),
        };
        aigw_model::route::validate_id(&id).map_err(|e| ApiError::invalid(e.to_string()))?;
        match self.submit(Op::Put { id, route }).await? {
            Done::Put(out) => Ok(out),
            Done::Deleted => Err(ApiError::internal("unexpected committer answer")),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Value, ApiError> {
        self.read().routes.get(id).map(|r| view(r)).ok_or_else(|| ApiError::not_found(id))
    }

    /// Every stored route (quarantined ones included) and the published version.
    pub async fn list(&self) -> (Vec<Value>, String) {
        let state = self.read();
        (state.routes.values().map(|r| view(r)).collect(), state.version.clone())
    }

    pub fn len(&self) -> usize {
        self.read().routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored routes left out of snapshots, with the reason.
    pub fn quarantine(&self) -> Vec<(String, String)> {
        self.read().quarantine.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.submit(Op::Delete { id: id.to_owned() }).await.map(|_| ())
    }
}

struct Committer {
    store: Arc<Store>,
    key: Option<DataKey>,
    hash: SetHash,
    publish: watch::Sender<Arc<Snapshot>>,
    state: Arc<RwLock<State>>,
    metrics: Arc<WriteMetrics>,
}

impl Committer {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.recv().await {
            let mut group = vec![first];
            let deadline = tokio::time::Instant::now() + COALESCE;
            while group.len() < MAX_GROUP {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => group.push(job),
                    _ => break,
                }
            }
            self.commit(group).await;
        }
    }

    /// The stored form of a PUT: markers replaced by the stored secrets, validated,
    /// encrypted.
    fn prepare(&self, mut route: Value, existing: Option<&Value>) -> Result<Value, ApiError> {
        restore_secrets(&mut route, existing)?;
        RouteSpec::from_json(&route).map_err(|e| ApiError::invalid(e.to_string()))?;
        let mut bad = None;
        secrets::for_each_secret(&mut route, |path, s| {
            if bad.is_none() && secrets::is_encrypted(s) {
                match &self.key {
                    None => bad = Some(format!("{path}: is encrypted but this service has no --data-encryption-key")),
                    Some(k) if k.decrypt(s, path).is_err() => bad = Some(format!("{path}: cannot be decrypted with this service's key")),
                    _ => {}
                }
            }
        });
        if let Some(b) = bad {
            return Err(ApiError::invalid(b));
        }
        if let Some(k) = &self.key {
            secrets::encrypt_route(&mut route, k);
        }
        Ok(route)
    }

    async fn commit(&mut self, group: Vec<Job>) {
        // 1. Decide every job against the state as the earlier jobs of the group leave it.
        let mut staged: BTreeMap<String, Option<Arc<Value>>> = BTreeMap::new();
        let mut answers: Vec<(Reply, String, Result<Done, ApiError>)> = Vec::with_capacity(group.len());
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            for Job { op, reply } in group {
                match op {
                    Op::Put { id, route } => {
                        let existing = match staged.get(&id) {
                            Some(v) => v.clone(),
                            None => state.routes.get(&id).cloned(),
                        };
                        let result = self.prepare(route, existing.as_deref()).map(|v| {
                            let v = Arc::new(v);
                            staged.insert(id.clone(), Some(v.clone()));
                            Done::Put(PutOutcome { created: existing.is_none(), route: view(&v) })
                        });
                        answers.push((reply, id, result));
                    }
                    Op::Delete { id } => {
                        let exists = match staged.get(&id) {
                            Some(v) => v.is_some(),
                            None => state.routes.contains_key(&id),
                        };
                        let result = if exists {
                            staged.insert(id.clone(), None);
                            Ok(Done::Deleted)
                        } else {
                            Err(ApiError::not_found(&id))
                        };
                        answers.push((reply, id, result));
                    }
                }
            }
        }
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        if !staged.is_empty() {
            // 2. One group commit.
            let changes: Vec<(String, Option<Arc<Value>>)> = staged.into_iter().collect();
            let store = self.store.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let refs: Vec<(&str, Option<&Value>)> = changes.iter().map(|(id, v)| (id.as_str(), v.as_deref())).collect();
                let results = store.commit(&refs);
                (changes, results)
            })
            .await;
            match outcome {
                Ok((changes, results)) => self.apply(changes, results, &mut failed),
                Err(e) => {
                    tracing::error!(error = %e, "group commit task failed");
                    for (_, id, r) in &answers {
                        if r.is_ok() {
                            failed.insert(id.clone(), e.to_string());
                        }
                    }
                }
            }
        }
        // 3. Answer.
        for (reply, id, result) in answers {
            let result = match (result, failed.get(&id)) {
                (Ok(_), Some(e)) => Err(ApiError::internal(e)),
                (r, _) => r,
            };
            let _ = reply.send(result);
        }
    }

    /// Applies what reached the disk to memory and publishes one new version.
    fn apply(
        &mut self,
        changes: Vec<(String, Option<Arc<Value>>)>,
        results: Vec<Result<(), crate::store::StoreError>>,
        failed: &mut BTreeMap<String, String>,
    ) {
        let mut next: Snapshot = (**self.publish.borrow()).clone();
        let set = next.types.entry(ROUTE_TYPE_URL.to_owned()).or_default();
        let (mut writes, mut deletes) = (0u64, 0u64);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        for ((id, value), result) in changes.into_iter().zip(results) {
            if let Err(e) = result {
                tracing::error!(route = %id, error = %e, "write failed; the route is unchanged");
                failed.insert(id, e.to_string());
                continue;
            }
            state.quarantine.remove(&id);
            if let Some(old) = set.remove(id.as_str()) {
                self.hash.remove(ROUTE_TYPE_URL, &id, &old.version);
            }
            match value {
                Some(v) => {
                    writes += 1;
                    match route_resource(&id, &v) {
                        Ok(res) => {
                            self.hash.add(ROUTE_TYPE_URL, &id, &res.version);
                            set.insert(Arc::from(id.as_str()), res);
                        }
                        Err(e) => {
                            tracing::error!(route = %id, reason = %e, "stored route quarantined");
                            state.quarantine.insert(id.clone(), e);
                        }
                    }
                    tracing::debug!(route = %id, "route stored");
                    state.routes.insert(id, v);
                }
                None => {
                    deletes += 1;
                    tracing::debug!(route = %id, "route deleted");
                    state.routes.remove(&id);
                }
            }
        }
        next.version = self.hash.version();
        state.version = next.version.clone();
        drop(state);
        self.metrics.writes.fetch_add(writes + deletes, Ordering::Relaxed);
        self.metrics.commits.fetch_add(1, Ordering::Relaxed);
        tracing::info!(writes, deletes, version = %next.version, routes = set_len(&next), "routes committed");
        self.publish.send_replace(Arc::new(next));
    }
}

fn set_len(s: &Snapshot) -> usize {
    s.types.get(ROUTE_TYPE_URL).map_or(0, |t| t.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn multi(a_key: &str, b_secret: &str) -> Value {
        json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [
            {"name": "a", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": a_key, "x.team/id": "team-secret"}}},
            {"name": "b", "provider": "bedrock", "weight": 1, "auth": {"aws": {"access_key_id": "AKID", "secret_access_key": b_secret}}}
        ]}}})
    }

    #[test]
    fn redaction_markers_round_trip_at_every_secret_path() {
        let stored = multi("Bearer sk-a", "aws-secret-b");
        // What a read returns: markers, the secrets absent.
        let read = view(&stored);
        let text = read.to_string();
        assert_eq!(text.matches(REDACTED).count(), 3, "{text}");
        for s in ["sk-a", "team-secret", "aws-secret-b"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        // Sent back (edited elsewhere): every stored secret is kept.
        let mut back = read.clone();
        back["uri"] = json!("/edited");
        restore_secrets(&mut back, Some(&stored)).unwrap();
        let mut want = stored.clone();
        want["uri"] = json!("/edited");
        assert_eq!(back, want);
        // A new secret value replaces the stored one; the others are kept.
        let mut back = read.clone();
        back["plugins"]["ai-proxy-multi"]["instances"][1]["auth"]["aws"]["secret_access_key"] = json!("rotated");
        restore_secrets(&mut back, Some(&stored)).unwrap();
        assert_eq!(back, multi("Bearer sk-a", "rotated"));
        // ai-proxy routes too, with dotted header names.
        let ap = json!({"id": "r", "uri": "/r", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"x.key": "sk-dot"}, "query": {"k": "q-1"}}}}});
        let mut back = view(&ap);
        restore_secrets(&mut back, Some(&ap)).unwrap();
        assert_eq!(back, ap);
        // A marker where nothing is stored is an error naming the path.
        let mut fresh = read.clone();
        let e = restore_secrets(&mut fresh, None).unwrap_err();
        assert!(e.message.starts_with("plugins.ai-proxy-multi.instances[0].auth.header.Authorization"), "{}", e.message);
        let mut moved = read;
        moved["plugins"]["ai-proxy-multi"]["instances"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "c", "provider": "openai", "auth": {"query": {"key": REDACTED}}}));
        let e = restore_secrets(&mut moved, Some(&stored)).unwrap_err();
        assert!(e.message.contains("instances[2].auth.query.key") && !e.message.contains("sk-a"), "{}", e.message);
    }

    #[test]
    fn unpublishable_reasons() {
        let key = DataKey::parse(&"11".repeat(32)).unwrap();
        let other = DataKey::parse(&"22".repeat(32)).unwrap();
        let mut r = json!({"id": "r", "uri": "/r", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"k": "sk-x"}}}}});
        assert_eq!(unpublishable("r", &r, None), None);
        assert!(unpublishable("other", &r, None).unwrap().contains("holds id"));
        secrets::encrypt_route(&mut r, &other);
        assert!(unpublishable("r", &r, Some(&key)).unwrap().contains("cannot be decrypted"));
        assert!(unpublishable("r", &r, None).unwrap().contains("no --data-encryption-key"));
        assert_eq!(unpublishable("r", &r, Some(&other)), None);
        r["uri"] = json!("/\u{0}");
        assert!(unpublishable("r", &r, Some(&other)).unwrap().contains("fails validation: uri"));
    }
}
