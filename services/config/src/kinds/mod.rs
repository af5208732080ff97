//! Resource kinds: what the resource service does per kind, behind one trait.
//!
//! The service ([`crate::service`]) is generic: it stores `{kind}/{name}` → JSON,
//! commits writes in groups, builds its view from the store's feed and publishes the
//! kinds that proxies receive. A kind says how its keys look, how a write is checked and
//! turned into what is stored (secrets encrypted, keys hashed), what it needs to hold in
//! the store (guards: another resource exists, nothing of the kind changed meanwhile),
//! what a delete also deletes, what reads show, and how it is published or why it is
//! quarantined.
//!
//! Adding a kind: one `impl Kind` in its own module and one entry in [`all`]. The first
//! kind whose [`Kind::name_of`] accepts a store key owns it, so a nested kind
//! (`consumers/{u}/credentials/{id}`) comes before its parent (`consumers/{u}`).

pub mod consumer;
pub mod price;
pub mod route;

use aigw_model::secrets::DataKey;
use serde_json::Value;

use crate::error::ApiError;
use crate::store::{Guard, Op, Rev};

/// What a write sees of the stored resources: the view as it was when the group
/// started, with the group's earlier writes on top.
pub trait Lookup {
    /// A readable resource under `key`, and the revision that wrote it (None: written
    /// earlier in this group, not yet committed).
    fn get(&self, key: &str) -> Option<(&Value, Option<Rev>)>;
    /// Every readable resource whose key starts with `prefix`, in key order.
    fn scan<'a>(&'a self, prefix: &str) -> Vec<(&'a str, &'a Value)>;
    /// A guard that `key` is still as this write sees it, existing or not (readable or
    /// not). None when an earlier write of the same group made it what it is.
    fn guard(&self, key: &str) -> Option<Guard>;
    /// The keys of the readable consumers and credentials whose stored key-auth key is
    /// `hash` (an index: no scan of every consumer).
    fn key_holders(&self, hash: &str) -> Vec<String>;
}

/// The context of one write.
pub struct WriteCtx<'a> {
    pub lookup: &'a dyn Lookup,
    pub data_key: Option<&'a DataKey>,
    /// The revision the view reflects (for [`Guard::PrefixUnchangedSince`]).
    pub revision: Rev,
}

impl WriteCtx<'_> {
    /// A guard that `key` is still as this write saw it (existing or not). None when an
    /// earlier write of the same group made it what it is (the group holds it).
    pub fn unchanged(&self, key: &str) -> Option<Guard> {
        self.lookup.guard(key)
    }

    /// A guard that nothing under `prefix` changed since this view (uniqueness).
    pub fn prefix_unchanged(&self, prefix: &str) -> Guard {
        Guard::PrefixUnchangedSince { prefix: prefix.to_owned(), revision: self.revision }
    }
}

/// What a write stores, and what it needs.
pub struct Prepared {
    /// The stored form (secrets encrypted).
    pub stored: Value,
    /// What the write's answer shows instead of the read view (e.g. a generated key,
    /// shown in that answer only).
    pub answer: Option<Value>,
    /// Conditions besides "the resource itself is unchanged" (which the service adds).
    pub guards: Vec<Guard>,
}

/// What a delete does besides deleting the resource itself.
#[derive(Default)]
pub struct Removal {
    /// E.g. `DeletePrefix("consumers/bob/credentials/")`.
    pub ops: Vec<Op>,
    pub guards: Vec<Guard>,
}

/// A resource as proxies receive it.
pub struct Published {
    /// Content hash of the resource.
    pub version: String,
    pub payload: prost_types::Any,
}

pub trait Kind: Send + Sync + 'static {
    /// As in the admin API and the store: `routes`.
    fn plural(&self) -> &'static str;
    /// For messages: `route`.
    fn noun(&self) -> &'static str;
    /// The start of every key this kind may own: `routes/`.
    fn key_prefix(&self) -> &'static str;
    /// The store key of resource `name`.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix())
    }
    /// The resource name of a store key, if this kind owns the key.
    fn name_of<'k>(&self, key: &'k str) -> Option<&'k str>;
    /// Discovery type URL; None: not sent to proxies.
    fn type_url(&self) -> Option<&'static str>;
    /// The name of a PUT: from the path, the body or both (they must agree); the body
    /// gets the name where the kind stores it.
    fn name_for_put(&self, body: &mut Value, path: Option<&str>) -> Result<String, ApiError>;
    /// Whether `name` can name a resource of this kind (GET and DELETE paths).
    fn validate_name(&self, name: &str) -> Result<(), ApiError>;
    /// The form a stored value is read, checked and published in (e.g. bookkeeping
    /// fields another writer adds removed). Must be deterministic: every replica
    /// computes it from the same bytes.
    fn normalize(&self, _name: &str, stored: Value) -> Value {
        stored
    }
    /// A write: the body and the resource it replaces → what is stored.
    fn prepare(&self, ctx: &WriteCtx<'_>, name: &str, body: Value, existing: Option<&Value>) -> Result<Prepared, ApiError>;
    /// A delete: what else goes with it.
    fn removal(&self, _ctx: &WriteCtx<'_>, _name: &str) -> Result<Removal, ApiError> {
        Ok(Removal::default())
    }
    /// Whether a stored (normalized) value can be served today: Ok(the resource to
    /// publish, None for kinds proxies do not receive) or Err(why it is quarantined).
    fn check(&self, name: &str, stored: &Value, key: Option<&DataKey>) -> Result<Option<Published>, String>;
    /// What reads show (secrets redacted or encrypted).
    fn view(&self, stored: &Value) -> Value;
    /// The stored form with secrets encrypted under `key`, when it differs (the file
    /// store rewrites clear-text secrets at start).
    fn encrypt_at_rest(&self, _stored: &Value, _key: &DataKey) -> Option<Value> {
        None
    }
}

pub static ROUTES: route::RouteKind = route::RouteKind;
pub static CONSUMERS: consumer::ConsumerKind = consumer::ConsumerKind;
pub static CREDENTIALS: consumer::CredentialKind = consumer::CredentialKind;
pub static GROUPS: consumer::GroupKind = consumer::GroupKind;
pub static SETTINGS: consumer::SettingsKind = consumer::SettingsKind;
pub static PRICES: price::PriceKind = price::PriceKind;

/// Every kind, in the order keys are matched (credentials before their consumers).
pub fn all() -> &'static [&'static dyn Kind] {
    static ALL: [&dyn Kind; 6] = [&ROUTES, &CREDENTIALS, &CONSUMERS, &GROUPS, &SETTINGS, &PRICES];
    &ALL
}

/// The stored key-auth key of a consumer or credential value (`hmac-sha256:…`).
pub fn stored_key_hash(v: &Value) -> Option<&str> {
    v.pointer("/plugins/key-auth/key").and_then(Value::as_str)
}

/// Kinds a service serves, in the order keys are matched ([`all`] in production; tests
/// add kinds of their own).
pub type Registry = &'static [&'static dyn Kind];

/// The kind of `registry` that owns a store key, and the resource name.
pub fn owner(registry: Registry, key: &str) -> Option<(&'static dyn Kind, &str)> {
    registry.iter().find_map(|k| k.name_of(key).map(|n| (*k, n)))
}
