//! The OTLP exporter: spans are encoded where they end, sent from one background thread.
//!
//! * Spans: a request encodes its spans with [`Tracer::spans`] straight into OTLP protobuf
//!   ([`crate::wire`]), into a batch of its own thread (an uncontended lock; no span
//!   object, box or queue operation, nothing handed to another thread per request). A
//!   batch that reaches `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (or [`MAX_BATCH_BYTES`]) is
//!   queued for the exporter thread with a non-blocking `try_send` (`OTEL_BSP_MAX_QUEUE_SIZE`
//!   spans in queued batches; a full queue drops the batch and counts it). Every
//!   `OTEL_BSP_SCHEDULE_DELAY` the exporter also takes the threads' partial batches; a
//!   thread that ends queues its own. It sends up to [`MAX_SPAN_EXPORTS_IN_FLIGHT`]
//!   batches at once; a failed export drops its batch and counts it. Nothing ever waits
//!   for the collector but this thread.
//! * Metrics: every `OTEL_METRIC_EXPORT_INTERVAL` the [`Registry`] is read (atomics) and
//!   pushed, cumulative, to the same collector.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderName, HeaderValue};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::{OtelConfig, Protocol};
use crate::ids::TraceParent;
use crate::metrics::{Registry, kv_str};
use crate::sampler::Sampler;
pub use crate::wire::{BatchHead, Kind, SpanBatch, SpanBuilder, Value};

/// Span exports that may be on the wire at once: a collector slow to answer (on a busy
/// machine, one not scheduled for a few milliseconds) does not stop the queue draining.
const MAX_SPAN_EXPORTS_IN_FLIGHT: usize = 4;

/// A thread's batch is queued at this size even before it has
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans (payload events can be large; collectors refuse
/// requests over 4 MiB by default).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// How often the exporter thread takes the full batches queued (at most; sooner when
/// `OTEL_BSP_SCHEDULE_DELAY` is shorter). Polled, not awaited: awaiting the queue would wake
/// the thread for every batch, a futex call on the request's thread.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// What the exporter did, for `/metrics` and OTLP (`aigw.telemetry.*`).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    /// The queue was full: the batch was dropped before it was sent.
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

/// A full batch: its span count and its encoded `ExportTraceServiceRequest`.
type FullBatch = (u64, Bytes);

/// One thread's batch being filled.
type Shard = Arc<Mutex<SpanBatch>>;

/// Encoded spans on their way: the threads' batches being filled, and full batches queued
/// for the exporter thread.
struct Queue {
    /// Which tracer a thread's shard belongs to (a process may have several: tests).
    id: u64,
    head: BatchHead,
    max_batch: usize,
    /// Every thread's shard; a thread's own entry keeps it alive (see [`Local`]).
    shards: Mutex<Vec<Weak<Mutex<SpanBatch>>>>,
    full: mpsc::Sender<FullBatch>,
    stats: Arc<ExportStats>,
}

impl Queue {
    /// Queues a full batch; never waits (a full queue drops it, counted).
    fn push(&self, n: u64, bytes: Bytes) {
        if self.full.try_send((n, bytes)).is_err() {
            self.stats.spans_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Every live thread's partial batch (shards of threads that ended are forgotten).
    fn take_partial(&self) -> Vec<FullBatch> {
        let live: Vec<Shard> = {
            let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            shards.retain(|w| w.strong_count() > 0);
            shards.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out = Vec::new();
        for s in live {
            let mut b = s.lock().unwrap_or_else(|e| e.into_inner());
            if !b.is_empty() {
                out.push((b.len() as u64, b.take()));
            }
        }
        out
    }
}

/// A thread's shards, one per live tracer. When the thread ends (a blocking-pool thread
/// that idled out), what its batches hold is queued, and they are freed.
#[derive(Default)]
struct Local(Vec<(u64, Weak<Queue>, Shard)>);

impl Drop for Local {
    fn drop(&mut self) {
        for (_, queue, shard) in self.0.drain(..) {
            let Some(q) = queue.upgrade() else { continue };
            let mut b = shard.lock().unwrap_or_else(|e| e.into_inner());
            if !b.is_empty() {
                let n = b.len() as u64;
                q.push(n, b.take());
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::default();
}

/// The request side of the exporter.
pub struct Tracer {
    sampler: Sampler,
    stats: Arc<ExportStats>,
    queue: Arc<Queue>,
}

impl Tracer {
    fn new(
        sampler: Sampler,
        stats: Arc<ExportStats>,
        head: BatchHead,
        max_batch: usize,
        max_queue: usize,
    ) -> (Tracer, mpsc::Receiver<FullBatch>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let max_batch = max_batch.max(1);
        let (full, rx) = mpsc::channel((max_queue / max_batch).max(1));
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let queue = Queue { id, head, max_batch, shards: Mutex::default(), full, stats: stats.clone() };
        (Tracer { sampler, stats, queue: Arc::new(queue) }, rx)
    }

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

    /// Encodes finished spans into this thread's batch; never waits (a batch that fills
    /// while the queue is full is dropped, counted).
    pub fn spans(&self, encode: impl FnOnce(&mut SpanBatch)) {
        let q = &self.queue;
        let full = |b: &mut SpanBatch| (b.len() >= q.max_batch || b.bytes() >= MAX_BATCH_BYTES).then(|| (b.len() as u64, b.take()));
        let mut encode = Some(encode);
        let done = LOCAL.try_with(|local| {
            let shard = self.shard(&mut local.borrow_mut());
            let mut b = shard.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = encode.take() {
                f(&mut b);
            }
            full(&mut b)
        });
        let batch = match done {
            Ok(batch) => batch,
            // A thread past its thread-locals (ending): a batch of its own, queued at once.
            Err(_) => {
                let mut b = SpanBatch::new(q.head.clone());
                if let Some(f) = encode.take() {
                    f(&mut b);
                }
                (!b.is_empty()).then(|| (b.len() as u64, b.take()))
            }
        };
        if let Some((n, bytes)) = batch {
            q.push(n, bytes);
        }
    }

    /// This thread's shard of this tracer (made and registered on first use).
    fn shard(&self, local: &mut Local) -> Shard {
        let q = &self.queue;
        if let Some((_, _, s)) = local.0.iter().find(|(id, _, _)| *id == q.id) {
            return s.clone();
        }
        local.0.retain(|(_, queue, _)| queue.strong_count() > 0);
        let s = Arc::new(Mutex::new(SpanBatch::new(q.head.clone())));
        q.shards.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&s));
        local.0.push((q.id, Arc::downgrade(q), s.clone()));
        s
    }

    pub fn stats(&self) -> &Arc<ExportStats> {
        &self.stats
    }

    /// A tracer with no exporter (tests of span building): [`take`](Self::take) returns
    /// what was encoded.
    pub fn detached(sampler: Sampler) -> Tracer {
        Tracer::new(sampler, Arc::default(), BatchHead::new(&[], "test", ""), usize::MAX, usize::MAX).0
    }

    /// Every batch encoded so far, on every thread (tests).
    pub fn take(&self) -> Vec<Bytes> {
        self.queue.take_partial().into_iter().map(|(_, b)| b).collect()
    }
}

/// The running exporter; [`shutdown`](Exporter::shutdown) flushes what is queued.
pub struct Exporter {
    tracer: Option<Arc<Tracer>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
    summary: String,
}

type HttpClient = aigw_net::client::HttpsClient<http_body_util::Full<Bytes>>;

#[derive(Clone)]
enum Transport {
    Grpc {
        traces: Option<tonic::client::Grpc<tonic::transport::Channel>>,
        metrics: Option<tonic::client::Grpc<tonic::transport::Channel>>,
        headers: tonic::metadata::MetadataMap,
    },
    Http {
        client: HttpClient,
        traces: Option<http::Uri>,
        metrics: Option<http::Uri>,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// What an export carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn grpc_path(self) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        })
    }

    /// What the collector says it rejected (`partial_success`); only spans are counted.
    fn rejected(self, answer: &[u8]) -> u64 {
        match self {
            Signal::Traces => prost::Message::decode(answer)
                .ok()
                .and_then(|r: ExportTraceServiceResponse| r.partial_success)
                .map_or(0, |p| p.rejected_spans.max(0) as u64),
            Signal::Metrics => 0,
        }
    }
}

/// A gRPC codec for bodies that are already encoded protobuf: the exporter writes OTLP
/// itself ([`crate::wire`]), so tonic only frames the bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Encoded;

impl tonic::codec::Codec for Encoded {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Encoded;
    type Decoder = Encoded;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> Encoded {
        Encoded
    }
}

impl tonic::codec::Encoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Encoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
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
                    traces: cfg.traces_endpoint.as_deref().map(ch).transpose()?.map(tonic::client::Grpc::new),
                    metrics: cfg.metrics_endpoint.as_deref().map(ch).transpose()?.map(tonic::client::Grpc::new),
                    headers,
                })
            }
            Protocol::HttpProtobuf => {
                let roots =
                    cfg.ca_pem.as_deref().map_or(aigw_net::client::Roots::Webpki, |pem| aigw_net::client::Roots::Pem { pem, what: CA_VAR });
                let client = aigw_net::client::https(&aigw_net::client::Options::default().roots(roots).connect_timeout(cfg.timeout))
                    .map_err(|e| format!("OTLP TLS: {e}"))?;
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

    /// Sends one encoded export request; the answer is the number of items the
    /// collector says it rejected.
    async fn send(self, signal: Signal, body: Bytes) -> Result<u64, String> {
        match self {
            Transport::Grpc { traces, metrics, headers } => {
                let Some(mut grpc) = (if signal == Signal::Traces { traces } else { metrics }) else { return Ok(0) };
                grpc.ready().await.map_err(|e| format!("collector not reachable: {e}"))?;
                let mut req = tonic::Request::new(body);
                *req.metadata_mut() = headers;
                let answer = grpc.unary(req, signal.grpc_path(), Encoded).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
                Ok(signal.rejected(answer.get_ref()))
            }
            Transport::Http { client, traces, metrics, headers } => {
                let Some(uri) = (if signal == Signal::Traces { traces } else { metrics }) else { return Ok(0) };
                let mut req = http::Request::post(uri)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(body))
                    .map_err(|e| e.to_string())?;
                for (k, v) in headers {
                    req.headers_mut().insert(k, v);
                }
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("collector answered {}", resp.status()));
                }
                // The answer is a small ExportTraceServiceResponse; anything past 64 KiB
                // is not read (the export succeeded either way).
                let answer = http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), 64 << 10))
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok(signal.rejected(&answer))
            }
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

/// The resource's attributes: the service, the SDK, and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(cfg: &OtelConfig, version: &str) -> Vec<(String, String)> {
    let mut attributes = vec![
        ("service.name".to_owned(), cfg.service_name.clone()),
        ("service.version".to_owned(), version.to_owned()),
        ("telemetry.sdk.name".to_owned(), "aigw".to_owned()),
        ("telemetry.sdk.language".to_owned(), "rust".to_owned()),
    ];
    attributes.extend(cfg.resource.iter().filter(|(k, _)| k != "service.version" || version.is_empty()).cloned());
    attributes
}

impl Exporter {
    /// Starts the exporter thread for `scope` (the instrumentation scope name, e.g.
    /// `aigw-proxy`). Errors are configuration errors (the binary exits with them).
    pub fn start(
        cfg: OtelConfig,
        registry: Arc<Registry>,
        scope: &'static str,
        version: &'static str,
    ) -> Result<Exporter, crate::OtelError> {
        let stats = Arc::new(ExportStats::default());
        observe_stats(&registry, stats.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("OTLP exporter runtime: {e}"))?;
        let transport = {
            let _guard = rt.enter();
            Transport::new(&cfg)?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let attrs = resource(&cfg, version);
        let pairs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let head = BatchHead::new(&pairs, scope, version);
        let (tracer, rx) = Tracer::new(cfg.sampler.clone(), stats.clone(), head, cfg.bsp_batch, cfg.bsp_queue);
        let queue = tracer.queue.clone();
        let tracer = transport.has_traces().then(|| Arc::new(tracer));
        let res = Resource { attributes: attrs.iter().map(|(k, v)| kv_str(k, v)).collect(), ..Default::default() };
        let scope = InstrumentationScope { name: scope.to_owned(), version: version.to_owned(), ..Default::default() };
        let summary = format!(
            "protocol={:?} traces={} metrics={} service={}",
            cfg.protocol,
            cfg.traces_endpoint.as_deref().unwrap_or("off"),
            cfg.metrics_endpoint.as_deref().unwrap_or("off"),
            cfg.service_name
        );
        let worker = Worker { cfg, transport, registry, stats, queue, pending: VecDeque::new(), in_flight: HashMap::new(), res, scope, rx };
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
    queue: Arc<Queue>,
    /// Partial batches taken from the threads, waiting for an export slot.
    pending: VecDeque<FullBatch>,
    /// The span count of each export in flight (kept here, so that a task that fails
    /// still counts its spans).
    in_flight: HashMap<tokio::task::Id, u64>,
    /// Of metric exports.
    res: Resource,
    scope: InstrumentationScope,
    rx: mpsc::Receiver<FullBatch>,
}

/// A span export's result: spans the collector rejected, or why it failed.
type SpanSent = Result<u64, String>;

impl Worker {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut sends: JoinSet<SpanSent> = JoinSet::new();
        let mut metric_sends: JoinSet<Result<u64, String>> = JoinSet::new();
        let start = tokio::time::Instant::now();
        let every = DRAIN_EVERY.min(self.cfg.bsp_delay).max(Duration::from_millis(1));
        let mut drain_tick = tokio::time::interval_at(start + every, every);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut span_tick = tokio::time::interval_at(start + self.cfg.bsp_delay, self.cfg.bsp_delay);
        span_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metric_tick = tokio::time::interval_at(start + self.cfg.metric_interval, self.cfg.metric_interval);
        metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                Some(done) = sends.join_next_with_id(), if !sends.is_empty() => {
                    self.spans_done(done, &mut failing);
                    self.pump(&mut sends);
                }
                Some(done) = metric_sends.join_next(), if !metric_sends.is_empty() => self.metrics_done(done, &mut failing),
                _ = drain_tick.tick() => self.pump(&mut sends),
                _ = span_tick.tick() => {
                    self.take_partial();
                    self.pump(&mut sends);
                }
                _ = metric_tick.tick() => self.send_metrics(&mut metric_sends),
                _ = &mut stop => break,
            }
        }
        // Stopping: everything encoded is sent (within the caller's timeout).
        self.take_partial();
        loop {
            self.pump(&mut sends);
            if self.pending.is_empty() && self.rx.is_empty() {
                break;
            }
            if let Some(done) = sends.join_next_with_id().await {
                self.spans_done(done, &mut failing);
            }
        }
        self.send_metrics(&mut metric_sends);
        while let Some(done) = sends.join_next_with_id().await {
            self.spans_done(done, &mut failing);
        }
        while let Some(done) = metric_sends.join_next().await {
            self.metrics_done(done, &mut failing);
        }
    }

    /// The threads' partial batches, behind the ones already waiting; with the collector
    /// away, no more wait than the queue holds (the oldest are dropped, counted).
    fn take_partial(&mut self) {
        self.pending.extend(self.queue.take_partial());
        let max = (self.cfg.bsp_queue / self.queue.max_batch).max(1) + self.queue.shards.lock().map_or(0, |s| s.len());
        while self.pending.len() > max {
            if let Some((n, _)) = self.pending.pop_front() {
                self.stats.spans_dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Starts exports while a slot is free: waiting partial batches first, then full ones.
    fn pump(&mut self, sends: &mut JoinSet<SpanSent>) {
        while sends.len() < MAX_SPAN_EXPORTS_IN_FLIGHT {
            let Some((n, body)) = self.pending.pop_front().or_else(|| self.rx.try_recv().ok()) else { break };
            let (transport, timeout) = (self.transport.clone(), self.cfg.timeout);
            let task = sends.spawn(async move {
                match tokio::time::timeout(timeout, transport.send(Signal::Traces, body)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            });
            self.in_flight.insert(task.id(), n);
        }
    }

    /// Logs the first failure of a run of failures and the recovery, not every batch.
    fn note(failing: &mut bool, what: &str, r: &Result<u64, String>) {
        match r {
            Err(e) if !*failing => {
                *failing = true;
                tracing::warn!("OTLP {what} export failed, telemetry is being dropped (counted): {e}");
            }
            Ok(_) if *failing => {
                *failing = false;
                tracing::info!("OTLP export recovered");
            }
            _ => {}
        }
    }

    fn spans_done(&mut self, done: Result<(tokio::task::Id, SpanSent), tokio::task::JoinError>, failing: &mut bool) {
        let (id, r) = match done {
            Ok((id, r)) => (id, r),
            Err(e) => (e.id(), Err(format!("export task failed: {e}"))),
        };
        let n = self.in_flight.remove(&id).unwrap_or(0);
        match &r {
            Ok(rejected) => {
                let rejected = (*rejected).min(n);
                self.stats.spans_exported.fetch_add(n - rejected, Ordering::Relaxed);
                self.stats.spans_failed.fetch_add(rejected, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.spans_failed.fetch_add(n, Ordering::Relaxed);
            }
        }
        Worker::note(failing, "span", &r);
    }

    fn send_metrics(&self, sends: &mut JoinSet<Result<u64, String>>) {
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
        let body = Bytes::from(prost::Message::encode_to_vec(&req));
        let (transport, timeout) = (self.transport.clone(), self.cfg.timeout);
        sends.spawn(async move {
            match tokio::time::timeout(timeout, transport.send(Signal::Metrics, body)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        });
    }

    fn metrics_done(&self, done: Result<Result<u64, String>, tokio::task::JoinError>, failing: &mut bool) {
        let r = done.unwrap_or_else(|e| Err(format!("export task failed: {e}")));
        let c = if r.is_ok() { &self.stats.metric_exports } else { &self.stats.metric_export_failures };
        c.fetch_add(1, Ordering::Relaxed);
        Worker::note(failing, "metric", &r);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    use super::*;

    fn one_span(t: &Tracer, id: u64) {
        let now = std::time::SystemTime::now();
        t.spans(|b| b.span(1, id, 0, &["s"], Kind::Internal, now, now).end());
    }

    fn span_ids(batch: &Bytes) -> Vec<Vec<u8>> {
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            prost::Message::decode(batch.clone()).unwrap();
        req.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.span_id.clone()).collect()
    }

    /// A thread's batch is queued when it reaches the batch size; a batch that fills while
    /// the queue is full is dropped and counted; partial batches are taken from every thread.
    #[test]
    fn batches_fill_per_thread_and_a_full_queue_drops_counted() {
        let (t, mut rx) = Tracer::new(Sampler::AlwaysOn, Arc::default(), BatchHead::new(&[], "t", ""), 2, 2);
        let t = Arc::new(t);
        one_span(&t, 1);
        assert!(rx.try_recv().is_err(), "not full yet");
        one_span(&t, 2);
        let (n, first) = rx.try_recv().expect("a full batch is queued");
        assert_eq!((n, span_ids(&first)), (2, vec![1u64.to_be_bytes().to_vec(), 2u64.to_be_bytes().to_vec()]));
        for id in 3..=6 {
            one_span(&t, id); // 3+4 queued (the queue holds one batch), 5+6 dropped
        }
        assert_eq!(t.stats().spans_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(rx.try_recv().map(|(n, _)| n).ok(), Some(2));
        // Another thread has its own batch; when the thread ends, its partial batch is
        // queued and its shard forgotten.
        one_span(&t, 7);
        let t2 = t.clone();
        std::thread::spawn(move || one_span(&t2, 8)).join().unwrap();
        let (n, ended) = rx.try_recv().expect("the ended thread's batch");
        assert_eq!((n, span_ids(&ended)), (1, vec![8u64.to_be_bytes().to_vec()]));
        let partial: Vec<Vec<Vec<u8>>> = t.queue.take_partial().iter().map(|(_, b)| span_ids(b)).collect();
        assert_eq!(partial, vec![vec![7u64.to_be_bytes().to_vec()]]);
        assert_eq!(t.queue.shards.lock().unwrap().len(), 1, "only the live thread's shard");
        assert!(t.queue.take_partial().is_empty());
    }

    /// A batch is queued at MAX_BATCH_BYTES even with fewer spans than the batch size.
    #[test]
    fn a_large_batch_is_queued_before_it_has_its_span_count() {
        let (t, mut rx) = Tracer::new(Sampler::AlwaysOn, Arc::default(), BatchHead::new(&[], "t", ""), 512, 2048);
        let big = "x".repeat(MAX_BATCH_BYTES);
        let now = std::time::SystemTime::now();
        t.spans(|b| {
            b.span(1, 1, 0, &["s"], Kind::Internal, now, now).str("gen_ai.input.messages", &big);
        });
        let (n, bytes) = rx.try_recv().expect("queued at once");
        assert_eq!(n, 1);
        assert!(bytes.len() > MAX_BATCH_BYTES);
        one_span(&t, 2);
        assert!(rx.try_recv().is_err(), "a small batch waits");
    }

    /// Two tracers on one thread (two exporters in a process) keep their spans apart.
    #[test]
    fn tracers_on_one_thread_do_not_share_batches() {
        let (a, b) = (Tracer::detached(Sampler::AlwaysOn), Tracer::detached(Sampler::AlwaysOn));
        one_span(&a, 1);
        one_span(&b, 2);
        one_span(&a, 3);
        let ids = |t: &Tracer| t.take().iter().flat_map(span_ids).collect::<Vec<_>>();
        assert_eq!(ids(&a), vec![1u64.to_be_bytes().to_vec(), 3u64.to_be_bytes().to_vec()]);
        assert_eq!(ids(&b), vec![2u64.to_be_bytes().to_vec()]);
        drop(b);
        let c = Tracer::detached(Sampler::AlwaysOn);
        one_span(&c, 4);
        assert_eq!(ids(&c).len(), 1);
    }

    #[test]
    fn a_partial_success_counts_the_rejected_spans() {
        let answer =
            |p: Option<ExportTracePartialSuccess>| prost::Message::encode_to_vec(&ExportTraceServiceResponse { partial_success: p });
        assert_eq!(Signal::Traces.rejected(&answer(None)), 0);
        assert_eq!(Signal::Traces.rejected(&[]), 0);
        let some = ExportTracePartialSuccess { rejected_spans: 3, error_message: "too old".into() };
        assert_eq!(Signal::Traces.rejected(&answer(Some(some))), 3);
        let negative = ExportTracePartialSuccess { rejected_spans: -1, error_message: String::new() };
        assert_eq!(Signal::Traces.rejected(&answer(Some(negative))), 0);
        assert_eq!(Signal::Traces.rejected(b"not protobuf \xff\xff"), 0);
        assert_eq!(Signal::Metrics.rejected(&answer(None)), 0);
    }
}
