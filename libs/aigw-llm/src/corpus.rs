//! Test corpus: every JSON document the crate's golden files and the bench hold, for the
//! tests that compare a fast path with its oracle (`usage::oracle`, `body`'s full parse).
//! A golden file's answers and requests sit inside it (`"response": {…}`, `"events":
//! ["{…}", …]`, SSE `data:` lines), so every object found anywhere in it is a document
//! here, compact and pretty-printed, besides the file itself.

use std::path::Path;

use serde_json::Value;

/// Every document, deduplicated, in a stable order.
pub fn documents() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = ["testdata/anthropic", "testdata/openai_to_anthropic"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    for b in ["chat.json", "chat_request.json", "stream_request.json", "anthropic_request.json", "stream.sse"] {
        files.push(root.join("../../bench").join(b));
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).unwrap();
        if f.extension().is_some_and(|e| e == "sse") {
            for line in String::from_utf8_lossy(&text).lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    push_all(&mut out, d.trim().as_bytes());
                }
            }
        } else {
            push_all(&mut out, &text);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|d| seen.insert(d.clone()));
    out
}

/// The document itself, then every object inside it (and every string holding JSON).
fn push_all(out: &mut Vec<Vec<u8>>, doc: &[u8]) {
    out.push(doc.to_vec());
    let Ok(v) = serde_json::from_slice::<Value>(doc) else { return };
    walk(out, &v);
}

fn walk(out: &mut Vec<Vec<u8>>, v: &Value) {
    match v {
        Value::Object(m) => {
            out.push(serde_json::to_vec(v).unwrap());
            out.push(serde_json::to_vec_pretty(v).unwrap());
            m.values().for_each(|x| walk(out, x));
        }
        Value::Array(a) => a.iter().for_each(|x| walk(out, x)),
        Value::String(s) if s.starts_with('{') => {
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                out.push(s.as_bytes().to_vec());
                walk(out, &inner);
            }
        }
        _ => {}
    }
}

/// Hand-made documents for what goldens rarely hold: keys inside strings, escapes,
/// nesting, odd types, duplicates, whitespace, and malformed text.
pub const TRICKY: &[&str] = &[
    r#"{"choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 9}, \"tool_calls\": [1], \"type\": \"tool_use\""}}],"usage":{"prompt_tokens":1}}"#,
    r#"{"data":[{"usage":{"prompt_tokens":9}}],"usage":{"prompt_tokens":2,"total_tokens":2}}"#,
    r#"{"tool_calls":[],"a":{"tool_calls":[ ]},"b":[{"tool_calls":[0]}]}"#,
    r#"{"model":"m\u00e9","id":"i\"d","finish_reason":"x","stop_reason":"s\\t","status":"completed"}"#,
    r#"{"model":"a","model":"","model":"b","id":"1","id":"2","usage":{"prompt_tokens":1},"usage":{"completion_tokens":2}}"#,
    "{ \"usage\" :\t{ \"prompt_tokens\" :\n 3 , \"prompt_tokens_details\" : { \"cached_tokens\" : 1 } } , \"model\" : \"x\" }",
    r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":-1,"total_tokens":"3","input_tokens":18446744073709551616}}"#,
    r#"{"error":null}"#,
    r#"{"error":"plain"}"#,
    r#"{"error":{"message":7}}"#,
    r#"{"id":7,"model":null,"stop_reason":[],"status":{"a":1},"type":"function_call"}"#,
    r#"{"output":[{"type":"function_call"}],"toolUse":1}"#,
    r#"{"a":"unterminated"#,
    r#"{"a":[1,2}"#,
    r#"{"a":1}}"#,
    r#"[{"usage":{"prompt_tokens":1}}]"#,
    r#""usage""#,
    "{\"model\":\"a\u{1}b\"}",
    "{\"model\":\"\u{e9}\"}",
    "{\"k\\\"ey\":1,\"usage\\\"\":{\"prompt_tokens\":4}}",
    "{\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":5},\"prompt_tokens_details\":{\"reasoning_tokens\":1}}}",
    // Vertex AI / Gemini shapes (the fake Vertex answers these).
    r#"{"predictions":[{"embeddings":{"values":[0.0123,-0.0456],"statistics":{"token_count":2,"truncated":false}}}],"metadata":{"billableCharacterCount":9}}"#,
    r#"{"id":"chatcmpl-vertex","object":"chat.completion","created":1,"model":"google/gemini-2.5-flash","choices":[{"index":0,"message":{"role":"assistant","content":"1+1 equals 2."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":6,"total_tokens":15}}"#,
    r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
    r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":1,"totalTokenCount":5},"modelVersion":"gemini-2.5-flash"}"#,
    "",
    "   ",
    "{}",
    "{\"\":1}",
    "{\"usage\":{}}",
];
