//! The "supported" list of a refusal is exactly what a route accepts, for every provider ×
//! every configuration shape (provider_conf, override.endpoint) × every client protocol;
//! and config-time validation (aigw-model) accepts exactly the configurations that serve
//! some request.

use std::sync::Arc;

use aigw_llm::protocol::Protocol;
use aigw_model::route::{AiProxyConfig, validate_ai_proxy};
use aigw_providers::plan::{ClientRequest, Plan, PlanError, plan};
use aigw_providers::table::CLIENT_PROTOCOLS;
use aigw_providers::target::Target;
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};

const PROVIDERS: [&str; 10] =
    ["openai", "deepseek", "azure-openai", "aimlapi", "anthropic", "openrouter", "gemini", "vertex-ai", "bedrock", "openai-compatible"];

fn provider_confs() -> Vec<Option<Value>> {
    vec![
        None,
        Some(json!({})),
        Some(json!({"project_id": "p1"})),
        Some(json!({"region": "us-east-1"})),
        Some(json!({"project_id": "p1", "region": "us-central1"})),
        Some(json!({"project_id": "p1", "region": "global"})),
    ]
}

const ENDPOINTS: [Option<&str>; 11] = [
    None,
    Some("https://h.example"),
    Some("https://h.example/"),
    Some("http://127.0.0.1:9/v1"),
    Some("https://h.example/v1/chat/completions"),
    Some("https://h.example/v1/projects/p/locations/r/endpoints/openapi/chat/completions"),
    Some("https://h.example/v1/projects/p/locations/r/endpoints/openapi/chat/completions?x=1"),
    Some("https://h.example/v1/projects/p/locations/r/publishers/google/models/text-embedding-005:predict"),
    Some("https://h.example/v1/projects/p/locations/r/publishers/google/models/m:predict?alt=json"),
    Some("https://h.example/v1/messages"),
    Some("https://h.example/model/m/converse"),
];

fn body_of(p: Protocol) -> Value {
    match p {
        Protocol::OpenAiChat => json!({"model": "google/client-model", "messages": [{"role": "user", "content": "hi"}]}),
        Protocol::OpenAiResponses => json!({"model": "client-model", "input": "hi"}),
        Protocol::OpenAiEmbeddings => json!({"model": "client-model", "input": ["a"]}),
        Protocol::AnthropicMessages => json!({"model": "client-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
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

/// Plans a request of protocol `p` (its usual path and a typical body) for `t`.
fn go(t: &Target, p: Protocol) -> Result<Plan, PlanError> {
    let body = body_of(p);
    let bytes = Bytes::from(body.to_string());
    let h = HeaderMap::new();
    let req = ClientRequest { method: &Method::POST, path: path_of(p), path_and_query: path_of(p), headers: &h, body: &bytes, protocol: p };
    plan(&req, body, t)
}

#[test]
fn the_supported_list_is_what_the_route_accepts() {
    let (mut accepted, mut refused_at_config, mut refused_requests) = (0, 0, 0);
    for provider in PROVIDERS {
        for pc in provider_confs() {
            for ep in ENDPOINTS {
                let mut c = json!({"provider": provider, "auth": {}});
                if provider == "bedrock" {
                    c["auth"] = json!({"aws": {"access_key_id": "AKID", "secret_access_key": "s"}});
                }
                if let Some(pc) = &pc {
                    c["provider_conf"] = pc.clone();
                }
                if let Some(ep) = ep {
                    c["override"] = json!({"endpoint": ep});
                }
                let conf: AiProxyConfig = serde_json::from_value(c.clone()).unwrap();
                let valid = validate_ai_proxy(&conf);
                let target = Target::compile(Arc::new(conf), true);
                let t = match (valid, target) {
                    (Ok(()), Ok(t)) => t,
                    (Ok(()), Err(e)) => panic!("{c}: accepted at config time, but the target does not compile: {e}"),
                    (Err(_), _) => {
                        refused_at_config += 1;
                        continue;
                    }
                };
                accepted += 1;
                assert!(!t.supported.is_empty(), "{c}: accepted, but serves nothing");
                for p in CLIENT_PROTOCOLS.into_iter().chain([Protocol::Passthrough]) {
                    let listed = t.supported.contains(&p) || p == Protocol::Passthrough;
                    match go(&t, p) {
                        Ok(plan) => {
                            assert!(listed, "{c} × {}: planned, but not in the supported list {:?}", p.name(), t.supported);
                            assert!(plan.url.starts_with(&t.origin), "{c} × {}: {}", p.name(), plan.url);
                            let path = &plan.url[t.origin.len()..];
                            // Vertex's two APIs never receive each other's bodies.
                            if provider == "vertex-ai" {
                                let predict = path.split('?').next().unwrap().ends_with(":predict");
                                match plan.target {
                                    Protocol::VertexPredict => assert!(predict, "{c} × {}: predict body to {path}", p.name()),
                                    Protocol::OpenAiChat => {
                                        assert!(!predict, "{c} × {}: chat body to {path}", p.name());
                                        assert!(path.contains('/'), "{c}: {path}");
                                    }
                                    _ => {}
                                }
                            }
                            // A path given in override.endpoint is used exactly as given when it
                            // is that protocol's URL.
                            if let Some(given) = t.endpoint_path(plan.target)
                                && plan.target != Protocol::BedrockConverse
                            {
                                assert_eq!(path, given, "{c} × {}", p.name());
                            }
                        }
                        Err(PlanError::Unsupported { provider: pr, protocol, supported, reason }) => {
                            refused_requests += 1;
                            assert!(!listed, "{c} × {}: listed as supported, but refused", p.name());
                            assert_eq!((pr, protocol), (provider, p.name()));
                            assert_eq!(supported, t.supported_names(), "{c}");
                            let e = PlanError::Unsupported { provider: pr, protocol, supported: supported.clone(), reason };
                            let msg = e.to_string();
                            assert!(msg.contains(&format!("(supported: {supported})")), "{msg}");
                            if let Some(r) = reason {
                                assert!(msg.ends_with(r) && msg.contains("on this route"), "{msg}");
                            }
                        }
                        Err(e) => panic!("{c} × {}: {e}", p.name()),
                    }
                }
            }
        }
    }
    // The enumeration covers all three outcomes.
    assert!(accepted > 200 && refused_at_config > 50 && refused_requests > 500, "{accepted} {refused_at_config} {refused_requests}");
}

/// The route: vertex-ai with only `override.endpoint` (and `auth.gcp`) serves chat
/// and converted Anthropic clients at that URL; embeddings are refused, saying why.
#[test]
fn vertex_override_alone() {
    let chat = "https://us-central1-aiplatform.googleapis.com/v1/projects/P/locations/us-central1/endpoints/openapi/chat/completions";
    let conf: AiProxyConfig =
        serde_json::from_value(json!({"provider": "vertex-ai", "auth": {"gcp": {}}, "override": {"endpoint": chat}})).unwrap();
    validate_ai_proxy(&conf).unwrap();
    let t = Target::compile(Arc::new(conf), true).unwrap();
    let go = |p| go(&t, p);
    assert_eq!(go(Protocol::OpenAiChat).unwrap().url, chat);
    let a = go(Protocol::AnthropicMessages).unwrap();
    assert_eq!((a.url.as_str(), a.target), (chat, Protocol::OpenAiChat));
    assert_eq!(
        go(Protocol::OpenAiEmbeddings).unwrap_err().to_string(),
        "provider vertex-ai does not support openai-embeddings protocol on this route (supported: openai-chat, anthropic-messages): \
         embeddings on vertex-ai need provider_conf (project_id + region) or an override.endpoint ending in :predict"
    );
    assert_eq!(
        go(Protocol::OpenAiResponses).unwrap_err().to_string(),
        "provider vertex-ai does not support openai-responses protocol (supported: openai-chat, anthropic-messages)"
    );
}

/// With provider_conf too, the API the endpoint does not name is built from provider_conf
/// on the endpoint's host (as for a bare origin).
#[test]
fn vertex_override_and_provider_conf() {
    let origin = "http://127.0.0.1:9";
    let chat = "/v1/projects/P/locations/r1/endpoints/1234/chat/completions";
    let predict = "/v1/projects/P/locations/r1/publishers/google/models/text-embedding-005:predict";
    for (ep, want_chat, want_embeddings) in [
        (chat, chat.to_owned(), "/v1/projects/p1/locations/us-central1/publishers/google/models/client-model:predict".to_owned()),
        (predict, "/v1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions".to_owned(), predict.to_owned()),
    ] {
        let conf: AiProxyConfig = serde_json::from_value(json!({"provider": "vertex-ai", "auth": {},
            "provider_conf": {"project_id": "p1", "region": "us-central1"}, "override": {"endpoint": format!("{origin}{ep}")}}))
        .unwrap();
        let t = Target::compile(Arc::new(conf), true).unwrap();
        for (p, want) in
            [(Protocol::OpenAiChat, &want_chat), (Protocol::AnthropicMessages, &want_chat), (Protocol::OpenAiEmbeddings, &want_embeddings)]
        {
            assert_eq!(go(&t, p).unwrap().url, format!("{origin}{want}"), "{ep} × {}", p.name());
        }
    }
}
