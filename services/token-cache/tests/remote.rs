//! The service in-process with a real Redis, and the library's remote token source
//! (what a proxy's `--token-cache` uses) talking to it over real sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aigw_gcp_auth::{Credential, GcpAuth, GcpAuthOptions, TokenCacheOptions, TokenSettings};
use aigw_model::secrets::DataKey;
use aigw_testkit::gcp::{Failure, FakeTokenEndpoint, IssuedTokens, TestAccount};
use aigw_testkit::redis::RedisServer;
use redis::AsyncCommands;

const NODE_TOKEN: &str = "test-node-token";
const DATA_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Service {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(redis: &RedisServer, data_key: Option<DataKey>, tls: Option<Arc<rustls::ServerConfig>>) -> Service {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut cfg = aigw_token_cache::Config::new(redis::Client::open(redis.url()).unwrap(), NODE_TOKEN.into());
        cfg.data_key = data_key;
        cfg.tls = tls;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            aigw_token_cache::run(cfg, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let host = if scheme == "https" { format!("localhost:{}", addr.port()) } else { addr.to_string() };
        Service { url: format!("{scheme}://{host}"), stop: Some(tx), task }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

fn proxy(url: &str, node_token: &str, ca_pem: Option<Vec<u8>>) -> GcpAuth {
    GcpAuth::new(GcpAuthOptions {
        token_cache: Some(TokenCacheOptions { url: url.into(), node_token: Some(node_token.into()), ca_pem }),
        ..Default::default()
    })
    .unwrap()
}

async fn setup() -> (RedisServer, TestAccount, FakeTokenEndpoint) {
    let redis = RedisServer::start().await;
    let acct = TestAccount::a();
    let ep = FakeTokenEndpoint::start(std::slice::from_ref(&acct), Arc::new(IssuedTokens::default())).await;
    (redis, acct, ep)
}

fn cred(acct: &TestAccount, ep: &FakeTokenEndpoint) -> Credential {
    Credential::from_json(&acct.json(&ep.url())).unwrap()
}

#[tokio::test]
async fn two_proxies_share_one_token_and_fall_back_when_the_service_is_down() {
    let (redis, acct, ep) = setup().await;
    let svc = Service::start(&redis, None, None).await;
    let (p1, p2) = (proxy(&svc.url, NODE_TOKEN, None), proxy(&svc.url, NODE_TOKEN, None));
    let t1 = p1.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    let t2 = p2.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert!(t1.same_token(&t2), "the second proxy gets the fleet's token");
    assert_eq!(ep.mints(), 1);
    assert_eq!(p1.stats().remote_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(p1.stats().mints.load(Ordering::SeqCst), 0, "the proxy minted nothing itself");

    svc.stop().await;
    let p3 = proxy("http://127.0.0.1:1", NODE_TOKEN, None);
    let t3 = p3.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert!(!t3.secret().is_empty());
    assert_eq!(p3.stats().remote_fallbacks.load(Ordering::SeqCst), 1);
    assert_eq!(p3.stats().mints.load(Ordering::SeqCst), 1);
    assert_eq!(ep.mints(), 2);
}

#[tokio::test]
async fn a_wrong_node_token_is_refused_and_the_proxy_mints_locally() {
    let (redis, acct, ep) = setup().await;
    let svc = Service::start(&redis, None, None).await;
    let p = proxy(&svc.url, "wrong-token", None);
    p.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert_eq!(p.stats().remote_fallbacks.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats().remote_fetches.load(Ordering::SeqCst), 0);
    let m = aigw_testkit::http::get(&format!("{}/metrics", svc.url), &[]).await.unwrap().text();
    assert_eq!(aigw_token_cache::metrics::parse(&m, "unauthenticated"), Some(1), "{m}");
    assert_eq!(aigw_token_cache::metrics::parse(&m, "requests"), Some(0), "{m}");
    svc.stop().await;
}

#[tokio::test]
async fn invalidate_drops_the_token_fleet_wide() {
    let (redis, acct, ep) = setup().await;
    let svc = Service::start(&redis, None, None).await;
    let p1 = proxy(&svc.url, NODE_TOKEN, None);
    let s1 = p1.source(cred(&acct, &ep), TokenSettings::default());
    let t1 = s1.token().await.unwrap();
    s1.invalidate(&t1).await;
    // Another proxy that never saw t1 gets a new token: Redis no longer holds t1.
    let p2 = proxy(&svc.url, NODE_TOKEN, None);
    let t2 = p2.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert!(!t2.same_token(&t1));
    // And the proxy that invalidated gets that same new token.
    assert!(s1.token().await.unwrap().same_token(&t2));
    assert_eq!(ep.mints(), 2);
    svc.stop().await;
}

#[tokio::test]
async fn a_mint_failure_is_reported_not_retried_locally() {
    let (redis, acct, ep) = setup().await;
    let svc = Service::start(&redis, None, None).await;
    let p = proxy(&svc.url, NODE_TOKEN, None);
    ep.fail_next(Failure::InvalidGrant, 1);
    let e = p.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap_err().to_string();
    assert!(e.contains("failed to get gcp access token for gw-test@aigw-test.iam.gserviceaccount.com"), "{e}");
    assert!(e.contains("invalid_grant"), "{e}");
    for f in acct.key_fragments() {
        assert!(!e.contains(f));
    }
    assert_eq!(p.stats().remote_fallbacks.load(Ordering::SeqCst), 0);
    assert_eq!(ep.requests(), 1, "nobody minted again");
    svc.stop().await;
}

#[tokio::test]
async fn tokens_in_redis_are_encrypted_with_a_data_key() {
    let (redis, acct, ep) = setup().await;
    let svc = Service::start(&redis, Some(DataKey::parse(DATA_KEY).unwrap()), None).await;
    let p = proxy(&svc.url, NODE_TOKEN, None);
    let t = p.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = c.keys("aigw:tok:*").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let v: String = c.get(&keys[0]).await.unwrap();
    assert!(v.starts_with(&format!("{}|$aigw-enc$v1$", t.fingerprint())), "{v}");
    assert!(!v.contains(t.secret()));
    // The key names a hash, never the credential.
    assert!(!keys[0].contains("gw-test") && keys[0].len() == "aigw:tok:".len() + 64);
    let ttl: i64 = c.pttl(&keys[0]).await.unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_599_000, "redis TTL follows the token's expiry: {ttl}");
    svc.stop().await;
}

#[tokio::test]
async fn tls_with_a_custom_ca() {
    let (redis, acct, ep) = setup().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = aigw_testkit::proc::TempDir::new("tc-tls");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = aigw_token_cache::tls_config(&cert_path, &key_path).unwrap();
    let svc = Service::start(&redis, None, Some(tls)).await;
    assert!(svc.url.starts_with("https://"));

    let trusted = proxy(&svc.url, NODE_TOKEN, Some(cert.cert.pem().into_bytes()));
    trusted.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert_eq!(trusted.stats().remote_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(trusted.stats().remote_fallbacks.load(Ordering::SeqCst), 0);

    // Without the CA the certificate is not trusted: the proxy mints locally instead.
    let untrusted = proxy(&svc.url, NODE_TOKEN, None);
    untrusted.source(cred(&acct, &ep), TokenSettings::default()).token().await.unwrap();
    assert_eq!(untrusted.stats().remote_fetches.load(Ordering::SeqCst), 0);
    assert_eq!(untrusted.stats().remote_fallbacks.load(Ordering::SeqCst), 1);
    svc.stop().await;
}
