//! Fleet-wide counters in Redis, designed for the hot path.
//!
//! One task per endpoint owns one TCP connection and speaks RESP on it directly; requests
//! hand it work through a queue and never touch the socket (so a request that is dropped
//! mid-way cannot leave the connection half-read):
//!
//! - **admission** queues its keys and waits (at most the admission deadline) for the next
//!   exchange: every read queued meanwhile goes out in the same write, one `MGET` each;
//! - **charges** never wait: they are summed per key in the queue, and the next exchange
//!   carries them ahead of the reads as one atomic `MULTI; INCRBY k n; PEXPIREAT k t; …;
//!   EXEC` (`t` the window's end plus a second, absolute, so every node sets the same
//!   expiry). A charge with no read to ride on waits [`LINGER`] for one, then goes alone.
//!   So under load a request costs one round trip shared with its neighbours, and a read
//!   sees this node's finished requests (their charges are applied just before it);
//! - **trouble** (refused, reset, slower than the deadline) marks the endpoint down: it is
//!   logged once per outage, counted, retried after a pause, and the caller decides what a
//!   missing answer means (`allow_degradation`). Charges Redis did not take are handed
//!   back to be counted locally.
//!
//! The `redis` crate is used for what a URL means (host, port, user, password, database);
//! the exchange is ours because it is the whole cost of a limited request (measured:
//! bench/results, docs/limits.md).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

/// After a failure, no new connection is tried for this long (requests meanwhile go
/// straight to the degraded path instead of waiting on a dead endpoint).
const RECONNECT_PAUSE_MS: u64 = 1000;
/// Distinct keys whose charges may wait to be sent, at most (beyond: handed back, counted).
const QUEUE: usize = 65_536;
/// How long charges wait for a read to carry them before they are sent alone.
pub const LINGER: Duration = Duration::from_millis(1);
/// The largest reply buffered (a reply beyond it is a broken server).
const MAX_REPLY: usize = 64 << 20;

/// Counters of a Redis endpoint.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub read_failures: AtomicU64,
    /// Exchanges that carried charges.
    pub batches: AtomicU64,
    pub charges: AtomicU64,
    pub charge_failures: AtomicU64,
    pub charges_dropped: AtomicU64,
    pub outages: AtomicU64,
    /// Round trips (each carries any number of reads and one charge batch).
    pub exchanges: AtomicU64,
}

/// Redis could not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("redis unavailable")]
pub struct Down;

/// Receives a charge Redis did not take: (key, tokens, expiry in epoch ms).
type GiveBack = Box<dyn Fn(&str, u64, u64) + Send + Sync>;

/// A Redis URL this client cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub &'static str);

/// Where and as whom to connect (from the URL).
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

struct Read {
    keys: Vec<String>,
    tx: oneshot::Sender<Result<Vec<u64>, Down>>,
}

/// Work waiting for the next exchange.
#[derive(Default)]
struct Queue {
    /// key → (tokens, expiry in epoch ms), summed.
    charges: HashMap<String, (u64, u64)>,
    reads: Vec<Read>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.charges.is_empty() && self.reads.is_empty()
    }

    fn merge(&mut self, other: Queue) {
        for (k, (n, at)) in other.charges {
            add(&mut self.charges, k, n, at);
        }
        self.reads.extend(other.reads);
    }
}

fn add(charges: &mut HashMap<String, (u64, u64)>, key: String, n: u64, at: u64) {
    let e = charges.entry(key).or_insert((0, at));
    e.0 = e.0.saturating_add(n);
    e.1 = e.1.max(at);
}

/// One Redis endpoint's counters (shared by every plugin that uses the endpoint).
pub struct RedisCounters {
    target: Target,
    /// `host:port/db`, never the password.
    pub endpoint: String,
    queue: Mutex<Queue>,
    wake: Arc<Notify>,
    up: AtomicBool,
    retry_at_ms: AtomicU64,
    op_timeout: Duration,
    /// Charges that could not be sent (Redis down): handed back so the caller counts them
    /// locally (what it then admits against).
    failed: Mutex<Option<GiveBack>>,
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
    /// Counters on `client`'s endpoint; an exchange waits at most `op_timeout`. Must be
    /// called on a tokio runtime (the exchanging task starts here).
    pub fn new(
        client: redis::Client,
        op_timeout: Duration,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Arc<RedisCounters>, Unsupported> {
        let info = client.get_connection_info();
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            redis::ConnectionAddr::TcpTls { .. } => return Err(Unsupported("TLS to Redis (rediss://) is not supported yet")),
            _ => return Err(Unsupported("only redis://host:port endpoints are supported")),
        };
        let s = info.redis_settings();
        let target =
            Target { host, port, username: s.username().map(str::to_owned), password: s.password().map(str::to_owned), db: s.db() };
        let wake = Arc::new(Notify::new());
        let me = Arc::new(RedisCounters {
            target,
            endpoint: endpoint_label(info),
            queue: Mutex::default(),
            wake: wake.clone(),
            up: AtomicBool::new(true),
            retry_at_ms: AtomicU64::new(0),
            op_timeout,
            failed: Mutex::new(None),
            stats: Arc::default(),
            clock,
        });
        tokio::spawn(exchanger(Arc::downgrade(&me), wake));
        Ok(me)
    }

    /// What to do with charges Redis did not take (count them locally).
    pub fn on_failed_charge(&self, f: impl Fn(&str, u64, u64) + Send + Sync + 'static) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Down and within the pause after the failure: do not try.
    fn pausing(&self) -> bool {
        !self.is_up() && (self.clock)() < self.retry_at_ms.load(Ordering::Relaxed)
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counts of `keys` (0 for a missing key), waiting at most `deadline`. The read
    /// goes out with the next exchange, after this node's queued charges.
    pub async fn read(&self, keys: &[String], deadline: Duration) -> Result<Vec<u64>, Down> {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if self.pausing() {
            self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
            return Err(Down);
        }
        let (tx, rx) = oneshot::channel();
        self.lock().reads.push(Read { keys: keys.to_vec(), tx });
        self.wake.notify_one();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(_) => {
                self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
                Err(Down)
            }
            Err(_) => {
                self.stats.read_failures.fetch_add(1, Ordering::Relaxed);
                Err(self.failed(&format!("no answer within {} ms", deadline.as_millis())))
            }
        }
    }

    /// Adds `n` to `key`, which expires at `expire_at_ms` (epoch ms); never waits.
    pub fn charge(&self, key: String, n: u64, expire_at_ms: u64) {
        if n == 0 {
            return;
        }
        let mut q = self.lock();
        if q.charges.len() >= QUEUE && !q.charges.contains_key(&key) {
            drop(q);
            self.stats.charges_dropped.fetch_add(1, Ordering::Relaxed);
            self.give_back(&key, n, expire_at_ms);
            return;
        }
        let idle = q.is_empty();
        add(&mut q.charges, key, n, expire_at_ms);
        drop(q);
        if idle {
            self.wake.notify_one();
        }
    }

    fn give_back(&self, key: &str, n: u64, expire_at_ms: u64) {
        if let Some(f) = &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            f(key, n, expire_at_ms);
        }
    }

    /// Everything a failed exchange carried: reads answered Down, charges handed back.
    fn fail(&self, work: Queue) {
        for r in work.reads {
            let _ = r.tx.send(Err(Down));
        }
        self.stats.charge_failures.fetch_add(work.charges.len() as u64, Ordering::Relaxed);
        for (k, (n, at)) in work.charges {
            self.give_back(&k, n, at);
        }
    }

    /// One round trip: the charges (one transaction), then one MGET per read.
    async fn exchange(&self, conn: &mut Option<Conn>, work: Queue) {
        if conn.is_none() {
            if self.pausing() {
                return self.fail(work);
            }
            match tokio::time::timeout(self.op_timeout, Conn::open(&self.target)).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(e)) => {
                    self.failed(&e);
                    return self.fail(work);
                }
                Err(_) => {
                    self.failed("connect timed out");
                    return self.fail(work);
                }
            }
        }
        let Some(c) = conn.as_mut() else { return self.fail(work) };
        let mut out = Vec::with_capacity(64 + 48 * work.charges.len() + 32 * work.reads.len());
        let mut replies = 0;
        if !work.charges.is_empty() {
            command(&mut out, &[b"MULTI"]);
            for (k, (n, at)) in &work.charges {
                command(&mut out, &[b"INCRBY", k.as_bytes(), n.to_string().as_bytes()]);
                command(&mut out, &[b"PEXPIREAT", k.as_bytes(), at.to_string().as_bytes()]);
            }
            command(&mut out, &[b"EXEC"]);
            replies += 2 + 2 * work.charges.len();
        }
        for r in &work.reads {
            let mut args: Vec<&[u8]> = Vec::with_capacity(1 + r.keys.len());
            args.push(b"MGET");
            args.extend(r.keys.iter().map(|k| k.as_bytes()));
            command(&mut out, &args);
        }
        replies += work.reads.len();
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        let got = match tokio::time::timeout(self.op_timeout, c.exchange(&out, replies)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                *conn = None;
                self.failed(&e);
                return self.fail(work);
            }
            Err(_) => {
                *conn = None;
                self.failed("no answer within the redis timeout");
                return self.fail(work);
            }
        };
        let mut got = got.into_iter();
        if !work.charges.is_empty() {
            let head: Vec<Reply> = got.by_ref().take(2 + 2 * work.charges.len()).collect();
            if let Some(e) = head.iter().find_map(Reply::error) {
                // A refused transaction (an error before EXEC, or EXECABORT): nothing applied.
                // The connection is fine; the charges are counted here.
                tracing::warn!(redis = %self.endpoint, error = %e, "redis refused a charge batch");
                self.stats.charge_failures.fetch_add(work.charges.len() as u64, Ordering::Relaxed);
                for (k, (n, at)) in &work.charges {
                    self.give_back(k, *n, *at);
                }
            } else {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.charges.fetch_add(work.charges.len() as u64, Ordering::Relaxed);
            }
        }
        self.ok();
        for (r, reply) in work.reads.into_iter().zip(got) {
            let _ = r.tx.send(reply.counts().ok_or(Down));
        }
    }
}

/// Takes what is queued and exchanges it; repeats. Ends with the counters.
async fn exchanger(me: Weak<RedisCounters>, wake: Arc<Notify>) {
    let mut conn: Option<Conn> = None;
    loop {
        wake.notified().await;
        loop {
            let Some(counters) = me.upgrade() else { return };
            let mut work = std::mem::take(&mut *counters.lock());
            if work.is_empty() {
                break;
            }
            if work.reads.is_empty() {
                // Only charges: let a read carry them (one round trip instead of two) or
                // more of them gather; a read wakes this at once.
                drop(counters);
                tokio::select! {
                    () = tokio::time::sleep(LINGER) => {}
                    () = wake.notified() => {}
                }
                let Some(counters) = me.upgrade() else { return };
                let more = std::mem::take(&mut *counters.lock());
                work.merge(more);
                counters.exchange(&mut conn, work).await;
            } else {
                counters.exchange(&mut conn, work).await;
            }
        }
    }
}

/// Appends one RESP command.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status,
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The error of this reply or, for an array (EXEC's), of any element.
    fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            Reply::Array(None) => Some("transaction aborted"),
            Reply::Array(Some(items)) => items.iter().find_map(Reply::error),
            _ => None,
        }
    }

    /// MGET's counts (a missing key is 0); None for an error or a value that is no count.
    fn counts(self) -> Option<Vec<u64>> {
        let Reply::Array(Some(items)) = self else { return None };
        items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(None) => Some(0),
                Reply::Bulk(Some(b)) => std::str::from_utf8(&b).ok()?.parse::<i64>().ok().map(|v| v.max(0) as u64),
                Reply::Int(v) => Some(v.max(0) as u64),
                _ => None,
            })
            .collect()
    }
}

/// The line starting at `at` (without CRLF) and where the next starts.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn int(l: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(l).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "malformed reply length".to_owned())
}

/// One reply starting at `at`: Ok(None) while it is incomplete.
fn parse(buf: &[u8], at: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((l, next)) = line(buf, at + 1) else { return Ok(None) };
    let r = match kind {
        b'+' => (Reply::Status, next),
        b'-' => (Reply::Error(String::from_utf8_lossy(l).into_owned()), next),
        b':' => (Reply::Int(int(l)?), next),
        b'$' => {
            let n = int(l)?;
            if n < 0 {
                (Reply::Bulk(None), next)
            } else {
                let n = usize::try_from(n).map_err(|_| "reply too long")?;
                if n > MAX_REPLY {
                    return Err("reply too long".into());
                }
                let end = next + n;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("malformed bulk reply".into());
                }
                (Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)
            }
        }
        b'*' => {
            let n = int(l)?;
            if n < 0 {
                (Reply::Array(None), next)
            } else {
                let n = usize::try_from(n).map_err(|_| "reply too long")?;
                let mut items = Vec::with_capacity(n.min(1024));
                let mut p = next;
                for _ in 0..n {
                    match parse(buf, p)? {
                        Some((r, q)) => {
                            items.push(r);
                            p = q;
                        }
                        None => return Ok(None),
                    }
                }
                (Reply::Array(Some(items)), p)
            }
        }
        other => return Err(format!("unexpected reply type byte {other:#04x}")),
    };
    Ok(Some(r))
}

/// One connection, used by the exchanging task alone.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(t: &Target) -> Result<Conn, String> {
        let stream = TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn { stream, buf: Vec::with_capacity(4096) };
        let mut out = Vec::new();
        let mut n = 0;
        if let Some(p) = &t.password {
            match &t.username {
                Some(u) => command(&mut out, &[b"AUTH", u.as_bytes(), p.as_bytes()]),
                None => command(&mut out, &[b"AUTH", p.as_bytes()]),
            }
            n += 1;
        }
        if t.db != 0 {
            command(&mut out, &[b"SELECT", t.db.to_string().as_bytes()]);
            n += 1;
        }
        if n > 0 {
            for r in c.exchange(&out, n).await? {
                if let Some(e) = r.error() {
                    // Redis's own words (WRONGPASS, NOAUTH, DB index out of range): no secret.
                    return Err(e.to_owned());
                }
            }
        }
        Ok(c)
    }

    /// Writes `out` and reads `n` replies.
    async fn exchange(&mut self, out: &[u8], n: usize) -> Result<Vec<Reply>, String> {
        self.stream.write_all(out).await.map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut replies = Vec::with_capacity(n);
        let mut at = 0;
        while replies.len() < n {
            match parse(&self.buf, at)? {
                Some((r, next)) => {
                    replies.push(r);
                    at = next;
                }
                None => {
                    if self.buf.len() > MAX_REPLY {
                        return Err("reply too long".into());
                    }
                    self.buf.reserve(4096);
                    let k = self.stream.read_buf(&mut self.buf).await.map_err(|e| format!("read: {e}"))?;
                    if k == 0 {
                        return Err("connection closed".into());
                    }
                }
            }
        }
        if at != self.buf.len() {
            return Err("more replies than commands".into());
        }
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        let exec = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:5\r\n:1\r\n*3\r\n$2\r\n42\r\n$-1\r\n$1\r\n7\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, next)) = parse(exec, at).unwrap() {
            got.push(r);
            at = next;
        }
        assert_eq!(at, exec.len());
        assert_eq!(got.len(), 5);
        assert_eq!(got[3], Reply::Array(Some(vec![Reply::Int(5), Reply::Int(1)])));
        assert_eq!(got[4].clone().counts(), Some(vec![42, 0, 7]));
        // Every cut short of the end is incomplete, never an error or a wrong reply.
        for cut in 0..exec.len() {
            let mut at = 0;
            let mut n = 0;
            while let Some((_, next)) = parse(&exec[..cut], at).unwrap() {
                at = next;
                n += 1;
            }
            assert!(n < 5, "cut at {cut}");
        }
        assert_eq!(parse(b"-ERR no\r\n", 0).unwrap().unwrap().0.error(), Some("ERR no"));
        assert_eq!(Reply::Array(None).error(), Some("transaction aborted"));
        assert!(parse(b"?x\r\n", 0).is_err());
        assert!(parse(b"$3\r\nabcd\r\n", 0).is_err());
        assert_eq!(Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])).counts(), None);
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &[b"MGET", b"a", b"bc"]);
        assert_eq!(out, b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\nbc\r\n");
    }
}
