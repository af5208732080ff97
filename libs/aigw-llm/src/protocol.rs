//! Client protocol detection (APISIX order: request path suffix first, then body shape).
//! Which provider serves which protocol where is `aigw_providers::table`.

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
    /// Vertex AI `:predict` (text embeddings): an upstream protocol only, reached by
    /// converting OpenAI embeddings; never detected from a client.
    VertexPredict,
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
            Protocol::VertexPredict => "vertex-predict",
        }
    }

    /// `request_type` is `ai_stream` when the body asks for a stream.
    pub fn is_stream(self, body: &Value) -> bool {
        !matches!(self, Protocol::OpenAiEmbeddings | Protocol::AnthropicCountTokens | Protocol::VertexPredict)
            && body.get("stream").and_then(Value::as_bool) == Some(true)
    }
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
}
