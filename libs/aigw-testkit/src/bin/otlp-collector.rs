//! otlp-collector: a stand-in for Jaeger / an OpenTelemetry collector, for the fleet's CI
//! and for `bench/run.sh`'s exporter mode. It accepts OTLP/gRPC (trace and metrics
//! services) and OTLP/HTTP protobuf, keeps what it received in memory, and shows it:
//!
//! | listener | path | |
//! |---|---|---|
//! | `--grpc-listen` (default `127.0.0.1:4317`) | `opentelemetry.proto.collector.{trace,metrics}.v1` | OTLP/gRPC |
//! | `--http-listen` (default `127.0.0.1:4318`) | `POST /v1/traces`, `POST /v1/metrics` | OTLP/HTTP protobuf |
//! | | `GET /spans`, `GET /metrics` | what was received, as JSON (`/spans`: `total`, and of the last `--max-spans` those matching `?key=value&…` — `service`, `trace_id`, `name`, any span or resource attribute such as `aigw.request_id` or `service.instance.id` — `matched` and the last `limit=N` of them, each with its resource) |
//! | | `GET /healthz` | `ok` |
//!
//! `--count-only` (for load, `bench/run.sh`): OTLP/gRPC trace exports are checked down to
//! the span level and counted (`GET /spans` shows the `total`), not decoded or kept.
//!
//! Each listener prints `listening kind=grpc|http addr=…` once bound (port 0 picks one).
//! Flags take `--flag VALUE` or `--flag=VALUE`. The fleet runs it as the `traces` service in
//! CI (deploy/compose.local.yml), in Jaeger's place.

use std::net::SocketAddr;

fn usage() -> ! {
    eprintln!(
        "usage: otlp-collector [--grpc-listen ADDR] [--http-listen ADDR] [--max-spans N] [--count-only]   (env OTLP_GRPC_LISTEN, OTLP_HTTP_LISTEN)"
    );
    std::process::exit(2);
}

fn parse(flag: &str, v: &str) -> SocketAddr {
    v.parse().unwrap_or_else(|e| {
        eprintln!("otlp-collector: {flag} {v:?}: {e}");
        std::process::exit(2);
    })
}

fn main() {
    let mut grpc = std::env::var("OTLP_GRPC_LISTEN").unwrap_or_else(|_| "127.0.0.1:4317".into());
    let mut http = std::env::var("OTLP_HTTP_LISTEN").unwrap_or_else(|_| "127.0.0.1:4318".into());
    let mut max_spans = 100_000usize;
    let mut count_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `--flag VALUE` or `--flag=VALUE`.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).unwrap_or_else(|| usage());
        match name.as_str() {
            "--grpc-listen" => grpc = value(),
            "--http-listen" => http = value(),
            "--max-spans" => max_spans = value().parse().unwrap_or_else(|_| usage()),
            "--count-only" if inline.is_none() => count_only = true,
            "-h" | "--help" => usage(),
            other => {
                eprintln!("otlp-collector: unknown argument {other:?}");
                usage()
            }
        }
    }
    let (grpc, http) = (parse("--grpc-listen", &grpc), parse("--http-listen", &http));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let bind = |a: SocketAddr| async move {
            tokio::net::TcpListener::bind(a).await.unwrap_or_else(|e| {
                eprintln!("otlp-collector: cannot listen on {a}: {e}");
                std::process::exit(1);
            })
        };
        let (g, h) = (bind(grpc).await, bind(http).await);
        let c = if count_only {
            aigw_testkit::otlp::Collector::serve_counting(g, h)
        } else {
            aigw_testkit::otlp::Collector::serve_keeping(g, h, max_spans)
        };
        eprintln!("listening kind=grpc addr={}", c.grpc);
        eprintln!("listening kind=http addr={}", c.http);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}
