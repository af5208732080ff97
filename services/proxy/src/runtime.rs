//! Snapshot compilation: JSON routes → an immutable [`RuntimeConfig`] (secrets revealed,
//! endpoints parsed, credentials turned into header values, router built). Runs off
//! the hot path whenever a snapshot arrives; requests only read the result.

use std::sync::Arc;

use aigw_model::RouteSpec;
use aigw_model::secrets::{self, DataKey};
use http::{HeaderName, HeaderValue, Uri};
use serde_json::Value;

use crate::router::Router;
use crate::upstream::{ClientKey, Upstream, Upstreams};

/// `override.endpoint`, parsed.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path and query as given; None for a bare origin (`https://host` or `https://host/`),
    /// which means "this host, the provider's default path".
    pub path_and_query: Option<String>,
}

#[derive(Debug)]
pub struct CompiledRoute {
    /// The validated route with secrets in clear text. Never logged or dumped.
    pub spec: RouteSpec,
    pub endpoint: Option<Endpoint>,
    pub auth_headers: Vec<(HeaderName, HeaderValue)>,
    /// Pre-encoded `k=v` pairs.
    pub auth_query: Vec<(String, String)>,
    pub timeout: std::time::Duration,
    /// `scheme://authority` requests go to.
    pub origin: String,
    pub upstream: Arc<Upstream>,
    /// `auth.aws` in clear text, for SigV4.
    pub aws: Option<crate::sigv4::AwsCredentials>,
}

impl CompiledRoute {
    pub fn id(&self) -> &str {
        &self.spec.route.id
    }

    /// Whether the route brings its own credentials (client ones are then never forwarded).
    pub fn has_credentials(&self) -> bool {
        !self.auth_headers.is_empty()
            || !self.auth_query.is_empty()
            || self.spec.ai_proxy.auth.gcp.is_some()
            || self.spec.ai_proxy.auth.aws.is_some()
    }
}

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

pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Compiles a whole snapshot; any error rejects all of it (never half-applied).
pub fn compile(
    version: &str,
    routes: Vec<Value>,
    key: Option<&DataKey>,
    env: EnvLookup<'_>,
    upstreams: &Upstreams,
) -> Result<RuntimeConfig, String> {
    let mut compiled = Vec::with_capacity(routes.len());
    let mut seen = std::collections::HashSet::with_capacity(routes.len());
    for r in &routes {
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
        if !seen.insert(id.to_owned()) {
            return Err(format!("route {id:?}: duplicate id"));
        }
        let c = compile_route(r, key, env, upstreams).map_err(|e| format!("route {id:?}: {e}"))?;
        if c.spec.route.status != Some(0) {
            compiled.push(Arc::new(c));
        }
    }
    let router = Router::build(&compiled);
    Ok(RuntimeConfig { version: version.to_owned(), router, routes: compiled, source: routes })
}

pub fn compile_route(v: &Value, key: Option<&DataKey>, env: EnvLookup<'_>, upstreams: &Upstreams) -> Result<CompiledRoute, String> {
    let mut clear = v.clone();
    secrets::reveal_route(&mut clear, key, env).map_err(|e| e.to_string())?;
    let spec = RouteSpec::from_json(&clear).map_err(|e| e.to_string())?;
    let ap = spec.ai_proxy.clone();
    let endpoint = match ap.override_.as_ref().and_then(|o| o.endpoint.as_deref()) {
        Some(ep) => Some(parse_endpoint(ep)?),
        None => None,
    };
    let mut auth_headers = Vec::new();
    for (k, val) in ap.auth.header.iter().flatten() {
        let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| format!("auth.header.{k}: {e}"))?;
        let mut value = HeaderValue::from_str(val).map_err(|_| format!("auth.header.{k}: not a valid header value"))?;
        value.set_sensitive(true);
        auth_headers.push((name, value));
    }
    let auth_query = ap.auth.query.iter().flatten().map(|(k, v)| (encode_query(k), encode_query(v))).collect();
    let origin = match &endpoint {
        Some(ep) => format!("{}://{}", ep.scheme, ep.authority),
        None => aigw_llm::protocol::default_origin(ap.provider, ap.provider_conf.as_ref())
            .ok_or_else(|| format!("provider {} needs override.endpoint", ap.provider.as_str()))?,
    };
    let upstream = upstreams.get(&ClientKey {
        origin: origin.clone(),
        ssl_verify: ap.ssl_verify,
        keepalive: ap.keepalive,
        keepalive_timeout_ms: ap.keepalive_timeout,
        keepalive_pool: ap.keepalive_pool,
        connect_timeout_ms: ap.timeout,
    });
    let aws = ap.auth.aws.as_ref().map(|a| crate::sigv4::AwsCredentials {
        access_key_id: a.access_key_id.clone(),
        secret_access_key: a.secret_access_key.clone(),
        session_token: a.session_token.clone(),
    });
    Ok(CompiledRoute {
        timeout: std::time::Duration::from_millis(ap.timeout),
        spec,
        endpoint,
        auth_headers,
        auth_query,
        origin,
        upstream,
        aws,
    })
}

fn parse_endpoint(ep: &str) -> Result<Endpoint, String> {
    let uri: Uri = ep.parse().map_err(|e| format!("override.endpoint: {e}"))?;
    let parts = uri.into_parts();
    let scheme = parts.scheme.ok_or("override.endpoint: no scheme")?;
    let authority = parts.authority.ok_or("override.endpoint: no host")?;
    let path_and_query = parts.path_and_query.map(|p| p.as_str().to_owned()).filter(|p| p != "/" && !p.is_empty());
    Ok(Endpoint { scheme, authority, path_and_query })
}

/// Percent-encodes a query component or one path segment (RFC 3986 unreserved kept), so
/// model ids and ARNs (`:` → `%3A`, `/` → `%2F`) stay one segment.
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(ai: Value) -> Value {
        json!({"id": "r", "uri": "/x", "plugins": {"ai-proxy": ai}})
    }

    #[test]
    fn endpoints_and_credentials() {
        let c = compile_route(
            &route(json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}, "query": {"key": "a b"}},
                "override": {"endpoint": "http://127.0.0.1:8080/v1/chat/completions?api-version=1"}})),
            None,
            &|_| None,
            &Upstreams::default(),
        )
        .unwrap();
        let ep = c.endpoint.as_ref().unwrap();
        assert_eq!((ep.scheme.as_str(), ep.authority.as_str()), ("http", "127.0.0.1:8080"));
        assert_eq!(ep.path_and_query.as_deref(), Some("/v1/chat/completions?api-version=1"));
        assert_eq!(c.auth_headers[0].0.as_str(), "authorization");
        assert!(c.auth_headers[0].1.is_sensitive());
        assert_eq!(c.auth_query, vec![("key".to_owned(), "a%20b".to_owned())]);
        assert!(c.has_credentials());
        for bare in ["https://h.example", "https://h.example/"] {
            let c = compile_route(
                &route(json!({"provider": "openai", "auth": {}, "override": {"endpoint": bare}})),
                None,
                &|_| None,
                &Upstreams::default(),
            )
            .unwrap();
            assert!(c.endpoint.unwrap().path_and_query.is_none(), "{bare}");
        }
    }

    #[test]
    fn a_bad_route_rejects_the_whole_snapshot() {
        let good = route(json!({"provider": "openai", "auth": {}}));
        let mut bad = route(json!({"provider": "openai", "auth": {"header": {"a": "$env://MISSING"}}}));
        bad["id"] = json!("bad");
        let err = compile("v", vec![good.clone(), bad], None, &|_| None, &Upstreams::default()).err().unwrap();
        assert!(err.contains("route \"bad\"") && err.contains("MISSING"), "{err}");
        let err = compile("v", vec![good.clone(), good.clone()], None, &|_| None, &Upstreams::default()).err().unwrap();
        assert!(err.contains("duplicate"), "{err}");
        let ok = compile("v", vec![good], None, &|_| None, &Upstreams::default()).unwrap();
        assert_eq!(ok.routes.len(), 1);
    }

    #[test]
    fn dump_redacts_secrets() {
        let r = route(json!({"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-secret"}}}));
        let cfg = compile("v1", vec![r], None, &|_| None, &Upstreams::default()).unwrap();
        let dump = cfg.dump().to_string();
        assert!(!dump.contains("sk-secret") && dump.contains("v1"), "{dump}");
    }
}
