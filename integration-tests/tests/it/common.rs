use std::path::Path;
use std::time::Duration;

use aigw_proto::config::v1::config_service_client::ConfigServiceClient;
use aigw_testkit::http;
use aigw_testkit::proc::Proc;
use aigw_testkit::wait_until;
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN_KEY: &str = "it-admin-key";
/// Discovery is always authenticated: every test config service and proxy shares this.
pub const NODE_TOKEN: &str = "it-node-token";
pub const T: Duration = Duration::from_secs(20);

pub struct Config {
    pub proc: Proc,
    pub addr: String,
}

impl Config {
    pub async fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Config {
        Self::spawn(listen, &["--data-dir", data_dir.to_str().unwrap()], extra).await
    }

    /// A replica on etcd (`--store etcd://…`), keys under `prefix`.
    pub async fn start_etcd(store_url: &str, prefix: &str, extra: &[&str]) -> Config {
        Self::spawn("127.0.0.1:0", &["--store", store_url, "--etcd-prefix", prefix], extra).await
    }

    async fn spawn(listen: &str, store: &[&str], extra: &[&str]) -> Config {
        let mut args = vec!["--listen", listen, "--admin-key", ADMIN_KEY];
        args.extend_from_slice(store);
        if !extra.contains(&"--node-token") {
            args.extend_from_slice(&["--node-token", NODE_TOKEN]);
        }
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn("aigw-config", &args, &[]);
        let addr = proc.listen_addrs(&["admin"]).await["admin"].clone();
        Config { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}/apisix/admin{path}", self.addr)
    }

    pub async fn put_rest(&self, id: &str, route: &Value) -> http::Reply {
        let body = serde_json::to_vec(route).unwrap();
        http::send(::http::Method::PUT, &self.admin(&format!("/routes/{id}")), &[("x-api-key", ADMIN_KEY)], body).await.unwrap()
    }

    pub async fn grpc(&self) -> GrpcAdmin {
        grpc_client(&self.url(), Some(ADMIN_KEY)).await
    }
}

/// Adds `x-api-key` like `grpcurl -H "x-api-key: ..."`.
#[derive(Clone)]
pub struct ApiKey(pub Option<&'static str>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = self.0 {
            req.metadata_mut().insert("x-api-key", k.parse().unwrap());
        }
        Ok(req)
    }
}

pub type GrpcAdmin = ConfigServiceClient<InterceptedService<Channel, ApiKey>>;

pub async fn grpc_client(url: &str, key: Option<&'static str>) -> GrpcAdmin {
    let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    ConfigServiceClient::with_interceptor(channel, ApiKey(key))
}

/// A standalone proxy serving `routes` from a JSON routes file.
pub async fn standalone(routes: Vec<Value>) -> (Proxy, aigw_testkit::proc::TempDir) {
    let dir = aigw_testkit::proc::TempDir::new("routes");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap()], &[]).await;
    (p, dir)
}

pub struct Proxy {
    pub proc: Proc,
    pub data: String,
    pub status: String,
}

impl Proxy {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut all = vec!["--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut proc = Proc::spawn("aigw-proxy", &all, env);
        let addrs = proc.listen_addrs(&["data", "status"]).await;
        Proxy { data: format!("http://{}", addrs["data"]), status: format!("http://{}", addrs["status"]), proc }
    }

    pub async fn subscribed(config_url: &str, extra: &[&str]) -> Proxy {
        let mut args = vec!["--config-service", config_url];
        if !extra.contains(&"--node-token") {
            args.extend_from_slice(&["--node-token", NODE_TOKEN]);
        }
        args.extend_from_slice(extra);
        Proxy::start(&args, &[]).await
    }

    pub async fn chat(&self, path: &str) -> anyhow::Result<http::Reply> {
        http::post_json(
            &format!("{}{path}", self.data),
            &[("authorization", "Bearer client-placeholder")],
            &json!({"messages": [{"role": "system", "content": "You are a mathematician"}, {"role": "user", "content": "What is 1+1?"}]}),
        )
        .await
    }

    /// Waits until a chat request at `path` gets `status`; returns the reply.
    pub async fn wait_chat_status(&self, path: &str, status: u16) -> http::Reply {
        wait_until(&format!("{path} -> {status} via {}", self.data), T, || async {
            self.chat(path).await.ok().filter(|r| r.status.as_u16() == status)
        })
        .await
    }

    pub async fn ready(&self) -> bool {
        http::get(&format!("{}/readyz", self.status), &[]).await.is_ok_and(|r| r.status == 200)
    }

    pub async fn wait_ready(&self) {
        wait_until("proxy ready", T, || async { self.ready().await.then_some(()) }).await
    }

    pub async fn config_dump(&self) -> Value {
        http::get(&format!("{}/config_dump", self.status), &[]).await.unwrap().json()
    }
}

/// The seed's OpenAI-style route, pointed at a fake upstream.
pub fn chat_route(id: &str, uri: &str, upstream: &str, key: &str) -> Value {
    json!({
        "id": id, "uri": uri, "methods": ["POST"],
        "plugins": {"ai-proxy": {
            "provider": "openai-compatible",
            "auth": {"header": {"Authorization": format!("Bearer {key}")}},
            "options": {"model": "gpt-4"},
            "override": {"endpoint": format!("{upstream}/v1/chat/completions")}
        }}
    })
}

/// A Python interpreter that can import `modules` (`AIGW_PYTHON`, else `python3`). None
/// means skip — unless `AIGW_REQUIRE_PY_SDKS=1` (set by .ci/run), which makes it a failure.
pub fn python_with(modules: &[&str]) -> Option<String> {
    let python = std::env::var("AIGW_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python).arg("-c").arg(format!("import {}", modules.join(", "))).output();
    if probe.is_ok_and(|o| o.status.success()) {
        return Some(python);
    }
    assert!(
        std::env::var("AIGW_REQUIRE_PY_SDKS").is_err(),
        "{python} cannot import {modules:?}; .ci/run installs them (pip install anthropic openai boto3)"
    );
    eprintln!("SKIPPED: {python} cannot import {modules:?} (set AIGW_PYTHON to a venv with them)");
    None
}
