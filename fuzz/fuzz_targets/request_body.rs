//! Request bodies on their raw form (`aigw_llm::body`): `RawBody::parse` accepts and
//! refuses exactly what `serde_json::from_slice::<Value>` does (with its message), reads
//! what the tree holds (detection, request facts, payload messages, the stream flag), and
//! shaping it in place gives the JSON shaping the tree gives (what the upstream parses from
//! either; floats within an ulp, see below) — for any body and any route shaping. Input: an optional first line with the shaping as JSON
//! (`{"p": provider index, "t": target index, "o": options, "m": max_tokens, "r": request_body, "f": force}`),
//! then the body.
#![no_main]
use aigw_llm::body::{Doc, RawBody};
use aigw_llm::protocol::{Protocol, detect};
use aigw_llm::usage::{request_facts, request_messages};
use aigw_model::Provider;
use aigw_providers::shaping::{Shaping, shape};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const PROVIDERS: [Provider; 10] = [
    Provider::Openai,
    Provider::Deepseek,
    Provider::AzureOpenai,
    Provider::Aimlapi,
    Provider::Anthropic,
    Provider::Openrouter,
    Provider::Gemini,
    Provider::VertexAi,
    Provider::Bedrock,
    Provider::OpenaiCompatible,
];
const PROTOCOLS: [Protocol; 8] = [
    Protocol::OpenAiChat,
    Protocol::OpenAiResponses,
    Protocol::OpenAiEmbeddings,
    Protocol::AnthropicMessages,
    Protocol::AnthropicCountTokens,
    Protocol::BedrockConverse,
    Protocol::Passthrough,
    Protocol::VertexPredict,
];
const PATHS: [&str; 6] = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/model/m/converse", "/x"];

fuzz_target!(|data: &[u8]| {
    let (conf, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let serde = serde_json::from_slice::<Value>(body);
    let raw = RawBody::parse(Bytes::copy_from_slice(body));
    let (v, r) = match (serde, raw) {
        (Ok(v), Ok(r)) => (v, r),
        (Err(a), Err(b)) => return assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("serde {a:?}, raw {b:?}"),
    };
    for p in PATHS {
        assert_eq!(detect(p, &v), detect(p, &r));
    }
    for p in PROTOCOLS {
        assert_eq!(request_facts(p, &v), request_facts(p, &r));
        assert_eq!(request_messages(p, &v), request_messages(p, &r));
        assert_eq!(p.is_stream(&v), p.is_stream(&r));
    }
    let c: Value = serde_json::from_slice(conf).unwrap_or_else(|_| {
        json!({"p": 0, "t": 0, "o": {"model": "m", "stream": true}, "m": 64,
               "r": {"metadata": {"team": "a"}, "stream_options": {"x": 1}, "temperature": 0.5}, "f": false})
    });
    let idx = |k: &str, n: usize| c.get(k).and_then(Value::as_u64).map_or(0, |i| i as usize % n);
    let s = Shaping {
        provider: PROVIDERS[idx("p", PROVIDERS.len())],
        target: PROTOCOLS[idx("t", PROTOCOLS.len())],
        options: c.get("o").and_then(Value::as_object),
        max_tokens: c.get("m").and_then(Value::as_u64),
        request_body: c.get("r").and_then(Value::as_object),
        force_request_body: c.get("f").and_then(Value::as_bool) == Some(true),
    };
    let mut tree = v;
    let changed = shape(&mut tree, &s);
    let mut doc = Doc::of(&r);
    assert_eq!(shape(&mut doc, &s), changed);
    // What the upstream parses from each path's bytes. A field the raw path leaves alone
    // keeps the client's digits, where the tree path writes back serde's parse of them:
    // without serde_json's `float_roundtrip`, a float of many digits can move by an ulp.
    let raw_out: Value = serde_json::from_slice(&doc.to_vec()).unwrap();
    let tree_out: Value = serde_json::from_slice(&serde_json::to_vec(&tree).unwrap()).unwrap();
    assert!(same(&raw_out, &tree_out), "raw {raw_out}\ntree {tree_out}");
});

/// Equal JSON, floats within a few ulps.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => (p - q).abs() <= p.abs().max(q.abs()) * 1e-15,
                    _ => false,
                }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q))),
        _ => a == b,
    }
}
