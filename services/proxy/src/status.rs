//! The status listener: `/healthz`, `/readyz`, `/config_dump` (secrets redacted), `/metrics`,
//! `/status/instances` (ai-proxy-multi instance health, `health.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::state::{AppState, ProxyBody};

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no config applied yet\n")
            }
        }
        "/config_dump" => {
            let dump = state.config.load().dump();
            text(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&dump).unwrap_or_default())
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", metrics(&state)),
        "/status/instances" => text(StatusCode::OK, "application/json", crate::health::instances_json(&state.config.load())),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

fn metrics(state: &AppState) -> String {
    let mut out = state.metrics.registry.render_prometheus();
    // ai-proxy-multi instances (health, counters): Prometheus only for now.
    out.push_str(&crate::health::instance_metrics(&state.config.load()));
    out
}

/// Reads how many items a sink dropped.
pub type DropCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Registers the node's own values with the metric registry: the original unlabeled
/// `aigw_proxy_*` counters (names unchanged), the applied config, and config updates by
/// result. `dropped` reports lines or entries sinks had to drop, by sink.
pub fn observe_node(state: &Arc<AppState>, dropped: Vec<(&'static str, DropCount)>) {
    let weak = Arc::downgrade(state);
    state.metrics.registry.observe(move |o| {
        let Some(state) = weak.upgrade() else { return };
        let m = &state.metrics;
        let g = Metrics::get;
        for (name, help, v) in [
            ("aigw.proxy.requests", "Data-plane requests received.", g(&m.requests)),
            ("aigw.proxy.gateway_errors", "Requests answered with a gateway-made error.", g(&m.gateway_errors)),
            ("aigw.proxy.upstream_errors", "Requests that failed reaching the upstream.", g(&m.upstream_errors)),
            ("aigw.proxy.prompt_tokens", "Prompt tokens reported by upstreams.", g(&m.prompt_tokens)),
            ("aigw.proxy.completion_tokens", "Completion tokens reported by upstreams.", g(&m.completion_tokens)),
            (
                "aigw.proxy.responses_aborted",
                "Responses cut short (client gone, upstream failure, limit, missing end marker).",
                g(&m.responses_aborted),
            ),
            ("aigw.proxy.clients_gone", "Responses whose client went away before the end.", g(&m.clients_gone)),
            ("aigw.proxy.config_applied", "Config snapshots applied.", g(&m.config_applied)),
            ("aigw.proxy.config_rejected", "Config snapshots or files rejected.", g(&m.config_rejected)),
        ] {
            o.counter(name, "", help, &[], v);
        }
        o.counter(
            "aigw.gateway.config.updates",
            "{update}",
            "Config versions applied, and rejected (NACKed).",
            &[("result", "applied")],
            g(&m.config_applied),
        );
        o.counter("aigw.gateway.config.updates", "{update}", "", &[("result", "rejected")], g(&m.config_rejected));
        o.counter(
            "aigw.metrics.consumers.overflow",
            "{request}",
            "Requests whose consumer was labeled `other` (more distinct consumers than --metrics-max-consumers).",
            &[],
            m.consumers.overflowed.load(Ordering::Relaxed),
        );
        let limits = state.resources.get::<aigw_limits::Counters>();
        o.counter(
            "aigw.ratelimit.degraded",
            "{request}",
            "Token-limit and budget checks decided on this node's own counts while Redis was down (allow_degradation).",
            &[],
            limits.stats.degraded.load(Ordering::Relaxed),
        );
        o.counter(
            "aigw.ratelimit.unavailable",
            "{request}",
            "Requests refused (503) because Redis was down and degradation is not allowed.",
            &[],
            limits.stats.unavailable.load(Ordering::Relaxed),
        );
        for r in limits.endpoints() {
            let up = if r.is_up() { 1.0 } else { 0.0 };
            o.gauge("aigw.ratelimit.redis.up", "", "1 while the Redis of token limits answers.", &[("endpoint", r.endpoint.as_str())], up);
        }
        let cfg = state.config.load();
        o.gauge("aigw.proxy.routes", "", "Routes in the applied snapshot.", &[], cfg.routes.len() as f64);
        o.gauge("aigw.proxy.consumers", "", "Consumers in the applied snapshot.", &[], cfg.consumers.table.by_name.len() as f64);
        o.gauge("aigw.proxy.ready", "", "1 once a config is applied.", &[], state.ready.load(Ordering::Relaxed) as u8 as f64);
        o.gauge("aigw.proxy.config_info", "", "Applied snapshot version.", &[("version", cfg.version.as_str())], 1.0);
        // GCP token sources (auth.gcp): cache hits, mints, aigw-token-cache fetches and fallbacks.
        for (short, v) in state.gcp.stats().snapshot() {
            let (name, help) = gcp_metric(short);
            o.counter(name, "", help, &[], v);
        }
        for (sink, f) in &dropped {
            o.counter(
                "aigw.telemetry.dropped",
                "{item}",
                "Access-log lines and http-logger entries dropped (queue full or sink down).",
                &[("sink", sink)],
                f(),
            );
        }
    });
}

/// The name (rendered `aigw_proxy_gcp_token_<short>_total`) and help of a GCP token counter.
fn gcp_metric(short: &str) -> (&'static str, &'static str) {
    match short {
        "hits" => ("aigw.proxy.gcp_token_hits", "GCP access tokens answered from the in-process cache."),
        "misses" => ("aigw.proxy.gcp_token_misses", "GCP access token requests that waited for a fetch."),
        "coalesced" => ("aigw.proxy.gcp_token_coalesced", "GCP access token misses that joined a fetch already under way."),
        "refresh_ahead" => ("aigw.proxy.gcp_token_refresh_ahead", "GCP access token refreshes inside the refresh window."),
        "mints" => ("aigw.proxy.gcp_token_mints", "GCP access tokens minted by this process."),
        "mint_failures" => ("aigw.proxy.gcp_token_mint_failures", "GCP access token mints that failed."),
        "remote_fetches" => ("aigw.proxy.gcp_token_remote_fetches", "GCP access tokens fetched from aigw-token-cache."),
        "remote_fallbacks" => {
            ("aigw.proxy.gcp_token_remote_fallbacks", "GCP access tokens minted locally because aigw-token-cache was unavailable.")
        }
        "invalidations" => ("aigw.proxy.gcp_token_invalidations", "GCP access tokens dropped after an upstream 401."),
        _ => ("aigw.proxy.gcp_token_other", "Other GCP access token events."),
    }
}
