//! One streamed response: upstream framing (SSE or AWS event-stream), observation (usage,
//! tool calls, end marker, errors) and, when the client speaks another protocol, the
//! conversion chain. OpenAI chunk JSON is the common currency:
//!
//! ```text
//! Converse event-stream ──StreamToOpenAi──▶ OpenAI chunks ──▶ OpenAI SSE (OpenAI client)
//!                                                        └──▶ StreamConverter (Anthropic client)
//! OpenAI SSE ───────────────────────────────────────────────▶ StreamConverter (Anthropic client)
//! Anthropic SSE ──openai_to_anthropic::StreamToOpenAi──▶ OpenAI chunks ──▶ OpenAI SSE (OpenAI client)
//! same protocol on both sides: bytes forwarded untouched, observed on the side
//! ```
//!
//! Observation always reads the *upstream* protocol (usage, tool calls, end marker), so
//! the numbers are the same whatever the client receives.
//!
//! Whatever the mode, the client only ever receives whole events (SSE events or
//! event-stream frames): untouched bytes are forwarded up to the last event boundary and
//! a partial event is held back until its end arrives. So a stream that breaks mid-event
//! ends with every complete event, then exactly one terminal error in the client's
//! protocol ([`crate::envelope::stream`]), never half an event glued to an error.

use bytes::Bytes;

use crate::anthropic::{StreamConverter, ToolNames};
use crate::bedrock::StreamToOpenAi;
use crate::envelope;
use crate::eventstream::{self, Message};
use crate::openai_to_anthropic;
use crate::protocol::Protocol;
use crate::usage::{Observation, StreamObserver, usage_of};

enum Out {
    /// Forward upstream bytes unchanged (whole events only).
    Raw,
    /// OpenAI SSE built from converted chunks.
    OpenAiSse,
    Anthropic(Box<StreamConverter>),
    /// Anthropic upstream, OpenAI chat client: chunks built from Anthropic events.
    FromAnthropic(Box<openai_to_anthropic::StreamToOpenAi>),
}

/// OpenAI SSE framing of converted chunks (`"[DONE]"` included by the converters).
fn sse_of(chunks: &[String]) -> Bytes {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len() + 8).sum());
    for c in chunks {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
    Bytes::from(out)
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

/// What to do with one upstream chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes to the client (whole events; a zero-copy slice of the input when
    /// nothing had to be held back).
    Send(Bytes),
    /// Nothing to send yet (an event is still incomplete).
    Hold,
    /// The stream is broken beyond repair (a corrupt frame, an event over the cap): send
    /// these bytes (the whole events before the fault, then one terminal error) and end.
    End(Bytes, Ending),
}

/// How a stream ended, for the completion record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The upstream stopped before its protocol's end marker.
    Truncated,
    /// The upstream reported an error inside the stream (forwarded or converted).
    UpstreamError(String),
    /// The upstream sent bytes that cannot be framed (corrupt frame, event over the cap).
    Corrupt(String),
}

pub struct Pipe {
    upstream_proto: Protocol,
    client: Protocol,
    upstream: Upstream,
    out: Out,
    /// Stream offset up to which raw bytes went to the client.
    sent: u64,
    /// Raw bytes received but not yet sent (a partial event).
    held: Vec<u8>,
    max_event: usize,
    ended: bool,
}

impl Pipe {
    /// `upstream` is what the provider streams, `client` what the client expects;
    /// `max_event` caps one event (larger ones end the stream with an error).
    /// `include_usage`: an OpenAI client asked for the usage chunk (`stream_options`); it
    /// matters when the upstream is Anthropic (other upstreams send it when asked).
    pub fn new(
        upstream: Protocol,
        client: Protocol,
        names: ToolNames,
        model: &str,
        id: &str,
        max_event: usize,
        include_usage: bool,
    ) -> Pipe {
        let out = if upstream == client {
            Out::Raw
        } else {
            match (upstream, client) {
                (_, Protocol::AnthropicMessages) => Out::Anthropic(Box::new(StreamConverter::new(names, model))),
                (Protocol::AnthropicMessages, Protocol::OpenAiChat) => {
                    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    Out::FromAnthropic(Box::new(openai_to_anthropic::StreamToOpenAi::new(names, include_usage, created, model)))
                }
                (_, Protocol::OpenAiChat) => Out::OpenAiSse,
                _ => Out::Raw,
            }
        };
        let converting = !matches!(out, Out::Raw);
        let upstream_state = if upstream == Protocol::BedrockConverse {
            Upstream::EventStream(Box::new(EventStream {
                decoder: eventstream::Decoder::new(),
                msgs: Vec::new(),
                to_openai: converting.then(|| StreamToOpenAi::new(id, model)),
                obs: Observation::default(),
            }))
        } else {
            Upstream::Sse(Box::new(StreamObserver::with_limit(upstream, max_event)))
        };
        Pipe { upstream_proto: upstream, client, upstream: upstream_state, out, sent: 0, held: Vec::new(), max_event, ended: false }
    }

    pub fn obs(&self) -> &Observation {
        match &self.upstream {
            Upstream::Sse(o) => &o.obs,
            Upstream::EventStream(es) => &es.obs,
        }
    }

    /// To ask for the answer's text (`Observation::collect_text`).
    pub fn obs_mut(&mut self) -> &mut Observation {
        match &mut self.upstream {
            Upstream::Sse(o) => &mut o.obs,
            Upstream::EventStream(es) => &mut es.obs,
        }
    }

    pub fn converting(&self) -> bool {
        !matches!(self.out, Out::Raw)
    }

    /// The protocol the client reads.
    pub fn client(&self) -> Protocol {
        self.client
    }

    /// Whether the upstream protocol has an end marker to check for (passthrough SSE of
    /// unknown shape has none).
    fn expects_end_marker(&self) -> bool {
        matches!(
            self.upstream_proto,
            Protocol::OpenAiChat | Protocol::OpenAiResponses | Protocol::AnthropicMessages | Protocol::BedrockConverse
        )
    }

    /// Raw mode: the bytes in `[sent, boundary)` go out; the rest of `chunk` is held.
    fn forward_raw(&mut self, chunk: Bytes, boundary: u64) -> Option<Bytes> {
        let n = (boundary.saturating_sub(self.sent)) as usize;
        if n == 0 {
            self.held.extend_from_slice(&chunk);
            return None;
        }
        self.sent = boundary;
        if self.held.is_empty() {
            if n >= chunk.len() {
                return Some(chunk);
            }
            self.held.extend_from_slice(&chunk[n..]);
            return Some(chunk.slice(..n));
        }
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(&chunk);
        self.held = all.split_off(n.min(all.len()));
        Some(Bytes::from(all))
    }

    /// Feeds one upstream chunk.
    pub fn push(&mut self, chunk: Bytes) -> Step {
        if self.ended {
            return Step::Hold;
        }
        let step = match &mut self.upstream {
            Upstream::Sse(obs) => {
                let out = match &mut self.out {
                    Out::Anthropic(c) => {
                        let mut s = String::new();
                        obs.feed_with(&chunk, |ev| c.push(&ev.data, &mut s));
                        Some(Bytes::from(s))
                    }
                    Out::FromAnthropic(c) => {
                        let mut v = Vec::new();
                        obs.feed_with(&chunk, |ev| c.push(&ev.event, &ev.data, &mut v));
                        Some(sse_of(&v))
                    }
                    _ => {
                        obs.feed(&chunk);
                        None
                    }
                };
                let overflow = obs.overflowed();
                let boundary = obs.boundary();
                let sent = match out {
                    Some(converted) => Some(converted),
                    None => self.forward_raw(chunk, boundary),
                };
                if overflow {
                    let msg = format!("an upstream event is larger than {} bytes", self.max_event);
                    return self.end_with(sent, 502, "upstream_event_too_large", &msg, Ending::Corrupt(msg.clone()));
                }
                sent
            }
            Upstream::EventStream(es) => {
                let decoded = es.decoder.push(&chunk, &mut es.msgs);
                let msgs: Vec<Message> = es.msgs.drain(..).collect();
                let mut chunks = Vec::new();
                for m in &msgs {
                    observe_converse(&mut es.obs, m);
                    if let Some(t) = &mut es.to_openai {
                        t.push(m, &mut chunks);
                    }
                }
                let boundary = es.decoder.boundary();
                let sent = match self.emit(chunks) {
                    Some(converted) => Some(converted),
                    None => self.forward_raw(chunk, boundary),
                };
                if let Err(e) = decoded {
                    let msg = format!("upstream event stream is corrupt: {e}");
                    if let Upstream::EventStream(es) = &mut self.upstream {
                        es.obs.error = Some(msg.clone());
                    }
                    return self.end_with(sent, 502, "upstream_stream_corrupt", &msg, Ending::Corrupt(msg.clone()));
                }
                sent
            }
        };
        match step {
            Some(b) if !b.is_empty() => Step::Send(b),
            _ => Step::Hold,
        }
    }

    fn end_with(&mut self, before: Option<Bytes>, status: u16, code: &str, msg: &str, ending: Ending) -> Step {
        let tail = self.fail(status, code, msg);
        let mut all = before.map(Vec::from).unwrap_or_default();
        all.extend_from_slice(&tail);
        Step::End(Bytes::from(all), ending)
    }

    fn emit(&mut self, chunks: Vec<String>) -> Option<Bytes> {
        match &mut self.out {
            Out::Raw => None,
            Out::OpenAiSse => Some(sse_of(&chunks)),
            Out::Anthropic(conv) => {
                let mut s = String::new();
                chunks.iter().for_each(|c| conv.push(c, &mut s));
                Some(Bytes::from(s))
            }
            // Only an Anthropic (SSE) upstream feeds this converter, never an event stream.
            Out::FromAnthropic(_) => Some(sse_of(&chunks)),
        }
    }

    /// At the end of the upstream body: the last bytes for the client (held complete
    /// lines, closing events of a converter, or the terminal error of a stream that
    /// stopped before its end marker) and how the stream ended.
    pub fn finish(&mut self) -> (Bytes, Ending) {
        if self.ended {
            return (Bytes::new(), Ending::Complete);
        }
        let expects_end = self.expects_end_marker();
        let mut out: Vec<u8> = Vec::new();
        let mut cut_short = false;
        match &mut self.upstream {
            Upstream::Sse(obs) => match &mut self.out {
                Out::Anthropic(c) => {
                    let mut s = String::new();
                    obs.finish_with(|ev| c.push(&ev.data, &mut s));
                    cut_short = !c.is_finished();
                    c.finish(&mut s);
                    out = s.into_bytes();
                }
                Out::FromAnthropic(c) => {
                    let mut v = Vec::new();
                    obs.finish_with(|ev| c.push(&ev.event, &ev.data, &mut v));
                    // Cut after the stop reason: complete (only message_stop was lost).
                    cut_short = !c.is_finished() && !c.is_stopped();
                    c.finish(&mut v);
                    out = sse_of(&v).into();
                }
                _ => {
                    let before = obs.obs.events;
                    let partial = obs.finish().truncated_bytes;
                    // A held event missing only its blank line (whole `data:` lines) goes
                    // out, with the blank line added so a terminal error that may follow
                    // can never join it. Anything else held (a partial line, or only an
                    // `event:` line: SDKs would dispatch it with empty data) never does.
                    let keep = self.held.len().saturating_sub(partial);
                    if keep > 0 && obs.obs.events > before {
                        out.extend_from_slice(&self.held[..keep]);
                        out.push(b'\n');
                    }
                }
            },
            Upstream::EventStream(es) => {
                es.obs.truncated_bytes = es.decoder.pending();
                let mut chunks = Vec::new();
                if let Some(t) = &mut es.to_openai {
                    cut_short = !t.finished;
                    t.finish(&mut chunks);
                }
                out = self.emit(chunks).map(Vec::from).unwrap_or_default();
                if let Out::Anthropic(c) = &mut self.out {
                    let mut s = String::new();
                    cut_short |= !c.is_finished();
                    c.finish(&mut s);
                    out.extend(s.into_bytes());
                }
            }
        }
        self.held.clear();
        let obs = self.obs();
        let ending = if let Some(e) = &obs.error {
            Ending::UpstreamError(e.clone())
        } else if self.converting() {
            if cut_short { Ending::Truncated } else { Ending::Complete }
        } else if expects_end && !obs.done {
            Ending::Truncated
        } else {
            Ending::Complete
        };
        if ending == Ending::Truncated && !self.converting() {
            out.extend(self.fail(502, "upstream_stream_truncated", "upstream stream ended before its end marker"));
        }
        self.ended = true;
        (Bytes::from(out), ending)
    }

    /// Ends the stream with one error event in the client's protocol (after the whole
    /// events already sent; a held partial event is discarded).
    pub fn fail(&mut self, status: u16, code: &str, message: &str) -> Vec<u8> {
        self.ended = true;
        self.held.clear();
        match &mut self.out {
            Out::Anthropic(c) => {
                let mut s = String::new();
                c.fail(status, message, &mut s);
                s.into_bytes()
            }
            Out::OpenAiSse => envelope::stream(Protocol::OpenAiChat, &envelope::Error { status, kind: None, code, message, class: None }),
            // The converter already ended the stream with its own error chunk.
            Out::FromAnthropic(c) if c.is_finished() => Vec::new(),
            Out::FromAnthropic(_) => {
                envelope::stream(Protocol::OpenAiChat, &envelope::Error { status, kind: None, code, message, class: None })
            }
            Out::Raw => envelope::stream(self.client, &envelope::Error { status, kind: None, code, message, class: None }),
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
    obs.converse_event(m.kind(), &payload);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstream::{Decoder, event};
    use crate::sse::Parser;
    use serde_json::json;

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

    fn openai_sse() -> Vec<u8> {
        let mut s = String::new();
        s.push_str("data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        s.push_str(": keep-alive\n\n");
        for w in ["1", "+", "1", " = ", "2"] {
            s.push_str(&format!("data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}}}}]}}\r\n\r\n"));
        }
        s.push_str("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.push_str("data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    /// Feeds `bytes` in `piece`-sized chunks, then finishes; returns what the client got.
    fn run(p: &mut Pipe, bytes: &[u8], piece: usize) -> (Vec<u8>, Ending) {
        let mut out = Vec::new();
        for c in bytes.chunks(piece.max(1)) {
            match p.push(Bytes::copy_from_slice(c)) {
                Step::Send(b) => out.extend_from_slice(&b),
                Step::Hold => {}
                Step::End(b, e) => {
                    out.extend_from_slice(&b);
                    return (out, e);
                }
            }
        }
        let (tail, e) = p.finish();
        out.extend_from_slice(&tail);
        (out, e)
    }

    fn pipe(up: Protocol, client: Protocol) -> Pipe {
        Pipe::new(up, client, ToolNames::default(), "m", "id", crate::sse::DEFAULT_MAX_EVENT, false)
    }

    /// Parses SSE output: every byte must belong to a whole event, and every event must
    /// carry data (SDKs dispatch an `event:` line alone as an event with empty data).
    fn whole_events(out: &[u8]) -> Vec<crate::sse::Event> {
        let mut p = Parser::new();
        let mut evs = Vec::new();
        p.push(out, &mut evs);
        let text = String::from_utf8_lossy(out);
        assert_eq!(p.boundary(), out.len() as u64, "partial event in the output: {text:?}");
        for block in text.replace("\r\n", "\n").split("\n\n").filter(|b| !b.trim().is_empty()) {
            assert!(
                block.lines().any(|l| l.starts_with("data:")) || block.lines().all(|l| l.starts_with(':')),
                "event without data: {block:?}"
            );
        }
        evs
    }

    #[test]
    fn converse_passthrough_is_observed_and_untouched() {
        let bytes = converse_stream();
        let mut p = pipe(Protocol::BedrockConverse, Protocol::BedrockConverse);
        let (out, ending) = run(&mut p, &bytes, 17);
        assert_eq!(out, bytes);
        assert_eq!(ending, Ending::Complete);
        let o = p.obs();
        assert!(o.done);
        assert_eq!((o.usage.prompt, o.usage.completion, o.usage.total, o.usage.cache_read), (16, 9, 25, 2));
    }

    #[test]
    fn converse_to_openai_and_anthropic_clients() {
        let bytes = converse_stream();
        let mut p = pipe(Protocol::BedrockConverse, Protocol::OpenAiChat);
        let text = String::from_utf8(run(&mut p, &bytes, 17).0).unwrap();
        assert!(text.starts_with("data: {") && text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains("\"content\":\"1+1 = 2.\"") && text.contains("\"total_tokens\":25"), "{text}");
        let mut p = pipe(Protocol::BedrockConverse, Protocol::AnthropicMessages);
        let text = String::from_utf8(run(&mut p, &bytes, 17).0).unwrap();
        assert!(
            text.starts_with("event: message_start") && text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{text}"
        );
        assert!(text.contains("\"text\":\"1+1 = 2.\""), "{text}");
        // Cut before metadata: OpenAI clients get an error chunk.
        let cut = &bytes[..bytes.len() - 30];
        let mut p = pipe(Protocol::BedrockConverse, Protocol::OpenAiChat);
        let (out, ending) = run(&mut p, cut, 7);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("before its metadata event"), "{text}");
        assert_eq!(ending, Ending::Truncated);
    }

    /// A Bedrock stream cut mid-frame: the client gets the whole frames, then exactly one
    /// exception frame, never the partial frame (boto3 would report a CRC error).
    #[test]
    fn converse_cut_mid_frame_gets_whole_frames_then_one_exception() {
        let bytes = converse_stream();
        let first_two = event("messageStart", &json!({"role": "assistant"})).len()
            + event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "1+1 = 2."}})).len();
        for cut in [first_two + 1, first_two + 20, bytes.len() - 3] {
            for piece in [1, 5, 64, 4096] {
                let mut p = pipe(Protocol::BedrockConverse, Protocol::BedrockConverse);
                let (out, ending) = run(&mut p, &bytes[..cut], piece);
                assert_eq!(ending, Ending::Truncated, "cut {cut} piece {piece}");
                let mut msgs = Vec::new();
                Decoder::new().push(&out, &mut msgs).unwrap();
                let kinds: Vec<&str> = msgs.iter().map(|m| m.kind()).collect();
                assert_eq!(kinds.last(), Some(&"internalServerException"), "cut {cut} piece {piece}: {kinds:?}");
                assert_eq!(msgs.iter().filter(|m| m.message_type() == "exception").count(), 1);
                assert!(out.starts_with(&bytes[..first_two]), "cut {cut}");
            }
        }
    }

    /// A corrupt frame ends the stream once: the frames before it, one error, nothing after.
    #[test]
    fn corrupt_frame_ends_the_stream_once() {
        let good = event("messageStart", &json!({"role": "assistant"}));
        let mut bad = event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "x"}}));
        let n = bad.len();
        bad[n - 5] ^= 0xFF;
        let after = converse_stream();
        let mut all = good.clone();
        all.extend(&bad);
        all.extend(&after);
        for client in [Protocol::BedrockConverse, Protocol::OpenAiChat, Protocol::AnthropicMessages] {
            for piece in [3, 50, 100_000] {
                let mut p = pipe(Protocol::BedrockConverse, client);
                let (out, ending) = run(&mut p, &all, piece);
                assert!(matches!(&ending, Ending::Corrupt(m) if m.contains("CRC")), "{client:?}: {ending:?}");
                assert_eq!(p.push(Bytes::from(after.clone())), Step::Hold, "nothing after the end");
                assert_eq!(p.finish().0, Bytes::new());
                match client {
                    Protocol::BedrockConverse => {
                        let mut msgs = Vec::new();
                        Decoder::new().push(&out, &mut msgs).unwrap();
                        assert_eq!(msgs.len(), 2, "the good frame and one exception");
                        assert_eq!(msgs[1].message_type(), "exception");
                    }
                    _ => {
                        let evs = whole_events(&out);
                        let errors = evs.iter().filter(|e| e.event == "error" || e.data.contains("\"error\"")).count();
                        assert_eq!(errors, 1, "{client:?}: {}", String::from_utf8_lossy(&out));
                        assert!(!String::from_utf8_lossy(&out).contains("1+1"), "nothing after the corrupt frame");
                    }
                }
            }
        }
    }

    /// An OpenAI SSE stream cut at every point, in several chunkings: the client always
    /// gets whole events, then either the complete stream or exactly one error event.
    #[test]
    fn sse_cut_anywhere_gives_whole_events_then_one_terminator() {
        let bytes = openai_sse();
        for cut in 0..=bytes.len() {
            for piece in [1, 7, 64, bytes.len()] {
                for client in [Protocol::OpenAiChat, Protocol::AnthropicMessages] {
                    let mut p = pipe(Protocol::OpenAiChat, client);
                    let (out, ending) = run(&mut p, &bytes[..cut], piece);
                    let evs = whole_events(&out);
                    let errors = evs.iter().filter(|e| e.event == "error" || e.data.starts_with("{\"error\"")).count();
                    if cut == bytes.len() {
                        assert_eq!((errors, &ending), (0, &Ending::Complete), "cut {cut} piece {piece} {client:?}");
                    } else if ending == Ending::Complete {
                        // Only when everything but trailing bytes after the end arrived.
                        assert_eq!(errors, 0);
                        assert!(cut >= bytes.len() - 1 || client == Protocol::AnthropicMessages, "cut {cut} {client:?}");
                    } else {
                        assert_eq!(errors, 1, "cut {cut} piece {piece} {client:?}: {}", String::from_utf8_lossy(&out));
                        assert!(evs.last().is_some_and(|e| e.event == "error" || e.data.starts_with("{\"error\"")));
                    }
                    if client == Protocol::OpenAiChat {
                        // Untouched events: what went out is the input's events, in order.
                        let all = whole_events(&bytes);
                        let forwarded = &evs[..evs.len() - errors];
                        assert_eq!(forwarded, &all[..forwarded.len()], "cut {cut} piece {piece}");
                    }
                }
            }
        }
    }

    #[test]
    fn raw_mid_line_cut_never_forwards_the_partial_line() {
        let mut p = pipe(Protocol::OpenAiChat, Protocol::OpenAiChat);
        assert!(
            matches!(p.push(Bytes::from_static(b"data: {\"choices\":[]}\n\ndata: {\"cho")), Step::Send(b) if b == "data: {\"choices\":[]}\n\n")
        );
        assert_eq!(p.push(Bytes::from_static(b"ices\":[]}")), Step::Hold);
        let tail = p.fail(504, "upstream_timeout", "no data for 50 ms");
        let evs = whole_events(&tail);
        assert_eq!(evs.len(), 1);
        assert!(evs[0].data.contains("no data for 50 ms") && !evs[0].data.contains("cho"));
        // Responses clients get `event: error`.
        let mut p = pipe(Protocol::OpenAiResponses, Protocol::OpenAiResponses);
        p.push(Bytes::from_static(
            b"event: response.created\ndata: {\"type\":\"response.created\"}\n\nevent: response.output_text.delta\ndata: {\"ty",
        ));
        let (tail, ending) = p.finish();
        assert_eq!(ending, Ending::Truncated);
        let evs = whole_events(&tail);
        assert_eq!((evs.len(), evs[0].event.as_str()), (1, "error"));
    }

    #[test]
    fn a_held_event_line_without_data_is_never_forwarded() {
        let mut p = pipe(Protocol::OpenAiResponses, Protocol::OpenAiResponses);
        let (out, ending) = run(&mut p, b"event: response.created\ndata: {}\n\nevent: response.output_text.delta\ndata: {\"ty", 5);
        assert_eq!(ending, Ending::Truncated);
        let evs = whole_events(&out);
        assert_eq!(evs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), vec!["response.created", "error"]);
    }

    #[test]
    fn a_final_event_missing_only_its_blank_line_is_forwarded() {
        let mut p = pipe(Protocol::OpenAiChat, Protocol::OpenAiChat);
        let (out, ending) = run(&mut p, b"data: {\"choices\":[]}\n\ndata: [DONE]\n", 4);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(out, b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
    }

    /// Events of any size pass intact (2 MiB here, as a Responses `response.completed`
    /// carrying an image), usage counted; past the cap the stream ends with an error.
    #[test]
    fn large_events_pass_intact_up_to_the_cap() {
        let image = "A".repeat(2 << 20);
        let body = format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"model\":\"gpt-image\"}}}}\n\n\
             event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":[{{\"type\":\"image_generation_call\",\"result\":\"{image}\"}}],\
             \"usage\":{{\"input_tokens\":11,\"output_tokens\":1056,\"total_tokens\":1067}}}}}}\n\n"
        );
        let mut p = pipe(Protocol::OpenAiResponses, Protocol::OpenAiResponses);
        let (out, ending) = run(&mut p, body.as_bytes(), 16 << 10);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(out, body.as_bytes());
        assert_eq!((p.obs().usage.prompt, p.obs().usage.completion), (11, 1056));
        let mut p = Pipe::new(Protocol::OpenAiResponses, Protocol::OpenAiResponses, ToolNames::default(), "m", "id", 1 << 20, false);
        let (out, ending) = run(&mut p, body.as_bytes(), 16 << 10);
        assert!(matches!(ending, Ending::Corrupt(_)), "{ending:?}");
        let evs = whole_events(&out);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].event, "error");
    }

    /// OpenAI → Anthropic conversion of a stream that ends without `[DONE]` (or its finish
    /// and usage chunks): an Anthropic `error` event, not a clean `message_stop`.
    #[test]
    fn converted_stream_without_done_ends_with_an_error_event() {
        let bytes = openai_sse();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let cut = text.find("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\"").unwrap();
        let mut p = pipe(Protocol::OpenAiChat, Protocol::AnthropicMessages);
        let (out, ending) = run(&mut p, &bytes[..cut], 9);
        assert_eq!(ending, Ending::Truncated);
        let evs = whole_events(&out);
        assert_eq!(evs.first().map(|e| e.event.as_str()), Some("message_start"));
        assert_eq!(evs.last().map(|e| e.event.as_str()), Some("error"));
        assert!(!evs.iter().any(|e| e.event == "message_stop"));
        let mut p = pipe(Protocol::OpenAiChat, Protocol::AnthropicMessages);
        let (out, ending) = run(&mut p, &bytes, 9);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(whole_events(&out).last().map(|e| e.event.clone()), Some("message_stop".to_owned()));
    }

    fn anthropic_sse() -> Vec<u8> {
        let ev = |t: &str, v: serde_json::Value| format!("event: {t}\ndata: {v}\n\n");
        [
            ev("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100}}})),
            ev("ping", json!({"type": "ping"})),
            ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
            ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "1+1 "}})),
            ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "= 2"}})),
            ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            ev("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {}}})),
            ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\":"}})),
            ev("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}})),
            ev("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
            ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}})),
            ev("message_stop", json!({"type": "message_stop"})),
        ]
        .concat()
        .into_bytes()
    }

    fn openai_pipe_from_anthropic(include_usage: bool) -> Pipe {
        Pipe::new(
            Protocol::AnthropicMessages,
            Protocol::OpenAiChat,
            ToolNames::default(),
            "m",
            "id",
            crate::sse::DEFAULT_MAX_EVENT,
            include_usage,
        )
    }

    /// Anthropic upstream, OpenAI client: chat.completion.chunks, [DONE], the usage chunk
    /// only when asked; the observer reads the Anthropic events whatever the client gets.
    #[test]
    fn anthropic_to_openai_clients() {
        let bytes = anthropic_sse();
        for piece in [1, 7, 64, 1 << 20] {
            for include_usage in [false, true] {
                let mut p = openai_pipe_from_anthropic(include_usage);
                assert!(p.converting());
                let (out, ending) = run(&mut p, &bytes, piece);
                assert_eq!(ending, Ending::Complete, "piece {piece}");
                let evs = whole_events(&out);
                let data: Vec<&str> = evs.iter().map(|e| e.data.as_str()).collect();
                assert_eq!(data.last(), Some(&"[DONE]"), "piece {piece}");
                let chunks: Vec<serde_json::Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
                assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
                assert_eq!(chunks[0]["model"], "claude-x");
                let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
                assert_eq!(text, "1+1 = 2");
                let args: String =
                    chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()).collect();
                assert_eq!(args, "{\"x\":1}");
                assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
                let usage = chunks.iter().find(|c| c.get("usage").is_some());
                assert_eq!(usage.map(|u| u["usage"]["prompt_tokens"].as_u64()), include_usage.then_some(Some(350)), "piece {piece}");
                let o = p.obs();
                assert!(o.done && o.has_tool_calls);
                assert_eq!((o.usage.prompt, o.usage.completion, o.usage.cache_read, o.usage.cache_creation), (350, 30, 200, 100));
            }
        }
    }

    #[test]
    fn anthropic_to_openai_broken_streams() {
        let bytes = anthropic_sse();
        let text = String::from_utf8_lossy(&bytes).to_string();
        // Cut after the stop reason: complete, [DONE] supplied.
        let stop = text.find("event: message_stop").unwrap();
        let mut p = openai_pipe_from_anthropic(false);
        let (out, ending) = run(&mut p, &bytes[..stop], 11);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(whole_events(&out).last().map(|e| e.data.clone()), Some("[DONE]".to_owned()));
        // Cut mid-content: one OpenAI error chunk, no [DONE], Truncated.
        let mid = text.find("event: content_block_stop").unwrap() + 5;
        let mut p = openai_pipe_from_anthropic(true);
        let (out, ending) = run(&mut p, &bytes[..mid], 11);
        assert_eq!(ending, Ending::Truncated);
        let evs = whole_events(&out);
        assert!(evs.last().unwrap().data.contains("upstream_stream_truncated"), "{evs:?}");
        assert!(!evs.iter().any(|e| e.data == "[DONE]"));
        // An upstream error event: an OpenAI error chunk; a later failure adds nothing.
        let mut err = bytes[..mid].to_vec();
        err.extend_from_slice(
            b"\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let mut p = openai_pipe_from_anthropic(false);
        let (out, ending) = run(&mut p, &err, 64);
        assert!(matches!(ending, Ending::UpstreamError(_)), "{ending:?}");
        let evs = whole_events(&out);
        assert!(evs.last().unwrap().data.contains("\"code\":\"overloaded_error\""), "{evs:?}");
        // The gateway ends a stream (timeout, limit): an OpenAI error event.
        let mut p = openai_pipe_from_anthropic(false);
        assert!(matches!(p.push(Bytes::copy_from_slice(&bytes[..stop / 2])), Step::Send(_) | Step::Hold));
        let tail = String::from_utf8(p.fail(504, "upstream_timeout", "no data")).unwrap();
        assert!(tail.starts_with("data: {\"error\"") && tail.contains("upstream_timeout"), "{tail}");
    }
}
