use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

// glibc malloc showed up as ~12% of the proxy's CPU under load (perf); mimalloc's
// thread-local free lists suit the many small per-request allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// aigw-proxy: a stateless LLM gateway node. Give it exactly one config source:
/// --routes FILE (standalone) or --config-service URL (subscribe to aigw-config).
#[derive(Parser, Debug)]
#[command(name = "aigw-proxy", version)]
struct Args {
    /// Data-plane listen address (HTTP/1.1 and h2c).
    #[arg(long, env = "AIGW_LISTEN", default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Status listener: /healthz, /readyz, /config_dump, /metrics.
    #[arg(long, env = "AIGW_STATUS_LISTEN", default_value = "127.0.0.1:9091")]
    status_listen: SocketAddr,
    /// Standalone mode: a YAML or JSON routes file {routes: [...]}, watched for changes.
    #[arg(long, env = "AIGW_ROUTES", conflicts_with = "config_service", required_unless_present = "config_service")]
    routes: Option<PathBuf>,
    /// Subscribe to aigw-config at this URL (http://HOST:PORT), or at any of several
    /// replicas (URL,URL,…): a stream that ends or is refused moves to the next one.
    #[arg(long, env = "AIGW_CONFIG_SERVICE")]
    config_service: Option<String>,
    /// Node id sent to the config service (default: hostname-pid).
    #[arg(long, env = "AIGW_NODE_ID")]
    node_id: Option<String>,
    /// Token presented to the config service and the token cache (metadata x-node-token).
    #[arg(long, env = "AIGW_NODE_TOKEN", hide_env_values = true)]
    node_token: Option<String>,
    /// Get GCP access tokens (auth.gcp) from aigw-token-cache at this URL (http://HOST:PORT
    /// or https://HOST:PORT); without it they are minted in-process. When the service is
    /// unreachable tokens are minted locally.
    #[arg(long, env = "AIGW_TOKEN_CACHE")]
    token_cache: Option<String>,
    /// PEM bundle verifying https:// control-plane URLs (config service, token cache); default: the webpki roots.
    #[arg(long, env = "AIGW_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// Persist the last applied snapshot here; used at start while the config service is unreachable.
    #[arg(long, env = "AIGW_SNAPSHOT_CACHE", requires = "config_service")]
    snapshot_cache: Option<PathBuf>,
    /// 32-byte key (64 hex chars or base64) that decrypts secret fields.
    #[arg(long, env = "AIGW_DATA_ENCRYPTION_KEY", hide_env_values = true)]
    data_encryption_key: Option<String>,
    /// Access log: a file path (appended), `stdout`, or `off`.
    #[arg(long, env = "AIGW_ACCESS_LOG", default_value = "off")]
    access_log: String,
    /// Access log line format: nginx-style $variables (see README).
    #[arg(long, env = "AIGW_ACCESS_LOG_FORMAT", default_value = aigw_proxy::access_log::DEFAULT_FORMAT)]
    access_log_format: String,
    /// Close a connection whose request head has not fully arrived within this time
    /// (nginx `client_header_timeout`): `60s`, `500ms`, `2m`, or seconds.
    #[arg(long, env = "AIGW_CLIENT_HEADER_TIMEOUT", default_value = "60s", value_parser = aigw_telemetry::duration::parse_duration)]
    client_header_timeout: Duration,
    /// Answer 408 when the request body stalls between two reads for this long (nginx
    /// `client_body_timeout`).
    #[arg(long, env = "AIGW_CLIENT_BODY_TIMEOUT", default_value = "60s", value_parser = aigw_telemetry::duration::parse_duration)]
    client_body_timeout: Duration,
    /// Redis for fleet-wide token limits and budgets (`policy: redis` without
    /// `redis_host`): redis://[:password@]HOST:PORT[/DB].
    #[arg(long, env = "AIGW_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Distinct consumer names the `consumer` metric label takes; the rest are `other`.
    #[arg(long, env = "AIGW_METRICS_MAX_CONSUMERS", default_value_t = aigw_proxy::metrics::DEFAULT_MAX_CONSUMERS)]
    metrics_max_consumers: usize,
    #[command(flatten)]
    log: aigw_telemetry::LogArgs,
}

/// `--redis` must be a redis:// URL (checked at start, named without its password).
fn redis_url_ok(url: &str) -> anyhow::Result<()> {
    if !url.starts_with("redis://") {
        anyhow::bail!("--redis must be redis://HOST:PORT[/DB], got {:?}", aigw_limits::redact(url));
    }
    redis::Client::open(url).map(|_| ()).map_err(|e| anyhow::anyhow!("--redis {}: {:?}", aigw_limits::redact(url), e.kind()))
}

fn main() {
    aigw_telemetry::exit_on_error("aigw-proxy", real_main(Args::parse()));
}

fn real_main(args: Args) -> anyhow::Result<()> {
    // OTEL_* first: spans and metrics go to a collector only when an endpoint is set.
    let registry = aigw_telemetry::metrics::Registry::new();
    aigw_telemetry::observe_process(&registry);
    let otel = aigw_telemetry::start_otel("aigw-proxy", env!("CARGO_PKG_VERSION"), registry.clone())?;
    args.log.init()?;
    if let Some(o) = &otel {
        o.log_start();
    }
    let telemetry = aigw_proxy::Telemetry {
        registry,
        tracer: otel.as_ref().and_then(|o| o.tracer()),
        genai_latest: aigw_telemetry::config::genai_latest(&|n| std::env::var(n).ok()),
        max_consumers: args.metrics_max_consumers,
    };
    let data_key = aigw_model::secrets::DataKey::from_flag(args.data_encryption_key.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let control_plane_ca = match &args.control_plane_ca {
        Some(p) => {
            let pem = std::fs::read(p).map_err(|e| anyhow::anyhow!("--control-plane-ca {}: {e}", p.display()))?;
            aigw_net::roots_from_pem(&pem).map_err(|e| anyhow::anyhow!("{e} ({})", p.display()))?;
            Some(pem)
        }
        None => None,
    };
    let source = match (args.routes, args.config_service) {
        (Some(path), None) => aigw_proxy::Source::File(path),
        (None, Some(urls)) => {
            let endpoints: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
            if endpoints.is_empty() {
                anyhow::bail!("--config-service needs at least one URL");
            }
            for url in &endpoints {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!(
                        "--config-service must be http://HOST:PORT or https://HOST:PORT (comma-separated for replicas), got {url:?}"
                    );
                }
            }
            let node_id = args.node_id.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "aigw-proxy".into());
                format!("{host}-{}", std::process::id())
            });
            aigw_proxy::Source::Xds(Box::new(aigw_proxy::sources::XdsSource {
                endpoints,
                node_id,
                node_token: args.node_token.clone(),
                cache: args.snapshot_cache.map(|path| aigw_proxy::sources::SnapshotCache { path }),
                key: data_key.clone(),
                ca_pem: control_plane_ca.clone(),
            }))
        }
        _ => anyhow::bail!("give exactly one of --routes FILE or --config-service URL"),
    };
    if let Some(r) = &args.redis {
        redis_url_ok(r)?;
    }
    let token_cache = match args.token_cache {
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--token-cache must be http://HOST:PORT or https://HOST:PORT, got {url:?}");
            }
            Some(aigw_gcp_auth::TokenCacheOptions { url, node_token: args.node_token.clone(), ca_pem: control_plane_ca.clone() })
        }
        None => None,
    };
    let access_log = aigw_proxy::access_log::AccessLog::open(&args.access_log, &args.access_log_format).map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async move {
        let data =
            tokio::net::TcpListener::bind(args.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let status = tokio::net::TcpListener::bind(args.status_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.status_listen))?;
        let client_limits = aigw_proxy::ClientLimits { header_timeout: args.client_header_timeout, body_timeout: args.client_body_timeout };
        let cfg = aigw_proxy::Config {
            source,
            data_key,
            access_log,
            client_limits,
            token_cache,
            telemetry,
            control_plane_ca,
            plugins: aigw_proxy::plugins::builtin(),
            redis: args.redis.clone(),
        };
        aigw_proxy::run(cfg, data, status, aigw_telemetry::shutdown_signal()).await
    });
    if let Some(o) = otel {
        o.shutdown(Duration::from_secs(5));
    }
    result
}
