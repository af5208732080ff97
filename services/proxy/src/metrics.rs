//! The proxy's counters (Prometheus text on the status port). Plain atomics: recording
//! is a handful of relaxed adds per request.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub gateway_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub config_applied: AtomicU64,
    pub config_rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Responses that did not reach their end (client gone, upstream failure, limit).
    pub responses_aborted: AtomicU64,
    /// Of those, the client went away.
    pub clients_gone: AtomicU64,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
