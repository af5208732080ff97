//! Consumers, credentials, groups, prices and usage through aigw-config (CONTRACT §12,
//! §14): every admin path and gRPC method, APISIX's envelopes, 400s naming the field, a
//! generated key shown once, keys redacted in reads and absent in clear from the data
//! dir, discovery, `/config_dump` and every log (the hash present instead), discovery to
//! two subscribed proxies, rotation, a credential revoked under load refused on both
//! proxies within a second, operator prices reaching `$llm_cost`, and the usage read-back
//! agreeing with the access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aigw_proto::config::v1 as pb;
use aigw_testkit::fake::{AuthCheck, FakeServer, ProviderSpec};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::redis::RedisServer;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, Config, Proxy, T};

const KEY_A: &str = "key-team-a-admin-0123456789";
const KEY_A2: &str = "key-team-a-rotated-000000001";
const DATA_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";

fn url(cfg: &Config, path: &str) -> String {
    format!("{}{path}", cfg.url())
}

async fn call(cfg: &Config, method: ::http::Method, path: &str, body: Option<Value>) -> http::Reply {
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    http::send(method, &url(cfg, path), &[("x-api-key", ADMIN_KEY)], body).await.unwrap()
}

async fn put(cfg: &Config, path: &str, body: Value) -> http::Reply {
    call(cfg, ::http::Method::PUT, path, Some(body)).await
}

async fn get(cfg: &Config, path: &str) -> http::Reply {
    call(cfg, ::http::Method::GET, path, None).await
}

async fn delete(cfg: &Config, path: &str) -> http::Reply {
    call(cfg, ::http::Method::DELETE, path, None).await
}

fn route(up: &FakeServer) -> Value {
    json!({"id": "chat", "uri": "/v1/chat/completions", "plugins": {"key-auth": {}, "ai-proxy": {
        "provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer sk-up"}},
        "options": {"model": "gpt-4o-mini"}, "override": {"endpoint": format!("{}/v1/chat/completions", up.url())}}}})
}

async fn chat(p: &Proxy, key: &str) -> u16 {
    chat_at(&p.data, key).await
}

async fn chat_at(data: &str, key: &str) -> u16 {
    let body = json!({"messages": [{"role": "user", "content": "What is 1+1?"}]});
    http::post_json(&format!("{data}/v1/chat/completions"), &[("authorization", &format!("Bearer {key}"))], &body)
        .await
        .map_or(0, |r| r.status.as_u16())
}

async fn wait_status(p: &Proxy, key: &str, status: u16) {
    wait_until(&format!("key -> {status} on {}", p.data), T, || async { (chat(p, key).await == status).then_some(()) }).await
}

/// Every file under `dir`, as text.
fn dir_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_through_the_admin_api_reach_every_proxy_and_keys_never_appear_in_clear() {
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let dir = TempDir::new("consumer-admin");
    let data = dir.path().join("data");
    let cfg = Config::start(&data, "127.0.0.1:0", &["--data-encryption-key", DATA_KEY]).await;
    assert_eq!(put(&cfg, "/apisix/admin/routes/chat", route(&up)).await.status, 201);

    // Groups and consumers, APISIX's paths and envelopes.
    let r = put(&cfg, "/apisix/admin/consumer_groups/gold", json!({"desc": "paying teams"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumer_groups/gold");
    let r =
        put(&cfg, "/apisix/admin/consumers", json!({"username": "team-a", "group_id": "gold", "plugins": {"key-auth": {"key": KEY_A}}}))
            .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/team-a");
    assert_eq!(r.json()["value"]["plugins"]["key-auth"]["key"], "******", "a given key is not echoed");
    let r = put(&cfg, "/apisix/admin/consumers", json!({"username": "team-b"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // A generated key: shown in the create answer only.
    let r = put(&cfg, "/apisix/admin/consumers/team-b/credentials/gen", json!({"plugins": {"key-auth": {}}})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/team-b/credentials/gen");
    let generated = r.json()["value"]["plugins"]["key-auth"]["key"].as_str().unwrap().to_owned();
    assert!(generated.starts_with("aigw-") && generated.len() == 5 + 43, "{generated}");
    let r = get(&cfg, "/apisix/admin/consumers/team-b/credentials/gen").await;
    assert_eq!((r.status.as_u16(), r.json()["value"]["plugins"]["key-auth"]["key"].as_str()), (200, Some("******")));
    let r = get(&cfg, "/apisix/admin/consumers/team-a").await;
    assert_eq!(r.json()["value"]["plugins"]["key-auth"]["key"], "******");
    assert_eq!(r.json()["value"]["group_id"], "gold");
    let r = get(&cfg, "/apisix/admin/consumers").await;
    assert_eq!(r.json()["total"], 2, "credentials are not consumers: {}", r.text());
    let r = get(&cfg, "/apisix/admin/consumers/team-b/credentials").await;
    assert_eq!(
        (r.json()["total"].as_u64(), r.json()["list"][0]["key"].as_str()),
        (Some(1), Some("/apisix/consumers/team-b/credentials/gen"))
    );
    let r = get(&cfg, "/apisix/admin/consumer_groups").await;
    assert_eq!(r.json()["list"][0]["value"]["id"], "gold");
    // A GET → PUT round trip keeps the stored hash.
    let mut again = get(&cfg, "/apisix/admin/consumers/team-a").await.json()["value"].clone();
    again["desc"] = json!("team A");
    assert_eq!(put(&cfg, "/apisix/admin/consumers", again).await.status, 200);

    // Refusals name the field.
    let bad = [
        ("/apisix/admin/consumers", json!({"username": "no spaces"}), "username"),
        ("/apisix/admin/consumers", json!({"username": "x", "group_id": "nosuch"}), "group_id"),
        ("/apisix/admin/consumers", json!({"username": "x", "plugins": {"key-auth": {"key": KEY_A}}}), "plugins.key-auth.key"),
        ("/apisix/admin/consumers/nobody/credentials/c1", json!({"plugins": {"key-auth": {"key": "k-nobody"}}}), "username"),
        ("/apisix/admin/consumers/team-b/credentials/c9", json!({"plugins": {"key-auth": {"key": KEY_A}}}), "already used"),
        ("/apisix/admin/consumers", json!({"username": "x", "plugins": {"ai-proxy": {}}}), "plugins"),
        ("/aigw/admin/prices/openai/gpt-4o", json!({"input": -1, "output": 1}), "input"),
    ];
    for (path, body, field) in bad {
        let r = put(&cfg, path, body.clone()).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(r.json()["error_msg"].as_str().unwrap().contains(field), "{path} {body}: {}", r.text());
    }
    let r = delete(&cfg, "/apisix/admin/consumer_groups/gold").await;
    assert_eq!(r.status, 400, "a group in use stays: {}", r.text());
    assert_eq!(get(&cfg, "/apisix/admin/consumers/nobody").await.status, 404);

    // Two subscribed proxies: the keys work on both.
    let p1 = Proxy::subscribed(&cfg.url(), &["--data-encryption-key", DATA_KEY]).await;
    let p2 = Proxy::subscribed(&cfg.url(), &["--data-encryption-key", DATA_KEY]).await;
    for p in [&p1, &p2] {
        wait_status(p, KEY_A, 200).await;
        wait_status(p, &generated, 200).await;
        assert_eq!(chat(p, "key-nobody-has").await, 401);
    }

    // Rotation: a second credential works while the first is deleted under load; the
    // deleted key is refused on both proxies within a second.
    let r = put(&cfg, "/apisix/admin/consumers/team-a/credentials/next", json!({"plugins": {"key-auth": {"key": KEY_A2}}})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    for p in [&p1, &p2] {
        wait_status(p, KEY_A2, 200).await;
    }
    let r = put(&cfg, "/apisix/admin/consumers/team-b/credentials/old", json!({"plugins": {"key-auth": {"key": "key-team-b-old-000000"}}}))
        .await;
    assert_eq!(r.status, 201);
    for p in [&p1, &p2] {
        wait_status(p, "key-team-b-old-000000", 200).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for p in [p1.data.clone(), p2.data.clone()] {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(chat_at(&p, KEY_A2).await, 200, "the other credential keeps working");
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deleted = Instant::now();
    assert_eq!(delete(&cfg, "/apisix/admin/consumers/team-b/credentials/old").await.status, 200);
    for p in [&p1, &p2] {
        wait_status(p, "key-team-b-old-000000", 401).await;
    }
    let took = deleted.elapsed();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        assert!(l.await.unwrap() > 0);
    }
    assert!(took < Duration::from_secs(1), "a deleted key is refused everywhere within a second (took {took:?})");
    assert_eq!(chat(&p1, &generated).await, 200, "team-b's other credential still works");

    // Keys in clear nowhere: the data dir, discovery (config_dump), the services' logs.
    let stored = dir_text(&data);
    assert!(stored.contains("hmac-sha256:"), "the hashes are stored");
    let dump = p1.config_dump().await.to_string();
    assert!(dump.contains("hmac-sha256:") && dump.contains("team-a"), "{dump}");
    let logs = format!("{}\n{}\n{}", cfg.proc.logs().join("\n"), p1.proc.logs().join("\n"), p2.proc.logs().join("\n"));
    for k in [KEY_A, KEY_A2, generated.as_str(), "key-team-b-old-000000"] {
        assert!(!stored.contains(k), "{k} in the data dir");
        assert!(!dump.contains(k), "{k} in /config_dump");
        assert!(!logs.contains(k), "{k} in a log");
    }
    for r in up.requests() {
        let all = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
        assert!(!all.contains(KEY_A) && !all.contains(KEY_A2) && !all.contains(&generated), "a consumer key upstream: {all}");
    }

    // Deleting a consumer deletes its credentials: all its keys stop working.
    assert_eq!(delete(&cfg, "/apisix/admin/consumers/team-a").await.json()["key"], "/apisix/consumers/team-a");
    assert_eq!(get(&cfg, "/apisix/admin/consumers/team-a/credentials/next").await.status, 404);
    for p in [&p1, &p2] {
        wait_status(p, KEY_A2, 401).await;
        wait_status(p, KEY_A, 401).await;
    }
    assert_eq!(delete(&cfg, "/apisix/admin/consumer_groups/gold").await.status, 200, "unused now");

    // Restarted with the same data dir and data key: the same hash key, the same keys work.
    drop((p1, p2));
    drop(cfg);
    let cfg = Config::start(&data, "127.0.0.1:0", &["--data-encryption-key", DATA_KEY]).await;
    let p = Proxy::subscribed(&cfg.url(), &["--data-encryption-key", DATA_KEY]).await;
    wait_status(&p, &generated, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_of_consumers_groups_and_prices() {
    let dir = TempDir::new("consumer-grpc");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let mut g = cfg.grpc().await;
    let s = |v: Value| aigw_model::proto_json::json_to_struct(v.as_object().unwrap());

    let group = pb::ConsumerGroup { id: "gold".into(), desc: "paying".into(), ..Default::default() };
    let r = g.put_consumer_group(pb::PutConsumerGroupRequest { group: Some(group) }).await.unwrap().into_inner();
    assert_eq!(r.group.unwrap().id, "gold");
    let c = pb::Consumer {
        username: "team-a".into(),
        group_id: "gold".into(),
        plugins: [("key-auth".to_owned(), s(json!({"key": KEY_A})))].into(),
        ..Default::default()
    };
    let r = g.put_consumer(pb::PutConsumerRequest { consumer: Some(c) }).await.unwrap().into_inner().consumer.unwrap();
    assert_eq!(aigw_model::proto_json::struct_to_json(&r.plugins["key-auth"])["key"], "******");
    let cred = pb::Credential {
        username: "team-a".into(),
        id: "c1".into(),
        plugins: [("key-auth".to_owned(), s(json!({})))].into(),
        ..Default::default()
    };
    let r = g.put_credential(pb::PutCredentialRequest { credential: Some(cred) }).await.unwrap().into_inner().credential.unwrap();
    let generated = aigw_model::proto_json::struct_to_json(&r.plugins["key-auth"])["key"].as_str().unwrap().to_owned();
    assert!(generated.starts_with("aigw-"), "{generated}");
    assert_eq!((r.username.as_str(), r.id.as_str()), ("team-a", "c1"));
    let r = g.get_credential(pb::GetCredentialRequest { username: "team-a".into(), id: "c1".into() }).await.unwrap().into_inner();
    assert_eq!(aigw_model::proto_json::struct_to_json(&r.credential.unwrap().plugins["key-auth"])["key"], "******");
    let r = g.list_credentials(pb::ListCredentialsRequest { username: "team-a".into() }).await.unwrap().into_inner();
    assert_eq!(r.credentials.len(), 1);
    let r = g.get_consumer(pb::GetConsumerRequest { username: "team-a".into() }).await.unwrap().into_inner();
    assert_eq!(r.consumer.unwrap().group_id, "gold");
    let r = g.list_consumers(pb::ListConsumersRequest {}).await.unwrap().into_inner();
    assert_eq!((r.consumers.len(), r.version.is_empty()), (1, false));
    let r = g.get_consumer_group(pb::GetConsumerGroupRequest { id: "gold".into() }).await.unwrap().into_inner();
    assert_eq!(r.group.unwrap().desc, "paying");
    assert_eq!(g.list_consumer_groups(pb::ListConsumerGroupsRequest {}).await.unwrap().into_inner().groups.len(), 1);

    // Errors: the field named, the right code.
    let e = g.put_consumer(pb::PutConsumerRequest { consumer: Some(pb::Consumer::default()) }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("username"), "{e:?}");
    let orphan = pb::Credential { username: "nobody".into(), id: "c1".into(), ..Default::default() };
    let e = g.put_credential(pb::PutCredentialRequest { credential: Some(orphan) }).await.unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("nobody"), "{e:?}");
    let e = g.delete_consumer_group(pb::DeleteConsumerGroupRequest { id: "gold".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = g.get_consumer(pb::GetConsumerRequest { username: "nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Prices.
    let price =
        pb::Price { provider: "openai".into(), model: "gpt-x*".into(), input: 1.5, output: 6.0, cache_read: Some(0.5), cache_write: None };
    let r = g.put_price(pb::PutPriceRequest { price: Some(price.clone()) }).await.unwrap().into_inner();
    assert_eq!(r.price.unwrap(), price);
    let r = g.list_prices(pb::ListPricesRequest {}).await.unwrap().into_inner();
    assert_eq!(r.prices, vec![price]);
    assert!(!r.defaults.is_empty() && r.defaults_date.starts_with("20"), "{:?}", r.defaults_date);
    let bad = pb::Price { provider: "nosuch".into(), model: "m".into(), input: 1.0, output: 1.0, ..Default::default() };
    let e = g.put_price(pb::PutPriceRequest { price: Some(bad) }).await.unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("provider"), "{e:?}");
    g.delete_price(pb::DeletePriceRequest { provider: "openai".into(), model: "gpt-x*".into() }).await.unwrap();
    assert!(g.list_prices(pb::ListPricesRequest {}).await.unwrap().into_inner().prices.is_empty());

    // Deletes: the consumer takes its credentials; then the group can go.
    g.delete_credential(pb::DeleteCredentialRequest { username: "team-a".into(), id: "c1".into() }).await.unwrap();
    let e = g.get_credential(pb::GetCredentialRequest { username: "team-a".into(), id: "c1".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    g.delete_consumer(pb::DeleteConsumerRequest { username: "team-a".into() }).await.unwrap();
    g.delete_consumer_group(pb::DeleteConsumerGroupRequest { id: "gold".into() }).await.unwrap();
    assert!(g.list_consumers(pb::ListConsumersRequest {}).await.unwrap().into_inner().consumers.is_empty());

    // The real grpcurl through reflection, as for routes.
    let Some(grpcurl) = crate::config_plane::grpcurl() else { return };
    let key_h = format!("x-api-key: {ADMIN_KEY}");
    let run = |method: &str, body: &str| {
        let out = std::process::Command::new(&grpcurl)
            .args(["-plaintext", "-H", &key_h, "-d", body, &cfg.addr, &format!("aigw.config.v1.ConfigService/{method}")])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, out) = run("PutConsumer", r#"{"consumer": {"username": "team-c", "plugins": {"key-auth": {}}}}"#);
    assert!(ok && out.contains("team-c") && out.contains("aigw-"), "{out}");
    let (ok, out) = run("GetConsumer", r#"{"username": "team-c"}"#);
    assert!(ok && out.contains("******") && !out.contains("aigw-"), "{out}");
    let (ok, out) = run("PutPrice", r#"{"price": {"provider": "anthropic", "model": "claude-x", "input": 3, "output": 15}}"#);
    assert!(ok && out.contains("claude-x"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_prices_reach_llm_cost_and_usage_agrees_with_the_access_log() {
    let redis = RedisServer::start().await;
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let dir = TempDir::new("usage");
    let cfg = Config::start(&dir.path().join("data"), "127.0.0.1:0", &["--redis", &redis.url()]).await;
    assert_eq!(put(&cfg, "/apisix/admin/routes/chat", route(&up)).await.status, 201);
    // The model's price, through the REST path (the model part may hold '/').
    let r = put(&cfg, "/aigw/admin/prices/openai-compatible/gpt-4o-mini", json!({"input": 10.0, "output": 100.0})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/aigw/prices/openai-compatible/gpt-4o-mini");
    let r = put(&cfg, "/aigw/admin/prices/vertex-ai/google/gemini-x", json!({"input": 1.0, "output": 2.0})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&cfg, "/aigw/admin/prices/vertex-ai/google/gemini-x").await;
    assert_eq!((r.status.as_u16(), r.json()["value"]["model"].as_str()), (200, Some("google/gemini-x")));
    let r = get(&cfg, "/aigw/admin/prices").await;
    assert_eq!(r.json()["total"], 2);
    assert!(
        r.json()["defaults"]["date"].as_str().unwrap().starts_with("20") && r.json()["defaults"]["prices"].as_array().unwrap().len() > 10
    );
    assert_eq!(delete(&cfg, "/aigw/admin/prices/vertex-ai/google/gemini-x").await.status, 200);
    // A budgeted consumer (its group's budget) and one without a budget.
    assert_eq!(
        put(&cfg, "/apisix/admin/consumer_groups/paid", json!({"plugins": {"ai-budget": {"budget": 5.0, "period": "day"}}})).await.status,
        201
    );
    let r =
        put(&cfg, "/apisix/admin/consumers", json!({"username": "team-a", "group_id": "paid", "plugins": {"key-auth": {"key": KEY_A}}}))
            .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        put(&cfg, "/apisix/admin/consumers", json!({"username": "team-free", "plugins": {"key-auth": {"key": KEY_A2}}})).await.status,
        201
    );

    let log = dir.path().join("access.log");
    let format = "$consumer_name|$status|$llm_prompt_tokens|$llm_completion_tokens|$llm_cost";
    let args = ["--redis", &redis.url(), "--access-log", log.to_str().unwrap(), "--access-log-format", format];
    let p1 = Proxy::subscribed(&cfg.url(), &args).await;
    let p2 = Proxy::subscribed(&cfg.url(), &args).await;
    wait_status(&p1, KEY_A, 200).await;
    wait_status(&p2, KEY_A, 200).await;
    for i in 0..6 {
        assert_eq!(chat(if i % 2 == 0 { &p1 } else { &p2 }, KEY_A).await, 200);
    }
    assert_eq!(chat(&p1, KEY_A2).await, 200);
    // The cost in the log is the operator's price.
    let lines: Vec<Vec<String>> = wait_until("access log", T, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Vec<String>> =
            text.lines().filter(|l| l.starts_with("team-a|200|")).map(|l| l.split('|').map(str::to_owned).collect()).collect();
        (lines.len() == 8).then_some(lines)
    })
    .await;
    let (mut cost, mut tokens) = (0.0, 0u64);
    for l in &lines {
        let (prompt, completion): (u64, u64) = (l[2].parse().unwrap(), l[3].parse().unwrap());
        let want = (prompt as f64 * 10.0 + completion as f64 * 100.0) / 1e6;
        let got: f64 = l[4].parse().unwrap();
        assert!((got - want).abs() < 1e-6, "{l:?}: cost {got}, want {want}");
        cost += got;
        tokens += prompt + completion;
    }
    // The usage read-back agrees (the charges land off the critical path: wait for them).
    let row = wait_until("usage read-back", T, || async {
        let r = get(&cfg, "/aigw/admin/usage?consumer=team-a").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let row = r.json()["list"][0].clone();
        (row["tokens"].as_u64() == Some(tokens)).then_some(row)
    })
    .await;
    let spend = row["spend"].as_f64().unwrap();
    assert!((spend - cost).abs() < 1e-5, "usage {row} vs the log's sum {cost}");
    assert_eq!(
        (row["budget"].as_f64(), row["budget_from"].as_str(), row["period"].as_str()),
        (Some(5.0), Some("consumer_group"), Some("day"))
    );
    assert!((row["remaining"].as_f64().unwrap() - (5.0 - spend)).abs() < 1e-5, "{row}");
    let all = get(&cfg, "/aigw/admin/usage").await.json();
    assert_eq!(all["total"], 2, "{all}");
    let free = all["list"].as_array().unwrap().iter().find(|r| r["consumer"] == "team-free").unwrap().clone();
    assert_eq!(free["budget"], Value::Null, "{free}");
    assert_eq!(get(&cfg, "/aigw/admin/usage?consumer=nobody").await.status, 404);
    assert_eq!(get(&cfg, "/aigw/admin/usage?who=x").await.status, 400);
    let r = http::get(&url(&cfg, "/aigw/admin/usage"), &[]).await.unwrap();
    assert_eq!(r.status, 401, "the admin key is required");
}
