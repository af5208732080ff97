//! The proxy's instruments, in one [`Registry`] that `/metrics` renders as Prometheus text
//! and the OTLP exporter pushes: the GenAI metrics of CONTRACT §10, the gateway's labeled
//! counters, and the original unlabeled `aigw_proxy_*` counters (plain atomics).
//! Recording is a handful of relaxed atomic adds per request (see
//! `aigw_telemetry::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use aigw_telemetry::metrics::{BoundedValues, Counter, FloatCounter, Histogram, Memo, Registry};

/// Token-count buckets the GenAI conventions advise.
pub const TOKEN_BUCKETS: &[f64] =
    &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];
/// Duration buckets (seconds) the GenAI conventions advise for operation durations.
pub const DURATION_BUCKETS: &[f64] = &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/// `gen_ai.server.time_to_first_token` buckets.
pub const TTFT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
/// `gen_ai.server.time_per_output_token` buckets.
pub const TPOT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];

/// The GenAI label set (values in this order).
/// `--metrics-max-consumers`' default.
pub const DEFAULT_MAX_CONSUMERS: usize = 1000;

pub const GENAI_LABELS: &[&str] =
    &["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "error.type"];
/// `gen_ai.client.token.usage` adds the token type.
pub const TOKEN_LABELS: &[&str] =
    &["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.token.type", "consumer"];
/// Success-only metrics carry no `error.type`.
pub const OK_LABELS: &[&str] = &["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model"];

/// The GenAI instruments of CONTRACT §10.
pub struct GenAi {
    pub token_usage: Histogram,
    pub operation_duration: Histogram,
    pub server_request_duration: Histogram,
    pub server_ttft: Histogram,
    pub server_tpot: Histogram,
    /// semantic-conventions-genai v0.1 names, with `OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`.
    pub latest: Option<GenAiLatest>,
}

pub struct GenAiLatest {
    pub inference_duration: Histogram,
    pub input_tokens: Histogram,
    pub output_tokens: Histogram,
    pub time_to_first_chunk: Histogram,
}

/// Labeled gateway instruments.
pub struct Gateway {
    /// `aigw.route_id`, `gen_ai.provider.name`, `http.response.status_code`.
    pub requests: Counter,
    /// `aigw.route_id`, `gen_ai.provider.name`, `error.type`.
    pub upstream_errors: Counter,
}

pub struct Metrics {
    pub requests: AtomicU64,
    pub gateway_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub config_applied: AtomicU64,
    pub config_rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Responses that did not reach their end (client gone, upstream failure, limit).
    pub responses_aborted: AtomicU64,
    /// Of those, the client went away.
    pub clients_gone: AtomicU64,
    pub registry: Arc<Registry>,
    pub genai: GenAi,
    pub gateway: Gateway,
    /// Model names seen as label values: client input, so bounded (256 distinct values,
    /// 64 bytes of `[A-Za-z0-9._:/@+-]`; anything else is `_OTHER`).
    pub models: BoundedValues,
    /// Consumer names as metric labels: at most `--metrics-max-consumers`, the rest `other`.
    pub consumers: BoundedValues,
    /// `ai-rate-limiting` refusals by route and consumer (CONTRACT §13).
    pub ratelimit_rejected: Counter,
    /// Requests that used tokens of a model no price matches (CONTRACT §14).
    pub unpriced: Counter,
    /// The cost of requests, USD (CONTRACT §14).
    pub cost: FloatCounter,
}

/// The series one route's requests record into, kept with the compiled route (so a config
/// change starts afresh) and filled by its first completed request: a request then finds
/// its series by comparing a few label values (`aigw_telemetry::metrics::Memo`), without
/// a hash, a lock or the bounding of its model and consumer names.
#[derive(Default)]
pub struct RouteMemo(OnceLock<RouteSeries>);

pub struct RouteSeries {
    pub requests: Memo<Counter>,
    pub server_request_duration: Memo<Histogram>,
    pub operation_duration: Memo<Histogram>,
    pub token_usage: Memo<Histogram>,
    pub server_ttft: Memo<Histogram>,
    pub server_tpot: Memo<Histogram>,
    pub unpriced: Memo<Counter>,
    pub cost: Memo<FloatCounter>,
}

impl RouteMemo {
    /// The route's series memos on `m`'s instruments (made on first use).
    pub fn series(&self, m: &Metrics) -> &RouteSeries {
        self.0.get_or_init(|| RouteSeries {
            requests: Memo::new(m.gateway.requests.clone()),
            server_request_duration: Memo::new(m.genai.server_request_duration.clone()),
            operation_duration: Memo::new(m.genai.operation_duration.clone()),
            token_usage: Memo::new(m.genai.token_usage.clone()),
            server_ttft: Memo::new(m.genai.server_ttft.clone()),
            server_tpot: Memo::new(m.genai.server_tpot.clone()),
            unpriced: Memo::new(m.unpriced.clone()),
            cost: Memo::new(m.cost.clone()),
        })
    }
}

impl std::fmt::Debug for RouteMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMemo")
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::new(), false, DEFAULT_MAX_CONSUMERS)
    }
}

impl Metrics {
    pub fn new(registry: Arc<Registry>, genai_latest: bool, max_consumers: usize) -> Metrics {
        let r = &registry;
        let genai = GenAi {
            token_usage: r.histogram(
                "gen_ai.client.token.usage",
                "{token}",
                "Number of input and output tokens used.",
                TOKEN_LABELS,
                TOKEN_BUCKETS,
            ),
            operation_duration: r.histogram(
                "gen_ai.client.operation.duration",
                "s",
                "Duration of each upstream LLM call (one per attempt), until its response body ended.",
                GENAI_LABELS,
                DURATION_BUCKETS,
            ),
            server_request_duration: r.histogram(
                "gen_ai.server.request.duration",
                "s",
                "Duration of each LLM request as the gateway served it, until the last byte.",
                GENAI_LABELS,
                DURATION_BUCKETS,
            ),
            server_ttft: r.histogram(
                "gen_ai.server.time_to_first_token",
                "s",
                "Time from the request's arrival to the first streamed chunk, successful streams.",
                OK_LABELS,
                TTFT_BUCKETS,
            ),
            server_tpot: r.histogram(
                "gen_ai.server.time_per_output_token",
                "s",
                "(request duration - time to first token) / (output tokens - 1), successful streams.",
                OK_LABELS,
                TPOT_BUCKETS,
            ),
            latest: genai_latest.then(|| GenAiLatest {
                inference_duration: r.histogram(
                    "gen_ai.client.inference.duration",
                    "s",
                    "Duration of each upstream inference call.",
                    GENAI_LABELS,
                    DURATION_BUCKETS,
                ),
                input_tokens: r.histogram(
                    "gen_ai.client.inference.usage.input_tokens",
                    "{token}",
                    "Input tokens per inference call.",
                    OK_LABELS,
                    TOKEN_BUCKETS,
                ),
                output_tokens: r.histogram(
                    "gen_ai.client.inference.usage.output_tokens",
                    "{token}",
                    "Output tokens per inference call.",
                    OK_LABELS,
                    TOKEN_BUCKETS,
                ),
                time_to_first_chunk: r.histogram(
                    "gen_ai.client.inference.time_to_first_chunk",
                    "s",
                    "Time from sending a streamed inference call to its first chunk.",
                    GENAI_LABELS,
                    DURATION_BUCKETS,
                ),
            }),
        };
        let gateway = Gateway {
            requests: r.counter(
                "aigw.gateway.requests",
                "{request}",
                "Data-plane requests by route, provider and status sent to the client.",
                &["aigw.route_id", "gen_ai.provider.name", "http.response.status_code", "consumer"],
            ),
            upstream_errors: r.counter(
                "aigw.gateway.upstream.errors",
                "{error}",
                "Upstream attempts that failed, by route, provider and kind (connect_refused, timeout, 429, 500, upstream_stream_error, …).",
                &["aigw.route_id", "gen_ai.provider.name", "error.type"],
            ),
        };
        Metrics {
            requests: AtomicU64::new(0),
            gateway_errors: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            config_applied: AtomicU64::new(0),
            config_rejected: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            responses_aborted: AtomicU64::new(0),
            clients_gone: AtomicU64::new(0),
            genai,
            gateway,
            models: BoundedValues::new(256),
            consumers: BoundedValues::with_overflow(max_consumers, "other"),
            ratelimit_rejected: registry.counter(
                "aigw.ratelimit.rejected",
                "{request}",
                "Requests (or ai-proxy-multi attempts) refused by ai-rate-limiting, by route and consumer.",
                &["route", "consumer"],
            ),
            unpriced: registry.counter(
                "aigw.gen_ai.unpriced_requests",
                "{request}",
                "Requests that used tokens of a model no price matches (their cost is empty, not 0).",
                &["gen_ai.provider.name", "gen_ai.response.model"],
            ),
            cost: registry.float_counter(
                "aigw.gen_ai.cost",
                "USD",
                "The cost of requests in USD, from the price catalog and their exact usage.",
                &["gen_ai.provider.name", "gen_ai.response.model", "aigw.route_id", "consumer"],
            ),
            registry,
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
