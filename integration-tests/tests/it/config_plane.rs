//! aigw-config + two subscribed aigw-proxy processes.

use std::time::Duration;

use aigw_model::proto_json::{route_from_proto, route_to_proto};
use aigw_proto::config::v1::{DeleteRouteRequest, GetRouteRequest, ListRoutesRequest, PutRouteRequest};
use aigw_testkit::fake::{FakeServer, openai_chat};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_put_is_served_by_both_proxies_and_delete_removes_it() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("grpc");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p1 = Proxy::subscribed(&cfg.url(), &["--node-id", "p1"]).await;
    let p2 = Proxy::subscribed(&cfg.url(), &["--node-id", "p2"]).await;
    // An empty snapshot is a snapshot: both become ready before any route exists.
    p1.wait_ready().await;
    p2.wait_ready().await;
    assert_eq!(p1.chat("/anything").await.unwrap().status, 404);

    let mut grpc = cfg.grpc().await;
    let route = chat_route("chat", "/anything", &up.url(), "sk-up");
    let stored = grpc.put_route(PutRouteRequest { route: Some(route_to_proto(&route).unwrap()) }).await.unwrap().into_inner();
    assert_eq!(route_from_proto(&stored.route.unwrap())["id"], "chat");
    for p in [&p1, &p2] {
        let r = p.wait_chat_status("/anything", 200).await;
        assert_eq!(r.json()["system_fingerprint"], "up");
        assert!(r.headers.contains_key("x-aigw-request-id"));
    }
    let reqs = up.requests();
    assert!(reqs.len() >= 2);
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some("Bearer sk-up"), "route credentials replace the client's");
        assert_eq!(r.json()["model"], "gpt-4", "options.model applied");
    }
    let got = grpc.get_route(GetRouteRequest { id: "chat".into() }).await.unwrap().into_inner();
    assert_eq!(route_from_proto(&got.route.unwrap())["uri"], "/anything");
    let list = grpc.list_routes(ListRoutesRequest {}).await.unwrap().into_inner();
    assert_eq!(list.routes.len(), 1);
    assert_eq!(p1.config_dump().await["version"], list.version);

    grpc.delete_route(DeleteRouteRequest { id: "chat".into() }).await.unwrap();
    p1.wait_chat_status("/anything", 404).await;
    p2.wait_chat_status("/anything", 404).await;
    let err = grpc.get_route(GetRouteRequest { id: "chat".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_admin_is_apisix_compatible_and_served_by_both_proxies() {
    let up = FakeServer::start(openai_chat("rest", "sk-rest", "/v1")).await;
    let dir = TempDir::new("rest");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p1 = Proxy::subscribed(&cfg.url(), &[]).await;
    let p2 = Proxy::subscribed(&cfg.url(), &[]).await;

    // The seed's curl: PUT /apisix/admin/routes with the id in the body.
    let route = chat_route("ai-proxy-route", "/anything", &up.url(), "sk-rest");
    let r = http::send(::http::Method::PUT, &cfg.admin("/routes"), &[("X-API-KEY", ADMIN_KEY)], serde_json::to_vec(&route).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/routes/ai-proxy-route");
    assert_eq!(r.json()["value"]["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"], "******", "no secret in clear");
    // Replacing it answers 200.
    assert_eq!(cfg.put_rest("ai-proxy-route", &route).await.status, 200);
    for p in [&p1, &p2] {
        assert_eq!(p.wait_chat_status("/anything", 200).await.json()["system_fingerprint"], "rest");
    }
    let one = http::get(&cfg.admin("/routes/ai-proxy-route"), &[("x-api-key", ADMIN_KEY)]).await.unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["value"]["id"], "ai-proxy-route");
    let list = http::get(&cfg.admin("/routes"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().json();
    assert_eq!(list["total"], 1);
    assert_eq!(list["list"][0]["key"], "/apisix/routes/ai-proxy-route");

    let del = http::send(::http::Method::DELETE, &cfg.admin("/routes/ai-proxy-route"), &[("x-api-key", ADMIN_KEY)], "").await.unwrap();
    assert_eq!(del.status, 200);
    p1.wait_chat_status("/anything", 404).await;
    let r = p2.wait_chat_status("/anything", 404).await;
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no route"), "OpenAI error shape: {}", r.text());
    let r = http::send(::http::Method::DELETE, &cfg.admin("/routes/ai-proxy-route"), &[("x-api-key", ADMIN_KEY)], "").await.unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rejects_bad_input_and_bad_keys_leaving_the_store_unchanged() {
    let dir = TempDir::new("bad");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let good = chat_route("good", "/g", "http://127.0.0.1:9", "k");
    assert_eq!(cfg.put_rest("good", &good).await.status, 201);

    // Keys.
    let r = http::get(&cfg.admin("/routes"), &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error_msg"].is_string()), (401, true));
    let r = http::get(&cfg.admin("/routes"), &[("x-api-key", "wrong")]).await.unwrap();
    assert_eq!(r.status, 401);
    let mut no_key = grpc_client(&cfg.url(), None).await;
    assert_eq!(no_key.list_routes(ListRoutesRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut wrong = grpc_client(&cfg.url(), Some("nope")).await;
    assert_eq!(wrong.list_routes(ListRoutesRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // Bad routes over REST: each a 400 naming the field.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"uri": "/x", "plugins": {"ai-proxy": {"provider": "openai", "auth": {}, "timeout": 0}}}), "plugins.ai-proxy.timeout"),
        (json!({"uri": "/x", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"headers": {}}}}}), "unknown field `headers`"),
        (json!({"uri": "/x", "plugins": {"ai-proxy": {"provider": "nope", "auth": {}}}}), "plugins.ai-proxy.provider"),
        (json!({"uri": "/x", "plugins": {"ai-proxy": {"auth": {}}}}), "missing field `provider`"),
        (json!({"uri": 5, "plugins": {}}), "uri"),
        (json!({"uri": "/x", "plugins": {"ai-proxy": {"provider": "bedrock", "auth": {}}}}), "bedrock requires provider_conf.region"),
    ];
    for (body, needle) in &cases {
        let r = cfg.put_rest("bad", body).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }
    let r = http::send(::http::Method::PUT, &cfg.admin("/routes/bad"), &[("x-api-key", ADMIN_KEY)], "{not json").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error_msg"].as_str().unwrap().contains("invalid JSON"));
    let r = cfg.put_rest("other-id", &good).await;
    assert_eq!(r.status, 400, "body id differs from path id");

    // Over gRPC: INVALID_ARGUMENT with the path.
    let mut grpc = cfg.grpc().await;
    let mut bad = good.clone();
    bad["id"] = json!("bad");
    bad["plugins"]["ai-proxy"]["keepalive_pool"] = json!(0);
    let err = grpc.put_route(PutRouteRequest { route: Some(route_to_proto(&bad).unwrap()) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("plugins.ai-proxy.keepalive_pool"), "{}", err.message());
    assert_eq!(grpc.put_route(PutRouteRequest { route: None }).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Unknown ids.
    assert_eq!(http::get(&cfg.admin("/routes/missing"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().status, 404);
    assert_eq!(grpc.delete_route(DeleteRouteRequest { id: "missing".into() }).await.unwrap_err().code(), tonic::Code::NotFound);

    // Nothing of the above reached the store.
    let list = grpc.list_routes(ListRoutesRequest {}).await.unwrap().into_inner();
    assert_eq!(list.routes.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["good"]);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("routes")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files, vec![std::ffi::OsString::from("good.json")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let dir = TempDir::new("refl");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let mut c = ServerReflectionClient::new(tonic::transport::Channel::from_shared(cfg.url()).unwrap().connect().await.unwrap());
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = c.server_reflection_info(tokio_stream::once(req)).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("unexpected {resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["aigw.config.v1.ConfigService", "aigw.discovery.v1.DiscoveryService"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_survive_a_config_service_outage_and_resync_after_restart() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("outage");
    let mut cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let addr = cfg.addr.clone();
    let p1 = Proxy::subscribed(&cfg.url(), &[]).await;
    let p2 = Proxy::subscribed(&cfg.url(), &[]).await;
    assert_eq!(cfg.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-up")).await.status, 201);
    p1.wait_chat_status("/anything", 200).await;
    p2.wait_chat_status("/anything", 200).await;

    cfg.proc.kill9().await;
    // Serving continues while the config service is gone; readiness holds.
    for p in [&p1, &p2] {
        for _ in 0..5 {
            assert_eq!(p.chat("/anything").await.unwrap().status, 200);
        }
        assert!(p.ready().await);
    }

    // Restart on the same address and data dir: the acknowledged write survived kill -9.
    let cfg = Config::start(dir.path(), &addr, &[]).await;
    let got = http::get(&cfg.admin("/routes/chat"), &[("x-api-key", ADMIN_KEY)]).await.unwrap();
    assert_eq!(got.status, 200);
    // The proxies resync: a route added now reaches both, and nothing failed meanwhile.
    assert_eq!(cfg.put_rest("second", &chat_route("second", "/second", &up.url(), "sk-up")).await.status, 201);
    for p in [&p1, &p2] {
        wait_until("resync", Duration::from_secs(45), || async { p.chat("/second").await.ok().filter(|r| r.status == 200) }).await;
        assert_eq!(p.chat("/anything").await.unwrap().status, 200);
    }
    let errors = |p: &Proxy| p.proc.logs().iter().filter(|l| l.contains("ERROR")).cloned().collect::<Vec<_>>();
    assert!(errors(&p1).is_empty() && errors(&p2).is_empty(), "{:?} {:?}", errors(&p1), errors(&p2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_cache_serves_when_the_config_service_is_down_at_start() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("cache");
    let cache = dir.path().join("snapshot.json");
    let cache_s = cache.to_str().unwrap().to_owned();
    let mut cfg = Config::start(&dir.path().join("data"), "127.0.0.1:0", &[]).await;
    let url = cfg.url();
    let first = Proxy::subscribed(&url, &["--snapshot-cache", &cache_s]).await;
    assert_eq!(cfg.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-up")).await.status, 201);
    first.wait_chat_status("/anything", 200).await;
    wait_until("cache written", T, || async { std::fs::read_to_string(&cache).ok().filter(|s| s.contains("/anything")) }).await;
    drop(first);
    cfg.proc.kill9().await;

    let restarted = Proxy::subscribed(&url, &["--snapshot-cache", &cache_s]).await;
    restarted.wait_ready().await;
    assert_eq!(restarted.chat("/anything").await.unwrap().status, 200);
    // Without the cache a node would have nothing to serve and stay unready.
    let bare = Proxy::subscribed(&url, &[]).await;
    assert!(!bare.ready().await);
    assert_eq!(http::get(&format!("{}/readyz", bare.status), &[]).await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_proxy_cannot_compile_is_nacked_and_the_old_one_kept() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("nack");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &["--node-id", "nacker"]).await;
    assert_eq!(cfg.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-up")).await.status, 201);
    p.wait_chat_status("/anything", 200).await;
    let good_version = p.config_dump().await["version"].clone();

    // Valid for the config service, but the proxy lacks the referenced variable.
    let mut needs_env = chat_route("env", "/env", &up.url(), "x");
    needs_env["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"] = json!("$env://AIGW_IT_UNSET_VARIABLE");
    assert_eq!(cfg.put_rest("env", &needs_env).await.status, 201);

    let nodes = wait_until("nack recorded", T, || async {
        let n = http::get(&format!("http://{}/status/nodes", cfg.addr), &[("x-api-key", ADMIN_KEY)]).await.ok()?.json();
        n["nodes"][0]["last_nack_error"].is_string().then_some(n)
    })
    .await;
    let err = nodes["nodes"][0]["last_nack_error"].as_str().unwrap();
    assert!(err.contains("AIGW_IT_UNSET_VARIABLE"), "{err}");
    assert_eq!(nodes["nodes"][0]["node_id"], "nacker");
    let metrics = http::get(&format!("http://{}/metrics", cfg.addr), &[]).await.unwrap().text();
    assert!(metrics.contains("aigw_xds_nacks_total 1"), "{metrics}");
    // The old snapshot keeps serving; the rejected one never applied.
    assert_eq!(p.chat("/anything").await.unwrap().status, 200);
    assert_eq!(p.chat("/env").await.unwrap().status, 404);
    assert_eq!(p.config_dump().await["version"], good_version);
    p.proc.logs().iter().find(|l| l.contains("rejected snapshot")).expect("nack logged");

    // Fixing the route publishes a new version, which applies.
    assert_eq!(cfg.put_rest("env", &chat_route("env", "/env", &up.url(), "sk-up")).await.status, 200);
    p.wait_chat_status("/env", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_never_read_back_in_clear() {
    let up = FakeServer::start(openai_chat("up", "sk-very-secret", "/v1")).await;
    let dir = TempDir::new("enc");
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &["--data-encryption-key", key]).await;
    let p = Proxy::subscribed(&cfg.url(), &["--data-encryption-key", key]).await;
    let r = cfg.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-very-secret")).await;
    assert_eq!(r.status, 201);
    assert!(!r.text().contains("sk-very-secret"));
    p.wait_chat_status("/anything", 200).await;
    assert_eq!(up.requests()[0].header("authorization"), Some("Bearer sk-very-secret"));

    let on_disk = std::fs::read_to_string(dir.path().join("routes/chat.json")).unwrap();
    assert!(!on_disk.contains("sk-very-secret") && on_disk.contains("$aigw-enc$v1$"), "{on_disk}");
    let got = http::get(&cfg.admin("/routes/chat"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().text();
    assert!(!got.contains("sk-very-secret"));
    let mut grpc = cfg.grpc().await;
    let g = grpc.get_route(GetRouteRequest { id: "chat".into() }).await.unwrap().into_inner();
    assert!(!format!("{g:?}").contains("sk-very-secret"));
    let dump = p.config_dump().await.to_string();
    assert!(!dump.contains("sk-very-secret") && !dump.contains("$aigw-enc$"), "{dump}");
    // A GET → PUT round trip keeps the (encrypted) secret working.
    let value = http::get(&cfg.admin("/routes/chat"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().json()["value"].clone();
    let mut edited = value.clone();
    edited["uri"] = json!("/edited");
    assert_eq!(cfg.put_rest("chat", &edited).await.status, 200);
    p.wait_chat_status("/edited", 200).await;
    // A node without the key cannot decrypt: it NACKs its first snapshot and stays unready.
    let mut keyless = Proxy::subscribed(&cfg.url(), &["--node-id", "keyless"]).await;
    keyless.proc.wait_log(&["rejected snapshot"], T).await;
    assert!(!keyless.ready().await);
    let logs = [cfg.proc.logs(), p.proc.logs(), keyless.proc.logs()].concat().join("\n");
    assert!(!logs.contains("sk-very-secret"), "secret in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_reads_redact_and_a_read_back_put_keeps_the_secret() {
    let up = FakeServer::start(openai_chat("up", "sk-kept", "/v1")).await;
    let dir = TempDir::new("redact");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    let mut route = chat_route("chat", "/anything", &up.url(), "sk-kept");
    route["plugins"]["ai-proxy"]["auth"]["header"]["x.team"] = json!("team-secret");
    assert_eq!(cfg.put_rest("chat", &route).await.status, 201);
    let got = http::get(&cfg.admin("/routes/chat"), &[("x-api-key", ADMIN_KEY)]).await.unwrap().json();
    let mut value = got["value"].clone();
    assert_eq!(value["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"], "******");
    // Editing what a read returned keeps the stored secret.
    value["uri"] = json!("/edited");
    assert_eq!(cfg.put_rest("chat", &value).await.status, 200);
    p.wait_chat_status("/edited", 200).await;
    assert_eq!(up.last().header("authorization"), Some("Bearer sk-kept"));
    assert_eq!(up.last().header("x.team"), Some("team-secret"), "dotted header names round-trip too");
    // The marker cannot stand in for a secret that does not exist yet.
    let mut fresh = value.clone();
    fresh["id"] = json!("fresh");
    let r = cfg.put_rest("fresh", &fresh).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_msg"].as_str().unwrap().contains("redaction marker"), "{}", r.text());
}
