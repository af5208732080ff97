//! `provider: vertex-ai` and `auth.gcp` end to end: real aigw-proxy, aigw-token-cache
//! and aigw-config processes, a real redis-server, and fake Google (a token endpoint that
//! verifies the RS256 JWT, a metadata server, a Vertex that accepts only the tokens those
//! two minted). Every process logs at trace level and no log line may carry a secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aigw_proto::tokencache::v1::GetAccessTokenRequest;
use aigw_proto::tokencache::v1::token_cache_service_client::TokenCacheServiceClient;
use aigw_testkit::gcp::{
    CLOUD_PLATFORM, Failure, FakeMetadataServer, FakeTokenEndpoint, FakeVertex, IssuedTokens, METADATA_ACCOUNT, TEST_KEY_B, TestAccount,
};
use aigw_testkit::proc::{Proc, TempDir};
use aigw_testkit::redis::RedisServer;
use aigw_testkit::{http, wait_until};
use serde_json::{Value, json};

use crate::common::{ADMIN_KEY, Config, Proxy, T, python_with};

const NODE_TOKEN: &str = "it-vertex-node-token";
const PROJECT: &str = "aigw-test";
const REGION: &str = "us-central1";
const CHAT_MODEL: &str = "google/gemini-2.5-flash";
const EMBED_MODEL: &str = "text-embedding-005";

/// Fake Google: two service accounts (A, B), their token endpoint and Vertex.
struct Google {
    a: TestAccount,
    b: TestAccount,
    issued: Arc<IssuedTokens>,
    ep: FakeTokenEndpoint,
    vertex: FakeVertex,
}

impl Google {
    async fn start() -> Google {
        let (a, b) = (TestAccount::a(), TestAccount::new("gw-b@aigw-test.iam.gserviceaccount.com", TEST_KEY_B));
        let issued = Arc::new(IssuedTokens::default());
        let ep = FakeTokenEndpoint::start(&[a.clone(), b.clone()], issued.clone()).await;
        let vertex = FakeVertex::start(issued.clone()).await;
        Google { a, b, issued, ep, vertex }
    }

    fn sa(&self) -> String {
        self.a.json(&self.ep.url())
    }

    /// The bearer token of Vertex's last request, and who it was issued to.
    fn last_token(&self) -> (String, String) {
        let t = self.vertex.last_token().expect("vertex saw a request");
        let who = self.issued.holder(&t).expect("a live token minted by the fakes");
        (t, who)
    }
}

/// The spec's vertex-ai configuration (provider_conf + auth.gcp) under `/{prefix}/v1/…`:
/// chat, embeddings and Anthropic messages, pointed at the fake Vertex's origin.
fn vertex_routes(prefix: &str, vertex_origin: &str, gcp: Value) -> Vec<Value> {
    let route = |kind: &str, path: &str, model: &str| {
        json!({"id": format!("{prefix}-{kind}"), "uri": format!("/{prefix}/v1/{path}"), "methods": ["POST"],
        "plugins": {"ai-proxy": {
            "provider": "vertex-ai",
            "auth": {"gcp": gcp},
            "provider_conf": {"project_id": PROJECT, "region": REGION},
            "options": {"model": model},
            "override": {"endpoint": vertex_origin}
        }}})
    };
    vec![
        route("chat", "chat/completions", CHAT_MODEL),
        route("embeddings", "embeddings", EMBED_MODEL),
        route("messages", "messages", CHAT_MODEL),
    ]
}

/// The configuration: vertex-ai with `auth.gcp` and a full `override.endpoint`,
/// no `provider_conf`. Chat and Anthropic messages at the OpenAI-compatible URL,
/// embeddings at a `:predict` URL (its model in the path), under `/{prefix}/v1/…`.
fn override_only_routes(prefix: &str, vertex_origin: &str, gcp: Value) -> Vec<Value> {
    let base = format!("{vertex_origin}/v1/projects/{PROJECT}/locations/{REGION}");
    let route = |kind: &str, path: &str, endpoint: String, options: Value| {
        json!({"id": format!("{prefix}-{kind}"), "uri": format!("/{prefix}/v1/{path}"), "methods": ["POST"],
        "plugins": {"ai-proxy": {"provider": "vertex-ai", "auth": {"gcp": gcp}, "options": options, "override": {"endpoint": endpoint}}}})
    };
    let chat = format!("{base}/endpoints/openapi/chat/completions");
    vec![
        route("chat", "chat/completions", chat.clone(), json!({"model": CHAT_MODEL})),
        route("embeddings", "embeddings", format!("{base}/publishers/google/models/{EMBED_MODEL}:predict"), json!({"model": EMBED_MODEL})),
        route("messages", "messages", chat, json!({"model": CHAT_MODEL})),
    ]
}

/// A standalone proxy on a routes file, at trace level, with `args` and `env`.
async fn proxy(routes: &[Value], args: &[&str], env: &[(&str, &str)]) -> (Proxy, TempDir) {
    let dir = TempDir::new("vertex");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
    let mut all = vec!["--routes", file.to_str().unwrap(), "--log-level", "trace"];
    all.extend_from_slice(args);
    (Proxy::start(&all, env).await, dir)
}

async fn chat(p: &Proxy, prefix: &str) -> http::Reply {
    http::post_json(
        &format!("{}/{prefix}/v1/chat/completions", p.data),
        &[("authorization", "Bearer client-placeholder")],
        &json!({"model": "ignored", "messages": [{"role": "user", "content": "What is 1+1?"}]}),
    )
    .await
    .unwrap()
}

async fn chat_ok(p: &Proxy, prefix: &str) {
    let r = chat(p, prefix).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "1+1 equals 2.");
}

async fn proxy_metric(p: &Proxy, name: &str) -> u64 {
    let text = http::get(&format!("{}/metrics", p.status), &[]).await.unwrap().text();
    let prefix = format!("aigw_proxy_gcp_token_{name}_total ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

/// Chat, a streamed chat, embeddings and an Anthropic client on the routes of `prefix`,
/// each answered by the fake Vertex with a token issued to `who`.
async fn chat_stream_embeddings_messages(p: &Proxy, prefix: &str, g: &Google, who: &str) {
    chat_ok(p, prefix).await;
    let last = g.vertex.requests().last().cloned().unwrap();
    assert_eq!(last.path(), format!("/v1/projects/{PROJECT}/locations/{REGION}/endpoints/openapi/chat/completions"));
    assert_eq!(g.last_token().1, who);
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(body["model"], CHAT_MODEL);

    let mut s = http::post_stream(
        &format!("{}/{prefix}/v1/chat/completions", p.data),
        &[],
        &json!({"messages": [{"role": "user", "content": "What is 1+1?"}], "stream": true}),
    )
    .await
    .unwrap();
    assert_eq!(s.status, 200);
    assert!(s.headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = s.rest().await;
    assert!(text.contains("part0") && text.contains("\"total_tokens\"") && text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(g.last_token().1, who);

    let r = http::post_json(&format!("{}/{prefix}/v1/embeddings", p.data), &[], &json!({"model": "ada", "input": ["hello world", "x"]}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!((e["object"].as_str(), e["model"].as_str()), (Some("list"), Some(EMBED_MODEL)), "{e}");
    assert_eq!(e["data"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(e["data"][1]["index"], 1);
    assert_eq!(e["data"][0]["embedding"].as_array().unwrap().len(), 4, "{e}");
    assert_eq!(e["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let last = g.vertex.requests().last().cloned().unwrap();
    assert_eq!(last.path(), format!("/v1/projects/{PROJECT}/locations/{REGION}/publishers/google/models/{EMBED_MODEL}:predict"));
    assert_eq!(g.last_token().1, who);

    let r = http::post_json(
        &format!("{}/{prefix}/v1/messages", p.data),
        &[("x-api-key", "client-placeholder"), ("anthropic-version", "2023-06-01")],
        &json!({"model": "claude", "max_tokens": 32, "messages": [{"role": "user", "content": "What is 1+1?"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["type"].as_str(), r.json()["content"][0]["text"].as_str()), (Some("message"), Some("1+1 equals 2.")));
    let sent: Value = serde_json::from_slice(&g.vertex.requests().last().unwrap().body).unwrap();
    assert_eq!((sent["max_completion_tokens"].as_u64(), sent.get("max_tokens")), (Some(32), None), "{sent}");
    assert_eq!(g.last_token().1, who);
}

/// Every process logged, one of them the mint, and no log line carries a private key, an
/// issued token, the node token or a JWT.
fn assert_no_secrets(procs: &[&Proc], g: &Google) {
    let all: Vec<String> = procs.iter().flat_map(|p| p.logs()).collect();
    assert!(all.iter().any(|l| l.contains("minted gcp access token")), "no mint log line");
    assert!(all.iter().any(|l| l.contains("TRACE")), "not logging at trace level");
    let tokens = g.issued.all();
    assert!(!tokens.is_empty());
    for l in &all {
        for f in g.a.key_fragments().into_iter().chain(g.b.key_fragments()) {
            assert!(!l.contains(f), "private key in a log line: {l}");
        }
        for t in &tokens {
            assert!(!l.contains(t.as_str()), "access token in a log line: {l}");
        }
        assert!(!l.contains(NODE_TOKEN), "node token in a log line: {l}");
        assert!(!l.contains("eyJ"), "a JWT in a log line: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_chat_stream_embeddings_and_sdks() {
    let g = Google::start().await;
    let mut routes = vertex_routes("sa", &g.vertex.url(), json!({"service_account_json": g.sa()}));
    // auth.gcp on another provider that takes a bearer: gemini's OpenAI-compatible
    // driver, at an endpoint used exactly as given.
    routes.push(json!({"id": "gemini", "uri": "/gemini/v1/chat/completions", "plugins": {"ai-proxy": {
        "provider": "gemini", "auth": {"gcp": {"service_account_json": g.sa()}}, "options": {"model": CHAT_MODEL},
        "override": {"endpoint": format!("{}/v1/projects/{PROJECT}/locations/global/endpoints/openapi/chat/completions", g.vertex.url())}}}}));
    let (p, _d) = proxy(&routes, &[], &[]).await;
    chat_stream_embeddings_messages(&p, "sa", &g, &g.a.client_email).await;
    chat_ok(&p, "gemini").await;
    assert_eq!(g.last_token().1, g.a.client_email);
    assert!(g.vertex.requests().last().unwrap().path().contains("/locations/global/"));
    assert_eq!(g.ep.mints(), 1, "one token for every request (equal credentials share a token source)");
    assert_eq!(g.vertex.rejected(), 0);
    // The client's own credentials never reach Vertex.
    assert!(
        g.vertex
            .requests()
            .iter()
            .all(|r| r.header("x-api-key").is_none() && r.header("authorization") != Some("Bearer client-placeholder"))
    );

    if let Some(python) = python_with(&["openai", "anthropic"]) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/vertex_sdks.py");
        let out = tokio::process::Command::new(&python).arg(&script).env("AIGW_URL", format!("{}/sa", p.data)).output().await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("openai: OK") && text.contains("anthropic: OK"), "{text}");
        assert_eq!(g.ep.mints(), 1);
    }
    assert_eq!(proxy_metric(&p, "mints").await, 1);
    assert_no_secrets(&[&p.proc], &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_default_credentials_in_order() {
    let g = Google::start().await;
    let md = FakeMetadataServer::start(g.issued.clone()).await;
    let routes = vertex_routes("adc", &g.vertex.url(), json!({}));
    // No JSON anywhere: the metadata server named by GCE_METADATA_HOST.
    let host = md.host();
    let no_sa = [("GCP_SERVICE_ACCOUNT", ""), ("GOOGLE_APPLICATION_CREDENTIALS", ""), ("GCE_METADATA_HOST", host.as_str())];
    let (p, _d) = proxy(&routes, &[], &no_sa).await;
    chat_stream_embeddings_messages(&p, "adc", &g, METADATA_ACCOUNT).await;
    assert_eq!(md.mints(), 1);
    assert_eq!(md.last_scopes().as_deref(), Some(CLOUD_PLATFORM));
    assert_eq!(g.ep.mints(), 0);

    // GOOGLE_APPLICATION_CREDENTIALS before the metadata server (account B's key file)...
    let dir = TempDir::new("adc-file");
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, g.b.json(&g.ep.url())).unwrap();
    let file_env =
        [("GCP_SERVICE_ACCOUNT", ""), ("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap()), ("GCE_METADATA_HOST", host.as_str())];
    let (p2, _d2) = proxy(&routes, &[], &file_env).await;
    chat_ok(&p2, "adc").await;
    assert_eq!(g.last_token().1, g.b.client_email);
    // ...and GCP_SERVICE_ACCOUNT (APISIX's name) before both.
    let sa = g.sa();
    let env = [
        ("GCP_SERVICE_ACCOUNT", sa.as_str()),
        ("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap()),
        ("GCE_METADATA_HOST", host.as_str()),
    ];
    let (p3, _d3) = proxy(&routes, &[], &env).await;
    chat_ok(&p3, "adc").await;
    assert_eq!(g.last_token().1, g.a.client_email);
    assert_eq!((md.mints(), g.ep.mints()), (1, 2));
    assert_no_secrets(&[&p.proc, &p2.proc, &p3.proc], &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_and_metadata_errors_are_500s_in_the_clients_protocol() {
    let g = Google::start().await;
    let mut routes = vertex_routes("sa", &g.vertex.url(), json!({"service_account_json": g.sa()}));
    routes.extend(vertex_routes("md", &g.vertex.url(), json!({})));
    // Nothing listens on the metadata server's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (p, _d) =
        proxy(&routes, &[], &[("GCP_SERVICE_ACCOUNT", ""), ("GOOGLE_APPLICATION_CREDENTIALS", ""), ("GCE_METADATA_HOST", &closed)]).await;

    g.ep.fail_next(Failure::InvalidGrant, 1);
    let r = chat(&p, "sa").await;
    assert_eq!(r.status, 500, "{}", r.text());
    let m = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.contains(&g.a.client_email) && m.contains("invalid_grant") && m.contains("/token"), "{m}");
    assert_eq!(r.json()["error"]["type"], "api_error");

    g.ep.fail_next(Failure::ServerError, 1);
    let r = http::post_json(
        &format!("{}/sa/v1/messages", p.data),
        &[],
        &json!({"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    let e = r.json();
    assert_eq!((e["type"].as_str(), e["error"]["type"].as_str()), (Some("error"), Some("api_error")), "{e}");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(m.contains(&g.a.client_email) && m.contains("500"), "{m}");

    let r = chat(&p, "md").await;
    assert_eq!(r.status, 500, "{}", r.text());
    let m = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.contains("metadata server") && m.contains("unreachable"), "{m}");
    assert_eq!(g.vertex.requests().len(), 0, "nothing reached Vertex without a token");

    // A failure is not cached: the next request mints.
    chat_ok(&p, "sa").await;
    assert_eq!(g.ep.mints(), 1);
    assert!(proxy_metric(&p, "mint_failures").await >= 3);
    for l in p.proc.logs() {
        assert!(!l.contains("eyJ") && g.a.key_fragments().iter().all(|f| !l.contains(f)), "{l}");
    }
    assert_no_secrets(&[&p.proc], &g);
}

/// aigw-token-cache as a child process.
struct TokenCache {
    proc: Proc,
    url: String,
}

impl TokenCache {
    async fn start(redis: &RedisServer) -> TokenCache {
        let mut proc = Proc::spawn(
            "aigw-token-cache",
            &["--listen", "127.0.0.1:0", "--redis", &redis.url(), "--node-token", NODE_TOKEN, "--log-level", "trace"],
            &[],
        );
        let addr = proc.listen_addrs(&["grpc"]).await["grpc"].clone();
        TokenCache { proc, url: format!("http://{addr}") }
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = http::get(&format!("{}/metrics", self.url), &[]).await.unwrap().text();
        aigw_token_cache::metrics::parse(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Asks the service directly, as a proxy would for `json` with `expire_early_secs`.
    async fn get(&self, json: &str, early: i64) -> aigw_proto::tokencache::v1::GetAccessTokenResponse {
        let mut client = TokenCacheServiceClient::connect(self.url.clone()).await.unwrap();
        let mut r = tonic::Request::new(GetAccessTokenRequest {
            credential: json.to_owned(),
            scopes: vec![CLOUD_PLATFORM.to_owned()],
            expire_early_secs: Some(early),
            max_ttl: None,
        });
        r.metadata_mut().insert("x-node-token", NODE_TOKEN.parse().unwrap());
        client.get_access_token(r).await.unwrap().into_inner()
    }
}

/// Redis, two token-cache replicas and two proxies (proxy i asks replica i), serving
/// `routes`.
struct Fleet {
    redis: RedisServer,
    caches: Vec<TokenCache>,
    proxies: Vec<Proxy>,
    _dir: TempDir,
}

impl Fleet {
    async fn start(routes: &[Value]) -> Fleet {
        let redis = RedisServer::start().await;
        let caches = vec![TokenCache::start(&redis).await, TokenCache::start(&redis).await];
        let dir = TempDir::new("vertex-fleet");
        let file = dir.path().join("routes.json");
        std::fs::write(&file, json!({ "routes": routes }).to_string()).unwrap();
        let mut proxies = Vec::new();
        for c in &caches {
            let args = ["--routes", file.to_str().unwrap(), "--log-level", "trace", "--token-cache", &c.url, "--node-token", NODE_TOKEN];
            proxies.push(Proxy::start(&args, &[("GCP_SERVICE_ACCOUNT", ""), ("GOOGLE_APPLICATION_CREDENTIALS", "")]).await);
        }
        Fleet { redis, caches, proxies, _dir: dir }
    }

    async fn cache_sum(&self, name: &str) -> u64 {
        let mut n = 0;
        for c in &self.caches {
            n += c.metric(name).await;
        }
        n
    }

    async fn proxy_sum(&self, name: &str) -> u64 {
        let mut n = 0;
        for p in &self.proxies {
            n += proxy_metric(p, name).await;
        }
        n
    }

    fn procs(&self) -> Vec<&Proc> {
        self.caches.iter().map(|c| &c.proc).chain(self.proxies.iter().map(|p| &p.proc)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_on_two_proxies_and_two_token_caches_mint_once() {
    let g = Arc::new(Google::start().await);
    let f = Arc::new(Fleet::start(&vertex_routes("sa", &g.vertex.url(), json!({"service_account_json": g.sa()}))).await);
    let hold = g.ep.hold();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { chat(&f.proxies[i % 2], "sa").await })
        })
        .collect();
    // All 50 wait for a token; each proxy asked its replica once; one replica's mint is
    // parked at the token endpoint and the other replica waits on the Redis lock.
    wait_until("50 waiting, one mint parked, one lock wait", T, || async {
        let ready = f.proxy_sum("misses").await == 50
            && f.cache_sum("requests").await == 2
            && g.ep.parked() == 1
            && f.cache_sum("lock_waits").await >= 1;
        ready.then_some(())
    })
    .await;
    drop(hold);
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!((g.ep.requests(), g.ep.mints()), (1, 1), "one token-endpoint call for the whole fleet");
    let tokens: std::collections::HashSet<String> =
        g.vertex.requests().iter().filter_map(|r| r.header("authorization").map(str::to_owned)).collect();
    assert_eq!((tokens.len(), g.vertex.requests().len()), (1, 50), "every request carried the same token");
    assert_eq!((f.cache_sum("mints").await, f.proxy_sum("mints").await, f.proxy_sum("remote_fetches").await), (1, 0, 2));
    assert_eq!(f.proxy_sum("remote_fallbacks").await, 0);
    assert_no_secrets(&f.procs(), &g);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_reused_until_its_early_expiry_then_reminted_once_with_no_request_waiting() {
    let g = Google::start().await;
    // expires_in 20 s, expire_early_secs 15: fresh for 5 s, then served while one caller
    // re-mints, until 20 s − min(5 s, 15 s / 2) = 15 s.
    g.ep.set_expires_in(20);
    let sa = g.sa();
    let f = Fleet::start(&vertex_routes("sa", &g.vertex.url(), json!({"service_account_json": sa, "expire_early_secs": 15}))).await;
    chat_ok(&f.proxies[0], "sa").await;
    let (t1, _) = g.last_token();
    chat_ok(&f.proxies[1], "sa").await;
    assert_eq!(g.last_token().0, t1, "reused by the other proxy");
    assert_eq!(g.ep.mints(), 1);
    let shared = f.caches[0].get(&sa, 15).await;
    assert_eq!(shared.access_token, t1, "the token the fleet shares");
    let refresh_at = aigw_gcp_auth::token::from_timestamp(&shared.refresh_time.unwrap());
    let expire_at = aigw_gcp_auth::token::from_timestamp(&shared.expire_time.unwrap());
    assert_eq!(expire_at - refresh_at, 15_000);

    wait_until("the token's refresh time", Duration::from_secs(30), || async { (now_ms() >= refresh_at).then_some(()) }).await;
    // The re-mint is held at the token endpoint: requests in the window must not wait for it.
    let hold = g.ep.hold();
    for i in 0..10 {
        chat_ok(&f.proxies[i % 2], "sa").await;
        assert_eq!(g.last_token().0, t1, "served with the still-valid token");
    }
    wait_until("one re-mint at the token endpoint", T, || async { (g.ep.parked() == 1).then_some(()) }).await;
    assert_eq!(g.ep.requests(), 2, "exactly one re-mint for the fleet");
    drop(hold);
    for p in &f.proxies {
        wait_until("the new token on each proxy", T, || async {
            chat_ok(p, "sa").await;
            (g.last_token().0 != t1).then_some(())
        })
        .await;
    }
    assert_eq!((g.ep.requests(), g.ep.mints()), (2, 2));
    assert_eq!(f.cache_sum("lock_waits").await, 0, "nobody waited");
    assert_eq!(f.proxy_sum("remote_fallbacks").await, 0);
    assert_no_secrets(&f.procs(), &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_drops_the_token_fleet_wide_and_the_request_succeeds_with_one_remint() {
    let g = Google::start().await;
    let sa = g.sa();
    let f = Fleet::start(&vertex_routes("sa", &g.vertex.url(), json!({"service_account_json": sa}))).await;
    chat_ok(&f.proxies[0], "sa").await;
    let (t1, _) = g.last_token();
    g.vertex.reject_once(&t1);

    chat_ok(&f.proxies[0], "sa").await;
    assert_eq!(g.vertex.rejected(), 1, "the first try was refused");
    let (t2, who) = g.last_token();
    assert!(t2 != t1 && who == g.a.client_email);
    assert_eq!(g.ep.mints(), 2, "one re-mint");
    assert_eq!(proxy_metric(&f.proxies[0], "invalidations").await, 1);
    // Redis dropped the refused token: the token cache hands out the new one, and the
    // other proxy gets it without another mint.
    assert_eq!(f.caches[1].get(&sa, 60).await.access_token, t2);
    chat_ok(&f.proxies[1], "sa").await;
    assert_eq!(g.last_token().0, t2);
    assert_eq!(g.ep.mints(), 2);
    assert_eq!(f.cache_sum("invalidations").await, 1);
    assert_no_secrets(&f.procs(), &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_or_the_token_caches_killed_requests_still_succeed() {
    let g = Google::start().await;
    let sa = g.sa();
    // Three credentials as far as the caches are concerned (different TTL settings).
    let mut routes = vertex_routes("one", &g.vertex.url(), json!({"service_account_json": sa}));
    routes.extend(vertex_routes("two", &g.vertex.url(), json!({"service_account_json": sa, "max_ttl": 3000})));
    routes.extend(vertex_routes("three", &g.vertex.url(), json!({"service_account_json": sa, "max_ttl": 2000})));
    let mut f = Fleet::start(&routes).await;
    chat_ok(&f.proxies[0], "one").await;

    f.redis.kill9().await;
    for p in &f.proxies {
        chat_ok(p, "two").await;
        chat_ok(p, "one").await;
    }
    assert!(f.cache_sum("redis_errors").await >= 1);
    assert!(f.cache_sum("direct").await >= 1, "the token caches minted directly");
    assert_eq!(f.proxy_sum("remote_fallbacks").await, 0, "the token caches answered");

    for c in &mut f.caches {
        c.proc.kill9().await;
    }
    for p in &f.proxies {
        for _ in 0..3 {
            chat_ok(p, "three").await;
        }
        assert!(proxy_metric(p, "remote_fallbacks").await >= 1);
        assert_eq!(proxy_metric(p, "mints").await, 1, "one local mint, then the local cache");
        let down = p.proc.logs().iter().filter(|l| l.contains("token cache unavailable")).count();
        assert_eq!(down, 1, "the outage is logged once per transition");
    }
    assert_no_secrets(&f.procs(), &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_service_account_json_is_rejected_at_config_time() {
    let g = Google::start().await;
    let dir = TempDir::new("vertex-config");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let url = g.ep.url();
    let body: String = g.a.key_fragments()[..3].join("\n");
    let broken_key = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let route = |sa: String| {
        let mut r = vertex_routes("bad", &g.vertex.url(), json!({"service_account_json": sa})).remove(0);
        r["id"] = json!("bad");
        r
    };
    for (sa, fragment) in [
        ("{\"type\": \"service_account\",".to_owned(), "does not parse as JSON"),
        (g.a.json_with(&url, json!({"client_email": null})), "lacks client_email"),
        (g.a.json_with(&url, json!({"private_key": null})), "lacks private_key"),
        (g.a.json_with(&url, json!({"token_uri": null})), "lacks token_uri"),
        (g.a.json_with(&url, json!({"private_key": broken_key})), "private_key does not load"),
    ] {
        let r = cfg.put_rest("bad", &route(sa)).await;
        assert_eq!(r.status, 400, "{fragment}: {}", r.text());
        let msg = r.json()["error_msg"].as_str().unwrap().to_owned();
        assert!(msg.contains("plugins.ai-proxy.auth.gcp.service_account_json") && msg.contains(fragment), "{msg}");
        for f in g.a.key_fragments() {
            assert!(!r.text().contains(f), "the key echoed: {}", r.text());
        }
    }
    assert_eq!(cfg.put_rest("bad", &route(g.sa())).await.status, 201);

    // `$env://` is resolved on the proxy: a bad value there rejects the snapshot (NACK),
    // named without the key; the last good config keeps serving.
    let bad = g.a.json_with(&url, json!({"client_email": null}));
    let mut p = Proxy::start(
        &["--config-service", &cfg.url(), "--node-token", crate::common::NODE_TOKEN, "--node-id", "gcp-nacker", "--log-level", "trace"],
        &[("AIGW_IT_BAD_SA", &bad)],
    )
    .await;
    p.wait_ready().await;
    let mut env_route = vertex_routes("env", &g.vertex.url(), json!({"service_account_json": "$env://AIGW_IT_BAD_SA"})).remove(0);
    env_route["id"] = json!("env");
    assert_eq!(cfg.put_rest("env", &env_route).await.status, 201);
    let line = p.proc.wait_log(&["rejected update"], T).await;
    assert!(line.contains("lacks client_email"), "{line}");
    let nodes = wait_until("nack recorded", T, || async {
        let n = http::get(&format!("http://{}/status/nodes", cfg.addr), &[("x-api-key", ADMIN_KEY)]).await.ok()?.json();
        n["nodes"][0]["last_nack_error"].is_string().then_some(n)
    })
    .await;
    assert!(nodes["nodes"][0]["last_nack_error"].as_str().unwrap().contains("lacks client_email"), "{nodes}");
    assert_eq!(chat(&p, "bad").await.status, 200, "the last good snapshot serves");
    for l in p.proc.logs() {
        for f in g.a.key_fragments() {
            assert!(!l.contains(f), "private key in a log line: {l}");
        }
    }
}

/// vertex-ai configured by `override.endpoint` + `auth.gcp` alone (no provider_conf): chat,
/// a streamed chat, embeddings at a `:predict` URL, Anthropic clients (converted), the
/// official SDKs; what such a route cannot serve is refused naming what is missing, with
/// the route's real "supported" list, and nothing reaches Vertex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_endpoint_alone_serves_chat_streams_embeddings_and_anthropic_clients() {
    let g = Google::start().await;
    let mut routes = override_only_routes("ov", &g.vertex.url(), json!({"service_account_json": g.sa()}));
    let again = |base: &Value, id: &str, uri: &str| {
        let mut r = base.clone();
        r["id"] = json!(id);
        r["uri"] = json!(uri);
        r
    };
    // The :predict URL without options.model (the model is the one in the URL), and the
    // same URL for Anthropic clients; the chat URL for the Responses API.
    let mut predict = again(&routes[1], "ov2-embeddings", "/ov2/v1/embeddings");
    predict["plugins"]["ai-proxy"].as_object_mut().unwrap().remove("options");
    routes.push(again(&predict, "ov2-messages", "/ov2/v1/messages"));
    routes.push(predict);
    routes.push(again(&routes[0], "ov-responses", "/ov/v1/responses"));
    let (p, _d) = proxy(&routes, &[], &[]).await;
    chat_stream_embeddings_messages(&p, "ov", &g, &g.a.client_email).await;

    let r = http::post_json(&format!("{}/ov2/v1/embeddings", p.data), &[], &json!({"model": "ada", "input": "hello"})).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["embedding"].as_array().map(Vec::len), Some(4), "{}", r.text());
    let last = g.vertex.requests().last().cloned().unwrap();
    assert_eq!(last.path(), format!("/v1/projects/{PROJECT}/locations/{REGION}/publishers/google/models/{EMBED_MODEL}:predict"));
    assert_eq!(serde_json::from_slice::<Value>(&last.body).unwrap(), json!({"instances": [{"content": "hello"}]}));

    if let Some(python) = python_with(&["openai", "anthropic"]) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/vertex_sdks.py");
        let out = tokio::process::Command::new(&python).arg(&script).env("AIGW_URL", format!("{}/ov", p.data)).output().await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("openai: OK") && text.contains("anthropic: OK"), "{text}");
    }
    assert_eq!((g.vertex.rejected(), g.ep.mints()), (0, 1));
    let seen = g.vertex.requests().len();

    // Embeddings on the chat URL's route: no URL for them without provider_conf.
    let r = http::post_json(&format!("{}/ov/v1/chat/completions", p.data), &[], &json!({"model": "m", "input": "x"})).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        "provider vertex-ai does not support openai-embeddings protocol on this route (supported: openai-chat, anthropic-messages): \
         embeddings on vertex-ai need provider_conf (project_id + region) or an override.endpoint ending in :predict"
    );
    // Chat, and Anthropic clients in their own envelope, on the :predict URL's routes.
    let chat_why = "chat on vertex-ai needs provider_conf (project_id + region) or an override.endpoint naming the OpenAI-compatible URL";
    let r = http::post_json(&format!("{}/ov2/v1/embeddings", p.data), &[], &json!({"messages": [{"role": "user", "content": "hi"}]}))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let m = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(m.starts_with("provider vertex-ai does not support openai-chat protocol on this route (supported: openai-embeddings)"), "{m}");
    assert!(m.contains(chat_why), "{m}");
    let r = http::post_json(
        &format!("{}/ov2/v1/messages", p.data),
        &[("anthropic-version", "2023-06-01")],
        &json!({"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json();
    assert_eq!((e["type"].as_str(), e["error"]["type"].as_str()), (Some("error"), Some("invalid_request_error")), "{e}");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("does not support anthropic-messages protocol on this route (supported: openai-embeddings)") && m.contains(chat_why),
        "{m}"
    );
    // What vertex-ai never serves keeps APISIX's message, with this route's list.
    let r = http::post_json(&format!("{}/ov/v1/responses", p.data), &[], &json!({"input": "hi"})).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"]["message"],
        "provider vertex-ai does not support openai-responses protocol (supported: openai-chat, anthropic-messages)"
    );
    assert_eq!(g.vertex.requests().len(), seen, "nothing refused reached Vertex");
    assert_no_secrets(&[&p.proc], &g);
}

/// What a vertex-ai configuration cannot serve at all — a bare origin, whose paths would be
/// built from a provider_conf it lacks — is refused at config time, naming the field: by
/// aigw-config (400, REST and gRPC) and by a standalone proxy on a routes file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vertex_route_that_can_serve_nothing_is_refused_at_config_time() {
    let g = Google::start().await;
    let gcp = json!({"service_account_json": g.sa()});
    let mut bad = override_only_routes("bare", &g.vertex.url(), gcp.clone()).remove(0);
    bad["id"] = json!("bare");
    bad["plugins"]["ai-proxy"]["override"]["endpoint"] = json!(g.vertex.url());
    bad["plugins"]["ai-proxy"]["provider_conf"] = json!({"region": REGION});
    let field = "plugins.ai-proxy.override.endpoint";
    let dir = TempDir::new("vertex-refusal");
    let cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let r = cfg.put_rest("bare", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(msg.contains(field) && msg.contains("has no path") && msg.contains("provider_conf (project_id + region)"), "{msg}");
    assert!(g.a.key_fragments().iter().all(|f| !r.text().contains(f)), "the key echoed: {}", r.text());
    let err = cfg
        .grpc()
        .await
        .put_route(aigw_proto::config::v1::PutRouteRequest { route: Some(aigw_model::proto_json::route_to_proto(&bad).unwrap()) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with(field), "{}", err.message());
    // The same route inside ai-proxy-multi names the instance.
    let multi = json!({"id": "bare-multi", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [
        {"name": "v", "provider": "vertex-ai", "weight": 1, "auth": {"gcp": gcp}, "override": {"endpoint": g.vertex.url()}}]}}});
    let r = cfg.put_rest("bare-multi", &multi).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error_msg"].as_str().unwrap().to_owned();
    assert!(msg.contains("plugins.ai-proxy-multi.instances[0].override.endpoint") && msg.contains("instance 'v'"), "{msg}");
    // With provider_conf complete, or a full URL, the same route is stored.
    let mut fixed = bad.clone();
    fixed["plugins"]["ai-proxy"]["provider_conf"] = json!({"project_id": PROJECT, "region": REGION});
    assert_eq!(cfg.put_rest("bare", &fixed).await.status, 201);

    // A standalone proxy refuses the routes file at start, naming the field.
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({ "routes": [bad] }).to_string()).unwrap();
    let args = ["--routes", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"];
    let mut proc = Proc::spawn("aigw-proxy", &args, &[]);
    assert!(!proc.wait_exit(T).await.success(), "the proxy must refuse the routes file");
    let logs = proc.logs().join("\n");
    assert!(logs.contains(field) && logs.contains("has no path"), "{logs}");
    assert_eq!(g.vertex.requests().len(), 0);
}
