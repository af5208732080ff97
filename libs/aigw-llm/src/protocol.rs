//! Client protocol detection (APISIX order: request path suffix first, then body shape)
//! and the provider table: default origins and paths per provider and protocol.

use aigw_model::Provider;
use aigw_model::route::ProviderConf;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OpenAiChat,
    OpenAiResponses,
    OpenAiEmbeddings,
    AnthropicMessages,
    /// `/v1/messages/count_tokens`.
    AnthropicCountTokens,
    BedrockConverse,
    Passthrough,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::OpenAiChat => "openai-chat",
            Protocol::OpenAiResponses => "openai-responses",
            Protocol::OpenAiEmbeddings => "openai-embeddings",
            Protocol::AnthropicMessages => "anthropic-messages",
            Protocol::AnthropicCountTokens => "anthropic-count-tokens",
            Protocol::BedrockConverse => "bedrock-converse",
            Protocol::Passthrough => "passthrough",
        }
    }

    /// `request_type` is `ai_stream` when the body asks for a stream.
    pub fn is_stream(self, body: &Value) -> bool {
        !matches!(self, Protocol::OpenAiEmbeddings | Protocol::AnthropicCountTokens)
            && body.get("stream").and_then(Value::as_bool) == Some(true)
    }
}

/// Which error envelope a client expects, decided by the request path alone (so it is
/// known before routing and before the body is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientShape {
    OpenAi,
    Anthropic,
}

pub fn client_shape(path: &str) -> ClientShape {
    if path.ends_with("/v1/messages") || path.ends_with("/v1/messages/count_tokens") { ClientShape::Anthropic } else { ClientShape::OpenAi }
}

pub fn detect(path: &str, body: &Value) -> Option<Protocol> {
    let obj = body.as_object()?;
    if (path.ends_with("/converse") || path.ends_with("/converse-stream")) && obj.get("messages").is_some_and(Value::is_array) {
        return Some(Protocol::BedrockConverse);
    }
    if path.ends_with("/v1/messages") {
        return Some(Protocol::AnthropicMessages);
    }
    if path.ends_with("/v1/messages/count_tokens") {
        return Some(Protocol::AnthropicCountTokens);
    }
    if path.ends_with("/v1/responses") && obj.contains_key("input") {
        return Some(Protocol::OpenAiResponses);
    }
    if obj.get("messages").is_some_and(|m| m.is_array() || m.is_object()) {
        return Some(Protocol::OpenAiChat);
    }
    if obj.contains_key("input") {
        return Some(Protocol::OpenAiEmbeddings);
    }
    if !obj.is_empty() {
        return Some(Protocol::Passthrough);
    }
    None
}

/// Default scheme and authority of a provider (None: the route must set override.endpoint).
pub fn default_origin(provider: Provider, pc: Option<&ProviderConf>) -> Option<String> {
    let host = match provider {
        Provider::Openai => "api.openai.com".to_owned(),
        Provider::Deepseek => "api.deepseek.com".to_owned(),
        Provider::Aimlapi => "api.aimlapi.com".to_owned(),
        Provider::Anthropic => "api.anthropic.com".to_owned(),
        Provider::Openrouter => "openrouter.ai".to_owned(),
        Provider::Gemini => "generativelanguage.googleapis.com".to_owned(),
        Provider::VertexAi => match pc.and_then(|p| p.region.as_deref()) {
            Some("global") | None => "aiplatform.googleapis.com".to_owned(),
            Some(r) => format!("{r}-aiplatform.googleapis.com"),
        },
        Provider::Bedrock => format!("bedrock-runtime.{}.amazonaws.com", pc?.region.as_deref()?),
        Provider::AzureOpenai | Provider::OpenaiCompatible => return None,
    };
    Some(format!("https://{host}"))
}

/// Native path of `proto` on `provider`; None when the provider does not speak it.
pub fn native_path(provider: Provider, proto: Protocol, pc: Option<&ProviderConf>) -> Option<String> {
    use Protocol::*;
    let p = match (provider, proto) {
        (Provider::Openai | Provider::OpenaiCompatible, OpenAiChat) => "/v1/chat/completions",
        (Provider::Openai | Provider::OpenaiCompatible, OpenAiResponses) => "/v1/responses",
        (Provider::Openai | Provider::OpenaiCompatible, OpenAiEmbeddings) => "/v1/embeddings",
        (Provider::Deepseek, OpenAiChat) => "/chat/completions",
        (Provider::Aimlapi, OpenAiChat) => "/v1/chat/completions",
        (Provider::Anthropic, OpenAiChat) => "/v1/chat/completions",
        (Provider::Anthropic, AnthropicMessages) => "/v1/messages",
        (Provider::Anthropic, AnthropicCountTokens) => "/v1/messages/count_tokens",
        (Provider::Openrouter, OpenAiChat) => "/api/v1/chat/completions",
        (Provider::Gemini, OpenAiChat) => "/v1beta/openai/chat/completions",
        (Provider::Gemini, OpenAiEmbeddings) => "/v1beta/openai/embeddings",
        (Provider::AzureOpenai, OpenAiChat) => "/chat/completions",
        (Provider::VertexAi, OpenAiChat) => {
            let pc = pc?;
            return Some(format!(
                "/v1beta1/projects/{}/locations/{}/endpoints/openapi/chat/completions",
                pc.project_id.as_deref()?,
                pc.region.as_deref()?
            ));
        }
        _ => return None,
    };
    Some(p.to_owned())
}

/// How a client protocol reaches a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The provider speaks it (or it is passthrough).
    Native,
    /// Anthropic client, OpenAI chat backend.
    AnthropicToOpenAi,
    /// OpenAI chat client, Bedrock Converse backend.
    OpenAiToConverse,
    /// Anthropic client, Bedrock Converse backend (through OpenAI chat).
    AnthropicToConverse,
}

impl Route {
    /// The protocol the upstream receives.
    pub fn target(self, client: Protocol) -> Protocol {
        match self {
            Route::Native => client,
            Route::AnthropicToOpenAi => Protocol::OpenAiChat,
            Route::OpenAiToConverse | Route::AnthropicToConverse => Protocol::BedrockConverse,
        }
    }
}

/// How `proto` reaches `provider`, or None when it cannot.
pub fn route(provider: Provider, proto: Protocol, pc: Option<&ProviderConf>) -> Option<Route> {
    if provider == Provider::Bedrock {
        return match proto {
            Protocol::BedrockConverse | Protocol::Passthrough => Some(Route::Native),
            Protocol::OpenAiChat => Some(Route::OpenAiToConverse),
            Protocol::AnthropicMessages => Some(Route::AnthropicToConverse),
            _ => None,
        };
    }
    if proto == Protocol::Passthrough || native_path(provider, proto, pc).is_some() {
        return Some(Route::Native);
    }
    if proto == Protocol::AnthropicMessages && native_path(provider, Protocol::OpenAiChat, pc).is_some() {
        return Some(Route::AnthropicToOpenAi);
    }
    None
}

/// Protocols a provider accepts (natively or converted), for error messages.
pub fn supported(provider: Provider) -> Vec<&'static str> {
    use Protocol::*;
    let pc = ProviderConf { project_id: Some("p".into()), region: Some("r".into()) };
    [OpenAiChat, OpenAiResponses, OpenAiEmbeddings, AnthropicMessages, AnthropicCountTokens, BedrockConverse]
        .into_iter()
        .filter(|p| route(provider, *p, Some(&pc)).is_some())
        .map(Protocol::name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(path: &str, body: Value, expect: Option<Protocol>) {
        assert_eq!(detect(path, &body), expect, "{path} {body}");
    }

    #[test]
    fn detection_order() {
        use Protocol::*;
        check("/x", json!({"messages": []}), Some(OpenAiChat));
        check("/bedrock/converse", json!({"messages": []}), Some(BedrockConverse));
        check("/model/m/converse-stream", json!({"messages": []}), Some(BedrockConverse));
        check("/bedrock/converse", json!({"input": "x"}), Some(OpenAiEmbeddings));
        check("/v1/messages", json!({}), Some(AnthropicMessages));
        check("/a/v1/messages", json!({"messages": []}), Some(AnthropicMessages));
        check("/v1/messages/count_tokens", json!({"messages": []}), Some(AnthropicCountTokens));
        check("/v1/responses", json!({"input": "hi"}), Some(OpenAiResponses));
        check("/v1/responses", json!({"model": "m"}), Some(Passthrough));
        check("/embeddings", json!({"input": ["a"]}), Some(OpenAiEmbeddings));
        check("/v1/images", json!({"prompt": "cat"}), Some(Passthrough));
        check("/x", json!({}), None);
        check("/x", json!("str"), None);
        check("/x", json!([1]), None);
    }

    #[test]
    fn provider_table() {
        assert_eq!(default_origin(Provider::Openai, None).unwrap(), "https://api.openai.com");
        assert_eq!(default_origin(Provider::OpenaiCompatible, None), None);
        let pc = ProviderConf { project_id: Some("p1".into()), region: Some("us-east-1".into()) };
        assert_eq!(default_origin(Provider::Bedrock, Some(&pc)).unwrap(), "https://bedrock-runtime.us-east-1.amazonaws.com");
        assert_eq!(native_path(Provider::Openai, Protocol::OpenAiChat, None).unwrap(), "/v1/chat/completions");
        assert_eq!(native_path(Provider::Deepseek, Protocol::OpenAiChat, None).unwrap(), "/chat/completions");
        assert_eq!(native_path(Provider::Deepseek, Protocol::OpenAiResponses, None), None);
        assert_eq!(
            native_path(Provider::VertexAi, Protocol::OpenAiChat, Some(&pc)).unwrap(),
            "/v1beta1/projects/p1/locations/us-east-1/endpoints/openapi/chat/completions"
        );
        assert_eq!(supported(Provider::Deepseek), vec!["openai-chat", "anthropic-messages"]);
        assert_eq!(supported(Provider::Bedrock), vec!["openai-chat", "anthropic-messages", "bedrock-converse"]);
        assert_eq!(route(Provider::Openai, Protocol::AnthropicMessages, None), Some(Route::AnthropicToOpenAi));
        assert_eq!(route(Provider::Anthropic, Protocol::AnthropicMessages, None), Some(Route::Native));
        assert_eq!(route(Provider::Deepseek, Protocol::OpenAiResponses, None), None);
    }
}
