//! A data-plane request, as a walk through named stages:
//!
//! ```text
//! read (read.rs) → route (routing.rs) → plan (aigw_providers::plan) → authorize (authorize.rs)
//!      → send (send.rs) → respond (respond.rs) → complete (complete.rs)
//! ```
//!
//! Each request loads the config snapshot once and holds that `Arc` until its response
//! body ends, so a snapshot swap never changes a request half-way. The completion record
//! is filled in by the stages as they go and handed to the sinks exactly once, when the
//! response body ends (or the client leaves), whether the answer came from the upstream
//! or is an error the gateway made.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use aigw_llm::envelope::Envelope;
use aigw_llm::usage::request_facts;
use aigw_model::Provider;
use aigw_providers::plan::{ClientRequest, Plan, PlanError, plan};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::compiled::{CompiledRoute, CompiledTarget};
use crate::complete::Completion;
use crate::errors::{GatewayError, error_response};
use crate::metrics::Metrics;
use crate::read::read_body;
use crate::record::Record;
use crate::respond::{AnswerBody, Payload, respond};
use crate::routing::{body_limit, find_route};
use crate::send::{Sent, send};
use crate::state::{AppState, ProxyBody, request_id};

/// Entry point for every data-plane request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, remote: SocketAddr) -> Result<Response<ProxyBody>, Infallible> {
    Metrics::add(&state.metrics.requests, 1);
    let env = Envelope::for_path(req.uri().path());
    let rid = request_id();
    let request_line = format!("{} {} {:?}", req.method(), req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"), req.version());
    let headers = state.keep_headers.then(|| req.headers().clone());
    let mut rec = Record::new(remote.ip(), request_line, rid.clone(), headers);
    let cfg = state.config.load_full();
    rec.keep_upstream_uri = state.sinks.keep_upstream_uri;
    if let Some(t) = &state.sinks.tracer {
        rec.trace = t.start(req.headers().get("traceparent").map(|v| v.as_bytes()));
        if rec.trace.sampled {
            rec.config_version.clone_from(&cfg.version);
        }
    }
    let mut resp = match proxy(&state, &cfg, req, &mut rec).await {
        Ok(answer) => {
            rec.status = answer.parts.status.as_u16();
            let completion = Completion::new(rec, state.sinks.clone());
            let hold: Box<dyn Send> = Box::new((cfg, answer.hold));
            let body = match answer.payload {
                Payload::Whole(b) => AnswerBody::whole(b, completion, hold),
                Payload::Stream(s) => AnswerBody::stream(s, completion, hold),
            };
            Response::from_parts(answer.parts, body.boxed_unsync())
        }
        Err(e) => {
            tracing::debug!(request_id = %rid, status = e.status.as_u16(), error = %e.message, "gateway error");
            let (parts, bytes) = error_response(env, &e).into_parts();
            rec.status = e.status.as_u16();
            rec.error_code = e.code;
            rec.error = Some((e.source, e.message));
            let completion = Completion::new(rec, state.sinks.clone());
            Response::from_parts(parts, AnswerBody::whole(bytes, completion, Box::new(())).boxed_unsync())
        }
    };
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert(HeaderName::from_static("x-aigw-request-id"), v);
    }
    Ok(resp)
}

async fn proxy(
    state: &Arc<AppState>,
    cfg: &crate::runtime::RuntimeConfig,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<crate::respond::Answer, GatewayError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();

    // read: bounded by the largest body a candidate route accepts.
    let limit = body_limit(cfg, &parts).ok_or_else(|| GatewayError::no_route(path))?;
    let client = read_body(&parts, body, limit, state.client_limits.body_timeout).await?;

    // route
    let route = find_route(cfg, &parts, rec.remote_addr, &client).ok_or_else(|| GatewayError::no_route(path))?;
    rec.set_route(&route, &parts.headers);
    let ap = &route.spec.ai_proxy;
    rec.provider = Some(ap.provider);
    if client.bytes.len() as u64 > ap.max_req_body_size {
        return Err(GatewayError::too_large(client.bytes.len() as u64, ap.max_req_body_size));
    }
    if !client.is_json {
        return Err(GatewayError::bad_request(format!(
            "unsupported content-type: {}, only application/json is supported",
            client.content_type
        )));
    }
    if client.bytes.is_empty() {
        return Err(GatewayError::bad_request("request body is empty"));
    }
    let json = match client.json {
        Some(v) => v,
        None => {
            let e = serde_json::from_slice::<serde_json::Value>(&client.bytes).err().map(|e| e.to_string()).unwrap_or_default();
            return Err(GatewayError::bad_request(format!("could not parse JSON request body: {e}")));
        }
    };
    let proto =
        aigw_llm::protocol::detect(path, &json).ok_or_else(|| GatewayError::bad_request("no matching AI protocol for the request"))?;
    rec.client_protocol = Some(proto);
    let facts = request_facts(proto, &json);
    rec.tool_count = facts.tool_count;
    rec.end_user_id = facts.end_user;
    rec.note_request(&client.bytes, proto, &json);
    if ap.provider == Provider::VertexAi {
        return Err(GatewayError::not_implemented("provider vertex-ai is not implemented yet in this build"));
    }

    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(path);
    let creq = ClientRequest { method: &parts.method, path, path_and_query, headers: &parts.headers, body: &client.bytes, protocol: proto };
    let target = &route.targets[0];
    let (plan, sent) = attempt(&route, target, &creq, json, rec).await?;

    // respond (complete follows when the body ends)
    respond(sent, &plan, &route, rec).await
}

/// One upstream attempt: plan → authorize → send, for one target of the route. The
/// client's request is planned afresh for every attempt (its own protocol, shaping and
/// credentials), so an attempt on another target is a call of this function.
async fn attempt(
    route: &CompiledRoute,
    t: &CompiledTarget,
    creq: &ClientRequest<'_>,
    json: serde_json::Value,
    rec: &mut Record,
) -> Result<(Plan, Sent), GatewayError> {
    // plan
    let mut plan = plan(creq, json, &t.target).map_err(|e| match e {
        PlanError::Unsupported { .. } | PlanError::Invalid(_) => GatewayError::bad_request(e.to_string()),
    })?;
    rec.request_type = if plan.stream { "ai_stream" } else { "ai_chat" };
    rec.stream = plan.stream;
    rec.request_llm_model = plan.request_model.clone().unwrap_or_default();
    rec.llm_model = plan.model.clone().unwrap_or_default();
    rec.instance.clone_from(&t.name);

    // authorize
    t.auth.apply(&mut plan, &t.target.authority)?;
    if let Some(tp) = rec.begin_attempt(t, &plan.url) {
        plan.headers.insert(HeaderName::from_static("traceparent"), tp);
    }

    // send
    let mut builder = Request::builder().method(plan.method.clone()).uri(&plan.url);
    if let Some(h) = builder.headers_mut() {
        *h = std::mem::take(&mut plan.headers);
    }
    let upstream_req = builder
        .body(Full::new(plan.body.clone()))
        .map_err(|e| GatewayError::internal(format!("building the upstream request for {}: {e}", t.target.origin)))?;
    let sent = send(&t.upstream, route.timeout, upstream_req, &t.target.authority).await.map_err(|e| {
        rec.end_attempt(None, Some(e.kind()));
        e.into_gateway_error()
    })?;
    Ok((plan, sent))
}
