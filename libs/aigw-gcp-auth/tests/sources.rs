//! Token sources against the fake Google of the test kit, over real sockets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aigw_gcp_auth::{Credential, GcpAuth, GcpAuthOptions, Origin, TokenSettings, TtlPolicy};
use aigw_testkit::gcp::{
    CLOUD_PLATFORM, Failure, FakeMetadataServer, FakeTokenEndpoint, FakeVertex, IssuedTokens, TEST_KEY_B, TestAccount,
};
use aigw_testkit::wait_until;
use serde_json::json;

fn no_env(_: &str) -> Option<String> {
    None
}

async fn setup() -> (TestAccount, Arc<IssuedTokens>, FakeTokenEndpoint) {
    let acct = TestAccount::a();
    let issued = Arc::new(IssuedTokens::default());
    let ep = FakeTokenEndpoint::start(std::slice::from_ref(&acct), issued.clone()).await;
    (acct, issued, ep)
}

fn auth() -> GcpAuth {
    GcpAuth::new(GcpAuthOptions::default()).unwrap()
}

async fn vertex_chat(vertex: &FakeVertex, token: &str) -> u16 {
    let r = aigw_testkit::http::post_json(
        &format!("{}/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions", vertex.url()),
        &[("authorization", &format!("Bearer {token}"))],
        &json!({"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    r.status.as_u16()
}

#[tokio::test]
async fn service_account_token_is_accepted_by_vertex() {
    let (acct, issued, ep) = setup().await;
    let vertex = FakeVertex::start(issued.clone()).await;
    let (cred, origin) = Credential::resolve(Some(&acct.json(&ep.url())), &no_env).unwrap();
    assert_eq!(origin, Origin::Explicit);
    let src = auth().source(cred, TokenSettings::default());
    let t = src.token().await.unwrap();
    assert_eq!(vertex_chat(&vertex, t.secret()).await, 200);
    assert_eq!(vertex_chat(&vertex, "ya29.not-minted").await, 401, "the fake must reject unknown tokens");
    assert_eq!(ep.scopes_seen(), [CLOUD_PLATFORM]);
    // The fake Vertex's other shapes: streamed chat and :predict embeddings.
    let auth = format!("Bearer {}", t.secret());
    let base = format!("{}/v1/projects/p/locations/us-central1", vertex.url());
    let r = aigw_testkit::http::post_json(
        &format!("{base}/endpoints/openapi/chat/completions"),
        &[("authorization", &auth)],
        &json!({"model": "google/gemini-2.5-flash", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert!(r.text().contains("\"usage\"") && r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let r = aigw_testkit::http::post_json(
        &format!("{base}/publishers/google/models/text-embedding-005:predict"),
        &[("authorization", &auth)],
        &json!({"instances": [{"content": "hello world"}, {"content": "x"}]}),
    )
    .await
    .unwrap();
    let j = r.json();
    assert_eq!(j["predictions"].as_array().unwrap().len(), 2, "{j}");
    assert_eq!(j["predictions"][0]["embeddings"]["statistics"]["token_count"], 2);
    let r = aigw_testkit::http::post_json(
        &format!("{base}/publishers/google/models/m:predict"),
        &[("authorization", &auth)],
        &json!({"input": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "an OpenAI-shaped body is not a Vertex predict request");
    // Cached: a second call does not mint.
    assert!(src.token().await.unwrap().same_token(&t));
    assert_eq!(ep.mints(), 1);
}

#[tokio::test]
async fn the_json_scope_is_honoured() {
    let (acct, _issued, ep) = setup().await;
    let json = acct.json_with(&ep.url(), json!({"scope": ["https://www.googleapis.com/auth/a", "https://www.googleapis.com/auth/b"]}));
    let src = auth().source(Credential::from_json(&json).unwrap(), TokenSettings::default());
    src.token().await.unwrap();
    assert_eq!(ep.scopes_seen(), ["https://www.googleapis.com/auth/a https://www.googleapis.com/auth/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_callers_mint_once() {
    let (acct, _issued, ep) = setup().await;
    let src = auth().source(Credential::from_json(&acct.json(&ep.url())).unwrap(), TokenSettings::default());
    let hold = ep.hold();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = src.clone();
            tokio::spawn(async move { s.token().await.unwrap().secret().to_owned() })
        })
        .collect();
    wait_until("one mint request parked", Duration::from_secs(5), || async { (ep.parked() == 1).then_some(()) }).await;
    drop(hold);
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1);
    assert_eq!(ep.requests(), 1);
    assert_eq!(ep.mints(), 1);
}

#[tokio::test]
async fn ttl_follows_the_real_expiry() {
    let (acct, _issued, ep) = setup().await;
    let gcp = auth();
    let json = acct.json(&ep.url());
    ep.set_expires_in(5);
    let t = gcp.source(Credential::from_json(&json).unwrap(), TokenSettings::default()).token().await.unwrap();
    assert_eq!(t.expires_at_ms() - t.refresh_at_ms(), 0, "expires_in 5 is cached 5 s (not shortened by 60)");
    ep.set_expires_in(10);
    let p = TtlPolicy { expire_early_secs: 60, max_ttl: Some(8) };
    let t = gcp.source(Credential::from_json(&json).unwrap(), TokenSettings { scopes: None, ttl: p }).token().await.unwrap();
    assert_eq!(t.expires_at_ms() - t.refresh_at_ms(), 2_000, "expires_in 10 with max_ttl 8 is cached 8 s");
    ep.set_expires_in(3599);
    let p = TtlPolicy { expire_early_secs: 300, max_ttl: None };
    let t = gcp.source(Credential::from_json(&json).unwrap(), TokenSettings { scopes: None, ttl: p }).token().await.unwrap();
    assert_eq!(t.expires_at_ms() - t.refresh_at_ms(), 300_000);
    assert_eq!(ep.mints(), 3, "different TTL settings are different cache entries");
}

#[tokio::test]
async fn metadata_server_through_gce_metadata_host() {
    let issued = Arc::new(IssuedTokens::default());
    let md = FakeMetadataServer::start(issued.clone()).await;
    let vertex = FakeVertex::start(issued.clone()).await;
    let env: HashMap<&str, String> = [("GCE_METADATA_HOST", md.host())].into();
    let (cred, origin) = Credential::resolve(None, &|k| env.get(k).cloned()).unwrap();
    assert_eq!(origin, Origin::MetadataServer);
    let src = auth().source(cred, TokenSettings::default());
    let t = src.token().await.unwrap();
    assert_eq!(vertex_chat(&vertex, t.secret()).await, 200);
    assert_eq!(md.mints(), 1);
    assert_eq!(md.last_scopes().as_deref(), Some(CLOUD_PLATFORM));
}

#[tokio::test]
async fn errors_name_the_account_and_the_reason_never_the_key() {
    let (acct, _issued, ep) = setup().await;
    let gcp = auth();
    let src = gcp.source(Credential::from_json(&acct.json(&ep.url())).unwrap(), TokenSettings::default());
    let check = |e: String, fragment: &str| {
        assert!(e.contains("failed to get gcp access token for gw-test@aigw-test.iam.gserviceaccount.com"), "{e}");
        assert!(e.contains(fragment), "{e:?} lacks {fragment:?}");
        for f in acct.key_fragments() {
            assert!(!e.contains(f), "error leaks the key: {e}");
        }
        assert!(!e.contains("eyJ"), "error leaks the assertion: {e}");
    };
    ep.fail_next(Failure::InvalidGrant, 1);
    check(src.token().await.unwrap_err().to_string(), "answered 400: invalid_grant: Invalid grant: account not found");
    ep.fail_next(Failure::ServerError, 1);
    check(src.token().await.unwrap_err().to_string(), "answered 500: internal_failure: Backend Error");
    // Failures are not cached: the next call mints.
    assert!(src.token().await.is_ok());

    // Signed with another key than the one Google knows for this e-mail.
    let wrong = TestAccount::new(&acct.client_email, TEST_KEY_B);
    let src = gcp.source(Credential::from_json(&wrong.json(&ep.url())).unwrap(), TokenSettings::default());
    check(src.token().await.unwrap_err().to_string(), "Invalid JWT Signature.");

    // Unreachable and slow endpoints.
    let src = gcp.source(Credential::from_json(&acct.json("http://127.0.0.1:1/token")).unwrap(), TokenSettings::default());
    check(src.token().await.unwrap_err().to_string(), "http://127.0.0.1:1/token unreachable");
    let quick = GcpAuth::new(GcpAuthOptions { mint_timeout: Duration::from_millis(200), ..Default::default() }).unwrap();
    ep.set_delay(Duration::from_secs(2));
    let src = quick.source(Credential::from_json(&acct.json(&ep.url())).unwrap(), TokenSettings::default());
    check(src.token().await.unwrap_err().to_string(), "timed out after 0.2s");
}

#[tokio::test]
async fn invalidate_after_a_401_mints_a_new_token() {
    let (acct, issued, ep) = setup().await;
    let vertex = FakeVertex::start(issued.clone()).await;
    let src = auth().source(Credential::from_json(&acct.json(&ep.url())).unwrap(), TokenSettings::default());
    let t1 = src.token().await.unwrap();
    vertex.reject_once(t1.secret());
    assert_eq!(vertex_chat(&vertex, t1.secret()).await, 401);
    src.invalidate(&t1).await;
    let t2 = src.token().await.unwrap();
    assert!(!t2.same_token(&t1));
    assert_eq!(vertex_chat(&vertex, t2.secret()).await, 200);
    assert_eq!(ep.mints(), 2);
}

#[tokio::test]
async fn equal_settings_share_one_source() {
    let (acct, _issued, ep) = setup().await;
    let gcp = auth();
    let json = acct.json(&ep.url());
    let a = gcp.source(Credential::from_json(&json).unwrap(), TokenSettings::default());
    let b = gcp.source(Credential::from_json(&json).unwrap(), TokenSettings::default());
    a.token().await.unwrap();
    b.token().await.unwrap();
    assert_eq!(ep.mints(), 1);
}
