//! Valid stream recordings (OpenAI chat SSE, Responses SSE, Anthropic SSE, Bedrock
//! event-stream) cut at a random point, fed in random chunkings, optionally with one byte
//! corrupted, through `stream::Pipe` for every client protocol it serves: the client must
//! always receive whole events (or frames), then exactly one well-formed terminator when
//! the stream did not end cleanly, and none when it did.
#![no_main]
use aigw_llm::anthropic::ToolNames;
use aigw_llm::eventstream::{Decoder, event};
use aigw_llm::protocol::Protocol;
use aigw_llm::sse::Parser;
use aigw_llm::stream::{Ending, Pipe, Step};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn chat() -> Vec<u8> {
    let mut s = String::from("data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n: keep-alive\n\n");
    for w in ["1", "+", "1 ", "= 2"] {
        s.push_str(&format!("data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}}}}]}}\r\n\r\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"t\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n");
    s.push_str("data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    s.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn responses() -> Vec<u8> {
    "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"m\"}}\n\n\
     event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
     event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1,\"total_tokens\":2}}}\n\n"
        .as_bytes()
        .to_vec()
}

fn anthropic() -> Vec<u8> {
    let ev = |k: &str, d: serde_json::Value| format!("event: {k}\ndata: {d}\n\n");
    [
        ev("message_start", json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}})),
        ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})),
        ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}})),
        ev("message_stop", json!({"type": "message_stop"})),
    ]
    .concat()
    .into_bytes()
}

fn converse() -> Vec<u8> {
    let mut b = event("messageStart", &json!({"role": "assistant"}));
    b.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "1+1 = 2."}})));
    b.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
    b.extend(event("metadata", &json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}})));
    b
}

/// SSE output: whole events only, each with data; returns how many are error events.
fn check_sse(out: &[u8], corrupted: bool) -> usize {
    let mut p = Parser::new();
    let mut evs = Vec::new();
    p.push(out, &mut evs);
    assert_eq!(p.boundary(), out.len() as u64, "partial event: {:?}", String::from_utf8_lossy(out));
    let text = String::from_utf8_lossy(out).replace("\r\n", "\n");
    // A corrupted upstream can send a whole block without data; untouched bytes are
    // forwarded as they are, so the data check holds only for intact recordings.
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty() && !corrupted) {
        assert!(block.lines().any(|l| l.starts_with("data:")) || block.lines().all(|l| l.starts_with(':')), "event without data: {block:?}");
    }
    evs.iter().filter(|e| e.event == "error" || e.data.starts_with("{\"error\"")).count()
}

fn check_frames(out: &[u8]) -> usize {
    let mut msgs = Vec::new();
    Decoder::new().push(out, &mut msgs).expect("whole, valid frames");
    let mut d = Decoder::new();
    let mut again = Vec::new();
    d.push(out, &mut again).unwrap();
    assert_eq!(d.pending(), 0, "partial frame");
    msgs.iter().filter(|m| m.message_type() != "event").count()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (which, client_pick, corrupt) = (data[0] % 4, data[1] % 3, data[2]);
    let (upstream, recording) = match which {
        0 => (Protocol::OpenAiChat, chat()),
        1 => (Protocol::OpenAiResponses, responses()),
        2 => (Protocol::AnthropicMessages, anthropic()),
        _ => (Protocol::BedrockConverse, converse()),
    };
    let client = match (upstream, client_pick) {
        (Protocol::OpenAiChat, 1) | (Protocol::BedrockConverse, 1) => Protocol::AnthropicMessages,
        (Protocol::BedrockConverse, 2) => Protocol::OpenAiChat,
        _ => upstream,
    };
    let cut = (data[3] as usize * recording.len() / 255).min(recording.len());
    let mut bytes = recording[..cut].to_vec();
    if corrupt & 0x80 != 0 && !bytes.is_empty() {
        let i = (corrupt as usize * 7) % bytes.len();
        bytes[i] ^= 0x5A;
    }
    let mut pipe = Pipe::new(upstream, client, ToolNames::default(), "m", "id", 1 << 16, false);
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    let mut sizes = data[4..].iter().cycle();
    let mut ending = None;
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&7) as usize % 64 + 1).min(rest.len());
        let (c, r) = rest.split_at(n);
        rest = r;
        match pipe.push(Bytes::copy_from_slice(c)) {
            Step::Send(b) => out.extend_from_slice(&b),
            Step::Hold => {}
            Step::End(b, e) => {
                out.extend_from_slice(&b);
                ending = Some(e);
                break;
            }
        }
    }
    let ending = match ending {
        Some(e) => e,
        None => {
            let (tail, e) = pipe.finish();
            out.extend_from_slice(&tail);
            e
        }
    };
    let corrupted = corrupt & 0x80 != 0;
    let errors = if client == Protocol::BedrockConverse { check_frames(&out) } else { check_sse(&out, corrupted) };
    match ending {
        Ending::Complete => assert_eq!(errors, 0, "a clean end has no error: {:?}", String::from_utf8_lossy(&out)),
        // An upstream-reported error is forwarded (raw) or converted: at most one.
        Ending::UpstreamError(_) => assert!(errors <= 1, "{:?}", String::from_utf8_lossy(&out)),
        Ending::Truncated | Ending::Corrupt(_) => assert_eq!(errors, 1, "exactly one terminator: {:?}", String::from_utf8_lossy(&out)),
    }
});
