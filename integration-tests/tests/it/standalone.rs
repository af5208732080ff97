//! A single aigw-proxy from a routes file: the embedded default.

use std::time::Duration;

use aigw_testkit::fake::{FakeServer, openai_chat};
use aigw_testkit::http;
use aigw_testkit::proc::{Proc, TempDir};
use serde_json::json;

use crate::common::*;

fn routes_yaml(upstream: &str, key_expr: &str, uri: &str) -> String {
    format!(
        r#"routes:
  - id: chat
    uri: {uri}
    methods: [POST]
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth:
          header:
            Authorization: "Bearer {key_expr}"
        options:
          model: gpt-4
        override:
          endpoint: "{upstream}/v1/chat/completions"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_file_is_served_reloaded_and_a_broken_edit_keeps_the_last_good() {
    let up = FakeServer::start(openai_chat("file", "sk-file", "/v1")).await;
    let dir = TempDir::new("file");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, routes_yaml(&up.url(), "${IT_KEY}", "/anything")).unwrap();
    let mut p = Proxy::start(&["--routes", file.to_str().unwrap()], &[("IT_KEY", "sk-file")]).await;
    assert!(p.ready().await, "ready as soon as the file is applied");
    let r = p.chat("/anything").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests()[0].header("authorization"), Some("Bearer sk-file"), "${{VAR}} expanded from the environment");

    // An edit is picked up.
    std::fs::write(&file, routes_yaml(&up.url(), "${IT_KEY}", "/moved")).unwrap();
    p.wait_chat_status("/moved", 200).await;
    assert_eq!(p.chat("/anything").await.unwrap().status, 404);

    // A broken edit is rejected with a logged reason; the last good config keeps serving.
    std::fs::write(&file, "routes:\n  - id: [unclosed\n").unwrap();
    p.proc.wait_log(&["routes file rejected"], T).await;
    std::fs::write(&file, routes_yaml(&up.url(), "${IT_KEY}", "/moved").replace("openai-compatible", "not-a-provider")).unwrap();
    p.proc.wait_log(&["routes file rejected", "plugins.ai-proxy.provider"], T).await;
    assert_eq!(p.chat("/moved").await.unwrap().status, 200);
    let dump = p.config_dump().await.to_string();
    assert!(!dump.contains("sk-file"), "config_dump redacts secrets: {dump}");

    // SIGTERM drains and exits 0.
    p.proc.signal(15);
    assert!(p.proc.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_use_the_clients_protocol() {
    let up = FakeServer::start(openai_chat("e", "sk", "/v1")).await;
    let dir = TempDir::new("errs");
    let file = dir.path().join("routes.json");
    let route = chat_route("chat", "/v1/*", &up.url(), "sk");
    std::fs::write(&file, json!({"routes": [route]}).to_string()).unwrap();
    let p = Proxy::start(&["--routes", file.to_str().unwrap()], &[]).await;
    let url = format!("{}/v1/chat/completions", p.data);

    let r = http::send(::http::Method::POST, &url, &[("content-type", "application/json")], "{oops").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("could not parse JSON"));
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = http::send(::http::Method::POST, &url, &[("content-type", "text/plain")], "hi").await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("unsupported content-type"));
    let r = http::send(::http::Method::POST, &url, &[("content-type", "application/json")], "").await.unwrap();
    assert_eq!(r.status, 400);
    let r = http::post_json(&url, &[], &json!({})).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no matching AI protocol"));
    let r = http::post_json(&format!("{}/nowhere", p.data), &[], &json!({"messages": []})).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    // An Anthropic client (path ending /v1/messages) gets Anthropic's error envelope.
    let r = http::post_json(&format!("{}/x/v1/messages", p.data), &[], &json!({"messages": []})).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_start_conditions_exit_non_zero_with_one_line() {
    let dir = TempDir::new("badstart");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, "routes: [\n").unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "aigw-proxy",
            vec![
                "--routes".into(),
                file.to_str().unwrap().into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--status-listen".into(),
                "127.0.0.1:0".into(),
            ],
            "cannot parse routes file",
        ),
        ("aigw-proxy", vec!["--listen".into(), "127.0.0.1:0".into()], "--routes"),
        ("aigw-proxy", vec!["--routes".into(), "x".into(), "--config-service".into(), "http://h:1".into()], "cannot be used with"),
        (
            "aigw-proxy",
            vec![
                "--config-service".into(),
                "h:1".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--status-listen".into(),
                "127.0.0.1:0".into(),
            ],
            "http://HOST:PORT",
        ),
        ("aigw-config", vec!["--listen".into(), "not-an-addr".into()], "invalid value"),
        (
            "aigw-config",
            vec![
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-encryption-key".into(),
                "short".into(),
                "--data-dir".into(),
                dir.path().join("d").to_str().unwrap().into(),
            ],
            "--data-encryption-key",
        ),
    ];
    for (bin, args, needle) in cases {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(bin, &argv, &[]);
        let status = proc.wait_exit(Duration::from_secs(10)).await;
        assert!(!status.success(), "{bin} {args:?} should fail");
        let logs = proc.logs().join("\n");
        assert!(logs.contains(needle), "{bin} {args:?}: {logs}");
    }
    // An unusable port: already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let d = dir.path().join("d2");
    let mut proc = Proc::spawn("aigw-config", &["--listen", &addr, "--data-dir", d.to_str().unwrap(), "--admin-key", "k"], &[]);
    assert!(!proc.wait_exit(Duration::from_secs(10)).await.success());
    assert!(proc.logs().iter().any(|l| l.starts_with("aigw-config: cannot listen on")), "{:?}", proc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_service_exits_zero_on_sigterm() {
    let dir = TempDir::new("term");
    let mut cfg = Config::start(dir.path(), "127.0.0.1:0", &[]).await;
    let _p = Proxy::subscribed(&cfg.url(), &[]).await;
    _p.wait_ready().await;
    cfg.proc.signal(15);
    assert!(cfg.proc.wait_exit(Duration::from_secs(15)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_stream_and_h2c_is_served() {
    use aigw_testkit::fake::{AuthCheck, ProviderSpec};
    let spec =
        ProviderSpec { deltas: 10, chunk_delay: Duration::from_millis(100), ..ProviderSpec::new("slow", AuthCheck::Bearer("k".into())) };
    let up = FakeServer::start(spec.handler()).await;
    let route = json!({"id": "s", "uri": "/s", "plugins": {"ai-proxy": {"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
        "options": {"model": "m"}, "override": {"endpoint": up.url()}}}});
    let (mut p, _d) = standalone(vec![route]).await;

    // h2c (HTTP/2 with prior knowledge) on the data plane.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = ::http::Request::post(format!("{}/s", p.data))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(json!({"messages": [{"role": "user", "content": "hi"}]}).to_string())))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, ::http::Version::HTTP_2));

    // A stream in flight when SIGTERM arrives still completes; then the process exits 0.
    let mut s = http::post_stream(&format!("{}/s", p.data), &[], &json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .unwrap();
    assert!(s.next_data().await.is_some());
    p.proc.signal(15);
    let rest = s.rest().await;
    assert!(rest.ends_with("data: [DONE]\n\n"), "the stream finished: {rest}");
    assert!(p.proc.wait_exit(Duration::from_secs(15)).await.success());
}

/// The drain loses no request a client has sent (services/proxy/src/serve.rs): connections
/// the kernel completed while the process could not accept (SIGSTOP), each with a request
/// already sent, are all answered after SIGTERM; a connection accepted before the stop whose
/// request comes after it is answered too; a silent one is closed after the grace
/// (`--client-header-timeout`, here 2 s) and the process then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_connection_already_made() {
    use aigw_testkit::fake::{AuthCheck, ProviderSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let up = FakeServer::start(ProviderSpec::new("up", AuthCheck::Bearer("k".into())).handler()).await;
    let route = json!({"id": "s", "uri": "/s", "plugins": {"ai-proxy": {"provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
        "options": {"model": "m"}, "override": {"endpoint": up.url()}}}});
    let dir = TempDir::new("drain");
    let file = dir.path().join("routes.json");
    std::fs::write(&file, json!({ "routes": [route] }).to_string()).unwrap();
    let mut p = Proxy::start(&["--routes", file.to_str().unwrap(), "--client-header-timeout", "2s"], &[]).await;
    let addr = p.data.trim_start_matches("http://").to_string();
    let body = json!({"messages": [{"role": "user", "content": "hi"}]}).to_string();
    let request = format!("POST /s HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());

    let mut late = TcpStream::connect(&addr).await.unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // both accepted by the proxy

    p.proc.signal(19); // SIGSTOP: the kernel still completes connects into the accept queue
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut queued = Vec::new();
    for _ in 0..24 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        queued.push(s);
    }
    p.proc.signal(15);
    p.proc.signal(18); // SIGCONT: the stop and the queued connections arrive together
    tokio::time::sleep(Duration::from_millis(300)).await;
    late.write_all(request.as_bytes()).await.unwrap();

    for (i, s) in queued.iter_mut().chain(std::iter::once(&mut late)).enumerate() {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(read.is_ok_and(|r| r.is_ok()), "connection {i}: read failed or hung: {answer:?}");
        // Answered, then closed by the proxy (read_to_end ended). Not necessarily with
        // `connection: close`: SIGCONT and SIGTERM race, and a connection served before the
        // stop is seen is answered as usual and closed when the drain reaches it.
        assert!(answer.starts_with("HTTP/1.1 200"), "connection {i}: {answer:?}");
        assert!(answer.contains("chat.completion"), "connection {i}: {answer:?}");
    }
    let mut rest = Vec::new();
    let silent_end = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest)).await;
    assert!(silent_end.is_ok(), "the silent connection is closed after the grace");
    assert!(p.proc.wait_exit(Duration::from_secs(15)).await.success());
}
