//! Config compilation: routes → an immutable [`RuntimeConfig`] (routes compiled, router
//! built). Runs off the hot path whenever an update arrives; requests only read the
//! result. Updates are incremental: a route whose resource version did not change keeps
//! its compiled `Arc<CompiledRoute>`; only added or changed routes are compiled, and an
//! update that fails anywhere is rejected whole (nothing of it applied).

use std::collections::BTreeMap;
use std::sync::Arc;

use aigw_model::secrets;
use aigw_model::snapshot::resource_version;
use serde_json::Value;

use crate::compiled::{CompileCtx, CompileError, CompiledRoute, compile_route};
use crate::consumers::{ConsumerError, ConsumerSet};
use crate::router::Router;
use aigw_model::prices::{Catalog, Price};

/// One route as received.
#[derive(Debug)]
pub struct Entry {
    /// Content hash of the route as received (the resource version).
    pub version: String,
    /// The route JSON as received (secrets encrypted or as configured), compact; for
    /// `/config_dump` and the snapshot cache.
    pub source: Box<str>,
    /// None when the route is disabled (`status: 0`). Compiled routes do not keep the
    /// JSON of their plugins or `vars` (see `slim`): read typed configs, or `source`.
    pub compiled: Option<Arc<CompiledRoute>>,
}

pub struct RuntimeConfig {
    pub version: String,
    pub router: Router,
    /// Enabled routes, by id.
    pub routes: Vec<Arc<CompiledRoute>>,
    /// Every route received, by id.
    pub entries: BTreeMap<Arc<str>, Arc<Entry>>,
    /// Consumers, credentials and groups (CONTRACT §12), compiled with their plugins.
    pub consumers: Arc<ConsumerSet>,
    /// The operator's price entries by `{provider}/{model}` (CONTRACT §14), as received.
    pub price_entries: BTreeMap<String, (String, Price)>,
    /// The default catalog with the operator's entries over it.
    pub prices: Arc<Catalog>,
}

impl RuntimeConfig {
    pub fn empty() -> RuntimeConfig {
        RuntimeConfig {
            version: String::new(),
            router: Router::default(),
            routes: Vec::new(),
            entries: BTreeMap::new(),
            consumers: Arc::default(),
            price_entries: BTreeMap::new(),
            prices: default_catalog(),
        }
    }

    /// Routes (and consumers) for `/config_dump`: secrets redacted whatever their form,
    /// keys only as their hashes.
    pub fn dump(&self) -> Value {
        let routes: Vec<Value> = self
            .entries
            .values()
            .map(|e| {
                let mut r: Value = serde_json::from_str(&e.source).unwrap_or(Value::Null);
                secrets::redact_all(&mut r);
                r
            })
            .collect();
        let mut out = serde_json::json!({ "version": self.version, "routes": routes });
        if !self.consumers.is_empty()
            && let (Some(o), Value::Object(c)) = (out.as_object_mut(), self.consumers.dump())
        {
            o.extend(c);
        }
        out
    }
}

/// The default catalog, parsed once per process.
fn default_catalog() -> Arc<Catalog> {
    static C: std::sync::OnceLock<Arc<Catalog>> = std::sync::OnceLock::new();
    C.get_or_init(|| Arc::new(Catalog::with_defaults([]))).clone()
}

/// One resource of an update.
pub enum Change {
    /// An operator price entry named `{provider}/{model}`; None removes it.
    Price {
        name: String,
        version: String,
        price: Option<Price>,
    },
    /// A consumer, credential, consumer group or the key-auth settings.
    Consumer(crate::consumers::Change),
    /// Added or changed: the route JSON and its resource version.
    Upsert {
        id: String,
        version: String,
        route: Value,
    },
    Remove {
        id: String,
    },
}

/// Why an update is rejected (NACKed) as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("route {id:?}: {error}")]
    Compile { id: String, error: CompileError },
    /// The update contradicts itself or its resources' names.
    #[error("route {id:?}: {message}")]
    Inconsistent { id: String, message: String },
    /// A resource that could not be decoded (its type, its payload).
    #[error("{0}")]
    Decode(String),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// How much an update compiled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub compiled: usize,
    pub reused: usize,
    pub removed: usize,
}

/// Applies an update to `prev`: a full set (`full_state`: replaces everything) or a delta.
/// Unchanged routes keep their compiled form. Any error rejects the whole update.
/// `changes` is consumed one at a time, so a large update never holds all its routes'
/// JSON at once (decode, compile, drop).
pub fn apply(
    prev: &RuntimeConfig,
    version: &str,
    full_state: bool,
    changes: impl IntoIterator<Item = Result<Change, ApplyError>>,
    ctx: &CompileCtx<'_>,
) -> Result<(RuntimeConfig, ApplyStats), ApplyError> {
    apply_with(prev, version, full_state, changes, ctx, None)
}

/// [`apply`], hashing the clear keys of a routes file's consumers with `file_hasher`.
pub fn apply_with(
    prev: &RuntimeConfig,
    version: &str,
    full_state: bool,
    changes: impl IntoIterator<Item = Result<Change, ApplyError>>,
    ctx: &CompileCtx<'_>,
    file_hasher: Option<&aigw_model::keyauth::KeyHasher>,
) -> Result<(RuntimeConfig, ApplyStats), ApplyError> {
    let mut stats = ApplyStats::default();
    let mut consumer_changes = Vec::new();
    let mut price_entries = if full_state { BTreeMap::new() } else { prev.price_entries.clone() };
    let mut prices_changed = full_state;
    let mut entries = if full_state { BTreeMap::new() } else { prev.entries.clone() };
    let mut seen = std::collections::HashSet::new();
    for change in changes {
        match change? {
            Change::Consumer(c) => consumer_changes.push(c),
            Change::Price { name, version, price } => {
                prices_changed = true;
                match price {
                    Some(p) => {
                        price_entries.insert(name, (version, p));
                    }
                    None => {
                        price_entries.remove(&name);
                    }
                }
            }
            Change::Upsert { id, version, route } => {
                if !seen.insert(id.clone()) {
                    return Err(ApplyError::Inconsistent { id, message: "duplicate id".into() });
                }
                if let Some(old) = prev.entries.get(id.as_str())
                    && old.version == version
                {
                    entries.insert(Arc::from(id.as_str()), old.clone());
                    stats.reused += 1;
                    continue;
                }
                let mut c = match compile_route(&route, ctx) {
                    Ok(c) => c,
                    Err(error) => return Err(ApplyError::Compile { id, error }),
                };
                slim(&mut c);
                if c.id() != id {
                    let message = format!("the resource holds route id {:?}", c.id());
                    return Err(ApplyError::Inconsistent { id, message });
                }
                let compiled = (c.spec.route.status != Some(0)).then(|| Arc::new(c));
                let source = serde_json::to_string(&route).unwrap_or_default().into_boxed_str();
                entries.insert(Arc::from(id.as_str()), Arc::new(Entry { version, source, compiled }));
                stats.compiled += 1;
            }
            Change::Remove { id } => {
                if !seen.insert(id.clone()) {
                    return Err(ApplyError::Inconsistent { id, message: "both changed and removed in one update".into() });
                }
                if entries.remove(id.as_str()).is_some() {
                    stats.removed += 1;
                }
            }
        }
    }
    if full_state {
        stats.removed = prev.entries.keys().filter(|k| !entries.contains_key(*k)).count();
    }
    let routes: Vec<Arc<CompiledRoute>> = entries.values().filter_map(|e| e.compiled.clone()).collect();
    let router = Router::build(&routes);
    let consumers = if consumer_changes.is_empty() && !full_state {
        prev.consumers.clone()
    } else {
        Arc::new(ConsumerSet::apply(&prev.consumers, full_state, consumer_changes, ctx, file_hasher)?)
    };
    let prices = if !prices_changed {
        prev.prices.clone()
    } else if price_entries.is_empty() {
        default_catalog()
    } else {
        Arc::new(Catalog::with_defaults(price_entries.values().map(|(_, p)| p.clone())))
    };
    Ok((RuntimeConfig { version: version.to_owned(), router, routes, entries, consumers, price_entries, prices }, stats))
}

/// Drops what a compiled route no longer needs once compiled: the JSON of its plugin
/// configs and of `vars` (about 4 KB a route: serde_json maps are B-tree nodes). The typed
/// configs (`spec.ai_proxy`, …) and the compiled `spec.vars` stay; the JSON as received
/// is in [`Entry::source`]. This is what keeps 10,000 routes under 60 MB.
fn slim(c: &mut CompiledRoute) {
    c.spec.route.plugins = BTreeMap::new();
    c.spec.route.vars = None;
}

/// Compiles a whole route set (routes files, the snapshot cache); any error rejects all
/// of it (never half-applied).
pub fn compile(version: &str, routes: Vec<Value>, ctx: &CompileCtx<'_>) -> Result<RuntimeConfig, ApplyError> {
    let changes = routes.into_iter().map(|r| {
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Change::Upsert { id, version: resource_version(&r), route: r })
    });
    apply(&RuntimeConfig::empty(), version, true, changes, ctx).map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstreams;
    use serde_json::json;

    fn route(ai: Value) -> Value {
        json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": ai}})
    }

    fn chat(id: &str, uri: &str) -> Value {
        json!({"id": id, "uri": uri, "plugins": {"ai-proxy": {"provider": "openai", "auth": {}}}})
    }

    fn up(r: Value) -> Result<Change, ApplyError> {
        Ok(Change::Upsert { id: r["id"].as_str().unwrap().to_owned(), version: resource_version(&r), route: r })
    }

    fn rm(id: &str) -> Result<Change, ApplyError> {
        Ok(Change::Remove { id: id.to_owned() })
    }

    #[test]
    fn a_bad_route_rejects_the_whole_snapshot() {
        let good = route(json!({"provider": "openai", "auth": {}}));
        let mut bad = route(json!({"provider": "openai", "auth": {"header": {"a": "$env://MISSING"}}}));
        bad["id"] = json!("bad");
        let err = compile("v", vec![good.clone(), bad], &CompileCtx::bare(&Upstreams::default())).err().unwrap().to_string();
        assert!(err.contains("route \"bad\"") && err.contains("MISSING"), "{err}");
        let err = compile("v", vec![good.clone(), good.clone()], &CompileCtx::bare(&Upstreams::default())).err().unwrap().to_string();
        assert!(err.contains("duplicate"), "{err}");
        let ok = compile("v", vec![good], &CompileCtx::bare(&Upstreams::default())).unwrap();
        assert_eq!(ok.routes.len(), 1);
    }

    #[test]
    fn deltas_compile_only_what_changed() {
        let ups = Upstreams::default();
        let ctx = CompileCtx::bare(&ups);
        let v1 = compile("v1", vec![chat("a", "/a"), chat("b", "/b"), chat("c", "/c")], &ctx).unwrap();
        let a1 = v1.entries["a"].compiled.clone().unwrap();
        let b1 = v1.entries["b"].compiled.clone().unwrap();
        // Delta: b changes, c goes, d comes; a is untouched and keeps its Arc.
        let (v2, stats) = apply(&v1, "v2", false, vec![up(chat("b", "/b2")), rm("c"), up(chat("d", "/d"))], &ctx).unwrap();
        assert_eq!(stats, ApplyStats { compiled: 2, reused: 0, removed: 1 });
        assert!(Arc::ptr_eq(&a1, v2.entries["a"].compiled.as_ref().unwrap()));
        assert!(!Arc::ptr_eq(&b1, v2.entries["b"].compiled.as_ref().unwrap()));
        let ids: Vec<&str> = v2.routes.iter().map(|r| r.id()).collect();
        assert_eq!(ids, vec!["a", "b", "d"]);
        assert!(v2.router.first_where("/b2", |_| true).is_some() && v2.router.first_where("/c", |_| true).is_none());
        // A full set reuses what has the same version and drops the rest.
        let (v3, stats) = apply(&v2, "v3", true, vec![up(chat("a", "/a")), up(chat("d", "/d2"))], &ctx).unwrap();
        assert_eq!(stats, ApplyStats { compiled: 1, reused: 1, removed: 1 });
        assert!(Arc::ptr_eq(&a1, v3.entries["a"].compiled.as_ref().unwrap()));
        assert_eq!(v3.entries.len(), 2);
        // A failing delta changes nothing: the caller keeps v3.
        let mut bad = chat("a", "/a");
        bad["plugins"]["ai-proxy"]["auth"] = json!({"header": {"k": "$env://NOPE"}});
        let err = apply(&v3, "v4", false, vec![up(chat("e", "/e")), up(bad)], &ctx).err().unwrap().to_string();
        assert!(err.contains("route \"a\"") && err.contains("NOPE"), "{err}");
        // Disabled routes are kept (for the dump) but not routed.
        let mut off = chat("f", "/f");
        off["status"] = json!(0);
        let (v5, _) = apply(&v3, "v5", false, vec![up(off)], &ctx).unwrap();
        assert_eq!((v5.entries.len(), v5.routes.len()), (3, 2));
        // A resource named differently from its route is rejected.
        let wrong = Ok(Change::Upsert { id: "other".into(), version: "x".into(), route: chat("g", "/g") });
        assert!(apply(&v5, "v6", false, vec![wrong], &ctx).err().unwrap().to_string().contains("holds route id"));
        // A change that could not even be decoded rejects the update too.
        assert_eq!(
            apply(&v5, "v7", false, vec![up(chat("h", "/h")), Err(ApplyError::Decode("bad payload".into()))], &ctx)
                .err()
                .unwrap()
                .to_string(),
            "bad payload"
        );
    }

    #[test]
    fn dump_redacts_secrets() {
        let r = route(json!({"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-secret"}}}));
        let cfg = compile("v1", vec![r], &CompileCtx::bare(&Upstreams::default())).unwrap();
        let dump = cfg.dump().to_string();
        assert!(!dump.contains("sk-secret") && dump.contains("v1") && dump.contains("******"), "{dump}");
    }
}
