//! aigw-token-cache: mints GCP access tokens once per credential for the whole fleet
//! and shares them through Redis (design: `docs/gcp-auth.md`). gRPC (with reflection),
//! `/healthz` and `/metrics` share one port, plain or TLS.

pub mod metrics;
pub mod service;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aigw_gcp_auth::{Clock, GcpAuth, GcpAuthOptions, SystemClock};
use aigw_model::secrets::DataKey;
use aigw_proto::tokencache::v1::token_cache_service_server::TokenCacheServiceServer;
use axum::response::IntoResponse;
use tokio::net::TcpListener;

pub struct Config {
    /// `--redis`, already parsed.
    pub redis: redis::Client,
    pub key_prefix: String,
    /// Callers must present it as metadata `x-node-token`.
    pub node_token: String,
    /// Encrypts tokens stored in Redis.
    pub data_key: Option<DataKey>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub mint_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    /// With an OTLP exporter: the counters of `/metrics` are exported too.
    pub registry: Option<Arc<aigw_telemetry::metrics::Registry>>,
}

impl Config {
    pub fn new(redis: redis::Client, node_token: String) -> Config {
        Config {
            redis,
            key_prefix: "aigw:tok:".into(),
            node_token,
            data_key: None,
            tls: None,
            mint_timeout: aigw_gcp_auth::DEFAULT_MINT_TIMEOUT,
            clock: Arc::new(SystemClock),
            registry: None,
        }
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// TLS for `--tls-cert/--tls-key` (PEM), ALPN h2 then http/1.1.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    aigw_net::server_tls(cert, key).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Serves until `shutdown` resolves, then drains for at most 5 s.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    if cfg.data_key.is_none() {
        tracing::warn!("no --data-encryption-key: tokens are stored in redis unencrypted");
    }
    let store = store::Store::new(cfg.redis, cfg.key_prefix, cfg.data_key, metrics.clone(), cfg.clock.clone());
    let gcp = GcpAuth::new(GcpAuthOptions { token_cache: None, clock: cfg.clock.clone(), mint_timeout: cfg.mint_timeout })?;
    if let Some(r) = &cfg.registry {
        metrics::observe(r, metrics.clone(), gcp.stats().clone());
    }
    let cache = Arc::new(service::TokenCache::new(store, gcp, metrics.clone(), cfg.clock));

    let reflection =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(aigw_proto::FILE_DESCRIPTOR_SET).build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aigw_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (token, m) = (Arc::new(cfg.node_token), metrics.clone());
    let svc = TokenCacheServiceServer::with_interceptor(service::TokenCacheGrpc(cache.clone()), move |req: tonic::Request<()>| {
        let got = req.metadata().get("x-node-token").map(|v| v.as_bytes()).unwrap_or_default();
        if constant_time_eq(got, token.as_bytes()) {
            Ok(req)
        } else {
            metrics::inc(&m.unauthenticated);
            Err(tonic::Status::unauthenticated("missing or wrong x-node-token"))
        }
    });
    let grpc = tonic::service::Routes::new(reflection).add_service(reflection_alpha).add_service(svc).prepare().into_axum_router();
    let (c1, c2) = (cache.clone(), cache.clone());
    let http = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({"status": "ok", "redis": if c1.store().is_up() { "up" } else { "down" }}))
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                ([("content-type", "text/plain; version=0.0.4")], metrics.render(c2.gcp().stats())).into_response()
            }),
        );
    let app = grpc.merge(http).fallback(not_found);

    let addr = listener.local_addr()?;
    tracing::info!(kind = "grpc", addr = %addr, tls = cfg.tls.is_some(), "listening");
    aigw_net::serve(listener, app, cfg.tls, shutdown, std::time::Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Unknown paths: gRPC clients get UNIMPLEMENTED, others a JSON 404.
async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    let is_grpc = req.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http::<axum::body::Body>()
    } else {
        (axum::http::StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error_msg": format!("not found: {}", req.uri().path())})))
            .into_response()
    }
}
