//! The fleet cases (issue 13). Each fault runs under a steady load through the load
//! balancer and asserts zero failed requests; the counts are printed.

use std::time::{Duration, Instant};

use aigw_testkit::http;
use serde_json::{Value, json};

use crate::harness::{Fleet, docker, fleet, probe_model, repo};
use crate::load;

const SECRETS: &[&str] = &["sk-fake-openai", "sk-ant-fake", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"];

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
        assert_eq!(route_ids(&dump), ["anthropic", "bedrock", "openai"], "{}: {dump}", r.name);
        let text = dump.to_string();
        assert!(text.contains("******"), "{}: secrets are shown redacted: {text}", r.name);
        for s in SECRETS {
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
    for sdk in ["openai: OK", "anthropic: OK", "boto3: OK"] {
        assert!(text.contains(sdk), "{sdk} missing:\n{text}");
    }
    // Every provider fake was reached through the fleet (not answered by the gateway).
    let after = f.fake_stats().await;
    for p in ["openai", "anthropic", "bedrock"] {
        let (b, a) = (before["by_provider"][p].as_u64().unwrap_or(0), after["by_provider"][p].as_u64().unwrap_or(0));
        assert!(a > b, "fake-llm saw no {p} request ({b} -> {a}): {after}");
    }
    assert_eq!(before["by_status"]["401"], after["by_status"]["401"], "no request reached a provider without its key: {after}");
}

/// `docker compose kill aigw-config`, then start it again: the proxies keep serving, then
/// reconnect and take the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_config_service_killed_and_restarted_under_load() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("aigw-config killed", &f.lb);
    load.settle(200).await;
    f.compose(&["kill", "aigw-config"]).await.unwrap();
    let config = f.containers("aigw-config").await;
    assert_eq!(f.health(&config[0]).await.split('/').next(), Some("exited"));
    // Without the config service the fleet keeps serving, and stays ready.
    load.settle(3 * load::RATE).await;
    for r in f.replicas().await {
        assert_eq!(f.health(&r.id).await, "running/healthy", "{} stays ready without the config service", r.name);
    }
    f.compose(&["start", "aigw-config"]).await.unwrap();
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

/// Redis stopped and started under load. (Meaningful once aigw-token-cache uses it: the
/// proxies do not talk to Redis themselves; the fleet must not notice either way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b4_redis_stopped_and_started_under_load() {
    let Some((f, _lock)) = fleet().await else { return };
    let load = load::start("redis stopped", &f.lb);
    load.settle(200).await;
    f.compose(&["stop", "redis"]).await.unwrap();
    load.settle(2 * load::RATE).await;
    f.compose(&["start", "redis"]).await.unwrap();
    f.wait_healthy("redis", 1, Duration::from_secs(60)).await;
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
