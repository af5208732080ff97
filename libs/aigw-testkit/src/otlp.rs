//! A fake OpenTelemetry collector: OTLP/gRPC (trace and metrics services, tonic) on one
//! port, and on another plain HTTP with OTLP/HTTP protobuf (`POST /v1/traces`,
//! `/v1/metrics`) plus what it received as JSON (`GET /spans`, filtered by
//! `?key=value&…&limit=N` on the service, trace id, span or resource attributes;
//! `GET /metrics`, `GET /healthz`). As strict as a real collector about what it parses: a body that is
//! not a valid export request is refused (gRPC `INVALID_ARGUMENT`, HTTP 400) and counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub span: Span,
    /// Its resource's attributes (`service.instance.id`, …), shared by its batch.
    pub resource: Arc<Vec<KeyValue>>,
}

impl Got {
    pub fn name(&self) -> &str {
        &self.span.name
    }
    pub fn attr(&self, k: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, k)
    }
    pub fn str(&self, k: &str) -> Option<&str> {
        match self.attr(k)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, k: &str) -> Option<i64> {
        match self.attr(k)? {
            any_value::Value::IntValue(v) => Some(*v),
            _ => None,
        }
    }
    pub fn double(&self, k: &str) -> Option<f64> {
        match self.attr(k)? {
            any_value::Value::DoubleValue(v) => Some(*v),
            _ => None,
        }
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        match self.attr(k)? {
            any_value::Value::BoolValue(v) => Some(*v),
            _ => None,
        }
    }
    pub fn strs(&self, k: &str) -> Option<Vec<String>> {
        match self.attr(k)? {
            any_value::Value::ArrayValue(a) => Some(
                a.values
                    .iter()
                    .filter_map(|v| match &v.value {
                        Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    /// `server`, `client`, `internal`, …
    pub fn kind(&self) -> &'static str {
        match self.span.kind {
            1 => "internal",
            2 => "server",
            3 => "client",
            4 => "producer",
            5 => "consumer",
            _ => "unspecified",
        }
    }
    /// Attribute keys, for "has every attribute" checks.
    pub fn keys(&self) -> Vec<&str> {
        self.span.attributes.iter().map(|a| a.key.as_str()).collect()
    }
    pub fn json(&self) -> Value {
        let mut v = span_json(&self.service, &self.span);
        v["resource"] = attrs_json(&self.resource);
        v
    }

    /// A resource attribute (`service.instance.id`, …) as a string.
    pub fn resource_str(&self, k: &str) -> Option<&str> {
        match find(&self.resource, k)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// Whether `key` (a span attribute, else a resource attribute; or `service`,
    /// `trace_id`, `name`) equals `want`. Numbers and booleans compare by their text.
    fn matches(&self, key: &str, want: &str) -> bool {
        let text = |v: &any_value::Value| match v {
            any_value::Value::StringValue(s) => s == want,
            any_value::Value::IntValue(i) => i.to_string() == want,
            any_value::Value::BoolValue(b) => b.to_string() == want,
            any_value::Value::DoubleValue(d) => d.to_string() == want,
            _ => false,
        };
        match key {
            "service" => self.service == want,
            "trace_id" => self.trace_id() == want,
            "name" => self.span.name == want,
            _ => find(&self.span.attributes, key).or_else(|| find(&self.resource, key)).is_some_and(text),
        }
    }
}

fn find<'a>(attrs: &'a [KeyValue], k: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|a| a.key == k).and_then(|a| a.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn service_of(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| find(&r.attributes, "service.name"))
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

fn value_json(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(|v| value_json(Some(v))).collect()),
        Some(any_value::Value::KvlistValue(l)) => attrs_json(&l.values),
        Some(any_value::Value::BytesValue(b)) => json!(hex::encode(b)),
        _ => Value::Null,
    }
}

fn attrs_json(attrs: &[KeyValue]) -> Value {
    Value::Object(attrs.iter().map(|a| (a.key.clone(), value_json(a.value.as_ref()))).collect())
}

fn span_json(service: &str, s: &Span) -> Value {
    json!({
        "service": service, "name": s.name, "kind": s.kind,
        "trace_id": hex::encode(&s.trace_id), "span_id": hex::encode(&s.span_id), "parent_span_id": hex::encode(&s.parent_span_id),
        "start_unix_nano": s.start_time_unix_nano, "end_unix_nano": s.end_time_unix_nano,
        "attributes": attrs_json(&s.attributes),
        "events": s.events.iter().map(|e| json!({"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attrs_json(&e.attributes)})).collect::<Vec<_>>(),
        "status": s.status.as_ref().map(|st| json!({"code": st.code, "message": st.message})),
    })
}

/// The latest data point set of one metric, flattened for assertions.
#[derive(Debug, Clone)]
pub struct GotMetric {
    pub service: String,
    pub metric: Metric,
}

impl GotMetric {
    /// (attributes, count, sum, bucket counts) of a histogram's points.
    pub fn histogram_points(&self) -> Vec<(Value, u64, f64, Vec<u64>)> {
        match &self.metric.data {
            Some(metric::Data::Histogram(h)) => {
                h.data_points.iter().map(|p| (attrs_json(&p.attributes), p.count, p.sum.unwrap_or(0.0), p.bucket_counts.clone())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// (attributes, value) of a sum's or gauge's points.
    pub fn number_points(&self) -> Vec<(Value, f64)> {
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as V;
        let pts = match &self.metric.data {
            Some(metric::Data::Sum(s)) => &s.data_points,
            Some(metric::Data::Gauge(g)) => &g.data_points,
            _ => return Vec::new(),
        };
        pts.iter()
            .map(|p| {
                let v = match p.value {
                    Some(V::AsInt(i)) => i as f64,
                    Some(V::AsDouble(d)) => d,
                    None => 0.0,
                };
                (attrs_json(&p.attributes), v)
            })
            .collect()
    }

    pub fn json(&self) -> Value {
        let kind = match &self.metric.data {
            Some(metric::Data::Histogram(_)) => "histogram",
            Some(metric::Data::Sum(_)) => "sum",
            Some(metric::Data::Gauge(_)) => "gauge",
            _ => "other",
        };
        let points: Vec<Value> = if kind == "histogram" {
            self.histogram_points().into_iter().map(|(a, c, s, b)| json!({"attributes": a, "count": c, "sum": s, "buckets": b})).collect()
        } else {
            self.number_points().into_iter().map(|(a, v)| json!({"attributes": a, "value": v})).collect()
        };
        json!({"service": self.service, "name": self.metric.name, "unit": self.metric.unit, "kind": kind, "points": points})
    }
}

struct Store {
    /// Spans kept (the oldest half is dropped when full); `total` counts every one.
    max_spans: usize,
    total_spans: AtomicUsize,
    spans: Mutex<Vec<Got>>,
    /// Latest export of each (service, metric name).
    metrics: Mutex<Vec<GotMetric>>,
    trace_exports: AtomicUsize,
    metric_exports: AtomicUsize,
    rejected: AtomicUsize,
}

impl Store {
    fn add_spans(&self, req: ExportTraceServiceRequest) {
        self.trace_exports.fetch_add(1, Ordering::Relaxed);
        let mut all = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = service_of(rs.resource.as_ref());
            let resource = Arc::new(rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                self.total_spans.fetch_add(ss.spans.len(), Ordering::Relaxed);
                all.extend(ss.spans.into_iter().map(|span| Got { service: service.clone(), span, resource: resource.clone() }));
            }
        }
        if all.len() > self.max_spans {
            let excess = all.len() - self.max_spans / 2;
            all.drain(..excess);
        }
    }

    fn add_metrics(&self, req: ExportMetricsServiceRequest) {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        let mut all = self.metrics.lock().unwrap();
        for rm in req.resource_metrics {
            let service = service_of(rm.resource.as_ref());
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    all.retain(|g| !(g.service == service && g.metric.name == m.name));
                    all.push(GotMetric { service: service.clone(), metric: m });
                }
            }
        }
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add_spans(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct GrpcMetrics(Arc<Store>);

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.add_metrics(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Spans in an encoded `ExportTraceServiceRequest`, walking the wire format only down
/// to the span level: each span's bytes are skipped, not decoded. None when the bytes are
/// not a valid encoding at those levels.
pub fn count_spans(request: &[u8]) -> Option<usize> {
    /// Calls `f(field, bytes)` for each length-delimited field of a message; other wire
    /// types are skipped.
    fn fields(mut b: &[u8], mut f: impl FnMut(u64, &[u8]) -> Option<()>) -> Option<()> {
        while !b.is_empty() {
            let key = prost::encoding::decode_varint(&mut b).ok()?;
            if key >> 3 == 0 {
                return None; // field number 0 is invalid
            }
            match key & 7 {
                0 => {
                    prost::encoding::decode_varint(&mut b).ok()?;
                }
                1 => b = b.get(8..)?,
                5 => b = b.get(4..)?,
                2 => {
                    let n = usize::try_from(prost::encoding::decode_varint(&mut b).ok()?).ok()?;
                    f(key >> 3, b.get(..n)?)?;
                    b = &b[n..];
                }
                _ => return None,
            }
        }
        Some(())
    }
    let mut n = 0;
    // ExportTraceServiceRequest.resource_spans = 1 → ResourceSpans.scope_spans = 2 →
    // ScopeSpans.spans = 2.
    fields(request, |f, resource_spans| {
        if f != 1 {
            return Some(());
        }
        fields(resource_spans, |f, scope_spans| {
            if f != 2 {
                return Some(());
            }
            fields(scope_spans, |f, _| {
                n += usize::from(f == 2);
                Some(())
            })
        })
    })?;
    Some(n)
}

type GrpcBody = http_body_util::combinators::WithTrailers<Full<Bytes>, std::future::Ready<Option<Result<http::HeaderMap, Infallible>>>>;

/// A unary gRPC answer: `message` (already encoded), then `grpc-status`.
fn grpc_reply(message: &[u8], status: u8, why: &str) -> Response<GrpcBody> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", status.to_string().parse().unwrap());
    if !why.is_empty() {
        trailers.insert("grpc-message", why.parse().unwrap());
    }
    let body = if status == 0 { Full::new(Bytes::from(framed)) } else { Full::new(Bytes::new()) };
    let mut r = Response::new(body.with_trailers(std::future::ready(Some(Ok(trailers)))));
    r.headers_mut().insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
    r
}

/// The counting collector's gRPC side: each export request is checked (gRPC framing, the
/// request's structure down to its spans) and its spans counted, nothing kept.
async fn grpc_counting(store: Arc<Store>, req: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    let traces = match req.uri().path() {
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export" => true,
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export" => false,
        _ => return Ok(grpc_reply(&[], 12, "unimplemented")),
    };
    let ct = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.starts_with("application/grpc") {
        store.rejected.fetch_add(1, Ordering::Relaxed);
        return Ok(grpc_reply(&[], 3, "content-type is not application/grpc"));
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        store.rejected.fetch_add(1, Ordering::Relaxed);
        return Ok(grpc_reply(&[], 13, "body"));
    };
    // One uncompressed message: flag 0, a 4-byte length, the message.
    let message = match body.split_first() {
        Some((0, rest)) if rest.len() >= 4 && rest.len() - 4 == u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize => &rest[4..],
        _ => {
            store.rejected.fetch_add(1, Ordering::Relaxed);
            return Ok(grpc_reply(&[], 3, "not one uncompressed gRPC message"));
        }
    };
    if !traces {
        store.metric_exports.fetch_add(1, Ordering::Relaxed);
        return Ok(grpc_reply(&[], 0, ""));
    }
    match count_spans(message) {
        Some(n) => {
            store.trace_exports.fetch_add(1, Ordering::Relaxed);
            store.total_spans.fetch_add(n, Ordering::Relaxed);
            Ok(grpc_reply(&[], 0, ""))
        }
        None => {
            store.rejected.fetch_add(1, Ordering::Relaxed);
            Ok(grpc_reply(&[], 3, "not an ExportTraceServiceRequest"))
        }
    }
}

pub struct Collector {
    /// OTLP/gRPC.
    pub grpc: SocketAddr,
    /// OTLP/HTTP and the JSON views.
    pub http: SocketAddr,
    /// `https` when started with [`Collector::start_tls`].
    scheme: &'static str,
    store: Arc<Store>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    r
}

async fn http_handler(store: Arc<Store>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    Ok(match (parts.method.as_str(), path.as_str()) {
        ("POST", "/v1/traces" | "/v1/metrics") => {
            let ct = parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if ct != "application/x-protobuf" {
                store.rejected.fetch_add(1, Ordering::Relaxed);
                return Ok(reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, "text/plain", "want application/x-protobuf"));
            }
            let bytes = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "text/plain", "bad body")),
            };
            let ok = if path == "/v1/traces" {
                ExportTraceServiceRequest::decode(bytes).map(|r| store.add_spans(r)).is_ok()
            } else {
                ExportMetricsServiceRequest::decode(bytes).map(|r| store.add_metrics(r)).is_ok()
            };
            if ok {
                reply(StatusCode::OK, "application/x-protobuf", Bytes::new())
            } else {
                store.rejected.fetch_add(1, Ordering::Relaxed);
                reply(StatusCode::BAD_REQUEST, "text/plain", "not an OTLP export request")
            }
        }
        ("GET", "/spans") => {
            // Filters: `?service=aigw-proxy&service.instance.id=…&aigw.request_id=…&limit=N`
            // (every `key=value` must match; `limit` keeps the last N matches).
            let mut filters = Vec::new();
            let mut limit = usize::MAX;
            for (k, v) in parts.uri.query().unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
                let (k, v) = (crate::fake::percent_decode(&k.replace('+', " ")), crate::fake::percent_decode(&v.replace('+', " ")));
                if k == "limit" {
                    match v.parse() {
                        Ok(n) => limit = n,
                        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, "text/plain", "limit: want a number\n")),
                    }
                } else {
                    filters.push((k, v));
                }
            }
            let all = store.spans.lock().unwrap();
            let matched: Vec<&Got> = all.iter().filter(|g| filters.iter().all(|(k, v)| g.matches(k, v))).collect();
            let spans: Vec<Value> = matched[matched.len().saturating_sub(limit)..].iter().map(|g| g.json()).collect();
            let total = store.total_spans.load(Ordering::Relaxed);
            let body = json!({"total": total, "matched": matched.len(), "spans": spans});
            drop(all);
            reply(StatusCode::OK, "application/json", serde_json::to_vec(&body).unwrap_or_default())
        }
        ("GET", "/metrics") => {
            let metrics: Vec<Value> = store.metrics.lock().unwrap().iter().map(GotMetric::json).collect();
            reply(StatusCode::OK, "application/json", serde_json::to_vec(&json!({"metrics": metrics})).unwrap_or_default())
        }
        ("GET", "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

impl Collector {
    /// Both listeners on 127.0.0.1:0.
    pub async fn start() -> Collector {
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector gRPC");
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector HTTP");
        Collector::serve(g, h)
    }

    pub fn serve(grpc: tokio::net::TcpListener, http: tokio::net::TcpListener) -> Collector {
        Collector::serve_keeping(grpc, http, 1_000_000)
    }

    /// Both listeners on 127.0.0.1:0 with TLS: a self-signed certificate for `127.0.0.1`
    /// and `localhost`, returned as PEM (what `OTEL_EXPORTER_OTLP_CERTIFICATE` names).
    pub async fn start_tls() -> (Collector, String) {
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector gRPC");
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector HTTP");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("self-signed certificate");
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key der");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (Collector::serve_inner(g, h, 1_000_000, Some(Arc::new(cfg))), cert.cert.pem())
    }

    /// Keeps at most `max_spans` spans (the oldest go first; the total is still counted).
    pub fn serve_keeping(grpc: tokio::net::TcpListener, http: tokio::net::TcpListener, max_spans: usize) -> Collector {
        Collector::serve_inner(grpc, http, max_spans, None)
    }

    /// A collector for load (`bench/run.sh`): OTLP/gRPC export requests are checked down to
    /// the span level and their spans counted (`GET /spans` shows the `total`), but not
    /// decoded or kept, so the collector takes little of the CPU it shares with what is
    /// measured. OTLP/HTTP and the JSON views are as with [`Collector::serve`].
    pub fn serve_counting(grpc: tokio::net::TcpListener, http: tokio::net::TcpListener) -> Collector {
        Collector::serve_mode(grpc, http, 2, None, true)
    }

    fn serve_inner(
        grpc: tokio::net::TcpListener,
        http: tokio::net::TcpListener,
        max_spans: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Collector {
        Collector::serve_mode(grpc, http, max_spans, tls, false)
    }

    fn serve_mode(
        grpc: tokio::net::TcpListener,
        http: tokio::net::TcpListener,
        max_spans: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        counting: bool,
    ) -> Collector {
        let store = Arc::new(Store {
            max_spans: max_spans.max(2),
            total_spans: AtomicUsize::new(0),
            spans: Mutex::default(),
            metrics: Mutex::default(),
            trace_exports: AtomicUsize::new(0),
            metric_exports: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        });
        let (ga, ha) = (grpc.local_addr().expect("addr"), http.local_addr().expect("addr"));
        let s = store.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let grpc_tls = tls.clone();
        let grpc_task = tokio::spawn(async move {
            match grpc_tls {
                None if counting => {
                    while let Ok((stream, _)) = grpc.accept().await {
                        let s = s.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| grpc_counting(s.clone(), req));
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
                None => {
                    let _ = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(Grpc(s.clone())))
                        .add_service(MetricsServiceServer::new(GrpcMetrics(s)))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                        .await;
                }
                Some(cfg) => {
                    let app = tonic::service::Routes::new(TraceServiceServer::new(Grpc(s.clone())))
                        .add_service(MetricsServiceServer::new(GrpcMetrics(s)))
                        .prepare()
                        .into_axum_router();
                    aigw_net::serve(grpc, app, Some(cfg), std::future::pending(), Duration::from_secs(1)).await;
                }
            }
        });
        let s = store.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let http_task = tokio::spawn(async move {
            while let Ok((stream, _)) = http.accept().await {
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| http_handler(s.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = match acceptor {
                        None => builder.serve_connection(TokioIo::new(stream), svc).await,
                        Some(a) => match a.accept(stream).await {
                            Ok(tls) => builder.serve_connection(TokioIo::new(tls), svc).await,
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Collector { grpc: ga, http: ha, scheme, store, tasks: vec![grpc_task, http_task] }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/gRPC.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for OTLP/HTTP (`http/protobuf`).
    pub fn http_endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.http)
    }

    pub fn spans(&self) -> Vec<Got> {
        self.store.spans.lock().unwrap().clone()
    }

    pub fn metrics(&self) -> Vec<GotMetric> {
        self.store.metrics.lock().unwrap().clone()
    }

    pub fn metric(&self, service: &str, name: &str) -> Option<GotMetric> {
        self.store.metrics.lock().unwrap().iter().find(|m| m.service == service && m.metric.name == name).cloned()
    }

    pub fn exports(&self) -> (usize, usize) {
        (self.store.trace_exports.load(Ordering::Relaxed), self.store.metric_exports.load(Ordering::Relaxed))
    }

    /// Every span received, also those no longer kept.
    pub fn total_spans(&self) -> usize {
        self.store.total_spans.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> usize {
        self.store.rejected.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        self.store.spans.lock().unwrap().clear();
        self.store.metrics.lock().unwrap().clear();
    }

    /// Waits until the spans received satisfy `f` (which returns what the test needs).
    pub async fn wait_spans<T>(&self, what: &str, timeout: Duration, f: impl Fn(&[Got]) -> Option<T>) -> T {
        crate::wait_until(what, timeout, || {
            let v = f(&self.spans());
            async move { v }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
    }

    fn batch(instance: &str, request_ids: &[&str]) -> ResourceSpans {
        let spans = request_ids
            .iter()
            .map(|id| Span {
                name: "chat m".into(),
                trace_id: vec![7; 16],
                span_id: vec![1; 8],
                attributes: vec![kv("aigw.request_id", id)],
                ..Default::default()
            })
            .collect();
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "aigw-proxy"), kv("service.instance.id", instance)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn spans_are_counted_without_decoding_them() {
        let req = ExportTraceServiceRequest { resource_spans: vec![batch("a", &["r1", "r2"]), batch("b", &["r3"])] };
        let bytes = req.encode_to_vec();
        assert_eq!(count_spans(&bytes), Some(3));
        assert_eq!(count_spans(&[]), Some(0));
        assert_eq!(count_spans(&bytes[..bytes.len() - 1]), None, "cut short");
        assert_eq!(count_spans(&[0x0a, 0x05, 0x12]), None, "a length past the end");
        assert_eq!(count_spans(&[0x0b]), None, "wire type 3");
        assert_eq!(count_spans(&[0x02, 0x00]), None, "field number 0");
    }

    /// The counting collector answers real OTLP/gRPC clients and refuses what is not an
    /// export request.
    #[tokio::test]
    async fn the_counting_collector_counts_what_a_grpc_client_exports() {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let g = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = Collector::serve_counting(g, h);
        let mut client = TraceServiceClient::connect(c.grpc_endpoint()).await.unwrap();
        for _ in 0..2 {
            let req = ExportTraceServiceRequest { resource_spans: vec![batch("a", &["r1", "r2"]), batch("b", &["r3"])] };
            client.export(req).await.unwrap();
        }
        let mut metrics = MetricsServiceClient::connect(c.grpc_endpoint()).await.unwrap();
        metrics.export(ExportMetricsServiceRequest::default()).await.unwrap();
        assert_eq!((c.total_spans(), c.exports()), (6, (2, 1)));
        let all = crate::http::get(&format!("{}/spans", c.http_endpoint()), &[]).await.unwrap().json();
        assert_eq!(all["total"], 6, "{all}");

        // A body that is not an export request: INVALID_ARGUMENT, counted.
        let mut raw =
            tonic::client::Grpc::new(tonic::transport::Endpoint::from_shared(c.grpc_endpoint()).unwrap().connect().await.unwrap());
        raw.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
        // `0a 01 78`: a resource_spans whose one byte is a field key without its value.
        let not_export = KeyValue { key: "x".into(), ..Default::default() };
        let bad = raw.unary(tonic::Request::new(not_export), path, tonic_prost::ProstCodec::<KeyValue, KeyValue>::default()).await;
        assert_eq!(bad.map(|_| ()).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(c.rejected(), 1);
        assert_eq!(c.total_spans(), 6);
    }

    /// `GET /spans` filters on span and resource attributes and keeps the last `limit`.
    #[tokio::test]
    async fn spans_are_filtered_by_span_and_resource_attributes() {
        let c = Collector::start().await;
        let req = ExportTraceServiceRequest { resource_spans: vec![batch("a", &["r1", "r2"]), batch("b", &["r3"])] };
        let r = crate::http::send(
            http::Method::POST,
            &format!("{}/v1/traces", c.http_endpoint()),
            &[("content-type", "application/x-protobuf")],
            req.encode_to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let get = |q: &'static str| {
            let url = format!("{}/spans?{q}", c.http_endpoint());
            async move { crate::http::get(&url, &[]).await.unwrap().json() }
        };
        let all = get("").await;
        assert_eq!((all["total"].as_u64(), all["matched"].as_u64()), (Some(3), Some(3)), "{all}");
        let b = get("service=aigw-proxy&service.instance.id=b").await;
        assert_eq!(b["matched"], 1, "{b}");
        assert_eq!(b["spans"][0]["attributes"]["aigw.request_id"], "r3");
        assert_eq!(b["spans"][0]["resource"]["service.instance.id"], "b");
        let last = get("service.instance.id=a&limit=1").await;
        assert_eq!((last["matched"].as_u64(), last["spans"].as_array().map(Vec::len)), (Some(2), Some(1)), "{last}");
        assert_eq!(last["spans"][0]["attributes"]["aigw.request_id"], "r2");
        assert_eq!(get("aigw.request_id=r9").await["matched"], 0);
        assert_eq!(get("service=other&aigw.request_id=r1").await["matched"], 0);
        assert_eq!(get("trace_id=07070707070707070707070707070707").await["matched"], 3);
        let bad = crate::http::get(&format!("{}/spans?limit=x", c.http_endpoint()), &[]).await.unwrap();
        assert_eq!(bad.status, 400);
    }
}
