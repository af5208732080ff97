//! A data-plane request, as a walk through named stages:
//!
//! ```text
//! read (read.rs) → route (routing.rs) → plan (aigw_providers::plan) → authorize (authorize.rs)
//!      → send (send.rs) → respond (respond.rs) → complete (complete.rs)
//! ```
//!
//! Each request loads the config snapshot once and holds that `Arc` until its response
//! body ends, so a snapshot swap never changes a request half-way.
//!
//! plan → authorize → send is one *attempt* ([`attempt`]). An `ai-proxy` route makes one;
//! an `ai-proxy-multi` route picks an instance, and when the attempt fails in a way its
//! `fallback_strategy` covers, picks another and attempts again ([`upstream`]). The loop
//! runs before `respond` hands a body to the client, so no retry can follow a byte the
//! client already has.
//!
//! The completion record is filled in by the stages as they go and handed to the sinks
//! exactly once, when the response body ends (or the client leaves), whether the answer
//! came from the upstream or is an error the gateway made.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aigw_balance::Outcome as AttemptOutcome;
use aigw_balance::retry::{self, Attempt, Decision};
use aigw_llm::envelope::Envelope;
use aigw_llm::usage::request_facts;
use aigw_providers::plan::{ClientRequest, Plan, PlanError, plan};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::compiled::{CompiledRoute, CompiledTarget, MultiRoute};
use crate::complete::Completion;
use crate::errors::{GatewayError, error_response};
use crate::metrics::Metrics;
use crate::phases::Chain;
use crate::read::read_body;
use crate::record::Record;
use crate::respond::{AnswerBody, Payload, respond};
use crate::routing::{body_limit, find_route};
use crate::send::{SendError, Sent, send};
use crate::state::{AppState, ProxyBody, request_id};

/// `METHOD /path?query HTTP/1.1`, built without the formatting machinery.
fn request_line(req: &Request<Incoming>) -> String {
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let version = match req.version() {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let mut line = String::with_capacity(req.method().as_str().len() + pq.len() + 10);
    line.push_str(req.method().as_str());
    line.push(' ');
    line.push_str(pq);
    line.push(' ');
    line.push_str(version);
    line
}

/// Entry point for every data-plane request.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>, remote: SocketAddr) -> Result<Response<ProxyBody>, Infallible> {
    Metrics::add(&state.metrics.requests, 1);
    let env = Envelope::for_path(req.uri().path());
    let rid = request_id();
    let request_line = request_line(&req);
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
    // The route's plugins, once routing found it (`crate::phases`).
    let mut chain = Chain::empty();
    let mut resp = match proxy(&state, &cfg, req, remote, &mut rec, &mut chain).await {
        Ok(mut answer) => {
            rec.status = answer.parts.status.as_u16();
            chain.response_head(answer.parts.status, &mut answer.parts.headers, &rec);
            let completion = Completion::new(rec, state.sinks.clone(), chain, Some(cfg.prices.clone()));
            let hold: Box<dyn Send> = Box::new((cfg, answer.hold));
            let body = match answer.payload {
                Payload::Whole(b) => AnswerBody::whole(b, completion, hold),
                Payload::Stream(s) => AnswerBody::stream(s, completion, hold),
            };
            Response::from_parts(answer.parts, body.boxed_unsync())
        }
        Err(e) => {
            tracing::debug!(request_id = %rid, status = e.status.as_u16(), error = %e.message, "gateway error");
            rec.status = e.status.as_u16();
            rec.error_code = e.code;
            rec.error = Some((e.source, e.message.clone()));
            let (mut parts, bytes) = error_response(env, e).into_parts();
            chain.response_head(parts.status, &mut parts.headers, &rec);
            let completion = Completion::new(rec, state.sinks.clone(), chain, None);
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
    remote: SocketAddr,
    rec: &mut Record,
    chain: &mut Chain,
) -> Result<crate::respond::Answer, GatewayError> {
    let (mut parts, body) = req.into_parts();

    // read: bounded by the largest body a candidate route accepts.
    let host = crate::routing::host_of(&parts);
    let limit = body_limit(cfg, &parts, &host).ok_or_else(|| GatewayError::no_route(parts.uri.path()))?;
    let client = read_body(&parts, body, limit, state.client_limits.body_timeout).await?;

    // route
    let route = find_route(cfg, &parts, &host, rec.remote_addr, &client).ok_or_else(|| GatewayError::no_route(parts.uri.path()))?;
    rec.set_route(route.id(), route.needs, route.spec.ai_proxy.logging.as_ref().is_some_and(|l| l.payloads), &parts.headers);
    rec.memo = Some(route.memo.clone());
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
    let proto = aigw_llm::protocol::detect(parts.uri.path(), &json)
        .ok_or_else(|| GatewayError::bad_request("no matching AI protocol for the request"))?;
    rec.client_protocol = Some(proto);
    let facts = request_facts(proto, &json);
    rec.tool_count = facts.tool_count;
    rec.end_user_id = facts.end_user;
    rec.note_request(&client.bytes, proto, &json);
    rec.request_bytes = client.bytes.len() as u64;

    // access: the route's plugins (and the caller's, once one identifies it).
    if !route.plugins.is_empty() {
        *chain = Chain::new(route.plugins.clone());
        chain.access(&mut parts, remote, &route.spec, &cfg.consumers.table, proto, &json, rec).await?;
    }

    let path = parts.uri.path();
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(path);
    let creq = ClientRequest { method: &parts.method, path, path_and_query, headers: &parts.headers, body: &client.bytes, protocol: proto };
    let (plan, sent) = upstream(&route, &creq, &parts, remote, &json, rec, chain).await?;

    // respond (complete follows when the body ends)
    respond(sent, &plan, &route, rec).await
}

/// plan → authorize → send until an attempt gives the answer the client gets: the only
/// one for `ai-proxy`; for `ai-proxy-multi`, attempts on picked instances while the
/// fallback policy says retry and an instance is left (CONTRACT §9, `docs/multi.md`).
///
/// A failed attempt's answer is dropped before the next attempt (unread, which closes its
/// connection). Every attempt starts from the client's original body (validated once; a
/// native route shapes its bytes in place, a conversion parses its tree once).
async fn upstream(
    route: &CompiledRoute,
    creq: &ClientRequest<'_>,
    parts: &http::request::Parts,
    remote: SocketAddr,
    json: &aigw_llm::body::RawBody,
    rec: &mut Record,
    chain: &mut Chain,
) -> Result<(Plan, Sent), GatewayError> {
    let multi = route.multi.as_ref();
    let who = rec.consumer.as_ref().map(|c| c.name.clone());
    let key = multi.map(|m| {
        crate::health::ensure_probers(route.id(), m);
        m.hash.key(parts, remote, who.as_deref())
    });
    let key = key.as_deref().unwrap_or_default().as_bytes();
    let mut i = match multi {
        None => 0,
        Some(m) => m.balancer.pick(key, &[]).ok_or_else(no_instance)?,
    };
    // Instances left out of the pick (tried or refused), and upstream attempts made.
    let mut tried: Vec<usize> = Vec::new();
    let mut attempts = 0u32;
    loop {
        let t = &route.targets[i];
        // Only a retry decision needs the attempt's duration.
        let started = multi.is_some().then(Instant::now);
        let result = attempt(route, t, i, creq, json, rec, chain).await;
        // (GCP credentials: a 401 here re-mints the token and retries this target once.)
        let outcome = match &result {
            Ok((_, sent)) => AttemptOutcome::Status(sent.response.status().as_u16()),
            Err(AttemptError::Send(e)) => e.outcome(),
            Err(AttemptError::Refused(_)) => AttemptOutcome::Refused,
            // The request cannot be planned or authorized for this instance: not its failure.
            Err(AttemptError::Gateway(_)) => return result.map_err(AttemptError::into_gateway_error),
        };
        let Some(m) = multi else { return result.map_err(AttemptError::into_gateway_error) };
        let refused = outcome == AttemptOutcome::Refused;
        if !refused {
            attempts += 1;
        }
        m.balancer.report(i, &outcome);
        let next = match next_instance(m, &outcome, started, &mut tried, attempts, i, key) {
            Some(j) => j,
            None => return result.map_err(AttemptError::into_gateway_error),
        };
        let (from, to) = (&t.name, &route.targets[next].name);
        if refused {
            tracing::debug!(route = %rec.route_id, request_id = %rec.request_id, "ai instance {from} refused by a policy, trying {to}");
        } else {
            m.balancer.note_fallback(i);
            if let Ok((_, sent)) = &result {
                rec.end_attempt(Some(sent.response.status().as_u16()), None);
            }
            // APISIX's line (without the upstream body, which is never read).
            let status = outcome_status(&outcome);
            let error = result.as_ref().err().map(tracing::field::display);
            tracing::warn!(route = %rec.route_id, request_id = %rec.request_id, error, "ai instance {from} returned status {status}, falling back to {to}");
        }
        // The failed answer goes unread: dropping it closes its connection now.
        drop(result);
        i = next;
    }
}

/// Where a failed (or refused) attempt on instance `i` goes next, if anywhere: the one
/// retry decision ([`retry::decide`]), then a pick among the instances not tried yet.
fn next_instance(
    m: &MultiRoute,
    outcome: &AttemptOutcome,
    started: Option<Instant>,
    tried: &mut Vec<usize>,
    attempts: u32,
    i: usize,
    key: &[u8],
) -> Option<usize> {
    let a = Attempt {
        outcome: *outcome,
        // Structurally false: this loop runs before `respond` gives the client a body.
        sent_to_client: false,
        elapsed_ms: started.map_or(0, |s| s.elapsed().as_millis() as u64),
        attempts: attempts.max(1),
    };
    if retry::decide(&m.policy, &a) != Decision::Retry {
        return None;
    }
    tried.push(i);
    m.balancer.pick(key, tried)
}

fn no_instance() -> GatewayError {
    GatewayError::upstream(http::StatusCode::BAD_GATEWAY, "no_instance", "no ai instance is available")
}

/// The status an attempt's outcome shows in logs: the upstream's, or the one the client
/// would get for a failure without an answer (502, 504 for timeouts).
fn outcome_status(o: &AttemptOutcome) -> u16 {
    match o {
        AttemptOutcome::Status(s) => *s,
        o => o.gateway_status().unwrap_or(502),
    }
}

/// Why one attempt produced no upstream answer.
#[derive(Debug)]
enum AttemptError {
    /// The upstream could not be reached or did not answer (another instance may).
    Send(SendError),
    /// A plugin's before-attempt phase refused this target (its instance limit is spent).
    Refused(GatewayError),
    /// The request cannot be planned or authorized for this target.
    Gateway(GatewayError),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Send(e) => write!(f, "{}", e.kind()),
            AttemptError::Refused(e) | AttemptError::Gateway(e) => write!(f, "{}", e.message),
        }
    }
}

impl AttemptError {
    fn into_gateway_error(self) -> GatewayError {
        match self {
            AttemptError::Send(e) => e.into_gateway_error(),
            AttemptError::Refused(e) | AttemptError::Gateway(e) => e,
        }
    }
}

impl From<GatewayError> for AttemptError {
    fn from(e: GatewayError) -> Self {
        AttemptError::Gateway(e)
    }
}

/// One upstream attempt: plan → (before-attempt phases) → authorize → send, for one
/// target of the route. The client's request is planned afresh for every attempt (its own
/// protocol, shaping and credentials), so an attempt on another target is a call of this
/// function.
async fn attempt(
    route: &CompiledRoute,
    t: &CompiledTarget,
    index: usize,
    creq: &ClientRequest<'_>,
    json: &aigw_llm::body::RawBody,
    rec: &mut Record,
    chain: &mut Chain,
) -> Result<(Plan, Sent), AttemptError> {
    // The record names the attempt's instance; the last attempt's facts stay.
    rec.instance.clone_from(&t.name);
    rec.provider = Some(t.target.conf.provider);
    // plan
    let mut plan = plan(creq, json, &t.target).map_err(|e| match e {
        PlanError::Unsupported { .. } | PlanError::Invalid(_) => GatewayError::bad_request(e.to_string()),
    })?;
    rec.request_type = if plan.stream { "ai_stream" } else { "ai_chat" };
    rec.stream = plan.stream;
    rec.request_llm_model = plan.request_model.clone().unwrap_or_default();
    rec.llm_model = plan.model.clone().unwrap_or_default();
    if !chain.is_empty() {
        chain.before_attempt(&t.name, index, &t.target, &plan, rec).map_err(AttemptError::Refused)?;
    }

    // authorize
    let bearer = t.auth.authorize(&mut plan, &t.target.authority).await?;
    if let Some(tp) = rec.begin_attempt(&t.server, &plan.url) {
        plan.headers.insert(HeaderName::from_static("traceparent"), tp);
    }

    // send
    // GCP only: the headers are kept for one more try after a 401 (see below).
    let mut again = bearer.as_ref().map(|_| plan.headers.clone());
    let mut builder = Request::builder().method(plan.method.clone()).uri(&plan.url);
    if let Some(h) = builder.headers_mut() {
        *h = std::mem::take(&mut plan.headers);
    }
    let upstream_req = builder
        .body(Full::new(plan.body.clone()))
        .map_err(|e| GatewayError::internal(format!("building the upstream request for {}: {e}", t.target.origin)))?;
    let mut sent = send(&t.upstream, route.timeout, upstream_req, &t.target.authority).await.map_err(|e| {
        rec.end_attempt(None, Some(e.kind()));
        AttemptError::Send(e)
    })?;
    // A GCP token refused with 401 is dropped everywhere (here and in aigw-token-cache)
    // and the request sent once more with a fresh one; nothing reached the client yet.
    if let Some(headers) = again.as_mut()
        && t.auth.reauthorize_after(sent.response.status(), bearer.as_ref(), headers).await?
    {
        drop(sent);
        let mut builder = Request::builder().method(plan.method.clone()).uri(&plan.url);
        if let Some(h) = builder.headers_mut() {
            *h = std::mem::take(headers);
        }
        let upstream_req = builder.body(Full::new(plan.body.clone())).map_err(|e| GatewayError::internal(e.to_string()))?;
        rec.attempts += 1;
        sent = send(&t.upstream, route.timeout, upstream_req, &t.target.authority).await.map_err(|e| {
            rec.end_attempt(None, Some(e.kind()));
            AttemptError::Send(e)
        })?;
    }
    Ok((plan, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::{CompileCtx, compile_route};
    use crate::upstream::Upstreams;
    use serde_json::json;
    use std::time::Duration;

    fn multi(extra: serde_json::Value) -> CompiledRoute {
        let mut plugin = json!({"instances": [
            {"name": "a", "provider": "openai", "weight": 1, "priority": 2, "auth": {}},
            {"name": "b", "provider": "openai", "weight": 1, "priority": 1, "auth": {}},
            {"name": "c", "provider": "openai", "weight": 1, "priority": 0, "auth": {}}]});
        for (k, v) in extra.as_object().unwrap() {
            plugin[k] = v.clone();
        }
        compile_route(&json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": plugin}}), &CompileCtx::bare(&Upstreams::default()))
            .unwrap()
    }

    /// The loop's decisions: the policy, `max_retries`, the instances left, and send
    /// failures that are not retried.
    #[test]
    fn next_instance_decisions() {
        // (route settings, failures in a row, expected instances tried after the first)
        for (extra, want) in [
            (json!({}), vec![]),
            (json!({"fallback_strategy": "http_429"}), vec![]),
            (json!({"fallback_strategy": "http_5xx"}), vec![1, 2]),
            (json!({"fallback_strategy": ["http_5xx"], "max_retries": 1}), vec![1]),
            (json!({"fallback_strategy": "http_5xx", "max_retries": 0}), vec![]),
            (json!({"fallback_strategy": "instance_health_and_rate_limiting"}), vec![]),
        ] {
            let r = multi(extra.clone());
            let m = r.multi.as_ref().unwrap();
            let mut tried = Vec::new();
            let mut i = m.balancer.pick(b"", &[]).unwrap();
            assert_eq!(i, 0, "priority 2 first");
            let mut got = Vec::new();
            while let Some(j) = next_instance(
                m,
                &SendError::ConnectRefused(String::new()).outcome(),
                Some(Instant::now()),
                &mut tried,
                got.len() as u32 + 1,
                i,
                b"",
            ) {
                got.push(j);
                i = j;
            }
            assert_eq!(got, want, "{extra}");
        }
        // A 429 under http_429 goes to the next priority.
        let r = multi(json!({"fallback_strategy": "http_429"}));
        let m = r.multi.as_ref().unwrap();
        assert_eq!(next_instance(m, &AttemptOutcome::Status(429), Some(Instant::now()), &mut Vec::new(), 1, 0, b""), Some(1));
        // fallback_http_statuses adds statuses whatever the strategy.
        let r = multi(json!({"fallback_http_statuses": [401]}));
        let m = r.multi.as_ref().unwrap();
        assert_eq!(next_instance(m, &AttemptOutcome::Status(401), Some(Instant::now()), &mut Vec::new(), 1, 0, b""), Some(1));
        // retry_on_failure_within_ms: a slow failure is not retried.
        let r = multi(json!({"fallback_strategy": "http_5xx", "retry_on_failure_within_ms": 1}));
        let m = r.multi.as_ref().unwrap();
        let long_ago = Instant::now() - Duration::from_millis(50);
        assert_eq!(next_instance(m, &AttemptOutcome::TimeoutBeforeFirstByte, Some(long_ago), &mut Vec::new(), 1, 0, b""), None);
        assert_eq!(next_instance(m, &AttemptOutcome::Status(502), Some(Instant::now()), &mut Vec::new(), 1, 0, b""), Some(1));
        // A malformed answer (not a connect/reset/timeout) is not retried.
        let r = multi(json!({"fallback_strategy": "http_5xx"}));
        let m = r.multi.as_ref().unwrap();
        let other = SendError::Other("bad".into()).outcome();
        assert_eq!(next_instance(m, &other, Some(Instant::now()), &mut Vec::new(), 1, 0, b""), None);
        // A refused instance moves on under rate_limiting, even with no retries left.
        let r = multi(json!({"fallback_strategy": ["rate_limiting"], "max_retries": 0}));
        let m = r.multi.as_ref().unwrap();
        let mut tried = Vec::new();
        assert_eq!(next_instance(m, &AttemptOutcome::Refused, Some(Instant::now()), &mut tried, 0, 0, b""), Some(1));
        assert_eq!(next_instance(m, &AttemptOutcome::Refused, Some(Instant::now()), &mut tried, 0, 1, b""), Some(2));
        assert_eq!(next_instance(m, &AttemptOutcome::Refused, Some(Instant::now()), &mut tried, 0, 2, b""), None, "all refused");
        let r = multi(json!({"fallback_strategy": "http_5xx"}));
        let m = r.multi.as_ref().unwrap();
        assert_eq!(next_instance(m, &AttemptOutcome::Refused, Some(Instant::now()), &mut Vec::new(), 0, 0, b""), None);
    }

    #[test]
    fn send_failures_as_attempt_outcomes() {
        for (e, want, status) in [
            (SendError::ConnectRefused(String::new()), AttemptOutcome::ConnectRefused, 502),
            (SendError::Connect(String::new()), AttemptOutcome::ConnectRefused, 502),
            (SendError::ConnectTimeout(String::new()), AttemptOutcome::ConnectTimeout, 504),
            (SendError::PoolTimeout(Duration::ZERO), AttemptOutcome::ConnectTimeout, 504),
            (SendError::Tls(String::new()), AttemptOutcome::Tls, 502),
            (SendError::Reset(String::new()), AttemptOutcome::Reset, 502),
            (SendError::Timeout(Duration::ZERO), AttemptOutcome::TimeoutBeforeFirstByte, 504),
        ] {
            let o = e.outcome();
            assert_eq!(o, want, "{e:?}");
            assert!(o.is_5xx_class(), "{e:?}");
            assert_eq!(outcome_status(&o), status, "{e:?}");
            // The client's status for this failure agrees with the log line's.
            assert_eq!(e.into_gateway_error().status.as_u16(), status);
        }
        assert_eq!(outcome_status(&AttemptOutcome::Status(429)), 429);
    }
}
