//! aigw-config replicas on etcd (CONTRACT §15): real etcd members (Debian's etcd-server,
//! started by the test kit on free ports), real aigw-config replicas and proxies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aigw_model::proto_json::route_to_proto;
use aigw_proto::config::v1::{ListRoutesRequest, PutRouteRequest};
use aigw_testkit::etcd::EtcdCluster;
use aigw_testkit::fake::{FakeServer, openai_chat};
use aigw_testkit::http;
use aigw_testkit::relay::Relay;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::*;

const DEK: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

async fn admin_get(cfg: &Config, path: &str) -> http::Reply {
    http::get(&format!("http://{}{path}", cfg.addr), &[("x-api-key", ADMIN_KEY)]).await.unwrap()
}

/// Route ids a replica lists, and its published version.
async fn listed(cfg: &Config) -> (Vec<String>, String) {
    let l = admin_get(cfg, "/apisix/admin/routes").await.json();
    let ids = l["list"].as_array().unwrap().iter().map(|r| r["value"]["id"].as_str().unwrap().to_owned()).collect();
    (ids, l["version"].as_str().unwrap().to_owned())
}

async fn store_status(cfg: &Config) -> Value {
    admin_get(cfg, "/status/store").await.json()
}

fn dump_ids(dump: &Value) -> Vec<String> {
    let mut ids: Vec<String> = dump["routes"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn metrics(cfg: &Config) -> String {
    http::get(&format!("http://{}/metrics", cfg.addr), &[]).await.unwrap().text()
}

/// Waits until `p` holds the route `id` (its /config_dump); returns how long it took.
async fn until_held(p: &Proxy, id: &str, present: bool) -> Duration {
    let t = Instant::now();
    wait_until(&format!("route {id} present={present} at {}", p.status), T, || async {
        let held = dump_ids(&p.config_dump().await).iter().any(|i| i == id);
        (held == present).then_some(())
    })
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_etcd_converge_serve_each_others_writes_and_a_proxy_moves_without_a_resend() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let etcd = EtcdCluster::single().await;
    let key = ["--data-encryption-key", DEK];
    let mut a = Config::start_etcd(&etcd.store_url(), "/aigw", &key).await;
    let mut b = Config::start_etcd(&etcd.store_url(), "/aigw", &key).await;
    let pa = Proxy::subscribed(&format!("{},{}", a.url(), b.url()), &["--node-id", "pa", "--data-encryption-key", DEK]).await;
    let cache_dir = aigw_testkit::proc::TempDir::new("etcd-cache");
    let cache = cache_dir.path().join("snapshot.json");
    let cache_s = cache.to_str().unwrap().to_owned();
    let pb = Proxy::subscribed(&b.url(), &["--node-id", "pb", "--data-encryption-key", DEK, "--snapshot-cache", &cache_s]).await;
    pa.wait_ready().await;
    pb.wait_ready().await;
    // Writes at either replica; each one, acknowledged by one, is served by the proxy of
    // the other within 1 s.
    let mut grpc_b = b.grpc().await;
    for i in 0..6 {
        let id = format!("r{i}");
        let route = chat_route(&id, &format!("/r{i}"), &up.url(), "sk-up");
        let (other, took) = if i % 2 == 0 {
            assert_eq!(a.put_rest(&id, &route).await.status, 201);
            (&pb, until_held(&pb, &id, true).await)
        } else {
            grpc_b.put_route(PutRouteRequest { route: Some(route_to_proto(&route).unwrap()) }).await.unwrap();
            (&pa, until_held(&pa, &id, true).await)
        };
        println!("{id}: acknowledged by one replica, held by {} {took:?} later", other.status);
        assert!(took <= Duration::from_secs(1), "{id} took {took:?} to reach the other replica's proxy");
    }
    pa.wait_chat_status("/r1", 200).await;
    pb.wait_chat_status("/r0", 200).await;
    let del = http::send(::http::Method::DELETE, &b.admin("/routes/r2"), &[("x-api-key", ADMIN_KEY)], "").await.unwrap();
    assert_eq!(del.status, 200);
    until_held(&pa, "r2", false).await;
    // Both replicas hold the same routes under the same version, and so do the proxies.
    let version = wait_until("the replicas to agree", T, || async {
        let (la, lb) = (listed(&a).await, listed(&b).await);
        (la == lb).then_some(la.1)
    })
    .await;
    let (ids, _) = listed(&a).await;
    assert_eq!(ids, vec!["r0", "r1", "r3", "r4", "r5"]);
    for p in [&pa, &pb] {
        wait_until("the proxy at the replicas' version", T, || async {
            (p.config_dump().await["version"] == version.as_str()).then_some(())
        })
        .await;
    }
    // In etcd: CONTRACT §15's keys, the admin JSON with the secret encrypted.
    let stored = etcd.ctl(&["get", "/aigw/routes/r0", "--print-value-only"]).await.unwrap();
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(stored["uri"], "/r0");
    let secret = stored["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"].as_str().unwrap();
    assert!(secret.starts_with("$aigw-enc$") && !stored.to_string().contains("sk-up"), "{stored}");

    // The replica pa streams from dies: pa moves to b at the version it runs, and b sends
    // it nothing (b had sent one full set: pb's).
    let before = metrics(&b).await;
    assert_eq!(metric(&before, "aigw_xds_full_responses_sent_total"), 1, "{before}");
    let applied_before = pa.proc.logs().iter().filter(|l| l.contains("applied update")).count();
    a.proc.kill9().await;
    wait_until("pa on b", T, || async {
        let n = admin_get(&b, "/status/nodes").await.json();
        n["nodes"].as_array()?.iter().any(|n| n["node_id"] == "pa" && n["connected_streams"] == 1).then_some(())
    })
    .await;
    let after = metrics(&b).await;
    assert_eq!(metric(&after, "aigw_xds_responses_sent_total"), metric(&before, "aigw_xds_responses_sent_total"), "nothing resent");
    assert_eq!(pa.proc.logs().iter().filter(|l| l.contains("applied update")).count(), applied_before);
    // And it takes the next change from b.
    assert_eq!(b.put_rest("after", &chat_route("after", "/after", &up.url(), "sk-up")).await.status, 201);
    pa.wait_chat_status("/after", 200).await;
    let logs = [b.proc.logs(), pa.proc.logs(), pb.proc.logs()].concat().join("\n");
    assert!(!logs.contains("sk-up"), "a secret in the logs");
    // Every replica down: a proxy started cold on both URLs serves from its snapshot cache.
    wait_until("the cache written", T, || async { std::fs::read_to_string(&cache).ok().filter(|c| c.contains("/after")) }).await;
    b.proc.kill9().await;
    let cold = Proxy::subscribed(&format!("{},{}", a.url(), b.url()), &["--data-encryption-key", DEK, "--snapshot-cache", &cache_s]).await;
    cold.wait_chat_status("/after", 200).await;
    assert!(cold.ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_admin_writes_and_load_fails_no_data_request_and_loses_no_acknowledged_write() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let etcd = EtcdCluster::single().await;
    let mut a = Config::start_etcd(&etcd.store_url(), "/aigw", &[]).await;
    let b = Config::start_etcd(&etcd.store_url(), "/aigw", &[]).await;
    let (ua, ub) = (a.url(), b.url());
    let p1 = Proxy::subscribed(&format!("{ua},{ub}"), &["--node-id", "p1"]).await;
    let p2 = Proxy::subscribed(&format!("{ub},{ua}"), &["--node-id", "p2"]).await;
    assert_eq!(a.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-up")).await.status, 201);
    p1.wait_chat_status("/anything", 200).await;
    p2.wait_chat_status("/anything", 200).await;

    // Data-plane load on both proxies, every answer checked.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for p in [&p1, &p2] {
        for _ in 0..2 {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), format!("{}/anything", p.data));
            load.push(tokio::spawn(async move {
                let body = json!({"messages": [{"role": "user", "content": "What is 1+1?"}]});
                while !stop.load(Ordering::Relaxed) {
                    match http::post_json(&url, &[("authorization", "Bearer client-placeholder")], &body).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    // Admin writes alternating between the replicas; a write refused by one is sent to
    // the other. Every acknowledged id is kept.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked, up) = (stop.clone(), acked.clone(), up.url());
        let admins = [format!("{ua}/apisix/admin/routes"), format!("{ub}/apisix/admin/routes")];
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{i}");
                let body = serde_json::to_vec(&chat_route(&id, &format!("/w{i}"), &up, "sk-up")).unwrap();
                for attempt in 0..2 {
                    let url = format!("{}/{id}", admins[(i + attempt) % 2]);
                    if let Ok(r) = http::send(::http::Method::PUT, &url, &[("x-api-key", ADMIN_KEY)], body.clone()).await
                        && r.status.is_success()
                    {
                        acked.lock().unwrap().push(id.clone());
                        break;
                    }
                }
                i += 1;
            }
        })
    };
    wait_until("writes and load to flow", T, || async {
        (acked.lock().unwrap().len() >= 20 && ok.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    a.proc.kill9().await;
    let killed = Instant::now();
    // p1 streamed from a: it fails over to b.
    wait_until("p1 on b", T, || async {
        let n = admin_get(&b, "/status/nodes").await.json();
        n["nodes"].as_array()?.iter().any(|n| n["node_id"] == "p1" && n["connected_streams"] == 1).then_some(())
    })
    .await;
    let failover = killed.elapsed();
    println!("p1 on b {failover:?} after a was killed");
    assert!(failover <= Duration::from_secs(2), "failover took {failover:?}");
    // More writes (now all at b) and load, then stop.
    let n = acked.lock().unwrap().len();
    wait_until("writes after the kill", T, || async { (acked.lock().unwrap().len() >= n + 10).then_some(()) }).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("data plane: {ok} ok, {failed} failed; {} writes acknowledged", acked.lock().unwrap().len());
    assert_eq!(failed, 0, "{failed} failed data-plane requests ({ok} ok)");
    // Every acknowledged write is in b's view, and on both proxies.
    let (ids, version) = listed(&b).await;
    for id in acked.lock().unwrap().iter() {
        assert!(ids.contains(id), "acknowledged {id} missing from {ids:?}");
    }
    for p in [&p1, &p2] {
        wait_until("the proxy at b's version", T, || async { (p.config_dump().await["version"] == version.as_str()).then_some(()) }).await;
        let held = dump_ids(&p.config_dump().await);
        for id in acked.lock().unwrap().iter() {
            assert!(held.contains(id), "{id} missing at {}", p.status);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_writes_fail_fast_reads_are_stale_proxies_serve_and_nothing_acknowledged_is_lost() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let mut etcd = EtcdCluster::start(3, false).await;
    let cfg = Config::start_etcd(&etcd.store_url(), "/aigw", &["--etcd-timeout", "2s"]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    for i in 0..3 {
        assert_eq!(cfg.put_rest(&format!("q{i}"), &chat_route(&format!("q{i}"), &format!("/q{i}"), &up.url(), "sk-up")).await.status, 201);
    }
    p.wait_chat_status("/q2", 200).await;
    assert!(admin_get(&cfg, "/apisix/admin/routes").await.headers.get("x-aigw-stale").is_none());

    // Two of three members down: no quorum.
    etcd.stop_member(1).await;
    etcd.stop_member(2).await;
    wait_until("the replica to see it", T, || async { (store_status(&cfg).await["stale"] == true).then_some(()) }).await;
    // Writes: 503 naming etcd, answered within the 2 s request timeout (a bound, with slack).
    let route = chat_route("q3", "/q3", &up.url(), "sk-up");
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), cfg.put_rest("q3", &route)).await.expect("an answer within the timeout");
    println!("PUT without quorum: {} after {:?}: {}", r.status, started.elapsed(), r.text());
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error_msg"].as_str().unwrap().contains("etcd"), "{}", r.text());
    let mut grpc = cfg.grpc().await;
    let e = tokio::time::timeout(Duration::from_secs(5), grpc.put_route(PutRouteRequest { route: Some(route_to_proto(&route).unwrap()) }))
        .await
        .expect("an answer within the timeout")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("etcd"), "{e:?}");
    // Reads: the last view, marked stale (REST header, gRPC metadata).
    let list = admin_get(&cfg, "/apisix/admin/routes").await;
    assert_eq!((list.status.as_u16(), list.headers.get("x-aigw-stale").map(|v| v.to_str().unwrap())), (200, Some("true")));
    assert_eq!(list.json()["total"], 3);
    let one = admin_get(&cfg, "/apisix/admin/routes/q1").await;
    assert_eq!((one.status.as_u16(), one.headers.contains_key("x-aigw-stale")), (200, true));
    let r = grpc.list_routes(ListRoutesRequest {}).await.unwrap();
    assert_eq!(r.metadata().get("x-aigw-stale").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(r.into_inner().routes.len(), 3);
    // The proxy keeps serving, and stays ready.
    assert_eq!(p.chat("/q1").await.unwrap().status, 200);
    assert!(p.ready().await);

    // Quorum back: writes work, reads are current again, nothing acknowledged was lost.
    etcd.start_member(1).await;
    etcd.start_member(2).await;
    etcd.wait_healthy(Duration::from_secs(30)).await.unwrap();
    wait_until("the replica current again", T, || async { (store_status(&cfg).await["stale"] == false).then_some(()) }).await;
    assert!(admin_get(&cfg, "/apisix/admin/routes").await.headers.get("x-aigw-stale").is_none());
    let r = cfg.put_rest("q4", &chat_route("q4", "/q4", &up.url(), "sk-up")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    p.wait_chat_status("/q4", 200).await;
    let (ids, version) = listed(&cfg).await;
    for id in ["q0", "q1", "q2", "q4"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing: {ids:?}");
    }
    wait_until("the proxy converged", T, || async { (p.config_dump().await["version"] == version.as_str()).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_from_etcd_past_a_compaction_reloads_without_a_gap() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let etcd = EtcdCluster::single().await;
    let relay = Relay::start(&etcd.endpoint(0)).await;
    let a = Config::start_etcd(&format!("etcd://{}", relay.addr), "/aigw", &[]).await;
    let b = Config::start_etcd(&etcd.store_url(), "/aigw", &[]).await;
    let pa = Proxy::subscribed(&a.url(), &[]).await;
    for i in 0..3 {
        assert_eq!(b.put_rest(&format!("c{i}"), &chat_route(&format!("c{i}"), &format!("/c{i}"), &up.url(), "sk-up")).await.status, 201);
    }
    pa.wait_chat_status("/c2", 200).await;

    // a loses etcd; meanwhile b deletes, changes and adds, and etcd compacts its history.
    relay.cut();
    wait_until("a to notice", T, || async { (store_status(&a).await["stale"] == true).then_some(()) }).await;
    let del = http::send(::http::Method::DELETE, &b.admin("/routes/c0"), &[("x-api-key", ADMIN_KEY)], "").await.unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(b.put_rest("c1", &chat_route("c1", "/c1-moved", &up.url(), "sk-up")).await.status, 200);
    assert_eq!(b.put_rest("c3", &chat_route("c3", "/c3", &up.url(), "sk-up")).await.status, 201);
    let rev = etcd.revision().await;
    etcd.ctl(&["compact", &rev.to_string()]).await.unwrap();
    assert_eq!(listed(&a).await.0, vec!["c0", "c1", "c2"], "a still serves its last view");
    // Back: a's watch cannot resume (compacted), so it reloads the prefix whole.
    relay.restore();
    wait_until("a to catch up", T, || async {
        let s = store_status(&a).await;
        (s["stale"] == false && s["revision"].as_i64() >= Some(rev)).then_some(())
    })
    .await;
    let (la, lb) = (listed(&a).await, listed(&b).await);
    assert_eq!(la, lb, "no gap: a holds exactly what etcd holds");
    assert_eq!(la.0, vec!["c1", "c2", "c3"]);
    assert_eq!(metric(&metrics(&a).await, "aigw_config_store_reloads_total"), 1);
    assert!(a.proc.logs().iter().any(|l| l.contains("compacted") && l.contains("reloading")));
    pa.wait_chat_status("/c3", 200).await;
    pa.wait_chat_status("/c1-moved", 200).await;
    assert_eq!(pa.chat("/c0").await.unwrap().status, 404);
    assert_eq!(pa.chat("/c1").await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apisix_layout_routes_written_with_etcdctl_are_served_and_the_rest_quarantined() {
    let up = FakeServer::start(openai_chat("up", "sk-apisix", "/v1")).await;
    let etcd = EtcdCluster::single().await;
    // What APISIX's admin API stores: its bookkeeping fields and the plugin's defaults.
    let apisix_route = |id: &str, uri: &str| {
        json!({"id": id, "uri": uri, "priority": 0, "status": 1, "create_time": 1733000000, "update_time": 1733000100,
            "plugins": {"ai-proxy": {"provider": "openai-compatible",
                "auth": {"header": {"Authorization": "Bearer sk-apisix"}}, "options": {"model": "gpt-4"},
                "override": {"endpoint": format!("{}/v1/chat/completions", up.url())},
                "timeout": 30000, "keepalive": true, "keepalive_timeout": 60000, "keepalive_pool": 30, "ssl_verify": true}}})
        .to_string()
    };
    // APISIX's directory marker and another kind of object: not routes, ignored.
    etcd.ctl(&["put", "/apisix/routes/", "init_dir"]).await.unwrap();
    etcd.ctl(&["put", "/apisix/upstreams/1", r#"{"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}"#]).await.unwrap();
    etcd.ctl(&["put", "/apisix/routes/1", &apisix_route("1", "/anything")]).await.unwrap();
    // What aigw cannot serve.
    let mut limit = serde_json::from_str::<Value>(&apisix_route("2", "/limited")).unwrap();
    limit["plugins"]["limit-count"] = json!({"count": 2, "time_window": 60});
    etcd.ctl(&["put", "/apisix/routes/2", &limit.to_string()]).await.unwrap();
    etcd.ctl(&["put", "/apisix/routes/3", r#"{"id": "3", "uri": "/up", "upstream": {"nodes": {"127.0.0.1:1980": 1}}}"#]).await.unwrap();
    etcd.ctl(&["put", "/apisix/routes/4", "not json"]).await.unwrap();

    let cfg = Config::start_etcd(&etcd.store_url(), "/apisix", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    let r = p.wait_chat_status("/anything", 200).await;
    assert_eq!(r.json()["system_fingerprint"], "up");
    assert_eq!(up.last().header("authorization"), Some("Bearer sk-apisix"));
    // Written after the start (the watch), the same way.
    etcd.ctl(&["put", "/apisix/routes/5", &apisix_route("5", "/later")]).await.unwrap();
    p.wait_chat_status("/later", 200).await;
    // Quarantined, each with its reason.
    let q = admin_get(&cfg, "/status/quarantine").await.json();
    let reasons: Vec<(String, String)> = q["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(reasons.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["2", "3", "4"], "{q}");
    assert!(reasons[0].1.contains("limit-count"), "{q}");
    assert!(reasons[1].1.contains("upstream"), "{q}");
    assert!(reasons[2].1.contains("not JSON"), "{q}");
    assert!(!q.to_string().contains("sk-apisix"));
    assert_eq!(p.chat("/limited").await.unwrap().status, 404);
    assert_eq!(dump_ids(&p.config_dump().await), vec!["1", "5"]);
    // Reads show what aigw serves (no bookkeeping, secret redacted).
    let one = admin_get(&cfg, "/apisix/admin/routes/1").await.json();
    assert_eq!(one["key"], "/apisix/routes/1");
    assert!(one["value"].get("create_time").is_none() && one["value"]["uri"] == "/anything", "{one}");
    assert_eq!(one["value"]["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"], "******");
    // Fixing a quarantined route through aigw lifts its quarantine; what aigw writes is
    // APISIX's layout too.
    let mut fixed = serde_json::from_str::<Value>(&apisix_route("2", "/limited")).unwrap();
    fixed["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"] = json!("Bearer sk-apisix");
    assert_eq!(cfg.put_rest("2", &fixed).await.status, 200);
    p.wait_chat_status("/limited", 200).await;
    let stored: Value = serde_json::from_str(etcd.ctl(&["get", "/apisix/routes/2", "--print-value-only"]).await.unwrap().trim()).unwrap();
    assert_eq!((stored["id"].as_str(), stored["uri"].as_str()), (Some("2"), Some("/limited")));
    let q = admin_get(&cfg, "/status/quarantine").await.json();
    assert_eq!(q["routes"].as_array().unwrap().len(), 2, "{q}");
    assert!(metric(&metrics(&cfg).await, "aigw_config_store_ignored_keys_total") >= 1);
}
