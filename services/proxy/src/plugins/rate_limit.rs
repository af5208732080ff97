//! `ai-rate-limiting` (CONTRACT §13): token limits on a route, its `ai-proxy-multi`
//! instances, a consumer, a consumer group, or per value of a request variable (`rules`),
//! counted in fixed windows by the engine of `aigw_limits` (fleet-wide in Redis, or per
//! process).
//!
//! - **access**: one read of every counter the request may touch (its limit, each
//!   instance's, each rule's); a spent limit refuses with `rejected_code`, `retry-after`
//!   and, with `show_limit_quota_header`, the quota headers. Redis down: 503, or admitted on
//!   this node's counts with `allow_degradation`.
//! - **before each attempt**: an `ai-proxy-multi` instance whose `instances[].limit` is
//!   spent is refused, so `fallback_strategy: rate_limiting` moves on to another.
//! - **response head**: `X-AI-RateLimit-{Limit,Remaining,Reset}-{name}` (`name` the
//!   instance, or `ai-proxy-{provider}`), `X-AI-{prefix}-RateLimit-*` for rules — the state
//!   before this request is charged, as APISIX.
//! - **completion**: the usage is charged (queued, off the request's path), streams and
//!   client disconnects included: what the upstream reported, or, when it reported
//!   nothing before the stream was cut, an estimate (request bytes / 4 in, one token per
//!   streamed event out).
//!
//! A request is admitted while its counter is below the limit, so the request that
//! crosses it completes (as in every peer); `docs/limits.md` measures how far over a fleet
//! can go.

use std::sync::Arc;

use aigw_limits::{Reading, Store, Window};
use aigw_llm::envelope::Class;
use aigw_model::ratelimit::{AiRateLimiting, Expr, Strategy};
use aigw_model::route::from_value_at;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::metrics::Metrics;
use crate::phases::{Access, AttemptCx, CompleteCx, HeadCx, Plugin, PluginEnv, PluginError, Scope, Step};
use crate::record::Record;

pub const NAME: &str = "ai-rate-limiting";

/// One limit of the plugin.
#[derive(Debug, Clone)]
struct Limit {
    limit: u64,
    secs: u64,
    what: LimitKind,
}

#[derive(Debug, Clone)]
enum LimitKind {
    /// `limit`/`time_window`: the route's (or consumer's) tokens, whatever the instance.
    Plain,
    /// `instances[]`: tokens sent to one `ai-proxy-multi` instance.
    Instance(String),
    /// `rules[i]`: tokens per value of `key`.
    Rule { index: usize, key: Template, header: String },
}

/// Text with `$variables` (`$consumer_name`, `$http_x_team`, `${arg_user}`, …).
#[derive(Debug, Clone)]
struct Template(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var(String),
}

impl Template {
    fn parse(s: &str) -> Template {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = match after.strip_prefix('{').and_then(|b| b.find('}').map(|e| (&b[..e], &b[e + 1..]))) {
                Some(x) => x,
                None => {
                    let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                lit.push('$');
            } else {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(name.to_owned()));
            }
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Template(parts)
    }

    /// The key's value for a request; None when a variable has no value (the rule is
    /// skipped, as APISIX does).
    fn resolve(&self, cx: &Access<'_>) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(&var(v, cx)?),
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn var(name: &str, cx: &Access<'_>) -> Option<String> {
    let v = match name {
        "consumer_name" => cx.rec.consumer.as_ref().map(|c| c.name.to_string()),
        "consumer_group_id" => cx.rec.consumer.as_ref().and_then(|c| c.group.as_deref().map(str::to_owned)),
        "route_id" => Some(cx.rec.route_id.clone()),
        "remote_addr" => Some(cx.remote.ip().to_string()),
        "uri" => Some(cx.parts.uri.path().to_owned()),
        "host" => {
            cx.parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(|h| h.split(':').next().unwrap_or(h).to_owned())
        }
        _ => {
            if let Some(h) = name.strip_prefix("http_") {
                let h = h.to_ascii_lowercase().replace('_', "-");
                cx.parts.headers.get(h.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned)
            } else if let Some(a) = name.strip_prefix("arg_") {
                cx.parts
                    .uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == a)
                    .map(|(_, v)| v.to_owned())
            } else {
                None
            }
        }
    };
    v.filter(|s| !s.is_empty())
}

/// The plugin: its compiled config, shared with the checks it waits on.
#[derive(Debug)]
pub struct RateLimit(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limits: Vec<Limit>,
    strategy: Strategy,
    cost: Option<Expr>,
    show_headers: bool,
    rejected: StatusCode,
    message: String,
    store: Store,
    /// `route:{id}` or, on consumers and groups, counted per consumer.
    per_consumer: bool,
    route_scope: String,
    metrics: Arc<Metrics>,
    /// Instance limits as this node last saw them: name → (window index, tokens counted).
    seen_instances: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

pub fn factory(conf: &Value, env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
    let c: AiRateLimiting = from_value_at("plugins.ai-rate-limiting", conf).map_err(|e| PluginError::new(NAME, e.message))?;
    let store = super::store(NAME, &c.redis(), env)?;
    let mut limits = Vec::new();
    if let (Some(limit), Some(secs)) = (c.limit, c.time_window) {
        limits.push(Limit { limit, secs, what: LimitKind::Plain });
    }
    for ins in c.instances.iter().flatten() {
        limits.push(Limit { limit: ins.limit, secs: ins.time_window, what: LimitKind::Instance(ins.name.clone()) });
    }
    for (index, rule) in c.rules.iter().flatten().enumerate() {
        let prefix = rule.header_prefix.clone().unwrap_or_else(|| (index + 1).to_string());
        limits.push(Limit {
            limit: rule.count,
            secs: rule.time_window,
            what: LimitKind::Rule { index, key: Template::parse(&rule.key), header: prefix },
        });
    }
    let cost = c.cost_expr.as_deref().map(Expr::parse).transpose().map_err(|e| PluginError::new(NAME, format!("cost_expr: {e}")))?;
    let (per_consumer, route_scope) = match env.scope {
        Scope::Route(id) => (false, format!("route:{id}")),
        Scope::Consumer(_) | Scope::Group(_) => (true, String::new()),
    };
    let rejected = StatusCode::from_u16(c.rejected_code).map_err(|_| PluginError::new(NAME, "rejected_code: not a status"))?;
    Ok(Arc::new(RateLimit(Arc::new(Inner {
        limits,
        strategy: c.limit_strategy,
        cost,
        show_headers: c.show_limit_quota_header,
        rejected,
        message: c.rejected_msg.unwrap_or_else(|| "rate limit exceeded: the token limit of this window is spent".into()),
        store,
        per_consumer,
        route_scope,
        metrics: env.resources.get::<Metrics>(),
        seen_instances: Default::default(),
    }))))
}

/// What access found, for the later phases.
#[derive(Debug)]
struct Seen {
    /// Per limit (same order as `limits`): its counter key (None: a rule skipped), count, window.
    counters: Vec<Option<(String, u64, Window)>>,
    degraded: bool,
}

/// Tokens of a request by strategy.
fn tokens(strategy: Strategy, cost: Option<&Expr>, rec: &Record) -> u64 {
    let mut u = rec.usage;
    if u.prompt + u.completion + u.total == 0 && rec.stream && rec.stream_events > 0 && rec.upstream_status == Some(200) {
        // A stream cut before the upstream reported usage: count what was sent.
        u.prompt = rec.request_bytes / 4;
        u.completion = rec.stream_events;
        u.total = u.prompt + u.completion;
    }
    match strategy {
        Strategy::TotalTokens => u.total.max(u.prompt + u.completion),
        Strategy::PromptTokens => u.prompt,
        Strategy::CompletionTokens => u.completion,
        Strategy::Expression => {
            let vars = [u.prompt, u.cache_read, u.cache_creation, u.completion, u.reasoning, u.total.max(u.prompt + u.completion)]
                .map(|v| v as f64);
            cost.map_or(0, |e| e.charge(&vars))
        }
    }
}

/// Who a refusal is counted for.
struct Who {
    route: String,
    consumer: Option<Arc<str>>,
    instance: String,
    provider: String,
}

impl Inner {
    /// The counter key of `l` for this request, None when a rule's key has no value.
    fn key(&self, l: &Limit, cx: &Access<'_>, w: &Window) -> Option<String> {
        let scope = if self.per_consumer { format!("consumer:{}", cx.rec.consumer.as_ref()?.name) } else { self.route_scope.clone() };
        let what = match &l.what {
            LimitKind::Plain => "all".to_owned(),
            LimitKind::Instance(name) => format!("instance:{name}"),
            LimitKind::Rule { index, key, .. } => format!("rule{index}:{}", key.resolve(cx)?),
        };
        Some(format!("aigw:rl:{scope}:{what}:{}:{}", l.secs, w.index))
    }

    fn refusal(&self, headers: Vec<(HeaderName, HeaderValue)>, retry_after: u64, route: &str, consumer: Option<&str>) -> GatewayError {
        let consumer = consumer.map_or("", |c| self.metrics.consumers.admit(c));
        self.metrics.ratelimit_rejected.add(&[route, consumer], 1);
        let mut e = GatewayError::refused(self.rejected, Class::RateLimit, "rate_limit_exceeded", self.message.clone())
            .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
        if self.show_headers {
            e.headers.extend(headers);
        }
        e
    }

    /// The quota headers of limit `i` (instance limits only for `instance`).
    fn headers(&self, seen: &Seen, instance: &str, provider_name: &str, out: &mut Vec<(HeaderName, HeaderValue)>) {
        for (l, c) in self.limits.iter().zip(&seen.counters) {
            let Some((_, count, w)) = c else { continue };
            let (limit, remaining, reset) = (l.limit, l.limit.saturating_sub(*count), w.reset_secs());
            let names: [String; 3] = match &l.what {
                LimitKind::Plain => {
                    let n = if instance.is_empty() { provider_name } else { instance };
                    ["Limit", "Remaining", "Reset"].map(|k| format!("x-ai-ratelimit-{}-{n}", k.to_ascii_lowercase()))
                }
                LimitKind::Instance(name) if name == instance => {
                    ["Limit", "Remaining", "Reset"].map(|k| format!("x-ai-ratelimit-{}-{name}", k.to_ascii_lowercase()))
                }
                LimitKind::Instance(_) => continue,
                LimitKind::Rule { header, .. } => ["limit", "remaining", "reset"].map(|k| format!("x-ai-{header}-ratelimit-{k}")),
            };
            for (name, v) in names.iter().zip([limit, remaining, reset]) {
                if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    out.push((n, HeaderValue::from(v)));
                }
            }
        }
    }
}

impl Inner {
    /// Records the instance counters `seen` holds (plus `charged` for `only`).
    fn note_instances(&self, seen: &Seen, charged: u64, only: Option<&str>) {
        let mut m = self.seen_instances.lock().unwrap_or_else(|e| e.into_inner());
        for (l, c) in self.limits.iter().zip(&seen.counters) {
            if let (LimitKind::Instance(name), Some((_, n, w))) = (&l.what, c)
                && only.is_none_or(|o| o == name)
            {
                let e = m.entry(name.clone()).or_insert((w.index, 0));
                if e.0 != w.index {
                    *e = (w.index, 0);
                }
                e.1 = e.1.max(n + charged);
            }
        }
    }
}

fn provider_header(rec: &Record) -> String {
    format!("ai-proxy-{}", rec.provider.map_or("", |p| p.as_str()))
}

impl Plugin for RateLimit {
    fn name(&self) -> &str {
        NAME
    }

    fn priority(&self) -> i32 {
        1030
    }

    fn access(&self, cx: &mut Access<'_>) -> Step {
        let me = self.0.clone();
        let now = me.store.now_ms();
        let windows: Vec<Window> = me.limits.iter().map(|l| Window::at(now, l.secs)).collect();
        let keys: Vec<Option<String>> = me.limits.iter().zip(&windows).map(|(l, w)| me.key(l, cx, w)).collect();
        if keys.iter().all(Option::is_none) {
            return Step::Next;
        }
        let who = Who {
            route: cx.rec.route_id.clone(),
            consumer: cx.rec.consumer.as_ref().map(|c| c.name.clone()),
            instance: cx.rec.instance.clone(),
            provider: provider_header(cx.rec),
        };
        Step::Wait(Box::pin(async move {
            let wanted: Vec<String> = keys.iter().flatten().cloned().collect();
            let reading = me.store.read(&wanted).await;
            let Some(counts) = reading.counts() else {
                return Err(GatewayError::refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Class::RateLimit,
                    "ratelimit_unavailable",
                    "token limits cannot be checked: the counter store (Redis) is unavailable",
                ));
            };
            let mut it = counts.iter();
            let counters: Vec<Option<(String, u64, Window)>> =
                keys.into_iter().zip(windows).map(|(k, w)| k.map(|k| (k, it.next().copied().unwrap_or(0), w))).collect();
            let seen = Seen { counters, degraded: matches!(reading, Reading::Degraded(_)) };
            me.note_instances(&seen, 0, None);
            // Instance limits are checked per attempt; the rest now.
            let spent = me
                .limits
                .iter()
                .zip(&seen.counters)
                .filter(|(l, _)| !matches!(l.what, LimitKind::Instance(_)))
                .filter_map(|(l, c)| c.as_ref().map(|(_, n, w)| (l, *n, *w)))
                .filter(|(l, n, _)| *n >= l.limit)
                .map(|(_, _, w)| w.reset_secs())
                .max();
            if let Some(retry) = spent {
                let mut h = Vec::new();
                me.headers(&seen, &who.instance, &who.provider, &mut h);
                return Err(me.refusal(h, retry, &who.route, who.consumer.as_deref()));
            }
            Ok(Some(Box::new(seen) as crate::phases::SlotBox))
        }))
    }

    fn instance_status(&self, instance: &str) -> Option<(&'static str, Value)> {
        let me = &self.0;
        let l = me.limits.iter().find(|l| matches!(&l.what, LimitKind::Instance(n) if n == instance))?;
        let w = Window::at(me.store.now_ms(), l.secs);
        let used = match me.seen_instances.lock().unwrap_or_else(|e| e.into_inner()).get(instance) {
            Some((index, n)) if *index == w.index => *n,
            _ => 0,
        };
        Some((
            "ratelimit",
            serde_json::json!({"limit": l.limit, "time_window": l.secs, "remaining": l.limit.saturating_sub(used), "reset": w.reset_secs()}),
        ))
    }

    fn before_attempt(&self, cx: &mut AttemptCx<'_>) -> Result<(), GatewayError> {
        let me = &self.0;
        let Some(seen) = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Seen>()) else { return Ok(()) };
        for (l, c) in me.limits.iter().zip(&seen.counters) {
            if let (LimitKind::Instance(name), Some((_, n, w))) = (&l.what, c)
                && name == cx.instance
                && *n >= l.limit
            {
                let mut h = Vec::new();
                me.headers(seen, cx.instance, "", &mut h);
                let consumer = cx.rec.consumer.as_ref().map(|c| &*c.name);
                return Err(me.refusal(h, w.reset_secs(), &cx.rec.route_id, consumer));
            }
        }
        Ok(())
    }

    fn response_head(&self, cx: &mut HeadCx<'_>) {
        if !self.0.show_headers {
            return;
        }
        let Some(seen) = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Seen>()) else { return };
        let mut h = Vec::new();
        self.0.headers(seen, &cx.rec.instance, &provider_header(cx.rec), &mut h);
        for (k, v) in h {
            cx.headers.insert(k, v);
        }
    }

    fn complete(&self, cx: &mut CompleteCx<'_>) {
        let me = &self.0;
        let Some(seen) = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Seen>()) else { return };
        let n = tokens(me.strategy, me.cost.as_ref(), cx.rec);
        let mut remaining: Option<u64> = None;
        for (l, c) in me.limits.iter().zip(&seen.counters) {
            let Some((key, count, w)) = c else { continue };
            if let LimitKind::Instance(name) = &l.what
                && *name != cx.rec.instance
            {
                continue;
            }
            me.store.charge(key.clone(), n, w);
            if let LimitKind::Instance(name) = &l.what {
                me.note_instances(seen, n, Some(name));
            }
            let left = l.limit.saturating_sub(count.saturating_add(n));
            remaining = Some(remaining.map_or(left, |r| r.min(left)));
        }
        if let Some(r) = remaining {
            cx.rec.ratelimit_remaining = Some(cx.rec.ratelimit_remaining.map_or(r, |o| o.min(r)));
        }
        if seen.degraded {
            cx.rec.ratelimit_degraded = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_llm::usage::Usage;

    fn rec(u: Usage) -> Record {
        let mut r = Record::new("127.0.0.1".parse().unwrap(), String::new(), String::new(), None);
        r.usage = u;
        r
    }

    #[test]
    fn strategies_count_what_contract_6_counts() {
        // Anthropic-style usage in OpenAI semantics: prompt includes cache reads and writes.
        let u = Usage { prompt: 350, completion: 30, total: 380, cache_read: 200, cache_creation: 100, reasoning: 10 };
        let r = rec(u);
        assert_eq!(tokens(Strategy::TotalTokens, None, &r), 380);
        assert_eq!(tokens(Strategy::PromptTokens, None, &r), 350, "cache reads and writes included");
        assert_eq!(tokens(Strategy::CompletionTokens, None, &r), 30, "reasoning included");
        let e = Expr::parse("input_tokens - cached_input_tokens + cached_input_tokens / 10 + output_tokens * 4").unwrap();
        assert_eq!(tokens(Strategy::Expression, Some(&e), &r), 150 + 20 + 120);
        // A stream cut before the usage chunk: an estimate of what was sent.
        let mut cut = rec(Usage::default());
        (cut.stream, cut.stream_events, cut.request_bytes, cut.upstream_status) = (true, 12, 400, Some(200));
        assert_eq!(tokens(Strategy::TotalTokens, None, &cut), 112);
        assert_eq!(tokens(Strategy::CompletionTokens, None, &cut), 12);
        cut.upstream_status = Some(500);
        assert_eq!(tokens(Strategy::TotalTokens, None, &cut), 0, "nothing generated, nothing charged");
    }

    /// The quota headers: per limit, named by instance (or `ai-proxy-{provider}`) or by rule.
    #[test]
    fn header_values() {
        let resources = crate::phases::Resources::default();
        let env = PluginEnv { scope: Scope::Route("r"), route: None, resources: &resources };
        let conf = serde_json::json!({"limit": 100, "time_window": 60, "instances": [{"name": "a", "limit": 10, "time_window": 60}]});
        let p = factory(&conf, &env).unwrap();
        let dbg = format!("{p:?}");
        assert!(dbg.contains("Plain") && dbg.contains("Instance(\"a\")"), "{dbg}");
        let inner = Inner {
            limits: vec![
                Limit { limit: 100, secs: 60, what: LimitKind::Plain },
                Limit { limit: 10, secs: 60, what: LimitKind::Instance("a".into()) },
                Limit {
                    limit: 5,
                    secs: 10,
                    what: LimitKind::Rule { index: 0, key: Template::parse("$http_x_team"), header: "team".into() },
                },
            ],
            strategy: Strategy::TotalTokens,
            cost: None,
            show_headers: true,
            rejected: StatusCode::TOO_MANY_REQUESTS,
            message: String::new(),
            store: resources.get::<aigw_limits::Counters>().store(&aigw_limits::StoreSpec::default()).unwrap(),
            per_consumer: false,
            route_scope: "route:r".into(),
            metrics: resources.get::<Metrics>(),
            seen_instances: Default::default(),
        };
        let w = Window::at(30_000, 60);
        let seen = Seen {
            counters: vec![Some(("k1".into(), 40, w)), Some(("k2".into(), 12, w)), Some(("k3".into(), 2, Window::at(30_000, 10)))],
            degraded: false,
        };
        let mut h = Vec::new();
        inner.headers(&seen, "a", "ai-proxy-openai", &mut h);
        let got: Vec<(String, String)> = h.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned())).collect();
        let want = [
            ("x-ai-ratelimit-limit-a", "100"),
            ("x-ai-ratelimit-remaining-a", "60"),
            ("x-ai-ratelimit-reset-a", "30"),
            ("x-ai-ratelimit-limit-a", "10"),
            ("x-ai-ratelimit-remaining-a", "0"),
            ("x-ai-ratelimit-reset-a", "30"),
            ("x-ai-team-ratelimit-limit", "5"),
            ("x-ai-team-ratelimit-remaining", "3"),
            ("x-ai-team-ratelimit-reset", "10"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        // On an ai-proxy route the plain limit is named after the provider; other instances' limits are not shown.
        let mut h = Vec::new();
        inner.headers(&seen, "", "ai-proxy-openai", &mut h);
        assert_eq!(h[0].0.as_str(), "x-ai-ratelimit-limit-ai-proxy-openai");
        assert!(!h.iter().any(|(k, v)| k.as_str() == "x-ai-ratelimit-limit-a" && v == "10"));
    }

    #[test]
    fn rule_keys_are_templates() {
        let t = Template::parse("team-$http_x_team-${consumer_name}");
        assert_eq!(t.0.len(), 4);
        assert!(matches!(&t.0[1], Part::Var(v) if v == "http_x_team"));
        assert!(matches!(&t.0[3], Part::Var(v) if v == "consumer_name"));
        assert!(matches!(&Template::parse("$$x").0[0], Part::Lit(s) if s == "$"));
    }
}
