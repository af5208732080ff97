//! Client protocol detection (APISIX order: request path suffix first, then body shape).
//! Which provider serves which protocol where is `aigw_providers::table`. Detection reads
//! top-level fields only, so it works on a parsed `Value` and on a [`RawBody`] alike
//! ([`Fields`]).
//!
//! [`RawBody`]: crate::body::RawBody

use crate::body::{Fields, Json, Kind};

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
    pub fn is_stream<B: Fields + ?Sized>(self, body: &B) -> bool {
        !matches!(self, Protocol::OpenAiEmbeddings | Protocol::AnthropicCountTokens | Protocol::VertexPredict)
            && body.field("stream").and_then(Json::as_bool) == Some(true)
    }
}

pub fn detect<B: Fields + ?Sized>(path: &str, body: &B) -> Option<Protocol> {
    if !body.is_object() {
        return None;
    }
    let kind = |k: &str| body.field(k).map(Json::kind);
    if (path.ends_with("/converse") || path.ends_with("/converse-stream")) && kind("messages") == Some(Kind::Array) {
        return Some(Protocol::BedrockConverse);
    }
    if path.ends_with("/v1/messages") {
        return Some(Protocol::AnthropicMessages);
    }
    if path.ends_with("/v1/messages/count_tokens") {
        return Some(Protocol::AnthropicCountTokens);
    }
    if path.ends_with("/v1/responses") && body.contains_key("input") {
        return Some(Protocol::OpenAiResponses);
    }
    if matches!(kind("messages"), Some(Kind::Array | Kind::Object)) {
        return Some(Protocol::OpenAiChat);
    }
    if body.contains_key("input") {
        return Some(Protocol::OpenAiEmbeddings);
    }
    if body.field_count() != 0 {
        return Some(Protocol::Passthrough);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::RawBody;
    use serde_json::{Value, json};

    /// Checks the parsed and the raw form alike.
    fn check(path: &str, body: Value, expect: Option<Protocol>) {
        assert_eq!(detect(path, &body), expect, "{path} {body}");
        let raw = RawBody::parse(serde_json::to_vec(&body).unwrap().into()).unwrap();
        assert_eq!(detect(path, &raw), expect, "raw: {path} {body}");
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
