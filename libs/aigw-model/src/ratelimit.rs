//! `ai-rate-limiting` (CONTRACT §13; APISIX's schema): token limits per route, instance,
//! consumer, consumer group, or per value of a request variable, counted fleet-wide in
//! Redis or per process; and the Redis settings `ai-budget` shares.
//!
//! `cost_expr` is arithmetic only (`+ - * /`, parentheses, numbers and the usage
//! variables below), parsed at config time: APISIX runs Lua here, aigw does not.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::{ValidationError, from_value_at};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    TotalTokens,
    /// Input tokens, prompt-cache reads and writes included (APISIX 3.20+).
    PromptTokens,
    /// Output tokens, reasoning included.
    CompletionTokens,
    Expression,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "redis")]
    Redis,
    #[serde(rename = "redis-cluster")]
    RedisCluster,
    #[serde(rename = "redis-sentinel")]
    RedisSentinel,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceLimit {
    pub name: String,
    pub limit: u64,
    pub time_window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub count: u64,
    pub time_window: u64,
    /// An access-log variable (`$consumer_name`, `$http_x_team`, …) or text with
    /// variables: one counter per value. A key that resolves to nothing skips the rule.
    pub key: String,
    #[serde(default)]
    pub header_prefix: Option<String>,
}

/// Where the counters live (`policy`) and how to reach Redis: shared by `ai-rate-limiting`
/// and `ai-budget`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub allow_degradation: bool,
    /// None: the proxy's `--redis`.
    #[serde(default)]
    pub redis_host: Option<String>,
    #[serde(default = "d_port")]
    pub redis_port: u16,
    #[serde(default)]
    pub redis_username: Option<String>,
    /// A secret field (encrypted at rest, redacted in reads).
    #[serde(default)]
    pub redis_password: Option<String>,
    #[serde(default)]
    pub redis_database: u32,
    /// Milliseconds a Redis operation may take (admission waits at most 50 ms of it).
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
fn d_true() -> bool {
    true
}
fn d_rejected_code() -> u16 {
    503
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AiRateLimiting {
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub time_window: Option<u64>,
    #[serde(default = "d_true")]
    pub show_limit_quota_header: bool,
    #[serde(default)]
    pub limit_strategy: Strategy,
    #[serde(default)]
    pub cost_expr: Option<String>,
    #[serde(default)]
    pub instances: Option<Vec<InstanceLimit>>,
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    #[serde(default = "d_rejected_code")]
    pub rejected_code: u16,
    #[serde(default)]
    pub rejected_msg: Option<String>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub allow_degradation: bool,
    /// None: the proxy's `--redis`.
    #[serde(default)]
    pub redis_host: Option<String>,
    #[serde(default = "d_port")]
    pub redis_port: u16,
    #[serde(default)]
    pub redis_username: Option<String>,
    /// A secret field (encrypted at rest, redacted in reads).
    #[serde(default)]
    pub redis_password: Option<String>,
    #[serde(default)]
    pub redis_database: u32,
    /// Milliseconds a Redis operation may take (admission waits at most 50 ms of it).
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

/// The Redis settings of a plugin config (`ai-rate-limiting`, `ai-budget`).
#[macro_export]
#[doc(hidden)]
macro_rules! redis_settings {
    ($c:expr) => {
        RedisSettings {
            policy: $c.policy,
            allow_degradation: $c.allow_degradation,
            redis_host: $c.redis_host.clone(),
            redis_port: $c.redis_port,
            redis_username: $c.redis_username.clone(),
            redis_password: $c.redis_password.clone(),
            redis_database: $c.redis_database,
            redis_timeout: $c.redis_timeout,
            redis_ssl: $c.redis_ssl,
            redis_ssl_verify: $c.redis_ssl_verify,
            redis_keepalive_timeout: $c.redis_keepalive_timeout,
            redis_keepalive_pool: $c.redis_keepalive_pool,
        }
    };
}

impl AiRateLimiting {
    pub fn redis(&self) -> RedisSettings {
        crate::redis_settings!(self)
    }
}

/// The usage variables of `cost_expr` (Envoy AI Gateway's names), from a response's usage
/// in OpenAI semantics: `input_tokens` includes cache reads and writes, `output_tokens`
/// includes reasoning.
pub const COST_VARS: [&str; 6] =
    ["input_tokens", "cached_input_tokens", "cache_creation_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens"];

/// Why a `cost_expr` does not parse (where, and what).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// A parsed `cost_expr`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    /// An index into [`COST_VARS`].
    Var(usize),
    Neg(Box<Expr>),
    Bin(Box<Expr>, char, Box<Expr>),
}

impl Expr {
    /// Parses arithmetic over [`COST_VARS`]; the error says where and what.
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        Self::parse_str(src).map_err(ExprError)
    }

    fn parse_str(src: &str) -> Result<Expr, String> {
        let toks = tokenize(src)?;
        let mut p = Parser { toks: &toks, i: 0 };
        let e = p.expr()?;
        if p.i != toks.len() {
            return Err(format!("unexpected {} at position {}", toks[p.i].1, toks[p.i].0));
        }
        Ok(e)
    }

    /// The value for `vars` (in [`COST_VARS`] order); division by zero gives 0.
    pub fn eval(&self, vars: &[f64; 6]) -> f64 {
        match self {
            Expr::Num(n) => *n,
            Expr::Var(i) => vars[*i],
            Expr::Neg(e) => -e.eval(vars),
            Expr::Bin(a, op, b) => {
                let (a, b) = (a.eval(vars), b.eval(vars));
                match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    _ if b == 0.0 => 0.0,
                    _ => a / b,
                }
            }
        }
    }

    /// Tokens to charge: rounded, never negative, 0 when not finite.
    pub fn charge(&self, vars: &[f64; 6]) -> u64 {
        let v = self.eval(vars).round();
        if v.is_finite() && v > 0.0 { v.min(u64::MAX as f64) as u64 } else { 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Ident(s) => write!(f, "{s:?}"),
            Tok::Op(c) => write!(f, "{c:?}"),
        }
    }
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n: f64 = src[start..i].parse().map_err(|_| format!("bad number {:?} at position {start}", &src[start..i]))?;
            out.push((start, Tok::Num(n)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let name = &src[start..i];
            if !COST_VARS.contains(&name) {
                return Err(format!("unknown variable {name:?} at position {start} (known: {})", COST_VARS.join(", ")));
            }
            out.push((start, Tok::Ident(name.to_owned())));
        } else if b"+-*/()".contains(&c) {
            out.push((i, Tok::Op(c as char)));
            i += 1;
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(format!("{ch:?} at position {i} is not arithmetic (+ - * / and parentheses only)"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [(usize, Tok)],
    i: usize,
}

impl Parser<'_> {
    fn peek_op(&self) -> Option<char> {
        match self.toks.get(self.i) {
            Some((_, Tok::Op(c))) => Some(*c),
            _ => None,
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek_op() {
            self.i += 1;
            e = Expr::Bin(Box::new(e), op, Box::new(self.term()?));
        }
        Ok(e)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut e = self.factor()?;
        while let Some(op @ ('*' | '/')) = self.peek_op() {
            self.i += 1;
            e = Expr::Bin(Box::new(e), op, Box::new(self.factor()?));
        }
        Ok(e)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        let Some((pos, t)) = self.toks.get(self.i) else { return Err("unexpected end of the expression".into()) };
        self.i += 1;
        match t {
            Tok::Num(n) => Ok(Expr::Num(*n)),
            Tok::Ident(name) => COST_VARS
                .iter()
                .position(|v| v == name)
                .map(Expr::Var)
                .ok_or_else(|| format!("unknown variable {name:?} at position {pos} (known: {})", COST_VARS.join(", "))),
            Tok::Op('-') => Ok(Expr::Neg(Box::new(self.factor()?))),
            Tok::Op('(') => {
                let e = self.expr()?;
                match self.toks.get(self.i) {
                    Some((_, Tok::Op(')'))) => {
                        self.i += 1;
                        Ok(e)
                    }
                    _ => Err(format!("unclosed '(' at position {pos}")),
                }
            }
            other => Err(format!("unexpected {other} at position {pos}")),
        }
    }
}

fn positive(path: &str, v: u64) -> Result<(), ValidationError> {
    if v == 0 { Err(ValidationError::new(path, "must be greater than 0")) } else { Ok(()) }
}

/// Validates the Redis settings at `path` (shared with `ai-budget`).
pub fn validate_redis(path: &str, r: &RedisSettings) -> Result<(), ValidationError> {
    match r.policy {
        Policy::Local | Policy::Redis => {}
        Policy::RedisCluster | Policy::RedisSentinel => {
            return Err(ValidationError::new(
                format!("{path}.policy"),
                "redis-cluster and redis-sentinel are not supported yet; use redis (one Redis endpoint) or local",
            ));
        }
    }
    if let Some(h) = &r.redis_host
        && (h.len() < 2 || h.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ValidationError::new(format!("{path}.redis_host"), "must be a host name or address"));
    }
    if r.redis_port == 0 {
        return Err(ValidationError::new(format!("{path}.redis_port"), "must be greater than 0"));
    }
    if r.redis_timeout == 0 {
        return Err(ValidationError::new(format!("{path}.redis_timeout"), "must be greater than 0"));
    }
    if r.redis_keepalive_timeout < 1000 {
        return Err(ValidationError::new(format!("{path}.redis_keepalive_timeout"), "must be at least 1000"));
    }
    Ok(())
}

pub(crate) fn validate(path: &str, conf: &Value) -> Result<(), ValidationError> {
    if conf.get("limit").is_some_and(Value::is_string) || conf.get("time_window").is_some_and(Value::is_string) {
        return Err(ValidationError::new(path, "limit and time_window must be numbers (variable limits are not supported)"));
    }
    let c: AiRateLimiting = from_value_at(path, conf)?;
    let plain = c.limit.is_some() || c.time_window.is_some();
    if plain && (c.limit.is_none() || c.time_window.is_none()) {
        return Err(ValidationError::new(path, "limit and time_window go together"));
    }
    if let Some(l) = c.limit {
        positive(&format!("{path}.limit"), l)?;
    }
    if let Some(w) = c.time_window {
        positive(&format!("{path}.time_window"), w)?;
    }
    let has_rules = c.rules.is_some();
    if has_rules && (plain || c.instances.is_some()) {
        return Err(ValidationError::new(path, "rules replace limit/time_window and instances: set one or the other"));
    }
    if !has_rules && !plain && c.instances.is_none() {
        return Err(ValidationError::new(path, "one of limit with time_window, instances, or rules is required"));
    }
    if let Some(list) = &c.instances {
        if list.is_empty() {
            return Err(ValidationError::new(format!("{path}.instances"), "must hold at least one instance"));
        }
        for (i, ins) in list.iter().enumerate() {
            if ins.name.is_empty() {
                return Err(ValidationError::new(format!("{path}.instances[{i}].name"), "must not be empty"));
            }
            positive(&format!("{path}.instances[{i}].limit"), ins.limit)?;
            positive(&format!("{path}.instances[{i}].time_window"), ins.time_window)?;
        }
    }
    if let Some(rules) = &c.rules {
        if rules.is_empty() {
            return Err(ValidationError::new(format!("{path}.rules"), "must hold at least one rule"));
        }
        let mut keys = std::collections::HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            positive(&format!("{path}.rules[{i}].count"), r.count)?;
            positive(&format!("{path}.rules[{i}].time_window"), r.time_window)?;
            if r.key.is_empty() {
                return Err(ValidationError::new(format!("{path}.rules[{i}].key"), "must not be empty"));
            }
            if !keys.insert(r.key.as_str()) {
                return Err(ValidationError::new(format!("{path}.rules[{i}].key"), "duplicate key"));
            }
            if r.header_prefix
                .as_ref()
                .is_some_and(|h| h.is_empty() || http::HeaderName::from_bytes(format!("x-ai-{h}-ratelimit-limit").as_bytes()).is_err())
            {
                return Err(ValidationError::new(format!("{path}.rules[{i}].header_prefix"), "must make a valid header name"));
            }
        }
    }
    match (c.limit_strategy, &c.cost_expr) {
        (Strategy::Expression, None) => {
            return Err(ValidationError::new(format!("{path}.cost_expr"), "is required with limit_strategy expression"));
        }
        (Strategy::Expression, Some(e)) => {
            Expr::parse(e).map_err(|m| ValidationError::new(format!("{path}.cost_expr"), m.0))?;
        }
        (_, Some(_)) => return Err(ValidationError::new(format!("{path}.cost_expr"), "is only used with limit_strategy expression")),
        _ => {}
    }
    if !(200..=599).contains(&c.rejected_code) {
        return Err(ValidationError::new(format!("{path}.rejected_code"), "must be between 200 and 599"));
    }
    if c.rejected_msg.as_ref().is_some_and(String::is_empty) {
        return Err(ValidationError::new(format!("{path}.rejected_msg"), "must not be empty"));
    }
    validate_redis(path, &c.redis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cost_expressions() {
        let vars = [1000.0, 800.0, 100.0, 50.0, 20.0, 1050.0];
        for (src, want) in [
            ("total_tokens", 1050),
            ("input_tokens - cached_input_tokens + cached_input_tokens / 10 + output_tokens * 4", 480),
            ("(input_tokens + output_tokens) * 2", 2100),
            ("-output_tokens", 0),
            ("output_tokens / 0", 0),
            ("2.5 * reasoning_tokens", 50),
            ("cache_creation_input_tokens*1.25", 125),
        ] {
            assert_eq!(Expr::parse(src).unwrap().charge(&vars), want, "{src}");
        }
        for (bad, want) in [
            ("os.execute('x')", "unknown variable \"os\""),
            ("input_tokens +", "unexpected end"),
            ("(input_tokens", "unclosed '('"),
            ("input_tokens ^ 2", "'^' at position 13 is not arithmetic"),
            ("math.max(1, 2)", "unknown variable \"math\""),
            ("1..2", "bad number"),
            ("input_tokens output_tokens", "unexpected \"output_tokens\""),
        ] {
            let e = Expr::parse(bad).unwrap_err();
            assert!(e.0.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn schema() {
        for ok in [
            json!({"limit": 100, "time_window": 60}),
            json!({"instances": [{"name": "a", "limit": 10, "time_window": 60}], "rejected_code": 429}),
            json!({"rules": [{"count": 5, "time_window": 10, "key": "$consumer_name", "header_prefix": "team"}]}),
            json!({"limit": 1, "time_window": 1, "limit_strategy": "expression", "cost_expr": "input_tokens + output_tokens * 4"}),
            json!({"limit": 1, "time_window": 1, "policy": "redis", "redis_host": "10.0.0.1", "allow_degradation": true}),
            json!({"limit": 1, "time_window": 1, "instances": [{"name": "a", "limit": 1, "time_window": 1}]}),
        ] {
            assert!(validate("p", &ok).is_ok(), "{ok}: {:?}", validate("p", &ok));
        }
        for (bad, want) in [
            (json!({}), "one of limit with time_window"),
            (json!({"limit": 100}), "go together"),
            (json!({"limit": 0, "time_window": 1}), "p.limit"),
            (json!({"limit": "$http_x", "time_window": 1}), "variable limits"),
            (json!({"limit": 1, "time_window": 1, "rules": [{"count": 1, "time_window": 1, "key": "$x"}]}), "rules replace"),
            (json!({"rules": []}), "p.rules"),
            (json!({"rules": [{"count": 1, "time_window": 1, "key": "$x"}, {"count": 2, "time_window": 1, "key": "$x"}]}), "duplicate key"),
            (json!({"limit": 1, "time_window": 1, "limit_strategy": "expression"}), "p.cost_expr: is required"),
            (
                json!({"limit": 1, "time_window": 1, "limit_strategy": "expression", "cost_expr": "os.time()"}),
                "p.cost_expr: unknown variable",
            ),
            (json!({"limit": 1, "time_window": 1, "cost_expr": "input_tokens"}), "only used with"),
            (json!({"limit": 1, "time_window": 1, "policy": "redis-cluster"}), "not supported yet"),
            (json!({"limit": 1, "time_window": 1, "policy": "memcached"}), "p.policy"),
            (json!({"limit": 1, "time_window": 1, "rejected_code": 600}), "p.rejected_code"),
            (json!({"limit": 1, "time_window": 1, "limit_strategy": "tokens"}), "p.limit_strategy"),
            (json!({"limit": 1, "time_window": 1, "instances": [{"name": "a", "limit": 1}]}), "time_window"),
            (json!({"limit": 1, "time_window": 1, "window_type": "sliding"}), "unknown field"),
        ] {
            let e = validate("p", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
