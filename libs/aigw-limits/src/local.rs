//! Per-process counters (`policy: local`, and what a node counts while Redis is down with
//! `allow_degradation`): a key's count and its expiry, in 16 shards so concurrent requests
//! rarely share a lock. Expired keys are dropped as their shard is written.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<String, (u64, u64)>,
    /// Writes since the last sweep of expired keys.
    writes: u32,
}

/// Counters with a time to live, in this process.
#[derive(Debug)]
pub struct Local {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Local {
    fn default() -> Self {
        Local { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: Default::default() }
    }
}

impl Local {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[self.hasher.hash_one(key) as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The count of `key` at `now_ms` (0 once expired).
    pub fn get(&self, key: &str, now_ms: u64) -> u64 {
        match self.shard(key).map.get(key) {
            Some((expires, n)) if *expires > now_ms => *n,
            _ => 0,
        }
    }

    /// Adds `n` to `key`, which expires `ttl_ms` after its first count; returns the count.
    pub fn add(&self, key: &str, n: u64, ttl_ms: u64, now_ms: u64) -> u64 {
        let mut s = self.shard(key);
        s.writes += 1;
        if s.writes >= 256 {
            s.writes = 0;
            s.map.retain(|_, (expires, _)| *expires > now_ms);
        }
        let e = s.map.entry(key.to_owned()).or_insert((now_ms + ttl_ms, 0));
        if e.0 <= now_ms {
            *e = (now_ms + ttl_ms, 0);
        }
        e.1 = e.1.saturating_add(n);
        e.1
    }

    /// Keys held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire() {
        let l = Local::default();
        assert_eq!(l.get("a", 0), 0);
        assert_eq!(l.add("a", 5, 1000, 0), 5);
        assert_eq!(l.add("a", 2, 1000, 500), 7, "the ttl runs from the first count");
        assert_eq!(l.get("a", 999), 7);
        assert_eq!(l.get("a", 1000), 0);
        assert_eq!(l.add("a", 1, 1000, 1500), 1, "a new life after expiry");
        for i in 0..10_000u64 {
            l.add(&format!("k{i}"), 1, 10, i);
        }
        assert!(l.len() < 9000, "expired keys are swept: {}", l.len());
    }
}
