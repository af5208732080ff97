//! The upstream call for one routed request: convert the body to the protocol the provider
//! speaks, shape it, build the URL and headers (or SigV4-sign it for Bedrock), respect the
//! connection cap, send, and hand the answer back as an observed (and, when protocols
//! differ, converted) body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use aigw_llm::anthropic::{self, ToolNames};
use aigw_llm::bedrock;
use aigw_llm::protocol::Route as ConvRoute;
use aigw_llm::protocol::{self, Protocol};
use aigw_llm::shaping::{MaxTokensField, Shaping, max_tokens_field, shape};
use aigw_llm::stream::Pipe;
use aigw_model::Provider;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::body::{Limits, ObservedBody, Outcome, Summary};
use crate::errors::GatewayError;
use crate::proxy::{AppState, ProxyBody, ReqCtx};
use crate::reqvars::pct_decode;
use crate::runtime::{CompiledRoute, RuntimeConfig};
use crate::sigv4;

/// Headers never forwarded upstream: hop-by-hop, and those the gateway sets itself.
const DROP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "accept-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "cookie",
];

/// Client credentials, never forwarded when the route configures its own.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// `/model/{modelId}/converse[-stream]` in a client path (what boto3 sends): the model id.
fn model_from_path(path: &str) -> Option<String> {
    let rest = path.rsplit_once("/model/")?.1;
    let id = rest.strip_suffix("/converse-stream").or_else(|| rest.strip_suffix("/converse"))?;
    (!id.is_empty()).then(|| pct_decode(id))
}

/// Bedrock streams at `/converse-stream`, also when `override.endpoint` names `/converse`
/// (APISIX never streams then).
fn bedrock_stream_path(p: &str) -> String {
    let (path, query) = match p.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (p, None),
    };
    let path = match path.strip_suffix("/converse") {
        Some(base) => format!("{base}/converse-stream"),
        None => path.to_owned(),
    };
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    state: &Arc<AppState>,
    cfg: Arc<RuntimeConfig>,
    route: &Arc<CompiledRoute>,
    parts: &http::request::Parts,
    path: &str,
    original: Bytes,
    mut body: Value,
    proto: Protocol,
    ctx: &ReqCtx,
) -> Result<Response<ProxyBody>, GatewayError> {
    let rid = ctx.request_id.as_str();
    let ap = &route.spec.ai_proxy;
    if ap.provider == Provider::VertexAi {
        return Err(GatewayError::not_implemented("provider vertex-ai is not implemented yet in this build"));
    }
    let pc = ap.provider_conf.as_ref();
    let how = protocol::route(ap.provider, proto, pc).ok_or_else(|| {
        GatewayError::bad_request(format!(
            "provider {} does not support {} protocol (supported: {})",
            ap.provider.as_str(),
            proto.name(),
            protocol::supported(ap.provider).join(", ")
        ))
    })?;
    let target = how.target(proto);
    let request_model = body.get("model").and_then(Value::as_str).map(str::to_owned);

    // 1. Into the target protocol.
    let mut names = ToolNames::default();
    let mut converted_stream = false;
    let mut converted_model = None;
    let bad = |e: anthropic::ConvertError| GatewayError::bad_request(e.0);
    let mut changed = how != ConvRoute::Native;
    body = match how {
        ConvRoute::Native => body,
        ConvRoute::AnthropicToOpenAi => {
            let field = match max_tokens_field(ap.provider, Protocol::OpenAiChat) {
                MaxTokensField::Top(f) => f,
                _ => "max_tokens",
            };
            anthropic::request_to_openai(&body, field, &mut names).map_err(bad)?
        }
        ConvRoute::OpenAiToConverse | ConvRoute::AnthropicToConverse => {
            let openai = if how == ConvRoute::AnthropicToConverse {
                anthropic::request_to_openai(&body, "max_tokens", &mut names).map_err(bad)?
            } else {
                body
            };
            let c = bedrock::request_to_converse(&openai).map_err(bad)?;
            converted_stream = c.stream;
            converted_model = c.model;
            c.body
        }
    };
    // 2. Shaped for the target (options, llm_options, request_body, stream usage).
    let ov = ap.override_.as_ref();
    let shaping = Shaping {
        provider: ap.provider,
        target,
        options: ap.options.as_ref(),
        max_tokens: ov.and_then(|o| o.llm_options.as_ref()).and_then(|l| l.max_tokens),
        request_body: ov.and_then(|o| o.request_body.as_ref()).and_then(|rb| request_body_for(rb, target)),
        force_request_body: ov.is_some_and(|o| o.request_body_force_override),
    };
    changed |= shape(&mut body, &shaping);
    // 3. Bedrock: the model and the stream flag are gateway-level, not body fields.
    let bedrock = ap.provider == Provider::Bedrock;
    let (stream_requested, bedrock_model) = if bedrock && target == Protocol::BedrockConverse {
        let obj = body.as_object_mut();
        let (s, m) = obj.map(|o| (o.remove("stream"), o.remove("model"))).unwrap_or_default();
        changed |= s.is_some() || m.is_some();
        let stream = converted_stream || s == Some(Value::Bool(true)) || path.ends_with("/converse-stream");
        let model = ap
            .model()
            .map(str::to_owned)
            .or(converted_model)
            .or_else(|| m.and_then(|v| v.as_str().map(str::to_owned)))
            .or_else(|| model_from_path(path));
        (stream, model)
    } else {
        (target.is_stream(&body), None)
    };
    let llm_model = ap.model().map(str::to_owned).or_else(|| bedrock_model.clone()).or_else(|| request_model.clone());

    // 4. The upstream URL.
    let mut path_q = match (route.endpoint.as_ref().and_then(|e| e.path_and_query.clone()), target) {
        (Some(p), Protocol::BedrockConverse) if stream_requested => bedrock_stream_path(&p),
        (Some(p), _) => p,
        (None, Protocol::Passthrough) => parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(path).to_owned(),
        (None, Protocol::BedrockConverse) => {
            let model = bedrock_model.as_deref().ok_or_else(|| {
                GatewayError::bad_request(
                    "no model for bedrock: set options.model on the route, send \"model\" in the body, or call /model/{modelId}/converse",
                )
            })?;
            format!("/model/{}/{}", crate::runtime::encode_query(model), if stream_requested { "converse-stream" } else { "converse" })
        }
        (None, t) => protocol::native_path(ap.provider, t, pc)
            .ok_or_else(|| GatewayError::bad_request("could not resolve upstream path: override.endpoint needs a path"))?,
    };
    for (k, v) in &route.auth_query {
        path_q.push(if path_q.contains('?') { '&' } else { '?' });
        path_q.push_str(k);
        path_q.push('=');
        path_q.push_str(v);
    }
    let url = format!("{}{path_q}", route.origin);
    let tool_count = body.get("tools").and_then(Value::as_array).map_or(0, Vec::len);
    let end_user_id = body
        .get("safety_identifier")
        .or_else(|| body.get("user"))
        .or_else(|| body.pointer("/metadata/user_id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let out_body = if changed { Bytes::from(serde_json::to_vec(&body).unwrap_or_default()) } else { original };

    // 5. Headers.
    let method = if target == Protocol::Passthrough { parts.method.clone() } else { Method::POST };
    let mut builder = Request::builder().method(method.clone()).uri(&url);
    let has_creds = route.has_credentials();
    let to_openai = how == ConvRoute::AnthropicToOpenAi;
    let headers = builder.headers_mut().ok_or_else(|| GatewayError::internal(format!("invalid upstream URL {url}")))?;
    if !bedrock {
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if DROP_HEADERS.contains(&n) || (has_creds && CREDENTIAL_HEADERS.contains(&n)) {
                continue;
            }
            // An OpenAI backend must not see Anthropic credentials or protocol headers.
            if to_openai && (n == "x-api-key" || n.starts_with("anthropic-")) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if to_openai
            && !has_creds
            && !headers.contains_key(header::AUTHORIZATION)
            && let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok())
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
        {
            // Bring-your-own-key: the client's Anthropic-style key becomes the backend bearer.
            headers.insert(header::AUTHORIZATION, v);
        }
        for (name, value) in &route.auth_headers {
            headers.insert(name.clone(), value.clone());
        }
        if matches!(target, Protocol::AnthropicMessages | Protocol::AnthropicCountTokens) && !headers.contains_key("anthropic-version") {
            headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"));
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if bedrock {
        // Nothing of the client's request reaches AWS but the signed body: its own SigV4
        // headers (boto3 signs with placeholder keys) would only be rejected.
        let creds = route.aws.as_ref().ok_or_else(|| GatewayError::internal("bedrock route without auth.aws"))?;
        let region = pc.and_then(|p| p.region.as_deref()).unwrap_or("us-east-1");
        let authority = route.origin.split("://").nth(1).unwrap_or_default().to_owned();
        let signer = sigv4::Signer { creds, region, service: "bedrock" };
        let signed = signer
            .sign(
                method.as_str(),
                &url,
                &[("host", authority.as_str()), ("content-type", "application/json")],
                &out_body,
                std::time::SystemTime::now(),
            )
            .map_err(GatewayError::internal)?;
        headers.insert(header::HOST, HeaderValue::from_str(&authority).map_err(|_| GatewayError::internal("bad upstream host"))?);
        for (k, v) in signed {
            let mut v = HeaderValue::from_str(&v).map_err(|_| GatewayError::internal("bad SigV4 header"))?;
            v.set_sensitive(k != "x-amz-date");
            headers.insert(HeaderName::from_static(k), v);
        }
    }
    let upstream_req = builder.body(Full::new(out_body)).map_err(|e| GatewayError::internal(format!("building upstream request: {e}")))?;

    // The connection cap (`keepalive_pool`): wait for a permit within the route timeout.
    let up = route.upstream.clone();
    let permit = tokio::time::timeout(route.timeout, up.permits.clone().acquire_owned())
        .await
        .map_err(|_| GatewayError::upstream_timeout(route.timeout))?
        .map_err(|_| GatewayError::internal("upstream closed"))?;
    let sent = Instant::now();
    let resp = match tokio::time::timeout(route.timeout, up.client.request(upstream_req)).await {
        Err(_) => return Err(GatewayError::upstream_timeout(route.timeout)),
        Ok(Err(e)) => return Err(GatewayError::upstream_connect(&e)),
        Ok(Ok(r)) => r,
    };
    let latency = sent.elapsed();
    let upstream_addr = resp
        .extensions()
        .get::<hyper_util::client::legacy::connect::HttpInfo>()
        .map(|i| i.remote_addr().to_string())
        .unwrap_or_else(|| route.origin.split("://").nth(1).unwrap_or_default().to_owned());
    let (mut rparts, rbody) = resp.into_parts();
    let status = rparts.status;
    tracing::debug!(request_id = %rid, route = %route.id(), upstream = %route.origin, status = status.as_u16(), "upstream responded");
    let content_type = rparts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let is_stream = content_type.contains("text/event-stream") || content_type.contains("application/vnd.amazon.eventstream");
    if !is_stream
        && let (Some(max), Some(len)) = (
            ap.max_response_bytes,
            rparts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()),
        )
        && len > max
    {
        return Err(GatewayError::bad_gateway(format!(
            "max_response_bytes exceeded: the upstream body has {len} bytes, the limit is {max}"
        )));
    }
    for h in ["connection", "keep-alive", "transfer-encoding", "trailer", "upgrade", "proxy-connection"] {
        rparts.headers.remove(h);
    }
    if let Ok(v) = HeaderValue::from_str(&latency.as_millis().to_string()) {
        rparts.headers.insert(HeaderName::from_static("x-aigw-upstream-latency-ms"), v);
    }
    let limits = Limits {
        read_timeout: route.timeout,
        max_duration: ap.max_stream_duration_ms.map(std::time::Duration::from_millis),
        max_bytes: ap.max_response_bytes,
    };
    let st = state.clone();
    let mut entry = ctx.entry(status.as_u16());
    entry.upstream_addr = upstream_addr;
    entry.upstream_status = Some(status.as_u16());
    entry.route_id = route.id().to_owned();
    entry.request_type = if stream_requested { "ai_stream" } else { "ai_chat" };
    entry.request_llm_model = request_model.clone().unwrap_or_default();
    entry.llm_model = llm_model.clone().unwrap_or_default();
    entry.stream = stream_requested;
    entry.tool_count = tool_count;
    entry.end_user_id = end_user_id;
    let start = ctx.start;
    let on_done = Box::new(move |s: Summary| {
        st.metrics.prompt_tokens.fetch_add(s.obs.usage.prompt, Ordering::Relaxed);
        st.metrics.completion_tokens.fetch_add(s.obs.usage.completion, Ordering::Relaxed);
        if s.outcome != Outcome::Complete {
            st.metrics.streams_aborted.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = &s.obs.error {
            tracing::warn!(request_id = %entry.request_id, route = %entry.route_id, error = %e, "upstream reported an error inside the response");
        }
        entry.request_time = start.elapsed();
        entry.body_bytes_sent = s.client_bytes;
        entry.upstream_time = Some(s.upstream_time);
        entry.ttft = s.ttft;
        entry.usage = s.obs.usage;
        entry.has_tool_calls = s.obs.has_tool_calls;
        if let Some(m) = s.obs.model.filter(|_| entry.llm_model.is_empty()) {
            entry.llm_model = m;
        }
        tracing::debug!(
            request_id = %entry.request_id, route = %entry.route_id, status = entry.status, outcome = ?s.outcome,
            prompt_tokens = entry.usage.prompt, completion_tokens = entry.usage.completion, "llm request done"
        );
        st.access_log.log(&entry);
    });
    let fallback_model = llm_model.unwrap_or_default();
    let converting = how != ConvRoute::Native;
    let streaming = is_stream && status.is_success();
    let pipe = is_stream.then(|| Pipe::new(target, if streaming { proto } else { target }, names.clone(), &fallback_model, rid));
    let body = ObservedBody::new(rbody, pipe, limits, sent, Box::new((cfg, permit)), on_done);
    if !converting || streaming {
        if converting {
            rparts.headers.remove(header::CONTENT_LENGTH);
            rparts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        }
        return Ok(Response::from_parts(rparts, BodyExt::boxed_unsync(body)));
    }
    // A converted non-streamed answer (or error) is read whole, then converted.
    let bytes = body.collect().await.map_err(|e| GatewayError::bad_gateway(format!("reading the upstream response: {e}")))?.to_bytes();
    let converted = if status.is_success() {
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| GatewayError::bad_gateway(format!("the upstream answer is not JSON: {e}")))?;
        let as_openai = |v: &Value| {
            if target == Protocol::BedrockConverse {
                bedrock::response_to_openai(v, &format!("chatcmpl-{rid}"), &fallback_model)
            } else {
                v.clone()
            }
        };
        if proto == Protocol::AnthropicMessages {
            anthropic::response_from_openai(&as_openai(&v), &fallback_model, &names).map_err(|e| GatewayError::bad_gateway(e.0))?
        } else {
            as_openai(&v)
        }
    } else if target == Protocol::BedrockConverse {
        let (kind, message) = bedrock::error_message(rparts.headers.get("x-amzn-errortype").and_then(|v| v.to_str().ok()), &bytes);
        if proto == Protocol::AnthropicMessages {
            serde_json::json!({"type": "error", "error": {"type": anthropic::error_type(status.as_u16()), "message": format!("{kind}: {message}")}})
        } else {
            serde_json::json!({"error": {"message": message, "type": kind, "code": kind}})
        }
    } else {
        anthropic::error_from_openai(status.as_u16(), &bytes)
    };
    let out = Bytes::from(serde_json::to_vec(&converted).unwrap_or_default());
    rparts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rparts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Response::from_parts(rparts, Full::new(out).map_err(|never| match never {}).boxed_unsync()))
}

fn request_body_for(rb: &aigw_model::route::RequestBodyOverrides, proto: Protocol) -> Option<&serde_json::Map<String, Value>> {
    match proto {
        Protocol::OpenAiChat => rb.openai_chat.as_ref(),
        Protocol::OpenAiResponses => rb.openai_responses.as_ref(),
        Protocol::OpenAiEmbeddings => rb.openai_embeddings.as_ref(),
        Protocol::AnthropicMessages | Protocol::AnthropicCountTokens => rb.anthropic_messages.as_ref(),
        Protocol::BedrockConverse => rb.bedrock_converse.as_ref(),
        Protocol::Passthrough => rb.passthrough.as_ref(),
    }
}
