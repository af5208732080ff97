//! Operator prices (`prices/{provider}/{model}`, CONTRACT §14), published as
//! `aigw.config.v1.Price` named `{provider}/{model}`. They override the default catalog
//! shipped in `aigw-model` (`prices/default.json`), which proxies carry themselves; the
//! model may contain `/` (`google/gemini-2.5-flash`) and may end in `*`.

use aigw_model::prices::Price;
use aigw_model::proto_json::price_to_proto;
use aigw_model::secrets::DataKey;
use aigw_model::snapshot::{PRICE_TYPE_URL, resource_version};
use prost::Message as _;
use serde_json::Value;

use super::{Kind, Prepared, Published, WriteCtx};
use crate::error::ApiError;

pub struct PriceKind;

impl PriceKind {
    /// `{provider}/{model}` → (provider, model).
    pub fn split(name: &str) -> Option<(&str, &str)> {
        name.split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty())
    }
}

fn parse(v: &Value) -> Result<Price, ApiError> {
    Price::from_json(v).map_err(|e| ApiError::invalid(e.to_string()))
}

impl Kind for PriceKind {
    fn plural(&self) -> &'static str {
        "prices"
    }
    fn noun(&self) -> &'static str {
        "price"
    }
    fn key_prefix(&self) -> &'static str {
        "prices/"
    }
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix("prices/").filter(|n| Self::split(n).is_some())
    }
    fn type_url(&self) -> Option<&'static str> {
        Some(PRICE_TYPE_URL)
    }
    /// From the path (`{provider}/{model}`) or the body's `provider` and `model`; they
    /// must agree, and the body gets what the path says.
    fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
        let obj = body.as_object_mut().ok_or_else(|| ApiError::invalid("(root): a price must be a JSON object"))?;
        if let Some(name) = path {
            self.validate_name(name)?;
            let (provider, model) = Self::split(name).unwrap_or_default();
            for (field, want) in [("provider", provider), ("model", model)] {
                match obj.get(field) {
                    None => {
                        obj.insert(field.into(), Value::String(want.to_owned()));
                    }
                    Some(Value::String(b)) if b == want => {}
                    Some(b) => return Err(ApiError::invalid(format!("{field}: {b} in the body does not match {want:?} in the path"))),
                }
            }
        }
        let p = parse(body)?;
        Ok(p.key())
    }
    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        let (provider, model) = Self::split(name).ok_or_else(|| ApiError::invalid("a price is named {provider}/{model}"))?;
        parse(&serde_json::json!({"provider": provider, "model": model, "input": 0.0, "output": 0.0})).map(|_| ())
    }
    fn prepare(&self, _ctx: &WriteCtx<'_>, _name: &str, body: Value, _existing: Option<&Value>) -> Result<Prepared, ApiError> {
        let p = parse(&body)?;
        let stored = serde_json::to_value(&p).map_err(ApiError::internal)?;
        Ok(Prepared { stored, answer: None, guards: Vec::new() })
    }
    fn check(&self, name: &str, stored: &Value, _key: Option<&DataKey>) -> Result<Option<Published>, String> {
        let p = Price::from_json(stored).map_err(|e| format!("fails validation: {e}"))?;
        if p.key() != name {
            return Err(format!("the key of price {name:?} holds {:?}", p.key()));
        }
        let payload = prost_types::Any { type_url: PRICE_TYPE_URL.to_owned(), value: price_to_proto(&p).encode_to_vec() };
        Ok(Some(Published { version: resource_version(stored), payload }))
    }
    fn view(&self, stored: &Value) -> Value {
        stored.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_come_from_the_path_and_may_hold_slashes() {
        let mut b = json!({"input": 0.3, "output": 2.5});
        let n = PriceKind.name_for_put(&mut b, Some("vertex-ai/google/gemini-2.5-flash")).unwrap();
        assert_eq!(n, "vertex-ai/google/gemini-2.5-flash");
        assert_eq!(b["model"], "google/gemini-2.5-flash");
        assert_eq!(PriceKind.name_of("prices/vertex-ai/google/gemini-2.5-flash"), Some(n.as_str()));
        let mut b = json!({"provider": "anthropic", "model": "x", "input": 1, "output": 1});
        let e = PriceKind.name_for_put(&mut b, Some("openai/x")).unwrap_err();
        assert!(e.message.contains("provider"), "{}", e.message);
        let e = PriceKind.validate_name("nosuch/gpt").unwrap_err();
        assert!(e.message.contains("provider"), "{}", e.message);
        let mut b = json!({"provider": "openai", "model": "gpt-4o", "input": -1, "output": 1});
        assert!(PriceKind.name_for_put(&mut b, None).unwrap_err().message.contains("input"));
    }
}
