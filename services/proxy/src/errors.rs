//! Gateway-made errors, in the client's own protocol (CONTRACT §6): OpenAI
//! `{"error":{"message","type","code"}}` or Anthropic `{"type":"error","error":{...}}`.
//! Each error knows whether it came from the client, the upstream or us.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::proxy::ProxyBody;
use aigw_llm::protocol::ClientShape;

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type` (Anthropic's type is derived from the status).
    pub kind: &'static str,
    pub code: &'static str,
    pub from_upstream: bool,
    /// The route, when the error happened after routing.
    pub route_id: Option<String>,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code, from_upstream: false, route_id: None }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", m)
    }
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", "route_not_found", format!("no route matches {path}"))
    }
    pub fn too_large(size: u64, max: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request size {size} is greater than the maximum size {max} allowed"),
        )
    }
    pub fn bad_gateway(m: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_GATEWAY, "api_error", "bad_gateway", m);
        e.from_upstream = true;
        e
    }
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "api_error", "not_implemented", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", m)
    }
    pub fn upstream_timeout(after: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            format!("upstream did not answer within {} ms", after.as_millis()),
        );
        e.from_upstream = true;
        e
    }
    pub fn upstream_connect(err: &dyn std::error::Error) -> Self {
        // The full chain names the cause (refused, DNS, TLS) without any secret.
        let mut msg = err.to_string();
        let mut src = err.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        let mut e = Self::new(StatusCode::BAD_GATEWAY, "api_error", "upstream_unreachable", format!("cannot reach the upstream: {msg}"));
        e.from_upstream = true;
        e
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

pub fn error_response(shape: ClientShape, e: &GatewayError) -> Response<ProxyBody> {
    let body = match shape {
        ClientShape::OpenAi => json!({"error": {"message": e.message, "type": e.kind, "code": e.code}}),
        ClientShape::Anthropic => json!({"type": "error", "error": {"type": anthropic_type(e.status), "message": e.message}}),
    };
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut r = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = e.status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
