//! `key-auth` (CONTRACT §12): who is calling, from the consumer's key — on the access
//! phase, where identity is decided.
//!
//! The key is read from, in order: the configured `header` (default `apikey`),
//! `Authorization: Bearer <key>`, `x-api-key`, `api-key` (so the official SDKs work with
//! `api_key=<consumer key>` unchanged), then the `query` parameter. It is looked up by its
//! keyed hash (one HMAC, one probe: the cost does not depend on how much of a key is
//! right) and always removed from the request before it goes upstream, whatever
//! `hide_credentials` says. Missing or unknown → 401 in the client's protocol, unless
//! `anonymous_consumer` names a consumer to run as.

use std::sync::Arc;

use aigw_llm::envelope::Class;
use aigw_model::keyauth::KeyAuthConfig;
use aigw_model::route::from_value_at;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use serde_json::Value;

use crate::errors::GatewayError;
use crate::phases::{Access, Plugin, PluginEnv, PluginError, Step};

pub const NAME: &str = "key-auth";

#[derive(Debug)]
pub struct KeyAuth {
    header: HeaderName,
    query: String,
    anonymous: Option<String>,
    www_authenticate: HeaderValue,
}

pub fn factory(conf: &Value, _env: &PluginEnv<'_>) -> Result<Arc<dyn Plugin>, PluginError> {
    let c: KeyAuthConfig = from_value_at("plugins.key-auth", conf).map_err(|e| PluginError::new(NAME, e.message))?;
    let header =
        HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes()).map_err(|e| PluginError::new(NAME, format!("header: {e}")))?;
    let www_authenticate = HeaderValue::from_str(&format!("apikey realm=\"{}\"", c.realm.replace('"', "")))
        .map_err(|_| PluginError::new(NAME, "realm: not a valid header value"))?;
    Ok(Arc::new(KeyAuth { header, query: c.query, anonymous: c.anonymous_consumer, www_authenticate }))
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Where a key was found.
enum Found {
    Header(HeaderName),
    Query,
}

impl KeyAuth {
    fn find(&self, parts: &http::request::Parts) -> Option<(String, Found)> {
        let value = |h: &HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
        if let Some(v) = value(&self.header) {
            // `header: Authorization` with a Bearer key, as SDKs send it.
            let v = if self.header == AUTHORIZATION { bearer(v).unwrap_or(v) } else { v };
            return Some((v.to_owned(), Found::Header(self.header.clone())));
        }
        if let Some(k) = value(&AUTHORIZATION).and_then(bearer) {
            return Some((k.to_owned(), Found::Header(AUTHORIZATION)));
        }
        for h in [&X_API_KEY, &API_KEY] {
            if let Some(v) = value(h) {
                return Some((v.to_owned(), Found::Header(h.clone())));
            }
        }
        query_param(parts.uri.query()?, &self.query).map(|k| (k, Found::Query))
    }

    fn refuse(&self, message: &'static str) -> GatewayError {
        GatewayError::refused(StatusCode::UNAUTHORIZED, Class::Auth, "invalid_api_key", message)
            .with_header(http::header::WWW_AUTHENTICATE, self.www_authenticate.clone())
    }
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|k| !k.is_empty())
}

fn query_param(q: &str, name: &str) -> Option<String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| aigw_providers::target::decode_component(k) == name)
        .map(|(_, v)| aigw_providers::target::decode_component(v))
        .filter(|v| !v.is_empty())
}

/// The URI without the query parameter `name`.
fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let q = uri.query()?;
    let kept: Vec<&str> =
        q.split('&').filter(|kv| aigw_providers::target::decode_component(kv.split('=').next().unwrap_or_default()) != name).collect();
    let pq = if kept.is_empty() { uri.path().to_owned() } else { format!("{}?{}", uri.path(), kept.join("&")) };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).ok()
}

impl Plugin for KeyAuth {
    fn name(&self) -> &str {
        NAME
    }

    fn priority(&self) -> i32 {
        2500
    }

    fn access(&self, cx: &mut Access<'_>) -> Step {
        let found = self.find(cx.parts);
        let consumer = found.as_ref().and_then(|(k, _)| cx.consumers.with_key(k)).cloned();
        // Never forwarded: the header (or parameter) it came from, and any other of the
        // candidate headers holding the same key.
        if let Some((key, from)) = &found {
            match from {
                Found::Header(h) => {
                    cx.parts.headers.remove(h);
                }
                Found::Query => {
                    if let Some(u) = without_param(&cx.parts.uri, &self.query) {
                        cx.parts.uri = u;
                    }
                }
            }
            for h in [&self.header, &AUTHORIZATION, &X_API_KEY, &API_KEY] {
                if cx.parts.headers.get(h).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(key.as_str())) {
                    cx.parts.headers.remove(h);
                }
            }
        }
        match consumer {
            Some(c) => {
                cx.identify(&c);
                Step::Next
            }
            None => match &self.anonymous {
                Some(name) => match cx.consumers.named(name).cloned() {
                    Some(c) => {
                        cx.identify(&c);
                        Step::Next
                    }
                    None => Step::Refuse(self.refuse("Invalid user authorization")),
                },
                None if found.is_none() => Step::Refuse(self.refuse("Missing API key in request")),
                None => Step::Refuse(self.refuse("Invalid API key in request")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn plugin(conf: Value) -> KeyAuth {
        let c: KeyAuthConfig = serde_json::from_value(conf).unwrap();
        KeyAuth {
            header: HeaderName::from_bytes(c.header.to_ascii_lowercase().as_bytes()).unwrap(),
            query: c.query,
            anonymous: c.anonymous_consumer,
            www_authenticate: HeaderValue::from_static("apikey realm=\"key\""),
        }
    }

    #[test]
    fn where_keys_are_found() {
        let p = plugin(serde_json::json!({}));
        let key = |uri: &str, h: &[(&str, &str)]| p.find(&parts(uri, h)).map(|(k, _)| k);
        // The order of CONTRACT §12.
        assert_eq!(key("/x", &[("apikey", "k1"), ("authorization", "Bearer k2")]).as_deref(), Some("k1"));
        assert_eq!(key("/x", &[("authorization", "Bearer k2"), ("x-api-key", "k3")]).as_deref(), Some("k2"));
        assert_eq!(key("/x", &[("authorization", "Basic abc"), ("x-api-key", "k3")]).as_deref(), Some("k3"));
        assert_eq!(key("/x", &[("api-key", "k4")]).as_deref(), Some("k4"));
        assert_eq!(key("/x?apikey=k%2D5&a=1", &[]).as_deref(), Some("k-5"));
        assert_eq!(key("/x?apikey=", &[("apikey", "")]), None);
        assert_eq!(key("/x", &[]), None);
        let p = plugin(serde_json::json!({"header": "Authorization", "query": "key"}));
        assert_eq!(p.find(&parts("/x", &[("authorization", "Bearer k6")])).map(|(k, _)| k).as_deref(), Some("k6"));
        assert_eq!(p.find(&parts("/x?key=k7", &[])).map(|(k, _)| k).as_deref(), Some("k7"));
    }

    #[test]
    fn the_query_key_is_removed() {
        let u: Uri = "/v1/chat?a=1&apikey=secret&b=2".parse().unwrap();
        assert_eq!(without_param(&u, "apikey").unwrap().to_string(), "/v1/chat?a=1&b=2");
        let u: Uri = "/v1/chat?apikey=secret".parse().unwrap();
        assert_eq!(without_param(&u, "apikey").unwrap().to_string(), "/v1/chat");
    }
}
