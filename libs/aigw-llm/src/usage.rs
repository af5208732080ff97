//! What a response tells about cost: token usage, the model that answered, tool calls,
//! time to first token, and errors inside a 200 stream. Observers run beside the byte
//! stream and never change it.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::body::{Fields, Json};
use crate::protocol::Protocol;
use crate::sse;

#[cfg(any(test, feature = "oracle"))]
pub mod oracle;

/// Token usage, OpenAI semantics: `prompt` includes cached tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    pub reasoning: u64,
}

impl Usage {
    /// Later non-zero values win; total is at least prompt + completion.
    pub fn merge(&mut self, o: &Usage) {
        for (mine, theirs) in [
            (&mut self.prompt, o.prompt),
            (&mut self.completion, o.completion),
            (&mut self.total, o.total),
            (&mut self.cache_read, o.cache_read),
            (&mut self.cache_creation, o.cache_creation),
            (&mut self.reasoning, o.reasoning),
        ] {
            if theirs != 0 {
                *mine = theirs;
            }
        }
        self.total = self.total.max(self.prompt + self.completion);
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Details {
    cached_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// Every usage spelling of the OpenAI family (chat, Responses, embeddings, DeepSeek).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    prompt_cache_hit_tokens: Option<u64>,
    /// Anthropic: `input_tokens` excludes these.
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// Bedrock Converse (camelCase; `inputTokens` excludes the cache, as Anthropic's).
    #[serde(rename = "inputTokens")]
    converse_input: Option<u64>,
    #[serde(rename = "outputTokens")]
    converse_output: Option<u64>,
    #[serde(rename = "totalTokens")]
    converse_total: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    converse_cache_read: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    converse_cache_write: Option<u64>,
}

impl RawUsage {
    pub(crate) fn to_usage(&self) -> Usage {
        if self.converse_input.is_some() || self.converse_output.is_some() {
            let (read, write) = (self.converse_cache_read.unwrap_or(0), self.converse_cache_write.unwrap_or(0));
            let prompt = self.converse_input.unwrap_or(0) + read + write;
            let completion = self.converse_output.unwrap_or(0);
            let total = self.converse_total.unwrap_or(0).max(prompt + completion);
            return Usage { prompt, completion, total, cache_read: read, cache_creation: write, reasoning: 0 };
        }
        let pd = self.prompt_tokens_details.as_ref().or(self.input_tokens_details.as_ref());
        let cd = self.completion_tokens_details.as_ref().or(self.output_tokens_details.as_ref());
        if self.cache_read_input_tokens.is_some() || self.cache_creation_input_tokens.is_some() {
            // Anthropic: report prompt tokens including cache, like every other path.
            let (read, created) = (self.cache_read_input_tokens.unwrap_or(0), self.cache_creation_input_tokens.unwrap_or(0));
            let input = self.input_tokens.unwrap_or(0);
            let prompt = if input + read + created == 0 { 0 } else { input + read + created };
            let completion = self.output_tokens.unwrap_or(0);
            return Usage { prompt, completion, total: prompt + completion, cache_read: read, cache_creation: created, reasoning: 0 };
        }
        let mut u = Usage {
            prompt: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            completion: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            total: self.total_tokens.unwrap_or(0),
            cache_read: pd.and_then(|d| d.cached_tokens).or(self.prompt_cache_hit_tokens).unwrap_or(0),
            cache_creation: pd.and_then(|d| d.cache_creation_input_tokens).unwrap_or(0),
            reasoning: cd.and_then(|d| d.reasoning_tokens).unwrap_or(0),
        };
        u.total = u.total.max(u.prompt + u.completion);
        u
    }
}

/// A string where one is expected, nothing (and no error) for any other JSON value: the
/// fields read for spans must never make a body unreadable for usage.
#[derive(Debug, Default)]
struct LooseStr<'a>(Option<Cow<'a, str>>);

struct LooseVisitor<'a>(std::marker::PhantomData<&'a ()>);

macro_rules! ignore_stop {
    ($($f:ident: $t:ty),*) => { $(fn $f<E: serde::de::Error>(self, _: $t) -> Result<Self::Value, E> { Ok(StopDelta(None)) })* };
}

macro_rules! ignore_scalars {
    ($($f:ident: $t:ty),*) => { $(fn $f<E: serde::de::Error>(self, _: $t) -> Result<Self::Value, E> { Ok(LooseStr(None)) })* };
}

impl<'de: 'a, 'a> Visitor<'de> for LooseVisitor<'a> {
    type Value = LooseStr<'a>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(LooseStr(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(LooseStr(Some(Cow::Owned(v.to_owned()))))
    }
    ignore_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(LooseStr(None))
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(LooseStr(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LooseStr(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(LooseStr(None))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor(std::marker::PhantomData))
    }
}

/// Anthropic `message_delta`'s `delta.stop_reason`; `delta` is a string in Responses
/// events and an object without it elsewhere: both read as nothing.
#[derive(Debug, Default)]
struct StopDelta<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for StopDelta<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = StopDelta<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut stop = None;
                while let Some(k) = map.next_key::<LooseStr<'a>>()? {
                    if k.0.as_deref() == Some("stop_reason") {
                        stop = map.next_value::<LooseStr<'a>>()?.0;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(StopDelta(stop))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(StopDelta(None))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(StopDelta(None))
            }
            ignore_stop!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(StopDelta(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Delta {
    tool_calls: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Choice<'a> {
    delta: Option<Delta>,
    message: Option<Delta>,
    #[serde(borrow)]
    finish_reason: LooseStr<'a>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ResponseItem {
    #[serde(rename = "type")]
    kind: String,
}

/// The fields of any OpenAI-family JSON body or chunk that matter here.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Body<'a> {
    model: Option<String>,
    /// The response id (`chatcmpl-…`, `msg_…`, `resp_…`).
    #[serde(borrow)]
    id: LooseStr<'a>,
    usage: Option<RawUsage>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    error: Option<serde_json::Value>,
    /// Responses API: `response.*` events wrap the response object.
    #[serde(borrow)]
    response: Option<Box<Body<'a>>>,
    /// Anthropic messages.
    #[serde(borrow)]
    stop_reason: LooseStr<'a>,
    /// Bedrock Converse.
    #[serde(rename = "stopReason", borrow)]
    converse_stop_reason: LooseStr<'a>,
    /// Anthropic `message_delta`.
    #[serde(borrow)]
    delta: StopDelta<'a>,
    /// Responses objects: `completed`, `incomplete`, `failed`.
    #[serde(borrow)]
    status: LooseStr<'a>,
    /// Responses API: an array of items; Bedrock Converse: `{message: {content: [...]}}`.
    output: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    item: Option<ResponseItem>,
    /// Anthropic `content_block_start`.
    content_block: Option<ResponseItem>,
    /// A string in Responses `error` events; the message object in Anthropic `message_start`
    /// and non-streamed messages have their fields at the top level.
    message: Option<serde_json::Value>,
    /// Anthropic non-streamed messages: `content` blocks.
    content: Option<serde_json::Value>,
}

/// What was observed of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub usage: Usage,
    pub model: Option<String>,
    /// The response id the provider gave (first seen).
    pub id: Option<String>,
    /// Why generation stopped (`stop`, `end_turn`, `tool_calls`, …; the last one seen).
    pub finish_reason: Option<String>,
    /// The answer's text, accumulated only after [`collect_text`](Self::collect_text)
    /// (routes with `logging.payloads`), up to its cap.
    pub text: Option<String>,
    text_cap: usize,
    pub has_tool_calls: bool,
    /// An error reported inside the body (e.g. `data: {"error": ...}` in a 200 stream).
    pub error: Option<String>,
    /// The protocol's end marker was seen (`[DONE]`, `response.completed`, …).
    pub done: bool,
    pub events: u64,
    /// Bytes of a partial event dropped at the end of the stream.
    pub truncated_bytes: usize,
}

impl Observation {
    /// Accumulate the answer's text (at most `cap` bytes, cut at a character boundary).
    pub fn collect_text(&mut self, cap: usize) {
        self.text = Some(String::new());
        self.text_cap = cap;
    }

    fn push_text(&mut self, s: &str) {
        let Some(t) = &mut self.text else { return };
        let room = self.text_cap.saturating_sub(t.len());
        if room >= s.len() {
            t.push_str(s);
        } else if room > 0 {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            t.push_str(&s[..end]);
        }
    }

    fn set_finish(&mut self, r: &LooseStr<'_>) {
        if let Some(r) = &r.0
            && !r.is_empty()
            && self.finish_reason.as_deref() != Some(r)
        {
            self.finish_reason = Some(r.clone().into_owned());
        }
    }

    /// A Bedrock ConverseStream event (`kind` is its `:event-type`): finish reason and text.
    pub fn converse_event(&mut self, kind: &str, payload: &serde_json::Value) {
        match kind {
            "messageStop" => {
                if let Some(r) = payload.get("stopReason").and_then(|v| v.as_str()) {
                    self.finish_reason = Some(r.to_owned());
                }
            }
            "contentBlockDelta" if self.text.is_some() => {
                if let Some(t) = payload.pointer("/delta/text").and_then(|v| v.as_str()) {
                    self.push_text(t);
                }
            }
            _ => {}
        }
    }

    fn absorb(&mut self, b: &Body<'_>) {
        if let Some(m) = &b.model
            && !m.is_empty()
        {
            self.model = Some(m.clone());
        }
        if self.id.is_none()
            && let Some(id) = &b.id.0
            && !id.is_empty()
        {
            self.id = Some(id.clone().into_owned());
        }
        if let Some(choices) = &b.choices {
            for c in choices {
                self.set_finish(&c.finish_reason);
            }
        }
        self.set_finish(&b.stop_reason);
        self.set_finish(&b.converse_stop_reason);
        if b.delta.0.is_some() {
            self.set_finish(&LooseStr(b.delta.0.clone()));
        }
        if let Some(st) = &b.status.0
            && matches!(st.as_ref(), "completed" | "incomplete" | "failed" | "cancelled")
        {
            self.set_finish(&b.status);
        }
        if let Some(u) = &b.usage {
            self.usage.merge(&u.to_usage());
        }
        if let Some(choices) = &b.choices
            && choices.iter().any(|c| c.delta.as_ref().or(c.message.as_ref()).is_some_and(|d| d.tool_calls.is_some()))
        {
            self.has_tool_calls = true;
        }
        let output_items =
            b.output.as_ref().and_then(|o| o.as_array().or_else(|| o.pointer("/message/content").and_then(|c| c.as_array())));
        if output_items.is_some_and(|o| {
            o.iter().any(|i| i.get("type").and_then(|t| t.as_str()) == Some("function_call") || i.get("toolUse").is_some())
        }) || b.item.as_ref().is_some_and(|i| i.kind == "function_call")
            || b.content_block.as_ref().is_some_and(|i| i.kind == "tool_use")
            || b.content
                .as_ref()
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.iter().any(|i| i.get("type").and_then(|t| t.as_str()) == Some("tool_use")))
        {
            self.has_tool_calls = true;
        }
        if let Some(m) = b.message.as_ref().filter(|m| m.is_object())
            && let Ok(inner) = Body::deserialize(m)
        {
            self.absorb(&inner);
        }
        if let Some(e) = &b.error
            && !e.is_null()
        {
            let msg = e.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| e.to_string());
            self.error = Some(msg);
        }
        if let Some(r) = &b.response {
            self.absorb(r);
        }
    }
}

/// Usage from any provider's usage object (OpenAI, Responses, Anthropic, Converse).
pub fn usage_of(v: &serde_json::Value) -> Usage {
    serde_json::from_value::<RawUsage>(v.clone()).map(|r| r.to_usage()).unwrap_or_default()
}

/// Observes a non-streamed JSON body with one structural scan ([`crate::scan`]): the
/// top-level `usage` object's numbers are read in place (no deserializer), `model` and `id`
/// parsed as strings; tool calls are recognised by their keys (`tool_calls` with items,
/// Converse `toolUse`, a `type` of `tool_use` or `function_call`); finish reasons from
/// `choices[].finish_reason`, `stop_reason`, `stopReason` or a Responses `status`; a
/// top-level `error` is the upstream's error.
pub fn observe_json(bytes: &[u8]) -> Observation {
    use crate::scan::{parse_at, raw_str_at, scan_keys, uint_at};
    let mut o = Observation::default();
    let mut raw = RawUsage::default();
    let mut in_usage = false;
    // Which `*_details` object of the usage the depth-3 keys belong to.
    let mut details: Option<&'static str> = None;
    let complete = scan_keys(bytes, |depth, key, at| {
        if depth == 1 {
            in_usage = key == b"usage";
            details = None;
        }
        if in_usage && depth >= 2 {
            usage_key(&mut raw, &mut details, depth, key, uint_at(bytes, at));
            return;
        }
        if !wanted(key) {
            return;
        }
        match (depth, key) {
            (1, b"model") => {
                if let Some(m) = string_at(bytes, at).filter(|m| !m.is_empty()) {
                    o.model = Some(m);
                }
            }
            (1, b"id") if o.id.is_none() && bytes.get(at) == Some(&b'"') => {
                o.id = string_at(bytes, at).filter(|m| !m.is_empty());
            }
            // Chat `choices[].finish_reason`, Anthropic `stop_reason`, Converse `stopReason`.
            (3, b"finish_reason") | (1, b"stop_reason" | b"stopReason") => {
                if let Some(r) = raw_str_at(bytes, at).filter(|r| !r.is_empty()) {
                    o.finish_reason = Some(String::from_utf8_lossy(r).into_owned());
                }
            }
            // Responses objects: the final status.
            (1, b"status") => {
                if let Some(r @ (b"completed" | b"incomplete" | b"failed" | b"cancelled")) = raw_str_at(bytes, at) {
                    o.finish_reason = Some(String::from_utf8_lossy(r).into_owned());
                }
            }
            (1, b"error") => {
                if let Some(e) = parse_at::<serde_json::Value>(bytes, at).filter(|e| !e.is_null()) {
                    let msg = e.get("message").and_then(|m| m.as_str()).map(str::to_owned).unwrap_or_else(|| e.to_string());
                    o.error = Some(msg);
                }
            }
            (_, b"tool_calls") => {
                let rest = bytes.get(at + 1..).unwrap_or_default();
                let first = rest.iter().find(|b| !b.is_ascii_whitespace());
                if bytes.get(at) == Some(&b'[') && first.is_some_and(|b| *b != b']') {
                    o.has_tool_calls = true;
                }
            }
            (_, b"toolUse") => o.has_tool_calls = true,
            (_, b"type") => {
                if matches!(raw_str_at(bytes, at), Some(b"tool_use" | b"function_call")) {
                    o.has_tool_calls = true;
                }
            }
            _ => {}
        }
    });
    o.usage.merge(&raw.to_usage());
    o.done = complete;
    o
}

/// Bit `n` set: a key of `n` bytes starting with this byte is one [`observe_json`] reads
/// outside `usage` (`id`, `type`, `toolUse`, `tool_calls`, `model`, `error`, `status`,
/// `stopReason`, `stop_reason`, `finish_reason`). One lookup turns away the other keys
/// (most of them) before any comparison.
static WANTED: [u16; 256] = {
    let mut t = [0u16; 256];
    t[b'i' as usize] = 1 << 2;
    t[b't' as usize] = 1 << 4 | 1 << 7 | 1 << 10;
    t[b'm' as usize] = 1 << 5;
    t[b'e' as usize] = 1 << 5;
    t[b's' as usize] = 1 << 6 | 1 << 10 | 1 << 11;
    t[b'f' as usize] = 1 << 13;
    t
};

fn wanted(key: &[u8]) -> bool {
    key.len() < 16 && key.first().is_some_and(|&f| WANTED[f as usize] >> key.len() & 1 == 1)
}

/// The JSON string value at `at`, decoded as serde would (None for anything else): plain
/// strings (no escape, no control character) are copied as they are, the others parsed.
fn string_at(bytes: &[u8], at: usize) -> Option<String> {
    let raw = crate::scan::raw_str_at(bytes, at)?;
    if raw.iter().all(|&b| b >= 0x20 && b != b'\\') {
        return std::str::from_utf8(raw).ok().map(str::to_owned);
    }
    crate::scan::parse_at::<String>(bytes, at)
}

/// One key inside a top-level `usage` object (depth 2), or inside one of its
/// `*_tokens_details` objects (depth 3); `n` is the value when it is an unsigned integer.
pub(crate) fn usage_key(raw: &mut RawUsage, details: &mut Option<&'static str>, depth: usize, key: &[u8], n: Option<u64>) {
    if depth == 2 {
        *details = match key {
            b"prompt_tokens_details" => Some("prompt"),
            b"input_tokens_details" => Some("input"),
            b"completion_tokens_details" => Some("completion"),
            b"output_tokens_details" => Some("output"),
            _ => None,
        };
        let slot = match key {
            b"prompt_tokens" => &mut raw.prompt_tokens,
            b"completion_tokens" => &mut raw.completion_tokens,
            b"input_tokens" => &mut raw.input_tokens,
            b"output_tokens" => &mut raw.output_tokens,
            b"total_tokens" => &mut raw.total_tokens,
            b"prompt_cache_hit_tokens" => &mut raw.prompt_cache_hit_tokens,
            b"cache_read_input_tokens" => &mut raw.cache_read_input_tokens,
            b"cache_creation_input_tokens" => &mut raw.cache_creation_input_tokens,
            b"inputTokens" => &mut raw.converse_input,
            b"outputTokens" => &mut raw.converse_output,
            b"totalTokens" => &mut raw.converse_total,
            b"cacheReadInputTokens" => &mut raw.converse_cache_read,
            b"cacheWriteInputTokens" => &mut raw.converse_cache_write,
            _ => return,
        };
        if n.is_some() {
            *slot = n;
        }
        return;
    }
    if depth != 3 {
        return;
    }
    let d = match *details {
        Some("prompt") => raw.prompt_tokens_details.get_or_insert_with(Details::default),
        Some("input") => raw.input_tokens_details.get_or_insert_with(Details::default),
        Some("completion") => raw.completion_tokens_details.get_or_insert_with(Details::default),
        Some("output") => raw.output_tokens_details.get_or_insert_with(Details::default),
        _ => return,
    };
    let slot = match key {
        b"cached_tokens" => &mut d.cached_tokens,
        b"cache_creation_input_tokens" => &mut d.cache_creation_input_tokens,
        b"reasoning_tokens" => &mut d.reasoning_tokens,
        _ => return,
    };
    if n.is_some() {
        *slot = n;
    }
}

/// The text of a whole answer in any protocol (OpenAI chat `choices[].message.content`,
/// Anthropic `content[].text`, Responses `output[].content[].text`, Converse
/// `output.message.content[].text`), at most `cap` bytes.
pub fn answer_text(bytes: &[u8], cap: usize) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut o = Observation::default();
    o.collect_text(cap);
    let texts = |blocks: Option<&serde_json::Value>, o: &mut Observation| {
        for b in blocks.and_then(|b| b.as_array()).into_iter().flatten() {
            if let Some(t) = b.get("text").and_then(|t| t.as_str()) {
                o.push_text(t);
            }
        }
    };
    for c in v.get("choices").and_then(|c| c.as_array()).into_iter().flatten() {
        match c.pointer("/message/content") {
            Some(serde_json::Value::String(s)) => o.push_text(s),
            other => texts(other, &mut o),
        }
    }
    texts(v.get("content"), &mut o);
    match v.get("output") {
        Some(serde_json::Value::Array(items)) => items.iter().for_each(|i| texts(i.get("content"), &mut o)),
        Some(out) => texts(out.pointer("/message/content"), &mut o),
        None => {}
    }
    o.text
}

/// What `logging.payloads` records of a request (APISIX's `llm_request.messages`): the
/// `messages` of chat, Anthropic and Converse requests, the `input` of Responses and
/// embeddings requests; Null for anything else.
pub fn request_messages<B: Fields + ?Sized>(proto: Protocol, body: &B) -> serde_json::Value {
    let key = match proto {
        Protocol::OpenAiResponses | Protocol::OpenAiEmbeddings => "input",
        Protocol::Passthrough => return serde_json::Value::Null,
        _ => "messages",
    };
    body.field(key).map(Json::to_value).unwrap_or(serde_json::Value::Null)
}

/// What a client's request says about itself, in its own protocol (before any
/// conversion): for the access log and spans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Tools declared (OpenAI and Anthropic `tools`, Converse `toolConfig.tools`).
    pub tool_count: usize,
    /// The end user (OpenAI `safety_identifier` or `user`, Anthropic `metadata.user_id`).
    pub end_user: String,
}

pub fn request_facts<B: Fields + ?Sized>(proto: Protocol, body: &B) -> RequestFacts {
    let tools = match proto {
        Protocol::BedrockConverse => body.field("toolConfig").and_then(|c| c.get("tools")),
        _ => body.field("tools"),
    };
    let user = match proto {
        Protocol::AnthropicMessages | Protocol::AnthropicCountTokens => body.field("metadata").and_then(|m| m.get("user_id")),
        Protocol::BedrockConverse => None,
        _ => body.field("safety_identifier").or_else(|| body.field("user")),
    };
    RequestFacts {
        tool_count: tools.and_then(Json::array_len).unwrap_or(0),
        end_user: user.and_then(Json::as_str).map(Cow::into_owned).unwrap_or_default(),
    }
}

/// Observes an SSE stream as it passes.
#[derive(Debug)]
pub struct StreamObserver {
    proto: Protocol,
    parser: sse::Parser,
    events: Vec<sse::Event>,
    pub obs: Observation,
}

impl StreamObserver {
    pub fn new(proto: Protocol) -> StreamObserver {
        StreamObserver::with_limit(proto, sse::DEFAULT_MAX_EVENT)
    }

    /// An observer whose parser gives up on events larger than `max_event` bytes.
    pub fn with_limit(proto: Protocol, max_event: usize) -> StreamObserver {
        StreamObserver { proto, parser: sse::Parser::with_limit(max_event), events: Vec::new(), obs: Observation::default() }
    }

    /// Stream offset just after the last whole event (see [`sse::Parser::boundary`]).
    pub fn boundary(&self) -> u64 {
        self.parser.boundary()
    }

    /// An event grew past the cap: nothing after it is observed.
    pub fn overflowed(&self) -> bool {
        self.parser.overflowed()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.parser.push(chunk, &mut self.events);
        self.drain();
    }

    /// Like [`feed`](Self::feed), also handing each parsed event to `f` (for converters),
    /// so the stream is parsed once.
    pub fn feed_with(&mut self, chunk: &[u8], mut f: impl FnMut(&sse::Event)) {
        self.parser.push(chunk, &mut self.events);
        self.events.iter().for_each(&mut f);
        self.drain();
    }

    /// Like [`finish`](Self::finish), handing the last events to `f` too.
    pub fn finish_with(&mut self, mut f: impl FnMut(&sse::Event)) -> &Observation {
        self.obs.truncated_bytes = self.parser.finish(&mut self.events);
        self.events.iter().for_each(&mut f);
        self.drain();
        &self.obs
    }

    pub fn finish(&mut self) -> &Observation {
        self.obs.truncated_bytes = self.parser.finish(&mut self.events);
        self.drain();
        &self.obs
    }

    fn drain(&mut self) {
        for ev in self.events.drain(..) {
            self.obs.events += 1;
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                self.obs.done = true;
                continue;
            }
            let Ok(b) = serde_json::from_str::<Body>(data) else { continue };
            self.obs.absorb(&b);
            let kind = if ev.event.is_empty() { b.kind.as_deref().unwrap_or_default() } else { ev.event.as_str() };
            if self.obs.text.is_some() {
                stream_text(&mut self.obs, kind, data);
            }
            match (self.proto, kind) {
                (Protocol::OpenAiResponses, "response.completed" | "response.incomplete") => self.obs.done = true,
                (Protocol::OpenAiResponses, "response.failed") => {
                    self.obs.done = true;
                    let err = b.response.as_ref().and_then(|r| r.error.as_ref()).and_then(|e| e.get("message")).and_then(|m| m.as_str());
                    self.obs.error = Some(err.unwrap_or("response failed").to_owned());
                }
                (Protocol::AnthropicMessages, "message_stop") => self.obs.done = true,
                (_, "error") => {
                    let msg = b.message.as_ref().and_then(|m| m.as_str()).map(str::to_owned);
                    self.obs.error = Some(msg.or_else(|| self.obs.error.clone()).unwrap_or_else(|| "stream error".into()));
                }
                _ => {}
            }
        }
    }
}

/// The text carried by one streamed event (parsed again only when text is collected).
fn stream_text(obs: &mut Observation, kind: &str, data: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else { return };
    match kind {
        "response.output_text.delta" => {
            if let Some(t) = v.get("delta").and_then(|d| d.as_str()) {
                obs.push_text(t);
            }
        }
        "content_block_delta" => {
            if let Some(t) = v.pointer("/delta/text").and_then(|d| d.as_str()) {
                obs.push_text(t);
            }
        }
        _ => {
            for c in v.get("choices").and_then(|c| c.as_array()).into_iter().flatten() {
                if let Some(t) = c.pointer("/delta/content").and_then(|d| d.as_str()) {
                    obs.push_text(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(proto: Protocol, text: &str) -> Observation {
        let mut s = StreamObserver::new(proto);
        for c in text.as_bytes().chunks(7) {
            s.feed(c);
        }
        s.finish().clone()
    }

    #[test]
    fn chat_stream_usage_tools_and_done() {
        let t = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
                 : OPENROUTER PROCESSING\n\n\
                 data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\"}]}}]}\n\n\
                 data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15,\
                 \"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n\
                 data: [DONE]\n\n";
        let o = stream(Protocol::OpenAiChat, t);
        assert_eq!(o.usage, Usage { prompt: 10, completion: 5, total: 15, cache_read: 4, cache_creation: 0, reasoning: 2 });
        assert_eq!(o.model.as_deref(), Some("gpt-4o"));
        assert!(o.has_tool_calls && o.done && o.error.is_none());
    }

    #[test]
    fn deepseek_cache_hits_and_missing_total() {
        let o = observe_json(br#"{"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_cache_hit_tokens":5}}"#);
        assert_eq!((o.usage.total, o.usage.cache_read), (10, 5));
    }

    #[test]
    fn responses_stream() {
        let t = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\"}}\n\n\
                 event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"item\":{\"type\":\"function_call\"}}\n\n\
                 event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":50,\
                 \"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":12,\"output_tokens_details\":{\"reasoning_tokens\":3},\"total_tokens\":62}}}\n\n";
        let o = stream(Protocol::OpenAiResponses, t);
        assert_eq!(o.usage, Usage { prompt: 50, completion: 12, total: 62, cache_read: 1, cache_creation: 0, reasoning: 3 });
        assert!(o.has_tool_calls && o.done);
        let f =
            stream(Protocol::OpenAiResponses, "data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"message\":\"boom\"}}}\n\n");
        assert_eq!(f.error.as_deref(), Some("boom"));
    }

    #[test]
    fn anthropic_native_stream_and_message() {
        let t = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\
                 \"usage\":{\"input_tokens\":50,\"output_tokens\":1,\"cache_read_input_tokens\":200,\"cache_creation_input_tokens\":100}}}\n\n\
                 event: ping\ndata: {\"type\":\"ping\"}\n\n\
                 event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n\
                 event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":30}}\n\n\
                 event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let o = stream(Protocol::AnthropicMessages, t);
        assert_eq!(o.usage, Usage { prompt: 350, completion: 30, total: 380, cache_read: 200, cache_creation: 100, reasoning: 0 });
        assert_eq!(o.model.as_deref(), Some("claude-sonnet-4-5"));
        assert!(o.has_tool_calls && o.done);
        let e = stream(
            Protocol::AnthropicMessages,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        assert_eq!(e.error.as_deref(), Some("Overloaded"));
        let m = observe_json(br#"{"id":"msg_1","type":"message","model":"claude","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":19,"output_tokens":11}}"#);
        assert_eq!((m.usage.prompt, m.usage.completion, m.usage.total), (19, 11, 30));
    }

    #[test]
    fn converse_non_stream() {
        let o = observe_json(br#"{"output":{"message":{"role":"assistant","content":[{"text":"x"},{"toolUse":{"toolUseId":"t","name":"f","input":{}}}]}},
            "stopReason":"tool_use","usage":{"inputTokens":14,"outputTokens":9,"totalTokens":23,"cacheWriteInputTokens":3},"metrics":{"latencyMs":1}}"#);
        assert_eq!(o.usage, Usage { prompt: 17, completion: 9, total: 26, cache_read: 0, cache_creation: 3, reasoning: 0 });
        assert!(o.has_tool_calls);
    }

    #[test]
    fn errors_inside_a_200_stream_and_truncation() {
        let o = stream(Protocol::OpenAiChat, "data: {\"error\":{\"message\":\"overloaded\"}}\n\ndata: {\"choi");
        assert_eq!(o.error.as_deref(), Some("overloaded"));
        assert!(!o.done);
        assert_eq!(o.truncated_bytes, "data: {\"choi".len());
    }

    #[test]
    fn request_facts_per_protocol() {
        use serde_json::json;
        let f = request_facts(Protocol::OpenAiChat, &json!({"tools": [{}, {}], "user": "u1"}));
        assert_eq!((f.tool_count, f.end_user.as_str()), (2, "u1"));
        let f = request_facts(Protocol::OpenAiResponses, &json!({"tools": [{}], "safety_identifier": "s", "user": "u"}));
        assert_eq!((f.tool_count, f.end_user.as_str()), (1, "s"));
        let f = request_facts(Protocol::AnthropicMessages, &json!({"tools": [{}], "metadata": {"user_id": "a1"}, "user": "no"}));
        assert_eq!((f.tool_count, f.end_user.as_str()), (1, "a1"));
        let f = request_facts(Protocol::BedrockConverse, &json!({"toolConfig": {"tools": [{}, {}, {}]}}));
        assert_eq!((f.tool_count, f.end_user.as_str()), (3, ""));
    }

    /// The scan sees what a full parse would, and nothing inside strings.
    #[test]
    fn whole_bodies_are_observed_by_scanning() {
        let o = observe_json(br#"{"id":"c","model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant",
            "content":""usage": {"prompt_tokens": 999}, "tool_calls": [1], "type": "tool_use"","tool_calls":[]},
            "finish_reason":"stop"}],"usage":{"prompt_tokens":23,"completion_tokens":8,"total_tokens":31,"prompt_tokens_details":{"cached_tokens":3}}}"#);
        assert_eq!(o.usage, Usage { prompt: 23, completion: 8, total: 31, cache_read: 3, cache_creation: 0, reasoning: 0 });
        assert_eq!(o.model.as_deref(), Some("gpt-4o"));
        assert!(!o.has_tool_calls && o.done && o.error.is_none());
        let r = observe_json(br#"{"object":"response","model":"gpt-4.1","output":[{"type":"function_call","name":"f"}],"usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}"#);
        assert!(r.has_tool_calls);
        assert_eq!((r.usage.prompt, r.usage.completion), (5, 2));
        let e = observe_json(br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#);
        assert_eq!(e.error.as_deref(), Some("Rate limit reached"));
        let nested = observe_json(br#"{"data":[{"usage":{"prompt_tokens":9}}],"usage":{"prompt_tokens":2,"total_tokens":2}}"#);
        assert_eq!((nested.usage.prompt, nested.usage.total), (2, 2), "only the top-level usage counts");
    }

    /// The fast path gives the oracle's observation (today's scanner before it, 2cc695b) for
    /// every document of the corpus, every prefix of each (cut answers), and bytes changed
    /// here and there (quotes, brackets, backslashes, invalid UTF-8).
    #[test]
    fn observations_are_the_oracles() {
        let check = |d: &[u8]| assert_eq!(observe_json(d), oracle::observe_json(d), "{}", String::from_utf8_lossy(d));
        let mut docs = crate::corpus::documents();
        docs.extend(crate::corpus::TRICKY.iter().map(|t| t.as_bytes().to_vec()));
        assert!(docs.len() > 300, "corpus: {}", docs.len());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for d in &docs {
            check(d);
            let step = (d.len() / 200).max(1);
            for cut in (0..d.len()).step_by(step) {
                check(&d[..cut]);
            }
            for _ in 0..8 {
                let mut m = d.clone();
                if m.is_empty() {
                    break;
                }
                let at = next() as usize % m.len();
                m[at] = [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', 0xff, b' '][next() as usize % 10];
                check(&m);
            }
        }
    }

    #[test]
    fn non_stream_bodies() {
        let o = observe_json(br#"{"model":"m","choices":[{"message":{"content":"x","tool_calls":[{}]}}],"usage":{"prompt_tokens":23,"completion_tokens":8,"total_tokens":31}}"#);
        assert_eq!((o.usage.prompt, o.usage.completion, o.usage.total), (23, 8, 31));
        assert!(o.has_tool_calls);
        let e = observe_json(br#"{"object":"list","data":[],"usage":{"prompt_tokens":2,"total_tokens":2}}"#);
        assert_eq!((e.usage.prompt, e.usage.total), (2, 2));
        assert_eq!(observe_json(b"not json"), Observation::default());
    }
}

#[cfg(test)]
mod span_facts {
    use super::*;

    fn stream(proto: Protocol, text: &str, collect: bool) -> Observation {
        let mut s = StreamObserver::new(proto);
        if collect {
            s.obs.collect_text(1 << 20);
        }
        for c in text.as_bytes().chunks(5) {
            s.feed(c);
        }
        s.finish().clone()
    }

    #[test]
    fn ids_finish_reasons_and_text_of_streams() {
        let chat = "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"1+1 \"},\"finish_reason\":null}]}\n\n\
                    data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"delta\":{\"content\":\"= 2 \\u00e9\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let o = stream(Protocol::OpenAiChat, chat, true);
        assert_eq!((o.id.as_deref(), o.finish_reason.as_deref(), o.text.as_deref()), (Some("chatcmpl-1"), Some("stop"), Some("1+1 = 2 é")));
        assert_eq!(stream(Protocol::OpenAiChat, chat, false).text, None, "no text unless asked");
        let an = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"c\",\"stop_reason\":null}}\n\n\
                  event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                  event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n\
                  event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let o = stream(Protocol::AnthropicMessages, an, true);
        assert_eq!((o.id.as_deref(), o.finish_reason.as_deref(), o.text.as_deref()), (Some("msg_1"), Some("end_turn"), Some("Hi")));
        assert_eq!(o.usage.completion, 3);
        let resp = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n\
                    event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\n\
                    event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":2,\"output_tokens\":1}}}\n\n";
        let o = stream(Protocol::OpenAiResponses, resp, true);
        assert_eq!((o.id.as_deref(), o.finish_reason.as_deref(), o.text.as_deref()), (Some("resp_1"), Some("completed"), Some("ok")));
        assert_eq!(o.usage.prompt, 2, "a string delta does not hide the usage");
    }

    #[test]
    fn whole_answers_and_caps() {
        let o = observe_json(br#"{"id":"chatcmpl-9","choices":[{"message":{"content":"x"},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
        assert_eq!((o.id.as_deref(), o.finish_reason.as_deref(), o.usage.total), (Some("chatcmpl-9"), Some("length"), 2));
        let o = observe_json(
            br#"{"id":"msg_2","type":"message","stop_reason":"tool_use","content":[],"usage":{"input_tokens":1,"output_tokens":1}}"#,
        );
        assert_eq!((o.id.as_deref(), o.finish_reason.as_deref()), (Some("msg_2"), Some("tool_use")));
        let o = observe_json(
            br#"{"output":{"message":{"content":[{"text":"hey"}]}},"stopReason":"end_turn","usage":{"inputTokens":1,"outputTokens":2}}"#,
        );
        assert_eq!((o.finish_reason.as_deref(), o.usage.completion), (Some("end_turn"), 2));
        let o = observe_json(br#"{"id":7,"status":500,"error":{"message":"boom"}}"#);
        assert_eq!((o.id, o.error.as_deref()), (None, Some("boom")), "odd types never break the read");
        assert_eq!(
            answer_text("{\"choices\":[{\"message\":{\"content\":\"héllo\"}}]}".as_bytes(), 2).as_deref(),
            Some("h"),
            "cut at a char boundary"
        );
        assert_eq!(
            answer_text(br#"{"content":[{"type":"text","text":"a"},{"type":"tool_use"},{"type":"text","text":"b"}]}"#, 99).as_deref(),
            Some("ab")
        );
        assert_eq!(
            answer_text(br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"r"}]}]}"#, 99).as_deref(),
            Some("r")
        );
        assert_eq!(answer_text(br#"{"output":{"message":{"content":[{"text":"c"}]}}}"#, 99).as_deref(), Some("c"));
        let mut o = Observation::default();
        o.collect_text(99);
        o.converse_event("contentBlockDelta", &serde_json::json!({"delta": {"text": "t"}}));
        o.converse_event("messageStop", &serde_json::json!({"stopReason": "max_tokens"}));
        assert_eq!((o.text.as_deref(), o.finish_reason.as_deref()), (Some("t"), Some("max_tokens")));
        let req = serde_json::json!({"messages": [{"role": "user", "content": "q"}], "input": "i"});
        assert_eq!(request_messages(Protocol::OpenAiChat, &req)[0]["content"], "q");
        assert_eq!(request_messages(Protocol::OpenAiResponses, &req), "i");
    }
}
