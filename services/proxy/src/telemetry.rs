//! Completion sinks for OpenTelemetry: GenAI and gateway metrics (always on: `/metrics`
//! shows them) and spans (only with an OTLP exporter; CONTRACT §10).
//!
//! Spans are not objects that live through the request: the request carries ids decided
//! when it started ([`Record::trace`], [`Record::attempt`]), and when it completes a
//! sampled record is encoded, on its thread, as one SERVER span and one CLIENT span per
//! upstream attempt with explicit timestamps, straight into OTLP protobuf; the exporter
//! thread only sends the batches.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use aigw_llm::protocol::Protocol;
use aigw_model::Provider;
use aigw_telemetry::export::{Kind, SpanBatch, SpanBuilder, Tracer};
use aigw_telemetry::metrics::{Counter, FloatCounter, Histogram, Memo};

use crate::complete::Sink;
use crate::metrics::Metrics;
use crate::record::{Attempt, ErrorSource, Outcome, Record};

/// `gen_ai.provider.name` (CONTRACT §10): the well-known value, else aigw's provider name.
pub fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::Openai => "openai",
        Provider::Deepseek => "deepseek",
        Provider::AzureOpenai => "azure.ai.openai",
        Provider::Aimlapi => "aimlapi",
        Provider::Anthropic => "anthropic",
        Provider::Openrouter => "openrouter",
        Provider::Gemini => "gcp.gemini",
        Provider::VertexAi => "gcp.vertex_ai",
        Provider::Bedrock => "aws.bedrock",
        Provider::OpenaiCompatible => "openai-compatible",
    }
}

/// `gen_ai.operation.name` of a client protocol.
pub fn operation(p: Option<Protocol>) -> &'static str {
    match p {
        Some(Protocol::OpenAiEmbeddings) => "embeddings",
        Some(Protocol::AnthropicCountTokens) => "count_tokens",
        _ => "chat",
    }
}

/// `"100"`…`"599"` without formatting per request.
pub fn status_str(code: u16) -> &'static str {
    static TABLE: OnceLock<Box<[Box<str>]>> = OnceLock::new();
    let t = TABLE.get_or_init(|| (0..600u16).map(|c| c.to_string().into_boxed_str()).collect());
    t.get(code as usize).map_or("_OTHER", |s| s)
}

/// How a cut or failed response body is named in `error.type`.
fn outcome_error(o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Complete => None,
        Outcome::ClientGone => Some("client_gone"),
        Outcome::UpstreamError(_) => Some("upstream_stream_error"),
        Outcome::ReadTimeout => Some("upstream_timeout"),
        Outcome::DurationLimit => Some("max_stream_duration_exceeded"),
        Outcome::BytesLimit => Some("max_response_bytes_exceeded"),
        Outcome::Truncated => Some("upstream_stream_truncated"),
        Outcome::Corrupt(_) => Some("upstream_stream_corrupt"),
    }
}

/// `error.type` of the last upstream attempt (the answering one): a send failure's kind,
/// the upstream's error status, or how its body was cut.
pub fn attempt_error(r: &Record, a: &Attempt) -> Option<&'static str> {
    if let Some(e) = a.error {
        return Some(e);
    }
    match r.upstream_status {
        Some(s) if s >= 400 => return Some(status_str(s)),
        None if r.error.as_ref().is_some_and(|(src, _)| *src == ErrorSource::Upstream) => return Some(r.error_code),
        _ => {}
    }
    if r.error.as_ref().is_some_and(|(src, _)| *src == ErrorSource::Upstream) && !r.error_code.is_empty() {
        return Some(r.error_code);
    }
    outcome_error(&r.outcome)
}

/// `error.type` of the whole request (the SERVER span, `gen_ai.server.request.duration`).
pub fn request_error(r: &Record) -> Option<&'static str> {
    if r.error.is_some() {
        if let Some(e) = r.attempt.as_ref().and_then(|a| a.error) {
            return Some(e);
        }
        return Some(if r.error_code.is_empty() { status_str(r.status) } else { r.error_code });
    }
    if r.status >= 400 {
        return Some(status_str(r.status));
    }
    outcome_error(&r.outcome)
}

/// The GenAI and gateway metrics of each completed request.
pub struct GenAiSink(pub Arc<Metrics>);

/// A request's model and consumer names as metric label values.
#[derive(Clone, Copy)]
struct Names<'a> {
    req_model: &'a str,
    resp_model: &'a str,
    consumer: &'a str,
}

/// The names as the request has them (what a route's memo is searched with) and, once a
/// lookup needs them, bounded (`BoundedValues::admit`): a memo slot holding the raw
/// values proves they were admitted, so a request that finds its series admits nothing.
struct Labels<'a> {
    m: &'a Metrics,
    raw: Names<'a>,
    admitted: Option<Names<'a>>,
}

impl<'a> Labels<'a> {
    fn admitted(&mut self) -> Names<'a> {
        let (m, raw) = (self.m, self.raw);
        *self.admitted.get_or_insert_with(|| Names {
            req_model: m.models.admit(raw.req_model),
            resp_model: m.models.admit(raw.resp_model),
            consumer: m.consumers.admit(raw.consumer),
        })
    }
}

/// Adds `n` to the series `labels` gives: the route's memo first, with the raw names.
fn add<'a, const N: usize>(
    memo: Option<&Memo<Counter>>,
    c: &Counter,
    l: &mut Labels<'a>,
    labels: impl Fn(Names<'a>) -> [&'a str; N],
    n: u64,
) {
    if let Some(h) = memo.and_then(|mm| mm.get(&labels(l.raw))) {
        return h.add(n);
    }
    let v = labels(l.admitted());
    match memo {
        Some(mm) => mm.add(&v, n),
        None => c.add(&v, n),
    }
}

/// Adds the cost `usd` to the series `labels` gives: the route's memo first.
fn add_cost<'a, const N: usize>(
    memo: Option<&Memo<FloatCounter>>,
    c: &FloatCounter,
    l: &mut Labels<'a>,
    labels: impl Fn(Names<'a>) -> [&'a str; N],
    usd: f64,
) {
    if let Some(h) = memo.and_then(|mm| mm.get(&labels(l.raw))) {
        return h.add(usd);
    }
    let v = labels(l.admitted());
    match memo {
        Some(mm) => mm.add(&v, usd),
        None => c.add(&v, usd),
    }
}

/// Records `x` in the series `labels` gives: the route's memo first, with the raw names.
fn record<'a, const N: usize>(
    memo: Option<&Memo<Histogram>>,
    h: &Histogram,
    l: &mut Labels<'a>,
    labels: impl Fn(Names<'a>) -> [&'a str; N],
    x: f64,
) {
    if let Some(s) = memo.and_then(|mm| mm.get(&labels(l.raw))) {
        return s.record(x);
    }
    let v = labels(l.admitted());
    match memo {
        Some(mm) => mm.record(&v, x),
        None => h.record(&v, x),
    }
}

impl Sink for GenAiSink {
    fn complete(&self, r: &Record) {
        let m = &self.0;
        let memo = r.memo.as_deref().map(|mm| mm.series(m));
        let provider = r.provider.map(provider_name).unwrap_or_default();
        let raw = Names {
            req_model: &r.request_llm_model,
            resp_model: r.response_model.as_deref().unwrap_or_default(),
            consumer: r.consumer.as_ref().map_or("", |c| &c.name),
        };
        let l = &mut Labels { m, raw, admitted: None };
        let (route, status) = (r.route_id.as_str(), status_str(r.status));
        add(memo.map(|s| &s.requests), &m.gateway.requests, l, |n| [route, provider, status, n.consumer], 1);
        for a in &r.earlier {
            if let Some(e) = a.error.or(a.status.map(status_str)) {
                m.gateway.upstream_errors.add(&[route, provider, e], 1);
            }
        }
        let last = r.attempt.as_ref();
        let last_error = last.and_then(|a| attempt_error(r, a));
        if let Some(e) = last_error.filter(|e| *e != "client_gone") {
            m.gateway.upstream_errors.add(&[route, provider, e], 1);
        }
        let (Some(_), Some(_)) = (r.client_protocol, r.provider) else { return };
        let op = operation(r.client_protocol);
        let g = &m.genai;
        let req_err = request_error(r).unwrap_or_default();
        let secs = r.request_time.as_secs_f64();
        record(
            memo.map(|s| &s.server_request_duration),
            &g.server_request_duration,
            l,
            |n| [op, provider, n.req_model, n.resp_model, req_err],
            secs,
        );
        for a in &r.earlier {
            let err = a.error.or(a.status.map(status_str)).unwrap_or_default();
            let model = m.models.admit(&a.model);
            let d = a.duration.unwrap_or_default().as_secs_f64();
            g.operation_duration.record(&[op, provider, model, "", err], d);
            if let Some(lt) = &g.latest {
                lt.inference_duration.record(&[op, provider, model, "", err], d);
            }
        }
        let Some(a) = last else { return };
        let d = r.upstream_time.or(a.duration).unwrap_or_else(|| r.request_time.saturating_sub(a.offset)).as_secs_f64();
        let err = last_error.unwrap_or_default();
        record(memo.map(|s| &s.operation_duration), &g.operation_duration, l, |n| [op, provider, n.req_model, n.resp_model, err], d);
        let u = &r.usage;
        if u.prompt + u.completion > 0 {
            if r.unpriced {
                add(memo.map(|s| &s.unpriced), &m.unpriced, l, |n| [provider, n.resp_model], 1);
            }
            if let Some(c) = r.cost {
                add_cost(memo.map(|s| &s.cost), &m.cost, l, |n| [provider, n.resp_model, route, n.consumer], c);
            }
            let tokens = memo.map(|s| &s.token_usage);
            record(tokens, &g.token_usage, l, |n| [op, provider, n.req_model, n.resp_model, "input", n.consumer], u.prompt as f64);
            record(tokens, &g.token_usage, l, |n| [op, provider, n.req_model, n.resp_model, "output", n.consumer], u.completion as f64);
        }
        let ok = req_err.is_empty();
        let first = r.ttft.filter(|_| r.stream).map(|t| a.offset + t);
        if let (true, Some(first)) = (ok, first) {
            record(memo.map(|s| &s.server_ttft), &g.server_ttft, l, |n| [op, provider, n.req_model, n.resp_model], first.as_secs_f64());
            if u.completion > 1 {
                let per = r.request_time.saturating_sub(first).as_secs_f64() / (u.completion - 1) as f64;
                record(memo.map(|s| &s.server_tpot), &g.server_tpot, l, |n| [op, provider, n.req_model, n.resp_model], per);
            }
        }
        if let Some(lt) = &g.latest {
            let n = l.admitted();
            let (req_model, resp_model) = (n.req_model, n.resp_model);
            lt.inference_duration.record(&[op, provider, req_model, resp_model, err], d);
            if u.prompt + u.completion > 0 {
                lt.input_tokens.record(&[op, provider, req_model, resp_model], u.prompt as f64);
                lt.output_tokens.record(&[op, provider, req_model, resp_model], u.completion as f64);
            }
            if let Some(t) = r.ttft.filter(|_| r.stream) {
                lt.time_to_first_chunk.record(&[op, provider, req_model, resp_model, err], t.as_secs_f64());
            }
        }
    }
}

/// Encodes sampled requests' spans (on the request's thread, into its batch).
pub struct SpanSink(pub Arc<Tracer>);

impl Sink for SpanSink {
    fn complete(&self, r: &Record) {
        if r.trace.sampled {
            self.0.spans(|b| spans(r, b));
        }
    }
}

fn host_port<'a>(authority: &'a str, origin: &str) -> (&'a str, i64) {
    let default = if origin.starts_with("https://") { 443 } else { 80 };
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(p) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            Err(_) => (authority, default),
        },
        _ => (authority, default),
    }
}

/// `a.b.c.d` without the formatting machinery.
fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &str {
    let mut n = 0;
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// GenAI content events (only with `logging.payloads`): the client's messages and the
/// answer's text as JSON strings.
fn payload_event(b: &mut SpanBuilder, r: &Record, at: SystemTime) {
    if !r.payloads {
        return;
    }
    let input = r.llm_request.as_ref().map(|req| req.to_string());
    let output = r.response_text.as_ref().map(|text| {
        serde_json::json!([{"role": "assistant", "parts": [{"type": "text", "content": text}],
            "finish_reason": r.finish_reason.as_deref().unwrap_or_default()}])
        .to_string()
    });
    let attrs: Vec<(&str, &str)> = [("gen_ai.input.messages", input.as_deref()), ("gen_ai.output.messages", output.as_deref())]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    if !attrs.is_empty() {
        b.event("gen_ai.client.inference.operation.details", at, &attrs);
    }
}

/// A request's SERVER span and one CLIENT span per upstream attempt.
fn spans(r: &Record, out: &mut SpanBatch) {
    let op = operation(r.client_protocol);
    let provider = r.provider.map(provider_name);
    // "METHOD TARGET VERSION": byte searches (no char pattern machinery per request).
    let line = r.request_line.as_str();
    let word = |s: &str, b: u8| s.as_bytes().iter().position(|&c| c == b).unwrap_or(s.len());
    let method = &line[..word(line, b' ')];
    let target = line.get(method.len() + 1..).map(|t| &t[..word(t, b' ')]);
    let ai = r.client_protocol.is_some() && provider.is_some();
    // The SERVER span names the model the client asked for (else the one the gateway
    // chose); each CLIENT span the model its upstream was asked for.
    let server_model = if r.request_llm_model.is_empty() { r.llm_model.as_str() } else { r.request_llm_model.as_str() };
    let name: &[&str] = match (ai, server_model.is_empty()) {
        (false, _) => &[method],
        (true, true) => &[op],
        (true, false) => &[op, " ", server_model],
    };
    let end = r.start + r.request_time;
    let version = &r.config_version;
    let cut = !r.outcome.is_complete() && r.outcome != Outcome::ClientGone;
    let finish: Vec<&str> = if cut { vec!["error"] } else { r.finish_reason.as_deref().into_iter().collect() };
    let last = r.attempt.as_ref();
    fn server_of(a: &Attempt) -> Option<(&str, i64)> {
        a.server.as_ref().map(|s| host_port(&s.authority, &s.origin))
    }

    // Attributes both spans carry (CONTRACT §10). The SERVER span and the answering
    // CLIENT span differ only in `gen_ai.request.model`: the rest is encoded once.
    let genai = |b: &mut SpanBuilder, a: Option<&Attempt>, full: bool| {
        b.str("gen_ai.operation.name", op);
        if let Some(p) = provider {
            b.str("gen_ai.provider.name", p);
        }
        b.bool("gen_ai.request.stream", r.stream);
        if let Some((h, p)) = a.and_then(server_of) {
            b.str("server.address", h).int("server.port", p);
        }
        b.str_nonempty("aigw.route_id", &r.route_id).str_nonempty("aigw.config_version", version);
        b.str_nonempty("aigw.instance", &r.instance);
        if let Some(c) = r.cost {
            b.double("aigw.usage.cost", c);
        }
        if let Some(n) = r.ratelimit_remaining {
            b.int("aigw.ratelimit.remaining", n.min(i64::MAX as u64) as i64);
        }
        if let Some(c) = &r.consumer {
            b.str("aigw.consumer.name", &c.name);
            if let Some(g) = &c.group {
                b.str("aigw.consumer.group", g);
            }
        }
        if !full {
            return;
        }
        if let Some(m) = r.response_model.as_deref() {
            b.str("gen_ai.response.model", m);
        }
        if let Some(id) = r.response_id.as_deref() {
            b.str("gen_ai.response.id", id);
        }
        if !finish.is_empty() {
            b.strs("gen_ai.response.finish_reasons", &finish);
        }
        let u = &r.usage;
        if u.prompt + u.completion > 0 {
            b.int("gen_ai.usage.input_tokens", u.prompt as i64).int("gen_ai.usage.output_tokens", u.completion as i64);
            b.int("gen_ai.usage.cache_read.input_tokens", u.cache_read as i64);
            b.int("gen_ai.usage.cache_write.input_tokens", u.cache_creation as i64);
            b.int("gen_ai.usage.reasoning.output_tokens", u.reasoning as i64);
        }
    };

    let mut server = out.span(r.trace.trace_id, r.trace.span_id, r.trace.parent_id, name, Kind::Server, r.start, end);
    server.str_nonempty("gen_ai.request.model", server_model);
    let mark = server.mark();
    genai(&mut server, last, true);
    server.save_since(mark);
    server.str("http.request.method", method).int("http.response.status_code", r.status as i64);
    if let Some(t) = target {
        server.str("url.path", &t[..word(t, b'?')]);
    }
    let mut ip = [0u8; 15];
    match r.remote_addr {
        std::net::IpAddr::V4(v4) => server.str("client.address", ipv4_text(v4, &mut ip)),
        v6 => server.str("client.address", &v6.to_string()),
    };
    server.str("aigw.request_id", &r.request_id);
    if let (true, Some(t), Some(a)) = (r.stream, r.ttft, last) {
        server.double("gen_ai.response.time_to_first_chunk", (a.offset + t).as_secs_f64());
    }
    if let Some(e) = request_error(r) {
        server.str("error.type", e);
        server.error(r.error.as_ref().map(|(_, m)| m.as_str()).unwrap_or(e));
    }
    payload_event(&mut server, r, end);
    server.end();

    for a in &r.earlier {
        let start = r.start + a.offset;
        let model = a.model.as_str();
        let cname: &[&str] = if model.is_empty() { &[op] } else { &[op, " ", model] };
        let end = start + a.duration.unwrap_or_default();
        let mut c = out.span(r.trace.trace_id, a.span_id, r.trace.span_id, cname, Kind::Client, start, end);
        c.str_nonempty("gen_ai.request.model", model);
        genai(&mut c, Some(a), false);
        if let Some(s) = a.status {
            c.int("http.response.status_code", s as i64);
        }
        if let Some(e) = a.error.or(a.status.map(status_str)) {
            c.str("error.type", e).error(e);
        }
        c.end();
    }
    let Some(a) = last else { return };
    let start = r.start + a.offset;
    let dur = r.upstream_time.or(a.duration).unwrap_or_else(|| r.request_time.saturating_sub(a.offset));
    let model = if r.llm_model.is_empty() { server_model } else { r.llm_model.as_str() };
    let cname: &[&str] = if model.is_empty() { &[op] } else { &[op, " ", model] };
    let mut c = out.span(r.trace.trace_id, a.span_id, r.trace.span_id, cname, Kind::Client, start, start + dur);
    c.str_nonempty("gen_ai.request.model", model).write_saved();
    if let Some(s) = a.status.or(r.upstream_status) {
        c.int("http.response.status_code", s as i64);
    }
    if let (true, Some(t)) = (r.stream, r.ttft) {
        c.double("gen_ai.response.time_to_first_chunk", t.as_secs_f64());
        c.event("gen_ai.response.first_chunk", start + t, &[]);
    }
    if let Some(e) = attempt_error(r, a) {
        c.str("error.type", e);
        let msg = match &r.outcome {
            Outcome::UpstreamError(m) | Outcome::Corrupt(m) => m.as_str(),
            _ => r.error.as_ref().map(|(_, m)| m.as_str()).unwrap_or(e),
        };
        c.error(msg);
    }
    payload_event(&mut c, r, start + dur);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use aigw_llm::protocol::Protocol;
    use aigw_model::Provider;
    use aigw_telemetry::metrics::Registry;

    use crate::complete::Sink;
    use crate::metrics::{Metrics, RouteMemo};
    use crate::record::{Attempt, Identity, Record};

    /// A route's memo changes where a series is found, never what is recorded: the same
    /// requests through a memo and through the families' lookups give the same text, and
    /// model and consumer names past their bounds are folded either way (a raw name
    /// never matches a memo slot it was not admitted into).
    #[test]
    fn memoed_series_record_what_lookups_do() {
        let run = |memo: bool| {
            let m = Arc::new(Metrics::new(Registry::new(), true, 2));
            let sink = super::GenAiSink(m.clone());
            let route_memo = Arc::new(RouteMemo::default());
            let bad_model = "a model with spaces";
            let long_model = "m".repeat(150);
            let models = ["gpt-4o", "gpt-4o-mini", bad_model, &long_model, "o3", "gpt-4o"];
            let consumers = ["team-a", "team-b", "team-c", "other", "", "team-a"];
            for round in 0..3u64 {
                for (i, (model, consumer)) in models.iter().zip(consumers).enumerate() {
                    let mut r = Record::new("127.0.0.1".parse().unwrap(), "POST /v1/chat/completions HTTP/1.1".into(), "id".into(), None);
                    r.route_id = "r1".into();
                    r.memo = memo.then(|| route_memo.clone());
                    r.client_protocol = Some(Protocol::OpenAiChat);
                    r.provider = Some(Provider::Openai);
                    r.request_llm_model = model.to_string();
                    r.response_model = Some(format!("{model}{}", if i % 2 == 0 { "" } else { "-2024" }));
                    r.status = if i == 4 { 429 } else { 200 };
                    r.consumer = (!consumer.is_empty()).then(|| Identity { name: Arc::from(consumer), group: None });
                    r.request_time = Duration::from_millis(10 * (i as u64 + 1) + round);
                    r.stream = i % 2 == 1;
                    r.ttft = Some(Duration::from_millis(3));
                    r.usage.prompt = 10 + i as u64;
                    r.usage.completion = 5 * round;
                    r.cost = (i == 0).then_some(0.001);
                    r.unpriced = i == 1;
                    r.attempt = Some(Attempt { offset: Duration::from_millis(1), ..Default::default() });
                    sink.complete(&r);
                }
            }
            m.registry.render_prometheus()
        };
        let lookups = run(false);
        assert!(lookups.contains("consumer=\"other\""), "{lookups}");
        assert!(lookups.contains("gen_ai_request_model=\"_OTHER\""), "{lookups}");
        assert!(!lookups.contains("team-c") && !lookups.contains("spaces"), "{lookups}");
        assert_eq!(run(true), lookups);
    }

    #[test]
    fn ipv4_text_is_the_dotted_quad() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "1.100.99.109", "192.168.0.200"] {
            let mut buf = [0u8; 15];
            assert_eq!(super::ipv4_text(ip.parse().unwrap(), &mut buf), ip);
        }
    }
}
