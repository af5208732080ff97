//! The plan stage: a client request and a target in, a description of the upstream
//! request out — pure, no I/O, no credentials (those are the authorize stage's).
//!
//! 1. Conversion into the protocol the provider speaks (Anthropic → OpenAI chat,
//!    OpenAI chat → Converse, Anthropic → Converse, OpenAI chat → Anthropic), before
//!    shaping, so `options`,
//!    `llm_options` and `request_body[<target protocol>]` apply to what the upstream gets.
//! 2. Shaping ([`crate::shaping`], APISIX's order).
//! 3. Bedrock: the model and the stream flag are gateway-level, not body fields.
//! 4. The upstream URL: `override.endpoint` as given, or the provider's path.
//! 5. The header policy: hop-by-hop and gateway-owned headers dropped, client credentials
//!    dropped when the target has its own, Anthropic headers kept from OpenAI backends
//!    (and OpenAI ones from Anthropic backends), `anthropic-version` defaulted; Bedrock
//!    gets nothing of the client but the body.
//!
//! Each attempt of a request is planned from the client's original request, so a retry on
//! another target (another provider, another protocol) is shaped for that target.

use std::borrow::Cow;

use aigw_llm::anthropic::{self, ToolNames};
use aigw_llm::body::{Doc, Fields, FieldsMut, Json, RawBody};
use aigw_llm::protocol::Protocol;
use aigw_llm::{bedrock, openai_to_anthropic, vertex};
use aigw_model::Provider;
use aigw_model::route::RequestBodyOverrides;
use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::shaping::{MaxTokensField, Shaping, max_tokens_field, shape};
use crate::table::{self, Conversion};
use crate::target::{Target, decode_component, encode_component};

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

/// Client credentials, never forwarded when the target configures its own.
pub const CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// The client's request as the gateway read it.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// Path and query as sent.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The body bytes as received (forwarded untouched when nothing changes).
    pub body: &'a Bytes,
    pub protocol: Protocol,
}

/// The upstream request to send, before credentials.
#[derive(Debug)]
pub struct Plan {
    pub conversion: Conversion,
    /// What the client speaks.
    pub client: Protocol,
    /// What the upstream receives.
    pub target: Protocol,
    pub method: Method,
    /// `origin + path_and_query`; the authorize stage may append credentials to the query.
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The answer is expected as a stream.
    pub stream: bool,
    /// The model the client asked for (`model` in its body).
    pub request_model: Option<String>,
    /// The model the upstream is asked for (`options.model`, the Bedrock model, or the
    /// client's).
    pub model: Option<String>,
    /// Tool names sanitised on the way in, restored on the way out.
    pub names: ToolNames,
    /// Vertex `:predict` embeddings: the client asked for base64 (`encoding_format`).
    pub embeddings_base64: bool,
    /// An OpenAI chat client asked for `stream_options.include_usage` and the upstream
    /// speaks another protocol: the converted stream ends with OpenAI's usage chunk.
    pub include_usage: bool,
}

/// `max_tokens` of an OpenAI chat request converted to Anthropic Messages when the client
/// sets none and `override.llm_options.max_tokens` is unset (CONTRACT §9).
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 4096;

/// Why a request cannot be planned for a target: a 400 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `supported` is what the route's configuration serves; `reason`, what it lacks when
    /// the provider speaks the protocol but this configuration gives it no URL.
    #[error("provider {provider} does not support {protocol} protocol{} (supported: {supported}){}",
        if .reason.is_some() { " on this route" } else { "" }, .reason.map(|r| format!(": {r}")).unwrap_or_default())]
    Unsupported { provider: &'static str, protocol: &'static str, supported: String, reason: Option<&'static str> },
    #[error("{0}")]
    Invalid(String),
}

/// `/model/{modelId}/converse[-stream]` in a client path (what boto3 sends): the model id.
fn model_from_path(path: &str) -> Option<String> {
    let rest = path.rsplit_once("/model/")?.1;
    let id = rest.strip_suffix("/converse-stream").or_else(|| rest.strip_suffix("/converse"))?;
    (!id.is_empty()).then(|| decode_component(id))
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

/// The Bedrock runtime operations a passthrough request may reach, as the part of the
/// client path from `/model/` or `/guardrail/` on. Anything else is refused: the gateway
/// signs what it forwards, so it must not sign whatever path a client sends.
fn bedrock_runtime_path(path_and_query: &str) -> Option<&str> {
    let (path, _query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let start = path.rfind("/model/").or_else(|| path.rfind("/guardrail/"))?;
    let op = &path_and_query[start..];
    let op_path = &path[start..];
    let segs: Vec<&str> = op_path.trim_start_matches('/').split('/').collect();
    let ok = match segs.as_slice() {
        ["model", id, action] => {
            !id.is_empty() && matches!(*action, "converse" | "converse-stream" | "invoke" | "invoke-with-response-stream" | "count-tokens")
        }
        ["guardrail", id, "version", v, "apply"] => !id.is_empty() && !v.is_empty(),
        _ => false,
    };
    ok.then_some(op)
}

fn request_body_for(rb: &RequestBodyOverrides, proto: Protocol) -> Option<&Map<String, Value>> {
    match proto {
        Protocol::OpenAiChat => rb.openai_chat.as_ref(),
        Protocol::OpenAiResponses => rb.openai_responses.as_ref(),
        Protocol::OpenAiEmbeddings => rb.openai_embeddings.as_ref(),
        Protocol::AnthropicMessages | Protocol::AnthropicCountTokens => rb.anthropic_messages.as_ref(),
        Protocol::BedrockConverse => rb.bedrock_converse.as_ref(),
        Protocol::Passthrough => rb.passthrough.as_ref(),
        Protocol::VertexPredict => rb.vertex_predict.as_ref(),
    }
}

/// The client's JSON body as [`plan`] takes it.
#[derive(Debug)]
pub enum RequestBody<'a> {
    /// Parsed (owned: each attempt gets its own copy).
    Tree(Value),
    /// Validated bytes ([`RawBody::parse`]), shared by every attempt: a native route's
    /// shaping edits its top-level fields in place (no tree, no re-serialisation of what
    /// it leaves alone); a conversion reads its tree ([`RawBody::tree`], parsed once).
    Raw(&'a RawBody),
}

impl From<Value> for RequestBody<'_> {
    fn from(v: Value) -> Self {
        RequestBody::Tree(v)
    }
}

impl<'a> From<&'a RawBody> for RequestBody<'a> {
    fn from(r: &'a RawBody) -> Self {
        RequestBody::Raw(r)
    }
}

impl RequestBody<'_> {
    fn tree(&self) -> &Value {
        match self {
            RequestBody::Tree(v) => v,
            RequestBody::Raw(r) => r.tree(),
        }
    }
}

/// Plans one attempt. `body` is the client's body: a parsed `Value` or, cheaper, its
/// [`RawBody`] (`plan(req, &raw, target)`; both give the same upstream request).
pub fn plan<'b>(req: &ClientRequest<'_>, body: impl Into<RequestBody<'b>>, t: &Target) -> Result<Plan, PlanError> {
    let body = body.into();
    let ap = &t.conf;
    let pc = ap.provider_conf.as_ref();
    let proto = req.protocol;
    let ov = ap.override_.as_ref();
    let conversion = t.route(proto).map_err(|why| PlanError::Unsupported {
        provider: ap.provider.as_str(),
        protocol: proto.name(),
        supported: t.supported_names(),
        reason: why.reason(),
    })?;
    let target = conversion.target(proto);
    let request_model = match &body {
        RequestBody::Tree(v) => v.field("model"),
        RequestBody::Raw(r) => r.field("model"),
    }
    .and_then(Json::as_str)
    .map(Cow::into_owned);

    // 1. Into the target protocol.
    let mut names = ToolNames::default();
    let mut include_usage = false;
    let llm_max_tokens = ov.and_then(|o| o.llm_options.as_ref()).and_then(|l| l.max_tokens);
    let mut converted_stream = false;
    let mut converted_model = None;
    let mut embeddings_base64 = false;
    let bad = |e: anthropic::ConvertError| PlanError::Invalid(e.0);
    let mut changed = conversion != Conversion::Native;
    let mut body = match conversion {
        Conversion::Native => match body {
            RequestBody::Tree(v) => Doc::Tree(v),
            RequestBody::Raw(r) => Doc::of(r),
        },
        Conversion::AnthropicToOpenAi => {
            let field = match max_tokens_field(ap.provider, Protocol::OpenAiChat) {
                MaxTokensField::Top(f) => f,
                _ => "max_tokens",
            };
            Doc::Tree(anthropic::request_to_openai(body.tree(), field, &mut names).map_err(bad)?)
        }
        Conversion::OpenAiToConverse | Conversion::AnthropicToConverse => {
            let openai = if conversion == Conversion::AnthropicToConverse {
                Cow::Owned(anthropic::request_to_openai(body.tree(), "max_tokens", &mut names).map_err(bad)?)
            } else {
                Cow::Borrowed(body.tree())
            };
            let c = bedrock::request_to_converse(&openai).map_err(bad)?;
            converted_stream = c.stream;
            converted_model = c.model;
            Doc::Tree(c.body)
        }
        Conversion::EmbeddingsToVertexPredict => {
            let p = vertex::embeddings_to_predict(body.tree()).map_err(bad)?;
            embeddings_base64 = p.base64;
            Doc::Tree(p.body)
        }
        Conversion::OpenAiToAnthropic => {
            let r = openai_to_anthropic::request_to_anthropic(body.tree(), llm_max_tokens.unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS))
                .map_err(bad)?;
            names = r.names;
            include_usage = r.include_usage;
            Doc::Tree(r.body)
        }
    };
    // 2. Shaped for the target. A converted OpenAI request already has its `max_tokens`:
    // the client's, else `llm_options.max_tokens` (CONTRACT §9), so it is not forced again.
    let shaping = Shaping {
        provider: ap.provider,
        target,
        options: ap.options.as_ref(),
        max_tokens: if conversion == Conversion::OpenAiToAnthropic { None } else { llm_max_tokens },
        request_body: ov.and_then(|o| o.request_body.as_ref()).and_then(|rb| request_body_for(rb, target)),
        force_request_body: ov.is_some_and(|o| o.request_body_force_override),
    };
    changed |= shape(&mut body, &shaping);
    // 3. Bedrock: the model and the stream flag are gateway-level.
    let bedrock = ap.provider == Provider::Bedrock;
    let (stream, bedrock_model) = if bedrock && target == Protocol::BedrockConverse {
        let (s, m) = (body.remove("stream"), body.remove("model"));
        changed |= s.is_some() || m.is_some();
        let stream = converted_stream || s == Some(Value::Bool(true)) || req.path.ends_with("/converse-stream");
        let model = ap
            .model()
            .map(str::to_owned)
            .or(converted_model)
            .or_else(|| m.and_then(|v| v.as_str().map(str::to_owned)))
            .or_else(|| model_from_path(req.path));
        (stream, model)
    } else {
        (target.is_stream(&body), None)
    };
    let model = ap.model().map(str::to_owned).or_else(|| bedrock_model.clone()).or_else(|| request_model.clone());
    // Vertex :predict takes the model from the URL and rejects unknown body fields
    // (`options.model` included, which APISIX would merge in).
    if target == Protocol::VertexPredict && body.remove("model").is_some() {
        changed = true;
    }

    // 4. The upstream URL.
    let path_q = match (t.endpoint_path(target), target) {
        (Some(p), Protocol::BedrockConverse) if stream => bedrock_stream_path(p),
        (Some(p), _) => p.to_owned(),
        (None, Protocol::Passthrough) if bedrock => bedrock_runtime_path(req.path_and_query)
            .ok_or_else(|| {
                PlanError::Invalid(format!(
                    "bedrock passthrough only reaches /model/{{modelId}}/(converse|converse-stream|invoke|invoke-with-response-stream|count-tokens) \
                     and /guardrail/{{id}}/version/{{v}}/apply, not {}",
                    req.path
                ))
            })?
            .to_owned(),
        (None, Protocol::Passthrough) => req.path_and_query.to_owned(),
        (None, Protocol::BedrockConverse) => {
            let model = bedrock_model.as_deref().ok_or_else(|| {
                PlanError::Invalid(
                    "no model for bedrock: set options.model on the route, send \"model\" in the body, or call /model/{modelId}/converse".into(),
                )
            })?;
            format!("/model/{}/{}", encode_component(model), if stream { "converse-stream" } else { "converse" })
        }
        (None, Protocol::VertexPredict) => {
            let m = model.as_deref().ok_or_else(|| {
                PlanError::Invalid("no model for vertex-ai embeddings: set options.model on the route or send \"model\"".into())
            })?;
            table::vertex_predict_path(pc, m).ok_or_else(|| {
                PlanError::Invalid("could not resolve upstream path: vertex-ai needs provider_conf (project_id + region) or override.endpoint with a path".into())
            })?
        }
        (None, target) => table::native_path(ap.provider, target, pc)
            .ok_or_else(|| PlanError::Invalid("could not resolve upstream path: override.endpoint needs a path".into()))?,
    };
    let mut url = String::with_capacity(t.origin.len() + path_q.len() + 32);
    url.push_str(&t.origin);
    url.push_str(&path_q);
    let out_body = if changed { Bytes::from(body.to_vec()) } else { req.body.clone() };

    // 5. Headers.
    let method = if target == Protocol::Passthrough { req.method.clone() } else { Method::POST };
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 2);
    if !bedrock {
        let to_openai = conversion == Conversion::AnthropicToOpenAi;
        let to_anthropic = conversion == Conversion::OpenAiToAnthropic;
        for (name, value) in req.headers {
            let n = name.as_str();
            if DROP_HEADERS.contains(&n) || (t.has_credentials && CREDENTIAL_HEADERS.contains(&n)) {
                continue;
            }
            // An OpenAI backend must not see Anthropic credentials or protocol headers.
            if to_openai && (n == "x-api-key" || n.starts_with("anthropic-")) {
                continue;
            }
            // Nor an Anthropic backend OpenAI's (`openai-organization`, `openai-beta`, …).
            if to_anthropic && n.starts_with("openai-") {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if to_anthropic
            && !t.has_credentials
            && !headers.contains_key("x-api-key")
            && let Some(key) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
            && let Ok(mut v) = HeaderValue::from_str(key.trim())
        {
            // Bring-your-own-key: the OpenAI SDK's bearer becomes Anthropic's x-api-key.
            v.set_sensitive(true);
            headers.remove(header::AUTHORIZATION);
            headers.insert(HeaderName::from_static("x-api-key"), v);
        }
        if to_openai
            && !t.has_credentials
            && !headers.contains_key(header::AUTHORIZATION)
            && let Some(key) = req.headers.get("x-api-key").and_then(|v| v.to_str().ok())
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {key}"))
        {
            // Bring-your-own-key: the client's Anthropic-style key becomes the backend bearer.
            v.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, v);
        }
        if matches!(target, Protocol::AnthropicMessages | Protocol::AnthropicCountTokens) && !headers.contains_key("anthropic-version") {
            headers.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(openai_to_anthropic::ANTHROPIC_VERSION));
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(Plan {
        conversion,
        client: proto,
        target,
        method,
        url,
        headers,
        body: out_body,
        stream,
        request_model,
        model,
        names,
        embeddings_base64,
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_model::route::AiProxyConfig;
    use serde_json::json;
    use std::sync::Arc;

    fn target(provider: &str, extra: Value, has_credentials: bool) -> Target {
        let mut c = json!({"provider": provider, "auth": {}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let conf: AiProxyConfig = serde_json::from_value(c).unwrap();
        Target::compile(Arc::new(conf), has_credentials).unwrap()
    }

    fn body_of(p: Protocol) -> Value {
        match p {
            Protocol::OpenAiChat => json!({"model": "client-model", "messages": [{"role": "user", "content": "hi"}], "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
            Protocol::OpenAiResponses => json!({"model": "client-model", "input": "hi"}),
            Protocol::OpenAiEmbeddings => json!({"model": "client-model", "input": ["a"]}),
            Protocol::AnthropicMessages => {
                json!({"model": "client-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
            }
            Protocol::AnthropicCountTokens => json!({"model": "client-model", "messages": [{"role": "user", "content": "hi"}]}),
            Protocol::BedrockConverse => json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
            Protocol::Passthrough => json!({"prompt": "cat"}),
            Protocol::VertexPredict => unreachable!("an upstream protocol only"),
        }
    }

    fn path_of(p: Protocol) -> &'static str {
        match p {
            Protocol::OpenAiChat => "/v1/chat/completions",
            Protocol::OpenAiResponses => "/v1/responses",
            Protocol::OpenAiEmbeddings => "/v1/embeddings",
            Protocol::AnthropicMessages => "/v1/messages",
            Protocol::AnthropicCountTokens => "/v1/messages/count_tokens",
            Protocol::BedrockConverse => "/model/amazon.nova-pro-v1%3A0/converse",
            Protocol::Passthrough => "/model/m1/invoke",
            Protocol::VertexPredict => unreachable!("an upstream protocol only"),
        }
    }

    fn run(t: &Target, p: Protocol, headers: &HeaderMap) -> Result<Plan, PlanError> {
        let body = body_of(p);
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        let req = ClientRequest { method: &Method::POST, path: path_of(p), path_and_query: path_of(p), headers, body: &bytes, protocol: p };
        plan(&req, body, t)
    }

    /// Every provider × inbound protocol from one table: the upstream URL and protocol, or
    /// the refusal.
    #[test]
    fn every_provider_and_protocol() {
        use Protocol::*;
        let pc = json!({"provider_conf": {"project_id": "p1", "region": "us-central1"}});
        let br = json!({"provider_conf": {"region": "us-east-1"}, "options": {"model": "amazon.nova-pro-v1:0"}});
        let providers: Vec<(&str, Value)> = vec![
            ("openai", json!({})),
            ("deepseek", json!({})),
            (
                "azure-openai",
                json!({"override": {"endpoint": "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"}}),
            ),
            ("aimlapi", json!({})),
            ("anthropic", json!({})),
            ("openrouter", json!({})),
            ("gemini", json!({})),
            ("vertex-ai", pc),
            ("bedrock", br),
            ("openai-compatible", json!({"override": {"endpoint": "http://127.0.0.1:9/v1"}})),
        ];
        let protos = [OpenAiChat, OpenAiResponses, OpenAiEmbeddings, AnthropicMessages, AnthropicCountTokens, BedrockConverse, Passthrough];
        // (provider, protocol) → Some((url, upstream protocol)) or None (400).
        let want = |prov: &str, p: Protocol| -> Option<(&'static str, Protocol)> {
            Some(match (prov, p) {
                ("openai", OpenAiChat) => ("https://api.openai.com/v1/chat/completions", OpenAiChat),
                ("openai", OpenAiResponses) => ("https://api.openai.com/v1/responses", OpenAiResponses),
                ("openai", OpenAiEmbeddings) => ("https://api.openai.com/v1/embeddings", OpenAiEmbeddings),
                ("openai", AnthropicMessages) => ("https://api.openai.com/v1/chat/completions", OpenAiChat),
                ("deepseek", OpenAiChat | AnthropicMessages) => ("https://api.deepseek.com/chat/completions", OpenAiChat),
                ("azure-openai", OpenAiChat | AnthropicMessages) => {
                    ("https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21", OpenAiChat)
                }
                ("aimlapi", OpenAiChat | AnthropicMessages) => ("https://api.aimlapi.com/v1/chat/completions", OpenAiChat),
                ("anthropic", OpenAiChat) => ("https://api.anthropic.com/v1/messages", AnthropicMessages),
                ("anthropic", AnthropicMessages) => ("https://api.anthropic.com/v1/messages", AnthropicMessages),
                ("anthropic", AnthropicCountTokens) => ("https://api.anthropic.com/v1/messages/count_tokens", AnthropicCountTokens),
                ("openrouter", OpenAiChat | AnthropicMessages) => ("https://openrouter.ai/api/v1/chat/completions", OpenAiChat),
                ("gemini", OpenAiChat | AnthropicMessages) => {
                    ("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", OpenAiChat)
                }
                ("gemini", OpenAiEmbeddings) => ("https://generativelanguage.googleapis.com/v1beta/openai/embeddings", OpenAiEmbeddings),
                ("vertex-ai", OpenAiChat | AnthropicMessages) => (
                    "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions",
                    OpenAiChat,
                ),
                ("vertex-ai", OpenAiEmbeddings) => (
                    "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/publishers/google/models/client-model:predict",
                    VertexPredict,
                ),
                ("bedrock", OpenAiChat | AnthropicMessages | BedrockConverse) => {
                    ("https://bedrock-runtime.us-east-1.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse", BedrockConverse)
                }
                ("bedrock", Passthrough) => ("https://bedrock-runtime.us-east-1.amazonaws.com/model/m1/invoke", Passthrough),
                ("openai-compatible", OpenAiChat | AnthropicMessages | OpenAiResponses | OpenAiEmbeddings) => {
                    ("http://127.0.0.1:9/v1", if p == AnthropicMessages { OpenAiChat } else { p })
                }
                (_, Passthrough) => return None, // checked separately below
                _ => return None,
            })
        };
        for (prov, extra) in &providers {
            let t = target(prov, extra.clone(), true);
            for p in protos {
                let got = run(&t, p, &HeaderMap::new());
                if p == Passthrough && *prov != "bedrock" {
                    // Passthrough reaches any provider at the client's own path, or at
                    // `override.endpoint` when it names a path (used exactly as given).
                    let plan = got.unwrap();
                    let want = match t.endpoint.as_ref().and_then(|e| e.path_and_query.as_deref()) {
                        Some(p) => format!("{}{p}", t.origin),
                        None => format!("{}/model/m1/invoke", t.origin),
                    };
                    assert_eq!(plan.url, want, "{prov}");
                    continue;
                }
                match (want(prov, p), got) {
                    (Some((url, up)), Ok(plan)) => {
                        assert_eq!((plan.url.as_str(), plan.target), (url, up), "{prov} × {p:?}");
                        assert_eq!(plan.client, p);
                        let v: Value = serde_json::from_slice(&plan.body).unwrap();
                        match up {
                            BedrockConverse => assert!(v.get("model").is_none() && v.get("stream").is_none(), "{prov} × {p:?}: {v}"),
                            OpenAiChat if p == AnthropicMessages => assert!(v["messages"].is_array(), "{v}"),
                            VertexPredict => assert_eq!(v, json!({"instances": [{"content": "a"}]}), "{prov} × {p:?}"),
                            AnthropicMessages if p == OpenAiChat => {
                                assert_eq!((v["max_tokens"].as_u64(), v["tools"][0]["name"].as_str()), (Some(4096), Some("f")), "{v}");
                                assert_eq!(plan.headers["anthropic-version"], "2023-06-01");
                            }
                            _ => {}
                        }
                    }
                    (None, Err(PlanError::Unsupported { provider, .. })) => assert_eq!(provider, *prov),
                    (w, g) => panic!("{prov} × {p:?}: want {w:?}, got {g:?}"),
                }
            }
        }
    }

    #[test]
    fn header_policy() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client-key"),
            ("cookie", "s=1"),
            ("connection", "keep-alive"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools"),
            ("x-request-id", "r1"),
            ("host", "gw"),
            ("content-type", "application/json; charset=utf-8"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        // Route credentials: no client credential is forwarded.
        let p = run(&target("openai", json!({}), true), Protocol::OpenAiChat, &h).unwrap();
        let names: Vec<&str> = p.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names.iter().filter(|n| ["authorization", "x-api-key", "cookie", "connection", "host"].contains(n)).count(),
            0,
            "{names:?}"
        );
        assert_eq!(p.headers["x-request-id"], "r1");
        assert_eq!(p.headers["content-type"], "application/json");
        // No route credentials: the client's are forwarded (bring your own key).
        let p = run(&target("openai", json!({}), false), Protocol::OpenAiChat, &h).unwrap();
        assert_eq!(p.headers["authorization"], "Bearer client");
        // Anthropic client on an OpenAI backend: no anthropic-* or x-api-key; x-api-key
        // becomes the bearer when the client has no Authorization.
        let mut h2 = h.clone();
        h2.remove("authorization");
        let p = run(&target("openai", json!({}), false), Protocol::AnthropicMessages, &h2).unwrap();
        assert!(p.headers.keys().all(|n| !n.as_str().starts_with("anthropic-") && n != "x-api-key"));
        assert_eq!(p.headers["authorization"], "Bearer client-key");
        assert!(p.headers["authorization"].is_sensitive());
        // Native Anthropic: its headers pass, anthropic-version defaulted when absent.
        let p = run(&target("anthropic", json!({}), true), Protocol::AnthropicMessages, &h).unwrap();
        assert_eq!(p.headers["anthropic-beta"], "tools");
        h2.remove("anthropic-version");
        let p = run(&target("anthropic", json!({}), true), Protocol::AnthropicMessages, &h2).unwrap();
        assert_eq!(p.headers["anthropic-version"], "2023-06-01");
        // Bedrock: nothing of the client's headers.
        let p = run(&target("bedrock", json!({"provider_conf": {"region": "us-east-1"}}), true), Protocol::BedrockConverse, &h).unwrap();
        assert_eq!(p.headers.len(), 1, "{:?}", p.headers);
    }

    #[test]
    fn bedrock_model_stream_and_passthrough_paths() {
        let t = target("bedrock", json!({"provider_conf": {"region": "eu-west-1"}}), true);
        let body = json!({"messages": [], "stream": true});
        let bytes = Bytes::from(body.to_string());
        let h = HeaderMap::new();
        let path = "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3Ainference-profile%2Feu.m/converse";
        let req = ClientRequest {
            method: &Method::POST,
            path,
            path_and_query: path,
            headers: &h,
            body: &bytes,
            protocol: Protocol::BedrockConverse,
        };
        let p = plan(&req, body.clone(), &t).unwrap();
        assert!(p.stream);
        assert_eq!(p.model.as_deref(), Some("arn:aws:bedrock:eu-west-1:1:inference-profile/eu.m"));
        assert_eq!(
            p.url,
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3Ainference-profile%2Feu.m/converse-stream"
        );
        // Passthrough: known runtime operations only, taken from the client path.
        let bytes = Bytes::from_static(b"{\"x\":1}");
        for (path, want) in [
            ("/bedrock/model/m1/invoke", Some("/model/m1/invoke")),
            ("/model/m1/invoke-with-response-stream?a=1", Some("/model/m1/invoke-with-response-stream?a=1")),
            ("/guardrail/g1/version/2/apply", Some("/guardrail/g1/version/2/apply")),
            ("/bedrock/admin/delete-everything", None),
            ("/model/m1/../../foundation-models", None),
            ("/model//invoke", None),
        ] {
            let req = ClientRequest {
                method: &Method::POST,
                path,
                path_and_query: path,
                headers: &h,
                body: &bytes,
                protocol: Protocol::Passthrough,
            };
            match (plan(&req, json!({"x": 1}), &t), want) {
                (Ok(p), Some(w)) => assert_eq!(p.url, format!("https://bedrock-runtime.eu-west-1.amazonaws.com{w}")),
                (Err(PlanError::Invalid(m)), None) => assert!(m.contains("bedrock passthrough"), "{m}"),
                (got, w) => panic!("{path}: want {w:?}, got {got:?}"),
            }
        }
    }

    /// OpenAI chat clients on `provider: anthropic` (CONTRACT §9): converted to Messages
    /// unless the endpoint is an OpenAI-compatible `/chat/completions`.
    #[test]
    fn openai_clients_on_anthropic() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            m
        };
        let go = |t: &Target, body: Value, headers: &HeaderMap| {
            let bytes = Bytes::from(body.to_string());
            let path = "/v1/chat/completions";
            let req =
                ClientRequest { method: &Method::POST, path, path_and_query: path, headers, body: &bytes, protocol: Protocol::OpenAiChat };
            plan(&req, body, t).unwrap()
        };
        let ask = json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
        // (target config, client body, expected max_tokens)
        let llm = json!({"override": {"llm_options": {"max_tokens": 300}}});
        let mut capped = ask.clone();
        capped["max_completion_tokens"] = json!(77);
        for (extra, body, want) in [(json!({}), ask.clone(), 4096), (llm.clone(), ask.clone(), 300), (llm, capped, 77)] {
            let p = go(&target("anthropic", extra, true), body, &HeaderMap::new());
            let v: Value = serde_json::from_slice(&p.body).unwrap();
            assert_eq!(
                (p.conversion, p.target, p.url.as_str()),
                (Conversion::OpenAiToAnthropic, Protocol::AnthropicMessages, "https://api.anthropic.com/v1/messages")
            );
            assert_eq!(
                (v["max_tokens"].as_u64(), v["system"].as_str(), v["model"].as_str()),
                (Some(want), Some("be brief"), Some("gpt-4o"))
            );
        }
        // options.model and request_body["anthropic-messages"] shape the converted body.
        let t = target(
            "anthropic",
            json!({"options": {"model": "claude-x"}, "override": {"request_body": {"anthropic-messages": {"top_k": 5}}}}),
            true,
        );
        let mut streamed = ask.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let p = go(&t, streamed, &h(&[("authorization", "Bearer placeholder"), ("openai-organization", "org"), ("x-request-id", "r")]));
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!((v["model"].as_str(), v["top_k"].as_u64(), v["stream"].as_bool()), (Some("claude-x"), Some(5), Some(true)));
        assert!(v.get("stream_options").is_none(), "{v}");
        assert!(p.stream && p.include_usage);
        assert_eq!((p.request_model.as_deref(), p.model.as_deref()), (Some("gpt-4o"), Some("claude-x")));
        assert!(p.headers.get("authorization").is_none() && p.headers.get("openai-organization").is_none());
        assert_eq!(p.headers["x-request-id"], "r");
        // Bring your own key: the OpenAI SDK's bearer becomes x-api-key.
        let p = go(&target("anthropic", json!({}), false), ask.clone(), &h(&[("authorization", "Bearer sk-ant-mine")]));
        assert_eq!((p.headers.get("authorization"), p.headers["x-api-key"].to_str().unwrap()), (None, "sk-ant-mine"));
        assert!(p.headers["x-api-key"].is_sensitive());
        // An OpenAI-compatible endpoint is used as given, the body untouched.
        let t = target("anthropic", json!({"override": {"endpoint": "https://api.anthropic.com/v1/chat/completions"}}), true);
        let p = go(&t, ask.clone(), &HeaderMap::new());
        assert_eq!(
            (p.conversion, p.target, p.url.as_str()),
            (Conversion::Native, Protocol::OpenAiChat, "https://api.anthropic.com/v1/chat/completions")
        );
        assert!(!p.include_usage);
        // Requests the converter refuses are the client's 400.
        let t = target("anthropic", json!({}), true);
        let bytes = Bytes::from_static(b"{}");
        let bad = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2});
        let req = ClientRequest {
            method: &Method::POST,
            path: "/x",
            path_and_query: "/x",
            headers: &HeaderMap::new(),
            body: &bytes,
            protocol: Protocol::OpenAiChat,
        };
        assert!(matches!(plan(&req, bad, &t), Err(PlanError::Invalid(m)) if m.contains("n:")));
    }

    #[test]
    fn vertex_ai_chat_embeddings_and_anthropic_clients() {
        let pc = json!({"project_id": "p1", "region": "global"});
        let post = |t: &Target, p: Protocol, body: Value| {
            let bytes = Bytes::from(body.to_string());
            let h = HeaderMap::new();
            let req = ClientRequest {
                method: &Method::POST,
                path: path_of(p),
                path_and_query: path_of(p),
                headers: &h,
                body: &bytes,
                protocol: p,
            };
            plan(&req, body, t)
        };
        // The global location has no regional host; options.model picks the predict model and
        // stays out of the body (Vertex rejects unknown fields), options are merged (APISIX).
        let t = target(
            "vertex-ai",
            json!({"provider_conf": pc, "options": {"model": "text-embedding-005", "parameters": {"autoTruncate": false}}}),
            true,
        );
        let p = post(
            &t,
            Protocol::OpenAiEmbeddings,
            json!({"model": "ada", "input": ["x", "y"], "dimensions": 8, "encoding_format": "base64"}),
        )
        .unwrap();
        assert_eq!(
            p.url,
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/google/models/text-embedding-005:predict"
        );
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v, json!({"instances": [{"content": "x"}, {"content": "y"}], "parameters": {"autoTruncate": false}}));
        assert!(p.embeddings_base64 && !p.stream);
        assert_eq!((p.request_model.as_deref(), p.model.as_deref()), (Some("ada"), Some("text-embedding-005")));
        // Without any model: a 400 naming the fix.
        let t = target("vertex-ai", json!({"provider_conf": pc}), true);
        let e = post(&t, Protocol::OpenAiEmbeddings, json!({"input": "x"})).unwrap_err();
        assert!(e.to_string().contains("no model for vertex-ai embeddings"), "{e}");
        // A bare override.endpoint keeps the provider's paths on that host; a bad input is a 400.
        let t = target("vertex-ai", json!({"provider_conf": pc, "override": {"endpoint": "http://127.0.0.1:9"}}), true);
        let p = post(&t, Protocol::OpenAiChat, json!({"model": "google/gemini-2.5-flash", "messages": [], "stream": true})).unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9/v1/projects/p1/locations/global/endpoints/openapi/chat/completions");
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        let e = post(&t, Protocol::OpenAiEmbeddings, json!({"model": "m", "input": [1]})).unwrap_err();
        assert_eq!(e, PlanError::Invalid("unsupported input type at index 0".into()));
        // Anthropic clients through the converter; llm_options.max_tokens lands in
        // max_completion_tokens (the spec's table for vertex-ai).
        let t = target("vertex-ai", json!({"provider_conf": pc, "override": {"llm_options": {"max_tokens": 64}}}), true);
        let p = post(&t, Protocol::AnthropicMessages, body_of(Protocol::AnthropicMessages)).unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!((p.target, v["max_completion_tokens"].as_u64(), v.get("max_tokens")), (Protocol::OpenAiChat, Some(64), None), "{v}");
        // override.request_body keyed "vertex-predict" reaches the predict body.
        let t = target(
            "vertex-ai",
            json!({"provider_conf": pc, "override": {"request_body": {"vertex-predict": {"parameters": {"outputDimensionality": 4}}}}}),
            true,
        );
        let p = post(&t, Protocol::OpenAiEmbeddings, json!({"model": "m", "input": "x"})).unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["parameters"], json!({"outputDimensionality": 4}));
    }

    /// Route configurations whose shaping touches every step (options, llm_options,
    /// request_body merged and forced, stream_options, azure, bedrock, vertex).
    fn shaping_targets() -> Vec<Target> {
        let pc = json!({"project_id": "p1", "region": "us-central1"});
        let rb = json!({"openai-chat": {"metadata": {"team": "ml"}, "temperature": 0.5, "stream_options": {"x": 1}},
            "anthropic-messages": {"top_k": 5, "metadata": {"user_id": "r"}}, "bedrock-converse": {"inferenceConfig": {"topP": 0.9}},
            "openai-responses": {"store": false}, "passthrough": {"extra": [1]}, "openai-embeddings": {"dimensions": 8}});
        [
            ("openai", json!({})),
            ("openai", json!({"options": {"model": "gpt-4o-mini", "stream": true}, "override": {"llm_options": {"max_tokens": 64}}})),
            ("openai-compatible", json!({"options": {"model": "gpt-4o-mini"}, "override": {"endpoint": "http://h/v1/chat/completions"}})),
            ("openai-compatible", json!({"override": {"endpoint": "http://h/v1", "request_body": rb, "llm_options": {"max_tokens": 9}}})),
            (
                "openai-compatible",
                json!({"options": {"temperature": 1, "n": 1.0}, "override": {"endpoint": "http://h/v1", "request_body": rb, "request_body_force_override": true}}),
            ),
            ("azure-openai", json!({"options": {"model": "x"}, "override": {"endpoint": "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version=1"}})),
            ("anthropic", json!({"override": {"request_body": rb, "llm_options": {"max_tokens": 100}}})),
            ("deepseek", json!({"options": {"stream": false, "max_tokens": null}})),
            ("bedrock", json!({"provider_conf": {"region": "us-east-1"}, "options": {"model": "amazon.nova-pro-v1:0"}, "override": {"llm_options": {"max_tokens": 7}, "request_body": rb}})),
            ("vertex-ai", json!({"provider_conf": pc, "options": {"model": "text-embedding-005"}})),
            ("gemini", json!({"override": {"llm_options": {"max_tokens": 3}}})),
        ]
        .into_iter()
        .map(|(p, extra)| target(p, extra, true))
        .collect()
    }

    /// A body planned from its raw form gives the upstream request its parsed form gives:
    /// the same URL, headers, stream flag, models, tool names and JSON (the client's bytes
    /// untouched whenever the parsed path leaves them so), or the same refusal — for every document of
    /// the corpus, every client protocol and every route configuration above.
    #[test]
    fn raw_bodies_plan_as_parsed_ones() {
        let mut docs = aigw_llm::corpus::documents();
        docs.extend(aigw_llm::corpus::TRICKY.iter().map(|t| t.as_bytes().to_vec()));
        docs.extend(
            [
                r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":null,"max_tokens":5}"#,
                r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":64}"#,
                r#"{"model":"m","input":"x","metadata":{"team":"web"},"temperature":0.5,"inferenceConfig":{"maxTokens":7}}"#,
                r#"{"model":"m","model":"n","messages":[]}"#,
                r#"{"\u006dodel":"m","messages":[],"stream":true}"#,
                r#"{ "messages" : [ ] , "n" : 1 , "stream_options" : {"include_usage": false} , "stream" : true }"#,
            ]
            .map(|s| s.as_bytes().to_vec()),
        );
        let protos = [
            Protocol::OpenAiChat,
            Protocol::OpenAiResponses,
            Protocol::OpenAiEmbeddings,
            Protocol::AnthropicMessages,
            Protocol::AnthropicCountTokens,
            Protocol::BedrockConverse,
            Protocol::Passthrough,
        ];
        let targets = shaping_targets();
        let h = HeaderMap::new();
        let mut planned = 0;
        for d in docs {
            let bytes = Bytes::from(d);
            let Ok(raw) = RawBody::parse(bytes.clone()) else { continue };
            if !raw.tree().is_object() {
                continue;
            }
            for t in &targets {
                for p in protos {
                    let path = path_of(p);
                    let req = ClientRequest { method: &Method::POST, path, path_and_query: path, headers: &h, body: &bytes, protocol: p };
                    match (plan(&req, raw.to_value(), t), plan(&req, &raw, t)) {
                        (Ok(a), Ok(b)) => {
                            let json = |p: &Plan| serde_json::from_slice::<Value>(&p.body).unwrap();
                            assert_eq!(json(&a), json(&b), "{} {p:?} {}", t.conf.provider.as_str(), String::from_utf8_lossy(&bytes));
                            // A body the parsed path forwards untouched, the raw path does too.
                            assert!(a.body != bytes || b.body == bytes, "rewritten: {}", String::from_utf8_lossy(&bytes));
                            assert_eq!(
                                (a.conversion, a.target, &a.method, &a.url, &a.headers, a.stream, &a.request_model, &a.model),
                                (b.conversion, b.target, &b.method, &b.url, &b.headers, b.stream, &b.request_model, &b.model)
                            );
                            assert_eq!((&a.names, a.embeddings_base64, a.include_usage), (&b.names, b.embeddings_base64, b.include_usage));
                            planned += 1;
                        }
                        (Err(a), Err(b)) => assert_eq!(a, b),
                        (a, b) => panic!("{p:?}: parsed {a:?}, raw {b:?}"),
                    }
                }
            }
        }
        assert!(planned > 10_000, "{planned}");
    }

    #[test]
    fn unchanged_bodies_are_forwarded_byte_for_byte() {
        let t = target("openai-compatible", json!({"override": {"endpoint": "http://h/v1/chat/completions"}}), true);
        let raw = Bytes::from_static(b"{ \"messages\" : [ {\"role\":\"user\",\"content\":\"hi\"} ] }");
        let body: Value = serde_json::from_slice(&raw).unwrap();
        let h = HeaderMap::new();
        let req = ClientRequest {
            method: &Method::POST,
            path: "/x",
            path_and_query: "/x",
            headers: &h,
            body: &raw,
            protocol: Protocol::OpenAiChat,
        };
        let p = plan(&req, body.clone(), &t).unwrap();
        assert_eq!(p.body, raw);
        let t =
            target("openai-compatible", json!({"override": {"endpoint": "http://h/v1/chat/completions"}, "options": {"model": "m"}}), true);
        let p = plan(&req, body, &t).unwrap();
        assert_ne!(p.body, raw);
        assert_eq!((p.request_model, p.model.as_deref()), (None, Some("m")));
    }
}
