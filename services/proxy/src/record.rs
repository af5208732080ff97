//! The completion record: everything known about one data-plane request once its response
//! has ended, built in one place (the request's stages fill it in as they go) and handed
//! to every completion sink (access log, metrics, spans, http-logger).
//!
//! Upstream attempts are recorded through [`Record::begin_attempt`] /
//! [`Record::end_attempt`] (one CLIENT span each); the answering attempt ends with its
//! response body. The common path (one attempt) allocates nothing for this.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aigw_llm::protocol::Protocol;
use aigw_llm::usage::{Observation, Usage};
use aigw_model::Provider;
use aigw_telemetry::export::TraceStart;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::compiled::{CompiledRoute, CompiledTarget};

/// The most answer text kept for `logging.payloads` (`llm_response_text`, span events).
pub const TEXT_CAP: usize = 256 * 1024;
/// How much of a streamed answer `http-logger.include_resp_body` keeps (APISIX's
/// `max_resp_body_bytes` default, 512 KiB).
pub const STREAM_BODY_CAP: usize = 512 * 1024;

/// One upstream attempt (one CLIENT span).
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Index of the target in the route's `targets`.
    pub target: usize,
    /// The CLIENT span's id (0 when tracing is off).
    pub span_id: u64,
    /// From the request's start to this attempt's start.
    pub offset: Duration,
    /// Set when the attempt ended without becoming the answer (a failure); the answering
    /// attempt lasts until its body ends (`Record::upstream_time`).
    pub duration: Option<Duration>,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (`connect_refused`, `timeout`, …).
    pub error: Option<&'static str>,
    /// The model asked of this upstream; kept only for attempts before the last (the
    /// last one's is `Record::llm_model`).
    pub model: String,
}

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

pub use crate::errors::ErrorSource;

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
    /// The gateway error's code (`upstream_timeout`, `route_not_found`, …), for `error.type`.
    pub error_code: &'static str,
    /// The trace this request belongs to (all zero when tracing is off).
    pub trace: TraceStart,
    /// The matched route (its targets name the upstreams of the attempts).
    pub route: Option<Arc<CompiledRoute>>,
    /// The applied config's version (kept for sampled requests: `aigw.config_version`).
    pub config_version: String,
    /// The current (or last) upstream attempt.
    pub attempt: Option<Attempt>,
    /// Attempts before it (fallbacks); empty, so unallocated, on the common path.
    pub earlier: Vec<Attempt>,
    /// Keep the upstream request's path (`$upstream_uri`).
    pub keep_upstream_uri: bool,
    /// Path of the last upstream request (only with `keep_upstream_uri`).
    pub upstream_uri: String,
    /// The response id the provider gave.
    pub response_id: Option<String>,
    /// Why generation stopped (the provider's words).
    pub finish_reason: Option<String>,
    /// `logging.payloads`: the client's messages (`llm_request.messages`).
    pub llm_request: Option<serde_json::Value>,
    /// `logging.payloads`: the answer's text, up to [`TEXT_CAP`].
    pub response_text: Option<String>,
    /// `http-logger.include_req_body`: the client's body.
    pub request_body: Option<Bytes>,
    /// `http-logger.include_resp_body`: a whole answer's body as the upstream sent it; of
    /// a stream, what the client was sent, up to [`STREAM_BODY_CAP`].
    pub response_body: Option<Bytes>,
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
            error_code: "",
            trace: TraceStart::default(),
            route: None,
            config_version: String::new(),
            attempt: None,
            earlier: Vec::new(),
            keep_upstream_uri: false,
            upstream_uri: String::new(),
            response_id: None,
            finish_reason: None,
            llm_request: None,
            response_text: None,
            request_body: None,
            response_body: None,
        }
    }

    /// The route stage matched `route`: what the completion sinks need of it.
    pub fn set_route(&mut self, route: &Arc<CompiledRoute>, headers: &HeaderMap) {
        self.route_id = route.id().to_owned();
        if route.spec.http_logger.is_some() && self.headers.is_none() {
            self.headers = Some(headers.clone());
        }
        self.route = Some(route.clone());
    }

    /// `(summaries, payloads)` of the matched route's `logging`.
    pub fn logging(&self) -> (bool, bool) {
        self.route.as_ref().and_then(|r| r.spec.ai_proxy.logging.as_ref()).map_or((false, false), |l| (l.summaries, l.payloads))
    }

    /// How much answer text to collect (`logging.payloads`), if any.
    pub fn text_cap(&self) -> Option<usize> {
        self.logging().1.then_some(TEXT_CAP)
    }

    /// How much of a streamed answer to keep for `http-logger.include_resp_body`, if any.
    pub fn stream_body_cap(&self) -> Option<usize> {
        self.include_bodies().1.then_some(STREAM_BODY_CAP)
    }

    fn include_bodies(&self) -> (bool, bool) {
        self.route.as_ref().and_then(|r| r.spec.http_logger.as_ref()).map_or((false, false), |h| (h.include_req_body, h.include_resp_body))
    }

    /// The client's request, parsed: kept for `logging.payloads` and
    /// `http-logger.include_req_body` only when the route asks.
    pub fn note_request(&mut self, body: &Bytes, proto: Protocol, json: &serde_json::Value) {
        if self.logging().1 {
            self.llm_request = Some(aigw_llm::usage::request_messages(proto, json));
        }
        if self.include_bodies().0 {
            self.request_body = Some(body.clone());
        }
    }

    /// An upstream attempt on `t` (a target of the matched route) starts now: returns
    /// the `traceparent` the upstream request carries (its CLIENT span) when tracing is on.
    pub fn begin_attempt(&mut self, t: &CompiledTarget, url: &str) -> Option<HeaderValue> {
        self.attempts += 1;
        let target = self.route.as_ref().and_then(|r| r.targets.iter().position(|x| std::ptr::eq(x, t))).unwrap_or(0);
        if let Some(mut prev) = self.attempt.take() {
            prev.model = std::mem::take(&mut self.llm_model);
            prev.duration.get_or_insert_with(|| self.started.elapsed().saturating_sub(prev.offset));
            self.earlier.push(prev);
        }
        if self.keep_upstream_uri {
            let path = url.split_once("://").map_or(url, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
            self.upstream_uri.clear();
            self.upstream_uri.push_str(path.split('?').next().unwrap_or(path));
        }
        let on = self.trace.trace_id != 0;
        let span_id = if on { aigw_telemetry::ids::span_id() } else { 0 };
        self.attempt = Some(Attempt { target, span_id, offset: self.started.elapsed(), ..Attempt::default() });
        on.then(|| {
            let v = aigw_telemetry::ids::TraceParent::format(self.trace.trace_id, span_id, self.trace.sampled);
            HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(""))
        })
    }

    /// The current attempt ended without becoming the answer: `status` when the upstream
    /// answered (a fallback on 429/5xx), `error` when it could not be reached.
    pub fn end_attempt(&mut self, status: Option<u16>, error: Option<&'static str>) {
        let elapsed = self.started.elapsed();
        if let Some(a) = &mut self.attempt {
            a.duration = Some(elapsed.saturating_sub(a.offset));
            a.status = status;
            a.error = error;
        }
    }

    /// What the answer said about itself (usage, model, tools, id, finish reason, text).
    pub fn observe(&mut self, obs: &Observation) {
        self.usage = obs.usage;
        self.has_tool_calls = obs.has_tool_calls;
        self.response_model.clone_from(&obs.model);
        self.response_id.clone_from(&obs.id);
        self.finish_reason.clone_from(&obs.finish_reason);
        if obs.text.is_some() {
            self.response_text.clone_from(&obs.text);
        }
    }

    /// A whole answer's body: its text for `logging.payloads`, the body itself for
    /// `http-logger.include_resp_body` (only when the route asks).
    pub fn observe_body(&mut self, body: &Bytes) {
        if let Some(cap) = self.text_cap() {
            self.response_text = aigw_llm::usage::answer_text(body, cap);
        }
        if self.include_bodies().1 {
            self.response_body = Some(body.clone());
        }
    }

    /// The target an attempt went to.
    pub fn target_of(&self, a: &Attempt) -> Option<&CompiledTarget> {
        self.route.as_ref()?.targets.get(a.target)
    }
}
