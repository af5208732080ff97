//! A real `redis-server` on a free 127.0.0.1 port, for tests: no persistence, killed on
//! drop, restartable on the same port (to test outages and recovery).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

fn binary() -> String {
    std::env::var("AIGW_TEST_REDIS_SERVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/bin/redis-server").exists() { "/usr/bin/redis-server".into() } else { "redis-server".into() }
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl RedisServer {
    /// Starts redis-server and waits until it accepts connections. Panics (with the
    /// server's output) if it cannot: the tests that need Redis must not pass without it.
    pub async fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..5 {
            let mut r = RedisServer { port: free_port(), child: None, lines: Arc::new(Mutex::new(Vec::new())) };
            match r.spawn().await {
                Ok(()) => return r,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start (install it: apt-get install redis-server): {last}");
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.lines.lock().unwrap().clear();
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "notice", "--dir", &std::env::temp_dir().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", binary()))?;
        for s in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = self.lines.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.lines.lock().unwrap().iter().any(|l| l.contains("Ready to accept connections")) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!("exited ({status}): {}", self.lines.lock().unwrap().join("\n")));
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(format!("not ready after 10s: {}", self.lines.lock().unwrap().join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash; the port stays reserved for [`RedisServer::restart`].
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill9().await;
        self.spawn().await.unwrap_or_else(|e| panic!("redis-server did not restart on port {}: {e}", self.port));
    }

    /// The sum of the integer counters whose keys match `pattern` (via `redis-cli`, which
    /// Debian's redis-server package brings). For tests that must know a charge has landed
    /// before they probe with a request that charges too.
    pub async fn sum(&self, pattern: &str) -> u64 {
        let script = "local s = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do s = s + tonumber(redis.call('GET', k)) end return s";
        let out = Command::new(binary().replace("redis-server", "redis-cli"))
            .args(["-p", &self.port.to_string(), "--raw", "EVAL", script, "0", pattern])
            .output()
            .await
            .unwrap_or_else(|e| panic!("redis-cli: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("redis-cli EVAL answered {text:?} {}", String::from_utf8_lossy(&out.stderr)))
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
