//! Counters served as Prometheus text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use aigw_gcp_auth::Stats;

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    /// Answered with a token already in Redis (fresh, or stale while it is refreshed).
    pub hits: AtomicU64,
    /// Nothing usable in Redis: this request led a mint or waited for one.
    pub misses: AtomicU64,
    /// Requests that found another replica holding the lock and waited for its token.
    pub lock_waits: AtomicU64,
    /// Redis commands that failed (connection refused, dropped, timed out, …).
    pub redis_errors: AtomicU64,
    /// Requests answered without Redis (it was down): minted or cached in-process.
    pub direct: AtomicU64,
    /// Background re-mints started in a token's refresh window.
    pub refresh_ahead: AtomicU64,
    pub invalidations: AtomicU64,
    /// Calls refused for a missing or wrong x-node-token.
    pub unauthenticated: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Every counter: its name, help and value; mints and mint failures come from the
    /// minting library.
    fn rows(&self, lib: &Stats) -> [(&'static str, &'static str, &'static str, u64); 11] {
        // (name, OTLP name, help, value)
        macro_rules! row {
            ($name:literal, $help:literal, $v:expr) => {
                ($name, concat!("aigw.token_cache.", $name), $help, $v)
            };
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            row!("requests", "GetAccessToken calls.", g(&self.requests)),
            row!("hits", "Answered with a token found in Redis.", g(&self.hits)),
            row!("misses", "No usable token in Redis.", g(&self.misses)),
            row!("mints", "Tokens minted by this replica (token endpoint calls that succeeded).", g(&lib.mints)),
            row!("mint_failures", "Token endpoint calls that failed.", g(&lib.mint_failures)),
            row!("lock_waits", "Requests that waited for another caller's mint.", g(&self.lock_waits)),
            row!("redis_errors", "Redis commands that failed.", g(&self.redis_errors)),
            row!("direct", "Requests answered without Redis (it was unavailable).", g(&self.direct)),
            row!("refresh_ahead", "Re-mints started before expiry while the old token kept serving.", g(&self.refresh_ahead)),
            row!("invalidations", "InvalidateAccessToken calls.", g(&self.invalidations)),
            row!("unauthenticated", "Calls refused for a missing or wrong x-node-token.", g(&self.unauthenticated)),
        ]
    }

    /// Prometheus text exposition.
    pub fn render(&self, lib: &Stats) -> String {
        let mut out = String::new();
        for (name, _, help, v) in self.rows(lib) {
            let _ = writeln!(out, "# HELP aigw_token_cache_{name}_total {help}");
            let _ = writeln!(out, "# TYPE aigw_token_cache_{name}_total counter");
            let _ = writeln!(out, "aigw_token_cache_{name}_total {v}");
        }
        out
    }
}

/// The same counters over OTLP (`aigw.token_cache.<name>`), read at each export.
pub fn observe(registry: &aigw_telemetry::metrics::Registry, metrics: std::sync::Arc<Metrics>, lib: std::sync::Arc<Stats>) {
    registry.observe(move |o| {
        for (_, name, help, v) in metrics.rows(&lib) {
            o.counter(name, "1", help, &[], v);
        }
    });
}

/// Reads one counter back from Prometheus text (tests).
pub fn parse(text: &str, name: &str) -> Option<u64> {
    let prefix = format!("aigw_token_cache_{name}_total ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter() {
        let m = Metrics::default();
        inc(&m.hits);
        inc(&m.hits);
        let lib = Stats::default();
        inc(&lib.mints);
        let text = m.render(&lib);
        assert_eq!(parse(&text, "hits"), Some(2));
        assert_eq!(parse(&text, "mints"), Some(1));
        for n in ["requests", "misses", "mint_failures", "lock_waits", "redis_errors", "direct"] {
            assert_eq!(parse(&text, n), Some(0), "{n}");
        }
    }
}
