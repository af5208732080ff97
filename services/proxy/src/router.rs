//! Route matching: exact paths by hash lookup, prefixes (`/v1/*`) by one hash lookup per
//! distinct prefix length, so cost does not grow with the number of routes.
//! Order among matches: exact before prefix, longer prefix first, higher `priority`
//! first, then route id. The first candidate whose methods, hosts and `vars` hold wins.

use std::collections::HashMap;
use std::sync::Arc;

use aigw_model::vars::VarSource;

use crate::compiled::CompiledRoute;

#[derive(Default)]
pub struct Router {
    exact: HashMap<String, Vec<Arc<CompiledRoute>>>,
    prefixes: HashMap<String, Vec<Arc<CompiledRoute>>>,
    /// Distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
}

/// Request facts the router needs besides `vars`.
pub struct MatchInput<'a> {
    pub path: &'a str,
    pub method: &'a str,
    /// Host without port, lower-case.
    pub host: &'a str,
}

impl Router {
    pub fn build(routes: &[Arc<CompiledRoute>]) -> Router {
        let mut r = Router::default();
        for route in routes.iter().filter(|r| r.spec.route.status != Some(0)) {
            for p in route.spec.paths() {
                match p.strip_suffix('*') {
                    Some(prefix) => r.prefixes.entry(prefix.to_owned()).or_default().push(route.clone()),
                    None => r.exact.entry(p.to_owned()).or_default().push(route.clone()),
                }
            }
        }
        let order = |v: &mut Vec<Arc<CompiledRoute>>| {
            v.sort_by(|a, b| b.spec.route.priority.cmp(&a.spec.route.priority).then_with(|| a.spec.route.id.cmp(&b.spec.route.id)));
            v.dedup_by(|a, b| a.spec.route.id == b.spec.route.id);
        };
        r.exact.values_mut().for_each(order);
        r.prefixes.values_mut().for_each(order);
        let mut lens: Vec<usize> = r.prefixes.keys().map(String::len).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        r.prefix_lens = lens;
        r
    }

    /// The first route, in match order, whose path matches and for which `pred` holds.
    pub fn first_where(&self, path: &str, mut pred: impl FnMut(&Arc<CompiledRoute>) -> bool) -> Option<Arc<CompiledRoute>> {
        if let Some(found) = self.exact.get(path).and_then(|v| v.iter().find(|r| pred(r))) {
            return Some(found.clone());
        }
        for &len in &self.prefix_lens {
            if len > path.len() || !path.is_char_boundary(len) {
                continue;
            }
            if let Some(found) = self.prefixes.get(&path[..len]).and_then(|v| v.iter().find(|r| pred(r))) {
                return Some(found.clone());
            }
        }
        None
    }

    pub fn find(&self, input: &MatchInput<'_>, vars: &dyn VarSource) -> Option<Arc<CompiledRoute>> {
        self.first_where(input.path, |r| r.matches_static(input) && r.spec.vars.as_ref().is_none_or(|e| e.eval(vars)))
    }
}

impl CompiledRoute {
    /// Methods and hosts.
    pub fn matches_static(&self, input: &MatchInput<'_>) -> bool {
        let r = &self.spec.route;
        if !r.methods.is_empty() && !r.methods.iter().any(|m| m == input.method) {
            return false;
        }
        let mut hosts = self.spec.hosts().peekable();
        if hosts.peek().is_none() {
            return true;
        }
        hosts.any(|h| match h.strip_prefix("*.") {
            Some(suffix) => {
                input.host.len() > suffix.len() + 1
                    && input.host.ends_with(suffix)
                    && input.host.as_bytes()[input.host.len() - suffix.len() - 1] == b'.'
            }
            None => h.eq_ignore_ascii_case(input.host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_model::vars::{Var, VarValue, lookup};
    use serde_json::{Value, json};

    fn route(id: &str, extra: Value) -> Arc<CompiledRoute> {
        let mut v = json!({"id": id, "plugins": {"ai-proxy": {"provider": "openai", "auth": {}}}});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Arc::new(crate::compiled::compile_route(&v, &crate::compiled::CompileCtx::bare(&Default::default())).unwrap())
    }

    struct Body(Value);
    impl VarSource for Body {
        fn get<'a>(&'a self, var: &Var) -> Option<VarValue<'a>> {
            match var {
                Var::PostArg(p) => lookup(&self.0, p).map(VarValue::Json),
                _ => None,
            }
        }
    }

    fn check(router: &Router, path: &str, method: &str, host: &str, body: Value, expect: Option<&str>) {
        let got = router.find(&MatchInput { path, method, host }, &Body(body));
        assert_eq!(got.map(|r| r.spec.route.id.clone()).as_deref(), expect, "{method} {host}{path}");
    }

    #[test]
    fn matching_order_and_conditions() {
        let routes = vec![
            route("exact", json!({"uri": "/v1/chat/completions", "methods": ["POST"]})),
            route("prefix-short", json!({"uri": "/v1/*"})),
            route("prefix-long", json!({"uri": "/v1/chat/*"})),
            route("low", json!({"uri": "/p", "priority": 1})),
            route("high", json!({"uri": "/p", "priority": 5, "hosts": ["*.example.com"]})),
            route("openai", json!({"uri": "/anything", "vars": [["post_arg.model", "==", "openai"]]})),
            route("deepseek", json!({"uri": "/anything", "vars": [["post_arg.model", "==", "deepseek"]]})),
            route("multi", json!({"uris": ["/a", "/b/*"], "host": "api.test"})),
            route("off", json!({"uri": "/off", "status": 0})),
        ];
        let router = Router::build(&routes);
        check(&router, "/v1/chat/completions", "POST", "h", json!({}), Some("exact"));
        check(&router, "/v1/chat/completions", "GET", "h", json!({}), Some("prefix-long"));
        check(&router, "/v1/chat/x", "POST", "h", json!({}), Some("prefix-long"));
        check(&router, "/v1/embeddings", "POST", "h", json!({}), Some("prefix-short"));
        check(&router, "/v1/", "POST", "h", json!({}), Some("prefix-short"));
        check(&router, "/v1", "POST", "h", json!({}), None);
        check(&router, "/p", "POST", "a.example.com", json!({}), Some("high"));
        check(&router, "/p", "POST", "example.com", json!({}), Some("low"));
        check(&router, "/p", "POST", "other.com", json!({}), Some("low"));
        check(&router, "/anything", "POST", "h", json!({"model": "deepseek"}), Some("deepseek"));
        check(&router, "/anything", "POST", "h", json!({"model": "openai"}), Some("openai"));
        check(&router, "/anything", "POST", "h", json!({"model": "x"}), None);
        check(&router, "/a", "POST", "api.test", json!({}), Some("multi"));
        check(&router, "/b/c", "POST", "API.TEST", json!({}), Some("multi"));
        check(&router, "/a", "POST", "other", json!({}), None);
        check(&router, "/off", "POST", "h", json!({}), None);
        check(&router, "/nothing", "POST", "h", json!({}), None);
    }
}
