//! `ai-rate-limiting` end to end (CONTRACT §13) against a real `redis-server`: a route limit
//! held by three proxies sharing Redis, per-consumer limits, streamed and converted usage
//! charged, Redis killed with and without `allow_degradation`, and `ai-proxy-multi`
//! falling back from an instance whose limit is spent.

use aigw_testkit::fake::{AuthCheck, FakeServer, ProviderSpec};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::redis::RedisServer;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::{Proxy, T};

/// The fake's whole chat answer: 23 + 8 tokens.
const CHAT_TOKENS: u64 = 31;
/// Its stream: 11 + 3 tokens.
const STREAM_TOKENS: u64 = 14;

fn ai(upstream: &FakeServer) -> Value {
    json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer sk-up"}},
           "options": {"model": "gpt-4o-mini"}, "override": {"endpoint": format!("{}/v1/chat/completions", upstream.url())}})
}

fn upstream(name: &'static str) -> ProviderSpec {
    ProviderSpec::new(name, AuthCheck::Bearer("sk-up".into()))
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "What is 1+1?"}]})
}

async fn proxies(n: usize, routes: &Value, redis: &RedisServer, dir: &TempDir) -> Vec<Proxy> {
    let file = dir.path().join("routes.json");
    std::fs::write(&file, routes.to_string()).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Proxy::start(&["--routes", file.to_str().unwrap(), "--redis", &redis.url()], &[]).await);
    }
    out
}

fn header(r: &http::Reply, name: &str) -> Option<u64> {
    r.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Sequential requests spread round-robin over three proxies sharing one Redis: the first
/// refusal comes within 1% of the limit; the refusal is in the client's protocol with
/// `retry-after` and the quota headers; the headers ride every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_limit_holds_across_three_proxies() {
    let redis = RedisServer::start().await;
    let up = FakeServer::start(upstream("up").handler()).await;
    let dir = TempDir::new("rl3");
    // 500 requests' worth: 1% is five requests, what a loaded machine's charge lag (the
    // charge reaches Redis one round trip after the answer) can let through.
    let limit = 500 * CHAT_TOKENS;
    let routes = json!({"routes": [{"id": "limited", "uri": "/v1/chat/completions", "plugins": {"ai-proxy": ai(&up),
        "ai-rate-limiting": {"limit": limit, "time_window": 3600, "policy": "redis", "rejected_code": 429}}}]});
    let ps = proxies(3, &routes, &redis, &dir).await;
    let mut admitted = 0u64;
    let mut first_refusal = None;
    for i in 0..520 {
        let p = &ps[i % 3];
        let r = http::post_json(&format!("{}/v1/chat/completions", p.data), &[], &chat()).await.unwrap();
        match r.status.as_u16() {
            200 => {
                admitted += 1;
                assert_eq!(header(&r, "x-ai-ratelimit-limit-ai-proxy-openai-compatible"), Some(limit));
                let remaining = header(&r, "x-ai-ratelimit-remaining-ai-proxy-openai-compatible").unwrap();
                // The headers show Redis before this request; a finished request's charge
                // lands within LINGER (1 ms) + a round trip, and this fake answers in under
                // a millisecond, so a few of the latest requests may not be counted yet —
                // never more than the 1 % (five requests) the first refusal is allowed.
                let lag = 5;
                assert!(remaining <= limit - admitted.saturating_sub(1 + lag) * CHAT_TOKENS, "remaining {remaining} after {admitted}");
                assert!(header(&r, "x-ai-ratelimit-reset-ai-proxy-openai-compatible").is_some_and(|s| s <= 3600));
            }
            429 => {
                first_refusal.get_or_insert((admitted, r));
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let (at, r) = first_refusal.expect("the limit refused");
    eprintln!("sequential: first refusal after {at} requests for a limit of {}", limit / CHAT_TOKENS);
    let tokens_admitted = at * CHAT_TOKENS;
    assert!(tokens_admitted >= limit && tokens_admitted <= limit + limit / 100, "first refusal after {tokens_admitted} of {limit} tokens");
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "rate_limit_exceeded");
    assert!(header(&r, "retry-after").is_some_and(|s| (1..=3600).contains(&s)), "{:?}", r.headers);
    assert_eq!(header(&r, "x-ai-ratelimit-remaining-ai-proxy-openai-compatible"), Some(0));
    // Every proxy refuses now.
    for p in &ps {
        let r = http::post_json(&format!("{}/v1/chat/completions", p.data), &[], &chat()).await.unwrap();
        assert_eq!(r.status, 429);
    }
    assert_eq!(up.requests().len() as u64, admitted, "refused requests never reach the upstream");
    let metrics = http::get(&format!("{}/metrics", ps[0].status), &[]).await.unwrap().text();
    assert!(metrics.contains(r#"aigw_ratelimit_rejected_total{route="limited"}"#), "{metrics}");
}

/// A consumer's limit counts per consumer (and merges over the route's plugins); streamed
/// and Anthropic-converted usage is charged; the refusal speaks Anthropic to an
/// Anthropic client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_limits_are_independent_and_every_usage_is_charged() {
    let redis = RedisServer::start().await;
    let up = FakeServer::start(upstream("up").handler()).await;
    let dir = TempDir::new("rlc");
    let per_consumer =
        json!({"ai-rate-limiting": {"limit": 2 * CHAT_TOKENS, "time_window": 3600, "policy": "redis", "rejected_code": 429}});
    let routes = json!({
        "consumers": [
            {"username": "team-a", "plugins": {"key-auth": {"key": "ka"}, "ai-rate-limiting": per_consumer["ai-rate-limiting"]}},
            {"username": "team-b", "plugins": {"key-auth": {"key": "kb"}, "ai-rate-limiting": per_consumer["ai-rate-limiting"]}}
        ],
        "routes": [{"id": "chat", "uris": ["/v1/chat/completions", "/v1/messages"], "plugins": {"key-auth": {}, "ai-proxy": ai(&up)}}]});
    let ps = proxies(2, &routes, &redis, &dir).await;
    let url = |i: usize, path: &str| format!("{}{path}", ps[i % 2].data);
    // team-a: a stream (14 tokens), then whole answers until refused.
    let mut body = chat();
    body["stream"] = json!(true);
    let mut s = http::post_stream(&url(0, "/v1/chat/completions"), &[("apikey", "ka")], &body).await.unwrap();
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers.get("x-ai-ratelimit-remaining-ai-proxy-openai-compatible").unwrap(),
        &(2 * CHAT_TOKENS).to_string(),
        "headers on a stream"
    );
    s.rest().await;
    // The stream's tokens reach Redis (a charge rides the node's next exchange, at most
    // LINGER later); a probe sent before that would charge too and never see 48, so wait
    // on Redis itself. Then the other node's next answer sees them.
    wait_until("stream charged in redis", T, || async { (redis.sum("aigw:rl:*").await == STREAM_TOKENS).then_some(()) }).await;
    let r = http::post_json(&url(1, "/v1/chat/completions"), &[("apikey", "ka")], &chat()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r, "x-ai-ratelimit-remaining-ai-proxy-openai-compatible"),
        Some(2 * CHAT_TOKENS - STREAM_TOKENS),
        "the other node sees the stream"
    );
    // 14 + 31 = 45 < 62: one more; 76 ≥ 62: refused — in Anthropic's shape for a Messages client.
    let m = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let r = http::post_json(&url(0, "/v1/messages"), &[("x-api-key", "ka")], &m).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = wait_until("team-a spent", T, || async {
        let r = http::post_json(&url(1, "/v1/messages"), &[("x-api-key", "ka")], &m).await.unwrap();
        (r.status == 429).then_some(r)
    })
    .await;
    assert_eq!((r.json()["type"].as_str(), r.json()["error"]["type"].as_str()), (Some("error"), Some("rate_limit_error")));
    // team-b is untouched.
    let r = http::post_json(&url(0, "/v1/chat/completions"), &[("apikey", "kb")], &chat()).await.unwrap();
    assert_eq!((r.status.as_u16(), header(&r, "x-ai-ratelimit-remaining-ai-proxy-openai-compatible")), (200, Some(2 * CHAT_TOKENS)));
}

/// Redis killed mid-test: `allow_degradation: false` answers 503 in the client's protocol,
/// `true` admits on the node's own counts; both recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_or_degrades() {
    let mut redis = RedisServer::start().await;
    let up = FakeServer::start(upstream("up").handler()).await;
    let dir = TempDir::new("rld");
    let rl = |degrade: bool| json!({"limit": 1_000_000, "time_window": 3600, "policy": "redis", "allow_degradation": degrade});
    let routes = json!({"routes": [
        {"id": "strict", "uri": "/strict", "plugins": {"ai-proxy": ai(&up), "ai-rate-limiting": rl(false)}},
        {"id": "lenient", "uri": "/lenient", "plugins": {"ai-proxy": ai(&up), "ai-rate-limiting": rl(true)}}]});
    let ps = proxies(1, &routes, &redis, &dir).await;
    let p = &ps[0];
    for path in ["/strict", "/lenient"] {
        assert_eq!(p.chat(path).await.unwrap().status, 200);
    }
    redis.kill9().await;
    let r = p.chat("/strict").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "ratelimit_unavailable");
    assert_eq!(p.chat("/lenient").await.unwrap().status, 200, "admitted on this node's counts");
    let metrics = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    assert!(metrics.contains("aigw_ratelimit_degraded_total 1") && metrics.contains("aigw_ratelimit_unavailable_total 1"), "{metrics}");
    redis.restart().await;
    wait_until("strict serves again", T, || async { (p.chat("/strict").await.ok()?.status == 200).then_some(()) }).await;
}

/// `ai-proxy-multi` with `fallback_strategy: rate_limiting`: an instance whose limit is spent
/// is skipped for the rest of its window, and used again in the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_falls_back_from_a_spent_instance_and_returns() {
    let redis = RedisServer::start().await;
    let cheap = FakeServer::start(upstream("cheap").handler()).await;
    let spare = FakeServer::start(upstream("spare").handler()).await;
    let dir = TempDir::new("rlm");
    let instance = |name: &str, fake: &FakeServer, priority: i64| {
        let mut i = ai(fake);
        i["name"] = json!(name);
        i["priority"] = json!(priority);
        i["weight"] = json!(1);
        i
    };
    let routes = json!({"routes": [{"id": "multi", "uri": "/v1/chat/completions", "plugins": {
        "ai-proxy-multi": {"fallback_strategy": ["rate_limiting"], "instances": [instance("cheap", &cheap, 2), instance("spare", &spare, 1)]},
        "ai-rate-limiting": {"instances": [{"name": "cheap", "limit": CHAT_TOKENS, "time_window": 2}], "policy": "redis"}}}]});
    let ps = proxies(1, &routes, &redis, &dir).await;
    let p = &ps[0];
    let who = |r: &http::Reply| r.json()["system_fingerprint"].as_str().unwrap_or_default().to_owned();
    // Align with the start of a 2 s window so the test's requests share it.
    wait_until("a fresh window", T, || async {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 2000;
        (ms < 300).then_some(())
    })
    .await;
    let r = p.chat("/v1/chat/completions").await.unwrap();
    assert_eq!((r.status.as_u16(), who(&r)), (200, "cheap".to_owned()));
    assert_eq!(header(&r, "x-ai-ratelimit-limit-cheap"), Some(CHAT_TOKENS));
    let r = wait_until("cheap spent", T, || async {
        let r = p.chat("/v1/chat/completions").await.ok()?;
        (who(&r) == "spare").then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-ai-ratelimit-limit-cheap").is_none(), "headers name the instance that answered");
    let st = http::get(&format!("{}/status/instances", p.status), &[]).await.unwrap().json();
    let cheap_st = st["routes"][0]["instances"].as_array().unwrap().iter().find(|i| i["name"] == "cheap").unwrap().clone();
    assert_eq!(
        (cheap_st["ratelimit"]["limit"].as_u64(), cheap_st["ratelimit"]["remaining"].as_u64()),
        (Some(CHAT_TOKENS), Some(0)),
        "{st}"
    );
    // The next window: cheap again.
    let r = wait_until("cheap's next window", T, || async {
        let r = p.chat("/v1/chat/completions").await.ok()?;
        (who(&r) == "cheap").then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
}

/// `rules`: one counter per value of a request variable, `X-AI-{prefix}-RateLimit-*`
/// headers; a request whose key has no value skips the rule (local policy: per process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_count_per_variable_value() {
    let up = FakeServer::start(upstream("up").handler()).await;
    let dir = TempDir::new("rlr");
    let file = dir.path().join("routes.json");
    let routes = json!({"routes": [{"id": "teams", "uri": "/teams", "plugins": {"ai-proxy": ai(&up),
        "ai-rate-limiting": {"rules": [{"count": CHAT_TOKENS, "time_window": 3600, "key": "team-$http_x_team", "header_prefix": "team"}],
            "rejected_code": 429, "rejected_msg": "your team's tokens are spent"}}}]});
    std::fs::write(&file, routes.to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap()], &[]).await;
    let post = |team: Option<&'static str>| {
        let url = format!("{}/teams", p.data);
        async move {
            let h: Vec<(&str, &str)> = team.map(|t| ("x-team", t)).into_iter().collect();
            http::post_json(&url, &h, &chat()).await.unwrap()
        }
    };
    let r = post(Some("red")).await;
    assert_eq!((r.status.as_u16(), header(&r, "x-ai-team-ratelimit-remaining")), (200, Some(CHAT_TOKENS)));
    let r = wait_until("red spent", T, || async { Some(post(Some("red")).await).filter(|r| r.status == 429) }).await;
    assert_eq!(r.json()["error"]["message"], "your team's tokens are spent");
    assert_eq!(header(&r, "x-ai-team-ratelimit-remaining"), Some(0));
    assert_eq!(post(Some("blue")).await.status, 200, "another value, another counter");
    let r = post(None).await;
    assert_eq!(r.status, 200, "no key value: the rule is skipped");
    assert!(r.headers.get("x-ai-team-ratelimit-limit").is_none());
}

/// Concurrent load over three proxies sharing Redis: a request is admitted while its
/// counter is below the limit, so what is in flight can cross it — but never by more than
/// the bound docs/limits.md states: 2 × (requests in flight across the fleet) × the
/// tokens of one request (one in flight per client, and one finished whose charge is
/// still on its way to Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_over_admission_stays_within_the_documented_bound() {
    let redis = RedisServer::start().await;
    let inner = upstream("slow").handler();
    let slow: aigw_testkit::fake::Handler = std::sync::Arc::new(move |r| inner(r).delayed(std::time::Duration::from_millis(10)));
    let up = FakeServer::start(slow).await;
    let dir = TempDir::new("rlo");
    let limit = 50 * CHAT_TOKENS;
    let routes = json!({"routes": [{"id": "c", "uri": "/c", "plugins": {"ai-proxy": ai(&up),
        "ai-rate-limiting": {"limit": limit, "time_window": 3600, "policy": "redis", "rejected_code": 429}}}]});
    let ps = proxies(3, &routes, &redis, &dir).await;
    const CLIENTS: u64 = 12;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS as usize {
        let url = format!("{}/c", ps[c % 3].data);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            loop {
                let r = http::post_json(&url, &[], &chat()).await.unwrap();
                match r.status.as_u16() {
                    200 => ok += 1,
                    429 => return ok,
                    s => panic!("unexpected {s}"),
                }
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    let tokens = admitted * CHAT_TOKENS;
    let bound = limit + 2 * CLIENTS * CHAT_TOKENS;
    eprintln!(
        "over-admission: {admitted} requests admitted for a limit of {} ({} over; bound {})",
        limit / CHAT_TOKENS,
        admitted.saturating_sub(limit / CHAT_TOKENS),
        2 * CLIENTS
    );
    assert!(tokens >= limit, "the limit was reached: {tokens}");
    assert!(tokens <= bound, "{tokens} tokens admitted, bound {bound}");
}
