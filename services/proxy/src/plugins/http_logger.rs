//! The `http-logger` route plugin (APISIX's schema subset) with `logging.summaries` /
//! `logging.payloads` (`apisix-behaviour.md` §8), on the completion phase.
//!
//! A completed request of a route with `http-logger` becomes one JSON entry, serialized
//! at once (no copies of the record) and pushed onto that logger's bounded queue; a
//! full queue drops its *oldest* entry (counted). One task per logger configuration
//! sends batches (`batch_max_size` entries, or whatever is queued after
//! `inactive_timeout` seconds) as a JSON POST — one entry as an object, several as an
//! array, as APISIX does — retrying a failed batch `max_retry_count` times with
//! exponential backoff from `retry_delay`, then dropping it (counted). Nothing here ever
//! makes a client wait.
//!
//! Credentials are redacted in every entry: the client's credential headers
//! (`authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, `cookie`,
//! `proxy-authorization`), any header named in the route's `auth.header`, and query
//! parameters named in the route's `auth.query` (plus `key`, `api_key`, `api-key`).
//! The logger's own `auth_header` only goes into the POST's `Authorization` header.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aigw_model::route::{HttpLoggerConfig, from_value_at};
use aigw_model::secrets::REDACTED;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::phases::{CompleteCx, Needs, Plugin, PluginEnv, PluginError};
use crate::record::{Record, STREAM_BODY_CAP};

/// Entries a logger keeps waiting at most (beyond: the oldest is dropped).
pub const QUEUE_CAP: usize = 10_000;
/// Client headers that carry credentials, always redacted.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"];
const CREDENTIAL_QUERY: &[&str] = &["key", "api_key", "api-key"];

/// Counters of every logger of the node.
#[derive(Debug, Default)]
pub struct LoggerStats {
    pub sent: AtomicU64,
    /// Dropped from a full queue.
    pub dropped: AtomicU64,
    /// Lost with a batch that failed every retry.
    pub failed: AtomicU64,
}

type HttpsClient = aigw_net::client::HttpsClient<Full<Bytes>>;

struct Logger {
    conf: HttpLoggerConfig,
    queue: Mutex<VecDeque<Vec<u8>>>,
    wake: Notify,
    stats: Arc<LoggerStats>,
}

impl Logger {
    fn push(&self, entry: Vec<u8>) {
        let len = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= QUEUE_CAP {
                q.pop_front();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(entry);
            q.len()
        };
        if len >= self.conf.batch_max_size as usize {
            self.wake.notify_one();
        }
    }

    fn take_batch(&self) -> Vec<Vec<u8>> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(self.conf.batch_max_size as usize);
        q.drain(..n).collect()
    }

    fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn run(self: Arc<Self>, client: HttpsClient) {
        let inactive = Duration::from_secs(self.conf.inactive_timeout.unwrap_or(5).max(1));
        loop {
            if self.queued() < self.conf.batch_max_size as usize {
                // Wait for a full batch, or send what there is after `inactive_timeout`.
                let _ = tokio::time::timeout(inactive, self.wake.notified()).await;
            }
            let batch = self.take_batch();
            if batch.is_empty() {
                continue;
            }
            self.send(&client, batch).await;
        }
    }

    fn body(batch: &[Vec<u8>]) -> Bytes {
        if batch.len() == 1 {
            return Bytes::from(batch[0].clone());
        }
        let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.push(b']');
        Bytes::from(out)
    }

    async fn send(&self, client: &HttpsClient, batch: Vec<Vec<u8>>) {
        let body = Logger::body(&batch);
        let timeout = Duration::from_secs(self.conf.timeout.max(1));
        let mut delay = Duration::from_secs(self.conf.retry_delay.max(1));
        for attempt in 0..=self.conf.max_retry_count {
            match self.post(client, body.clone(), timeout).await {
                Ok(()) => {
                    self.stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    if attempt == self.conf.max_retry_count {
                        tracing::warn!(uri = %redacted_uri(&self.conf.uri), entries = batch.len(), "http-logger batch dropped: {e}");
                        self.stats.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        return;
                    }
                    tracing::debug!(uri = %redacted_uri(&self.conf.uri), "http-logger post failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn post(&self, client: &HttpsClient, body: Bytes, timeout: Duration) -> Result<(), String> {
        let mut req = http::Request::post(self.conf.uri.as_str()).body(Full::new(body)).map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in &self.conf.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.insert(k, v);
            }
        }
        if let Some(a) = &self.conf.auth_header
            && let Ok(mut v) = HeaderValue::from_str(a)
        {
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        match tokio::time::timeout(timeout, client.request(req)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(format!("cannot reach the log server: {e}")),
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("the log server answered {}", r.status())),
        }
    }
}

/// The URI without its query (which may carry a key).
fn redacted_uri(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

fn client() -> HttpsClient {
    // Only a TLS library that cannot do TLS 1.2/1.3 with ring fails here.
    aigw_net::client::https(&aigw_net::client::Options::default().max_idle_per_host(4)).expect("ring supports the default TLS versions")
}

/// The node's loggers: one (queue and sending task) per distinct configuration, shared
/// by the routes that use it and kept across config swaps.
#[derive(Default)]
pub struct Loggers {
    loggers: RwLock<HashMap<String, Arc<Logger>>>,
    client: std::sync::OnceLock<HttpsClient>,
    pub stats: Arc<LoggerStats>,
}

impl Loggers {
    fn logger(&self, conf: &HttpLoggerConfig) -> Option<Arc<Logger>> {
        let key = serde_json::to_string(conf).unwrap_or_default();
        if let Some(l) = self.loggers.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(l.clone());
        }
        // The sending task needs a runtime: completions run on the proxy's.
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let mut map = self.loggers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(&key) {
            return Some(l.clone());
        }
        let l = Arc::new(Logger { conf: conf.clone(), queue: Mutex::default(), wake: Notify::new(), stats: self.stats.clone() });
        let c = self.client.get_or_init(client).clone();
        rt.spawn(l.clone().run(c));
        map.insert(key, l.clone());
        Some(l)
    }
}

/// `http-logger` on one route.
pub struct HttpLogger {
    conf: HttpLoggerConfig,
    loggers: Arc<Loggers>,
    /// Found on the first completion (the sending task starts on the proxy's runtime).
    logger: std::sync::OnceLock<Arc<Logger>>,
    /// The route's `logging.summaries` / `logging.payloads`.
    summaries: bool,
    payloads: bool,
    /// Header and query names whose values are credentials: the fixed lists plus the
    /// route's own `auth.header` / `auth.query`, of every instance.
    secret_headers: Vec<String>,
    secret_query: Vec<String>,
}

impl std::fmt::Debug for HttpLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLogger").field("uri", &redacted_uri(&self.conf.uri)).finish()
    }
}

/// Compiles `http-logger` for a route (validated by `aigw_model`).
pub fn factory(conf: &Value, env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
    let conf: HttpLoggerConfig = from_value_at("plugins.http-logger", conf).map_err(|e| PluginError::new("http-logger", e.message))?;
    let mut secret_headers: Vec<String> = CREDENTIAL_HEADERS.iter().map(|s| (*s).to_owned()).collect();
    let mut secret_query: Vec<String> = CREDENTIAL_QUERY.iter().map(|s| (*s).to_owned()).collect();
    let (mut summaries, mut payloads) = (false, false);
    if let Some(spec) = env.route {
        if let Some(l) = &spec.ai_proxy.logging {
            (summaries, payloads) = (l.summaries, l.payloads);
        }
        let auths = std::iter::once(&spec.ai_proxy.auth).chain(spec.multi.iter().flat_map(|m| m.instances.iter().map(|i| &i.auth)));
        for auth in auths {
            secret_headers.extend(auth.header.iter().flatten().map(|(k, _)| k.to_ascii_lowercase()));
            secret_query.extend(auth.query.iter().flatten().map(|(k, _)| k.clone()));
        }
    }
    Ok(Arc::new(HttpLogger {
        conf,
        loggers: env.resources.get::<Loggers>(),
        logger: std::sync::OnceLock::new(),
        summaries,
        payloads,
        secret_headers,
        secret_query,
    }))
}

impl Plugin for HttpLogger {
    fn name(&self) -> &str {
        "http-logger"
    }

    fn priority(&self) -> i32 {
        410
    }

    fn needs(&self) -> Needs {
        Needs {
            request_headers: true,
            request_body: self.conf.include_req_body,
            response_body: self.conf.include_resp_body.then_some(STREAM_BODY_CAP),
            ..Needs::default()
        }
    }

    fn complete(&self, cx: &mut CompleteCx<'_>) {
        let logger = match self.logger.get() {
            Some(l) => l,
            None => match self.loggers.logger(&self.conf) {
                Some(l) => self.logger.get_or_init(|| l),
                None => return,
            },
        };
        logger.push(self.entry(cx.rec));
    }
}

#[derive(Serialize)]
struct Request<'a> {
    method: &'a str,
    uri: String,
    url: String,
    headers: Map<String, Value>,
    querystring: Map<String, Value>,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

#[derive(Serialize)]
struct Response<'a> {
    status: u16,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    route_id: &'a str,
    /// The consumer's name (never its key), when key-auth identified one.
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_group: Option<&'a str>,
    request_id: &'a str,
    client_ip: String,
    start_time: u64,
    /// Milliseconds, as APISIX.
    latency: f64,
    upstream_latency: Option<u64>,
    upstream: &'a str,
    upstream_status: Option<u16>,
    request: Request<'a>,
    response: Response<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_summary: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    llm_response_text: Option<Value>,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

/// APISIX's `llm_summary` (numbers as JSON numbers).
fn summary(r: &Record) -> Value {
    json!({
        "request_model": r.request_llm_model,
        "model": r.llm_model,
        "duration": ms(r.ttft),
        "prompt_tokens": r.usage.prompt,
        "completion_tokens": r.usage.completion,
        "total_tokens": r.usage.total,
        "upstream_response_time": ms(r.upstream_time),
        "stream": r.stream,
        "tool_count": r.tool_count,
        "has_tool_calls": r.has_tool_calls,
        "end_user_id": r.end_user_id,
        "cache_read_input_tokens": r.usage.cache_read,
        "cache_creation_input_tokens": r.usage.cache_creation,
        "reasoning_tokens": r.usage.reasoning,
        "cost": r.cost,
        "content_risk_level": "",
    })
}

fn redact_query(q: &str, secret: &[String]) -> (String, Map<String, Value>) {
    let mut out = Vec::new();
    let mut map = Map::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let hidden = secret.iter().any(|s| s.eq_ignore_ascii_case(k));
        let v = if hidden { REDACTED } else { v };
        out.push(format!("{k}={v}"));
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    (out.join("&"), map)
}

impl HttpLogger {
    /// One log entry as JSON bytes.
    pub fn entry(&self, r: &Record) -> Vec<u8> {
        let (secret_headers, secret_query) = (&self.secret_headers, &self.secret_query);
        let mut parts = r.request_line.split(' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let (q, querystring) = redact_query(query, secret_query);
        let uri = if q.is_empty() { path.to_owned() } else { format!("{path}?{q}") };
        let mut headers = Map::new();
        let mut host = String::new();
        if let Some(h) = &r.headers {
            for (k, v) in h {
                let name = k.as_str();
                let shown = if secret_headers.iter().any(|s| s == name) {
                    REDACTED.to_owned()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                if name == "host" {
                    host.clone_from(&shown);
                }
                headers.insert(name.to_owned(), Value::String(shown));
            }
        }
        let (summaries, payloads) = (self.summaries, self.payloads);
        let e = Entry {
            route_id: &r.route_id,
            consumer: r.consumer.as_ref().map(|c| &*c.name),
            consumer_group: r.consumer.as_ref().and_then(|c| c.group.as_deref()),
            request_id: &r.request_id,
            client_ip: r.remote_addr.to_string(),
            start_time: r.start.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            latency: r.request_time.as_secs_f64() * 1000.0,
            upstream_latency: r.upstream_time.map(|d| d.as_millis() as u64),
            upstream: &r.upstream_addr,
            upstream_status: r.upstream_status,
            request: Request {
                method,
                url: format!("http://{}{uri}", if host.is_empty() { "localhost" } else { &host }),
                uri,
                headers,
                querystring,
                size: r.request_body.as_ref().map_or(0, |b| b.len()),
                body: r.request_body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            },
            response: Response {
                status: r.status,
                size: r.body_bytes_sent,
                body: r.response_body.as_ref().map(|b| String::from_utf8_lossy(b)),
            },
            llm_summary: summaries.then(|| summary(r)),
            llm_request: payloads.then(|| json!({"messages": r.llm_request.clone().unwrap_or(Value::Null), "stream": r.stream})),
            llm_response_text: payloads.then(|| json!({"content": r.response_text.clone().unwrap_or_default()})),
        };
        serde_json::to_vec(&e).unwrap_or_default()
    }
}
