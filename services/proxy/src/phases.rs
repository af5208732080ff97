//! Plugins as phases: the one place where a policy joins a request.
//!
//! A route plugin implements [`Plugin`] for the phases it needs:
//!
//! | phase | when | may |
//! |---|---|---|
//! | [`Plugin::access`] | after routing and protocol detection, before planning | refuse the request; identify the caller ([`Access::identify`]); keep per-request state in its slot; wait (one future) |
//! | [`Plugin::before_attempt`] | before each upstream attempt, with the attempt's plan (model, instance) | refuse the attempt: `ai-proxy-multi` moves on under `fallback_strategy: rate_limiting`, else the refusal is the answer |
//! | [`Plugin::response_head`] | when the answer's head is ready (whole or streamed, gateway errors too), once access passed | add headers |
//! | [`Plugin::complete`] | when the response body ended or the client left (exactly once) | read the final record (usage, status, timings), charge, note facts for the sinks |
//!
//! A compiled route holds its plugins in priority order (APISIX's: higher runs first),
//! built once when the snapshot is compiled, by the factories of a [`Registry`] with the
//! node's shared [`Resources`] injected. A request gets a [`Chain`]: the route's list
//! (shared, not copied) and one state slot per plugin. When a plugin identifies the
//! caller, the consumer's plugins (its group's merged under its own) merge into the rest
//! of the list: a plugin of the same name is replaced, the others are added in priority
//! order (CONTRACT §12: consumer over group over route). A route without plugins has an
//! empty chain and costs nothing.
//!
//! Node-wide observers (access log, metrics, spans) are the completion phase's second
//! half: [`crate::complete::Sink`]s, called after the route's plugins with the same record.
//!
//! Adding a policy: its schema in `aigw_model::plugins` (validation for aigw-config and
//! routes files), its own file under `src/plugins/` implementing [`Plugin`], and one line
//! in `crate::plugins::builtin`. A resource it shares across routes and snapshots (a
//! queue, a connection pool) is its own type in [`Resources`].
//!
//! This module sits below the stages and the compiled config (it imports only the record
//! and the errors): plugins see plain data — the route's validated spec, the target, the
//! plan, the record — never the stages' internals.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aigw_llm::protocol::Protocol;
use aigw_model::RouteSpec;
use aigw_providers::plan::Plan;
use aigw_providers::target::Target;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::record::Record;
pub use crate::record::{Identity, Needs};

/// What a plugin keeps for one request (what access found, for the later phases).
pub type SlotBox = Box<dyn Any + Send>;
/// A plugin's per-request state.
pub type Slot = Option<SlotBox>;

/// A check an access phase needs to wait for (e.g. one Redis round trip). It owns what it
/// needs; its output becomes the plugin's slot. The chain runs every plugin's access phase
/// first, then awaits all their checks together, so two plugins that each read Redis
/// cost one round trip of latency (their reads share the multiplexed connection).
pub type Wait = Pin<Box<dyn Future<Output = Result<Slot, GatewayError>> + Send>>;

/// What an access phase decided.
pub enum Step {
    /// Go on with the next plugin.
    Next,
    /// Answer the request with this refusal (its status, class and headers).
    Refuse(GatewayError),
    /// Go on, and wait for this before planning (or answer with its error).
    Wait(Wait),
}

/// A route plugin: see the module docs. Every phase has a default that does nothing.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// Its name, the key under `plugins`.
    fn name(&self) -> &str;

    /// APISIX's priority: higher runs first in every phase (key-auth 2500,
    /// consumer-restriction 2400, ai-rate-limiting 1030, http-logger 410).
    fn priority(&self) -> i32;

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn access(&self, _cx: &mut Access<'_>) -> Step {
        Step::Next
    }

    fn before_attempt(&self, _cx: &mut AttemptCx<'_>) -> Result<(), GatewayError> {
        Ok(())
    }

    fn response_head(&self, _cx: &mut HeadCx<'_>) {}

    fn complete(&self, _cx: &mut CompleteCx<'_>) {}

    /// What this plugin tells about an `ai-proxy-multi` instance of its route on
    /// `/status/instances` (a field name and its value), as this node last saw it.
    fn instance_status(&self, _instance: &str) -> Option<(&'static str, Value)> {
        None
    }
}

/// A caller an access phase can identify (a consumer, CONTRACT §12), with the plugins
/// that come with it: its group's merged under its own, compiled with the snapshot.
#[derive(Debug)]
pub struct Consumer {
    pub identity: Identity,
    pub plugins: Arc<[Arc<dyn Plugin>]>,
    /// What the snapshot keeps of the resource (its version, key hash and, only when it
    /// cannot be rebuilt from those, its JSON): one allocation per consumer.
    pub(crate) held: Held,
}

/// What a snapshot keeps of a consumer resource beside its compiled form ([`Consumer`]).
/// Most consumers are a name, a key and maybe a group: their JSON is rebuilt from those
/// when it is needed (`/config_dump`, the snapshot cache, a group change) instead of being
/// held — at 100,000 consumers that is a tenth of a proxy's memory for them.
#[derive(Debug)]
pub struct Held {
    pub(crate) version: Box<str>,
    /// The inline `key-auth` key's hash.
    pub(crate) key: Option<[u8; 32]>,
    pub(crate) create_time: Option<u64>,
    pub(crate) update_time: Option<u64>,
    /// The JSON as received (key hashed), when it holds more than the fields above.
    pub(crate) source: Option<Box<str>>,
}

/// The consumers of a snapshot: by name, and by the keyed hash of each of their keys
/// (CONTRACT §12; `aigw_model::keyauth`). Keys themselves are never held.
#[derive(Debug, Default)]
pub struct Consumers {
    /// Also the snapshot's consumer set itself (deltas clone it and apply their changes).
    pub by_name: BTreeMap<Arc<str>, Arc<Consumer>>,
    pub by_key: HashMap<[u8; 32], Arc<Consumer>>,
    /// Hashes presented keys the way the config service hashed the stored ones; None
    /// until the config service sent its key-auth settings (no key then matches).
    pub hasher: Option<aigw_model::keyauth::KeyHasher>,
}

impl Consumers {
    /// The consumer holding `key`: one HMAC and one hash-table probe, whatever part of
    /// the key is right.
    pub fn with_key(&self, key: &str) -> Option<&Arc<Consumer>> {
        let h = self.hasher.as_ref()?.hash(key.as_bytes());
        self.by_key.get(&h)
    }

    pub fn named(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }
}

/// What the access phase sees and may change.
pub struct Access<'r> {
    /// The client's request head: a plugin may remove what must not go upstream (the
    /// consumer's key).
    pub parts: &'r mut http::request::Parts,
    pub remote: SocketAddr,
    /// The matched route, validated.
    pub route: &'r RouteSpec,
    /// The snapshot's consumers (and their keys, by hash).
    pub consumers: &'r Consumers,
    pub protocol: Protocol,
    /// The client's body, validated (`body.tree()` parses it on first use; `body.field(…)`
    /// reads a top-level field without).
    pub body: &'r aigw_llm::body::RawBody,
    pub rec: &'r mut Record,
    /// This plugin's state for this request.
    pub slot: &'r mut Slot,
    identified: &'r mut Option<Arc<Consumer>>,
}

impl Access<'_> {
    /// The request runs as `consumer` from now on: the record names it, and the consumer's
    /// plugins merge into the rest of the chain once this phase returns.
    pub fn identify(&mut self, consumer: &Arc<Consumer>) {
        self.rec.consumer = Some(consumer.identity.clone());
        *self.identified = Some(consumer.clone());
    }
}

/// What a before-attempt phase sees.
pub struct AttemptCx<'r> {
    /// The `ai-proxy-multi` instance's name (empty for `ai-proxy`) and its index.
    pub instance: &'r str,
    pub index: usize,
    pub target: &'r Target,
    pub plan: &'r Plan,
    pub rec: &'r Record,
    pub slot: &'r mut Slot,
}

/// What a response-head phase sees and may change.
pub struct HeadCx<'r> {
    pub status: StatusCode,
    pub headers: &'r mut HeaderMap,
    pub rec: &'r Record,
    pub slot: &'r mut Slot,
}

/// What a completion phase sees: the final record (it may note facts in it for the sinks
/// that follow, e.g. the remaining quota).
pub struct CompleteCx<'r> {
    pub rec: &'r mut Record,
    pub slot: &'r mut Slot,
}

/// The plugins of one request, in order, with their state slots.
pub struct Chain {
    list: Arc<[Arc<dyn Plugin>]>,
    slots: Vec<Slot>,
    /// Access finished without a refusal: response heads get the plugins' headers.
    admitted: bool,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::empty()
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.iter().map(|p| p.name())).finish()
    }
}

impl Chain {
    /// No plugins (before routing; a route without any). Allocates nothing.
    pub fn empty() -> Chain {
        static NONE: std::sync::OnceLock<Arc<[Arc<dyn Plugin>]>> = std::sync::OnceLock::new();
        Chain { list: NONE.get_or_init(|| Arc::from(Vec::new())).clone(), slots: Vec::new(), admitted: false }
    }

    /// A route's plugins for one request.
    pub fn new(list: Arc<[Arc<dyn Plugin>]>) -> Chain {
        let mut slots = Vec::new();
        slots.resize_with(list.len(), || None);
        Chain { list, slots, admitted: false }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The plugins' names in the order they run.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|p| p.name()).collect()
    }

    /// Runs every access phase in order; the first refusal is the answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn access(
        &mut self,
        parts: &mut http::request::Parts,
        remote: SocketAddr,
        route: &RouteSpec,
        consumers: &Consumers,
        protocol: Protocol,
        body: &aigw_llm::body::RawBody,
        rec: &mut Record,
    ) -> Result<(), GatewayError> {
        let mut i = 0;
        let mut identified = None;
        let mut merged = false;
        let mut waits: Vec<(usize, Wait)> = Vec::new();
        while i < self.list.len() {
            let p = self.list[i].clone();
            let mut cx =
                Access { parts, remote, route, consumers, protocol, body, rec, slot: &mut self.slots[i], identified: &mut identified };
            match p.access(&mut cx) {
                Step::Next => {}
                Step::Refuse(e) => return Err(e),
                Step::Wait(f) => waits.push((i, f)),
            }
            if !merged && let Some(c) = identified.take() {
                merged = true;
                if !c.plugins.is_empty() {
                    self.merge(i, &c.plugins);
                }
            }
            i += 1;
        }
        if !waits.is_empty() {
            let (at, futs): (Vec<usize>, Vec<Wait>) = waits.into_iter().unzip();
            for (i, r) in at.into_iter().zip(futures_util::future::join_all(futs).await) {
                // The first refusal in plugin order is the answer.
                if let Some(s) = r? {
                    self.slots[i] = Some(s);
                }
            }
        }
        self.admitted = true;
        Ok(())
    }

    /// The caller's plugins join after position `done` (the plugin that identified it):
    /// same-named plugins that have not run yet are replaced, the rest keep their order,
    /// and the new ones take their place by priority. A consumer plugin whose route
    /// namesake already ran is left out (it could not see the request from the start).
    fn merge(&mut self, done: usize, extra: &[Arc<dyn Plugin>]) {
        let ran = &self.list[..=done];
        let mut rest: Vec<Arc<dyn Plugin>> =
            self.list[done + 1..].iter().filter(|p| !extra.iter().any(|e| e.name() == p.name())).cloned().collect();
        rest.extend(extra.iter().filter(|e| !ran.iter().any(|p| p.name() == e.name())).cloned());
        // Stable: equal priorities keep route-then-consumer order.
        rest.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        let mut list: Vec<Arc<dyn Plugin>> = ran.to_vec();
        list.extend(rest);
        self.slots.truncate(done + 1);
        self.slots.resize_with(list.len(), || None);
        self.list = Arc::from(list);
    }

    /// Runs every before-attempt phase for the attempt on `target`; the first refusal
    /// refuses the attempt.
    pub fn before_attempt(&mut self, instance: &str, index: usize, target: &Target, plan: &Plan, rec: &Record) -> Result<(), GatewayError> {
        for (p, slot) in self.list.iter().zip(self.slots.iter_mut()) {
            p.before_attempt(&mut AttemptCx { instance, index, target, plan, rec, slot })?;
        }
        Ok(())
    }

    /// Runs every response-head phase, once access passed (a refusal carries its own
    /// headers).
    pub fn response_head(&mut self, status: StatusCode, headers: &mut HeaderMap, rec: &Record) {
        if !self.admitted {
            return;
        }
        for (p, slot) in self.list.iter().zip(self.slots.iter_mut()) {
            p.response_head(&mut HeadCx { status, headers, rec, slot });
        }
    }

    /// Runs every completion phase (refused requests included: a plugin's empty slot
    /// says it had nothing to do).
    pub fn complete(&mut self, rec: &mut Record) {
        for (p, slot) in self.list.iter().zip(self.slots.iter_mut()) {
            p.complete(&mut CompleteCx { rec, slot });
        }
    }
}

/// Where a plugin config sits, which decides what its counters count per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Route(&'a str),
    Consumer(&'a str),
    Group(&'a str),
}

/// The node's shared resources, injected into plugins when they are compiled, one value
/// per type (kept across snapshots, so a plugin's connections and queues outlive a config
/// change). A plugin that shares something defines its type and asks for it here.
#[derive(Default)]
pub struct Resources {
    map: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Resources {
    /// The node's `T`, made with `T::default()` the first time it is asked for.
    pub fn get<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let any = map.entry(TypeId::of::<T>()).or_insert_with(|| Arc::new(T::default())).clone();
        drop(map);
        // The map holds a `T` under `T`'s id, so this always succeeds.
        any.downcast::<T>().unwrap_or_else(|_| Arc::new(T::default()))
    }

    /// Sets the node's `T` (from flags: a Redis URL, a clock), replacing any earlier one.
    pub fn insert<T: Any + Send + Sync>(&self, value: T) {
        self.insert_shared(Arc::new(value));
    }

    /// Sets the node's `T` to one the node already shares (its metrics).
    pub fn insert_shared<T: Any + Send + Sync>(&self, value: Arc<T>) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(TypeId::of::<T>(), value);
    }
}

/// What a factory gets besides the plugin's config.
pub struct PluginEnv<'a> {
    pub scope: Scope<'a>,
    /// The route, when the plugin is a route's (its `ai-proxy` settings, its credentials'
    /// header names).
    pub route: Option<&'a RouteSpec>,
    pub resources: &'a Resources,
}

/// A plugin config that does not compile (beyond what validation checks: a resource it
/// needs is missing, a key cannot be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugins.{plugin}: {message}")]
pub struct PluginError {
    pub plugin: String,
    pub message: String,
}

impl PluginError {
    pub fn new(plugin: &str, message: impl Into<String>) -> PluginError {
        PluginError { plugin: plugin.to_owned(), message: message.into() }
    }
}

pub type Factory = Arc<dyn Fn(&Value, &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> + Send + Sync>;

/// The plugins a node can compile, by name.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl Registry {
    /// No plugins (`crate::plugins::builtin` has aigw's).
    pub fn empty() -> Registry {
        Registry { factories: BTreeMap::new() }
    }

    /// Adds (or replaces) the plugin `name`. A name aigw-model does not know is accepted in
    /// routes this node compiles (standalone routes files); aigw-config validates only the
    /// names it knows.
    pub fn register(
        &mut self,
        name: &str,
        factory: impl Fn(&Value, &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> + Send + Sync + 'static,
    ) {
        self.factories.insert(name.to_owned(), Arc::new(factory));
    }

    pub fn knows(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Compiles the plugin `name` with `conf`.
    pub fn compile(&self, name: &str, conf: &Value, env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
        let f = self.factories.get(name).ok_or_else(|| PluginError::new(name, "no such plugin on this node"))?;
        f(conf, env)
    }

    /// Compiles every plugin of `plugins` but the provider plugins, in priority order.
    pub fn compile_all(&self, plugins: &BTreeMap<String, Value>, env: &PluginEnv<'_>) -> Result<Vec<Arc<dyn Plugin>>, PluginError> {
        let mut list = Vec::new();
        for (name, conf) in plugins {
            if name == "ai-proxy" || name == aigw_model::multi::PLUGIN {
                continue;
            }
            list.push(self.compile(name, conf, env)?);
        }
        list.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Named(&'static str, i32);

    impl Plugin for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn priority(&self) -> i32 {
            self.1
        }
    }

    fn list(items: &[(&'static str, i32)]) -> Vec<Arc<dyn Plugin>> {
        items.iter().map(|&(n, p)| Arc::new(Named(n, p)) as Arc<dyn Plugin>).collect()
    }

    #[test]
    fn consumer_plugins_merge_after_the_identifying_one() {
        // (route list, position that identified, consumer's plugins, merged order)
        for (route, done, extra, want) in [
            // Added by priority among those not run yet.
            (
                vec![("key-auth", 2500), ("http-logger", 410)],
                0,
                vec![("ai-rate-limiting", 1030)],
                vec!["key-auth", "ai-rate-limiting", "http-logger"],
            ),
            // Same name: the consumer's replaces the route's.
            (
                vec![("key-auth", 2500), ("ai-rate-limiting", 1030)],
                0,
                vec![("ai-rate-limiting", 1030)],
                vec!["key-auth", "ai-rate-limiting"],
            ),
            // A namesake that already ran stays; the consumer's is left out.
            (
                vec![("early", 3000), ("key-auth", 2500)],
                1,
                vec![("early", 3000), ("ai-budget", 1029)],
                vec!["early", "key-auth", "ai-budget"],
            ),
        ] {
            let mut c = Chain { list: Arc::from(list(&route)), slots: Vec::new(), admitted: false };
            c.slots.resize_with(c.list.len(), || None);
            c.slots[done] = Some(Box::new(7u8));
            let extra = list(&extra);
            c.merge(done, &extra);
            assert_eq!(c.names(), want);
            assert_eq!(c.slots.len(), want.len());
            assert!(c.slots[done].as_ref().is_some_and(|s| s.downcast_ref::<u8>() == Some(&7)), "the ran plugin keeps its state");
            // The replacement is the consumer's instance, not the route's.
            if let Some(i) = c.names().iter().position(|n| *n == "ai-rate-limiting") {
                assert!(extra.iter().any(|e| Arc::ptr_eq(e, &c.list[i])));
            }
        }
    }

    #[test]
    fn an_empty_chain_allocates_once_per_process() {
        let (a, b) = (Chain::empty(), Chain::empty());
        assert!(a.is_empty() && Arc::ptr_eq(&a.list, &b.list) && a.slots.capacity() == 0);
    }

    #[test]
    fn needs_union() {
        let a = Needs { request_headers: true, response_text: Some(10), ..Needs::default() };
        let b = Needs { request_body: true, response_text: Some(20), response_body: Some(5), ..Needs::default() };
        assert_eq!(
            a.union(b),
            Needs { request_headers: true, request_body: true, request_messages: false, response_text: Some(20), response_body: Some(5) }
        );
    }

    #[test]
    fn resources_are_one_per_type() {
        #[derive(Default)]
        struct Pool(u32);
        let r = Resources::default();
        assert!(Arc::ptr_eq(&r.get::<Pool>(), &r.get::<Pool>()));
        assert_eq!(r.get::<Pool>().0, 0);
        r.insert(Pool(7));
        assert_eq!(r.get::<Pool>().0, 7);
    }

    /// The seam is real: a plugin registered through the public API only (no special case
    /// in the pipeline) refuses in access, refuses one attempt of an `ai-proxy-multi`
    /// route (which moves on), adds a response header to a streamed answer, and sees the
    /// exact usage at completion — through the real server, sockets and a strict fake.
    #[tokio::test]
    async fn a_registered_plugin_joins_every_phase() {
        use aigw_testkit::fake::{FakeServer, ProviderSpec};
        use serde_json::json;

        /// (instance, status, prompt, completion, total) of each completed request.
        type Completed = (String, u16, u64, u64, u64);
        #[derive(Debug, Default)]
        struct Seen(Mutex<Vec<Completed>>);

        #[derive(Debug)]
        struct Probe {
            refuse_instance: String,
            seen: Arc<Seen>,
        }

        impl Plugin for Probe {
            fn name(&self) -> &str {
                "test-phases"
            }
            fn priority(&self) -> i32 {
                1000
            }
            fn access(&self, cx: &mut Access<'_>) -> Step {
                if cx.parts.headers.contains_key("x-refuse") {
                    let e = GatewayError::refused(StatusCode::FORBIDDEN, aigw_llm::envelope::Class::Permission, "refused", "not you")
                        .with_header(http::HeaderName::from_static("x-refused-by"), "test-phases");
                    return Step::Refuse(e);
                }
                // An access phase may wait (e.g. one Redis round trip); what it finds is its slot.
                Step::Wait(Box::pin(async { Ok(Some(Box::new(Vec::<String>::new()) as Box<dyn Any + Send>)) }))
            }
            fn before_attempt(&self, cx: &mut AttemptCx<'_>) -> Result<(), GatewayError> {
                if let Some(tried) = cx.slot.as_mut().and_then(|s| s.downcast_mut::<Vec<String>>()) {
                    tried.push(cx.instance.to_owned());
                }
                if cx.instance == self.refuse_instance {
                    return Err(GatewayError::refused(
                        StatusCode::TOO_MANY_REQUESTS,
                        aigw_llm::envelope::Class::RateLimit,
                        "rate_limit_exceeded",
                        "instance spent",
                    ));
                }
                Ok(())
            }
            fn response_head(&self, cx: &mut HeadCx<'_>) {
                let tried = cx.slot.as_ref().and_then(|s| s.downcast_ref::<Vec<String>>()).map(|t| t.join(",")).unwrap_or_default();
                if let Ok(v) = http::HeaderValue::from_str(&tried) {
                    cx.headers.insert("x-test-phases", v);
                }
            }
            fn complete(&self, cx: &mut CompleteCx<'_>) {
                let u = cx.rec.usage;
                self.seen.0.lock().unwrap().push((cx.rec.instance.clone(), cx.rec.status, u.prompt, u.completion, u.total));
            }
        }

        let seen = Arc::new(Seen::default());
        let mut registry = crate::plugins::builtin();
        let s = seen.clone();
        registry.register("test-phases", move |conf, _env| {
            let refuse_instance = conf.get("refuse_instance").and_then(Value::as_str).unwrap_or_default().to_owned();
            Ok(Arc::new(Probe { refuse_instance, seen: s.clone() }))
        });

        let up = FakeServer::start(ProviderSpec::new("fake", aigw_testkit::fake::AuthCheck::Bearer("sk-up".into())).handler()).await;
        let instance = |name: &str, priority: i64| {
            json!({"name": name, "provider": "openai-compatible", "priority": priority, "weight": 1,
                   "auth": {"header": {"Authorization": "Bearer sk-up"}}, "options": {"model": "m"},
                   "override": {"endpoint": format!("{}/v1/chat/completions", up.url())}})
        };
        let routes = json!({"routes": [{"id": "multi", "uri": "/multi", "plugins": {
            "test-phases": {"refuse_instance": "first"},
            "ai-proxy-multi": {"fallback_strategy": ["rate_limiting"], "instances": [instance("first", 2), instance("second", 1)]}}}]});
        let dir = aigw_testkit::proc::TempDir::new("phases");
        let file = dir.0.join("routes.json");
        std::fs::write(&file, routes.to_string()).unwrap();

        let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let status = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/multi", data.local_addr().unwrap());
        let cfg = crate::Config {
            source: crate::Source::File(file),
            data_key: None,
            access_log: crate::access_log::AccessLog::open("off", crate::access_log::DEFAULT_FORMAT).unwrap(),
            client_limits: crate::ClientLimits::default(),
            token_cache: None,
            telemetry: crate::Telemetry::default(),
            control_plane_ca: None,
            plugins: registry,
            redis: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::run(cfg, data, status, async move {
            let _ = stopped.await;
        }));

        let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
        // Refused in access: the client's protocol, the refusal's own header, no upstream call.
        let r = aigw_testkit::http::post_json(&url, &[("x-refuse", "1")], &body).await.unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.headers["x-refused-by"], "test-phases");
        assert!(!r.headers.contains_key("x-test-phases"), "no response-head phase after a refusal");
        assert_eq!(r.json()["error"]["type"], "permission_error");
        assert!(up.requests().is_empty());

        // The first instance is refused before its attempt; the second answers, streamed.
        let mut s = aigw_testkit::http::post_stream(&url, &[], &body).await.unwrap();
        assert_eq!(s.status, 200);
        assert_eq!(s.headers["x-test-phases"], "first,second", "the head phase saw both attempts' phases");
        let text = s.rest().await;
        assert!(text.contains("[DONE]"), "{text}");
        assert_eq!(up.requests().len(), 1, "the refused instance was never sent to");

        let want = [(String::new(), 403, 0, 0, 0), ("second".to_owned(), 200, 11, 3, 14)];
        aigw_testkit::wait_until("completions", std::time::Duration::from_secs(10), || {
            let got = seen.0.lock().unwrap().clone();
            async move { (got.len() == 2).then_some(()) }
        })
        .await;
        assert_eq!(*seen.0.lock().unwrap(), want, "completion saw the exact usage of the stream");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
