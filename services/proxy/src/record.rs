//! The completion record: everything known about one data-plane request once its response
//! has ended, built in one place (the request's stages fill it in as they go) and handed
//! to every completion sink (access log, metrics; spans and http-logger join later).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use aigw_llm::protocol::Protocol;
use aigw_llm::usage::Usage;
use aigw_model::Provider;
use http::HeaderMap;

/// How the response body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the client.
    Complete,
    /// The client went away before the end; the upstream read was cancelled.
    ClientGone,
    /// The upstream failed mid-body (reset, error event inside the stream).
    UpstreamError(String),
    /// The upstream was silent longer than `timeout` mid-body.
    ReadTimeout,
    /// `max_stream_duration_ms` was reached.
    DurationLimit,
    /// `max_response_bytes` was reached.
    BytesLimit,
    /// The stream ended without its protocol's end marker.
    Truncated,
    /// The upstream sent bytes that cannot be framed (corrupt frame, event over the cap).
    Corrupt(String),
}

impl Outcome {
    pub fn is_complete(&self) -> bool {
        *self == Outcome::Complete
    }
}

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
pub struct Record {
    pub remote_addr: IpAddr,
    /// Wall-clock start (for `$time_local`).
    pub start: SystemTime,
    pub started: Instant,
    pub request_line: String,
    pub request_id: String,
    /// The request headers, kept only when a sink needs them (`$http_*`).
    pub headers: Option<HeaderMap>,
    pub route_id: String,
    /// `traditional_http`, `ai_chat` or `ai_stream`.
    pub request_type: &'static str,
    pub client_protocol: Option<Protocol>,
    pub provider: Option<Provider>,
    /// The model the client asked for.
    pub request_llm_model: String,
    /// The model the upstream was asked for (or, when unknown, the one that answered).
    pub llm_model: String,
    pub stream: bool,
    /// Tools the client's request declared.
    pub tool_count: usize,
    /// The client's end-user id (`user`, `safety_identifier`, `metadata.user_id`).
    pub end_user_id: String,
    pub upstream_addr: String,
    pub upstream_status: Option<u16>,
    /// From sending the upstream request to the end of its body.
    pub upstream_time: Option<Duration>,
    /// From sending the upstream request to its first body byte.
    pub ttft: Option<Duration>,
    /// Upstream attempts made (0 when the request never reached one).
    pub attempts: u32,
    /// The `ai-proxy-multi` instance that answered (empty for `ai-proxy`).
    pub instance: String,
    /// Status sent to the client.
    pub status: u16,
    pub body_bytes_sent: u64,
    pub request_time: Duration,
    pub outcome: Outcome,
    pub usage: Usage,
    pub has_tool_calls: bool,
    /// The model named in the answer.
    pub response_model: Option<String>,
    pub error: Option<(ErrorSource, String)>,
}

impl Record {
    pub fn new(remote_addr: IpAddr, request_line: String, request_id: String, headers: Option<HeaderMap>) -> Record {
        Record {
            remote_addr,
            start: SystemTime::now(),
            started: Instant::now(),
            request_line,
            request_id,
            headers,
            route_id: String::new(),
            request_type: "traditional_http",
            client_protocol: None,
            provider: None,
            request_llm_model: String::new(),
            llm_model: String::new(),
            stream: false,
            tool_count: 0,
            end_user_id: String::new(),
            upstream_addr: String::new(),
            upstream_status: None,
            upstream_time: None,
            ttft: None,
            attempts: 0,
            instance: String::new(),
            status: 0,
            body_bytes_sent: 0,
            request_time: Duration::ZERO,
            outcome: Outcome::Complete,
            usage: Usage::default(),
            has_tool_calls: false,
            response_model: None,
            error: None,
        }
    }
}
