//! A validated route ([`RouteSpec`]): the route object with its plugins validated — the
//! provider plugin typed (`ai-proxy` in [`crate::route`], `ai-proxy-multi` in
//! [`crate::multi`]), the others by their schemas ([`crate::plugins`]) — and `vars`
//! compiled.

use std::sync::Arc;

use serde_json::Value;

use crate::route::{AiProxyConfig, METHODS, Route, ValidationError, check_host, check_uri, from_value_at, validate_ai_proxy, validate_id};
use crate::vars::Expr;

/// A validated route: the stored JSON, the typed plugin configs and compiled `vars`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub route: Route,
    /// The route-level LLM settings (timeouts, limits, keepalive, `logging`), whichever of
    /// the two plugins the route carries. For `ai-proxy` this is the plugin's config. For
    /// `ai-proxy-multi` it is the first instance as an `ai-proxy` config carrying the
    /// route-wide settings, which are the same for every instance; per-instance fields
    /// (`provider`, `auth`, `options`, `override`, `provider_conf`) are in [`Self::multi`].
    pub ai_proxy: Arc<AiProxyConfig>,
    /// `ai-proxy-multi`, when the route carries it (CONTRACT §9).
    pub multi: Option<Arc<crate::multi::AiProxyMultiConfig>>,
    pub vars: Option<Expr>,
}

impl RouteSpec {
    /// Parse and fully validate one route object.
    pub fn from_json(value: &Value) -> Result<RouteSpec, ValidationError> {
        Self::from_json_with(value, &|_| false)
    }

    /// [`Self::from_json`], accepting (unvalidated) the plugin names `extra` accepts: a
    /// node's own plugins, which its registry compiles and validates.
    pub fn from_json_with(value: &Value, extra: &dyn Fn(&str) -> bool) -> Result<RouteSpec, ValidationError> {
        if !value.is_object() {
            return Err(ValidationError::new("(root)", "a route must be a JSON object"));
        }
        let route: Route = from_value_at("", value)?;
        Self::from_route_with(route, extra)
    }

    pub fn from_route(route: Route) -> Result<RouteSpec, ValidationError> {
        Self::from_route_with(route, &|_| false)
    }

    fn from_route_with(route: Route, extra: &dyn Fn(&str) -> bool) -> Result<RouteSpec, ValidationError> {
        validate_id(&route.id)?;
        if route.uri.is_empty() && route.uris.is_empty() {
            return Err(ValidationError::new("uri", "one of uri or uris is required"));
        }
        if !route.uri.is_empty() {
            check_uri("uri", &route.uri)?;
        }
        for (i, u) in route.uris.iter().enumerate() {
            check_uri(&format!("uris[{i}]"), u)?;
        }
        for (i, m) in route.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                return Err(ValidationError::new(
                    format!("methods[{i}]"),
                    format!("unknown method {m:?}, expected one of {}", METHODS.join(", ")),
                ));
            }
        }
        if !route.host.is_empty() {
            check_host("host", &route.host)?;
        }
        for (i, h) in route.hosts.iter().enumerate() {
            check_host(&format!("hosts[{i}]"), h)?;
        }
        if let Some(s) = route.status
            && s > 1
        {
            return Err(ValidationError::new("status", "must be 0 (disabled) or 1 (enabled)"));
        }
        let vars = match &route.vars {
            None => None,
            Some(v) => Some(Expr::compile(v).map_err(|e| ValidationError::new(format!("vars{}", e.path), e.message))?),
        };
        crate::multi::check_exclusive(&route.plugins)?;
        let mut ai_proxy = None;
        let mut multi = None;
        for (name, conf) in &route.plugins {
            let path = format!("plugins.{name}");
            match name.as_str() {
                "ai-proxy" => {
                    let c: AiProxyConfig = from_value_at(&path, conf)?;
                    validate_ai_proxy(&c)?;
                    ai_proxy = Some(Arc::new(c));
                }
                crate::multi::PLUGIN => {
                    let c = crate::multi::validate_ai_proxy_multi(&path, conf)?;
                    ai_proxy = c.instance_config(0).map(Arc::new);
                    multi = Some(Arc::new(c));
                }
                _ => {}
            }
        }
        crate::plugins::validate("plugins", &route.plugins, crate::plugins::On::Route, extra)?;
        let ai_proxy = ai_proxy.ok_or_else(|| {
            ValidationError::new(
                "plugins",
                "the ai-proxy or ai-proxy-multi plugin is required (aigw routes always proxy to an LLM provider)",
            )
        })?;
        Ok(RouteSpec { route, ai_proxy, multi, vars })
    }

    /// Request paths of this route (`uri` and `uris`).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.route.uri.as_str()).filter(|u| !u.is_empty()).chain(self.route.uris.iter().map(String::as_str))
    }

    /// Hosts of this route (`host` and `hosts`).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.route.host.as_str()).filter(|u| !u.is_empty()).chain(self.route.hosts.iter().map(String::as_str))
    }
}
