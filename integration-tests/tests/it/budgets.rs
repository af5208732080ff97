//! Cost and budgets end to end (CONTRACT §14): `$llm_cost` equals the hand-computed cost for
//! chat, stream, Anthropic-converted, native Anthropic (cache reads and writes) and Bedrock
//! requests; an unpriced model's cost is empty; a consumer's $0.01 budget holds across two
//! proxies sharing Redis.

use aigw_testkit::bedrock::{AwsKeys, bedrock};
use aigw_testkit::fake::{AuthCheck, FakeServer, ProviderSpec, anthropic};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::redis::RedisServer;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::{Proxy, T};

fn openai(up: &FakeServer, model: &str) -> Value {
    json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer sk-up"}},
           "options": {"model": model}, "override": {"endpoint": format!("{}/v1/chat/completions", up.url())}})
}

/// An operator price for the fake's model: $10 in, $100 out per million tokens.
fn prices() -> Value {
    json!([{"provider": "openai-compatible", "model": "gpt-4o-mini", "input": 10.0, "output": 100.0}])
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "What is 1+1?"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_of_every_request_is_computed_once_from_the_catalog() {
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let claude = FakeServer::start(anthropic("sk-ant")).await;
    let keys = AwsKeys::example();
    let br = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let dir = TempDir::new("cost");
    let file = dir.path().join("routes.json");
    let log = dir.path().join("access.log");
    let routes = json!({"prices": prices(), "routes": [
        {"id": "chat", "uris": ["/v1/chat/completions", "/v1/messages"], "plugins": {"ai-proxy": openai(&up, "gpt-4o-mini")}},
        {"id": "mystery", "uri": "/mystery", "plugins": {"ai-proxy": openai(&up, "mystery-model")}},
        {"id": "claude", "uri": "/claude/v1/messages", "plugins": {"ai-proxy": {"provider": "anthropic",
            "auth": {"header": {"x-api-key": "sk-ant"}}, "options": {"model": "claude-sonnet-4-5-20250929"},
            "override": {"endpoint": claude.url()}}}},
        {"id": "bedrock", "uri": "/model/*", "plugins": {"ai-proxy": {"provider": "bedrock",
            "auth": {"aws": {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}},
            "provider_conf": {"region": "us-east-1"}, "override": {"endpoint": br.url()}}}}
    ]});
    std::fs::write(&file, routes.to_string()).unwrap();
    let fmt = "$route_id|$request_type|$llm_cost";
    let col = aigw_testkit::otlp::Collector::start().await;
    let endpoint = col.grpc_endpoint();
    let env =
        [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50"), ("OTEL_METRIC_EXPORT_INTERVAL", "200")];
    let p =
        Proxy::start(&["--routes", file.to_str().unwrap(), "--access-log", log.to_str().unwrap(), "--access-log-format", fmt], &env).await;
    let url = |path: &str| format!("{}{path}", p.data);
    // Chat: 23 × $10 + 8 × $100 per million = $0.001030.
    assert_eq!(http::post_json(&url("/v1/chat/completions"), &[], &chat()).await.unwrap().status, 200);
    // Stream: 11 × $10 + 3 × $100 = $0.000410.
    let mut body = chat();
    body["stream"] = json!(true);
    http::post_stream(&url("/v1/chat/completions"), &[], &body).await.unwrap().rest().await;
    // An Anthropic client converted to the OpenAI backend: the same usage as chat.
    let m = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(http::post_json(&url("/v1/messages"), &[], &m).await.unwrap().status, 200);
    // Native Anthropic, dated model, default catalog (3 / 15, reads 0.3, writes 3.75):
    // 50 × 3 + 200 × 0.3 + 100 × 3.75 + 30 × 15 = $0.001035.
    let r = http::post_json(&url("/claude/v1/messages"), &[], &m).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Bedrock, a dated versioned id (3 / 15): 14 × 3 + 9 × 15 = $0.000177.
    let conv = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let r = http::post_json(&url("/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse"), &[], &conv).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // A model with no price: cost empty (never 0), counted.
    assert_eq!(http::post_json(&url("/mystery"), &[], &chat()).await.unwrap().status, 200);
    let lines = wait_until("six log lines", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() == 6).then_some(lines)
    })
    .await;
    for want in
        ["chat|ai_chat|0.001030", "chat|ai_stream|0.000410", "claude|ai_chat|0.001035", "bedrock|ai_chat|0.000177", "mystery|ai_chat|"]
    {
        assert!(lines.iter().any(|l| l == want), "{want} in {lines:?}");
    }
    assert_eq!(lines.iter().filter(|l| *l == "chat|ai_chat|0.001030").count(), 2, "chat and the converted Anthropic request");
    let metrics = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    assert!(
        metrics.contains(
            r#"aigw_gen_ai_unpriced_requests_total{gen_ai_provider_name="openai-compatible",gen_ai_response_model="mystery-model"} 1"#
        ),
        "{metrics}"
    );
    // The same figure in the cost counter (by route) and on each SERVER span.
    let cost_of = |route: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("aigw_gen_ai_cost_total{") && l.contains(&format!("aigw_route_id=\"{route}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for (route, want) in [("chat", 0.001030 * 2.0 + 0.000410), ("claude", 0.001035), ("bedrock", 0.000177), ("mystery", 0.0)] {
        assert!((cost_of(route) - want).abs() < 1e-9, "{route}: counter {} vs {want}\n{metrics}", cost_of(route));
    }
    let mut costs = col
        .wait_spans("six SERVER spans", T, |spans| {
            let server: Vec<_> = spans.iter().filter(|s| s.kind() == "server").collect();
            (server.len() == 6).then(|| {
                server.iter().map(|s| (s.str("aigw.route_id").unwrap_or("").to_owned(), s.double("aigw.usage.cost"))).collect::<Vec<_>>()
            })
        })
        .await;
    costs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let want = [
        ("bedrock", Some(0.000177)),
        ("chat", Some(0.000410)),
        ("chat", Some(0.001030)),
        ("chat", Some(0.001030)),
        ("claude", Some(0.001035)),
        ("mystery", None),
    ];
    for ((route, got), (wr, w)) in costs.iter().zip(want) {
        assert_eq!(route, wr, "{costs:?}");
        match (got, w) {
            (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{route}: span {g} vs {w}"),
            (None, None) => {}
            _ => panic!("{route}: span cost {got:?}, want {w:?} (an unpriced request has none)"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_budget_holds_across_two_proxies() {
    let redis = RedisServer::start().await;
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let dir = TempDir::new("budget");
    let file = dir.path().join("routes.json");
    let routes = json!({"prices": prices(),
        "consumers": [
            {"username": "team-a", "plugins": {"key-auth": {"key": "ka"}, "ai-budget": {"budget": 0.01, "period": "day"}}},
            {"username": "team-b", "plugins": {"key-auth": {"key": "kb"}, "ai-budget": {"budget": 0.01, "period": "day"}}}
        ],
        "routes": [{"id": "chat", "uri": "/v1/chat/completions", "plugins": {"key-auth": {}, "ai-proxy": openai(&up, "gpt-4o-mini")}}]});
    std::fs::write(&file, routes.to_string()).unwrap();
    let mut ps = Vec::new();
    for _ in 0..2 {
        ps.push(Proxy::start(&["--routes", file.to_str().unwrap(), "--redis", &redis.url()], &[]).await);
    }
    // $0.001030 a request: nine leave $0.00073, the tenth crosses $0.01, the eleventh is refused.
    let mut admitted = 0;
    let refusal = loop {
        let r = http::post_json(&format!("{}/v1/chat/completions", ps[admitted % 2].data), &[("apikey", "ka")], &chat()).await.unwrap();
        if r.status != 200 {
            break r;
        }
        let remaining: f64 = r.headers["x-ai-budget-remaining"].to_str().unwrap().parse().unwrap();
        assert!(remaining > 0.0, "admitted only while spend is below the budget");
        assert_eq!(r.headers["x-ai-budget-limit"], "0.010000");
        admitted += 1;
        assert!(admitted <= 12, "the budget never refused");
    };
    assert!((10..=11).contains(&admitted), "refused after {admitted} requests, not before the tenth");
    assert_eq!(refusal.status, 429);
    let e = refusal.json();
    assert_eq!((e["error"]["type"].as_str(), e["error"]["code"].as_str()), (Some("insufficient_quota"), Some("budget_exceeded")));
    assert!(refusal.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() <= 86_400);
    assert_eq!(refusal.headers["x-ai-budget-remaining"], "0.000000");
    // Both proxies refuse team-a; team-b spends its own budget.
    for p in &ps {
        assert_eq!(http::post_json(&format!("{}/v1/chat/completions", p.data), &[("apikey", "ka")], &chat()).await.unwrap().status, 429);
    }
    let r = http::post_json(&format!("{}/v1/chat/completions", ps[0].data), &[("apikey", "kb")], &chat()).await.unwrap();
    assert_eq!((r.status.as_u16(), r.headers["x-ai-budget-remaining"].to_str().unwrap()), (200, "0.010000"));
}

/// The official SDKs on budgeted consumers: served, then each raises its own rate-limit
/// error once the budget is spent (integration-tests/py/budget_sdks.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_see_a_spent_budget_as_their_rate_limit_error() {
    let Some(python) = crate::common::python_with(&["openai", "anthropic", "boto3"]) else { return };
    let redis = RedisServer::start().await;
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let keys = AwsKeys::example();
    let br = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let dir = TempDir::new("budget-sdks");
    let file = dir.path().join("routes.json");
    // $0.001030 a chat request: a $0.0025 budget serves two or three, then refuses; a
    // Bedrock request is $0.000177 (default catalog): $0.0004 serves two or three.
    let budget = |b: f64| json!({"budget": b, "period": "day"});
    let routes = json!({"prices": prices(),
    "consumers": [
        {"username": "oa", "plugins": {"key-auth": {"key": "k-oa"}, "ai-budget": budget(0.0025)}},
        {"username": "an", "plugins": {"key-auth": {"key": "k-an"}, "ai-budget": budget(0.0025)}},
        {"username": "br", "plugins": {"key-auth": {"key": "k-br"}, "ai-budget": budget(0.0004)}}
    ],
    "routes": [
        {"id": "chat", "uris": ["/v1/chat/completions", "/v1/messages"], "plugins": {"key-auth": {}, "ai-proxy": openai(&up, "gpt-4o-mini")}},
        {"id": "bedrock", "uri": "/model/*", "plugins": {"key-auth": {}, "ai-proxy": {"provider": "bedrock",
            "auth": {"aws": {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}},
            "provider_conf": {"region": "us-east-1"}, "override": {"endpoint": br.url()}}}}
    ]});
    std::fs::write(&file, routes.to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap(), "--redis", &redis.url()], &[]).await;
    let data: std::net::SocketAddr = p.data.trim_start_matches("http://").parse().unwrap();
    let front = aigw_testkit::tls_front::TlsFront::start(data, dir.path()).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/budget_sdks.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("AIGW_URL", &p.data)
        .env("AIGW_TLS_URL", &front.url)
        .env("AWS_CA_BUNDLE", &front.ca_file)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("OA_KEY", "k-oa")
        .env("AN_KEY", "k-an")
        .env("BR_KEY", "k-br")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai: OK") && text.contains("anthropic: OK") && text.contains("boto3: OK"), "{text}");
}
