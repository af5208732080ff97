//! The route stage: which compiled route serves a request. Paths, methods and hosts are
//! known before the body is read (that bounds the read); `vars` may look at the parsed
//! body (`post_arg.*`), so the final match runs after the read stage.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header;

use crate::compiled::CompiledRoute;
use crate::read::ClientBody;
use crate::reqvars::RequestVars;
use crate::router::MatchInput;
use crate::runtime::RuntimeConfig;

/// `Host` without its port, lower-case.
pub fn host_of(parts: &http::request::Parts) -> Cow<'_, str> {
    let raw = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| parts.uri.host()).unwrap_or_default();
    let no_port = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
        _ => raw,
    };
    // Clients send lower case: lower only what is not (no allocation per request).
    if no_port.bytes().any(|b| b.is_ascii_uppercase()) { Cow::Owned(no_port.to_ascii_lowercase()) } else { Cow::Borrowed(no_port) }
}

/// The largest body any route matching the path, method and host (`host_of`) accepts; None when no
/// route can match.
pub fn body_limit(cfg: &RuntimeConfig, parts: &http::request::Parts, host: &str) -> Option<u64> {
    let input = MatchInput { path: parts.uri.path(), method: parts.method.as_str(), host };
    let mut limit = 0u64;
    cfg.router.first_where(input.path, |r| {
        if r.matches_static(&input) {
            limit = limit.max(r.spec.ai_proxy.max_req_body_size);
        }
        false
    });
    (limit > 0).then_some(limit)
}

/// The route for a request whose body has been read (`host`: [`host_of`]).
pub fn find_route(
    cfg: &RuntimeConfig,
    parts: &http::request::Parts,
    host: &str,
    remote: IpAddr,
    body: &ClientBody,
) -> Option<Arc<CompiledRoute>> {
    let path = parts.uri.path();
    let input = MatchInput { path, method: parts.method.as_str(), host };
    let vars = RequestVars {
        path,
        request_uri: parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(path),
        query: parts.uri.query().unwrap_or_default(),
        method: parts.method.as_str(),
        host,
        scheme: "http",
        remote,
        headers: &parts.headers,
        body: body.form.as_ref(),
        json: body.json.as_ref(),
        decoded: Default::default(),
        remote_text: Default::default(),
    };
    cfg.router.find(&input, &vars)
}
