//! Fleet-wide counters in Redis, designed for the hot path:
//!
//! - **admission** is one `MGET` of every key a request needs, on a multiplexed connection
//!   (concurrent requests' reads share it and are pipelined), under a short deadline;
//! - **charges** never wait: they are queued, and one task sends whatever is queued as one
//!   atomic batch — `MULTI; INCRBY k n; PEXPIREAT k t; …; EXEC`, amounts summed per key,
//!   `t` the window's end plus a second (absolute, so every node sets the same expiry);
//! - **trouble** (refused, reset, slower than the deadline) marks the endpoint down: it is
//!   logged once per outage, counted, retried after a pause, and the caller decides what a
//!   missing answer means (`allow_degradation`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

/// After a failure, no new connection is tried for this long (requests meanwhile go
/// straight to the degraded path instead of waiting on a dead endpoint).
const RECONNECT_PAUSE_MS: u64 = 1000;
/// Charges waiting to be sent, at most (beyond: dropped, counted).
const QUEUE: usize = 65_536;
/// Distinct keys per batch sent.
const BATCH: usize = 512;

/// Counters of a Redis endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub read_failures: AtomicU64,
    pub batches: AtomicU64,
    pub charges: AtomicU64,
    pub charge_failures: AtomicU64,
    pub charges_dropped: AtomicU64,
    pub outages: AtomicU64,
}

/// Redis could not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("redis unavailable")]
pub struct Down;

/// Receives a charge Redis did not take: (key, tokens, expiry in epoch ms).
type GiveBack = Box<dyn Fn(&str, u64, u64) + Send + Sync>;

struct Charge {
    key: String,
    n: u64,
    expire_at_ms: u64,
}

/// One Redis endpoint's counters (shared by every plugin that uses the endpoint).
pub struct RedisCounters {
    client: redis::Client,
    /// `host:port/db`, never the password.
    pub endpoint: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    retry_at_ms: AtomicU64,
    op_timeout: Duration,
    queue: mpsc::Sender<Charge>,
    /// Charges that could not be sent (Redis down): handed back so the caller counts them
    /// locally (what it then admits against).
    failed: std::sync::Mutex<Option<GiveBack>>,
    pub stats: Arc<Stats>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("endpoint", &self.endpoint).finish()
    }
}

/// `host:port/db` of a Redis client, for logs (no user, no password).
pub fn endpoint_label(info: &redis::ConnectionInfo) -> String {
    let addr = info.addr().to_string();
    format!("{addr}/{}", info.redis_settings().db())
}

impl RedisCounters {
    /// Counters on `client`; operations wait at most `op_timeout`. Must be called on a
    /// tokio runtime (the sending task starts here).
    pub fn new(client: redis::Client, op_timeout: Duration, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Arc<RedisCounters> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let endpoint = endpoint_label(client.get_connection_info());
        let me = Arc::new(RedisCounters {
            client,
            endpoint,
            conn: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            op_timeout,
            queue: tx,
            failed: std::sync::Mutex::new(None),
            stats: Arc::default(),
            clock,
        });
        tokio::spawn(sender(Arc::downgrade(&me), rx));
        me
    }

    /// What to do with charges Redis did not take (count them locally).
    pub fn on_failed_charge(&self, f: impl Fn(&str, u64, u64) + Send + Sync + 'static) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, Down> {
        let mut g = self.conn.lock().await;
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        if (self.clock)() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(Down);
        }
        let cfg =
            redis::AsyncConnectionConfig::new().set_connection_timeout(Some(self.op_timeout)).set_response_timeout(Some(self.op_timeout));
        match tokio::time::timeout(self.op_timeout, self.client.get_multiplexed_async_connection_with_config(&cfg)).await {
            Ok(Ok(c)) => {
                *g = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                drop(g);
                Err(self.failed(&e.to_string()))
            }
            Err(_) => {
                drop(g);
                Err(self.failed("connect timed out"))
            }
        }
    }

    fn failed(&self, why: &str) -> Down {
        self.retry_at_ms.store((self.clock)() + RECONNECT_PAUSE_MS, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            self.stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(redis = %self.endpoint, reason = %why, "redis unavailable for token limits and budgets");
        } else {
            tracing::debug!(redis = %self.endpoint, reason = %why, "redis still unavailable");
        }
        Down
    }

    fn ok(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.endpoint, "redis reachable again for token limits and budgets");
        }
    }

    async fn drop_conn(&self) {
        *self.conn.lock().await = None;
    }

    /// The counts of `keys` (0 for a missing key), waiting at most `deadline`.
    pub async fn read(&self, keys: &[String], deadline: Duration) -> Result<Vec<u64>, Down> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let res = tokio::time::timeout(deadline, async {
            let mut c = self.conn().await?;
            let mut cmd = redis::cmd("MGET");
            for k in keys {
                cmd.arg(k);
            }
            cmd.query_async::<Vec<Option<u64>>>(&mut c).await.map_err(|e| self.failed(&e.to_string()))
        })
        .await;
        match res {
            Ok(Ok(v)) => {
                self.ok();
                Ok(v.into_iter().map(Option::unwrap_or_default).collect())
            }
            Ok(Err(Down)) => {
                self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
                self.drop_conn().await;
                Err(Down)
            }
            Err(_) => {
                self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
                self.drop_conn().await;
                Err(self.failed(&format!("no answer within {} ms", deadline.as_millis())))
            }
        }
    }

    /// Adds `n` to `key`, which expires at `expire_at_ms` (epoch ms); never waits.
    pub fn charge(&self, key: String, n: u64, expire_at_ms: u64) {
        if n == 0 {
            return;
        }
        if let Err(e) = self.queue.try_send(Charge { key, n, expire_at_ms }) {
            self.stats.charges_dropped.fetch_add(1, Ordering::Relaxed);
            let c = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            self.give_back(&c.key, c.n, c.expire_at_ms);
        }
    }

    fn give_back(&self, key: &str, n: u64, expire_at_ms: u64) {
        if let Some(f) = &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            f(key, n, expire_at_ms);
        }
    }

    /// Sends one batch atomically; on failure hands the charges back.
    async fn send(&self, batch: HashMap<String, (u64, u64)>) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, (n, at)) in &batch {
            pipe.cmd("INCRBY").arg(k).arg(*n).ignore();
            pipe.cmd("PEXPIREAT").arg(k).arg(*at).ignore();
        }
        let res = tokio::time::timeout(self.op_timeout, async {
            let mut c = self.conn().await?;
            pipe.query_async::<()>(&mut c).await.map_err(|e| self.failed(&e.to_string()))
        })
        .await;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(Ok(())) => {
                self.ok();
                self.stats.charges.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            other => {
                if other.is_err() {
                    self.failed("a charge batch timed out");
                }
                self.drop_conn().await;
                self.stats.charge_failures.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (k, (n, at)) in batch {
                    self.give_back(&k, n, at);
                }
            }
        }
    }
}

/// Takes what is queued, sums it per key, sends it; repeats. Ends with the counters.
async fn sender(me: std::sync::Weak<RedisCounters>, mut rx: mpsc::Receiver<Charge>) {
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<String, (u64, u64)> = HashMap::new();
        fn add(batch: &mut HashMap<String, (u64, u64)>, c: Charge) {
            let e = batch.entry(c.key).or_insert((0, c.expire_at_ms));
            e.0 = e.0.saturating_add(c.n);
            e.1 = e.1.max(c.expire_at_ms);
        }
        add(&mut batch, first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => add(&mut batch, c),
                Err(_) => break,
            }
        }
        let Some(me) = me.upgrade() else { return };
        me.send(batch).await;
    }
}
