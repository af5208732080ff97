//! Snapshot compilation: JSON routes → an immutable [`RuntimeConfig`] (every route
//! compiled, router built). Runs off the hot path whenever a snapshot arrives; requests
//! only read the result.

use std::sync::Arc;

use aigw_model::secrets;
use serde_json::Value;

use crate::compiled::{CompileCtx, CompiledRoute, compile_route};
use crate::router::Router;

pub struct RuntimeConfig {
    pub version: String,
    pub router: Router,
    pub routes: Vec<Arc<CompiledRoute>>,
    /// The routes as received (secrets encrypted or as configured), for the snapshot cache.
    pub source: Vec<Value>,
}

impl RuntimeConfig {
    pub fn empty() -> RuntimeConfig {
        RuntimeConfig { version: String::new(), router: Router::default(), routes: Vec::new(), source: Vec::new() }
    }

    /// Routes for `/config_dump`: secrets redacted whatever their form.
    pub fn dump(&self) -> Value {
        let routes: Vec<Value> = self
            .source
            .iter()
            .map(|r| {
                let mut r = r.clone();
                secrets::redact_all(&mut r);
                r
            })
            .collect();
        serde_json::json!({ "version": self.version, "routes": routes })
    }
}

/// Compiles a whole snapshot; any error rejects all of it (never half-applied).
pub fn compile(version: &str, routes: Vec<Value>, ctx: &CompileCtx<'_>) -> Result<RuntimeConfig, String> {
    let mut compiled = Vec::with_capacity(routes.len());
    let mut seen = std::collections::HashSet::with_capacity(routes.len());
    for r in &routes {
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
        if !seen.insert(id.to_owned()) {
            return Err(format!("route {id:?}: duplicate id"));
        }
        let c = compile_route(r, ctx).map_err(|e| format!("route {id:?}: {e}"))?;
        if c.spec.route.status != Some(0) {
            compiled.push(Arc::new(c));
        }
    }
    let router = Router::build(&compiled);
    Ok(RuntimeConfig { version: version.to_owned(), router, routes: compiled, source: routes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstreams;
    use serde_json::json;

    fn route(ai: Value) -> Value {
        json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": ai}})
    }

    #[test]
    fn a_bad_route_rejects_the_whole_snapshot() {
        let good = route(json!({"provider": "openai", "auth": {}}));
        let mut bad = route(json!({"provider": "openai", "auth": {"header": {"a": "$env://MISSING"}}}));
        bad["id"] = json!("bad");
        let err = compile("v", vec![good.clone(), bad], &CompileCtx::bare(&Upstreams::default())).err().unwrap();
        assert!(err.contains("route \"bad\"") && err.contains("MISSING"), "{err}");
        let err = compile("v", vec![good.clone(), good.clone()], &CompileCtx::bare(&Upstreams::default())).err().unwrap();
        assert!(err.contains("duplicate"), "{err}");
        let ok = compile("v", vec![good], &CompileCtx::bare(&Upstreams::default())).unwrap();
        assert_eq!(ok.routes.len(), 1);
    }

    #[test]
    fn dump_redacts_secrets() {
        let r = route(json!({"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-secret"}}}));
        let cfg = compile("v1", vec![r], &CompileCtx::bare(&Upstreams::default())).unwrap();
        let dump = cfg.dump().to_string();
        assert!(!dump.contains("sk-secret") && dump.contains("v1") && dump.contains("******"), "{dump}");
    }
}
