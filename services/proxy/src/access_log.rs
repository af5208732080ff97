//! The access log (CONTRACT §6): nginx-style `$variables` compiled once at start, one line
//! per request written when its response body ends (it is a completion sink). Values are
//! escaped as nginx escapes them (`"`, `\` and bytes outside printable ASCII become
//! `\xHH`), so a client-chosen model name cannot forge a line. Lines go through a bounded
//! channel to a writer thread; when the writer falls behind, lines are dropped and counted,
//! never waited for on the data path.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::complete::Sink;
use crate::record::Record;

pub const DEFAULT_FORMAT: &str = "$remote_addr - - [$time_local] \"$request_line\" $status $body_bytes_sent $request_time \"$upstream_addr\" \
$upstream_status $upstream_response_time $request_id $route_id $request_type \"$request_llm_model\" \"$llm_model\" $llm_time_to_first_token \
$llm_prompt_tokens $llm_completion_tokens $llm_total_tokens $llm_stream";

/// The access-log format of the spec's own example (`ai-proxy.md`, "log LLM request
/// information in the access log"); the proxy starts with it as given.
pub const SPEC_EXAMPLE_FORMAT: &str = "$remote_addr - $remote_user [$time_local] $http_host \"$request_line\" $status $body_bytes_sent \
$request_time \"$http_referer\" \"$http_user_agent\" $upstream_addr $upstream_status $apisix_upstream_response_time \
\"$upstream_scheme://$upstream_host$upstream_uri\" \"$apisix_request_id\" \"$request_type\" \"$llm_time_to_first_token\" \"$llm_model\" \
\"$request_llm_model\" \"$llm_prompt_tokens\" \"$llm_completion_tokens\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    RemoteAddr,
    TimeLocal,
    RequestLine,
    Status,
    BodyBytesSent,
    RequestTime,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    RequestId,
    RouteId,
    RequestType,
    RequestLlmModel,
    LlmModel,
    Ttft,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    CacheRead,
    CacheCreation,
    Reasoning,
    Stream,
    HasToolCalls,
    ToolCount,
    EndUserId,
    ApisixUpstreamResponseTime,
    RemoteUser,
    UpstreamScheme,
    UpstreamHost,
    UpstreamUri,
    Instance,
    TraceId,
    ConsumerName,
    ConsumerGroupId,
    RateLimitRemaining,
    Cost,
}

const VARS: &[(&str, Var)] = &[
    ("remote_addr", Var::RemoteAddr),
    ("time_local", Var::TimeLocal),
    ("request_line", Var::RequestLine),
    ("status", Var::Status),
    ("body_bytes_sent", Var::BodyBytesSent),
    ("request_time", Var::RequestTime),
    ("upstream_addr", Var::UpstreamAddr),
    ("upstream_status", Var::UpstreamStatus),
    ("upstream_response_time", Var::UpstreamResponseTime),
    ("request_id", Var::RequestId),
    ("apisix_request_id", Var::RequestId),
    ("route_id", Var::RouteId),
    ("request_type", Var::RequestType),
    ("request_llm_model", Var::RequestLlmModel),
    ("llm_model", Var::LlmModel),
    ("llm_time_to_first_token", Var::Ttft),
    ("llm_prompt_tokens", Var::PromptTokens),
    ("llm_completion_tokens", Var::CompletionTokens),
    ("llm_total_tokens", Var::TotalTokens),
    ("llm_cache_read_input_tokens", Var::CacheRead),
    ("llm_cache_creation_input_tokens", Var::CacheCreation),
    ("llm_reasoning_tokens", Var::Reasoning),
    ("llm_stream", Var::Stream),
    ("llm_has_tool_calls", Var::HasToolCalls),
    ("llm_tool_count", Var::ToolCount),
    ("llm_end_user_id", Var::EndUserId),
    ("apisix_upstream_response_time", Var::ApisixUpstreamResponseTime),
    ("remote_user", Var::RemoteUser),
    ("upstream_scheme", Var::UpstreamScheme),
    ("upstream_host", Var::UpstreamHost),
    ("upstream_uri", Var::UpstreamUri),
    ("llm_instance", Var::Instance),
    ("trace_id", Var::TraceId),
    ("consumer_name", Var::ConsumerName),
    ("consumer_group_id", Var::ConsumerGroupId),
    ("llm_ratelimit_remaining", Var::RateLimitRemaining),
    ("llm_cost", Var::Cost),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var),
    /// `$http_NAME`: a request header (name lower-case, `_` → `-`).
    Header(String),
}

/// A compiled `--access-log-format`.
#[derive(Debug, Clone)]
pub struct Format {
    segs: Vec<Seg>,
    pub needs_headers: bool,
    /// `$upstream_uri` is used: requests keep their upstream path.
    pub needs_upstream_uri: bool,
}

/// A bad `--access-log` / `--access-log-format`.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("unterminated ${{ in access log format at {0:?}")]
    Unterminated(String),
    #[error("unknown access log variable ${0}")]
    UnknownVariable(String),
    #[error("--access-log {0}: {1}")]
    Open(String, std::io::Error),
    #[error("access log writer: {0}")]
    Writer(std::io::Error),
}

impl Format {
    pub fn parse(fmt: &str) -> Result<Format, AccessLogError> {
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut rest = fmt;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = match after.strip_prefix('{') {
                Some(b) => {
                    let end = b.find('}').ok_or_else(|| AccessLogError::Unterminated(after.to_owned()))?;
                    (&b[..end], &b[end + 1..])
                }
                None => {
                    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                lit.push('$');
                rest = after;
                continue;
            }
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(&mut lit)));
            }
            if let Some(h) = name.strip_prefix("http_") {
                segs.push(Seg::Header(h.to_ascii_lowercase().replace('_', "-")));
            } else {
                let v = VARS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| AccessLogError::UnknownVariable(name.to_owned()))?;
                segs.push(Seg::Var(v));
            }
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        let needs_headers = segs.iter().any(|s| matches!(s, Seg::Header(_) | Seg::Var(Var::RemoteUser)));
        let needs_upstream_uri = segs.contains(&Seg::Var(Var::UpstreamUri));
        Ok(Format { segs, needs_headers, needs_upstream_uri })
    }

    pub fn render(&self, e: &Record) -> String {
        let mut out = String::with_capacity(256);
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis().to_string()).unwrap_or_else(|| "0".into());
        let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Header(h) => match e.headers.as_ref().and_then(|m| m.get(h.as_str())) {
                    Some(v) if !v.is_empty() => escape_into(&mut out, v.as_bytes()),
                    _ => out.push('-'),
                },
                Seg::Var(v) => {
                    let s = match v {
                        Var::RemoteAddr => e.remote_addr.to_string(),
                        Var::TimeLocal => time_local(e.start),
                        Var::RequestLine => e.request_line.clone(),
                        Var::Status => e.status.to_string(),
                        Var::BodyBytesSent => e.body_bytes_sent.to_string(),
                        Var::RequestTime => format!("{:.3}", e.request_time.as_secs_f64()),
                        Var::UpstreamAddr => dash(&e.upstream_addr),
                        Var::UpstreamStatus => e.upstream_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        Var::UpstreamResponseTime | Var::ApisixUpstreamResponseTime => {
                            e.upstream_time.map(|d| d.as_millis().to_string()).unwrap_or_else(|| "-".into())
                        }
                        Var::RequestId => e.request_id.clone(),
                        Var::RouteId => dash(&e.route_id),
                        Var::RequestType => e.request_type.to_owned(),
                        Var::RequestLlmModel => e.request_llm_model.clone(),
                        Var::LlmModel => e.llm_model.clone(),
                        Var::Ttft => ms(e.ttft),
                        Var::PromptTokens => e.usage.prompt.to_string(),
                        Var::CompletionTokens => e.usage.completion.to_string(),
                        Var::TotalTokens => e.usage.total.to_string(),
                        Var::CacheRead => e.usage.cache_read.to_string(),
                        Var::CacheCreation => e.usage.cache_creation.to_string(),
                        Var::Reasoning => e.usage.reasoning.to_string(),
                        Var::Stream => e.stream.to_string(),
                        Var::HasToolCalls => e.has_tool_calls.to_string(),
                        Var::ToolCount => e.tool_count.to_string(),
                        Var::EndUserId => e.end_user_id.clone(),
                        Var::RemoteUser => dash(&remote_user(e)),
                        Var::UpstreamScheme => upstream_origin(e).map_or("-", |o| o.split_once("://").map_or("-", |(s, _)| s)).to_owned(),
                        Var::UpstreamHost => upstream_origin(e).map_or_else(|| "-".to_owned(), upstream_host),
                        Var::UpstreamUri => dash(&e.upstream_uri),
                        Var::Instance => dash(&e.instance),
                        // USD, 6 decimals; empty when no price matches (never 0 for unpriced).
                        Var::Cost => e.cost.map_or_else(String::new, |c| format!("{c:.6}")),
                        Var::RateLimitRemaining => e.ratelimit_remaining.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                        Var::ConsumerName => e.consumer.as_ref().map_or_else(|| "-".to_owned(), |c| c.name.to_string()),
                        Var::ConsumerGroupId => {
                            e.consumer.as_ref().and_then(|c| c.group.as_deref()).map_or_else(|| "-".to_owned(), str::to_owned)
                        }
                        Var::TraceId => {
                            if e.trace.trace_id == 0 {
                                "-".to_owned()
                            } else {
                                aigw_telemetry::ids::trace_hex(e.trace.trace_id)
                            }
                        }
                    };
                    escape_into(&mut out, s.as_bytes());
                }
            }
        }
        out
    }
}

/// nginx's `$remote_user`: the user name of HTTP Basic credentials (never the password).
fn remote_user(e: &Record) -> String {
    use base64::Engine as _;
    let Some(v) = e.headers.as_ref().and_then(|h| h.get(http::header::AUTHORIZATION)).and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    let Some(b64) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else { return String::new() };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return String::new() };
    let text = String::from_utf8_lossy(&raw);
    text.split_once(':').map(|(u, _)| u.to_owned()).unwrap_or_default()
}

/// `scheme://authority` of the upstream that answered (the last attempt's target).
fn upstream_origin(e: &Record) -> Option<&str> {
    let a = e.attempt.as_ref()?;
    Some(a.server.as_ref()?.origin.as_str())
}

/// nginx's `$upstream_host`: the host without its port.
fn upstream_host(origin: &str) -> String {
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => authority[..i].to_owned(),
        _ => authority.to_owned(),
    }
}

/// Appends `v` escaped as nginx's default log escaping does: `"`, `\\` and bytes below
/// 0x20 or above 0x7e become `\xHH`.
fn escape_into(out: &mut String, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
}

/// `25/Nov/2026:00:40:00 +0000` (UTC).
pub fn time_local(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000", MON[(m - 1) as usize], rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where lines go.
pub struct AccessLog {
    pub format: Format,
    tx: Option<mpsc::Sender<String>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    pub fn off() -> AccessLog {
        AccessLog {
            format: Format::parse("").unwrap_or(Format { segs: Vec::new(), needs_headers: false, needs_upstream_uri: false }),
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// `target` is a file path (appended), `stdout` or `off`. Spawns the writer task.
    pub fn open(target: &str, format: &str) -> Result<AccessLog, AccessLogError> {
        let format = Format::parse(format)?;
        if target == "off" {
            return Ok(AccessLog { format, tx: None, dropped: AtomicU64::new(0) });
        }
        let mut sink: Box<dyn Write + Send> = if target == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .map_err(|e| AccessLogError::Open(target.to_owned(), e))?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<String>(8192);
        std::thread::Builder::new()
            .name("aigw-access-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let mut batch = line;
                    batch.push('\n');
                    while let Ok(more) = rx.try_recv() {
                        batch.push_str(&more);
                        batch.push('\n');
                    }
                    if sink.write_all(batch.as_bytes()).and_then(|_| sink.flush()).is_err() {
                        // Nowhere to report a broken log sink but the process log.
                        tracing::warn!("access log write failed");
                    }
                }
            })
            .map_err(AccessLogError::Writer)?;
        Ok(AccessLog { format, tx: Some(tx), dropped: AtomicU64::new(0) })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: &Record) {
        if let Some(tx) = &self.tx
            && tx.try_send(self.format.render(e)).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sink for AccessLog {
    fn complete(&self, record: &Record) {
        self.log(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_llm::usage::Usage;
    use http::HeaderMap;

    fn entry() -> Record {
        let mut r = Record::new(
            "127.0.0.1".parse().unwrap(),
            "POST /anything HTTP/1.1".into(),
            "abc".into(),
            Some(HeaderMap::from_iter([(http::header::USER_AGENT, "curl/8.6.0".parse().unwrap())])),
        );
        r.start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_742_531_283);
        r.status = 200;
        r.body_bytes_sent = 804;
        r.request_time = Duration::from_millis(2858);
        r.upstream_addr = "127.0.0.1:8080".into();
        r.upstream_status = Some(200);
        r.upstream_time = Some(Duration::from_millis(2850));
        r.route_id = "r1".into();
        r.request_type = "ai_chat";
        r.request_llm_model = "gpt-4".into();
        r.llm_model = "gpt-4".into();
        r.ttft = Some(Duration::from_millis(2858));
        r.usage = Usage { prompt: 23, completion: 8, total: 31, cache_read: 1, cache_creation: 2, reasoning: 3 };
        r.has_tool_calls = true;
        r.tool_count = 2;
        r.end_user_id = "u1".into();
        r
    }

    #[test]
    fn every_variable_renders() {
        let f = Format::parse(
            "$remote_addr [$time_local] \"$request_line\" $status $body_bytes_sent $request_time $upstream_addr $upstream_status \
             $upstream_response_time $request_id $apisix_request_id $route_id $request_type $request_llm_model $llm_model \
             $llm_time_to_first_token $llm_prompt_tokens $llm_completion_tokens $llm_total_tokens $llm_cache_read_input_tokens \
             $llm_cache_creation_input_tokens $llm_reasoning_tokens $llm_stream $llm_has_tool_calls $llm_tool_count $llm_end_user_id \
             $apisix_upstream_response_time \"$http_user_agent\" ${status}x $ 100$",
        )
        .unwrap();
        assert_eq!(
            f.render(&entry()),
            "127.0.0.1 [21/Mar/2025:04:28:03 +0000] \"POST /anything HTTP/1.1\" 200 804 2.858 127.0.0.1:8080 200 2850 abc abc r1 ai_chat \
             gpt-4 gpt-4 2858 23 8 31 1 2 3 false true 2 u1 2850 \"curl/8.6.0\" 200x $ 100$"
        );
        assert!(f.needs_headers);
        assert!(Format::parse(DEFAULT_FORMAT).is_ok());
    }

    /// A client-chosen value with a newline or a quote cannot forge a line.
    #[test]
    fn client_values_are_escaped_as_nginx_does() {
        let f = Format::parse("\"$request_llm_model\" \"$http_user_agent\" $llm_end_user_id $request_line").unwrap();
        let mut e = entry();
        e.request_llm_model = "gpt\"\n127.0.0.1 - - [forged]".into();
        e.end_user_id = "a\\b\tc é".into();
        e.request_line = "POST /x\r HTTP/1.1".into();
        e.headers = Some(HeaderMap::from_iter([(http::header::USER_AGENT, http::HeaderValue::from_bytes(b"ua\"\x80").unwrap())]));
        let line = f.render(&e);
        assert_eq!(line, "\"gpt\\x22\\x0A127.0.0.1 - - [forged]\" \"ua\\x22\\x80\" a\\x5Cb\\x09c \\xC3\\xA9 POST /x\\x0D HTTP/1.1");
        assert!(!line.contains('\n'));
    }

    /// The spec's example format: every variable known, upstream parts from the target
    /// that answered, Basic user only (never the password), values escaped.
    #[test]
    fn the_spec_example_format_renders() {
        use crate::compiled::{CompileCtx, compile_route};
        let f = Format::parse(SPEC_EXAMPLE_FORMAT).unwrap();
        assert!(f.needs_headers && f.needs_upstream_uri);
        let route = serde_json::json!({"id": "r1", "uri": "/anything", "plugins": {"ai-proxy": {"provider": "openai", "auth": {},
            "override": {"endpoint": "https://api.example.com:8443/v1/chat/completions"}}}});
        let route = std::sync::Arc::new(compile_route(&route, &CompileCtx::bare(&crate::upstream::Upstreams::default())).unwrap());
        let mut e = entry();
        e.headers = Some(HeaderMap::from_iter([
            (http::header::USER_AGENT, "curl/8.6.0".parse().unwrap()),
            (http::header::HOST, "gw.example.com".parse().unwrap()),
            (http::header::AUTHORIZATION, "Basic YWxpY2U6czNjcjN0".parse().unwrap()),
        ]));
        e.set_route(route.id(), route.needs, false, &HeaderMap::new());
        e.keep_upstream_uri = true;
        let t = &route.targets[0];
        e.begin_attempt(&t.server, "https://api.example.com:8443/v1/chat/completions?api-version=1");
        assert_eq!(
            f.render(&e),
            "127.0.0.1 - alice [21/Mar/2025:04:28:03 +0000] gw.example.com \"POST /anything HTTP/1.1\" 200 804 2.858 \"-\" \"curl/8.6.0\" \
             127.0.0.1:8080 200 2850 \"https://api.example.com/v1/chat/completions\" \"abc\" \"ai_chat\" \"2858\" \"gpt-4\" \"gpt-4\" \"23\" \"8\""
        );
        let mut no_upstream = entry();
        no_upstream.headers = None;
        let line = f.render(&no_upstream);
        assert!(line.contains(" - - [") && line.contains("\"-://--\""), "{line}");
    }

    #[test]
    fn bad_formats() {
        assert!(Format::parse("$nope").unwrap_err().to_string().contains("$nope"));
        assert!(Format::parse("${status").unwrap_err().to_string().contains("unterminated"));
    }

    #[test]
    fn dates() {
        assert_eq!(time_local(SystemTime::UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(time_local(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "29/Feb/2000:00:00:00 +0000");
    }
}
