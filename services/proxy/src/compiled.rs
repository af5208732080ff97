//! One route compiled for the data plane: secrets revealed, the provider target resolved,
//! credentials turned into an [`UpstreamAuth`], the shared upstream client picked.
//! Built when a snapshot arrives, never per request.

use std::sync::Arc;
use std::time::Duration;

use aigw_gcp_auth::GcpAuth;
use aigw_model::RouteSpec;
use aigw_model::secrets::{self, DataKey};
use aigw_providers::target::Target;
use serde_json::Value;

use crate::authorize::UpstreamAuth;
use crate::upstream::{ClientKey, Upstream, Upstreams};

/// Non-streamed answers are read under this cap unless `max_response_bytes` is set.
pub const DEFAULT_RESPONSE_CAP: u64 = 64 << 20;

/// One upstream a route can send to: the provider target, its credentials and the shared
/// client for its origin. An `ai-proxy` route has one; an `ai-proxy-multi` route one per
/// instance.
#[derive(Debug)]
pub struct CompiledTarget {
    /// The instance name (`ai-proxy-multi`), empty for `ai-proxy`.
    pub name: String,
    pub target: Target,
    pub auth: UpstreamAuth,
    pub upstream: Arc<Upstream>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    /// The validated route with secrets in clear text. Never logged or dumped.
    pub spec: RouteSpec,
    /// Never empty.
    pub targets: Vec<CompiledTarget>,
    /// Upstream connect and per-read timeout.
    pub timeout: Duration,
    /// Cap on a non-streamed answer (`max_response_bytes`, else 64 MiB).
    pub response_cap: u64,
    /// Cap on one streamed event (`max_response_bytes`, else 16 MiB).
    pub max_event: usize,
}

impl CompiledRoute {
    pub fn id(&self) -> &str {
        &self.spec.route.id
    }
}

pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What compiling a route needs from the node: the data key, the environment (for
/// `$env://`), the shared upstream clients. Shared resources that later features need at
/// compile time (token sources, health checkers) join this struct, not every signature.
pub struct CompileCtx<'a> {
    pub key: Option<&'a DataKey>,
    pub env: EnvLookup<'a>,
    pub upstreams: &'a Upstreams,
    /// The node's GCP token sources (`auth.gcp`): one per distinct credential and TTL
    /// settings, shared across routes and snapshots.
    pub gcp: &'a GcpAuth,
}

impl<'a> CompileCtx<'a> {
    /// No data key, an empty environment, in-process GCP tokens: for tests and benches.
    pub fn bare(upstreams: &'a Upstreams) -> CompileCtx<'a> {
        static GCP: std::sync::OnceLock<GcpAuth> = std::sync::OnceLock::new();
        let gcp = GCP.get_or_init(|| GcpAuth::new(Default::default()).expect("default gcp auth options are valid"));
        CompileCtx { key: None, env: &|_| None, upstreams, gcp }
    }
}

pub fn compile_route(v: &Value, ctx: &CompileCtx<'_>) -> Result<CompiledRoute, String> {
    let mut clear = v.clone();
    secrets::reveal_route(&mut clear, ctx.key, ctx.env).map_err(|e| e.to_string())?;
    let spec = RouteSpec::from_json(&clear).map_err(|e| e.to_string())?;
    let ap = spec.ai_proxy.clone();
    let auth = UpstreamAuth::compile(&ap, ctx.gcp, ctx.env)?;
    let target = Target::compile(ap.clone(), auth.has_credentials()).map_err(|e| e.to_string())?;
    let upstream = ctx.upstreams.get(&ClientKey {
        origin: target.origin.clone(),
        ssl_verify: ap.ssl_verify,
        keepalive: ap.keepalive,
        keepalive_timeout_ms: ap.keepalive_timeout,
        keepalive_pool: ap.keepalive_pool,
        connect_timeout_ms: ap.timeout,
    });
    let max_event = ap.max_response_bytes.map_or(aigw_llm::sse::DEFAULT_MAX_EVENT, |m| m.min(usize::MAX as u64) as usize);
    Ok(CompiledRoute {
        timeout: Duration::from_millis(ap.timeout),
        response_cap: ap.max_response_bytes.unwrap_or(DEFAULT_RESPONSE_CAP),
        max_event,
        spec,
        targets: vec![CompiledTarget { name: String::new(), target, auth, upstream }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(ai: Value) -> Value {
        json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": ai}})
    }

    #[test]
    fn targets_credentials_and_caps() {
        let c = compile_route(
            &route(json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}, "query": {"key": "a b"}},
                "override": {"endpoint": "http://127.0.0.1:8080/v1/chat/completions?api-version=1"}, "max_response_bytes": 1000})),
            &CompileCtx::bare(&Upstreams::default()),
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.target.origin, "http://127.0.0.1:8080");
        assert!(t.target.has_credentials && t.auth.has_credentials());
        assert_eq!((c.response_cap, c.max_event), (1000, 1000));
        let c = compile_route(&route(json!({"provider": "openai", "auth": {}})), &CompileCtx::bare(&Upstreams::default())).unwrap();
        assert!(!c.targets[0].target.has_credentials);
        assert_eq!((c.response_cap, c.max_event), (DEFAULT_RESPONSE_CAP, aigw_llm::sse::DEFAULT_MAX_EVENT));
        let e = compile_route(&route(json!({"provider": "openai-compatible", "auth": {}})), &CompileCtx::bare(&Upstreams::default()));
        let e = e.unwrap_err();
        assert!(e.contains("override.endpoint"), "{e}");
    }
}
