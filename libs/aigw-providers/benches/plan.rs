//! Criterion benches for the provider side of the hot path: shaping, the whole plan stage
//! (pass-through and Anthropic conversion), SigV4 signing. `cargo bench -p aigw-providers`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use aigw_llm::protocol::Protocol;
use aigw_model::Provider;
use aigw_providers::plan::{ClientRequest, plan};
use aigw_providers::shaping::{Shaping, shape};
use aigw_providers::sigv4::{AwsCredentials, Signer};
use aigw_providers::target::Target;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Value, json};

fn benches(c: &mut Criterion) {
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "What is 1+1? Answer briefly."}]});
    let options = json!({"model": "gpt-4o-mini", "temperature": 0.2}).as_object().cloned().unwrap();
    c.bench_function("shape/options+max_tokens", |b| {
        b.iter(|| {
            let mut body = chat.clone();
            let s = Shaping {
                provider: Provider::Openai,
                target: Protocol::OpenAiChat,
                options: Some(&options),
                max_tokens: Some(256),
                request_body: None,
                force_request_body: false,
            };
            shape(&mut body, &s)
        })
    });

    let conf = serde_json::from_value(json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
        "options": {"model": "gpt-4o-mini"}, "override": {"endpoint": "http://127.0.0.1:1/v1/chat/completions"}}))
    .unwrap();
    let t = Target::compile(Arc::new(conf), true).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("user-agent", HeaderValue::from_static("wrk"));
    headers.insert("authorization", HeaderValue::from_static("Bearer client"));
    let bytes = Bytes::from(serde_json::to_vec(&chat).unwrap());
    let req = ClientRequest {
        method: &Method::POST,
        path: "/v1/chat/completions",
        path_and_query: "/v1/chat/completions",
        headers: &headers,
        body: &bytes,
        protocol: Protocol::OpenAiChat,
    };
    c.bench_function("plan/openai_chat_passthrough", |b| b.iter(|| plan(black_box(&req), chat.clone(), &t).unwrap()));
    let anth: Value =
        json!({"model": "claude", "max_tokens": 256, "system": "Be terse.", "messages": [{"role": "user", "content": "What is 1+1?"}]});
    let abytes = Bytes::from(serde_json::to_vec(&anth).unwrap());
    let areq =
        ClientRequest { path: "/v1/messages", path_and_query: "/v1/messages", body: &abytes, protocol: Protocol::AnthropicMessages, ..req };
    c.bench_function("plan/anthropic_to_openai", |b| b.iter(|| plan(black_box(&areq), anth.clone(), &t).unwrap()));

    let creds = AwsCredentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    let signer = Signer { creds: &creds, region: "us-east-1", service: "bedrock" };
    let body = br#"{"messages":[{"role":"user","content":[{"text":"What is 1+1?"}]}],"inferenceConfig":{"maxTokens":256}}"#;
    let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    c.bench_function("sigv4/sign_converse", |b| {
        b.iter(|| {
            signer
                .sign(
                    "POST",
                    url,
                    &[("host", "bedrock-runtime.us-east-1.amazonaws.com"), ("content-type", "application/json")],
                    body,
                    SystemTime::now(),
                )
                .unwrap()
        })
    });
}

criterion_group!(plan_benches, benches);
criterion_main!(plan_benches);
