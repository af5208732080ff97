//! Anthropic Messages through a running proxy: native to a strict Anthropic fake, and
//! converted to a strict OpenAI fake; plus the official Python SDK end to end.

use std::time::Duration;

use aigw_testkit::fake::{self, FakeServer, Recorded, Reply};
use aigw_testkit::http;
use serde_json::{Value, json};

use crate::common::*;

fn ask(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream, "system": "You are a mathematician",
           "messages": [{"role": "user", "content": "What is 1+1?"}]})
}

/// What the Anthropic Python SDK 2.x sends: a placeholder key in both places and a dated version.
const SDK_HEADERS: &[(&str, &str)] = &[
    ("authorization", "Bearer sk-ant-placeholder"),
    ("x-api-key", "sk-ant-placeholder"),
    ("anthropic-version", "2025-04-14"),
    ("anthropic-beta", "prompt-caching-2024-07-31"),
    ("x-stainless-lang", "python"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_anthropic_route() {
    let up = FakeServer::start(fake::anthropic("sk-ant-route")).await;
    let (p, _d) = standalone(vec![json!({"id": "claude", "uris": ["/v1/messages", "/v1/messages/count_tokens"], "plugins": {"ai-proxy": {
        "provider": "anthropic", "auth": {"header": {"x-api-key": "sk-ant-route"}}, "override": {"endpoint": up.url()}}}})])
    .await;
    let url = format!("{}/v1/messages", p.data);

    // Non-stream: forwarded byte for byte, the route's key replaces the client's.
    let raw = serde_json::to_vec(&ask(false)).unwrap();
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(SDK_HEADERS);
    let r = http::send(::http::Method::POST, &url, &headers, raw.clone()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "1+1 equals 2.");
    let got = up.last();
    assert_eq!(got.body, bytes::Bytes::from(raw), "unchanged body forwarded as sent");
    assert_eq!(got.header("x-api-key"), Some("sk-ant-route"));
    assert_eq!(got.header("authorization"), None, "placeholder bearer dropped");
    assert_eq!(got.header("anthropic-version"), Some("2025-04-14"), "client's version forwarded as sent");
    assert_eq!(got.header("anthropic-beta"), Some("prompt-caching-2024-07-31"));

    // Without anthropic-version the gateway supplies 2023-06-01 (the strict fake requires one).
    let r = http::post_json(&url, &[], &ask(false)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("anthropic-version"), Some("2023-06-01"));

    // Stream: events pass through unchanged.
    let mut s = http::post_stream(&url, &[], &ask(true)).await.unwrap();
    assert_eq!(s.status, 200);
    let text = s.rest().await;
    assert!(
        text.starts_with("event: message_start") && text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );

    // count_tokens passes through to Anthropic.
    let r = http::post_json(
        &format!("{}/v1/messages/count_tokens", p.data),
        &[],
        &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.json()["input_tokens"].as_u64()), (200, Some(42)));
    assert_eq!(up.last().path(), "/v1/messages/count_tokens");

    // Usage from message_start + message_delta: prompt counts cache reads and writes.
    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    assert!(m.contains("aigw_proxy_prompt_tokens_total 1050"), "3 × (50 + 200 + 100):\n{m}");
    assert!(m.contains("aigw_proxy_completion_tokens_total 90"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_clients_on_an_openai_backend() {
    let up = FakeServer::start(fake::strict_openai("sk-openai")).await;
    let agent = FakeServer::start(fake::openai_weather_agent("sk-agent")).await;
    let (p, _d) = standalone(vec![
        json!({"id": "convert", "uri": "/v1/messages", "plugins": {"ai-proxy": {"provider": "openai",
            "auth": {"header": {"Authorization": "Bearer sk-openai"}}, "options": {"model": "gpt-4"}, "override": {"endpoint": up.url()}}}}),
        json!({"id": "agent", "uri": "/agent/v1/messages", "plugins": {"ai-proxy": {"provider": "openai-compatible",
            "auth": {"header": {"Authorization": "Bearer sk-agent"}}, "override": {"endpoint": agent.url()}}}}),
        json!({"id": "byok", "uri": "/byok/v1/messages", "plugins": {"ai-proxy": {"provider": "openai-compatible",
            "auth": {}, "override": {"endpoint": agent.url()}}}}),
    ])
    .await;
    let url = format!("{}/v1/messages", p.data);

    // The seed's example: Anthropic in, OpenAI out, Anthropic back.
    let r = http::post_json(
        &url,
        SDK_HEADERS,
        &json!({"model": "gpt-4", "max_tokens": 1024, "messages": [{"role": "user", "content": "What is 1+1?"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    assert_eq!((m["type"].as_str(), m["role"].as_str(), m["stop_reason"].as_str()), (Some("message"), Some("assistant"), Some("end_turn")));
    assert_eq!(m["content"][0], json!({"type": "text", "text": "1+1 equals 2."}));
    assert_eq!(m["usage"], json!({"input_tokens": 23, "output_tokens": 8, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}));
    let sent = up.last();
    assert_eq!(sent.header("authorization"), Some("Bearer sk-openai"));
    for h in ["x-api-key", "anthropic-version", "anthropic-beta"] {
        assert_eq!(sent.header(h), None, "{h} must not reach an OpenAI backend");
    }
    let body = sent.json();
    assert_eq!((body["max_completion_tokens"].as_u64(), body.get("max_tokens")), (Some(1024), None));

    // Streamed, with a system prompt: Anthropic's event sequence, usage in message_delta.
    let mut s = http::post_stream(&url, SDK_HEADERS, &ask(true)).await.unwrap();
    assert_eq!(s.status, 200);
    assert!(s.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = s.rest().await;
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(kinds.contains(&"content_block_delta") && kinds.contains(&"message_delta"), "{kinds:?}");
    assert!(text.contains("\"output_tokens\":3"), "usage from the final OpenAI chunk: {text}");
    assert_eq!(up.last().json()["messages"][0], json!({"role": "system", "content": "You are a mathematician"}));

    // Multi-turn tool use, streamed, through the scripted agent backend.
    let tools = json!([{"name": "get_weather", "description": "Current weather", "input_schema": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let turn1 = json!({"model": "gpt-4o", "max_tokens": 256, "stream": true, "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let mut s = http::post_stream(&format!("{}/agent/v1/messages", p.data), SDK_HEADERS, &turn1).await.unwrap();
    let text = s.rest().await;
    assert!(text.contains("\"type\":\"tool_use\"") && text.contains("\"name\":\"get_weather\""), "{text}");
    assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
    let partial: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["partial_json"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), json!({"city": "Oslo"}));
    let turn2 = json!({"model": "gpt-4o", "max_tokens": 256, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_w1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1", "content": "3°C"}]}]});
    let r = http::post_json(&format!("{}/agent/v1/messages", p.data), SDK_HEADERS, &turn2).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], "It is 3°C in Oslo.");
    assert_eq!(r.json()["usage"]["cache_read_input_tokens"], 8);
    assert_eq!(r.json()["usage"]["input_tokens"], 32);

    // Bring your own key: no route credentials, the client's x-api-key becomes the bearer.
    let r = http::post_json(&format!("{}/byok/v1/messages", p.data), &[("x-api-key", "sk-agent")], &turn2).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agent.last().header("authorization"), Some("Bearer sk-agent"));
    assert_eq!(agent.last().header("x-api-key"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_errors_in_anthropic_shape() {
    let up = FakeServer::start(std::sync::Arc::new(|r: &Recorded| {
        let model = r.json()["model"].as_str().unwrap_or_default().to_owned();
        match model.as_str() {
            "limited" => Reply::json(
                ::http::StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
            )
            .with_header("retry-after", "9"),
            "broken" => {
                Reply::json(::http::StatusCode::INTERNAL_SERVER_ERROR, json!({"error": {"message": "boom", "type": "server_error"}}))
            }
            "dies" => Reply::sse(vec![(
                Duration::ZERO,
                bytes::Bytes::from("data: {\"id\":\"x\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"),
            )])
            .failing(),
            _ => Reply::json(::http::StatusCode::BAD_REQUEST, json!({"error": {"message": "bad model", "type": "invalid_request_error"}})),
        }
    }))
    .await;
    let (p, _d) = standalone(vec![json!({"id": "c", "uri": "/v1/messages", "plugins": {"ai-proxy": {"provider": "openai-compatible",
        "auth": {}, "override": {"endpoint": up.url()}}}})])
    .await;
    let url = format!("{}/v1/messages", p.data);
    let msg = |model: &str| json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});

    let r = http::post_json(&url, &[], &msg("limited")).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}}));
    assert_eq!(r.headers["retry-after"], "9");
    let r = http::post_json(&url, &[], &msg("broken")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["type"].as_str()), (500, Some("api_error")));
    let r = http::post_json(&url, &[], &msg("other")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));

    // Gateway-made errors.
    let r = http::post_json(&url, &[], &json!({"model": "m", "max_tokens": 10})).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("messages"));
    let r =
        http::post_json(&url, &[], &json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": true}]}]}))
            .await
            .unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let r = http::send(::http::Method::POST, &url, &[("content-type", "application/json")], "{oops").await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["type"].as_str()), (400, Some("error")));

    // A stream that dies mid-way ends with an Anthropic error event.
    let mut body = msg("dies");
    body["stream"] = json!(true);
    let mut s = http::post_stream(&url, &[], &body).await.unwrap();
    let text = s.rest().await;
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(text.trim_end().rsplit("\n\n").next().unwrap().starts_with("event: error\ndata: {\"error\""), "{text}");
}

/// The official `anthropic` Python SDK runs a streamed multi-turn tool-use conversation
/// through aigw to an OpenAI-protocol backend (integration-tests/py/anthropic_sdk_tools.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_tool_conversation() {
    let Some(python) = crate::common::python_with(&["anthropic"]) else { return };
    let agent = FakeServer::start(fake::openai_weather_agent("sk-agent")).await;
    let (p, _d) = standalone(vec![json!({"id": "agent", "uri": "/v1/messages", "plugins": {"ai-proxy": {"provider": "openai-compatible",
        "auth": {"header": {"Authorization": "Bearer sk-agent"}}, "options": {"model": "gpt-4o"}, "override": {"endpoint": agent.url()}}}})])
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/anthropic_sdk_tools.py");
    let out = tokio::process::Command::new(&python).arg(&script).env("AIGW_URL", &p.data).output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("anthropic sdk: OK"), "{text}");
    assert!(agent.requests().len() >= 3, "the conversation reached the backend");
}
