//! The price catalog and the cost of a request (CONTRACT §14).
//!
//! An entry prices a provider's model in USD per million tokens: `input`, `output`,
//! `cache_read`, `cache_write` (null: the input price). aigw ships a default catalog
//! (`prices/default.json`, dated); operator entries (REST/gRPC, or `prices` in a routes file)
//! override it by (provider, model).
//!
//! Matching a response's model, in order: the exact (provider, model); the model
//! normalized — a Bedrock ARN or inference profile reduced to its model id
//! (`arn:…:inference-profile/us.anthropic.claude-…-v1:0` → `anthropic.claude-…`), the version
//! suffix `-v1:0` and a date dropped (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`,
//! `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`, `claude-sonnet-4-5@20250929`); then
//! the longest entry ending in `*` that is a prefix of it. No match: the request is
//! unpriced (its cost is empty, never 0).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::{ValidationError, from_value_at};

/// One price, USD per million tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub provider: String,
    pub model: String,
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// The tokens of one request, OpenAI semantics: `prompt` includes cache reads and writes,
/// `completion` includes reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    /// The cost of `t`: uncached input × input + cache reads × cache_read + cache writes ×
    /// cache_write + output × output (the cache prices default to the input price).
    pub fn cost(&self, t: &Tokens) -> f64 {
        let cached = t.cache_read.saturating_add(t.cache_write).min(t.prompt);
        let uncached = t.prompt - cached;
        let read = t.cache_read.min(t.prompt);
        let write = t.cache_write.min(t.prompt - read);
        (uncached as f64 * self.input
            + read as f64 * self.cache_read.unwrap_or(self.input)
            + write as f64 * self.cache_write.unwrap_or(self.input)
            + t.completion as f64 * self.output)
            / 1_000_000.0
    }

    /// The name of the entry: `{provider}/{model}`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

fn price_ok(path: &str, v: f64) -> Result<(), ValidationError> {
    if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(ValidationError::new(path, "must be a number ≥ 0 (USD per million tokens)")) }
}

impl Price {
    /// Parses and validates an entry.
    pub fn from_json(v: &Value) -> Result<Price, ValidationError> {
        if !v.is_object() {
            return Err(ValidationError::new("(root)", "a price must be a JSON object"));
        }
        let p: Price = from_value_at("", v)?;
        if serde_json::from_value::<crate::route::Provider>(Value::String(p.provider.clone())).is_err() {
            return Err(ValidationError::new("provider", format!("unknown provider {:?}", p.provider)));
        }
        if p.model.is_empty() || p.model.len() > 256 || p.model.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValidationError::new("model", "must be 1..256 printable characters without spaces"));
        }
        if p.model.trim_end_matches('*').contains('*') {
            return Err(ValidationError::new("model", "a '*' may only end the model"));
        }
        price_ok("input", p.input)?;
        price_ok("output", p.output)?;
        if let Some(c) = p.cache_read {
            price_ok("cache_read", c)?;
        }
        if let Some(c) = p.cache_write {
            price_ok("cache_write", c)?;
        }
        Ok(p)
    }
}

/// The default catalog's file, as shipped.
pub const DEFAULT_CATALOG: &str = include_str!("../prices/default.json");

#[derive(Debug, Deserialize)]
struct CatalogFile {
    date: String,
    prices: Vec<Value>,
}

/// The default catalog: its date and entries.
pub fn default_catalog() -> (String, Vec<Price>) {
    let f: CatalogFile = serde_json::from_str(DEFAULT_CATALOG).unwrap_or(CatalogFile { date: String::new(), prices: Vec::new() });
    (f.date, f.prices.iter().filter_map(|p| Price::from_json(p).ok()).collect())
}

/// Prices by (provider, model), exact entries and `*` entries apart.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// provider → model → price: looked up with borrowed strings (no allocation per request).
    exact: HashMap<String, HashMap<String, Price>>,
    /// (provider, prefix before the `*`, price), longest prefix first.
    globs: Vec<(String, String, Price)>,
}

impl Catalog {
    /// The default catalog with `operator` entries over it.
    pub fn with_defaults(operator: impl IntoIterator<Item = Price>) -> Catalog {
        let mut c = Catalog::default();
        for p in default_catalog().1.into_iter().chain(operator) {
            c.insert(p);
        }
        c
    }

    pub fn insert(&mut self, p: Price) {
        match p.model.strip_suffix('*') {
            Some(prefix) => {
                let (prov, prefix) = (p.provider.clone(), prefix.to_owned());
                self.globs.retain(|(pv, px, _)| !(pv == &prov && px == &prefix));
                self.globs.push((prov, prefix, p));
                self.globs.sort_by_key(|g| std::cmp::Reverse(g.1.len()));
            }
            None => {
                self.exact.entry(p.provider.clone()).or_default().insert(p.model.clone(), p);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.exact.values().map(HashMap::len).sum::<usize>() + self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The price of `model` at `provider` (see the module docs for the order).
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&Price> {
        if model.is_empty() {
            return None;
        }
        let models = self.exact.get(provider);
        if let Some(p) = models.and_then(|m| m.get(model)) {
            return Some(p);
        }
        let norm = normalize(provider, model);
        if norm != model
            && let Some(p) = models.and_then(|m| m.get(norm.as_str()))
        {
            return Some(p);
        }
        self.globs
            .iter()
            .find(|(pv, px, _)| pv == provider && (norm.starts_with(px.as_str()) || model.starts_with(px.as_str())))
            .map(|(_, _, p)| p)
    }
}

/// A model name reduced to the catalog's form: ARN and inference-profile prefixes, the
/// Bedrock version suffix and a date dropped.
pub fn normalize(provider: &str, model: &str) -> String {
    let mut m = model;
    if m.starts_with("arn:") {
        m = m.rsplit('/').next().unwrap_or(m);
    }
    if provider == "bedrock" {
        for geo in ["us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.", "us-gov."] {
            if let Some(rest) = m.strip_prefix(geo)
                && rest.contains('.')
            {
                m = rest;
                break;
            }
        }
    }
    let mut out = m.to_owned();
    // `-v1:0`, `-v2:0` (Bedrock model versions).
    if let Some(i) = out.rfind("-v")
        && out[i + 2..]
            .split_once(':')
            .is_some_and(|(a, b)| !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
    {
        out.truncate(i);
    }
    strip_date(&out).to_owned()
}

/// `name` without a trailing date: `-2024-07-18`, `-20250929`, `@20250929`.
fn strip_date(name: &str) -> &str {
    let b = name.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        if t[0] == b'-' && digits(&t[1..5]) && t[5] == b'-' && digits(&t[6..8]) && t[8] == b'-' && digits(&t[9..11]) {
            return &name[..name.len() - 11];
        }
    }
    if b.len() > 9 {
        let t = &b[b.len() - 9..];
        if (t[0] == b'-' || t[0] == b'@') && digits(&t[1..]) && (t[1] == b'2') {
            return &name[..name.len() - 9];
        }
    }
    name
}

/// A list of entries (a routes file's `prices`), each validated, paths named.
pub fn parse_list(path: &str, list: &Value) -> Result<Vec<Price>, ValidationError> {
    let arr = list.as_array().ok_or_else(|| ValidationError::new(path, "must be an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| Price::from_json(v).map_err(|e| ValidationError::new(format!("{path}[{i}].{}", e.path), e.message)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every entry of the shipped catalog parses and is positive; it is dated.
    #[test]
    fn the_default_catalog_is_valid_and_dated() {
        let f: serde_json::Value = serde_json::from_str(DEFAULT_CATALOG).unwrap();
        let entries = f["prices"].as_array().unwrap();
        assert!(entries.len() >= 40);
        for e in entries {
            let p = Price::from_json(e).unwrap_or_else(|err| panic!("{e}: {err}"));
            assert!(p.input > 0.0 && p.output > 0.0, "{e}");
            assert!(p.cache_read.is_none_or(|c| c > 0.0) && p.cache_write.is_none_or(|c| c > 0.0), "{e}");
        }
        let (date, prices) = default_catalog();
        assert_eq!(prices.len(), entries.len(), "every entry is kept");
        assert!(date.len() == 10 && date.starts_with("20"), "{date}");
        let keys: std::collections::HashSet<String> = prices.iter().map(Price::key).collect();
        assert_eq!(keys.len(), prices.len(), "no entry twice");
    }

    #[test]
    fn matching() {
        let c = Catalog::with_defaults([
            Price {
                provider: "openai-compatible".into(),
                model: "llama-3*".into(),
                input: 0.2,
                output: 0.2,
                cache_read: None,
                cache_write: None,
            },
            Price {
                provider: "openai-compatible".into(),
                model: "llama-3.1*".into(),
                input: 0.3,
                output: 0.3,
                cache_read: None,
                cache_write: None,
            },
        ]);
        let input = |prov: &str, m: &str| c.lookup(prov, m).map(|p| (p.model.clone(), p.input));
        for (prov, model, want) in [
            ("openai", "gpt-4o-mini", Some(("gpt-4o-mini", 0.15))),
            ("openai", "gpt-4o-mini-2024-07-18", Some(("gpt-4o-mini", 0.15))),
            ("openai", "gpt-4o-2024-08-06", Some(("gpt-4o", 2.5))),
            ("anthropic", "claude-sonnet-4-5-20250929", Some(("claude-sonnet-4-5", 3.0))),
            ("vertex-ai", "claude-sonnet-4-5@20250929", None),
            ("bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0", Some(("anthropic.claude-sonnet-4-5", 3.0))),
            ("bedrock", "us.anthropic.claude-3-5-haiku-20241022-v1:0", Some(("anthropic.claude-3-5-haiku", 0.8))),
            (
                "bedrock",
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-20250514-v1:0",
                Some(("anthropic.claude-sonnet-4", 3.0)),
            ),
            ("bedrock", "amazon.nova-lite-v1:0", Some(("amazon.nova-lite", 0.06))),
            ("vertex-ai", "google/gemini-2.5-flash", Some(("google/gemini-2.5-flash", 0.3))),
            ("openai-compatible", "llama-3.1-70b", Some(("llama-3.1*", 0.3))),
            ("openai-compatible", "llama-3-8b", Some(("llama-3*", 0.2))),
            ("openai", "gpt-unknown", None),
            ("deepseek", "gpt-4o", None),
            ("openai", "", None),
        ] {
            assert_eq!(input(prov, model), want.map(|(m, p)| (m.to_owned(), p)), "{prov} {model}");
        }
        // An operator entry replaces the default one.
        let mut c = Catalog::with_defaults([]);
        c.insert(Price {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input: 9.0,
            output: 9.0,
            cache_read: None,
            cache_write: None,
        });
        assert_eq!(c.lookup("openai", "gpt-4o-mini-2024-07-18").unwrap().input, 9.0);
    }

    /// Cost cells (CONTRACT §14), hand-computed.
    #[test]
    fn costs() {
        let p = |cr: Option<f64>, cw: Option<f64>| Price {
            provider: "x".into(),
            model: "m".into(),
            input: 3.0,
            output: 15.0,
            cache_read: cr,
            cache_write: cw,
        };
        let t = |prompt, completion, cache_read, cache_write| Tokens { prompt, completion, cache_read, cache_write };
        for (price, tokens, want) in [
            // No cache: 1000 × 3 + 500 × 15 = 10,500 per million.
            (p(Some(0.3), Some(3.75)), t(1000, 500, 0, 0), 0.0105),
            // OpenAI-style cache reads: 800 of 1000 cached: 200 × 3 + 800 × 0.3 + 500 × 15.
            (p(Some(0.3), None), t(1000, 500, 800, 0), (600.0 + 240.0 + 7500.0) / 1e6),
            // Anthropic: 50 uncached + 200 read + 100 written (prompt 350): 150 + 60 + 375 + 30 × 15.
            (p(Some(0.3), Some(3.75)), t(350, 30, 200, 100), (150.0 + 60.0 + 375.0 + 450.0) / 1e6),
            // cache_write null: written tokens at the input price.
            (p(Some(0.3), None), t(350, 30, 200, 100), (150.0 + 60.0 + 300.0 + 450.0) / 1e6),
            // Reasoning is part of completion: priced as output.
            (p(None, None), t(0, 1000, 0, 0), 0.015),
        ] {
            let got = price.cost(&tokens);
            assert!((got - want).abs() < 1e-12, "{tokens:?}: {got} != {want}");
        }
    }

    #[test]
    fn entries() {
        assert!(Price::from_json(&json!({"provider": "openai", "model": "gpt-x", "input": 1, "output": 2})).is_ok());
        for (bad, want) in [
            (json!({"provider": "nope", "model": "m", "input": 1, "output": 1}), "provider"),
            (json!({"provider": "openai", "model": "", "input": 1, "output": 1}), "model"),
            (json!({"provider": "openai", "model": "a*b", "input": 1, "output": 1}), "model"),
            (json!({"provider": "openai", "model": "m", "input": -1, "output": 1}), "input"),
            (json!({"provider": "openai", "model": "m", "input": 1}), "output"),
            (json!({"provider": "openai", "model": "m", "input": 1, "output": 1, "currency": "EUR"}), "unknown field"),
        ] {
            let e = Price::from_json(&bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
