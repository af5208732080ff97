//! The fleet under test: compose and docker commands, replicas and their status ports,
//! the admin API through the real `grpcurl` binary.

use std::time::{Duration, Instant};

use aigw_testkit::http;
use anyhow::{Context, bail};
use serde_json::Value;

/// Everything the compose-test script tells the tests (see deploy/compose-test.sh).
pub struct Fleet {
    /// `docker compose` or `docker-compose`.
    compose_cmd: Vec<String>,
    project: String,
    files: Vec<String>,
    /// `http://127.0.0.1:PORT` of the load balancer.
    pub lb: String,
    /// `http://127.0.0.1:PORT` of fake-llm (its `/stats`).
    pub fake_llm: String,
    /// `http://127.0.0.1:PORT` of the trace backend's OTLP/HTTP port (the CI stand-in's
    /// `GET /spans`, `GET /metrics`).
    pub traces: String,
    pub admin_key: String,
    pub node_token: String,
    pub python: String,
    grpcurl: String,
}

/// The tests share one fleet: one at a time.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fleet, or None (with a message) when the compose-test script did not start one.
pub async fn fleet() -> Option<(Fleet, tokio::sync::MutexGuard<'static, ()>)> {
    let Ok(lb) = std::env::var("AIGW_FLEET_LB") else {
        eprintln!("SKIPPED: no fleet (AIGW_FLEET_LB unset); run `just compose-test` (deploy/compose-test.sh)");
        return None;
    };
    let guard = LOCK.lock().await;
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set with AIGW_FLEET_LB"));
    let fleet = Fleet {
        compose_cmd: env("AIGW_FLEET_COMPOSE").split_whitespace().map(str::to_owned).collect(),
        project: env("AIGW_FLEET_PROJECT"),
        files: env("AIGW_FLEET_FILES").split(':').map(str::to_owned).collect(),
        lb,
        fake_llm: env("AIGW_FLEET_FAKE_LLM"),
        traces: env("AIGW_FLEET_TRACES"),
        admin_key: env("AIGW_ADMIN_KEY"),
        node_token: env("AIGW_NODE_TOKEN"),
        python: env("AIGW_PYTHON"),
        grpcurl: env("AIGW_GRPCURL"),
    };
    fleet.put_routes().await;
    Some((fleet, guard))
}

/// Runs a command; its stdout, or an error with its stderr.
pub async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("spawn {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn docker(args: &[&str]) -> String {
    run("docker", args).await.unwrap()
}

/// `curl` run inside a container (reaches ports that are not published).
pub async fn exec_get(container: &str, url: &str) -> anyhow::Result<String> {
    run("docker", &["exec", container, "curl", "-fsS", "--max-time", "2", url]).await
}

/// `PREFIX<name>_total N` lines of a Prometheus text page.
#[derive(Debug, Clone, Default)]
pub struct Counters(std::collections::BTreeMap<String, u64>);

impl Counters {
    pub fn parse(text: &str, prefix: &str) -> Counters {
        Counters(
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| Some((k.strip_suffix("_total")?.to_owned(), v.trim().parse().ok()?)))
                .collect(),
        )
    }

    /// A counter (0 when absent: not counted yet).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// A proxy replica: its container and the host address of its status port.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub name: String,
}

/// The repository root (routes files, Python scripts).
pub fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Undoes a fault when dropped (also when the test panics), so that one failed case does
/// not leave the fleet broken for the next: runs its command unless [`Undo::done`].
pub struct Undo(Option<Vec<String>>);

impl Undo {
    pub fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(argv) = self.0.take() {
            eprintln!("undoing a fault: {}", argv.join(" "));
            let _ = std::process::Command::new(&argv[0]).args(&argv[1..]).status();
        }
    }
}

impl Fleet {
    fn compose_argv(&self, args: &[&str]) -> Vec<String> {
        let mut full = self.compose_cmd.clone();
        full.extend(["-p".to_owned(), self.project.clone()]);
        for f in &self.files {
            full.extend(["-f".to_owned(), f.clone()]);
        }
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let argv = self.compose_argv(args);
        let rest: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        run(&argv[0], &rest).await
    }

    /// Runs `compose args` when the returned guard drops before [`Undo::done`].
    pub fn undo_compose(&self, args: &[&str]) -> Undo {
        Undo(Some(self.compose_argv(args)))
    }

    /// Runs `docker args` when the returned guard drops before [`Undo::done`].
    pub fn undo_docker(&self, args: &[&str]) -> Undo {
        Undo(Some(std::iter::once("docker").chain(args.iter().copied()).map(str::to_owned).collect()))
    }

    pub fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// Container ids of a service, running or not.
    pub async fn containers(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-a", "-q", service]).await.unwrap().lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    /// The running proxy replicas.
    pub async fn replicas(&self) -> Vec<Replica> {
        let mut out = Vec::new();
        for id in self.containers("aigw-proxy").await {
            let state = docker(&["inspect", "-f", "{{.State.Running}} {{.Name}}", &id]).await;
            let (running, name) = state.trim().split_once(' ').unwrap();
            if running == "true" {
                out.push(Replica { id, name: name.trim_start_matches('/').to_owned() });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// `http://127.0.0.1:PORT` where a container's port is published (changes on restart).
    pub async fn published(&self, container: &str, port: u16) -> anyhow::Result<String> {
        let out = run("docker", &["port", container, &format!("{port}/tcp")]).await?;
        let addr = out.lines().find(|l| l.starts_with("127.0.0.1:")).context("no loopback binding")?;
        Ok(format!("http://{addr}"))
    }

    /// A replica's `/config_dump`, read from inside its container (works whatever
    /// network it is cut from).
    pub async fn config_dump(&self, r: &Replica) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&exec_get(&r.id, "http://127.0.0.1:9091/config_dump").await?)?)
    }

    /// A container's hostname: its `service.instance.id` in traces (deploy/images/entrypoint.sh).
    pub async fn hostname(&self, container: &str) -> String {
        docker(&["inspect", "-f", "{{.Config.Hostname}}", container]).await.trim().to_owned()
    }

    /// The token cache's counters (`aigw_token_cache_<name>_total`), read from inside its
    /// container (its port is on the control network only).
    pub async fn token_cache_counters(&self) -> anyhow::Result<Counters> {
        let id = self.containers("aigw-token-cache").await.into_iter().next().context("no aigw-token-cache container")?;
        Ok(Counters::parse(&exec_get(&id, "http://127.0.0.1:9280/metrics").await?, "aigw_token_cache_"))
    }

    /// One replica's `aigw_proxy_gcp_token_<name>_total` counters, through its published status port.
    pub async fn proxy_gcp_counters(&self, r: &Replica) -> anyhow::Result<Counters> {
        let url = self.published(&r.id, 9091).await?;
        Ok(Counters::parse(&http::get(&format!("{url}/metrics"), &[]).await?.text(), "aigw_proxy_gcp_token_"))
    }

    /// Every line the fleet's containers logged so far.
    pub async fn logs(&self) -> String {
        self.compose(&["logs", "--no-color"]).await.unwrap()
    }

    /// Same, through the replica's published status port (fast: for timing).
    pub async fn config_dump_published(&self, r: &Replica) -> anyhow::Result<Value> {
        let url = self.published(&r.id, 9091).await?;
        let reply = http::get(&format!("{url}/config_dump"), &[]).await?;
        Ok(reply.json())
    }

    pub async fn health(&self, container: &str) -> String {
        docker(&["inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", container])
            .await
            .trim()
            .to_owned()
    }

    /// Waits until every container of `service` runs and is healthy; returns how many.
    pub async fn wait_healthy(&self, service: &str, want: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.containers(service).await;
            let mut healthy = 0;
            for id in &ids {
                if self.health(id).await == "running/healthy" {
                    healthy += 1;
                }
            }
            if healthy == want && ids.len() == want {
                return healthy;
            }
            assert!(Instant::now() < deadline, "{service}: {healthy}/{} healthy, want {want}, after {timeout:?}", ids.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `127.0.0.1:PORT` of aigw-config (published on an ephemeral port: re-read after a restart).
    pub async fn config_addr(&self) -> String {
        self.config_addr_of("aigw-config").await
    }

    /// `127.0.0.1:PORT` of an aigw-config replica (`aigw-config`, `aigw-config-2`).
    pub async fn config_addr_of(&self, service: &str) -> String {
        let out = self.compose(&["port", service, "9180"]).await.unwrap();
        out.lines().last().unwrap().trim().to_owned()
    }

    /// The version the aigw-config replica at `addr` publishes (ListRoutes).
    pub async fn version_at(&self, addr: &str) -> String {
        let list = self.grpcurl_at(addr, "ListRoutes", "{}").await.unwrap();
        list["version"].as_str().expect("ListRoutes version").to_owned()
    }

    /// `grpcurl -plaintext -H "x-api-key: KEY" -d @ CONFIG aigw.config.v1.ConfigService/METHOD < input`
    /// — the README's command, with the real binary (reflection, no local .proto).
    pub async fn grpcurl(&self, method: &str, input: &str) -> anyhow::Result<Value> {
        self.grpcurl_at(&self.config_addr().await, method, input).await
    }

    /// [`Fleet::grpcurl`] against a known `addr` (no compose round trip).
    pub async fn grpcurl_at(&self, addr: &str, method: &str, input: &str) -> anyhow::Result<Value> {
        use tokio::io::AsyncWriteExt;
        let header = format!("x-api-key: {}", self.admin_key);
        let mut child = tokio::process::Command::new(&self.grpcurl)
            .args(["-plaintext", "-H", &header, "-d", "@", addr, &format!("aigw.config.v1.ConfigService/{method}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("spawn grpcurl")?;
        child.stdin.take().unwrap().write_all(input.as_bytes()).await?;
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!("grpcurl {method}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The version aigw-config publishes now (ListRoutes).
    pub async fn version(&self) -> String {
        let list = self.grpcurl("ListRoutes", "{}").await.unwrap();
        list["version"].as_str().expect("ListRoutes version").to_owned()
    }

    /// PUTs deploy/routes/*.json with grpcurl (idempotent: same routes, same version),
    /// the vertex route with fake-llm's service account as it is.
    pub async fn put_routes(&self) {
        for name in ["openai", "anthropic", "bedrock"] {
            let body = std::fs::read_to_string(repo(&format!("deploy/routes/{name}.json"))).unwrap();
            let put = self.grpcurl("PutRoute", &body).await.unwrap_or_else(|e| panic!("PutRoute {name}: {e:#}"));
            assert_eq!(put["route"]["id"], name, "{put}");
        }
        let sa = self.service_account(None).await;
        self.put_vertex(&sa).await;
    }

    /// fake-llm's service account (`GET /gcp/service-account.json`), as the string a
    /// route carries. With `key_id`, its `private_key_id` is replaced: the same key and
    /// account (fake Google accepts it), but a credential aigw has no token for yet.
    pub async fn service_account(&self, key_id: Option<&str>) -> String {
        let mut sa = http::get(&format!("{}/gcp/service-account.json", self.fake_llm), &[]).await.unwrap().json();
        assert_eq!(sa["type"], "service_account", "{sa}");
        if let Some(k) = key_id {
            sa["private_key_id"] = k.into();
        }
        sa.to_string()
    }

    /// PUTs deploy/routes/vertex.json with `service_account_json` set to `sa`, as
    /// deploy/README.md does; returns the version aigw-config then publishes.
    pub async fn put_vertex(&self, sa: &str) -> String {
        let mut route: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/routes/vertex.json")).unwrap()).unwrap();
        route["route"]["plugins"]["ai-proxy"]["auth"]["gcp"]["service_account_json"] = sa.into();
        let put = self.grpcurl("PutRoute", &route.to_string()).await.unwrap_or_else(|e| panic!("PutRoute vertex: {e:#}"));
        assert_eq!(put["route"]["id"], "vertex", "{put}");
        let shown = put.to_string();
        assert!(!shown.contains("PRIVATE KEY"), "the admin API answers with the key in clear: {shown}");
        self.version().await
    }

    /// PUTs a vertex credential no replica has a token for, and waits until every running
    /// replica applied it.
    pub async fn fresh_vertex_credential(&self, tag: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let key_id = format!("fleet-{tag}-{nanos:x}");
        let version = self.put_vertex(&self.service_account(Some(&key_id)).await).await;
        self.wait_version_everywhere(&version, Duration::from_secs(20)).await;
        key_id
    }

    /// fake Google's successful mints so far.
    pub async fn mints(&self) -> u64 {
        let stats = self.fake_stats().await;
        stats["gcp"]["mints"].as_u64().unwrap_or_else(|| panic!("no gcp.mints in {stats}"))
    }

    /// The trace backend's spans matching `query` (`service=aigw-proxy&aigw.request_id=…`).
    pub async fn spans(&self, query: &str) -> Vec<Value> {
        let r = http::get(&format!("{}/spans?{query}", self.traces), &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["spans"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every running replica has applied `version`; returns the time it took.
    pub async fn wait_version_everywhere(&self, version: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let mut behind = Vec::new();
            for r in self.replicas().await {
                let v = match self.config_dump_published(&r).await {
                    Ok(d) => d["version"].as_str().unwrap_or_default().to_owned(),
                    Err(e) => format!("unreachable: {e}"),
                };
                if v != version {
                    behind.push(format!("{} at {v}", r.name));
                }
            }
            if behind.is_empty() {
                return start.elapsed();
            }
            assert!(start.elapsed() < timeout, "version {version} not on every replica after {timeout:?}: {behind:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// fake-llm's request counts.
    pub async fn fake_stats(&self) -> Value {
        http::get(&format!("{}/stats", self.fake_llm), &[]).await.unwrap().json()
    }

    /// A route that only the route-change tests use: `/fleet/probe` answering with `model`.
    pub fn probe_route(model: &str) -> String {
        serde_json::json!({"route": {"id": "fleet-probe", "uri": "/fleet/probe", "methods": ["POST"],
            "plugins": {"ai-proxy": {"provider": "openai", "options": {"model": model},
                "auth": {"header": {"Authorization": "Bearer sk-fake-openai"}},
                "override": {"endpoint": "http://fake-llm:8480"}}}}})
        .to_string()
    }

    /// PUTs the probe route; returns the version aigw-config then publishes.
    pub async fn put_probe(&self, model: &str) -> String {
        self.grpcurl("PutRoute", &Self::probe_route(model)).await.unwrap();
        self.version().await
    }
}

/// The model of the probe route in a `/config_dump`, if it has one.
pub fn probe_model(dump: &Value) -> Option<String> {
    dump["routes"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == "fleet-probe")?
        .pointer("/plugins/ai-proxy/options/model")?
        .as_str()
        .map(str::to_owned)
}
