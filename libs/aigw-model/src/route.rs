//! The route object (CONTRACT §2) and the `ai-proxy` / `http-logger` plugin schemas (the
//! other plugins' in [`crate::plugins`]).
//!
//! Parsing is two steps: serde with `deny_unknown_fields` (so typos such as
//! `auth.headers` are rejected, unlike APISIX) wrapped in `serde_path_to_error` so
//! every error names its JSON path, then [`RouteSpec::validate`] for ranges and
//! cross-field rules. Both report a [`ValidationError`] whose message starts with
//! the path of the offending field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A configuration error, naming the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

/// Deserialize `value` as `T`, reporting errors with `prefix` + the serde path.
/// Structs deserialize from JSON objects only (see [`crate::strict`]).
pub fn from_value_at<T: serde::de::DeserializeOwned>(prefix: &str, value: &Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize::<_, T>(crate::strict::Strict(value)).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, true) => "(root)".to_owned(),
            (true, false) => inner,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        ValidationError::new(path, e.into_inner().to_string())
    })
}

/// The route object as stored and published. Plugin configs stay JSON here; their
/// typed, validated form is in [`RouteSpec`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uri: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<Value>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u8>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// The ten providers of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Openai,
    Deepseek,
    AzureOpenai,
    Aimlapi,
    Anthropic,
    Openrouter,
    Gemini,
    VertexAi,
    Bedrock,
    OpenaiCompatible,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::Deepseek => "deepseek",
            Provider::AzureOpenai => "azure-openai",
            Provider::Aimlapi => "aimlapi",
            Provider::Anthropic => "anthropic",
            Provider::Openrouter => "openrouter",
            Provider::Gemini => "gemini",
            Provider::VertexAi => "vertex-ai",
            Provider::Bedrock => "bedrock",
            Provider::OpenaiCompatible => "openai-compatible",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConf {
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub header: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub query: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub gcp: Option<GcpAuth>,
    #[serde(default)]
    pub aws: Option<AwsAuth>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcpAuth {
    #[serde(default)]
    pub service_account_json: Option<String>,
    #[serde(default)]
    pub max_ttl: Option<u64>,
    #[serde(default = "default_expire_early_secs")]
    pub expire_early_secs: u64,
}

fn default_expire_early_secs() -> u64 {
    60
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsAuth {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub llm_options: Option<LlmOptions>,
    #[serde(default)]
    pub request_body: Option<RequestBodyOverrides>,
    #[serde(default)]
    pub request_body_force_override: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmOptions {
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// `override.request_body`, keyed by *target* protocol name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestBodyOverrides {
    #[serde(default, rename = "openai-chat")]
    pub openai_chat: Option<Map<String, Value>>,
    #[serde(default, rename = "openai-responses")]
    pub openai_responses: Option<Map<String, Value>>,
    #[serde(default, rename = "openai-embeddings")]
    pub openai_embeddings: Option<Map<String, Value>>,
    #[serde(default, rename = "anthropic-messages")]
    pub anthropic_messages: Option<Map<String, Value>>,
    #[serde(default, rename = "bedrock-converse")]
    pub bedrock_converse: Option<Map<String, Value>>,
    #[serde(default)]
    pub passthrough: Option<Map<String, Value>>,
    /// vertex-ai embeddings (OpenAI embeddings converted to `:predict`).
    #[serde(default, rename = "vertex-predict")]
    pub vertex_predict: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    #[serde(default)]
    pub summaries: bool,
    #[serde(default)]
    pub payloads: bool,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_KEEPALIVE_POOL: u64 = 30;
pub const DEFAULT_MAX_REQ_BODY_SIZE: u64 = 64 * 1024 * 1024;

/// The `ai-proxy` plugin configuration (the spec's schema plus APISIX's limits).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AiProxyConfig {
    pub provider: Provider,
    #[serde(default)]
    pub provider_conf: Option<ProviderConf>,
    pub auth: Auth,
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    #[serde(default, rename = "override")]
    pub override_: Option<Override>,
    #[serde(default)]
    pub logging: Option<Logging>,
    #[serde(default = "d_timeout")]
    pub timeout: u64,
    #[serde(default = "d_true")]
    pub keepalive: bool,
    #[serde(default = "d_keepalive_timeout")]
    pub keepalive_timeout: u64,
    #[serde(default = "d_keepalive_pool")]
    pub keepalive_pool: u64,
    #[serde(default = "d_true")]
    pub ssl_verify: bool,
    #[serde(default = "d_max_req_body_size")]
    pub max_req_body_size: u64,
    #[serde(default)]
    pub max_stream_duration_ms: Option<u64>,
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// Accepted for APISIX compatibility; aigw flushes every chunk as it arrives.
    #[serde(default)]
    pub streaming_flush_interval_ms: Option<u64>,
}

pub(crate) fn d_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
pub(crate) fn d_true() -> bool {
    true
}
pub(crate) fn d_keepalive_timeout() -> u64 {
    DEFAULT_KEEPALIVE_TIMEOUT_MS
}
pub(crate) fn d_keepalive_pool() -> u64 {
    DEFAULT_KEEPALIVE_POOL
}
pub(crate) fn d_max_req_body_size() -> u64 {
    DEFAULT_MAX_REQ_BODY_SIZE
}

impl AiProxyConfig {
    /// `options.model`, when configured.
    pub fn model(&self) -> Option<&str> {
        self.options.as_ref()?.get("model")?.as_str()
    }
}

/// The `http-logger` plugin (APISIX's schema, the subset an AI gateway needs): batched
/// JSON POSTs of log entries to `uri` (the proxy's `http_logger` module).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpLoggerConfig {
    pub uri: String,
    /// Entries per POST (default 1000).
    #[serde(default = "d_batch_max_size")]
    pub batch_max_size: u64,
    /// Seconds to wait for the log server's answer (default 3).
    #[serde(default = "d_logger_timeout")]
    pub timeout: u64,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as the POST's `Authorization` header. A secret field: encrypted at rest,
    /// redacted in reads.
    #[serde(default)]
    pub auth_header: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub include_req_body: bool,
    #[serde(default)]
    pub include_resp_body: bool,
    /// Seconds after which a batch that is not full is sent anyway (default 5).
    #[serde(default)]
    pub inactive_timeout: Option<u64>,
    /// Retries of a batch whose POST failed (default 0), then it is dropped (counted).
    #[serde(default)]
    pub max_retry_count: u64,
    /// Seconds before the first retry (default 1), doubling each time.
    #[serde(default = "d_retry_delay")]
    pub retry_delay: u64,
}

fn d_batch_max_size() -> u64 {
    1000
}
fn d_logger_timeout() -> u64 {
    3
}
fn d_retry_delay() -> u64 {
    1
}

pub(crate) const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE"];

/// `^[a-zA-Z0-9_\-]{1,100}$` (APISIX's username pattern, bounded).
pub fn validate_username(path: &str, name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(ValidationError::new(path, "must match ^[a-zA-Z0-9_\\-]{1,100}$")) }
}

/// Route ids become file names and URL segments: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), ValidationError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.bytes().all(|b| b == b'.');
    if ok { Ok(()) } else { Err(ValidationError::new("id", "must be 1..64 characters of [a-zA-Z0-9._-] and not only dots")) }
}

/// A route URI is a UTF-8 path (multibyte characters are matched as sent); control
/// characters (NUL, CR, LF, DEL, …) are rejected. Char-boundary safe on any input.
pub fn check_uri(path: &str, uri: &str) -> Result<(), ValidationError> {
    if !uri.starts_with('/') {
        return Err(ValidationError::new(path, format!("{uri:?} must start with '/'")));
    }
    if let Some((i, c)) = uri.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ValidationError::new(path, format!("control character {c:?} at byte {i} is not allowed in a path")));
    }
    if uri.strip_suffix('*').unwrap_or(uri).contains('*') {
        return Err(ValidationError::new(path, "'*' is only allowed at the end (prefix match)"));
    }
    Ok(())
}

pub(crate) fn check_host(path: &str, host: &str) -> Result<(), ValidationError> {
    let body = host.strip_prefix("*.").unwrap_or(host);
    let ok = !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if ok { Ok(()) } else { Err(ValidationError::new(path, format!("invalid host {host:?}"))) }
}

const AP: &str = "plugins.ai-proxy";

fn range(path: &str, v: u64, min: u64, max: Option<u64>) -> Result<(), ValidationError> {
    if v < min {
        return Err(ValidationError::new(format!("{AP}.{path}"), format!("{v} is less than the minimum {min}")));
    }
    if let Some(max) = max
        && v > max
    {
        return Err(ValidationError::new(format!("{AP}.{path}"), format!("{v} is greater than the maximum {max}")));
    }
    Ok(())
}

fn non_empty(path: &str, v: &str) -> Result<(), ValidationError> {
    if v.is_empty() { Err(ValidationError::new(format!("{AP}.{path}"), "must not be empty (minLength 1)")) } else { Ok(()) }
}

pub fn validate_ai_proxy(c: &AiProxyConfig) -> Result<(), ValidationError> {
    range("timeout", c.timeout, 1, Some(600_000))?;
    range("keepalive_timeout", c.keepalive_timeout, 1000, None)?;
    range("keepalive_pool", c.keepalive_pool, 1, None)?;
    range("max_req_body_size", c.max_req_body_size, 1, None)?;
    if let Some(v) = c.max_stream_duration_ms {
        range("max_stream_duration_ms", v, 1, None)?;
    }
    if let Some(v) = c.max_response_bytes {
        range("max_response_bytes", v, 1, None)?;
    }
    if let Some(opts) = &c.options
        && let Some(m) = opts.get("model")
        && !m.is_string()
    {
        return Err(ValidationError::new(format!("{AP}.options.model"), "must be a string"));
    }
    for (kind, map) in [("header", &c.auth.header), ("query", &c.auth.query)] {
        for (k, v) in map.iter().flatten() {
            let path = format!("auth.{kind}.{k}");
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return Err(ValidationError::new(format!("{AP}.{path}"), "name must match ^[a-zA-Z0-9._-]+$"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(ValidationError::new(format!("{AP}.{path}"), "value must not contain CR, LF or NUL"));
            }
        }
    }
    if let Some(gcp) = &c.auth.gcp {
        if let Some(ttl) = gcp.max_ttl {
            range("auth.gcp.max_ttl", ttl, 1, None)?;
        }
        // Parsed and its key loaded here, so a bad JSON is a 400 at config time (`$env://`
        // values are checked the same way when the proxy resolves them).
        if let Some(sa) = &gcp.service_account_json
            && !sa.trim().is_empty()
            && !crate::secrets::is_reference(sa)
            && !crate::secrets::is_encrypted(sa)
            && let Err(e) = crate::gcp::validate_service_account_json(sa)
        {
            return Err(ValidationError::new(
                format!("{AP}.auth.gcp.service_account_json"),
                format!("invalid gcp service_account_json: {e}"),
            ));
        }
        if c.provider == Provider::Bedrock {
            return Err(ValidationError::new(
                format!("{AP}.auth.gcp"),
                "bedrock requests are signed with auth.aws; auth.gcp does not apply",
            ));
        }
    }
    if let Some(aws) = &c.auth.aws {
        non_empty("auth.aws.access_key_id", &aws.access_key_id)?;
        non_empty("auth.aws.secret_access_key", &aws.secret_access_key)?;
        if let Some(t) = &aws.session_token {
            non_empty("auth.aws.session_token", t)?;
        }
    }
    let ov = c.override_.clone().unwrap_or_default();
    if let Some(ep) = &ov.endpoint {
        check_endpoint(ep)?;
    }
    if let Some(lo) = &ov.llm_options
        && let Some(mt) = lo.max_tokens
    {
        range("override.llm_options.max_tokens", mt, 1, None)?;
    }
    let pc = c.provider_conf.clone().unwrap_or_default();
    if let Some(r) = &pc.region
        && c.provider == Provider::Bedrock
    {
        non_empty("provider_conf.region", r)?;
    }
    match c.provider {
        Provider::VertexAi => {
            let has_conf = pc.project_id.as_deref().is_some_and(|s| !s.is_empty()) && pc.region.as_deref().is_some_and(|s| !s.is_empty());
            match ov.endpoint.as_deref() {
                _ if has_conf => {}
                None => {
                    return Err(ValidationError::new(
                        format!("{AP}.provider_conf"),
                        "vertex-ai requires either provider_conf (project_id + region) or override.endpoint",
                    ));
                }
                // A bare origin means "the provider's paths on this host", and Vertex AI's
                // paths are built from provider_conf: no request could be served.
                Some(ep) if !endpoint_has_path(ep) => {
                    return Err(ValidationError::new(
                        format!("{AP}.override.endpoint"),
                        format!(
                            "vertex-ai: {ep:?} has no path, and the paths of a bare origin are built from provider_conf \
                             (project_id + region), which is missing or incomplete; set provider_conf, or give the full URL \
                             (.../v1/projects/P/locations/R/endpoints/openapi/chat/completions for chat, \
                             .../publishers/google/models/M:predict for embeddings)"
                        ),
                    ));
                }
                // A full URL serves one of Vertex AI's two APIs; requests for the other are
                // refused, each naming what is missing (aigw-providers' table).
                Some(_) => {}
            }
        }
        Provider::Bedrock => {
            if pc.region.as_deref().is_none_or(str::is_empty) {
                return Err(ValidationError::new(format!("{AP}.provider_conf.region"), "bedrock requires provider_conf.region"));
            }
            if c.auth.aws.is_none() {
                return Err(ValidationError::new(format!("{AP}.auth.aws"), "bedrock requires auth.aws"));
            }
        }
        Provider::OpenaiCompatible | Provider::AzureOpenai if ov.endpoint.is_none() => {
            return Err(ValidationError::new(
                format!("{AP}.override.endpoint"),
                format!("{} requires override.endpoint", c.provider.as_str()),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// `override.endpoint` names a path (not just `https://host[:port]` or with `/`): a URL with
/// a path is used as given, a bare origin means the provider's own paths (CONTRACT §7).
pub fn endpoint_has_path(ep: &str) -> bool {
    ep.parse::<http::Uri>().ok().and_then(|u| u.path_and_query().map(|p| p.as_str() != "/" && !p.as_str().is_empty())).unwrap_or(false)
}

fn check_endpoint(ep: &str) -> Result<(), ValidationError> {
    let path = format!("{AP}.override.endpoint");
    let uri: http::Uri = ep.parse().map_err(|e| ValidationError::new(&path, format!("invalid URL {ep:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(ValidationError::new(&path, format!("{ep:?} must be an absolute http:// or https:// URL"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ValidationError::new(&path, format!("{ep:?} has no host")));
    }
    Ok(())
}

pub(crate) fn validate_http_logger(c: &HttpLoggerConfig) -> Result<(), ValidationError> {
    let p = "plugins.http-logger";
    let uri: http::Uri = c.uri.parse().map_err(|e| ValidationError::new(format!("{p}.uri"), format!("invalid URL: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err(ValidationError::new(format!("{p}.uri"), "must be an absolute http:// or https:// URL"));
    }
    if c.batch_max_size < 1 {
        return Err(ValidationError::new(format!("{p}.batch_max_size"), "0 is less than the minimum 1"));
    }
    if c.timeout < 1 {
        return Err(ValidationError::new(format!("{p}.timeout"), "0 is less than the minimum 1"));
    }
    if c.inactive_timeout == Some(0) {
        return Err(ValidationError::new(format!("{p}.inactive_timeout"), "0 is less than the minimum 1"));
    }
    if c.retry_delay < 1 {
        return Err(ValidationError::new(format!("{p}.retry_delay"), "0 is less than the minimum 1"));
    }
    if c.auth_header.as_deref().is_some_and(|a| a.bytes().any(|b| b < 0x20 || b == 0x7f)) {
        return Err(ValidationError::new(format!("{p}.auth_header"), "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RouteSpec;
    use serde_json::json;

    fn base() -> Value {
        json!({"id": "r1", "uri": "/anything", "methods": ["POST"], "plugins": {"ai-proxy": {
            "provider": "openai", "auth": {"header": {"Authorization": "Bearer k"}}, "options": {"model": "gpt-4"}}}})
    }

    /// Sets `ptr` (JSON pointer; `~1` escapes `/`) to `val` in the base route (Null removes it),
    /// then checks the result: `Ok(())` when `expect` is None, else an error whose text
    /// contains every `expect` fragment.
    fn check(edits: &[(&str, Value)], expect: Option<&[&str]>) {
        let mut v = base();
        for (ptr, val) in edits {
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            let key = key.replace("~1", "/");
            let obj = if parent.is_empty() { &mut v } else { v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")) };
            if val.is_null() {
                obj.as_object_mut().unwrap().remove(&key);
            } else {
                obj.as_object_mut().unwrap().insert(key, val.clone());
            }
        }
        match (RouteSpec::from_json(&v), expect) {
            (Ok(_), None) => {}
            (Ok(_), Some(e)) => panic!("expected error {e:?} for {v}"),
            (Err(err), None) => panic!("unexpected error {err} for {v}"),
            (Err(err), Some(frags)) => {
                let text = err.to_string();
                for f in frags {
                    assert!(text.contains(f), "error {text:?} lacks {f:?}");
                }
            }
        }
    }

    const AP: &str = "/plugins/ai-proxy";

    fn ap(field: &str) -> String {
        format!("{AP}/{field}")
    }

    #[test]
    fn the_base_route_and_defaults() {
        check(&[], None);
        let spec = RouteSpec::from_json(&base()).unwrap();
        let c = &spec.ai_proxy;
        assert_eq!((c.timeout, c.keepalive, c.keepalive_timeout, c.keepalive_pool, c.ssl_verify), (30000, true, 60000, 30, true));
        assert_eq!(c.max_req_body_size, 64 * 1024 * 1024);
        assert_eq!(c.model(), Some("gpt-4"));
    }

    #[test]
    fn route_level_fields() {
        check(&[("/id", json!(""))], Some(&["id:"]));
        check(&[("/id", json!("a/b"))], Some(&["id:"]));
        check(&[("/id", json!(".."))], Some(&["id:"]));
        check(&[("/id", json!("x".repeat(65)))], Some(&["id:"]));
        check(&[("/uri", Value::Null)], Some(&["uri", "one of uri or uris"]));
        check(&[("/uri", Value::Null), ("/uris", json!(["/a", "/b/*"]))], None);
        check(&[("/uri", json!("anything"))], Some(&["uri", "start with '/'"]));
        check(&[("/uris", json!(["/ok", "/a*b"]))], Some(&["uris[1]", "'*'"]));
        check(&[("/methods", json!(["POST", "FETCH"]))], Some(&["methods[1]", "unknown method"]));
        check(&[("/hosts", json!(["api.example.com", "*.example.com"]))], None);
        check(&[("/host", json!("bad host"))], Some(&["host", "invalid host"]));
        check(&[("/priority", json!("high"))], Some(&["priority", "invalid type"]));
        check(&[("/status", json!(2))], Some(&["status"]));
        check(&[("/upstream", json!({}))], Some(&["unknown field `upstream`"]));
        check(&[("/vars", json!([["post_arg.model", "==", "openai"]]))], None);
        check(&[("/vars", json!([["post_arg.model", "=~", "x"]]))], Some(&["vars[0][1]", "unknown operator"]));
        check(&[("/plugins", json!({}))], Some(&["plugins", "the ai-proxy or ai-proxy-multi plugin is required"]));
        check(&[("/plugins/limit-count", json!({}))], Some(&["plugins.limit-count", "unknown plugin"]));
    }

    #[test]
    fn provider_and_auth() {
        check(&[(&ap("provider"), json!("openia"))], Some(&["plugins.ai-proxy.provider", "unknown variant"]));
        check(&[(&ap("provider"), Value::Null)], Some(&["missing field `provider`"]));
        check(&[(&ap("auth"), Value::Null)], Some(&["missing field `auth`"]));
        for p in ["openai", "deepseek", "aimlapi", "anthropic", "openrouter", "gemini"] {
            check(&[(&ap("provider"), json!(p))], None);
        }
        check(&[(&ap("auth/headers"), json!({"a": "b"}))], Some(&["plugins.ai-proxy.auth", "unknown field `headers`"]));
        check(&[(&ap("auth/header"), json!({"a b": "v"}))], Some(&["auth.header.a b", "must match"]));
        check(&[(&ap("auth/header"), json!({"a": "v\r\nx: y"}))], Some(&["auth.header.a", "CR"]));
        check(&[(&ap("auth/header"), json!({"a": 1}))], Some(&["auth.header.a", "invalid type"]));
        check(&[(&ap("auth/query"), json!({"key": "v"}))], None);
        check(&[(&ap("auth/gcp"), json!({"service_account_json": "{not json"}))], Some(&["service_account_json", "invalid gcp"]));
        check(&[(&ap("auth/gcp"), json!({"max_ttl": 0}))], Some(&["auth.gcp.max_ttl", "minimum 1"]));
        check(&[(&ap("auth/gcp"), json!({"expire_early_secs": -1}))], Some(&["auth.gcp.expire_early_secs"]));
        check(&[(&ap("auth/gcp"), json!({"service_account_json": "$env://SA"}))], None);
        let key = include_str!("../../aigw-testkit/testdata/gcp-TEST-ONLY-sa-key-a.pem");
        let sa = |extra: Value| {
            let mut v = json!({"type": "service_account", "private_key": key, "client_email": "gw@p.iam", "token_uri": "https://oauth2.googleapis.com/token"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v.to_string()
        };
        check(&[(&ap("auth/gcp"), json!({"service_account_json": sa(json!({}))}))], None);
        check(
            &[(&ap("auth/gcp"), json!({"service_account_json": sa(json!({"client_email": null}))}))],
            Some(&["plugins.ai-proxy.auth.gcp.service_account_json", "invalid gcp service_account_json: lacks client_email"]),
        );
        check(
            &[(
                &ap("auth/gcp"),
                json!({"service_account_json": sa(json!({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}))}),
            )],
            Some(&["private_key does not load"]),
        );
        check(
            &[
                (&ap("provider"), json!("bedrock")),
                (&ap("provider_conf"), json!({"region": "us-east-1"})),
                (&ap("auth"), json!({"aws": {"access_key_id": "a", "secret_access_key": "s"}, "gcp": {}})),
            ],
            Some(&["plugins.ai-proxy.auth.gcp", "auth.gcp does not apply"]),
        );
        check(&[(&ap("auth/aws"), json!({"access_key_id": "", "secret_access_key": "s"}))], Some(&["auth.aws.access_key_id", "minLength"]));
        check(&[(&ap("auth/aws"), json!({"access_key_id": "a", "secret_access_key": ""}))], Some(&["secret_access_key", "minLength"]));
        check(
            &[(&ap("auth/aws"), json!({"access_key_id": "a", "secret_access_key": "s", "session_token": ""}))],
            Some(&["session_token", "minLength"]),
        );
        check(&[(&ap("auth/aws"), json!({"access_key_id": "a"}))], Some(&["missing field `secret_access_key`"]));
    }

    #[test]
    fn numeric_ranges_and_types() {
        check(&[(&ap("timeout"), json!(0))], Some(&["plugins.ai-proxy.timeout", "minimum 1"]));
        check(&[(&ap("timeout"), json!(600_001))], Some(&["timeout", "maximum 600000"]));
        check(&[(&ap("timeout"), json!(600_000))], None);
        check(&[(&ap("timeout"), json!("30s"))], Some(&["timeout", "invalid type"]));
        check(&[(&ap("timeout"), json!(1.5))], Some(&["timeout", "invalid type"]));
        check(&[(&ap("keepalive_timeout"), json!(999))], Some(&["keepalive_timeout", "minimum 1000"]));
        check(&[(&ap("keepalive_pool"), json!(0))], Some(&["keepalive_pool", "minimum 1"]));
        check(&[(&ap("keepalive"), json!("yes"))], Some(&["keepalive", "invalid type"]));
        check(&[(&ap("ssl_verify"), json!(false))], None);
        check(&[(&ap("max_req_body_size"), json!(0))], Some(&["max_req_body_size", "minimum 1"]));
        check(&[(&ap("max_stream_duration_ms"), json!(0))], Some(&["max_stream_duration_ms", "minimum 1"]));
        check(&[(&ap("max_response_bytes"), json!(0))], Some(&["max_response_bytes", "minimum 1"]));
        check(&[(&ap("logging"), json!({"summaries": true, "payloads": true}))], None);
        check(&[(&ap("logging"), json!({"summary": true}))], Some(&["logging", "unknown field `summary`"]));
        check(&[(&ap("options"), json!({"model": 4}))], Some(&["options.model", "string"]));
        check(&[(&ap("options"), json!({"model": "m", "temperature": 0.2, "anything": [1]}))], None);
        check(&[(&ap("model"), json!("x"))], Some(&["unknown field `model`"]));
    }

    #[test]
    fn override_rules() {
        check(&[(&ap("override"), json!({"endpoint": "https://h:8443/v1/chat?x=1"}))], None);
        check(&[(&ap("override"), json!({"endpoint": "http//h:1"}))], Some(&["override.endpoint"]));
        check(&[(&ap("override"), json!({"endpoint": "ftp://h/x"}))], Some(&["override.endpoint", "http"]));
        check(&[(&ap("override"), json!({"llm_options": {"max_tokens": 0}}))], Some(&["llm_options.max_tokens", "minimum 1"]));
        check(&[(&ap("override"), json!({"llm_options": {"max_tokens": 5}}))], None);
        check(&[(&ap("override"), json!({"llm_options": {"temperature": 1}}))], Some(&["llm_options", "unknown field `temperature`"]));
        check(
            &[(
                &ap("override"),
                json!({"request_body": {"openai-chat": {"a": 1}, "anthropic-messages": {}, "openai-responses": {},
            "openai-embeddings": {}, "bedrock-converse": {}}}),
            )],
            None,
        );
        check(
            &[(&ap("override"), json!({"request_body": {"not-a-protocol": {}}}))],
            Some(&["request_body", "unknown field `not-a-protocol`"]),
        );
        check(&[(&ap("override"), json!({"request_body": {"openai-chat": [1]}}))], Some(&["request_body.openai-chat", "invalid type"]));
        check(&[(&ap("override"), json!({"request_body_force_override": "yes"}))], Some(&["request_body_force_override"]));
        check(&[(&ap("override"), json!({"endpoints": "x"}))], Some(&["unknown field `endpoints`"]));
    }

    #[test]
    fn cross_field_provider_requirements() {
        let p = |name: &str| (ap("provider"), json!(name));
        let (pa, pv) = p("openai-compatible");
        check(&[(&pa, pv.clone())], Some(&["override.endpoint", "openai-compatible requires override.endpoint"]));
        check(&[(&pa, pv), (&ap("override"), json!({"endpoint": "http://127.0.0.1:1/v1/chat/completions"}))], None);
        let (pa, pv) = p("azure-openai");
        check(&[(&pa, pv)], Some(&["azure-openai requires override.endpoint"]));
        let (pa, pv) = p("vertex-ai");
        check(&[(&pa, pv.clone())], Some(&["vertex-ai requires either provider_conf"]));
        check(&[(&pa, pv.clone()), (&ap("provider_conf"), json!({"project_id": "p"}))], Some(&["vertex-ai requires"]));
        check(&[(&pa, pv.clone()), (&ap("provider_conf"), json!({"project_id": "p", "region": "us-central1"}))], None);
        check(&[(&pa, pv.clone()), (&ap("override"), json!({"endpoint": "https://x.googleapis.com/v1/x"}))], None);
        // A bare origin needs provider_conf to build Vertex's paths: refused, naming the field.
        for bare in ["https://aiplatform.googleapis.com", "http://127.0.0.1:9/"] {
            let ov = (ap("override"), json!({"endpoint": bare}));
            check(
                &[(&pa, pv.clone()), (&ov.0, ov.1.clone())],
                Some(&["plugins.ai-proxy.override.endpoint", "has no path", "provider_conf"]),
            );
            check(&[(&pa, pv.clone()), (&ov.0, ov.1.clone()), (&ap("provider_conf"), json!({"region": "r"}))], Some(&["has no path"]));
            check(&[(&pa, pv.clone()), (&ov.0, ov.1), (&ap("provider_conf"), json!({"project_id": "p", "region": "r"}))], None);
        }
        check(
            &[
                (&pa, pv),
                (&ap("override"), json!({"endpoint": "http://127.0.0.1:9/v1/projects/p/locations/r/publishers/google/models/m:predict"})),
            ],
            None,
        );
        let (pa, pv) = p("bedrock");
        let aws = json!({"access_key_id": "AKID", "secret_access_key": "s"});
        check(&[(&pa, pv.clone()), (&ap("auth/aws"), aws.clone())], Some(&["bedrock requires provider_conf.region"]));
        check(
            &[(&pa, pv.clone()), (&ap("auth/aws"), aws.clone()), (&ap("provider_conf"), json!({"region": ""}))],
            Some(&["provider_conf.region", "minLength"]),
        );
        check(&[(&pa, pv.clone()), (&ap("provider_conf"), json!({"region": "us-east-1"}))], Some(&["bedrock requires auth.aws"]));
        check(&[(&pa, pv), (&ap("auth/aws"), aws), (&ap("provider_conf"), json!({"region": "us-east-1"}))], None);
        check(&[(&ap("provider_conf"), json!({"zone": "x"}))], Some(&["provider_conf", "unknown field `zone`"]));
    }

    #[test]
    fn http_logger_schema() {
        check(
            &[(
                "/plugins/http-logger",
                json!({"uri": "http://127.0.0.1:1234/logs", "batch_max_size": 1, "timeout": 3, "headers": {"a": "b"}}),
            )],
            None,
        );
        check(&[("/plugins/http-logger", json!({"batch_max_size": 1}))], Some(&["plugins.http-logger", "missing field `uri`"]));
        check(&[("/plugins/http-logger", json!({"uri": "nope"}))], Some(&["plugins.http-logger.uri"]));
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "batch_max_size": 0}))], Some(&["batch_max_size", "minimum 1"]));
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "timeout": 0}))], Some(&["http-logger.timeout"]));
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "brokers": []}))], Some(&["unknown field `brokers`"]));
        check(
            &[("/plugins/http-logger", json!({"uri": "http://h/", "max_retry_count": 2, "retry_delay": 1, "inactive_timeout": 1}))],
            None,
        );
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "retry_delay": 0}))], Some(&["http-logger.retry_delay"]));
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "inactive_timeout": 0}))], Some(&["http-logger.inactive_timeout"]));
        check(&[("/plugins/http-logger", json!({"uri": "http://h/", "auth_header": "a\nb"}))], Some(&["http-logger.auth_header"]));
    }

    #[test]
    fn ai_proxy_multi_on_a_route() {
        let multi = json!({"instances": [
            {"name": "a", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": "Bearer a"}}},
            {"name": "b", "provider": "anthropic", "weight": 1, "auth": {"header": {"x-api-key": "b"}}}],
            "timeout": 1234, "max_response_bytes": 99, "logging": {"summaries": true}});
        check(&[("/plugins/ai-proxy-multi", multi.clone())], Some(&["plugins", "cannot be configured on the same route"]));
        let mut v = base();
        v["plugins"] = json!({"ai-proxy-multi": multi});
        let spec = RouteSpec::from_json(&v).unwrap();
        let m = spec.multi.as_ref().unwrap();
        assert_eq!(m.instances.len(), 2);
        // The route-level view: route-wide settings, the first instance's target.
        let ap = &spec.ai_proxy;
        assert_eq!((ap.timeout, ap.max_response_bytes, ap.provider), (1234, Some(99), Provider::Openai));
        assert!(ap.logging.as_ref().is_some_and(|l| l.summaries));
        // Errors keep the plugin's path.
        v["plugins"]["ai-proxy-multi"]["instances"][1]["name"] = json!("a");
        let e = RouteSpec::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("plugins.ai-proxy-multi.instances[1].name") && e.contains("instances[0] and instances[1]"), "{e}");
        assert!(base_spec_has_no_multi());
    }

    fn base_spec_has_no_multi() -> bool {
        RouteSpec::from_json(&base()).unwrap().multi.is_none()
    }

    /// Hostile input: multibyte URIs are valid, control characters and wrong JSON types
    /// at any level are errors naming the field, and nothing panics.
    #[test]
    fn hostile_route_input() {
        check(&[("/uri", json!("/é"))], None);
        check(&[("/uri", json!("/日本/*"))], None);
        check(&[("/uri", json!("/é*é"))], Some(&["uri", "'*'"]));
        check(&[("/uris", json!(["/ok", "/a\u{0}"]))], Some(&["uris[1]", "control character"]));
        for bad in ["/\u{0}", "/a\r\nb", "/\u{7f}", "/\u{85}"] {
            let s: String = serde_json::from_str(&format!("\"{bad}\"")).unwrap_or_else(|_| bad.to_owned());
            check(&[("/uri", json!(s))], Some(&["uri", "control character"]));
        }
        check(&[(&ap("auth"), json!([]))], Some(&["plugins.ai-proxy.auth", "expected a JSON object"]));
        check(&[(&ap("auth/header"), json!([]))], Some(&["plugins.ai-proxy.auth.header", "expected a JSON object"]));
        check(&[(&ap("override"), json!(["x"]))], Some(&["plugins.ai-proxy.override", "expected a JSON object"]));
        check(&[("/plugins", json!([]))], Some(&["plugins", "expected a JSON object"]));
        check(&[("/plugins/ai-proxy", json!([]))], Some(&["plugins.ai-proxy", "expected a JSON object"]));
        check(&[("/methods", json!("POST"))], Some(&["methods", "expected a JSON array"]));
        check(&[("/id", json!(5))], Some(&["id", "invalid type"]));
        check(&[("/labels", json!({"a": 1}))], Some(&["labels.a", "invalid type"]));
        check(&[("/id", json!("x".repeat(5 << 20)))], Some(&["id:"]));
    }

    #[test]
    fn non_object_route() {
        assert!(RouteSpec::from_json(&json!([1])).unwrap_err().to_string().contains("JSON object"));
    }
}
