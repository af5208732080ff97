//! Conversions between the proto `Route` and its JSON object form (they are the
//! same object: proto3 JSON of a Route equals the REST/file JSON).

use std::collections::BTreeMap;

use aigw_proto::config::v1 as pb;
use prost_types::{ListValue, Struct, value::Kind};
use serde_json::{Map, Number, Value};

use crate::consumer::{Consumer, ConsumerGroup, Credential};
use crate::route::{Route, ValidationError};

pub fn prost_to_json(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => list_to_json(l),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Protobuf numbers are doubles: integral values become JSON integers again.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null)
    }
}

pub fn list_to_json(l: &ListValue) -> Value {
    Value::Array(l.values.iter().map(prost_to_json).collect())
}

pub fn struct_to_json(s: &Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), prost_to_json(v))).collect::<Map<_, _>>())
}

pub fn json_to_prost(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue { values: a.iter().map(json_to_prost).collect() }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(o: &Map<String, Value>) -> Struct {
    Struct { fields: o.iter().map(|(k, v)| (k.clone(), json_to_prost(v))).collect::<BTreeMap<_, _>>() }
}

/// Proto route → JSON object (only the fields that are set).
pub fn route_from_proto(r: &pb::Route) -> Value {
    let route = Route {
        id: r.id.clone(),
        name: r.name.clone(),
        desc: r.desc.clone(),
        uri: r.uri.clone(),
        uris: r.uris.clone(),
        methods: r.methods.clone(),
        host: r.host.clone(),
        hosts: r.hosts.clone(),
        vars: r.vars.as_ref().map(list_to_json),
        priority: r.priority,
        plugins: r.plugins.iter().map(|(k, v)| (k.clone(), struct_to_json(v))).collect(),
        labels: r.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        status: r.status.map(|s| s.clamp(0, 255) as u8),
    };
    serde_json::to_value(route).unwrap_or(Value::Null)
}

/// JSON route object → proto route. The JSON must already be a valid route.
pub fn route_to_proto(v: &Value) -> Result<pb::Route, ValidationError> {
    let r: Route = serde_json::from_value(v.clone()).map_err(|e| ValidationError::new("(root)", e.to_string()))?;
    Ok(pb::Route {
        id: r.id,
        name: r.name,
        desc: r.desc,
        uri: r.uri,
        uris: r.uris,
        methods: r.methods,
        host: r.host,
        hosts: r.hosts,
        vars: match r.vars {
            Some(Value::Array(a)) => Some(ListValue { values: a.iter().map(json_to_prost).collect() }),
            _ => None,
        },
        priority: r.priority,
        plugins: r
            .plugins
            .iter()
            .map(|(k, v)| (k.clone(), json_to_struct(v.as_object().cloned().as_ref().unwrap_or(&Map::new()))))
            .collect(),
        labels: r.labels.into_iter().collect(),
        status: r.status.map(i32::from),
    })
}

fn plugins_to_proto(p: &BTreeMap<String, Value>) -> std::collections::HashMap<String, Struct> {
    p.iter().map(|(k, v)| (k.clone(), json_to_struct(v.as_object().cloned().as_ref().unwrap_or(&Map::new())))).collect()
}

fn plugins_from_proto(p: &std::collections::HashMap<String, Struct>) -> BTreeMap<String, Value> {
    p.iter().map(|(k, v)| (k.clone(), struct_to_json(v))).collect()
}

fn bad(e: serde_json::Error) -> ValidationError {
    ValidationError::new("(root)", e.to_string())
}

fn secs(t: Option<i64>) -> Option<u64> {
    t.and_then(|t| u64::try_from(t).ok())
}

/// JSON consumer (as stored or read) → proto.
pub fn consumer_to_proto(v: &Value) -> Result<pb::Consumer, ValidationError> {
    let c: Consumer = serde_json::from_value(v.clone()).map_err(bad)?;
    Ok(pb::Consumer {
        username: c.username,
        desc: c.desc,
        labels: c.labels.into_iter().collect(),
        group_id: c.group_id.unwrap_or_default(),
        plugins: plugins_to_proto(&c.plugins),
        create_time: c.create_time.map(|t| t as i64),
        update_time: c.update_time.map(|t| t as i64),
    })
}

pub fn consumer_from_proto(c: &pb::Consumer) -> Value {
    let v = Consumer {
        username: c.username.clone(),
        desc: c.desc.clone(),
        labels: c.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        group_id: (!c.group_id.is_empty()).then(|| c.group_id.clone()),
        plugins: plugins_from_proto(&c.plugins),
        create_time: secs(c.create_time),
        update_time: secs(c.update_time),
    };
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// JSON credential of consumer `username` → proto.
pub fn credential_to_proto(username: &str, v: &Value) -> Result<pb::Credential, ValidationError> {
    let c: Credential = serde_json::from_value(v.clone()).map_err(bad)?;
    Ok(pb::Credential {
        id: c.id,
        username: username.to_owned(),
        desc: c.desc,
        labels: c.labels.into_iter().collect(),
        plugins: plugins_to_proto(&c.plugins),
        name: c.name,
        create_time: c.create_time.map(|t| t as i64),
        update_time: c.update_time.map(|t| t as i64),
    })
}

/// Proto credential → (its consumer's username, the JSON object).
pub fn credential_from_proto(c: &pb::Credential) -> (String, Value) {
    let v = Credential {
        id: c.id.clone(),
        name: c.name.clone(),
        desc: c.desc.clone(),
        labels: c.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        plugins: plugins_from_proto(&c.plugins),
        create_time: secs(c.create_time),
        update_time: secs(c.update_time),
    };
    (c.username.clone(), serde_json::to_value(v).unwrap_or(Value::Null))
}

pub fn group_to_proto(v: &Value) -> Result<pb::ConsumerGroup, ValidationError> {
    let g: ConsumerGroup = serde_json::from_value(v.clone()).map_err(bad)?;
    Ok(pb::ConsumerGroup {
        id: g.id,
        desc: g.desc,
        labels: g.labels.into_iter().collect(),
        plugins: plugins_to_proto(&g.plugins),
        create_time: g.create_time.map(|t| t as i64),
        update_time: g.update_time.map(|t| t as i64),
    })
}

pub fn group_from_proto(g: &pb::ConsumerGroup) -> Value {
    let v = ConsumerGroup {
        id: g.id.clone(),
        desc: g.desc.clone(),
        labels: g.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        plugins: plugins_from_proto(&g.plugins),
        create_time: secs(g.create_time),
        update_time: secs(g.update_time),
    };
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn price_to_proto(p: &crate::prices::Price) -> pb::Price {
    pb::Price {
        provider: p.provider.clone(),
        model: p.model.clone(),
        input: p.input,
        output: p.output,
        cache_read: p.cache_read,
        cache_write: p.cache_write,
    }
}

/// Proto price → its JSON object (validated by the caller).
pub fn price_from_proto(p: &pb::Price) -> Value {
    serde_json::json!({"provider": p.provider, "model": p.model, "input": p.input, "output": p.output,
        "cache_read": p.cache_read, "cache_write": p.cache_write})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_round_trip() {
        let v = json!({"id": "r1", "uri": "/v1/*", "methods": ["POST"], "priority": 3,
            "vars": [["post_arg.model", "==", "gpt"], ["http_x", ">", 1.5]],
            "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"a": "b"}}, "timeout": 30000,
                "options": {"temperature": 0.5, "stream": true, "stop": null}}},
            "labels": {"team": "ml"}, "status": 1});
        let p = route_to_proto(&v).unwrap();
        assert_eq!(route_from_proto(&p), v);
    }

    #[test]
    fn consumer_objects_round_trip() {
        let c = json!({"username": "team-a", "desc": "d", "labels": {"t": "a"}, "group_id": "gold",
            "plugins": {"key-auth": {"key": "hmac-sha256:00"}}, "create_time": 1700000000});
        assert_eq!(consumer_from_proto(&consumer_to_proto(&c).unwrap()), c);
        let cred = json!({"id": "ci", "desc": "d", "plugins": {"key-auth": {"key": "hmac-sha256:00"}}});
        assert_eq!(credential_from_proto(&credential_to_proto("team-a", &cred).unwrap()), ("team-a".to_owned(), cred));
        let g = json!({"id": "gold", "plugins": {}});
        assert_eq!(group_from_proto(&group_to_proto(&g).unwrap()), g);
    }
}
