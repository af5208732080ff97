//! A small HTTP/1.1 client for tests.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request; a transport error is returned as Err (e.g. nothing listening).
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> anyhow::Result<Reply> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(Full::new(body.into()))?).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> anyhow::Result<Reply> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, serde_json::to_vec(body)?).await
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// A response whose body is read frame by frame (to observe streaming).
pub struct Streaming {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Streaming {
    /// The next data frame, or None at the end.
    pub async fn next_data(&mut self) -> Option<Bytes> {
        loop {
            match self.body.frame().await? {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        return Some(d);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Everything that is left, as text.
    pub async fn rest(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(d) = self.next_data().await {
            out.extend_from_slice(&d);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub async fn post_stream(url: &str, headers: &[(&str, &str)], body: &Value) -> anyhow::Result<Streaming> {
    let mut b = Request::builder().method(Method::POST).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?).await?;
    let (parts, body) = resp.into_parts();
    Ok(Streaming { status: parts.status, headers: parts.headers, body })
}
