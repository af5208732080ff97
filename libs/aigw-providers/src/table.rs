//! The provider table: each provider's default origin, where it serves each protocol, and
//! how a client protocol reaches it (natively or through a converter).

use aigw_llm::protocol::Protocol;
use aigw_model::Provider;
use aigw_model::route::ProviderConf;

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
            return Some(format!("{}/endpoints/openapi/chat/completions", vertex_location(pc?)?));
        }
        _ => return None,
    };
    Some(p.to_owned())
}

/// `/v1/projects/{project_id}/locations/{region}` (Vertex AI's `v1`, as the issue asks;
/// APISIX uses `v1beta1` for chat, which serves the same OpenAI-compatible endpoint).
fn vertex_location(pc: &ProviderConf) -> Option<String> {
    let (p, r) = (pc.project_id.as_deref().filter(|s| !s.is_empty())?, pc.region.as_deref().filter(|s| !s.is_empty())?);
    Some(format!("/v1/projects/{p}/locations/{r}"))
}

/// Vertex AI `:predict` of a Google text-embedding `model` (a `google/` prefix, as the
/// OpenAI-compatible chat endpoint's model names have, is dropped; the rest is one
/// percent-encoded path segment).
pub fn vertex_predict_path(pc: Option<&ProviderConf>, model: &str) -> Option<String> {
    let model = model.strip_prefix("google/").unwrap_or(model);
    let model = crate::encode::encode_component(model).replace("%40", "@");
    Some(format!("{}/publishers/google/models/{model}:predict", vertex_location(pc?)?))
}

/// How a client protocol reaches a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// The provider speaks it (or it is passthrough).
    Native,
    /// Anthropic client, OpenAI chat backend.
    AnthropicToOpenAi,
    /// OpenAI chat client, Bedrock Converse backend.
    OpenAiToConverse,
    /// Anthropic client, Bedrock Converse backend (through OpenAI chat).
    AnthropicToConverse,
    /// OpenAI embeddings client, Vertex AI `:predict` backend.
    EmbeddingsToVertexPredict,
    /// OpenAI chat client, Anthropic Messages backend (`provider: anthropic` unless
    /// `override.endpoint` names an OpenAI-compatible `/chat/completions`, CONTRACT §9).
    OpenAiToAnthropic,
}

impl Conversion {
    /// The protocol the upstream receives.
    pub fn target(self, client: Protocol) -> Protocol {
        match self {
            Conversion::Native => client,
            Conversion::AnthropicToOpenAi => Protocol::OpenAiChat,
            Conversion::OpenAiToConverse | Conversion::AnthropicToConverse => Protocol::BedrockConverse,
            Conversion::EmbeddingsToVertexPredict => Protocol::VertexPredict,
            Conversion::OpenAiToAnthropic => Protocol::AnthropicMessages,
        }
    }
}

/// How `proto` reaches `provider`, or None when it cannot. `endpoint` is
/// `override.endpoint`: an OpenAI chat client on `provider: anthropic` is converted to the
/// Messages API unless it names an OpenAI-compatible `/chat/completions` path.
pub fn route_to(provider: Provider, proto: Protocol, pc: Option<&ProviderConf>, endpoint: Option<&str>) -> Option<Conversion> {
    if provider == Provider::Anthropic && proto == Protocol::OpenAiChat && aigw_llm::openai_to_anthropic::converts_for_endpoint(endpoint) {
        return Some(Conversion::OpenAiToAnthropic);
    }
    route(provider, proto, pc)
}

/// How `proto` reaches `provider` by the table alone (natively at its path, or through
/// the Anthropic→OpenAI and Converse converters); see [`route_to`] for the request path.
pub fn route(provider: Provider, proto: Protocol, pc: Option<&ProviderConf>) -> Option<Conversion> {
    if provider == Provider::Bedrock {
        return match proto {
            Protocol::BedrockConverse | Protocol::Passthrough => Some(Conversion::Native),
            Protocol::OpenAiChat => Some(Conversion::OpenAiToConverse),
            Protocol::AnthropicMessages => Some(Conversion::AnthropicToConverse),
            _ => None,
        };
    }
    if provider == Provider::VertexAi && proto == Protocol::OpenAiEmbeddings {
        return Some(Conversion::EmbeddingsToVertexPredict);
    }
    if proto == Protocol::Passthrough || native_path(provider, proto, pc).is_some() {
        return Some(Conversion::Native);
    }
    if proto == Protocol::AnthropicMessages && native_path(provider, Protocol::OpenAiChat, pc).is_some() {
        return Some(Conversion::AnthropicToOpenAi);
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
            "/v1/projects/p1/locations/us-east-1/endpoints/openapi/chat/completions"
        );
        // Vertex: the global location has no regional host; predict paths name the model.
        let global = ProviderConf { project_id: Some("p1".into()), region: Some("global".into()) };
        assert_eq!(default_origin(Provider::VertexAi, Some(&global)).unwrap(), "https://aiplatform.googleapis.com");
        assert_eq!(default_origin(Provider::VertexAi, Some(&pc)).unwrap(), "https://us-east-1-aiplatform.googleapis.com");
        assert_eq!(
            vertex_predict_path(Some(&global), "google/text-embedding-005@001").unwrap(),
            "/v1/projects/p1/locations/global/publishers/google/models/text-embedding-005@001:predict"
        );
        assert_eq!(vertex_predict_path(None, "m"), None);
        assert_eq!(
            native_path(Provider::VertexAi, Protocol::OpenAiChat, Some(&ProviderConf { project_id: None, region: Some("r".into()) })),
            None
        );
        assert_eq!(supported(Provider::VertexAi), vec!["openai-chat", "openai-embeddings", "anthropic-messages"]);
        assert_eq!(route(Provider::VertexAi, Protocol::OpenAiEmbeddings, None), Some(Conversion::EmbeddingsToVertexPredict));
        assert_eq!(supported(Provider::Deepseek), vec!["openai-chat", "anthropic-messages"]);
        assert_eq!(supported(Provider::Bedrock), vec!["openai-chat", "anthropic-messages", "bedrock-converse"]);
        assert_eq!(route(Provider::Openai, Protocol::AnthropicMessages, None), Some(Conversion::AnthropicToOpenAi));
        assert_eq!(route(Provider::Anthropic, Protocol::AnthropicMessages, None), Some(Conversion::Native));
        assert_eq!(route(Provider::Deepseek, Protocol::OpenAiResponses, None), None);
    }

    #[test]
    fn openai_clients_on_anthropic() {
        // (override.endpoint, expected conversion)
        for (ep, want) in [
            (None, Conversion::OpenAiToAnthropic),
            (Some("https://api.anthropic.com"), Conversion::OpenAiToAnthropic),
            (Some("https://proxy.example/v1/messages"), Conversion::OpenAiToAnthropic),
            (Some("https://api.anthropic.com/v1/chat/completions"), Conversion::Native),
            (Some("http://127.0.0.1:1/openai/chat/completions?x=1"), Conversion::Native),
        ] {
            assert_eq!(route_to(Provider::Anthropic, Protocol::OpenAiChat, None, ep), Some(want), "{ep:?}");
        }
        assert_eq!(Conversion::OpenAiToAnthropic.target(Protocol::OpenAiChat), Protocol::AnthropicMessages);
        assert_eq!(route_to(Provider::Anthropic, Protocol::AnthropicMessages, None, None), Some(Conversion::Native));
        assert_eq!(route_to(Provider::Openai, Protocol::OpenAiChat, None, None), Some(Conversion::Native));
    }
}
