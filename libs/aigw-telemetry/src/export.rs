//! The OTLP exporter: one background thread with its own single-threaded runtime, so
//! encoding and sending never run on a request's worker thread.
//!
//! * Spans: a request hands a [`SpanSource`] (plain data, no OTLP objects) to
//!   [`Tracer::submit`], a non-blocking `try_send` into a bounded queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`). The thread turns sources into OTLP spans and sends them
//!   in batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, or every `OTEL_BSP_SCHEDULE_DELAY`).
//!   A full queue drops the span and counts it; a failed export drops the batch and
//!   counts it. Nothing ever waits for the collector but this thread.
//! * Metrics: every `OTEL_METRIC_EXPORT_INTERVAL` the [`Registry`] is read (atomics) and
//!   pushed, cumulative, to the same collector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use tokio::sync::mpsc;

use crate::config::{OtelConfig, Protocol};
use crate::ids::TraceParent;
use crate::metrics::{Registry, kv, kv_str};
use crate::sampler::Sampler;

/// Plain data that becomes one or more spans on the exporter thread.
pub trait SpanSource: Send + 'static {
    fn spans(self: Box<Self>, out: &mut Vec<Span>);
}

/// What the exporter did, for `/metrics` and OTLP (`aigw.telemetry.*`).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    /// The queue was full: the span was never built.
    pub spans_dropped: AtomicU64,
    /// Built and sent, but the collector did not take them (down, refused, timeout).
    pub spans_failed: AtomicU64,
    pub metric_exports: AtomicU64,
    pub metric_export_failures: AtomicU64,
}

/// A request's trace identity, decided when it starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceStart {
    pub trace_id: u128,
    /// The client's span (0: this request starts the trace).
    pub parent_id: u64,
    /// Our SERVER span.
    pub span_id: u64,
    pub sampled: bool,
}

/// The request side of the exporter.
pub struct Tracer {
    tx: mpsc::Sender<Box<dyn SpanSource>>,
    sampler: Sampler,
    stats: Arc<ExportStats>,
}

impl Tracer {
    /// Continues the client's `traceparent` when it is valid, else starts a new trace;
    /// the sampling decision is made here, once.
    pub fn start(&self, traceparent: Option<&[u8]>) -> TraceStart {
        let parent = traceparent.and_then(TraceParent::parse);
        let trace_id = parent.map(|p| p.trace_id).unwrap_or_else(crate::ids::trace_id);
        TraceStart {
            trace_id,
            parent_id: parent.map_or(0, |p| p.parent_id),
            span_id: crate::ids::span_id(),
            sampled: self.sampler.sampled(parent.as_ref(), trace_id),
        }
    }

    /// Queues finished work for export; never waits (a full queue drops it, counted).
    pub fn submit(&self, s: Box<dyn SpanSource>) {
        if self.tx.try_send(s).is_err() {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// A tracer whose queue goes nowhere (tests of span building).
    pub fn detached(sampler: Sampler, capacity: usize) -> (Tracer, mpsc::Receiver<Box<dyn SpanSource>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Tracer { tx, sampler, stats: Arc::default() }, rx)
    }
}

/// The running exporter; [`shutdown`](Exporter::shutdown) flushes what is queued.
pub struct Exporter {
    tracer: Option<Arc<Tracer>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
    summary: String,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

enum Transport {
    Grpc {
        traces: Option<TraceServiceClient<tonic::transport::Channel>>,
        metrics: Option<MetricsServiceClient<tonic::transport::Channel>>,
        headers: tonic::metadata::MetadataMap,
    },
    Http {
        client: HttpClient,
        traces: Option<http::Uri>,
        metrics: Option<http::Uri>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

const CA_VAR: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";

/// A lazily connecting channel to `url` (`http://` = h2c, `https://` = TLS verified against
/// `ca` or the webpki roots).
fn channel(url: &str, timeout: Duration, ca: Option<&[u8]>) -> Result<tonic::transport::Channel, String> {
    let ep = tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|e| format!("OTLP endpoint {url:?}: {e}"))?;
    let connector = aigw_net::grpc_connector_named(ca, CA_VAR, timeout).map_err(|e| format!("OTLP TLS: {e}"))?;
    Ok(ep.timeout(timeout).connect_timeout(timeout).connect_with_connector_lazy(connector))
}

impl Transport {
    fn new(cfg: &OtelConfig) -> Result<Transport, String> {
        match cfg.protocol {
            Protocol::Grpc => {
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad header name {k:?}"))?;
                    let val = v.parse().map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {k:?}"))?;
                    headers.insert(key, val);
                }
                let ch = |u: &str| channel(u, cfg.timeout, cfg.ca_pem.as_deref());
                Ok(Transport::Grpc {
                    traces: cfg.traces_endpoint.as_deref().map(ch).transpose()?.map(TraceServiceClient::new),
                    metrics: cfg.metrics_endpoint.as_deref().map(ch).transpose()?.map(MetricsServiceClient::new),
                    headers,
                })
            }
            Protocol::HttpProtobuf => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
                conn.enforce_http(false);
                conn.set_connect_timeout(Some(cfg.timeout));
                let builder = match cfg.ca_pem.as_deref() {
                    Some(pem) => hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(aigw_net::client_tls(pem, CA_VAR).map_err(|e| e.to_string())?),
                    None => hyper_rustls::HttpsConnectorBuilder::new()
                        .with_provider_and_webpki_roots(provider)
                        .map_err(|e| format!("OTLP TLS: {e}"))?,
                };
                let https = builder.https_or_http().enable_http1().wrap_connector(conn);
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
                let uri = |u: &Option<String>| {
                    u.as_deref().map(|u| u.parse::<http::Uri>().map_err(|e| format!("OTLP endpoint {u:?}: {e}"))).transpose()
                };
                let mut headers = Vec::new();
                for (k, v) in &cfg.headers {
                    let name =
                        HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad header name {k:?}"))?;
                    let mut val = HeaderValue::from_str(v).map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: bad value for {k:?}"))?;
                    val.set_sensitive(true);
                    headers.push((name, val));
                }
                Ok(Transport::Http { client, traces: uri(&cfg.traces_endpoint)?, metrics: uri(&cfg.metrics_endpoint)?, headers })
            }
        }
    }

    fn has_traces(&self) -> bool {
        match self {
            Transport::Grpc { traces, .. } => traces.is_some(),
            Transport::Http { traces, .. } => traces.is_some(),
        }
    }

    fn has_metrics(&self) -> bool {
        match self {
            Transport::Grpc { metrics, .. } => metrics.is_some(),
            Transport::Http { metrics, .. } => metrics.is_some(),
        }
    }

    async fn post(client: &HttpClient, uri: &http::Uri, headers: &[(HeaderName, HeaderValue)], body: Vec<u8>) -> Result<(), String> {
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        if resp.status().is_success() { Ok(()) } else { Err(format!("collector answered {}", resp.status())) }
    }

    async fn spans(&mut self, req: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc { traces: Some(c), headers, .. } => {
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = headers.clone();
                c.export(r).await.map(|_| ()).map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            Transport::Http { client, traces: Some(u), headers, .. } => {
                Transport::post(client, u, headers, prost::Message::encode_to_vec(&req)).await
            }
            _ => Ok(()),
        }
    }

    async fn metrics(&mut self, req: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc { metrics: Some(c), headers, .. } => {
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = headers.clone();
                c.export(r).await.map(|_| ()).map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            Transport::Http { client, metrics: Some(u), headers, .. } => {
                Transport::post(client, u, headers, prost::Message::encode_to_vec(&req)).await
            }
            _ => Ok(()),
        }
    }
}

/// Registers the exporter's own counters (`aigw.telemetry.*`).
fn observe_stats(registry: &Registry, stats: Arc<ExportStats>) {
    registry.observe(move |o| {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        o.counter("aigw.telemetry.spans.exported", "{span}", "Spans the collector accepted.", &[], g(&stats.spans_exported));
        o.counter(
            "aigw.telemetry.spans.dropped",
            "{span}",
            "Spans dropped because the export queue was full.",
            &[],
            g(&stats.spans_dropped),
        );
        o.counter(
            "aigw.telemetry.spans.failed",
            "{span}",
            "Spans lost because their export failed (collector down, refused, timed out).",
            &[],
            g(&stats.spans_failed),
        );
        o.counter("aigw.telemetry.metric.exports", "{export}", "Metric exports the collector accepted.", &[], g(&stats.metric_exports));
        o.counter(
            "aigw.telemetry.metric.export.failures",
            "{export}",
            "Metric exports that failed.",
            &[],
            g(&stats.metric_export_failures),
        );
    });
}

fn resource(cfg: &OtelConfig, version: &str) -> Resource {
    let mut attributes = vec![
        kv_str("service.name", &cfg.service_name),
        kv_str("service.version", version),
        kv_str("telemetry.sdk.name", "aigw"),
        kv_str("telemetry.sdk.language", "rust"),
    ];
    attributes.extend(cfg.resource.iter().filter(|(k, _)| k != "service.version" || version.is_empty()).map(|(k, v)| kv_str(k, v)));
    Resource { attributes, ..Default::default() }
}

impl Exporter {
    /// Starts the exporter thread for `scope` (the instrumentation scope name, e.g.
    /// `aigw-proxy`). Errors are configuration errors (the binary exits with them).
    pub fn start(cfg: OtelConfig, registry: Arc<Registry>, scope: &'static str, version: &'static str) -> Result<Exporter, String> {
        let stats = Arc::new(ExportStats::default());
        observe_stats(&registry, stats.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("OTLP exporter runtime: {e}"))?;
        let transport = {
            let _guard = rt.enter();
            Transport::new(&cfg)?
        };
        let (tx, rx) = mpsc::channel::<Box<dyn SpanSource>>(cfg.bsp_queue);
        let tracer = transport.has_traces().then(|| Arc::new(Tracer { tx, sampler: cfg.sampler.clone(), stats: stats.clone() }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let res = resource(&cfg, version);
        let scope = InstrumentationScope { name: scope.to_owned(), version: version.to_owned(), ..Default::default() };
        let summary = format!(
            "protocol={:?} traces={} metrics={} service={}",
            cfg.protocol,
            cfg.traces_endpoint.as_deref().unwrap_or("off"),
            cfg.metrics_endpoint.as_deref().unwrap_or("off"),
            cfg.service_name
        );
        let worker = Worker { cfg, transport, registry, stats, res, scope, rx };
        std::thread::Builder::new()
            .name("aigw-otlp".into())
            .spawn(move || {
                rt.block_on(worker.run(stop_rx));
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("OTLP exporter thread: {e}"))?;
        Ok(Exporter { tracer, stop: Some(stop_tx), done: Some(done_rx), summary })
    }

    /// Logs where telemetry goes (call once logging is set up).
    pub fn log_start(&self) {
        tracing::info!("OTLP export on: {}", self.summary);
    }

    /// The span side (None when `OTEL_TRACES_EXPORTER=none`).
    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        self.tracer.clone()
    }

    /// Exports what is queued and the metrics one last time (at most `timeout`).
    pub fn shutdown(mut self, timeout: Duration) {
        self.tracer = None;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take()
            && d.recv_timeout(timeout).is_err()
        {
            tracing::warn!("OTLP exporter did not finish within {timeout:?}; unsent telemetry dropped");
        }
    }
}

struct Worker {
    cfg: OtelConfig,
    transport: Transport,
    registry: Arc<Registry>,
    stats: Arc<ExportStats>,
    res: Resource,
    scope: InstrumentationScope,
    rx: mpsc::Receiver<Box<dyn SpanSource>>,
}

impl Worker {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let batch = self.cfg.bsp_batch;
        let mut buf: Vec<Box<dyn SpanSource>> = Vec::with_capacity(batch.min(4096));
        let start = tokio::time::Instant::now();
        let mut span_tick = tokio::time::interval_at(start + self.cfg.bsp_delay, self.cfg.bsp_delay);
        span_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metric_tick = tokio::time::interval_at(start + self.cfg.metric_interval, self.cfg.metric_interval);
        metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let room = batch - buf.len();
            tokio::select! {
                n = self.rx.recv_many(&mut buf, room) => {
                    if n == 0 {
                        break; // every sender is gone
                    }
                    if buf.len() >= batch {
                        self.flush(&mut buf, &mut failing).await;
                    }
                }
                _ = span_tick.tick() => {
                    if !buf.is_empty() {
                        self.flush(&mut buf, &mut failing).await;
                    }
                }
                _ = metric_tick.tick() => self.export_metrics(&mut failing).await,
                _ = &mut stop => break,
            }
        }
        while let Ok(s) = self.rx.try_recv() {
            buf.push(s);
            if buf.len() >= batch {
                self.flush(&mut buf, &mut failing).await;
            }
        }
        if !buf.is_empty() {
            self.flush(&mut buf, &mut failing).await;
        }
        self.export_metrics(&mut failing).await;
    }

    /// Logs the first failure of a run of failures and the recovery, not every batch.
    fn note(failing: &mut bool, what: &str, r: &Result<(), String>) {
        match r {
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!("OTLP {what} export failed, telemetry is being dropped (counted): {e}");
            }
            Ok(()) if *failing => {
                *failing = false;
                tracing::info!("OTLP export recovered");
            }
            _ => {}
        }
    }

    async fn flush(&mut self, buf: &mut Vec<Box<dyn SpanSource>>, failing: &mut bool) {
        let mut spans = Vec::with_capacity(buf.len() * 2);
        for s in buf.drain(..) {
            s.spans(&mut spans);
        }
        let n = spans.len() as u64;
        if n == 0 {
            return;
        }
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.res.clone()),
                scope_spans: vec![ScopeSpans { scope: Some(self.scope.clone()), spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        let r = match tokio::time::timeout(self.cfg.timeout, self.transport.spans(req)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
        };
        let c = if r.is_ok() { &self.stats.spans_exported } else { &self.stats.spans_failed };
        c.fetch_add(n, Ordering::Relaxed);
        Worker::note(failing, "span", &r);
    }

    async fn export_metrics(&mut self, failing: &mut bool) {
        if !self.transport.has_metrics() {
            return;
        }
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.res.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics: self.registry.to_otlp(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let r = match tokio::time::timeout(self.cfg.timeout, self.transport.metrics(req)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.cfg.timeout)),
        };
        let c = if r.is_ok() { &self.stats.metric_exports } else { &self.stats.metric_export_failures };
        c.fetch_add(1, Ordering::Relaxed);
        Worker::note(failing, "metric", &r);
    }
}

/// Span kinds used here.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Internal,
    Server,
    Client,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Builds one OTLP span with explicit ids and times.
pub struct SpanBuilder {
    span: Span,
}

impl SpanBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(trace_id: u128, span_id: u64, parent_id: u64, name: String, kind: Kind, start: SystemTime, end: SystemTime) -> SpanBuilder {
        let kind = match kind {
            Kind::Internal => span::SpanKind::Internal,
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32;
        SpanBuilder {
            span: Span {
                trace_id: trace_id.to_be_bytes().to_vec(),
                span_id: span_id.to_be_bytes().to_vec(),
                parent_span_id: if parent_id == 0 { Vec::new() } else { parent_id.to_be_bytes().to_vec() },
                flags: 1,
                name,
                kind,
                start_time_unix_nano: unix_nanos(start),
                end_time_unix_nano: unix_nanos(end.max(start)),
                attributes: Vec::with_capacity(24),
                ..Default::default()
            },
        }
    }

    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.span.attributes.push(kv_str(k, v));
        self
    }

    /// Sets `k` only when `v` is not empty.
    pub fn str_nonempty(&mut self, k: &str, v: &str) -> &mut Self {
        if !v.is_empty() {
            self.str(k, v);
        }
        self
    }

    pub fn int(&mut self, k: &str, v: i64) -> &mut Self {
        self.span.attributes.push(kv(k, any_value::Value::IntValue(v)));
        self
    }

    pub fn double(&mut self, k: &str, v: f64) -> &mut Self {
        self.span.attributes.push(kv(k, any_value::Value::DoubleValue(v)));
        self
    }

    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.span.attributes.push(kv(k, any_value::Value::BoolValue(v)));
        self
    }

    pub fn strs(&mut self, k: &str, v: &[&str]) -> &mut Self {
        let values = v.iter().map(|s| AnyValue { value: Some(any_value::Value::StringValue((*s).to_owned())) }).collect();
        self.span.attributes.push(kv(k, any_value::Value::ArrayValue(ArrayValue { values })));
        self
    }

    pub fn event(&mut self, name: &str, at: SystemTime, attributes: Vec<KeyValue>) -> &mut Self {
        self.span.events.push(span::Event { time_unix_nano: unix_nanos(at), name: name.to_owned(), attributes, ..Default::default() });
        self
    }

    /// Marks the span failed (status ERROR with `message`).
    pub fn error(&mut self, message: &str) -> &mut Self {
        self.span.status = Some(Status { message: message.to_owned(), code: status::StatusCode::Error as i32 });
        self
    }

    pub fn build(self) -> Span {
        self.span
    }
}
