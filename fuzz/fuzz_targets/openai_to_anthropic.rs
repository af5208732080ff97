//! OpenAI chat → Anthropic: any bytes, read as a JSON request, a JSON response and an
//! Anthropic SSE stream, never panic; conversions that succeed are well-formed.
#![no_main]
use aigw_llm::anthropic::ToolNames;
use aigw_llm::openai_to_anthropic::{StreamToOpenAi, error_to_openai, request_to_anthropic, response_to_openai};
use aigw_llm::sse::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(r) = request_to_anthropic(&v, 4096) {
            let msgs = r.body["messages"].as_array().expect("messages array");
            assert!(!msgs.is_empty());
            assert!(msgs.windows(2).all(|w| w[0]["role"] != w[1]["role"]), "roles alternate");
            assert!(r.body["max_tokens"].as_u64().is_some_and(|n| n >= 1));
            serde_json::to_vec(&r.body).unwrap();
        }
        if let Ok(o) = response_to_openai(&v, &ToolNames::default(), 0, "m") {
            assert!(o["choices"][0]["message"].is_object());
        }
    }
    assert!(error_to_openai(500, data)["error"]["message"].is_string());
    let mut parser = Parser::new();
    let mut events = Vec::new();
    parser.push(data, &mut events);
    parser.finish(&mut events);
    let mut c = StreamToOpenAi::new(ToolNames::default(), data.first().is_some_and(|b| b & 1 == 1), 0, "m");
    let mut out = Vec::new();
    for e in &events {
        c.push(&e.event, &e.data, &mut out);
    }
    c.finish(&mut out);
    assert!(c.is_finished());
    for chunk in &out {
        if chunk != "[DONE]" {
            serde_json::from_str::<serde_json::Value>(chunk).expect("chunk is JSON");
        }
    }
});
