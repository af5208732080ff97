//! Access tokens, their lifetimes, and the clock they are measured with.
//!
//! A token has two instants, both computed from its **real** expiry:
//! - `refresh_at`: the end of its cache lifetime (APISIX's TTL): `expires_in −
//!   expire_early_secs` (only when `expires_in > expire_early_secs`), capped by `max_ttl`,
//!   counted from when the token was asked for;
//! - `expires_at`: when Google stops accepting it.
//!
//! Between the two a cache keeps serving it while one caller re-mints
//! (refresh-ahead), up to [`AccessToken::usable_until_ms`], a small safety margin before
//! the real expiry. Nobody waits at the boundary unless the window is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Default of `auth.gcp.expire_early_secs`.
pub const DEFAULT_EXPIRE_EARLY_SECS: u64 = 60;
/// `expires_in` assumed when a token endpoint omits it (as APISIX does).
pub const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Largest margin kept between `usable_until` and the real expiry.
const MAX_SAFETY_MS: u64 = 5_000;

/// `auth.gcp.expire_early_secs` and `auth.gcp.max_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TtlPolicy {
    pub expire_early_secs: u64,
    pub max_ttl: Option<u64>,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy { expire_early_secs: DEFAULT_EXPIRE_EARLY_SECS, max_ttl: None }
    }
}

impl TtlPolicy {
    /// Seconds a token answered with `expires_in` stays fresh in a cache (APISIX's rule).
    pub fn lifetime_secs(&self, expires_in: u64) -> u64 {
        let mut ttl = expires_in;
        if ttl > self.expire_early_secs {
            ttl -= self.expire_early_secs;
        }
        if let Some(max) = self.max_ttl {
            ttl = ttl.min(max);
        }
        ttl
    }

    /// `(expires_at_ms, refresh_at_ms)` of a token asked for at `asked_at_ms` (before the
    /// request was sent, so both err on the early side) and answered with `expires_in`.
    pub fn timing(&self, asked_at_ms: u64, expires_in: u64) -> (u64, u64) {
        (asked_at_ms + expires_in * 1000, asked_at_ms + self.lifetime_secs(expires_in) * 1000)
    }
}

/// Wall-clock milliseconds since the Unix epoch (wall clock because expiries are shared
/// across processes through Redis and the token-cache service). Injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(now_ms)))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A bearer token. `Debug` shows a fingerprint, never the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<str>,
    /// `Bearer <token>`, built once (a clone per request is a reference count).
    header: Option<http::HeaderValue>,
    expires_at_ms: u64,
    refresh_at_ms: u64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("fingerprint", &self.fingerprint())
            .field("expires_at_ms", &self.expires_at_ms)
            .field("refresh_at_ms", &self.refresh_at_ms)
            .finish()
    }
}

impl AccessToken {
    pub fn new(secret: impl Into<Arc<str>>, expires_at_ms: u64, refresh_at_ms: u64) -> AccessToken {
        let secret: Arc<str> = secret.into();
        let header = http::HeaderValue::from_str(&format!("Bearer {secret}")).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        AccessToken { secret, header, expires_at_ms, refresh_at_ms: refresh_at_ms.min(expires_at_ms) }
    }

    /// The token itself. Secret: put it in an `Authorization` header, nowhere else.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// `Bearer <token>`, marked sensitive (HPACK never indexes it).
    pub fn authorization_header(&self) -> Option<http::HeaderValue> {
        self.header.clone()
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }

    pub fn refresh_at_ms(&self) -> u64 {
        self.refresh_at_ms
    }

    /// Last instant a cache hands this token out (while a refresh is under way): the
    /// real expiry less half the refresh window, at most 5 s.
    pub fn usable_until_ms(&self) -> u64 {
        let window = self.expires_at_ms.saturating_sub(self.refresh_at_ms);
        self.expires_at_ms - (window / 2).min(MAX_SAFETY_MS)
    }

    /// Hex of the first 8 bytes of SHA-256(token): safe to log and to compare.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.secret)
    }

    pub fn same_token(&self, other: &AccessToken) -> bool {
        self.secret == other.secret
    }
}

/// Hex of the first 8 bytes of SHA-256(token).
pub fn fingerprint(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..8])
}

/// Milliseconds since the epoch as a protobuf timestamp, and back.
pub fn to_timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> u64 {
    (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expire_early_secs: u64, max_ttl: Option<u64>, expires_in: u64, expect: u64) {
        let p = TtlPolicy { expire_early_secs, max_ttl };
        assert_eq!(p.lifetime_secs(expires_in), expect, "{p:?} expires_in={expires_in}");
    }

    #[test]
    fn ttl_arithmetic() {
        // APISIX's own cases: a short token is not shortened by the default 60 s.
        check(60, None, 5, 5);
        check(60, Some(8), 10, 8);
        // expire_early_secs applies only when expires_in is larger.
        check(60, None, 3599, 3539);
        check(60, None, 60, 60);
        check(60, None, 61, 1);
        check(0, None, 3600, 3600);
        check(300, Some(600), 3600, 600);
        check(10, Some(100), 30, 20);
    }

    #[test]
    fn timing_and_usable_window() {
        let p = TtlPolicy { expire_early_secs: 60, max_ttl: None };
        let (exp, refresh) = p.timing(1_000_000, 3600);
        assert_eq!((exp, refresh), (1_000_000 + 3_600_000, 1_000_000 + 3_540_000));
        let t = AccessToken::new("ya29.x", exp, refresh);
        assert_eq!(t.usable_until_ms(), exp - 5_000);
        // A small window keeps half of it as margin.
        let t = AccessToken::new("ya29.x", 10_000, 8_000);
        assert_eq!(t.usable_until_ms(), 9_000);
        // No window: usable until the real expiry.
        let t = AccessToken::new("ya29.x", 10_000, 10_000);
        assert_eq!(t.usable_until_ms(), 10_000);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = AccessToken::new("ya29.SECRET", 2, 1);
        let d = format!("{t:?}");
        assert!(d.contains("fingerprint") && !d.contains("SECRET"), "{d}");
        assert!(t.authorization_header().unwrap().is_sensitive());
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(from_timestamp(&to_timestamp(1_700_000_123_456)), 1_700_000_123_456);
    }
}
