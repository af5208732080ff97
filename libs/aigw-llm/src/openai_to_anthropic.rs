//! OpenAI Chat Completions → Anthropic Messages, so OpenAI clients (the `openai` SDKs,
//! LangChain, …) can use `provider: anthropic` natively (CONTRACT §9), and a chat request
//! can fall back from an OpenAI-protocol instance to a Claude one. The mirror image of
//! [`crate::anthropic`].
//!
//! * [`request_to_anthropic`]: an OpenAI chat request becomes a Messages request.
//! * [`response_to_openai`]: an Anthropic message becomes a `chat.completion`.
//! * [`StreamToOpenAi`]: Anthropic SSE events become `chat.completion.chunk` JSON strings
//!   (the [`crate::stream`] pipe's common currency), ending with `[DONE]`.
//! * [`error_to_openai`]: an Anthropic error body becomes OpenAI's error envelope.
//!
//! Mapping choices (dropped and clamped fields, tool-argument rules) are listed in
//! `docs/multi.md`; the short version is in each function's comment.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::anthropic::{ConvertError, ToolNames};

fn err(m: impl Into<String>) -> ConvertError {
    ConvertError(m.into())
}

/// The `anthropic-version` header to send with a converted request (the value the
/// Anthropic SDKs hard-code).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Whether an OpenAI chat request to `provider: anthropic` is converted to the Messages
/// API: yes, unless `override.endpoint` has a path ending in `/chat/completions`, which is
/// then an OpenAI-compatible endpoint used as given (CONTRACT §9).
pub fn converts_for_endpoint(endpoint: Option<&str>) -> bool {
    let Some(ep) = endpoint else { return true };
    let no_query = ep.split(['?', '#']).next().unwrap_or_default();
    let path = no_query.split_once("://").map_or(no_query, |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    !path.trim_end_matches('/').ends_with("/chat/completions")
}

/// What [`request_to_anthropic`] produced: the body and what the response side needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AnthropicRequest {
    /// The Messages body (without `anthropic-version`, which is a header).
    pub body: Value,
    /// Sanitised tool name → the client's name (identity for ordinary names).
    pub names: ToolNames,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage` (Anthropic always reports usage;
    /// the OpenAI usage chunk is emitted only when asked, as OpenAI does).
    pub include_usage: bool,
}

/// OpenAI request fields with no Anthropic meaning: dropped without error.
pub const DROPPED_FIELDS: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "store",
    "metadata",
    "service_tier",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "verbosity",
    "prompt_cache_key",
    "stream_options",
];

/// Anthropic's extended-thinking budget for an OpenAI `reasoning_effort` (the inverse of
/// the thresholds [`crate::anthropic`] uses the other way, so a round trip is stable).
fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        "low" => Some(1024),
        "medium" => Some(2048),
        "high" | "xhigh" => Some(4096),
        // `minimal` and `none` ask for (almost) no reasoning: no thinking block.
        _ => None,
    }
}

/// Converts an OpenAI chat request to an Anthropic Messages request.
///
/// `default_max_tokens` is used when the client sends neither `max_completion_tokens` nor
/// `max_tokens` (CONTRACT §9: `override.llm_options.max_tokens`, else 4096).
pub fn request_to_anthropic(req: &Value, default_max_tokens: u64) -> Result<AnthropicRequest, ConvertError> {
    let obj = req.as_object().ok_or_else(|| err("the request body must be a JSON object"))?;
    let msgs = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(err("messages: at least one message is required")),
        Some(_) => return Err(err("messages: must be an array")),
        None => return Err(err("messages: Field required")),
    };
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(err("n: Anthropic returns one choice; n must be 1"));
    }
    if obj.get("functions").is_some_and(|f| !f.is_null()) || obj.get("function_call").is_some_and(|f| !f.is_null()) {
        return Err(err("functions: the legacy functions API cannot be converted to Anthropic; use tools"));
    }
    let mut names = ToolNames::default();
    let mut out = Map::new();
    if let Some(m) = obj.get("model").filter(|m| m.is_string()) {
        out.insert("model".into(), m.clone());
    }

    // Messages: system/developer are hoisted; same-role turns merge (Anthropic alternates).
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut used_tools: Vec<String> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let path = format!("messages[{i}]");
        if !m.is_object() {
            return Err(err(format!("{path}: must be an object")));
        }
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.role: Field required")))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                let t = system_text(content, &format!("{path}.content"))?;
                if !t.is_empty() {
                    system.push(t);
                }
                continue;
            }
            "user" => ("user", user_blocks(content, &format!("{path}.content"))?),
            "assistant" => {
                let mut blocks = assistant_text(content, &format!("{path}.content"))?;
                if let Some(tcs) = m.get("tool_calls").filter(|t| !t.is_null()) {
                    let tcs = tcs.as_array().ok_or_else(|| err(format!("{path}.tool_calls: must be an array")))?;
                    for (j, tc) in tcs.iter().enumerate() {
                        let tp = format!("{path}.tool_calls[{j}]");
                        let block = tool_use_block(tc, &tp, &mut names)?;
                        used_tools.push(block["name"].as_str().unwrap_or_default().to_owned());
                        blocks.push(block);
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id =
                    m.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| err(format!("{path}.tool_call_id: Field required")))?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                if let Some(c) = tool_result_content(content, &format!("{path}.content"))? {
                    block["content"] = c;
                }
                ("user", vec![block])
            }
            other => {
                return Err(err(format!(
                    "{path}.role: {other:?} cannot be converted to Anthropic (system, developer, user, assistant, tool)"
                )));
            }
        };
        if blocks.is_empty() {
            // Anthropic rejects empty turns; an empty OpenAI message carries nothing.
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(err("messages: at least one user or assistant message with content is required"));
    }
    let tool_loop = turns
        .iter()
        .rev()
        .find(|(r, _)| *r == "assistant")
        .is_some_and(|(_, b)| b.iter().any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use")));
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // Tool results answer the previous assistant turn: they go first in a user turn.
            if role == "user" {
                blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            }
            json!({"role": role, "content": simplify(blocks)})
        })
        .collect();
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n")));
    }
    out.insert("messages".into(), Value::Array(messages));

    // max_tokens is required by Anthropic.
    let mut max_tokens = default_max_tokens.max(1);
    let mut client_max = false;
    for k in ["max_tokens", "max_completion_tokens"] {
        match obj.get(k) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64().filter(|n| *n >= 1) {
                Some(n) => {
                    max_tokens = n;
                    client_max = true;
                }
                None => return Err(err(format!("{k}: must be a positive integer"))),
            },
        }
    }
    // `max_completion_tokens` wins over the deprecated `max_tokens` (checked last above).
    out.insert("max_tokens".into(), json!(max_tokens));

    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    let include_usage = stream && req.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);

    match obj.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.trim().is_empty() {
                out.insert("stop_sequences".into(), json!([s]));
            }
        }
        Some(Value::Array(a)) => {
            let mut seqs = Vec::new();
            for (i, s) in a.iter().enumerate() {
                let s = s.as_str().ok_or_else(|| err(format!("stop[{i}]: must be a string")))?;
                // Anthropic rejects whitespace-only stop sequences.
                if !s.trim().is_empty() {
                    seqs.push(Value::String(s.to_owned()));
                }
            }
            if !seqs.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(seqs));
            }
        }
        Some(_) => return Err(err("stop: must be a string or an array of strings")),
    }
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        let t = t.as_f64().ok_or_else(|| err("temperature: must be a number"))?;
        // OpenAI takes 0..2, Anthropic 0..1: clamp rather than reject.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = obj.get("top_p").filter(|v| !v.is_null()) {
        let p = p.as_f64().ok_or_else(|| err("top_p: must be a number"))?;
        out.insert("top_p".into(), json!(p.clamp(0.0, 1.0)));
    }
    if let Some(u) = obj.get("user").or_else(|| obj.get("safety_identifier")).and_then(Value::as_str).filter(|u| !u.is_empty()) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(f) = structured_output(obj.get("response_format"))? {
        out.insert("output_config".into(), json!({"format": f}));
    }

    // Tools: function tools only.
    let mut tools = Vec::new();
    let mut defined: Vec<String> = Vec::new();
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ts)) => {
            for (i, t) in ts.iter().enumerate() {
                let tp = format!("tools[{i}]");
                match t.get("type").and_then(Value::as_str) {
                    Some("function") | None => {}
                    Some(other) => return Err(err(format!("{tp}.type: {other:?} tools cannot be converted to Anthropic (function only)"))),
                }
                let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| err(format!("{tp}.function: Field required")))?;
                let name = f
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| err(format!("{tp}.function.name: Field required")))?;
                let name = names.sanitize(name);
                let mut tool = Map::new();
                tool.insert("name".into(), Value::String(name.clone()));
                if let Some(d) = f.get("description").and_then(Value::as_str) {
                    tool.insert("description".into(), Value::String(d.to_owned()));
                }
                let schema =
                    f.get("parameters").filter(|s| s.is_object()).cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                tool.insert("input_schema".into(), schema);
                if let Some(s) = f.get("strict").and_then(Value::as_bool) {
                    tool.insert("strict".into(), Value::Bool(s));
                }
                defined.push(name);
                tools.push(Value::Object(tool));
            }
        }
        Some(_) => return Err(err("tools: must be an array")),
    }
    let client_tools = !tools.is_empty();
    // Anthropic rejects tool_use history without tool definitions: declare history-only tools.
    for name in used_tools {
        if !defined.contains(&name) {
            tools.push(json!({"name": name, "input_schema": {"type": "object", "properties": {}}}));
            defined.push(name);
        }
    }
    let mut forced_tool = false;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        let mut choice = match obj.get("tool_choice") {
            _ if !client_tools => None,
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Some(json!({"type": "auto"})),
                "none" => Some(json!({"type": "none"})),
                "required" => Some(json!({"type": "any"})),
                other => return Err(err(format!("tool_choice: unknown value {other:?} (auto, none, required)"))),
            },
            Some(Value::Object(o)) => {
                let n = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| err("tool_choice.function.name: Field required (only named function choices convert)"))?;
                Some(json!({"type": "tool", "name": names.sanitize(n)}))
            }
            Some(_) => return Err(err("tool_choice: must be a string or an object")),
        };
        if obj.get("parallel_tool_calls").and_then(Value::as_bool) == Some(false) && client_tools {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if c["type"] != "none" {
                c["disable_parallel_tool_use"] = Value::Bool(true);
            }
        }
        forced_tool = choice.as_ref().is_some_and(|c| c["type"] == "any" || c["type"] == "tool");
        if !client_tools {
            // Only history-only tools: the model must not call them.
            choice = Some(json!({"type": "none"}));
        }
        if let Some(c) = choice {
            out.insert("tool_choice".into(), c);
        }
    }

    // reasoning_effort → extended thinking, within Anthropic's rules: budget ≥ 1024 and
    // below max_tokens, no forced tool, temperature/top_p left at their defaults. As in
    // OpenAI, a client's cap includes reasoning: thinking may take half of it. Without a
    // client cap the budget comes on top of the default.
    // A tool loop in progress would need the signed thinking blocks OpenAI clients never
    // kept, so thinking stays off while the last assistant turn called tools.
    if let Some(effort) = obj.get("reasoning_effort").and_then(Value::as_str)
        && let Some(budget) = thinking_budget(effort)
        && !forced_tool
        && !tool_loop
    {
        let budget = if client_max { budget.min(max_tokens / 2) } else { budget };
        if budget >= 1024 {
            if !client_max {
                max_tokens = max_tokens.saturating_add(budget);
                out.insert("max_tokens".into(), json!(max_tokens));
            }
            out.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
            out.remove("temperature");
            out.remove("top_p");
        }
    }
    Ok(AnthropicRequest { body: Value::Object(out), names, stream, include_usage })
}

/// One text block becomes a plain string (the common, readable form).
fn simplify(mut blocks: Vec<Value>) -> Value {
    if blocks.len() == 1
        && blocks[0].get("type").and_then(Value::as_str) == Some("text")
        && blocks[0].as_object().is_some_and(|o| o.len() == 2)
    {
        return blocks.pop().and_then(|b| b.get("text").cloned()).unwrap_or_default();
    }
    Value::Array(blocks)
}

fn text_block(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

/// System/developer content: a string or text parts, joined.
fn system_text(content: &Value, path: &str) -> Result<String, ConvertError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        texts.push(p.get("text").and_then(Value::as_str).ok_or_else(|| err(format!("{path}[{i}].text: must be a string")))?)
                    }
                    _ => return Err(err(format!("{path}[{i}]: system and developer messages take text parts only"))),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(err(format!("{path}: must be a string or an array of text parts"))),
    }
}

fn user_blocks(content: &Value, path: &str) -> Result<Vec<Value>, ConvertError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text_block(s)]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let pp = format!("{path}[{i}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = p.get("text").and_then(Value::as_str).ok_or_else(|| err(format!("{pp}.text: must be a string")))?;
                        // Anthropic rejects empty text blocks.
                        if !t.is_empty() {
                            out.push(text_block(t));
                        }
                    }
                    Some("image_url") => {
                        let url = p
                            .get("image_url")
                            .and_then(|u| u.get("url").or(Some(u)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| err(format!("{pp}.image_url.url: Field required")))?;
                        out.push(image_block(url, &pp)?);
                    }
                    Some("file") => out.push(file_block(p.get("file").unwrap_or(&Value::Null), &pp)?),
                    Some(other) => return Err(err(format!("{pp}.type: {other:?} content cannot be converted to Anthropic"))),
                    None => return Err(err(format!("{pp}.type: Field required"))),
                }
            }
            Ok(out)
        }
        _ => Err(err(format!("{path}: must be a string or an array of parts"))),
    }
}

/// `data:<mime>;base64,<data>` → (mime, data).
fn parse_data_url<'a>(url: &'a str, path: &str) -> Result<(&'a str, &'a str), ConvertError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| err(format!("{path}: not a data: URL")))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| err(format!("{path}: malformed data URL")))?;
    let mime = meta.strip_suffix(";base64").ok_or_else(|| err(format!("{path}: data URL must be base64")))?;
    Ok((mime, data))
}

fn image_block(url: &str, path: &str) -> Result<Value, ConvertError> {
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    if !url.starts_with("data:") {
        return Err(err(format!("{path}.image_url.url: must be an http(s) URL or a base64 data: URL")));
    }
    let (mime, data) = parse_data_url(url, &format!("{path}.image_url.url"))?;
    let mime = if mime == "image/jpg" { "image/jpeg" } else { mime };
    if !matches!(mime, "image/jpeg" | "image/png" | "image/gif" | "image/webp") {
        return Err(err(format!("{path}.image_url.url: image type {mime:?} is not supported by Anthropic (jpeg, png, gif, webp)")));
    }
    Ok(json!({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}))
}

/// `file` parts: inline PDFs become `document` blocks; file ids have no Anthropic form.
fn file_block(file: &Value, path: &str) -> Result<Value, ConvertError> {
    let data = file
        .get("file_data")
        .and_then(Value::as_str)
        .ok_or_else(|| err(format!("{path}.file.file_data: Field required (file_id cannot be converted to Anthropic)")))?;
    let (mime, b64) = parse_data_url(data, &format!("{path}.file.file_data"))?;
    if mime != "application/pdf" {
        return Err(err(format!("{path}.file.file_data: only application/pdf files convert to Anthropic documents, got {mime:?}")));
    }
    let mut block = json!({"type": "document", "source": {"type": "base64", "media_type": mime, "data": b64}});
    if let Some(name) = file.get("filename").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        block["title"] = Value::String(name.to_owned());
    }
    Ok(block)
}

/// Assistant content: a string or text/refusal parts → text blocks (empty text omitted).
fn assistant_text(content: &Value, path: &str) -> Result<Vec<Value>, ConvertError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text_block(s)]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let t = match p.get("type").and_then(Value::as_str) {
                    Some("text") => p.get("text"),
                    Some("refusal") => p.get("refusal"),
                    _ => return Err(err(format!("{path}[{i}]: assistant content takes text or refusal parts"))),
                };
                let t = t.and_then(Value::as_str).ok_or_else(|| err(format!("{path}[{i}]: text must be a string")))?;
                if !t.is_empty() {
                    out.push(text_block(t));
                }
            }
            Ok(out)
        }
        _ => Err(err(format!("{path}: must be a string, an array of parts or null"))),
    }
}

/// An assistant `tool_calls[j]` → a `tool_use` block. `arguments` must be a JSON object
/// (or empty, meaning `{}`): anything else is a 400 rather than a silently edited history.
fn tool_use_block(tc: &Value, path: &str, names: &mut ToolNames) -> Result<Value, ConvertError> {
    let id = tc.get("id").and_then(Value::as_str).filter(|i| !i.is_empty()).ok_or_else(|| err(format!("{path}.id: Field required")))?;
    let name = tc
        .pointer("/function/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err(format!("{path}.function.name: Field required")))?;
    let args = match tc.pointer("/function/arguments") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(err(format!("{path}.function.arguments: must be a JSON-encoded string"))),
    };
    let input = if args.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str::<Value>(args) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(err(format!("{path}.function.arguments: must encode a JSON object"))),
            Err(e) => return Err(err(format!("{path}.function.arguments: not valid JSON ({e})"))),
        }
    };
    Ok(json!({"type": "tool_use", "id": id, "name": names.sanitize(name), "input": input}))
}

/// A tool message's content → `tool_result` content (None: empty). Parts convert as a
/// user's do (text, images, PDFs), which Anthropic accepts inside a tool result.
fn tool_result_content(content: &Value, path: &str) -> Result<Option<Value>, ConvertError> {
    match content {
        Value::String(s) if !s.is_empty() => Ok(Some(Value::String(s.clone()))),
        Value::Array(_) => {
            let blocks = user_blocks(content, path)?;
            Ok((!blocks.is_empty()).then_some(Value::Array(blocks)))
        }
        Value::Null | Value::String(_) => Ok(None),
        _ => Err(err(format!("{path}: must be a string or an array of parts"))),
    }
}

/// `response_format` → Anthropic structured output (`output_config.format`). Only
/// `json_schema` has an Anthropic form; `text` is the default and `json_object` (JSON
/// without a schema) has none, so both are dropped.
fn structured_output(rf: Option<&Value>) -> Result<Option<Value>, ConvertError> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else { return Ok(None) };
    match rf.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = rf
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| err("response_format.json_schema.schema: Field required"))?;
            Ok(Some(json!({"type": "json_schema", "schema": schema})))
        }
        Some("text") | Some("json_object") => Ok(None),
        _ => Err(err("response_format.type: expected text, json_object or json_schema")),
    }
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// Anthropic usage → OpenAI usage: `prompt_tokens` includes cache reads and writes;
/// reads are `prompt_tokens_details.cached_tokens`, writes
/// `prompt_tokens_details.cache_creation_input_tokens` (where [`crate::usage`] reads them).
pub fn usage_to_openai(u: Option<&Value>) -> Value {
    let n = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    usage_json(n("input_tokens"), n("output_tokens"), n("cache_read_input_tokens"), n("cache_creation_input_tokens"))
}

fn usage_json(input: u64, output: u64, read: u64, write: u64) -> Value {
    let prompt = input.saturating_add(read).saturating_add(write);
    json!({"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt.saturating_add(output),
           "prompt_tokens_details": {"cached_tokens": read, "cache_creation_input_tokens": write}})
}

/// Converts a non-streamed Anthropic message to an OpenAI `chat.completion`. `created`
/// is the Unix time to report (Anthropic has none); `fallback_model` is used when the
/// upstream names no model.
pub fn response_to_openai(resp: &Value, names: &ToolNames, created: u64, fallback_model: &str) -> Result<Value, ConvertError> {
    if resp.get("type").and_then(Value::as_str) == Some("error") {
        return Err(err("the upstream answered with an error body"));
    }
    let blocks = resp.get("content").and_then(Value::as_array).ok_or_else(|| err("the upstream response is not an Anthropic message"))?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => reasoning.push_str(b.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => {
                let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
                let input = b.get("input").filter(|i| i.is_object()).cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({"id": b.get("id").and_then(Value::as_str).unwrap_or("toolu_aigw"), "type": "function",
                    "function": {"name": names.restore(name), "arguments": input.to_string()}}));
            }
            // redacted_thinking, server tools and their results have no OpenAI form.
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) }, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let stop = resp.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    Ok(json!({
        "id": resp.get("id").and_then(Value::as_str).unwrap_or("msg_aigw"),
        "object": "chat.completion",
        "created": created,
        "model": resp.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(fallback_model),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(stop)}],
        "usage": usage_to_openai(resp.get("usage")),
    }))
}

/// Any upstream error body (Anthropic-shaped, or not JSON) → OpenAI's envelope
/// `{"error": {message, type, param, code}}`. `type` follows the status; `code` keeps
/// Anthropic's error type (`overloaded_error`, …). The caller keeps the status and
/// `retry-after`.
pub fn error_to_openai(status: u16, body: &[u8]) -> Value {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let e = v.as_ref().and_then(|v| v.get("error"));
    let message = e
        .and_then(|e| e.get("message").or(Some(e)))
        .or_else(|| v.as_ref().and_then(|v| v.get("message")))
        .and_then(|m| m.as_str().map(str::to_owned).or_else(|| (!m.is_null()).then(|| m.to_string())))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(2048)]).trim().to_owned());
    let message = if message.is_empty() { format!("upstream returned status {status}") } else { message };
    let code = e.and_then(|e| e.get("type")).and_then(Value::as_str).map_or(Value::Null, |t| Value::String(t.to_owned()));
    json!({"error": {"message": message, "type": crate::envelope::openai_type(status), "param": null, "code": code}})
}

/// Anthropic SSE events → OpenAI `chat.completion.chunk` JSON strings. Feed each upstream
/// event (name and data, as [`crate::sse::Parser`] yields them); chunks are appended to
/// `out`. A complete stream ends with `"[DONE]"` (like [`crate::bedrock::StreamToOpenAi`]),
/// an upstream `error` event with an OpenAI error chunk and no `[DONE]`.
#[derive(Debug)]
pub struct StreamToOpenAi {
    names: ToolNames,
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    started: bool,
    /// A `message_delta` with a stop reason was seen (the content is complete).
    stopped: bool,
    finished: bool,
    /// Anthropic content-block index → OpenAI tool-call index.
    tools: HashMap<u64, u64>,
    next_tool: u64,
    /// input, output, cache read, cache creation (latest values; output is cumulative).
    usage: [u64; 4],
}

impl StreamToOpenAi {
    pub fn new(names: ToolNames, include_usage: bool, created: u64, fallback_model: &str) -> StreamToOpenAi {
        StreamToOpenAi {
            names,
            include_usage,
            created,
            id: "msg_aigw".to_owned(),
            model: fallback_model.to_owned(),
            started: false,
            stopped: false,
            finished: false,
            tools: HashMap::new(),
            next_tool: 0,
            usage: [0; 4],
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the upstream gave its stop reason (the content is complete).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether anything was emitted (a role chunk at least).
    pub fn is_started(&self) -> bool {
        self.started
    }

    fn chunk(&self, delta: Value, finish: Value) -> String {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    fn start(&mut self, out: &mut Vec<String>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
    }

    fn absorb_usage(&mut self, u: Option<&Value>) {
        let Some(u) = u else { return };
        for (slot, k) in
            self.usage.iter_mut().zip(["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"])
        {
            if let Some(n) = u.get(k).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    fn complete(&mut self, out: &mut Vec<String>) {
        if self.include_usage {
            let [i, o, r, w] = self.usage;
            out.push(
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [], "usage": usage_json(i, o, r, w)})
                .to_string(),
            );
        }
        out.push("[DONE]".to_owned());
        self.finished = true;
    }

    fn fail(&mut self, message: &str, kind: &str, code: Value, out: &mut Vec<String>) {
        out.push(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}).to_string());
        self.finished = true;
    }

    /// One upstream SSE event. `event` may be empty: the data's `type` names it then.
    pub fn push(&mut self, event: &str, data: &str, out: &mut Vec<String>) {
        if self.finished {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else { return };
        let kind = if event.is_empty() { v.get("type").and_then(Value::as_str).unwrap_or_default() } else { event };
        match kind {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or(Value::Null);
                if let Some(id) = m.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    self.id = id.to_owned();
                }
                if let Some(model) = m.get("model").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    self.model = model.to_owned();
                }
                self.absorb_usage(m.get("usage"));
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                let block = v.get("content_block").cloned().unwrap_or(Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                        let k = self.next_tool;
                        self.next_tool += 1;
                        self.tools.insert(idx, k);
                        let name = self.names.restore(block.get("name").and_then(Value::as_str).unwrap_or_default()).to_owned();
                        let id = block.get("id").and_then(Value::as_str).unwrap_or("toolu_aigw");
                        out.push(self.chunk(
                            json!({"tool_calls": [{"index": k, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                            Value::Null,
                        ));
                    }
                    Some("text") => {
                        if let Some(t) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": t}), Value::Null));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                self.start(out);
                let d = v.get("delta").cloned().unwrap_or(Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(t) = d.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"content": t}), Value::Null));
                        }
                    }
                    Some("thinking_delta") => {
                        if let Some(t) = d.get("thinking").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(self.chunk(json!({"reasoning_content": t}), Value::Null));
                        }
                    }
                    Some("input_json_delta") => {
                        let idx = v.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                        if let Some(k) = self.tools.get(&idx).copied()
                            && let Some(p) = d.get("partial_json").and_then(Value::as_str).filter(|p| !p.is_empty())
                        {
                            out.push(self.chunk(json!({"tool_calls": [{"index": k, "function": {"arguments": p}}]}), Value::Null));
                        }
                    }
                    // signature_delta, citations_delta: no OpenAI form.
                    _ => {}
                }
            }
            "message_delta" => {
                self.start(out);
                self.absorb_usage(v.get("usage"));
                if let Some(stop) = v.pointer("/delta/stop_reason").and_then(Value::as_str)
                    && !self.stopped
                {
                    self.stopped = true;
                    out.push(self.chunk(json!({}), json!(finish_reason(stop))));
                }
            }
            "message_stop" => {
                self.start(out);
                if !self.stopped {
                    self.stopped = true;
                    out.push(self.chunk(json!({}), json!("stop")));
                }
                self.complete(out);
            }
            "error" => {
                let e = v.get("error").cloned().unwrap_or(Value::Null);
                let msg = e.get("message").and_then(Value::as_str).unwrap_or("upstream stream error").to_owned();
                let code = e.get("type").and_then(Value::as_str).map_or(Value::Null, |t| Value::String(t.to_owned()));
                let kind = crate::envelope::openai_type(if code == "rate_limit_error" { 429 } else { 502 });
                self.fail(&msg, kind, code, out);
            }
            // ping and anything new.
            _ => {}
        }
    }

    /// At the end of the upstream body. A stream cut after its stop reason is complete
    /// (only `message_stop` was lost); one cut earlier ends with an error chunk.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if self.finished {
            return;
        }
        if self.stopped {
            self.complete(out);
        } else if self.started {
            self.fail(
                "the Anthropic stream ended before message_stop",
                crate::envelope::openai_type(502),
                json!("upstream_stream_truncated"),
                out,
            );
        } else {
            self.fail(
                "the upstream stream ended without producing any output",
                crate::envelope::openai_type(502),
                json!("upstream_stream_empty"),
                out,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/openai_to_anthropic")
    }

    /// Runs one golden input: `req_*` → JSON, `resp_*` → JSON, `stream_*` → OpenAI SSE.
    fn run_case(stem: &str, input: &Value) -> (String, &'static str) {
        let mut names = ToolNames::default();
        for t in input["tool_names"].as_array().into_iter().flatten() {
            names.sanitize(t.as_str().unwrap());
        }
        let model = input["fallback_model"].as_str().unwrap_or("m");
        if stem.starts_with("req_") {
            let r = request_to_anthropic(&input["request"], input["default_max_tokens"].as_u64().unwrap_or(4096)).unwrap();
            let v = json!({"body": r.body, "stream": r.stream, "include_usage": r.include_usage});
            (serde_json::to_string_pretty(&v).unwrap() + "\n", "json")
        } else if stem.starts_with("resp_") {
            let v = response_to_openai(&input["response"], &names, 1_732_000_000, model).unwrap();
            (serde_json::to_string_pretty(&v).unwrap() + "\n", "json")
        } else {
            let include_usage = input["include_usage"].as_bool().unwrap_or(false);
            let mut c = StreamToOpenAi::new(names, include_usage, 1_732_000_000, model);
            let mut chunks = Vec::new();
            // Events as raw SSE text, parsed as the pipe parses them.
            let mut parser = crate::sse::Parser::new();
            let mut events = Vec::new();
            parser.push(input["sse"].as_str().unwrap().as_bytes(), &mut events);
            parser.finish(&mut events);
            for e in &events {
                c.push(&e.event, &e.data, &mut chunks);
            }
            c.finish(&mut chunks);
            (chunks.iter().map(|c| format!("data: {c}\n\n")).collect(), "sse")
        }
    }

    /// Golden files: `testdata/openai_to_anthropic/<case>.in.json` → `<case>.out.{json,sse}`.
    /// `UPDATE_GOLDEN=1 cargo test -p aigw-llm` rewrites the outputs (review the diff).
    #[test]
    fn golden_files() {
        let dir = golden_dir();
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut stems: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".in.json").map(str::to_owned))
            .collect();
        stems.sort();
        assert!(stems.len() >= 13, "{stems:?}");
        for stem in stems {
            let input: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.in.json"))).unwrap()).unwrap();
            let (out, ext) = run_case(&stem, &input);
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

    /// Deterministic mutation fuzzing over the golden inputs: any JSON node may become
    /// any other JSON value; nothing may panic; every request that converts has
    /// non-empty alternating-or-merged messages and a positive max_tokens; every stream
    /// chunk is JSON. (The cargo-fuzz target explores further.)
    #[test]
    fn mutated_inputs_never_panic() {
        let dir = golden_dir();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
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
            json!(0),
            json!(2.5),
            json!(""),
            json!("x"),
            json!([]),
            json!({}),
            json!([{}]),
            json!({"type": "text"}),
            json!("data:image/png;base64,"),
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
        let mut converted = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".in.json") {
                continue;
            }
            let base: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if name.starts_with("stream_") {
                // Mutate the event data lines: each event's JSON is mutated as a value.
                let events: Vec<(String, Value)> = base["sse"]
                    .as_str()
                    .unwrap()
                    .split("\n\n")
                    .filter_map(|b| {
                        let ev = b.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_owned();
                        let data = b.lines().find_map(|l| l.strip_prefix("data: "))?;
                        Some((ev, serde_json::from_str(data).unwrap_or(Value::String(data.to_owned()))))
                    })
                    .collect();
                let as_value = Value::Array(events.iter().map(|(_, d)| d.clone()).collect());
                let mut ptrs = Vec::new();
                nodes(&as_value, &mut ptrs, String::new());
                for _ in 0..300 {
                    let mut v = as_value.clone();
                    for _ in 0..=rnd(3) {
                        if let Some(slot) = v.pointer_mut(&ptrs[rnd(ptrs.len())]) {
                            *slot = replacements[rnd(replacements.len())].clone();
                        }
                    }
                    let mut c = StreamToOpenAi::new(ToolNames::default(), rnd(2) == 0, 0, "m");
                    let mut out = Vec::new();
                    for (i, d) in v.as_array().into_iter().flatten().enumerate() {
                        let ev = if rnd(4) == 0 { "" } else { events.get(i).map(|e| e.0.as_str()).unwrap_or("") };
                        c.push(ev, &d.to_string(), &mut out);
                    }
                    c.finish(&mut out);
                    assert!(c.is_finished());
                    for chunk in &out {
                        if chunk != "[DONE]" {
                            serde_json::from_str::<Value>(chunk).expect("chunk is JSON");
                        }
                    }
                }
                continue;
            }
            let key = if name.starts_with("req_") { "request" } else { "response" };
            let mut ptrs = Vec::new();
            nodes(&base[key], &mut ptrs, String::new());
            for _ in 0..400 {
                let mut v = base[key].clone();
                for _ in 0..=rnd(3) {
                    if let Some(slot) = v.pointer_mut(&ptrs[rnd(ptrs.len())]) {
                        *slot = replacements[rnd(replacements.len())].clone();
                    }
                }
                if key == "request" {
                    if let Ok(r) = request_to_anthropic(&v, 4096) {
                        converted += 1;
                        let msgs = r.body["messages"].as_array().unwrap();
                        assert!(!msgs.is_empty());
                        assert!(msgs.windows(2).all(|w| w[0]["role"] != w[1]["role"]), "{}", r.body);
                        assert!(r.body["max_tokens"].as_u64().unwrap() >= 1);
                    }
                } else {
                    let _ = response_to_openai(&v, &ToolNames::default(), 0, "m");
                }
            }
        }
        assert!(converted > 100, "mutations should not all be rejected ({converted})");
    }

    fn convert(req: Value) -> Value {
        request_to_anthropic(&req, 4096).unwrap().body
    }

    #[test]
    fn request_mapping_table() {
        let user = json!([{"role": "user", "content": "hi"}]);
        // (extra request fields, JSON pointer in the Anthropic body, expected value; Null = absent)
        for (extra, ptr, want) in [
            (json!({}), "/max_tokens", json!(4096)),
            (json!({"max_tokens": 10}), "/max_tokens", json!(10)),
            (json!({"max_completion_tokens": 20, "max_tokens": 10}), "/max_tokens", json!(20)),
            (json!({"temperature": 1.7}), "/temperature", json!(1.0)),
            (json!({"temperature": 0.3}), "/temperature", json!(0.3)),
            (json!({"temperature": -1}), "/temperature", json!(0.0)),
            (json!({"top_p": 0.9}), "/top_p", json!(0.9)),
            (json!({"stop": "END"}), "/stop_sequences", json!(["END"])),
            (json!({"stop": ["a", " ", "b"]}), "/stop_sequences", json!(["a", "b"])),
            (json!({"stop": "  "}), "/stop_sequences", Value::Null),
            (json!({"stop": []}), "/stop_sequences", Value::Null),
            (json!({"user": "u-1"}), "/metadata/user_id", json!("u-1")),
            (json!({"safety_identifier": "s-1"}), "/metadata/user_id", json!("s-1")),
            (json!({"stream": true}), "/stream", json!(true)),
            (json!({"stream": false}), "/stream", Value::Null),
            (json!({"seed": 1, "presence_penalty": 1, "logit_bias": {}, "metadata": {"a": "b"}}), "/metadata", Value::Null),
            (json!({"seed": 1}), "/seed", Value::Null),
            (json!({"n": 1}), "/n", Value::Null),
            (json!({"response_format": {"type": "json_object"}}), "/output_config", Value::Null),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
                "/output_config/format",
                json!({"type": "json_schema", "schema": {"type": "object"}}),
            ),
            (json!({"reasoning_effort": "high"}), "/thinking", json!({"type": "enabled", "budget_tokens": 4096})),
            (json!({"reasoning_effort": "low", "temperature": 0.2}), "/temperature", Value::Null),
            (json!({"reasoning_effort": "minimal"}), "/thinking", Value::Null),
            (json!({"reasoning_effort": "high"}), "/max_tokens", json!(4096 + 4096)),
            (json!({"reasoning_effort": "high", "max_tokens": 3000}), "/thinking/budget_tokens", json!(1500)),
            (json!({"reasoning_effort": "high", "max_tokens": 3000}), "/max_tokens", json!(3000)),
            (json!({"reasoning_effort": "high", "max_tokens": 2000}), "/thinking", Value::Null),
        ] {
            let mut req = json!({"model": "claude", "messages": user});
            for (k, v) in extra.as_object().unwrap() {
                req[k] = v.clone();
            }
            let body = convert(req);
            let got = body.pointer(ptr).cloned().unwrap_or(Value::Null);
            assert_eq!(got, want, "{extra} → {ptr} in {body}");
        }
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        for (extra, want_choice) in [
            (json!({}), Value::Null),
            (json!({"tool_choice": "auto"}), json!({"type": "auto"})),
            (json!({"tool_choice": "none"}), json!({"type": "none"})),
            (json!({"tool_choice": "required"}), json!({"type": "any"})),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
                json!({"type": "tool", "name": "get_weather"}),
            ),
            (json!({"parallel_tool_calls": false}), json!({"type": "auto", "disable_parallel_tool_use": true})),
            (json!({"parallel_tool_calls": false, "tool_choice": "required"}), json!({"type": "any", "disable_parallel_tool_use": true})),
            (json!({"parallel_tool_calls": false, "tool_choice": "none"}), json!({"type": "none"})),
            (json!({"parallel_tool_calls": true}), Value::Null),
        ] {
            let mut req = json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools});
            for (k, v) in extra.as_object().unwrap() {
                req[k] = v.clone();
            }
            let body = convert(req);
            assert_eq!(body.get("tool_choice").cloned().unwrap_or(Value::Null), want_choice, "{extra}");
            assert_eq!(body["tools"][0]["input_schema"]["properties"]["city"]["type"], "string");
        }
        // A forced tool disables thinking (Anthropic rejects the combination).
        let body = convert(
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "required", "reasoning_effort": "high"}),
        );
        assert!(body.get("thinking").is_none(), "{body}");
        // tool_choice without tools is dropped.
        assert!(convert(json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"})).get("tool_choice").is_none());
    }

    #[test]
    fn history_tools_are_declared_and_not_callable() {
        let body = convert(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]}));
        assert_eq!(body["tools"], json!([{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]));
        assert_eq!(body["tool_choice"], json!({"type": "none"}));
        assert_eq!(body["messages"][1]["content"][0]["input"], json!({"q": 1}));
        assert_eq!(body["messages"][2]["content"][0], json!({"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}));
    }

    #[test]
    fn bad_requests_are_400s_not_panics() {
        let user = |c: Value| json!({"messages": [{"role": "user", "content": c}]});
        let tc = |args: &str| json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]});
        for (body, needle) in [
            (json!([1]), "JSON object"),
            (json!({}), "messages: Field required"),
            (json!({"messages": "hi"}), "messages: must be an array"),
            (json!({"messages": []}), "at least one"),
            (json!({"messages": [1]}), "messages[0]: must be an object"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"role": "function", "content": "x"}]}), "\"function\""),
            (json!({"messages": [{"role": "system", "content": "only system"}]}), "at least one user or assistant"),
            (json!({"messages": [{"role": "user", "content": ""}]}), "at least one user or assistant"),
            (json!({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}), "text parts only"),
            (user(json!(5)), "messages[0].content"),
            (user(json!([{"type": "input_audio", "input_audio": {}}])), "\"input_audio\""),
            (user(json!([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])), "http(s) URL"),
            (user(json!([{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}])), "image/bmp"),
            (user(json!([{"type": "image_url", "image_url": {"url": "data:image/png,AA"}}])), "base64"),
            (user(json!([{"type": "file", "file": {"file_id": "file-1"}}])), "file_id"),
            (user(json!([{"type": "text"}])), "text: must be a string"),
            (tc("{\"a\":"), "not valid JSON"),
            (tc("[1]"), "JSON object"),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "tool_call_id"),
            (json!({"messages": [{"role": "user", "content": "x"}], "n": 2}), "n must be 1"),
            (json!({"messages": [{"role": "user", "content": "x"}], "functions": []}), "legacy functions"),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}), "max_tokens: must be a positive"),
            (json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "9"}), "max_completion_tokens"),
            (json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}), "temperature"),
            (json!({"messages": [{"role": "user", "content": "x"}], "stop": 5}), "stop"),
            (json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "custom", "custom": {}}]}), "function only"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}), "json_schema.schema"),
        ] {
            let e = request_to_anthropic(&body, 4096).unwrap_err();
            assert!(e.0.contains(needle), "{body}: {e}");
        }
        // Empty arguments mean no input.
        let b = request_to_anthropic(&tc(""), 1).unwrap().body;
        assert_eq!(b["messages"][1]["content"][0]["input"], json!({}));
        assert_eq!(b["max_tokens"], 1);
    }

    #[test]
    fn endpoint_decides_conversion() {
        for (ep, converts) in [
            (None, true),
            (Some("https://api.anthropic.com"), true),
            (Some("https://api.anthropic.com/"), true),
            (Some("https://gw.example.com/v1/messages"), true),
            (Some("https://api.anthropic.com/v1/chat/completions"), false),
            (Some("https://api.anthropic.com/v1/chat/completions/"), false),
            (Some("http://127.0.0.1:9/openai/chat/completions?beta=1"), false),
            (Some("https://chat.completions.example.com/v1/messages"), true),
        ] {
            assert_eq!(converts_for_endpoint(ep), converts, "{ep:?}");
        }
    }

    #[test]
    fn every_stop_reason_maps() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("pause_turn", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
        ] {
            let r = json!({"id": "msg_1", "content": [{"type": "text", "text": "x"}], "stop_reason": stop});
            assert_eq!(response_to_openai(&r, &ToolNames::default(), 0, "m").unwrap()["choices"][0]["finish_reason"], finish, "{stop}");
            let mut c = StreamToOpenAi::new(ToolNames::default(), false, 0, "m");
            let mut out = Vec::new();
            c.push("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": stop}}).to_string(), &mut out);
            assert!(out.last().unwrap().contains(&format!("\"finish_reason\":\"{finish}\"")), "{stop}: {out:?}");
        }
    }

    #[test]
    fn usage_is_what_the_gateway_observer_sees() {
        let resp = json!({"id": "msg_1", "model": "claude", "content": [{"type": "text", "text": "x"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 50, "output_tokens": 30, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100}});
        let o = response_to_openai(&resp, &ToolNames::default(), 0, "m").unwrap();
        assert_eq!(o["usage"]["prompt_tokens"], 350);
        assert_eq!(o["usage"]["total_tokens"], 380);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 200);
        // The usage observer reads the converted body and the native one identically.
        let converted = crate::usage::observe_json(o.to_string().as_bytes()).usage;
        let native = crate::usage::observe_json(resp.to_string().as_bytes()).usage;
        assert_eq!(converted, native);
        assert_eq!((converted.cache_read, converted.cache_creation), (200, 100));
    }

    #[test]
    fn tool_names_round_trip() {
        let long = "n".repeat(70);
        let r = request_to_anthropic(
            &json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": long}}]}),
            10,
        )
        .unwrap();
        let sent = r.body["tools"][0]["name"].as_str().unwrap().to_owned();
        assert!(sent.len() <= 64 && sent != long);
        let resp = json!({"content": [{"type": "tool_use", "id": "toolu_1", "name": sent, "input": {}}], "stop_reason": "tool_use"});
        let o = response_to_openai(&resp, &r.names, 0, "m").unwrap();
        assert_eq!(o["choices"][0]["message"]["tool_calls"][0]["function"]["name"], long.as_str());
        let mut c = StreamToOpenAi::new(r.names.clone(), false, 0, "m");
        let mut out = Vec::new();
        c.push(
            "",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": sent}}).to_string(),
            &mut out,
        );
        assert!(out.last().unwrap().contains(&long), "{out:?}");
    }

    #[test]
    fn errors_convert_keeping_the_message() {
        let e = error_to_openai(
            429,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_1"}"#,
        );
        assert_eq!(
            e,
            json!({"error": {"message": "Number of request tokens has exceeded your per-minute rate limit", "type": "rate_limit_error", "param": null, "code": "rate_limit_error"}})
        );
        let e = error_to_openai(529, br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!((e["error"]["type"].as_str(), e["error"]["code"].as_str()), (Some("api_error"), Some("overloaded_error")));
        assert_eq!(error_to_openai(401, b"")["error"]["message"], "upstream returned status 401");
        assert_eq!(error_to_openai(401, b"")["error"]["type"], "authentication_error");
        assert_eq!(error_to_openai(502, b"<html>bad gateway</html>")["error"]["message"], "<html>bad gateway</html>");
        assert_eq!(error_to_openai(400, br#"{"message":"plain"}"#)["error"]["message"], "plain");
    }
}
