//! Streams that break, answers that are too large, clients that stall or leave (issue 8):
//! against fakes that misbehave exactly so, through the real proxy, checked on the raw
//! bytes and with the official `openai`, `anthropic` and `boto3` SDKs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aigw_llm::eventstream::{Decoder, Message, event};
use aigw_llm::sse::{Event, Parser};
use aigw_testkit::fake::{FakeServer, Recorded, Reply, ReplyBody};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const Z: Duration = Duration::ZERO;

fn chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
    )
}

/// "Hel", "lo", then half of the next event.
fn chat_prefix() -> Vec<(Duration, Bytes)> {
    let role = format!(
        "data: {}\n\n",
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
    );
    vec![(Z, Bytes::from(role)), (Z, Bytes::from(chunk("Hel") + &chunk("lo"))), (Z, Bytes::from_static(b"data: {\"id\":\"c1\",\"cho"))]
}

fn sse(chunks: Vec<(Duration, Bytes)>) -> Reply {
    Reply::sse(chunks)
}

fn eventstream(chunks: Vec<(Duration, Bytes)>, fail: bool) -> Reply {
    Reply {
        status: ::http::StatusCode::OK,
        headers: Vec::new(),
        body: ReplyBody::Stream { content_type: "application/vnd.amazon.eventstream", chunks, fail },
        delay: Z,
    }
}

fn responses_event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

fn response_object(status: &str, output: Value, usage: Value) -> Value {
    json!({"id": "resp_1", "object": "response", "created_at": 0, "model": "gpt-image", "status": status, "output": output,
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage})
}

/// The misbehaving upstream, dispatching on the path the proxy calls.
fn broken_upstream() -> aigw_testkit::fake::Handler {
    Arc::new(|rec: &Recorded| {
        let path = rec.path().to_owned();
        let p = path.as_str();
        if p.starts_with("/stall/") {
            let mut c = chat_prefix();
            c.push((Duration::from_secs(5), Bytes::from_static(b"ices\":[]}\n\n")));
            return sse(c);
        }
        if p.starts_with("/close/") {
            return sse(chat_prefix()).failing();
        }
        if p.starts_with("/nodone/") {
            let mut c = chat_prefix();
            c.pop();
            return sse(c);
        }
        if p.starts_with("/anthropic-cut/") {
            let ev = |k: &str, d: Value| Bytes::from(format!("event: {k}\ndata: {d}\n\n"));
            return sse(vec![
                (Z, ev("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                    "content": [], "model": "claude", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}))),
                (Z, ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))),
                (Z, ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}))),
                (Z, Bytes::from_static(b"event: content_block_delta\ndata: {\"type\":\"content_bl")),
            ])
            .failing();
        }
        if p.starts_with("/big/") {
            let image = "A".repeat(2 << 20);
            let created = responses_event(
                "response.created",
                json!({"type": "response.created", "sequence_number": 0, "response": response_object("in_progress", json!([]), Value::Null)}),
            );
            let done = responses_event(
                "response.completed",
                json!({"type": "response.completed", "sequence_number": 1, "response": response_object("completed",
                    json!([{"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": image}]),
                    json!({"input_tokens": 11, "output_tokens": 1056, "total_tokens": 1067,
                        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}))}),
            );
            let mut chunks = vec![(Z, Bytes::from(created))];
            chunks.extend(done.as_bytes().chunks(64 << 10).map(|c| (Z, Bytes::copy_from_slice(c))));
            return sse(chunks);
        }
        if p.starts_with("/responses-cut/") {
            let created = responses_event(
                "response.created",
                json!({"type": "response.created", "sequence_number": 0, "response": response_object("in_progress", json!([]), Value::Null)}),
            );
            return sse(vec![(Z, Bytes::from(created)), (Z, Bytes::from_static(b"event: response.output_text.delta\ndata: {\"ty"))]);
        }
        if p.starts_with("/bedrock-cut/") {
            let third = event("contentBlockStop", &json!({"contentBlockIndex": 0}));
            return eventstream(
                vec![
                    (Z, Bytes::from(event("messageStart", &json!({"role": "assistant"})))),
                    (Z, Bytes::from(event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})))),
                    (Z, Bytes::copy_from_slice(&third[..third.len() / 2])),
                ],
                true,
            );
        }
        if p.starts_with("/bedrock-corrupt/") {
            let mut bad = event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}));
            let n = bad.len();
            bad[n - 6] ^= 0x55;
            let mut rest = event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}));
            rest.extend(event("messageStop", &json!({"stopReason": "end_turn"})));
            rest.extend(event("metadata", &json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}})));
            return eventstream(
                vec![(Z, Bytes::from(event("messageStart", &json!({"role": "assistant"})))), (Z, Bytes::from(bad)), (Z, Bytes::from(rest))],
                false,
            );
        }
        if p.starts_with("/slow/") {
            // An LLM answering slowly: a chunk every 200 ms for 20 s.
            return sse((0..100).map(|i| (Duration::from_millis(200), Bytes::from(chunk(&format!("t{i} "))))).collect());
        }
        Reply::json(::http::StatusCode::NOT_FOUND, json!({"error": {"message": format!("no fake at {p}")}}))
    })
}

fn routes(up: &str) -> Vec<Value> {
    let openai = |id: &str, timeout: u64| {
        json!({"id": id, "uri": format!("/{id}/*"), "plugins": {"ai-proxy": {"provider": "openai-compatible", "timeout": timeout,
            "auth": {"header": {"Authorization": "Bearer k"}}, "override": {"endpoint": format!("{up}/{id}/v1/chat/completions")}}}})
    };
    let bedrock = |id: &str| {
        json!({"id": id, "uri": format!("/{id}/*"), "plugins": {"ai-proxy": {"provider": "bedrock", "provider_conf": {"region": "us-east-1"},
            "auth": {"aws": {"access_key_id": "AKID", "secret_access_key": "secret"}},
            "override": {"endpoint": format!("{up}/{id}/model/amazon.nova-pro-v1%3A0/converse-stream")}}}})
    };
    vec![
        openai("stall", 300),
        openai("close", 5000),
        openai("nodone", 5000),
        openai("slow", 5000),
        json!({"id": "big", "uri": "/big/*", "plugins": {"ai-proxy": {"provider": "openai-compatible",
            "auth": {"header": {"Authorization": "Bearer k"}}, "override": {"endpoint": format!("{up}/big/v1/responses")}}}}),
        json!({"id": "responses-cut", "uri": "/responses-cut/*", "plugins": {"ai-proxy": {"provider": "openai-compatible",
            "auth": {"header": {"Authorization": "Bearer k"}}, "override": {"endpoint": format!("{up}/responses-cut/v1/responses")}}}}),
        json!({"id": "anthropic-cut", "uri": "/anthropic-cut/*", "plugins": {"ai-proxy": {"provider": "anthropic",
            "auth": {"header": {"x-api-key": "k"}}, "override": {"endpoint": format!("{up}/anthropic-cut/v1/messages")}}}}),
        bedrock("bedrock-cut"),
        bedrock("bedrock-corrupt"),
    ]
}

fn chat_req(stream: bool) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

fn events(raw: &str) -> Vec<Event> {
    let mut p = Parser::new();
    let mut out = Vec::new();
    p.push(raw.as_bytes(), &mut out);
    assert_eq!(p.boundary(), raw.len() as u64, "the client got a partial event: {raw:?}");
    for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
        assert!(block.lines().any(|l| l.starts_with("data:")), "an event without data (SDKs choke on it): {block:?}");
    }
    out
}

fn frames(raw: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    Decoder::new().push(raw, &mut out).unwrap_or_else(|e| panic!("the client got a broken frame: {e}"));
    out
}

async fn raw(p: &Proxy, path: &str, body: &Value) -> (u16, Vec<u8>) {
    let mut s = http::post_stream(&format!("{}{path}", p.data), &[], body).await.unwrap();
    let mut out = Vec::new();
    while let Some(d) = s.next_data().await {
        out.extend_from_slice(&d);
    }
    (s.status.as_u16(), out)
}

/// Every broken stream ends with the whole events so far, then exactly one well-formed
/// terminal error in the client's protocol; large events pass intact with usage counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_streams_end_cleanly_in_the_clients_protocol() {
    let fake = FakeServer::start(broken_upstream()).await;
    let dir = TempDir::new("streams");
    let log = dir.path().join("access.log");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({"routes": routes(&fake.url())}).to_string()).unwrap();
    let p = Proxy::start(
        &[
            "--routes",
            file.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-format",
            "$route_id $llm_completion_tokens",
        ],
        &[],
    )
    .await;

    // OpenAI chat cut mid-line: by a stall (timeout 300 ms), by a closed connection.
    for (path, needle) in
        [("/stall/v1/chat/completions", "no data from the upstream for 300 ms"), ("/close/v1/chat/completions", "upstream stream failed")]
    {
        let (status, body) = raw(&p, path, &chat_req(true)).await;
        let text = String::from_utf8(body).unwrap();
        assert_eq!(status, 200);
        let evs = events(&text);
        assert_eq!(evs.len(), 4, "{text}");
        assert!(evs[3].data.starts_with("{\"error\":") && evs[3].data.contains(needle), "{text}");
        assert!(!text.contains("{\"id\":\"c1\",\"cho"), "the partial line never reaches the client: {text}");
    }

    // An OpenAI → Anthropic converted stream without [DONE]: an Anthropic error event.
    let anth = json!({"model": "claude", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (_, body) = raw(&p, "/nodone/v1/messages", &anth).await;
    let text = String::from_utf8(body).unwrap();
    let evs = events(&text);
    assert_eq!(evs.first().map(|e| e.event.as_str()), Some("message_start"), "{text}");
    assert_eq!(evs.last().map(|e| e.event.as_str()), Some("error"), "{text}");
    assert_eq!(evs.iter().filter(|e| e.event == "error").count(), 1);
    assert!(!evs.iter().any(|e| e.event == "message_stop"), "{text}");

    // Responses: a 2 MiB event passes whole, usage counted; a cut one ends with `event: error`.
    let (_, body) = raw(&p, "/big/v1/responses", &json!({"model": "m", "input": "draw", "stream": true})).await;
    let text = String::from_utf8(body).unwrap();
    let evs = events(&text);
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[1].event, "response.completed");
    assert!(evs[1].data.len() > 2 << 20);
    let (_, body) = raw(&p, "/responses-cut/v1/responses", &json!({"model": "m", "input": "hi", "stream": true})).await;
    let evs = events(&String::from_utf8(body).unwrap());
    assert_eq!(evs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), vec!["response.created", "error"]);

    // Native Anthropic cut mid-line.
    let (_, body) = raw(&p, "/anthropic-cut/v1/messages", &anth).await;
    let evs = events(&String::from_utf8(body).unwrap());
    assert_eq!(
        evs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        vec!["message_start", "content_block_start", "content_block_delta", "error"]
    );

    // Bedrock cut mid-frame: whole frames, then one exception frame.
    let conv = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let (_, body) = raw(&p, "/bedrock-cut/model/amazon.nova-pro-v1%3A0/converse-stream", &conv).await;
    let kinds: Vec<(String, String)> = frames(&body).iter().map(|m| (m.message_type().to_owned(), m.kind().to_owned())).collect();
    assert_eq!(
        kinds,
        vec![
            ("event".into(), "messageStart".into()),
            ("event".into(), "contentBlockDelta".into()),
            ("exception".into(), "internalServerException".into())
        ]
    );
    // A corrupt frame: the frames before it, one exception, nothing after.
    let (_, body) = raw(&p, "/bedrock-corrupt/model/amazon.nova-pro-v1%3A0/converse-stream", &conv).await;
    let msgs = frames(&body);
    let kinds: Vec<&str> = msgs.iter().map(|m| m.kind()).collect();
    assert_eq!(kinds, vec!["messageStart", "internalServerException"]);
    assert!(String::from_utf8_lossy(&msgs[1].payload).contains("corrupt"));

    // The official SDKs raise their own API errors (not decode or CRC errors).
    if let Some(python) = python_with(&["openai", "anthropic", "boto3"]) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/broken_streams.py");
        let out = tokio::process::Command::new(&python).arg(&script).env("AIGW_URL", &p.data).output().await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("broken streams: OK"), "{text}");
    }

    // The access log: the 2 MiB event's usage was counted.
    let lines = wait_until("the big stream's log line", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().find(|l| l.starts_with("big ")).map(str::to_owned)
    })
    .await;
    assert_eq!(lines, "big 1056");
}

/// The client going away cancels the upstream request and is recorded as such; complete
/// answers with Content-Length are recorded as complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_cancels_upstream_and_complete_answers_are_not_aborted() {
    let fake = FakeServer::start(broken_upstream()).await;
    let ok = FakeServer::start(aigw_testkit::fake::strict_openai("k")).await;
    let mut rs = routes(&fake.url());
    rs.push(chat_route("ok", "/ok", &ok.url(), "k"));
    let (p, _d) = standalone(rs).await;
    for _ in 0..20 {
        let r = p.chat("/ok").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.headers.contains_key("content-length"));
    }
    let metric = |name: &'static str| {
        let status = p.status.clone();
        async move {
            let text = http::get(&format!("{status}/metrics"), &[]).await.unwrap().text();
            text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap()
        }
    };
    assert_eq!(metric("aigw_proxy_responses_aborted_total ").await, 0);
    assert_eq!(metric("aigw_proxy_clients_gone_total ").await, 0);

    let mut s = http::post_stream(&format!("{}/slow/v1/chat/completions", p.data), &[], &chat_req(true)).await.unwrap();
    assert!(s.next_data().await.is_some());
    drop(s);
    wait_until("the fake sees its stream abandoned", Duration::from_secs(5), || async {
        (fake.stats.streams_abandoned.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    wait_until("client gone counted", T, || async { (metric("aigw_proxy_clients_gone_total ").await == 1).then_some(()) }).await;
    assert_eq!(metric("aigw_proxy_responses_aborted_total ").await, 1);
    assert!(!p.proc.logs().iter().any(|l| l.contains("client disconnected")), "no log line per request at the default level");
}

/// Whole answers are read under a cap (with or without Content-Length): past it, a 502 in
/// the client's protocol, and the proxy's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_502_with_bounded_memory() {
    let huge: Arc<dyn Fn(&Recorded) -> Reply + Send + Sync> = Arc::new(|rec: &Recorded| {
        let mb = if rec.path().starts_with("/small-cap/") { 1 } else { 70 };
        // A chunked (no Content-Length) chat completion of `mb` MiB.
        let head = Bytes::from_static(b"{\"id\":\"c\",\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
        let mut chunks = vec![(Z, head)];
        let block = Bytes::from(vec![b'x'; 1 << 20]);
        chunks.extend((0..mb).map(|_| (Z, block.clone())));
        chunks.push((Z, Bytes::from_static(b"\"},\"finish_reason\":\"stop\"}]}")));
        Reply {
            status: ::http::StatusCode::OK,
            headers: Vec::new(),
            body: ReplyBody::Stream { content_type: "application/json", chunks, fail: false },
            delay: Z,
        }
    });
    let fake = FakeServer::start(huge).await;
    let route = |id: &str, extra: Value| {
        let mut ai = json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
            "override": {"endpoint": format!("{}/{id}/v1/chat/completions", fake.url())}});
        for (k, v) in extra.as_object().unwrap() {
            ai[k] = v.clone();
        }
        json!({"id": id, "uri": format!("/{id}/*"), "plugins": {"ai-proxy": ai}})
    };
    let (p, _d) = standalone(vec![route("huge", json!({})), route("small-cap", json!({"max_response_bytes": 1000}))]).await;
    // 70 MiB converted for an Anthropic client: 502 in Anthropic's envelope.
    let anth = json!({"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]});
    let r = http::post_json(&format!("{}/huge/v1/messages", p.data), &[], &anth).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("larger than max_response_bytes"), "{}", r.text());
    let peak = p.proc.peak_rss().unwrap();
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    // A chunked 1 MiB answer over max_response_bytes 1000 for an OpenAI client: 502, not a
    // truncated 200.
    let r = http::post_json(&format!("{}/small-cap/v1/chat/completions", p.data), &[], &chat_req(false)).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_response_too_large");
}

/// `--client-header-timeout` and `--client-body-timeout` cut slow clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_after_the_timeouts() {
    let ok = FakeServer::start(aigw_testkit::fake::strict_openai("k")).await;
    let dir = TempDir::new("slow");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({"routes": [chat_route("ok", "/ok", &ok.url(), "k")]}).to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap(), "--client-header-timeout", "300ms", "--client-body-timeout", "300ms"], &[])
        .await;
    let addr = p.data.trim_start_matches("http://").to_owned();

    // Slow headers: the connection is closed.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"POST /ok HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf))
        .await
        .expect("the proxy closes a connection whose head stalls");
    assert!(n.is_ok());

    // A slow body: 408 in the client's protocol.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\":")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await.expect("the proxy answers a stalled body");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"client_body_timeout\""), "{text}");

    // A normal client is unaffected.
    assert_eq!(p.chat("/ok").await.unwrap().status, 200);
}
