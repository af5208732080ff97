//! Real binaries as child processes: built once, bound to 127.0.0.1:0, their bound
//! addresses read from the "listening" log lines, killed on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_owned()
}

/// Path of a workspace binary, building all service binaries once per test process
/// (a no-op when they are fresh).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_root()).args(["build", "--bins", "-p", "aigw-config", "-p", "aigw-proxy", "-p", "aigw-token-cache"]);
        // This process has the variables cargo sets for a test (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME, …). Build scripts that watch them (ring's does) would see other
        // values than in a plain `cargo` run, be rerun, and make the next cargo command
        // rebuild ring and everything above it again (~20 s each time).
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && (["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"].iter().any(|p| k.starts_with(p))
                    || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&k))
            {
                cmd.env_remove(k);
            }
        }
        if profile_dir().file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(out.status.success(), "cargo build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    let p = profile_dir().join(name);
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// A running child process with its captured stderr.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin(binary));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd.env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stdout.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Proc { name: binary.to_owned(), child, lines }
    }

    /// The OS process id (None once it has exited and been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in bytes, from /proc.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    }

    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a log line containing every fragment; returns it.
    pub async fn wait_log(&mut self, fragments: &[&str], timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| fragments.iter().all(|f| l.contains(f))) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await; // let the readers drain
                panic!("{} exited ({status}) before logging {fragments:?}; logs:\n{}", self.name, self.logs().join("\n"));
            }
            assert!(std::time::Instant::now() < deadline, "{} never logged {fragments:?}; logs:\n{}", self.name, self.logs().join("\n"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Addresses from `listening kind="K" addr=A` lines, by kind.
    pub async fn listen_addrs(&mut self, kinds: &[&str]) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for k in kinds {
            let line = self.wait_log(&["listening", &format!("kind=\"{k}\"")], Duration::from_secs(30)).await;
            let addr = line.split_whitespace().find_map(|t| t.strip_prefix("addr=")).expect("addr= in listening line");
            out.insert((*k).to_owned(), addr.trim_matches('"').to_owned());
        }
        out
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status =
            tokio::time::timeout(timeout, self.child.wait()).await.unwrap_or_else(|_| panic!("{} did not exit", self.name)).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // let the readers drain
        status
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    /// SIGKILL: no cleanup, as a crash.
    pub async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- logs of {} ----\n{}", self.name, self.logs().join("\n"));
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("aigw-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
