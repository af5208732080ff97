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
    /// Where the configuration is stored: `file:DIR` (the embedded store; default
    /// `file:./aigw-data`) or `etcd://HOST:PORT[,HOST:PORT…]` (shared by any number of
    /// aigw-config replicas).
    #[arg(long, env = "AIGW_STORE", conflicts_with = "data_dir")]
    store: Option<String>,
    /// Directory of the embedded store: the same as `--store file:DIR`.
    #[arg(long, env = "AIGW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// etcd key prefix: keys are `{prefix}/routes/{id}`, … (`/apisix` reads what an
    /// APISIX admin API wrote).
    #[arg(long, env = "AIGW_ETCD_PREFIX", default_value = "/aigw")]
    etcd_prefix: String,
    /// etcd user (needs --etcd-password).
    #[arg(long, env = "AIGW_ETCD_USER", requires = "etcd_password")]
    etcd_user: Option<String>,
    /// Password of --etcd-user.
    #[arg(long, env = "AIGW_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_user")]
    etcd_password: Option<String>,
    /// PEM bundle verifying the etcd members' certificates (turns TLS on; without it
    /// but with --etcd-cert, the webpki roots).
    #[arg(long, env = "AIGW_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (`--client-cert-auth`); needs --etcd-key.
    #[arg(long, env = "AIGW_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "AIGW_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Deadline of one etcd request, retries across members included: a write without
    /// quorum is answered 503 within it.
    #[arg(long, env = "AIGW_ETCD_TIMEOUT", default_value = "3s", value_parser = aigw_telemetry::duration::parse_duration)]
    etcd_timeout: std::time::Duration,
    /// Operations etcd accepts in one transaction (its --max-txn-ops; group commits stay
    /// within it).
    #[arg(long, env = "AIGW_ETCD_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    etcd_max_txn_ops: u64,
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
    /// The Redis the proxies count budgets in (`GET /aigw/admin/usage` reads it):
    /// redis://[:password@]HOST:PORT[/DB].
    #[arg(long, env = "AIGW_REDIS", hide_env_values = true)]
    redis: Option<String>,
    #[command(flatten)]
    log: aigw_telemetry::LogArgs,
}

/// `--store` / `--data-dir` and the `--etcd-*` flags as a store configuration.
fn store_config(args: &Args) -> anyhow::Result<aigw_config::StoreConfig> {
    let spec = match (&args.store, &args.data_dir) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) => format!("file:{}", d.display()),
        (None, None) => "file:./aigw-data".to_owned(),
    };
    if let Some(dir) = spec.strip_prefix("file:") {
        anyhow::ensure!(!dir.is_empty(), "--store file:DIR needs a directory");
        return Ok(aigw_config::StoreConfig::File(PathBuf::from(dir)));
    }
    let Some(list) = spec.strip_prefix("etcd://") else {
        anyhow::bail!("--store must be file:DIR or etcd://HOST:PORT[,HOST:PORT...], got {spec:?}");
    };
    let mut endpoints = Vec::new();
    for ep in list.split(',').map(|e| e.trim().trim_start_matches("etcd://")) {
        let ok = ep.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        anyhow::ensure!(ok && !ep.contains('/'), "--store: {ep:?} is not HOST:PORT");
        endpoints.push(ep.to_owned());
    }
    let prefix = args.etcd_prefix.trim_end_matches('/').to_owned();
    anyhow::ensure!(
        prefix.starts_with('/') && prefix.len() > 1 && !prefix.contains("//"),
        "--etcd-prefix must be a key path such as /aigw or /apisix, got {:?}",
        args.etcd_prefix
    );
    let read = |p: &Option<PathBuf>, flag: &str| -> anyhow::Result<Option<Vec<u8>>> {
        p.as_ref().map(|p| std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))).transpose()
    };
    let ca = read(&args.etcd_ca, "--etcd-ca")?;
    let (cert, key) = (read(&args.etcd_cert, "--etcd-cert")?, read(&args.etcd_key, "--etcd-key")?);
    let tls = (ca.is_some() || cert.is_some()).then(|| aigw_etcd::Tls { ca_pem: ca, identity: cert.zip(key) });
    let mut client = aigw_etcd::Options::new(endpoints);
    client.tls = tls;
    client.timeout = args.etcd_timeout;
    client.credentials = match (&args.etcd_user, &args.etcd_password) {
        (Some(u), Some(p)) => Some(aigw_etcd::Credentials { user: u.clone(), password: p.clone() }),
        _ => None,
    };
    Ok(aigw_config::StoreConfig::Etcd(Box::new(aigw_config::store::etcd::EtcdOptions {
        client,
        prefix,
        max_txn_ops: args.etcd_max_txn_ops as usize,
    })))
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
    let store = store_config(&args)?;
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
        let cfg = aigw_config::Config { store, admin_key, node_token, data_key, tls, registry: exported, redis: args.redis.clone() };
        aigw_config::run(cfg, listener, aigw_telemetry::shutdown_signal()).await
    });
    if let Some(o) = otel {
        o.shutdown(std::time::Duration::from_secs(5));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(args: &[&str]) -> Result<aigw_config::StoreConfig, String> {
        let a = Args::try_parse_from(std::iter::once("aigw-config").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        store_config(&a).map_err(|e| e.to_string())
    }

    #[test]
    fn store_flags() {
        assert!(matches!(store(&[]).unwrap(), aigw_config::StoreConfig::File(d) if d == std::path::Path::new("./aigw-data")));
        assert!(matches!(store(&["--data-dir", "/d"]).unwrap(), aigw_config::StoreConfig::File(d) if d == std::path::Path::new("/d")));
        assert!(matches!(store(&["--store", "file:/x"]).unwrap(), aigw_config::StoreConfig::File(d) if d == std::path::Path::new("/x")));
        let aigw_config::StoreConfig::Etcd(e) = store(&["--store", "etcd://a:2379,etcd://b:2380", "--etcd-prefix", "/apisix/"]).unwrap()
        else {
            panic!("not etcd")
        };
        assert_eq!(
            (e.client.endpoints.clone(), e.prefix.as_str(), e.max_txn_ops),
            (vec!["a:2379".to_owned(), "b:2380".to_owned()], "/apisix", 128)
        );
        assert!(e.client.tls.is_none() && e.client.credentials.is_none());
        for (bad, needle) in [
            (vec!["--store", "redis://x"], "file:DIR or etcd://"),
            (vec!["--store", "etcd://a"], "HOST:PORT"),
            (vec!["--store", "etcd://a:1", "--etcd-prefix", "aigw"], "--etcd-prefix"),
            (vec!["--store", "etcd://a:1", "--etcd-prefix", "/"], "--etcd-prefix"),
            (vec!["--store", "file:/x", "--data-dir", "/y"], "cannot be used with"),
            (vec!["--store", "etcd://a:1", "--etcd-user", "u"], "--etcd-password"),
            (vec!["--store", "etcd://a:1", "--etcd-ca", "/nonexistent/ca.pem"], "--etcd-ca /nonexistent/ca.pem"),
        ] {
            let e = store(&bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
