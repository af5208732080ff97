//! The APISIX-compatible admin REST API (CONTRACT §4), plus `/healthz`, `/metrics`,
//! `/status/nodes`, `/status/quarantine` and `/status/store`. Every error, whatever its
//! cause (bad JSON, a body over the limit, a path segment that is not UTF-8), is
//! `{"error_msg": ...}`. Reads answered while the view may be stale (etcd unreachable
//! or without quorum) carry the header `X-AIGW-Stale: true`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::kinds::consumer::CredentialKind;
use crate::kinds::{CONSUMERS, CREDENTIALS, GROUPS, Kind, PRICES, ROUTES};
use crate::service::ResourceService;

/// Largest admin request body. A route is a few KB; the margin lets oversized fields (a
/// 5 MB id) be read and rejected by name with a 400 rather than cut off with a 413.
pub const MAX_BODY: usize = 8 << 20;

#[derive(Clone)]
pub struct RestState {
    pub svc: Arc<ResourceService>,
    pub admin_key: Arc<String>,
    pub xds: aigw_xds::XdsServer,
    /// The usage read-back's Redis (`--redis`).
    pub usage: Arc<crate::usage::Usage>,
}

pub fn router(state: RestState) -> Router {
    Router::new()
        .route("/apisix/admin/routes", get(list).put(put_body).post(post))
        .route("/apisix/admin/routes/{id}", get(get_one).put(put_path).delete(delete))
        .route("/apisix/admin/consumers", get(|s, h| list_of(s, h, &CONSUMERS)).put(|s, h, b| put_of(s, h, b, &CONSUMERS, None)))
        .route(
            "/apisix/admin/consumers/{username}",
            get(|s, p, h| get_of(s, p, h, &CONSUMERS))
                .put(|s, p: Result<Path<String>, PathRejection>, h, b| async move { put_of(s, h, b, &CONSUMERS, Some(path_id(p)?)).await })
                .delete(|s, p, h| delete_of(s, p, h, &CONSUMERS)),
        )
        .route("/apisix/admin/consumers/{username}/credentials", get(list_credentials))
        .route(
            "/apisix/admin/consumers/{username}/credentials/{id}",
            get(|s, p: Result<Path<(String, String)>, PathRejection>, h| async move { get_of(s, Ok(Path(cred(p)?)), h, &CREDENTIALS).await })
                .put(|s, p: Result<Path<(String, String)>, PathRejection>, h, b| async move {
                    put_of(s, h, b, &CREDENTIALS, Some(cred(p)?)).await
                })
                .delete(|s, p: Result<Path<(String, String)>, PathRejection>, h| async move {
                    delete_of(s, Ok(Path(cred(p)?)), h, &CREDENTIALS).await
                }),
        )
        .route("/apisix/admin/consumer_groups", get(|s, h| list_of(s, h, &GROUPS)).put(|s, h, b| put_of(s, h, b, &GROUPS, None)))
        .route(
            "/apisix/admin/consumer_groups/{id}",
            get(|s, p, h| get_of(s, p, h, &GROUPS))
                .put(|s, p: Result<Path<String>, PathRejection>, h, b| async move { put_of(s, h, b, &GROUPS, Some(path_id(p)?)).await })
                .delete(|s, p, h| delete_of(s, p, h, &GROUPS)),
        )
        .route("/aigw/admin/prices", get(list_prices))
        .route(
            "/aigw/admin/prices/{provider}/{*model}",
            get(|s, p: Result<Path<(String, String)>, PathRejection>, h| async move { get_of(s, Ok(Path(price_name(p)?)), h, &PRICES).await })
                .put(|s, p: Result<Path<(String, String)>, PathRejection>, h, b| async move {
                    put_of(s, h, b, &PRICES, Some(price_name(p)?)).await
                })
                .delete(|s, p: Result<Path<(String, String)>, PathRejection>, h| async move {
                    delete_of(s, Ok(Path(price_name(p)?)), h, &PRICES).await
                }),
        )
        .route("/aigw/admin/usage", get(usage))
        .route("/status/nodes", get(nodes))
        .route("/status/quarantine", get(quarantine))
        .route("/status/store", get(store_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(reject_oversized))
        .layer(axum::middleware::from_fn(server_span))
        .with_state(state)
}

/// Each admin request in a `tracing` span (exported as an OTLP SERVER span when an
/// exporter is configured): method, path (never the query) and the answer's status.
async fn server_span(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "admin_request",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());
    resp
}

/// A declared `Content-Length` over the limit gets its 413 before the body is touched,
/// so a client waiting on `Expect: 100-continue` is never told to send it.
async fn reject_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError::too_large(format!("request body is larger than {MAX_BODY} bytes")).into_response();
    }
    next.run(req).await
}

fn check_key(state: &RestState, headers: &HeaderMap) -> Result<(), ApiError> {
    let got = headers.get("x-api-key").map(|v| v.as_bytes()).unwrap_or_default();
    if aigw_xds::secret_eq(got, state.admin_key.as_bytes()) { Ok(()) } else { Err(ApiError::unauthenticated()) }
}

/// The body, or the JSON error for a body that could not be read (413 over the limit).
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("request body is larger than {MAX_BODY} bytes"))
        } else {
            ApiError::invalid(format!("cannot read the request body: {}", r.body_text()))
        }
    })
}

/// The `{id}` path segment; percent-decoded, it must be UTF-8.
fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(id)| id).map_err(|_| ApiError::invalid("id: the path segment is not valid UTF-8 once percent-decoded"))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("(root): request body is empty; send the route JSON"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("(root): invalid JSON: {e}")))
}

fn envelope(id: &str, route: Value) -> Value {
    envelope_of(&ROUTES, id, route)
}

/// APISIX's envelope: `/apisix/{store key}` (`/apisix/consumers/bob/credentials/c1`);
/// prices, which APISIX does not have, under `/aigw/prices/…`.
fn envelope_of(kind: &'static dyn Kind, name: &str, value: Value) -> Value {
    let root = if kind.plural() == PRICES.plural() { "/aigw" } else { "/apisix" };
    json!({ "key": format!("{root}/{}", kind.key(name)), "value": value })
}

/// `(username, id)` of a credential path → its name.
fn cred(p: Result<Path<(String, String)>, PathRejection>) -> Result<String, ApiError> {
    let Path((u, id)) = p.map_err(|_| ApiError::invalid("username, id: a path segment is not valid UTF-8 once percent-decoded"))?;
    Ok(CredentialKind::name(&u, &id))
}

/// `(provider, model)` of a price path (the model may hold `/`) → its name.
fn price_name(p: Result<Path<(String, String)>, PathRejection>) -> Result<String, ApiError> {
    let Path((provider, model)) = p.map_err(|_| ApiError::invalid("provider, model: the path is not valid UTF-8 once percent-decoded"))?;
    Ok(format!("{provider}/{model}"))
}

async fn put_of(
    State(s): State<RestState>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
    kind: &'static dyn Kind,
    name: Option<String>,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let out = s.svc.put(kind, parse_body(&body(b)?)?, name.as_deref()).await?;
    let name = out.name.clone();
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(envelope_of(kind, &name, out.value))).into_response())
}

async fn get_of(
    State(s): State<RestState>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    kind: &'static dyn Kind,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let name = path_id(p)?;
    let v = s.svc.get(kind, &name)?;
    Ok(read_answer(&s, envelope_of(kind, &name, v)))
}

async fn delete_of(
    State(s): State<RestState>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    kind: &'static dyn Kind,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let name = path_id(p)?;
    s.svc.delete(kind, &name).await?;
    let root = if kind.plural() == PRICES.plural() { "/aigw" } else { "/apisix" };
    Ok(axum::Json(json!({ "deleted": "1", "key": format!("{root}/{}", kind.key(&name)) })).into_response())
}

async fn list_of(State(s): State<RestState>, headers: HeaderMap, kind: &'static dyn Kind) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let list: Vec<Value> = s.svc.list_named(kind).into_iter().map(|(n, v)| envelope_of(kind, &n, v)).collect();
    Ok(read_answer(&s, json!({ "total": list.len(), "list": list })))
}

async fn list_credentials(
    State(s): State<RestState>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let username = path_id(p)?;
    s.svc.get(&CONSUMERS, &username)?;
    let list: Vec<Value> = s
        .svc
        .list_prefix(&CREDENTIALS, &format!("consumers/{username}/credentials/"))
        .into_iter()
        .map(|(n, v)| envelope_of(&CREDENTIALS, &n, v))
        .collect();
    Ok(read_answer(&s, json!({ "total": list.len(), "list": list })))
}

/// The operator's prices and the default catalog (with its date).
async fn list_prices(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let list: Vec<Value> = s.svc.list_named(&PRICES).into_iter().map(|(n, v)| envelope_of(&PRICES, &n, v)).collect();
    let (date, defaults) = aigw_model::prices::default_catalog();
    Ok(read_answer(&s, json!({ "total": list.len(), "list": list, "defaults": {"date": date, "prices": defaults} })))
}

async fn usage(State(s): State<RestState>, q: axum::extract::RawQuery, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let mut consumer = None;
    for pair in q.0.as_deref().unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("consumer", v)) => {
                // Usernames are [a-zA-Z0-9_-]: nothing to percent-decode.
                aigw_model::consumer::validate_username("consumer", v).map_err(|e| ApiError::invalid(e.to_string()))?;
                consumer = Some(v.to_owned());
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "query: unknown parameter {:?} (only consumer=NAME)",
                    pair.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    let out = crate::usage::report(&s.svc, &s.usage, consumer.as_deref()).await?;
    Ok(read_answer(&s, out))
}

/// Header marking a read served from a view that may be stale.
pub const STALE_HEADER: &str = "x-aigw-stale";

/// A read's answer, marked when the view may be stale.
fn read_answer(s: &RestState, body: Value) -> Response {
    let mut r = axum::Json(body).into_response();
    if s.svc.stale().is_some() {
        r.headers_mut().insert(STALE_HEADER, http::HeaderValue::from_static("true"));
    }
    r
}

/// After the admin key was checked.
async fn do_put(state: &RestState, body: &Bytes, id: Option<&str>) -> Result<Response, ApiError> {
    let out = state.svc.put(&ROUTES, parse_body(body)?, id).await?;
    let id = out.value.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let status = if out.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(envelope(&id, out.value))).into_response())
}

async fn put_path(
    State(s): State<RestState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let id = path_id(id)?;
    do_put(&s, &body(b)?, Some(&id)).await
}

async fn put_body(State(s): State<RestState>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    do_put(&s, &body(b)?, None).await
}

/// APISIX's POST creates a route with a generated id.
async fn post(State(s): State<RestState>, headers: HeaderMap, b: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let mut v = parse_body(&body(b)?)?;
    if let Some(o) = v.as_object_mut()
        && !o.contains_key("id")
    {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        o.insert("id".into(), Value::String(format!("{nanos}")));
    }
    let out = s.svc.put(&ROUTES, v, None).await?;
    let id = out.value.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok((StatusCode::CREATED, axum::Json(envelope(&id, out.value))).into_response())
}

async fn get_one(State(s): State<RestState>, id: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let id = path_id(id)?;
    let r = s.svc.get(&ROUTES, &id)?;
    Ok(read_answer(&s, envelope(&id, r)))
}

async fn list(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let (routes, version) = s.svc.list(&ROUTES);
    let list: Vec<Value> = routes
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            envelope(&id, r)
        })
        .collect();
    Ok(read_answer(&s, json!({ "total": list.len(), "list": list, "version": version })))
}

async fn delete(State(s): State<RestState>, id: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let id = path_id(id)?;
    s.svc.delete(&ROUTES, &id).await?;
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

async fn quarantine(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let mut out = serde_json::Map::new();
    for kind in crate::kinds::all() {
        let field = if kind.noun() == "route" { "id" } else { "name" };
        let list: Vec<Value> = s.svc.quarantine(*kind).into_iter().map(|(n, reason)| json!({field: n, "reason": reason})).collect();
        if kind.noun() == "route" || !list.is_empty() {
            out.insert(kind.plural().to_owned(), Value::Array(list));
        }
    }
    Ok(read_answer(&s, Value::Object(out)))
}

/// The store this replica uses, the revision its view reflects, and whether it is current.
async fn store_status(State(s): State<RestState>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let st = s.svc.store_status();
    Ok(read_answer(
        &s,
        json!({"store": st.kind, "describe": st.describe, "revision": st.revision, "stale": !st.health.fresh, "detail": st.health.detail}),
    ))
}

/// Every instrument of `/metrics`: Prometheus name, OTLP name, help, counter or gauge, value.
fn rows(s: &RestState) -> [(&'static str, &'static str, &'static str, bool, u64); 23] {
    let m = s.xds.metrics();
    let w = &s.svc.metrics;
    let st = s.svc.store_status();
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        ("aigw_config_routes", "aigw.config.routes", "Routes stored.", false, s.svc.count(&ROUTES) as u64),
        (
            "aigw_config_quarantined_routes",
            "aigw.config.quarantined_routes",
            "Stored routes left out of snapshots.",
            false,
            s.svc.quarantine(&ROUTES).len() as u64,
        ),
        ("aigw_config_consumers", "aigw.config.consumers", "Consumers stored.", false, s.svc.count(&CONSUMERS) as u64),
        ("aigw_config_credentials", "aigw.config.credentials", "Consumer credentials stored.", false, s.svc.count(&CREDENTIALS) as u64),
        ("aigw_config_consumer_groups", "aigw.config.consumer_groups", "Consumer groups stored.", false, s.svc.count(&GROUPS) as u64),
        (
            "aigw_config_prices",
            "aigw.config.prices",
            "Operator prices stored (over the default catalog).",
            false,
            s.svc.count(&PRICES) as u64,
        ),
        ("aigw_config_writes_total", "aigw.config.writes", "Route writes and deletes committed.", true, g(&w.writes)),
        ("aigw_config_commits_total", "aigw.config.commits", "Group commits (each one new version).", true, g(&w.commits)),
        (
            "aigw_config_store_conflicts_total",
            "aigw.config.store_conflicts",
            "Batches another writer got in first (decided again).",
            true,
            g(&w.conflicts),
        ),
        (
            "aigw_config_store_reloads_total",
            "aigw.config.store_reloads",
            "Full reloads of the store (a watch's history was compacted).",
            true,
            g(&w.reloads),
        ),
        (
            "aigw_config_store_ignored_keys_total",
            "aigw.config.store_ignored_keys",
            "Keys under the prefix no resource kind owns.",
            true,
            g(&w.ignored_keys),
        ),
        ("aigw_config_store_revision", "aigw.config.store_revision", "Store revision the view reflects.", false, st.revision.max(0) as u64),
        (
            "aigw_config_store_stale",
            "aigw.config.store_stale",
            "1 while the view may be stale (etcd unreachable or without quorum).",
            false,
            u64::from(!st.health.fresh),
        ),
        ("aigw_xds_streams_active", "aigw.xds.streams_active", "Open discovery streams.", false, g(&m.streams_active)),
        ("aigw_xds_responses_sent_total", "aigw.xds.responses_sent", "Updates sent (full sets and deltas).", true, g(&m.responses_sent)),
        ("aigw_xds_full_responses_sent_total", "aigw.xds.full_responses_sent", "Full sets sent.", true, g(&m.full_responses_sent)),
        ("aigw_xds_resources_sent_total", "aigw.xds.resources_sent", "Resources sent.", true, g(&m.resources_sent)),
        ("aigw_xds_response_bytes_total", "aigw.xds.response_bytes", "gRPC message bytes of the updates sent.", true, g(&m.response_bytes)),
        ("aigw_xds_acks_total", "aigw.xds.acks", "Updates applied by proxies.", true, g(&m.acks)),
        ("aigw_xds_nacks_total", "aigw.xds.nacks", "Updates rejected by proxies.", true, g(&m.nacks)),
        ("aigw_xds_stale_nonces_total", "aigw.xds.stale_nonces", "Requests ignored for a stale nonce.", true, g(&m.stale_nonces)),
        (
            "aigw_xds_suppressed_resends_total",
            "aigw.xds.suppressed_resends",
            "Rejected versions not resent.",
            true,
            g(&m.suppressed_resends),
        ),
        (
            "aigw_xds_unauthenticated_total",
            "aigw.xds.unauthenticated",
            "Discovery streams refused for a missing or wrong node token.",
            true,
            g(&m.unauthenticated),
        ),
    ]
}

/// The instruments of `/metrics` over OTLP too (read at each export).
pub fn observe(registry: &aigw_telemetry::metrics::Registry, state: RestState) {
    registry.observe(move |o| {
        for (_, name, help, counter, v) in rows(&state) {
            if counter {
                o.counter(name, "1", help, &[], v);
            } else {
                o.gauge(name, "1", help, &[], v as f64);
            }
        }
    });
}

async fn metrics(State(s): State<RestState>) -> Response {
    let mut out = String::new();
    for (name, _, help, counter, v) in rows(&s) {
        let kind = if counter { "counter" } else { "gauge" };
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
