//! Where a node's config comes from: a routes file (standalone) or aigw-config
//! (subscribed), with an optional on-disk cache of the last applied config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aigw_model::proto_json::route_from_proto;
use aigw_model::secrets::DataKey;
use aigw_model::snapshot::{ROUTE_TYPE_URL, parse_routes_file_with, resource_version, version_of};
use aigw_proto::config::v1::Route as PbRoute;
use aigw_proto::discovery::v1::Resource;
use prost::Message as _;
use serde_json::Value;

use crate::compiled::CompileCtx;
use crate::runtime::{self, ApplyError, Change, RuntimeConfig};
use crate::state::AppState;

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn ctx<'a>(key: Option<&'a DataKey>, state: &'a AppState) -> CompileCtx<'a> {
    CompileCtx { key, env: &env_lookup, upstreams: &state.upstreams, gcp: &state.gcp, plugins: &state.plugins, resources: &state.resources }
}

/// Why a routes file was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Parse { path: PathBuf, error: aigw_model::snapshot::FileError },
    #[error("{}: {error}", path.display())]
    Apply { path: PathBuf, error: ApplyError },
}

/// Loads, validates and compiles a routes file (its plugins: those `ctx` knows).
pub fn load_file(path: &Path, ctx: &CompileCtx<'_>) -> Result<RuntimeConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read { path: path.to_owned(), error })?;
    let mut routes = parse_routes_file_with(&text, &env_lookup, &|n| ctx.plugins.knows(n))
        .map_err(|error| LoadError::Parse { path: path.to_owned(), error })?;
    routes.sort_by(|a, b| a.get("id").and_then(Value::as_str).cmp(&b.get("id").and_then(Value::as_str)));
    let version = version_of(&routes);
    runtime::compile(&version, routes, ctx).map_err(|error| LoadError::Apply { path: path.to_owned(), error })
}

/// [`load_file`] with the node's compile context.
pub fn load_file_for(path: &Path, key: Option<&DataKey>, state: &AppState) -> Result<RuntimeConfig, LoadError> {
    load_file(path, &ctx(key, state))
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
        match tokio::task::spawn_blocking(move || load_file_for(&p, k.as_ref(), &st)).await {
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

/// The on-disk cache of the last applied config: every route as received (secrets stay
/// encrypted when the config service encrypts them) with its resource version, so a
/// restarted node serves at once and recompiles only what changed meanwhile. Written
/// atomically, mode 0600, by a background writer that always writes the latest config.
pub struct SnapshotCache {
    pub path: PathBuf,
}

/// One cached route.
pub struct CachedRoute {
    pub version: String,
    pub route: Value,
}

impl SnapshotCache {
    /// `{"version", "resources": [{"name", "version", "route"}]}`; the first release's
    /// `{"version", "routes": [...]}` is read too.
    pub fn load(&self) -> Option<(String, Vec<CachedRoute>)> {
        let bytes = std::fs::read(&self.path).ok()?;
        let mut v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "ignoring unreadable snapshot cache");
                return None;
            }
        };
        let version = v.get("version")?.as_str()?.to_owned();
        let routes = if let Some(Value::Array(res)) = v.get_mut("resources").map(Value::take) {
            res.into_iter()
                .filter_map(|mut r| {
                    let version = r.get("version")?.as_str()?.to_owned();
                    Some(CachedRoute { version, route: r.get_mut("route")?.take() })
                })
                .collect()
        } else {
            v.get_mut("routes")?.as_array_mut()?.drain(..).map(|r| CachedRoute { version: resource_version(&r), route: r }).collect()
        };
        Some((version, routes))
    }

    /// Writes `cfg` (built from the routes' sources as received, without re-encoding them).
    pub fn store(&self, cfg: &RuntimeConfig) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = String::with_capacity(cfg.entries.values().map(|e| e.source.len() + 64).sum::<usize>() + 64);
        out.push_str("{\"version\":");
        out.push_str(&Value::String(cfg.version.clone()).to_string());
        out.push_str(",\"resources\":[");
        for (i, (name, e)) in cfg.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"name\":");
            out.push_str(&Value::String(name.to_string()).to_string());
            out.push_str(",\"version\":");
            out.push_str(&Value::String(e.version.clone()).to_string());
            out.push_str(",\"route\":");
            out.push_str(&e.source);
            out.push('}');
        }
        out.push_str("]}");
        let tmp = self.path.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Keeps the cache at the latest applied config: waits for a change, writes, repeats
    /// (configs applied during a write are coalesced into the next one).
    async fn writer(self, mut applied: tokio::sync::watch::Receiver<Option<Arc<RuntimeConfig>>>) {
        let cache = Arc::new(self);
        while applied.changed().await.is_ok() {
            let Some(cfg) = applied.borrow_and_update().clone() else { continue };
            let c = cache.clone();
            match tokio::task::spawn_blocking(move || c.store(&cfg)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(file = %cache.path.display(), error = %e, "cannot write snapshot cache"),
                Err(e) => tracing::warn!(error = %e, "snapshot cache writer failed"),
            }
        }
    }
}

pub struct XdsSource {
    pub endpoint: String,
    pub node_id: String,
    pub node_token: Option<String>,
    pub cache: Option<SnapshotCache>,
    pub key: Option<DataKey>,
    /// PEM bundle for `https://` endpoints (`--control-plane-ca`); None: webpki roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// A route resource as a change: its payload decoded to the route's JSON form.
fn route_change(r: Resource) -> Result<Change, String> {
    if r.type_url != ROUTE_TYPE_URL {
        return Err(format!("resource {:?}: unknown type {:?}", r.name, r.type_url));
    }
    let payload = r.payload.ok_or_else(|| format!("route {:?}: no payload", r.name))?;
    if payload.type_url != ROUTE_TYPE_URL {
        return Err(format!("route {:?}: payload of type {:?}", r.name, payload.type_url));
    }
    let pb = PbRoute::decode(payload.value.as_slice()).map_err(|e| format!("route {:?}: cannot decode: {e}", r.name))?;
    Ok(Change::Upsert { id: r.name, version: r.version, route: route_from_proto(&pb) })
}

/// Applies the snapshot cache (if any) and subscribes until `shutdown`.
pub async fn run_xds(src: XdsSource, state: Arc<AppState>, shutdown: impl std::future::Future<Output = ()>) {
    let mut initial_version = String::new();
    let (cache_tx, cache_rx) = tokio::sync::watch::channel::<Option<Arc<RuntimeConfig>>>(None);
    if let Some(cache) = src.cache {
        if let Some((version, routes)) = cache.load() {
            let changes = routes.into_iter().map(|c| {
                let id = c.route["id"].as_str().unwrap_or_default().to_owned();
                Ok(Change::Upsert { id, version: c.version, route: c.route })
            });
            match runtime::apply(&RuntimeConfig::empty(), &version, true, changes, &ctx(src.key.as_ref(), &state)) {
                Ok((cfg, _)) => {
                    tracing::info!(version = %version, file = %cache.path.display(), "serving cached snapshot until the config service answers");
                    state.apply(cfg);
                    initial_version = version;
                }
                Err(e) => tracing::warn!(error = %e, "cached snapshot does not compile; ignoring it"),
            }
        }
        tokio::spawn(cache.writer(cache_rx));
    }
    let mut cfg = aigw_xds::ClientConfig::new(src.endpoint.clone(), src.node_id.clone());
    cfg.node_token = src.node_token.clone();
    cfg.ca_pem = src.ca_pem.clone();
    cfg.type_urls = vec![ROUTE_TYPE_URL.to_owned()];
    cfg.initial_version = initial_version;
    cfg.build_version = env!("CARGO_PKG_VERSION").to_owned();
    let key = src.key.clone();
    let st = state.clone();
    let applier: aigw_xds::Applier = Arc::new(move |update: aigw_xds::Update| {
        // Decoded one at a time as the compile consumes them.
        let removed = update.removed.into_iter().map(|r| {
            if r.type_url != ROUTE_TYPE_URL {
                return Err(format!("removed resource {:?}: unknown type {:?}", r.name, r.type_url));
            }
            Ok(Change::Remove { id: r.name })
        });
        let changes = update.resources.into_iter().map(route_change).chain(removed).map(|c| c.map_err(ApplyError::Decode));
        let prev = st.config.load_full();
        match runtime::apply(&prev, &update.version, update.full_state, changes, &ctx(key.as_ref(), &st)) {
            Ok((compiled, stats)) => {
                tracing::debug!(compiled = stats.compiled, reused = stats.reused, removed = stats.removed, "update compiled");
                let compiled = Arc::new(compiled);
                st.apply_shared(compiled.clone());
                cache_tx.send_replace(Some(compiled));
                Ok(())
            }
            Err(e) => {
                crate::metrics::Metrics::add(&st.metrics.config_rejected, 1);
                Err(e.to_string())
            }
        }
    });
    aigw_xds::client::run(cfg, applier, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstreams;
    use serde_json::json;

    /// The quickstart's routes file must always load, with no environment set.
    #[test]
    fn example_routes_file_compiles() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/routes.yaml");
        let cfg = load_file(&path, &CompileCtx::bare(&Upstreams::default())).unwrap();
        assert_eq!(cfg.routes.len(), 5);
    }

    #[test]
    fn snapshot_cache_round_trip_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("aigw-cache-test-{}.json", std::process::id()));
        let cache = SnapshotCache { path: path.clone() };
        let route =
            json!({"id": "a", "uri": "/é", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"k": "$aigw-enc$v1$x"}}}}});
        let ups = Upstreams::default();
        let mut cfg = runtime::compile("v1", vec![], &CompileCtx::bare(&ups)).unwrap();
        cfg.entries.insert(
            Arc::from("a"),
            Arc::new(runtime::Entry { version: "rv".into(), source: route.to_string().into_boxed_str(), compiled: None }),
        );
        cache.store(&cfg).unwrap();
        let (version, routes) = cache.load().unwrap();
        assert_eq!((version.as_str(), routes.len(), routes[0].version.as_str()), ("v1", 1, "rv"));
        assert_eq!(routes[0].route, route, "kept as received (secrets in their encrypted form)");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // The first release's format.
        std::fs::write(&path, json!({"version": "v0", "routes": [route.clone()]}).to_string()).unwrap();
        let (version, routes) = cache.load().unwrap();
        assert_eq!((version.as_str(), routes[0].version.clone()), ("v0", resource_version(&route)));
        std::fs::write(&path, b"{garbage").unwrap();
        assert!(cache.load().is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
