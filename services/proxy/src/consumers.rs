//! Consumers, credentials and consumer groups compiled for the data plane (CONTRACT §12),
//! kept beside the routes of a snapshot and updated incrementally like them: a consumer
//! or group whose resource version did not change keeps its compiled form. The by-name
//! table ([`Consumers::by_name`]) is the set itself (a delta clones it, pointer copies);
//! the by-key-hash table is rebuilt from it whenever anything changes.
//!
//! Keys arrive from aigw-config as keyed hashes (`hmac-sha256:…`) with the hash key in
//! the key-auth settings resource. A routes file (standalone) holds keys in clear: they
//! are hashed here with a hash key of the process's own and forgotten.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aigw_model::consumer::{Consumer as ConsumerSpec, ConsumerGroup, Credential};
use aigw_model::keyauth::{self, KeyHasher};
use aigw_model::secrets::{self, DataKey};
use serde_json::Value;

use crate::compiled::CompileCtx;
use crate::phases::{Consumer, Consumers, Held, Identity, Plugin, PluginEnv, Scope};

/// What kind of consumer resource a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Consumer,
    /// Named `{username}/{id}`.
    Credential,
    Group,
    /// The key-auth settings (the hash key); one resource.
    Settings,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Consumer => "consumer",
            Kind::Credential => "credential",
            Kind::Group => "consumer group",
            Kind::Settings => "key-auth settings",
        }
    }
}

/// One consumer resource of an update; `value` None removes it.
#[derive(Debug)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub value: Option<Value>,
}

/// A resource as received, for `/config_dump` and the snapshot cache.
#[derive(Debug)]
pub struct Source {
    pub version: String,
    /// Compact JSON as received (keys hashed).
    pub source: Box<str>,
}

#[derive(Debug)]
struct GroupEntry {
    src: Source,
    plugins: Arc<[Arc<dyn Plugin>]>,
}

/// A resource's JSON as kept: held, or rebuilt.
pub struct SourceRef<'a> {
    pub version: &'a str,
    pub source: std::borrow::Cow<'a, str>,
}

impl Consumer {
    /// The consumer's resource as received (its key hashed).
    fn source(&self) -> std::borrow::Cow<'_, str> {
        match &self.held.source {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(self.rebuilt().to_string()),
        }
    }

    fn value(&self) -> Value {
        match &self.held.source {
            Some(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            None => self.rebuilt(),
        }
    }

    /// The JSON of a consumer that is its name, group, key and times only.
    fn rebuilt(&self) -> Value {
        rebuild(&self.identity.name, self.identity.group.as_deref(), &self.held)
    }
}

fn rebuild(name: &str, group: Option<&str>, held: &Held) -> Value {
    let mut plugins = BTreeMap::new();
    if let Some(h) = held.key {
        plugins.insert("key-auth".to_owned(), serde_json::json!({"key": format!("{}{}", keyauth::HASH_PREFIX, hex::encode(h))}));
    }
    let spec = ConsumerSpec {
        username: name.to_owned(),
        group_id: group.map(str::to_owned),
        plugins,
        create_time: held.create_time,
        update_time: held.update_time,
        ..ConsumerSpec::default()
    };
    serde_json::to_value(spec).unwrap_or(Value::Null)
}

#[derive(Debug)]
struct CredentialEntry {
    src: Source,
    consumer: Arc<str>,
    key: Option<[u8; 32]>,
}

/// Every consumer resource of a snapshot, compiled, and the tables requests look in.
#[derive(Debug, Default)]
pub struct ConsumerSet {
    credentials: BTreeMap<Arc<str>, Arc<CredentialEntry>>,
    groups: BTreeMap<Arc<str>, Arc<GroupEntry>>,
    settings: Option<Arc<Source>>,
    /// What requests see; its `by_name` is the set's consumers.
    pub table: Consumers,
}

/// Why consumer resources do not compile (the update is NACKed whole).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("{kind} {name:?}: {message}")]
    Invalid { kind: &'static str, name: String, message: String },
}

fn invalid(kind: Kind, name: &str, message: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Invalid { kind: kind.noun(), name: name.to_owned(), message: message.to_string() }
}

/// The hash of a stored key, hashing a clear one (routes files) with `hasher`.
fn key_hash(v: &Value, hasher: Option<&KeyHasher>) -> Result<Option<[u8; 32]>, String> {
    let Some(key) = v.pointer("/plugins/key-auth/key").and_then(Value::as_str) else { return Ok(None) };
    if let Some(h) = keyauth::parse_stored(key) {
        return Ok(Some(h));
    }
    match hasher {
        Some(h) => Ok(Some(h.hash(key.as_bytes()))),
        None => Err("plugins.key-auth.key: a key in clear and no hash key to hash it with".into()),
    }
}

/// `v` with its `key-auth` key replaced by the key's hash (the form kept and shown).
fn hashed_source(mut v: Value, hash: Option<[u8; 32]>) -> Value {
    if let (Some(h), Some(k)) = (hash, v.pointer_mut("/plugins/key-auth/key")) {
        *k = Value::String(format!("{}{}", keyauth::HASH_PREFIX, hex::encode(h)));
    }
    v
}

/// The plugins that run for a caller: everything but its credentials.
fn runnable(plugins: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    plugins.iter().filter(|(k, _)| *k != "key-auth").map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl ConsumerSet {
    pub fn is_empty(&self) -> bool {
        self.table.by_name.is_empty() && self.credentials.is_empty() && self.groups.is_empty() && self.settings.is_none()
    }

    /// `prev` with `changes` applied (a full set replaces everything). The hash key comes
    /// from the settings resource, else `file_hasher` (a routes file's keys in clear).
    pub fn apply(
        prev: &ConsumerSet,
        full_state: bool,
        changes: Vec<Change>,
        ctx: &CompileCtx<'_>,
        file_hasher: Option<&KeyHasher>,
    ) -> Result<ConsumerSet, ConsumerError> {
        let mut next = if full_state {
            ConsumerSet::default()
        } else {
            ConsumerSet {
                credentials: prev.credentials.clone(),
                groups: prev.groups.clone(),
                settings: prev.settings.clone(),
                table: Consumers { by_name: prev.table.by_name.clone(), ..Consumers::default() },
            }
        };
        let mut hasher = if full_state { None } else { prev.table.hasher.clone() };
        let source = |v: &Value, version: &str| Source { version: version.to_owned(), source: v.to_string().into_boxed_str() };
        // Settings first: the keys below may need the hash key.
        for c in changes.iter().filter(|c| c.kind == Kind::Settings) {
            match &c.value {
                Some(v) => {
                    hasher = Some(settings_hasher(v, ctx.key).map_err(|m| invalid(Kind::Settings, &c.name, m))?);
                    next.settings = Some(Arc::new(source(v, &c.version)));
                }
                None => {
                    hasher = None;
                    next.settings = None;
                }
            }
        }
        let hasher = hasher.or_else(|| file_hasher.cloned());
        let extra = |n: &str| ctx.plugins.knows(n);
        let mut changed_groups = Vec::new();
        for c in changes.iter().filter(|c| c.kind == Kind::Group) {
            let name: Arc<str> = Arc::from(c.name.as_str());
            changed_groups.push(name.clone());
            let Some(v) = &c.value else {
                next.groups.remove(&name);
                continue;
            };
            if prev.groups.get(&name).is_some_and(|g| g.src.version == c.version) && !full_state {
                continue;
            }
            let g = ConsumerGroup::from_json(v, &extra).map_err(|e| invalid(Kind::Group, &c.name, e))?;
            let env = PluginEnv { scope: Scope::Group(&c.name), route: None, resources: ctx.resources };
            let plugins = ctx.plugins.compile_all(&runnable(&g.plugins), &env).map_err(|e| invalid(Kind::Group, &c.name, e))?;
            next.groups.insert(name, Arc::new(GroupEntry { src: source(v, &c.version), plugins: Arc::from(plugins) }));
        }
        let empty: Arc<[Arc<dyn Plugin>]> = Arc::from(Vec::new());
        for c in changes.iter().filter(|c| c.kind == Kind::Consumer) {
            let Some(v) = &c.value else {
                next.table.by_name.remove(c.name.as_str());
                continue;
            };
            if !full_state
                && prev.table.by_name.get(c.name.as_str()).is_some_and(|e| *e.held.version == *c.version)
                && !changed_groups_hit(&next, &c.name, &changed_groups)
            {
                continue;
            }
            // The name is allocated once: the map's key and the identity share it.
            let name = match next.table.by_name.get_key_value(c.name.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(c.name.as_str()),
            };
            let compiled = compile_consumer(&name, v, &c.version, &next.groups, hasher.as_ref(), ctx, &empty)?;
            next.table.by_name.insert(name, Arc::new(compiled));
        }
        // Consumers of a changed group are compiled again (their merged plugins change).
        if !changed_groups.is_empty() {
            let stale: Vec<Arc<str>> = next
                .table
                .by_name
                .iter()
                .filter(|(n, e)| {
                    e.identity.group.as_ref().is_some_and(|g| changed_groups.contains(g))
                        && !changes.iter().any(|c| c.kind == Kind::Consumer && *c.name == ***n)
                })
                .map(|(n, _)| n.clone())
                .collect();
            for name in stale {
                let e = next.table.by_name[&name].clone();
                let v = e.value();
                let compiled = compile_consumer(&name, &v, &e.held.version, &next.groups, hasher.as_ref(), ctx, &empty)?;
                next.table.by_name.insert(name, Arc::new(compiled));
            }
        }
        for c in changes.iter().filter(|c| c.kind == Kind::Credential) {
            let name: Arc<str> = Arc::from(c.name.as_str());
            let Some(v) = &c.value else {
                next.credentials.remove(&name);
                continue;
            };
            let Some((user, _)) = c.name.split_once('/') else {
                return Err(invalid(Kind::Credential, &c.name, "is not named {username}/{id}"));
            };
            Credential::from_json(v).map_err(|e| invalid(Kind::Credential, &c.name, e))?;
            let key = key_hash(v, hasher.as_ref()).map_err(|m| invalid(Kind::Credential, &c.name, m))?;
            let src = source(&hashed_source(v.clone(), key), &c.version);
            next.credentials.insert(name, Arc::new(CredentialEntry { src, consumer: Arc::from(user), key }));
        }
        next.table.by_key = next.key_table();
        next.table.hasher = hasher;
        Ok(next)
    }

    /// The key table, from the compiled consumers. A key held by two consumers (the
    /// config service refuses that) goes to the first by name, logged.
    fn key_table(&self) -> HashMap<[u8; 32], Arc<Consumer>> {
        let by_name = &self.table.by_name;
        let mut by_key: HashMap<[u8; 32], Arc<Consumer>> = HashMap::with_capacity(by_name.len() + self.credentials.len());
        let mut insert = |hash: [u8; 32], c: &Arc<Consumer>, what: &str| {
            if let Some(prev) = by_key.get(&hash)
                && !Arc::ptr_eq(prev, c)
            {
                tracing::warn!(consumer = %c.identity.name, other = %prev.identity.name, "{what}: a key another consumer holds is ignored");
                return;
            }
            by_key.insert(hash, c.clone());
        };
        for c in by_name.values() {
            if let Some(h) = c.held.key {
                insert(h, c, "consumer key-auth");
            }
        }
        for (name, e) in &self.credentials {
            match (e.key, by_name.get(&e.consumer)) {
                (Some(h), Some(c)) => insert(h, c, "credential"),
                (_, None) => tracing::warn!(credential = %name, "credential of a consumer that does not exist: ignored"),
                (None, _) => {}
            }
        }
        by_key
    }

    /// Consumers, credentials and groups for `/config_dump` (keys are hashes; other
    /// secrets redacted).
    pub fn dump(&self) -> Value {
        let list = |it: &mut dyn Iterator<Item = &Source>| -> Vec<Value> {
            it.map(|s| {
                let mut v: Value = serde_json::from_str(&s.source).unwrap_or(Value::Null);
                secrets::redact_all(&mut v);
                v
            })
            .collect()
        };
        let credentials: Vec<Value> = self
            .credentials
            .iter()
            .map(|(name, e)| {
                let mut v: Value = serde_json::from_str(&e.src.source).unwrap_or(Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("username".into(), Value::String(e.consumer.to_string()));
                    o.entry("id").or_insert_with(|| Value::String(name.split_once('/').map_or("", |(_, id)| id).to_owned()));
                }
                v
            })
            .collect();
        let consumers: Vec<Value> = self
            .table
            .by_name
            .values()
            .map(|c| {
                let mut v = c.value();
                secrets::redact_all(&mut v);
                v
            })
            .collect();
        serde_json::json!({
            "consumers": consumers,
            "credentials": credentials,
            "consumer_groups": list(&mut self.groups.values().map(|e| &e.src)),
        })
    }

    /// Every resource as received: (kind, name, version, JSON), for the snapshot cache.
    pub fn sources(&self) -> Vec<(Kind, &str, SourceRef<'_>)> {
        fn held(s: &Source) -> SourceRef<'_> {
            SourceRef { version: &s.version, source: std::borrow::Cow::Borrowed(&*s.source) }
        }
        let mut out: Vec<(Kind, &str, SourceRef<'_>)> = Vec::new();
        out.extend(self.settings.iter().map(|s| (Kind::Settings, "key-auth", held(s))));
        out.extend(self.groups.iter().map(|(n, e)| (Kind::Group, &**n, held(&e.src))));
        out.extend(
            self.table.by_name.iter().map(|(n, c)| (Kind::Consumer, &**n, SourceRef { version: &c.held.version, source: c.source() })),
        );
        out.extend(self.credentials.iter().map(|(n, e)| (Kind::Credential, &**n, held(&e.src))));
        out
    }
}

/// Whether consumer `name`'s group is among `changed`.
fn changed_groups_hit(set: &ConsumerSet, name: &str, changed: &[Arc<str>]) -> bool {
    set.table.by_name.get(name).and_then(|e| e.identity.group.as_ref()).is_some_and(|g| changed.contains(g))
}

/// The key-auth settings: the hash key, base64, encrypted under the data key when the
/// config service has one.
fn settings_hasher(v: &Value, key: Option<&DataKey>) -> Result<KeyHasher, String> {
    let raw = v.get("hash_key").and_then(Value::as_str).ok_or("no hash_key")?;
    let b64 = if secrets::is_encrypted(raw) {
        let k = key.ok_or("the hash key is encrypted and this node has no --data-encryption-key")?;
        k.decrypt(raw, "hash_key").map_err(|e| e.to_string())?
    } else {
        raw.to_owned()
    };
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| "hash_key: not base64")?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| "hash_key: not 32 bytes")?;
    Ok(KeyHasher::new(&arr))
}

/// `empty`: the plugin list shared by every consumer without plugins.
fn compile_consumer(
    name: &Arc<str>,
    v: &Value,
    version: &str,
    groups: &BTreeMap<Arc<str>, Arc<GroupEntry>>,
    hasher: Option<&KeyHasher>,
    ctx: &CompileCtx<'_>,
    empty: &Arc<[Arc<dyn Plugin>]>,
) -> Result<Consumer, ConsumerError> {
    let spec = ConsumerSpec::from_json(v, &|n| ctx.plugins.knows(n)).map_err(|e| invalid(Kind::Consumer, name, e))?;
    if spec.username != **name {
        return Err(invalid(Kind::Consumer, name, format!("the resource holds consumer {:?}", spec.username)));
    }
    let key = key_hash(v, hasher).map_err(|m| invalid(Kind::Consumer, name, m))?;
    let env = PluginEnv { scope: Scope::Consumer(name), route: None, resources: ctx.resources };
    let mut plugins = ctx.plugins.compile_all(&runnable(&spec.plugins), &env).map_err(|e| invalid(Kind::Consumer, name, e))?;
    // A group's name is allocated once, by the group (when it exists).
    let group: Option<Arc<str>> =
        spec.group_id.as_deref().map(|g| groups.get_key_value(g).map_or_else(|| Arc::from(g), |(k, _)| k.clone()));
    if let Some(g) = &group {
        match groups.get(g) {
            // The consumer's own plugins win over its group's.
            Some(ge) => {
                plugins.extend(ge.plugins.iter().filter(|p| !plugins.iter().any(|o| o.name() == p.name())).cloned().collect::<Vec<_>>())
            }
            None => tracing::warn!(consumer = %name, group = %g, "consumer of a consumer group that does not exist: no group plugins"),
        }
    }
    plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
    let plugins = if plugins.is_empty() { empty.clone() } else { Arc::from(plugins) };
    let mut held = Held { version: version.into(), key, create_time: spec.create_time, update_time: spec.update_time, source: None };
    let hashed = hashed_source(v.clone(), key);
    if rebuild(name, group.as_deref(), &held) != hashed {
        held.source = Some(hashed.to_string().into_boxed_str());
    }
    Ok(Consumer { identity: Identity { name: name.clone(), group }, plugins, held })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstreams;
    use serde_json::json;

    fn up(kind: Kind, name: &str, v: Value) -> Change {
        Change { kind, name: name.into(), version: aigw_model::snapshot::resource_version(&v), value: Some(v) }
    }

    fn rm(kind: Kind, name: &str) -> Change {
        Change { kind, name: name.into(), version: String::new(), value: None }
    }

    #[test]
    fn keys_credentials_groups_and_deltas() {
        let ups = Upstreams::default();
        let ctx = CompileCtx::bare(&ups);
        let hk = KeyHasher::new(&[7u8; 32]);
        use base64::Engine as _;
        let settings = json!({"hash_key": base64::engine::general_purpose::STANDARD.encode([7u8; 32])});
        let set = ConsumerSet::apply(
            &ConsumerSet::default(),
            true,
            vec![
                up(Kind::Settings, "key-auth", settings),
                up(Kind::Group, "gold", json!({"id": "gold", "plugins": {}})),
                up(Kind::Consumer, "a", json!({"username": "a", "group_id": "gold", "plugins": {"key-auth": {"key": hk.stored("key-a")}}})),
                up(Kind::Consumer, "b", json!({"username": "b"})),
                up(Kind::Credential, "b/one", json!({"id": "one", "plugins": {"key-auth": {"key": hk.stored("key-b1")}}})),
                up(Kind::Credential, "b/two", json!({"id": "two", "plugins": {"key-auth": {"key": hk.stored("key-b2")}}})),
            ],
            &ctx,
            None,
        )
        .unwrap();
        let who = |s: &ConsumerSet, k: &str| s.table.with_key(k).map(|c| c.identity.name.to_string());
        assert_eq!(who(&set, "key-a").as_deref(), Some("a"));
        assert_eq!(who(&set, "key-b1").as_deref(), Some("b"));
        assert_eq!(who(&set, "key-b2").as_deref(), Some("b"));
        assert_eq!(who(&set, "key-b3"), None);
        assert_eq!(set.table.named("a").unwrap().identity.group.as_deref(), Some("gold"));
        // Rotation: one credential goes, the other still works; a delta keeps the rest.
        let set2 = ConsumerSet::apply(&set, false, vec![rm(Kind::Credential, "b/one")], &ctx, None).unwrap();
        assert_eq!((who(&set2, "key-b1"), who(&set2, "key-b2").as_deref()), (None, Some("b")));
        assert!(Arc::ptr_eq(set.table.named("a").unwrap(), set2.table.named("a").unwrap()), "unchanged consumers keep their Arc");
        // Deleting a consumer drops its keys (its credentials stay out of the table).
        let set3 = ConsumerSet::apply(&set2, false, vec![rm(Kind::Consumer, "b")], &ctx, None).unwrap();
        assert_eq!(who(&set3, "key-b2"), None);
        // A group change recompiles its consumers.
        let set4 = ConsumerSet::apply(&set3, false, vec![up(Kind::Group, "gold", json!({"id": "gold", "desc": "x"}))], &ctx, None).unwrap();
        assert!(!Arc::ptr_eq(set3.table.named("a").unwrap(), set4.table.named("a").unwrap()));
        assert_eq!(who(&set4, "key-a").as_deref(), Some("a"));
        // A clear key (routes files) is hashed with the file's hash key; never kept.
        let file = ConsumerSet::apply(
            &ConsumerSet::default(),
            true,
            vec![up(Kind::Consumer, "c", json!({"username": "c", "plugins": {"key-auth": {"key": "clear-c"}}}))],
            &ctx,
            Some(&KeyHasher::new(&[9u8; 32])),
        )
        .unwrap();
        assert_eq!(who(&file, "clear-c").as_deref(), Some("c"));
        // Without any hash key, a clear key is refused (NACK), naming the field.
        let e = ConsumerSet::apply(
            &ConsumerSet::default(),
            true,
            vec![up(Kind::Consumer, "c", json!({"username": "c", "plugins": {"key-auth": {"key": "clear-c"}}}))],
            &ctx,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("consumer \"c\": plugins.key-auth.key"), "{e}");
        // Plugins: a group's apply to its consumers; a consumer's own win over its group's.
        let rl = |limit: u64| json!({"ai-rate-limiting": {"limit": limit, "time_window": 60}});
        let set5 = ConsumerSet::apply(
            &ConsumerSet::default(),
            true,
            vec![
                up(Kind::Group, "g", json!({"id": "g", "plugins": rl(100)})),
                up(Kind::Consumer, "inherits", json!({"username": "inherits", "group_id": "g"})),
                up(Kind::Consumer, "own", json!({"username": "own", "group_id": "g", "plugins": rl(5)})),
            ],
            &ctx,
            None,
        )
        .unwrap();
        let plugins = |n: &str| format!("{:?}", set5.table.named(n).unwrap().plugins);
        assert!(plugins("inherits").contains("limit: 100"), "{}", plugins("inherits"));
        assert!(plugins("own").contains("limit: 5") && !plugins("own").contains("limit: 100"), "{}", plugins("own"));
        // The dump shows hashes, never the keys.
        let dump = set.dump().to_string();
        assert!(dump.contains(&hk.stored("key-a")) && !dump.contains("key-a\""), "{dump}");
    }

    /// A consumer that is only a name, group, key and times keeps no JSON: what is shown
    /// and cached is rebuilt, equal to what was received (key hashed). Anything more is
    /// kept as received. Names and empty plugin lists are shared, not copied.
    #[test]
    fn plain_consumers_are_rebuilt_not_held() {
        let ups = Upstreams::default();
        let ctx = CompileCtx::bare(&ups);
        let hk = KeyHasher::new(&[7u8; 32]);
        let plain =
            json!({"username": "plain", "group_id": "g", "plugins": {"key-auth": {"key": "clear-p"}}, "create_time": 1, "update_time": 2});
        let bare = json!({"username": "bare"});
        let rich =
            json!({"username": "rich", "desc": "the rich one", "labels": {"team": "x"}, "plugins": {"key-auth": {"key": "clear-r"}}});
        let set = ConsumerSet::apply(
            &ConsumerSet::default(),
            true,
            vec![
                up(Kind::Group, "g", json!({"id": "g"})),
                up(Kind::Consumer, "plain", plain.clone()),
                up(Kind::Consumer, "bare", bare.clone()),
                up(Kind::Consumer, "rich", rich.clone()),
            ],
            &ctx,
            Some(&hk),
        )
        .unwrap();
        let c = |n: &str| set.table.named(n).unwrap().clone();
        assert!(c("plain").held.source.is_none() && c("bare").held.source.is_none());
        assert!(c("rich").held.source.is_some());
        let hashed = |mut v: Value, clear: &str| {
            v["plugins"]["key-auth"]["key"] = json!(hk.stored(clear));
            v
        };
        let sources: BTreeMap<String, Value> =
            set.sources().into_iter().map(|(_, n, s)| (n.to_owned(), serde_json::from_str(&s.source).unwrap())).collect();
        assert_eq!(sources["plain"], hashed(plain, "clear-p"));
        assert_eq!(sources["bare"], bare);
        assert_eq!(sources["rich"], hashed(rich, "clear-r"));
        let (k, v) = set.table.by_name.get_key_value("plain").unwrap();
        assert!(Arc::ptr_eq(k, &v.identity.name), "the map key and the identity share the name");
        let (gk, _) = set.groups.get_key_value("g").unwrap();
        assert!(Arc::ptr_eq(gk, c("plain").identity.group.as_ref().unwrap()), "the group's name is shared");
        assert!(Arc::ptr_eq(&c("plain").plugins, &c("bare").plugins), "one empty plugin list");
        assert_eq!(set.table.with_key("clear-p").map(|c| c.identity.name.to_string()).as_deref(), Some("plain"));
    }
}
