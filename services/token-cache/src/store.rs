//! The Redis side: one token per cache key, a lock with a fencing value, a short-lived
//! failure marker. Keys (`P` = `--key-prefix`, `H` = the cache key, a SHA-256 hex):
//!
//! - `P H`       → `FP|PAYLOAD`, `PX` = until the token stops being usable. `FP` is the
//!   token's fingerprint (hex of 8 bytes of SHA-256; lets `InvalidateAccessToken`
//!   compare-and-delete in Lua without decrypting); `PAYLOAD` is `{"t","exp","ref"}`
//!   JSON, AES-256-GCM encrypted with `--data-encryption-key` when one is set.
//! - `P H:lock`  → a random fencing value, `SET NX PX` [`LOCK_TTL_MS`]; released only by
//!   its holder (compare-and-delete), and the token is stored only while the lock is
//!   still held by the same fence (one Lua script: store + release).
//! - `P H:err`   → the last mint failure's message for [`ERROR_TTL_MS`], so that callers
//!   waiting on the lock get the failure instead of minting one after another.
//!
//! Any Redis failure is reported as [`Down`] (counted; logged once per transition); the
//! caller then mints directly. A broken connection is dropped and re-dialled at most
//! once per [`RECONNECT_PAUSE_MS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aigw_gcp_auth::token::fingerprint;
use aigw_gcp_auth::{AccessToken, Clock};
use aigw_model::secrets::{DataKey, is_encrypted};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::metrics::{Metrics, inc};

/// How long a lock outlives a crashed holder. Longer than a mint can take.
pub const LOCK_TTL_MS: u64 = 15_000;
/// How long a mint failure is shared with waiters and newcomers.
pub const ERROR_TTL_MS: u64 = 1_000;
const RECONNECT_PAUSE_MS: u64 = 1_000;
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Redis could not be used for this operation.
#[derive(Debug, Clone, Copy)]
pub struct Down;

/// What Redis holds for a cache key.
#[derive(Debug, Default)]
pub struct Entry {
    pub token: Option<AccessToken>,
    pub error: Option<String>,
    pub locked: bool,
}

/// Sets KEYS[1] = ARGV[2] (PX ARGV[3]) and deletes the lock KEYS[2], only while the lock
/// still holds our fence ARGV[1].
const SET_AND_RELEASE: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

const INVALIDATE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

pub struct Store {
    client: redis::Client,
    endpoint: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    retry_at_ms: AtomicU64,
    up: AtomicBool,
    prefix: String,
    data_key: Option<DataKey>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    decrypt_warned: AtomicBool,
}

/// `redis://host:port/db` without a password, for logs.
pub fn endpoint_label(info: &redis::ConnectionInfo) -> String {
    format!("{}", info.addr())
}

impl Store {
    pub fn new(client: redis::Client, prefix: String, data_key: Option<DataKey>, metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Store {
        let endpoint = endpoint_label(client.get_connection_info());
        Store {
            client,
            endpoint,
            conn: tokio::sync::Mutex::new(None),
            retry_at_ms: AtomicU64::new(0),
            up: AtomicBool::new(true),
            prefix,
            data_key,
            metrics,
            clock,
            decrypt_warned: AtomicBool::new(false),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn keys(&self, key: &str) -> (String, String, String) {
        let k = format!("{}{key}", self.prefix);
        (k.clone(), format!("{k}:lock"), format!("{k}:err"))
    }

    async fn conn(&self) -> Result<MultiplexedConnection, Down> {
        let mut g = self.conn.lock().await;
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        if self.clock.now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(Down);
        }
        let cfg = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(REDIS_TIMEOUT)).set_response_timeout(Some(REDIS_TIMEOUT));
        match tokio::time::timeout(REDIS_TIMEOUT * 2, self.client.get_multiplexed_async_connection_with_config(&cfg)).await {
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
        inc(&self.metrics.redis_errors);
        self.retry_at_ms.store(self.clock.now_ms() + RECONNECT_PAUSE_MS, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(redis = %self.endpoint, reason = %why, "redis unavailable: minting tokens directly until it is back");
        } else {
            tracing::debug!(redis = %self.endpoint, reason = %why, "redis still unavailable");
        }
        Down
    }

    fn ok(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.endpoint, "redis reachable again");
        }
    }

    /// Runs one command/pipeline/script; any failure drops the connection.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, Down>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await?;
        match tokio::time::timeout(REDIS_TIMEOUT * 2, f(c)).await {
            Ok(Ok(v)) => {
                self.ok();
                Ok(v)
            }
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                Err(self.failed(&e.to_string()))
            }
            Err(_) => {
                *self.conn.lock().await = None;
                Err(self.failed("command timed out"))
            }
        }
    }

    pub async fn read(&self, key: &str) -> Result<Entry, Down> {
        let (k, lock, err) = self.keys(key);
        let (v, e, locked): (Option<String>, Option<String>, bool) =
            self.run(|mut c| async move { redis::pipe().get(&k).get(&err).exists(&lock).query_async(&mut c).await }).await?;
        Ok(Entry { token: v.and_then(|v| self.decode(&v)), error: e, locked })
    }

    /// `SET lock fence NX PX`: `Some(fence)` when this caller now holds the lock.
    pub async fn try_lock(&self, key: &str) -> Result<Option<String>, Down> {
        let (_, lock, _) = self.keys(key);
        let fence = aigw_model::secrets::random_token();
        let f = fence.clone();
        let got: Option<String> = self
            .run(|mut c| async move { redis::cmd("SET").arg(&lock).arg(&f).arg("NX").arg("PX").arg(LOCK_TTL_MS).query_async(&mut c).await })
            .await?;
        Ok(got.map(|_| fence))
    }

    /// Stores `token` and releases the lock, only if `fence` still holds it.
    pub async fn store_release(&self, key: &str, fence: &str, token: &AccessToken) -> Result<bool, Down> {
        let (k, lock, _) = self.keys(key);
        let ttl = token.usable_until_ms().saturating_sub(self.clock.now_ms()).max(1);
        let value = self.encode(token);
        let n: i64 = self
            .run(|mut c| async move {
                redis::Script::new(SET_AND_RELEASE).key(&k).key(&lock).arg(fence).arg(value).arg(ttl).invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Records a mint failure for waiters and releases the lock (fence permitting).
    pub async fn fail_release(&self, key: &str, fence: &str, message: &str) -> Result<bool, Down> {
        let (_, lock, err) = self.keys(key);
        let n: i64 = self
            .run(|mut c| async move {
                redis::Script::new(SET_AND_RELEASE)
                    .key(&err)
                    .key(&lock)
                    .arg(fence)
                    .arg(message)
                    .arg(ERROR_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    /// Releases the lock (fence permitting).
    pub async fn release(&self, key: &str, fence: &str) -> Result<bool, Down> {
        let (_, lock, _) = self.keys(key);
        let n: i64 = self.run(|mut c| async move { redis::Script::new(RELEASE).key(&lock).arg(fence).invoke_async(&mut c).await }).await?;
        Ok(n == 1)
    }

    /// Deletes the cached token if it is `token_fp`'s.
    pub async fn invalidate(&self, key: &str, token_fp: &str) -> Result<bool, Down> {
        let (k, _, _) = self.keys(key);
        let prefix = format!("{token_fp}|");
        let n: i64 = self.run(|mut c| async move { redis::Script::new(INVALIDATE).key(&k).arg(prefix).invoke_async(&mut c).await }).await?;
        Ok(n == 1)
    }

    fn encode(&self, t: &AccessToken) -> String {
        let payload = json!({"t": t.secret(), "exp": t.expires_at_ms(), "ref": t.refresh_at_ms()}).to_string();
        let payload = match &self.data_key {
            Some(k) => k.encrypt(&payload),
            None => payload,
        };
        format!("{}|{payload}", t.fingerprint())
    }

    fn decode(&self, v: &str) -> Option<AccessToken> {
        let (_, payload) = v.split_once('|')?;
        let plain;
        let payload = if is_encrypted(payload) {
            let decrypted = self.data_key.as_ref().and_then(|k| k.decrypt(payload, "token").ok());
            match decrypted {
                Some(p) => {
                    plain = p;
                    plain.as_str()
                }
                None => {
                    if !self.decrypt_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!("a cached token cannot be decrypted (another --data-encryption-key?): minting a new one");
                    }
                    return None;
                }
            }
        } else {
            payload
        };
        let j: Value = serde_json::from_str(payload).ok()?;
        let t = AccessToken::new(j["t"].as_str()?.to_owned(), j["exp"].as_u64()?, j["ref"].as_u64()?);
        (fingerprint(t.secret()) == v.split_once('|')?.0).then_some(t)
    }
}
