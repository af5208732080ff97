//! Consumers and key-auth (CONTRACT §12) on a standalone proxy: consumers with inline keys
//! in the routes file, every header form, refusals in each client protocol, the key never
//! upstream, consumer-restriction by name and by group, `$consumer_name` in the access log,
//! and the official SDKs passing a consumer key their usual way.

use aigw_testkit::bedrock::{AwsKeys, bedrock};
use aigw_testkit::fake::{AuthCheck, FakeServer, ProviderSpec};
use aigw_testkit::http;
use aigw_testkit::proc::TempDir;
use aigw_testkit::wait_until;
use serde_json::{Value, json};

use crate::common::{Proxy, T, python_with};

const KEY_A: &str = "key-team-a-0123456789";
const KEY_B: &str = "key-team-b-9876543210";

fn ai(upstream: &str) -> Value {
    json!({"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer sk-up"}},
           "options": {"model": "gpt-4o-mini"}, "override": {"endpoint": format!("{upstream}/v1/chat/completions")}})
}

struct Setup {
    proxy: Proxy,
    up: FakeServer,
    open: FakeServer,
    bedrock: FakeServer,
    log: std::path::PathBuf,
    _dir: TempDir,
}

async fn setup() -> Setup {
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("sk-up".into())).handler()).await;
    let open = FakeServer::start(ProviderSpec::new("open", AuthCheck::Header("x-team-token", "t-1".into())).handler()).await;
    let keys = AwsKeys::example();
    let bedrock = FakeServer::start(bedrock(keys.clone(), "us-east-1")).await;
    let dir = TempDir::new("consumers");
    let file = dir.path().join("routes.json");
    let log = dir.path().join("access.log");
    let routes = json!({
        "consumer_groups": [{"id": "gold", "desc": "paying teams"}],
        "consumers": [
            {"username": "team-a", "group_id": "gold", "plugins": {"key-auth": {"key": KEY_A}}},
            {"username": "team-b", "plugins": {"key-auth": {"key": KEY_B}}},
            {"username": "guest"}
        ],
        "routes": [
            {"id": "chat", "uris": ["/v1/chat/completions", "/v1/messages"], "plugins": {"key-auth": {}, "ai-proxy": ai(&up.url())}},
            // No upstream credentials: what the client sends passes, so the key must be removed.
            {"id": "open", "uri": "/open", "plugins": {"key-auth": {"query": "k"}, "ai-proxy": {
                "provider": "openai-compatible", "auth": {}, "options": {"model": "m"},
                "override": {"endpoint": format!("{}/v1/chat/completions", open.url())}}}},
            {"id": "by-name", "uri": "/by-name", "plugins": {"key-auth": {},
                "consumer-restriction": {"whitelist": ["team-a"]}, "ai-proxy": ai(&up.url())}},
            {"id": "by-group", "uri": "/by-group", "plugins": {"key-auth": {},
                "consumer-restriction": {"type": "consumer_group_id", "blacklist": ["gold"], "rejected_msg": "gold teams use /chat"},
                "ai-proxy": ai(&up.url())}},
            {"id": "anon", "uri": "/anon", "plugins": {"key-auth": {"anonymous_consumer": "guest"}, "ai-proxy": ai(&up.url())}},
            {"id": "boto", "uri": "/model/*", "plugins": {"key-auth": {}, "ai-proxy": {"provider": "bedrock",
                "auth": {"aws": {"access_key_id": keys.access_key_id, "secret_access_key": keys.secret_access_key}},
                "provider_conf": {"region": "us-east-1"}, "override": {"endpoint": bedrock.url()}}}}
        ]
    });
    std::fs::write(&file, routes.to_string()).unwrap();
    let format = "$route_id|$status|$consumer_name|$consumer_group_id";
    let proxy = Proxy::start(
        &[
            "--routes",
            file.to_str().unwrap(),
            "--access-log",
            log.to_str().unwrap(),
            "--access-log-format",
            format,
            "--metrics-max-consumers",
            "2",
        ],
        &[],
    )
    .await;
    Setup { proxy, up, open, bedrock, log, _dir: dir }
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "What is 1+1?"}]})
}

async fn post(s: &Setup, path: &str, headers: &[(&str, &str)]) -> http::Reply {
    http::post_json(&format!("{}{path}", s.proxy.data), headers, &chat()).await.unwrap()
}

/// No recorded upstream request carries a consumer key, in any header, path or body.
fn no_key_upstream(fake: &FakeServer) {
    for r in fake.requests() {
        let all = format!("{:?} {} {}", r.headers, r.path_and_query, String::from_utf8_lossy(&r.body));
        assert!(!all.contains(KEY_A) && !all.contains(KEY_B), "a consumer key reached the upstream: {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_identifies_refuses_and_never_forwards_keys() {
    let s = setup().await;
    // Every header form of CONTRACT §12, and the query parameter.
    let bearer = format!("Bearer {KEY_A}");
    for h in [("apikey", KEY_A), ("authorization", bearer.as_str()), ("x-api-key", KEY_A), ("api-key", KEY_A)] {
        let r = post(&s, "/v1/chat/completions", &[h]).await;
        assert_eq!(r.status, 200, "{h:?}: {}", r.text());
    }
    let headers = [("authorization", format!("Bearer {KEY_B}")), ("x-team-token", "t-1".to_owned())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = http::post_json(&format!("{}/open?k={KEY_B}&x=1", s.proxy.data), &headers, &chat()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let last = s.open.last();
    assert_eq!(last.header("authorization"), None, "the consumer's bearer key is not forwarded");
    assert_eq!(last.query("k"), None, "the key parameter is not forwarded");
    no_key_upstream(&s.up);
    no_key_upstream(&s.open);

    // Missing and unknown keys: 401 in the client's protocol, nothing sent upstream.
    let before = s.up.requests().len();
    let r = post(&s, "/v1/chat/completions", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "Missing API key in request");
    assert_eq!(
        (r.json()["error"]["type"].as_str(), r.json()["error"]["code"].as_str()),
        (Some("invalid_request_error"), Some("invalid_api_key"))
    );
    assert_eq!(r.headers["www-authenticate"], "apikey realm=\"key\"");
    let r = post(&s, "/v1/chat/completions", &[("apikey", "key-team-a-012345678X")]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["message"].as_str()), (401, Some("Invalid API key in request")));
    let m = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let r = http::post_json(&format!("{}/v1/messages", s.proxy.data), &[("x-api-key", "nope")], &m).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json()["type"].as_str(), r.json()["error"]["type"].as_str()),
        (401, Some("error"), Some("authentication_error"))
    );
    let conv = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]});
    let r = http::post_json(&format!("{}/model/m/converse", s.proxy.data), &[], &conv).await.unwrap();
    assert_eq!((r.status.as_u16(), r.headers["x-amzn-errortype"].to_str().unwrap()), (401, "UnrecognizedClientException"));
    assert_eq!(r.json()["message"], "Missing API key in request");
    assert_eq!(s.up.requests().len(), before, "refused requests never reach the upstream");
    assert!(s.bedrock.requests().is_empty());

    // Anonymous consumer: no key runs as guest.
    assert_eq!(post(&s, "/anon", &[]).await.status, 200);

    // consumer-restriction by name and by group.
    assert_eq!(post(&s, "/by-name", &[("apikey", KEY_A)]).await.status, 200);
    let r = post(&s, "/by-name", &[("apikey", KEY_B)]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["message"].as_str()), (403, Some("The consumer_name is forbidden.")));
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let r = post(&s, "/by-group", &[("apikey", KEY_A)]).await;
    assert_eq!((r.status.as_u16(), r.json()["error"]["message"].as_str()), (403, Some("gold teams use /chat")));
    assert_eq!(post(&s, "/by-group", &[("apikey", KEY_B)]).await.status, 200, "team-b has no group");
    no_key_upstream(&s.up);

    // Who, in the access log: names and groups, never a key.
    let text = wait_until("access log lines", T, || async {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        (text.lines().count() == 14).then_some(text)
    })
    .await;
    assert!(text.contains("chat|200|team-a|gold"), "{text}");
    assert!(text.contains("open|200|team-b|-"), "{text}");
    assert!(text.contains("chat|401|-|-"), "{text}");
    assert!(text.contains("anon|200|guest|-"), "{text}");
    assert!(text.contains("by-name|403|team-b|-"), "{text}");
    assert!(!text.contains(KEY_A) && !text.contains(KEY_B), "{text}");
    // Who, in metrics: a bounded `consumer` label (the third distinct name is `other`).
    let metrics = http::get(&format!("{}/metrics", s.proxy.status), &[]).await.unwrap().text();
    assert!(metrics.contains(r#"aigw_gateway_requests_total{aigw_route_id="chat",gen_ai_provider_name="openai-compatible",http_response_status_code="200",consumer="team-a"}"#), "{metrics}");
    assert!(metrics.contains(r#"gen_ai_token_type="input",consumer="team-a""#), "{metrics}");
    assert!(metrics.contains(r#"consumer="other""#) && metrics.contains("aigw_metrics_consumers_overflow_total 1"), "{metrics}");
    assert!(!metrics.contains(KEY_A) && !metrics.contains(KEY_B) && !metrics.contains("hmac"), "{metrics}");
    // /config_dump shows the keys' hashes only.
    let dump = s.proxy.config_dump().await.to_string();
    assert!(dump.contains("hmac-sha256:") && dump.contains("team-a"), "{dump}");
    assert!(!dump.contains(KEY_A) && !dump.contains(KEY_B), "{dump}");
}

/// The official SDKs pass a consumer key their usual way (CONTRACT §12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_pass_consumer_keys_their_usual_way() {
    let Some(python) = python_with(&["openai", "anthropic", "boto3"]) else { return };
    let s = setup().await;
    // boto3 sends a Bedrock API key over HTTPS only: TLS in front, as a load balancer.
    let data: std::net::SocketAddr = s.proxy.data.trim_start_matches("http://").parse().unwrap();
    let front = aigw_testkit::tls_front::TlsFront::start(data, s._dir.path()).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/consumer_keys.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .env("AIGW_URL", &s.proxy.data)
        .env("AIGW_TLS_URL", &front.url)
        .env("AWS_CA_BUNDLE", &front.ca_file)
        .env("GOOD_KEY", KEY_A)
        .env("BAD_KEY", "key-nobody-has")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai: OK") && text.contains("anthropic: OK") && text.contains("boto3: OK"), "{text}");
    assert!(!s.bedrock.requests().is_empty(), "boto3 reached the Bedrock fake");
    no_key_upstream(&s.up);
    no_key_upstream(&s.bedrock);
}
