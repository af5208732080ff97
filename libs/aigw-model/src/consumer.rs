//! Consumers, their credentials and consumer groups (CONTRACT §12): APISIX's objects, so
//! APISIX admin `curl`s work unchanged. Validation here is the one place for every
//! writer (REST, gRPC, routes files, etcd written by others).
//!
//! Keys are never kept in clear: aigw-config replaces every `key-auth.key` by its keyed
//! hash ([`crate::keyauth`]) before storing or publishing it, and reads show
//! [`crate::secrets::REDACTED`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plugins::{self, On};
use crate::route::{ValidationError, from_value_at};

pub use crate::route::validate_username;

/// Credential and consumer-group ids: the route id alphabet.
pub fn validate_object_id(path: &str, id: &str) -> Result<(), ValidationError> {
    crate::route::validate_id(id).map_err(|e| ValidationError::new(path, e.message))
}

fn labels_ok(path: &str, labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 100 || v.len() > 256 || k.chars().chain(v.chars()).any(char::is_control) {
            return Err(ValidationError::new(format!("{path}.{k}"), "labels are up to 100/256 printable characters"));
        }
    }
    Ok(())
}

/// A consumer (`/apisix/admin/consumers`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, Value>,
    /// APISIX's bookkeeping, accepted and kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl Consumer {
    /// Parses and validates a consumer object (`extra`: plugin names a node adds).
    pub fn from_json(v: &Value, extra: &dyn Fn(&str) -> bool) -> Result<Consumer, ValidationError> {
        if !v.is_object() {
            return Err(ValidationError::new("(root)", "a consumer must be a JSON object"));
        }
        let c: Consumer = from_value_at("", v)?;
        validate_username("username", &c.username)?;
        if let Some(g) = &c.group_id {
            validate_object_id("group_id", g)?;
        }
        labels_ok("labels", &c.labels)?;
        plugins::validate("plugins", &c.plugins, On::Consumer, extra)?;
        Ok(c)
    }
}

/// A credential of a consumer (`/apisix/admin/consumers/{username}/credentials/{id}`):
/// exactly one auth plugin (APISIX's `maxProperties: 1`); aigw's is `key-auth`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl Credential {
    pub fn from_json(v: &Value) -> Result<Credential, ValidationError> {
        if !v.is_object() {
            return Err(ValidationError::new("(root)", "a credential must be a JSON object"));
        }
        let c: Credential = from_value_at("", v)?;
        if !c.id.is_empty() {
            validate_object_id("id", &c.id)?;
        }
        labels_ok("labels", &c.labels)?;
        if c.plugins.len() != 1 {
            return Err(ValidationError::new("plugins", "a credential holds exactly one auth plugin (key-auth)"));
        }
        plugins::validate("plugins", &c.plugins, On::Credential, &|_| false)?;
        Ok(c)
    }
}

/// A consumer group (`/apisix/admin/consumer_groups/{id}`): plugins shared by its
/// consumers (a consumer's own win).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroup {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<u64>,
}

impl ConsumerGroup {
    pub fn from_json(v: &Value, extra: &dyn Fn(&str) -> bool) -> Result<ConsumerGroup, ValidationError> {
        if !v.is_object() {
            return Err(ValidationError::new("(root)", "a consumer group must be a JSON object"));
        }
        let g: ConsumerGroup = from_value_at("", v)?;
        if !g.id.is_empty() {
            validate_object_id("id", &g.id)?;
        }
        labels_ok("labels", &g.labels)?;
        plugins::validate("plugins", &g.plugins, On::ConsumerGroup, extra)?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(r: Result<impl std::fmt::Debug, ValidationError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn consumers() {
        let ok = json!({"username": "team-a", "desc": "d", "labels": {"team": "a"}, "group_id": "gold",
            "plugins": {"key-auth": {"key": "k-1"}}});
        assert_eq!(Consumer::from_json(&ok, &|_| false).unwrap().group_id.as_deref(), Some("gold"));
        for (bad, want) in [
            (json!({"username": "a b"}), "username: must match"),
            (json!({"username": ""}), "username: must match"),
            (json!({"username": "x".repeat(101)}), "username: must match"),
            (json!({}), "missing field `username`"),
            (json!({"username": "a", "plugin": {}}), "unknown field `plugin`"),
            (json!({"username": "a", "group_id": "a/b"}), "group_id"),
            (
                json!({"username": "a", "plugins": {"ai-proxy": {}}}),
                "plugins.ai-proxy: the ai-proxy plugin cannot be configured on a consumer",
            ),
            (json!({"username": "a", "plugins": {"nope": {}}}), "plugins.nope: unknown plugin"),
            (json!({"username": "a", "plugins": {"key-auth": {"key": ""}}}), "plugins.key-auth.key"),
            (json!({"username": "a", "plugins": {"key-auth": {"header": "x"}}}), "plugins.key-auth"),
            (json!("team-a"), "(root)"),
        ] {
            let e = err(Consumer::from_json(&bad, &|_| false));
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_and_groups() {
        assert!(Credential::from_json(&json!({"desc": "ci", "plugins": {"key-auth": {"key": "abc"}}})).is_ok());
        assert!(Credential::from_json(&json!({"plugins": {"key-auth": {}}})).is_ok(), "a missing key is generated");
        for (bad, want) in [
            (json!({"plugins": {}}), "exactly one auth plugin"),
            (json!({"plugins": {"key-auth": {"key": "a"}, "basic-auth": {}}}), "exactly one auth plugin"),
            (json!({"plugins": {"ai-rate-limiting": {}}}), "plugins.ai-rate-limiting"),
            (json!({"plugins": {"key-auth": {"key": 1}}}), "plugins.key-auth.key"),
        ] {
            let e = err(Credential::from_json(&bad));
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(ConsumerGroup::from_json(&json!({"desc": "gold", "plugins": {}}), &|_| false).is_ok());
        let e = err(ConsumerGroup::from_json(&json!({"plugins": {"key-auth": {"key": "a"}}}), &|_| false));
        assert!(e.contains("cannot be configured on a consumer group"), "{e}");
    }
}
