//! The schemas of the plugins besides the provider plugins (`ai-proxy`, `ai-proxy-multi`,
//! which are typed in [`crate::route`] and [`crate::multi`]): where each may be configured
//! and how its config is validated. aigw-config validates every object it stores with
//! these; the proxy compiles the same JSON into its plugin instances (its registry knows
//! the same names, and may know more: a node's own plugins in a routes file).
//!
//! Adding a plugin: its config type and validation in its own module, one line in
//! [`SCHEMAS`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::route::{HttpLoggerConfig, ValidationError, from_value_at};

/// Where a plugin config may sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Route,
    Consumer,
    /// A consumer's credential (one auth plugin).
    Credential,
    ConsumerGroup,
}

impl On {
    fn what(self) -> &'static str {
        match self {
            On::Route => "a route",
            On::Consumer => "a consumer",
            On::Credential => "a credential",
            On::ConsumerGroup => "a consumer group",
        }
    }
}

/// Validates a plugin config found at `path` on an object of kind `on` (a plugin may
/// take another shape in another place: key-auth's route settings, a credential's key).
pub type Validate = fn(on: On, path: &str, conf: &Value) -> Result<(), ValidationError>;

/// One plugin's schema.
pub struct Schema {
    pub name: &'static str,
    pub on: &'static [On],
    pub validate: Validate,
}

/// Every plugin aigw knows besides the provider plugins.
pub static SCHEMAS: &[Schema] = &[
    Schema { name: "http-logger", on: &[On::Route], validate: http_logger },
    Schema { name: "key-auth", on: &[On::Route, On::Consumer, On::Credential], validate: key_auth },
    Schema { name: "consumer-restriction", on: &[On::Route], validate: |_, p, c| crate::restriction::validate(p, c) },
    Schema {
        name: "ai-rate-limiting",
        on: &[On::Route, On::Consumer, On::ConsumerGroup],
        validate: |_, p, c| crate::ratelimit::validate(p, c),
    },
    Schema { name: "ai-budget", on: &[On::Route, On::Consumer, On::ConsumerGroup], validate: |_, p, c| crate::budget::validate(p, c) },
];

pub fn schema(name: &str) -> Option<&'static Schema> {
    SCHEMAS.iter().find(|s| s.name == name)
}

/// The plugin names `on` accepts (the provider plugins first on routes), for errors.
pub fn names(on: On) -> Vec<&'static str> {
    let provider: &[&str] = if on == On::Route { &["ai-proxy", crate::multi::PLUGIN] } else { &[] };
    provider.iter().copied().chain(SCHEMAS.iter().filter(|s| s.on.contains(&on)).map(|s| s.name)).collect()
}

/// Validates the plugins of an object `on` (except the provider plugins of a route, which
/// the route validates itself). A name `extra` accepts is left to the caller (a node's own
/// plugins).
pub fn validate(prefix: &str, plugins: &BTreeMap<String, Value>, on: On, extra: &dyn Fn(&str) -> bool) -> Result<(), ValidationError> {
    for (name, conf) in plugins {
        let path = format!("{prefix}.{name}");
        if name == "ai-proxy" || name == crate::multi::PLUGIN {
            if on == On::Route {
                continue;
            }
            return Err(ValidationError::new(
                path,
                format!(
                    "the {name} plugin cannot be configured on {}; it goes on a route (a consumer cannot repoint a route's provider)",
                    on.what()
                ),
            ));
        }
        match schema(name) {
            Some(s) if s.on.contains(&on) => (s.validate)(on, &path, conf)?,
            Some(_) => {
                return Err(ValidationError::new(
                    path,
                    format!("the {name} plugin cannot be configured on {}; it goes on {}", on.what(), where_(name)),
                ));
            }
            None if extra(name) => {}
            None => {
                return Err(ValidationError::new(
                    path,
                    format!("unknown plugin {name:?}, supported plugins on {}: {}", on.what(), names(on).join(", ")),
                ));
            }
        }
    }
    Ok(())
}

fn where_(name: &str) -> String {
    schema(name).map(|s| s.on.iter().map(|o| o.what()).collect::<Vec<_>>().join(" or ")).unwrap_or_default()
}

fn key_auth(on: On, path: &str, conf: &Value) -> Result<(), ValidationError> {
    match on {
        On::Route => crate::keyauth::validate_route(path, conf),
        _ => crate::keyauth::validate_key(path, conf),
    }
}

fn http_logger(_: On, path: &str, conf: &Value) -> Result<(), ValidationError> {
    let c: HttpLoggerConfig = from_value_at(path, conf)?;
    crate::route::validate_http_logger(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(on: On, plugins: Value, extra: &[&str]) -> Result<(), String> {
        let map: BTreeMap<String, Value> = serde_json::from_value(plugins).unwrap();
        validate("plugins", &map, on, &|n| extra.contains(&n)).map_err(|e| e.to_string())
    }

    #[test]
    fn names_and_places() {
        assert_eq!(check(On::Route, json!({"http-logger": {"uri": "http://h/"}}), &[]), Ok(()));
        let e = check(On::Route, json!({"nope": {}}), &[]).unwrap_err();
        assert!(e.starts_with("plugins.nope: unknown plugin") && e.contains("ai-proxy, ai-proxy-multi, http-logger, key-auth"), "{e}");
        assert_eq!(check(On::Route, json!({"nope": {"x": 1}}), &["nope"]), Ok(()));
        let e = check(On::Consumer, json!({"http-logger": {"uri": "http://h/"}}), &[]).unwrap_err();
        assert!(e.contains("cannot be configured on a consumer; it goes on a route"), "{e}");
        let e = check(On::Route, json!({"http-logger": {"uri": "nope"}}), &[]).unwrap_err();
        assert!(e.starts_with("plugins.http-logger.uri"), "{e}");
    }
}
