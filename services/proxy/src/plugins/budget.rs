//! `ai-budget` (CONTRACT §14): a spend cap in USD per calendar day, ISO week, month (UTC) or
//! a number of seconds, on a route, a consumer or a consumer group — the counter engine of
//! `ai-rate-limiting` in another unit (nano-dollars), fleet-wide through Redis.
//!
//! - **access**: one read of the period's spend; admitted while it is below the budget,
//!   else `rejected_code` (429) in the client's protocol (OpenAI `insufficient_quota`,
//!   Anthropic `rate_limit_error`, Bedrock `ThrottlingException`) with `retry-after`.
//! - **response head**: `X-AI-Budget-Limit`, `X-AI-Budget-Remaining` (USD, before this
//!   request) and `X-AI-Budget-Reset` (seconds to the period's end).
//! - **completion**: the request's cost (computed once from the price catalog) and its
//!   tokens are charged. A request of an unpriced model is not charged (its cost is
//!   unknown, never taken as 0) and is counted as unpriced.
//!
//! Keys: `aigw:budget:{route:ID|consumer:NAME}:{day|week|month|Ns}:{period}` (spend) and
//! `…:tokens`; aigw-config's `GET /aigw/admin/usage` reads the same keys.

use std::sync::Arc;

use aigw_limits::{Period, Store, Window};
use aigw_llm::envelope::Class;
use aigw_model::budget::{AiBudget, BudgetPeriod};
use aigw_model::ratelimit::Policy;
use aigw_model::route::from_value_at;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::phases::{Access, CompleteCx, HeadCx, Plugin, PluginEnv, PluginError, Scope, SlotBox, Step};

pub const NAME: &str = "ai-budget";

/// Nano-dollars per dollar: spend is counted in whole nano-dollars.
pub const NANOS: f64 = 1e9;

#[derive(Debug)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    budget_nanos: u64,
    budget: f64,
    period: Period,
    rejected: StatusCode,
    message: String,
    store: Store,
    per_consumer: bool,
    route_scope: String,
}

pub fn period_of(p: BudgetPeriod) -> Period {
    match p {
        BudgetPeriod::Day => Period::Day,
        BudgetPeriod::Week => Period::Week,
        BudgetPeriod::Month => Period::Month,
        BudgetPeriod::Seconds(s) => Period::Seconds(s),
    }
}

pub fn factory(conf: &Value, env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
    let c: AiBudget = from_value_at("plugins.ai-budget", conf).map_err(|e| PluginError::new(NAME, e.message))?;
    let mut r = c.redis();
    if c.policy.is_none() {
        // Fleet-wide by default when the node has a Redis (a per-node budget would be the
        // budget times the nodes).
        r.policy = if env.resources.get::<aigw_limits::Counters>().has_default_redis() { Policy::Redis } else { Policy::Local };
    }
    let store = super::store(NAME, &r, env)?;
    let (per_consumer, route_scope) = match env.scope {
        Scope::Route(id) => (false, format!("route:{id}")),
        Scope::Consumer(_) | Scope::Group(_) => (true, String::new()),
    };
    let rejected = StatusCode::from_u16(c.rejected_code).map_err(|_| PluginError::new(NAME, "rejected_code: not a status"))?;
    Ok(Arc::new(Budget(Arc::new(Inner {
        budget_nanos: (c.budget * NANOS).round() as u64,
        budget: c.budget,
        period: period_of(c.period),
        rejected,
        message: c.rejected_msg.unwrap_or_else(|| "budget exceeded: the spend of this period has reached its budget".into()),
        store,
        per_consumer,
        route_scope,
    }))))
}

/// What access found.
#[derive(Debug)]
struct Seen {
    key: String,
    spent: u64,
    window: Window,
}

fn usd(nanos: u64) -> String {
    format!("{:.6}", nanos as f64 / NANOS)
}

impl Inner {
    fn headers(&self, spent: u64, w: &Window) -> [(HeaderName, HeaderValue); 3] {
        let h =
            |n: &'static str, v: String| (HeaderName::from_static(n), HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("0")));
        [
            h("x-ai-budget-limit", format!("{:.6}", self.budget)),
            h("x-ai-budget-remaining", usd(self.budget_nanos.saturating_sub(spent))),
            h("x-ai-budget-reset", w.reset_secs().to_string()),
        ]
    }
}

impl Plugin for Budget {
    fn name(&self) -> &str {
        NAME
    }

    /// Right after ai-rate-limiting (1030): both read their counters in the same round trip.
    fn priority(&self) -> i32 {
        1029
    }

    fn access(&self, cx: &mut Access<'_>) -> Step {
        let me = self.0.clone();
        let scope = if me.per_consumer {
            match &cx.rec.consumer {
                Some(c) => format!("consumer:{}", c.name),
                None => return Step::Next,
            }
        } else {
            me.route_scope.clone()
        };
        let window = me.period.at(me.store.now_ms());
        let key = aigw_limits::period::budget_key(&scope, me.period, &window);
        Step::Wait(Box::pin(async move {
            let reading = me.store.read(std::slice::from_ref(&key)).await;
            let Some(spent) = reading.counts().map(|c| c.first().copied().unwrap_or(0)) else {
                return Err(GatewayError::refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Class::Quota,
                    "budget_unavailable",
                    "budgets cannot be checked: the counter store (Redis) is unavailable",
                ));
            };
            if spent >= me.budget_nanos {
                let mut e = GatewayError::refused(me.rejected, Class::Quota, "budget_exceeded", me.message.clone())
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from(window.reset_secs()));
                e.headers.extend(me.headers(spent, &window));
                return Err(e);
            }
            Ok(Some(Box::new(Seen { key, spent, window }) as SlotBox))
        }))
    }

    fn response_head(&self, cx: &mut HeadCx<'_>) {
        let Some(seen) = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Seen>()) else { return };
        for (k, v) in self.0.headers(seen.spent, &seen.window) {
            cx.headers.insert(k, v);
        }
    }

    fn complete(&self, cx: &mut CompleteCx<'_>) {
        let me = &self.0;
        let Some(seen) = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Seen>()) else { return };
        let tokens = cx.rec.usage.total.max(cx.rec.usage.prompt + cx.rec.usage.completion);
        me.store.charge(format!("{}:tokens", seen.key), tokens, &seen.window);
        let Some(cost) = cx.rec.cost else { return };
        let nanos = (cost * NANOS).ceil().max(0.0) as u64;
        me.store.charge(seen.key.clone(), nanos, &seen.window);
        let left = me.budget_nanos.saturating_sub(seen.spent.saturating_add(nanos)) as f64 / NANOS;
        cx.rec.budget_remaining = Some(cx.rec.budget_remaining.map_or(left, |o| o.min(left)));
    }
}
