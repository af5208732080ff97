//! Anthropic → OpenAI request conversion: any JSON in, an error or a valid OpenAI body out.
#![no_main]
use aigw_llm::anthropic::{ToolNames, request_to_openai};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let mut names = ToolNames::default();
        if let Ok(out) = request_to_openai(&v, "max_tokens", &mut names) {
            assert!(out["messages"].is_array());
            serde_json::to_vec(&out).unwrap();
        }
    }
});
