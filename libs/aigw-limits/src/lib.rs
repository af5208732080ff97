//! The counter engine of token limits (`ai-rate-limiting`) and budgets (`ai-budget`): one
//! engine, two units (tokens, micro-dollars). A node has one [`Counters`]; each plugin
//! config gets a [`Store`] for its policy:
//!
//! - `local`: per-process counters ([`local::Local`]);
//! - `redis`: fleet-wide counters ([`redis::RedisCounters`], shared per endpoint). While
//!   Redis cannot answer within the admission deadline, `allow_degradation: true` admits
//!   against this node's own counts (charges Redis did not take are counted here), and
//!   `false` refuses (the caller answers 503); either way counted, and logged once per
//!   outage.
//!
//! Admission reads the counts of every key a request needs at once (one round trip);
//! charges are queued and sent in batches after the response, off the request's path.
//! Windows are fixed and aligned to the epoch ([`window::Window`]). A Redis restart that
//! loses its data starts the current windows afresh.

pub mod local;
pub mod period;
pub mod redis;
pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use period::Period;
pub use window::Window;

/// The longest an admission waits for Redis (CONTRACT §13: slower than this is trouble).
pub const ADMISSION_DEADLINE: Duration = Duration::from_millis(50);

/// Milliseconds since the Unix epoch (injectable in tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// A Redis URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis {endpoint}: {message}")]
pub struct ConfigError {
    pub endpoint: String,
    pub message: String,
}

/// Where a store's counts live.
#[derive(Debug, Clone)]
pub enum Backend {
    Local,
    Redis(Arc<redis::RedisCounters>),
}

/// Counts of decisions made without Redis.
#[derive(Debug, Default)]
pub struct DegradeStats {
    /// Admitted on this node's own counts while Redis was down (`allow_degradation`).
    pub degraded: AtomicU64,
    /// Refused because Redis was down (no degradation allowed).
    pub unavailable: AtomicU64,
}

/// What an admission read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The fleet's counts (or, for `local`, this node's).
    Counts(Vec<u64>),
    /// Redis is down: this node's own counts (`allow_degradation: true`).
    Degraded(Vec<u64>),
    /// Redis is down and degradation is not allowed.
    Unavailable,
}

impl Reading {
    pub fn counts(&self) -> Option<&[u64]> {
        match self {
            Reading::Counts(c) | Reading::Degraded(c) => Some(c),
            Reading::Unavailable => None,
        }
    }
}

/// One plugin config's counters.
#[derive(Debug, Clone)]
pub struct Store {
    pub backend: Backend,
    local: Arc<local::Local>,
    allow_degradation: bool,
    deadline: Duration,
    stats: Arc<DegradeStats>,
    clock: ClockDebug,
}

#[derive(Clone)]
struct ClockDebug(Clock);

impl std::fmt::Debug for ClockDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

impl Store {
    pub fn now_ms(&self) -> u64 {
        (self.clock.0)()
    }

    /// The counts of `keys`, in one round trip.
    pub async fn read(&self, keys: &[String]) -> Reading {
        let now = self.now_ms();
        let local = |l: &local::Local| keys.iter().map(|k| l.get(k, now)).collect::<Vec<u64>>();
        match &self.backend {
            Backend::Local => Reading::Counts(local(&self.local)),
            Backend::Redis(r) => match r.read(keys, self.deadline).await {
                Ok(c) => Reading::Counts(c),
                Err(_) if self.allow_degradation => {
                    self.stats.degraded.fetch_add(1, Ordering::Relaxed);
                    Reading::Degraded(local(&self.local))
                }
                Err(_) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    Reading::Unavailable
                }
            },
        }
    }

    /// Adds `n` to `key` of `window` (never waits).
    pub fn charge(&self, key: String, n: u64, window: &Window) {
        if n == 0 {
            return;
        }
        let now = self.now_ms();
        match &self.backend {
            Backend::Local => {
                self.local.add(&key, n, window.ttl_ms(), now);
            }
            Backend::Redis(r) => r.charge(key, n, now + window.ttl_ms()),
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }
}

/// A node's counters: its own, and one client per Redis endpoint (the `--redis` default and
/// any a plugin names), kept across config snapshots.
pub struct Counters {
    local: Arc<local::Local>,
    default_redis: Option<String>,
    redis: Mutex<HashMap<String, Arc<redis::RedisCounters>>>,
    clock: Clock,
    pub stats: Arc<DegradeStats>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(None, system_clock())
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").field("default_redis", &self.default_redis.is_some()).finish()
    }
}

/// How a plugin reaches its counters (its `policy` and `redis_*` fields).
#[derive(Debug, Clone, Default)]
pub struct StoreSpec {
    pub redis: bool,
    pub allow_degradation: bool,
    /// None: the node's `--redis`.
    pub url: Option<String>,
    pub timeout: Duration,
}

impl Counters {
    /// `default_redis`: the node's `--redis URL`.
    pub fn new(default_redis: Option<String>, clock: Clock) -> Counters {
        Counters { local: Arc::default(), default_redis, redis: Mutex::default(), clock, stats: Arc::default() }
    }

    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Whether the node has a `--redis` (where `ai-budget` counts by default).
    pub fn has_default_redis(&self) -> bool {
        self.default_redis.is_some()
    }

    /// The store of a plugin config. Needs a tokio runtime for a Redis endpoint's first use.
    pub fn store(&self, spec: &StoreSpec) -> Result<Store, ConfigError> {
        let deadline = spec.timeout.min(ADMISSION_DEADLINE).max(Duration::from_millis(1));
        let backend = if spec.redis {
            let url = spec.url.clone().or_else(|| self.default_redis.clone()).ok_or_else(|| ConfigError {
                endpoint: "(none)".into(),
                message: "policy redis without redis_host needs the proxy's --redis URL".into(),
            })?;
            Backend::Redis(self.endpoint(&url, spec.timeout)?)
        } else {
            Backend::Local
        };
        Ok(Store {
            backend,
            local: self.local.clone(),
            allow_degradation: spec.allow_degradation,
            deadline,
            stats: self.stats.clone(),
            clock: ClockDebug(self.clock.clone()),
        })
    }

    fn endpoint(&self, url: &str, timeout: Duration) -> Result<Arc<redis::RedisCounters>, ConfigError> {
        let mut map = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(url) {
            return Ok(r.clone());
        }
        let client = ::redis::Client::open(url).map_err(|e| ConfigError { endpoint: redact(url), message: format!("{:?}", e.kind()) })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError { endpoint: redact(url), message: "no runtime to connect on".into() });
        }
        let r = redis::RedisCounters::new(client, timeout.max(Duration::from_millis(50)), self.clock.clone())
            .map_err(|e| ConfigError { endpoint: redact(url), message: e.to_string() })?;
        let (local, clock) = (self.local.clone(), self.clock.clone());
        r.on_failed_charge(move |k, n, at| {
            let now = clock();
            local.add(k, n, at.saturating_sub(now).max(1), now);
        });
        map.insert(url.to_owned(), r.clone());
        Ok(r)
    }

    /// Every Redis endpoint in use (for metrics and status).
    pub fn endpoints(&self) -> Vec<Arc<redis::RedisCounters>> {
        self.redis.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

/// A Redis URL without its password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_testkit::redis::RedisServer;
    use aigw_testkit::wait_until;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://:pw@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[tokio::test]
    async fn local_store_counts_in_this_process() {
        let c = Counters::new(None, Arc::new(|| 10_000));
        let s = c.store(&StoreSpec::default()).unwrap();
        let w = Window::at(10_000, 60);
        s.charge("k".into(), 5, &w);
        s.charge("k".into(), 3, &w);
        assert_eq!(s.read(&["k".into(), "other".into()]).await, Reading::Counts(vec![8, 0]));
        assert!(c.store(&StoreSpec { redis: true, ..Default::default() }).unwrap_err().message.contains("--redis"));
    }

    /// Real redis-server: reads and batched charges, expiry at the window's end, and the
    /// degraded paths when it is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_counts_fleet_wide_and_degrades() {
        let mut server = RedisServer::start().await;
        let c = Counters::new(Some(server.url()), system_clock());
        let strict = c.store(&StoreSpec { redis: true, timeout: Duration::from_secs(1), ..Default::default() }).unwrap();
        let lenient =
            c.store(&StoreSpec { redis: true, allow_degradation: true, timeout: Duration::from_secs(1), ..Default::default() }).unwrap();
        let w = Window::at(strict.now_ms(), 60);
        let key = format!("t:{}", w.index);
        for _ in 0..10 {
            strict.charge(key.clone(), 7, &w);
        }
        // Charges are sent in the background: wait until Redis has all of them.
        let one = std::slice::from_ref(&key);
        wait_until("charges in redis", T, || async { (strict.read(one).await == Reading::Counts(vec![70])).then_some(()) }).await;
        // Another node (another Counters on the same Redis) sees the same count.
        let other = Counters::new(Some(server.url()), system_clock());
        let o = other.store(&StoreSpec { redis: true, timeout: Duration::from_secs(1), ..Default::default() }).unwrap();
        assert_eq!(o.read(one).await, Reading::Counts(vec![70]));
        let mut raw = ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query_async(&mut raw).await.unwrap();
        assert!(ttl > 0 && ttl as u64 <= w.ttl_ms() + 50, "expires with its window: {ttl}");
        // Redis goes away: strict refuses, lenient reads this node's own counts.
        server.kill9().await;
        assert_eq!(strict.read(one).await, Reading::Unavailable);
        assert_eq!(lenient.read(one).await, Reading::Degraded(vec![0]));
        lenient.charge(key.clone(), 4, &w);
        // A charge Redis did not take is counted here.
        wait_until("charge counted locally", T, || async { (lenient.read(one).await == Reading::Degraded(vec![4])).then_some(()) }).await;
        assert!(c.stats.unavailable.load(Ordering::Relaxed) >= 1 && c.stats.degraded.load(Ordering::Relaxed) >= 1);
        let r = &c.endpoints()[0];
        assert!(!r.is_up() && r.stats.outages.load(Ordering::Relaxed) == 1, "one outage, logged once");
        // Back (data lost: the window starts afresh).
        server.restart().await;
        wait_until("redis back", T, || async { (strict.read(one).await == Reading::Counts(vec![0])).then_some(()) }).await;
        assert!(r.is_up());
    }

    /// A password and a database from the URL (APISIX's `redis_password`, `redis_database`):
    /// AUTH and SELECT on connect; a wrong password is an outage, not a count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_auth_and_database_from_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", "s3cret"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server");
        let c = Counters::new(None, system_clock());
        let spec = |pw: &str| StoreSpec {
            redis: true,
            url: Some(format!("redis://:{pw}@127.0.0.1:{port}/3")),
            timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let good = c.store(&spec("s3cret")).unwrap();
        let w = Window::at(good.now_ms(), 60);
        let one = ["auth-k".to_owned()];
        wait_until("redis-server up", T, || async { (good.read(&one).await == Reading::Counts(vec![0])).then_some(()) }).await;
        good.charge("auth-k".into(), 5, &w);
        wait_until("charged", T, || async { (good.read(&one).await == Reading::Counts(vec![5])).then_some(()) }).await;
        // In database 3, not 0.
        let mut raw =
            ::redis::Client::open(format!("redis://:s3cret@127.0.0.1:{port}/3")).unwrap().get_multiplexed_async_connection().await.unwrap();
        let v: Option<u64> = ::redis::cmd("GET").arg("auth-k").query_async(&mut raw).await.unwrap();
        assert_eq!(v, Some(5));
        let bad = Counters::new(None, system_clock());
        let b = bad.store(&spec("wrong")).unwrap();
        assert_eq!(b.read(&one).await, Reading::Unavailable);
        assert!(!bad.endpoints()[0].is_up());
        let _ = child.kill().await;
    }
}
