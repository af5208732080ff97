//! fake-llm: the test kit's strict fake providers as one server, so a fleet (or a user
//! trying aigw) needs no provider keys. One port serves every protocol, told apart by path:
//!
//! | path                                   | fake                                   | credential (fixed)                 |
//! |----------------------------------------|----------------------------------------|------------------------------------|
//! | `POST /v1/chat/completions`            | OpenAI chat (with `tools`: a weather   | `Authorization: Bearer sk-fake-openai` |
//! |                                        | agent that calls `get_weather`)        |                                    |
//! | `POST /v1/responses`, `/v1/embeddings` | OpenAI Responses, embeddings           | same                               |
//! | `POST /v1/messages[/count_tokens]`     | Anthropic Messages                     | `x-api-key: sk-ant-fake`           |
//! | `POST /model/{id}/converse[-stream]`   | Bedrock Runtime (SigV4 verified)       | AWS example keys, `us-east-1`      |
//! | `GET /gcp/service-account.json`        | the service account fake Google knows  | none                               |
//! | `GET /stats`                           | request counts (JSON)                  | none                               |
//! | `GET /healthz`                         | `ok`                                   | none                               |
//!
//! Fake Google, on two more ports (the test kit's `aigw_testkit::gcp` fakes, as strict as
//! Google: the token endpoint verifies the RS256 JWT of the test service account, Vertex
//! accepts only unexpired tokens that endpoint minted):
//!
//! | listener | serves |
//! |---|---|
//! | `--gcp-listen` (default `127.0.0.1:8481`) | `POST /token`: OAuth JWT-bearer grant (counts mints) |
//! | `--vertex-listen` (default `127.0.0.1:8482`) | Vertex AI: `POST /v1/projects/{p}/locations/{r}/endpoints/openapi/chat/completions`, `…/publishers/google/models/{m}:predict` |
//!
//! `GET /gcp/service-account.json` is the throwaway test account's key file (committed under
//! `libs/aigw-testkit/testdata/`, never a real key) with `token_uri` = `--gcp-token-uri`
//! (default `http://{--gcp-listen}/token`; behind a container name, e.g.
//! `http://fake-llm:8481/token`). Put it in a route's `auth.gcp.service_account_json`. Any
//! variation of it (another `private_key_id`) is accepted too: it is a new credential to aigw.
//! `/stats` counts `gcp.token_requests` and `gcp.mints`, and Vertex requests under
//! `by_provider.vertex` (`vertex_rejected`: answered 401).
//!
//! Flags (env in brackets): `--listen ADDR` (`FAKE_LLM_LISTEN`, default `127.0.0.1:8480`),
//! `--gcp-listen ADDR` (`FAKE_LLM_GCP_LISTEN`), `--gcp-token-uri URL` (`FAKE_LLM_GCP_TOKEN_URI`),
//! `--vertex-listen ADDR` (`FAKE_LLM_VERTEX_LISTEN`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aigw_testkit::bedrock::{self, AwsKeys};
use aigw_testkit::fake::{self, FakeServer, Handler, Recorded, Reply};
use aigw_testkit::gcp::{FakeTokenEndpoint, FakeVertex, IssuedTokens, TestAccount};
use http::StatusCode;
use serde_json::json;

/// The key the OpenAI-family fake accepts (`Authorization: Bearer …`).
const OPENAI_KEY: &str = "sk-fake-openai";
/// The key the Anthropic fake accepts (`x-api-key`).
const ANTHROPIC_KEY: &str = "sk-ant-fake";
/// The region the Bedrock fake's SigV4 scope must name.
const BEDROCK_REGION: &str = "us-east-1";

#[derive(Default)]
struct Counts {
    total: u64,
    by_provider: BTreeMap<&'static str, u64>,
    by_status: BTreeMap<u16, u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fake-llm [--listen ADDR] [--gcp-listen ADDR] [--gcp-token-uri URL] [--vertex-listen ADDR]\n\
         (env FAKE_LLM_LISTEN, FAKE_LLM_GCP_LISTEN, FAKE_LLM_GCP_TOKEN_URI, FAKE_LLM_VERTEX_LISTEN; \
         defaults 127.0.0.1:8480, 127.0.0.1:8481, http://{{gcp-listen}}/token, 127.0.0.1:8482)"
    );
    std::process::exit(2);
}

struct Flags {
    listen: SocketAddr,
    gcp_listen: SocketAddr,
    gcp_token_uri: Option<String>,
    vertex_listen: SocketAddr,
}

fn addr(flag: &str, v: &str) -> SocketAddr {
    v.parse().unwrap_or_else(|e| {
        eprintln!("fake-llm: {flag} {v:?}: {e}");
        std::process::exit(2)
    })
}

fn flags() -> Flags {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut listen = env("FAKE_LLM_LISTEN", "127.0.0.1:8480");
    let mut gcp_listen = env("FAKE_LLM_GCP_LISTEN", "127.0.0.1:8481");
    let mut gcp_token_uri = std::env::var("FAKE_LLM_GCP_TOKEN_URI").ok().filter(|u| !u.is_empty());
    let mut vertex_listen = env("FAKE_LLM_VERTEX_LISTEN", "127.0.0.1:8482");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).unwrap_or_else(|| usage());
        match name.as_str() {
            "--listen" => listen = value(),
            "--gcp-listen" => gcp_listen = value(),
            "--gcp-token-uri" => gcp_token_uri = Some(value()),
            "--vertex-listen" => vertex_listen = value(),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("fake-llm: unknown argument {other:?}");
                usage()
            }
        }
    }
    if let Some(u) = &gcp_token_uri
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        eprintln!("fake-llm: --gcp-token-uri must be an http(s) URL, got {u:?}");
        std::process::exit(2);
    }
    Flags {
        listen: addr("--listen", &listen),
        gcp_listen: addr("--gcp-listen", &gcp_listen),
        gcp_token_uri,
        vertex_listen: addr("--vertex-listen", &vertex_listen),
    }
}

/// Fake Google: the token endpoint, Vertex, and the one service account they know.
struct Google {
    token: FakeTokenEndpoint,
    vertex: FakeVertex,
    service_account: serde_json::Value,
}

impl Google {
    fn start(token_listener: tokio::net::TcpListener, token_uri: Option<&str>, vertex_listener: tokio::net::TcpListener) -> Google {
        let account = TestAccount::a();
        let issued = Arc::new(IssuedTokens::default());
        let token = FakeTokenEndpoint::start_on(token_listener, token_uri, std::slice::from_ref(&account), issued.clone());
        let vertex = FakeVertex::start_on(vertex_listener, issued);
        let service_account = serde_json::from_str(&account.json(&token.url())).expect("the test account's JSON");
        Google { token, vertex, service_account }
    }
}

fn handler(counts: Arc<Mutex<Counts>>, google: Arc<Google>) -> Handler {
    let openai = fake::strict_openai(OPENAI_KEY);
    let weather = fake::openai_weather_agent(OPENAI_KEY);
    let anthropic = fake::anthropic(ANTHROPIC_KEY);
    let bedrock = bedrock::bedrock(AwsKeys::example(), BEDROCK_REGION);
    Arc::new(move |r: &Recorded| {
        let path = r.path();
        if r.method == "GET" && path == "/healthz" {
            return Reply::json(StatusCode::OK, json!({"status": "ok"}));
        }
        if r.method == "GET" && path == "/gcp/service-account.json" {
            return Reply::json(StatusCode::OK, google.service_account.clone());
        }
        if r.method == "GET" && path == "/stats" {
            let c = counts.lock().unwrap();
            let by_status: BTreeMap<String, u64> = c.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let mut by_provider: BTreeMap<&str, u64> = c.by_provider.clone();
            let vertex = google.vertex.total() as u64;
            if vertex > 0 {
                by_provider.insert("vertex", vertex);
            }
            return Reply::json(
                StatusCode::OK,
                json!({"requests_total": c.total + vertex, "by_provider": by_provider, "by_status": by_status,
                       "vertex_rejected": google.vertex.rejected(),
                       "gcp": {"token_requests": google.token.requests(), "mints": google.token.mints()}}),
            );
        }
        let (provider, reply) = if path.starts_with("/v1/messages") {
            ("anthropic", anthropic(r))
        } else if path.starts_with("/model/") {
            ("bedrock", bedrock(r))
        } else if path == "/v1/chat/completions" && r.json().get("tools").is_some() {
            ("openai", weather(r))
        } else {
            ("openai", openai(r))
        };
        let mut c = counts.lock().unwrap();
        c.total += 1;
        *c.by_provider.entry(provider).or_default() += 1;
        *c.by_status.entry(reply.status.as_u16()).or_default() += 1;
        reply
    })
}

async fn bind(what: &str, addr: SocketAddr) -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("fake-llm: cannot listen on {addr} ({what}): {e}");
        std::process::exit(1);
    })
}

fn main() {
    let flags = flags();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let listener = bind("providers", flags.listen).await;
        let (gcp, vertex) = (bind("gcp token endpoint", flags.gcp_listen).await, bind("vertex", flags.vertex_listen).await);
        let (gcp_addr, vertex_addr) = (gcp.local_addr().expect("addr"), vertex.local_addr().expect("addr"));
        let google = Arc::new(Google::start(gcp, flags.gcp_token_uri.as_deref(), vertex));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let server = FakeServer::serve(listener, handler(counts, google.clone()), false);
        eprintln!("fake-llm: listening addr={}", server.addr);
        eprintln!("fake-llm: listening kind=gcp-token addr={gcp_addr} token_uri={}", google.token.url());
        eprintln!("fake-llm: listening kind=vertex addr={vertex_addr}");
        // The kit records every request for tests to inspect; a long-running server only
        // needs the counts, so the record is dropped every second to keep memory flat.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    server.clear();
                    google.vertex.clear();
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("fake-llm: stopped");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rec(method: &str, path: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Recorded {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Recorded {
            method: method.into(),
            path_and_query: path.into(),
            version: http::Version::HTTP_11,
            headers: h,
            body: bytes::Bytes::from_static(body),
        }
    }

    fn json_of(r: Reply) -> Value {
        match r.body {
            fake::ReplyBody::Json(v) => v,
            fake::ReplyBody::Stream { .. } => Value::Null,
        }
    }

    async fn google(token_uri: Option<&str>) -> Arc<Google> {
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
        Arc::new(Google::start(bind().await, token_uri, bind().await))
    }

    #[tokio::test]
    async fn dispatches_by_path_and_counts_by_provider_and_status() {
        let h = handler(Arc::new(Mutex::new(Counts::default())), google(None).await);
        let chat = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let ok = h(&rec(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-fake-openai"), ("content-type", "application/json")],
            chat,
        ));
        assert_eq!(ok.status, StatusCode::OK);
        let wrong =
            h(&rec("POST", "/v1/chat/completions", &[("authorization", "Bearer sk-other"), ("content-type", "application/json")], chat));
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let msg = br#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let ant = h(&rec("POST", "/v1/messages", &[("x-api-key", "sk-ant-fake"), ("anthropic-version", "2023-06-01")], msg));
        assert_eq!(ant.status, StatusCode::OK);
        let unsigned = h(&rec("POST", "/model/m/converse", &[], b"{}"));
        assert_eq!(unsigned.status, StatusCode::FORBIDDEN, "bedrock verifies SigV4");
        let stats = json_of(h(&rec("GET", "/stats", &[], b"")));
        assert_eq!(stats["requests_total"], 4, "{stats}");
        assert_eq!(stats["by_provider"], json!({"anthropic": 1, "bedrock": 1, "openai": 2}), "{stats}");
        assert_eq!(stats["by_status"], json!({"200": 2, "401": 1, "403": 1}), "{stats}");
        assert_eq!(stats["gcp"], json!({"token_requests": 0, "mints": 0}), "{stats}");
    }

    /// The service account names the token endpoint by the URL clients use, and the fake
    /// Vertex refuses a request without a token it minted (counted).
    #[tokio::test]
    async fn serves_the_service_account_and_a_strict_vertex() {
        let g = google(Some("http://fake-llm:8481/token")).await;
        let h = handler(Arc::new(Mutex::new(Counts::default())), g.clone());
        let sa = json_of(h(&rec("GET", "/gcp/service-account.json", &[], b"")));
        assert_eq!(sa["type"], "service_account");
        assert_eq!(sa["token_uri"], "http://fake-llm:8481/token");
        assert!(sa["private_key"].as_str().unwrap().contains("BEGIN PRIVATE KEY"), "{sa}");
        let vertex = format!("{}/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions", g.vertex.url());
        let r = aigw_testkit::http::post_json(
            &vertex,
            &[("authorization", "Bearer ya29.not-minted")],
            &json!({"model": "google/gemini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        let stats = json_of(h(&rec("GET", "/stats", &[], b"")));
        assert_eq!((stats["by_provider"]["vertex"].as_u64(), stats["vertex_rejected"].as_u64()), (Some(1), Some(1)), "{stats}");
    }
}
