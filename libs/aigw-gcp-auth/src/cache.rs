//! [`TokenSource`]: one credential's token, cached in-process with single flight and
//! refresh-ahead.
//!
//! - fresh (`now < refresh_at`): answered from memory;
//! - in the refresh window (`refresh_at ≤ now < usable_until`): answered from memory,
//!   and the first such caller starts **one** background fetch; nobody waits;
//! - missing or past `usable_until`: callers wait for **one** fetch, whoever started it.
//!
//! Fetches run in their own task, so a caller that goes away (client disconnect) does
//! not cancel the fetch the others wait for. A failed fetch is handed to every caller
//! that waited for it; a failed background refresh is retried at most once a second
//! while the old token stays usable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::error::GcpAuthError;
use crate::token::{AccessToken, Clock};

/// Pause between background refresh attempts that did not bring a fresh token.
const REFRESH_RETRY_MS: u64 = 1_000;
/// After an upstream 401 drops a token, a 401 on the next token within this time is not
/// re-minted for: an upstream that refuses every token (a wrong endpoint, a revoked
/// account) must not turn every request into a token mint.
pub const REJECT_COOLDOWN_MS: u64 = 5_000;

/// Where a [`TokenSource`] gets new tokens: minting, or the token-cache service.
pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'static, Result<AccessToken, GcpAuthError>>;
    /// Tells the shared side (if any) that `token` was rejected upstream.
    fn forget(&self, _token: &AccessToken) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Counters of a process's token sources (exported by the proxy / service as metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Answered from the in-process cache (fresh, or stale during a refresh).
    pub hits: AtomicU64,
    /// No usable token in memory: the caller waited for a fetch.
    pub misses: AtomicU64,
    /// Misses that joined a fetch another caller had started.
    pub coalesced: AtomicU64,
    /// Background refreshes started inside the refresh window.
    pub refresh_ahead: AtomicU64,
    /// Tokens minted by this process (token endpoint or metadata server).
    pub mints: AtomicU64,
    pub mint_failures: AtomicU64,
    /// Tokens fetched from aigw-token-cache.
    pub remote_fetches: AtomicU64,
    /// Fetches that minted locally because aigw-token-cache was unavailable.
    pub remote_fallbacks: AtomicU64,
    /// Tokens dropped after an upstream 401.
    pub invalidations: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of [`Stats`] as (metric suffix, value) pairs.
impl Stats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("hits", g(&self.hits)),
            ("misses", g(&self.misses)),
            ("coalesced", g(&self.coalesced)),
            ("refresh_ahead", g(&self.refresh_ahead)),
            ("mints", g(&self.mints)),
            ("mint_failures", g(&self.mint_failures)),
            ("remote_fetches", g(&self.remote_fetches)),
            ("remote_fallbacks", g(&self.remote_fallbacks)),
            ("invalidations", g(&self.invalidations)),
        ]
    }
}

type FlightResult = Option<Result<AccessToken, GcpAuthError>>;

#[derive(Default)]
struct Slot {
    token: Option<AccessToken>,
    flight: Option<watch::Receiver<FlightResult>>,
    generation: u64,
    /// No background refresh before this instant.
    retry_at_ms: u64,
    /// Fingerprint of the last token invalidated: never cached again.
    rejected: Option<String>,
    /// When a token was last dropped after an upstream 401 (0: never).
    rejected_at_ms: u64,
}

struct Inner {
    who: String,
    clock: Arc<dyn Clock>,
    fetcher: Arc<dyn Fetcher>,
    stats: Arc<Stats>,
    slot: Mutex<Slot>,
}

/// One credential's token source. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource").field("who", &self.inner.who).finish()
    }
}

impl TokenSource {
    /// A source over any [`Fetcher`]; `who` names the credential in logs.
    pub fn new(who: String, fetcher: Arc<dyn Fetcher>, clock: Arc<dyn Clock>, stats: Arc<Stats>) -> TokenSource {
        TokenSource { inner: Arc::new(Inner { who, clock, fetcher, stats, slot: Mutex::new(Slot::default()) }) }
    }

    /// Whether `other` is this source (clones share one cache).
    pub fn same_source(&self, other: &TokenSource) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Who the credential is (client_email or the metadata server's default account).
    pub fn who(&self) -> &str {
        &self.inner.who
    }

    /// A usable token: from memory when it has life left, else from one shared fetch.
    pub async fn token(&self) -> Result<AccessToken, GcpAuthError> {
        let inner = &self.inner;
        let mut rx = {
            let mut s = inner.slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = inner.clock.now_ms();
            if let Some(t) = &s.token {
                if now < t.refresh_at_ms() {
                    inc(&inner.stats.hits);
                    return Ok(t.clone());
                }
                if now < t.usable_until_ms() {
                    let t = t.clone();
                    if s.flight.is_none() && now >= s.retry_at_ms {
                        inc(&inner.stats.refresh_ahead);
                        tracing::debug!(who = %inner.who, "gcp token in its refresh window: refreshing ahead");
                        start_flight(inner, &mut s);
                    }
                    inc(&inner.stats.hits);
                    return Ok(t);
                }
                s.token = None;
            }
            inc(&inner.stats.misses);
            match &s.flight {
                Some(rx) => {
                    inc(&inner.stats.coalesced);
                    rx.clone()
                }
                None => start_flight(inner, &mut s),
            }
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err(GcpAuthError::Interrupted { who: inner.who.clone() })),
            Err(_) => Err(GcpAuthError::Interrupted { who: inner.who.clone() }),
        }
    }

    /// Drops `token` (an upstream answered 401 with it): it is never handed out again by
    /// this source, and the shared side (aigw-token-cache) is told to drop it too.
    pub async fn invalidate(&self, token: &AccessToken) {
        self.drop_rejected(token, false).await;
    }

    /// An upstream answered 401 to `token`: whether the request is worth sending once
    /// more with [`TokenSource::token`].
    /// - `token` is the cached one: it is dropped here and in aigw-token-cache (as
    ///   [`TokenSource::invalidate`]), and the next `token()` fetches a fresh one — unless
    ///   another token was dropped less than [`REJECT_COOLDOWN_MS`] ago, then `false`
    ///   (the 401 goes to the client; nothing is minted);
    /// - another caller already dropped it, or a newer token replaced it: `true`, and
    ///   `token()` hands out the newer one (or joins its fetch) without another mint.
    pub async fn reject(&self, token: &AccessToken) -> bool {
        self.drop_rejected(token, true).await
    }

    async fn drop_rejected(&self, token: &AccessToken, cooldown: bool) -> bool {
        let inner = &self.inner;
        {
            let mut s = inner.slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = inner.clock.now_ms();
            let current = s.token.as_ref().is_some_and(|t| t.same_token(token));
            let fp = token.fingerprint();
            if !current && s.rejected.as_deref() == Some(fp.as_str()) {
                return true;
            }
            if cooldown && current && s.rejected_at_ms != 0 && now < s.rejected_at_ms + REJECT_COOLDOWN_MS {
                tracing::warn!(who = %inner.who, token_fp = %fp,
                    "upstream refused a fresh gcp access token with 401 again; not minting another one for a few seconds");
                return false;
            }
            if cooldown && !current {
                return true;
            }
            if current {
                s.token = None;
            }
            s.rejected = Some(fp);
            s.rejected_at_ms = now;
        }
        inc(&inner.stats.invalidations);
        tracing::info!(who = %inner.who, token_fp = %token.fingerprint(), "gcp access token invalidated after an upstream 401");
        inner.fetcher.forget(token).await;
        true
    }

    pub(crate) fn downgrade(&self) -> WeakTokenSource {
        WeakTokenSource(Arc::downgrade(&self.inner))
    }

    /// The cached token, if any (for tests and status pages; does not fetch).
    pub fn peek(&self) -> Option<AccessToken> {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner()).token.clone()
    }
}

/// A registry's handle on a source that does not keep it alive.
pub(crate) struct WeakTokenSource(std::sync::Weak<Inner>);

impl WeakTokenSource {
    pub(crate) fn upgrade(&self) -> Option<TokenSource> {
        self.0.upgrade().map(|inner| TokenSource { inner })
    }
    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

fn start_flight(inner: &Arc<Inner>, s: &mut Slot) -> watch::Receiver<FlightResult> {
    let (tx, rx) = watch::channel(None);
    s.flight = Some(rx.clone());
    s.generation += 1;
    let generation = s.generation;
    let inner = inner.clone();
    tokio::spawn(async move {
        let result = inner.fetcher.fetch().await;
        {
            let mut s = inner.slot.lock().unwrap_or_else(|e| e.into_inner());
            if s.generation == generation {
                s.flight = None;
            }
            let now = inner.clock.now_ms();
            match &result {
                Ok(t) if s.rejected.as_deref() == Some(&t.fingerprint()) => {
                    tracing::warn!(who = %inner.who, "fetched a token that was just rejected upstream; not caching it");
                    s.retry_at_ms = now + REFRESH_RETRY_MS;
                }
                Ok(t) => {
                    // A stale answer (e.g. the token cache still refreshing) is kept, but the
                    // next background attempt waits a little.
                    if t.refresh_at_ms() <= now {
                        s.retry_at_ms = now + REFRESH_RETRY_MS;
                    }
                    s.token = Some(t.clone());
                }
                Err(e) => {
                    tracing::warn!(who = %inner.who, error = %e, "gcp access token fetch failed");
                    s.retry_at_ms = now + REFRESH_RETRY_MS;
                }
            }
        }
        let _ = tx.send(Some(result));
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::ManualClock;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Hands out `tok-N` living `life_ms` (refresh at half), after waiting for `gate`.
    struct Counting {
        n: Arc<AtomicUsize>,
        clock: Arc<ManualClock>,
        life_ms: u64,
        gate: Arc<tokio::sync::Semaphore>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Fetcher for Counting {
        fn fetch(&self) -> BoxFuture<'static, Result<AccessToken, GcpAuthError>> {
            let (n, clock, life, gate, fail) = (self.n.clone(), self.clock.clone(), self.life_ms, self.gate.clone(), self.fail.clone());
            Box::pin(async move {
                gate.acquire().await.unwrap().forget();
                let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                if fail.load(Ordering::SeqCst) {
                    return Err(GcpAuthError::Mint { who: "t".into(), endpoint: "e".into(), status: Some(500), problem: "boom".into() });
                }
                let now = clock.now_ms();
                Ok(AccessToken::new(format!("tok-{i}"), now + life, now + life / 2))
            })
        }
    }

    struct Fixture {
        src: TokenSource,
        n: Arc<AtomicUsize>,
        clock: Arc<ManualClock>,
        gate: Arc<tokio::sync::Semaphore>,
        fail: Arc<std::sync::atomic::AtomicBool>,
        stats: Arc<Stats>,
    }

    fn fixture(life_ms: u64) -> Fixture {
        let clock = ManualClock::new(1_000_000);
        let n = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let f = Counting { n: n.clone(), clock: clock.clone(), life_ms, gate: gate.clone(), fail: fail.clone() };
        let src = TokenSource::new("t@p".into(), Arc::new(f), clock.clone(), stats.clone());
        Fixture { src, n, clock, gate, fail, stats }
    }

    async fn settle<F: Fn() -> bool>(what: &str, f: F) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_callers_one_fetch() {
        let fx = fixture(60_000);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let src = fx.src.clone();
            tasks.push(tokio::spawn(async move { src.token().await.unwrap().secret().to_owned() }));
        }
        settle("all 50 waiting", || fx.stats.misses.load(Ordering::SeqCst) == 50).await;
        assert_eq!(fx.stats.coalesced.load(Ordering::SeqCst), 49);
        fx.gate.add_permits(100);
        for t in tasks {
            assert_eq!(t.await.unwrap(), "tok-1");
        }
        assert_eq!(fx.n.load(Ordering::SeqCst), 1);
        // Served from memory afterwards.
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-1");
        assert_eq!(fx.n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn refresh_ahead_keeps_serving_and_refreshes_once() {
        let fx = fixture(10_000); // refresh at 5 s, usable until 7.5 s
        fx.gate.add_permits(1);
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-1");
        fx.clock.advance(Duration::from_millis(6_000));
        // In the window, with the next fetch blocked: every caller still gets tok-1 at once.
        for _ in 0..20 {
            assert_eq!(fx.src.token().await.unwrap().secret(), "tok-1");
        }
        assert_eq!(fx.stats.refresh_ahead.load(Ordering::SeqCst), 1, "exactly one background refresh");
        fx.gate.add_permits(1);
        settle("refreshed", || fx.src.peek().is_some_and(|t| t.secret() == "tok-2")).await;
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-2");
        assert_eq!(fx.n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn past_usable_until_callers_wait_for_a_new_token() {
        let fx = fixture(10_000);
        fx.gate.add_permits(1);
        fx.src.token().await.unwrap();
        fx.clock.advance(Duration::from_millis(8_000)); // past usable_until (7.5 s)
        let src = fx.src.clone();
        let waiting = tokio::spawn(async move { src.token().await.unwrap().secret().to_owned() });
        settle("a miss", || fx.stats.misses.load(Ordering::SeqCst) == 2).await;
        assert!(!waiting.is_finished());
        fx.gate.add_permits(1);
        assert_eq!(waiting.await.unwrap(), "tok-2");
    }

    #[tokio::test]
    async fn a_failure_reaches_every_waiter_and_is_not_cached() {
        let fx = fixture(10_000);
        fx.fail.store(true, Ordering::SeqCst);
        let (a, b) = (fx.src.clone(), fx.src.clone());
        let t1 = tokio::spawn(async move { a.token().await });
        let t2 = tokio::spawn(async move { b.token().await });
        settle("two waiting", || fx.stats.misses.load(Ordering::SeqCst) == 2).await;
        fx.gate.add_permits(10);
        assert!(t1.await.unwrap().unwrap_err().to_string().contains("boom"));
        assert!(t2.await.unwrap().is_err());
        assert_eq!(fx.n.load(Ordering::SeqCst), 1);
        fx.fail.store(false, Ordering::SeqCst);
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-2");
    }

    #[tokio::test]
    async fn invalidate_drops_the_token() {
        let fx = fixture(60_000);
        fx.gate.add_permits(10);
        let t = fx.src.token().await.unwrap();
        fx.src.invalidate(&t).await;
        assert!(fx.src.peek().is_none());
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-2");
        assert_eq!(fx.stats.invalidations.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_rejected_token_is_reminted_once_and_a_refusing_upstream_does_not_cause_a_mint_storm() {
        let fx = fixture(600_000);
        fx.gate.add_permits(10);
        let t1 = fx.src.token().await.unwrap();
        // Two requests got 401 with tok-1: the first drops it, the second just retries.
        assert!(fx.src.reject(&t1).await);
        assert!(fx.src.reject(&t1).await);
        let t2 = fx.src.token().await.unwrap();
        assert_eq!(t2.secret(), "tok-2");
        assert_eq!(fx.stats.invalidations.load(Ordering::SeqCst), 1);
        // tok-2 refused at once as well: no third mint within the cooldown.
        assert!(!fx.src.reject(&t2).await);
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-2");
        fx.clock.advance(Duration::from_millis(REJECT_COOLDOWN_MS));
        assert!(fx.src.reject(&t2).await);
        assert_eq!(fx.src.token().await.unwrap().secret(), "tok-3");
        assert_eq!(fx.n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_cancelled_caller_does_not_cancel_the_fetch() {
        let fx = fixture(60_000);
        let src = fx.src.clone();
        let first = tokio::spawn(async move { src.token().await });
        settle("first waiting", || fx.stats.misses.load(Ordering::SeqCst) == 1).await;
        first.abort();
        let src = fx.src.clone();
        let second = tokio::spawn(async move { src.token().await.unwrap().secret().to_owned() });
        settle("second joined", || fx.stats.coalesced.load(Ordering::SeqCst) == 1).await;
        fx.gate.add_permits(10);
        assert_eq!(second.await.unwrap(), "tok-1");
        assert_eq!(fx.n.load(Ordering::SeqCst), 1);
    }
}
