//! One streamed response: upstream framing (SSE or AWS event-stream), observation (usage,
//! tool calls, end marker, errors) and, when the client speaks another protocol, the
//! conversion chain. OpenAI chunk JSON is the common currency:
//!
//! ```text
//! Converse event-stream ──StreamToOpenAi──▶ OpenAI chunks ──▶ OpenAI SSE (OpenAI client)
//!                                                        └──▶ StreamConverter (Anthropic client)
//! OpenAI SSE ───────────────────────────────────────────────▶ StreamConverter (Anthropic client)
//! same protocol on both sides: bytes forwarded untouched, observed on the side
//! ```

use serde_json::json;

use crate::anthropic::{StreamConverter, ToolNames};
use crate::bedrock::StreamToOpenAi;
use crate::eventstream::{self, Message};
use crate::protocol::Protocol;
use crate::usage::{Observation, StreamObserver, usage_of};

enum Out {
    /// Forward upstream bytes unchanged.
    Raw,
    /// OpenAI SSE built from converted chunks.
    OpenAiSse,
    Anthropic(Box<StreamConverter>),
}

struct EventStream {
    decoder: eventstream::Decoder,
    msgs: Vec<Message>,
    to_openai: Option<StreamToOpenAi>,
    obs: Observation,
}

enum Upstream {
    Sse(Box<StreamObserver>),
    EventStream(Box<EventStream>),
}

pub struct Pipe {
    upstream_proto: Protocol,
    client: Protocol,
    upstream: Upstream,
    out: Out,
}

impl Pipe {
    /// `upstream` is what the provider streams, `client` what the client expects.
    pub fn new(upstream: Protocol, client: Protocol, names: ToolNames, model: &str, id: &str) -> Pipe {
        let out = if upstream == client {
            Out::Raw
        } else {
            match client {
                Protocol::AnthropicMessages => Out::Anthropic(Box::new(StreamConverter::new(names, model))),
                Protocol::OpenAiChat => Out::OpenAiSse,
                _ => Out::Raw,
            }
        };
        let converting = !matches!(out, Out::Raw);
        if upstream == Protocol::BedrockConverse {
            let es = EventStream {
                decoder: eventstream::Decoder::new(),
                msgs: Vec::new(),
                to_openai: converting.then(|| StreamToOpenAi::new(id, model)),
                obs: Observation::default(),
            };
            Pipe { upstream_proto: upstream, client, upstream: Upstream::EventStream(Box::new(es)), out }
        } else {
            Pipe { upstream_proto: upstream, client, upstream: Upstream::Sse(Box::new(StreamObserver::new(upstream))), out }
        }
    }

    pub fn obs(&self) -> &Observation {
        match &self.upstream {
            Upstream::Sse(o) => &o.obs,
            Upstream::EventStream(es) => &es.obs,
        }
    }

    pub fn converting(&self) -> bool {
        !matches!(self.out, Out::Raw)
    }

    /// Whether the upstream protocol has an end marker to check for (passthrough SSE of
    /// unknown shape has none).
    pub fn expects_end_marker(&self) -> bool {
        matches!(
            self.upstream_proto,
            Protocol::OpenAiChat | Protocol::OpenAiResponses | Protocol::AnthropicMessages | Protocol::BedrockConverse
        )
    }

    /// Whether a stream that ended now would lack its protocol's end marker.
    pub fn missing_end(&self) -> bool {
        let o = self.obs();
        !self.converting() && !o.done && o.error.is_none()
    }

    /// Feeds upstream bytes. None: forward them as they are; Some: send these instead
    /// (possibly empty: nothing to send yet).
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let es = match &mut self.upstream {
            Upstream::Sse(obs) => {
                return match &mut self.out {
                    Out::Anthropic(c) => {
                        let mut s = String::new();
                        obs.feed_with(chunk, |ev| c.push(&ev.data, &mut s));
                        Some(s.into_bytes())
                    }
                    _ => {
                        obs.feed(chunk);
                        None
                    }
                };
            }
            Upstream::EventStream(es) => es,
        };
        if let Err(e) = es.decoder.push(chunk, &mut es.msgs) {
            es.obs.error = Some(e.to_string());
            let msg = format!("upstream event stream is corrupt: {e}");
            return Some(self.fail(502, "upstream_stream_corrupt", &msg));
        }
        let msgs: Vec<Message> = es.msgs.drain(..).collect();
        let mut chunks = Vec::new();
        for m in &msgs {
            observe_converse(&mut es.obs, m);
            if let Some(t) = &mut es.to_openai {
                t.push(m, &mut chunks);
            }
        }
        self.emit(chunks)
    }

    fn emit(&mut self, chunks: Vec<String>) -> Option<Vec<u8>> {
        match &mut self.out {
            Out::Raw => None,
            Out::OpenAiSse => Some(chunks.iter().flat_map(|c| format!("data: {c}\n\n").into_bytes()).collect()),
            Out::Anthropic(conv) => {
                let mut s = String::new();
                chunks.iter().for_each(|c| conv.push(c, &mut s));
                Some(s.into_bytes())
            }
        }
    }

    /// At the end of the upstream body: closing events of a converting pipe.
    pub fn finish(&mut self) -> Vec<u8> {
        let es = match &mut self.upstream {
            Upstream::Sse(obs) => {
                return match &mut self.out {
                    Out::Anthropic(c) => {
                        let mut s = String::new();
                        obs.finish_with(|ev| c.push(&ev.data, &mut s));
                        c.finish(&mut s);
                        s.into_bytes()
                    }
                    _ => {
                        obs.finish();
                        Vec::new()
                    }
                };
            }
            Upstream::EventStream(es) => es,
        };
        es.obs.truncated_bytes = es.decoder.pending();
        let mut chunks = Vec::new();
        if let Some(t) = &mut es.to_openai {
            t.finish(&mut chunks);
        }
        let mut out = self.emit(chunks).unwrap_or_default();
        if let Out::Anthropic(c) = &mut self.out {
            let mut s = String::new();
            c.finish(&mut s);
            out.extend(s.into_bytes());
        }
        out
    }

    /// Ends the stream with an error event in the client's protocol.
    pub fn fail(&mut self, status: u16, code: &str, message: &str) -> Vec<u8> {
        match &mut self.out {
            Out::Anthropic(c) => {
                let mut s = String::new();
                c.fail(status, message, &mut s);
                s.into_bytes()
            }
            Out::OpenAiSse => terminal_event(Protocol::OpenAiChat, code, message),
            Out::Raw => terminal_event(self.client, code, message),
        }
    }
}

/// What a ConverseStream message says about usage, tools, the end and errors.
fn observe_converse(obs: &mut Observation, m: &Message) {
    obs.events += 1;
    let payload: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
    if m.message_type() != "event" {
        let msg = payload.get("message").and_then(|v| v.as_str()).unwrap_or("Bedrock stream error");
        obs.error = Some(format!("{}: {msg}", m.kind()));
        return;
    }
    match m.kind() {
        "metadata" => {
            if let Some(u) = payload.get("usage") {
                obs.usage.merge(&usage_of(u));
            }
            obs.done = true;
        }
        "contentBlockStart" if payload.pointer("/start/toolUse").is_some() => obs.has_tool_calls = true,
        "messageStop" if payload.get("stopReason").and_then(|v| v.as_str()) == Some("tool_use") => obs.has_tool_calls = true,
        _ => {}
    }
}

/// The error event that ends a broken stream, in the client's protocol.
pub fn terminal_event(proto: Protocol, code: &str, message: &str) -> Vec<u8> {
    match proto {
        Protocol::OpenAiResponses => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "code": code, "message": message, "param": null, "sequence_number": 0})
        )
        .into_bytes(),
        Protocol::AnthropicMessages => {
            format!("event: error\ndata: {}\n\n", json!({"type": "error", "error": {"type": "api_error", "message": message}})).into_bytes()
        }
        Protocol::BedrockConverse => eventstream::exception("internalServerException", message),
        _ => format!("data: {}\n\n", json!({"error": {"message": message, "type": "api_error", "code": code}})).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{Decoder, event};

    fn converse_stream() -> Vec<u8> {
        let mut b = event("messageStart", &json!({"role": "assistant"}));
        b.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "1+1 = 2."}})));
        b.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
        b.extend(event(
            "metadata",
            &json!({"usage": {"inputTokens": 14, "outputTokens": 9, "totalTokens": 23, "cacheReadInputTokens": 2}}),
        ));
        b
    }

    fn run(p: &mut Pipe, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in bytes.chunks(17) {
            match p.push(c) {
                None => out.extend_from_slice(c),
                Some(b) => out.extend(b),
            }
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn converse_passthrough_is_observed_and_untouched() {
        let bytes = converse_stream();
        let mut p = Pipe::new(Protocol::BedrockConverse, Protocol::BedrockConverse, ToolNames::default(), "m", "id");
        assert_eq!(run(&mut p, &bytes), bytes);
        let o = p.obs();
        assert!(o.done && !p.missing_end());
        assert_eq!((o.usage.prompt, o.usage.completion, o.usage.total, o.usage.cache_read), (16, 9, 25, 2));
        // A broken raw Converse stream ends with an exception frame boto3 understands.
        let mut msgs = Vec::new();
        Decoder::new().push(&p.fail(502, "x", "boom"), &mut msgs).unwrap();
        assert_eq!((msgs[0].message_type(), msgs[0].kind()), ("exception", "internalServerException"));
    }

    #[test]
    fn converse_to_openai_and_anthropic_clients() {
        let bytes = converse_stream();
        let mut p = Pipe::new(Protocol::BedrockConverse, Protocol::OpenAiChat, ToolNames::default(), "m", "chatcmpl-x");
        let text = String::from_utf8(run(&mut p, &bytes)).unwrap();
        assert!(text.starts_with("data: {") && text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains("\"content\":\"1+1 = 2.\"") && text.contains("\"total_tokens\":25"), "{text}");
        let mut p = Pipe::new(Protocol::BedrockConverse, Protocol::AnthropicMessages, ToolNames::default(), "m", "msg_x");
        let text = String::from_utf8(run(&mut p, &bytes)).unwrap();
        assert!(
            text.starts_with("event: message_start") && text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{text}"
        );
        assert!(text.contains("\"text\":\"1+1 = 2.\""), "{text}");
        // Cut before metadata: OpenAI clients get an error chunk.
        let cut = &bytes[..bytes.len() - 30];
        let mut p = Pipe::new(Protocol::BedrockConverse, Protocol::OpenAiChat, ToolNames::default(), "m", "x");
        let text = String::from_utf8(run(&mut p, cut)).unwrap();
        assert!(text.contains("before its metadata event"), "{text}");
    }

    #[test]
    fn corrupt_event_stream_fails_in_the_clients_protocol() {
        let mut bytes = converse_stream();
        let n = bytes.len();
        bytes[n - 5] ^= 0xFF;
        let mut p = Pipe::new(Protocol::BedrockConverse, Protocol::OpenAiChat, ToolNames::default(), "m", "x");
        let text = String::from_utf8(run(&mut p, &bytes)).unwrap();
        assert!(text.contains("CRC"), "{text}");
        assert!(p.obs().error.is_some());
    }
}
