//! Per-instance health: passive ejection (consecutive failures → a growing back-off),
//! the active prober's verdict, and counters for `/status/instances`. Every field is an
//! atomic: requests report outcomes and the picker reads health without a lock.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Passive ejection: after `failures` consecutive failed requests an instance is skipped
/// for `base_ms`, doubling (up to `max_ms`) each time it fails again once let back in;
/// one success resets both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassivePolicy {
    pub failures: u32,
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        PassivePolicy { failures: 5, base_ms: 1_000, max_ms: 60_000 }
    }
}

impl PassivePolicy {
    /// The back-off of the `n`-th consecutive ejection (0-based).
    pub fn backoff_ms(&self, n: u32) -> u64 {
        self.base_ms.saturating_mul(1u64 << n.min(32)).min(self.max_ms)
    }
}

/// The active prober's verdict. `Unknown` (no checker, or no verdict yet) counts as healthy,
/// as lua-resty-healthcheck starts its targets healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActiveState {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl ActiveState {
    fn from_u8(v: u8) -> ActiveState {
        match v {
            1 => ActiveState::Healthy,
            2 => ActiveState::Unhealthy,
            _ => ActiveState::Unknown,
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    /// The probe got an HTTP answer.
    Status(u16),
    /// Connect refused or reset, TLS failure.
    TcpFailure,
    Timeout,
}

/// `checks.active` thresholds (APISIX's health-checker schema and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRules {
    pub healthy_statuses: Vec<u16>,
    pub successes: u32,
    pub healthy_interval_s: u64,
    pub unhealthy_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub unhealthy_interval_s: u64,
}

impl Default for ProbeRules {
    fn default() -> Self {
        ProbeRules {
            healthy_statuses: vec![200, 302],
            successes: 2,
            healthy_interval_s: 1,
            unhealthy_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
            unhealthy_interval_s: 1,
        }
    }
}

/// Live state of one instance.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    consecutive_failures: AtomicU32,
    /// Clock milliseconds until which the instance is ejected (0: never ejected).
    ejected_until: AtomicU64,
    /// Ejections since the last success (drives the back-off).
    streak: AtomicU32,
    active: AtomicU8,
    // Probe counters: written by the one prober of this instance only.
    probe_ok: AtomicU32,
    probe_http_fail: AtomicU32,
    probe_tcp_fail: AtomicU32,
    probe_timeouts: AtomicU32,
    // Counters.
    attempts: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    fallbacks: AtomicU64,
    /// The active prober that owns this instance's probe counters: a config change starts
    /// a new prober, which claims the instance; the previous one sees it lost and stops.
    prober: AtomicU64,
}

impl InstanceHealth {
    pub fn active(&self) -> ActiveState {
        ActiveState::from_u8(self.active.load(Relaxed))
    }

    pub fn set_active(&self, s: ActiveState) {
        self.active.store(s as u8, Relaxed);
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until.load(Relaxed)
    }

    /// Healthy for picking: not ejected and not marked unhealthy by the prober.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.active() != ActiveState::Unhealthy && !self.is_ejected(now_ms)
    }

    pub(crate) fn attempt(&self) {
        self.attempts.fetch_add(1, Relaxed);
    }

    pub(crate) fn fallback(&self) {
        self.fallbacks.fetch_add(1, Relaxed);
    }

    pub(crate) fn success(&self) {
        self.successes.fetch_add(1, Relaxed);
        // Reads first: on the common path nothing is set, and a store would still take
        // the cache line from the other cores serving the same instance.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.streak.load(Relaxed) != 0 {
            self.streak.store(0, Relaxed);
        }
        // An ejected instance that answered well (it was tried because every instance was
        // unhealthy) is back.
        if self.ejected_until.load(Relaxed) != 0 {
            self.ejected_until.store(0, Relaxed);
        }
    }

    /// Returns true when this failure ejected the instance.
    pub(crate) fn failure(&self, now_ms: u64, p: &PassivePolicy) -> bool {
        self.failures.fetch_add(1, Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1);
        if n < p.failures.max(1) {
            return false;
        }
        // Requests already in flight when the instance was ejected report too: they
        // must not stretch the back-off. Only one reporter wins the ejection.
        let until = self.ejected_until.load(Relaxed);
        if now_ms < until {
            return false;
        }
        let streak = self.streak.load(Relaxed);
        let new_until = now_ms.saturating_add(p.backoff_ms(streak));
        if self.ejected_until.compare_exchange(until, new_until, Relaxed, Relaxed).is_err() {
            return false;
        }
        self.streak.fetch_add(1, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        true
    }

    /// Applies one probe result; returns the new state when it changed.
    pub(crate) fn probe(&self, rules: &ProbeRules, r: ProbeResult) -> Option<ActiveState> {
        let bump = |c: &AtomicU32| c.fetch_add(1, Relaxed).saturating_add(1);
        let reset_failures = || {
            for c in [&self.probe_http_fail, &self.probe_tcp_fail, &self.probe_timeouts] {
                c.store(0, Relaxed);
            }
        };
        let target = match r {
            ProbeResult::Status(s) if rules.healthy_statuses.contains(&s) => {
                reset_failures();
                (bump(&self.probe_ok) >= rules.successes.max(1)).then_some(ActiveState::Healthy)
            }
            ProbeResult::Status(s) if rules.unhealthy_statuses.contains(&s) => {
                self.probe_ok.store(0, Relaxed);
                (bump(&self.probe_http_fail) >= rules.http_failures.max(1)).then_some(ActiveState::Unhealthy)
            }
            // A status in neither list says nothing (lua-resty-healthcheck).
            ProbeResult::Status(_) => None,
            ProbeResult::TcpFailure => {
                self.probe_ok.store(0, Relaxed);
                (bump(&self.probe_tcp_fail) >= rules.tcp_failures.max(1)).then_some(ActiveState::Unhealthy)
            }
            ProbeResult::Timeout => {
                self.probe_ok.store(0, Relaxed);
                (bump(&self.probe_timeouts) >= rules.timeouts.max(1)).then_some(ActiveState::Unhealthy)
            }
        }?;
        if self.active() == target {
            return None;
        }
        // A transition starts every count afresh.
        self.probe_ok.store(0, Relaxed);
        reset_failures();
        self.set_active(target);
        Some(target)
    }

    /// Makes the caller the instance's only prober; returns its token.
    pub fn claim_prober(&self) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let token = NEXT.fetch_add(1, Relaxed);
        self.prober.store(token, Relaxed);
        token
    }

    /// Whether the prober holding `token` still owns the instance.
    pub fn owns_prober(&self, token: u64) -> bool {
        self.prober.load(Relaxed) == token
    }

    /// Seconds until the next probe: the unhealthy interval while unhealthy.
    pub fn probe_interval_s(&self, rules: &ProbeRules) -> u64 {
        if self.active() == ActiveState::Unhealthy { rules.unhealthy_interval_s } else { rules.healthy_interval_s }.max(1)
    }
}

/// One instance as `/status/instances` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub priority: i32,
    pub weight: u32,
    /// Would be picked now (not ejected, not actively unhealthy).
    pub healthy: bool,
    pub active: ActiveState,
    /// Milliseconds left of a passive ejection (0: not ejected).
    pub ejected_for_ms: u64,
    pub consecutive_failures: u32,
    /// Ejections since the last success.
    pub ejection_streak: u32,
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    pub ejections: u64,
    /// Attempts on this instance that failed and were retried on another one.
    pub fallbacks: u64,
}

impl InstanceHealth {
    pub(crate) fn status(&self, name: &str, priority: i32, weight: u32, now_ms: u64) -> InstanceStatus {
        let until = self.ejected_until.load(Relaxed);
        InstanceStatus {
            name: name.to_owned(),
            priority,
            weight,
            healthy: self.is_available(now_ms),
            active: self.active(),
            ejected_for_ms: until.saturating_sub(now_ms),
            consecutive_failures: self.consecutive_failures.load(Relaxed),
            ejection_streak: self.streak.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            successes: self.successes.load(Relaxed),
            failures: self.failures.load(Relaxed),
            ejections: self.ejections.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let p = PassivePolicy::default();
        let seq: Vec<u64> = (0..9).map(|n| p.backoff_ms(n)).collect();
        assert_eq!(seq, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
        assert_eq!(p.backoff_ms(u32::MAX), 60_000);
    }

    #[test]
    fn ejection_after_n_failures_grows_while_failing_and_resets_on_success() {
        let p = PassivePolicy::default();
        let h = InstanceHealth::default();
        let mut now = 10_000;
        for i in 1..5 {
            assert!(!h.failure(now, &p), "failure {i} must not eject");
            assert!(h.is_available(now));
        }
        assert!(h.failure(now, &p), "the 5th consecutive failure ejects");
        assert!(!h.is_available(now) && h.is_available(now + 1_000));
        // In-flight requests failing during the ejection do not extend it.
        assert!(!h.failure(now + 10, &p));
        assert!(h.is_available(now + 1_000));
        // Let back in, fails once: ejected again for twice as long.
        now += 1_000;
        assert!(h.failure(now, &p));
        assert!(!h.is_available(now + 1_999) && h.is_available(now + 2_000));
        now += 2_000;
        assert!(h.failure(now, &p));
        assert!(!h.is_available(now + 3_999) && h.is_available(now + 4_000));
        let s = h.status("a", 0, 1, now);
        assert_eq!((s.ejections, s.ejection_streak, s.failures, s.ejected_for_ms), (3, 3, 8, 4_000));
        // A success resets everything: five more failures are needed, back-off restarts at 1 s.
        h.success();
        assert!(h.is_available(now));
        for _ in 1..5 {
            assert!(!h.failure(now, &p));
        }
        assert!(h.failure(now, &p));
        assert!(h.is_available(now + 1_000));
    }

    #[test]
    fn probes_follow_the_health_checker_thresholds() {
        let rules = ProbeRules::default();
        let h = InstanceHealth::default();
        assert_eq!(h.active(), ActiveState::Unknown);
        assert!(h.is_available(0));
        // (result, expected transition) in sequence.
        let steps = [
            (ProbeResult::Status(200), None),
            (ProbeResult::Status(200), Some(ActiveState::Healthy)),
            (ProbeResult::Status(200), None),
            (ProbeResult::Status(418), None),
            (ProbeResult::TcpFailure, None),
            (ProbeResult::TcpFailure, Some(ActiveState::Unhealthy)),
            (ProbeResult::Status(302), None),
            (ProbeResult::Timeout, None),
            (ProbeResult::Status(200), None),
            (ProbeResult::Status(200), Some(ActiveState::Healthy)),
            (ProbeResult::Status(500), None),
            (ProbeResult::Status(500), None),
            (ProbeResult::Status(500), None),
            (ProbeResult::Status(500), None),
            (ProbeResult::Status(500), Some(ActiveState::Unhealthy)),
            (ProbeResult::Status(200), None),
            (ProbeResult::Status(200), Some(ActiveState::Healthy)),
            (ProbeResult::Timeout, None),
            (ProbeResult::Timeout, None),
            (ProbeResult::Timeout, Some(ActiveState::Unhealthy)),
        ];
        for (i, (r, want)) in steps.into_iter().enumerate() {
            assert_eq!(h.probe(&rules, r), want, "step {i}: {r:?}");
        }
        assert!(!h.is_available(0));
        let rules = ProbeRules { healthy_interval_s: 10, unhealthy_interval_s: 2, ..ProbeRules::default() };
        assert_eq!(h.probe_interval_s(&rules), 2);
        h.set_active(ActiveState::Healthy);
        assert_eq!(h.probe_interval_s(&rules), 10);
    }
}
