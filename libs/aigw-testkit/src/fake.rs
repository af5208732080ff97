//! Fake LLM providers on 127.0.0.1:0 that record every request and reject what the
//! real provider would reject.

use std::convert::Infallible;
use std::net::SocketAddr;
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
}

/// What a fake answers.
pub enum Reply {
    Json(StatusCode, Value),
    /// Chunks written one by one, each after its delay.
    Stream {
        status: StatusCode,
        content_type: &'static str,
        chunks: Vec<(Duration, Bytes)>,
    },
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct FakeServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(handler: Handler) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (handler, reqs) = (handler.clone(), reqs.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (handler, reqs) = (handler.clone(), reqs.clone());
                        async move { Ok::<_, Infallible>(serve_one(req, handler, reqs).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeServer { addr, requests, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
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

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve_one(req: Request<Incoming>, handler: Handler, reqs: Arc<Mutex<Vec<Recorded>>>) -> Response<FakeBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    reqs.lock().unwrap().push(rec.clone());
    match handler(&rec) {
        Reply::Json(status, v) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())).boxed())
            .unwrap(),
        Reply::Stream { status, content_type, chunks } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                for (delay, c) in chunks {
                    tokio::time::sleep(delay).await;
                    if tx.send(Ok(Frame::data(c))).await.is_err() {
                        return;
                    }
                }
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            Response::builder().status(status).header("content-type", content_type).body(BodyExt::boxed(body)).unwrap()
        }
    }
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Reply {
    Reply::Json(status, json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// A strict OpenAI-compatible provider: Bearer `key` required, JSON body with `model`
/// and `messages` at `<prefix>/chat/completions`; the answer names the fake (`name`) in
/// `system_fingerprint` so tests can tell which upstream served a request.
pub fn openai_chat(name: &str, key: &str, prefix: &str) -> Handler {
    let (name, key, prefix) = (name.to_owned(), key.to_owned(), prefix.to_owned());
    Arc::new(move |r: &Recorded| {
        if r.header("authorization") != Some(&format!("Bearer {key}")) {
            return openai_error(StatusCode::UNAUTHORIZED, "Incorrect API key provided", "invalid_request_error", "invalid_api_key");
        }
        let path = r.path_and_query.split('?').next().unwrap_or_default();
        if r.method != "POST" || path != format!("{prefix}/chat/completions") {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!("Invalid URL ({} {path})", r.method),
                "invalid_request_error",
                "unknown_url",
            );
        }
        if !r.header("content-type").is_some_and(|c| c.starts_with("application/json")) {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "content-type must be application/json",
                "invalid_request_error",
                "bad_content_type",
            );
        }
        let body = r.json();
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return openai_error(StatusCode::BAD_REQUEST, "you must provide a model parameter", "invalid_request_error", "missing_model");
        };
        if !body.get("messages").is_some_and(Value::is_array) {
            return openai_error(StatusCode::BAD_REQUEST, "'messages' is a required property", "invalid_request_error", "missing_messages");
        }
        Reply::Json(
            StatusCode::OK,
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model, "system_fingerprint": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "1+1 equals 2."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 23, "completion_tokens": 8, "total_tokens": 31}}),
        )
    })
}
