//! Fake LLM providers on 127.0.0.1:0 (plain or TLS with a self-signed certificate and
//! ALPN h2/http1.1). They record every request, count connections and concurrency,
//! track stream progress, and reject what the real provider would reject.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or_default()
    }
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.path_and_query.split_once('?')?.1;
        q.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.replace("%20", " "))
    }
}

/// Percent-decodes a path segment or query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a fake answers.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: ReplyBody,
    /// Wait this long before sending the response head.
    pub delay: Duration,
}

pub enum ReplyBody {
    Json(Value),
    /// Chunks written one by one, each after its delay; `fail` ends the body with an
    /// error (the connection is cut mid-body) instead of a clean end.
    Stream {
        content_type: &'static str,
        chunks: Vec<(Duration, Bytes)>,
        fail: bool,
    },
}

impl Reply {
    pub fn json(status: StatusCode, v: Value) -> Reply {
        Reply { status, headers: Vec::new(), body: ReplyBody::Json(v), delay: Duration::ZERO }
    }
    pub fn sse(chunks: Vec<(Duration, Bytes)>) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ReplyBody::Stream { content_type: "text/event-stream", chunks, fail: false },
            delay: Duration::ZERO,
        }
    }
    pub fn with_header(mut self, k: &'static str, v: impl Into<String>) -> Reply {
        self.headers.push((k, v.into()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    pub fn failing(mut self) -> Reply {
        if let ReplyBody::Stream { fail, .. } = &mut self.body {
            *fail = true;
        }
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Counters a test can read.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Stream chunks the client side accepted.
    pub chunks_sent: AtomicUsize,
    pub streams_finished: AtomicUsize,
    /// Streams whose reader went away before the last chunk.
    pub streams_abandoned: AtomicUsize,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub tls: bool,
    pub stats: Arc<Stats>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

fn self_signed() -> Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("self-signed certificate");
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key der");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

impl FakeServer {
    pub async fn start(handler: Handler) -> FakeServer {
        Self::start_inner(handler, false).await
    }

    /// TLS with a self-signed certificate (not trusted by any root store).
    pub async fn start_tls(handler: Handler) -> FakeServer {
        Self::start_inner(handler, true).await
    }

    async fn start_inner(handler: Handler, tls: bool) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        Self::serve(listener, handler, tls)
    }

    /// Serves `handler` on a listener the caller bound (e.g. the `fake-llm` binary on
    /// `0.0.0.0:PORT`).
    pub fn serve(listener: tokio::net::TcpListener, handler: Handler, tls: bool) -> FakeServer {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(Stats::default());
        let acceptor = tls.then(|| tokio_rustls::TlsAcceptor::from(self_signed()));
        let (reqs, st) = (requests.clone(), stats.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let (handler, reqs, st, acceptor) = (handler.clone(), reqs.clone(), st.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, reqs, st) = (handler.clone(), reqs.clone(), st.clone());
                        async move { Ok::<_, Infallible>(serve_one(req, handler, reqs, st).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        FakeServer { addr, tls, stats, requests, task }
    }

    /// `http://127.0.0.1:PORT` (or `https://`): a bare origin.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the fake received no request")
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

struct InFlight(Arc<Stats>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_one(req: Request<Incoming>, handler: Handler, reqs: Arc<Mutex<Vec<Recorded>>>, st: Arc<Stats>) -> Response<FakeBody> {
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(st.clone());
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body,
    };
    reqs.lock().unwrap().push(rec.clone());
    let reply = handler(&rec);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut b = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        b = b.header(*k, v);
    }
    match reply.body {
        ReplyBody::Json(v) => {
            drop(guard);
            b.header("content-type", "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())).map_err(|n| match n {}).boxed())
                .unwrap()
        }
        ReplyBody::Stream { content_type, chunks, fail } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            tokio::spawn(async move {
                let _guard = guard;
                for (delay, c) in chunks {
                    tokio::time::sleep(delay).await;
                    if tx.send(Ok(Frame::data(c))).await.is_err() {
                        st.streams_abandoned.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    st.chunks_sent.fetch_add(1, Ordering::SeqCst);
                }
                if fail {
                    let _ = tx.send(Err(std::io::Error::other("fake upstream died mid-stream"))).await;
                    return;
                }
                st.streams_finished.fetch_add(1, Ordering::SeqCst);
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            b.header("content-type", content_type).body(BodyExt::boxed(body)).unwrap()
        }
    }
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Reply {
    Reply::json(status, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// How a provider authenticates.
#[derive(Debug, Clone)]
pub enum AuthCheck {
    Bearer(String),
    Header(&'static str, String),
    Query(&'static str, String),
}

/// A provider speaking the OpenAI protocol family, strictly.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub name: &'static str,
    pub auth: AuthCheck,
    pub chat: Option<&'static str>,
    pub responses: Option<&'static str>,
    pub embeddings: Option<&'static str>,
    /// OpenAI: `max_tokens` on chat is rejected (reasoning models require max_completion_tokens).
    pub reject_max_tokens: bool,
    /// Azure takes the model from the deployment URL and needs `api-version`.
    pub azure: bool,
    /// OpenRouter-style SSE comment keep-alives between events.
    pub sse_comments: bool,
    /// Content deltas per streamed answer, and the pause before each chunk.
    pub deltas: usize,
    pub chunk_delay: Duration,
}

impl ProviderSpec {
    pub fn new(name: &'static str, auth: AuthCheck) -> ProviderSpec {
        ProviderSpec {
            name,
            auth,
            chat: Some("/v1/chat/completions"),
            responses: None,
            embeddings: None,
            reject_max_tokens: false,
            azure: false,
            sse_comments: false,
            deltas: 3,
            chunk_delay: Duration::ZERO,
        }
    }

    /// OpenAI itself: chat, Responses and embeddings, strict about `max_tokens`.
    pub fn openai(key: &str) -> ProviderSpec {
        ProviderSpec {
            responses: Some("/v1/responses"),
            embeddings: Some("/v1/embeddings"),
            reject_max_tokens: true,
            ..ProviderSpec::new("openai", AuthCheck::Bearer(key.into()))
        }
    }

    pub fn handler(self) -> Handler {
        Arc::new(move |r: &Recorded| provider_reply(&self, r))
    }
}

/// The SSE bytes of a chat answer: role chunk, `deltas` content chunks, finish chunk,
/// the usage chunk when asked for, `[DONE]`.
pub fn chat_stream_chunks(spec: &ProviderSpec, model: &str, include_usage: bool) -> Vec<(Duration, Bytes)> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model, "system_fingerprint": spec.name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null})
        )
    };
    let d = spec.chunk_delay;
    let mut out = vec![(d, Bytes::from(chunk(json!({"role": "assistant", "content": ""}), Value::Null)))];
    for i in 0..spec.deltas {
        let mut text = chunk(json!({"content": format!("part{i} ")}), Value::Null);
        if spec.sse_comments {
            text = format!(": OPENROUTER PROCESSING\n\n{text}");
        }
        out.push((d, Bytes::from(text)));
    }
    out.push((d, Bytes::from(chunk(json!({}), json!("stop")))));
    if include_usage {
        let u = json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                       "usage": {"prompt_tokens": 11, "completion_tokens": spec.deltas, "total_tokens": 11 + spec.deltas}});
        out.push((d, Bytes::from(format!("data: {u}\n\n"))));
    }
    out.push((d, Bytes::from_static(b"data: [DONE]\n\n")));
    out
}

fn provider_reply(spec: &ProviderSpec, r: &Recorded) -> Reply {
    let authed = match &spec.auth {
        AuthCheck::Bearer(k) => r.header("authorization") == Some(&format!("Bearer {k}")),
        AuthCheck::Header(h, v) => r.header(h) == Some(v.as_str()),
        AuthCheck::Query(q, v) => r.query(q).as_deref() == Some(v.as_str()),
    };
    if !authed {
        return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", "invalid_request_error", "invalid_api_key");
    }
    let path = r.path();
    if r.method != "POST" {
        return openai_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", "invalid_request_error", "method_not_allowed");
    }
    if !r.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return openai_error(StatusCode::BAD_REQUEST, "content-type must be application/json", "invalid_request_error", "bad_content_type");
    }
    if spec.azure && r.query("api-version").is_none() {
        return openai_error(StatusCode::NOT_FOUND, "Resource not found (api-version is required)", "invalid_request_error", "404");
    }
    let body: Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("We could not parse the JSON body of your request: {e}"),
                "invalid_request_error",
                "invalid_json",
            );
        }
    };
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    let model = match (model, spec.azure) {
        (Some(m), _) => m,
        (None, true) => "gpt-4-azure-deployment".to_owned(),
        (None, false) => {
            return openai_error(StatusCode::BAD_REQUEST, "you must provide a model parameter", "invalid_request_error", "missing_model");
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    if Some(path) == spec.chat {
        if !body.get("messages").is_some_and(Value::is_array) {
            return openai_error(StatusCode::BAD_REQUEST, "'messages' is a required property", "invalid_request_error", "missing_messages");
        }
        if spec.reject_max_tokens && body.get("max_tokens").is_some() {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
            );
        }
        if body.get("stream_options").is_some() && !stream {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                "invalid_value",
            );
        }
        if stream {
            let usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
            return Reply::sse(chat_stream_chunks(spec, &model, usage));
        }
        return Reply::json(
            StatusCode::OK,
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model, "system_fingerprint": spec.name,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "1+1 equals 2.", "refusal": null}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 23, "completion_tokens": 8, "total_tokens": 31}}),
        );
    }
    if Some(path) == spec.responses {
        if body.get("input").is_none() {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'input'.",
                "invalid_request_error",
                "missing_required_parameter",
            );
        }
        if body.get("stream_options").is_some() {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "Unknown parameter: 'stream_options'.",
                "invalid_request_error",
                "unknown_parameter",
            );
        }
        if body.get("max_completion_tokens").is_some() || body.get("max_tokens").is_some() {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "Unknown parameter: use 'max_output_tokens'.",
                "invalid_request_error",
                "unknown_parameter",
            );
        }
        let usage = json!({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 12,
                           "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 62});
        let resp = json!({"id": "resp_1", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "Hi!", "annotations": []}]}], "usage": usage});
        if stream {
            let ev = |t: &str, v: Value| Bytes::from(format!("event: {t}\ndata: {v}\n\n"));
            let d = spec.chunk_delay;
            return Reply::sse(vec![
                (
                    d,
                    ev(
                        "response.created",
                        json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "model": model, "status": "in_progress"}}),
                    ),
                ),
                (
                    d,
                    ev(
                        "response.output_text.delta",
                        json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hi!"}),
                    ),
                ),
                (d, ev("response.completed", json!({"type": "response.completed", "sequence_number": 2, "response": resp}))),
            ]);
        }
        return Reply::json(StatusCode::OK, resp);
    }
    if Some(path) == spec.embeddings {
        if body.get("input").is_none() {
            return openai_error(StatusCode::BAD_REQUEST, "'input' is a required property", "invalid_request_error", "missing_input");
        }
        if stream {
            return openai_error(StatusCode::BAD_REQUEST, "Unknown parameter: 'stream'.", "invalid_request_error", "unknown_parameter");
        }
        return Reply::json(
            StatusCode::OK,
            json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0091, 0.0157]}],
                   "model": model, "usage": {"prompt_tokens": 2, "total_tokens": 2}}),
        );
    }
    openai_error(StatusCode::NOT_FOUND, &format!("Invalid URL (POST {path})"), "invalid_request_error", "unknown_url")
}

/// A strict OpenAI-compatible chat provider at `<prefix>/chat/completions` with Bearer `key`;
/// answers name the fake (`system_fingerprint`) so tests can tell upstreams apart.
pub fn openai_chat(name: &'static str, key: &str, prefix: &str) -> Handler {
    let path: &'static str = Box::leak(format!("{prefix}/chat/completions").into_boxed_str());
    ProviderSpec { chat: Some(path), ..ProviderSpec::new(name, AuthCheck::Bearer(key.into())) }.handler()
}

/// Top-level fields OpenAI's chat endpoint accepts; anything else is a 400, like the real API.
const OPENAI_CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "verbosity",
    "parallel_tool_calls",
    "prompt_cache_key",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "functions",
    "function_call",
];

/// Rejects fields the real OpenAI API does not know (e.g. Anthropic's `system`, `top_k`).
pub fn strict_openai(key: &str) -> Handler {
    let inner = ProviderSpec::openai(key).handler();
    Arc::new(move |r: &Recorded| {
        if r.path() == "/v1/chat/completions"
            && let Some(obj) = r.json().as_object()
            && let Some(bad) = obj.keys().find(|k| !OPENAI_CHAT_FIELDS.contains(&k.as_str()))
        {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("Unrecognized request argument supplied: {bad}"),
                "invalid_request_error",
                "unknown_parameter",
            );
        }
        inner(r)
    })
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Reply {
    Reply::json(status, json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}))
}

const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "output_config",
    "output_format",
    "context_management",
];

/// A strict Anthropic Messages API: `x-api-key` and `anthropic-version` required, unknown
/// fields rejected, `model`/`max_tokens`/`messages` required; `/v1/messages/count_tokens` too.
pub fn anthropic(key: &str) -> Handler {
    let key = key.to_owned();
    Arc::new(move |r: &Recorded| {
        if r.header("x-api-key") != Some(key.as_str()) {
            return anthropic_error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key");
        }
        if r.header("anthropic-version").is_none() {
            return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version: header is required");
        }
        let body = r.json();
        let Some(obj) = body.as_object() else {
            return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "The request body is not valid JSON.");
        };
        if let Some(bad) = obj.keys().find(|k| !ANTHROPIC_FIELDS.contains(&k.as_str())) {
            return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("{bad}: Extra inputs are not permitted"));
        }
        for f in ["model", "messages"] {
            if !obj.contains_key(f) {
                return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("{f}: Field required"));
            }
        }
        match r.path() {
            "/v1/messages/count_tokens" => return Reply::json(StatusCode::OK, json!({"input_tokens": 42})),
            "/v1/messages" => {}
            p => return anthropic_error(StatusCode::NOT_FOUND, "not_found_error", &format!("Not found: {p}")),
        }
        if !obj.contains_key("max_tokens") {
            return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens: Field required");
        }
        let model = obj["model"].as_str().unwrap_or("claude").to_owned();
        let usage = json!({"input_tokens": 50, "output_tokens": 30, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100});
        if obj.get("stream").and_then(Value::as_bool) == Some(true) {
            let ev = |t: &str, v: Value| (Duration::ZERO, Bytes::from(format!("event: {t}\ndata: {v}\n\n")));
            return Reply::sse(vec![
                ev(
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "content": [],
                    "model": model, "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 50, "output_tokens": 1,
                    "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100}}}),
                ),
                ev("ping", json!({"type": "ping"})),
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "1+1 "}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "equals 2."}}),
                ),
                ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                ev(
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
                ),
                ev("message_stop", json!({"type": "message_stop"})),
            ]);
        }
        Reply::json(
            StatusCode::OK,
            json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [{"type": "text", "text": "1+1 equals 2."}],
                   "stop_reason": "end_turn", "stop_sequence": null, "usage": usage}),
        )
    })
}

/// An OpenAI chat backend that plays one tool-use turn: without a `tool` message in the
/// history it streams a `get_weather` call for Oslo; with one, it streams the answer.
/// Non-streamed requests get the same turns as plain completions.
pub fn openai_weather_agent(key: &str) -> Handler {
    let key = key.to_owned();
    Arc::new(move |r: &Recorded| {
        if r.header("authorization") != Some(&format!("Bearer {key}")) {
            return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", "invalid_request_error", "invalid_api_key");
        }
        let body = r.json();
        if let Some(bad) = body.as_object().and_then(|o| o.keys().find(|k| !OPENAI_CHAT_FIELDS.contains(&k.as_str()))) {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("Unrecognized request argument supplied: {bad}"),
                "invalid_request_error",
                "unknown_parameter",
            );
        }
        let msgs = body["messages"].as_array().cloned().unwrap_or_default();
        let answered = msgs.iter().any(|m| m["role"] == "tool");
        let stream = body["stream"] == true;
        let usage =
            json!({"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52, "prompt_tokens_details": {"cached_tokens": 8}});
        let chunk = |delta: Value, finish: Value| {
            Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-w", "object": "chat.completion.chunk", "model": "gpt-4o",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            ))
        };
        let z = Duration::ZERO;
        if !answered {
            if !stream {
                return Reply::json(
                    StatusCode::OK,
                    json!({"id": "chatcmpl-w", "object": "chat.completion", "model": "gpt-4o",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_w1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}, "finish_reason": "tool_calls"}], "usage": usage}),
                );
            }
            return Reply::sse(vec![
                (z, chunk(json!({"role": "assistant", "content": "Let me check."}), Value::Null)),
                (
                    z,
                    chunk(
                        json!({"tool_calls": [{"index": 0, "id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                        Value::Null,
                    ),
                ),
                (z, chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), Value::Null)),
                (z, chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}), Value::Null)),
                (z, chunk(json!({}), json!("tool_calls"))),
                (
                    z,
                    Bytes::from(format!(
                        "data: {}\n\n",
                        json!({"id": "chatcmpl-w", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [], "usage": usage})
                    )),
                ),
                (z, Bytes::from_static(b"data: [DONE]\n\n")),
            ]);
        }
        let result = msgs.iter().rev().find(|m| m["role"] == "tool").and_then(|m| m["content"].as_str()).unwrap_or("?").to_owned();
        let text = format!("It is {result} in Oslo.");
        if !stream {
            return Reply::json(
                StatusCode::OK,
                json!({"id": "chatcmpl-w2", "object": "chat.completion", "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": usage}),
            );
        }
        Reply::sse(vec![
            (z, chunk(json!({"role": "assistant", "content": ""}), Value::Null)),
            (z, chunk(json!({"content": text}), Value::Null)),
            (z, chunk(json!({}), json!("stop"))),
            (
                z,
                Bytes::from(format!(
                    "data: {}\n\n",
                    json!({"id": "chatcmpl-w2", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [], "usage": usage})
                )),
            ),
            (z, Bytes::from_static(b"data: [DONE]\n\n")),
        ])
    })
}
