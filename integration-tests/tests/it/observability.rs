//! Observability of a running proxy (CONTRACT §10): OTLP spans and metrics received by an
//! in-test collector, `/metrics`, the http-logger with LLM summaries and payloads, and the
//! spec's access-log format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aigw_testkit::bedrock::{AwsKeys, bedrock};
use aigw_testkit::fake::{self, FakeServer, ProviderSpec, Recorded, Reply};
use aigw_testkit::http;
use aigw_testkit::otlp::{Collector, Got};
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::common::*;

const CLIENT_TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn proxy_with(routes: Vec<Value>, env: &[(&str, &str)], args: &[&str]) -> (Proxy, TempDir) {
    let dir = TempDir::new("obs");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
    let mut all = vec!["--routes", file.to_str().unwrap()];
    all.extend_from_slice(args);
    (Proxy::start(&all, env).await, dir)
}

fn otel_env(c: &Collector) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", c.grpc_endpoint()),
        ("OTEL_SERVICE_NAME", "aigw-proxy-it".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".into()),
    ]
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn chat(model: Option<&str>, stream: bool) -> Value {
    let mut b =
        json!({"messages": [{"role": "system", "content": "You are a mathematician"}, {"role": "user", "content": "What is 1+1?"}]});
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    if stream {
        b["stream"] = json!(true);
    }
    b
}

/// The SERVER span and its CLIENT spans of the trace `trace_id`, once both arrived.
async fn trace(c: &Collector, trace_id: &str) -> (Got, Vec<Got>) {
    c.wait_spans(&format!("spans of trace {trace_id}"), T, |spans| {
        let server = spans.iter().find(|s| s.trace_id() == trace_id && s.kind() == "server")?.clone();
        let clients: Vec<Got> = spans.iter().filter(|s| s.trace_id() == trace_id && s.kind() == "client").cloned().collect();
        (!clients.is_empty()).then_some((server, clients))
    })
    .await
}

/// The trace of the request whose `x-aigw-request-id` is `rid`.
async fn trace_of(c: &Collector, rid: &str) -> (Got, Vec<Got>) {
    let tid = c
        .wait_spans(&format!("server span of {rid}"), T, |spans| {
            spans.iter().find(|s| s.str("aigw.request_id") == Some(rid)).map(|s| s.trace_id())
        })
        .await;
    trace(c, &tid).await
}

const GENAI_KEYS: &[&str] = &[
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "gen_ai.request.stream",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_write.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "server.address",
    "server.port",
    "http.response.status_code",
    "aigw.route_id",
    "aigw.config_version",
];

fn assert_keys(s: &Got, keys: &[&str]) {
    let have = s.keys();
    for k in keys {
        assert!(have.contains(k), "{} lacks {k}: {:#}", s.name(), s.json());
    }
}

/// The usage chunk of an OpenAI SSE answer as the client received it.
fn sse_usage(text: &str) -> (i64, i64) {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| Some((v["usage"]["prompt_tokens"].as_i64()?, v["usage"]["completion_tokens"].as_i64()?)))
        .expect("a usage chunk")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_for_whole_and_streamed_chat_with_a_continued_trace() {
    let col = Collector::start().await;
    let up = FakeServer::start(ProviderSpec::openai("k-up").handler()).await;
    let env = otel_env(&col);
    let route = json!({"id": "chat", "uri": "/v1/chat/completions", "plugins": {"ai-proxy": {
        "provider": "openai", "auth": {"header": {"Authorization": "Bearer k-up"}}, "options": {"model": "gpt-4"},
        "override": {"endpoint": up.url()}}}});
    let (p, _d) = proxy_with(vec![route], &env_refs(&env), &[]).await;
    let url = format!("{}/v1/chat/completions", p.data);

    // Whole answer, continuing the client's trace.
    let r =
        http::post_json(&format!("{url}?api-version=1"), &[("traceparent", CLIENT_TP)], &chat(Some("gpt-4o-mini"), false)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (server, clients) = trace(&col, CLIENT_TRACE).await;
    assert_eq!(clients.len(), 1);
    let client = &clients[0];
    assert_eq!((server.name(), client.name()), ("chat gpt-4o-mini", "chat gpt-4"));
    assert_eq!(server.parent_id(), CLIENT_SPAN, "the client's span is the SERVER span's parent");
    assert_eq!(client.parent_id(), server.span_id(), "CLIENT is a child of SERVER");
    assert_eq!(server.service, "aigw-proxy-it");
    let seen = up.last();
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{CLIENT_TRACE}-{}-01", client.span_id()).as_str()),
        "upstream sees the CLIENT span"
    );
    assert_keys(client, GENAI_KEYS);
    assert_keys(&server, GENAI_KEYS);
    assert_eq!(client.str("gen_ai.operation.name"), Some("chat"));
    assert_eq!(client.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(client.str("gen_ai.request.model"), Some("gpt-4"));
    assert_eq!(server.str("gen_ai.request.model"), Some("gpt-4o-mini"));
    assert_eq!(client.str("gen_ai.response.model"), Some("gpt-4"));
    assert_eq!(client.str("gen_ai.response.id"), Some("chatcmpl-1"));
    assert_eq!(client.strs("gen_ai.response.finish_reasons"), Some(vec!["stop".to_owned()]));
    assert_eq!(client.bool("gen_ai.request.stream"), Some(false));
    assert_eq!(
        (client.int("gen_ai.usage.input_tokens"), client.int("gen_ai.usage.output_tokens")),
        (Some(23), Some(8)),
        "the fake's usage"
    );
    assert_eq!(client.str("server.address"), Some("127.0.0.1"));
    assert_eq!(client.int("server.port"), Some(up.addr.port() as i64));
    assert_eq!(client.int("http.response.status_code"), Some(200));
    assert_eq!(client.str("aigw.route_id"), Some("chat"));
    assert!(client.str("aigw.config_version").is_some_and(|v| !v.is_empty()));
    assert!(client.attr("error.type").is_none() && server.attr("error.type").is_none());
    assert!(client.attr("gen_ai.response.time_to_first_chunk").is_none(), "not a stream");
    assert!(client.span.events.is_empty() && server.span.events.is_empty(), "no payload events without logging.payloads");
    assert_eq!(server.str("aigw.request_id"), r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()));
    assert_eq!(server.str("http.request.method"), Some("POST"));
    assert_eq!(server.str("url.path"), Some("/v1/chat/completions"), "without the query");
    assert_eq!(server.str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    // Both spans carry the same GenAI attributes but the requested model.
    for k in GENAI_KEYS.iter().filter(|k| **k != "gen_ai.request.model") {
        assert_eq!(server.attr(k), client.attr(k), "{k}");
    }
    assert!(server.span.start_time_unix_nano <= client.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);

    // A stream, starting a new trace.
    let mut s = http::post_stream(&url, &[], &chat(Some("gpt-4o-mini"), true)).await.unwrap();
    assert_eq!(s.status, 200);
    let rid = s.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let text = s.rest().await;
    let (prompt, completion) = sse_usage(&text);
    let (server, clients) = trace_of(&col, &rid).await;
    let client = &clients[0];
    assert!(server.parent_id().is_empty(), "a new trace starts at the SERVER span");
    assert_ne!(server.trace_id(), CLIENT_TRACE);
    assert_keys(client, GENAI_KEYS);
    assert_keys(client, &["gen_ai.response.time_to_first_chunk"]);
    assert_eq!(client.bool("gen_ai.request.stream"), Some(true));
    assert_eq!((client.int("gen_ai.usage.input_tokens"), client.int("gen_ai.usage.output_tokens")), (Some(prompt), Some(completion)));
    assert_eq!(client.str("gen_ai.response.id"), Some("chatcmpl-s"));
    assert_eq!(client.strs("gen_ai.response.finish_reasons"), Some(vec!["stop".to_owned()]));
    let ttfc = client.double("gen_ai.response.time_to_first_chunk").unwrap();
    assert!(ttfc > 0.0 && ttfc < 20.0, "{ttfc}");
    assert!(client.span.events.iter().any(|e| e.name == "gen_ai.response.first_chunk"), "{:#}", client.json());
    assert!(up.last().header("traceparent").is_some_and(|t| t.contains(&client.span_id())));

    // Metrics over OTLP: token usage as the fake reported it, input and output apart.
    let (want_in, want_out) = (23.0 + prompt as f64, 8.0 + completion as f64);
    wait_until("token usage exported", T, || async {
        let m = col.metric("aigw-proxy-it", "gen_ai.client.token.usage")?;
        let pts = m.histogram_points();
        let sum = |t: &str| pts.iter().filter(|(a, ..)| a["gen_ai.token.type"] == t).map(|(_, _, s, _)| s).sum::<f64>();
        (sum("input") == want_in && sum("output") == want_out).then_some(())
    })
    .await;
    for name in
        ["gen_ai.client.operation.duration", "gen_ai.server.request.duration", "gen_ai.server.time_to_first_token", "aigw.gateway.requests"]
    {
        assert!(col.metric("aigw-proxy-it", name).is_some(), "{name} exported");
    }
    let dur = col.metric("aigw-proxy-it", "gen_ai.client.operation.duration").unwrap();
    let (attrs, count, _, _) = dur.histogram_points().into_iter().next().unwrap();
    assert_eq!(count, 2);
    assert_eq!((attrs["gen_ai.operation.name"].as_str(), attrs["gen_ai.provider.name"].as_str()), (Some("chat"), Some("openai")));
    assert_eq!(attrs["gen_ai.request.model"], "gpt-4o-mini");

    // The same instruments on /metrics, Prometheus-named.
    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    for want in [
        "# TYPE gen_ai_client_token_usage histogram",
        "gen_ai_client_token_usage_bucket{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_response_model=\"gpt-4\",gen_ai_token_type=\"input\",le=\"16\"} 1",
        "gen_ai_client_operation_duration_seconds_count{",
        "gen_ai_server_request_duration_seconds_bucket{",
        "gen_ai_server_time_to_first_token_seconds_bucket{",
        "aigw_gateway_requests_total{aigw_route_id=\"chat\",gen_ai_provider_name=\"openai\",http_response_status_code=\"200\"} 2",
        "aigw_proxy_requests_total 2",
        "aigw_gateway_config_updates_total{result=\"applied\"} 1",
        "aigw_telemetry_spans_exported_total",
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
    assert!(m.contains(&format!("gen_ai_client_token_usage_sum{{gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_response_model=\"gpt-4\",gen_ai_token_type=\"output\"}} {want_out}")), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_converted_and_bedrock_requests_have_their_spans() {
    let col = Collector::start().await;
    let up = FakeServer::start(ProviderSpec::new("compat", fake::AuthCheck::Bearer("k-up".into())).handler()).await;
    let keys = AwsKeys::example();
    let br = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let env = otel_env(&col);
    let routes = vec![
        json!({"id": "claude-on-openai", "uri": "/v1/messages", "plugins": {"ai-proxy": {
            "provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k-up"}}, "options": {"model": "gpt-4o"},
            "override": {"endpoint": format!("{}/v1/chat/completions", up.url())}}}}),
        json!({"id": "br", "uri": "/bedrock/converse", "plugins": {"ai-proxy": {
            "provider": "bedrock", "provider_conf": {"region": "us-east-1"}, "options": {"model": "anthropic.claude-3-5-sonnet-20240620-v1:0"},
            "auth": {"aws": {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}},
            "override": {"endpoint": br.url()}}}}),
    ];
    let (p, _d) = proxy_with(routes, &env_refs(&env), &[]).await;

    let ask = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "What is 1+1?"}]});
    let r = http::post_json(&format!("{}/v1/messages", p.data), &[("traceparent", CLIENT_TP)], &ask).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let (server, clients) = trace(&col, CLIENT_TRACE).await;
    let client = &clients[0];
    assert_keys(client, GENAI_KEYS);
    assert_eq!((server.name(), client.name()), ("chat claude-sonnet-4-5", "chat gpt-4o"));
    assert_eq!(client.str("gen_ai.provider.name"), Some("openai-compatible"));
    assert_eq!(client.int("gen_ai.usage.input_tokens"), answer["usage"]["input_tokens"].as_i64(), "{answer}");
    assert_eq!(client.int("gen_ai.usage.output_tokens"), answer["usage"]["output_tokens"].as_i64());
    assert_eq!(client.int("gen_ai.usage.input_tokens"), Some(23));

    let body = json!({"messages": [{"role": "user", "content": [{"text": "What is 1+1?"}]}], "inferenceConfig": {"maxTokens": 64}});
    let r = http::post_json(&format!("{}/bedrock/converse", p.data), &[], &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let (server, clients) = trace_of(&col, &rid).await;
    let client = &clients[0];
    assert_eq!(client.str("gen_ai.provider.name"), Some("aws.bedrock"));
    assert_eq!(client.str("gen_ai.request.model"), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"));
    assert_eq!(server.name(), "chat anthropic.claude-3-5-sonnet-20240620-v1:0");
    assert_eq!(client.int("gen_ai.usage.output_tokens"), answer["usage"]["outputTokens"].as_i64(), "{answer}");
    assert_eq!(client.strs("gen_ai.response.finish_reasons"), answer["stopReason"].as_str().map(|s| vec![s.to_owned()]));
    assert_eq!(client.int("server.port"), Some(br.addr.port() as i64));
    assert!(br.last().header("traceparent").is_some_and(|t| t.contains(&client.span_id())), "signed request carries it too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_and_cut_streams_are_marked_on_spans() {
    let col = Collector::start().await;
    let h: fake::Handler = Arc::new(|r: &Recorded| {
        if r.json()["stream"] == true {
            let ev = |v: Value| (Duration::ZERO, Bytes::from(format!("data: {v}\n\n")));
            Reply::sse(vec![
                ev(json!({"id": "chatcmpl-cut", "model": "gpt-4", "choices": [{"index": 0, "delta": {"content": "1+1"}, "finish_reason": null}]})),
                ev(json!({"id": "chatcmpl-cut", "model": "gpt-4", "choices": [{"index": 0, "delta": {"content": " is"}, "finish_reason": null}]})),
            ])
            .failing()
        } else {
            Reply::json(::http::StatusCode::INTERNAL_SERVER_ERROR, json!({"error": {"message": "boom", "type": "server_error"}}))
        }
    });
    let up = FakeServer::start(h).await;
    let env = otel_env(&col);
    let (p, _d) = proxy_with(vec![chat_route("r500", "/chat", &up.url(), "k")], &env_refs(&env), &[]).await;

    let r = http::post_json(&format!("{}/chat", p.data), &[], &chat(None, false)).await.unwrap();
    assert_eq!(r.status, 500);
    let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let (server, clients) = trace_of(&col, &rid).await;
    assert_eq!((clients[0].str("error.type"), server.str("error.type")), (Some("500"), Some("500")));
    assert_eq!((clients[0].int("http.response.status_code"), server.int("http.response.status_code")), (Some(500), Some(500)));
    assert_eq!(clients[0].span.status.as_ref().map(|s| s.code), Some(2), "status ERROR");

    let mut s = http::post_stream(&format!("{}/chat", p.data), &[], &chat(None, true)).await.unwrap();
    assert_eq!(s.status, 200);
    let rid = s.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let text = s.rest().await;
    assert!(text.contains("\"error\""), "the client got the terminal error: {text}");
    let (server, clients) = trace_of(&col, &rid).await;
    let c = &clients[0];
    assert_eq!(c.strs("gen_ai.response.finish_reasons"), Some(vec!["error".to_owned()]), "{:#}", c.json());
    assert_eq!(c.str("error.type"), Some("upstream_stream_error"));
    assert_eq!(server.str("error.type"), Some("upstream_stream_error"));
    assert_eq!(c.str("gen_ai.response.id"), Some("chatcmpl-cut"));

    let m = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    for want in [
        "aigw_gateway_upstream_errors_total{aigw_route_id=\"r500\",gen_ai_provider_name=\"openai-compatible\",error_type=\"500\"} 1",
        "aigw_gateway_upstream_errors_total{aigw_route_id=\"r500\",gen_ai_provider_name=\"openai-compatible\",error_type=\"upstream_stream_error\"} 1",
        "aigw_gateway_requests_total{aigw_route_id=\"r500\",gen_ai_provider_name=\"openai-compatible\",http_response_status_code=\"500\"} 1",
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
}

/// OTLP over TLS, gRPC and http/protobuf, to a collector whose certificate a private CA
/// vouches for (`OTEL_EXPORTER_OTLP_CERTIFICATE`); without it the certificate is not
/// trusted: nothing is exported, the failures are counted, requests still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_tls_verified_against_a_private_ca() {
    let (col, ca) = Collector::start_tls().await;
    let dir = TempDir::new("otlp-ca");
    let ca_file = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let up = FakeServer::start(ProviderSpec::openai("k").handler()).await;
    for (protocol, endpoint) in [("grpc", col.grpc_endpoint()), ("http/protobuf", col.http_endpoint())] {
        assert!(endpoint.starts_with("https://"), "{endpoint}");
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.to_str().unwrap()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ];
        let (p, _d) = proxy_with(vec![chat_route("r", "/chat", &up.url(), "k")], &env, &[]).await;
        let r = p.chat("/chat").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
        let (server, _) = trace_of(&col, &rid).await;
        assert_eq!(server.str("aigw.request_id"), Some(rid.as_str()), "{protocol}");

        // The same collector without the CA: not trusted.
        let untrusted = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ];
        let (p, _d) = proxy_with(vec![chat_route("r", "/chat", &up.url(), "k")], &untrusted, &[]).await;
        let r = p.chat("/chat").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
        wait_until("failed span exports counted", T, || async {
            let m = http::get(&format!("{}/metrics", p.status), &[]).await.ok()?.text();
            let n: u64 = m.lines().find_map(|l| l.strip_prefix("aigw_telemetry_spans_failed_total "))?.parse().ok()?;
            (n >= 1).then_some(())
        })
        .await;
        assert!(!col.spans().iter().any(|s| s.str("aigw.request_id") == Some(rid.as_str())), "{protocol}: exported without trust");
    }
}

/// A collector that is down costs dropped telemetry (counted), never a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_only_costs_telemetry() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let up = FakeServer::start(ProviderSpec::openai("k").handler()).await;
    let endpoint = format!("http://{free}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let (p, _d) = proxy_with(vec![chat_route("r", "/chat", &up.url(), "k")], &env, &[]).await;
    for _ in 0..5 {
        let r = p.chat("/chat").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_until("failed span exports counted", T, || async {
        let m = http::get(&format!("{}/metrics", p.status), &[]).await.ok()?.text();
        let n: u64 = m.lines().find_map(|l| l.strip_prefix("aigw_telemetry_spans_failed_total "))?.parse().ok()?;
        (n >= 1).then_some(())
    })
    .await;
}

fn log_sink() -> fake::Handler {
    Arc::new(|_: &Recorded| Reply::json(::http::StatusCode::OK, json!({})))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_logger_sends_llm_summaries_and_payloads_without_credentials() {
    let sink = FakeServer::start(log_sink()).await;
    let up = FakeServer::start(ProviderSpec::openai("sk-route-secret").handler()).await;
    let route = json!({"id": "logged", "uri": "/anything", "methods": ["POST"], "plugins": {
        "ai-proxy": {"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer sk-route-secret"}},
            "options": {"model": "gpt-4"}, "override": {"endpoint": format!("{}/v1/chat/completions", up.url())},
            "logging": {"summaries": true, "payloads": true}},
        "http-logger": {"uri": format!("{}/logs?token=q", sink.url()), "batch_max_size": 1, "auth_header": "Bearer log-secret-123",
            "include_req_body": true, "include_resp_body": true}}});
    let col = Collector::start().await;
    let env = otel_env(&col);
    let (p, _d) = proxy_with(vec![route.clone()], &env_refs(&env), &[]).await;

    let r = http::post_json(
        &format!("{}/anything?key=client-query-secret&x=1", p.data),
        &[("authorization", "Bearer client-secret-xyz"), ("x-api-key", "client-key-abc")],
        &chat(None, false),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = wait_until("a log entry", T, || async { sink.requests().into_iter().next() }).await;
    assert_eq!(got.path(), "/logs");
    assert_eq!(got.header("authorization"), Some("Bearer log-secret-123"), "auth_header goes to the log server");
    assert_eq!(got.header("content-type"), Some("application/json"));
    let e = got.json();
    let text = String::from_utf8_lossy(&got.body).into_owned();
    for secret in ["client-secret-xyz", "client-key-abc", "client-query-secret", "sk-route-secret", "log-secret-123"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(e["request"]["headers"]["authorization"], "******", "{e:#}");
    assert_eq!(e["request"]["headers"]["x-api-key"], "******");
    assert_eq!(e["request"]["querystring"]["key"], "******");
    assert_eq!(e["request"]["querystring"]["x"], "1");
    assert_eq!(e["route_id"], "logged");
    assert_eq!(e["request"]["method"], "POST");
    assert_eq!(e["response"]["status"], 200);
    assert!(e["latency"].as_f64().is_some_and(|l| l > 0.0));
    assert_eq!(e["upstream"], up.addr.to_string());
    let s = &e["llm_summary"];
    assert_eq!(
        (s["prompt_tokens"].as_u64(), s["completion_tokens"].as_u64(), s["total_tokens"].as_u64()),
        (Some(23), Some(8), Some(31)),
        "{e:#}"
    );
    assert_eq!((s["model"].as_str(), s["stream"].as_bool()), (Some("gpt-4"), Some(false)));
    assert!(s["duration"].is_u64() && s["upstream_response_time"].is_u64());
    assert_eq!(e["llm_request"]["messages"][1]["content"], "What is 1+1?");
    assert_eq!(e["llm_request"]["stream"], false);
    assert_eq!(e["llm_response_text"]["content"], "1+1 equals 2.");
    assert_eq!(serde_json::from_str::<Value>(e["request"]["body"].as_str().unwrap()).unwrap(), chat(None, false));
    assert_eq!(serde_json::from_str::<Value>(e["response"]["body"].as_str().unwrap()).unwrap(), r.json());

    // logging.payloads: the messages and the answer as a span event, and no credential.
    let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let (_, clients) = trace_of(&col, &rid).await;
    let ev = clients[0].span.events.iter().find(|e| e.name == "gen_ai.client.inference.operation.details").expect("payload event");
    let ev = serde_json::to_string(&ev.attributes.iter().map(|a| (a.key.clone(), format!("{:?}", a.value))).collect::<Vec<_>>()).unwrap();
    assert!(ev.contains("gen_ai.input.messages") && ev.contains("What is 1+1?"), "{ev}");
    assert!(ev.contains("gen_ai.output.messages") && ev.contains("1+1 equals 2."), "{ev}");
    assert!(!ev.contains("client-secret-xyz") && !ev.contains("sk-route-secret"));

    // A stream's text is accumulated.
    let mut st = http::post_stream(&format!("{}/anything", p.data), &[], &chat(None, true)).await.unwrap();
    let streamed = st.rest().await;
    let e = wait_until("the stream's entry", T, || async { sink.requests().get(1).map(Recorded::json) }).await;
    assert_eq!(e["llm_summary"]["stream"], true);
    // include_resp_body on a stream: what the client was sent.
    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
    assert_eq!(e["response"]["body"].as_str(), Some(streamed.as_str()), "{e:#}");
    assert!(e["llm_response_text"]["content"].as_str().is_some_and(|t| t.starts_with("part0 ")), "{e:#}");

    // /config_dump shows the logger's auth_header redacted.
    let dump = p.config_dump().await;
    assert_eq!(dump["routes"][0]["plugins"]["http-logger"]["auth_header"], "******");
    assert!(!dump.to_string().contains("log-secret-123"));

    // aigw-config's admin reads too.
    let dir = TempDir::new("obs-config");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &["--data-encryption-key", &"ab".repeat(32)]).await;
    let put = cfg.put_rest("logged", &route).await;
    assert!(put.status.is_success(), "{}", put.text());
    let read = http::get(&cfg.admin("/routes/logged"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().text();
    assert!(!read.contains("log-secret-123"), "{read}");
    assert!(read.contains("$aigw-enc$v1$") || read.contains("******"), "{read}");
}

/// A log server that is down never slows or fails requests (compared loosely with the
/// same requests on a route without a logger: the machine may be loaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_server_that_is_down_does_not_slow_requests() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let up = FakeServer::start(ProviderSpec::openai("k").handler()).await;
    let mut logged = chat_route("logged", "/logged", &up.url(), "k");
    logged["plugins"]["http-logger"] =
        json!({"uri": format!("http://{free}/logs"), "batch_max_size": 1, "max_retry_count": 2, "timeout": 1});
    let (p, _d) = proxy_with(vec![logged, chat_route("plain", "/plain", &up.url(), "k")], &[], &[]).await;
    let run = |path: &'static str| {
        let p = &p;
        async move {
            let t = Instant::now();
            for _ in 0..20 {
                let r = p.chat(path).await.unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
            }
            t.elapsed()
        }
    };
    run("/plain").await; // warm up
    let plain = run("/plain").await;
    let logged = run("/logged").await;
    assert!(logged < plain * 5 + Duration::from_secs(2), "logged {logged:?} vs plain {plain:?}");
    wait_until("failed log posts counted", T, || async {
        let m = http::get(&format!("{}/metrics", p.status), &[]).await.ok()?.text();
        let n: u64 = m.lines().find_map(|l| l.strip_prefix("aigw_telemetry_dropped_total{sink=\"http_logger\"} "))?.parse().ok()?;
        (n >= 1).then_some(())
    })
    .await;
}

/// The proxy starts with the spec's exact `access_log_format` and fills every field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_access_log_format_works() {
    const SPEC: &str = "$remote_addr - $remote_user [$time_local] $http_host \"$request_line\" $status $body_bytes_sent $request_time \"$http_referer\" \"$http_user_agent\" $upstream_addr $upstream_status $apisix_upstream_response_time \"$upstream_scheme://$upstream_host$upstream_uri\" \"$apisix_request_id\" \"$request_type\" \"$llm_time_to_first_token\" \"$llm_model\" \"$request_llm_model\" \"$llm_prompt_tokens\" \"$llm_completion_tokens\"";
    let up = FakeServer::start(ProviderSpec::openai("k").handler()).await;
    let dir = TempDir::new("obs-log");
    let log = dir.path().join("access.log");
    let (p, _d) = proxy_with(
        vec![chat_route("r", "/anything", &up.url(), "k")],
        &[],
        &["--access-log", log.to_str().unwrap(), "--access-log-format", SPEC],
    )
    .await;
    let r = http::post_json(&format!("{}/anything", p.data), &[("user-agent", "curl/8.6.0")], &chat(Some("gpt-4o"), false)).await.unwrap();
    assert_eq!(r.status, 200);
    let rid = r.headers.get("x-aigw-request-id").and_then(|v| v.to_str().ok()).unwrap().to_owned();
    let line = wait_until("the access log line", T, || async { std::fs::read_to_string(&log).ok().filter(|t| t.ends_with('\n')) }).await;
    let host = p.data.trim_start_matches("http://");
    let prefix = "127.0.0.1 - - [";
    assert!(line.starts_with(prefix), "{line}");
    let rest = &line[line.find("] ").unwrap() + 2..];
    let want = format!("{host} \"POST /anything HTTP/1.1\" 200 {} ", r.body.len());
    assert!(rest.starts_with(&want), "{rest}\nwant {want}");
    for part in [
        "\"-\" \"curl/8.6.0\"".to_owned(),
        format!(" {} 200 ", up.addr),
        "\"http://127.0.0.1/v1/chat/completions\"".to_owned(),
        format!("\"{rid}\" \"ai_chat\" \""),
        "\"gpt-4\" \"gpt-4o\" \"23\" \"8\"\n".to_owned(),
    ] {
        assert!(line.contains(&part), "{part} in {line}");
    }
}

/// aigw-config and aigw-token-cache export their own telemetry when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_token_cache_export_their_own_metrics() {
    use aigw_testkit::proc::Proc;
    let col = Collector::start().await;
    let ep = col.http_endpoint();
    let dir = TempDir::new("obs-cfg");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ep.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    let mut cfg = Proc::spawn(
        "aigw-config",
        &["--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap(), "--admin-key", ADMIN_KEY],
        &env,
    );
    let admin = cfg.listen_addrs(&["admin"]).await["admin"].clone();
    let mut tc = Proc::spawn("aigw-token-cache", &["--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1", "--node-token", "t"], &env);
    let tc_addr = tc.listen_addrs(&["grpc"]).await["grpc"].clone();
    for service in ["aigw-config", "aigw-token-cache"] {
        let m = wait_until(&format!("{service} metrics over OTLP/HTTP"), T, || async { col.metric(service, "process.memory.usage") }).await;
        assert!(m.number_points()[0].1 > 0.0, "{:#}", m.json());
        assert_eq!(m.metric.unit, "By");
    }
    // Their own instruments (those of their /metrics) too: the config service's route
    // count, and a token-cache call refused for its node token.
    let put = http::send(
        ::http::Method::PUT,
        &format!("http://{admin}/apisix/admin/routes/r1"),
        &[("X-API-KEY", ADMIN_KEY), ("content-type", "application/json")],
        json!({"uri": "/r1", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"Authorization": "Bearer k"}}}}})
            .to_string(),
    )
    .await
    .unwrap();
    assert!(put.status.is_success(), "{}", put.text());
    wait_until("aigw.config.routes over OTLP", T, || async {
        let m = col.metric("aigw-config", "aigw.config.routes")?;
        (m.number_points()[0].1 == 1.0).then_some(())
    })
    .await;
    assert!(col.metric("aigw-config", "aigw.xds.nacks").is_some());
    let mut client = aigw_proto::tokencache::v1::token_cache_service_client::TokenCacheServiceClient::connect(format!("http://{tc_addr}"))
        .await
        .unwrap();
    let refused = client.get_access_token(aigw_proto::tokencache::v1::GetAccessTokenRequest::default()).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated, "no x-node-token");
    let mut req = tonic::Request::new(aigw_proto::tokencache::v1::GetAccessTokenRequest::default());
    req.metadata_mut().insert("x-node-token", "t".parse().unwrap());
    let bad = client.get_access_token(req).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument, "no credential");
    // And their requests as SERVER spans.
    let admin_span = col
        .wait_spans("the config service's span of the PUT", T, |spans| {
            spans
                .iter()
                .find(|s| s.service == "aigw-config" && s.name() == "admin_request" && s.str("http.request.method") == Some("PUT"))
                .cloned()
        })
        .await;
    assert_eq!(admin_span.kind(), "server");
    assert_eq!(admin_span.str("url.path"), Some("/apisix/admin/routes/r1"));
    assert_eq!(admin_span.str("http.response.status_code"), Some("201"));
    let tc_span = col
        .wait_spans("the token cache's span of GetAccessToken", T, |spans| {
            spans.iter().find(|s| s.service == "aigw-token-cache" && s.name() == "GetAccessToken").cloned()
        })
        .await;
    assert_eq!(tc_span.kind(), "server");
    assert_eq!(tc_span.str("rpc.system"), Some("grpc"));
    wait_until("aigw.token_cache.unauthenticated over OTLP", T, || async {
        let m = col.metric("aigw-token-cache", "aigw.token_cache.unauthenticated")?;
        (m.number_points()[0].1 >= 1.0).then_some(())
    })
    .await;
    assert_eq!(col.rejected(), 0);
}
