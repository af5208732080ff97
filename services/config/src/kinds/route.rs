//! Routes (`routes/{id}`): the first kind, published as `aigw.config.v1.Route`.
//!
//! - A write restores secrets sent back as the redaction marker, validates the route
//!   (`RouteSpec::from_json`: one place, JSON paths in errors), refuses encrypted
//!   secrets this service cannot decrypt, and encrypts secrets with
//!   `--data-encryption-key`.
//! - Values written by others (APISIX's admin API, `etcdctl put`) are normalized first:
//!   APISIX's bookkeeping `create_time` and `update_time` are dropped and a missing `id`
//!   is taken from the key (as APISIX does). Anything else aigw does not serve — an
//!   unknown plugin, `upstream`, `service_id`, … — fails validation and is quarantined
//!   with the validation error as its reason.

use aigw_model::RouteSpec;
use aigw_model::proto_json::route_to_proto;
use aigw_model::secrets::{self, DataKey, REDACTED};
use aigw_model::snapshot::{ROUTE_TYPE_URL, resource_version};
use prost::Message as _;
use serde_json::Value;

use super::{Kind, Prepared, Published, WriteCtx};
use crate::error::ApiError;

/// APISIX's admin API adds these to every route it stores; aigw does not serve them.
const APISIX_BOOKKEEPING: [&str; 2] = ["create_time", "update_time"];

pub struct RouteKind;

/// What reads return: encrypted secrets when a key is set, else redacted.
pub fn view(stored: &Value) -> Value {
    let mut v = stored.clone();
    secrets::redact_route(&mut v);
    v
}

/// The first secret that is encrypted but cannot be decrypted with `key`.
pub fn undecryptable(v: &Value, key: Option<&DataKey>) -> Option<String> {
    let mut bad = None;
    secrets::for_each_secret(&mut v.clone(), |path, s| {
        if bad.is_none() && secrets::is_encrypted(s) {
            match key {
                None => bad = Some(format!("{path}: is encrypted but this service has no --data-encryption-key")),
                Some(k) if k.decrypt(s, path).is_err() => bad = Some(format!("{path}: cannot be decrypted with this service's key")),
                _ => {}
            }
        }
    });
    bad
}

/// Why a stored route cannot be published today, if it cannot.
pub fn unpublishable(id: &str, v: &Value, key: Option<&DataKey>) -> Option<String> {
    if v.get("id").and_then(Value::as_str) != Some(id) {
        return Some(format!("the key of route {id:?} holds id {:?}", v.get("id")));
    }
    if let Err(e) = RouteSpec::from_json(v) {
        return Some(format!("fails validation: {e}"));
    }
    undecryptable(v, key)
}

/// A secret sent back as the redaction marker keeps the stored value, at every secret
/// path (`plugins.ai-proxy.auth.…` and `plugins.ai-proxy-multi.instances[i].auth.…`),
/// so a GET → edit → PUT round trip never loses or leaks a secret.
pub fn restore_secrets(route: &mut Value, existing: Option<&Value>) -> Result<(), ApiError> {
    let mut missing = None;
    secrets::for_each_secret_at(route, |path, ptr, s| {
        if s == REDACTED && missing.is_none() {
            match existing.and_then(|e| e.pointer(ptr)).and_then(Value::as_str) {
                Some(old) => *s = old.to_owned(),
                None => missing = Some(path.to_owned()),
            }
        }
    });
    match missing {
        Some(p) => Err(ApiError::invalid(format!("{p}: is the redaction marker {REDACTED:?}; send the secret value"))),
        None => Ok(()),
    }
}

fn publish(v: &Value) -> Result<Published, String> {
    let pb = route_to_proto(v).map_err(|e| e.to_string())?;
    Ok(Published {
        version: resource_version(v),
        payload: prost_types::Any { type_url: ROUTE_TYPE_URL.to_owned(), value: pb.encode_to_vec() },
    })
}

fn strip_bookkeeping(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        for f in APISIX_BOOKKEEPING {
            o.remove(f);
        }
    }
}

impl Kind for RouteKind {
    fn plural(&self) -> &'static str {
        "routes"
    }

    fn noun(&self) -> &'static str {
        "route"
    }

    fn key_prefix(&self) -> &'static str {
        "routes/"
    }

    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix("routes/").filter(|n| !n.is_empty() && !n.contains('/'))
    }

    fn type_url(&self) -> Option<&'static str> {
        Some(ROUTE_TYPE_URL)
    }

    fn name_for_put(&self, route: &mut Value, path_id: Option<&str>) -> Result<String, ApiError> {
        let obj = route.as_object_mut().ok_or_else(|| ApiError::invalid("(root): a route must be a JSON object"))?;
        if let Some(pid) = path_id {
            self.validate_name(pid)?;
            match obj.get("id") {
                Some(Value::String(bid)) if bid != pid => {
                    let shown: String = bid.chars().take(80).collect();
                    return Err(ApiError::invalid(format!("id: {shown:?} in the body does not match {pid:?} in the path")));
                }
                Some(Value::String(_)) => {}
                Some(_) => return Err(ApiError::invalid("id: must be a string")),
                None => {
                    obj.insert("id".into(), Value::String(pid.to_owned()));
                }
            }
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(ApiError::invalid("id: must be a string")),
            None => return Err(ApiError::invalid("id: is required")),
        };
        self.validate_name(&id)?;
        Ok(id)
    }

    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        aigw_model::route::validate_id(name).map_err(|e| ApiError::invalid(e.to_string()))
    }

    fn normalize(&self, name: &str, mut stored: Value) -> Value {
        strip_bookkeeping(&mut stored);
        if let Some(o) = stored.as_object_mut()
            && !o.contains_key("id")
        {
            o.insert("id".into(), Value::String(name.to_owned()));
        }
        stored
    }

    fn prepare(&self, ctx: &WriteCtx<'_>, _name: &str, mut route: Value, existing: Option<&Value>) -> Result<Prepared, ApiError> {
        // An APISIX user's GET → edit → PUT sends them back; APISIX rewrites them on every
        // write anyway, aigw keeps none.
        strip_bookkeeping(&mut route);
        restore_secrets(&mut route, existing)?;
        RouteSpec::from_json(&route).map_err(|e| ApiError::invalid(e.to_string()))?;
        if let Some(b) = undecryptable(&route, ctx.data_key) {
            return Err(ApiError::invalid(b));
        }
        if let Some(k) = ctx.data_key {
            secrets::encrypt_route(&mut route, k);
        }
        Ok(Prepared { stored: route, answer: None, guards: Vec::new() })
    }

    fn check(&self, name: &str, stored: &Value, key: Option<&DataKey>) -> Result<Option<Published>, String> {
        if let Some(reason) = unpublishable(name, stored, key) {
            return Err(reason);
        }
        publish(stored).map(Some)
    }

    fn view(&self, stored: &Value) -> Value {
        view(stored)
    }

    fn encrypt_at_rest(&self, stored: &Value, key: &DataKey) -> Option<Value> {
        let mut v = stored.clone();
        secrets::encrypt_route(&mut v, key);
        (v != *stored).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn multi(a_key: &str, b_secret: &str) -> Value {
        json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [
            {"name": "a", "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": a_key, "x.team/id": "team-secret"}}},
            {"name": "b", "provider": "bedrock", "weight": 1, "auth": {"aws": {"access_key_id": "AKID", "secret_access_key": b_secret}}}
        ]}}})
    }

    #[test]
    fn redaction_markers_round_trip_at_every_secret_path() {
        let stored = multi("Bearer sk-a", "aws-secret-b");
        // What a read returns: markers, the secrets absent.
        let read = view(&stored);
        let text = read.to_string();
        assert_eq!(text.matches(REDACTED).count(), 3, "{text}");
        for s in ["sk-a", "team-secret", "aws-secret-b"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        // Sent back (edited elsewhere): every stored secret is kept.
        let mut back = read.clone();
        back["uri"] = json!("/edited");
        restore_secrets(&mut back, Some(&stored)).unwrap();
        let mut want = stored.clone();
        want["uri"] = json!("/edited");
        assert_eq!(back, want);
        // A new secret value replaces the stored one; the others are kept.
        let mut back = read.clone();
        back["plugins"]["ai-proxy-multi"]["instances"][1]["auth"]["aws"]["secret_access_key"] = json!("rotated");
        restore_secrets(&mut back, Some(&stored)).unwrap();
        assert_eq!(back, multi("Bearer sk-a", "rotated"));
        // ai-proxy routes too, with dotted header names.
        let ap = json!({"id": "r", "uri": "/r", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"x.key": "sk-dot"}, "query": {"k": "q-1"}}}}});
        let mut back = view(&ap);
        restore_secrets(&mut back, Some(&ap)).unwrap();
        assert_eq!(back, ap);
        // A marker where nothing is stored is an error naming the path.
        let mut fresh = read.clone();
        let e = restore_secrets(&mut fresh, None).unwrap_err();
        assert!(e.message.starts_with("plugins.ai-proxy-multi.instances[0].auth.header.Authorization"), "{}", e.message);
        let mut moved = read;
        moved["plugins"]["ai-proxy-multi"]["instances"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "c", "provider": "openai", "auth": {"query": {"key": REDACTED}}}));
        let e = restore_secrets(&mut moved, Some(&stored)).unwrap_err();
        assert!(e.message.contains("instances[2].auth.query.key") && !e.message.contains("sk-a"), "{}", e.message);
    }

    #[test]
    fn unpublishable_reasons() {
        let key = DataKey::parse(&"11".repeat(32)).unwrap();
        let other = DataKey::parse(&"22".repeat(32)).unwrap();
        let mut r = json!({"id": "r", "uri": "/r", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"k": "sk-x"}}}}});
        assert_eq!(unpublishable("r", &r, None), None);
        assert!(unpublishable("other", &r, None).unwrap().contains("holds id"));
        // APISIX's bookkeeping is dropped and a missing id comes from the key.
        let apisix = json!({"uri": "/r", "create_time": 1700000000, "update_time": 1700000001, "plugins": {}});
        assert_eq!(RouteKind.normalize("7", apisix), json!({"id": "7", "uri": "/r", "plugins": {}}));
        secrets::encrypt_route(&mut r, &other);
        assert!(unpublishable("r", &r, Some(&key)).unwrap().contains("cannot be decrypted"));
        assert!(unpublishable("r", &r, None).unwrap().contains("no --data-encryption-key"));
        assert_eq!(unpublishable("r", &r, Some(&other)), None);
        r["uri"] = json!("/\u{0}");
        assert!(unpublishable("r", &r, Some(&other)).unwrap().contains("fails validation: uri"));
    }
}
