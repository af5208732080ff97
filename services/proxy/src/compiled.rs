//! One route compiled for the data plane: secrets revealed, the provider target resolved,
//! credentials turned into an [`UpstreamAuth`], the shared upstream client picked; for
//! `ai-proxy-multi`, one target per instance plus the balancer, the fallback policy, the
//! consistent-hashing key and the active probes ([`MultiRoute`]).
//! Built when a snapshot arrives, never per request.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aigw_balance::{Balancer, FallbackPolicy, ProbeRules};
use aigw_gcp_auth::GcpAuth;
use aigw_model::RouteSpec;
use aigw_model::multi::{AiProxyMultiConfig, CheckType, HashOn};
use aigw_model::route::AiProxyConfig;
use aigw_model::secrets::{self, DataKey};
use aigw_providers::target::{Target, decode_component};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::authorize::UpstreamAuth;
use crate::phases::{Plugin, PluginEnv, Registry, Resources, Scope};
use crate::record::{Needs, Server, TEXT_CAP};
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
    /// The upstream as the record names it.
    pub server: Arc<Server>,
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
    /// `ai-proxy-multi`: how `targets` are picked and retried. None for `ai-proxy`.
    pub multi: Option<MultiRoute>,
    /// The route's plugins in the order they run (`crate::phases`); empty for most routes.
    pub plugins: Arc<[Arc<dyn Plugin>]>,
    /// What the request path keeps for the plugins and `logging`.
    pub needs: Needs,
    /// The metric series this route's requests record into (filled on first use).
    pub memo: Arc<crate::metrics::RouteMemo>,
}

/// The `ai-proxy-multi` part of a compiled route. `targets[i]` is instance `i`.
#[derive(Debug)]
pub struct MultiRoute {
    /// Picking and the instances' health (kept across snapshots, see
    /// [`crate::upstream::Upstreams::health`]).
    pub balancer: Arc<Balancer>,
    pub policy: FallbackPolicy,
    /// What consistent hashing hashes (`HashKey::None` for round robin).
    pub hash: HashKey,
    /// Active probes, by instance (`checks.active`).
    pub probes: Vec<Option<Arc<Probe>>>,
    /// The probers, started on the route's first request and aborted when the route is
    /// dropped (its snapshot replaced and its last request done).
    pub probers: OnceLock<Probers>,
}

/// Abort handles of a route's probe tasks: dropping them stops the tasks.
#[derive(Debug, Default)]
pub struct Probers(pub Vec<tokio::task::AbortHandle>);

impl Drop for Probers {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// One instance's active health check, compiled (`checks.active`; APISIX's checker).
pub struct Probe {
    /// `http(s)://host:port/path?auth-query`: `type` gives the scheme, the instance's
    /// endpoint (or the provider's origin) the host and port, as APISIX's checker nodes.
    /// Holds the instance's `auth.query` credentials: never logged (see `shown`).
    pub url: String,
    /// `url` without the query, for logs.
    pub shown: String,
    /// `req_headers`, the instance's `auth.header` (sensitive), and `Host`.
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub rules: ProbeRules,
    pub client: Arc<Upstream>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("url", &self.shown).field("timeout", &self.timeout).field("rules", &self.rules).finish()
    }
}

/// The consistent-hashing key of a request (`balancer.hash_on` + `key`), compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Round robin: nothing to hash.
    None,
    Var(KeyVar),
    Header(HeaderName),
    Cookie(String),
    /// The consumer's name; the client address when the request has none (APISIX's).
    Consumer,
    /// `vars_combinations`: literal text and `$var`s.
    Combination(Vec<KeyPart>),
}

/// The nginx variables a hash key may name (APISIX's `hash_on: vars` list, plus the
/// `http_*` and `cookie_*` families inside `vars_combinations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVar {
    Uri,
    RequestUri,
    QueryString,
    /// `host` and `server_name`: the request's host, without the port.
    Host,
    RemoteAddr,
    RemotePort,
    /// The machine's host name (read once).
    Hostname(String),
    Arg(String),
    Http(HeaderName),
    Cookie(String),
    /// Not known to the data path (`server_addr`): always missing.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Lit(String),
    Var(KeyVar),
}

fn key_var(name: &str) -> KeyVar {
    match name {
        "uri" => KeyVar::Uri,
        "request_uri" => KeyVar::RequestUri,
        "query_string" | "args" => KeyVar::QueryString,
        "host" | "server_name" => KeyVar::Host,
        "remote_addr" => KeyVar::RemoteAddr,
        "remote_port" => KeyVar::RemotePort,
        "hostname" => KeyVar::Hostname(
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into()),
        ),
        _ => {
            if let Some(a) = name.strip_prefix("arg_") {
                KeyVar::Arg(a.to_owned())
            } else if let Some(h) = name.strip_prefix("http_").and_then(header_name) {
                KeyVar::Http(h)
            } else if let Some(c) = name.strip_prefix("cookie_") {
                KeyVar::Cookie(c.to_owned())
            } else {
                KeyVar::Unknown
            }
        }
    }
}

/// nginx header variable spelling (`x_user_id`) → header name (`x-user-id`).
fn header_name(s: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(s.to_ascii_lowercase().replace('_', "-").as_bytes()).ok()
}

impl HashKey {
    pub fn compile(c: &AiProxyMultiConfig) -> HashKey {
        if c.balancer.algorithm != aigw_model::multi::Algorithm::Chash {
            return HashKey::None;
        }
        let key = c.balancer.key.as_deref().unwrap_or_default();
        match c.balancer.hash_on {
            HashOn::Vars => HashKey::Var(key_var(key)),
            HashOn::Header => header_name(key).map_or(HashKey::Consumer, HashKey::Header),
            HashOn::Cookie => HashKey::Cookie(key.to_owned()),
            HashOn::Consumer => HashKey::Consumer,
            HashOn::VarsCombinations => HashKey::Combination(parse_combination(key)),
        }
    }

    /// The key to hash for a request; the client address when the request has no such
    /// value (APISIX's fallback). Borrowed from the request when it can be.
    pub fn key<'a>(&self, parts: &'a http::request::Parts, remote: SocketAddr, consumer: Option<&'a str>) -> Cow<'a, str> {
        let found = match self {
            HashKey::None => return Cow::Borrowed(""),
            HashKey::Var(v) => var_value(v, parts, remote),
            HashKey::Header(h) => parts.headers.get(h).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(Cow::Borrowed),
            HashKey::Cookie(name) => cookie(&parts.headers, name).map(Cow::Borrowed),
            HashKey::Consumer => consumer.map(Cow::Borrowed),
            HashKey::Combination(list) => {
                let mut out = String::new();
                let mut resolved = 0;
                for p in list {
                    match p {
                        KeyPart::Lit(s) => out.push_str(s),
                        KeyPart::Var(v) => {
                            if let Some(val) = var_value(v, parts, remote) {
                                resolved += 1;
                                out.push_str(&val);
                            }
                        }
                    }
                }
                (resolved > 0).then_some(Cow::Owned(out))
            }
        };
        found.unwrap_or_else(|| Cow::Owned(remote.ip().to_string()))
    }
}

/// `$name` / `${name}` references and literal text, as nginx interpolates.
fn parse_combination(key: &str) -> Vec<KeyPart> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = key;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = match after.strip_prefix('{').and_then(|b| b.find('}').map(|e| (&b[..e], &b[e + 1..]))) {
            Some(x) => x,
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if name.is_empty() {
            lit.push('$');
        } else {
            if !lit.is_empty() {
                parts.push(KeyPart::Lit(std::mem::take(&mut lit)));
            }
            parts.push(KeyPart::Var(key_var(name)));
        }
        rest = tail;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(KeyPart::Lit(lit));
    }
    parts
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn var_value<'a>(v: &KeyVar, parts: &'a http::request::Parts, remote: SocketAddr) -> Option<Cow<'a, str>> {
    let s: Cow<'a, str> = match v {
        KeyVar::Uri => Cow::Borrowed(parts.uri.path()),
        KeyVar::RequestUri => Cow::Borrowed(parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str())),
        KeyVar::QueryString => Cow::Borrowed(parts.uri.query().unwrap_or_default()),
        KeyVar::Host => {
            let raw = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| parts.uri.host()).unwrap_or_default();
            let no_port = match raw.rfind(':') {
                Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
                _ => raw,
            };
            Cow::Borrowed(no_port)
        }
        KeyVar::RemoteAddr => Cow::Owned(remote.ip().to_string()),
        KeyVar::RemotePort => Cow::Owned(remote.port().to_string()),
        KeyVar::Hostname(h) => Cow::Owned(h.clone()),
        KeyVar::Arg(name) => parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| decode_component(k) == *name)
            .map(|(_, v)| Cow::Owned(decode_component(v)))?,
        KeyVar::Http(h) => Cow::Borrowed(parts.headers.get(h).and_then(|v| v.to_str().ok())?),
        KeyVar::Cookie(name) => Cow::Borrowed(cookie(&parts.headers, name)?),
        KeyVar::Unknown => return None,
    };
    (!s.is_empty()).then_some(s)
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
    /// The plugins this node can compile, and what they share.
    pub plugins: &'a Registry,
    pub resources: &'a Resources,
}

impl<'a> CompileCtx<'a> {
    /// No data key, an empty environment, in-process GCP tokens, the built-in plugins:
    /// for tests and benches.
    pub fn bare(upstreams: &'a Upstreams) -> CompileCtx<'a> {
        static GCP: std::sync::OnceLock<GcpAuth> = std::sync::OnceLock::new();
        static PLUGINS: std::sync::OnceLock<(Registry, Resources)> = std::sync::OnceLock::new();
        let gcp = GCP.get_or_init(|| GcpAuth::new(Default::default()).expect("default gcp auth options are valid"));
        let (plugins, resources) = PLUGINS.get_or_init(|| (crate::plugins::builtin(), Resources::default()));
        CompileCtx { key: None, env: &|_| None, upstreams, gcp, plugins, resources }
    }
}

/// Why a route (or one of its parts) does not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Invalid(#[from] aigw_model::ValidationError),
    #[error(transparent)]
    Plugin(#[from] crate::phases::PluginError),
    #[error(transparent)]
    Target(#[from] aigw_providers::target::TargetError),
    #[error(transparent)]
    Auth(#[from] crate::authorize::AuthError),
    #[error("instance '{instance}': {error}")]
    Instance { instance: String, error: Box<CompileError> },
}

pub fn compile_route(v: &Value, ctx: &CompileCtx<'_>) -> Result<CompiledRoute, CompileError> {
    let mut clear = v.clone();
    secrets::reveal_route(&mut clear, ctx.key, ctx.env)?;
    let spec = RouteSpec::from_json_with(&clear, &|n| ctx.plugins.knows(n))?;
    let plugins = ctx.plugins.compile_all(
        &spec.route.plugins,
        &PluginEnv { scope: Scope::Route(&spec.route.id), route: Some(&spec), resources: ctx.resources },
    )?;
    let payloads = spec.ai_proxy.logging.as_ref().is_some_and(|l| l.payloads);
    let logging = Needs { request_messages: payloads, response_text: payloads.then_some(TEXT_CAP), ..Needs::default() };
    let needs = plugins.iter().fold(logging, |n, p| n.union(p.needs()));
    // Route-wide settings: the same for every instance of an ai-proxy-multi route.
    let ap = spec.ai_proxy.clone();
    let (targets, multi) = match spec.multi.clone() {
        None => (vec![compile_target(String::new(), ap.clone(), ctx)?], None),
        Some(m) => {
            let mut targets = Vec::with_capacity(m.instances.len());
            for (i, ins) in m.instances.iter().enumerate() {
                let instance = |error| CompileError::Instance { instance: ins.name.clone(), error: Box::new(error) };
                let conf = m
                    .instance_config(i)
                    .map(Arc::new)
                    .ok_or_else(|| instance(crate::authorize::AuthError("instance out of range".into()).into()))?;
                targets.push(compile_target(ins.name.clone(), conf, ctx).map_err(instance)?);
            }
            let multi = compile_multi(&spec.route.id, &m, &targets, ctx);
            (targets, Some(multi))
        }
    };
    let max_event = ap.max_response_bytes.map_or(aigw_llm::sse::DEFAULT_MAX_EVENT, |m| m.min(usize::MAX as u64) as usize);
    Ok(CompiledRoute {
        timeout: Duration::from_millis(ap.timeout),
        response_cap: ap.max_response_bytes.unwrap_or(DEFAULT_RESPONSE_CAP),
        max_event,
        spec,
        targets,
        multi,
        plugins: Arc::from(plugins),
        needs,
        memo: Arc::default(),
    })
}

/// One provider configuration (the `ai-proxy` plugin, or one instance) as a target.
fn compile_target(name: String, conf: Arc<AiProxyConfig>, ctx: &CompileCtx<'_>) -> Result<CompiledTarget, CompileError> {
    let auth = UpstreamAuth::compile(&conf, ctx.gcp, ctx.env)?;
    let target = Target::compile(conf.clone(), auth.has_credentials())?;
    let upstream = ctx.upstreams.get(&ClientKey {
        origin: target.origin.clone(),
        ssl_verify: conf.ssl_verify,
        keepalive: conf.keepalive,
        keepalive_timeout_ms: conf.keepalive_timeout,
        keepalive_pool: conf.keepalive_pool,
        connect_timeout_ms: conf.timeout,
    });
    let server = Arc::new(Server { origin: target.origin.clone(), authority: target.authority.clone() });
    Ok(CompiledTarget { name, target, auth, upstream, server })
}

fn compile_multi(route_id: &str, m: &AiProxyMultiConfig, targets: &[CompiledTarget], ctx: &CompileCtx<'_>) -> MultiRoute {
    let balancer = Arc::new(aigw_balance::config::balancer_in(m, route_id, &ctx.upstreams.health));
    let probes = m
        .instances
        .iter()
        .zip(targets)
        .map(|(ins, t)| ins.checks.as_ref().map(|c| Arc::new(compile_probe(&c.active, t, m.ssl_verify, ctx))))
        .collect();
    MultiRoute { balancer, policy: aigw_balance::config::fallback_policy(m), hash: HashKey::compile(m), probes, probers: OnceLock::new() }
}

/// APISIX's checker node for an instance: its endpoint's (or provider's) host and port,
/// probed with `checks.active.type` as the scheme.
fn compile_probe(a: &aigw_model::multi::ActiveCheck, t: &CompiledTarget, ssl_verify: bool, ctx: &CompileCtx<'_>) -> Probe {
    let (origin_scheme, authority) = t.target.origin.split_once("://").unwrap_or(("https", t.target.origin.as_str()));
    let has_port = !authority.ends_with(']') && authority.rsplit_once(':').is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
    let host_port =
        if has_port { authority.to_owned() } else { format!("{authority}:{}", if origin_scheme == "https" { 443 } else { 80 }) };
    let scheme = match a.kind {
        CheckType::Http => "http",
        CheckType::Https => "https",
    };
    let mut url = format!("{scheme}://{host_port}{}", a.http_path);
    let shown = url.split('?').next().unwrap_or_default().to_owned();
    let mut headers = HeaderMap::new();
    for h in a.req_headers.iter().flatten() {
        if let Some((k, v)) = h.split_once(':')
            && let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.trim().as_bytes()), HeaderValue::from_str(v.trim()))
        {
            headers.append(k, v);
        }
    }
    // As APISIX: the instance's auth headers join the probe, its auth query the path.
    if let UpstreamAuth::Static { headers: auth, query } = &t.auth {
        for (k, v) in auth {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(k);
            url.push('=');
            url.push_str(v);
        }
    }
    let host = a.host.clone().unwrap_or_else(|| authority.to_owned());
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, v);
    }
    let timeout = Duration::from_secs_f64(a.timeout.clamp(0.001, 3600.0));
    let client = ctx.upstreams.get(&ClientKey {
        origin: format!("{scheme}://{host_port}"),
        ssl_verify,
        keepalive: true,
        keepalive_timeout_ms: aigw_model::route::DEFAULT_KEEPALIVE_TIMEOUT_MS,
        keepalive_pool: 1,
        connect_timeout_ms: timeout.as_millis().max(1) as u64,
    });
    Probe { url, shown, headers, timeout, rules: aigw_balance::config::probe_rules(a), client }
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
        assert!(e.to_string().contains("override.endpoint"), "{e}");
    }

    fn multi_route(plugin: Value) -> Result<CompiledRoute, String> {
        compile_route(&json!({"id": "m", "uri": "/x", "plugins": {"ai-proxy-multi": plugin}}), &CompileCtx::bare(&Upstreams::default()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_target_per_instance() {
        let c = multi_route(json!({"timeout": 1500, "max_response_bytes": 2048, "fallback_strategy": "http_429", "instances": [
            {"name": "oa", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": "Bearer a"}}, "options": {"model": "gpt-4o"}},
            {"name": "claude", "provider": "anthropic", "weight": 3, "auth": {"header": {"x-api-key": "k"}, "query": {"q": "1 2"}},
             "override": {"endpoint": "http://127.0.0.1:9/v1/messages"},
             "checks": {"active": {"http_path": "/health", "host": "probe.example", "req_headers": ["X-Probe: yes"]}}},
            {"name": "br", "provider": "bedrock", "weight": 1, "provider_conf": {"region": "eu-west-1"},
             "auth": {"aws": {"access_key_id": "AKID", "secret_access_key": "s"}},
             "checks": {"active": {"type": "https"}}}]}))
        .unwrap();
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["oa", "claude", "br"]);
        assert_eq!(c.targets[1].target.origin, "http://127.0.0.1:9");
        assert_eq!(c.targets[2].target.origin, "https://bedrock-runtime.eu-west-1.amazonaws.com");
        assert!(matches!(c.targets[2].auth, UpstreamAuth::SigV4 { .. }));
        // Route-wide settings apply to every instance.
        assert_eq!((c.timeout, c.response_cap), (Duration::from_millis(1500), 2048));
        assert!(c.targets.iter().all(|t| t.target.conf.timeout == 1500));
        let m = c.multi.as_ref().unwrap();
        assert_eq!((m.balancer.len(), m.policy.on_429, m.policy.on_5xx, &m.hash), (3, true, false, &HashKey::None));
        // Probes: APISIX's node (endpoint host and port, `type` as the scheme), the instance's
        // auth header and query, req_headers, Host.
        assert!(m.probes[0].is_none());
        let p = m.probes[1].as_ref().unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9/health?q=1%202");
        let dbg = format!("{p:?}");
        assert!(dbg.contains("http://127.0.0.1:9/health") && !dbg.contains("1%202") && !dbg.contains("\"k\""), "{dbg}");
        assert_eq!((p.headers["x-api-key"].to_str().unwrap(), p.headers["x-probe"].to_str().unwrap()), ("k", "yes"));
        assert!(p.headers["x-api-key"].is_sensitive());
        assert_eq!(p.headers["host"], "probe.example");
        assert_eq!((p.timeout, p.rules.http_failures), (Duration::from_secs(1), 5));
        let p = m.probes[2].as_ref().unwrap();
        assert_eq!(p.url, "https://bedrock-runtime.eu-west-1.amazonaws.com:443/");
        assert_eq!(p.headers["host"], "bedrock-runtime.eu-west-1.amazonaws.com");
        // No checks at all: no probes.
        let c = multi_route(json!({"instances": [{"name": "a", "provider": "openai", "weight": 1, "auth": {}}]})).unwrap();
        assert!(c.multi.as_ref().unwrap().probes.iter().all(Option::is_none));
        // An instance that cannot be compiled names itself.
        let e = multi_route(
            json!({"instances": [{"name": "env", "provider": "openai", "weight": 1, "auth": {"header": {"a": "$env://NOPE"}}}]}),
        );
        assert!(e.unwrap_err().contains("NOPE"));
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hash_keys() {
        let remote: SocketAddr = "10.0.0.7:5555".parse().unwrap();
        let key = |hash_on: &str, key: Option<&str>, p: &http::request::Parts, consumer: Option<&str>| {
            let mut b = json!({"algorithm": "chash", "hash_on": hash_on});
            if let Some(k) = key {
                b["key"] = json!(k);
            }
            let m = aigw_model::multi::validate_ai_proxy_multi(
                "p",
                &json!({"balancer": b, "instances": [{"name": "a", "provider": "openai", "weight": 1, "auth": {}}]}),
            )
            .unwrap();
            HashKey::compile(&m).key(p, remote, consumer).into_owned()
        };
        let p = parts(
            "http://gw.example:8080/v1/chat?user=u%201&x=",
            &[("x-user-id", "alice"), ("cookie", "a=1; session=s-9"), ("host", "gw.example:8080")],
        );
        // (hash_on, key, expected)
        for (on, k, want) in [
            ("header", Some("x-user-id"), "alice"),
            ("header", Some("X_User_Id"), "alice"),
            ("header", Some("x-missing"), "10.0.0.7"),
            ("cookie", Some("session"), "s-9"),
            ("cookie", Some("none"), "10.0.0.7"),
            ("consumer", None, "10.0.0.7"),
            ("vars", Some("uri"), "/v1/chat"),
            ("vars", Some("request_uri"), "/v1/chat?user=u%201&x="),
            ("vars", Some("host"), "gw.example"),
            ("vars", Some("remote_addr"), "10.0.0.7"),
            ("vars", Some("remote_port"), "5555"),
            ("vars", Some("arg_user"), "u 1"),
            ("vars", Some("arg_x"), "10.0.0.7"),
            ("vars", Some("server_addr"), "10.0.0.7"),
            ("vars_combinations", Some("$http_x_user_id-${cookie_session}"), "alice-s-9"),
            ("vars_combinations", Some("k:$arg_nope"), "10.0.0.7"),
        ] {
            assert_eq!(key(on, k, &p, None), want, "{on} {k:?}");
        }
        assert_eq!(key("consumer", None, &p, Some("team-a")), "team-a", "a consumer hashes by its name");
        let round_robin = HashKey::compile(
            &aigw_model::multi::validate_ai_proxy_multi(
                "p",
                &json!({"instances": [{"name": "a", "provider": "openai", "weight": 1, "auth": {}}]}),
            )
            .unwrap(),
        );
        assert_eq!(round_robin.key(&p, remote, None), "");
        assert!(matches!(round_robin.key(&p, remote, None), Cow::Borrowed(_)));
        assert!(matches!(HashKey::Header(HeaderName::from_static("x-user-id")).key(&p, remote, None), Cow::Borrowed("alice")));
    }

    /// The README's ai-proxy-multi example must always load, with no environment set.
    #[test]
    fn example_multi_routes_file_compiles() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi.yaml");
        let cfg = crate::sources::load_file(&path, &CompileCtx::bare(&Upstreams::default())).unwrap();
        let r = &cfg.routes[0];
        assert_eq!(r.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["openai-main", "openai-spare", "claude"]);
        let m = r.multi.as_ref().unwrap();
        assert_eq!(m.probes[2].as_ref().unwrap().url, "https://api.anthropic.com:443/v1/models");
        assert!(m.policy.on_429 && m.policy.on_5xx);
    }
}
