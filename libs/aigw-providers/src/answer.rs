//! Whole (non-streamed) answers converted for the client, when the client speaks another
//! protocol than the upstream: the success body through the converters, an error body
//! into the client's error envelope (status kept). Pure; streams go through
//! `aigw_llm::stream::Pipe` instead.

use aigw_llm::envelope::{self, Envelope};
use aigw_llm::protocol::Protocol;
use aigw_llm::{anthropic, bedrock, openai_to_anthropic, vertex};
use serde_json::Value;

use crate::plan::Plan;
use crate::table::Conversion;

/// A success body that cannot be converted (not JSON, not the expected shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnswerError(pub String);

/// Converts a whole upstream answer for the client; None when it goes out unchanged.
/// `amzn_error_type` is Bedrock's `x-amzn-errortype` header; `id` names a converted answer.
pub fn convert(plan: &Plan, status: u16, amzn_error_type: Option<&str>, body: &[u8], id: &str) -> Option<Result<Vec<u8>, AnswerError>> {
    if plan.conversion == Conversion::Native {
        return None;
    }
    if plan.conversion == Conversion::OpenAiToAnthropic {
        return Some(from_anthropic(plan, status, body));
    }
    let model = plan.model.as_deref().unwrap_or_default();
    let client = Envelope::for_protocol(plan.client);
    if !(200..300).contains(&status) {
        let bytes = if plan.target == Protocol::BedrockConverse {
            let (kind, message) = bedrock::error_message(amzn_error_type, body);
            let message = if client == Envelope::Anthropic { format!("{kind}: {message}") } else { message };
            envelope::json(client, &envelope::Error { status, kind: Some(&kind), code: &kind, message: &message, class: None })
        } else {
            let message = envelope::message_of(status, body);
            envelope::json(client, &envelope::Error { status, kind: None, code: "upstream_error", message: &message, class: None })
        };
        return Some(Ok(bytes));
    }
    Some((|| {
        let v: Value = serde_json::from_slice(body).map_err(|e| AnswerError(format!("the upstream answer is not JSON: {e}")))?;
        if plan.target == Protocol::VertexPredict {
            let out = vertex::predict_to_embeddings(&v, model, plan.embeddings_base64).map_err(|e| AnswerError(e.0))?;
            return Ok(serde_json::to_vec(&out).unwrap_or_default());
        }
        let openai =
            if plan.target == Protocol::BedrockConverse { bedrock::response_to_openai(&v, &format!("chatcmpl-{id}"), model) } else { v };
        let out = if plan.client == Protocol::AnthropicMessages {
            anthropic::response_from_openai(&openai, model, &plan.names).map_err(|e| AnswerError(e.0))?
        } else {
            openai
        };
        Ok(serde_json::to_vec(&out).unwrap_or_default())
    })())
}

/// An Anthropic answer for an OpenAI chat client: a `chat.completion`, or an error in
/// OpenAI's envelope whose `code` keeps Anthropic's error type (the status is kept).
fn from_anthropic(plan: &Plan, status: u16, body: &[u8]) -> Result<Vec<u8>, AnswerError> {
    if !(200..300).contains(&status) {
        return Ok(openai_to_anthropic::error_to_openai(status, body).to_string().into_bytes());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| AnswerError(format!("the upstream answer is not JSON: {e}")))?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let model = plan.model.as_deref().unwrap_or_default();
    let out = openai_to_anthropic::response_to_openai(&v, &plan.names, created, model).map_err(|e| AnswerError(e.0))?;
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_llm::anthropic::ToolNames;
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use serde_json::json;

    fn plan(conversion: Conversion, client: Protocol, target: Protocol) -> Plan {
        Plan {
            conversion,
            client,
            target,
            method: Method::POST,
            url: String::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stream: false,
            request_model: None,
            model: Some("m".into()),
            names: ToolNames::default(),
            embeddings_base64: false,
            include_usage: false,
        }
    }

    fn v(b: Vec<u8>) -> Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn conversions() {
        use Protocol::*;
        assert!(convert(&plan(Conversion::Native, OpenAiChat, OpenAiChat), 200, None, b"{}", "x").is_none());
        let chat = json!({"id": "c", "model": "gpt", "choices": [{"index": 0, "message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
        let a =
            v(convert(&plan(Conversion::AnthropicToOpenAi, AnthropicMessages, OpenAiChat), 200, None, chat.to_string().as_bytes(), "x")
                .unwrap()
                .unwrap());
        assert_eq!((a["type"].as_str(), a["content"][0]["text"].as_str()), (Some("message"), Some("2")));
        let converse = json!({"output": {"message": {"role": "assistant", "content": [{"text": "2"}]}}, "stopReason": "end_turn",
            "usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}});
        let o =
            v(convert(&plan(Conversion::OpenAiToConverse, OpenAiChat, BedrockConverse), 200, None, converse.to_string().as_bytes(), "x")
                .unwrap()
                .unwrap());
        assert_eq!((o["id"].as_str(), o["choices"][0]["message"]["content"].as_str()), (Some("chatcmpl-x"), Some("2")));
        let bad = convert(&plan(Conversion::AnthropicToOpenAi, AnthropicMessages, OpenAiChat), 200, None, b"<html>", "x").unwrap();
        assert!(bad.unwrap_err().0.contains("not JSON"));
        // Errors: the client's envelope, the provider's message kept.
        let e = v(convert(
            &plan(Conversion::AnthropicToOpenAi, AnthropicMessages, OpenAiChat),
            429,
            None,
            br#"{"error":{"message":"slow down","type":"requests"}}"#,
            "x",
        )
        .unwrap()
        .unwrap());
        assert_eq!(e, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}));
        let e = v(convert(
            &plan(Conversion::OpenAiToConverse, OpenAiChat, BedrockConverse),
            400,
            Some("ValidationException:http://internal"),
            br#"{"message":"bad model"}"#,
            "x",
        )
        .unwrap()
        .unwrap());
        assert_eq!((e["error"]["type"].as_str(), e["error"]["message"].as_str()), (Some("ValidationException"), Some("bad model")));
        let e = v(convert(
            &plan(Conversion::AnthropicToConverse, AnthropicMessages, BedrockConverse),
            429,
            Some("ThrottlingException"),
            b"{}",
            "x",
        )
        .unwrap()
        .unwrap());
        assert_eq!(e["error"]["type"], "rate_limit_error");
        assert!(e["error"]["message"].as_str().unwrap().starts_with("ThrottlingException: "));
    }

    #[test]
    fn vertex_predict_answers_become_openai_embeddings() {
        use Protocol::*;
        let p = plan(Conversion::EmbeddingsToVertexPredict, OpenAiEmbeddings, VertexPredict);
        let predict = json!({"predictions": [{"embeddings": {"values": [0.5], "statistics": {"token_count": 2}}}]});
        let o = v(convert(&p, 200, None, predict.to_string().as_bytes(), "x").unwrap().unwrap());
        assert_eq!(
            o,
            json!({"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
                   "usage": {"prompt_tokens": 2, "total_tokens": 2}})
        );
        let b64 = Plan { embeddings_base64: true, ..plan(Conversion::EmbeddingsToVertexPredict, OpenAiEmbeddings, VertexPredict) };
        let o = v(convert(&b64, 200, None, predict.to_string().as_bytes(), "x").unwrap().unwrap());
        assert_eq!(o["data"][0]["embedding"], "AAAAPw==");
        // Google's error shape becomes OpenAI's, status kept.
        let e = v(convert(&p, 400, None, br#"{"error":{"code":400,"message":"bad instance","status":"INVALID_ARGUMENT"}}"#, "x")
            .unwrap()
            .unwrap());
        assert_eq!(e["error"]["message"], "bad instance");
        assert!(convert(&p, 200, None, b"{}", "x").unwrap().is_err());
    }

    #[test]
    fn anthropic_answers_for_openai_clients() {
        use Protocol::*;
        let p = plan(Conversion::OpenAiToAnthropic, OpenAiChat, AnthropicMessages);
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "2"}, {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"x": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 2}});
        let o = v(convert(&p, 200, None, msg.to_string().as_bytes(), "x").unwrap().unwrap());
        assert_eq!(
            (o["object"].as_str(), o["model"].as_str(), o["id"].as_str()),
            (Some("chat.completion"), Some("claude-x"), Some("msg_1"))
        );
        assert!(o["created"].as_u64().unwrap() > 1_700_000_000);
        let c = &o["choices"][0];
        assert_eq!((c["message"]["content"].as_str(), c["finish_reason"].as_str()), (Some("2"), Some("tool_calls")));
        assert_eq!(c["message"]["tool_calls"][0]["function"], json!({"name": "calc", "arguments": "{\"x\":1}"}));
        assert_eq!(o["usage"]["prompt_tokens"], 17);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
        // The gateway's observer reads the same usage from the converted body.
        assert_eq!(
            aigw_llm::usage::observe_json(&serde_json::to_vec(&o).unwrap()).usage,
            aigw_llm::usage::observe_json(msg.to_string().as_bytes()).usage
        );
        // Errors: OpenAI's envelope, Anthropic's type as the code.
        let e = v(convert(&p, 529, None, br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#, "x")
            .unwrap()
            .unwrap());
        assert_eq!(e, json!({"error": {"message": "Overloaded", "type": "api_error", "param": null, "code": "overloaded_error"}}));
        let e = v(convert(&p, 429, None, b"slow down", "x").unwrap().unwrap());
        assert_eq!((e["error"]["type"].as_str(), e["error"]["message"].as_str()), (Some("rate_limit_error"), Some("slow down")));
        assert!(convert(&p, 200, None, b"<html>", "x").unwrap().unwrap_err().0.contains("not JSON"));
    }
}
