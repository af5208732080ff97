//! Snapshots: the full route set with a content-hash version, and routes files.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::consumer::{Consumer, ConsumerGroup};
use crate::route::ValidationError;
use crate::spec::RouteSpec;

/// Content hash of a route set: the same routes give the same version on every
/// replica and after every restart (xDS versions must not collide).
/// `routes` must be sorted by id; serde_json's map keeps keys sorted, so the
/// encoding is canonical.
pub fn version_of(routes: &[Value]) -> String {
    let mut h = Sha256::new();
    for r in routes {
        h.update(serde_json::to_vec(r).unwrap_or_default());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}

/// Type URL of route resources on the discovery stream.
pub const ROUTE_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.Route";
/// Consumers (named by username), their credentials (named `{username}/{id}`) and
/// consumer groups (by id) on the discovery stream (CONTRACT §12).
pub const CONSUMER_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.Consumer";
pub const CREDENTIAL_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.Credential";
pub const CONSUMER_GROUP_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.ConsumerGroup";
pub use crate::keyauth::SETTINGS_TYPE_URL as KEY_AUTH_SETTINGS_TYPE_URL;
/// Operator prices (named `{provider}/{model}`) on the discovery stream (CONTRACT §14).
pub const PRICE_TYPE_URL: &str = "type.googleapis.com/aigw.config.v1.Price";

/// Content hash of one resource (a route as stored): the same object gives the same
/// version everywhere.
pub fn resource_version(value: &Value) -> String {
    hex::encode(&Sha256::digest(serde_json::to_vec(value).unwrap_or_default())[..12])
}

/// The system version of a resource set, kept up to date in O(1) per change: the XOR of
/// SHA-256(type, name, version) over every resource (order-independent, and a removal
/// undoes its addition), hashed with the count. Equal sets give equal versions on every
/// replica and after every restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetHash {
    acc: [u8; 32],
    count: u64,
}

impl SetHash {
    fn mix(&mut self, type_url: &str, name: &str, version: &str) {
        let mut h = Sha256::new();
        for part in [type_url, name, version] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        for (a, b) in self.acc.iter_mut().zip(h.finalize()) {
            *a ^= b;
        }
    }

    pub fn add(&mut self, type_url: &str, name: &str, version: &str) {
        self.mix(type_url, name, version);
        self.count += 1;
    }

    pub fn remove(&mut self, type_url: &str, name: &str, version: &str) {
        self.mix(type_url, name, version);
        self.count = self.count.saturating_sub(1);
    }

    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.acc);
        h.update(self.count.to_le_bytes());
        hex::encode(&h.finalize()[..12])
    }
}

/// Errors of a routes file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot parse routes file: {0}")]
    Parse(String),
    #[error("routes[{index}] (id {id:?}): {err}")]
    Route { index: usize, id: String, err: ValidationError },
    #[error("{0}")]
    Invalid(String),
}

/// Parses a routes file (`{routes: [Route…]}`, YAML or JSON), replaces `${VAR}` and
/// `${VAR:=default}` in string values from `env`, and validates every route.
pub fn parse_routes_file(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Value>, FileError> {
    parse_routes_file_with(text, env, &|_| false)
}

/// [`parse_routes_file`], accepting the plugin names `extra` accepts (a node's own
/// plugins, see [`RouteSpec::from_json_with`]).
pub fn parse_routes_file_with(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    extra: &dyn Fn(&str) -> bool,
) -> Result<Vec<Value>, FileError> {
    parse_config_file(text, env, extra).map(|f| f.routes)
}

/// What a routes file holds: routes, and (standalone key-auth) consumers with their
/// inline `key-auth` keys and consumer groups.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigFile {
    pub routes: Vec<Value>,
    pub consumers: Vec<Value>,
    pub consumer_groups: Vec<Value>,
    /// Price entries over the default catalog (CONTRACT §14).
    pub prices: Vec<crate::prices::Price>,
}

/// Parses a routes file (`{routes: [...], consumers: [...], consumer_groups: [...]}`,
/// YAML or JSON), replaces `${VAR}` and `${VAR:=default}` in string values from `env`,
/// and validates every object and the references between them.
pub fn parse_config_file(text: &str, env: &dyn Fn(&str) -> Option<String>, extra: &dyn Fn(&str) -> bool) -> Result<ConfigFile, FileError> {
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| FileError::Parse(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| FileError::Parse(e.to_string()))?
    };
    let mut doc = match doc {
        Value::Null => serde_json::json!({"routes": []}),
        d => d,
    };
    substitute_env(&mut doc, env).map_err(FileError::Invalid)?;
    let obj = doc.as_object_mut().ok_or_else(|| FileError::Invalid("the routes file must be an object {routes: [...]}".into()))?;
    const FIELDS: [&str; 4] = ["routes", "consumers", "consumer_groups", "prices"];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FileError::Invalid(format!("unknown top-level field {k:?}; expected routes, consumers, consumer_groups or prices")));
    }
    let prices = match obj.remove("prices") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => crate::prices::parse_list("prices", &v).map_err(|e| FileError::Invalid(e.to_string()))?,
    };
    let mut list = |name: &str| match obj.remove(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(FileError::Invalid(format!("{name} must be an array"))),
    };
    let file = ConfigFile { routes: list("routes")?, consumers: list("consumers")?, consumer_groups: list("consumer_groups")?, prices };
    let mut seen = std::collections::HashSet::new();
    for (index, r) in file.routes.iter().enumerate() {
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        RouteSpec::from_json_with(r, extra).map_err(|err| FileError::Route { index, id: id.clone(), err })?;
        if !seen.insert(id.clone()) {
            return Err(FileError::Invalid(format!("routes[{index}]: duplicate route id {id:?}")));
        }
    }
    let mut groups = std::collections::HashSet::new();
    for (index, g) in file.consumer_groups.iter().enumerate() {
        let g = ConsumerGroup::from_json(g, extra).map_err(|e| FileError::Invalid(format!("consumer_groups[{index}]: {e}")))?;
        if g.id.is_empty() || !groups.insert(g.id.clone()) {
            return Err(FileError::Invalid(format!("consumer_groups[{index}]: an id, unique in the file, is required")));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (index, c) in file.consumers.iter().enumerate() {
        let c = Consumer::from_json(c, extra).map_err(|e| FileError::Invalid(format!("consumers[{index}]: {e}")))?;
        if !names.insert(c.username.clone()) {
            return Err(FileError::Invalid(format!("consumers[{index}]: duplicate username {:?}", c.username)));
        }
        if let Some(g) = c.group_id.as_ref().filter(|g| !groups.contains(*g)) {
            return Err(FileError::Invalid(format!("consumers[{index}].group_id: no consumer group {g:?} in the file")));
        }
        if c.plugins.get("key-auth").is_some_and(|k| k.get("key").is_none()) {
            return Err(FileError::Invalid(format!("consumers[{index}].plugins.key-auth.key: is required in a routes file")));
        }
    }
    Ok(file)
}

fn substitute_env(v: &mut Value, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    match v {
        Value::String(s) if s.contains("${") => *s = expand(s, env)?,
        Value::Array(a) => a.iter_mut().try_for_each(|x| substitute_env(x, env))?,
        Value::Object(o) => o.values_mut().try_for_each(|x| substitute_env(x, env))?,
        _ => {}
    }
    Ok(())
}

/// Expands `${NAME}` and `${NAME:=default}`.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":=") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid variable name {name:?} in {s:?}"));
        }
        match env(name).or_else(|| default.map(str::to_owned)) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(n: &str) -> Option<String> {
        match n {
            "KEY" => Some("sk-test".into()),
            _ => None,
        }
    }

    #[test]
    fn expand_cases() {
        assert_eq!(expand("Bearer ${KEY}", &env).unwrap(), "Bearer sk-test");
        assert_eq!(expand("${NOPE:=dflt}-${KEY}", &env).unwrap(), "dflt-sk-test");
        assert_eq!(expand("no vars $ here", &env).unwrap(), "no vars $ here");
        assert!(expand("${NOPE}", &env).unwrap_err().contains("NOPE is not set"));
        assert!(expand("${KEY", &env).unwrap_err().contains("unterminated"));
        assert!(expand("${BAD-NAME}", &env).unwrap_err().contains("invalid variable"));
    }

    const YAML: &str = r#"
routes:
  - id: chat
    uri: /anything
    plugins:
      ai-proxy:
        provider: openai
        auth:
          header:
            Authorization: "Bearer ${KEY}"
"#;

    #[test]
    fn yaml_and_json_files() {
        let r = parse_routes_file(YAML, &env).unwrap();
        assert_eq!(r[0].pointer("/plugins/ai-proxy/auth/header/Authorization").unwrap(), "Bearer sk-test");
        let j = json!({"routes": r}).to_string();
        assert_eq!(parse_routes_file(&j, &env).unwrap(), r);
        assert!(parse_routes_file("", &env).unwrap().is_empty());
    }

    #[test]
    fn file_errors() {
        assert!(matches!(parse_routes_file("routes: [", &env), Err(FileError::Parse(_))));
        assert!(matches!(parse_routes_file("{\"routes\": [}", &env), Err(FileError::Parse(_))));
        assert!(parse_routes_file("rutes: []", &env).unwrap_err().to_string().contains("unknown top-level field"));
        let dup = format!("{YAML}{}", YAML.replace("routes:\n", ""));
        assert!(parse_routes_file(&dup, &env).unwrap_err().to_string().contains("duplicate route id"));
        let bad = YAML.replace("provider: openai", "provider: nope");
        let e = parse_routes_file(&bad, &env).unwrap_err().to_string();
        assert!(e.contains("routes[0]") && e.contains("plugins.ai-proxy.provider"), "{e}");
        let missing = YAML.replace("${KEY}", "${UNSET_VAR}");
        assert!(parse_routes_file(&missing, &env).unwrap_err().to_string().contains("UNSET_VAR"));
    }

    #[test]
    fn set_hashes_are_order_independent_and_undo_removals() {
        let mut a = SetHash::default();
        let empty = a.version();
        a.add("t", "r1", "v1");
        a.add("t", "r2", "v1");
        let mut b = SetHash::default();
        b.add("t", "r2", "v1");
        b.add("t", "r1", "v1");
        assert_eq!(a.version(), b.version());
        b.remove("t", "r2", "v1");
        b.add("t", "r2", "v2");
        assert_ne!(a.version(), b.version());
        b.remove("t", "r2", "v2");
        b.remove("t", "r1", "v1");
        assert_eq!(b.version(), empty);
        // Field boundaries count: ("ab", "c") is not ("a", "bc").
        let (mut x, mut y) = (SetHash::default(), SetHash::default());
        x.add("t", "ab", "c");
        y.add("t", "a", "bc");
        assert_ne!(x.version(), y.version());
        assert_eq!(resource_version(&json!({"a": 1, "b": 2})), resource_version(&json!({"b": 2, "a": 1})));
    }

    #[test]
    fn versions_are_content_hashes() {
        let a = vec![json!({"id": "a", "uri": "/a"})];
        let b = vec![json!({"uri": "/a", "id": "a"})];
        assert_eq!(version_of(&a), version_of(&b));
        assert_ne!(version_of(&a), version_of(&[json!({"id": "a", "uri": "/b"})]));
        assert_ne!(version_of(&[]), version_of(&a));
    }
}
