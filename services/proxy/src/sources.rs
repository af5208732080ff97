//! Where a node's config comes from: a routes file (standalone) or aigw-config
//! (subscribed), with an optional on-disk cache of the last applied config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aigw_model::keyauth::KeyHasher;
use aigw_model::prices::Price;
use aigw_model::proto_json::{consumer_from_proto, credential_from_proto, group_from_proto, price_from_proto, route_from_proto};
use aigw_model::secrets::DataKey;
use aigw_model::snapshot::{
    CONSUMER_GROUP_TYPE_URL, CONSUMER_TYPE_URL, CREDENTIAL_TYPE_URL, KEY_AUTH_SETTINGS_TYPE_URL, PRICE_TYPE_URL, ROUTE_TYPE_URL,
    parse_config_file, resource_version, version_of,
};
use aigw_proto::config::v1 as pb;
use aigw_proto::discovery::v1::Resource;
use prost::Message as _;
use serde_json::Value;

use crate::compiled::CompileCtx;
use crate::consumers::{self, Kind};
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
    let file = parse_config_file(&text, &env_lookup, &|n| ctx.plugins.knows(n))
        .map_err(|error| LoadError::Parse { path: path.to_owned(), error })?;
    let mut routes = file.routes;
    // Consumer keys are in clear in the file: from here on only their hashes are kept
    // (the version below, the dump, the record), under this process's own hash key.
    let consumers: Vec<Value> = file.consumers.into_iter().map(|c| hash_inline_key(c, file_hasher())).collect();
    routes.sort_by(|a, b| a.get("id").and_then(Value::as_str).cmp(&b.get("id").and_then(Value::as_str)));
    // The version covers everything the file holds.
    let version = if consumers.is_empty() && file.consumer_groups.is_empty() && file.prices.is_empty() {
        version_of(&routes)
    } else {
        let mut all = routes.clone();
        all.extend(file.consumer_groups.iter().cloned());
        all.extend(consumers.iter().cloned());
        all.extend(file.prices.iter().map(|p| serde_json::to_value(p).unwrap_or_default()));
        version_of(&all)
    };
    let object = |kind: Kind, name: &str, v: Value| {
        Ok(Change::Consumer(consumers::Change { kind, name: name.to_owned(), version: resource_version(&v), value: Some(v) }))
    };
    let mut changes: Vec<Result<Change, ApplyError>> = routes
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            Ok(Change::Upsert { id, version: resource_version(&r), route: r })
        })
        .collect();
    for g in file.consumer_groups {
        let id = g.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        changes.push(object(Kind::Group, &id, g));
    }
    for c in consumers {
        let name = c.get("username").and_then(Value::as_str).unwrap_or_default().to_owned();
        changes.push(object(Kind::Consumer, &name, c));
    }
    for p in file.prices {
        changes.push(Ok(Change::Price { name: p.key(), version: String::new(), price: Some(p) }));
    }
    runtime::apply_with(&RuntimeConfig::empty(), &version, true, changes, ctx, Some(file_hasher()))
        .map(|(c, _)| c)
        .map_err(|error| LoadError::Apply { path: path.to_owned(), error })
}

/// A consumer with its inline `key-auth` key replaced by the key's hash.
fn hash_inline_key(mut c: Value, hasher: &KeyHasher) -> Value {
    if let Some(Value::String(k)) = c.pointer_mut("/plugins/key-auth/key")
        && !aigw_model::keyauth::is_stored_hash(k)
    {
        *k = hasher.stored(k);
    }
    c
}

/// The hash key of a routes file's consumer keys (which are in clear): this process's
/// own, random, never written anywhere.
fn file_hasher() -> &'static KeyHasher {
    static H: std::sync::OnceLock<KeyHasher> = std::sync::OnceLock::new();
    H.get_or_init(|| KeyHasher::new(&KeyHasher::random_key()))
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

/// The tag of a cached resource's kind.
fn kind_tag(k: Kind) -> &'static str {
    match k {
        Kind::Consumer => "consumer",
        Kind::Credential => "credential",
        Kind::Group => "consumer_group",
        Kind::Settings => "key_auth_settings",
    }
}

fn tag_kind(t: &str) -> Option<Kind> {
    [Kind::Consumer, Kind::Credential, Kind::Group, Kind::Settings].into_iter().find(|k| kind_tag(*k) == t)
}

impl SnapshotCache {
    /// `{"version", "resources": [{"name", "version", "route"} | {"type", "name", "version",
    /// "value"}]}` (types: the consumer kinds and `price`); the first release's `{"version", "routes": [...]}` is read too.
    pub fn load(&self) -> Option<(String, Vec<Change>)> {
        let bytes = std::fs::read(&self.path).ok()?;
        let mut v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "ignoring unreadable snapshot cache");
                return None;
            }
        };
        let version = v.get("version")?.as_str()?.to_owned();
        let changes = if let Some(Value::Array(res)) = v.get_mut("resources").map(Value::take) {
            res.into_iter()
                .filter_map(|mut r| {
                    let version = r.get("version")?.as_str()?.to_owned();
                    let name = r.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
                    match r.get("type").and_then(Value::as_str) {
                        None | Some("route") => {
                            let route = r.get_mut("route")?.take();
                            let id = route.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                            Some(Change::Upsert { id, version, route })
                        }
                        Some("price") => {
                            let price = Price::from_json(r.get("value")?).ok()?;
                            Some(Change::Price { name, version, price: Some(price) })
                        }
                        Some(t) => {
                            let kind = tag_kind(t)?;
                            Some(Change::Consumer(consumers::Change { kind, name, version, value: Some(r.get_mut("value")?.take()) }))
                        }
                    }
                })
                .collect()
        } else {
            v.get_mut("routes")?
                .as_array_mut()?
                .drain(..)
                .map(|r| {
                    let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                    Change::Upsert { id, version: resource_version(&r), route: r }
                })
                .collect()
        };
        Some((version, changes))
    }

    /// Writes `cfg` (built from the resources' sources as received, without re-encoding them).
    pub fn store(&self, cfg: &RuntimeConfig) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let others = cfg.consumers.sources();
        let size = cfg.entries.values().map(|e| e.source.len() + 64).sum::<usize>()
            + others.iter().map(|(_, _, s)| s.source.len() + 96).sum::<usize>();
        let mut out = String::with_capacity(size + 64);
        let text = |s: &str| Value::String(s.to_owned()).to_string();
        out.push_str("{\"version\":");
        out.push_str(&text(&cfg.version));
        out.push_str(",\"resources\":[");
        let mut first = true;
        for (name, e) in &cfg.entries {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str("{\"name\":");
            out.push_str(&text(name));
            out.push_str(",\"version\":");
            out.push_str(&text(&e.version));
            out.push_str(",\"route\":");
            out.push_str(&e.source);
            out.push('}');
        }
        for (kind, name, src) in others {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str("{\"type\":");
            out.push_str(&text(kind_tag(kind)));
            out.push_str(",\"name\":");
            out.push_str(&text(name));
            out.push_str(",\"version\":");
            out.push_str(&text(src.version));
            out.push_str(",\"value\":");
            out.push_str(&src.source);
            out.push('}');
        }
        for (name, (version, price)) in &cfg.price_entries {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            out.push_str("{\"type\":\"price\",\"name\":");
            out.push_str(&text(name));
            out.push_str(",\"version\":");
            out.push_str(&text(version));
            out.push_str(",\"value\":");
            out.push_str(&serde_json::to_string(price).unwrap_or_else(|_| "null".into()));
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
    /// aigw-config replicas (`--config-service A,B`), tried in order.
    pub endpoints: Vec<String>,
    pub node_id: String,
    pub node_token: Option<String>,
    pub cache: Option<SnapshotCache>,
    pub key: Option<DataKey>,
    /// PEM bundle for `https://` endpoints (`--control-plane-ca`); None: webpki roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// The type URLs a proxy subscribes to.
pub const TYPE_URLS: [&str; 6] =
    [ROUTE_TYPE_URL, CONSUMER_TYPE_URL, CREDENTIAL_TYPE_URL, CONSUMER_GROUP_TYPE_URL, KEY_AUTH_SETTINGS_TYPE_URL, PRICE_TYPE_URL];

fn consumer_kind(type_url: &str) -> Option<Kind> {
    match type_url {
        CONSUMER_TYPE_URL => Some(Kind::Consumer),
        CREDENTIAL_TYPE_URL => Some(Kind::Credential),
        CONSUMER_GROUP_TYPE_URL => Some(Kind::Group),
        KEY_AUTH_SETTINGS_TYPE_URL => Some(Kind::Settings),
        _ => None,
    }
}

/// A resource as a change: its payload decoded to the JSON form of its kind.
fn resource_change(r: Resource) -> Result<Change, String> {
    let payload = r.payload.ok_or_else(|| format!("resource {:?}: no payload", r.name))?;
    if payload.type_url != r.type_url {
        return Err(format!("resource {:?}: payload of type {:?} in a {:?} resource", r.name, payload.type_url, r.type_url));
    }
    let bytes = payload.value.as_slice();
    let bad = |e: prost::DecodeError| format!("resource {:?}: cannot decode: {e}", r.name);
    if r.type_url == ROUTE_TYPE_URL {
        let route = route_from_proto(&pb::Route::decode(bytes).map_err(bad)?);
        return Ok(Change::Upsert { id: r.name, version: r.version, route });
    }
    if r.type_url == PRICE_TYPE_URL {
        let p = price_from_proto(&pb::Price::decode(bytes).map_err(bad)?);
        let price = Price::from_json(&p).map_err(|e| format!("price {:?}: {e}", r.name))?;
        return Ok(Change::Price { name: r.name, version: r.version, price: Some(price) });
    }
    let kind = consumer_kind(&r.type_url).ok_or_else(|| format!("resource {:?}: unknown type {:?}", r.name, r.type_url))?;
    let value = match kind {
        Kind::Consumer => consumer_from_proto(&pb::Consumer::decode(bytes).map_err(bad)?),
        Kind::Credential => credential_from_proto(&pb::Credential::decode(bytes).map_err(bad)?).1,
        Kind::Group => group_from_proto(&pb::ConsumerGroup::decode(bytes).map_err(bad)?),
        Kind::Settings => serde_json::json!({"hash_key": pb::KeyAuthSettings::decode(bytes).map_err(bad)?.hash_key}),
    };
    Ok(Change::Consumer(consumers::Change { kind, name: r.name, version: r.version, value: Some(value) }))
}

fn removed_change(type_url: &str, name: String) -> Result<Change, String> {
    if type_url == ROUTE_TYPE_URL {
        return Ok(Change::Remove { id: name });
    }
    if type_url == PRICE_TYPE_URL {
        return Ok(Change::Price { name, version: String::new(), price: None });
    }
    match consumer_kind(type_url) {
        Some(kind) => Ok(Change::Consumer(consumers::Change { kind, name, version: String::new(), value: None })),
        None => Err(format!("removed resource {name:?}: unknown type {type_url:?}")),
    }
}

/// Applies the snapshot cache (if any) and subscribes until `shutdown`.
pub async fn run_xds(src: XdsSource, state: Arc<AppState>, shutdown: impl std::future::Future<Output = ()>) {
    let mut initial_version = String::new();
    let (cache_tx, cache_rx) = tokio::sync::watch::channel::<Option<Arc<RuntimeConfig>>>(None);
    if let Some(cache) = src.cache {
        if let Some((version, changes)) = cache.load() {
            let changes = changes.into_iter().map(Ok);
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
    let mut cfg = aigw_xds::ClientConfig::new(src.endpoints.clone(), src.node_id.clone());
    cfg.node_token = src.node_token.clone();
    cfg.ca_pem = src.ca_pem.clone();
    cfg.type_urls = TYPE_URLS.iter().map(|t| (*t).to_owned()).collect();
    cfg.initial_version = initial_version;
    cfg.build_version = env!("CARGO_PKG_VERSION").to_owned();
    let key = src.key.clone();
    let st = state.clone();
    let applier: aigw_xds::Applier = Arc::new(move |update: aigw_xds::Update| {
        // Decoded one at a time as the compile consumes them.
        let removed = update.removed.into_iter().map(|r| removed_change(&r.type_url, r.name));
        let changes = update.resources.into_iter().map(resource_change).chain(removed).map(|c| c.map_err(ApplyError::Decode));
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
                Err(Box::new(e))
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
        let price = Price::from_json(&json!({"provider": "openai", "model": "gpt-x", "input": 1.0, "output": 2.0})).unwrap();
        cfg.price_entries.insert("openai/gpt-x".into(), ("pv".into(), price.clone()));
        cache.store(&cfg).unwrap();
        let (version, changes) = cache.load().unwrap();
        let prices: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Price { name, version, price } => Some((name.clone(), version.clone(), price.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(prices, vec![("openai/gpt-x".to_owned(), "pv".to_owned(), Some(price))], "operator prices are cached too");
        let routes: Vec<(String, Value)> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Upsert { version, route, .. } => Some((version, route)),
                _ => None,
            })
            .collect();
        assert_eq!((version.as_str(), routes.len(), routes[0].0.as_str()), ("v1", 1, "rv"));
        assert_eq!(routes[0].1, route, "kept as received (secrets in their encrypted form)");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // The first release's format.
        std::fs::write(&path, json!({"version": "v0", "routes": [route.clone()]}).to_string()).unwrap();
        let (version, changes) = cache.load().unwrap();
        let Change::Upsert { version: rv, .. } = &changes[0] else { panic!("a route") };
        assert_eq!((version.as_str(), rv.clone()), ("v0", resource_version(&route)));
        std::fs::write(&path, b"{garbage").unwrap();
        assert!(cache.load().is_none());
        std::fs::remove_file(&path).unwrap();
    }
}
