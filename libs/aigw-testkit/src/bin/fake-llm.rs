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
//! | `GET /stats`                           | request counts (JSON)                  | none                               |
//! | `GET /healthz`                         | `ok`                                   | none                               |
//!
//! Flags: `--listen ADDR` (env `FAKE_LLM_LISTEN`, default `127.0.0.1:8480`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aigw_testkit::bedrock::{self, AwsKeys};
use aigw_testkit::fake::{self, FakeServer, Handler, Recorded, Reply};
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
    eprintln!("usage: fake-llm [--listen ADDR]   (env FAKE_LLM_LISTEN; default 127.0.0.1:8480)");
    std::process::exit(2);
}

fn listen_addr() -> SocketAddr {
    let mut listen = std::env::var("FAKE_LLM_LISTEN").unwrap_or_else(|_| "127.0.0.1:8480".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            s if s.starts_with("--listen=") => listen = s["--listen=".len()..].to_owned(),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("fake-llm: unknown argument {other:?}");
                usage()
            }
        }
    }
    listen.parse().unwrap_or_else(|e| {
        eprintln!("fake-llm: --listen {listen:?}: {e}");
        std::process::exit(2)
    })
}

fn handler(counts: Arc<Mutex<Counts>>) -> Handler {
    let openai = fake::strict_openai(OPENAI_KEY);
    let weather = fake::openai_weather_agent(OPENAI_KEY);
    let anthropic = fake::anthropic(ANTHROPIC_KEY);
    let bedrock = bedrock::bedrock(AwsKeys::example(), BEDROCK_REGION);
    Arc::new(move |r: &Recorded| {
        let path = r.path();
        if r.method == "GET" && path == "/healthz" {
            return Reply::json(StatusCode::OK, json!({"status": "ok"}));
        }
        if r.method == "GET" && path == "/stats" {
            let c = counts.lock().unwrap();
            let by_status: BTreeMap<String, u64> = c.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            return Reply::json(StatusCode::OK, json!({"requests_total": c.total, "by_provider": c.by_provider, "by_status": by_status}));
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

fn main() {
    let addr = listen_addr();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fake-llm: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let server = FakeServer::serve(listener, handler(counts), false);
        eprintln!("fake-llm: listening addr={}", server.addr);
        // The kit records every request for tests to inspect; a long-running server only
        // needs the counts, so the record is dropped every second to keep memory flat.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        loop {
            tokio::select! {
                _ = tick.tick() => server.clear(),
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

    #[test]
    fn dispatches_by_path_and_counts_by_provider_and_status() {
        let h = handler(Arc::new(Mutex::new(Counts::default())));
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
    }
}
