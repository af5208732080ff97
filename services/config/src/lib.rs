//! aigw-config: stores routes, validates them, encrypts secrets and publishes
//! versioned snapshots to proxies. gRPC (with reflection) and the APISIX-compatible
//! REST admin API share one port. The store is embedded (files, the default) or etcd,
//! where any number of replicas share one configuration.

pub mod error;
pub mod grpc;
pub mod kinds;
pub mod rest;
pub mod service;
pub mod store;
pub mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aigw_model::secrets::DataKey;
use aigw_proto::config::v1::config_service_server::ConfigServiceServer;
use aigw_proto::discovery::v1::discovery_service_server::DiscoveryServiceServer;
use axum::response::IntoResponse;
use tokio::net::TcpListener;

/// Where the configuration lives (`--store`).
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `file:DIR` (`--data-dir DIR`).
    File(PathBuf),
    /// `etcd://HOST:PORT,…` with `--etcd-*`.
    Etcd(Box<store::etcd::EtcdOptions>),
}

pub struct Config {
    pub store: StoreConfig,
    pub admin_key: String,
    /// Proxies must present it (metadata `x-node-token`): discovery is always authenticated.
    pub node_token: String,
    pub data_key: Option<DataKey>,
    /// `--tls-cert/--tls-key`: gRPC and REST over TLS on the one port.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With an OTLP exporter: the instruments of `/metrics` are exported too.
    pub registry: Option<Arc<aigw_telemetry::metrics::Registry>>,
    /// `--redis URL`: where the proxies count budgets (the usage read-back reads it).
    pub redis: Option<String>,
}

/// Serves until `shutdown` resolves, then drains for at most 5 s (discovery streams
/// never end on their own).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(shutdown);
    let store: Arc<dyn store::Store> = match cfg.store {
        StoreConfig::File(dir) => Arc::new(store::file::FileStore::open(&dir)?),
        StoreConfig::Etcd(opts) => Arc::new(store::etcd::EtcdStore::new(*opts)?),
    };
    let data_key = cfg.data_key.clone();
    if cfg.data_key.is_none() {
        tracing::warn!("no --data-encryption-key: secret fields are stored as given (reads still redact them)");
    }
    let describe = store.describe();
    // With etcd unreachable at start this waits (and logs why) until it answers.
    let started = tokio::select! {
        r = service::ResourceService::start(store, cfg.data_key) => r,
        _ = &mut shutdown => return Ok(()),
    };
    let (svc, snapshots) = started.map_err(|e| anyhow::anyhow!("{describe}: {}", e.message))?;
    // The key-auth hash key: written once by the first replica to start (a write of
    // another replica keeps the first one: SettingsKind::prepare).
    if svc.stored(&kinds::SETTINGS, "key-auth").is_none() {
        let started = tokio::select! {
            r = svc.put(&kinds::SETTINGS, kinds::consumer::new_settings(data_key.as_ref()), Some("key-auth")) => r,
            _ = &mut shutdown => return Ok(()),
        };
        started.map_err(|e| anyhow::anyhow!("initialising the key-auth hash key in {describe}: {}", e.message))?;
        tracing::info!("key-auth hash key initialised (a random key of this store)");
    }
    let usage = Arc::new(usage::Usage::new(cfg.redis.clone()).map_err(|e| anyhow::anyhow!("--redis: {e}"))?);
    let st = svc.store_status();
    tracing::info!(store = %describe, routes = svc.count(&kinds::ROUTES), revision = st.revision, "store opened");
    let control_plane = format!("aigw-config/{}", std::process::id());
    let xds = aigw_xds::XdsServer::new(snapshots, control_plane, cfg.node_token);
    let admin_key = Arc::new(cfg.admin_key);

    let reflection =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(aigw_proto::FILE_DESCRIPTOR_SET).build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aigw_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let key = admin_key.clone();
    let config_svc = ConfigServiceServer::with_interceptor(grpc::ConfigGrpc { svc: svc.clone() }, move |req: tonic::Request<()>| {
        let got = req.metadata().get("x-api-key").map(|v| v.as_bytes()).unwrap_or_default();
        if aigw_xds::secret_eq(got, key.as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated("missing or wrong admin key (x-api-key)"))
        }
    });
    let grpc = tonic::service::Routes::new(reflection)
        .add_service(reflection_alpha)
        .add_service(config_svc)
        .add_service(DiscoveryServiceServer::new(xds.clone()))
        .prepare()
        .into_axum_router();
    let state = rest::RestState { svc, admin_key, xds, usage };
    if let Some(r) = &cfg.registry {
        rest::observe(r, state.clone());
    }
    let rest = rest::router(state);
    let app = grpc.merge(rest).fallback(not_found);

    let addr = listener.local_addr()?;
    tracing::info!(kind = "admin", addr = %addr, tls = cfg.tls.is_some(), "listening");
    aigw_net::serve(listener, app, cfg.tls, shutdown, Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Unknown paths: gRPC clients get UNIMPLEMENTED, REST clients a JSON 404.
async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    let is_grpc = req.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http::<axum::body::Body>()
    } else {
        (axum::http::StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"error_msg": format!("not found: {}", req.uri().path())})))
            .into_response()
    }
}
