//! `ai-budget` (CONTRACT §14): a spend cap in USD per period, on a route, a consumer or a
//! consumer group, counted fleet-wide through Redis like `ai-rate-limiting` (the same
//! `policy` / `redis_*` fields).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::ratelimit::{Policy, RedisSettings};
use crate::route::{ValidationError, from_value_at};

/// `day`, `week` (ISO, Monday first), `month` (calendar, UTC), or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
    Seconds(u64),
}

impl<'de> Deserialize<'de> for BudgetPeriod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) => match s.as_str() {
                "day" => Ok(BudgetPeriod::Day),
                "week" => Ok(BudgetPeriod::Week),
                "month" => Ok(BudgetPeriod::Month),
                other => Err(D::Error::custom(format!("{other:?} is not day, week, month or a number of seconds"))),
            },
            Value::Number(n) => n
                .as_u64()
                .filter(|s| *s > 0)
                .map(BudgetPeriod::Seconds)
                .ok_or_else(|| D::Error::custom("a period in seconds must be a whole number > 0")),
            _ => Err(D::Error::custom("must be day, week, month or a number of seconds")),
        }
    }
}

fn d_rejected_code() -> u16 {
    429
}
fn d_port() -> u16 {
    6379
}
fn d_timeout() -> u64 {
    1000
}
fn d_keepalive_timeout() -> u64 {
    10_000
}
fn d_keepalive_pool() -> u64 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AiBudget {
    /// USD per period.
    pub budget: f64,
    pub period: BudgetPeriod,
    #[serde(default = "d_rejected_code")]
    pub rejected_code: u16,
    #[serde(default)]
    pub rejected_msg: Option<String>,
    /// None: `redis` when the proxy has `--redis`, else `local` (a budget that is per node
    /// in a fleet would be the budget times the nodes).
    #[serde(default)]
    pub policy: Option<Policy>,
    #[serde(default)]
    pub allow_degradation: bool,
    #[serde(default)]
    pub redis_host: Option<String>,
    #[serde(default = "d_port")]
    pub redis_port: u16,
    #[serde(default)]
    pub redis_username: Option<String>,
    #[serde(default)]
    pub redis_password: Option<String>,
    #[serde(default)]
    pub redis_database: u32,
    #[serde(default = "d_timeout")]
    pub redis_timeout: u64,
    #[serde(default)]
    pub redis_ssl: bool,
    #[serde(default)]
    pub redis_ssl_verify: bool,
    #[serde(default = "d_keepalive_timeout")]
    pub redis_keepalive_timeout: u64,
    #[serde(default = "d_keepalive_pool")]
    pub redis_keepalive_pool: u64,
}

impl AiBudget {
    /// The Redis settings (`policy` as given, `local` when absent).
    pub fn redis(&self) -> RedisSettings {
        RedisSettings {
            policy: self.policy.unwrap_or_default(),
            allow_degradation: self.allow_degradation,
            redis_host: self.redis_host.clone(),
            redis_port: self.redis_port,
            redis_username: self.redis_username.clone(),
            redis_password: self.redis_password.clone(),
            redis_database: self.redis_database,
            redis_timeout: self.redis_timeout,
            redis_ssl: self.redis_ssl,
            redis_ssl_verify: self.redis_ssl_verify,
            redis_keepalive_timeout: self.redis_keepalive_timeout,
            redis_keepalive_pool: self.redis_keepalive_pool,
        }
    }
}

pub(crate) fn validate(path: &str, conf: &Value) -> Result<(), ValidationError> {
    let c: AiBudget = from_value_at(path, conf)?;
    if !(c.budget.is_finite() && c.budget > 0.0) {
        return Err(ValidationError::new(format!("{path}.budget"), "must be a number of USD > 0"));
    }
    if !(200..=599).contains(&c.rejected_code) {
        return Err(ValidationError::new(format!("{path}.rejected_code"), "must be between 200 and 599"));
    }
    if c.rejected_msg.as_ref().is_some_and(String::is_empty) {
        return Err(ValidationError::new(format!("{path}.rejected_msg"), "must not be empty"));
    }
    crate::ratelimit::validate_redis(path, &c.redis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema() {
        for ok in [json!({"budget": 25.0, "period": "day"}), json!({"budget": 0.01, "period": 3600, "policy": "redis"})] {
            assert!(validate("p", &ok).is_ok(), "{ok}");
        }
        for (bad, want) in [
            (json!({"budget": 0, "period": "day"}), "p.budget"),
            (json!({"budget": 1, "period": "year"}), "p.period"),
            (json!({"budget": 1, "period": 0}), "p.period"),
            (json!({"budget": 1}), "period"),
            (json!({"budget": 1, "period": "day", "limit": 3}), "unknown field"),
            (json!({"budget": 1, "period": "day", "policy": "redis-cluster"}), "not supported yet"),
        ] {
            let e = validate("p", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
