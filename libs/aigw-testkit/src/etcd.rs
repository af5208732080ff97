//! A real etcd cluster for tests: `n` members of Debian's `etcd-server` (`/usr/bin/etcd`,
//! or `AIGW_TEST_ETCD`) on free 127.0.0.1 ports, with short election timeouts, data in
//! a temporary directory, killed on drop. Members can be stopped and started again on
//! the same ports and data (quorum tests), the cluster can serve TLS with client
//! certificates, and `etcdctl` (Debian's `etcd-client`) runs against it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::proc::TempDir;

fn binary(var: &str, path: &str, package: &str) -> PathBuf {
    let p = std::env::var(var).map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(path));
    assert!(
        p.exists(),
        "{} not found: the etcd tests need Debian's {package} (apt-get install etcd-server etcd-client), or set {var}",
        p.display()
    );
    p
}

/// `/usr/bin/etcd` (or `AIGW_TEST_ETCD`); panics with how to install it when missing.
pub fn etcd_binary() -> PathBuf {
    binary("AIGW_TEST_ETCD", "/usr/bin/etcd", "etcd-server")
}

/// `/usr/bin/etcdctl` (or `AIGW_TEST_ETCDCTL`).
pub fn etcdctl_binary() -> PathBuf {
    binary("AIGW_TEST_ETCDCTL", "/usr/bin/etcdctl", "etcd-client")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate.
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// Generates them (rcgen) into `dir`.
    pub fn generate(dir: &Path) -> EtcdTls {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "aigw etcd test CA");
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(names).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "etcd");
        let (client_pem, client_key_pem) = leaf(vec!["aigw-config".into()], "aigw-config");
        let t = EtcdTls {
            ca: dir.join("etcd-ca.pem"),
            server_cert: dir.join("etcd-server.pem"),
            server_key: dir.join("etcd-server-key.pem"),
            client_cert: dir.join("etcd-client.pem"),
            client_key: dir.join("etcd-client-key.pem"),
        };
        for (p, c) in [
            (&t.ca, ca.pem()),
            (&t.server_cert, server_pem),
            (&t.server_key, server_key_pem),
            (&t.client_cert, client_pem),
            (&t.client_key, client_key_pem),
        ] {
            std::fs::write(p, c).unwrap();
        }
        t
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    dir: TempDir,
    token: String,
    members: Vec<Member>,
    tls: Option<EtcdTls>,
}

impl EtcdCluster {
    /// One member.
    pub async fn single() -> EtcdCluster {
        Self::start(1, false).await
    }

    /// `n` members (plain HTTP/2, or TLS with client certificates required), each
    /// healthy (with a leader) before this returns. Panics, with the members' output, if
    /// the cluster does not come up: the tests that need etcd must not pass without it.
    pub async fn start(n: usize, tls: bool) -> EtcdCluster {
        let bin = etcd_binary();
        let mut last = String::new();
        for _ in 0..3 {
            let dir = TempDir::new("etcd");
            let tls = tls.then(|| EtcdTls::generate(dir.path()));
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let token = format!("aigw-test-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                    lines: Arc::default(),
                })
                .collect();
            let mut c = EtcdCluster { dir, token, members, tls };
            for i in 0..n {
                if let Err(e) = c.spawn(i, &bin) {
                    last = e;
                }
            }
            match c.wait_healthy(Duration::from_secs(20)).await {
                Ok(()) => return c,
                Err(e) => last = format!("{e}\n{last}"),
            }
        }
        panic!("etcd did not start: {last}");
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize, bin: &Path) -> Result<(), String> {
        let scheme = self.scheme();
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let m = &self.members[i];
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data = self.dir.path().join(&m.name);
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &m.name, "--data-dir", data.to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-token", &self.token, "--initial-cluster-state", "new"])
            // Short timeouts: elections in well under a second on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .args(["--snapshot-count", "100000", "--quota-backend-bytes", &(1u64 << 30).to_string()]);
        if let Some(t) = &self.tls {
            cmd.args(["--cert-file", t.server_cert.to_str().unwrap(), "--key-file", t.server_key.to_str().unwrap()]).args([
                "--client-cert-auth",
                "--trusted-ca-file",
                t.ca.to_str().unwrap(),
            ]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let m = &mut self.members[i];
        for s in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = m.lines.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        m.child = Some(child);
        Ok(())
    }

    /// Waits until every running member answers `etcdctl endpoint health` (it has a
    /// leader and serves a quorum read).
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let running: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect();
        loop {
            let mut bad = None;
            for &i in &running {
                if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(|c| c.try_wait()) {
                    return Err(format!("etcd {} exited ({status}):\n{}", self.members[i].name, self.logs(i).join("\n")));
                }
                let ep = self.endpoint(i);
                match self.ctl_at(&ep, &["endpoint", "health"]).await {
                    Ok(_) => {}
                    Err(e) => bad = Some(e),
                }
            }
            let Some(e) = bad else { return Ok(()) };
            if Instant::now() > deadline {
                let logs: Vec<String> = running.iter().map(|&i| format!("{}: {}", self.members[i].name, self.logs(i).join("\n"))).collect();
                return Err(format!("not healthy after {timeout:?}: {e}\n{}", logs.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT` of member `i`'s client port.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client address, comma-separated (`--store etcd://…`).
    pub fn endpoints(&self) -> String {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect::<Vec<_>>().join(",")
    }

    /// `etcd://…` for `aigw-config --store`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILL member `i` (its data stays for [`EtcdCluster::start_member`]).
    pub async fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// Starts member `i` again on its ports and data (then [`EtcdCluster::wait_healthy`]).
    pub async fn start_member(&mut self, i: usize) {
        self.stop_member(i).await;
        self.spawn(i, &etcd_binary()).unwrap_or_else(|e| panic!("etcd {} did not restart: {e}", self.members[i].name));
    }

    pub fn logs(&self, i: usize) -> Vec<String> {
        self.members[i].lines.lock().unwrap().clone()
    }

    /// Runs `etcdctl ARGS` (API v3) against every running member; its stdout.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let eps: Vec<String> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).map(|i| self.endpoint(i)).collect();
        self.ctl_at(&eps.join(","), args).await
    }

    async fn ctl_at(&self, endpoints: &str, args: &[&str]) -> Result<String, String> {
        let scheme = self.scheme();
        let urls: Vec<String> = endpoints.split(',').map(|e| format!("{scheme}://{e}")).collect();
        let mut cmd = Command::new(etcdctl_binary());
        cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", urls.join(","))).args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().await.map_err(|e| format!("spawn etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("etcdctl {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The cluster's current revision (`etcdctl endpoint status`).
    pub async fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("etcdctl endpoint status: {e}: {out}"));
        v.as_array().and_then(|a| a.iter().filter_map(|m| m["Status"]["header"]["revision"].as_i64()).max()).expect("a revision")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                eprintln!("---- logs of etcd {} ----\n{}", self.members[i].name, self.logs(i).join("\n"));
            }
        }
    }
}
