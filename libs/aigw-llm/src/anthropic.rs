//! Anthropic Messages ⇄ OpenAI Chat Completions, so Anthropic clients (Claude Code, the
//! Anthropic SDKs) can use any OpenAI-protocol backend.
//!
//! * [`request_to_openai`]: an Anthropic request becomes an OpenAI chat request.
//! * [`response_from_openai`]: an OpenAI chat completion becomes an Anthropic message.
//! * [`StreamConverter`]: OpenAI SSE chunks become the Anthropic SSE event sequence.
//! * [`error_from_openai`]: any upstream error body becomes Anthropic's error envelope
//!   (built by [`crate::envelope`], which owns the status → type table).
//!
//! Tool names the backend would reject (outside `[a-zA-Z0-9_-]` or over 64 bytes) are
//! sanitised reversibly (`<55 chars>_<8 hex of sha256>`, LiteLLM-compatible); the
//! [`ToolNames`] map restores them in responses.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::envelope::{self, Envelope};

/// A request the converter cannot represent: a 400 `invalid_request_error` for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError(pub String);

impl std::error::Error for ConvertError {}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(m: impl Into<String>) -> ConvertError {
    ConvertError(m.into())
}

/// sanitised name → original name, for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames(HashMap<String, String>);

impl ToolNames {
    pub fn sanitize(&mut self, name: &str) -> String {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.len() <= 64 && !name.is_empty() && name.chars().all(ok) {
            return name.to_owned();
        }
        let cleaned: String = name.chars().map(|c| if ok(c) { c } else { '_' }).take(55).collect();
        let digest = hex::encode(Sha256::digest(name.as_bytes()));
        let out = format!("{cleaned}_{}", &digest[..8]);
        self.0.insert(out.clone(), name.to_owned());
        out
    }

    pub fn restore<'a>(&'a self, name: &'a str) -> &'a str {
        self.0.get(name).map(String::as_str).unwrap_or(name)
    }
}

/// Converts an Anthropic Messages request to an OpenAI chat request. `max_tokens_field`
/// is where the provider wants the output cap (`max_completion_tokens` or `max_tokens`).
pub fn request_to_openai(req: &Value, max_tokens_field: &str, names: &mut ToolNames) -> Result<Value, ConvertError> {
    let obj = req.as_object().ok_or_else(|| err("the request body must be a JSON object"))?;
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(err("messages: at least one message is required")),
        Some(_) => return Err(err("messages: must be an array")),
        None => return Err(err("messages: Field required")),
    };
    let mut out = Map::new();
    if let Some(m) = obj.get("model") {
        out.insert("model".into(), m.clone());
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(system) = system_text(obj.get("system"))? {
        messages.push(json!({"role": "system", "content": system}));
    }
    for (i, m) in msgs.iter().enumerate() {
        convert_message(m, i, names, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(s) = obj.get("stream").and_then(Value::as_bool) {
        out.insert("stream".into(), Value::Bool(s));
    }
    if let Some(n) = obj.get("max_tokens") {
        if !n.is_u64() {
            return Err(err("max_tokens: must be a positive integer"));
        }
        out.insert(max_tokens_field.into(), n.clone());
    }
    for k in ["temperature", "top_p"] {
        if let Some(v) = obj.get(k).filter(|v| v.is_number()) {
            out.insert(k.into(), v.clone());
        }
    }
    match obj.get("stop_sequences") {
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop".into(), Value::Array(a.clone()));
        }
        Some(Value::Array(_)) | None | Some(Value::Null) => {}
        Some(_) => return Err(err("stop_sequences: must be an array of strings")),
    }
    if let Some(u) = obj.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), Value::String(u.to_owned()));
    }
    if obj.get("service_tier").and_then(Value::as_str) == Some("auto") {
        out.insert("service_tier".into(), json!("auto"));
    }
    if let Some(effort) = reasoning_effort(obj) {
        out.insert("reasoning_effort".into(), Value::String(effort));
    }
    if let Some(rf) = response_format(obj) {
        out.insert("response_format".into(), rf);
    }
    // Tools: custom tools only (server tools such as web_search have no OpenAI form).
    let mut tools = Vec::new();
    if let Some(ts) = obj.get("tools") {
        let ts = ts.as_array().ok_or_else(|| err("tools: must be an array"))?;
        for (i, t) in ts.iter().enumerate() {
            let kind = t.get("type").and_then(Value::as_str);
            if kind.is_some_and(|k| k != "custom") {
                continue;
            }
            let Some(name) = t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
                return Err(err(format!("tools.{i}.name: Field required")));
            };
            let mut f = Map::new();
            f.insert("name".into(), Value::String(names.sanitize(name)));
            if let Some(d) = t.get("description").and_then(Value::as_str) {
                f.insert("description".into(), Value::String(d.to_owned()));
            }
            let schema =
                t.get("input_schema").filter(|s| s.is_object()).cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            f.insert("parameters".into(), schema);
            tools.push(json!({"type": "function", "function": Value::Object(f)}));
        }
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
            let kind = tc.get("type").and_then(Value::as_str).ok_or_else(|| err("tool_choice.type: Field required"))?;
            let choice = match kind {
                "auto" => json!("auto"),
                "any" => json!("required"),
                "none" => json!("none"),
                "tool" => {
                    let n = tc.get("name").and_then(Value::as_str).ok_or_else(|| err("tool_choice.name: Field required"))?;
                    json!({"type": "function", "function": {"name": names.sanitize(n)}})
                }
                other => return Err(err(format!("tool_choice.type: unknown value {other:?}"))),
            };
            out.insert("tool_choice".into(), choice);
            if tc.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    Ok(Value::Object(out))
}

fn system_text(system: Option<&Value>) -> Result<Option<String>, ConvertError> {
    match system {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (i, b) in blocks.iter().enumerate() {
                let text = b.get("text").and_then(Value::as_str).ok_or_else(|| err(format!("system.{i}: text blocks only")))?;
                // Claude Code's billing marker means nothing to another backend.
                if text.starts_with("x-anthropic-billing-header:") {
                    continue;
                }
                parts.push(text);
            }
            Ok((!parts.is_empty()).then(|| parts.join("\n")))
        }
        Some(_) => Err(err("system: must be a string or an array of text blocks")),
    }
}

fn reasoning_effort(obj: &Map<String, Value>) -> Option<String> {
    let t = obj.get("thinking")?;
    match t.get("type").and_then(Value::as_str)? {
        "enabled" => {
            let b = t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0);
            Some(
                match b {
                    4096.. => "high",
                    2048.. => "medium",
                    1024.. => "low",
                    _ => "minimal",
                }
                .to_owned(),
            )
        }
        "adaptive" => Some(
            obj.get("output_config")
                .and_then(|o| o.get("effort"))
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .unwrap_or("medium")
                .to_owned(),
        ),
        _ => None,
    }
}

fn response_format(obj: &Map<String, Value>) -> Option<Value> {
    let f = obj.get("output_format").or_else(|| obj.get("output_config").and_then(|o| o.get("format")))?;
    if f.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let mut schema = f.get("schema").filter(|s| s.as_object().is_some_and(|o| !o.is_empty()))?.clone();
    strict_schema(&mut schema);
    Some(json!({"type": "json_schema", "json_schema": {"name": "structured_output", "schema": schema, "strict": true}}))
}

/// OpenAI strict mode: every object lists all its properties as required and allows no others.
fn strict_schema(s: &mut Value) {
    let Some(o) = s.as_object_mut() else { return };
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        let mut keys: Vec<String> = props.keys().cloned().collect();
        keys.sort();
        props.values_mut().for_each(strict_schema);
        o.insert("required".into(), json!(keys));
        o.insert("additionalProperties".into(), json!(false));
    }
    if let Some(items) = o.get_mut("items") {
        strict_schema(items);
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(a)) = o.get_mut(k) {
            a.iter_mut().for_each(strict_schema);
        }
    }
    for k in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = o.get_mut(k) {
            d.values_mut().for_each(strict_schema);
        }
    }
}

fn data_url(src: &Value, default_mime: &str) -> Option<String> {
    let data = src.get("data").and_then(Value::as_str)?;
    let mime = src.get("media_type").and_then(Value::as_str).unwrap_or(default_mime);
    Some(format!("data:{mime};base64,{data}"))
}

/// One content block → an OpenAI user/assistant part (None: dropped).
fn part_of(b: &Value, path: &str) -> Result<Option<Value>, ConvertError> {
    let kind = b.get("type").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.type: Field required")))?;
    Ok(match kind {
        "text" => {
            let t = b.get("text").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.text: must be a string")))?;
            Some(json!({"type": "text", "text": t}))
        }
        "image" => {
            let src = b.get("source").filter(|s| s.is_object()).ok_or_else(|| err(format!("{path}.source: must be an object")))?;
            let url = match src.get("type").and_then(Value::as_str) {
                Some("base64") => data_url(src, "image/png").ok_or_else(|| err(format!("{path}.source.data: Field required")))?,
                Some("url") => src
                    .get("url")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| err(format!("{path}.source.url: Field required")))?
                    .to_owned(),
                _ => return Err(err(format!("{path}.source.type: expected base64 or url"))),
            };
            Some(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        "document" => {
            let src = b.get("source").filter(|s| s.is_object()).ok_or_else(|| err(format!("{path}.source: must be an object")))?;
            match src.get("type").and_then(Value::as_str) {
                Some("base64") => {
                    let url = data_url(src, "application/pdf").ok_or_else(|| err(format!("{path}.source.data: Field required")))?;
                    let name = b.get("title").and_then(Value::as_str).unwrap_or("document.pdf");
                    Some(json!({"type": "file", "file": {"file_data": url, "filename": name}}))
                }
                Some("text") => src.get("data").and_then(Value::as_str).map(|t| json!({"type": "text", "text": t})),
                Some("url") => src.get("url").and_then(Value::as_str).map(|u| json!({"type": "text", "text": format!("Document: {u}")})),
                _ => None,
            }
        }
        // Thinking is carried separately (reasoning_content); other block types have no OpenAI form.
        _ => None,
    })
}

fn tool_result_text(content: Option<&Value>, path: &str, images: &mut Vec<Value>) -> Result<String, ConvertError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match part_of(b, &format!("{path}.content.{j}"))? {
                    Some(p) if p["type"] == "text" => text.push(p["text"].as_str().unwrap_or_default().to_owned()),
                    Some(p) => images.push(p),
                    None => {}
                }
            }
            Ok(text.join("\n"))
        }
        Some(_) => Err(err(format!("{path}.content: must be a string or an array of blocks"))),
    }
}

fn convert_message(m: &Value, i: usize, names: &mut ToolNames, out: &mut Vec<Value>) -> Result<(), ConvertError> {
    let path = format!("messages.{i}");
    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.role: Field required")))?;
    if role != "user" && role != "assistant" {
        return Err(err(format!("{path}.role: must be \"user\" or \"assistant\", got {role:?}")));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err(format!("{path}.content: must be a string or an array of blocks"))),
        None => return Err(err(format!("{path}.content: Field required"))),
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut tool_calls = Vec::new();
    let mut tool_msgs = Vec::new();
    let mut result_images = Vec::new();
    let mut thinking = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{path}.content.{j}");
        if !b.is_object() {
            return Err(err(format!("{bp}: must be an object")));
        }
        match b.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let id = b.get("id").and_then(Value::as_str).ok_or_else(|| err(format!("{bp}.id: Field required")))?;
                let name = b.get("name").and_then(Value::as_str).ok_or_else(|| err(format!("{bp}.name: Field required")))?;
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(
                    json!({"id": id, "type": "function", "function": {"name": names.sanitize(name), "arguments": input.to_string()}}),
                );
            }
            Some("tool_result") => {
                let id = b.get("tool_use_id").and_then(Value::as_str).ok_or_else(|| err(format!("{bp}.tool_use_id: Field required")))?;
                let mut text = tool_result_text(b.get("content"), &bp, &mut result_images)?;
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                tool_msgs.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            Some("thinking") => {
                if let Some(t) = b.get("thinking").and_then(Value::as_str) {
                    thinking.push(t.to_owned());
                }
            }
            Some("redacted_thinking") => {}
            _ => {
                if let Some(p) = part_of(b, &bp)? {
                    parts.push(p);
                }
            }
        }
    }
    // Tool results answer the previous assistant turn, so they come first.
    let had_results = !tool_msgs.is_empty();
    out.extend(tool_msgs);
    // Images returned by tools go to the model right after the results, before new text.
    let parts: Vec<Value> = result_images.into_iter().chain(parts).collect();
    if role == "assistant" {
        let text: String = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("");
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) }});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        if !thinking.is_empty() {
            // DeepSeek requires reasoning to be sent back on tool-call turns.
            msg["reasoning_content"] = Value::String(thinking.join(""));
        }
        out.push(msg);
    } else if !parts.is_empty() || !had_results {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn finish_to_stop(f: &str) -> &'static str {
    match f {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage → Anthropic usage (input excludes cached tokens, as Anthropic counts).
fn usage_from_openai(u: Option<&Value>) -> Value {
    let n = |p: &str| u.and_then(|u| u.pointer(p)).and_then(Value::as_u64).unwrap_or(0);
    let prompt = n("/prompt_tokens");
    let cached = n("/prompt_tokens_details/cached_tokens").max(n("/prompt_cache_hit_tokens"));
    let creation = n("/prompt_tokens_details/cache_creation_input_tokens");
    json!({"input_tokens": prompt.saturating_sub(cached + creation), "output_tokens": n("/completion_tokens"),
           "cache_read_input_tokens": cached, "cache_creation_input_tokens": creation})
}

/// Converts a non-streamed OpenAI chat completion to an Anthropic message.
pub fn response_from_openai(resp: &Value, fallback_model: &str, names: &ToolNames) -> Result<Value, ConvertError> {
    let choice = resp.get("choices").and_then(|c| c.get(0)).ok_or_else(|| err("the upstream response has no choices"))?;
    let msg = choice.get("message").cloned().unwrap_or_else(|| json!({}));
    let mut content = Vec::new();
    if let Some(t) = msg.get("reasoning_content").or_else(|| msg.get("reasoning")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": t, "signature": ""}));
    }
    if let Some(t) = msg.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for tc in msg.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let name = tc.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
        let args = tc.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
        let input = serde_json::from_str::<Value>(args).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
        let id = tc.get("id").and_then(Value::as_str).unwrap_or("toolu_unknown");
        content.push(json!({"type": "tool_use", "id": id, "name": names.restore(name), "input": input}));
    }
    if content.is_empty() {
        content.push(json!({"type": "text", "text": ""}));
    }
    let finish = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("stop");
    let has_tools = content.iter().any(|b| b["type"] == "tool_use");
    let stop = if has_tools && finish == "stop" { "tool_use" } else { finish_to_stop(finish) };
    Ok(json!({
        "id": resp.get("id").and_then(Value::as_str).unwrap_or("msg_aigw"),
        "type": "message",
        "role": "assistant",
        "model": resp.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(fallback_model),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage_from_openai(resp.get("usage")),
    }))
}

/// Any upstream error body (OpenAI-shaped, or not JSON at all) → Anthropic's envelope.
pub fn error_from_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let message = envelope::message_of(status, body);
    envelope::json(Envelope::Anthropic, &envelope::Error { status, kind: None, code: "upstream_error", message: &message, class: None })
}

/// Encodes one Anthropic SSE event.
pub fn sse_event(kind: &str, data: &Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool,
}

/// OpenAI SSE chunks → the Anthropic event sequence. Feed it each upstream event's
/// data; it appends encoded Anthropic events to `out`.
#[derive(Debug)]
pub struct StreamConverter {
    names: ToolNames,
    fallback_model: String,
    started: bool,
    finished: bool,
    next_index: u64,
    open: Option<(Block, u64)>,
    /// OpenAI tool-call index → Anthropic block index.
    tools: HashMap<u64, u64>,
    stop_reason: Option<&'static str>,
    saw_tool: bool,
    usage: Option<Value>,
}

impl StreamConverter {
    pub fn new(names: ToolNames, fallback_model: &str) -> StreamConverter {
        StreamConverter {
            names,
            fallback_model: fallback_model.to_owned(),
            started: false,
            finished: false,
            next_index: 0,
            open: None,
            tools: HashMap::new(),
            stop_reason: None,
            saw_tool: false,
            usage: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk.get("id").and_then(Value::as_str).unwrap_or("msg_aigw");
        let model = chunk.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(&self.fallback_model);
        out.push_str(&sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ));
    }

    fn close(&mut self, out: &mut String) {
        if let Some((_, idx)) = self.open.take() {
            out.push_str(&sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": idx})));
        }
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut String) -> u64 {
        if let Some((k, idx)) = self.open
            && k == kind
            && kind != Block::Tool
        {
            return idx;
        }
        self.close(out);
        let idx = self.next_index;
        self.next_index += 1;
        out.push_str(&sse_event("content_block_start", &json!({"type": "content_block_start", "index": idx, "content_block": block})));
        self.open = Some((kind, idx));
        idx
    }

    fn delta(idx: u64, delta: Value, out: &mut String) {
        out.push_str(&sse_event("content_block_delta", &json!({"type": "content_block_delta", "index": idx, "delta": delta})));
    }

    fn end(&mut self, out: &mut String) {
        if self.finished {
            return;
        }
        self.close(out);
        let stop = self.stop_reason.unwrap_or(if self.saw_tool { "tool_use" } else { "end_turn" });
        let usage = usage_from_openai(self.usage.as_ref());
        out.push_str(&sse_event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
        ));
        out.push_str(&sse_event("message_stop", &json!({"type": "message_stop"})));
        self.finished = true;
    }

    /// Emits an Anthropic `error` event and ends the stream.
    pub fn fail(&mut self, status: u16, message: &str, out: &mut String) {
        if self.finished {
            return;
        }
        out.push_str(&sse_event(
            "error",
            &json!({"type": "error", "error": {"type": envelope::anthropic_type(status), "message": message}}),
        ));
        self.finished = true;
    }

    /// One upstream SSE event's data (a chunk JSON or `[DONE]`).
    pub fn push(&mut self, data: &str, out: &mut String) {
        if self.finished {
            return;
        }
        let data = data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            if self.started {
                self.end(out);
            }
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        if let Some(e) = chunk.get("error").filter(|e| !e.is_null()) {
            let msg = e.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| e.to_string());
            self.fail(500, &msg, out);
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
            if let Some(t) =
                delta.get("reasoning_content").or_else(|| delta.get("reasoning")).and_then(Value::as_str).filter(|t| !t.is_empty())
            {
                let idx = self.open_block(Block::Thinking, json!({"type": "thinking", "thinking": ""}), out);
                Self::delta(idx, json!({"type": "thinking_delta", "thinking": t}), out);
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                let idx = self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
                Self::delta(idx, json!({"type": "text_delta", "text": t}), out);
            }
            for tc in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                let oi = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let idx = match self.tools.get(&oi) {
                    Some(i) => *i,
                    None => {
                        let id = tc.get("id").and_then(Value::as_str).unwrap_or("toolu_aigw").to_owned();
                        let name = tc.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                        let name = self.names.restore(name).to_owned();
                        let i = self.open_block(Block::Tool, json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
                        self.tools.insert(oi, i);
                        self.saw_tool = true;
                        i
                    }
                };
                if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str).filter(|a| !a.is_empty()) {
                    Self::delta(idx, json!({"type": "input_json_delta", "partial_json": a}), out);
                }
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str).map(str::trim).filter(|f| !f.is_empty() && *f != "null") {
                self.close(out);
                self.stop_reason = Some(finish_to_stop(f));
            }
        }
        // The usage chunk follows finish_reason: once both are in, the message ends.
        if self.stop_reason.is_some() && self.usage.is_some() {
            self.end(out);
        }
    }

    /// At the end of the upstream stream. A stream that ended properly (`[DONE]`, or its
    /// finish and usage chunks) is already finished; one that stopped before its end
    /// marker gets an `error` event, never a clean `message_stop` the client would trust.
    pub fn finish(&mut self, out: &mut String) {
        if self.finished {
            return;
        }
        if self.started {
            self.fail(502, "upstream stream ended before its end marker", out);
        } else {
            self.fail(502, "the upstream stream ended without producing any output", out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden files: `testdata/anthropic/<case>.in.json` → `<case>.out.{json,sse}`.
    /// `UPDATE_GOLDEN=1 cargo test -p aigw-llm` rewrites the outputs (review the diff).
    #[test]
    fn golden_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/anthropic");
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut stems: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".in.json").map(str::to_owned))
            .collect();
        stems.sort();
        assert!(stems.len() >= 13, "{stems:?}");
        for stem in stems {
            let mut raw = std::fs::read_to_string(dir.join(format!("{stem}.in.json"))).unwrap();
            let pre: Value = serde_json::from_str(&raw).unwrap();
            let mut names = ToolNames::default();
            // Responses carry sanitised names: `<cleaned>_SANITISED` stands for the real one.
            for t in pre["tool_names"].as_array().into_iter().flatten() {
                let t = t.as_str().unwrap();
                let cleaned: String = t.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
                raw = raw.replace(&format!("{cleaned}_SANITISED"), &names.sanitize(t));
            }
            let input: Value = serde_json::from_str(&raw).unwrap();
            let fallback = input["fallback_model"].as_str().unwrap_or("m");
            let (out, ext) = if stem.starts_with("req_") {
                let v = request_to_openai(&input["request"], input["max_tokens_field"].as_str().unwrap(), &mut names).unwrap();
                (serde_json::to_string_pretty(&v).unwrap() + "\n", "json")
            } else if stem.starts_with("resp_") {
                let v = response_from_openai(&input["response"], fallback, &names).unwrap();
                (serde_json::to_string_pretty(&v).unwrap() + "\n", "json")
            } else {
                let mut c = StreamConverter::new(names.clone(), fallback);
                let mut text = String::new();
                for ev in input["events"].as_array().unwrap() {
                    c.push(ev.as_str().unwrap(), &mut text);
                }
                c.finish(&mut text);
                (text, "sse")
            };
            let path = dir.join(format!("{stem}.out.{ext}"));
            if update {
                std::fs::write(&path, &out).unwrap();
            } else {
                let want =
                    std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", path.display()));
                assert_eq!(out, want, "{stem} differs from its golden file (UPDATE_GOLDEN=1 to accept)");
            }
        }
    }

    /// Deterministic mutation fuzzing of both converters over the golden inputs: any JSON
    /// node may become any other JSON value; nothing may panic, every output is valid JSON
    /// or SSE. (cargo-fuzz targets in `fuzz/` explore further.)
    #[test]
    fn mutated_inputs_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/anthropic");
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let replacements = [
            json!(null),
            json!(true),
            json!(-1),
            json!(1.5),
            json!(""),
            json!("x"),
            json!([]),
            json!({}),
            json!([{}]),
            json!({"type": "text"}),
        ];
        fn nodes(v: &Value, out: &mut Vec<String>, path: String) {
            out.push(path.clone());
            match v {
                Value::Object(o) => {
                    o.iter().for_each(|(k, c)| nodes(c, out, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"))))
                }
                Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| nodes(c, out, format!("{path}/{i}"))),
                _ => {}
            }
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".in.json") {
                continue;
            }
            let base: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let key = if name.starts_with("req_") {
                "request"
            } else if name.starts_with("resp_") {
                "response"
            } else {
                "events"
            };
            let mut ptrs = Vec::new();
            nodes(&base[key], &mut ptrs, String::new());
            for _ in 0..400 {
                let mut v = base[key].clone();
                for _ in 0..=rnd(3) {
                    let p = &ptrs[rnd(ptrs.len())];
                    if let Some(slot) = v.pointer_mut(p) {
                        *slot = replacements[rnd(replacements.len())].clone();
                    }
                }
                let mut names = ToolNames::default();
                match key {
                    "request" => {
                        if let Ok(out) = request_to_openai(&v, "max_tokens", &mut names) {
                            assert!(out["messages"].is_array());
                        }
                    }
                    "response" => {
                        let _ = response_from_openai(&v, "m", &names);
                    }
                    _ => {
                        let mut c = StreamConverter::new(names, "m");
                        let mut out = String::new();
                        for ev in v.as_array().into_iter().flatten() {
                            let text = ev.as_str().map(str::to_owned).unwrap_or_else(|| ev.to_string());
                            c.push(&text, &mut out);
                        }
                        c.finish(&mut out);
                        for block in out.split("\n\n").filter(|b| !b.is_empty()) {
                            let data = block.lines().find_map(|l| l.strip_prefix("data: ")).expect("every event has data");
                            serde_json::from_str::<Value>(data).expect("event data is JSON");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_stop_reason_maps() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("other", "end_turn"),
        ] {
            let r = json!({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]});
            assert_eq!(response_from_openai(&r, "m", &ToolNames::default()).unwrap()["stop_reason"], stop, "{finish}");
            let mut c = StreamConverter::new(ToolNames::default(), "m");
            let mut out = String::new();
            c.push(&json!({"choices": [{"delta": {"content": "x"}, "finish_reason": finish}]}).to_string(), &mut out);
            c.push("[DONE]", &mut out);
            assert!(out.contains(&format!("\"stop_reason\":\"{stop}\"")), "{finish}: {out}");
        }
    }

    #[test]
    fn tool_names_are_sanitised_reversibly() {
        let mut n = ToolNames::default();
        assert_eq!(n.sanitize("get_weather"), "get_weather");
        let long = "a".repeat(70);
        let s = n.sanitize(&long);
        assert_eq!(s, format!("{}_6bd5e503", "a".repeat(55)), "LiteLLM/APISIX-compatible");
        assert_eq!(n.restore(&s), long);
        let odd = n.sanitize("mcp__server.tool/name");
        assert!(odd.starts_with("mcp__server_tool_name_") && odd.len() == "mcp__server_tool_name".len() + 9, "{odd}");
        assert_eq!(n.restore(&odd), "mcp__server.tool/name");
        assert_eq!(n.restore("unknown"), "unknown");
    }

    #[test]
    fn bad_requests_are_400s_not_panics() {
        let mut n = ToolNames::default();
        for (body, needle) in [
            (json!({}), "messages: Field required"),
            (json!({"messages": "hello"}), "messages: must be an array"),
            (json!({"messages": []}), "at least one"),
            (json!({"messages": [1]}), "messages.0.role"),
            (json!({"messages": [{"role": "system", "content": "x"}]}), "messages.0.role"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "messages.0.content"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": true}]}]}), "messages.0.content.0.source"),
            (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]}), "source.type"),
            (json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}), "tool_use_id"),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}), "max_tokens"),
            (json!({"messages": [{"role": "user", "content": "x"}], "system": 5}), "system"),
            (json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"input_schema": {}}]}), "tools.0.name"),
            (json!([1]), "JSON object"),
        ] {
            let e = request_to_openai(&body, "max_tokens", &mut n).unwrap_err();
            assert!(e.0.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn errors_convert_keeping_the_message() {
        let v = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
        let e = v(error_from_openai(429, br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#));
        assert_eq!(e, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}));
        let e = v(error_from_openai(502, b"<html>bad gateway</html>"));
        assert_eq!(e["error"]["type"], "api_error");
        assert_eq!(e["error"]["message"], "<html>bad gateway</html>");
        assert_eq!(v(error_from_openai(503, b""))["error"]["message"], "upstream returned status 503");
    }
}
