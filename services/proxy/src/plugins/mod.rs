//! aigw's route plugins, each in its own file, on the phases of [`crate::phases`]
//! (besides `ai-proxy` / `ai-proxy-multi`, which are the upstream stage itself).

pub mod consumer_restriction;
pub mod http_logger;
pub mod key_auth;
pub mod rate_limit;

use crate::phases::Registry;

/// Every plugin a node compiles unless told otherwise: one line each.
pub fn builtin() -> Registry {
    let mut r = Registry::empty();
    r.register(key_auth::NAME, key_auth::factory);
    r.register(consumer_restriction::NAME, consumer_restriction::factory);
    r.register(rate_limit::NAME, rate_limit::factory);
    r.register("http-logger", http_logger::factory);
    r
}
