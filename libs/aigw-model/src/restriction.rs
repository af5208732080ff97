//! `consumer-restriction` (APISIX's subset, CONTRACT §12): which consumers (by name) or
//! consumer groups (by id) may use a route.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::route::{ValidationError, from_value_at};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestrictBy {
    #[default]
    ConsumerName,
    ConsumerGroupId,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerRestriction {
    #[serde(default, rename = "type")]
    pub by: RestrictBy,
    #[serde(default)]
    pub whitelist: Option<Vec<String>>,
    #[serde(default)]
    pub blacklist: Option<Vec<String>>,
    #[serde(default = "d_rejected_code")]
    pub rejected_code: u16,
    #[serde(default)]
    pub rejected_msg: Option<String>,
}

fn d_rejected_code() -> u16 {
    403
}

pub(crate) fn validate(path: &str, conf: &Value) -> Result<(), ValidationError> {
    let c: ConsumerRestriction = from_value_at(path, conf)?;
    if c.whitelist.is_none() && c.blacklist.is_none() {
        return Err(ValidationError::new(path, "one of whitelist or blacklist is required"));
    }
    if c.whitelist.is_some() && c.blacklist.is_some() {
        return Err(ValidationError::new(path, "whitelist and blacklist cannot both be set"));
    }
    for (field, list) in [("whitelist", &c.whitelist), ("blacklist", &c.blacklist)] {
        if list.as_ref().is_some_and(|l| l.is_empty() || l.iter().any(String::is_empty)) {
            return Err(ValidationError::new(format!("{path}.{field}"), "must hold at least one non-empty name"));
        }
    }
    if !(200..=599).contains(&c.rejected_code) {
        return Err(ValidationError::new(format!("{path}.rejected_code"), "must be between 200 and 599"));
    }
    if c.rejected_msg.as_ref().is_some_and(String::is_empty) {
        return Err(ValidationError::new(format!("{path}.rejected_msg"), "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema() {
        assert!(validate("p", &json!({"whitelist": ["team-a"]})).is_ok());
        assert!(validate("p", &json!({"type": "consumer_group_id", "blacklist": ["free"], "rejected_code": 401})).is_ok());
        for (bad, want) in [
            (json!({}), "one of whitelist"),
            (json!({"whitelist": ["a"], "blacklist": ["b"]}), "cannot both"),
            (json!({"whitelist": []}), "p.whitelist"),
            (json!({"whitelist": ["a"], "rejected_code": 99}), "p.rejected_code"),
            (json!({"whitelist": ["a"], "type": "route_id"}), "p.type"),
            (json!({"whitelist": ["a"], "allowed_by_methods": []}), "unknown field"),
        ] {
            let e = validate("p", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
