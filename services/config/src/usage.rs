//! `GET /aigw/admin/usage[?consumer=NAME]` (CONTRACT §14): each consumer's `ai-budget`
//! (its own, else its group's — the merge proxies do), the current period's spend and
//! tokens read from the Redis the proxies count in (`aigw-config --redis URL`), and what
//! is left. The counters are the proxies' (`aigw_limits::period::budget_key`): one
//! MGET per request, whatever the number of consumers asked for.
//!
//! Spend is counted only where an `ai-budget` applies, so a consumer without one shows
//! `"budget": null` and no spend (the `aigw.gen_ai.cost` metric has every request's
//! cost by consumer). A budget whose `redis_host` names another Redis than `--redis` is
//! reported with `"counted_in": "another redis"` rather than read.

use std::sync::Arc;
use std::time::Duration;

use aigw_limits::{Period, Reading, Store, StoreSpec, Window};
use aigw_model::budget::{AiBudget, BudgetPeriod};
use aigw_model::ratelimit::Policy;
use aigw_model::route::from_value_at;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::kinds::{CONSUMERS, GROUPS};
use crate::service::ResourceService;

/// Nano-dollars per dollar (the proxies' unit).
const NANOS: f64 = 1e9;

/// The usage read-back's Redis (None: `--redis` not given).
pub struct Usage {
    store: Option<Store>,
    /// Kept so the Redis client lives as long as the store.
    _counters: aigw_limits::Counters,
}

impl Usage {
    /// Needs a tokio runtime (the Redis client connects on first use).
    pub fn new(redis: Option<String>) -> Result<Usage, aigw_limits::ConfigError> {
        let counters = aigw_limits::Counters::new(redis.clone(), aigw_limits::system_clock());
        let store = match redis {
            Some(_) => {
                let spec = StoreSpec { redis: true, allow_degradation: false, url: None, timeout: Duration::from_secs(1) };
                Some(counters.store(&spec)?)
            }
            None => None,
        };
        Ok(Usage { store, _counters: counters })
    }
}

fn period_of(p: BudgetPeriod) -> Period {
    match p {
        BudgetPeriod::Day => Period::Day,
        BudgetPeriod::Week => Period::Week,
        BudgetPeriod::Month => Period::Month,
        BudgetPeriod::Seconds(s) => Period::Seconds(s),
    }
}

fn usd(nanos: u64) -> f64 {
    (nanos as f64 / NANOS * 1e6).round() / 1e6
}

/// The budget that applies to a consumer's requests, and where it comes from.
fn budget_of(svc: &ResourceService, consumer: &Value) -> Option<(AiBudget, &'static str)> {
    let own = consumer.pointer("/plugins/ai-budget").map(|b| (b.clone(), "consumer"));
    let from_group = || {
        let g = consumer.get("group_id").and_then(Value::as_str)?;
        let group = svc.stored(&GROUPS, g)?;
        group.pointer("/plugins/ai-budget").map(|b| (b.clone(), "consumer_group"))
    };
    let (conf, source) = own.or_else(from_group)?;
    from_value_at::<AiBudget>("plugins.ai-budget", &conf).ok().map(|b| (b, source))
}

struct Row {
    out: Value,
    /// Index of its spend key in the read, if read.
    read_at: Option<usize>,
    budget: f64,
}

pub async fn report(svc: &ResourceService, usage: &Usage, consumer: Option<&str>) -> Result<Value, ApiError> {
    let consumers: Vec<(String, Arc<Value>)> = match consumer {
        Some(name) => {
            let v = svc.stored(&CONSUMERS, name).ok_or_else(|| ApiError::not_found("consumer", name))?;
            vec![(name.to_owned(), v)]
        }
        None => svc.stored_all(&CONSUMERS),
    };
    let now_ms = aigw_limits::system_clock()();
    let mut keys = Vec::new();
    let mut rows = Vec::with_capacity(consumers.len());
    for (name, v) in &consumers {
        let group = v.get("group_id").cloned().unwrap_or(Value::Null);
        let Some((b, source)) = budget_of(svc, v) else {
            rows.push(Row { out: json!({"consumer": name, "group": group, "budget": null}), read_at: None, budget: 0.0 });
            continue;
        };
        let period = period_of(b.period);
        let w: Window = period.at(now_ms);
        let mut out = json!({"consumer": name, "group": group, "budget": b.budget, "budget_from": source,
            "period": period.tag(), "reset": w.reset_secs()});
        let elsewhere = b.redis_host.is_some() || b.policy == Some(Policy::Local);
        let read_at = if elsewhere {
            out["counted_in"] = json!(if b.policy == Some(Policy::Local) { "each proxy (policy local)" } else { "another redis" });
            None
        } else {
            let key = aigw_limits::period::budget_key(&format!("consumer:{name}"), period, &w);
            keys.push(format!("{key}:tokens"));
            keys.push(key);
            Some(keys.len() - 1)
        };
        rows.push(Row { out, read_at, budget: b.budget });
    }
    let counts = if keys.is_empty() {
        Vec::new()
    } else {
        let store = usage.store.as_ref().ok_or_else(|| {
            ApiError::unavailable("the usage read-back needs the Redis the proxies count in: start aigw-config with --redis URL")
        })?;
        match store.read(&keys).await {
            Reading::Counts(c) => c,
            _ => return Err(ApiError::unavailable("redis unavailable: cannot read the spend counters")),
        }
    };
    let list: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            if let Some(i) = r.read_at {
                let (spend, tokens) = (counts.get(i).copied().unwrap_or(0), counts.get(i - 1).copied().unwrap_or(0));
                let spent = usd(spend);
                r.out["spend"] = json!(spent);
                r.out["tokens"] = json!(tokens);
                r.out["remaining"] = json!(((r.budget - spent).max(0.0) * 1e6).round() / 1e6);
            }
            r.out
        })
        .collect();
    Ok(json!({"total": list.len(), "list": list}))
}
