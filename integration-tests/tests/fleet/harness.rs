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
    pub admin_key: String,
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
        admin_key: env("AIGW_ADMIN_KEY"),
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

impl Fleet {
    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full: Vec<&str> = self.compose_cmd[1..].iter().map(String::as_str).collect();
        full.extend(["-p", &self.project]);
        for f in &self.files {
            full.extend(["-f", f]);
        }
        full.extend_from_slice(args);
        run(&self.compose_cmd[0], &full).await
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
        let out = run("docker", &["exec", &r.id, "curl", "-fsS", "--max-time", "2", "http://127.0.0.1:9091/config_dump"]).await?;
        Ok(serde_json::from_str(&out)?)
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
        let out = self.compose(&["port", "aigw-config", "9180"]).await.unwrap();
        out.lines().last().unwrap().trim().to_owned()
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

    /// PUTs deploy/routes/*.json with grpcurl (idempotent: same routes, same version).
    pub async fn put_routes(&self) {
        for name in ["openai", "anthropic", "bedrock"] {
            let body = std::fs::read_to_string(repo(&format!("deploy/routes/{name}.json"))).unwrap();
            let put = self.grpcurl("PutRoute", &body).await.unwrap_or_else(|e| panic!("PutRoute {name}: {e:#}"));
            assert_eq!(put["route"]["id"], name, "{put}");
        }
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
