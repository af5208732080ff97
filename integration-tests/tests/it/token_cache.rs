//! aigw-token-cache as real processes with a real redis-server and the fake Google
//! token endpoint: one mint for the fleet, refresh-ahead without waiting, Redis outages,
//! node-token authentication, and no secret in any log at trace level.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aigw_proto::tokencache::v1::token_cache_service_client::TokenCacheServiceClient;
use aigw_proto::tokencache::v1::{GetAccessTokenRequest, GetAccessTokenResponse};
use aigw_testkit::gcp::{FakeTokenEndpoint, IssuedTokens, TestAccount};
use aigw_testkit::proc::Proc;
use aigw_testkit::redis::RedisServer;
use aigw_testkit::{http, wait_until};
use tonic::transport::Channel;

const NODE_TOKEN: &str = "it-token-cache-node-token";
const T: Duration = Duration::from_secs(20);

struct Replica {
    proc: Proc,
    url: String,
}

impl Replica {
    async fn start(redis: &RedisServer) -> Replica {
        let mut proc = Proc::spawn(
            "aigw-token-cache",
            &["--listen", "127.0.0.1:0", "--redis", &redis.url(), "--node-token", NODE_TOKEN, "--log-level", "trace"],
            &[],
        );
        let addr = proc.listen_addrs(&["grpc"]).await["grpc"].clone();
        Replica { proc, url: format!("http://{addr}") }
    }

    async fn client(&self) -> TokenCacheServiceClient<Channel> {
        TokenCacheServiceClient::connect(self.url.clone()).await.unwrap()
    }

    async fn get(&self, req: GetAccessTokenRequest) -> Result<GetAccessTokenResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.metadata_mut().insert("x-node-token", NODE_TOKEN.parse().unwrap());
        self.client().await.get_access_token(r).await.map(|r| r.into_inner())
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = http::get(&format!("{}/metrics", self.url), &[]).await.unwrap().text();
        aigw_token_cache::metrics::parse(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }
}

fn request(json: &str, early: i64) -> GetAccessTokenRequest {
    GetAccessTokenRequest { credential: json.to_owned(), scopes: vec![], expire_early_secs: Some(early), max_ttl: None }
}

async fn sum(replicas: &[&Replica], name: &str) -> u64 {
    let mut n = 0;
    for r in replicas {
        n += r.metric(name).await;
    }
    n
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Both sides: every process logged, one of them the mint (marker present), and no
/// log line of any of them carries the private key, an issued token or the node token.
fn assert_no_secrets(replicas: &[&Replica], acct: &TestAccount, issued: &IssuedTokens) {
    let all: Vec<String> = replicas.iter().flat_map(|r| r.proc.logs()).collect();
    assert!(all.iter().any(|l| l.contains("minted gcp access token") && l.contains(&acct.client_email)), "no mint log line");
    assert!(all.iter().any(|l| l.contains("TRACE")), "not logging at trace level");
    let tokens = issued.all();
    assert!(!tokens.is_empty());
    for l in &all {
        for f in acct.key_fragments() {
            assert!(!l.contains(f), "private key in a log line: {l}");
        }
        for t in &tokens {
            assert!(!l.contains(t.as_str()), "access token in a log line: {l}");
        }
        assert!(!l.contains(NODE_TOKEN), "node token in a log line: {l}");
        assert!(!l.contains("eyJ"), "a JWT in a log line: {l}");
    }
}

async fn setup() -> (RedisServer, TestAccount, Arc<IssuedTokens>, FakeTokenEndpoint) {
    let redis = RedisServer::start().await;
    let acct = TestAccount::a();
    let issued = Arc::new(IssuedTokens::default());
    let ep = FakeTokenEndpoint::start(std::slice::from_ref(&acct), issued.clone()).await;
    (redis, acct, issued, ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_across_two_replicas_mint_once() {
    let (redis, acct, issued, ep) = setup().await;
    let (a, b) = (Arc::new(Replica::start(&redis).await), Arc::new(Replica::start(&redis).await));
    let json = acct.json(&ep.url());
    let hold = ep.hold();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let r = if i % 2 == 0 { a.clone() } else { b.clone() };
            let req = request(&json, 60);
            tokio::spawn(async move { r.get(req).await.unwrap().access_token })
        })
        .collect();
    // Every request has arrived, one mint is at the token endpoint, and the other replica
    // is waiting on the Redis lock rather than minting.
    wait_until("50 requests in, one mint parked, one lock wait", T, || async {
        let ready = sum(&[&a, &b], "requests").await == 50 && ep.parked() == 1 && sum(&[&a, &b], "lock_waits").await >= 1;
        ready.then_some(())
    })
    .await;
    drop(hold);
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the same token");
    assert_eq!(ep.requests(), 1, "one call to the token endpoint for the whole fleet");
    assert_eq!(ep.mints(), 1);
    assert_eq!(sum(&[&a, &b], "mints").await, 1);
    assert_eq!(sum(&[&a, &b], "direct").await, 0);
    // Later requests are Redis hits, on either replica.
    assert_eq!(b.get(request(&json, 60)).await.unwrap().access_token, tokens[0]);
    assert!(sum(&[&a, &b], "hits").await >= 1);
    assert_no_secrets(&[&a, &b], &acct, &issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_reused_until_its_early_expiry_then_reminted_once_with_nobody_waiting() {
    let (redis, acct, issued, ep) = setup().await;
    let (a, b) = (Replica::start(&redis).await, Replica::start(&redis).await);
    let json = acct.json(&ep.url());
    // expires_in 8 s, expire_early_secs 6: fresh for 2 s, then served while one caller
    // re-mints, until 8 s − min(5 s, 6 s / 2) = 5 s.
    ep.set_expires_in(8);
    let first = a.get(request(&json, 6)).await.unwrap();
    let t1 = first.access_token.clone();
    let refresh_at = aigw_gcp_auth::token::from_timestamp(&first.refresh_time.unwrap());
    let expire_at = aigw_gcp_auth::token::from_timestamp(&first.expire_time.unwrap());
    assert_eq!(expire_at - refresh_at, 6_000);
    assert_eq!(b.get(request(&json, 6)).await.unwrap().access_token, t1, "reused while fresh");
    assert_eq!(ep.mints(), 1);

    wait_until("the token's refresh time", T, || async { (now_ms() >= refresh_at).then_some(()) }).await;
    // The re-mint is held at the token endpoint: callers in the window must not wait for it.
    let hold = ep.hold();
    for i in 0..10 {
        let r = if i % 2 == 0 { &a } else { &b };
        assert_eq!(r.get(request(&json, 6)).await.unwrap().access_token, t1, "served the still-valid token");
    }
    wait_until("one re-mint at the token endpoint", T, || async { (ep.parked() == 1).then_some(()) }).await;
    assert_eq!(ep.requests(), 2, "exactly one re-mint for the fleet");
    drop(hold);
    let t2 = wait_until("the new token", T, || async {
        let t = a.get(request(&json, 6)).await.unwrap().access_token;
        (t != t1).then_some(t)
    })
    .await;
    assert_eq!(b.get(request(&json, 6)).await.unwrap().access_token, t2);
    assert_eq!(ep.mints(), 2);
    assert_eq!(sum(&[&a, &b], "refresh_ahead").await, 1);
    assert_eq!(sum(&[&a, &b], "lock_waits").await, 0, "nobody waited");
    assert_no_secrets(&[&a, &b], &acct, &issued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_callers_still_get_tokens() {
    let (mut redis, acct, issued, ep) = setup().await;
    let (mut a, b) = (Replica::start(&redis).await, Replica::start(&redis).await);
    let json = acct.json(&ep.url());
    a.get(request(&json, 60)).await.unwrap();
    redis.kill9().await;
    for _ in 0..3 {
        for r in [&a, &b] {
            let t = r.get(request(&json, 60)).await.expect("a token without redis");
            assert!(!t.access_token.is_empty());
        }
    }
    for r in [&a, &b] {
        assert!(r.metric("redis_errors").await >= 1);
        assert!(r.metric("direct").await >= 1);
        let down = r.proc.logs().iter().filter(|l| l.contains("redis unavailable")).count();
        assert_eq!(down, 1, "the outage is logged once per transition");
    }
    let health = http::get(&format!("{}/healthz", a.url), &[]).await.unwrap().json();
    assert_eq!(health["redis"], "down");
    // In-process single flight while Redis is down: one direct mint per replica.
    assert_eq!(ep.mints(), 3);

    redis.restart().await;
    wait_until("redis back for replica a", T, || async {
        a.get(request(&json, 60)).await.unwrap();
        a.proc.logs().iter().any(|l| l.contains("redis reachable again")).then_some(())
    })
    .await;
    a.proc.wait_log(&["redis reachable again"], T).await;
    assert_no_secrets(&[&a, &b], &acct, &issued);
}

#[tokio::test]
async fn callers_need_the_node_token() {
    let (redis, acct, _issued, ep) = setup().await;
    let r = Replica::start(&redis).await;
    let req = request(&acct.json(&ep.url()), 60);
    let mut client = r.client().await;
    let no_token = client.get_access_token(req.clone()).await.unwrap_err();
    assert_eq!(no_token.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(req.clone());
    wrong.metadata_mut().insert("x-node-token", "not-the-token".parse().unwrap());
    assert_eq!(client.get_access_token(wrong).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(ep.requests(), 0);
    assert!(r.get(req).await.is_ok());
    assert_eq!(r.metric("unauthenticated").await, 2);

    // A bad credential is INVALID_ARGUMENT naming the problem, never echoing the key.
    let bad = acct.json_with(&ep.url(), serde_json::json!({"client_email": null}));
    let e = r.get(request(&bad, 60)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("lacks client_email"), "{}", e.message());
    for f in acct.key_fragments() {
        assert!(!e.message().contains(f));
    }
}

#[tokio::test]
async fn bad_flags_exit_with_a_reason() {
    let mut p = Proc::spawn("aigw-token-cache", &["--listen", "127.0.0.1:0", "--redis", "not a url"], &[]);
    let status = p.wait_exit(T).await;
    assert!(!status.success());
    assert!(p.logs().iter().any(|l| l.contains("--redis: not a valid redis URL")), "{:?}", p.logs());
    let mut p = Proc::spawn("aigw-token-cache", &["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"], &[]);
    assert!(!p.wait_exit(T).await.success());
}
