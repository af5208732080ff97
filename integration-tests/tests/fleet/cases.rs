//! The fleet cases (issue 13). Each fault runs under a steady load through the load
//! balancer and asserts zero failed requests; the counts are printed.

use std::time::{Duration, Instant};

use aigw_testkit::http;
use serde_json::{Value, json};

use crate::harness::{Fleet, docker, fleet, probe_model, repo};
use crate::load;

const SECRETS: &[&str] = &["sk-fake-openai", "sk-ant-fake", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"];

/// Lines of fake Google's service-account key (fake-llm's `/gcp/service-account.json`).
fn key_fragments() -> Vec<&'static str> {
    aigw_testkit::gcp::TestAccount::a().key_fragments()
}

fn route_ids(dump: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        dump["routes"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
    ids.sort();
    ids
}

async fn chat_through_lb(f: &Fleet, path: &str) -> http::Reply {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 1+1?"}]});
    http::post_json(&format!("{}{path}", f.lb), &[], &body).await.unwrap()
}

/// `curl http://LB/v1/chat/completions` as in deploy/README.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_routes_put_with_grpcurl_reach_every_replica() {
    let Some((f, _lock)) = fleet().await else { return };
    let version = f.version().await;
    let replicas = f.replicas().await;
    assert!(replicas.len() >= 2, "the fleet runs at least two proxies: {replicas:?}");
    let took = f.wait_version_everywhere(&version, Duration::from_secs(20)).await;
    println!("version {version} on {} replicas ({took:?} after the last PutRoute)", replicas.len());
    for r in &replicas {
        // Read from inside the container, as an operator with `docker exec` would.
        let dump = f.config_dump(r).await.unwrap();
        assert_eq!(dump["version"], version.as_str(), "{}", r.name);
        let ids = route_ids(&dump);
        for id in ["anthropic", "bedrock", "openai", "vertex"] {
            assert!(ids.iter().any(|i| i == id), "{}: no route {id}: {dump}", r.name);
        }
        let vertex = dump["routes"].as_array().unwrap().iter().find(|r| r["id"] == "vertex").unwrap();
        assert_eq!(vertex.pointer("/plugins/ai-proxy/auth/gcp/service_account_json"), Some(&json!("******")), "{}: {vertex}", r.name);
        let text = dump.to_string();
        assert!(text.contains("******"), "{}: secrets are shown redacted: {text}", r.name);
        for s in SECRETS.iter().chain(&key_fragments()) {
            assert!(!text.contains(s), "{}: a secret reached /config_dump: {text}", r.name);
        }
    }
    let r = chat_through_lb(&f, "/v1/chat/completions").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "1+1 equals 2.");
    assert!(r.headers.contains_key("x-aigw-request-id"), "{:?}", r.headers);
}

/// The official openai, anthropic and boto3 SDKs through the load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a2_official_sdks_through_the_load_balancer() {
    let Some((f, _lock)) = fleet().await else { return };
    let before = f.fake_stats().await;
    let out = tokio::process::Command::new(&f.python)
        .arg(repo("integration-tests/py/fleet_sdks.py"))
        .env("AIGW_URL", &f.lb)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "fleet_sdks.py failed:\n{text}");
    for sdk in ["openai: OK", "openai on vertex-ai: OK", "anthropic: OK", "boto3: OK"] {
        assert!(text.contains(sdk), "{sdk} missing:\n{text}");
    }
    // Every provider fake was reached through the fleet (not answered by the gateway).
    let after = f.fake_stats().await;
    for p in ["openai", "anthropic", "bedrock", "vertex"] {
        let (b, a) = (before["by_provider"][p].as_u64().unwrap_or(0), after["by_provider"][p].as_u64().unwrap_or(0));
        assert!(a > b, "fake-llm saw no {p} request ({b} -> {a}): {after}");
    }
    assert_eq!(before["by_status"]["401"], after["by_status"]["401"], "no request reached a provider without its key: {after}");
    assert_eq!(before["vertex_rejected"], after["vertex_rejected"], "no request reached Vertex without a valid token: {after}");
}

/// Every proxy replica's spans reach the trace backend, told apart by `service.instance.id`
/// (the container's hostname); a request is found by its `x-aigw-request-id` with its
/// upstream call in the same trace (deploy/README.md, "Find the trace"); aigw-config and
/// aigw-token-cache export their telemetry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_traces_from_every_replica_reach_the_collector() {
    let Some((f, _lock)) = fleet().await else { return };
    let mut pending = Vec::new();
    for r in f.replicas().await {
        pending.push((f.hostname(&r.id).await, r.name));
    }
    assert!(pending.len() >= 2, "{pending:?}");
    let replicas = pending.len();
    // Requests through the load balancer until every replica's SERVER span has arrived.
    let start = Instant::now();
    let mut sent = 0;
    while !pending.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(90), "no span from {pending:?} after {sent} requests");
        for _ in 0..4 {
            let r = chat_through_lb(&f, "/v1/chat/completions").await;
            assert_eq!(r.status, 200, "{}", r.text());
            sent += 1;
        }
        let mut still = Vec::new();
        for (host, name) in pending {
            if f.spans(&format!("service=aigw-proxy&service.instance.id={host}&limit=1")).await.is_empty() {
                still.push((host, name));
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("spans from all {replicas} replicas after {sent} requests ({:?})", start.elapsed());

    // One request's trace, found by its request id: the SERVER span, and the CLIENT span of
    // its upstream call (OpenAI at fake-llm) in the same trace, from the same replica.
    for (path, provider) in [("/v1/chat/completions", "openai"), (load::VERTEX_PATH, "gcp.vertex_ai")] {
        let r = chat_through_lb(&f, path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.headers["x-aigw-request-id"].to_str().unwrap().to_owned();
        let server = aigw_testkit::wait_until(&format!("the span of request {id}"), Duration::from_secs(30), || async {
            f.spans(&format!("service=aigw-proxy&aigw.request_id={id}")).await.into_iter().next()
        })
        .await;
        let trace = server["trace_id"].as_str().unwrap().to_owned();
        let client = aigw_testkit::wait_until(&format!("the CLIENT span of trace {trace}"), Duration::from_secs(30), || async {
            f.spans(&format!("trace_id={trace}")).await.into_iter().find(|s| s["kind"] == 3)
        })
        .await;
        assert_eq!(server["kind"], 2, "{server}");
        assert_eq!(client["parent_span_id"], server["span_id"], "{client}");
        assert_eq!(client["resource"]["service.instance.id"], server["resource"]["service.instance.id"], "{client}");
        let a = &client["attributes"];
        assert_eq!((a["gen_ai.provider.name"].as_str(), a["server.address"].as_str()), (Some(provider), Some("fake-llm")), "{client}");
        assert_eq!(a["http.response.status_code"], 200, "{client}");
        assert!(a["gen_ai.usage.output_tokens"].as_i64().is_some_and(|t| t > 0), "{client}");
        println!("request {id}: trace {trace}: {} <- {} ({provider})", server["name"], client["name"]);
    }

    // The other aigw services export to the same backend (process metrics every 10 s).
    for service in ["aigw-config", "aigw-token-cache", "aigw-proxy"] {
        aigw_testkit::wait_until(&format!("{service}'s metrics"), Duration::from_secs(60), || async {
            let m = http::get(&format!("{}/metrics", f.traces), &[]).await.ok()?.json();
            m["metrics"].as_array()?.iter().any(|m| m["service"] == service && m["name"] == "process.memory.usage").then_some(())
        })
        .await;
    }
}

/// Many concurrent first requests for one GCP credential through the load balancer (both
/// replicas, 1 in 4 streamed): exactly one mint at fake Google's token endpoint, made by the
/// token cache for every replica. No key, token or JWT in any container's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a4_gcp_token_minted_once_for_the_fleet() {
    let Some((f, _lock)) = fleet().await else { return };
    let replicas = f.replicas().await;
    f.fresh_vertex_credential("once").await;
    let mints = f.mints().await;
    let cache = f.token_cache_counters().await.unwrap();
    let mut fetches = Vec::new();
    for r in &replicas {
        fetches.push(f.proxy_gcp_counters(r).await.unwrap().get("remote_fetches"));
    }
    const N: usize = 48;
    let url = format!("{}{}", f.lb, load::VERTEX_PATH);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut body = json!({"messages": [{"role": "user", "content": "What is 1+1?"}]});
                if i % 4 == 0 {
                    body["stream"] = true.into();
                }
                http::post_json(&url, &[("authorization", "Bearer client-placeholder")], &body).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(text.contains("1+1 equals 2.") || text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
    let minted = f.mints().await - mints;
    let after = f.token_cache_counters().await.unwrap();
    println!(
        "{N} concurrent first requests on {} replicas: {minted} mint(s) at the token endpoint; token cache: {} requests, {} mints",
        replicas.len(),
        after.get("requests") - cache.get("requests"),
        after.get("mints") - cache.get("mints")
    );
    assert_eq!(minted, 1, "one token for the whole fleet");
    assert_eq!(after.get("mints") - cache.get("mints"), 1, "the token cache made it");
    // Every replica took its token from the token cache (not a lucky single replica).
    for (r, before) in replicas.iter().zip(fetches) {
        let now = f.proxy_gcp_counters(r).await.unwrap().get("remote_fetches");
        assert!(now > before, "{} fetched no token from the token cache ({before} -> {now})", r.name);
    }
    assert_no_secrets_logged(&f).await;
}

/// No container logged a GCP key line, an access token (fake Google's are `ya29.fake-…`),
/// a JWT or the node token; and the token cache did log its mints (the lines exist).
async fn assert_no_secrets_logged(f: &Fleet) {
    let logs = f.logs().await;
    assert!(logs.contains("minted gcp access token"), "no mint log line in:\n{logs}");
    for line in logs.lines() {
        for s in key_fragments() {
            assert!(!line.contains(s), "a private key line in a log: {line}");
        }
        assert!(!line.contains("ya29."), "an access token in a log: {line}");
        assert!(!line.contains("eyJ"), "a JWT in a log: {line}");
        assert!(!line.contains(&f.node_token), "the node token in a log: {line}");
    }
}

/// `docker compose kill aigw-config`, then start it again: the proxies keep serving, then
/// reconnect and take the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_config_service_killed_and_restarted_under_load() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("aigw-config killed", &f.lb);
    load.settle(200).await;
    f.compose(&["kill", "aigw-config"]).await.unwrap();
    let undo = f.undo_compose(&["start", "aigw-config"]);
    let config = f.containers("aigw-config").await;
    assert_eq!(f.health(&config[0]).await.split('/').next(), Some("exited"));
    // Without the config service the fleet keeps serving, and stays ready.
    load.settle(3 * load::RATE).await;
    for r in f.replicas().await {
        assert_eq!(f.health(&r.id).await, "running/healthy", "{} stays ready without the config service", r.name);
    }
    f.compose(&["start", "aigw-config"]).await.unwrap();
    undo.done();
    f.wait_healthy("aigw-config", 1, Duration::from_secs(60)).await;
    // The proxies reconnected: a change reaches all of them.
    let version = f.put_probe("after-config-restart").await;
    let took = f.wait_version_everywhere(&version, Duration::from_secs(60)).await;
    println!("after the restart, a change reached every replica in {took:?}");
    load.settle(load::RATE).await;
    load::assert_clean(&load.finish().await, 4 * load::RATE);
}

/// One proxy cut off from the control network keeps serving its last good snapshot; after
/// `docker network connect` it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b2_proxy_cut_from_config_network_keeps_serving_then_catches_up() {
    let Some((f, _lock)) = fleet().await else { return };
    let replicas = f.replicas().await;
    let (cut, others) = replicas.split_first().unwrap();
    let before = f.put_probe("before-cut").await;
    f.wait_version_everywhere(&before, Duration::from_secs(20)).await;
    let net = f.network("control");
    let load = load::start("proxy cut from control", &f.lb);
    load.settle(200).await;
    docker(&["network", "disconnect", &net, &cut.id]).await;
    let undo = f.undo_docker(&["network", "connect", &net, &cut.id]);
    let during = f.put_probe("during-cut").await;
    for r in others {
        let dump = f.config_dump(r).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut v = dump["version"].clone();
        while v != during.as_str() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            v = f.config_dump(r).await.unwrap()["version"].clone();
        }
        assert_eq!(v, during.as_str(), "{} (connected) takes the change", r.name);
    }
    // The cut replica still serves its last good snapshot (the load keeps going through it).
    load.settle(2 * load::RATE).await;
    let dump = f.config_dump(cut).await.unwrap();
    assert_eq!(dump["version"], before.as_str(), "{} kept its last good snapshot", cut.name);
    assert_eq!(f.health(&cut.id).await, "running/healthy", "{} stays ready while cut off", cut.name);
    docker(&["network", "connect", &net, &cut.id]).await;
    undo.done();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        if f.config_dump(cut).await.unwrap()["version"] == during.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "{} did not catch up with {during} after reconnecting", cut.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{} caught up {:?} after reconnecting", cut.name, started.elapsed());
    load::assert_clean(&load.finish().await, 3 * load::RATE);
}

/// Every proxy replica restarted, one at a time (SIGTERM, drain, start, healthy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b3_rolling_restart_of_every_proxy_loses_no_request() {
    let Some((f, _lock)) = fleet().await else { return };
    let replicas = f.replicas().await;
    let n = replicas.len();
    let load = load::start("rolling restart", &f.lb);
    load.settle(200).await;
    for r in &replicas {
        let t = Instant::now();
        docker(&["restart", "-t", "35", &r.id]).await;
        f.wait_healthy("aigw-proxy", n, Duration::from_secs(60)).await;
        println!("restarted {} (healthy again after {:?})", r.name, t.elapsed());
        load.settle(load::RATE / 2).await;
    }
    load::assert_clean(&load.finish().await, 2 * load::RATE);
}

/// Redis stopped and started under load: the token cache mints directly while it is
/// down (a credential first used during the outage gets its token), then uses Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b4_redis_stopped_and_started_under_load() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("redis stopped", &f.lb);
    load.settle(200).await;
    f.compose(&["stop", "redis"]).await.unwrap();
    let undo = f.undo_compose(&["start", "redis"]);
    let before = f.token_cache_counters().await.unwrap();
    let mints = f.mints().await;
    // A credential nobody has a token for yet: the load's vertex requests need one now.
    f.fresh_vertex_credential("redis-down").await;
    load.settle(2 * load::RATE).await;
    let during = f.token_cache_counters().await.unwrap();
    println!(
        "redis down: token cache {} direct, {} redis errors; {} mint(s)",
        during.get("direct") - before.get("direct"),
        during.get("redis_errors") - before.get("redis_errors"),
        f.mints().await - mints
    );
    assert!(during.get("direct") > before.get("direct"), "the token cache minted directly: {before:?} -> {during:?}");
    assert!(f.mints().await > mints);
    f.compose(&["start", "redis"]).await.unwrap();
    undo.done();
    f.wait_healthy("redis", 1, Duration::from_secs(60)).await;
    // Redis is used again: a new credential is minted through it (not directly).
    let start = Instant::now();
    loop {
        let before = f.token_cache_counters().await.unwrap();
        f.fresh_vertex_credential("redis-back").await;
        load.settle(load::RATE / 2).await;
        let after = f.token_cache_counters().await.unwrap();
        if after.get("mints") > before.get("mints") && after.get("direct") == before.get("direct") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the token cache does not use Redis again: {before:?} -> {after:?}");
    }
    println!("redis used again {:?} after it was healthy", start.elapsed());
    load.settle(load::RATE).await;
    load::assert_clean(&load.finish().await, 3 * load::RATE);
}

fn requests_total(metrics: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix("aigw_proxy_requests_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `--scale aigw-proxy=3`: the new replica gets traffic; then back to 1 (two replicas
/// drained away) with no failed request; then back to the default 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b5_scale_to_three_then_one_without_failures() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("scale 2 -> 3 -> 1", &f.lb);
    load.settle(200).await;
    let old: Vec<String> = f.replicas().await.into_iter().map(|r| r.id).collect();
    let undo = f.undo_compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=2"]);
    f.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=3"]).await.unwrap();
    f.wait_healthy("aigw-proxy", 3, Duration::from_secs(60)).await;
    let added = f.replicas().await.into_iter().find(|r| !old.contains(&r.id)).expect("a new replica");
    // The load balancer finds the new replica through DNS and sends it traffic.
    let status = f.published(&added.id, 9091).await.unwrap();
    aigw_testkit::wait_until("the new replica to get traffic", Duration::from_secs(20), || async {
        let m = http::get(&format!("{status}/metrics"), &[]).await.ok()?;
        (requests_total(&m.text()) >= 20).then_some(())
    })
    .await;
    println!("{} took traffic", added.name);
    f.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=1"]).await.unwrap();
    f.wait_healthy("aigw-proxy", 1, Duration::from_secs(90)).await;
    load.settle(load::RATE).await;
    let report = load.finish().await;
    f.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=2"]).await.unwrap();
    undo.done();
    f.wait_healthy("aigw-proxy", 2, Duration::from_secs(60)).await;
    load::assert_clean(&report, 2 * load::RATE);
}

/// A route change under load reaches every replica within 2 s, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b6_route_change_under_load_reaches_every_replica_within_2s() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("route change", &f.lb);
    load.settle(200).await;
    // Addresses first, so that the clock below runs only while the change travels.
    let config = f.config_addr().await;
    let mut status = Vec::new();
    for r in f.replicas().await {
        status.push((r.name.clone(), f.published(&r.id, 9091).await.unwrap()));
    }
    for round in 0..3 {
        let model = format!("probe-{round}-{}", std::process::id());
        let start = Instant::now();
        f.grpcurl_at(&config, "PutRoute", &Fleet::probe_route(&model)).await.unwrap();
        let acked = start.elapsed();
        let mut pending: Vec<&(String, String)> = status.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for s in pending {
                let dump = http::get(&format!("{}/config_dump", s.1), &[]).await.unwrap().json();
                if probe_model(&dump).as_deref() != Some(model.as_str()) {
                    still.push(s);
                }
            }
            pending = still;
            assert!(start.elapsed() < Duration::from_secs(10), "the change never reached {pending:?}");
        }
        // An upper bound: it includes grpcurl's own start and reflection round trips.
        let total = start.elapsed();
        println!("round {round}: on {} replicas {total:?} after grpcurl started (PutRoute acknowledged after {acked:?})", status.len());
        assert!(total <= Duration::from_secs(2), "the change took {total:?} to reach every replica");
        let r = chat_through_lb(&f, "/fleet/probe").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], model.as_str());
    }
    // The replicas agree with the config service on the version, too.
    let version = f.version().await;
    f.wait_version_everywhere(&version, Duration::from_secs(5)).await;
    load::assert_clean(&load.finish().await, load::RATE / 2);
}

/// `docker compose kill aigw-token-cache` under load: the proxies mint themselves (a
/// credential first used during the outage gets its tokens), then use the token cache
/// again once it is started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b7_token_cache_killed_under_load_then_started() {
    let Some((f, _lock)) = fleet().await else { return };
    let replicas = f.replicas().await;
    let load = load::start("token cache killed", &f.lb);
    load.settle(200).await;
    let mut before = Vec::new();
    for r in &replicas {
        before.push(f.proxy_gcp_counters(r).await.unwrap().get("remote_fallbacks"));
    }
    f.compose(&["kill", "aigw-token-cache"]).await.unwrap();
    let undo = f.undo_compose(&["start", "aigw-token-cache"]);
    let mints = f.mints().await;
    f.fresh_vertex_credential("cache-down").await;
    load.settle(2 * load::RATE).await;
    // Every replica needed a token for the new credential and got it without the cache.
    for (r, b) in replicas.iter().zip(&before) {
        let n = aigw_testkit::wait_until(&format!("{} to fall back", r.name), Duration::from_secs(30), || async {
            let now = f.proxy_gcp_counters(r).await.ok()?.get("remote_fallbacks");
            (now > *b).then_some(now)
        })
        .await;
        println!("{}: {} fallback(s) to a local mint", r.name, n - b);
    }
    let minted = f.mints().await - mints;
    println!("token cache down: {minted} mint(s) by {} replicas", replicas.len());
    assert!((1..=replicas.len() as u64).contains(&minted), "{minted} mints");
    f.compose(&["start", "aigw-token-cache"]).await.unwrap();
    undo.done();
    f.wait_healthy("aigw-token-cache", 1, Duration::from_secs(60)).await;
    // The proxies come back to it (each skips it for a few seconds after a failure): a new
    // credential's token is then minted once, by the token cache.
    let start = Instant::now();
    loop {
        let (mints, cache) = (f.mints().await, f.token_cache_counters().await.unwrap());
        f.fresh_vertex_credential("cache-back").await;
        load.settle(load::RATE / 2).await;
        let (minted, by_cache) = (f.mints().await - mints, f.token_cache_counters().await.unwrap().get("mints") - cache.get("mints"));
        if minted == 1 && by_cache == 1 {
            println!("token cache used again {:?} after it was healthy", start.elapsed());
            break;
        }
        println!("not yet: {minted} mint(s), {by_cache} by the token cache");
        assert!(start.elapsed() < Duration::from_secs(60), "the proxies do not use the token cache again");
    }
    load.settle(load::RATE).await;
    load::assert_clean(&load.finish().await, 3 * load::RATE);
}

/// The control plane loses a machine, under load: one aigw-config replica killed (the
/// proxies move to the other), then one of the three etcd members (quorum holds). Route
/// changes made meanwhile reach every proxy; no request fails; once everything is back
/// both replicas publish the same version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c1_config_replica_then_etcd_member_killed_under_load() {
    let Some((f, _lock)) = fleet().await else { return };
    let second = f.config_addr_of("aigw-config-2").await;
    let load = load::start("config replica, then etcd member killed", &f.lb);
    load.settle(200).await;

    f.compose(&["kill", "aigw-config"]).await.unwrap();
    let undo_config = f.undo_compose(&["start", "aigw-config"]);
    let model = format!("after-replica-kill-{}", std::process::id());
    f.grpcurl_at(&second, "PutRoute", &Fleet::probe_route(&model)).await.unwrap();
    let version = f.version_at(&second).await;
    let took = f.wait_version_everywhere(&version, Duration::from_secs(20)).await;
    println!("aigw-config killed: a change through aigw-config-2 reached every proxy in {took:?}");
    load.settle(load::RATE).await;

    f.compose(&["kill", "etcd-1"]).await.unwrap();
    let undo_etcd = f.undo_compose(&["start", "etcd-1"]);
    let model = format!("after-member-kill-{}", std::process::id());
    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match f.grpcurl_at(&second, "PutRoute", &Fleet::probe_route(&model)).await {
            Ok(_) => break,
            // A write racing the loss of etcd's leader may be refused once (503, naming etcd).
            Err(e) if tries < 5 && e.to_string().contains("etcd") => println!("PutRoute refused, retrying: {e:#}"),
            Err(e) => panic!("PutRoute with one etcd member down: {e:#}"),
        }
    }
    let version = f.version_at(&second).await;
    let took = f.wait_version_everywhere(&version, Duration::from_secs(20)).await;
    println!("etcd-1 killed: PutRoute took {:?} ({tries} attempt(s)); the change reached every proxy in {took:?}", t.elapsed());
    let r = chat_through_lb(&f, "/fleet/probe").await;
    assert_eq!((r.status.as_u16(), r.json()["model"].as_str()), (200, Some(model.as_str())), "{}", r.text());
    load.settle(load::RATE).await;

    // Everything back: the restarted replica loads from etcd what was written without it.
    f.compose(&["start", "etcd-1"]).await.unwrap();
    undo_etcd.done();
    f.compose(&["start", "aigw-config"]).await.unwrap();
    undo_config.done();
    f.wait_healthy("etcd-1", 1, Duration::from_secs(60)).await;
    f.wait_healthy("aigw-config", 1, Duration::from_secs(60)).await;
    let first = f.config_addr().await;
    let v1 = f.version_at(&first).await;
    assert_eq!(v1, f.version_at(&second).await, "both replicas publish the same version");
    let version = f.put_probe("after-recovery").await;
    f.wait_version_everywhere(&version, Duration::from_secs(20)).await;
    load.settle(load::RATE).await;
    load::assert_clean(&load.finish().await, 3 * load::RATE);
}

/// One request to the limited route: `(status, tokens the answer reported)`.
async fn limited_chat(url: &str) -> (u16, u64, http::Reply) {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 1+1?"}]});
    let r = http::post_json(url, &[], &body).await.unwrap();
    let tokens = if r.status == 200 { r.json()["usage"]["total_tokens"].as_u64().expect("usage in a 200") } else { 0 };
    (r.status.as_u16(), tokens, r)
}

/// A token limit (`ai-rate-limiting`, `policy: redis`, the proxies' `--redis`) holds at the
/// load balancer while the proxies are scaled 2 → 3 in the middle of its window: the new
/// replica counts against the same Redis counter, the tokens admitted in the window stay
/// within the documented bound (limit + 2 × concurrent clients × tokens of one request,
/// docs/limits.md), and once it is spent every replica refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b8_token_limit_holds_at_the_lb_while_proxies_scale_2_to_3() {
    let Some((f, _lock)) = fleet().await else { return };
    const WINDOW: u64 = 3600;
    const LIMIT_REQUESTS: u64 = 600;
    const CLIENTS: u64 = 8;
    // Windows are aligned to the epoch: the whole case must fit in one (it takes < 2 min).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let left = WINDOW - now % WINDOW;
    if left < 180 {
        println!("waiting {left} s for the next window");
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
    // A fresh route id, so that a counter of an earlier run in this window is not reused.
    let id = format!("fleet-limited-{}-{now}", std::process::id());
    let path = format!("/fleet/limited/{now}");
    let url = format!("{}{path}", f.lb);
    let probe = Fleet::probe_route("gpt-4o-mini");
    let mut route: Value = serde_json::from_str(&probe).unwrap();
    route["route"]["id"] = json!(id);
    route["route"]["uri"] = json!(path);
    // The limit is set once the size of one answer is known: first a generous one.
    route["route"]["plugins"]["ai-rate-limiting"] =
        json!({"limit": 1_000_000_000u64, "time_window": WINDOW, "policy": "redis", "rejected_code": 429});
    f.grpcurl("PutRoute", &route.to_string()).await.unwrap();
    f.wait_version_everywhere(&f.version().await, Duration::from_secs(20)).await;
    let (status, per_request, r) = limited_chat(&url).await;
    assert_eq!(status, 200, "{}", r.text());
    let limit = LIMIT_REQUESTS * per_request;
    // A new limit is a new counter key only if the window changes; the route keeps its key
    // (route id, window): what the probe request was charged counts against the limit.
    route["route"]["plugins"]["ai-rate-limiting"]["limit"] = json!(limit);
    f.grpcurl("PutRoute", &route.to_string()).await.unwrap();
    f.wait_version_everywhere(&f.version().await, Duration::from_secs(20)).await;
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(per_request));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    use std::sync::atomic::Ordering::Relaxed;

    // Phase 1, two replicas: a sixth of the limit, CLIENTS at a time.
    let burst = |until_tokens: u64| {
        let (admitted, refused, url) = (admitted.clone(), refused.clone(), url.clone());
        async move {
            let workers: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (admitted, refused, url) = (admitted.clone(), refused.clone(), url.clone());
                    tokio::spawn(async move {
                        let mut my_refusals = 0;
                        while admitted.load(Relaxed) < until_tokens && my_refusals < 5 {
                            let (status, tokens, r) = limited_chat(&url).await;
                            match status {
                                200 => {
                                    admitted.fetch_add(tokens, Relaxed);
                                }
                                429 => {
                                    assert_eq!(r.json()["error"]["type"], "rate_limit_exceeded", "{}", r.text());
                                    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
                                    refused.fetch_add(1, Relaxed);
                                    my_refusals += 1;
                                }
                                s => panic!("limited route answered {s}: {}", r.text()),
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    burst(limit / 6).await;
    assert_eq!(refused.load(Relaxed), 0, "refused below the limit");

    // Phase 2: scale to three while requests keep coming (one at a time, paced).
    let old: Vec<String> = f.replicas().await.into_iter().map(|r| r.id).collect();
    let undo = f.undo_compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=2"]);
    let pacer = {
        let (admitted, url) = (admitted.clone(), url.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = tokio::spawn(async move {
            while !s.load(Relaxed) {
                let (status, tokens, r) = limited_chat(&url).await;
                assert_eq!(status, 200, "refused while scaling, below the limit: {}", r.text());
                admitted.fetch_add(tokens, Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (stop, h)
    };
    f.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=3"]).await.unwrap();
    f.wait_healthy("aigw-proxy", 3, Duration::from_secs(60)).await;
    let added = f.replicas().await.into_iter().find(|r| !old.contains(&r.id)).expect("a new replica");
    let status = f.published(&added.id, 9091).await.unwrap();
    aigw_testkit::wait_until("the new replica to serve the limited route", Duration::from_secs(30), || async {
        let m = http::get(&format!("{status}/metrics"), &[]).await.ok()?;
        (requests_total(&m.text()) >= 5).then_some(())
    })
    .await;
    pacer.0.store(true, Relaxed);
    pacer.1.await.unwrap();
    let before_phase3 = admitted.load(Relaxed);
    println!("{} serves; {} of {limit} tokens admitted so far", added.name, before_phase3);
    assert!(before_phase3 < limit, "the limit was spent before phase 3 ({before_phase3} of {limit})");

    // Phase 3, three replicas: until every client is refused.
    burst(u64::MAX).await;
    let tokens = admitted.load(Relaxed);
    let bound = limit + 2 * CLIENTS * per_request;
    println!(
        "limit {limit} tokens ({LIMIT_REQUESTS} requests of {per_request}): {tokens} admitted ({} requests over), bound {bound}; {} refusals",
        (tokens.saturating_sub(limit)) / per_request,
        refused.load(Relaxed)
    );
    assert!(tokens >= limit, "the limit was reached: {tokens} of {limit}");
    assert!(tokens <= bound, "over-admission beyond the documented bound: {tokens} > {bound}");
    // Spent everywhere: the load balancer spreads these over all three replicas.
    let served_new = requests_total(&http::get(&format!("{status}/metrics"), &[]).await.unwrap().text());
    for _ in 0..30 {
        let (s, _, r) = limited_chat(&url).await;
        assert_eq!(s, 429, "{}", r.text());
    }
    let after = requests_total(&http::get(&format!("{status}/metrics"), &[]).await.unwrap().text());
    assert!(after > served_new, "the new replica refused some of the last 30 too ({served_new} -> {after})");

    f.grpcurl("DeleteRoute", &json!({"id": id}).to_string()).await.unwrap();
    f.compose(&["up", "-d", "--no-build", "--no-recreate", "--scale", "aigw-proxy=2"]).await.unwrap();
    undo.done();
    f.wait_healthy("aigw-proxy", 2, Duration::from_secs(60)).await;
}
