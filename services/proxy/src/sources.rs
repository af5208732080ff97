//! Where a node's config comes from: a routes file (standalone) or aigw-config
//! (subscribed), with an optional on-disk cache of the last applied snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aigw_gcp_auth::GcpAuth;
use aigw_model::proto_json::route_from_proto;
use aigw_model::secrets::DataKey;
use aigw_model::snapshot::{parse_routes_file, version_of};
use serde_json::{Value, json};

use crate::compiled::CompileCtx;
use crate::runtime;
use crate::state::AppState;
use crate::upstream::Upstreams;

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Loads, validates and compiles a routes file.
pub fn load_file(path: &Path, key: Option<&DataKey>, upstreams: &Upstreams, gcp: &GcpAuth) -> Result<runtime::RuntimeConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut routes = parse_routes_file(&text, &env_lookup).map_err(|e| format!("{}: {e}", path.display()))?;
    routes.sort_by(|a, b| a.get("id").and_then(Value::as_str).cmp(&b.get("id").and_then(Value::as_str)));
    let version = version_of(&routes);
    runtime::compile(&version, routes, &CompileCtx { key, env: &env_lookup, upstreams, gcp })
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Polls the routes file and re-applies it on change. Polling (not inotify) also sees
/// editors that replace the file and Kubernetes ConfigMap symlink swaps.
pub async fn watch_file(path: PathBuf, key: Option<DataKey>, state: Arc<AppState>, mut last: Vec<u8>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(bytes) = tokio::fs::read(&path).await else { continue };
        if bytes == last {
            continue;
        }
        last = bytes;
        let (p, k, st) = (path.clone(), key.clone(), state.clone());
        match tokio::task::spawn_blocking(move || load_file(&p, k.as_ref(), &st.upstreams, &st.gcp)).await {
            Ok(Ok(cfg)) => {
                if cfg.version != state.config.load().version {
                    state.apply(cfg);
                }
            }
            Ok(Err(e)) => {
                crate::metrics::Metrics::add(&state.metrics.config_rejected, 1);
                tracing::error!(error = %e, "routes file rejected; keeping the last good config");
            }
            Err(e) => tracing::error!(error = %e, "routes file reload task failed"),
        }
    }
}

/// The on-disk cache of the last applied snapshot (routes as received: secrets stay
/// encrypted when the config service encrypts them). Written atomically, mode 0600.
pub struct SnapshotCache {
    pub path: PathBuf,
}

impl SnapshotCache {
    pub fn load(&self) -> Option<(String, Vec<Value>)> {
        let bytes = std::fs::read(&self.path).ok()?;
        let v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "ignoring unreadable snapshot cache");
                return None;
            }
        };
        let version = v.get("version")?.as_str()?.to_owned();
        let routes = v.get("routes")?.as_array()?.clone();
        Some((version, routes))
    }

    pub fn store(&self, version: &str, routes: &[Value]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&serde_json::to_vec(&json!({"version": version, "routes": routes})).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

pub struct XdsSource {
    pub endpoint: String,
    pub node_id: String,
    pub node_token: Option<String>,
    pub cache: Option<SnapshotCache>,
    pub key: Option<DataKey>,
}

/// Applies the snapshot cache (if any) and subscribes until `shutdown`.
pub async fn run_xds(src: XdsSource, state: Arc<AppState>, shutdown: impl std::future::Future<Output = ()>) {
    let mut initial_version = String::new();
    if let Some(cache) = &src.cache
        && let Some((version, routes)) = cache.load()
    {
        match runtime::compile(
            &version,
            routes,
            &CompileCtx { key: src.key.as_ref(), env: &env_lookup, upstreams: &state.upstreams, gcp: &state.gcp },
        ) {
            Ok(cfg) => {
                tracing::info!(version = %version, file = %cache.path.display(), "serving cached snapshot until the config service answers");
                state.apply(cfg);
                initial_version = version;
            }
            Err(e) => tracing::warn!(error = %e, "cached snapshot does not compile; ignoring it"),
        }
    }
    let mut cfg = aigw_xds::ClientConfig::new(src.endpoint.clone(), src.node_id.clone());
    cfg.node_token = src.node_token.clone();
    cfg.initial_version = initial_version;
    cfg.build_version = env!("CARGO_PKG_VERSION").to_owned();
    let key = src.key.clone();
    let cache = src.cache.map(Arc::new);
    let st = state.clone();
    let applier: aigw_xds::Applier = Arc::new(move |version: &str, routes| {
        let mut json: Vec<Value> = routes.iter().map(route_from_proto).collect();
        json.sort_by(|a, b| a.get("id").and_then(Value::as_str).cmp(&b.get("id").and_then(Value::as_str)));
        match runtime::compile(version, json, &CompileCtx { key: key.as_ref(), env: &env_lookup, upstreams: &st.upstreams, gcp: &st.gcp }) {
            Ok(compiled) => {
                if let Some(c) = &cache
                    && let Err(e) = c.store(version, &compiled.source)
                {
                    tracing::warn!(file = %c.path.display(), error = %e, "cannot write snapshot cache");
                }
                st.apply(compiled);
                Ok(())
            }
            Err(e) => {
                crate::metrics::Metrics::add(&st.metrics.config_rejected, 1);
                Err(e)
            }
        }
    });
    aigw_xds::client::run(cfg, applier, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quickstart's routes file must always load, with no environment set.
    #[test]
    fn example_routes_file_compiles() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/routes.yaml");
        let cfg = load_file(&path, None, &Upstreams::default(), &aigw_gcp_auth::GcpAuth::new(Default::default()).unwrap()).unwrap();
        assert_eq!(cfg.routes.len(), 5);
    }

    #[test]
    fn snapshot_cache_round_trip_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("aigw-cache-test-{}.json", std::process::id()));
        let cache = SnapshotCache { path: path.clone() };
        cache.store("v1", &[json!({"id": "a"})]).unwrap();
        assert_eq!(cache.load().unwrap(), ("v1".to_owned(), vec![json!({"id": "a"})]));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"{garbage").unwrap();
        assert!(cache.load().is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
