//! Amazon Bedrock through a running proxy, against a fake that verifies SigV4 itself.

use aigw_llm::eventstream::{Decoder, Message};
use aigw_testkit::bedrock::{AwsKeys, bedrock};
use aigw_testkit::fake::FakeServer;
use aigw_testkit::http;
use serde_json::{Value, json};

use crate::common::*;

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123";

fn aws(keys: &AwsKeys) -> Value {
    let mut a = json!({"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key});
    if let Some(t) = &keys.session_token {
        a["session_token"] = json!(t);
    }
    a
}

/// The seed's Bedrock route, with `override.endpoint` pointing at the fake's origin.
fn route(id: &str, uri: &str, keys: &AwsKeys, endpoint: String, model: Option<&str>) -> Value {
    let mut ai = json!({"provider": "bedrock", "auth": {"aws": aws(keys)}, "provider_conf": {"region": "us-east-1"},
                        "override": {"endpoint": endpoint}});
    if let Some(m) = model {
        ai["options"] = json!({"model": m});
    }
    json!({"id": id, "uri": uri, "methods": ["POST"], "plugins": {"ai-proxy": ai}})
}

fn decode(bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    Decoder::new().push(bytes, &mut out).expect("valid event-stream frames");
    out
}

fn converse_body() -> Value {
    json!({"messages": [{"role": "user", "content": [{"text": "What is 1+1?"}]}], "inferenceConfig": {"maxTokens": 256}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_and_converse_stream_signed_with_sigv4() {
    let keys = AwsKeys::example();
    let mut session = AwsKeys::example();
    session.session_token = Some("FwoGZXIvYXdzEXAMPLETOKEN".into());
    let mut wrong = AwsKeys::example();
    wrong.secret_access_key = "not-the-secret".into();
    let fake = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let fake_tok = FakeServer::start(bedrock(session.clone(), "us-east-1")).await;
    let (p, _d) = standalone(vec![
        route("seed", "/bedrock/converse", &keys, fake.url(), Some(MODEL)),
        route("profile", "/profile/converse", &keys, fake.url(), Some(&format!("us.{MODEL}"))),
        route(
            "arn",
            "/arn/converse",
            &keys,
            format!("{}/model/{}/converse", fake.url(), ARN.replace(':', "%3A").replace('/', "%2F")),
            None,
        ),
        route("token", "/token/converse", &session, fake_tok.url(), Some(MODEL)),
        route("wrong", "/wrong/converse", &wrong, fake.url(), Some(MODEL)),
        route("nomodel", "/nomodel/converse", &keys, fake.url(), None),
        json!({"id": "boto", "uri": "/model/*", "plugins": {"ai-proxy": {"provider": "bedrock", "auth": {"aws": aws(&keys)},
            "provider_conf": {"region": "us-east-1"}, "override": {"endpoint": fake.url()}}}}),
    ])
    .await;

    // The seed's example, as written.
    let r = http::post_json(&format!("{}/bedrock/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["output"]["message"]["content"][0]["text"], format!("1 + 1 = 2. (model={MODEL})"));
    assert_eq!(r.json()["usage"]["totalTokens"], 23);
    let sent = fake.last();
    assert_eq!(sent.path(), "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
    assert!(sent.header("authorization").unwrap().starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/"));
    assert_eq!(sent.json()["inferenceConfig"]["maxTokens"], 256);

    // stream: true selects ConverseStream; frames pass through unchanged.
    let mut body = converse_body();
    body["stream"] = json!(true);
    let mut s = http::post_stream(&format!("{}/bedrock/converse", p.data), &[], &body).await.unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "application/vnd.amazon.eventstream");
    let mut bytes = Vec::new();
    while let Some(d) = s.next_data().await {
        bytes.extend_from_slice(&d);
    }
    let kinds: Vec<String> = decode(&bytes).iter().map(|m| m.kind().to_owned()).collect();
    assert_eq!(kinds.first().map(String::as_str), Some("messageStart"));
    assert_eq!(kinds.last().map(String::as_str), Some("metadata"));
    assert_eq!(fake.last().path(), "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream");
    assert!(fake.last().json().get("stream").is_none(), "the gateway-only flag is removed before signing");

    // A cross-region profile id, and an ARN given pre-encoded in override.endpoint.
    let r = http::post_json(&format!("{}/profile/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.last().path(), "/model/us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
    let r = http::post_json(&format!("{}/arn/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&format!("model={ARN}")), "{}", r.text());
    // ...and stream: true on an endpoint ending in /converse still streams (APISIX does not).
    let mut s = http::post_stream(&format!("{}/arn/converse", p.data), &[], &body).await.unwrap();
    assert_eq!(s.headers["content-type"], "application/vnd.amazon.eventstream");
    let mut bytes = Vec::new();
    while let Some(d) = s.next_data().await {
        bytes.extend_from_slice(&d);
    }
    assert!(fake.last().path().ends_with("%2Fabc123/converse-stream"), "{}", fake.last().path());
    assert_eq!(decode(&bytes).last().unwrap().kind(), "metadata");

    // A session token is sent and signed.
    let r = http::post_json(&format!("{}/token/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake_tok.last().header("x-amz-security-token"), Some("FwoGZXIvYXdzEXAMPLETOKEN"));
    assert!(fake_tok.last().header("authorization").unwrap().contains("x-amz-security-token"));

    // A wrong secret is a 403 from "AWS", passed through.
    let r = http::post_json(&format!("{}/wrong/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 403);
    assert!(r.json()["message"].as_str().unwrap().contains("signature we calculated does not match"));

    // No model anywhere: a 400 naming the fix. The body's model works and is removed.
    let r = http::post_json(&format!("{}/nomodel/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("options.model"), "{}", r.text());
    let mut with_model = converse_body();
    with_model["model"] = json!("meta.llama3-70b-instruct-v1:0");
    let r = http::post_json(&format!("{}/nomodel/converse", p.data), &[], &with_model).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(fake.last().json().get("model").is_none());

    // boto3's shape: the model id in the request path.
    let r = http::post_json(
        &format!("{}/model/{}/converse", p.data, "amazon.nova-pro-v1%3A0"),
        &[("authorization", "AWS4-HMAC-SHA256 Credential=client")],
        &converse_body(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.last().path(), "/model/amazon.nova-pro-v1%3A0/converse");

    // Usage from Converse bodies and the metadata event.
    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    assert!(m.contains("aigw_proxy_completion_tokens_total 72"), "8 × 9 output tokens:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_errors_and_stream_exceptions() {
    let keys = AwsKeys::example();
    let fake = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let (p, _d) = standalone(vec![
        route("throttled", "/throttled/converse", &keys, fake.url(), Some("throttle.model-v1:0")),
        route("breaks", "/breaks/converse", &keys, fake.url(), Some("exception-stream.model-v1:0")),
        route("chat-throttled", "/v1/chat/completions", &keys, fake.url(), Some("throttle.model-v1:0")),
        route("chat-breaks", "/breaks/v1/chat/completions", &keys, fake.url(), Some("exception-stream.model-v1:0")),
    ])
    .await;
    let r = http::post_json(&format!("{}/throttled/converse", p.data), &[], &converse_body()).await.unwrap();
    assert_eq!(r.status, 429);
    assert!(r.headers["x-amzn-errortype"].to_str().unwrap().starts_with("ThrottlingException"));
    // An OpenAI client gets the error in OpenAI's shape, same status.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r = http::post_json(&format!("{}/v1/chat/completions", p.data), &[], &chat).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "ThrottlingException");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("Too many requests"));
    // An exception frame inside a 200 stream: forwarded to Converse clients as AWS sent it...
    let mut body = converse_body();
    body["stream"] = json!(true);
    let mut s = http::post_stream(&format!("{}/breaks/converse", p.data), &[], &body).await.unwrap();
    let mut bytes = Vec::new();
    while let Some(d) = s.next_data().await {
        bytes.extend_from_slice(&d);
    }
    let last = decode(&bytes).pop().unwrap();
    assert_eq!((last.message_type(), last.kind()), ("exception", "modelStreamErrorException"));
    // ...and to OpenAI clients as a terminal error chunk.
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    let mut s = http::post_stream(&format!("{}/breaks/v1/chat/completions", p.data), &[], &chat_stream).await.unwrap();
    let text = s.rest().await;
    assert!(text.trim_end().ends_with("}") && text.contains("modelStreamErrorException"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_clients_on_bedrock() {
    let keys = AwsKeys::example();
    let fake = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let (p, _d) = standalone(vec![
        route("openai", "/v1/chat/completions", &keys, fake.url(), Some(MODEL)),
        route("anthropic", "/v1/messages", &keys, fake.url(), Some(MODEL)),
    ])
    .await;
    let chat = json!({"model": "ignored", "max_tokens": 100, "temperature": 0.2, "stop": ["END"],
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 1+1?"}]});
    let r =
        http::post_json(&format!("{}/v1/chat/completions", p.data), &[("authorization", "Bearer sk-placeholder")], &chat).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["content"], format!("1 + 1 = 2. (model={MODEL})"));
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["total_tokens"], 23);
    let sent = fake.last().json();
    assert_eq!(sent["system"], json!([{"text": "Be terse."}]));
    assert_eq!(sent["inferenceConfig"], json!({"maxTokens": 100, "temperature": 0.2, "stopSequences": ["END"]}));

    // Streamed, with tools: event-stream → OpenAI SSE chunks, usage, [DONE].
    let mut body = chat.clone();
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut s = http::post_stream(&format!("{}/v1/chat/completions", p.data), &[], &body).await.unwrap();
    assert_eq!(s.status, 200);
    assert!(s.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = s.rest().await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        text.contains("\"name\":\"get_weather\"")
            && text.contains("\"finish_reason\":\"tool_calls\"")
            && text.contains("\"total_tokens\":23"),
        "{text}"
    );
    assert!(fake.last().path().ends_with("/converse-stream"));

    // An Anthropic client on Bedrock: the converters compose.
    let msg = json!({"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "What is 1+1?"}]});
    let r = http::post_json(&format!("{}/v1/messages", p.data), &[("x-api-key", "placeholder")], &msg).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    assert_eq!(r.json()["content"][0]["text"], format!("1 + 1 = 2. (model={MODEL})"));
    assert_eq!(r.json()["usage"]["output_tokens"], 9);
    let mut m = msg.clone();
    m["stream"] = json!(true);
    let mut s = http::post_stream(&format!("{}/v1/messages", p.data), &[], &m).await.unwrap();
    let text = s.rest().await;
    assert!(text.starts_with("event: message_start") && text.contains("event: message_stop"), "{text}");
}

/// boto3's `bedrock-runtime` client (converse and converse_stream) and the official
/// `openai` SDK, pointed at aigw, reach the verifying fake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_openai_sdks_on_bedrock() {
    let Some(python) = python_with(&["boto3", "openai"]) else { return };
    let keys = AwsKeys::example();
    let fake = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let (p, _d) = standalone(vec![
        json!({"id": "boto", "uri": "/model/*", "plugins": {"ai-proxy": {"provider": "bedrock", "auth": {"aws": aws(&keys)},
            "provider_conf": {"region": "us-east-1"}, "override": {"endpoint": fake.url()}}}}),
        route("openai", "/v1/chat/completions", &keys, fake.url(), Some(MODEL)),
    ])
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/bedrock_sdks.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("AIGW_URL", &p.data)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("boto3: OK") && text.contains("openai: OK"), "{text}");
    assert!(fake.requests().iter().any(|r| r.path().ends_with("/converse-stream")));
}

/// Found in review (issue 8): the access log takes `$llm_tool_count` and `$llm_end_user_id`
/// from the client's request (also on Bedrock targets), escapes client values as nginx
/// does, writes one line per request (a failed converted answer too); the Bedrock
/// passthrough signs only the runtime paths it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_facts_escaping_and_passthrough_paths() {
    let keys = AwsKeys::example();
    let fake = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let not_json = FakeServer::start(std::sync::Arc::new(|_: &aigw_testkit::fake::Recorded| aigw_testkit::fake::Reply {
        status: ::http::StatusCode::OK,
        headers: Vec::new(),
        body: aigw_testkit::fake::ReplyBody::Stream {
            content_type: "application/json",
            chunks: vec![(std::time::Duration::ZERO, bytes::Bytes::from_static(b"<html>not json</html>"))],
            fail: false,
        },
        delay: std::time::Duration::ZERO,
    }))
    .await;
    let dir = aigw_testkit::proc::TempDir::new("alog-br");
    let log = dir.path().join("access.log");
    let file = dir.path().join("routes.json");
    let routes = vec![
        route("anthropic", "/v1/messages", &keys, fake.url(), Some(MODEL)),
        route("pass", "/bedrock/*", &keys, fake.url(), Some(MODEL)),
        json!({"id": "broken", "uri": "/broken/v1/messages", "plugins": {"ai-proxy": {"provider": "openai-compatible",
            "auth": {"header": {"Authorization": "Bearer k"}}, "override": {"endpoint": format!("{}/v1/chat/completions", not_json.url())}}}}),
    ];
    std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
    let format = "$request_id|$route_id|$status|$llm_tool_count|$llm_end_user_id|$request_llm_model";
    let p = Proxy::start(&["--routes", file.to_str().unwrap(), "--access-log", log.to_str().unwrap(), "--access-log-format", format], &[])
        .await;
    let msg = json!({"model": "claude\"\n127.0.0.1 forged", "max_tokens": 64, "metadata": {"user_id": "u-42"},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "What is 1+1?"}]});
    let r = http::post_json(&format!("{}/v1/messages", p.data), &[], &msg).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let ok_id = r.headers["x-aigw-request-id"].to_str().unwrap().to_owned();
    let r = http::post_json(&format!("{}/broken/v1/messages", p.data), &[], &msg).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["type"], "error");
    let bad_id = r.headers["x-aigw-request-id"].to_str().unwrap().to_owned();

    // Passthrough: runtime operations only.
    let r = http::post_json(&format!("{}/bedrock/model/{MODEL}/invoke", p.data), &[], &json!({"prompt": "x"})).await.unwrap();
    assert_ne!(r.status, 400, "{}", r.text());
    assert!(fake.last().path().starts_with("/model/"), "{}", fake.last().path());
    let before = fake.requests().len();
    let r = http::post_json(&format!("{}/bedrock/list-foundation-models", p.data), &[], &json!({"prompt": "x"})).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("bedrock passthrough"), "{}", r.text());
    assert_eq!(fake.requests().len(), before, "nothing was signed or sent");

    let text = aigw_testkit::wait_until("log lines", T, || async {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.lines().count() >= 4).then_some(t)
    })
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with(&ok_id)).count(), 1, "{text}");
    assert_eq!(lines.iter().filter(|l| l.starts_with(&bad_id)).count(), 1, "one line for a failed converted answer: {text}");
    let ok = lines.iter().find(|l| l.starts_with(&ok_id)).unwrap();
    assert_eq!(*ok, format!("{ok_id}|anthropic|200|1|u-42|claude\\x22\\x0A127.0.0.1 forged"));
    assert!(lines.iter().any(|l| l.starts_with(&bad_id) && l.contains("|broken|502|1|u-42|")), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
}
