//! OpenAI SSE → Anthropic SSE: any upstream bytes produce well-formed events whose data is JSON.
#![no_main]
use aigw_llm::anthropic::{StreamConverter, ToolNames};
use aigw_llm::sse::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parser = Parser::new();
    let mut events = Vec::new();
    parser.push(data, &mut events);
    parser.finish(&mut events);
    let mut c = StreamConverter::new(ToolNames::default(), "m");
    let mut out = String::new();
    for e in &events {
        c.push(&e.data, &mut out);
    }
    c.finish(&mut out);
    for block in out.split("\n\n").filter(|b| !b.is_empty()) {
        let data = block.lines().find_map(|l| l.strip_prefix("data: ")).expect("data line");
        serde_json::from_str::<serde_json::Value>(data).expect("JSON data");
    }
});
