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

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::access_log::{AccessLog, Entry};
use crate::upstream::Upstreams;

use crate::errors::{GatewayError, error_response};
use crate::forward::forward;
use crate::reqvars::{RequestVars, pct_decode};
use crate::router::MatchInput;
use crate::runtime::RuntimeConfig;
use aigw_llm::protocol::{self};

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
    pub fn entry(&self, status: u16) -> Entry {
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
