//! Consumers (`consumers/{username}`), their credentials
//! (`consumers/{username}/credentials/{id}`), consumer groups (`consumer_groups/{id}`) and
//! the key-auth settings (`settings/key-auth`, the hash key): CONTRACT §12.
//!
//! Keys are never stored or published in clear: a write replaces every `key-auth.key` by
//! `hmac-sha256:<hex>` under the store's hash key; a `key-auth` without a key gets a
//! generated one (`aigw-` + 43 base62), shown in that write's answer only; reads show
//! `******`, and a key sent back as `******` keeps the stored hash. Two credentials (or
//! inline consumer keys) with the same key are refused. A credential needs its consumer; a
//! consumer needs the group it names; deleting a consumer deletes its credentials; a group
//! a consumer still uses cannot be deleted.
//!
//! The hash key is a random key of the store, written once (the first replica to start
//! writes it; the others read it), encrypted at rest and to proxies under
//! `--data-encryption-key` when there is one. So every replica and proxy hashes alike, and
//! adding a data key later keeps every stored hash valid.

use aigw_model::consumer::{Consumer, ConsumerGroup, Credential, validate_object_id, validate_username};
use aigw_model::keyauth::{self, KeyHasher};
use aigw_model::proto_json::{consumer_to_proto, credential_to_proto, group_to_proto};
use aigw_model::secrets::{self, DataKey, REDACTED};
use aigw_model::snapshot::{CONSUMER_GROUP_TYPE_URL, CONSUMER_TYPE_URL, CREDENTIAL_TYPE_URL, KEY_AUTH_SETTINGS_TYPE_URL, resource_version};
use base64::Engine as _;
use prost::Message as _;
use serde_json::{Value, json};

use super::{Kind, Prepared, Published, Removal, WriteCtx};
use crate::error::ApiError;
use crate::store::Op;

/// The settings' store key.
pub const SETTINGS_KEY: &str = "settings/key-auth";

/// APISIX's bookkeeping fields, accepted and dropped.
const BOOKKEEPING: [&str; 2] = ["create_time", "update_time"];

fn strip(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for f in BOOKKEEPING {
            o.remove(f);
        }
    }
    v
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// The store's hash key, from the settings in the view.
fn hasher(ctx: &WriteCtx<'_>) -> Result<KeyHasher, ApiError> {
    let (v, _) = ctx.lookup.get(SETTINGS_KEY).ok_or_else(|| ApiError::internal("the key-auth settings are not initialised yet"))?;
    settings_key(v, ctx.data_key).map(|k| KeyHasher::new(&k)).map_err(ApiError::internal)
}

/// Why the stored key-auth settings give no hash key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no hash_key")]
    Missing,
    #[error("the hash key is encrypted and this service has no --data-encryption-key")]
    NoDataKey,
    #[error("hash_key: {0}")]
    Decrypt(String),
    #[error("hash_key: not 32 bytes of base64")]
    Malformed,
}

/// The 32-byte hash key of a settings value.
pub fn settings_key(v: &Value, data_key: Option<&DataKey>) -> Result<[u8; 32], SettingsError> {
    let raw = v.get("hash_key").and_then(Value::as_str).ok_or(SettingsError::Missing)?;
    let b64 = if secrets::is_encrypted(raw) {
        data_key.ok_or(SettingsError::NoDataKey)?.decrypt(raw, "hash_key").map_err(|e| SettingsError::Decrypt(e.to_string()))?
    } else {
        raw.to_owned()
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| SettingsError::Malformed)?;
    bytes.try_into().map_err(|_| SettingsError::Malformed)
}

/// A fresh settings value (a random hash key, encrypted under `data_key` when given).
pub fn new_settings(data_key: Option<&DataKey>) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(KeyHasher::random_key());
    json!({"hash_key": data_key.map_or(b64.clone(), |k| k.encrypt(&b64))})
}

/// Replaces `plugins.key-auth.key` by its hash (or keeps `existing`'s for the redaction
/// marker; generates one when missing). Returns the generated key, if any.
fn hash_key(v: &mut Value, existing: Option<&Value>, h: &KeyHasher) -> Result<Option<String>, ApiError> {
    let Some(ka) = v.pointer_mut("/plugins/key-auth").and_then(Value::as_object_mut) else { return Ok(None) };
    let (stored, generated) = match ka.get("key").and_then(Value::as_str) {
        Some(REDACTED) => match existing.and_then(|e| e.pointer("/plugins/key-auth/key")).and_then(Value::as_str) {
            Some(old) => (old.to_owned(), None),
            None => return Err(ApiError::invalid(format!("plugins.key-auth.key: is the redaction marker {REDACTED:?}; send the key"))),
        },
        Some(k) => (h.stored(k), None),
        None => {
            let k = keyauth::generate_key();
            (h.stored(&k), Some(k))
        }
    };
    ka.insert("key".into(), Value::String(stored));
    Ok(generated)
}

/// `******` where the hash is.
fn redact_key(v: &mut Value) {
    if let Some(k) = v.pointer_mut("/plugins/key-auth/key")
        && k.is_string()
    {
        *k = Value::String(REDACTED.into());
    }
}

/// The answer of a write that generated a key: the view, with the key in clear.
fn answer_with(stored: &Value, generated: Option<String>) -> Option<Value> {
    let key = generated?;
    let mut v = view(stored);
    if let Some(k) = v.pointer_mut("/plugins/key-auth/key") {
        *k = Value::String(key);
    }
    Some(v)
}

fn view(stored: &Value) -> Value {
    let mut v = stored.clone();
    redact_key(&mut v);
    secrets::redact_route(&mut v);
    v
}

/// A stored hash another consumer or credential already holds: 400, and the guard that
/// none appears meanwhile (found through the service's index of hashes, not a scan).
fn unique(ctx: &WriteCtx<'_>, me: &str, v: &Value) -> Result<Vec<crate::store::Guard>, ApiError> {
    let Some(hash) = super::stored_key_hash(v) else { return Ok(Vec::new()) };
    if let Some(other) = ctx.lookup.key_holders(hash).into_iter().find(|k| k != me) {
        let who = other.strip_prefix("consumers/").unwrap_or(&other).to_owned();
        return Err(ApiError::invalid(format!("plugins.key-auth.key: the same key is already used by {who:?}")));
    }
    Ok(vec![ctx.prefix_unchanged("consumers/")])
}

use super::route::undecryptable;

/// A stored key must be a hash: anything else (an APISIX-written clear or encrypted key)
/// is quarantined rather than published.
fn key_is_hashed(v: &Value) -> Result<(), String> {
    match v.pointer("/plugins/key-auth/key").and_then(Value::as_str) {
        Some(k) if !keyauth::is_stored_hash(k) => {
            Err("plugins.key-auth.key: not stored as aigw's keyed hash (write it through aigw)".into())
        }
        _ => Ok(()),
    }
}

fn publish(type_url: &str, v: &Value, payload: Vec<u8>) -> Published {
    Published { version: resource_version(v), payload: prost_types::Any { type_url: type_url.to_owned(), value: payload } }
}

fn encrypt(stored: &Value, key: &DataKey) -> Option<Value> {
    let mut v = stored.clone();
    secrets::encrypt_route(&mut v, key);
    (v != *stored).then_some(v)
}

fn put_name(body: &mut Value, path: Option<&str>, field: &str, check: impl Fn(&str) -> Result<(), ApiError>) -> Result<String, ApiError> {
    let obj = body.as_object_mut().ok_or_else(|| ApiError::invalid("(root): must be a JSON object"))?;
    match (path, obj.get(field)) {
        (Some(p), Some(Value::String(b))) if b != p => {
            return Err(ApiError::invalid(format!(
                "{field}: {:?} in the body does not match {p:?} in the path",
                b.chars().take(80).collect::<String>()
            )));
        }
        (_, Some(v)) if !v.is_string() => return Err(ApiError::invalid(format!("{field}: must be a string"))),
        (Some(p), None) => {
            obj.insert(field.into(), Value::String(p.to_owned()));
        }
        _ => {}
    }
    let name = obj.get(field).and_then(Value::as_str).ok_or_else(|| ApiError::invalid(format!("{field}: is required")))?.to_owned();
    check(&name)?;
    Ok(name)
}

// ---- consumers -------------------------------------------------------------------

pub struct ConsumerKind;

impl Kind for ConsumerKind {
    fn plural(&self) -> &'static str {
        "consumers"
    }
    fn noun(&self) -> &'static str {
        "consumer"
    }
    fn key_prefix(&self) -> &'static str {
        "consumers/"
    }
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix("consumers/").filter(|n| !n.is_empty() && !n.contains('/'))
    }
    fn type_url(&self) -> Option<&'static str> {
        Some(CONSUMER_TYPE_URL)
    }
    fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
        put_name(body, path, "username", |n| self.validate_name(n))
    }
    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        validate_username("username", name).map_err(invalid)
    }
    fn normalize(&self, _name: &str, stored: Value) -> Value {
        strip(stored)
    }
    fn prepare(&self, ctx: &WriteCtx<'_>, name: &str, body: Value, existing: Option<&Value>) -> Result<Prepared, ApiError> {
        let mut v = strip(body);
        super::route::restore_secrets(&mut v, existing)?;
        let c = Consumer::from_json(&v, &|_| false).map_err(invalid)?;
        let mut guards = Vec::new();
        if let Some(g) = &c.group_id {
            let key = format!("consumer_groups/{g}");
            if ctx.lookup.get(&key).is_none() {
                return Err(ApiError::invalid(format!("group_id: consumer group {g:?} does not exist")));
            }
            guards.extend(ctx.unchanged(&key));
        }
        let generated = hash_key(&mut v, existing, &hasher(ctx)?)?;
        guards.extend(unique(ctx, &format!("consumers/{name}"), &v)?);
        if let Some(b) = undecryptable(&v, ctx.data_key) {
            return Err(ApiError::invalid(b));
        }
        if let Some(k) = ctx.data_key {
            secrets::encrypt_route(&mut v, k);
        }
        Ok(Prepared { answer: answer_with(&v, generated), stored: v, guards })
    }
    fn removal(&self, _ctx: &WriteCtx<'_>, name: &str) -> Result<Removal, ApiError> {
        Ok(Removal { ops: vec![Op::DeletePrefix { prefix: format!("consumers/{name}/credentials/") }], guards: Vec::new() })
    }
    fn check(&self, name: &str, stored: &Value, key: Option<&DataKey>) -> Result<Option<Published>, String> {
        let c = Consumer::from_json(stored, &|_| false).map_err(|e| format!("fails validation: {e}"))?;
        if c.username != name {
            return Err(format!("the key of consumer {name:?} holds username {:?}", c.username));
        }
        key_is_hashed(stored)?;
        if let Some(b) = undecryptable(stored, key) {
            return Err(b);
        }
        let pb = consumer_to_proto(stored).map_err(|e| e.to_string())?;
        Ok(Some(publish(CONSUMER_TYPE_URL, stored, pb.encode_to_vec())))
    }
    fn view(&self, stored: &Value) -> Value {
        view(stored)
    }
    fn encrypt_at_rest(&self, stored: &Value, key: &DataKey) -> Option<Value> {
        encrypt(stored, key)
    }
}

// ---- credentials -------------------------------------------------------------------

pub struct CredentialKind;

impl CredentialKind {
    /// `{u}/credentials/{id}` → (`u`, `id`).
    pub fn split(name: &str) -> Option<(&str, &str)> {
        let (u, id) = name.split_once("/credentials/")?;
        (!u.is_empty() && !u.contains('/') && !id.is_empty() && !id.contains('/')).then_some((u, id))
    }

    /// The name of credential `id` of consumer `u`.
    pub fn name(u: &str, id: &str) -> String {
        format!("{u}/credentials/{id}")
    }
}

/// A credential is named by its key without `consumers/`: `{username}/credentials/{id}`.
impl Kind for CredentialKind {
    fn plural(&self) -> &'static str {
        "credentials"
    }
    fn noun(&self) -> &'static str {
        "credential"
    }
    fn key_prefix(&self) -> &'static str {
        "consumers/"
    }
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix("consumers/").filter(|n| Self::split(n).is_some())
    }
    fn type_url(&self) -> Option<&'static str> {
        Some(CREDENTIAL_TYPE_URL)
    }
    /// The name comes from the path (`{username}/{id}`); the body's `id` must agree.
    fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
        let name = path.ok_or_else(|| ApiError::invalid("a credential is put at /consumers/{username}/credentials/{id}"))?;
        self.validate_name(name)?;
        let (_, id) = Self::split(name).ok_or_else(|| ApiError::invalid("id: is required"))?;
        put_name(body, Some(id), "id", |_| Ok(()))?;
        Ok(name.to_owned())
    }
    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        let (u, id) = Self::split(name).ok_or_else(|| ApiError::invalid("a credential is named {username}/credentials/{id}"))?;
        validate_username("username", u).map_err(invalid)?;
        validate_object_id("id", id).map_err(invalid)
    }
    fn normalize(&self, name: &str, stored: Value) -> Value {
        let mut v = strip(stored);
        if let (Some(o), Some((_, id))) = (v.as_object_mut(), Self::split(name))
            && !o.contains_key("id")
        {
            o.insert("id".into(), Value::String(id.to_owned()));
        }
        v
    }
    fn prepare(&self, ctx: &WriteCtx<'_>, name: &str, body: Value, existing: Option<&Value>) -> Result<Prepared, ApiError> {
        let (user, _) = Self::split(name).ok_or_else(|| ApiError::invalid("a credential is named {username}/credentials/{id}"))?;
        let consumer = format!("consumers/{user}");
        if ctx.lookup.get(&consumer).is_none() {
            return Err(ApiError::invalid(format!("username: consumer {user:?} does not exist")));
        }
        let mut v = strip(body);
        Credential::from_json(&v).map_err(invalid)?;
        let mut guards: Vec<_> = ctx.unchanged(&consumer).into_iter().collect();
        let generated = hash_key(&mut v, existing, &hasher(ctx)?)?;
        guards.extend(unique(ctx, &self.key(name), &v)?);
        Ok(Prepared { answer: answer_with(&v, generated), stored: v, guards })
    }
    fn check(&self, name: &str, stored: &Value, _key: Option<&DataKey>) -> Result<Option<Published>, String> {
        Credential::from_json(stored).map_err(|e| format!("fails validation: {e}"))?;
        key_is_hashed(stored)?;
        let (user, _) = Self::split(name).ok_or("not named {username}/credentials/{id}")?;
        let pb = credential_to_proto(user, stored).map_err(|e| e.to_string())?;
        Ok(Some(publish(CREDENTIAL_TYPE_URL, stored, pb.encode_to_vec())))
    }
    fn view(&self, stored: &Value) -> Value {
        view(stored)
    }
}

// ---- consumer groups -----------------------------------------------------------------

pub struct GroupKind;

impl Kind for GroupKind {
    fn plural(&self) -> &'static str {
        "consumer_groups"
    }
    fn noun(&self) -> &'static str {
        "consumer group"
    }
    fn key_prefix(&self) -> &'static str {
        "consumer_groups/"
    }
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix("consumer_groups/").filter(|n| !n.is_empty() && !n.contains('/'))
    }
    fn type_url(&self) -> Option<&'static str> {
        Some(CONSUMER_GROUP_TYPE_URL)
    }
    fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
        put_name(body, path, "id", |n| self.validate_name(n))
    }
    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        validate_object_id("id", name).map_err(invalid)
    }
    fn normalize(&self, name: &str, stored: Value) -> Value {
        let mut v = strip(stored);
        if let Some(o) = v.as_object_mut()
            && !o.contains_key("id")
        {
            o.insert("id".into(), Value::String(name.to_owned()));
        }
        v
    }
    fn prepare(&self, ctx: &WriteCtx<'_>, _name: &str, body: Value, existing: Option<&Value>) -> Result<Prepared, ApiError> {
        let mut v = strip(body);
        super::route::restore_secrets(&mut v, existing)?;
        ConsumerGroup::from_json(&v, &|_| false).map_err(invalid)?;
        if let Some(b) = undecryptable(&v, ctx.data_key) {
            return Err(ApiError::invalid(b));
        }
        if let Some(k) = ctx.data_key {
            secrets::encrypt_route(&mut v, k);
        }
        Ok(Prepared { stored: v, answer: None, guards: Vec::new() })
    }
    fn removal(&self, ctx: &WriteCtx<'_>, name: &str) -> Result<Removal, ApiError> {
        let users: Vec<String> = ctx
            .lookup
            .scan("consumers/")
            .into_iter()
            .filter(|(k, v)| !k["consumers/".len()..].contains('/') && v.get("group_id").and_then(Value::as_str) == Some(name))
            .map(|(k, _)| k["consumers/".len()..].to_owned())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::invalid(format!("consumer group {name:?} is still used by consumers {users:?}")));
        }
        Ok(Removal { ops: Vec::new(), guards: vec![ctx.prefix_unchanged("consumers/")] })
    }
    fn check(&self, name: &str, stored: &Value, key: Option<&DataKey>) -> Result<Option<Published>, String> {
        let g = ConsumerGroup::from_json(stored, &|_| false).map_err(|e| format!("fails validation: {e}"))?;
        if !g.id.is_empty() && g.id != name {
            return Err(format!("the key of consumer group {name:?} holds id {:?}", g.id));
        }
        if let Some(b) = undecryptable(stored, key) {
            return Err(b);
        }
        let mut with_id = stored.clone();
        if let Some(o) = with_id.as_object_mut() {
            o.insert("id".into(), Value::String(name.to_owned()));
        }
        let pb = group_to_proto(&with_id).map_err(|e| e.to_string())?;
        Ok(Some(publish(CONSUMER_GROUP_TYPE_URL, &with_id, pb.encode_to_vec())))
    }
    fn view(&self, stored: &Value) -> Value {
        view(stored)
    }
    fn encrypt_at_rest(&self, stored: &Value, key: &DataKey) -> Option<Value> {
        encrypt(stored, key)
    }
}

// ---- key-auth settings ------------------------------------------------------------------

pub struct SettingsKind;

impl Kind for SettingsKind {
    fn plural(&self) -> &'static str {
        "settings"
    }
    fn noun(&self) -> &'static str {
        "setting"
    }
    fn key_prefix(&self) -> &'static str {
        "settings/"
    }
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        (key == SETTINGS_KEY).then_some("key-auth")
    }
    fn type_url(&self) -> Option<&'static str> {
        Some(KEY_AUTH_SETTINGS_TYPE_URL)
    }
    fn name_for_put(&self, _body: &mut Value, path: Option<&str>) -> Result<String, ApiError> {
        Ok(path.unwrap_or("key-auth").to_owned())
    }
    fn validate_name(&self, name: &str) -> Result<(), ApiError> {
        if name == "key-auth" { Ok(()) } else { Err(ApiError::invalid("only key-auth")) }
    }
    /// Written once: a later write (another replica starting) keeps the first hash key,
    /// so no stored hash ever becomes unusable.
    fn prepare(&self, ctx: &WriteCtx<'_>, _name: &str, body: Value, existing: Option<&Value>) -> Result<Prepared, ApiError> {
        let stored = existing.cloned().unwrap_or(body);
        settings_key(&stored, ctx.data_key).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(Prepared { stored, answer: Some(json!({"hash_key": REDACTED})), guards: Vec::new() })
    }
    fn check(&self, _name: &str, stored: &Value, key: Option<&DataKey>) -> Result<Option<Published>, String> {
        settings_key(stored, key).map_err(|e| e.to_string())?;
        let raw = stored.get("hash_key").and_then(Value::as_str).unwrap_or_default().to_owned();
        let pb = aigw_proto::config::v1::KeyAuthSettings { hash_key: raw };
        Ok(Some(publish(KEY_AUTH_SETTINGS_TYPE_URL, stored, pb.encode_to_vec())))
    }
    fn view(&self, _stored: &Value) -> Value {
        json!({"hash_key": REDACTED})
    }
    fn encrypt_at_rest(&self, stored: &Value, key: &DataKey) -> Option<Value> {
        let raw = stored.get("hash_key").and_then(Value::as_str)?;
        (!secrets::is_encrypted(raw)).then(|| json!({"hash_key": key.encrypt(raw)}))
    }
}
