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

/// How a provider serves a protocol natively: at a fixed path, or at Vertex AI's
/// OpenAI-compatible endpoint under the project and location of `provider_conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathRule {
    Fixed(&'static str),
    VertexChat,
}

fn path_rule(provider: Provider, proto: Protocol) -> Option<PathRule> {
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
        (Provider::VertexAi, OpenAiChat) => return Some(PathRule::VertexChat),
        _ => return None,
    };
    Some(PathRule::Fixed(p))
}

/// Native path of `proto` on `provider`; None when the provider does not speak it, or
/// (Vertex AI) when `provider_conf` lacks the project and region its path is built from.
pub fn native_path(provider: Provider, proto: Protocol, pc: Option<&ProviderConf>) -> Option<String> {
    match path_rule(provider, proto)? {
        PathRule::Fixed(p) => Some(p.to_owned()),
        PathRule::VertexChat => Some(format!("{}/endpoints/openapi/chat/completions", vertex_location(pc?)?)),
    }
}

/// `/v1/projects/{project_id}/locations/{region}` (Vertex AI's `v1`, as the issue asks;
/// APISIX uses `v1beta1` for chat, which serves the same OpenAI-compatible endpoint).
fn vertex_location(pc: &ProviderConf) -> Option<String> {
    let (p, r) = (pc.project_id.as_deref().filter(|s| !s.is_empty())?, pc.region.as_deref().filter(|s| !s.is_empty())?);
    Some(format!("/v1/projects/{p}/locations/{r}"))
}

/// An `override.endpoint` path naming Vertex AI's `:predict` (embeddings) rather than its
/// OpenAI-compatible chat endpoint.
fn is_predict(path_and_query: &str) -> bool {
    path_and_query.split(['?', '#']).next().unwrap_or_default().ends_with(":predict")
}

/// The path and query of `override.endpoint` (`endpoint_path`; None for a bare origin or
/// no endpoint) when they are the URL of requests in protocol `upstream`. A path is used
/// exactly as given for every protocol (CONTRACT §7, APISIX), except on Vertex AI, whose
/// two APIs have distinct URLs: a path ending in `:predict` is the embeddings URL, any
/// other the OpenAI-compatible chat URL; the other API's path is then built from
/// `provider_conf`, on the endpoint's host. Passthrough always takes the endpoint path.
pub fn endpoint_path_for(provider: Provider, upstream: Protocol, endpoint_path: Option<&str>) -> Option<&str> {
    let p = endpoint_path?;
    let applies = match (provider, upstream) {
        (_, Protocol::Passthrough) => true,
        (Provider::VertexAi, Protocol::VertexPredict) => is_predict(p),
        (Provider::VertexAi, _) => !is_predict(p),
        _ => true,
    };
    applies.then_some(p)
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

/// Why a protocol cannot reach a provider on a route's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// The provider does not speak it and no converter leads there.
    NotSpoken,
    /// The provider speaks it, but this configuration gives no URL for it: what is missing.
    NoUrl(&'static str),
}

impl Unreachable {
    /// What the configuration lacks, when that is the reason.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Unreachable::NotSpoken => None,
            Unreachable::NoUrl(r) => Some(r),
        }
    }
}

const VERTEX_CHAT_NEEDS: &str = "chat on vertex-ai needs provider_conf (project_id + region) or an override.endpoint \
     naming the OpenAI-compatible URL (.../endpoints/openapi/chat/completions)";
const VERTEX_EMBEDDINGS_NEED: &str =
    "embeddings on vertex-ai need provider_conf (project_id + region) or an override.endpoint ending in :predict";

/// Whether requests in protocol `upstream` have a URL on this configuration: the endpoint's
/// path, or the provider's own path.
fn reachable(provider: Provider, upstream: Protocol, pc: Option<&ProviderConf>, endpoint_path: Option<&str>) -> Result<(), Unreachable> {
    if endpoint_path_for(provider, upstream, endpoint_path).is_some() {
        return Ok(());
    }
    let built = match upstream {
        Protocol::VertexPredict => pc.and_then(vertex_location).is_some(),
        _ => native_path(provider, upstream, pc).is_some(),
    };
    match (built, provider, upstream) {
        (true, ..) => Ok(()),
        (false, Provider::VertexAi, Protocol::VertexPredict) => Err(Unreachable::NoUrl(VERTEX_EMBEDDINGS_NEED)),
        (false, Provider::VertexAi, _) => Err(Unreachable::NoUrl(VERTEX_CHAT_NEEDS)),
        (false, ..) => Err(Unreachable::NoUrl("override.endpoint needs a path")),
    }
}

/// How `proto` reaches `provider` on a route's configuration (`provider_conf`, and the
/// path and query of `override.endpoint`: None for a bare origin or no endpoint), or why
/// it cannot. The one function that decides; [`supported`] lists what it accepts.
///
/// An OpenAI chat client on `provider: anthropic` is converted to the Messages API unless
/// the endpoint path is an OpenAI-compatible `/chat/completions` (CONTRACT §9).
pub fn route_to(
    provider: Provider,
    proto: Protocol,
    pc: Option<&ProviderConf>,
    endpoint_path: Option<&str>,
) -> Result<Conversion, Unreachable> {
    use Protocol::*;
    if provider == Provider::Anthropic && proto == OpenAiChat && aigw_llm::openai_to_anthropic::converts_for_endpoint(endpoint_path) {
        return Ok(Conversion::OpenAiToAnthropic);
    }
    if provider == Provider::Bedrock {
        return match proto {
            BedrockConverse | Passthrough => Ok(Conversion::Native),
            OpenAiChat => Ok(Conversion::OpenAiToConverse),
            AnthropicMessages => Ok(Conversion::AnthropicToConverse),
            _ => Err(Unreachable::NotSpoken),
        };
    }
    if proto == Passthrough {
        return Ok(Conversion::Native);
    }
    let reach = |upstream| reachable(provider, upstream, pc, endpoint_path);
    if provider == Provider::VertexAi && proto == OpenAiEmbeddings {
        return reach(VertexPredict).map(|()| Conversion::EmbeddingsToVertexPredict);
    }
    if path_rule(provider, proto).is_some() {
        return reach(proto).map(|()| Conversion::Native);
    }
    if proto == AnthropicMessages && path_rule(provider, OpenAiChat).is_some() {
        return reach(OpenAiChat).map(|()| Conversion::AnthropicToOpenAi);
    }
    Err(Unreachable::NotSpoken)
}

/// The client protocols a "supported" list names (passthrough is always accepted).
pub const CLIENT_PROTOCOLS: [Protocol; 6] = [
    Protocol::OpenAiChat,
    Protocol::OpenAiResponses,
    Protocol::OpenAiEmbeddings,
    Protocol::AnthropicMessages,
    Protocol::AnthropicCountTokens,
    Protocol::BedrockConverse,
];

/// The client protocols [`route_to`] accepts on this configuration, for error messages and
/// for refusing at config time a configuration that serves none.
pub fn supported(provider: Provider, pc: Option<&ProviderConf>, endpoint_path: Option<&str>) -> Vec<Protocol> {
    CLIENT_PROTOCOLS.into_iter().filter(|p| route_to(provider, *p, pc, endpoint_path).is_ok()).collect()
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
        let names = |v: Vec<Protocol>| v.into_iter().map(Protocol::name).collect::<Vec<_>>();
        assert_eq!(names(supported(Provider::VertexAi, Some(&pc), None)), ["openai-chat", "openai-embeddings", "anthropic-messages"]);
        assert_eq!(route_to(Provider::VertexAi, Protocol::OpenAiEmbeddings, Some(&pc), None), Ok(Conversion::EmbeddingsToVertexPredict));
        assert_eq!(names(supported(Provider::Deepseek, None, None)), ["openai-chat", "anthropic-messages"]);
        assert_eq!(names(supported(Provider::Bedrock, Some(&pc), None)), ["openai-chat", "anthropic-messages", "bedrock-converse"]);
        assert_eq!(route_to(Provider::Openai, Protocol::AnthropicMessages, None, None), Ok(Conversion::AnthropicToOpenAi));
        assert_eq!(route_to(Provider::Anthropic, Protocol::AnthropicMessages, None, None), Ok(Conversion::Native));
        assert_eq!(route_to(Provider::Deepseek, Protocol::OpenAiResponses, None, None), Err(Unreachable::NotSpoken));
    }

    /// Vertex AI by configuration shape: (provider_conf, override.endpoint path) → what is
    /// served, where, and why the rest is not.
    #[test]
    fn vertex_ai_by_configuration_shape() {
        use Protocol::*;
        let full = ProviderConf { project_id: Some("p".into()), region: Some("r".into()) };
        let project_only = ProviderConf { project_id: Some("p".into()), region: None };
        let chat = "/v1/projects/p/locations/r/endpoints/openapi/chat/completions";
        let predict = "/v1/projects/p/locations/r/publishers/google/models/text-embedding-005:predict?alt=json";
        let (c, e) = (Some(VERTEX_CHAT_NEEDS), Some(VERTEX_EMBEDDINGS_NEED));
        // (provider_conf, endpoint path, supported, why chat is refused, why embeddings are)
        for (pc, ep, want, chat_why, emb_why) in [
            (Some(&full), None, &[OpenAiChat, OpenAiEmbeddings, AnthropicMessages][..], None, None),
            (Some(&full), Some(chat), &[OpenAiChat, OpenAiEmbeddings, AnthropicMessages], None, None),
            (Some(&full), Some(predict), &[OpenAiChat, OpenAiEmbeddings, AnthropicMessages], None, None),
            (None, Some(chat), &[OpenAiChat, AnthropicMessages], None, e),
            (Some(&project_only), Some(chat), &[OpenAiChat, AnthropicMessages], None, e),
            (None, Some("/custom/v1"), &[OpenAiChat, AnthropicMessages], None, e),
            (None, Some(predict), &[OpenAiEmbeddings], c, None),
            (None, None, &[], c, e),
            (Some(&project_only), None, &[], c, e),
        ] {
            assert_eq!(supported(Provider::VertexAi, pc, ep), want, "{pc:?} {ep:?}");
            let why = |p| route_to(Provider::VertexAi, p, pc, ep).err().and_then(Unreachable::reason);
            assert_eq!((why(OpenAiChat), why(AnthropicMessages), why(OpenAiEmbeddings)), (chat_why, chat_why, emb_why), "{pc:?} {ep:?}");
            assert_eq!(route_to(Provider::VertexAi, OpenAiResponses, pc, ep), Err(Unreachable::NotSpoken));
            assert_eq!(route_to(Provider::VertexAi, Passthrough, pc, ep), Ok(Conversion::Native));
        }
        // Which endpoint path each upstream protocol takes.
        let on = |up, ep| endpoint_path_for(Provider::VertexAi, up, Some(ep));
        assert_eq!((on(OpenAiChat, chat), on(VertexPredict, chat), on(Passthrough, chat)), (Some(chat), None, Some(chat)));
        assert_eq!((on(OpenAiChat, predict), on(VertexPredict, predict), on(Passthrough, predict)), (None, Some(predict), Some(predict)));
        // Other providers use a path exactly as given, for every protocol.
        assert_eq!(endpoint_path_for(Provider::OpenaiCompatible, OpenAiEmbeddings, Some("/x:predict")), Some("/x:predict"));
    }

    #[test]
    fn openai_clients_on_anthropic() {
        // (override.endpoint's path and query, expected conversion)
        for (ep, want) in [
            (None, Conversion::OpenAiToAnthropic),
            (Some("/v1/messages"), Conversion::OpenAiToAnthropic),
            (Some("/v1/chat/completions"), Conversion::Native),
            (Some("/openai/chat/completions?x=1"), Conversion::Native),
        ] {
            assert_eq!(route_to(Provider::Anthropic, Protocol::OpenAiChat, None, ep), Ok(want), "{ep:?}");
        }
        assert_eq!(Conversion::OpenAiToAnthropic.target(Protocol::OpenAiChat), Protocol::AnthropicMessages);
        assert_eq!(route_to(Provider::Anthropic, Protocol::AnthropicMessages, None, None), Ok(Conversion::Native));
        assert_eq!(route_to(Provider::Openai, Protocol::OpenAiChat, None, None), Ok(Conversion::Native));
    }
}
