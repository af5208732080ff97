//! Every answer the strict fakes give (OpenAI chat, Responses, embeddings, Anthropic,
//! Bedrock Converse, errors) is observed by `aigw_llm::usage::observe_json` exactly as by
//! its oracle (the scanner before the fast path), also when cut short at any byte.

use aigw_llm::eventstream::Decoder;
use aigw_llm::usage::{observe_json, oracle};
use aigw_testkit::bedrock::{AwsKeys, bedrock, sigv4_signature};
use aigw_testkit::fake::{self, Handler, ProviderSpec, Recorded, ReplyBody};
use bytes::Bytes;
use http::HeaderMap;
use serde_json::json;

fn request(path: &str, headers: &[(&'static str, &str)], body: serde_json::Value) -> Recorded {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        h.insert(*k, v.parse().unwrap());
    }
    Recorded {
        method: "POST".into(),
        path_and_query: path.into(),
        version: http::Version::HTTP_11,
        headers: h,
        body: Bytes::from(body.to_string()),
    }
}

/// A Converse request signed as the proxy would sign it.
fn signed(keys: &AwsKeys, path: &str, body: serde_json::Value) -> Recorded {
    let body = body.to_string();
    let amz_date = "20261207T000000Z";
    let mut h = HeaderMap::new();
    h.insert("host", "127.0.0.1:9".parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-amz-date", amz_date.parse().unwrap());
    let names = ["content-type", "host", "x-amz-date"];
    let sig = sigv4_signature("POST", path, "", &h, &names, body.as_bytes(), &keys.secret_access_key, amz_date, "us-east-1", "bedrock");
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/20261207/us-east-1/bedrock/aws4_request, SignedHeaders={}, Signature={sig}",
        keys.access_key_id,
        names.join(";")
    );
    h.insert("authorization", auth.parse().unwrap());
    Recorded { method: "POST".into(), path_and_query: path.into(), version: http::Version::HTTP_11, headers: h, body: Bytes::from(body) }
}

/// The JSON documents of one answer: the body of a whole answer, each SSE event's data,
/// each event-stream frame's payload.
fn documents(h: &Handler, r: &Recorded) -> Vec<Vec<u8>> {
    let reply = h(r);
    match reply.body {
        ReplyBody::Json(v) => vec![serde_json::to_vec(&v).unwrap(), serde_json::to_vec_pretty(&v).unwrap()],
        ReplyBody::Stream { content_type, chunks, .. } => {
            let bytes: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
            if content_type == "text/event-stream" {
                String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.trim().as_bytes().to_vec())
                    .collect()
            } else {
                let mut out = Vec::new();
                Decoder::new().push(&bytes, &mut out).unwrap();
                out.iter().map(|m| m.payload.to_vec()).collect()
            }
        }
    }
}

#[test]
fn every_fake_answer_is_observed_as_by_the_oracle() {
    let chat = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let streamed = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": true, "stream_options": {"include_usage": true}});
    let tool_turn = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "weather?"}, {"role": "tool", "content": "12C"}]});
    let bearer = [("authorization", "Bearer k")];
    let anth = [("x-api-key", "k"), ("anthropic-version", "2023-06-01")];
    let anth_body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let mut anth_stream = anth_body.clone();
    anth_stream["stream"] = json!(true);
    let openai = ProviderSpec::openai("k").handler();
    let mut cases: Vec<(Handler, Recorded)> = vec![
        (openai.clone(), request("/v1/chat/completions", &bearer, chat.clone())),
        (openai.clone(), request("/v1/chat/completions", &bearer, streamed.clone())),
        (openai.clone(), request("/v1/chat/completions", &bearer, json!({"model": "m", "messages": [], "max_tokens": 1}))),
        (openai.clone(), request("/v1/chat/completions", &[], chat.clone())),
        (openai.clone(), request("/v1/responses", &bearer, json!({"model": "gpt-4.1", "input": "hi"}))),
        (openai.clone(), request("/v1/responses", &bearer, json!({"model": "gpt-4.1", "input": "hi", "stream": true}))),
        (openai.clone(), request("/v1/embeddings", &bearer, json!({"model": "e", "input": ["a"]}))),
        (openai.clone(), request("/v1/nowhere", &bearer, chat.clone())),
        (fake::strict_openai("k"), request("/v1/chat/completions", &bearer, json!({"model": "m", "messages": [], "top_k": 1}))),
        (fake::openai_chat("deepseek", "k", ""), request("/chat/completions", &bearer, streamed.clone())),
        (fake::openai_weather_agent("k"), request("/v1/chat/completions", &bearer, chat.clone())),
        (fake::openai_weather_agent("k"), request("/v1/chat/completions", &bearer, streamed.clone())),
        (fake::openai_weather_agent("k"), request("/v1/chat/completions", &bearer, tool_turn.clone())),
        (fake::anthropic("k"), request("/v1/messages", &anth, anth_body.clone())),
        (fake::anthropic("k"), request("/v1/messages", &anth, anth_stream)),
        (fake::anthropic("k"), request("/v1/messages/count_tokens", &anth, anth_body.clone())),
        (fake::anthropic("k"), request("/v1/messages", &[], anth_body)),
    ];
    let mut openrouter = ProviderSpec::new("openrouter", fake::AuthCheck::Bearer("k".into()));
    openrouter.sse_comments = true;
    cases.push((openrouter.handler(), request("/v1/chat/completions", &bearer, streamed)));
    let keys = AwsKeys::example();
    let br = bedrock(keys.clone(), "us-east-1");
    let converse = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let tools = json!({"messages": [{"role": "user", "content": [{"text": "weather?"}]}],
                       "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {}}}}]}});
    for (path, body) in [
        ("/model/m%3A0/converse", converse.clone()),
        ("/model/m%3A0/converse-stream", converse.clone()),
        ("/model/m%3A0/converse", tools.clone()),
        ("/model/m%3A0/converse-stream", tools),
        ("/model/throttle/converse", converse.clone()),
        ("/model/exception-stream/converse-stream", converse.clone()),
        ("/model/m%3A0/converse", json!({"messages": []})),
    ] {
        cases.push((br.clone(), signed(&keys, path, body)));
    }
    cases.push((br.clone(), request("/model/m%3A0/converse", &[], converse)));
    let mut checked = 0;
    for (h, r) in &cases {
        let docs = documents(h, r);
        assert!(!docs.is_empty(), "{}", r.path_and_query);
        for d in docs {
            for cut in 0..=d.len() {
                let part = &d[..cut];
                assert_eq!(observe_json(part), oracle::observe_json(part), "{}: {}", r.path_and_query, String::from_utf8_lossy(part));
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}
