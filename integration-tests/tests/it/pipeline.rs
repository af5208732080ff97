//! The provider pipeline for OpenAI-protocol traffic, through a running proxy against
//! strict fake providers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aigw_testkit::fake::{AuthCheck, FakeServer, ProviderSpec, Reply};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::*;

fn route(id: &str, uri: &str, ai: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": {"ai-proxy": ai}})
}

fn chat_body() -> Value {
    json!({"messages": [{"role": "system", "content": "You are a mathematician"}, {"role": "user", "content": "What is 1+1?"}]})
}

struct Case {
    provider: &'static str,
    spec: ProviderSpec,
    /// The route's `auth`.
    auth: Value,
    /// `override.endpoint` suffix after the fake's origin (empty: bare origin → provider default path).
    endpoint_path: &'static str,
    embeddings: bool,
    responses: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_serves_chat_streams_embeddings_and_responses() {
    let bearer = |k: &str| json!({"header": {"Authorization": format!("Bearer {k}")}});
    let cases = vec![
        Case {
            provider: "openai",
            spec: ProviderSpec::openai("k-openai"),
            auth: bearer("k-openai"),
            endpoint_path: "",
            embeddings: true,
            responses: true,
        },
        Case {
            provider: "deepseek",
            spec: ProviderSpec { chat: Some("/chat/completions"), ..ProviderSpec::new("deepseek", AuthCheck::Bearer("k-ds".into())) },
            auth: bearer("k-ds"),
            endpoint_path: "",
            embeddings: false,
            responses: false,
        },
        Case {
            provider: "azure-openai",
            spec: ProviderSpec {
                chat: Some("/openai/deployments/gpt-4/chat/completions"),
                azure: true,
                ..ProviderSpec::new("azure", AuthCheck::Header("api-key", "k-az".into()))
            },
            auth: json!({"header": {"api-key": "k-az"}}),
            endpoint_path: "/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview",
            embeddings: false,
            responses: false,
        },
        Case {
            provider: "aimlapi",
            spec: ProviderSpec::new("aimlapi", AuthCheck::Bearer("k-ml".into())),
            auth: bearer("k-ml"),
            endpoint_path: "",
            embeddings: false,
            responses: false,
        },
        Case {
            provider: "anthropic",
            spec: ProviderSpec::new("anthropic", AuthCheck::Bearer("k-an".into())),
            auth: bearer("k-an"),
            // Anthropic's OpenAI-compatible endpoint, named: used as given (CONTRACT §9;
            // without it OpenAI clients are converted to Messages, it/multi.rs).
            endpoint_path: "/v1/chat/completions",
            embeddings: false,
            responses: false,
        },
        Case {
            provider: "openrouter",
            spec: ProviderSpec {
                chat: Some("/api/v1/chat/completions"),
                sse_comments: true,
                ..ProviderSpec::new("openrouter", AuthCheck::Bearer("k-or".into()))
            },
            auth: bearer("k-or"),
            endpoint_path: "",
            embeddings: false,
            responses: false,
        },
        Case {
            provider: "gemini",
            spec: ProviderSpec {
                chat: Some("/v1beta/openai/chat/completions"),
                embeddings: Some("/v1beta/openai/embeddings"),
                ..ProviderSpec::new("gemini", AuthCheck::Bearer("k-gm".into()))
            },
            auth: bearer("k-gm"),
            endpoint_path: "",
            embeddings: true,
            responses: false,
        },
        Case {
            provider: "openai-compatible",
            spec: ProviderSpec {
                responses: Some("/v1/responses"),
                embeddings: Some("/v1/embeddings"),
                ..ProviderSpec::new("compat", AuthCheck::Query("key", "k q".into()))
            },
            auth: json!({"query": {"key": "k q"}}),
            endpoint_path: "",
            embeddings: true,
            responses: true,
        },
    ];
    let mut fakes = Vec::new();
    let mut routes = Vec::new();
    for c in &cases {
        let fake = FakeServer::start(c.spec.clone().handler()).await;
        let ai = |model: &str| {
            json!({"provider": c.provider, "auth": c.auth, "options": {"model": model},
                   "override": {"endpoint": format!("{}{}", fake.url(), c.endpoint_path)}})
        };
        routes.push(route(&format!("{}-chat", c.provider), &format!("/{}/chat", c.provider), ai("chat-model")));
        routes.push(route(&format!("{}-emb", c.provider), &format!("/{}/embeddings", c.provider), ai("text-embedding-3-small")));
        routes.push(route(&format!("{}-resp", c.provider), &format!("/{}/v1/responses", c.provider), ai("gpt-4.1")));
        fakes.push(fake);
    }
    let (p, _dir) = standalone(routes).await;

    for (c, fake) in cases.iter().zip(&fakes) {
        let who = c.provider;
        // Chat.
        let r = http::post_json(&format!("{}/{who}/chat", p.data), &[], &chat_body()).await.unwrap();
        assert_eq!(r.status, 200, "{who}: {}", r.text());
        assert_eq!(r.json()["system_fingerprint"], c.spec.name, "{who}");
        assert_eq!(r.json()["usage"]["total_tokens"], 31, "{who}");
        assert_eq!(fake.last().path(), c.spec.chat.unwrap(), "{who}: provider default path");
        if c.provider == "azure-openai" {
            assert!(fake.last().json().get("model").is_none(), "azure: model stripped");
        } else {
            assert_eq!(fake.last().json()["model"], "chat-model", "{who}");
        }

        // Streamed chat: usage is forced on and comes back; bytes pass through untouched.
        let mut body = chat_body();
        body["stream"] = json!(true);
        let mut s = http::post_stream(&format!("{}/{who}/chat", p.data), &[], &body).await.unwrap();
        assert_eq!(s.status, 200, "{who}");
        assert!(s.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"), "{who}");
        let text = s.rest().await;
        assert!(text.ends_with("data: [DONE]\n\n"), "{who}: {text}");
        assert!(text.contains("\"usage\":{\"completion_tokens\":3,\"prompt_tokens\":11,\"total_tokens\":14}"), "{who}: {text}");
        if c.spec.sse_comments {
            assert!(text.contains(": OPENROUTER PROCESSING"), "comments are forwarded as sent");
        }
        assert_eq!(fake.last().json()["stream_options"]["include_usage"], true, "{who}");

        // Embeddings.
        let r = http::post_json(&format!("{}/{who}/embeddings", p.data), &[], &json!({"input": "hello world"})).await.unwrap();
        if c.embeddings {
            assert_eq!(r.status, 200, "{who}: {}", r.text());
            assert_eq!(r.json()["usage"]["prompt_tokens"], 2);
            assert_eq!(fake.last().path(), c.spec.embeddings.unwrap());
        } else {
            assert_eq!(r.status, 400, "{who}");
            let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
            assert!(msg.contains("does not support openai-embeddings") && msg.contains("supported: openai-chat"), "{who}: {msg}");
        }

        // Responses API, plain and streamed (the strict fake rejects stream_options there).
        let r = http::post_json(&format!("{}/{who}/v1/responses", p.data), &[], &json!({"input": "hi"})).await.unwrap();
        if c.responses {
            assert_eq!(r.status, 200, "{who}: {}", r.text());
            assert_eq!(r.json()["usage"]["total_tokens"], 62);
            let mut s =
                http::post_stream(&format!("{}/{who}/v1/responses", p.data), &[], &json!({"input": "hi", "stream": true})).await.unwrap();
            assert_eq!(s.status, 200);
            let text = s.rest().await;
            assert!(text.contains("event: response.completed"), "{who}: {text}");
            assert!(!text.contains("event: error"), "{who}: {text}");
        } else {
            assert_eq!(r.status, 400, "{who}");
            assert!(r.json()["error"]["message"].as_str().unwrap().contains("does not support openai-responses"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_shaping_max_tokens_options_and_request_body() {
    let openai = FakeServer::start(ProviderSpec::openai("k").handler()).await;
    let compat = FakeServer::start(
        ProviderSpec { responses: Some("/v1/responses"), ..ProviderSpec::new("c", AuthCheck::Bearer("k".into())) }.handler(),
    )
    .await;
    let auth = json!({"header": {"Authorization": "Bearer k"}});
    let ai = |provider: &str, fake: &FakeServer, extra: Value| {
        let mut a = json!({"provider": provider, "auth": auth, "options": {"model": "gpt-4"}, "override": {"endpoint": fake.url()}});
        for (k, v) in extra.as_object().unwrap() {
            if k == "override" {
                for (ok, ov) in v.as_object().unwrap() {
                    a["override"][ok] = ov.clone();
                }
            } else {
                a[k] = v.clone();
            }
        }
        a
    };
    let (p, _d) = standalone(vec![
        route("o-mt", "/o/mt", ai("openai", &openai, json!({"override": {"llm_options": {"max_tokens": 555}}}))),
        route("o-plain", "/o/plain", ai("openai", &openai, json!({}))),
        route("o-resp", "/o/v1/responses", ai("openai", &openai, json!({"override": {"llm_options": {"max_tokens": 77}}}))),
        route("c-mt", "/c/mt", ai("openai-compatible", &compat, json!({"override": {"llm_options": {"max_tokens": 555}}}))),
        route("c-fill", "/c/fill", ai("openai-compatible", &compat, json!({"override": {"request_body": {"openai-chat": {"temperature": 0.2, "metadata": {"tier": "gold"}}}}}))),
        route("c-force", "/c/force", ai("openai-compatible", &compat, json!({"override": {"request_body": {"openai-chat": {"temperature": 0.2, "metadata": {"tier": "gold"}}}, "request_body_force_override": true}}))),
        route("c-prec", "/c/prec", ai("openai-compatible", &compat, json!({"override": {"llm_options": {"max_tokens": 100}, "request_body": {"openai-chat": {"max_tokens": 200}}, "request_body_force_override": true}}))),
        route("c-stream-opt", "/c/stream", ai("openai-compatible", &compat, json!({"options": {"model": "gpt-4", "stream": true}}))),
        json!({"id": "raw", "uri": "/raw", "plugins": {"ai-proxy": {"provider": "openai-compatible", "auth": auth, "override": {"endpoint": compat.url()}}}}),
    ])
    .await;
    let post = |path: &str, body: Value| {
        let url = format!("{}{path}", p.data);
        async move { http::post_json(&url, &[], &body).await.unwrap() }
    };
    let mut b = chat_body();
    b["max_tokens"] = json!(999);
    b["model"] = json!("client-model");

    // openai chat: max_completion_tokens, and max_tokens removed (the strict fake would 400).
    let r = post("/o/mt", b.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = openai.last().json();
    assert_eq!((sent["max_completion_tokens"].clone(), sent.get("max_tokens")), (json!(555), None));
    assert_eq!(sent["model"], "gpt-4", "options override the client's model");
    // Without llm_options an OpenAI client's deprecated max_tokens is renamed, not rejected.
    assert_eq!(post("/o/plain", b.clone()).await.status, 200);
    assert_eq!(openai.last().json()["max_completion_tokens"], 999);
    // Responses: max_output_tokens.
    assert_eq!(post("/o/v1/responses", json!({"input": "hi"})).await.status, 200);
    assert_eq!(openai.last().json()["max_output_tokens"], 77);
    // openai-compatible: max_tokens, forced over the client's value.
    assert_eq!(post("/c/mt", b.clone()).await.status, 200);
    assert_eq!(compat.last().json()["max_tokens"], 555);

    // request_body fills gaps (client wins) ...
    let mut c = chat_body();
    c["temperature"] = json!(1);
    c["metadata"] = json!({"team": "web"});
    post("/c/fill", c.clone()).await;
    let sent = compat.last().json();
    assert_eq!((sent["temperature"].clone(), sent["metadata"].clone()), (json!(1), json!({"team": "web", "tier": "gold"})));
    // ... or overwrites when forced.
    post("/c/force", c).await;
    let sent = compat.last().json();
    assert_eq!((sent["temperature"].clone(), sent["metadata"].clone()), (json!(0.2), json!({"team": "web", "tier": "gold"})));
    // request_body runs after llm_options.
    post("/c/prec", chat_body()).await;
    assert_eq!(compat.last().json()["max_tokens"], 200);

    // stream from options still gets usage (APISIX loses it).
    let mut s = http::post_stream(&format!("{}/c/stream", p.data), &[], &chat_body()).await.unwrap();
    let text = s.rest().await;
    assert!(text.contains("\"total_tokens\":14") && text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(compat.last().json()["stream_options"]["include_usage"], true);

    // An unchanged body is forwarded byte for byte.
    let raw = "{\"model\": \"m\",   \"messages\": [ {\"role\":\"user\",\"content\":\"hi\"} ] }";
    let r = http::send(::http::Method::POST, &format!("{}/raw", p.data), &[("content-type", "application/json")], raw).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(compat.last().body, Bytes::from(raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_forwarded_and_credentials_stripped() {
    let fake = FakeServer::start(ProviderSpec::new("h", AuthCheck::Bearer("route-key".into())).handler()).await;
    let open = FakeServer::start(ProviderSpec::new("o", AuthCheck::Bearer("client-key".into())).handler()).await;
    let (p, _d) = standalone(vec![
        route(
            "creds",
            "/creds",
            json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer route-key"}},
            "options": {"model": "m"}, "override": {"endpoint": fake.url()}}),
        ),
        route(
            "nocreds",
            "/nocreds",
            json!({"provider": "openai-compatible", "auth": {}, "options": {"model": "m"}, "override": {"endpoint": open.url()}}),
        ),
    ])
    .await;
    let client_headers = [
        ("authorization", "Bearer client-key"),
        ("x-api-key", "sk-ant-client"),
        ("api-key", "azure-client"),
        ("x-goog-api-key", "goog-client"),
        ("cookie", "session=1"),
        ("accept-encoding", "gzip"),
        ("x-custom", "yes"),
        ("openai-organization", "org-1"),
    ];
    let r = http::post_json(&format!("{}/creds", p.data), &client_headers, &chat_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.contains_key("x-aigw-request-id"));
    assert!(r.headers["x-aigw-upstream-latency-ms"].to_str().unwrap().parse::<u64>().is_ok());
    let got = fake.last();
    assert_eq!(got.header("authorization"), Some("Bearer route-key"));
    for h in ["x-api-key", "api-key", "x-goog-api-key", "cookie", "accept-encoding"] {
        assert_eq!(got.header(h), None, "{h} must not reach the upstream");
    }
    assert_eq!(got.header("x-custom"), Some("yes"));
    assert_eq!(got.header("openai-organization"), Some("org-1"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    // A route without credentials lets the client's own key through (bring-your-own-key).
    let r = http::post_json(&format!("{}/nocreds", p.data), &client_headers, &chat_body()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(open.last().header("cookie"), None, "cookies never go upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_and_request_limits() {
    let slow = FakeServer::start(std::sync::Arc::new(|_r: &aigw_testkit::fake::Recorded| {
        Reply::json(::http::StatusCode::OK, json!({"choices": []})).delayed(Duration::from_secs(3))
    }))
    .await;
    let limited = FakeServer::start(std::sync::Arc::new(|r: &aigw_testkit::fake::Recorded| {
        if r.path().ends_with("/busy") {
            Reply::json(
                ::http::StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
            )
            .with_header("retry-after", "7")
            .with_header("x-ratelimit-remaining-requests", "0")
        } else {
            Reply::json(::http::StatusCode::SERVICE_UNAVAILABLE, json!({"error": {"message": "overloaded", "type": "server_error"}}))
        }
    }))
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // bound then dropped: refused
    let ai = |endpoint: String, extra: Value| {
        let mut a = json!({"provider": "openai-compatible", "auth": {}, "options": {"model": "m"}, "override": {"endpoint": endpoint}});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let (p, _d) = standalone(vec![
        route("refused", "/refused", ai(format!("http://{closed}/v1/chat/completions"), json!({}))),
        route("slow", "/slow", ai(format!("{}/v1/chat/completions", slow.url()), json!({"timeout": 200}))),
        route("busy", "/busy", ai(format!("{}/busy", limited.url()), json!({}))),
        route("down", "/down", ai(format!("{}/down", limited.url()), json!({}))),
        route("small", "/small", ai(format!("{}/x", limited.url()), json!({"max_req_body_size": 100}))),
    ])
    .await;
    let r = p.chat("/refused").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    let r = p.chat("/slow").await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    let r = p.chat("/busy").await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded", "upstream body passed through");
    assert_eq!(r.headers["retry-after"], "7");
    assert_eq!(r.headers["x-ratelimit-remaining-requests"], "0");
    let r = p.chat("/down").await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["message"].as_str()), (503, Some("overloaded")));
    let mut big = chat_body();
    big["padding"] = json!("x".repeat(200));
    let r = http::post_json(&format!("{}/small", p.data), &[], &big).await.unwrap();
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("greater than the maximum size 100"));
}

fn sse_chunks(n: usize, delay: Duration) -> Vec<(Duration, Bytes)> {
    let spec = ProviderSpec { deltas: n, chunk_delay: delay, ..ProviderSpec::new("s", AuthCheck::Bearer(String::new())) };
    aigw_testkit::fake::chat_stream_chunks(&spec, "m", true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_a_terminal_error_never_silently() {
    use aigw_testkit::fake::Recorded;
    use std::sync::Arc;
    let fake = FakeServer::start(Arc::new(|r: &Recorded| {
        let p = r.path().to_owned();
        match p.as_str() {
            "/slow" => Reply::sse(sse_chunks(30, Duration::from_millis(50))),
            "/big" => Reply::sse(sse_chunks(30, Duration::ZERO)),
            "/dies" => {
                let mut c = sse_chunks(2, Duration::ZERO);
                c.truncate(3); // role + two deltas, then the connection is cut
                Reply::sse(c).failing()
            }
            "/no-done" => {
                let mut c = sse_chunks(2, Duration::ZERO);
                c.pop();
                Reply::sse(c)
            }
            "/stall" => {
                let mut c = sse_chunks(1, Duration::ZERO);
                c.last_mut().unwrap().0 = Duration::from_secs(3);
                Reply::sse(c)
            }
            _ => Reply::json(::http::StatusCode::OK, json!({"pad": "x".repeat(500)})),
        }
    }))
    .await;
    let ai = |path: &str, extra: Value| {
        let mut a = json!({"provider": "openai-compatible", "auth": {}, "options": {"model": "m"}, "override": {"endpoint": format!("{}{path}", fake.url())}});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let (p, _d) = standalone(vec![
        route("slow", "/slow", ai("/slow", json!({"max_stream_duration_ms": 300}))),
        route("big", "/big", ai("/big", json!({"max_response_bytes": 600}))),
        route("dies", "/dies", ai("/dies", json!({}))),
        route("no-done", "/no-done", ai("/no-done", json!({}))),
        route("stall", "/stall", ai("/stall", json!({"timeout": 300}))),
        route("json-big", "/json-big", ai("/json", json!({"max_response_bytes": 100}))),
    ])
    .await;
    let mut stream_body = chat_body();
    stream_body["stream"] = json!(true);
    for (path, needle) in [
        ("/slow", "max_stream_duration_ms exceeded"),
        ("/big", "max_response_bytes exceeded"),
        ("/dies", "upstream stream failed"),
        ("/no-done", "ended before its end marker"),
        ("/stall", "no data from the upstream for 300 ms"),
    ] {
        let mut s = http::post_stream(&format!("{}{path}", p.data), &[], &stream_body).await.unwrap();
        assert_eq!(s.status, 200, "{path}");
        let text = s.rest().await;
        assert!(text.starts_with("data: {"), "{path}: some output before the end: {text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("data: {\"error\":") && last.contains(needle), "{path}: last event {last:?}");
        let err: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
        assert_eq!(err["error"]["type"], "api_error", "{path}");
        assert!(!text.contains("[DONE]"), "{path}");
    }
    let r = http::post_json(&format!("{}/json-big", p.data), &[], &chat_body()).await.unwrap();
    assert_eq!(r.status, 502);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("max_response_bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_is_incremental_and_a_client_disconnect_stops_the_upstream() {
    let total = 40;
    let fake = FakeServer::start(std::sync::Arc::new(move |_r: &aigw_testkit::fake::Recorded| {
        Reply::sse(sse_chunks(total, Duration::from_millis(100)))
    }))
    .await;
    let (p, _d) = standalone(vec![route(
        "s",
        "/s",
        json!({"provider": "openai-compatible", "auth": {}, "options": {"model": "m", "stream": true}, "override": {"endpoint": fake.url()}}),
    )])
    .await;
    let mut s = http::post_stream(&format!("{}/s", p.data), &[], &chat_body()).await.unwrap();
    let first = s.next_data().await.unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("\"role\":\"assistant\""));
    // The first chunk is here while the upstream is still producing: nothing was buffered.
    assert_eq!(fake.stats.streams_finished.load(Ordering::SeqCst), 0);
    let second = s.next_data().await.unwrap();
    assert!(std::str::from_utf8(&second).unwrap().contains("part0"));
    assert!(fake.stats.chunks_sent.load(Ordering::SeqCst) < total);
    // The client goes away: the upstream is cut off long before its last chunk.
    drop(s);
    wait_until("upstream abandoned", T, || async { (fake.stats.streams_abandoned.load(Ordering::SeqCst) == 1).then_some(()) }).await;
    assert!(fake.stats.chunks_sent.load(Ordering::SeqCst) < total / 2, "sent {}", fake.stats.chunks_sent.load(Ordering::SeqCst));
    assert_eq!(fake.stats.streams_finished.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pool_caps_connections_and_keepalive_false_reconnects() {
    let slow = FakeServer::start(std::sync::Arc::new(|_r: &aigw_testkit::fake::Recorded| {
        Reply::json(::http::StatusCode::OK, json!({"choices": [], "usage": {"prompt_tokens": 1}})).delayed(Duration::from_millis(300))
    }))
    .await;
    let pooled = FakeServer::start(ProviderSpec::new("p", AuthCheck::Bearer("k".into())).handler()).await;
    let short_idle = FakeServer::start(ProviderSpec::new("i", AuthCheck::Bearer("k".into())).handler()).await;
    let unpooled = FakeServer::start(ProviderSpec::new("u", AuthCheck::Bearer("k".into())).handler()).await;
    let ai = |fake: &FakeServer, extra: Value| {
        let mut a = json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}}, "options": {"model": "m"}, "override": {"endpoint": fake.url()}});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let (p, _d) = standalone(vec![
        route("cap", "/cap", ai(&slow, json!({"keepalive_pool": 1}))),
        route("pooled", "/pooled", ai(&pooled, json!({}))),
        route("unpooled", "/unpooled", ai(&unpooled, json!({"keepalive": false}))),
        route("short-idle", "/short-idle", ai(&short_idle, json!({"keepalive_timeout": 1000}))),
    ])
    .await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/cap", p.data);
            async move { http::post_json(&url, &[], &chat_body()).await }
        })
        .collect();
    for r in futures_join(calls).await {
        assert_eq!(r.unwrap().status, 200);
    }
    assert_eq!(slow.stats.max_in_flight.load(Ordering::SeqCst), 1, "keepalive_pool: 1 allows one connection at a time");
    for _ in 0..3 {
        assert_eq!(p.chat("/pooled").await.unwrap().status, 200);
        assert_eq!(p.chat("/unpooled").await.unwrap().status, 200);
    }
    assert_eq!(pooled.stats.connections.load(Ordering::SeqCst), 1, "keepalive reuses the connection");
    assert_eq!(unpooled.stats.connections.load(Ordering::SeqCst), 3, "keepalive: false opens one per request");
    // keepalive_timeout: an idle pooled connection is closed after it (the wait is the behaviour under test).
    assert_eq!(p.chat("/short-idle").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(p.chat("/short-idle").await.unwrap().status, 200);
    assert_eq!(short_idle.stats.connections.load(Ordering::SeqCst), 2, "the idle connection expired");
    // Usage seen on the side of every response reaches the metrics.
    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    let prompt: u64 = m.lines().find_map(|l| l.strip_prefix("aigw_proxy_prompt_tokens_total ")).unwrap().parse().unwrap();
    assert!(prompt >= 5 * 23, "{m}");
}

async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_verify_and_http2_upstreams() {
    let tls = FakeServer::start_tls(ProviderSpec::new("tls", AuthCheck::Bearer("k".into())).handler()).await;
    let ai = |verify: bool| {
        json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}}, "options": {"model": "m"},
               "ssl_verify": verify, "override": {"endpoint": tls.url()}})
    };
    let (p, _d) = standalone(vec![route("insecure", "/insecure", ai(false)), route("verified", "/verified", ai(true))]).await;
    let r = p.chat("/insecure").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tls.last().version, ::http::Version::HTTP_2, "h2 negotiated through ALPN");
    let before = tls.requests().len();
    let r = p.chat("/verified").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().to_lowercase().contains("certificate"), "{}", r.text());
    assert_eq!(tls.requests().len(), before, "nothing reached the untrusted upstream");
}

/// The seed's examples, PUT through the APISIX admin API as written, with only
/// `override.endpoint` added to reach the strict fakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_examples_work_as_written() {
    let openai = FakeServer::start(ProviderSpec::openai("sk-openai").handler()).await;
    let deepseek = FakeServer::start(
        ProviderSpec { chat: Some("/chat/completions"), ..ProviderSpec::new("deepseek", AuthCheck::Bearer("sk-ds".into())) }.handler(),
    )
    .await;
    let azure = FakeServer::start(
        ProviderSpec {
            chat: Some("/openai/deployments/gpt-4/chat/completions"),
            azure: true,
            ..ProviderSpec::new("azure", AuthCheck::Header("api-key", "az-key".into()))
        }
        .handler(),
    )
    .await;
    let dir = TempDir::new("seed");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    let put = |route: Value| {
        let url = cfg.admin("/routes");
        async move {
            let r = http::send(::http::Method::PUT, &url, &[("X-API-KEY", ADMIN_KEY)], serde_json::to_vec(&route).unwrap()).await.unwrap();
            assert!(r.status.is_success(), "{}", r.text());
        }
    };
    // Multi-model routing on post_arg.model (two routes on /anything).
    put(json!({"id": "ai-proxy-openai-route", "uri": "/anything", "methods": ["POST"], "vars": [["post_arg.model", "==", "openai"]],
        "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-openai"}}, "options": {"model": "gpt-4"},
            "override": {"endpoint": openai.url()}}}}))
    .await;
    put(json!({"id": "ai-proxy-deepseek-route", "uri": "/anything", "methods": ["POST"], "vars": [["post_arg.model", "==", "deepseek"]],
        "plugins": {"ai-proxy": {"provider": "deepseek", "auth": {"header": {"Authorization": "Bearer sk-ds"}}, "options": {"model": "deepseek-chat"},
            "override": {"endpoint": deepseek.url()}}}}))
    .await;
    // Azure, with its full deployment URL.
    put(json!({"id": "ai-proxy-azure", "uri": "/azure", "methods": ["POST"], "plugins": {"ai-proxy": {"provider": "azure-openai",
        "auth": {"header": {"api-key": "az-key"}}, "options": {"model": "gpt-4"},
        "override": {"endpoint": format!("{}/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview", azure.url())}}}}))
    .await;
    // Embeddings.
    put(json!({"id": "ai-proxy-embeddings", "uri": "/embeddings", "methods": ["POST"], "plugins": {"ai-proxy": {"provider": "openai",
        "auth": {"header": {"Authorization": "Bearer sk-openai"}}, "options": {"model": "text-embedding-3-small", "encoding_format": "float"},
        "override": {"endpoint": format!("{}/v1/embeddings", openai.url())}}}}))
    .await;

    let ask = |model: &str| json!({"model": model, "messages": [{"role": "system", "content": "You are a mathematician"}, {"role": "user", "content": "What is 1+1?"}]});
    let r = wait_until("routes served", T, || async {
        http::post_json(&format!("{}/anything", p.data), &[], &ask("deepseek")).await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.json()["model"], "deepseek-chat");
    let r = http::post_json(&format!("{}/anything", p.data), &[], &ask("openai")).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["model"].as_str()), (200, Some("gpt-4")));
    assert_eq!(http::post_json(&format!("{}/anything", p.data), &[], &ask("other")).await.unwrap().status, 404);
    let mut az = ask("ignored");
    for (k, v) in [("max_tokens", json!(800)), ("temperature", json!(0.7)), ("top_p", json!(0.95)), ("stop", Value::Null)] {
        az[k] = v;
    }
    let r = wait_until("azure served", T, || async {
        http::post_json(&format!("{}/azure", p.data), &[], &az).await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.json()["choices"][0]["message"]["role"], "assistant");
    assert_eq!(azure.last().json()["max_tokens"], 800);
    let r = wait_until("embeddings served", T, || async {
        http::post_json(&format!("{}/embeddings", p.data), &[], &json!({"input": "hello world"})).await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(r.json()["object"], "list");
    assert_eq!(openai.last().json()["encoding_format"], "float");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_records_llm_variables() {
    let fake = FakeServer::start(ProviderSpec::new("log", AuthCheck::Bearer("k".into())).handler()).await;
    let dir = TempDir::new("alog");
    let file = dir.path().join("routes.json");
    let log = dir.path().join("access.log");
    let r = route(
        "logged",
        "/logged",
        json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
        "options": {"model": "gpt-4"}, "override": {"endpoint": fake.url()}}),
    );
    std::fs::write(&file, json!({"routes": [r]}).to_string()).unwrap();
    let format = "$route_id|$status|$request_type|$request_llm_model|$llm_model|$llm_prompt_tokens|$llm_completion_tokens|$llm_total_tokens|$llm_stream|$llm_tool_count|$llm_end_user_id|$upstream_status|$http_x_team|$request_line";
    let p = Proxy::start(&["--routes", file.to_str().unwrap(), "--access-log", log.to_str().unwrap(), "--access-log-format", format], &[])
        .await;
    let mut body = chat_body();
    body["model"] = json!("client-model");
    body["user"] = json!("user-7");
    body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(http::post_json(&format!("{}/logged", p.data), &[("x-team", "ml")], &body).await.unwrap().status, 200);
    body["stream"] = json!(true);
    let mut s = http::post_stream(&format!("{}/logged", p.data), &[], &body).await.unwrap();
    s.rest().await;
    assert_eq!(p.chat("/missing").await.unwrap().status, 404);
    let lines = wait_until("three log lines", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    assert!(
        lines.contains(&"logged|200|ai_chat|client-model|gpt-4|23|8|31|false|1|user-7|200|ml|POST /logged HTTP/1.1".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"logged|200|ai_stream|client-model|gpt-4|11|3|14|true|1|user-7|200|-|POST /logged HTTP/1.1".to_owned()),
        "{lines:?}"
    );
    assert!(lines.contains(&"-|404|traditional_http|||0|0|0|false|0||-|-|POST /missing HTTP/1.1".to_owned()), "{lines:?}");
}
