use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// aigw-config: stores routes, validates them, encrypts secrets and publishes
/// snapshots to aigw-proxy nodes. gRPC and the APISIX admin REST API share --listen.
#[derive(Parser, Debug)]
#[command(name = "aigw-config", version)]
struct Args {
    /// gRPC + admin REST listen address.
    #[arg(long, env = "AIGW_LISTEN", default_value = "127.0.0.1:9180")]
    listen: SocketAddr,
    /// Directory of the embedded durable store.
    #[arg(long, env = "AIGW_DATA_DIR", default_value = "./aigw-data")]
    data_dir: PathBuf,
    /// Admin key required as `x-api-key` (gRPC) / `X-API-KEY` (REST). Generated and printed once when unset.
    #[arg(long, env = "AIGW_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Token proxies must present (metadata `x-node-token`) on discovery streams.
    /// Discovery is always authenticated: generated and printed once when unset.
    #[arg(long, env = "AIGW_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// PEM certificate chain: serve gRPC and REST over TLS on --listen (needs --tls-key).
    #[arg(long, env = "AIGW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "AIGW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// 32-byte key (64 hex chars or base64) to encrypt secret fields with AES-256-GCM.
    #[arg(long, env = "AIGW_DATA_ENCRYPTION_KEY", hide_env_values = true)]
    data_encryption_key: Option<String>,
    #[command(flatten)]
    log: aigw_telemetry::LogArgs,
}

fn main() {
    aigw_telemetry::exit_on_error("aigw-config", real_main(Args::parse()));
}

fn real_main(args: Args) -> anyhow::Result<()> {
    // OTEL_*: with an endpoint, this process's spans (its `tracing` spans) and metrics
    // (process CPU and memory, exporter counters, the instruments of /metrics) go to the
    // collector.
    let registry = aigw_telemetry::metrics::Registry::new();
    aigw_telemetry::observe_process(&registry);
    let otel = aigw_telemetry::start_otel("aigw-config", env!("CARGO_PKG_VERSION"), registry.clone())?;
    args.log.init_with(otel.as_ref().and_then(|o| o.tracer()))?;
    if let Some(o) = &otel {
        o.log_start();
    }
    let data_key = aigw_model::secrets::DataKey::from_flag(args.data_encryption_key.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let admin_key = match args.admin_key.filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => {
            let k = aigw_model::secrets::random_token();
            eprintln!("aigw-config: generated admin key (pass --admin-key to choose one): {k}");
            k
        }
    };
    let node_token = match args.node_token.filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => {
            let k = aigw_model::secrets::random_token();
            eprintln!("aigw-config: generated node token for proxies (pass --node-token to choose one): {k}");
            k
        }
    };
    if node_token.parse::<http::HeaderValue>().is_err() {
        anyhow::bail!("--node-token must be printable ASCII (it travels as gRPC metadata)");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(aigw_net::server_tls(c, k)?),
        _ => None,
    };
    let exported = otel.is_some().then_some(registry);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let cfg = aigw_config::Config { data_dir: args.data_dir, admin_key, node_token, data_key, tls, registry: exported };
        aigw_config::run(cfg, listener, aigw_telemetry::shutdown_signal()).await
    });
    if let Some(o) = otel {
        o.shutdown(std::time::Duration::from_secs(5));
    }
    result
}
