//! Upstream HTTP clients. One client (with its own connection pool) per distinct
//! (origin, TLS verification, keepalive settings, connect timeout), shared across routes
//! and kept across snapshot swaps while any route still uses it, so pooled connections
//! survive config changes.
//!
//! `keepalive_pool` is a real cap: a semaphore with that many permits bounds the
//! requests in flight to the origin, and a permit is held until the response body ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Semaphore;

pub type HttpClient = aigw_net::client::HttpsClient<Full<Bytes>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub origin: String,
    pub ssl_verify: bool,
    pub keepalive: bool,
    pub keepalive_timeout_ms: u64,
    pub keepalive_pool: u64,
    pub connect_timeout_ms: u64,
}

pub struct Upstream {
    pub key: ClientKey,
    pub client: HttpClient,
    pub permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("key", &self.key).finish()
    }
}

/// Hands out shared [`Upstream`]s by key.
#[derive(Default)]
pub struct Upstreams {
    cache: Mutex<HashMap<ClientKey, Weak<Upstream>>>,
    /// Health and counters of `ai-proxy-multi` instances by (route id, instance name):
    /// like the clients, they outlive a snapshot, so a config change neither forgives an
    /// ejected instance nor resets its counters (read when a route is compiled).
    pub health: aigw_balance::HealthRegistry,
}

impl Upstreams {
    pub fn get(&self, key: &ClientKey) -> Arc<Upstream> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = cache.get(key).and_then(Weak::upgrade) {
            return u;
        }
        cache.retain(|_, w| w.strong_count() > 0);
        let u = Arc::new(build(key));
        cache.insert(key.clone(), Arc::downgrade(&u));
        u
    }
}

fn build(key: &ClientKey) -> Upstream {
    use aigw_net::client::{Alpn, Options, Roots};
    let mut opts = Options::default()
        .roots(if key.ssl_verify { Roots::Webpki } else { Roots::AnyChain })
        .alpn(Alpn::Http1AndH2)
        .connect_timeout(Duration::from_millis(key.connect_timeout_ms));
    opts = if key.keepalive {
        opts.idle_timeout(Duration::from_millis(key.keepalive_timeout_ms)).max_idle_per_host(key.keepalive_pool as usize)
    } else {
        opts.max_idle_per_host(0)
    };
    // Only a TLS library that cannot do TLS 1.2/1.3 with ring fails here.
    let client = aigw_net::client::https(&opts).expect("ring supports the default TLS versions");
    Upstream { key: key.clone(), client, permits: Arc::new(Semaphore::new(key.keepalive_pool.min(Semaphore::MAX_PERMITS as u64) as usize)) }
}
