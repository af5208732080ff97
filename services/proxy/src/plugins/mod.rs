//! aigw's route plugins, each in its own file, on the phases of [`crate::phases`]
//! (besides `ai-proxy` / `ai-proxy-multi`, which are the upstream stage itself).

pub mod budget;
pub mod consumer_restriction;
pub mod http_logger;
pub mod key_auth;
pub mod rate_limit;

use aigw_model::ratelimit::{Policy, RedisSettings};

use crate::phases::{PluginEnv, PluginError, Registry};

/// Every plugin a node compiles unless told otherwise: one line each.
pub fn builtin() -> Registry {
    let mut r = Registry::empty();
    r.register(key_auth::NAME, key_auth::factory);
    r.register(consumer_restriction::NAME, consumer_restriction::factory);
    r.register(rate_limit::NAME, rate_limit::factory);
    r.register(budget::NAME, budget::factory);
    r.register("http-logger", http_logger::factory);
    r
}

/// The counter store of a plugin's `policy` / `redis_*` fields (`ai-rate-limiting`,
/// `ai-budget`): the node's `--redis` unless `redis_host` names another.
pub(crate) fn store(plugin: &str, r: &RedisSettings, env: &PluginEnv<'_>) -> Result<aigw_limits::Store, PluginError> {
    if r.redis_ssl {
        return Err(PluginError::new(plugin, "redis_ssl: TLS to Redis is not supported yet"));
    }
    let enc = aigw_providers::target::encode_component;
    let url = r.redis_host.as_ref().map(|h| {
        let auth = match (&r.redis_username, &r.redis_password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (None, Some(p)) => format!(":{}@", enc(p)),
            _ => String::new(),
        };
        format!("redis://{auth}{h}:{}/{}", r.redis_port, r.redis_database)
    });
    let spec = aigw_limits::StoreSpec {
        redis: r.policy == Policy::Redis,
        allow_degradation: r.allow_degradation,
        url,
        timeout: std::time::Duration::from_millis(r.redis_timeout),
    };
    env.resources.get::<aigw_limits::Counters>().store(&spec).map_err(|e| PluginError::new(plugin, e.to_string()))
}
