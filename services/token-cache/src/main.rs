use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// aigw-token-cache: mints GCP access tokens once per credential for the whole fleet
/// and shares them through Redis. gRPC (aigw.tokencache.v1), /healthz and /metrics
/// share --listen.
#[derive(Parser, Debug)]
#[command(name = "aigw-token-cache", version)]
struct Args {
    /// gRPC + /healthz + /metrics listen address.
    #[arg(long, env = "AIGW_LISTEN", default_value = "127.0.0.1:9280")]
    listen: SocketAddr,
    /// Redis shared by every replica. When it is unreachable tokens are minted directly.
    #[arg(long, env = "AIGW_REDIS", default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    redis: String,
    /// Prefix of every Redis key this service writes.
    #[arg(long, env = "AIGW_KEY_PREFIX", default_value = "aigw:tok:")]
    key_prefix: String,
    /// Token callers must present (metadata `x-node-token`). Generated and printed once when unset.
    #[arg(long, env = "AIGW_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// PEM certificate chain: serve TLS (needs --tls-key).
    #[arg(long, env = "AIGW_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "AIGW_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// 32-byte key (64 hex chars or base64): tokens stored in Redis are AES-256-GCM encrypted.
    #[arg(long, env = "AIGW_DATA_ENCRYPTION_KEY", hide_env_values = true)]
    data_encryption_key: Option<String>,
    #[command(flatten)]
    log: aigw_telemetry::LogArgs,
}

fn main() {
    aigw_telemetry::exit_on_error("aigw-token-cache", real_main(Args::parse()));
}

fn real_main(args: Args) -> anyhow::Result<()> {
    // OTEL_*: with an endpoint, this process's spans (its `tracing` spans) and metrics
    // (process CPU and memory, exporter counters, the counters of /metrics) go to the
    // collector.
    let registry = aigw_telemetry::metrics::Registry::new();
    aigw_telemetry::observe_process(&registry);
    let otel = aigw_telemetry::start_otel("aigw-token-cache", env!("CARGO_PKG_VERSION"), registry.clone())?;
    args.log.init_with(otel.as_ref().and_then(|o| o.tracer()))?;
    if let Some(o) = &otel {
        o.log_start();
    }
    let data_key = aigw_model::secrets::DataKey::from_flag(args.data_encryption_key.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    // The URL may carry a password: never echo it.
    let redis = redis::Client::open(args.redis.as_str()).map_err(|e| anyhow::anyhow!("--redis: not a valid redis URL ({:?})", e.kind()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(aigw_token_cache::tls_config(c, k)?),
        _ => None,
    };
    let node_token = match args.node_token.filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => {
            let t = aigw_model::secrets::random_token();
            eprintln!("aigw-token-cache: generated node token (pass --node-token to choose one): {t}");
            t
        }
    };
    let exported = otel.is_some().then_some(registry);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let mut cfg = aigw_token_cache::Config::new(redis, node_token);
        cfg.key_prefix = args.key_prefix;
        cfg.data_key = data_key;
        cfg.tls = tls;
        cfg.registry = exported;
        aigw_token_cache::run(cfg, listener, aigw_telemetry::shutdown_signal()).await
    });
    if let Some(o) = otel {
        o.shutdown(std::time::Duration::from_secs(5));
    }
    result
}
