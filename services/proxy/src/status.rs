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
    let m = &state.metrics;
    let g = Metrics::get;
    let cfg = state.config.load();
    let mut out = String::new();
    for (name, help, kind, v) in [
        ("aigw_proxy_requests_total", "Data-plane requests received.", "counter", g(&m.requests)),
        ("aigw_proxy_gateway_errors_total", "Requests answered with a gateway-made error.", "counter", g(&m.gateway_errors)),
        ("aigw_proxy_upstream_errors_total", "Requests that failed reaching the upstream.", "counter", g(&m.upstream_errors)),
        ("aigw_proxy_prompt_tokens_total", "Prompt tokens reported by upstreams.", "counter", g(&m.prompt_tokens)),
        ("aigw_proxy_completion_tokens_total", "Completion tokens reported by upstreams.", "counter", g(&m.completion_tokens)),
        (
            "aigw_proxy_responses_aborted_total",
            "Responses cut short (client gone, upstream failure, limit, missing end marker).",
            "counter",
            g(&m.responses_aborted),
        ),
        ("aigw_proxy_clients_gone_total", "Responses whose client went away before the end.", "counter", g(&m.clients_gone)),
        ("aigw_proxy_config_applied_total", "Config snapshots applied.", "counter", g(&m.config_applied)),
        ("aigw_proxy_config_rejected_total", "Config snapshots or files rejected.", "counter", g(&m.config_rejected)),
        ("aigw_proxy_routes", "Routes in the applied snapshot.", "gauge", cfg.routes.len() as u64),
        ("aigw_proxy_ready", "1 once a config is applied.", "gauge", state.ready.load(Ordering::Relaxed) as u64),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    // GCP token sources (auth.gcp): cache hits, mints, aigw-token-cache fetches and fallbacks.
    for (short, v) in state.gcp.stats().snapshot() {
        let name = format!("aigw_proxy_gcp_token_{short}_total");
        out.push_str(&format!("# HELP {name} GCP access tokens {}.\n# TYPE {name} counter\n{name} {v}\n", gcp_help(short)));
    }
    out.push_str(&format!(
        "# HELP aigw_proxy_config_info Applied snapshot version.\n# TYPE aigw_proxy_config_info gauge\naigw_proxy_config_info{{version=\"{}\"}} 1\n",
        cfg.version
    ));
    out.push_str(&crate::health::instance_metrics(&cfg));
    out
}

fn gcp_help(short: &str) -> &'static str {
    match short {
        "hits" => "answered from the in-process cache",
        "misses" => "requests that waited for a fetch",
        "coalesced" => "misses that joined a fetch already under way",
        "refresh_ahead" => "background refreshes inside the refresh window",
        "mints" => "minted by this process",
        "mint_failures" => "failed mints",
        "remote_fetches" => "fetched from aigw-token-cache",
        "remote_fallbacks" => "minted locally because aigw-token-cache was unavailable",
        "invalidations" => "dropped after an upstream 401",
        _ => "counter",
    }
}
