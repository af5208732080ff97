//! The route service behind both admin APIs: validate, protect secrets, persist, publish.

use std::collections::BTreeMap;
use std::sync::Arc;

use aigw_model::RouteSpec;
use aigw_model::proto_json::route_to_proto;
use aigw_model::secrets::{self, DataKey, REDACTED};
use aigw_model::snapshot::version_of;
use aigw_xds::Snapshot;
use serde_json::Value;
use tokio::sync::{Mutex, watch};

use crate::error::ApiError;
use crate::store::Store;

pub struct RouteService {
    state: Mutex<State>,
    publish: watch::Sender<Arc<Snapshot>>,
    key: Option<DataKey>,
}

struct State {
    routes: BTreeMap<String, Value>,
    store: Arc<Store>,
}

/// Result of a put: whether the route is new, and its read view.
pub struct PutOutcome {
    pub created: bool,
    pub route: Value,
}

impl RouteService {
    /// Builds the service over a loaded store; returns it and the snapshot channel.
    pub fn new(
        store: Store,
        mut routes: BTreeMap<String, Value>,
        key: Option<DataKey>,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Snapshot>>), ApiError> {
        for (id, r) in routes.iter_mut() {
            if let Err(e) = RouteSpec::from_json(r) {
                tracing::warn!(route = %id, error = %e, "stored route no longer validates; it is still published");
            }
            if let Some(k) = &key {
                // Secrets stored before a key was configured are encrypted now.
                let before = r.clone();
                secrets::encrypt_route(r, k);
                if *r != before {
                    store.put(id, r).map_err(ApiError::internal)?;
                    tracing::info!(route = %id, "encrypted clear-text secrets at rest");
                }
            }
        }
        let snap = build_snapshot(&routes)?;
        let (tx, rx) = watch::channel(Arc::new(snap));
        let svc = RouteService { state: Mutex::new(State { routes, store: Arc::new(store) }), publish: tx, key };
        Ok((Arc::new(svc), rx))
    }

    /// What reads return: encrypted secrets when a key is set, else redacted.
    fn view(&self, stored: &Value) -> Value {
        let mut v = stored.clone();
        secrets::redact_route(&mut v);
        v
    }

    pub async fn put(&self, mut route: Value, path_id: Option<&str>) -> Result<PutOutcome, ApiError> {
        let obj = route.as_object_mut().ok_or_else(|| ApiError::invalid("(root): a route must be a JSON object"))?;
        if let Some(pid) = path_id {
            match obj.get("id") {
                Some(Value::String(bid)) if bid != pid => {
                    return Err(ApiError::invalid(format!("id: {bid:?} in the body does not match {pid:?} in the path")));
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
        let mut state = self.state.lock().await;
        // A secret sent back as the redaction marker keeps the stored value.
        let existing = state.routes.get(&id).cloned();
        let mut missing = None;
        secrets::for_each_secret(&mut route, |path, s| {
            if s == REDACTED {
                // `plugins.ai-proxy.auth.<kind>.<name>`: the name may itself contain dots.
                let rest = path.strip_prefix("plugins.ai-proxy.auth.").unwrap_or(path);
                let (kind, name) = rest.split_once('.').unwrap_or((rest, ""));
                let ptr = format!("/plugins/ai-proxy/auth/{kind}/{}", name.replace('~', "~0").replace('/', "~1"));
                match existing.as_ref().and_then(|e| e.pointer(&ptr)).and_then(Value::as_str) {
                    Some(old) => *s = old.to_owned(),
                    None => missing = Some(path.to_owned()),
                }
            }
        });
        if let Some(p) = missing {
            return Err(ApiError::invalid(format!("{p}: is the redaction marker {REDACTED:?}; send the secret value")));
        }
        RouteSpec::from_json(&route).map_err(|e| ApiError::invalid(e.to_string()))?;
        let mut bad = None;
        secrets::for_each_secret(&mut route, |path, s| {
            if secrets::is_encrypted(s) {
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
        let store = state.store.clone();
        let (rid, rv) = (id.clone(), route.clone());
        tokio::task::spawn_blocking(move || store.put(&rid, &rv)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
        let created = state.routes.insert(id.clone(), route.clone()).is_none();
        self.publish_locked(&state)?;
        tracing::info!(route = %id, created, "route stored");
        Ok(PutOutcome { created, route: self.view(&route) })
    }

    pub async fn get(&self, id: &str) -> Result<Value, ApiError> {
        let state = self.state.lock().await;
        state.routes.get(id).map(|r| self.view(r)).ok_or_else(|| ApiError::not_found(id))
    }

    pub async fn list(&self) -> (Vec<Value>, String) {
        let state = self.state.lock().await;
        let version = self.publish.borrow().version.clone();
        (state.routes.values().map(|r| self.view(r)).collect(), version)
    }

    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let mut state = self.state.lock().await;
        if !state.routes.contains_key(id) {
            return Err(ApiError::not_found(id));
        }
        let store = state.store.clone();
        let rid = id.to_owned();
        tokio::task::spawn_blocking(move || store.delete(&rid)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
        state.routes.remove(id);
        self.publish_locked(&state)?;
        tracing::info!(route = %id, "route deleted");
        Ok(())
    }

    fn publish_locked(&self, state: &State) -> Result<(), ApiError> {
        let snap = build_snapshot(&state.routes)?;
        tracing::debug!(version = %snap.version, routes = snap.routes.len(), "publishing snapshot");
        self.publish.send_replace(Arc::new(snap));
        Ok(())
    }
}

fn build_snapshot(routes: &BTreeMap<String, Value>) -> Result<Snapshot, ApiError> {
    let values: Vec<Value> = routes.values().cloned().collect();
    let version = version_of(&values);
    let routes = values.iter().map(route_to_proto).collect::<Result<Vec<_>, _>>().map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Snapshot { version, routes })
}
