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

/// The most answer text kept for `logging.payloads` (`llm_response_text`, span events).
pub const TEXT_CAP: usize = 256 * 1024;
/// How much of a streamed answer `http-logger.include_resp_body` keeps (APISIX's
/// `max_resp_body_bytes` default, 512 KiB).
pub const STREAM_BODY_CAP: usize = 512 * 1024;

/// An upstream a route can send to, as the sinks name it (`server.address`,
/// `$upstream_scheme`, `$upstream_host`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Server {
    /// `scheme://host[:port]`.
    pub origin: String,
    /// `host[:port]`.
    pub authority: String,
}

/// What the request path keeps in the record for a route's plugins and `logging`.
/// Declared once, at compile time (`crate::phases::Plugin::needs`); a route's needs are
/// the union of its plugins' and its `logging`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The client's request headers.
    pub request_headers: bool,
    /// The client's body as sent (`http-logger.include_req_body`).
    pub request_body: bool,
    /// The client's messages, parsed (`logging.payloads`).
    pub request_messages: bool,
    /// The answer's text, up to this many bytes (`logging.payloads`).
    pub response_text: Option<usize>,
    /// A whole answer's body, and up to this many bytes of a streamed one as the client
    /// got it (`http-logger.include_resp_body`).
    pub response_body: Option<usize>,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs {
            request_headers: self.request_headers || o.request_headers,
            request_body: self.request_body || o.request_body,
            request_messages: self.request_messages || o.request_messages,
            response_text: self.response_text.max(o.response_text),
            response_body: self.response_body.max(o.response_body),
        }
    }
}

/// Who made the request (a consumer, CONTRACT §12): what logs, spans and metrics show.
/// Never a key or any part of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    /// The consumer's `group_id`.
    pub group: Option<Arc<str>>,
}

/// One upstream attempt (one CLIENT span).
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// The upstream it went to.
    pub server: Option<Arc<Server>>,
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
    /// The matched route's metric series (None before routing, or outside a route).
    pub memo: Option<Arc<crate::metrics::RouteMemo>>,
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
    /// What the matched route keeps for its plugins and `logging`.
    pub needs: Needs,
    /// The matched route's `logging.payloads`.
    pub payloads: bool,
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
    /// Who made the request (set by an access phase: key-auth), when known.
    pub consumer: Option<Identity>,
    /// The client's body size.
    pub request_bytes: u64,
    /// Events a streamed answer carried (what was sent, when no usage was reported).
    pub stream_events: u64,
    /// The tokens left of the tightest `ai-rate-limiting` limit after this request
    /// (`$llm_ratelimit_remaining`, `aigw.ratelimit.remaining`).
    pub ratelimit_remaining: Option<u64>,
    /// A limit was decided on this node's own counts (Redis down, `allow_degradation`).
    pub ratelimit_degraded: bool,
    /// The request's cost in USD (CONTRACT §14), computed once at completion; None when
    /// nothing was used or no price matches.
    pub cost: Option<f64>,
    /// Tokens were used but no price matched the model (counted, never as free).
    pub unpriced: bool,
    /// `ai-budget`: the USD left of the tightest budget after this request.
    pub budget_remaining: Option<f64>,
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
            memo: None,
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
            needs: Needs::default(),
            payloads: false,
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
            consumer: None,
            request_bytes: 0,
            stream_events: 0,
            ratelimit_remaining: None,
            ratelimit_degraded: false,
            cost: None,
            unpriced: false,
            budget_remaining: None,
        }
    }

    /// Prices the request's usage with `catalog` (the model that answered, else the one asked).
    pub fn price(&mut self, catalog: &aigw_model::prices::Catalog) {
        let u = self.usage;
        if u.prompt + u.completion == 0 {
            return;
        }
        let Some(provider) = self.provider else { return };
        let model = self.response_model.as_deref().filter(|m| !m.is_empty()).unwrap_or(&self.llm_model);
        let tokens = aigw_model::prices::Tokens {
            prompt: u.prompt,
            completion: u.completion,
            cache_read: u.cache_read,
            cache_write: u.cache_creation,
        };
        match catalog.lookup(provider.as_str(), model) {
            Some(p) => self.cost = Some(p.cost(&tokens)),
            None => self.unpriced = true,
        }
    }

    /// The route stage matched route `id`: what the completion sinks need of it.
    pub fn set_route(&mut self, id: &str, needs: Needs, payloads: bool, headers: &HeaderMap) {
        self.route_id = id.to_owned();
        if needs.request_headers && self.headers.is_none() {
            self.headers = Some(headers.clone());
        }
        self.needs = needs;
        self.payloads = payloads;
    }

    /// The client's request, parsed: kept for `logging.payloads` and
    /// `http-logger.include_req_body` only when the route asks.
    pub fn note_request(&mut self, body: &Bytes, proto: Protocol, json: &impl aigw_llm::body::Fields) {
        let needs = self.needs;
        if needs.request_messages {
            self.llm_request = Some(aigw_llm::usage::request_messages(proto, json));
        }
        if needs.request_body {
            self.request_body = Some(body.clone());
        }
    }

    /// An upstream attempt on `server` starts now: returns the `traceparent` the upstream
    /// request carries (its CLIENT span) when tracing is on.
    pub fn begin_attempt(&mut self, server: &Arc<Server>, url: &str) -> Option<HeaderValue> {
        self.attempts += 1;
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
        self.attempt = Some(Attempt { server: Some(server.clone()), span_id, offset: self.started.elapsed(), ..Attempt::default() });
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
        self.stream_events = obs.events;
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
        let needs = self.needs;
        if let Some(cap) = needs.response_text {
            self.response_text = aigw_llm::usage::answer_text(body, cap);
        }
        if needs.response_body.is_some() {
            self.response_body = Some(body.clone());
        }
    }
}
