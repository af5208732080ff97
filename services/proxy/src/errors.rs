//! Answers the gateway makes itself: errors that end a request before an upstream answer
//! reaches the client, and refusals from any plugin phase (key-auth's 401, a rate limit's
//! 429 with `retry-after`). Each knows who caused it (the client, the upstream or us), its
//! status and the headers it carries. Their bodies are built by [`aigw_llm::envelope`] in
//! the client's protocol. Whether another upstream may be tried is not decided here but by
//! [`aigw_balance::retry::decide`], from the attempt's outcome.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use aigw_llm::envelope::{self, Class, Envelope};

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
    /// A policy refusal: the protocols' error types follow it, not the status.
    pub class: Option<Class>,
    /// Sent with the answer (`retry-after`, `X-AI-RateLimit-*`, `WWW-Authenticate`).
    /// Empty (and unallocated) for most errors.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, source: ErrorSource, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, code, source, class: None, headers: Vec::new() }
    }

    /// A plugin's refusal of the request (or of one attempt): `status` as configured, the
    /// protocols' types from `class`, `code` as OpenAI's `code`.
    pub fn refused(status: StatusCode, class: Class, code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(status, "", code, ErrorSource::Client, message);
        e.kind = class.openai();
        e.class = Some(class);
        e
    }

    /// Adds a header to the answer (a value that is not a valid header value is dropped).
    pub fn with_header(mut self, name: HeaderName, value: impl TryInto<HeaderValue>) -> Self {
        if let Ok(v) = value.try_into() {
            self.headers.push((name, v));
        }
        self
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
    pub fn upstream(status: StatusCode, code: &'static str, m: impl Into<String>) -> Self {
        Self::new(status, "api_error", code, ErrorSource::Upstream, m)
    }
}

/// A gateway-made answer in the client's protocol (the body is one whole JSON), with the
/// error's own headers.
pub fn error_response(env: Envelope, e: GatewayError) -> Response<Bytes> {
    let status = e.status.as_u16();
    let err = envelope::Error { status, kind: Some(e.kind), code: e.code, message: &e.message, class: e.class };
    let body = envelope::json(env, &err);
    let bedrock = err.bedrock_kind();
    let len = body.len();
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = e.status;
    for (k, v) in e.headers {
        r.headers_mut().append(k, v);
    }
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if env == Envelope::Bedrock {
        r.headers_mut().insert(HeaderName::from_static("x-amzn-errortype"), HeaderValue::from_static(bedrock));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal carries its headers and its class's type in every protocol.
    #[test]
    fn refusals_carry_headers_and_class() {
        let e = || {
            GatewayError::refused(StatusCode::SERVICE_UNAVAILABLE, Class::RateLimit, "rate_limit_exceeded", "slow down")
                .with_header(header::RETRY_AFTER, "7")
                .with_header(HeaderName::from_static("x-ai-ratelimit-remaining-a"), "0")
        };
        for (env, ty) in [
            (Envelope::OpenAi, "rate_limit_exceeded"),
            (Envelope::Anthropic, "rate_limit_error"),
            (Envelope::Bedrock, "rate_limit_exceeded"),
        ] {
            let r = error_response(env, e());
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()["retry-after"], "7");
            assert_eq!(r.headers()["x-ai-ratelimit-remaining-a"], "0");
            assert_eq!(r.headers()["content-length"], r.body().len().to_string().as_str());
            let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
            assert_eq!(v["error"]["type"], ty, "{env:?}");
            assert_eq!(v["error"]["message"], "slow down");
            if env == Envelope::Bedrock {
                assert_eq!(r.headers()["x-amzn-errortype"], "ThrottlingException");
            }
        }
        // Ordinary errors: no extra headers, the status-derived Bedrock type.
        let r = error_response(Envelope::Bedrock, GatewayError::bad_request("x"));
        assert_eq!((r.headers().len(), r.headers()["x-amzn-errortype"].to_str().unwrap()), (3, "ValidationException"));
    }
}
