//! `ai-proxy-multi` end to end (CONTRACT §9): weighted and priority picking, fallback on
//! 429 / 5xx / refused connections, `max_retries`, errors in the client's protocol,
//! streams served whole by the instance that answered, cross-protocol fallback from an
//! OpenAI instance to an Anthropic one, active probes, passive ejection, consistent
//! hashing, the schema over REST; and OpenAI clients (the official SDK included) on a
//! plain `provider: anthropic` route.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aigw_testkit::fake::{self, FakeServer, Recorded, Reply};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::*;

const S: ::http::StatusCode = ::http::StatusCode::OK;

/// An OpenAI-compatible instance in front of `fake::openai_chat(name, "sk-<name>", "/v1")`.
fn oa(name: &str, url: &str, weight: u32, priority: i32) -> Value {
    json!({"name": name, "provider": "openai-compatible", "weight": weight, "priority": priority,
           "auth": {"header": {"Authorization": format!("Bearer sk-{name}")}}, "options": {"model": "gpt-4o"},
           "override": {"endpoint": format!("{url}/v1/chat/completions")}})
}

/// A route carrying `ai-proxy-multi` with `instances` and the top-level `extra` fields.
fn multi(id: &str, uris: &[&str], instances: Vec<Value>, extra: Value) -> Value {
    let mut plugin = json!({"instances": instances});
    for (k, v) in extra.as_object().unwrap() {
        plugin[k] = v.clone();
    }
    json!({"id": id, "uris": uris, "plugins": {"ai-proxy-multi": plugin}})
}

async fn chat_fake(name: &'static str) -> FakeServer {
    FakeServer::start(fake::openai_chat(name, &format!("sk-{name}"), "/v1")).await
}

/// A fake that answers every request with `status` and an OpenAI error naming itself.
async fn failing(name: &'static str, status: u16) -> FakeServer {
    FakeServer::start(Arc::new(move |_r: &Recorded| {
        Reply::json(
            ::http::StatusCode::from_u16(status).unwrap(),
            json!({"error": {"message": format!("{name} failed"), "type": "server_error", "code": name}}),
        )
        .with_header("retry-after", "5")
    }))
    .await
}

/// `http://127.0.0.1:PORT` where nothing listens.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "What is 1+1?"}]})
}

fn anthropic_body() -> Value {
    json!({"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "What is 1+1?"}]})
}

/// Chat-path requests a fake received (active probes excluded).
fn chats(f: &FakeServer) -> usize {
    f.requests().iter().filter(|r| r.path().ends_with("/chat/completions") || r.path().ends_with("/v1/messages")).count()
}

/// A standalone proxy with an access log in `format`.
async fn with_log(routes: Vec<Value>, format: &str) -> (Proxy, TempDir, PathBuf) {
    let dir = TempDir::new("multi");
    let file = dir.path().join("routes.json");
    let log = dir.path().join("access.log");
    std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap(), "--access-log", log.to_str().unwrap(), "--access-log-format", format], &[])
        .await;
    (p, dir, log)
}

async fn log_lines(log: &PathBuf, n: usize) -> Vec<String> {
    wait_until(&format!("{n} access log lines"), T, || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

async fn instances(p: &Proxy) -> Value {
    http::get(&format!("{}/status/instances", p.status), &[]).await.unwrap().json()
}

/// The status of `route`'s instance `name` on `/status/instances`.
async fn instance(p: &Proxy, route: &str, name: &str) -> Value {
    let v = instances(p).await;
    let r = v["routes"].as_array().unwrap().iter().find(|r| r["route_id"] == route).cloned().unwrap_or_else(|| panic!("{v}"));
    r["instances"].as_array().unwrap().iter().find(|i| i["name"] == name).cloned().unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_splits_1_to_3_and_names_the_instance() {
    let (a, b) = (chat_fake("a").await, chat_fake("b").await);
    let route = multi("w", &["/w"], vec![oa("a", &a.url(), 1, 0), oa("b", &b.url(), 3, 0)], json!({}));
    let (p, _d, log) = with_log(vec![route], "$llm_instance $status $upstream_status").await;
    for _ in 0..200 {
        let r = http::post_json(&format!("{}/w", p.data), &[], &chat_body(false)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let share = chats(&a) as f64 / 200.0;
    assert!((0.17..=0.33).contains(&share), "a (weight 1 of 4) got {share}");
    assert_eq!(chats(&a) + chats(&b), 200);
    // $llm_instance names the instance that answered.
    let lines = log_lines(&log, 200).await;
    assert_eq!(lines.iter().filter(|l| *l == "a 200 200").count(), chats(&a), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| *l == "b 200 200").count(), chats(&b));
    // Per-instance counters: /status/instances and /metrics.
    let s = instance(&p, "w", "a").await;
    assert_eq!(
        (s["attempts"].as_u64(), s["successes"].as_u64(), s["healthy"].as_bool()),
        (Some(chats(&a) as u64), Some(chats(&a) as u64), Some(true))
    );
    assert_eq!((s["weight"].as_u64(), s["priority"].as_i64()), (Some(1), Some(0)));
    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    assert!(m.contains(&format!("aigw_proxy_instance_attempts_total{{route=\"w\",instance=\"b\"}} {}", chats(&b))), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_fallback_on_429_and_5xx() {
    let (limited, broken, ok) = (failing("limited", 429).await, failing("broken", 500).await, chat_fake("ok").await);
    let closed = closed_port().await;
    let routes = vec![
        multi(
            "on429",
            &["/on429"],
            vec![oa("limited", &limited.url(), 1, 1), oa("ok", &ok.url(), 1, 0)],
            json!({"fallback_strategy": "http_429"}),
        ),
        multi(
            "on500",
            &["/on500"],
            vec![oa("broken", &broken.url(), 1, 1), oa("ok", &ok.url(), 1, 0)],
            json!({"fallback_strategy": ["http_5xx"]}),
        ),
        multi(
            "refused",
            &["/refused"],
            vec![oa("gone", &closed, 1, 1), oa("ok", &ok.url(), 1, 0)],
            json!({"fallback_strategy": "http_5xx"}),
        ),
        // http_5xx does not cover 429.
        multi(
            "only5xx",
            &["/only5xx"],
            vec![oa("limited", &limited.url(), 1, 1), oa("ok", &ok.url(), 1, 0)],
            json!({"fallback_strategy": "http_5xx"}),
        ),
    ];
    let (mut p, _d, log) = with_log(routes, "$route_id $llm_instance $status").await;
    for (path, from, status) in [("/on429", "limited", 429), ("/on500", "broken", 500), ("/refused", "gone", 502)] {
        let r = http::post_json(&format!("{}{path}", p.data), &[], &chat_body(false)).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["system_fingerprint"], "ok", "{path}");
        let line = p.proc.wait_log(&[&format!("ai instance {from} returned status {status}, falling back to ok")], T).await;
        assert!(line.contains("WARN"), "{line}");
        let s = instance(&p, &path[1..], from).await;
        assert_eq!((s["attempts"].as_u64(), s["failures"].as_u64(), s["fallbacks"].as_u64()), (Some(1), Some(1), Some(1)), "{path}: {s}");
    }
    assert_eq!((chats(&limited), chats(&broken), chats(&ok)), (1, 1, 3));
    let r = http::post_json(&format!("{}/only5xx", p.data), &[], &chat_body(false)).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (429, Some("limited")));
    assert_eq!(chats(&ok), 3);
    let lines = log_lines(&log, 4).await;
    assert!(lines.contains(&"on429 ok 200".to_owned()) && lines.contains(&"only5xx limited 429".to_owned()), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fallback_the_429_reaches_the_client_in_its_protocol() {
    let (limited, ok) = (failing("limited", 429).await, chat_fake("ok").await);
    let route = multi(
        "nf",
        &["/nf/v1/chat/completions", "/nf/v1/messages"],
        vec![oa("limited", &limited.url(), 1, 1), oa("ok", &ok.url(), 1, 0)],
        json!({}),
    );
    let (p, _d) = standalone(vec![route]).await;
    // OpenAI client, OpenAI instance: the upstream's answer as it came.
    let r = http::post_json(&format!("{}/nf/v1/chat/completions", p.data), &[], &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error": {"message": "limited failed", "type": "server_error", "code": "limited"}}));
    assert_eq!(r.headers["retry-after"], "5");
    // Anthropic client: the same 429 in Anthropic's envelope, retry-after kept.
    let r = http::post_json(&format!("{}/nf/v1/messages", p.data), &[], &anthropic_body()).await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"type": "error", "error": {"type": "rate_limit_error", "message": "limited failed"}}));
    assert_eq!(r.headers["retry-after"], "5");
    assert_eq!((chats(&limited), chats(&ok)), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_caps_the_attempts_and_the_last_error_wins() {
    let (x, y, z) = (failing("x", 500).await, failing("y", 503).await, failing("z", 500).await);
    let route = multi(
        "mr",
        &["/mr"],
        vec![oa("x", &x.url(), 1, 2), oa("y", &y.url(), 1, 1), oa("z", &z.url(), 1, 0)],
        json!({"fallback_strategy": "http_5xx", "max_retries": 1}),
    );
    let (p, _d, log) = with_log(vec![route], "$llm_instance $status $upstream_status").await;
    let r = http::post_json(&format!("{}/mr", p.data), &[], &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 503, "the last upstream error: {}", r.text());
    assert_eq!(r.json()["error"]["code"], "y");
    assert_eq!((chats(&x), chats(&y), chats(&z)), (1, 1, 0), "exactly two attempts");
    assert_eq!(log_lines(&log, 1).await, ["y 503 503"]);
    // Without max_retries every instance is tried once.
    let route = multi(
        "all",
        &["/all"],
        vec![oa("x", &x.url(), 1, 2), oa("y", &y.url(), 1, 1), oa("z", &z.url(), 1, 0)],
        json!({"fallback_strategy": "http_5xx"}),
    );
    let (p, _d) = standalone(vec![route]).await;
    let r = http::post_json(&format!("{}/all", p.data), &[], &chat_body(false)).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["code"].as_str()), (500, Some("z")));
    assert_eq!((chats(&x), chats(&y), chats(&z)), (2, 2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_refused_is_a_502_in_the_clients_protocol() {
    let (c1, c2) = (closed_port().await, closed_port().await);
    let route = multi(
        "down",
        &["/down/v1/chat/completions", "/down/v1/messages"],
        vec![oa("one", &c1, 1, 0), oa("two", &c2, 1, 0)],
        json!({"fallback_strategy": "http_5xx"}),
    );
    let (p, _d) = standalone(vec![route]).await;
    let r = http::post_json(&format!("{}/down/v1/chat/completions", p.data), &[], &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 502);
    let e = r.json();
    assert_eq!((e["error"]["type"].as_str(), e["error"]["code"].as_str()), (Some("api_error"), Some("upstream_unreachable")), "{e}");
    let r = http::post_json(&format!("{}/down/v1/messages", p.data), &[], &anthropic_body()).await.unwrap();
    assert_eq!(r.status, 502);
    let e = r.json();
    assert_eq!((e["type"].as_str(), e["error"]["type"].as_str()), (Some("error"), Some("api_error")), "{e}");
    for name in ["one", "two"] {
        let s = instance(&p, "down", name).await;
        assert_eq!((s["attempts"].as_u64(), s["failures"].as_u64()), (Some(2), Some(2)), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_first_instance_fails_is_served_whole_by_the_second() {
    let (broken, ok) = (failing("broken", 503).await, chat_fake("ok").await);
    let route =
        multi("s", &["/s"], vec![oa("broken", &broken.url(), 1, 1), oa("ok", &ok.url(), 1, 0)], json!({"fallback_strategy": "http_5xx"}));
    let (p, _d) = standalone(vec![route]).await;
    let mut s = http::post_stream(&format!("{}/s", p.data), &[], &chat_body(true)).await.unwrap();
    assert_eq!(s.status, 200);
    let text = s.rest().await;
    let chunks: Vec<Value> = text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{text}");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "part0 part1 part2 ");
    assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("broken"), "{text}");
    assert_eq!((chats(&broken), chats(&ok)), (1, 1));
    assert_eq!(broken.last().json()["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_client_falls_back_from_an_openai_instance_to_claude() {
    let (limited, claude) = (failing("limited", 429).await, FakeServer::start(fake::anthropic("sk-ant")).await);
    let route = multi(
        "x",
        &["/x/v1/chat/completions"],
        vec![
            oa("openai", &limited.url(), 1, 1),
            json!({"name": "claude", "provider": "anthropic", "weight": 1, "auth": {"header": {"x-api-key": "sk-ant"}},
                   "options": {"model": "claude-sonnet-4-5"}, "override": {"endpoint": claude.url()}}),
        ],
        json!({"fallback_strategy": ["http_429", "http_5xx"]}),
    );
    let (p, _d, log) =
        with_log(vec![route], "$llm_instance $status $llm_model $llm_prompt_tokens $llm_completion_tokens $llm_stream").await;
    let url = format!("{}/x/v1/chat/completions", p.data);

    let r = http::post_json(&url, &[("authorization", "Bearer client-placeholder")], &chat_body(false)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!((c["object"].as_str(), c["model"].as_str()), (Some("chat.completion"), Some("claude-sonnet-4-5")));
    assert_eq!(c["choices"][0]["message"], json!({"role": "assistant", "content": "1+1 equals 2.", "refusal": null}));
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!((c["usage"]["prompt_tokens"].as_u64(), c["usage"]["completion_tokens"].as_u64()), (Some(350), Some(30)));
    let sent = claude.last();
    assert_eq!(
        (sent.path(), sent.header("x-api-key"), sent.header("anthropic-version")),
        ("/v1/messages", Some("sk-ant"), Some("2023-06-01"))
    );
    assert_eq!(sent.header("authorization"), None);
    let body = sent.json();
    assert_eq!((body["max_tokens"].as_u64(), body["model"].as_str()), (Some(4096), Some("claude-sonnet-4-5")));
    assert_eq!(body["messages"], json!([{"role": "user", "content": "What is 1+1?"}]));

    // Streamed, with the usage chunk asked for.
    let mut req = chat_body(true);
    req["stream_options"] = json!({"include_usage": true});
    let mut s = http::post_stream(&url, &[], &req).await.unwrap();
    assert_eq!(s.status, 200);
    assert!(s.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = s.rest().await;
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{text}");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "1+1 equals 2.");
    assert_eq!(chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).collect::<Vec<_>>(), ["stop"]);
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 380);
    assert_eq!(claude.last().json()["stream"], true);
    assert!(claude.last().json().get("stream_options").is_none());
    assert_eq!((chats(&limited), chats(&claude)), (2, 2));
    // Usage as the gateway observed it on the Anthropic side.
    let lines = log_lines(&log, 2).await;
    assert_eq!(lines, ["claude 200 claude-sonnet-4-5 350 30 false", "claude 200 claude-sonnet-4-5 350 30 true"]);
}

/// A strict Anthropic Messages backend that plays one tool-use turn (the mirror of
/// `fake::openai_weather_agent`): with tools and no tool result yet it calls get_weather
/// for Oslo; with the result it answers; otherwise it does arithmetic. Model `limited`
/// gets a 429 with `retry-after: 7`.
fn anthropic_weather_agent(key: &'static str) -> fake::Handler {
    let plain = fake::anthropic(key);
    Arc::new(move |r: &Recorded| {
        let err = |status: u16, kind: &str, msg: &str| {
            Reply::json(::http::StatusCode::from_u16(status).unwrap(), json!({"type": "error", "error": {"type": kind, "message": msg}}))
        };
        let body = r.json();
        if body["model"] == "limited" {
            return err(429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit")
                .with_header("retry-after", "7");
        }
        let msgs = body["messages"].as_array().cloned().unwrap_or_default();
        let has_tools = body["tools"].as_array().is_some_and(|t| !t.is_empty());
        let blocks = |m: &Value| m["content"].as_array().cloned().unwrap_or_default();
        // Anthropic's own rules: tool history needs declared tools, results need their call.
        let uses: Vec<Value> =
            msgs.iter().filter(|m| m["role"] == "assistant").flat_map(blocks).filter(|b| b["type"] == "tool_use").collect();
        let results: Vec<Value> =
            msgs.iter().filter(|m| m["role"] == "user").flat_map(blocks).filter(|b| b["type"] == "tool_result").collect();
        if !uses.is_empty() && !has_tools {
            return err(400, "invalid_request_error", "tool_use blocks require tools to be defined");
        }
        if results.iter().any(|res| !uses.iter().any(|u| u["id"] == res["tool_use_id"])) {
            return err(400, "invalid_request_error", "tool_result block(s) provided without a matching tool_use");
        }
        if !has_tools && results.is_empty() {
            return plain(r);
        }
        // Validation of the envelope (key, version, fields) is the plain fake's.
        let check = plain(r);
        if check.status != S {
            return check;
        }
        let stream = body["stream"] == true;
        let usage = json!({"input_tokens": 40, "output_tokens": 12});
        let ev = |t: &str, v: Value| (Duration::ZERO, Bytes::from(format!("event: {t}\ndata: {v}\n\n")));
        let start = ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_w", "type": "message", "role": "assistant", "content": [],
                   "model": body["model"], "stop_reason": null, "usage": {"input_tokens": 40, "output_tokens": 1}}}),
        );
        let delta = |stop: &str| {
            ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 12}}))
        };
        if let Some(res) = results.last() {
            let text = format!("It is {} in Oslo.", res["content"].as_str().unwrap_or("?"));
            if !stream {
                return Reply::json(
                    S,
                    json!({"id": "msg_w2", "type": "message", "role": "assistant", "model": body["model"],
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "usage": usage}),
                );
            }
            return Reply::sse(vec![
                start,
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                ),
                ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
                delta("end_turn"),
                ev("message_stop", json!({"type": "message_stop"})),
            ]);
        }
        if !stream {
            return Reply::json(
                S,
                json!({"id": "msg_w1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "tool_use", "id": "toolu_w1", "name": "get_weather", "input": {"city": "Oslo"}}],
                "stop_reason": "tool_use", "usage": usage}),
            );
        }
        Reply::sse(vec![
            start,
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_w1", "name": "get_weather", "input": {}}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "\"Oslo\"}"}}),
            ),
            ev("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            delta("tool_use"),
            ev("message_stop", json!({"type": "message_stop"})),
        ])
    })
}

/// The official `openai` Python SDK against a plain `ai-proxy` route with `provider:
/// anthropic`: chat, streaming, tools and errors (integration-tests/py/openai_sdk_on_anthropic.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_on_a_plain_anthropic_route() {
    let Some(python) = python_with(&["openai"]) else { return };
    let claude = FakeServer::start(anthropic_weather_agent("sk-ant")).await;
    let (p, _d) = standalone(vec![json!({"id": "claude", "uri": "/v1/chat/completions", "plugins": {"ai-proxy": {"provider": "anthropic",
        "auth": {"header": {"x-api-key": "sk-ant"}}, "override": {"endpoint": claude.url()}}}})])
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/openai_sdk_on_anthropic.py");
    let out = tokio::process::Command::new(&python).arg(&script).env("AIGW_URL", &p.data).output().await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai sdk on anthropic: OK"), "{text}");
    // Every request reached Anthropic's Messages API (the n=2 request was refused by the gateway).
    let reqs = claude.requests();
    assert!(reqs.len() >= 6 && reqs.iter().all(|r| r.path() == "/v1/messages"), "{}", reqs.len());
    assert!(reqs.iter().all(|r| r.header("x-api-key") == Some("sk-ant") && r.header("authorization").is_none()));
    // The tool result went back as an Anthropic tool_result for the call's id.
    let turn2 = reqs.iter().map(Recorded::json).find(|b| b["messages"].as_array().is_some_and(|m| m.len() == 3)).expect("the second turn");
    assert_eq!(turn2["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(turn2["messages"][2]["content"][0], json!({"type": "tool_result", "tool_use_id": "toolu_w1", "content": "3°C"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_probe_takes_an_instance_out_and_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let chat = fake::openai_chat("probed", "sk-probed", "/v1");
    let flag = healthy.clone();
    let probed = FakeServer::start(Arc::new(move |r: &Recorded| {
        if r.path() == "/healthz" {
            // The probe carries the instance's auth header and the configured ones.
            if r.header("authorization") != Some("Bearer sk-probed") || r.header("x-probe") != Some("aigw") {
                return Reply::json(::http::StatusCode::UNAUTHORIZED, json!({}));
            }
            let s = if flag.load(Ordering::SeqCst) { S } else { ::http::StatusCode::SERVICE_UNAVAILABLE };
            return Reply::json(s, json!({}));
        }
        chat(r)
    }))
    .await;
    let other = chat_fake("other").await;
    let mut a = oa("probed", &probed.url(), 1, 0);
    a["checks"] = json!({"active": {"http_path": "/healthz", "req_headers": ["X-Probe: aigw"],
        "healthy": {"interval": 1, "successes": 1}, "unhealthy": {"interval": 1, "http_failures": 1}}});
    let route = multi("ap", &["/ap"], vec![a, oa("other", &other.url(), 1, 0)], json!({}));
    let (p, _d) = standalone(vec![route]).await;
    let send = |n: usize| {
        let url = format!("{}/ap", p.data);
        async move {
            for _ in 0..n {
                assert_eq!(http::post_json(&url, &[], &chat_body(false)).await.unwrap().status, 200);
            }
        }
    };
    // The first request starts the prober; healthy probes let traffic through.
    send(1).await;
    wait_until("probed instance healthy", T, || async { (instance(&p, "ap", "probed").await["active"] == "healthy").then_some(()) }).await;
    healthy.store(false, Ordering::SeqCst);
    wait_until("probed instance unhealthy", T, || async { (instance(&p, "ap", "probed").await["active"] == "unhealthy").then_some(()) })
        .await;
    assert_eq!(instance(&p, "ap", "probed").await["healthy"], false);
    let before = chats(&probed);
    send(10).await;
    assert_eq!(chats(&probed), before, "no traffic to an unhealthy instance");
    healthy.store(true, Ordering::SeqCst);
    wait_until("probed instance healthy again", T, || async { (instance(&p, "ap", "probed").await["active"] == "healthy").then_some(()) })
        .await;
    send(10).await;
    assert!(chats(&probed) >= before + 4, "traffic is back: {} -> {}", before, chats(&probed));
    assert!(probed.requests().iter().any(|r| r.path() == "/healthz" && r.method == "GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_an_instance_passively() {
    let (broken, ok) = (failing("broken", 500).await, chat_fake("ok").await);
    let route =
        multi("pe", &["/pe"], vec![oa("broken", &broken.url(), 1, 0), oa("ok", &ok.url(), 1, 0)], json!({"fallback_strategy": "http_5xx"}));
    let (p, _d) = standalone(vec![route]).await;
    for _ in 0..30 {
        let r = http::post_json(&format!("{}/pe", p.data), &[], &chat_body(false)).await.unwrap();
        assert_eq!(r.status, 200, "every request is served by the healthy instance: {}", r.text());
    }
    // Round robin alone would send it 15. Five failures eject it for 1 s; let back in, one
    // more failure ejects it for 2 s, then 4 s, …: at most 10 attempts even if the 30
    // requests took half a minute.
    let n = chats(&broken);
    assert!((5..=10).contains(&n), "the failing instance got {n} of 30");
    let s = instance(&p, "pe", "broken").await;
    assert!(s["ejections"].as_u64().unwrap() >= 1 && s["consecutive_failures"].as_u64().unwrap() >= 5, "{s}");
    assert_eq!(chats(&ok), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_by_header_keeps_a_user_on_one_instance() {
    let fakes = [chat_fake("h0").await, chat_fake("h1").await, chat_fake("h2").await];
    let names = ["h0", "h1", "h2"];
    let list = names.iter().zip(&fakes).map(|(n, f)| oa(n, &f.url(), 1, 0)).collect();
    let route = multi("ch", &["/ch"], list, json!({"balancer": {"algorithm": "chash", "hash_on": "header", "key": "x-user-id"}}));
    let (p, _d) = standalone(vec![route]).await;
    let mut used = std::collections::BTreeSet::new();
    for u in 0..12 {
        let user = format!("user-{u}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let r = http::post_json(&format!("{}/ch", p.data), &[("x-user-id", &user)], &chat_body(false)).await.unwrap();
            assert_eq!(r.status, 200);
            seen.insert(r.json()["system_fingerprint"].as_str().unwrap().to_owned());
        }
        assert_eq!(seen.len(), 1, "{user} moved between instances: {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "12 users all hashed to {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_errors_over_rest_and_the_config_plane_carries_the_plugin() {
    let dir = TempDir::new("multi-rest");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let inst =
        |name: &str| json!({"name": name, "provider": "openai", "weight": 1, "auth": {"header": {"Authorization": "Bearer sk-secret-1"}}});
    let route = |plugin: Value| json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": plugin}});
    for (body, want) in [
        (
            json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [inst("a")]}, "ai-proxy": {"provider": "openai", "auth": {}}}}),
            "ai-proxy and ai-proxy-multi cannot be configured on the same route",
        ),
        (route(json!({"instances": [inst("a"), inst("a")]})), "duplicate instance name 'a' at instances[0] and instances[1]"),
        (route(json!({"instances": []})), "plugins.ai-proxy-multi.instances"),
        (
            route(json!({"instances": [inst("a")], "balancer": {"algorithm": "chash", "hash_on": "header"}})),
            "plugins.ai-proxy-multi.balancer.key: must configure `key`",
        ),
        (
            route(
                json!({"instances": [{"name": "b", "provider": "openai", "weight": 1, "auth": {}, "override": {"endpoint": "http//h:1"}}]}),
            ),
            "instance 'b': invalid endpoint",
        ),
        (
            route(json!({"instances": [{"name": "br", "provider": "bedrock", "weight": 1, "auth": {}}]})),
            "instance 'br': bedrock requires provider_conf.region",
        ),
        (route(json!({"instances": [inst("a")], "fallback_http_statuses": [200]})), "expected 200 to be at least 400"),
        (route(json!({"instances": [{"name": "w", "provider": "openai", "weight": -1, "auth": {}}]})), "instances[0].weight"),
    ] {
        let r = cfg.put_rest("m", &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let msg = r.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    // A valid one: stored with its instance secrets redacted, served by a subscribed proxy.
    let (a, b) = (chat_fake("a").await, chat_fake("b").await);
    let good = json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [oa("a", &a.url(), 1, 1), oa("b", &b.url(), 1, 0)],
        "fallback_strategy": "http_5xx"}}});
    let r = cfg.put_rest("m", &good).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let shown = r.text();
    assert!(shown.contains("******") && !shown.contains("sk-a") && !shown.contains("sk-b"), "{shown}");
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    assert_eq!(p.wait_chat_status("/m", 200).await.json()["system_fingerprint"], "a");
    let dump = p.config_dump().await.to_string();
    assert!(dump.contains("ai-proxy-multi") && dump.contains("******") && !dump.contains("sk-a") && !dump.contains("sk-b"), "{dump}");
}

/// Errors of a plain `provider: anthropic` route for OpenAI clients: OpenAI's envelope,
/// status and retry-after kept; a request the converter cannot express is the client's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_clients_get_openai_errors_from_claude() {
    let claude = FakeServer::start(anthropic_weather_agent("sk-ant")).await;
    let (p, _d) = standalone(vec![json!({"id": "c", "uri": "/v1/chat/completions", "plugins": {"ai-proxy": {"provider": "anthropic",
        "auth": {"header": {"x-api-key": "sk-ant"}}, "override": {"endpoint": claude.url()}}}})])
    .await;
    let url = format!("{}/v1/chat/completions", p.data);
    let mut body = chat_body(false);
    body["model"] = json!("limited");
    let r = http::post_json(&url, &[], &body).await.unwrap();
    assert_eq!((r.status.as_u16(), r.headers["retry-after"].to_str().unwrap()), (429, "7"));
    let e = r.json();
    assert_eq!((e["error"]["type"].as_str(), e["error"]["code"].as_str()), (Some("rate_limit_error"), Some("rate_limit_error")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("rate limit"));
    body["stream"] = json!(true);
    let r = http::post_json(&url, &[], &body).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json()["error"]["type"].as_str()),
        (429, Some("rate_limit_error")),
        "a stream refused before it starts"
    );
    let n = claude.requests().len();
    let mut two = chat_body(false);
    two["n"] = json!(2);
    let r = http::post_json(&url, &[], &two).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert_eq!(claude.requests().len(), n, "refused by the gateway");
}
