//! OpenAI Chat Completions ⇄ Bedrock Converse, so OpenAI clients (and, composed with
//! [`crate::anthropic`], Anthropic clients) can use Bedrock models.
//!
//! * [`request_to_converse`]: OpenAI chat request → Converse body (+ model, stream flag).
//! * [`response_to_openai`]: Converse response → OpenAI chat completion.
//! * [`StreamToOpenAi`]: ConverseStream event-stream messages → OpenAI chunk JSON strings.
//! * [`error_message`]: a Bedrock error body/header → (type, message).

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::anthropic::ConvertError;
use crate::eventstream::Message;

fn err(m: impl Into<String>) -> ConvertError {
    ConvertError(m.into())
}

/// The result of converting an OpenAI request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConverseRequest {
    pub body: Value,
    pub model: Option<String>,
    pub stream: bool,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

fn image_block(url: &str, path: &str) -> Result<Value, ConvertError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(err(format!("{path}: Bedrock takes images inline only; send a data: URL (base64)")));
    };
    let (meta, data) = rest.split_once(',').ok_or_else(|| err(format!("{path}: malformed data URL")))?;
    let mime = meta.strip_suffix(";base64").ok_or_else(|| err(format!("{path}: data URL must be base64")))?;
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => return Err(err(format!("{path}: image type {other:?} is not supported by Bedrock (png, jpeg, gif, webp)"))),
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn content_blocks(content: &Value, path: &str) -> Result<Vec<Value>, ConvertError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let pp = format!("{path}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = p.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(json!({"text": t}));
                        }
                    }
                    Some("image_url") => {
                        let url = p
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .ok_or_else(|| err(format!("{pp}.image_url.url: required")))?;
                        out.push(image_block(url, &pp)?);
                    }
                    Some(other) => return Err(err(format!("{pp}: content part type {other:?} is not supported on Bedrock"))),
                    None => return Err(err(format!("{pp}.type: required"))),
                }
            }
            Ok(out)
        }
        _ => Err(err(format!("{path}: must be a string or an array of parts"))),
    }
}

/// Converts an OpenAI chat request to a Converse body.
pub fn request_to_converse(req: &Value) -> Result<ConverseRequest, ConvertError> {
    let obj = req.as_object().ok_or_else(|| err("the request body must be a JSON object"))?;
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| err("messages: a non-empty array is required"))?;
    let mut system = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    let mut used_tools: Vec<String> = Vec::new();
    let mut push = |role: &str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        // Converse needs alternating roles: merge consecutive turns of one role.
        match messages.last_mut() {
            Some((r, b)) if r == role => b.extend(blocks),
            _ => messages.push((role.to_owned(), blocks)),
        }
    };
    for (i, m) in msgs.iter().enumerate() {
        let path = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.role: required")))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                let t = text_of(content);
                if !t.is_empty() {
                    system.push(json!({"text": t}));
                }
            }
            "user" => push("user", content_blocks(content, &format!("{path}.content"))?),
            "assistant" => {
                let mut blocks = content_blocks(content, &format!("{path}.content"))?;
                for (j, tc) in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    let id = tc.get("id").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.tool_calls[{j}].id: required")))?;
                    let name = tc
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err(format!("{path}.tool_calls[{j}].function.name: required")))?;
                    let args = tc.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input = serde_json::from_str::<Value>(args).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
                    used_tools.push(name.to_owned());
                    blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
                }
                push("assistant", blocks);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.tool_call_id: required")))?;
                let text = text_of(content);
                let result = if text.is_empty() { json!([{"text": "(no output)"}]) } else { json!([{"text": text}]) };
                push("user", vec![json!({"toolResult": {"toolUseId": id, "content": result}})]);
            }
            other => return Err(err(format!("{path}.role: {other:?} is not supported"))),
        }
    }
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        Value::Array(messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect()),
    );
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    if let Some(n) = obj.get("max_completion_tokens").or_else(|| obj.get("max_tokens")).filter(|v| v.is_u64()) {
        inference.insert("maxTokens".into(), n.clone());
    }
    if let Some(t) = obj.get("temperature").filter(|v| v.is_number()) {
        // Converse takes 0..1; OpenAI allows 0..2.
        inference.insert("temperature".into(), json!(t.as_f64().unwrap_or(1.0).clamp(0.0, 1.0)));
    }
    if let Some(t) = obj.get("top_p").filter(|v| v.is_number()) {
        inference.insert("topP".into(), t.clone());
    }
    match obj.get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    let mut tools = Vec::new();
    let mut defined = Vec::new();
    for (i, t) in obj.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let f = t.get("function").ok_or_else(|| err(format!("tools[{i}].function: required (only function tools)")))?;
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| err(format!("tools[{i}].function.name: required")))?;
        let mut spec = json!({"name": name, "inputSchema": {"json": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}))}});
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            spec["description"] = json!(d);
        }
        defined.push(name.to_owned());
        tools.push(json!({"toolSpec": spec}));
    }
    // Converse rejects tool history without a toolConfig: declare tools used only in history.
    for name in used_tools {
        if !defined.contains(&name) {
            tools.push(json!({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object", "properties": {}}}}}));
            defined.push(name);
        }
    }
    if !tools.is_empty() {
        let mut tc = json!({"tools": tools});
        match obj.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => tc["toolChoice"] = json!({"any": {}}),
            Some(Value::String(s)) if s == "auto" => tc["toolChoice"] = json!({"auto": {}}),
            Some(Value::Object(o)) => {
                if let Some(n) = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                    tc["toolChoice"] = json!({"tool": {"name": n}});
                }
            }
            _ => {}
        }
        body.insert("toolConfig".into(), tc);
    }
    Ok(ConverseRequest {
        body: Value::Object(body),
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        stream: obj.get("stream").and_then(Value::as_bool) == Some(true),
    })
}

pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse usage → OpenAI usage; prompt includes cache reads and writes.
pub fn usage_to_openai(u: Option<&Value>) -> Value {
    let n = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    let prompt = n("inputTokens") + read + write;
    let completion = n("outputTokens");
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": read, "cache_creation_input_tokens": write}})
}

/// Converts a Converse response to an OpenAI chat completion.
pub fn response_to_openai(resp: &Value, id: &str, model: &str) -> Value {
    let blocks = resp.pointer("/output/message/content").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for b in &blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(t) = b.pointer("/reasoningContent/reasoningText/text").and_then(Value::as_str) {
            reasoning.push_str(t);
        }
        if let Some(tu) = b.get("toolUse") {
            tool_calls.push(json!({"id": tu.get("toolUseId").cloned().unwrap_or(json!("tooluse")), "type": "function",
                "function": {"name": tu.get("name").cloned().unwrap_or(json!("")), "arguments": tu.get("input").cloned().unwrap_or(json!({})).to_string()}}));
        }
    }
    let mut message =
        json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let stop = resp.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
    json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
           "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stop)}],
           "usage": usage_to_openai(resp.get("usage"))})
}

/// Bedrock's error type (from `x-amzn-ErrorType` or the body's `__type`) and message.
pub fn error_message(error_type_header: Option<&str>, body: &[u8]) -> (String, String) {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    // Header: `ValidationException:http://internal…`; body `__type`: `com.amazon#ValidationException`.
    let kind = error_type_header
        .and_then(|h| h.split(':').next())
        .or_else(|| v.as_ref().and_then(|v| v.get("__type")).and_then(Value::as_str).and_then(|t| t.rsplit('#').next()))
        .filter(|k| !k.is_empty())
        .unwrap_or("BedrockError")
        .to_owned();
    let message = v
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned());
    (kind, message)
}

/// ConverseStream messages → OpenAI `chat.completion.chunk` JSON strings (and `[DONE]`).
#[derive(Debug)]
pub struct StreamToOpenAi {
    id: String,
    model: String,
    /// Converse contentBlockIndex → OpenAI tool-call index.
    tools: HashMap<u64, u64>,
    next_tool: u64,
    pub finished: bool,
    pub started: bool,
}

impl StreamToOpenAi {
    pub fn new(id: &str, model: &str) -> StreamToOpenAi {
        StreamToOpenAi { id: id.to_owned(), model: model.to_owned(), tools: HashMap::new(), next_tool: 0, finished: false, started: false }
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    pub fn push(&mut self, m: &Message, out: &mut Vec<String>) {
        if self.finished {
            return;
        }
        let payload: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        if m.message_type() != "event" {
            let msg = payload.get("message").and_then(Value::as_str).unwrap_or("Bedrock stream error");
            out.push(json!({"error": {"message": format!("{}: {msg}", m.kind()), "type": "api_error", "code": m.kind()}}).to_string());
            self.finished = true;
            return;
        }
        match m.kind() {
            "messageStart" => {
                self.started = true;
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            "contentBlockStart" => {
                if let Some(tu) = payload.pointer("/start/toolUse") {
                    let block = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
                    let k = self.next_tool;
                    self.next_tool += 1;
                    self.tools.insert(block, k);
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": k, "id": tu.get("toolUseId"), "type": "function", "function": {"name": tu.get("name"), "arguments": ""}}]}),
                        Value::Null,
                    ));
                }
            }
            "contentBlockDelta" => {
                let block = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
                let delta = payload.get("delta").cloned().unwrap_or(Value::Null);
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    out.push(self.chunk(json!({"content": t}), Value::Null));
                }
                if let Some(a) = delta.pointer("/toolUse/input").and_then(Value::as_str)
                    && let Some(k) = self.tools.get(&block)
                {
                    out.push(self.chunk(json!({"tool_calls": [{"index": k, "function": {"arguments": a}}]}), Value::Null));
                }
                if let Some(t) = delta.pointer("/reasoningContent/text").and_then(Value::as_str) {
                    out.push(self.chunk(json!({"reasoning_content": t}), Value::Null));
                }
            }
            "messageStop" => {
                let stop = payload.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                out.push(self.chunk(json!({}), json!(finish_reason(stop))));
            }
            "metadata" => {
                out.push(
                    json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model, "choices": [],
                           "usage": usage_to_openai(payload.get("usage"))})
                    .to_string(),
                );
                out.push("[DONE]".to_owned());
                self.finished = true;
            }
            _ => {}
        }
    }

    /// At the end of the upstream stream without its `metadata` event.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.finished {
            out.push(json!({"error": {"message": "the Bedrock stream ended before its metadata event", "type": "api_error", "code": "upstream_stream_truncated"}}).to_string());
            self.finished = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{Decoder, event, exception};

    #[test]
    fn openai_request_becomes_converse() {
        let req = json!({
            "model": "anthropic.claude-3-5-sonnet-20240620-v1:0", "stream": true, "max_tokens": 256, "temperature": 1.5, "top_p": 0.9, "stop": "END",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                                                                     {"id": "tooluse_2", "type": "function", "function": {"name": "history_only", "arguments": "oops"}}]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "3°C"},
                {"role": "tool", "tool_call_id": "tooluse_2", "content": ""},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required"
        });
        let c = request_to_converse(&req).unwrap();
        assert_eq!(c.model.as_deref(), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"));
        assert!(c.stream);
        assert_eq!(
            c.body,
            json!({
                "system": [{"text": "Be terse."}, {"text": "Use tools."}],
                "messages": [
                    {"role": "user", "content": [{"text": "Weather in Oslo?"}, {"image": {"format": "png", "source": {"bytes": "iVBOR"}}}]},
                    {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}},
                                                      {"toolUse": {"toolUseId": "tooluse_2", "name": "history_only", "input": {}}}]},
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "3°C"}]}},
                                                 {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "(no output)"}]}},
                                                 {"text": "Thanks"}]}
                ],
                "inferenceConfig": {"maxTokens": 256, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]},
                "toolConfig": {"tools": [
                    {"toolSpec": {"name": "get_weather", "description": "Weather", "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}},
                    {"toolSpec": {"name": "history_only", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                ], "toolChoice": {"any": {}}}
            })
        );
    }

    #[test]
    fn request_errors() {
        for (req, needle) in [
            (json!({}), "messages"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]}),
                "inline",
            ),
            (json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}), "not supported"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "tool_call_id"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "wizard"),
        ] {
            let e = request_to_converse(&req).unwrap_err();
            assert!(e.0.contains(needle), "{req}: {e}");
        }
    }

    #[test]
    fn converse_response_becomes_openai() {
        let resp = json!({"output": {"message": {"role": "assistant", "content": [{"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
            {"text": "Checking."}, {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "cacheReadInputTokens": 4}, "metrics": {"latencyMs": 1}});
        let o = response_to_openai(&resp, "chatcmpl-1", "m");
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(o["choices"][0]["message"]["content"], "Checking.");
        assert_eq!(o["choices"][0]["message"]["reasoning_content"], "hmm");
        assert_eq!(o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Oslo\"}");
        assert_eq!(o["usage"]["prompt_tokens"], 14);
        assert_eq!(o["usage"]["total_tokens"], 19);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        for (stop, fin) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("content_filtered", "content_filter"),
            ("guardrail_intervened", "content_filter"),
        ] {
            assert_eq!(finish_reason(stop), fin);
        }
    }

    #[test]
    fn stream_events_become_openai_chunks() {
        let mut bytes = event("messageStart", &json!({"role": "assistant"}));
        bytes.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}})));
        bytes.extend(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
        bytes.extend(event(
            "contentBlockStart",
            &json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
        ));
        bytes.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}})));
        bytes.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Oslo\"}"}}})));
        bytes.extend(event("messageStop", &json!({"stopReason": "tool_use"})));
        bytes.extend(event(
            "metadata",
            &json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}, "metrics": {"latencyMs": 9}}),
        ));
        let mut msgs = Vec::new();
        Decoder::new().push(&bytes, &mut msgs).unwrap();
        let mut c = StreamToOpenAi::new("chatcmpl-b", "m");
        let mut out = Vec::new();
        msgs.iter().for_each(|m| c.push(m, &mut out));
        assert!(c.finished);
        assert_eq!(out.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = out[..out.len() - 1].iter().map(|s| serde_json::from_str(s).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Checking.");
        assert_eq!(chunks[2]["choices"][0]["delta"]["tool_calls"][0]["id"], "tooluse_1");
        let args: String =
            chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments").and_then(Value::as_str)).collect();
        assert_eq!(args, "{\"city\":\"Oslo\"}");
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["usage"]["total_tokens"], 15);
        // Exceptions become an error chunk; a cut stream is reported.
        let mut c = StreamToOpenAi::new("x", "m");
        let mut out = Vec::new();
        let mut m = Vec::new();
        Decoder::new().push(&exception("throttlingException", "Too many requests"), &mut m).unwrap();
        c.push(&m[0], &mut out);
        assert!(out[0].contains("throttlingException: Too many requests"));
        let mut c = StreamToOpenAi::new("x", "m");
        let mut out = Vec::new();
        c.finish(&mut out);
        assert!(out[0].contains("before its metadata"));
    }

    #[test]
    fn error_types() {
        assert_eq!(
            error_message(Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"), br#"{"message":"bad"}"#),
            ("ValidationException".into(), "bad".into())
        );
        assert_eq!(
            error_message(None, br#"{"__type":"com.amazon#ThrottlingException","message":"slow"}"#),
            ("ThrottlingException".into(), "slow".into())
        );
    }
}
