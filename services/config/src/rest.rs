//! The APISIX-compatible admin REST API (CONTRACT §4), plus `/healthz`, `/metrics`
//! and `/status/nodes`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::routes::RouteService;

#[derive(Clone)]
pub struct RestState {
    pub routes: Arc<RouteService>,
    pub admin_key: Arc<String>,
    pub xds: aigw_xds::XdsServer,
}

pub fn router(state: RestState) -> Router {
    Router::new()
        .route("/apisix/admin/routes", get(list).put(put_body).post(post))
        .route("/apisix/admin/routes/{id}", get(get_one).put(put_path).delete(delete))
        .route("/status/nodes", get(nodes))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn check_key(state: &RestState, headers: &HeaderMap) -> Result<(), ApiError> {
    let got = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if aigw_xds::server::constant_time_eq(got.as_bytes(), state.admin_key.as_bytes()) { Ok(()) } else { Err(ApiError::unauthenticated()) }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("request body is empty; send the route JSON"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))
}

fn envelope(id: &str, route: Value) -> Value {
    json!({ "key": format!("/apisix/routes/{id}"), "value": route })
}

async fn do_put(state: &RestState, headers: &HeaderMap, body: &Bytes, id: Option<&str>) -> Result<Response, ApiError> {
    check_key(state, headers)?;
    let out = state.routes.put(parse_body(body)?, id).await?;
    let id = out.route.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(envelope(&id, out.route))).into_response())
}

async fn put_path(State(s): State<RestState>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    do_put(&s, &headers, &body, Some(&id)).await
}

async fn put_body(State(s): State<RestState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    do_put(&s, &headers, &body, None).await
}

/// APISIX's POST creates a route with a generated id.
async fn post(State(s): State<RestState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let mut v = parse_body(&body)?;
    if let Some(o) = v.as_object_mut()
        && !o.contains_key("id")
    {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        o.insert("id".into(), Value::String(format!("{nanos}")));
    }
    let out = s.routes.put(v, None).await?;
    let id = out.route.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok((StatusCode::CREATED, axum::Json(envelope(&id, out.route))).into_response())
}

async fn get_one(State(s): State<RestState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let r = s.routes.get(&id).await?;
    Ok(axum::Json(envelope(&id, r)).into_response())
}

async fn list(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let (routes, version) = s.routes.list().await;
    let list: Vec<Value> = routes
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            envelope(&id, r)
        })
        .collect();
    Ok(axum::Json(json!({ "total": list.len(), "list": list, "version": version })).into_response())
}

async fn delete(State(s): State<RestState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    s.routes.delete(&id).await?;
    Ok(axum::Json(json!({ "deleted": "1", "key": format!("/apisix/routes/{id}") })).into_response())
}

async fn nodes(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let nodes: Vec<Value> = s
        .xds
        .node_statuses()
        .into_iter()
        .map(|n| {
            json!({"node_id": n.node_id, "connected_streams": n.connected_streams, "acked_version": n.acked_version,
                   "nacked_versions": n.nacked_versions, "last_nack_error": n.last_nack_error, "last_seen_unix": n.last_seen_unix})
        })
        .collect();
    Ok(axum::Json(json!({ "nodes": nodes })).into_response())
}

async fn metrics(State(s): State<RestState>) -> Response {
    let m = s.xds.metrics();
    let (routes, _) = s.routes.list().await;
    let mut out = String::new();
    for (name, help, kind, v) in [
        ("aigw_config_routes", "Routes stored.", "gauge", routes.len() as u64),
        ("aigw_xds_streams_active", "Open discovery streams.", "gauge", m.streams_active.load(Ordering::Relaxed)),
        ("aigw_xds_responses_sent_total", "Snapshots sent.", "counter", m.responses_sent.load(Ordering::Relaxed)),
        ("aigw_xds_acks_total", "Snapshots applied by proxies.", "counter", m.acks.load(Ordering::Relaxed)),
        ("aigw_xds_nacks_total", "Snapshots rejected by proxies.", "counter", m.nacks.load(Ordering::Relaxed)),
        ("aigw_xds_stale_nonces_total", "Requests ignored for a stale nonce.", "counter", m.stale_nonces.load(Ordering::Relaxed)),
        ("aigw_xds_suppressed_resends_total", "Rejected versions not resent.", "counter", m.suppressed_resends.load(Ordering::Relaxed)),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
