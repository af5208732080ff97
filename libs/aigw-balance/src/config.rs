//! Building the picker, the retry policy and the probe rules from a validated
//! `ai-proxy-multi` config (`aigw_model::multi`).

use std::sync::Arc;

use aigw_model::multi::{ActiveCheck, AiProxyMultiConfig};

use crate::clock::{Clock, MonotonicClock};
use crate::health::{PassivePolicy, ProbeRules};
use crate::pick::{Algorithm, Balancer, InstanceSpec};
use crate::registry::HealthRegistry;
use crate::retry::FallbackPolicy;

pub fn specs(c: &AiProxyMultiConfig) -> Vec<InstanceSpec> {
    c.instances.iter().map(|i| InstanceSpec { name: i.name.clone(), weight: i.weight, priority: i.priority }).collect()
}

/// `chash` → consistent hashing; everything else (roundrobin; semantic is rejected by
/// validation) → round robin.
pub fn algorithm(c: &AiProxyMultiConfig) -> Algorithm {
    match c.balancer.algorithm {
        aigw_model::multi::Algorithm::Chash => Algorithm::ConsistentHash,
        _ => Algorithm::RoundRobin,
    }
}

pub fn fallback_policy(c: &AiProxyMultiConfig) -> FallbackPolicy {
    let s = c.fallback_strategy.as_ref();
    FallbackPolicy {
        on_429: s.is_some_and(|s| s.on_429()),
        on_5xx: s.is_some_and(|s| s.on_5xx()),
        on_rate_limit: s.is_some_and(|s| s.rate_limiting()),
        statuses: c.fallback_statuses(),
        max_retries: c.max_retries,
        retry_within_ms: c.retry_on_failure_within_ms,
    }
}

fn statuses(list: &[i64]) -> Vec<u16> {
    list.iter().filter_map(|s| u16::try_from(*s).ok()).collect()
}

pub fn probe_rules(a: &ActiveCheck) -> ProbeRules {
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    ProbeRules {
        healthy_statuses: statuses(&a.healthy.http_statuses),
        successes: n(a.healthy.successes),
        healthy_interval_s: a.healthy.interval,
        unhealthy_statuses: statuses(&a.unhealthy.http_statuses),
        http_failures: n(a.unhealthy.http_failures),
        tcp_failures: n(a.unhealthy.tcp_failures),
        timeouts: n(a.unhealthy.timeouts),
        unhealthy_interval_s: a.unhealthy.interval,
    }
}

/// The route's balancer, keeping the health of same-named instances of `previous`.
pub fn balancer(c: &AiProxyMultiConfig, previous: Option<&Balancer>) -> Balancer {
    balancer_with_clock(c, previous, Arc::new(MonotonicClock::new()))
}

pub fn balancer_with_clock(c: &AiProxyMultiConfig, previous: Option<&Balancer>, clock: Arc<dyn Clock>) -> Balancer {
    Balancer::with_clock(specs(c), algorithm(c), PassivePolicy::default(), clock, previous)
}

/// The balancer of route `route_id`, its instances' health taken from `registry` (kept
/// across snapshots by route id and instance name).
pub fn balancer_in(c: &AiProxyMultiConfig, route_id: &str, registry: &HealthRegistry) -> Balancer {
    let specs = specs(c);
    let health = specs.iter().map(|s| registry.get(route_id, &s.name)).collect();
    Balancer::with_health(specs, algorithm(c), PassivePolicy::default(), Arc::new(MonotonicClock::new()), health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_model::multi::validate_ai_proxy_multi;
    use serde_json::json;

    #[test]
    fn from_a_validated_config() {
        let c = validate_ai_proxy_multi(
            "p",
            &json!({
                "instances": [
                    {"name": "a", "provider": "openai", "weight": 1, "auth": {}, "checks": {"active": {"healthy": {"successes": 3}, "unhealthy": {"http_statuses": [500]}}}},
                    {"name": "b", "provider": "anthropic", "weight": 3, "priority": 2, "auth": {}}
                ],
                "balancer": {"algorithm": "chash", "hash_on": "header", "key": "x-user"},
                "fallback_strategy": ["http_5xx"], "fallback_http_statuses": [401], "max_retries": 1, "retry_on_failure_within_ms": 200
            }),
        )
        .unwrap();
        assert_eq!(
            specs(&c),
            vec![InstanceSpec { name: "a".into(), weight: 1, priority: 0 }, InstanceSpec { name: "b".into(), weight: 3, priority: 2 }]
        );
        assert_eq!(algorithm(&c), Algorithm::ConsistentHash);
        assert_eq!(
            fallback_policy(&c),
            FallbackPolicy {
                on_429: false,
                on_5xx: true,
                on_rate_limit: false,
                statuses: vec![401],
                max_retries: Some(1),
                retry_within_ms: Some(200)
            }
        );
        let r = probe_rules(&c.instances[0].checks.as_ref().unwrap().active);
        assert_eq!((r.successes, r.unhealthy_statuses.as_slice(), r.healthy_statuses.as_slice()), (3, &[500u16][..], &[200u16, 302][..]));
        let b = balancer(&c, None);
        assert_eq!(b.pick(b"user-1", &[]), Some(1), "priority 2 serves first");
        let rr =
            validate_ai_proxy_multi("p", &json!({"instances": [{"name": "a", "provider": "openai", "weight": 1, "auth": {}}]})).unwrap();
        assert_eq!((algorithm(&rr), fallback_policy(&rr)), (Algorithm::RoundRobin, FallbackPolicy::default()));
    }
}
