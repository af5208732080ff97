//! Criterion benches for the per-request hot paths (PERFORMANCE.md): protocol detection,
//! Anthropic⇄OpenAI conversion (both directions), SSE parsing and usage observation,
//! AWS event-stream decoding. `cargo bench -p aigw-llm`.

use aigw_llm::anthropic::{StreamConverter, ToolNames, request_to_openai};
use aigw_llm::eventstream::{Decoder, event};
use aigw_llm::openai_to_anthropic::{StreamToOpenAi, request_to_anthropic};
use aigw_llm::protocol::{Protocol, detect};
use aigw_llm::sse::Parser;
use aigw_llm::usage::{StreamObserver, observe_json};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;

fn testdata(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/anthropic").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn chat_sse() -> Vec<u8> {
    let mut s = String::new();
    s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n");
    for i in 0..22 {
        s.push_str(&format!("data: {{\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n");
    s.push_str("data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":22,\"total_tokens\":45}}\n\n");
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// 26 Anthropic SSE events: message_start, a text block of 21 deltas, message_delta, message_stop.
fn anthropic_sse() -> Vec<u8> {
    let mut s = String::new();
    s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":23,\"output_tokens\":1}}}\n\n");
    s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..21 {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok{i} \"}}}}\n\n"));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":21}}\n\n");
    s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn benches(c: &mut Criterion) {
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is 1+1? Answer briefly."}]});
    c.bench_function("detect/openai_chat", |b| b.iter(|| detect(black_box("/v1/chat/completions"), black_box(&chat))));

    let anth = testdata("req_tools_multi_turn_parallel.in.json")["request"].clone();
    c.bench_function("anthropic/request_to_openai(tools, 4 turns)", |b| {
        b.iter(|| request_to_openai(black_box(&anth), "max_tokens", &mut ToolNames::default()).unwrap())
    });

    let oa: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/openai_to_anthropic/req_tools_multi_turn_parallel.in.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let oa = oa["request"].clone();
    c.bench_function("openai_to_anthropic/request(tools, 4 turns)", |b| b.iter(|| request_to_anthropic(black_box(&oa), 4096).unwrap()));

    let sse = chat_sse();
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("sse_parse(26 events)", |b| {
        b.iter(|| {
            let mut p = Parser::new();
            let mut out = Vec::with_capacity(32);
            for chunk in sse.chunks(512) {
                p.push(chunk, &mut out);
            }
            out.len()
        })
    });
    g.bench_function("observe_openai_sse(26 events)", |b| {
        b.iter(|| {
            let mut o = StreamObserver::new(Protocol::OpenAiChat);
            for chunk in sse.chunks(512) {
                o.feed(chunk);
            }
            o.finish().usage.total
        })
    });
    g.bench_function("openai_sse_to_anthropic(26 events)", |b| {
        b.iter(|| {
            let mut o = StreamObserver::new(Protocol::OpenAiChat);
            let mut conv = StreamConverter::new(ToolNames::default(), "m");
            let mut out = String::new();
            for chunk in sse.chunks(512) {
                o.feed_with(chunk, |ev| conv.push(&ev.data, &mut out));
            }
            conv.finish(&mut out);
            out.len()
        })
    });
    let asse = anthropic_sse();
    g.bench_function("anthropic_sse_to_openai(26 events)", |b| {
        b.iter(|| {
            let mut o = StreamObserver::new(Protocol::AnthropicMessages);
            let mut conv = StreamToOpenAi::new(ToolNames::default(), true, 0, "m");
            let mut out = Vec::with_capacity(32);
            for chunk in asse.chunks(512) {
                o.feed_with(chunk, |ev| conv.push(&ev.event, &ev.data, &mut out));
            }
            o.finish_with(|ev| conv.push(&ev.event, &ev.data, &mut out));
            conv.finish(&mut out);
            out.len()
        })
    });
    let mut es = event("messageStart", &json!({"role": "assistant"}));
    for i in 0..22 {
        es.extend(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": format!("tok{i} ")}})));
    }
    es.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
    es.extend(event("metadata", &json!({"usage": {"inputTokens": 14, "outputTokens": 22, "totalTokens": 36}})));
    g.bench_function("eventstream_decode(25 frames)", |b| {
        b.iter(|| {
            let mut d = Decoder::new();
            let mut out = Vec::with_capacity(32);
            for chunk in es.chunks(512) {
                d.push(chunk, &mut out).unwrap();
            }
            out.len()
        })
    });
    g.finish();

    let completion = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1732000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"1+1 equals 2."},"finish_reason":"stop"}],"usage":{"prompt_tokens":23,"completion_tokens":8,"total_tokens":31,"prompt_tokens_details":{"cached_tokens":0}}}"#;
    c.bench_function("observe_json(chat.completion)", |b| b.iter(|| observe_json(black_box(completion)).usage.total));
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
