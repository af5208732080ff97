//! Picking an instance: priority groups (highest first), within a group smooth weighted
//! round robin or weighted consistent hashing, skipping unhealthy and already-tried
//! instances. Built once per config snapshot; a pick reads immutable tables, the health
//! atomics and one atomic counter: no lock, no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::clock::{Clock, MonotonicClock};
use crate::health::{ActiveState, InstanceHealth, InstanceStatus, PassivePolicy, ProbeResult, ProbeRules};
use crate::retry::{HealthSignal, Outcome};

/// Longest precomputed round-robin sequence; larger weight sums are scaled down to it.
pub const MAX_SEQUENCE: u64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique within the route; consistent hashing keys on it, so renaming an instance
    /// moves its keys.
    pub name: String,
    pub weight: u32,
    /// Higher is served first.
    pub priority: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug)]
struct Group {
    /// Positive-weight members (instance indexes).
    members: Vec<usize>,
    /// Smooth weighted round-robin sequence over `members` (instance indexes).
    sequence: Vec<u32>,
    cursor: AtomicUsize,
}

/// One route's picker and the health of its instances.
#[derive(Debug)]
pub struct Balancer {
    specs: Vec<InstanceSpec>,
    /// FNV-1a of each name, mixed with the key for consistent hashing.
    name_hash: Vec<u64>,
    algorithm: Algorithm,
    /// Priority groups, highest priority first.
    groups: Vec<Group>,
    /// Weight-0 instances, highest priority first: picked only when nothing else is left.
    zero: Vec<usize>,
    zero_cursor: AtomicUsize,
    health: Vec<Arc<InstanceHealth>>,
    passive: PassivePolicy,
    clock: Arc<dyn Clock>,
}

/// nginx's smooth weighted round robin, unrolled into one period of `sum(weights)` picks:
/// weights 1:3 give b,a,b,b — interleaved, never a,b,b,b bursts.
pub fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights reduced by their gcd and, if their sum is still above [`MAX_SEQUENCE`], scaled
/// down proportionally (each positive weight stays ≥ 1).
fn normalised(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = w.iter().sum();
    if sum <= MAX_SEQUENCE {
        return w;
    }
    w.iter().map(|x| ((*x as u128 * MAX_SEQUENCE as u128 / sum as u128) as u64).max(1)).collect()
}

/// FNV-1a 64: stable across processes and Rust versions, so every proxy of a fleet sends
/// a key to the same instance.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// murmur3's 64-bit finaliser: full avalanche.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Weighted rendezvous score: the instance with the highest `w / -ln(u)` wins, where `u`
/// is uniform in (0, 1) from hash(key, instance). P(win) is exactly proportional to `w`,
/// and removing an instance moves only the keys it had.
fn score(key_hash: u64, name_hash: u64, weight: u64) -> f64 {
    let h = mix(key_hash ^ mix(name_hash));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight as f64 / -u.ln()
}

impl Balancer {
    /// A balancer with fresh health.
    pub fn new(specs: Vec<InstanceSpec>, algorithm: Algorithm, passive: PassivePolicy) -> Balancer {
        Self::with_clock(specs, algorithm, passive, Arc::new(MonotonicClock::new()), None)
    }

    /// `previous`: the balancer of the route's last snapshot; instances keep their health
    /// and counters by name (an unrelated config change must not forgive an ejected
    /// instance or reset its counters).
    pub fn with_clock(
        specs: Vec<InstanceSpec>,
        algorithm: Algorithm,
        passive: PassivePolicy,
        clock: Arc<dyn Clock>,
        previous: Option<&Balancer>,
    ) -> Balancer {
        let health = specs
            .iter()
            .map(|s| previous.and_then(|p| p.specs.iter().position(|o| o.name == s.name).map(|i| p.health[i].clone())).unwrap_or_default())
            .collect();
        Self::with_health(specs, algorithm, passive, clock, health)
    }

    /// A balancer over the given health (one per spec, in order), e.g. from a
    /// [`crate::HealthRegistry`] that keeps it across config snapshots.
    pub fn with_health(
        specs: Vec<InstanceSpec>,
        algorithm: Algorithm,
        passive: PassivePolicy,
        clock: Arc<dyn Clock>,
        mut health: Vec<Arc<InstanceHealth>>,
    ) -> Balancer {
        health.resize_with(specs.len(), Default::default);
        let mut priorities: Vec<i32> = specs.iter().filter(|s| s.weight > 0).map(|s| s.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let groups = priorities
            .into_iter()
            .map(|p| {
                let members: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].priority == p && specs[i].weight > 0).collect();
                let weights: Vec<u64> = members.iter().map(|&i| specs[i].weight as u64).collect();
                let sequence = smooth_sequence(&normalised(&weights)).into_iter().map(|k| members[k as usize] as u32).collect();
                Group { members, sequence, cursor: AtomicUsize::new(0) }
            })
            .collect();
        let mut zero: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].weight == 0).collect();
        zero.sort_by_key(|&i| std::cmp::Reverse(specs[i].priority));
        let name_hash = specs.iter().map(|s| fnv1a(s.name.as_bytes())).collect();
        Balancer { specs, name_hash, algorithm, groups, zero, zero_cursor: AtomicUsize::new(0), health, passive, clock }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn spec(&self, i: usize) -> &InstanceSpec {
        &self.specs[i]
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Picks an instance for a request (`key`: the consistent-hashing key, ignored by round
    /// robin), excluding the instances already `tried` by this request. None: nothing left.
    ///
    /// Order: one instance is used directly (no health filter, as APISIX). Otherwise the
    /// highest priority group with an available candidate serves, where available means
    /// healthy and untried — or merely untried when every instance is unhealthy (APISIX's
    /// rule). Weight-0 instances come after every positive-weight candidate.
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        if self.specs.len() == 1 {
            return (!tried.contains(&0)).then_some(0);
        }
        let now = self.clock.now_ms();
        let any_healthy = self.health.iter().any(|h| h.is_available(now));
        let ok = |i: usize| !tried.contains(&i) && (!any_healthy || self.health[i].is_available(now));
        let key_hash = fnv1a(key);
        for g in &self.groups {
            if !g.members.iter().any(|&i| ok(i)) {
                continue;
            }
            return match self.algorithm {
                Algorithm::RoundRobin => {
                    let len = g.sequence.len();
                    let start = g.cursor.fetch_add(1, Relaxed);
                    // Skipping excluded entries keeps the remaining instances' interleaving.
                    (0..len).map(|off| g.sequence[(start + off) % len] as usize).find(|&i| ok(i))
                }
                Algorithm::ConsistentHash => self.rendezvous(key_hash, g.members.iter().copied().filter(|&i| ok(i))),
            };
        }
        let zero = self.zero.iter().copied().filter(|&i| ok(i));
        match self.algorithm {
            Algorithm::ConsistentHash => self.rendezvous(key_hash, zero),
            Algorithm::RoundRobin => {
                // Highest priority first; rotate among the weight-0 instances of that priority.
                let best = self.zero.iter().copied().filter(|&i| ok(i)).map(|i| self.specs[i].priority).max()?;
                let same: Vec<usize> = zero.filter(|&i| self.specs[i].priority == best).collect();
                Some(same[self.zero_cursor.fetch_add(1, Relaxed) % same.len()])
            }
        }
    }

    fn rendezvous(&self, key_hash: u64, candidates: impl Iterator<Item = usize>) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for i in candidates {
            let s = score(key_hash, self.name_hash[i], (self.specs[i].weight as u64).max(1));
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Reports the outcome of an attempt on instance `i`: counters and passive health.
    /// Returns true when this report ejected the instance.
    pub fn report(&self, i: usize, outcome: &Outcome) -> bool {
        let Some(h) = self.health.get(i) else { return false };
        let Some(signal) = outcome.health_signal() else { return false };
        h.attempt();
        match signal {
            HealthSignal::Success => {
                h.success();
                false
            }
            HealthSignal::Failure => h.failure(self.clock.now_ms(), &self.passive),
        }
    }

    /// Counts a fallback away from instance `i` (its attempt failed and was retried).
    pub fn note_fallback(&self, i: usize) {
        if let Some(h) = self.health.get(i) {
            h.fallback();
        }
    }

    /// Sets the active prober's verdict for instance `i`.
    pub fn set_active(&self, i: usize, state: ActiveState) {
        if let Some(h) = self.health.get(i) {
            h.set_active(state);
        }
    }

    /// Applies one probe result of instance `i` under `rules`; returns the new state when
    /// it changed (log it).
    pub fn record_probe(&self, i: usize, rules: &ProbeRules, result: ProbeResult) -> Option<ActiveState> {
        self.health.get(i)?.probe(rules, result)
    }

    /// Makes the caller instance `i`'s only active prober; returns its token (see
    /// [`Self::owns_prober`]).
    pub fn claim_prober(&self, i: usize) -> u64 {
        self.health.get(i).map_or(0, |h| h.claim_prober())
    }

    /// Whether the prober holding `token` still owns instance `i` (a newer config's prober
    /// took over otherwise).
    pub fn owns_prober(&self, i: usize, token: u64) -> bool {
        self.health.get(i).is_some_and(|h| h.owns_prober(token))
    }

    /// Seconds until instance `i` should be probed again.
    pub fn probe_interval_s(&self, i: usize, rules: &ProbeRules) -> u64 {
        self.health.get(i).map_or(rules.healthy_interval_s, |h| h.probe_interval_s(rules))
    }

    /// Health and counters of every instance, in configuration order.
    pub fn snapshot(&self) -> Vec<InstanceStatus> {
        let now = self.clock.now_ms();
        self.specs.iter().zip(&self.health).map(|(s, h)| h.status(&s.name, s.priority, s.weight, now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn specs(list: &[(&str, u32, i32)]) -> Vec<InstanceSpec> {
        list.iter().map(|(n, w, p)| InstanceSpec { name: (*n).into(), weight: *w, priority: *p }).collect()
    }

    fn balancer(list: &[(&str, u32, i32)], alg: Algorithm) -> (Balancer, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        (Balancer::with_clock(specs(list), alg, PassivePolicy::default(), clock.clone(), None), clock)
    }

    fn names(b: &Balancer, n: usize) -> String {
        (0..n).map(|_| b.spec(b.pick(b"", &[]).unwrap()).name.clone()).collect::<Vec<_>>().join(",")
    }

    #[test]
    fn smooth_sequences() {
        // (weights, expected one period)
        for (w, want) in [
            (vec![1, 3], vec![1, 0, 1, 1]),
            (vec![1, 1], vec![0, 1]),
            (vec![5, 1, 1], vec![0, 0, 1, 0, 2, 0, 0]),
            (vec![2, 3], vec![1, 0, 1, 0, 1]),
            (vec![4], vec![0, 0, 0, 0]),
        ] {
            assert_eq!(smooth_sequence(&w), want, "{w:?}");
        }
        assert_eq!(normalised(&[100, 300]), vec![1, 3]);
        assert_eq!(normalised(&[1, 1_000_000]), vec![1, 999]);
        assert_eq!(normalised(&[7, 0]), vec![1, 0]);
    }

    #[test]
    fn weighted_round_robin_interleaves_and_skips_weight_zero() {
        let (b, _) = balancer(&[("a", 1, 0), ("b", 3, 0)], Algorithm::RoundRobin);
        assert_eq!(names(&b, 8), "b,a,b,b,b,a,b,b");
        let (b, _) = balancer(&[("a", 1, 0), ("b", 3, 0), ("z", 0, 0)], Algorithm::RoundRobin);
        let picks = names(&b, 400);
        assert!(!picks.contains('z'), "weight 0 is never picked while others are left");
        assert_eq!(picks.matches('a').count(), 100);
        // Weight 0 serves once everything else was tried.
        assert_eq!(b.pick(b"", &[0, 1]), Some(2));
        assert_eq!(b.pick(b"", &[0, 1, 2]), None);
    }

    #[test]
    fn a_single_instance_is_used_directly() {
        let (b, clock) = balancer(&[("only", 0, 0)], Algorithm::RoundRobin);
        b.set_active(0, ActiveState::Unhealthy);
        assert_eq!(b.pick(b"", &[]), Some(0));
        for _ in 0..10 {
            b.report(0, &Outcome::Status(500));
        }
        clock.advance(1);
        assert_eq!(b.pick(b"", &[]), Some(0));
        assert_eq!(b.pick(b"", &[0]), None);
    }

    #[test]
    fn priorities() {
        // (instances, unhealthy, tried, expected pick)
        let list = [("p1-a", 1, 10), ("p1-b", 1, 10), ("p0", 1, 0), ("low", 5, -5)];
        for (unhealthy, tried, want) in [
            (vec![], vec![], vec!["p1-a", "p1-b"]),
            (vec![0], vec![], vec!["p1-b"]),
            (vec![], vec![1], vec!["p1-a"]),
            (vec![0], vec![1], vec!["p0"]),
            (vec![0, 1], vec![], vec!["p0"]),
            (vec![0, 1, 2], vec![], vec!["low"]),
            (vec![0, 1], vec![2], vec!["low"]),
            (vec![], vec![0, 1, 2, 3], vec![]),
            // Every instance unhealthy: all are candidates again, priorities still apply.
            (vec![0, 1, 2, 3], vec![], vec!["p1-a", "p1-b"]),
            (vec![0, 1, 2, 3], vec![0, 1], vec!["p0"]),
            // Some healthy but all of those tried: the unhealthy are not tried.
            (vec![0, 1, 2], vec![3], vec![]),
        ] {
            for alg in [Algorithm::RoundRobin, Algorithm::ConsistentHash] {
                let (b, _) = balancer(&list, alg);
                for &u in &unhealthy {
                    b.set_active(u, ActiveState::Unhealthy);
                }
                let got: std::collections::BTreeSet<&str> =
                    (0..20).filter_map(|k: u32| b.pick(&k.to_le_bytes(), &tried)).map(|i| list[i].0).collect();
                let want: std::collections::BTreeSet<&str> = want.iter().copied().collect();
                assert_eq!(got, want, "{alg:?} unhealthy {unhealthy:?} tried {tried:?}");
            }
        }
    }

    #[test]
    fn passive_ejection_steers_traffic_and_expires() {
        let (b, clock) = balancer(&[("a", 1, 0), ("b", 1, 0)], Algorithm::RoundRobin);
        for _ in 0..4 {
            assert!(!b.report(0, &Outcome::ConnectRefused));
        }
        assert!(b.report(0, &Outcome::Status(503)));
        assert_eq!(names(&b, 6), "b,b,b,b,b,b");
        clock.advance(1_000);
        assert!(names(&b, 6).contains('a'));
        // A 4xx other than 429 is the client's problem: it does not count against the instance.
        let (b, _) = balancer(&[("a", 1, 0), ("b", 1, 0)], Algorithm::RoundRobin);
        for _ in 0..10 {
            b.report(0, &Outcome::Status(400));
        }
        assert!(names(&b, 4).contains('a'));
        let s = &b.snapshot()[0];
        assert_eq!((s.attempts, s.successes, s.failures, s.healthy), (10, 10, 0, true));
    }

    #[test]
    fn consistent_hash_is_stable_when_an_instance_leaves() {
        let four = [("i0", 1, 0), ("i1", 1, 0), ("i2", 1, 0), ("i3", 1, 0)];
        let (b4, _) = balancer(&four, Algorithm::ConsistentHash);
        let (b3, _) = balancer(&[four[0], four[1], four[3]], Algorithm::ConsistentHash);
        let (mut kept, mut per) = (0, [0usize; 4]);
        for k in 0..10_000u32 {
            let key = format!("user-{k}");
            let before = four[b4.pick(key.as_bytes(), &[]).unwrap()].0;
            let after = [four[0], four[1], four[3]][b3.pick(key.as_bytes(), &[]).unwrap()].0;
            per[b4.pick(key.as_bytes(), &[]).unwrap()] += 1;
            if before == after {
                kept += 1;
            } else {
                assert_eq!(before, "i2", "{key} moved from {before}, which did not leave");
            }
            // Same for an instance that is merely unhealthy or tried: only its keys move.
            assert_eq!(b4.pick(key.as_bytes(), &[2]).map(|i| four[i].0), Some(after));
        }
        assert!(kept >= 7_000, "kept {kept}");
        assert!(per.iter().all(|&n| (2_200..2_800).contains(&n)), "{per:?}");
        // Same key, same instance, on every call and every balancer built from the config.
        let (again, _) = balancer(&four, Algorithm::ConsistentHash);
        for k in 0..100u32 {
            assert_eq!(b4.pick(&k.to_be_bytes(), &[]), again.pick(&k.to_be_bytes(), &[]));
        }
    }

    #[test]
    fn consistent_hash_respects_weights() {
        let (b, _) = balancer(&[("a", 1, 0), ("b", 3, 0)], Algorithm::ConsistentHash);
        let a = (0..20_000u32).filter(|k| b.pick(format!("k{k}").as_bytes(), &[]) == Some(0)).count();
        assert!((4_500..5_500).contains(&a), "weight 1 of 4 got {a} of 20000");
    }

    #[test]
    fn health_survives_a_config_change_by_name() {
        let clock = Arc::new(ManualClock::new(1_000));
        let old =
            Balancer::with_clock(specs(&[("a", 1, 0), ("b", 1, 0)]), Algorithm::RoundRobin, PassivePolicy::default(), clock.clone(), None);
        for _ in 0..5 {
            old.report(1, &Outcome::Status(500));
        }
        let new = Balancer::with_clock(
            specs(&[("b", 2, 0), ("c", 1, 0), ("a", 1, 0)]),
            Algorithm::RoundRobin,
            PassivePolicy::default(),
            clock,
            Some(&old),
        );
        let s = new.snapshot();
        assert_eq!((s[0].name.as_str(), s[0].healthy, s[0].failures), ("b", false, 5));
        assert_eq!((s[1].name.as_str(), s[1].attempts), ("c", 0));
        assert!((0..10).all(|_| new.pick(b"", &[]) != Some(0)));
    }

    #[test]
    fn probes_and_snapshot() {
        let (b, _) = balancer(&[("a", 1, 0), ("b", 1, 0)], Algorithm::RoundRobin);
        let rules = ProbeRules { tcp_failures: 1, ..ProbeRules::default() };
        assert_eq!(b.record_probe(0, &rules, ProbeResult::TcpFailure), Some(ActiveState::Unhealthy));
        assert_eq!(names(&b, 4), "b,b,b,b");
        assert_eq!(b.record_probe(0, &rules, ProbeResult::Status(200)), None);
        assert_eq!(b.record_probe(0, &rules, ProbeResult::Status(200)), Some(ActiveState::Healthy));
        assert!(names(&b, 4).contains('a'));
        b.note_fallback(1);
        let json = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(json[0]["active"], "healthy");
        assert_eq!(json[1]["fallbacks"], 1);
        assert_eq!(b.record_probe(9, &rules, ProbeResult::Timeout), None, "out of range is ignored");
    }
}
