//! Errors that end a request before an upstream answer reaches the client. Each knows who
//! caused it (the client, the upstream or us), its status, and whether another upstream
//! could serve the request instead (nothing was sent to the client yet). Their bodies are
//! built by [`aigw_llm::envelope`] in the client's protocol.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use aigw_llm::envelope::{self, Envelope};

/// Who a failed request's error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// A bad request (400, 404, 413, …).
    Client,
    /// The upstream failed or could not be reached.
    Upstream,
    /// The gateway itself.
    Gateway,
}

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type` (the other protocols derive theirs from the status).
    pub kind: &'static str,
    pub code: &'static str,
    pub source: ErrorSource,
    /// Another upstream may serve the request (a connect failure, a timeout before the
    /// first byte, 429, 5xx).
    pub retryable: bool,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, source: ErrorSource, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code, source, retryable: false }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request", ErrorSource::Client, m)
    }
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "route_not_found",
            ErrorSource::Client,
            format!("no route matches {path}"),
        )
    }
    pub fn too_large(size: u64, max: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            ErrorSource::Client,
            format!("request size {size} is greater than the maximum size {max} allowed"),
        )
    }
    pub fn client_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "client_body_timeout",
            ErrorSource::Client,
            format!("the request body did not arrive within {} ms", after.as_millis()),
        )
    }
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "api_error", "not_implemented", ErrorSource::Gateway, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error", ErrorSource::Gateway, m)
    }
    /// The upstream's answer could not be used (not framed, over the cap, not convertible).
    pub fn bad_gateway(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", code, ErrorSource::Upstream, m)
    }
    /// The upstream could not be reached or failed before answering.
    pub fn upstream(status: StatusCode, code: &'static str, retryable: bool, m: impl Into<String>) -> Self {
        let mut e = Self::new(status, "api_error", code, ErrorSource::Upstream, m);
        e.retryable = retryable;
        e
    }
}

/// A gateway-made error response in the client's protocol (the body is one whole JSON).
pub fn error_response(env: Envelope, e: &GatewayError) -> Response<Bytes> {
    let status = e.status.as_u16();
    let body = envelope::json(env, &envelope::Error { status, kind: Some(e.kind), code: e.code, message: &e.message });
    let len = body.len();
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = e.status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if env == Envelope::Bedrock {
        r.headers_mut().insert(HeaderName::from_static("x-amzn-errortype"), HeaderValue::from_static(envelope::bedrock_type(status)));
    }
    r
}
