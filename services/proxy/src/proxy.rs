//! The data plane: route a request, read its body with a bound, and forward it to the
//! route's provider, streaming the answer back as it arrives.
//!
//! Each request loads the config snapshot once and holds that `Arc` until its response
//! body ends, so a snapshot swap never changes a request half-way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use aigw_model::Provider;
use aigw_model::vars::{Var, VarSource, VarValue, lookup};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::access_log::{AccessLog, Entry};
use crate::body::{Limits, ObservedBody, Outcome, Summary};
use crate::upstream::Upstreams;

use crate::errors::{GatewayError, error_response};
use crate::router::MatchInput;
use crate::runtime::{CompiledRoute, RuntimeConfig};
use crate::sigv4;
use aigw_llm::anthropic::{self, ToolNames};
use aigw_llm::bedrock;
use aigw_llm::protocol::Route as ConvRoute;
use aigw_llm::protocol::{self, Protocol};
use aigw_llm::shaping::{MaxTokensField, Shaping, max_tokens_field, shape};
use aigw_llm::stream::Pipe;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Shared state of a proxy node.
pub struct AppState {
    pub config: ArcSwap<RuntimeConfig>,
    pub access_log: AccessLog,
    pub ready: AtomicBool,
    pub upstreams: Upstreams,
    pub metrics: Metrics,
}

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub gateway_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub config_applied: AtomicU64,
    pub config_rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub streams_aborted: AtomicU64,
}

impl AppState {
    pub fn new(access_log: AccessLog) -> Arc<AppState> {
        Arc::new(AppState {
            config: ArcSwap::from_pointee(RuntimeConfig::empty()),
            access_log,
            ready: AtomicBool::new(false),
            upstreams: Upstreams::default(),
            metrics: Metrics::default(),
        })
    }

    /// Swaps in a compiled snapshot; the node is ready from the first one on.
    pub fn apply(&self, cfg: RuntimeConfig) {
        tracing::info!(version = %cfg.version, routes = cfg.routes.len(), "config applied");
        self.config.store(Arc::new(cfg));
        self.ready.store(true, Ordering::Release);
        self.metrics.config_applied.fetch_add(1, Ordering::Relaxed);
    }
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn request_id() -> String {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(Instant::now()));
    format!("{seed:016x}{:08x}", REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Request facts exposed to `vars`.
struct RequestVars<'a> {
    path: &'a str,
    request_uri: &'a str,
    query: &'a str,
    method: &'a str,
    host: &'a str,
    scheme: &'a str,
    remote: String,
    headers: &'a HeaderMap,
    body: Option<&'a Value>,
    decoded: std::cell::OnceCell<Vec<(String, String)>>,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(()) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl RequestVars<'_> {
    fn args(&self) -> &[(String, String)] {
        self.decoded.get_or_init(|| {
            self.query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (pct_decode(k), pct_decode(v)),
                    None => (pct_decode(p), String::new()),
                })
                .collect()
        })
    }
}

impl VarSource for RequestVars<'_> {
    fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>> {
        match var {
            Var::Uri => Some(VarValue::Str(self.path)),
            Var::RequestUri => Some(VarValue::Str(self.request_uri)),
            Var::Host => Some(VarValue::Str(self.host)),
            Var::Method => Some(VarValue::Str(self.method)),
            Var::Scheme => Some(VarValue::Str(self.scheme)),
            Var::RemoteAddr => Some(VarValue::Str(&self.remote)),
            Var::QueryString => Some(VarValue::Str(self.query)),
            Var::Arg(name) => self.args().iter().find(|(k, _)| k == name).map(|(_, v)| VarValue::Str(v)),
            Var::Http(name) => self.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(VarValue::Str),
            Var::Cookie(name) => self
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| VarValue::Str(v)),
            Var::PostArg(path) => self.body.and_then(|b| lookup(b, path)).map(VarValue::Json),
        }
    }
}

/// Per-request facts the access log needs.
pub struct ReqCtx {
    pub remote: SocketAddr,
    pub start: Instant,
    pub start_wall: std::time::SystemTime,
    pub request_line: String,
    pub request_id: String,
    pub headers: Option<HeaderMap>,
}

impl ReqCtx {
    fn entry(&self, status: u16) -> Entry {
        Entry {
            remote_addr: self.remote.ip(),
            start: self.start_wall,
            request_line: self.request_line.clone(),
            status,
            body_bytes_sent: 0,
            request_time: self.start.elapsed(),
            upstream_addr: String::new(),
            upstream_status: None,
            upstream_time: None,
            request_id: self.request_id.clone(),
            route_id: String::new(),
            request_type: "traditional_http",
            request_llm_model: String::new(),
            llm_model: String::new(),
            ttft: None,
            usage: Default::default(),
            stream: false,
            has_tool_calls: false,
            tool_count: 0,
            end_user_id: String::new(),
            headers: self.headers.clone(),
        }
    }
}

/// Entry point for every data-plane request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, remote: SocketAddr) -> Result<Response<ProxyBody>, Infallible> {
    state.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let shape = protocol::client_shape(req.uri().path());
    let ctx = ReqCtx {
        remote,
        start: Instant::now(),
        start_wall: std::time::SystemTime::now(),
        request_line: format!("{} {} {:?}", req.method(), req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"), req.version()),
        request_id: request_id(),
        headers: state.access_log.format.needs_headers.then(|| req.headers().clone()),
    };
    let rid = ctx.request_id.clone();
    let mut resp = match route_and_forward(&state, req, &ctx).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() && e.from_upstream {
                state.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                state.metrics.gateway_errors.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(request_id = %rid, status = e.status.as_u16(), error = %e.message, "gateway error");
            let resp = error_response(shape, &e);
            if state.access_log.enabled() {
                let mut entry = ctx.entry(e.status.as_u16());
                entry.body_bytes_sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
                entry.route_id = e.route_id.clone().unwrap_or_default();
                state.access_log.log(&entry);
            }
            resp
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(HeaderName::from_static("x-aigw-request-id"), v);
    }
    Ok(resp)
}

async fn route_and_forward(state: &Arc<AppState>, req: Request<Incoming>, ctx: &ReqCtx) -> Result<Response<ProxyBody>, GatewayError> {
    let remote = ctx.remote;
    let cfg = state.config.load_full();
    let (parts, body) = req.into_parts();
    let host = host_of_parts(&parts);
    let path = parts.uri.path().to_owned();
    let input = MatchInput { path: &path, method: parts.method.as_str(), host: &host };

    // Largest body any path/method/host candidate accepts: the bound for reading it.
    let mut limit = 0u64;
    cfg.router.first_where(&path, |r| {
        if r.matches_static(&input) {
            limit = limit.max(r.spec.ai_proxy.max_req_body_size);
        }
        false
    });
    if limit == 0 {
        return Err(GatewayError::no_route(&path));
    }
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(GatewayError::too_large(len, limit));
    }
    let bytes = match Limited::new(body, limit as usize).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(GatewayError::too_large(limit + 1, limit)),
        Err(e) => return Err(GatewayError::bad_request(format!("could not read the request body: {e}"))),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_owned();
    let is_json = content_type.to_ascii_lowercase().starts_with("application/json");
    let json: Option<Value> = if is_json && !bytes.is_empty() { serde_json::from_slice(&bytes).ok() } else { None };
    let form: Option<Value> = if content_type.starts_with("application/x-www-form-urlencoded") {
        let text = String::from_utf8_lossy(&bytes);
        Some(Value::Object(
            text.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (pct_decode(k), Value::String(pct_decode(v)))).collect(),
        ))
    } else {
        None
    };
    let vars = RequestVars {
        path: &path,
        request_uri: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(&path),
        query: parts.uri.query().unwrap_or_default(),
        method: parts.method.as_str(),
        host: &host,
        scheme: "http",
        remote: remote.ip().to_string(),
        headers: &parts.headers,
        body: json.as_ref().or(form.as_ref()),
        decoded: Default::default(),
    };
    let route = cfg.router.find(&input, &vars).ok_or_else(|| GatewayError::no_route(&path))?;
    drop(vars);
    let with_route = |mut e: GatewayError| {
        e.route_id = Some(route.id().to_owned());
        e
    };
    if bytes.len() as u64 > route.spec.ai_proxy.max_req_body_size {
        return Err(with_route(GatewayError::too_large(bytes.len() as u64, route.spec.ai_proxy.max_req_body_size)));
    }
    if !is_json {
        return Err(with_route(GatewayError::bad_request(format!(
            "unsupported content-type: {content_type}, only application/json is supported"
        ))));
    }
    if bytes.is_empty() {
        return Err(with_route(GatewayError::bad_request("request body is empty")));
    }
    let body_json = match json {
        Some(v) => v,
        None => {
            let e = serde_json::from_slice::<Value>(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
            return Err(with_route(GatewayError::bad_request(format!("could not parse JSON request body: {e}"))));
        }
    };
    let proto = protocol::detect(&path, &body_json)
        .ok_or_else(|| with_route(GatewayError::bad_request("no matching AI protocol for the request")))?;
    forward(state, cfg.clone(), &route, &parts, &path, bytes, body_json, proto, ctx).await.map_err(|mut e| {
        e.route_id = Some(route.id().to_owned());
        e
    })
}

fn host_of_parts(parts: &http::request::Parts) -> String {
    let raw = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| parts.uri.host()).unwrap_or_default();
    let no_port = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
        _ => raw,
    };
    no_port.to_ascii_lowercase()
}

/// Headers never forwarded upstream: hop-by-hop, and those the gateway sets itself.
const DROP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "cookie",
];

/// Client credentials, never forwarded when the route configures its own.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// `/model/{modelId}/converse[-stream]` in a client path (what boto3 sends): the model id.
fn model_from_path(path: &str) -> Option<String> {
    let rest = path.rsplit_once("/model/")?.1;
    let id = rest.strip_suffix("/converse-stream").or_else(|| rest.strip_suffix("/converse"))?;
    (!id.is_empty()).then(|| pct_decode(id))
}

/// Bedrock streams at `/converse-stream`, also when `override.endpoint` names `/converse`
/// (APISIX never streams then).
fn bedrock_stream_path(p: &str) -> String {
    let (path, query) = match p.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (p, None),
    };
    let path = match path.strip_suffix("/converse") {
        Some(base) => format!("{base}/converse-stream"),
        None => path.to_owned(),
    };
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &Arc<AppState>,
    cfg: Arc<RuntimeConfig>,
    route: &Arc<CompiledRoute>,
    parts: &http::request::Parts,
    path: &str,
    original: Bytes,
    mut body: Value,
    proto: Protocol,
    ctx: &ReqCtx,
) -> Result<Response<ProxyBody>, GatewayError> {
    let rid = ctx.request_id.as_str();
    let ap = &route.spec.ai_proxy;
    if ap.provider == Provider::VertexAi {
        return Err(GatewayError::not_implemented("provider vertex-ai is not implemented yet in this build"));
    }
    let pc = ap.provider_conf.as_ref();
    let how = protocol::route(ap.provider, proto, pc).ok_or_else(|| {
        GatewayError::bad_request(format!(
            "provider {} does not support {} protocol (supported: {})",
            ap.provider.as_str(),
            proto.name(),
            protocol::supported(ap.provider).join(", ")
        ))
    })?;
    let target = how.target(proto);
    let request_model = body.get("model").and_then(Value::as_str).map(str::to_owned);

    // 1. Into the target protocol.
    let mut names = ToolNames::default();
    let mut converted_stream = false;
    let mut converted_model = None;
    let bad = |e: anthropic::ConvertError| GatewayError::bad_request(e.0);
    let mut changed = how != ConvRoute::Native;
    body = match how {
        ConvRoute::Native => body,
        ConvRoute::AnthropicToOpenAi => {
            let field = match max_tokens_field(ap.provider, Protocol::OpenAiChat) {
                MaxTokensField::Top(f) => f,
                _ => "max_tokens",
            };
            anthropic::request_to_openai(&body, field, &mut names).map_err(bad)?
        }
        ConvRoute::OpenAiToConverse | ConvRoute::AnthropicToConverse => {
            let openai = if how == ConvRoute::AnthropicToConverse {
                anthropic::request_to_openai(&body, "max_tokens", &mut names).map_err(bad)?
            } else {
                body
            };
            let c = bedrock::request_to_converse(&openai).map_err(bad)?;
            converted_stream = c.stream;
            converted_model = c.model;
            c.body
        }
    };
    // 2. Shaped for the target (options, llm_options, request_body, stream usage).
    let ov = ap.override_.as_ref();
    let shaping = Shaping {
        provider: ap.provider,
        target,
        options: ap.options.as_ref(),
        max_tokens: ov.and_then(|o| o.llm_options.as_ref()).and_then(|l| l.max_tokens),
        request_body: ov.and_then(|o| o.request_body.as_ref()).and_then(|rb| request_body_for(rb, target)),
        force_request_body: ov.is_some_and(|o| o.request_body_force_override),
    };
    changed |= shape(&mut body, &shaping);
    // 3. Bedrock: the model and the stream flag are gateway-level, not body fields.
    let bedrock = ap.provider == Provider::Bedrock;
    let (stream_requested, bedrock_model) = if bedrock && target == Protocol::BedrockConverse {
        let obj = body.as_object_mut();
        let (s, m) = obj.map(|o| (o.remove("stream"), o.remove("model"))).unwrap_or_default();
        changed |= s.is_some() || m.is_some();
        let stream = converted_stream || s == Some(Value::Bool(true)) || path.ends_with("/converse-stream");
        let model = ap
            .model()
            .map(str::to_owned)
            .or(converted_model)
            .or_else(|| m.and_then(|v| v.as_str().map(str::to_owned)))
            .or_else(|| model_from_path(path));
        (stream, model)
    } else {
        (target.is_stream(&body), None)
    };
    let llm_model = ap.model().map(str::to_owned).or_else(|| bedrock_model.clone()).or_else(|| request_model.clone());

    // 4. The upstream URL.
    let mut path_q = match (route.endpoint.as_ref().and_then(|e| e.path_and_query.clone()), target) {
        (Some(p), Protocol::BedrockConverse) if stream_requested => bedrock_stream_path(&p),
        (Some(p), _) => p,
        (None, Protocol::Passthrough) => parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(path).to_owned(),
        (None, Protocol::BedrockConverse) => {
            let model = bedrock_model.as_deref().ok_or_else(|| {
                GatewayError::bad_request(
                    "no model for bedrock: set options.model on the route, send \"model\" in the body, or call /model/{modelId}/converse",
                )
            })?;
            format!("/model/{}/{}", crate::runtime::encode_query(model), if stream_requested { "converse-stream" } else { "converse" })
        }
        (None, t) => protocol::native_path(ap.provider, t, pc)
            .ok_or_else(|| GatewayError::bad_request("could not resolve upstream path: override.endpoint needs a path"))?,
    };
    for (k, v) in &route.auth_query {
        path_q.push(if path_q.contains('?') { '&' } else { '?' });
        path_q.push_str(k);
        path_q.push('=');
        path_q.push_str(v);
    }
    let url = format!("{}{path_q}", route.origin);
    let tool_count = body.get("tools").and_then(Value::as_array).map_or(0, Vec::len);
    let end_user_id = body
        .get("safety_identifier")
        .or_else(|| body.get("user"))
        .or_else(|| body.pointer("/metadata/user_id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let out_body = if changed { Bytes::from(serde_json::to_vec(&body).unwrap_or_default()) } else { original };

    // 5. Headers.
    let method = if target == Protocol::Passthrough { parts.method.clone() } else { Method::POST };
    let mut builder = Request::builder().method(method.clone()).uri(&url);
    let has_creds = route.has_credentials();
    let to_openai = how == ConvRoute::AnthropicToOpenAi;
    let headers = builder.headers_mut().ok_or_else(|| GatewayError::internal(format!("invalid upstream URL {url}")))?;
    if !bedrock {
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if DROP_HEADERS.contains(&n) || (has_creds && CREDENTIAL_HEADERS.contains(&n)) {
                continue;
            }
            // An OpenAI backend must not see Anthropic credentials or protocol headers.
            if to_openai && (n == "x-api-key" || n.starts_with("anthropic-")) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if to_openai
            && !has_creds
            && !headers.contains_key(header::AUTHORIZATION)
            && let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
        {
            // Bring-your-own-key: the client's Anthropic-style key becomes the backend bearer.
            headers.insert(header::AUTHORIZATION, v);
        }
        for (name, value) in &route.auth_headers {
            headers.insert(name.clone(), value.clone());
        }
        if matches!(target, Protocol::AnthropicMessages | Protocol::AnthropicCountTokens) && !headers.contains_key("anthropic-version") {
            headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"));
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if bedrock {
        // Nothing of the client's request reaches AWS but the signed body: its own SigV4
        // headers (boto3 signs with placeholder keys) would only be rejected.
        let creds = route.aws.as_ref().ok_or_else(|| GatewayError::internal("bedrock route without auth.aws"))?;
        let region = pc.and_then(|p| p.region.as_deref()).unwrap_or("us-east-1");
        let authority = route.origin.split("://").nth(1).unwrap_or_default().to_owned();
        let signer = sigv4::Signer { creds, region, service: "bedrock" };
        let signed = signer
            .sign(
                method.as_str(),
                &url,
                &[("host", authority.as_str()), ("content-type", "application/json")],
                &out_body,
                std::time::SystemTime::now(),
            )
            .map_err(GatewayError::internal)?;
        headers.insert(header::HOST, HeaderValue::from_str(&authority).map_err(|_| GatewayError::internal("bad upstream host"))?);
        for (k, v) in signed {
            let mut v = HeaderValue::from_str(&v).map_err(|_| GatewayError::internal("bad SigV4 header"))?;
            v.set_sensitive(k != "x-amz-date");
            headers.insert(HeaderName::from_static(k), v);
        }
    }
    let upstream_req = builder.body(Full::new(out_body)).map_err(|e| GatewayError::internal(format!("building upstream request: {e}")))?;

    // The connection cap (`keepalive_pool`): wait for a permit within the route timeout.
    let up = route.upstream.clone();
    let permit = tokio::time::timeout(route.timeout, up.permits.clone().acquire_owned())
        .await
        .map_err(|_| GatewayError::upstream_timeout(route.timeout))?
        .map_err(|_| GatewayError::internal("upstream closed"))?;
    let sent = Instant::now();
    let resp = match tokio::time::timeout(route.timeout, up.client.request(upstream_req)).await {
        Err(_) => return Err(GatewayError::upstream_timeout(route.timeout)),
        Ok(Err(e)) => return Err(GatewayError::upstream_connect(&e)),
        Ok(Ok(r)) => r,
    };
    let latency = sent.elapsed();
    let upstream_addr = resp
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .map(|i| i.remote_addr().to_string())
        .unwrap_or_else(|| route.origin.split("://").nth(1).unwrap_or_default().to_owned());
    let (mut rparts, rbody) = resp.into_parts();
    let status = rparts.status;
    tracing::debug!(request_id = %rid, route = %route.id(), upstream = %route.origin, status = status.as_u16(), "upstream responded");
    let content_type = rparts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let is_stream = content_type.contains("text/event-stream") || content_type.contains("application/vnd.amazon.eventstream");
    if !is_stream
        && let (Some(max), Some(len)) = (
            ap.max_response_bytes,
            rparts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()),
        )
        && len > max
    {
        return Err(GatewayError::bad_gateway(format!(
            "max_response_bytes exceeded: the upstream body has {len} bytes, the limit is {max}"
        )));
    }
    for h in ["connection", "keep-alive", "transfer-encoding", "trailer", "upgrade", "proxy-connection"] {
        rparts.headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&latency.as_millis().to_string()) {
        rparts.headers.insert(HeaderName::from_static("x-aigw-upstream-latency-ms"), v);
    }
    let limits = Limits {
        read_timeout: route.timeout,
        max_duration: ap.max_stream_duration_ms.map(std::time::Duration::from_millis),
        max_bytes: ap.max_response_bytes,
    };
    let st = state.clone();
    let mut entry = ctx.entry(status.as_u16());
    entry.upstream_addr = upstream_addr;
    entry.upstream_status = Some(status.as_u16());
    entry.route_id = route.id().to_owned();
    entry.request_type = if stream_requested { "ai_stream" } else { "ai_chat" };
    entry.request_llm_model = request_model.clone().unwrap_or_default();
    entry.llm_model = llm_model.clone().unwrap_or_default();
    entry.stream = stream_requested;
    entry.tool_count = tool_count;
    entry.end_user_id = end_user_id;
    let start = ctx.start;
    let on_done = Box::new(move |s: Summary| {
        st.metrics.prompt_tokens.fetch_add(s.obs.usage.prompt, Ordering::Relaxed);
        st.metrics.completion_tokens.fetch_add(s.obs.usage.completion, Ordering::Relaxed);
        if s.outcome != Outcome::Complete {
            st.metrics.streams_aborted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = &s.obs.error {
            tracing::warn!(request_id = %entry.request_id, route = %entry.route_id, error = %e, "upstream reported an error inside the response");
        }
        entry.request_time = start.elapsed();
        entry.body_bytes_sent = s.client_bytes;
        entry.upstream_time = Some(s.upstream_time);
        entry.ttft = s.ttft;
        entry.usage = s.obs.usage;
        entry.has_tool_calls = s.obs.has_tool_calls;
        if let Some(m) = s.obs.model.filter(|_| entry.llm_model.is_empty()) {
            entry.llm_model = m;
        }
        tracing::debug!(
            request_id = %entry.request_id, route = %entry.route_id, status = entry.status, outcome = ?s.outcome,
            prompt_tokens = entry.usage.prompt, completion_tokens = entry.usage.completion, "llm request done"
        );
        st.access_log.log(&entry);
    });
    let fallback_model = llm_model.unwrap_or_default();
    let converting = how != ConvRoute::Native;
    let streaming = is_stream && status.is_success();
    let pipe = is_stream.then(|| Pipe::new(target, if streaming { proto } else { target }, names.clone(), &fallback_model, rid));
    let body = ObservedBody::new(rbody, pipe, limits, sent, Box::new((cfg, permit)), on_done);
    if !converting || streaming {
        if converting {
            rparts.headers.remove(header::CONTENT_LENGTH);
            rparts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        }
        return Ok(Response::from_parts(rparts, BodyExt::boxed_unsync(body)));
    }
    // A converted non-streamed answer (or error) is read whole, then converted.
    let bytes = body.collect().await.map_err(|e| GatewayError::bad_gateway(format!("reading the upstream response: {e}")))?.to_bytes();
    let converted = if status.is_success() {
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| GatewayError::bad_gateway(format!("the upstream answer is not JSON: {e}")))?;
        let as_openai = |v: &Value| {
            if target == Protocol::BedrockConverse {
                bedrock::response_to_openai(v, &format!("chatcmpl-{rid}"), &fallback_model)
            } else {
                v.clone()
            }
        };
        if proto == Protocol::AnthropicMessages {
            anthropic::response_from_openai(&as_openai(&v), &fallback_model, &names).map_err(|e| GatewayError::bad_gateway(e.0))?
        } else {
            as_openai(&v)
        }
    } else if target == Protocol::BedrockConverse {
        let (kind, message) = bedrock::error_message(rparts.headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()), &bytes);
        if proto == Protocol::AnthropicMessages {
            serde_json::json!({"type": "error", "error": {"type": anthropic::error_type(status.as_u16()), "message": format!("{kind}: {message}")}})
        } else {
            serde_json::json!({"error": {"message": message, "type": kind, "code": kind}})
        }
    } else {
        anthropic::error_from_openai(status.as_u16(), &bytes)
    };
    let out = Bytes::from(serde_json::to_vec(&converted).unwrap_or_default());
    rparts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rparts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Response::from_parts(rparts, Full::new(out).map_err(|never| match never {}).boxed_unsync()))
}

fn request_body_for(rb: &aigw_model::route::RequestBodyOverrides, proto: Protocol) -> Option<&serde_json::Map<String, Value>> {
    match proto {
        Protocol::OpenAiChat => rb.openai_chat.as_ref(),
        Protocol::OpenAiResponses => rb.openai_responses.as_ref(),
        Protocol::OpenAiEmbeddings => rb.openai_embeddings.as_ref(),
        Protocol::AnthropicMessages | Protocol::AnthropicCountTokens => rb.anthropic_messages.as_ref(),
        Protocol::BedrockConverse => rb.bedrock_converse.as_ref(),
        Protocol::Passthrough => rb.passthrough.as_ref(),
    }
}

/// Status code helper for callers that only need a plain response.
pub fn status_only(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::pct_decode("a%20b+c%2Fd%zz%"), "a b c/d%zz%");
    }
}
