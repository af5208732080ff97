//! Instance health that outlives a config snapshot. A proxy compiles a new balancer for a
//! route on every snapshot; its instances take their health and counters from here, by
//! route id and instance name, so an unrelated config change neither forgives an ejected
//! instance nor resets its counters. Used when a snapshot is compiled, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::health::InstanceHealth;

/// Health by (route id, instance name), held weakly: an instance's health lives as long as
/// a balancer of some snapshot uses it.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    map: Mutex<HashMap<(String, String), Weak<InstanceHealth>>>,
}

impl HealthRegistry {
    /// The live health of `route`'s instance `name`, or a fresh one.
    pub fn get(&self, route: &str, name: &str) -> Arc<InstanceHealth> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = (route.to_owned(), name.to_owned());
        if let Some(h) = map.get(&key).and_then(Weak::upgrade) {
            return h;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(InstanceHealth::default());
        map.insert(key, Arc::downgrade(&h));
        h
    }

    /// Instances with live health (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Outcome;
    use crate::{Algorithm, Balancer, InstanceSpec, MonotonicClock, PassivePolicy};

    fn balancer(reg: &HealthRegistry, route: &str, names: &[&str]) -> Balancer {
        let specs: Vec<InstanceSpec> = names.iter().map(|n| InstanceSpec { name: (*n).into(), weight: 1, priority: 0 }).collect();
        let health = specs.iter().map(|s| reg.get(route, &s.name)).collect();
        Balancer::with_health(specs, Algorithm::RoundRobin, PassivePolicy::default(), Arc::new(MonotonicClock::new()), health)
    }

    #[test]
    fn health_is_kept_by_route_and_name_while_used() {
        let reg = HealthRegistry::default();
        let old = balancer(&reg, "r1", &["a", "b"]);
        for _ in 0..5 {
            old.report(1, &Outcome::Status(503));
        }
        // Same route, same name: the same health (b stays ejected, counters kept).
        let new = balancer(&reg, "r1", &["b", "c"]);
        let s = new.snapshot();
        assert_eq!((s[0].name.as_str(), s[0].healthy, s[0].failures), ("b", false, 5));
        assert_eq!(s[1].attempts, 0);
        // Another route's instance of the same name is another instance.
        let other = balancer(&reg, "r2", &["b"]);
        assert_eq!(other.snapshot()[0].failures, 0);
        assert_eq!(reg.len(), 4, "r1: a, b, c; r2: b");
        // Nothing uses it any more: forgotten.
        drop((old, new, other));
        assert!(reg.is_empty());
        assert_eq!(balancer(&reg, "r1", &["b"]).snapshot()[0].failures, 0);
    }

    #[test]
    fn one_prober_owns_an_instance() {
        let reg = HealthRegistry::default();
        let old = balancer(&reg, "r", &["a"]);
        let t1 = old.claim_prober(0);
        assert!(old.owns_prober(0, t1));
        let new = balancer(&reg, "r", &["a"]);
        let t2 = new.claim_prober(0);
        assert!(!old.owns_prober(0, t1) && new.owns_prober(0, t2));
        assert!(!new.owns_prober(5, t2), "out of range");
    }
}
