//! The `ai-proxy-multi` plugin (CONTRACT §9): several upstream instances per route with
//! balancing, fallback, retries and health checks. APISIX's schema
//! (`apisix-behaviour.md` §1.3) with aigw's strictness: unknown fields are rejected with
//! their JSON path, as for `ai-proxy`.
//!
//! [`validate_ai_proxy_multi`] parses and checks one plugin config; each instance is also
//! checked by `ai-proxy`'s own rules ([`crate::route::validate_ai_proxy`]), its errors
//! naming the instance. [`AiProxyMultiConfig::instance_config`] gives an instance as the
//! `ai-proxy` config the request path already knows how to serve.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::route::{AiProxyConfig, Auth, Logging, Override, Provider, ProviderConf, ValidationError, from_value_at, validate_ai_proxy};

/// The plugin's name in a route's `plugins`.
pub const PLUGIN: &str = "ai-proxy-multi";

/// JSON paths (relative to the plugin config) of the secret fields of every instance; the
/// same fields as `ai-proxy`'s (CONTRACT §5). `crate::secrets` encrypts and redacts them.
pub const SECRET_PATHS: &[&str] = &[
    "instances[*].auth.header.*",
    "instances[*].auth.query.*",
    "instances[*].auth.gcp.service_account_json",
    "instances[*].auth.aws.secret_access_key",
    "instances[*].auth.aws.session_token",
];

/// The `ai-proxy-multi` plugin configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AiProxyMultiConfig {
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub balancer: BalancerConf,
    #[serde(default)]
    pub fallback_strategy: Option<FallbackStrategy>,
    #[serde(default)]
    pub fallback_http_statuses: Option<Vec<i64>>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub retry_on_failure_within_ms: Option<u64>,
    #[serde(default)]
    pub logging: Option<Logging>,
    #[serde(default = "crate::route::d_timeout")]
    pub timeout: u64,
    #[serde(default = "crate::route::d_true")]
    pub keepalive: bool,
    #[serde(default = "crate::route::d_keepalive_timeout")]
    pub keepalive_timeout: u64,
    #[serde(default = "crate::route::d_keepalive_pool")]
    pub keepalive_pool: u64,
    #[serde(default = "crate::route::d_true")]
    pub ssl_verify: bool,
    #[serde(default = "crate::route::d_max_req_body_size")]
    pub max_req_body_size: u64,
    #[serde(default)]
    pub max_stream_duration_ms: Option<u64>,
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// Accepted for APISIX compatibility; aigw flushes every chunk as it arrives.
    #[serde(default)]
    pub streaming_flush_interval_ms: Option<u64>,
    /// APISIX's semantic balancer options: parsed only to reject them with a clear reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_opts: Option<Value>,
}

/// One upstream instance: a full `ai-proxy` target plus its place in the balancer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// 1..100 characters, unique in the route; `$llm_instance` in the access log.
    pub name: String,
    pub provider: Provider,
    /// Higher is served first.
    #[serde(default)]
    pub priority: i32,
    /// ≥ 0; 0 = used only when nothing else is left. Required, as in APISIX.
    #[serde(deserialize_with = "de_weight")]
    pub weight: u32,
    pub auth: Auth,
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    #[serde(default, rename = "override")]
    pub override_: Option<Override>,
    #[serde(default)]
    pub provider_conf: Option<ProviderConf>,
    #[serde(default)]
    pub checks: Option<Checks>,
    /// Semantic-balancer fields: parsed only to reject them with a clear reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchall: Option<Value>,
}

fn de_weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    if v < 0 {
        return Err(serde::de::Error::custom(format!("{v} is less than the minimum 0")));
    }
    u32::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is greater than the maximum {}", u32::MAX)))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Roundrobin,
    Chash,
    /// APISIX's embedding-based router: rejected by validation (not supported by aigw).
    Semantic,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    Vars,
    Header,
    Cookie,
    Consumer,
    VarsCombinations,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConf {
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub hash_on: HashOn,
    #[serde(default)]
    pub key: Option<String>,
}

/// One item of the array form of `fallback_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackItem {
    RateLimiting,
    Http429,
    Http5xx,
}

impl FallbackItem {
    fn name(self) -> &'static str {
        match self {
            FallbackItem::RateLimiting => "rate_limiting",
            FallbackItem::Http429 => "http_429",
            FallbackItem::Http5xx => "http_5xx",
        }
    }
}

/// `fallback_strategy`: a string (`instance_health_and_rate_limiting`, `http_429`,
/// `http_5xx`) or an array of `rate_limiting | http_429 | http_5xx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackStrategy {
    /// Pick-time filtering only: unhealthy (and, once the token-limit plugin exists,
    /// rate-limited) instances are skipped; no retry on an upstream status.
    InstanceHealthAndRateLimiting,
    Http429,
    Http5xx,
    List(Vec<FallbackItem>),
}

impl FallbackStrategy {
    fn has(&self, item: FallbackItem) -> bool {
        match self {
            FallbackStrategy::InstanceHealthAndRateLimiting => item == FallbackItem::RateLimiting,
            FallbackStrategy::Http429 => item == FallbackItem::Http429,
            FallbackStrategy::Http5xx => item == FallbackItem::Http5xx,
            FallbackStrategy::List(l) => l.contains(&item),
        }
    }

    /// Retry on a 429.
    pub fn on_429(&self) -> bool {
        self.has(FallbackItem::Http429)
    }

    /// Retry on the 5xx class (5xx statuses and failures before the first byte).
    pub fn on_5xx(&self) -> bool {
        self.has(FallbackItem::Http5xx)
    }

    /// Skip rate-limited instances at pick time (takes effect with the token-limit plugin).
    pub fn rate_limiting(&self) -> bool {
        self.has(FallbackItem::RateLimiting)
    }
}

impl<'de> Deserialize<'de> for FallbackStrategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "instance_health_and_rate_limiting" => Ok(FallbackStrategy::InstanceHealthAndRateLimiting),
                "http_429" => Ok(FallbackStrategy::Http429),
                "http_5xx" => Ok(FallbackStrategy::Http5xx),
                other => Err(D::Error::custom(format!(
                    "unknown strategy {other:?}, expected instance_health_and_rate_limiting, http_429, http_5xx or an array of rate_limiting, http_429, http_5xx"
                ))),
            },
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some("rate_limiting") => Ok(FallbackItem::RateLimiting),
                    Some("http_429") => Ok(FallbackItem::Http429),
                    Some("http_5xx") => Ok(FallbackItem::Http5xx),
                    _ => Err(D::Error::custom(format!("[{i}]: {v} is not one of rate_limiting, http_429, http_5xx"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(FallbackStrategy::List),
            other => Err(D::Error::custom(format!("must be a string or an array of strings, got {other}"))),
        }
    }
}

impl Serialize for FallbackStrategy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FallbackStrategy::InstanceHealthAndRateLimiting => s.serialize_str("instance_health_and_rate_limiting"),
            FallbackStrategy::Http429 => s.serialize_str("http_429"),
            FallbackStrategy::Http5xx => s.serialize_str("http_5xx"),
            FallbackStrategy::List(l) => s.collect_seq(l.iter().map(|i| i.name())),
        }
    }
}

/// `checks`: APISIX's ai-proxy-multi takes the active checker only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    pub active: ActiveCheck,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    #[default]
    Http,
    Https,
}

/// `checks.active`, with APISIX's health-checker defaults. Intervals and `timeout` are in
/// seconds (CONTRACT §9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    #[serde(default, rename = "type")]
    pub kind: CheckType,
    #[serde(default = "d_probe_timeout")]
    pub timeout: f64,
    /// `Host` header (and SNI) of the probe; default: the instance's host.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "d_http_path")]
    pub http_path: String,
    #[serde(default)]
    pub healthy: Healthy,
    #[serde(default)]
    pub unhealthy: Unhealthy,
    /// Extra probe headers as `"Name: value"`; the instance's `auth.header` is added to them.
    #[serde(default)]
    pub req_headers: Option<Vec<String>>,
}

fn d_probe_timeout() -> f64 {
    1.0
}
fn d_http_path() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthy {
    #[serde(default = "d_one")]
    pub interval: u64,
    #[serde(default = "d_two")]
    pub successes: u64,
    #[serde(default = "d_healthy_statuses")]
    pub http_statuses: Vec<i64>,
}

impl Default for Healthy {
    fn default() -> Self {
        Healthy { interval: 1, successes: 2, http_statuses: d_healthy_statuses() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unhealthy {
    #[serde(default = "d_one")]
    pub interval: u64,
    #[serde(default = "d_five")]
    pub http_failures: u64,
    #[serde(default = "d_two")]
    pub tcp_failures: u64,
    #[serde(default = "d_three")]
    pub timeouts: u64,
    #[serde(default = "d_unhealthy_statuses")]
    pub http_statuses: Vec<i64>,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy { interval: 1, http_failures: 5, tcp_failures: 2, timeouts: 3, http_statuses: d_unhealthy_statuses() }
    }
}

fn d_one() -> u64 {
    1
}
fn d_two() -> u64 {
    2
}
fn d_three() -> u64 {
    3
}
fn d_five() -> u64 {
    5
}
fn d_healthy_statuses() -> Vec<i64> {
    vec![200, 302]
}
fn d_unhealthy_statuses() -> Vec<i64> {
    vec![429, 404, 500, 501, 502, 503, 504, 505]
}

impl AiProxyMultiConfig {
    /// Instance `i` as an `ai-proxy` config: its provider, auth, options, override and
    /// provider_conf, with the route-wide timeouts, limits and logging.
    pub fn instance_config(&self, i: usize) -> Option<AiProxyConfig> {
        let ins = self.instances.get(i)?;
        Some(self.with_target(ins.provider, ins.provider_conf.clone(), ins.auth.clone(), ins.options.clone(), ins.override_.clone()))
    }

    fn with_target(
        &self,
        provider: Provider,
        provider_conf: Option<ProviderConf>,
        auth: Auth,
        options: Option<Map<String, Value>>,
        override_: Option<Override>,
    ) -> AiProxyConfig {
        AiProxyConfig {
            provider,
            provider_conf,
            auth,
            options,
            override_,
            logging: self.logging.clone(),
            timeout: self.timeout,
            keepalive: self.keepalive,
            keepalive_timeout: self.keepalive_timeout,
            keepalive_pool: self.keepalive_pool,
            ssl_verify: self.ssl_verify,
            max_req_body_size: self.max_req_body_size,
            max_stream_duration_ms: self.max_stream_duration_ms,
            max_response_bytes: self.max_response_bytes,
            streaming_flush_interval_ms: self.streaming_flush_interval_ms,
        }
    }

    /// `fallback_http_statuses` as status codes (validated to 400..599).
    pub fn fallback_statuses(&self) -> Vec<u16> {
        self.fallback_http_statuses.iter().flatten().filter_map(|s| u16::try_from(*s).ok()).collect()
    }
}

/// Both plugins on one route is a 400 (CONTRACT §9).
pub fn check_exclusive(plugins: &BTreeMap<String, Value>) -> Result<(), ValidationError> {
    if plugins.contains_key("ai-proxy") && plugins.contains_key(PLUGIN) {
        return Err(ValidationError::new("plugins", "ai-proxy and ai-proxy-multi cannot be configured on the same route"));
    }
    Ok(())
}

/// `ai-proxy`'s validation reports paths under this prefix.
const AP: &str = "plugins.ai-proxy";

/// Moves an `ai-proxy` error to `to` (and prefixes its message).
fn rebase(e: ValidationError, to: &str, message_prefix: &str) -> ValidationError {
    let rest = e.path.strip_prefix(AP).unwrap_or("");
    ValidationError::new(format!("{to}{rest}"), format!("{message_prefix}{}", e.message))
}

/// APISIX's instance endpoint check: `^(https?)://([^:/]+):?(%d*)/?.*$`.
fn endpoint_shape_ok(ep: &str) -> bool {
    let Some(rest) = ep.strip_prefix("https://").or_else(|| ep.strip_prefix("http://")) else { return false };
    let host_end = rest.find([':', '/']).unwrap_or(rest.len());
    if host_end == 0 {
        return false;
    }
    let after = &rest[host_end..];
    let port = after.strip_prefix(':').map(|p| p.split('/').next().unwrap_or_default());
    port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

fn int_range(path: &str, v: u64, min: u64, max: Option<u64>) -> Result<(), ValidationError> {
    if v < min {
        return Err(ValidationError::new(path, format!("{v} is less than the minimum {min}")));
    }
    if let Some(max) = max
        && v > max
    {
        return Err(ValidationError::new(path, format!("{v} is greater than the maximum {max}")));
    }
    Ok(())
}

fn statuses(path: &str, list: &[i64], min: i64) -> Result<(), ValidationError> {
    if list.is_empty() {
        return Err(ValidationError::new(path, "expect array to have at least 1 items"));
    }
    for (i, s) in list.iter().enumerate() {
        if *s < min {
            return Err(ValidationError::new(format!("{path}[{i}]"), format!("expected {s} to be at least {min}")));
        }
        if *s > 599 {
            return Err(ValidationError::new(format!("{path}[{i}]"), format!("expected {s} to be at most 599")));
        }
        if list[..i].contains(s) {
            return Err(ValidationError::new(format!("{path}[{i}]"), format!("{s} is listed twice (items must be unique)")));
        }
    }
    Ok(())
}

fn check_active(path: &str, a: &ActiveCheck) -> Result<(), ValidationError> {
    if !(a.timeout > 0.0 && a.timeout.is_finite()) {
        return Err(ValidationError::new(format!("{path}.timeout"), "must be a positive number of seconds"));
    }
    if !a.http_path.starts_with('/') || a.http_path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ValidationError::new(format!("{path}.http_path"), "must start with '/' and contain no spaces or control characters"));
    }
    if let Some(h) = &a.host {
        let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']'));
        if !ok {
            return Err(ValidationError::new(format!("{path}.host"), format!("invalid host {h:?}")));
        }
    }
    int_range(&format!("{path}.healthy.interval"), a.healthy.interval, 1, None)?;
    int_range(&format!("{path}.healthy.successes"), a.healthy.successes, 1, Some(254))?;
    statuses(&format!("{path}.healthy.http_statuses"), &a.healthy.http_statuses, 200)?;
    int_range(&format!("{path}.unhealthy.interval"), a.unhealthy.interval, 1, None)?;
    int_range(&format!("{path}.unhealthy.http_failures"), a.unhealthy.http_failures, 1, Some(254))?;
    int_range(&format!("{path}.unhealthy.tcp_failures"), a.unhealthy.tcp_failures, 1, Some(254))?;
    int_range(&format!("{path}.unhealthy.timeouts"), a.unhealthy.timeouts, 1, Some(254))?;
    statuses(&format!("{path}.unhealthy.http_statuses"), &a.unhealthy.http_statuses, 200)?;
    if let Some(hs) = &a.req_headers {
        if hs.is_empty() {
            return Err(ValidationError::new(format!("{path}.req_headers"), "expect array to have at least 1 items"));
        }
        for (i, h) in hs.iter().enumerate() {
            let p = format!("{path}.req_headers[{i}]");
            let (name, _) = h.split_once(':').ok_or_else(|| ValidationError::new(&p, "must be \"Name: value\""))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')) {
                return Err(ValidationError::new(&p, "must be \"Name: value\" with a header name of [A-Za-z0-9_-]"));
            }
            if h.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ValidationError::new(&p, "must not contain CR, LF or NUL"));
            }
            if hs[..i].contains(h) {
                return Err(ValidationError::new(&p, "is listed twice (items must be unique)"));
            }
        }
    }
    Ok(())
}

/// APISIX's chash key schemas (`core.schema.upstream_hash_*`).
fn check_hash_key(path: &str, b: &BalancerConf) -> Result<(), ValidationError> {
    let Some(key) = b.key.as_deref() else {
        if b.hash_on == HashOn::Consumer {
            return Ok(());
        }
        return Err(ValidationError::new(
            format!("{path}.balancer.key"),
            "must configure `key` when balancer algorithm is chash and `hash_on` is not consumer",
        ));
    };
    let name_ok = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    let ok = match b.hash_on {
        HashOn::Vars => {
            const VARS: &[&str] =
                &["uri", "server_name", "server_addr", "request_uri", "remote_port", "remote_addr", "query_string", "host", "hostname"];
            VARS.contains(&key) || key.strip_prefix("arg_").is_some_and(name_ok)
        }
        HashOn::Header | HashOn::Cookie => name_ok(key),
        HashOn::Consumer | HashOn::VarsCombinations => true,
    };
    if !ok {
        let expected = match b.hash_on {
            HashOn::Vars => {
                "for hash_on vars, one of uri, server_name, server_addr, request_uri, remote_port, remote_addr, query_string, host, hostname or arg_NAME"
            }
            _ => "a header or cookie name of [a-zA-Z0-9_-]",
        };
        return Err(ValidationError::new(format!("{path}.balancer.key"), format!("invalid configuration: {key:?} is not {expected}")));
    }
    Ok(())
}

/// Parses and validates an `ai-proxy-multi` config found at `path_prefix` (e.g.
/// `plugins.ai-proxy-multi`); every error names the JSON path of the offending field.
pub fn validate_ai_proxy_multi(path_prefix: &str, v: &Value) -> Result<AiProxyMultiConfig, ValidationError> {
    let c: AiProxyMultiConfig = from_value_at(path_prefix, v)?;
    let p = path_prefix;
    if c.semantic_opts.is_some() || c.balancer.algorithm == Algorithm::Semantic {
        let at = if c.semantic_opts.is_some() { format!("{p}.semantic_opts") } else { format!("{p}.balancer.algorithm") };
        return Err(ValidationError::new(at, "the semantic balancer is not supported by aigw; use roundrobin or chash"));
    }
    // Route-wide settings, by ai-proxy's rules (a synthetic provider without requirements).
    let shared = c.with_target(Provider::Openai, None, Auth::default(), None, None);
    validate_ai_proxy(&shared).map_err(|e| rebase(e, p, ""))?;
    if c.instances.is_empty() {
        return Err(ValidationError::new(format!("{p}.instances"), "expect array to have at least 1 items"));
    }
    if let Some(ms) = c.retry_on_failure_within_ms {
        int_range(&format!("{p}.retry_on_failure_within_ms"), ms, 1, None)?;
    }
    if let Some(list) = &c.fallback_http_statuses {
        statuses(&format!("{p}.fallback_http_statuses"), list, 400)?;
    }
    for (i, ins) in c.instances.iter().enumerate() {
        let ip = format!("{p}.instances[{i}]");
        let n = ins.name.chars().count();
        if n == 0 || n > 100 {
            return Err(ValidationError::new(format!("{ip}.name"), "must be 1..100 characters"));
        }
        if let Some(j) = c.instances[..i].iter().position(|o| o.name == ins.name) {
            return Err(ValidationError::new(
                format!("{ip}.name"),
                format!("duplicate instance name '{}' at instances[{j}] and instances[{i}]", ins.name),
            ));
        }
        for (field, present) in
            [("examples", ins.examples.is_some()), ("threshold", ins.threshold.is_some()), ("catchall", ins.catchall.is_some())]
        {
            if present {
                return Err(ValidationError::new(format!("{ip}.{field}"), "belongs to the semantic balancer, which aigw does not support"));
            }
        }
        if let Some(ep) = ins.override_.as_ref().and_then(|o| o.endpoint.as_deref())
            && !endpoint_shape_ok(ep)
        {
            return Err(ValidationError::new(
                format!("{ip}.override.endpoint"),
                format!("instance '{}': invalid endpoint {ep:?} (expected http(s)://host[:port][/path])", ins.name),
            ));
        }
        // The instance's provider requirements, auth and override, by ai-proxy's rules.
        // (Route-wide fields were checked above: they are valid here too.)
        let single = c.instance_config(i).unwrap_or_else(|| shared.clone());
        validate_ai_proxy(&single).map_err(|e| rebase(e, &ip, &format!("instance '{}': ", ins.name)))?;
        if let Some(ch) = &ins.checks {
            check_active(&format!("{ip}.checks.active"), &ch.active)?;
        }
    }
    if c.balancer.algorithm == Algorithm::Chash {
        check_hash_key(p, &c.balancer)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "plugins.ai-proxy-multi";

    fn base() -> Value {
        json!({"instances": [
            {"name": "openai-a", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": "Bearer sk-a"}}, "options": {"model": "gpt-4o"}},
            {"name": "claude", "provider": "anthropic", "weight": 3, "priority": 1, "auth": {"header": {"x-api-key": "sk-ant"}}}
        ]})
    }

    /// Sets `ptr` (JSON pointer) to `val` in the base config (Null removes it), validates,
    /// and checks: `Ok` when `expect` is None, else an error containing every fragment.
    fn check(edits: &[(&str, Value)], expect: Option<&[&str]>) -> Option<AiProxyMultiConfig> {
        let mut v = base();
        for (ptr, val) in edits {
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            let obj = if parent.is_empty() { &mut v } else { v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")) };
            match (obj, val.is_null()) {
                (Value::Array(a), _) => a[key.parse::<usize>().unwrap()] = val.clone(),
                (o, true) => {
                    o.as_object_mut().unwrap().remove(key);
                }
                (o, false) => {
                    o.as_object_mut().unwrap().insert(key.to_owned(), val.clone());
                }
            }
        }
        match (validate_ai_proxy_multi(P, &v), expect) {
            (Ok(c), None) => Some(c),
            (Ok(_), Some(e)) => panic!("expected error {e:?} for {v}"),
            (Err(err), None) => panic!("unexpected error {err} for {v}"),
            (Err(err), Some(frags)) => {
                let text = err.to_string();
                for f in frags {
                    assert!(text.contains(f), "error {text:?} lacks {f:?}");
                }
                None
            }
        }
    }

    #[test]
    fn base_and_defaults() {
        let c = check(&[], None).unwrap();
        assert_eq!(c.balancer, BalancerConf { algorithm: Algorithm::Roundrobin, hash_on: HashOn::Vars, key: None });
        assert_eq!((c.timeout, c.keepalive, c.keepalive_timeout, c.keepalive_pool, c.ssl_verify), (30_000, true, 60_000, 30, true));
        assert_eq!((c.instances[0].priority, c.instances[1].priority, c.instances[1].weight), (0, 1, 3));
        assert!(c.fallback_strategy.is_none() && c.max_retries.is_none());
        let one = c.instance_config(1).unwrap();
        assert_eq!((one.provider, one.timeout), (Provider::Anthropic, 30_000));
        assert!(c.instance_config(2).is_none());
        let checks = check(&[("/instances/0/checks", json!({"active": {}}))], None).unwrap();
        let a = &checks.instances[0].checks.as_ref().unwrap().active;
        assert_eq!((a.kind, a.timeout, a.http_path.as_str(), a.host.as_deref()), (CheckType::Http, 1.0, "/", None));
        assert_eq!(a.healthy, Healthy { interval: 1, successes: 2, http_statuses: vec![200, 302] });
        assert_eq!(
            a.unhealthy,
            Unhealthy {
                interval: 1,
                http_failures: 5,
                tcp_failures: 2,
                timeouts: 3,
                http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505]
            }
        );
    }

    #[test]
    fn top_level_fields() {
        for (edit, expect) in [
            (("/instances", json!([])), Some(&["instances", "at least 1"][..])),
            (("/instances", Value::Null), Some(&["missing field `instances`"][..])),
            (("/timeout", json!(0)), Some(&["plugins.ai-proxy-multi.timeout", "minimum 1"][..])),
            (("/timeout", json!(600_001)), Some(&["plugins.ai-proxy-multi.timeout", "maximum 600000"][..])),
            (("/keepalive_timeout", json!(10)), Some(&["plugins.ai-proxy-multi.keepalive_timeout", "minimum 1000"][..])),
            (("/max_req_body_size", json!(0)), Some(&["plugins.ai-proxy-multi.max_req_body_size"][..])),
            (("/max_response_bytes", json!(0)), Some(&["plugins.ai-proxy-multi.max_response_bytes"][..])),
            (("/max_stream_duration_ms", json!(5)), None),
            (("/logging", json!({"summaries": true})), None),
            (("/streaming_flush_interval_ms", json!(0)), None),
            (("/ssl_verify", json!(false)), None),
            (("/provider", json!("openai")), Some(&["plugins.ai-proxy-multi", "unknown field `provider`"][..])),
            (("/auth", json!({})), Some(&["unknown field `auth`"][..])),
            (("/max_retries", json!(-1)), Some(&["plugins.ai-proxy-multi.max_retries"][..])),
            (("/max_retries", json!(0)), None),
            (("/max_retries", json!(3)), None),
            (("/retry_on_failure_within_ms", json!(0)), Some(&["retry_on_failure_within_ms", "minimum 1"][..])),
            (("/retry_on_failure_within_ms", json!(500)), None),
            (("/fallback_http_statuses", json!([401, 402, 503])), None),
            (("/fallback_http_statuses", json!([200])), Some(&["fallback_http_statuses[0]", "expected 200 to be at least 400"][..])),
            (("/fallback_http_statuses", json!([600])), Some(&["fallback_http_statuses[0]", "at most 599"][..])),
            (("/fallback_http_statuses", json!([429, 429])), Some(&["fallback_http_statuses[1]", "unique"][..])),
            (("/fallback_http_statuses", json!([])), Some(&["fallback_http_statuses", "at least 1"][..])),
            (("/fallback_http_statuses", json!(["429"])), Some(&["fallback_http_statuses[0]", "invalid type"][..])),
        ] {
            check(&[edit], expect);
        }
    }

    #[test]
    fn fallback_strategy_forms() {
        for (v, ok) in [
            (json!("instance_health_and_rate_limiting"), Some((false, false, true))),
            (json!("http_429"), Some((true, false, false))),
            (json!("http_5xx"), Some((false, true, false))),
            (json!(["http_429", "http_5xx"]), Some((true, true, false))),
            (json!(["rate_limiting"]), Some((false, false, true))),
            (json!([]), Some((false, false, false))),
            (json!("rate_limiting"), None),
            (json!(["instance_health_and_rate_limiting"]), None),
            (json!(["http_500"]), None),
            (json!(5), None),
        ] {
            match ok {
                Some(want) => {
                    let c = check(&[("/fallback_strategy", v.clone())], None).unwrap();
                    let s = c.fallback_strategy.unwrap();
                    assert_eq!((s.on_429(), s.on_5xx(), s.rate_limiting()), want, "{v}");
                    assert_eq!(serde_json::to_value(&s).unwrap(), v, "round trip");
                }
                None => {
                    check(&[("/fallback_strategy", v)], Some(&["plugins.ai-proxy-multi.fallback_strategy"]));
                }
            }
        }
    }

    #[test]
    fn instances() {
        for (edit, expect) in [
            (
                ("/instances/1/name", json!("openai-a")),
                Some(&["instances[1].name", "duplicate instance name 'openai-a' at instances[0] and instances[1]"][..]),
            ),
            (("/instances/0/name", json!("")), Some(&["instances[0].name", "1..100"][..])),
            (("/instances/0/name", json!("é".repeat(100))), None),
            (("/instances/0/name", json!("x".repeat(101))), Some(&["instances[0].name", "1..100"][..])),
            (("/instances/0/weight", json!(-1)), Some(&["instances[0].weight", "less than the minimum 0"][..])),
            (("/instances/0/weight", json!(0)), None),
            (("/instances/0/weight", json!("1")), Some(&["instances[0].weight"][..])),
            (("/instances/0/weight", Value::Null), Some(&["instances[0]", "missing field `weight`"][..])),
            (("/instances/0/auth", Value::Null), Some(&["instances[0]", "missing field `auth`"][..])),
            (("/instances/0/priority", json!(-3)), None),
            (("/instances/0/provider", json!("openia")), Some(&["instances[0].provider", "unknown variant"][..])),
            (("/instances/0/auth/headers", json!({})), Some(&["instances[0].auth", "unknown field `headers`"][..])),
            (("/instances/0/endpoint", json!("x")), Some(&["instances[0]", "unknown field `endpoint`"][..])),
            (
                ("/instances/0/override", json!({"endpoint": "http//h:1"})),
                Some(&["instances[0].override.endpoint", "instance 'openai-a': invalid endpoint"][..]),
            ),
            (("/instances/0/override", json!({"endpoint": "https://h:x/v1"})), Some(&["invalid endpoint"][..])),
            (("/instances/0/override", json!({"endpoint": "https://h:8443/v1/chat/completions"})), None),
            (("/instances/0/override", json!({"endpoint": "http://127.0.0.1:1"})), None),
            (
                ("/instances/0/override", json!({"llm_options": {"max_tokens": 0}})),
                Some(&["instances[0].override.llm_options.max_tokens", "instance 'openai-a'"][..]),
            ),
            (
                ("/instances/0/provider", json!("openai-compatible")),
                Some(&["instances[0].override.endpoint", "instance 'openai-a': openai-compatible requires override.endpoint"][..]),
            ),
            (
                ("/instances/0/provider", json!("vertex-ai")),
                Some(&["instances[0].provider_conf", "instance 'openai-a': vertex-ai requires"][..]),
            ),
            (("/instances/0/provider", json!("bedrock")), Some(&["instance 'openai-a': bedrock requires provider_conf.region"][..])),
            (("/instances/0/auth/header", json!({"a": "v\r\nx: y"})), Some(&["instances[0].auth.header.a", "CR"][..])),
            (
                ("/instances/0/auth/gcp", json!({"service_account_json": "{oops"})),
                Some(&["instances[0].auth.gcp.service_account_json", "invalid gcp service_account_json"][..]),
            ),
            (("/instances/0/examples", json!(["hello"])), Some(&["instances[0].examples", "semantic"][..])),
            (("/instances/0/threshold", json!(0.5)), Some(&["instances[0].threshold", "semantic"][..])),
            (("/instances/0/options", json!({"model": 5})), Some(&["instances[0].options.model", "must be a string"][..])),
        ] {
            check(&[edit], expect);
        }
        // Vertex AI instances by the same rules: a bare origin without provider_conf serves
        // nothing (refused, naming the instance's field); a full URL alone is enough.
        let vertex = ("/instances/0/provider", json!("vertex-ai"));
        check(
            &[vertex.clone(), ("/instances/0/override", json!({"endpoint": "http://127.0.0.1:9"}))],
            Some(&["instances[0].override.endpoint", "instance 'openai-a': vertex-ai", "has no path", "provider_conf"]),
        );
        check(
            &[
                vertex,
                (
                    "/instances/0/override",
                    json!({"endpoint": "http://127.0.0.1:9/v1/projects/p/locations/r/endpoints/openapi/chat/completions"}),
                ),
            ],
            None,
        );
        // A valid bedrock instance.
        check(
            &[
                ("/instances/0/provider", json!("bedrock")),
                ("/instances/0/provider_conf", json!({"region": "us-east-1"})),
                ("/instances/0/auth", json!({"aws": {"access_key_id": "AKID", "secret_access_key": "s"}})),
            ],
            None,
        );
    }

    #[test]
    fn balancer() {
        let b = |v: Value| ("/balancer", v);
        for (edit, expect) in [
            (b(json!({"algorithm": "roundrobin"})), None),
            (b(json!({})), None),
            (b(json!({"algorithm": "chash"})), Some(&["balancer.key", "must configure `key`", "hash_on"][..])),
            (b(json!({"algorithm": "chash", "hash_on": "header"})), Some(&["balancer.key", "must configure `key`"][..])),
            (b(json!({"algorithm": "chash", "hash_on": "consumer"})), None),
            (b(json!({"algorithm": "chash", "key": "remote_addr"})), None),
            (b(json!({"algorithm": "chash", "hash_on": "vars", "key": "arg_user"})), None),
            (
                b(json!({"algorithm": "chash", "hash_on": "vars", "key": "http_x_user"})),
                Some(&["balancer.key", "invalid configuration"][..]),
            ),
            (b(json!({"algorithm": "chash", "hash_on": "header", "key": "x-user-id"})), None),
            (b(json!({"algorithm": "chash", "hash_on": "header", "key": "x user"})), Some(&["balancer.key", "invalid configuration"][..])),
            (b(json!({"algorithm": "chash", "hash_on": "cookie", "key": "session"})), None),
            (b(json!({"algorithm": "chash", "hash_on": "vars_combinations", "key": "$remote_addr$http_user"})), None),
            (
                b(json!({"algorithm": "chash", "hash_on": "headers", "key": "x"})),
                Some(&["balancer.hash_on", "unknown variant `headers`"][..]),
            ),
            (b(json!({"algorithm": "least_conn"})), Some(&["balancer.algorithm", "unknown variant"][..])),
            (b(json!({"algorithm": "semantic"})), Some(&["balancer.algorithm", "semantic balancer is not supported"][..])),
            (("/semantic_opts", json!({"embeddings": {}})), Some(&["semantic_opts", "not supported"][..])),
            (b(json!({"algorithm": "roundrobin", "type": "x"})), Some(&["balancer", "unknown field `type`"][..])),
        ] {
            check(&[edit], expect);
        }
    }

    #[test]
    fn active_checks() {
        let a = |v: Value| ("/instances/1/checks", json!({"active": v}));
        for (edit, expect) in [
            (
                a(json!({"type": "https", "http_path": "/v1/models", "host": "api.anthropic.com", "timeout": 2.5,
                "healthy": {"interval": 10, "successes": 1}, "unhealthy": {"interval": 2, "http_failures": 2, "tcp_failures": 1, "timeouts": 2},
                "req_headers": ["User-Agent: aigw-probe", "X-Probe: 1"]})),
                None,
            ),
            (a(json!({"type": "tcp"})), Some(&["instances[1].checks.active.type", "unknown variant `tcp`"][..])),
            (a(json!({"timeout": 0})), Some(&["checks.active.timeout", "positive"][..])),
            (a(json!({"http_path": "health"})), Some(&["checks.active.http_path"][..])),
            (a(json!({"host": "bad host"})), Some(&["checks.active.host"][..])),
            (a(json!({"healthy": {"interval": 0}})), Some(&["checks.active.healthy.interval", "minimum 1"][..])),
            (a(json!({"healthy": {"successes": 255}})), Some(&["checks.active.healthy.successes", "maximum 254"][..])),
            (a(json!({"healthy": {"http_statuses": [199]}})), Some(&["healthy.http_statuses[0]", "at least 200"][..])),
            (a(json!({"unhealthy": {"http_failures": 0}})), Some(&["unhealthy.http_failures", "minimum 1"][..])),
            (a(json!({"unhealthy": {"tcp_failures": 255}})), Some(&["unhealthy.tcp_failures", "maximum 254"][..])),
            (a(json!({"unhealthy": {"timeouts": 0}})), Some(&["unhealthy.timeouts", "minimum 1"][..])),
            (a(json!({"unhealthy": {"interval": 0}})), Some(&["unhealthy.interval", "minimum 1"][..])),
            (a(json!({"unhealthy": {"http_statuses": [500, 500]}})), Some(&["unhealthy.http_statuses[1]", "unique"][..])),
            (a(json!({"req_headers": []})), Some(&["req_headers", "at least 1"][..])),
            (a(json!({"req_headers": ["NoColon"]})), Some(&["req_headers[0]", "Name: value"][..])),
            (a(json!({"req_headers": ["X-A: 1\r\nX-B: 2"]})), Some(&["req_headers[0]", "CR"][..])),
            (a(json!({"req_headers": ["X-A: 1", "X-A: 1"]})), Some(&["req_headers[1]", "twice"][..])),
            (a(json!({"concurrency": 1})), Some(&["checks.active", "unknown field `concurrency`"][..])),
            (("/instances/1/checks", json!({})), Some(&["instances[1].checks", "missing field `active`"][..])),
            (("/instances/1/checks", json!({"active": {}, "passive": {}})), Some(&["unknown field `passive`"][..])),
        ] {
            check(&[edit], expect);
        }
    }

    #[test]
    fn both_plugins_on_one_route() {
        let mut plugins = BTreeMap::new();
        plugins.insert(PLUGIN.to_owned(), base());
        assert!(check_exclusive(&plugins).is_ok());
        plugins.insert("ai-proxy".to_owned(), json!({}));
        let e = check_exclusive(&plugins).unwrap_err();
        assert!(e.to_string().contains("ai-proxy and ai-proxy-multi cannot be configured on the same route"), "{e}");
    }

    #[test]
    fn endpoint_shapes() {
        for (ep, ok) in [
            ("https://api.openai.com", true),
            ("https://api.openai.com/", true),
            ("http://127.0.0.1:8080/v1/chat/completions?x=1", true),
            ("http://h:", true),
            ("http//h:1", false),
            ("ftp://h", false),
            ("https://", false),
            ("https://:80", false),
            ("https://h:8o/x", false),
        ] {
            assert_eq!(endpoint_shape_ok(ep), ok, "{ep}");
        }
    }
}
